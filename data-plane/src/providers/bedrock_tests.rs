use serde_json::{Value, json};

use super::*;

fn object(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[test]
fn a_chat_request_becomes_a_converse_request() {
    let body = object(json!({
        "model": "claude", "max_tokens": 100, "temperature": 1.5, "top_p": 0.9, "stop": "END",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
            {"role": "user", "content": "Thanks"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required"}));
    let converse = request(&body).unwrap();
    assert_eq!(
        converse,
        json!({
            "system": [{"text": "Be brief."}, {"text": "Use metric units."}],
            "messages": [
                {"role": "user", "content": [{"text": "Weather?"},
                                             {"image": {"format": "png", "source": {"bytes": "iVBO"}}}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "call_1", "name": "get_weather",
                                                               "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1", "content": [{"text": "21 C"}]}},
                                             {"text": "Thanks"}]}],
            "inferenceConfig": {"maxTokens": 100, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]},
            "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather now",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                "toolChoice": {"any": {}}}})
    );
}

#[test]
fn what_converse_cannot_express_is_refused_with_the_reason() {
    let cases = [
        (json!({"n": 2, "messages": []}), "n must be 1"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "https://example.com/cat.png"}}]}]}),
            "data URLs only",
        ),
        (json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}), "no input_audio content"),
        (
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": "none"}),
            "no tool_choice \"none\"",
        ),
        (json!({"messages": [{"role": "function", "content": "x"}]}), "no \"function\" messages"),
    ];
    for (body, reason) in cases {
        let error = request(&object(body)).unwrap_err();
        assert!(error.contains(reason), "{error}");
    }
}

#[test]
fn a_converse_answer_becomes_a_chat_completion() {
    let answer_body = json!({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "x"}}},
            {"text": "Calling."},
            {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 14, "cacheReadInputTokens": 100,
                  "cacheWriteInputTokens": 5}});
    let completion: Value = serde_json::from_slice(&answer(answer_body.to_string().as_bytes()).unwrap()).unwrap();
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["content"], "Calling.");
    assert_eq!(message["reasoning_content"], "Hmm.");
    assert_eq!(
        message["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(completion["usage"]["prompt_tokens"], 115);
    assert_eq!(completion["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(completion["usage"]["cache_creation_input_tokens"], 5);
    assert_eq!(completion["usage"]["total_tokens"], 119);
    assert!(answer(b"{\"message\": \"no\"}").unwrap_err().contains("no output message"));
}

#[test]
fn stop_reasons_and_errors_map_to_openai_and_failover_classes() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        assert_eq!(finish_reason(Some(stop)), finish);
    }
    let error: Value = serde_json::from_str(&openai_error(r#"{"message": "messages: field required"}"#)).unwrap();
    assert_eq!(error["error"]["message"], "messages: field required");
    assert_eq!(error["error"]["code"], "bedrock_error");
    let error: Value =
        serde_json::from_str(&openai_error(r#"{"__type": "ValidationException:http://x", "message": "m"}"#)).unwrap();
    assert_eq!(error["error"]["code"], "ValidationException");
    for status in [401, 403, 404, 408, 424, 429, 500, 503] {
        assert_eq!(Bedrock.classify(status), StatusClass::FailOver, "{status}");
    }
    for status in [400, 413, 422] {
        assert_eq!(Bedrock.classify(status), StatusClass::CallersMistake, "{status}");
    }
}

#[test]
fn model_ids_are_path_encoded() {
    assert_eq!(
        path_segment("anthropic.claude-3-5-sonnet-20240620-v1:0"),
        "anthropic.claude-3-5-sonnet-20240620-v1%3A0"
    );
    assert_eq!(path_segment("arn:aws:bedrock:us-east-1::x/y_z~"), "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Ax%2Fy_z~");
}
