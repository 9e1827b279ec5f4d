use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use serde_json::{Value, json};

use super::*;

fn frame(headers: &[(&str, &str)], payload: Value) -> Vec<u8> {
    let mut message = Message::new(payload.to_string().into_bytes());
    for (name, value) in headers {
        message = message.add_header(Header::new(name.to_string(), HeaderValue::String(value.to_string().into())));
    }
    let mut out = Vec::new();
    write_message_to(&message, &mut out).unwrap();
    out
}

fn event(kind: &str, payload: Value) -> Vec<u8> {
    frame(&[(":message-type", "event"), (":event-type", kind), (":content-type", "application/json")], payload)
}

/// The JSON of each `data:` event in `sse`, and whether it ended with `[DONE]`.
fn events(sse: &[u8]) -> (Vec<Value>, bool) {
    let text = String::from_utf8(sse.to_vec()).unwrap();
    let datas: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    let done = datas.last() == Some(&"[DONE]");
    (datas.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect(), done)
}

fn translate_bytes(bytes: &[u8], piece: usize) -> Vec<u8> {
    let mut translator = StreamTranslator::new();
    let mut out = Vec::new();
    for chunk in bytes.chunks(piece) {
        out.extend(translator.push(chunk));
    }
    out.extend(translator.finish());
    out
}

#[test]
fn a_converse_stream_becomes_chat_chunks_whatever_its_chunking() {
    let stream: Vec<u8> = [
        event("messageStart", json!({"role": "assistant", "p": "abc"})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hmm."}}})),
        event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"text": "Hi"}})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
        ),
        event("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"a\":"}}})),
        event("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "1}"}}})),
        event("contentBlockStop", json!({"contentBlockIndex": 2})),
        event("messageStop", json!({"stopReason": "tool_use"})),
        event("metadata", json!({"usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10}})),
    ]
    .concat();
    for piece in [1, 7, 64, stream.len()] {
        let (chunks, done) = events(&translate_bytes(&stream, piece));
        assert!(done, "piece {piece}");
        let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0).map(|c| &c["delta"])).collect();
        assert_eq!(deltas[0]["role"], "assistant");
        assert_eq!(deltas[1]["reasoning_content"], "Hmm.");
        assert_eq!(deltas[2]["content"], "Hi");
        assert_eq!(deltas[3]["tool_calls"][0]["id"], "t1");
        assert_eq!(deltas[4]["tool_calls"][0]["function"]["arguments"], "{\"a\":");
        assert_eq!(deltas[5]["tool_calls"][0]["function"]["arguments"], "1}");
        assert_eq!(chunks[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[7]["usage"]["prompt_tokens"], 7);
        assert_eq!(chunks[7]["usage"]["completion_tokens"], 3);
        assert_eq!(chunks.len(), 8);
    }
}

#[test]
fn exceptions_and_broken_frames_end_the_stream_with_an_error() {
    let exception = frame(
        &[(":message-type", "exception"), (":exception-type", "throttlingException")],
        json!({"message": "slow down"}),
    );
    let stream = [event("messageStart", json!({"role": "assistant"})), exception].concat();
    let (chunks, done) = events(&translate_bytes(&stream, 5));
    assert!(!done);
    assert_eq!(
        chunks[1]["error"],
        json!({"message": "slow down", "type": "invalid_request_error", "param": null,
                                           "code": "throttlingException"})
    );
    let mut corrupt = event("messageStart", json!({"role": "assistant"}));
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let (chunks, _) = events(&translate_bytes(&corrupt, 64));
    assert_eq!(chunks[0]["error"]["code"], "bedrock_stream_error");
    // An answer cut before it finished says so rather than ending quietly.
    let (chunks, done) = events(&translate_bytes(&event("messageStart", json!({"role": "assistant"})), 64));
    assert!(!done);
    assert!(chunks[1]["error"]["message"].as_str().unwrap().contains("ended before its answer"));
}
