use serde_json::json;

use super::*;
use crate::apis::stream::Translation;

fn chat_of(body: Value) -> Result<Value, String> {
    to_chat(body.as_object().unwrap()).map(Value::Object).map_err(|e| e.to_string())
}

#[test]
fn requests_translate_to_chat() {
    let chat = chat_of(json!({
        "model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": "be brief"}],
        "stop_sequences": ["END"], "temperature": 0.5, "metadata": {"user_id": "u1"}, "stream": true,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny", "is_error": false},
                {"type": "text", "text": "and?", "cache_control": {"type": "ephemeral"}}]},
        ],
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
    }))
    .unwrap();
    assert_eq!(
        chat,
        json!({
            "model": "claude", "max_tokens": 100, "stop": ["END"], "temperature": 0.5, "user": "u1",
            "metadata": {"user_id": "u1"}, "stream": true, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "checking", "tool_calls": [{"id": "t1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
                {"role": "user", "content": [{"type": "text", "text": "and?"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                "parameters": {"type": "object"}}}],
            "tool_choice": "required", "parallel_tool_calls": false,
        })
    );
}

#[test]
fn what_chat_cannot_carry_is_refused_by_name() {
    let base = |extra: Value| {
        let mut body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        chat_of(body).err()
    };
    assert_eq!(base(json!({})), None);
    assert_eq!(base(json!({"thinking": {"type": "disabled"}, "cache_control": {"type": "ephemeral"}})), None);
    let cases = [
        (json!({"top_k": 5}), "the field 'top_k' is not supported"),
        (json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}), "the field 'thinking' is not supported"),
        (json!({"mcp_servers": []}), "the field 'mcp_servers' is not supported"),
        (
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools of type 'web_search_20250305'",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}),
            "content blocks of type 'document'",
        ),
        (json!({"max_tokens": 0}), "max_tokens: a positive integer is required"),
        (json!({"messages": []}), "between 1 and 4096 messages"),
        (json!({"messages": [{"role": "system", "content": "x"}]}), "messages[0].role must be 'user' or 'assistant'"),
        (json!({"tool_choice": {"type": "auto"}}), "tool_choice needs tools"),
    ];
    for (extra, expected) in cases {
        let error = base(extra.clone()).unwrap_or_else(|| panic!("{extra} was accepted"));
        assert!(error.contains(expected), "{extra}: {error}");
    }
    let many = vec![json!({"role": "user", "content": "x"}); MAX_MESSAGES + 1];
    assert!(base(json!({"messages": many})).is_some());
}

#[test]
fn answers_translate_to_messages() {
    let chat = json!({"id": "chatcmpl-1", "model": "up", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}});
    assert_eq!(
        answer(&chat).unwrap(),
        json!({"id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "up",
            "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 5}})
    );
    let bad = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}}]});
    assert!(answer(&bad).is_err());
}

#[test]
fn errors_take_anthropics_shape() {
    let openai = json!({"error": {"message": "budget 'b' does not allow this request", "type": "rate_limit_error"}});
    assert_eq!(
        error(StatusCode::TOO_MANY_REQUESTS, &openai),
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "budget 'b' does not allow this request"}})
    );
    assert_eq!(error(StatusCode::UNAUTHORIZED, &Value::Null)["error"]["type"], json!("authentication_error"));
}

/// The events of a translated stream, as (name, data).
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| e.starts_with("event: "))
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            (name["event: ".len()..].to_owned(), serde_json::from_str(&data["data: ".len()..]).unwrap())
        })
        .collect()
}

#[test]
fn streams_translate_to_message_events_however_chunked() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let stream = [
        chunk(json!({"role": "assistant", "content": "Let "}), Value::Null),
        chunk(json!({"content": "me check."}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        format!("data: {}\n\n", json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})),
        ": x-gateway-cost-usd 0.1\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    for cut in [1, 7, 64, stream.len()] {
        let mut translation = Translation::new(MessagesStream::default());
        let out: String = stream.as_bytes().chunks(cut).map(|c| translation.feed(c)).collect();
        assert!(out.contains(": x-gateway-cost-usd 0.1\n\n"), "comments pass through");
        let names: Vec<String> = events(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let events = events(&out);
        assert_eq!(events[5].1["content_block"], json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}}));
        assert_eq!(events[7].1["delta"], json!({"type": "input_json_delta", "partial_json": "1}"}));
        assert_eq!(events[9].1["delta"]["stop_reason"], json!("tool_use"));
        assert_eq!(events[9].1["usage"], json!({"input_tokens": 9, "output_tokens": 4}));
    }
}

#[test]
fn a_stream_error_becomes_an_error_event() {
    let mut translation = Translation::new(MessagesStream::default());
    let out = translation.feed(b"data: {\"error\": {\"message\": \"cut\", \"type\": \"api_error\"}}\n\n");
    assert_eq!(
        events(&out),
        [("error".to_owned(), json!({"type": "error", "error": {"type": "api_error", "message": "cut"}}))]
    );
}
