//! OpenAI's Responses API (`POST /v1/responses`) in and out of chat, for every backend kind. Stateless: nothing is
//! stored, so `store: true`, `previous_response_id`, `conversation` and `background` are refused, as are built-in
//! tools (only `function` tools translate), reasoning and `include`; every refusal names its field.

use axum::http::StatusCode;
use policy_engine::cel_limits::MAX_COLLECTION_ENTRIES;
use serde_json::{Map, Value, json};

use super::stream::{EventTranslator, named_event};
use super::{InboundFormat, invalid, json_object, kind, unsupported};
use crate::openai::error::GatewayError;

/// The most input items one request may carry.
pub const MAX_ITEMS: usize = 4096;
/// The most content parts one input message may carry.
pub const MAX_PARTS: usize = 1024;

/// Fields translated to chat, or echoed in the response.
const TRANSLATED: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "metadata",
    "user",
    "store",
    "text",
    "truncation",
];

/// The Responses API.
pub struct Responses;

/// What the response object echoes of the request, and its identity.
pub struct ResponsesContext {
    id: String,
    created_at: i64,
    echo: Map<String, Value>,
}

impl InboundFormat for Responses {
    type Context = ResponsesContext;
    type Stream = ResponsesStream;

    fn to_chat(bytes: &[u8]) -> Result<(Map<String, Value>, ResponsesContext), GatewayError> {
        let body = json_object(bytes)?;
        let chat = to_chat(&body)?;
        let mut echo = Map::new();
        for field in ["instructions", "tools", "tool_choice", "temperature", "top_p", "max_output_tokens", "metadata"] {
            echo.insert(field.into(), body.get(field).cloned().unwrap_or(Value::Null));
        }
        echo.insert("parallel_tool_calls".into(), body.get("parallel_tool_calls").cloned().unwrap_or(json!(true)));
        if echo["tools"].is_null() {
            echo.insert("tools".into(), json!([]));
        }
        if echo["tool_choice"].is_null() {
            echo.insert("tool_choice".into(), json!("auto"));
        }
        if echo["metadata"].is_null() {
            echo.insert("metadata".into(), json!({}));
        }
        let context = ResponsesContext {
            id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
            created_at: chrono::Utc::now().timestamp(),
            echo,
        };
        Ok((chat, context))
    }

    fn answer(chat: &Value, context: &ResponsesContext) -> Result<Value, GatewayError> {
        let choice = chat.pointer("/choices/0").ok_or_else(|| {
            GatewayError::UpstreamFailed("the upstream answer has no choices to translate to a response".to_owned())
        })?;
        let message = &choice["message"];
        let mut output = Vec::new();
        if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            output.push(message_item(&format!("msg_{}", context.id), text, "completed"));
        }
        for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let call_id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
            let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or_default();
            output.push(call_item(call_id, name, arguments, "completed"));
        }
        let finish = choice.get("finish_reason").and_then(Value::as_str);
        Ok(response(context, chat.get("model"), output, finish, chat.get("usage"), "completed"))
    }

    fn stream(context: ResponsesContext) -> ResponsesStream {
        ResponsesStream {
            context,
            model: None,
            sequence: 0,
            started: false,
            output: Vec::new(),
            open: None,
            finish: None,
            usage: None,
        }
    }

    fn error(_: StatusCode, openai: &Value) -> Value {
        // The OpenAI shape already.
        openai.clone()
    }
}

