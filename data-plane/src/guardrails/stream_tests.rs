use std::sync::Arc;

use futures_util::stream;
use gateway_proto::{convert, v1};
use policy_engine::config::{ConfigSet, GuardrailSpec};
use policy_engine::facts::{KeyFacts, RequestFacts};
use proptest::prelude::*;

use super::*;
use crate::guardrails::prepare;

fn guard(action: &str, window: u32) -> Guard {
    let spec: GuardrailSpec = serde_json::from_value(serde_json::json!({
        "name": "secrets", "action": action, "side": "completion", "stream_window_chars": window,
        "detectors": [{"type": "credential"}, {"type": "email"}]
    }))
    .unwrap();
    let mut config = ConfigSet::default();
    config.guardrails.insert(spec.name.clone(), spec);
    let content = convert::encode(&config, vec![], |_| None);
    let snapshot = v1::Snapshot {
        version: 1,
        content_hash: convert::content_hash(&content),
        content: Some(content),
        lineage: String::new(),
    };
    let compiled = Arc::new(crate::control::snapshot::compile(&snapshot).map_err(|e| format!("{e:?}")).unwrap());
    prepare(&compiled, &RequestFacts::default(), &KeyFacts::default()).unwrap().unwrap()
}

fn sse(pieces: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    out.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
    for piece in pieces {
        let delta = serde_json::json!({"id": "c1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        out.push_str(&format!("data: {delta}\n\n"));
    }
    out.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// Run the stage over `input` cut at `cuts`; what the client receives.
fn run(guard: Guard, input: &[u8], cuts: &[usize]) -> String {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    let chunks: Vec<reqwest::Result<Bytes>> =
        points.windows(2).map(|w| Ok(Bytes::copy_from_slice(&input[w[0]..w[1]]))).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let out: Vec<u8> = runtime.block_on(async {
        GuardedStream::new(stream::iter(chunks), guard, None)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect()
    });
    String::from_utf8(out).unwrap()
}

/// The text a client assembles from the deltas, and whether an error event came.
fn assembled(output: &str) -> (String, bool) {
    let mut text = String::new();
    let mut error = false;
    for event in output.split("\n\n") {
        let Some(data) = event.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        error |= value.get("error").is_some();
        for choice in value["choices"].as_array().into_iter().flatten() {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    (text, error)
}

#[test]
fn a_secret_split_across_two_chunks_is_redacted_in_what_the_client_assembles() {
    let input = sse(&["Here is the key: sk-proj-abcdefghij", "klmnopqrstuvwx and that is all."]);
    let (text, error) = assembled(&run(guard("redact", 32), &input, &[]));
    assert_eq!(text, "Here is the key: [REDACTED:credential] and that is all.");
    assert!(!error);
}

#[test]
fn a_block_mid_stream_ends_with_an_error_event_and_never_sends_the_match() {
    let input =
        sse(&["Hello there, a long enough opening to release some text early on. Write to jo", "e@example.com now"]);
    let output = run(guard("block", 32), &input, &[]);
    let (text, error) = assembled(&output);
    assert!(error, "{output}");
    assert!(output.contains("\"code\":\"content_blocked\"") && output.contains("secrets"), "{output}");
    assert!(!output.contains("example.com"), "{output}");
    assert!(text.starts_with("Hello there"), "{text}");
    assert!(output.ends_with("data: [DONE]\n\n"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// However the upstream chunks the stream and the model cuts its deltas, the client assembles the redacted
    /// answer.
    #[test]
    fn any_chunking_assembles_the_same_redacted_text(
        split in 1usize..60,
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let answer = "Contact ops@example.org with token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB today, thanks!";
        let split = split.min(answer.len() - 1);
        let input = sse(&[&answer[..split], &answer[split..]]);
        let (text, error) = assembled(&run(guard("redact", 64), &input, &cuts));
        prop_assert!(!error);
        prop_assert_eq!(text, "Contact [REDACTED:email] with token [REDACTED:credential] today, thanks!");
    }
}

/// A streamed tool call whose arguments arrive in `fragments` (the first delta names the call).
fn tool_call_sse(fragments: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    let first = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0,
        "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
        "function": {"name": "send_mail", "arguments": ""}}]}, "finish_reason": null}]});
    out.push_str(&format!("data: {first}\n\n"));
    for fragment in fragments {
        let delta = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0,
            "delta": {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}, "finish_reason": null}]});
        out.push_str(&format!("data: {delta}\n\n"));
    }
    out.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// The arguments a client assembles for tool call 0, the call's name, and whether an error event came.
fn assembled_arguments(output: &str) -> (String, String, bool) {
    let (mut arguments, mut name, mut error) = (String::new(), String::new(), false);
    for event in output.split("\n\n") {
        let Some(data) = event.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        error |= value.get("error").is_some();
        for choice in value["choices"].as_array().into_iter().flatten() {
            for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                assert_eq!(call["index"], 0, "{output}");
                name.push_str(call["function"]["name"].as_str().unwrap_or(""));
                arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
            assert!(choice["delta"].get("content").is_none(), "no content invented: {output}");
        }
    }
    (arguments, name, error)
}

#[test]
fn a_secret_split_across_two_tool_call_argument_deltas_is_redacted() {
    let input = tool_call_sse(&[r#"{"to": "ops", "body": "use sk-proj-abcdefghij"#, r#"klmnopqrstuvwx now"}"#]);
    let output = run(guard("redact", 32), &input, &[]);
    let (arguments, name, error) = assembled_arguments(&output);
    assert!(!error, "{output}");
    assert_eq!(name, "send_mail");
    assert_eq!(arguments, r#"{"to": "ops", "body": "use [REDACTED:credential] now"}"#);
    assert!(!output.contains("abcdefghij"), "{output}");
}

#[test]
fn a_blocked_match_in_tool_call_arguments_ends_the_stream() {
    let input = tool_call_sse(&[r#"{"to": "jo"#, r#"e@example.com"}"#]);
    let output = run(guard("block", 32), &input, &[]);
    let (_, _, error) = assembled_arguments(&output);
    assert!(error && output.contains("content_blocked"), "{output}");
    assert!(!output.contains("example.com"), "{output}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// However the arguments are cut into deltas and the stream into chunks, the assembled arguments are redacted.
    #[test]
    fn any_cut_of_tool_call_arguments_assembles_the_redacted_arguments(
        split in 1usize..70,
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let arguments = r#"{"to": "ops@example.org", "token": "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"}"#;
        let split = split.min(arguments.len() - 1);
        let input = tool_call_sse(&[&arguments[..split], &arguments[split..]]);
        let (assembled, _, error) = assembled_arguments(&run(guard("redact", 64), &input, &cuts));
        prop_assert!(!error);
        prop_assert_eq!(assembled, r#"{"to": "[REDACTED:email]", "token": "[REDACTED:credential]"}"#);
    }
}
