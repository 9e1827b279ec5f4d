use serde_json::json;

use super::*;
use crate::apis::stream::Translation;

fn chat_of(body: Value) -> Result<Value, String> {
    to_chat(body.as_object().unwrap()).map(Value::Object).map_err(|e| e.to_string())
}

#[test]
fn requests_translate_to_chat() {
    let chat = chat_of(json!({
        "model": "chain", "instructions": "be brief", "max_output_tokens": 50, "stream": true, "store": false,
        "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
    }))
    .unwrap();
    assert_eq!(
        chat,
        json!({
            "model": "chain", "max_tokens": 50, "stream": true, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": "rules"},
                {"role": "user", "content": [{"type": "text", "text": "weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        })
    );
}

#[test]
fn what_is_not_supported_is_refused_by_name() {
    let base = |extra: Value| {
        let mut body = json!({"model": "m", "input": "hi"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        chat_of(body).err()
    };
    assert_eq!(base(json!({"store": false, "previous_response_id": null, "include": [], "background": false})), None);
    let cases = [
        (json!({"previous_response_id": "resp_1"}), "'previous_response_id'"),
        (json!({"store": true}), "'store'"),
        (json!({"conversation": "c"}), "'conversation'"),
        (json!({"reasoning": {"effort": "low"}}), "'reasoning'"),
        (json!({"include": ["file_search_call.results"]}), "'include'"),
        (json!({"truncation": "auto"}), "'truncation'"),
        (json!({"tools": [{"type": "file_search"}]}), "'file_search'"),
        (json!({"input": [{"type": "reasoning", "summary": []}]}), "'reasoning'"),
        (json!({"input": []}), "input must be a string or between 1 and 4096 items"),
        (json!({"model": 5}), "model"),
    ];
    for (extra, expected) in cases {
        let error = base(extra.clone()).unwrap_or_else(|| panic!("{extra} was accepted"));
        assert!(error.contains(expected), "{extra}: {error}");
    }
}

fn context() -> ResponsesContext {
    ResponsesContext { id: "resp_1".into(), created_at: 7, echo: Map::new() }
}

#[test]
fn answers_translate_to_output_items() {
    let chat = json!({"model": "up", "choices": [{"finish_reason": "length", "message": {"content": "Hi",
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5}});
    let response = Responses::answer(&chat, &context()).unwrap();
    assert_eq!(response["status"], json!("incomplete"));
    assert_eq!(response["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(response["output"][0]["content"][0], json!({"type": "output_text", "text": "Hi", "annotations": []}));
    assert_eq!(
        response["output"][1],
        json!({"type": "function_call", "id": "fc_c1", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}",
            "status": "completed"})
    );
    assert_eq!(response["usage"]["total_tokens"], json!(17));
}

#[test]
fn streams_translate_to_response_events_however_chunked() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let stream = [
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo"}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}),
            Value::Null,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        format!("data: {}\n\n", json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    for cut in [1, 13, stream.len()] {
        let mut translation = Translation::new(Responses::stream(context()));
        let out: String = stream.as_bytes().chunks(cut).map(|c| translation.feed(c)).collect();
        let events: Vec<Value> = out
            .split("\n\n")
            .filter_map(|e| e.split_once("\ndata: "))
            .map(|(_, data)| serde_json::from_str(data).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let sequence: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
        let completed = &events[14]["response"];
        assert_eq!(completed["output"][0]["content"][0]["text"], json!("Hello"));
        assert_eq!(completed["output"][1]["arguments"], json!("{\"a\":1}"));
        assert_eq!(completed["usage"]["total_tokens"], json!(5));
    }
}