/// The chat body for a Responses request.
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    for (field, value) in body {
        if TRANSLATED.contains(&field.as_str()) {
            continue;
        }
        // Fields sent with their "off" value have nothing to do.
        let off = match field.as_str() {
            "previous_response_id" | "conversation" | "reasoning" | "prompt" | "service_tier" => value.is_null(),
            "background" => value.is_null() || value == &json!(false),
            "include" => value.is_null() || value.as_array().is_some_and(Vec::is_empty),
            _ => false,
        };
        if !off {
            let why = match field.as_str() {
                "previous_response_id" | "conversation" => "the gateway stores no responses; send the whole input",
                "background" => "background responses are not supported",
                _ => "it is not supported by this gateway",
            };
            return Err(unsupported(format!("the field '{field}' is not supported: {why}")));
        }
    }
    if body.get("store") == Some(&json!(true)) {
        return Err(unsupported("the field 'store' is not supported as true: the gateway stores no responses"));
    }
    if let Some(truncation) = body.get("truncation").filter(|t| !t.is_null())
        && truncation != "disabled"
    {
        return Err(unsupported("the field 'truncation' is not supported except as 'disabled'"));
    }
    let mut chat = Map::new();
    match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => chat.insert("model".into(), json!(model)),
        _ => return Err(invalid("model", "you must provide a model parameter")),
    };
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(instructions)) => messages.push(json!({"role": "system", "content": instructions})),
        Some(other) => {
            return Err(invalid("instructions", format!("instructions must be a string, not {}", kind(other))));
        }
    }
    match body.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_ITEMS => {
            for (i, item) in items.iter().enumerate() {
                translate_item(i, item, &mut messages)?;
            }
        }
        _ => return Err(invalid("input", format!("input must be a string or between 1 and {MAX_ITEMS} items"))),
    }
    chat.insert("messages".into(), Value::Array(messages));
    match body.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(value) if value.as_u64().is_some() => {
            chat.insert("max_tokens".into(), value.clone());
        }
        Some(_) => return Err(invalid("max_output_tokens", "max_output_tokens must be a non-negative integer")),
    }
    for field in ["temperature", "top_p"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(value @ Value::Number(_)) => {
                chat.insert(field.into(), value.clone());
            }
            Some(other) => {
                return Err(GatewayError::InvalidRequest(format!("{field} must be a number, not {}", kind(other))));
            }
        }
    }
    match body.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), json!(true));
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(other) => return Err(invalid("stream", format!("stream must be a boolean, not {}", kind(other)))),
    }
    for field in ["metadata", "user", "parallel_tool_calls"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            chat.insert(field.into(), value.clone());
        }
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        chat.insert("tools".into(), translate_tools(tools)?);
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        let translated = match choice {
            Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => choice.clone(),
            Value::Object(c)
                if c.get("type") == Some(&json!("function")) && c.get("name").is_some_and(Value::is_string) =>
            {
                json!({"type": "function", "function": {"name": c["name"]}})
            }
            _ => {
                return Err(unsupported(
                    "tool_choice: only 'auto', 'none', 'required' or a function by name are supported",
                ));
            }
        };
        chat.insert("tool_choice".into(), translated);
    }
    if let Some(format) =
        body.get("text").filter(|t| !t.is_null()).and_then(|t| t.get("format")).filter(|f| !f.is_null())
    {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                chat.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let mut schema = format.clone();
                if let Some(fields) = schema.as_object_mut() {
                    fields.remove("type");
                }
                chat.insert("response_format".into(), json!({"type": "json_schema", "json_schema": schema}));
            }
            _ => return Err(unsupported("text.format: only 'text', 'json_object' and 'json_schema' are supported")),
        }
    }
    Ok(chat)
}

