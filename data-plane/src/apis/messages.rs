//! Anthropic's Messages API (`POST /v1/messages`) in and out of OpenAI chat. Every backend kind is served through
//! chat (the `anthropic` kind translates chat back to Messages itself), so one pipeline meters and governs every
//! request. Fields without an effect through chat are refused by name, never dropped silently; `cache_control` (top
//! level or on blocks) is the exception: a caching hint with no effect on the answer, accepted and not forwarded.

use axum::http::StatusCode;
use policy_engine::cel_limits::MAX_COLLECTION_ENTRIES;
use serde_json::{Map, Value, json};

use super::stream::{EventTranslator, named_event};
use super::{InboundFormat, error_message, invalid, json_object, kind, unsupported};
use crate::openai::error::GatewayError;

/// The most messages one request may carry.
pub const MAX_MESSAGES: usize = 4096;
/// The most content blocks one message (or the system prompt, or a tool result) may carry.
pub const MAX_BLOCKS: usize = 1024;

/// Fields translated to chat.
const TRANSLATED: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "metadata",
];

/// The Messages API.
pub struct Messages;

/// What the answer needs of the request: nothing beyond the chat answer itself.
pub struct MessagesContext;

impl InboundFormat for Messages {
    type Context = MessagesContext;
    type Stream = MessagesStream;

    fn to_chat(bytes: &[u8]) -> Result<(Map<String, Value>, MessagesContext), GatewayError> {
        let body = json_object(bytes)?;
        Ok((to_chat(&body)?, MessagesContext))
    }

    fn answer(chat: &Value, _: &MessagesContext) -> Result<Value, GatewayError> {
        answer(chat)
    }

    fn stream(_: MessagesContext) -> MessagesStream {
        MessagesStream::default()
    }

    fn error(status: StatusCode, openai: &Value) -> Value {
        error(status, openai)
    }
}

/// The chat body for a Messages request.
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    for field in body.keys().filter(|k| !TRANSLATED.contains(&k.as_str())) {
        let why = match field.as_str() {
            "top_k" => "top_k has no equivalent in the chat format the gateway routes through",
            // A caching hint without effect on the answer (as on blocks).
            "cache_control" => continue,
            // Thinking turned off is what chat does anyway.
            "thinking" if body["thinking"].get("type").and_then(Value::as_str) == Some("disabled") => continue,
            "thinking" => "extended thinking is not supported by this gateway",
            _ => "it is not supported by this gateway",
        };
        return Err(unsupported(format!("the field '{field}' is not supported: {why}")));
    }
    let mut chat = Map::new();
    match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => chat.insert("model".into(), json!(model)),
        _ => return Err(invalid("model", "model: a non-empty string is required")),
    };
    match body.get("max_tokens") {
        Some(value) if value.as_u64().is_some_and(|n| n >= 1) => chat.insert("max_tokens".into(), value.clone()),
        _ => return Err(invalid("max_tokens", "max_tokens: a positive integer is required")),
    };
    let mut messages = Vec::new();
    if let Some(system) = body.get("system").filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": system_text(system)?}));
    }
    let Some(Value::Array(inbound)) = body.get("messages") else {
        return Err(invalid("messages", "messages: an array is required"));
    };
    if inbound.is_empty() || inbound.len() > MAX_MESSAGES {
        return Err(invalid("messages", format!("messages: between 1 and {MAX_MESSAGES} messages are required")));
    }
    for (i, message) in inbound.iter().enumerate() {
        translate_message(i, message, &mut messages)?;
    }
    chat.insert("messages".into(), Value::Array(messages));
    match body.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), json!(true));
            // The translated stream ends with the usage (message_delta), so the chat stream must carry it.
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(other) => return Err(invalid("stream", format!("stream must be a boolean, not {}", kind(other)))),
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
    if let Some(stops) = body.get("stop_sequences").filter(|s| !s.is_null()) {
        let valid = stops.as_array().filter(|s| s.len() <= MAX_COLLECTION_ENTRIES && s.iter().all(Value::is_string));
        let Some(stops) = valid else {
            return Err(invalid("stop_sequences", format!("stop_sequences: at most {MAX_COLLECTION_ENTRIES} strings")));
        };
        chat.insert("stop".into(), Value::Array(stops.clone()));
    }
    if let Some(metadata) = body.get("metadata").filter(|m| !m.is_null()) {
        let Some(fields) = metadata.as_object() else {
            return Err(invalid("metadata", format!("metadata must be an object, not {}", kind(metadata))));
        };
        if let Some(user) = fields.get("user_id").filter(|u| !u.is_null()) {
            let Some(user) = user.as_str() else {
                return Err(invalid("metadata", "metadata.user_id must be a string"));
            };
            chat.insert("user".into(), json!(user));
        }
        // Route policies read the metadata as they do a chat request's (the pipeline bounds it).
        chat.insert("metadata".into(), metadata.clone());
    }
    let has_tools = match body.get("tools").filter(|t| !t.is_null()) {
        Some(tools) => {
            chat.insert("tools".into(), translate_tools(tools)?);
            true
        }
        None => false,
    };
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        translate_tool_choice(choice, has_tools, &mut chat)?;
    }
    Ok(chat)
}

