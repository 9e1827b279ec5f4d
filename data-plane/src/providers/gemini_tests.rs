//! Tests of the `generateContent` translation (`gemini.rs`).

use serde_json::{Value, json};

use super::*;
use crate::providers::gemini_shapes::call_id;

fn translated(body: Value) -> Result<Value, String> {
    request(body.as_object().unwrap())
}

#[test]
fn a_conversation_becomes_contents_with_a_system_instruction_and_function_parts() {
    let body = json!({"model": "m", "max_tokens": 100, "temperature": 0.5, "stop": "END", "seed": 7,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 21}"},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": [{"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}}],
        "tool_choice": "required"});
    assert_eq!(
        translated(body).unwrap(),
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}},
                    {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}},
                    {"text": "And this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}]}],
            "generationConfig": {"maxOutputTokens": 100, "temperature": 0.5, "stopSequences": ["END"], "seed": 7},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather now",
                "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                                         "additionalProperties": false}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        })
    );
}

#[test]
fn settings_map_to_generation_config_or_are_refused() {
    let base = |patch: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        translated(body)
    };
    let config = base(json!({"reasoning_effort": "low", "response_format": {"type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}}}}))
    .unwrap();
    assert_eq!(
        config["generationConfig"],
        json!({"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"},
               "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}})
    );
    let named = base(json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                            "tool_choice": {"type": "function", "function": {"name": "f"}}}))
    .unwrap();
    assert_eq!(named["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}));
    for (patch, says) in [
        (json!({"n": 2}), "n must be 1"),
        (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
        (json!({"response_format": {"type": "grammar"}}), "response_format"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
            "data URLs",
        ),
        (json!({"messages": [{"role": "tool", "tool_call_id": "nowhere", "content": "x"}]}), "answers no earlier"),
        (json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}), "input_audio"),
    ] {
        let error = base(patch.clone()).unwrap_err();
        assert!(error.contains(says), "{patch}: {error}");
    }
}

#[test]
fn an_answer_becomes_a_chat_completion_with_reasoning_tool_calls_and_usage() {
    let answer_body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think.", "thought": true},
            {"text": "Calling the tool."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7,
                          "cachedContentTokenCount": 4, "totalTokenCount": 22},
        "modelVersion": "gemini-2.5-flash", "responseId": "abc"});
    let completion: Value = serde_json::from_slice(&answer(answer_body.to_string().as_bytes()).unwrap()).unwrap();
    let id = call_id(0, "get_weather", &json!({"city": "Paris"}));
    assert_eq!(
        completion["choices"][0],
        json!({"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": "Calling the tool.", "reasoning_content": "Let me think.",
            "tool_calls": [{"id": id, "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}})
    );
    assert_eq!(
        completion["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22,
               "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 7}})
    );
    assert_eq!(
        (completion["id"].clone(), completion["model"].clone()),
        (json!("chatcmpl-abc"), json!("gemini-2.5-flash"))
    );
    // The same call gets the same id again; another call another one.
    assert_eq!(id, call_id(0, "get_weather", &json!({"city": "Paris"})));
    assert_ne!(id, call_id(1, "get_weather", &json!({"city": "Paris"})));
    assert!(id.starts_with("call_") && id.len() == 29);
}

#[test]
fn finish_reasons_map_and_blocks_are_errors() {
    let with = |reason: &str| {
        let body = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]});
        answer(body.to_string().as_bytes())
            .map(|bytes| serde_json::from_slice::<Value>(&bytes).unwrap()["choices"][0]["finish_reason"].clone())
    };
    assert_eq!(with("STOP").unwrap(), "stop");
    assert_eq!(with("MAX_TOKENS").unwrap(), "length");
    for filtered in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"] {
        assert_eq!(with(filtered).unwrap(), "content_filter", "{filtered}");
    }
    assert!(matches!(with("MALFORMED_FUNCTION_CALL"), Err(AnswerError::Malformed(m)) if m.contains("MALFORMED")));
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}});
    assert_eq!(
        answer(blocked.to_string().as_bytes()).unwrap_err(),
        AnswerError::Filtered("the provider's safety filter blocked the prompt (SAFETY)".to_owned())
    );
    assert!(matches!(answer(b"not json"), Err(AnswerError::Malformed(_))));
    assert!(matches!(answer(b"{}"), Err(AnswerError::Malformed(_))));
}

#[test]
fn google_errors_take_the_openai_shape_and_classify() {
    let body = json!({"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}});
    let error: Value = serde_json::from_str(&openai_error(&body.to_string())).unwrap();
    assert_eq!(
        error,
        json!({"error": {"message": "Quota exceeded", "type": "rate_limit_error", "param": null, "code": "RESOURCE_EXHAUSTED"}})
    );
    let listed: Value = serde_json::from_str(&openai_error(&json!([body]).to_string())).unwrap();
    assert_eq!(listed["error"]["message"], "Quota exceeded");
    let plain: Value = serde_json::from_str(&openai_error("upstream exploded")).unwrap();
    assert_eq!(plain["error"]["message"], "upstream exploded");
    assert_eq!(classify(400), StatusClass::CallersMistake);
    for status in [401, 403, 404, 408, 429, 500, 503] {
        assert_eq!(classify(status), StatusClass::FailOver, "{status}");
    }
}

#[test]
fn model_names_are_path_segments() {
    assert_eq!(model_segment("models/gemini-2.5-flash"), "gemini-2.5-flash");
    assert_eq!(model_segment("tuned/x y"), "tuned%2Fx%20y");
}