/// One input item as chat messages; consecutive function calls join one assistant message, as chat groups them.
fn translate_item(i: usize, item: &Value, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer") => "system",
                Some(role @ ("user" | "system" | "assistant")) => role,
                _ => {
                    return Err(invalid(
                        "input",
                        format!("input[{i}].role must be user, system, developer or assistant"),
                    ));
                }
            };
            let content = match item.get("content") {
                Some(Value::String(text)) => json!(text),
                Some(Value::Array(parts)) if parts.len() <= MAX_PARTS => {
                    let mut translated = Vec::with_capacity(parts.len());
                    for (j, part) in parts.iter().enumerate() {
                        translated.push(
                            translate_part(part)
                                .map_err(|m| GatewayError::Unsupported(format!("input[{i}].content[{j}]: {m}")))?,
                        );
                    }
                    if role == "assistant" || role == "system" {
                        // Only users send images; the others' texts join as chat expects them.
                        let texts: Vec<&str> = translated.iter().filter_map(|p| p["text"].as_str()).collect();
                        json!(texts.concat())
                    } else {
                        Value::Array(translated)
                    }
                }
                _ => {
                    return Err(invalid(
                        "input",
                        format!("input[{i}].content must be a string or at most {MAX_PARTS} parts"),
                    ));
                }
            };
            out.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let (Some(call_id), Some(name), Some(arguments)) = (
                item.get("call_id").and_then(Value::as_str),
                item.get("name").and_then(Value::as_str),
                item.get("arguments").and_then(Value::as_str),
            ) else {
                return Err(invalid("input", format!("input[{i}]: a function_call needs call_id, name and arguments")));
            };
            let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let (Some(call_id), Some(output)) =
                (item.get("call_id").and_then(Value::as_str), item.get("output").and_then(Value::as_str))
            else {
                return Err(invalid(
                    "input",
                    format!("input[{i}]: a function_call_output needs call_id and a string output"),
                ));
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        other => {
            return Err(unsupported(format!("input[{i}]: items of type '{other}' are not supported by this gateway")));
        }
    }
    Ok(())
}

fn translate_part(part: &Value) -> Result<Value, String> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => match part.get("text").and_then(Value::as_str) {
            Some(text) => Ok(json!({"type": "text", "text": text})),
            None => Err("a text part needs its text".to_owned()),
        },
        Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
            Some(url) => Ok(json!({"type": "image_url", "image_url": {"url": url}})),
            None => Err("only images given by image_url are supported".to_owned()),
        },
        other => Err(format!("parts of type '{}' are not supported by this gateway", other.unwrap_or("(none)"))),
    }
}

fn translate_tools(tools: &Value) -> Result<Value, GatewayError> {
    let Some(tools) = tools.as_array() else {
        return Err(invalid("tools", format!("tools must be an array, not {}", kind(tools))));
    };
    if tools.len() > MAX_COLLECTION_ENTRIES {
        return Err(invalid("tools", format!("at most {MAX_COLLECTION_ENTRIES} tools may be declared")));
    }
    let mut functions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return Err(unsupported(format!(
                    "tools[{i}]: tools of type '{}' are not supported by this gateway (only 'function')",
                    other.unwrap_or("(none)")
                )));
            }
        }
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Err(invalid("tools", format!("tools[{i}] needs a name")));
        };
        let mut function = json!({"name": name});
        for field in ["description", "parameters", "strict"] {
            if let Some(value) = tool.get(field).filter(|v| !v.is_null()) {
                function[field] = value.clone();
            }
        }
        functions.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(functions))
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

fn usage(usage: Option<&Value>) -> Value {
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (count("prompt_tokens"), count("completion_tokens"));
    json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
}

/// The response object.
fn response(
    context: &ResponsesContext,
    model: Option<&Value>,
    output: Vec<Value>,
    finish: Option<&str>,
    chat_usage: Option<&Value>,
    status: &str,
) -> Value {
    let (status, incomplete) = match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => (status, Value::Null),
    };
    let mut response = json!({
        "id": context.id,
        "object": "response",
        "created_at": context.created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "model": model.cloned().unwrap_or(Value::Null),
        "output": output,
        "usage": if status == "in_progress" { Value::Null } else { usage(chat_usage) },
        "text": {"format": {"type": "text"}},
        "store": false,
        "truncation": "disabled",
    });
    if let Some(fields) = response.as_object_mut() {
        fields.extend(context.echo.clone());
    }
    response
}