/// The system prompt as one text: a string, or text blocks joined by blank lines.
fn system_text(system: &Value) -> Result<String, GatewayError> {
    match system {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) if blocks.len() <= MAX_BLOCKS => {
            let mut texts = Vec::with_capacity(blocks.len());
            for block in blocks {
                match (block.get("type").and_then(Value::as_str), block.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => return Err(invalid("system", "system: only text blocks are supported")),
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(invalid("system", format!("system: a string or at most {MAX_BLOCKS} text blocks"))),
    }
}

/// One Messages message as chat messages: a user message's tool results become `tool` messages (before the rest of
/// it, as chat orders them), an assistant's `tool_use` blocks its `tool_calls`.
fn translate_message(i: usize, message: &Value, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let role = match message.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => role,
        _ => return Err(invalid("messages", format!("messages[{i}].role must be 'user' or 'assistant'"))),
    };
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) if blocks.len() <= MAX_BLOCKS => blocks,
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content must be a string or at most {MAX_BLOCKS} content blocks"),
            ));
        }
    };
    let at = |j: usize| format!("messages[{i}].content[{j}]");
    let mut parts = Vec::new();
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let text = block.get("text").and_then(Value::as_str);
        match (role, block.get("type").and_then(Value::as_str)) {
            (_, Some("text")) => {
                let Some(text) = text else { return Err(invalid("messages", format!("{}.text is required", at(j)))) };
                texts.push(text.to_owned());
                parts.push(json!({"type": "text", "text": text}));
            }
            ("user", Some("image")) => parts.push(image_part(block).map_err(|m| invalid("messages", at(j) + m))?),
            ("user", Some("tool_result")) => out.push(tool_result(block).map_err(|m| invalid("messages", at(j) + m))?),
            ("assistant", Some("tool_use")) => {
                let (Some(id), Some(name), Some(input)) = (
                    block.get("id").and_then(Value::as_str),
                    block.get("name").and_then(Value::as_str),
                    block.get("input").filter(|i| i.is_object()),
                ) else {
                    return Err(invalid(
                        "messages",
                        format!("{}: tool_use needs an id, a name and an input object", at(j)),
                    ));
                };
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            (_, other) => {
                return Err(unsupported(format!(
                    "{}: content blocks of type '{}' are not supported in {role} messages",
                    at(j),
                    other.unwrap_or("(none)")
                )));
            }
        }
    }
    if role == "assistant" {
        let content = if texts.is_empty() { Value::Null } else { json!(texts.concat()) };
        let mut message = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        out.push(message);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An image block as a chat `image_url` part (base64 sources as data URLs).
fn image_part(block: &Value) -> Result<Value, &'static str> {
    let source = block.get("source").ok_or(": an image needs a source")?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            match (source.get("media_type").and_then(Value::as_str), source.get("data").and_then(Value::as_str)) {
                (Some(media_type), Some(data)) => format!("data:{media_type};base64,{data}"),
                _ => return Err(": a base64 image needs media_type and data"),
            }
        }
        Some("url") => source.get("url").and_then(Value::as_str).ok_or(": a url image needs a url")?.to_owned(),
        _ => return Err(": the image source type must be 'base64' or 'url'"),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result` block as a chat `tool` message; a result marked `is_error` says so in its text, chat having no
/// such flag.
fn tool_result(block: &Value) -> Result<Value, &'static str> {
    let id = block.get("tool_use_id").and_then(Value::as_str).ok_or(": a tool_result needs a tool_use_id")?;
    let text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) if blocks.len() <= MAX_BLOCKS => {
            let mut texts = Vec::new();
            for block in blocks {
                match (block.get("type").and_then(Value::as_str), block.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => return Err(": only text content is supported in a tool_result"),
                }
            }
            texts.join("\n\n")
        }
        Some(_) => return Err(": a tool_result's content must be a string or text blocks"),
    };
    let text =
        if block.get("is_error").and_then(Value::as_bool) == Some(true) { format!("Error: {text}") } else { text };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

/// Client tools as chat function tools; server tools (with a `type` other than `custom`) are refused.
fn translate_tools(tools: &Value) -> Result<Value, GatewayError> {
    let Some(tools) = tools.as_array() else {
        return Err(invalid("tools", format!("tools must be an array, not {}", kind(tools))));
    };
    if tools.len() > MAX_COLLECTION_ENTRIES {
        return Err(invalid("tools", format!("at most {MAX_COLLECTION_ENTRIES} tools may be declared")));
    }
    let mut functions = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|t| *t != "custom") {
            return Err(unsupported(format!("tools[{i}]: tools of type '{kind}' are not supported by this gateway")));
        }
        let (Some(name), Some(schema)) =
            (tool.get("name").and_then(Value::as_str), tool.get("input_schema").filter(|s| s.is_object()))
        else {
            return Err(invalid("tools", format!("tools[{i}] needs a name and an input_schema object")));
        };
        let mut function = json!({"name": name, "parameters": schema});
        if let Some(description) = tool.get("description").and_then(Value::as_str) {
            function["description"] = json!(description);
        }
        functions.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(functions))
}

fn translate_tool_choice(choice: &Value, has_tools: bool, chat: &mut Map<String, Value>) -> Result<(), GatewayError> {
    let translated = match (choice.get("type").and_then(Value::as_str), choice.get("name").and_then(Value::as_str)) {
        (Some("auto"), _) => json!("auto"),
        (Some("any"), _) => json!("required"),
        (Some("none"), _) => json!("none"),
        (Some("tool"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
        _ => return Err(invalid("tool_choice", "tool_choice: type must be auto, any, none, or tool with a name")),
    };
    if !has_tools {
        return Err(invalid("tool_choice", "tool_choice needs tools"));
    }
    chat.insert("tool_choice".into(), translated);
    match choice.get("disable_parallel_tool_use") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(disable)) => {
            chat.insert("parallel_tool_calls".into(), json!(!disable));
        }
        Some(_) => return Err(invalid("tool_choice", "tool_choice.disable_parallel_tool_use must be a boolean")),
    }
    Ok(())
}

/// Chat's `finish_reason` as a Messages `stop_reason`.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn message_id(chat: &Value) -> String {
    match chat.get("id").and_then(Value::as_str) {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) => format!("msg_{id}"),
        None => format!("msg_{}", uuid::Uuid::new_v4().simple()),
    }
}

fn usage(usage: Option<&Value>) -> Value {
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
    json!({"input_tokens": count("prompt_tokens"), "output_tokens": count("completion_tokens")})
}

/// A chat completion as a Messages answer.
pub fn answer(chat: &Value) -> Result<Value, GatewayError> {
    let choice = chat.pointer("/choices/0").ok_or_else(|| {
        GatewayError::UpstreamFailed("the upstream answer has no choices to translate to a message".to_owned())
    })?;
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
        let input: Value = match serde_json::from_str(if arguments.trim().is_empty() { "{}" } else { arguments }) {
            Ok(input @ Value::Object(_)) => input,
            _ => {
                return Err(GatewayError::UpstreamFailed(
                    "the model's tool call arguments are not a JSON object; a message cannot carry them".to_owned(),
                ));
            }
        };
        content.push(json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": input}));
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    Ok(json!({
        "id": message_id(chat),
        "type": "message",
        "role": "assistant",
        "model": chat.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage(chat.get("usage")),
    }))
}

/// Anthropic's error `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An error in Anthropic's shape.
pub fn error(status: StatusCode, openai: &Value) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": error_message(status, openai)}})
}

