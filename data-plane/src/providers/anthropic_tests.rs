//! Tests of the anthropic translation (`anthropic.rs`).

use proptest::prelude::*;

use super::*;

fn body(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

#[test]
fn requests_are_translated() {
    let openai = body(json!({
        "model": "claude", "max_tokens": 300, "temperature": 1.4, "stop": "END", "user": "u-1", "stream": true,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "user", "content": "And tomorrow?"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required", "parallel_tool_calls": false, "frequency_penalty": 1
    }));
    let translated = request(&openai, "claude-sonnet-4").unwrap();
    assert_eq!(
        translated,
        json!({
            "model": "claude-sonnet-4", "max_tokens": 300, "system": "Be brief.\n\nUse tools.",
            "temperature": 1.0, "stream": true, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                    "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "text", "text": "And tomorrow?"}]}
            ],
            "tools": [{"name": "get_weather", "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
    let minimal = request(&body(json!({"messages": [{"role": "user", "content": "hi"}]})), "m").unwrap();
    assert_eq!(minimal["max_tokens"], json!(4096), "required by the Messages API");
    assert!(minimal.get("system").is_none() && minimal.get("tools").is_none());
    // What has no equivalent lets another candidate serve.
    assert!(request(&body(json!({"n": 2, "messages": []})), "m").is_err());
    let audio = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
    assert!(request(&body(audio), "m").unwrap_err().contains("input_audio"));
}

#[test]
fn answers_are_translated_with_every_kind_of_input_token() {
    let anthropic = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 1000,
                  "cache_creation_input_tokens": 50}});
    let translated: Value = serde_json::from_slice(&answer(anthropic.to_string().as_bytes()).unwrap()).unwrap();
    assert_eq!(translated["object"], json!("chat.completion"));
    assert_eq!(translated["model"], json!("claude-sonnet-4"));
    let choice = &translated["choices"][0];
    assert_eq!(choice["finish_reason"], json!("tool_calls"));
    assert_eq!(choice["message"]["content"], json!("Checking."));
    assert_eq!(choice["message"]["reasoning_content"], json!("hmm"));
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(
        translated["usage"],
        json!({"prompt_tokens": 1150, "completion_tokens": 20, "total_tokens": 1170,
        "prompt_tokens_details": {"cached_tokens": 1000}, "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 50})
    );
    let no_usage = json!({"type": "message", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"});
    let translated: Value = serde_json::from_slice(&answer(no_usage.to_string().as_bytes()).unwrap()).unwrap();
    assert!(translated.get("usage").is_none(), "none reported, none invented: metering estimates");
    assert!(answer(b"{\"type\":\"error\"}").is_err());
    assert!(answer(b"not json").is_err());
    assert_eq!(
        serde_json::from_str::<Value>(&openai_error(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#
        ))
        .unwrap(),
        json!({"error": {"message": "busy", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
    );
}

/// A recorded Messages stream: text, then a tool call in two argument deltas, with cache usage.
const RECORDED: &str = "event: message_start\n\
    data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_read_input_tokens\":1000,\"cache_creation_input_tokens\":50}}}\n\n\
    event: content_block_start\n\
    data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
    event: ping\n\
    data: {\"type\":\"ping\"}\n\n\
    event: content_block_delta\n\
    data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}\n\n\
    event: content_block_stop\n\
    data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
    event: content_block_start\n\
    data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
    event: content_block_delta\n\
    data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n\
    event: content_block_delta\n\
    data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n\
    event: content_block_stop\n\
    data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
    event: message_delta\n\
    data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":20}}\n\n\
    event: message_stop\n\
    data: {\"type\":\"message_stop\"}\n\n";

fn translate(input: &[u8], cuts: &[usize]) -> String {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    // A fixed `created`: two translations a second apart would differ in it alone.
    let mut translator = StreamTranslator { created: 1_700_000_000, ..StreamTranslator::new() };
    let mut out = Vec::new();
    for w in points.windows(2) {
        out.extend(translator.push(&input[w[0]..w[1]]));
    }
    String::from_utf8(out).unwrap()
}

fn chunks(out: &str) -> Vec<Value> {
    out.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn streams_are_translated() {
    let out = translate(RECORDED.as_bytes(), &[]);
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    let chunks = chunks(&out);
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c.pointer("/choices/0/delta")).collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], &json!({"content": "Checking."}));
    assert_eq!(
        deltas[2],
        &json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(deltas[3], &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}));
    assert_eq!(deltas[4], &json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], json!("tool_calls"));
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], json!(1150));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], json!(20));
    assert!(chunks.iter().all(|c| c["model"] == json!("claude-sonnet-4") && c["id"] == json!("msg_1")));
    // An error event becomes an OpenAI error event and ends the translation.
    let failing = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n\
        event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n\
        event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let out = translate(failing.as_bytes(), &[]);
    assert!(out.contains("data: {\"error\":{\"code\":\"overloaded_error\"") && !out.contains("[DONE]"), "{out}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// However the upstream chunks its stream, the translation is the same.
    #[test]
    fn chunking_does_not_matter(cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        prop_assert_eq!(translate(RECORDED.as_bytes(), &cuts), translate(RECORDED.as_bytes(), &[]));
    }

    /// Nothing from the network panics the translation.
    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.extend([0, input.len()]);
        points.sort_unstable();
        points.dedup();
        let mut translator = StreamTranslator::new();
        for w in points.windows(2) {
            let _ = translator.push(&input[w[0]..w[1]]);
        }
        let _ = answer(&input);
        let _ = openai_error(&String::from_utf8_lossy(&input));
    }
}