/// The item a stream has open.
#[derive(Clone, PartialEq, Eq)]
enum Open {
    Text {
        text: String,
    },
    /// A function call, by its chat index.
    Call {
        index: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// A chat stream as Responses events: `response.created`, `response.in_progress`, each output item's
/// `added`/delta/`done` events (`response.output_text.delta`, `response.function_call_arguments.delta`) and
/// `response.completed` with the whole response and its usage.
pub struct ResponsesStream {
    context: ResponsesContext,
    model: Option<Value>,
    sequence: u64,
    started: bool,
    /// The finished output items.
    output: Vec<Value>,
    open: Option<Open>,
    finish: Option<String>,
    usage: Option<Value>,
}

impl ResponsesStream {
    fn emit(&mut self, out: &mut String, name: &str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        named_event(out, name, &data);
    }

    fn snapshot(&self, status: &str) -> Value {
        response(
            &self.context,
            self.model.as_ref(),
            self.output.clone(),
            self.finish.as_deref(),
            self.usage.as_ref(),
            status,
        )
    }

    fn start(&mut self, chunk: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        self.model = chunk.get("model").cloned();
        let response = self.snapshot("in_progress");
        self.emit(out, "response.created", json!({"response": response}));
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn item_id(&self) -> String {
        format!("msg_{}_{}", self.context.id, self.output.len())
    }

    fn close(&mut self, out: &mut String) {
        let Some(open) = self.open.take() else { return };
        let output_index = self.output.len();
        let item = match open {
            Open::Text { text } => {
                let id = self.item_id();
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": output_index,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": output_index,
                    "content_index": 0, "part": part}),
                );
                message_item(&id, &text, "completed")
            }
            Open::Call { call_id, name, arguments, .. } => {
                let item = call_item(&call_id, &name, &arguments, "completed");
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"],
                    "output_index": output_index, "arguments": arguments}),
                );
                item
            }
        };
        self.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item}));
        self.output.push(item);
    }
}

impl EventTranslator for ResponsesStream {
    fn chunk(&mut self, chunk: &Value, out: &mut String) {
        self.start(chunk, out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else { return };
        let delta = &choice["delta"];
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some(Open::Text { .. })) {
                self.close(out);
                let (id, output_index) = (self.item_id(), self.output.len());
                let item =
                    json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
                self.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": output_index,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                self.open = Some(Open::Text { text: String::new() });
            }
            let (id, output_index) = (self.item_id(), self.output.len());
            if let Some(Open::Text { text: all }) = &mut self.open {
                all.push_str(text);
            }
            self.emit(
                out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": output_index,
                "content_index": 0, "delta": text, "logprobs": []}),
            );
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let is_open = matches!(&self.open, Some(Open::Call { index: i, .. }) if *i == index);
            if let Some(name) = call.pointer("/function/name").and_then(Value::as_str)
                && !is_open
            {
                self.close(out);
                let call_id = call.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                let item = call_item(&call_id, name, "", "in_progress");
                self.emit(out, "response.output_item.added", json!({"output_index": self.output.len(), "item": item}));
                self.open = Some(Open::Call { index, call_id, name: name.to_owned(), arguments: String::new() });
            }
            // Chat streams one call after the other: a fragment of a call that is not open has no item to go to.
            if let Some(fragment) =
                call.pointer("/function/arguments").and_then(Value::as_str).filter(|a| !a.is_empty())
                && let Some(Open::Call { index: i, call_id, arguments, .. }) = &mut self.open
                && *i == index
            {
                arguments.push_str(fragment);
                let item_id = format!("fc_{call_id}");
                let output_index = self.output.len();
                self.emit(
                    out,
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id,
                    "output_index": output_index, "delta": fragment}),
                );
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close(out);
            self.finish = Some(finish.to_owned());
        }
    }

    fn error(&mut self, error: &Value, out: &mut String) {
        let inner = error.get("error").cloned().unwrap_or(Value::Null);
        let data = json!({"code": inner.get("code"), "message": inner.get("message"), "param": inner.get("param"),
            "error": inner});
        self.emit(out, "error", data);
    }

    fn done(&mut self, out: &mut String) {
        self.start(&Value::Null, out);
        self.close(out);
        let response = self.snapshot("completed");
        let name = if response["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.emit(out, name, json!({"response": response}));
    }
}

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