/// The block a stream has open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// A tool call, by its chat index.
    Tool(u64),
}

/// A chat stream as Messages events: `message_start`, each block's `content_block_start`/`_delta`/`_stop`,
/// `message_delta` (stop reason and usage, from the chat stream's usage chunk) and `message_stop`.
#[derive(Default)]
pub struct MessagesStream {
    started: bool,
    open: Option<Open>,
    /// The index of the next block.
    blocks: u64,
    stop_reason: Option<&'static str>,
    usage: Option<Value>,
}

impl MessagesStream {
    fn start(&mut self, chunk: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({"id": message_id(chunk), "type": "message", "role": "assistant",
            "model": chunk.get("model").cloned().unwrap_or(Value::Null), "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}});
        named_event(out, "message_start", &json!({"type": "message_start", "message": message}));
    }

    fn close(&mut self, out: &mut String) {
        if self.open.take().is_some() {
            named_event(out, "content_block_stop", &json!({"type": "content_block_stop", "index": self.blocks - 1}));
        }
    }

    fn open(&mut self, open: Open, block: Value, out: &mut String) {
        self.close(out);
        named_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.blocks, "content_block": block}),
        );
        self.blocks += 1;
        self.open = Some(open);
    }

    fn delta(&self, delta: Value, out: &mut String) {
        named_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.blocks - 1,
            "delta": delta}),
        );
    }
}

