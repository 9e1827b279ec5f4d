//! Tests of the stream translation (`gemini_stream.rs`).

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::*;

/// The JSON of each `data:` event in `sse`, and whether it ended with `[DONE]`.
fn events(sse: &[u8]) -> (Vec<Value>, bool) {
    let text = String::from_utf8(sse.to_vec()).unwrap();
    let datas: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    let done = datas.last() == Some(&"[DONE]");
    (datas.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect(), done)
}

fn sse(events: &[Value]) -> Vec<u8> {
    events.iter().map(|e| format!("data: {e}\r\n\r\n")).collect::<String>().into_bytes()
}

/// The stream's bytes cut into `piece`-byte chunks, through [`translate`].
async fn translated(bytes: Vec<u8>, piece: usize) -> Vec<u8> {
    let chunks: Vec<reqwest::Result<Bytes>> = bytes.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let upstream: UpstreamBytes = futures_util::stream::iter(chunks).boxed();
    let out: Vec<reqwest::Result<Bytes>> = translate(upstream).collect().await;
    out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect()
}

fn joined(chunks: &[Value], field: &str) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"][field].as_str()).collect()
}

fn conversation() -> Vec<Value> {
    vec![
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm.", "thought": true}]}}],
               "modelVersion": "gemini-2.5-pro", "responseId": "r1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " there."},
               {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP"}],
               "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}}),
    ]
}

#[tokio::test]
async fn events_become_chunks_in_any_cut_and_end_with_usage_and_done() {
    for piece in [1, 7, 4096] {
        let (chunks, done) = events(&translated(sse(&conversation()), piece).await);
        assert!(done, "piece {piece}");
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(
            (chunks[0]["id"].clone(), chunks[0]["model"].clone()),
            (json!("chatcmpl-r1"), json!("gemini-2.5-pro"))
        );
        assert_eq!(joined(&chunks, "reasoning_content"), "Hmm.");
        assert_eq!(joined(&chunks, "content"), "Hello there.");
        let call = chunks.iter().find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).unwrap();
        assert_eq!(
            call,
            &json!({"index": 0, "id": super::super::gemini_shapes::call_id(0, "f", &json!({"a": 1})), "type": "function",
                    "function": {"name": "f", "arguments": "{\"a\":1}"}})
        );
        let finish: Vec<&Value> =
            chunks.iter().filter_map(|c| c["choices"].get(0)?.get("finish_reason")).filter(|f| !f.is_null()).collect();
        assert_eq!(finish, vec![&json!("tool_calls")]);
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            (usage["usage"]["prompt_tokens"].clone(), usage["usage"]["completion_tokens"].clone()),
            (json!(8), json!(5))
        );
    }
}

#[tokio::test]
async fn blocks_errors_and_early_ends_become_error_events() {
    let blocked = sse(&[json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})]);
    let (chunks, done) = events(&translated(blocked, 5).await);
    assert!(!done);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0]["error"]["code"], "content_filter");
    assert!(chunks[0]["error"]["message"].as_str().unwrap().contains("PROHIBITED_CONTENT"));

    let mut failing = conversation();
    failing.truncate(2);
    failing.push(json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}));
    let (chunks, done) = events(&translated(sse(&failing), 4096).await);
    assert!(!done);
    assert_eq!(joined(&chunks, "content"), "Hello");
    assert_eq!(chunks.last().unwrap()["error"]["code"], "UNAVAILABLE");

    let mut cut = conversation();
    cut.truncate(2);
    let (chunks, done) = events(&translated(sse(&cut), 4096).await);
    assert!(!done);
    assert!(chunks.last().unwrap()["error"]["message"].as_str().unwrap().contains("ended before"));

    let malformed =
        sse(&[json!({"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]})]);
    let (chunks, done) = events(&translated(malformed, 4096).await);
    assert!(!done);
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_error");

    let filtered = sse(&[json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "SAFETY"}]})]);
    let (chunks, done) = events(&translated(filtered, 4096).await);
    assert!(done);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "content_filter"));
}