impl EventTranslator for MessagesStream {
    fn chunk(&mut self, chunk: &Value, out: &mut String) {
        self.start(chunk, out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else { return };
        let delta = &choice["delta"];
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            if self.open != Some(Open::Text) {
                self.open(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            self.delta(json!({"type": "text_delta", "text": text}), out);
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if let Some(name) = call.pointer("/function/name").and_then(Value::as_str)
                && self.open != Some(Open::Tool(index))
            {
                let id = call.get("id").cloned().unwrap_or(Value::Null);
                self.open(Open::Tool(index), json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
            }
            // Chat streams one call after the other (the tool stage releases them in order): a fragment of a call
            // whose block is not open has no block to go to.
            if self.open == Some(Open::Tool(index))
                && let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
                && !arguments.is_empty()
            {
                self.delta(json!({"type": "input_json_delta", "partial_json": arguments}), out);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close(out);
            self.stop_reason = Some(stop_reason(finish));
        }
    }

    fn error(&mut self, error: &Value, out: &mut String) {
        let status = match error.pointer("/error/type").and_then(Value::as_str) {
            Some("rate_limit_error") => StatusCode::TOO_MANY_REQUESTS,
            Some("invalid_request_error") => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        named_event(out, "error", &self::error(status, error));
    }

    fn done(&mut self, out: &mut String) {
        self.start(&Value::Null, out);
        self.close(out);
        let usage = usage(self.usage.as_ref());
        named_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage}),
        );
        named_event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
#[path = "messages_tests.rs"]
mod tests;
