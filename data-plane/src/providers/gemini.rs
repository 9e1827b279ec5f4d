//! The `gemini` backend kind, and the translation the `vertex` kind shares: an OpenAI chat completion request
//! translated into Google's `generateContent` (`POST {base_url}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` for streams) and the answer translated back ([`answer`], and
//! [`super::gemini_stream`] for the event stream). The Gemini API takes its key in `x-goog-api-key`.
//!
//! - Requests ([`request`]): `system`/`developer` messages become `systemInstruction`; user turns `user` contents,
//!   assistant turns `model` contents (consecutive turns of one role merged); assistant `tool_calls` become
//!   `functionCall` parts and `tool` messages `functionResponse` parts named after the call they answer; data-URL
//!   images become `inlineData`; `tools` become `functionDeclarations` (their JSON Schema as `parametersJsonSchema`)
//!   and `tool_choice` the `functionCallingConfig` mode; `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, the
//!   penalties and `response_format` become `generationConfig`; `reasoning_effort` becomes a `thinkingConfig` budget
//!   with the thoughts included. What has no equivalent (`n > 1`, images by URL, audio and file parts) makes this
//!   candidate unable to serve the request, so another one can.
//! - Answers: text parts become `content`, parts marked `thought` become `reasoning_content`, `functionCall` parts
//!   become `tool_calls` with ids derived from the call itself ([`call_id`]: the same answer always gets the same
//!   ids); finish reasons map to OpenAI's (safety, recitation and other filter stops: `content_filter`); a prompt
//!   the provider blocked (`promptFeedback.blockReason`) is a `content_filter` error; `usageMetadata` becomes usage
//!   with thought tokens counted as output, as Google bills them, and cached tokens as `cached_tokens`.
//! - Embeddings: [`super::google_embeddings`].
//! - Errors: Google's `{"error": {"code", "message", "status"}}` becomes the OpenAI error shape. Access, missing-model
//!   and timeout answers (401, 403, 404, 408) are this backend's trouble, not the caller's: they fail over.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::gemini_shapes::{
    Parts, blocked_prompt, completion_id, failed_finish, finish_reason, openai_error, read_parts, usage,
};
use super::upstream::AttemptError;
use super::{AnswerError, Inbound, Outbound, Provider, StatusClass, UpstreamBytes};
use crate::openai::request::Endpoint;

/// The header the Gemini API takes its key in.
pub const API_KEY_HEADER: &str = "x-goog-api-key";

fn unsupported(message: impl Into<String>) -> String {
    message.into()
}

/// An OpenAI image part's URL as an `inlineData` part: only data URLs (Google fetches no arbitrary URLs).
fn image_part(url: &str) -> Result<Value, String> {
    let Some((mime_type, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) else {
        return Err(unsupported("gemini and vertex backends take images as data URLs only, not by URL"));
    };
    Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
}

fn parts_of(content: Option<&Value>) -> Result<Vec<Value>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"text": part.get("text").and_then(Value::as_str).unwrap_or_default()})),
                Some("image_url") => {
                    image_part(part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or_default())
                }
                other => {
                    Err(format!("gemini and vertex backends take no {} content parts", other.unwrap_or("typeless")))
                }
            })
            .collect(),
        Some(_) => Err(unsupported("message content must be a string or an array of parts")),
    }
}

fn text_of(content: Option<&Value>) -> Result<String, String> {
    let parts = parts_of(content)?;
    let texts: Option<Vec<&str>> = parts.iter().map(|p| p.get("text").and_then(Value::as_str)).collect();
    texts.map(|t| t.join("\n")).ok_or_else(|| unsupported("system and tool messages must be text"))
}

/// Append a turn, merging it into the previous one of the same role.
fn push_turn(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut()
        && last["role"] == role
        && let Some(existing) = last["parts"].as_array_mut()
    {
        existing.extend(parts);
        return;
    }
    contents.push(json!({"role": role, "parts": parts}));
}

fn tools_of(body: &Map<String, Value>) -> Result<Option<(Value, Option<Value>)>, String> {
    let Some(tools) = body.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let declarations: Vec<Value> = tools
        .iter()
        .filter_map(|tool| tool.get("function"))
        .map(|function| {
            let mut declaration = json!({"name": function.get("name").cloned().unwrap_or_default()});
            if let Some(description) = function.get("description").filter(|d| d.is_string()) {
                declaration["description"] = description.clone();
            }
            if let Some(parameters) = function.get("parameters").filter(|p| p.is_object()) {
                declaration["parametersJsonSchema"] = parameters.clone();
            }
            declaration
        })
        .collect();
    let config = match body.get("tool_choice").unwrap_or(&Value::Null) {
        Value::Null => None,
        Value::String(mode) => match mode.as_str() {
            "auto" => Some(json!({"functionCallingConfig": {"mode": "AUTO"}})),
            "none" => Some(json!({"functionCallingConfig": {"mode": "NONE"}})),
            "required" => Some(json!({"functionCallingConfig": {"mode": "ANY"}})),
            other => return Err(format!("tool_choice {other:?} has no gemini equivalent")),
        },
        choice @ Value::Object(_) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}})),
            None => return Err(unsupported("tool_choice must name a function")),
        },
        _ => return Err(unsupported("tool_choice must be a string or an object")),
    };
    Ok(Some((json!([{"functionDeclarations": declarations}]), config)))
}

/// `reasoning_effort` as a thinking budget (the budgets Google's own OpenAI-compatible endpoint uses).
fn thinking_config(effort: &str) -> Result<Value, String> {
    let budget = match effort {
        "none" | "minimal" => return Ok(json!({"thinkingBudget": 0})),
        "low" => 1024,
        "medium" => 8192,
        "high" => 24576,
        other => return Err(format!("reasoning_effort {other:?} has no gemini equivalent")),
    };
    Ok(json!({"thinkingBudget": budget, "includeThoughts": true}))
}

fn generation_config(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut config = Map::new();
    let mut set = |field: &str, value: Value| {
        config.insert(field.to_owned(), value);
    };
    if let Some(max) = ["max_completion_tokens", "max_tokens"].iter().find_map(|f| body.get(*f)?.as_u64()) {
        set("maxOutputTokens", json!(max));
    }
    for (openai, google) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(value) = body.get(openai).and_then(Value::as_f64) {
            set(google, json!(value));
        }
    }
    if let Some(seed) = body.get("seed").and_then(Value::as_i64) {
        set("seed", json!(seed));
    }
    match body.get("stop") {
        Some(Value::String(stop)) => set("stopSequences", json!([stop])),
        Some(Value::Array(stops)) => set("stopSequences", Value::Array(stops.clone())),
        _ => {}
    }
    match body.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some("json_object") => set("responseMimeType", json!("application/json")),
        Some("json_schema") => {
            set("responseMimeType", json!("application/json"));
            let schema = body.get("response_format").and_then(|f| f.pointer("/json_schema/schema"));
            if let Some(schema) = schema.filter(|s| s.is_object()) {
                set("responseJsonSchema", schema.clone());
            }
        }
        Some(other) => return Err(format!("response_format {other:?} has no gemini equivalent")),
    }
    if let Some(effort) = body.get("reasoning_effort").and_then(Value::as_str) {
        set("thinkingConfig", thinking_config(effort)?);
    }
    Ok(config)
}

/// The `generateContent` request for the OpenAI chat request `body`; `Err` says why this backend cannot serve it.
pub fn request(body: &Map<String, Value>) -> Result<Value, String> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("gemini and vertex backends are sent one candidate per request: n must be 1"));
    }
    let mut system = Vec::new();
    let mut contents = Vec::new();
    // Function names by call id: a `tool` message names only the call it answers, Google wants the function.
    let mut called = std::collections::HashMap::new();
    for message in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let content = message.get("content");
        match message.get("role").and_then(Value::as_str).unwrap_or_default() {
            "system" | "developer" => {
                let text = text_of(content)?;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            "user" => push_turn(&mut contents, "user", parts_of(content)?),
            "assistant" => {
                let mut parts = parts_of(content)?;
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                    let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
                    let Ok(args @ Value::Object(_)) = serde_json::from_str::<Value>(arguments) else {
                        return Err(unsupported("an assistant tool call's arguments must be a JSON object"));
                    };
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        called.insert(id.to_owned(), name.to_owned());
                    }
                    parts.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                push_turn(&mut contents, "model", parts);
            }
            "tool" => {
                let id = message.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                let Some(name) = called.get(id) else {
                    return Err(format!("tool message {id:?} answers no earlier assistant tool call"));
                };
                let text = text_of(content)?;
                // An object answer is passed as it is; anything else is wrapped, as Google wants an object.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({"content": text}),
                };
                push_turn(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => return Err(format!("gemini and vertex backends take no {other:?} messages")),
        }
    }
    let mut translated = Map::new();
    translated.insert("contents".to_owned(), Value::Array(contents));
    if !system.is_empty() {
        translated.insert("systemInstruction".to_owned(), json!({"parts": system}));
    }
    let config = generation_config(body)?;
    if !config.is_empty() {
        translated.insert("generationConfig".to_owned(), Value::Object(config));
    }
    if let Some((tools, tool_config)) = tools_of(body)? {
        translated.insert("tools".to_owned(), tools);
        if let Some(tool_config) = tool_config {
            translated.insert("toolConfig".to_owned(), tool_config);
        }
    }
    Ok(Value::Object(translated))
}

/// A non-streamed `generateContent` answer as an OpenAI chat completion (an embeddings answer as an OpenAI
/// embedding list).
pub fn answer(body: &[u8]) -> Result<Vec<u8>, AnswerError> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| AnswerError::Malformed(format!("the gemini answer is not JSON: {e}")))?;
    if let Some(embeddings) = super::google_embeddings::answer(&answer) {
        return serde_json::to_vec(&embeddings?).map_err(|e| AnswerError::Malformed(e.to_string()));
    }
    if let Some(blocked) = blocked_prompt(&answer) {
        return Err(AnswerError::Filtered(blocked));
    }
    let Some(candidate) = answer.pointer("/candidates/0") else {
        return Err(AnswerError::Malformed("the gemini answer has no candidates".to_owned()));
    };
    let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
    if let Some(failed) = failed_finish(reason) {
        return Err(AnswerError::Malformed(failed));
    }
    let Parts { text, reasoning, calls } = read_parts(candidate, 0);
    let content = if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) };
    let mut reply = json!({"role": "assistant", "content": content});
    let finish = finish_reason(reason, !calls.is_empty());
    if !calls.is_empty() {
        reply["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        reply["reasoning_content"] = Value::String(reasoning);
    }
    let mut completion = json!({
        "id": completion_id(&answer),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": answer.get("modelVersion").cloned().unwrap_or_else(|| json!("")),
        "choices": [{"index": 0, "message": reply, "finish_reason": finish, "logprobs": null}],
    });
    if let Some(metadata) = answer.get("usageMetadata").filter(|u| u.is_object()) {
        completion["usage"] = usage(metadata);
    }
    serde_json::to_vec(&completion).map_err(|e| AnswerError::Malformed(e.to_string()))
}

/// How Google's error statuses count: access, missing-model and timeout answers are this backend's trouble (another
/// candidate may hold the access or the model), other 4xx the caller's.
pub fn classify(status: u16) -> StatusClass {
    match status {
        401 | 403 | 404 | 408 | 429 => StatusClass::FailOver,
        400..=499 => StatusClass::CallersMistake,
        _ => StatusClass::FailOver,
    }
}

/// A model name as a path segment: `models/` prefixes (as Google lists them) dropped, the rest percent-encoded.
pub fn model_segment(model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

/// The method path of a chat request, `:generateContent` or `:streamGenerateContent?alt=sse`.
pub fn method(body: &Map<String, Value>) -> &'static str {
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    }
}

/// What a Google backend is sent for `inbound`: the translated body and the method its URL ends with (`vertex`:
/// Vertex's embeddings method, `predict`, rather than the Gemini API's `batchEmbedContents`); `Err` when it cannot
/// serve the request.
pub fn google_request(inbound: &Inbound<'_>, vertex: bool) -> Result<(Vec<u8>, &'static str), AttemptError> {
    let model = inbound.upstream_model.strip_prefix("models/").unwrap_or(inbound.upstream_model);
    let (translated, method) = match inbound.endpoint {
        Endpoint::ChatCompletions => (request(inbound.body), method(inbound.body)),
        Endpoint::Embeddings if vertex => (super::google_embeddings::vertex_request(inbound.body), ":predict"),
        Endpoint::Embeddings => (super::google_embeddings::gemini_request(inbound.body, model), ":batchEmbedContents"),
        Endpoint::Completions | Endpoint::ImageGenerations => {
            let kind = if vertex { "vertex" } else { "gemini" };
            return Err(AttemptError::Unsupported(format!(
                "{kind} backends serve chat completions and embeddings, not {}",
                inbound.endpoint.cel_name()
            )));
        }
    };
    let translated = translated.map_err(AttemptError::Unsupported)?;
    let body = serde_json::to_vec(&translated).map_err(|e| AttemptError::Connect(e.to_string()))?;
    Ok((body, method))
}

/// The `gemini` backend kind (see the module documentation).
pub struct Gemini;

impl Provider for Gemini {
    fn request(&self, inbound: &Inbound<'_>) -> Result<Outbound, AttemptError> {
        let (body, method) = google_request(inbound, false)?;
        let url = format!("{}/models/{}{method}", inbound.backend.base_url, model_segment(inbound.upstream_model));
        Ok(Outbound { url, body, native_key_header: Some(API_KEY_HEADER), headers: &[] })
    }

    fn health_check(&self, backend: &policy_engine::config::BackendSpec, path: &str) -> Outbound {
        Outbound {
            url: super::join(&backend.base_url, path),
            body: Vec::new(),
            native_key_header: Some(API_KEY_HEADER),
            headers: &[],
        }
    }

    fn translates(&self) -> bool {
        true
    }

    fn answer(&self, body: Bytes) -> Result<Bytes, AnswerError> {
        answer(&body).map(Bytes::from)
    }

    fn stream(&self, upstream: UpstreamBytes) -> UpstreamBytes {
        super::gemini_stream::translate(upstream).boxed()
    }

    fn error_body(&self, body: String) -> String {
        openai_error(&body)
    }

    fn classify(&self, status: u16) -> StatusClass {
        classify(status)
    }
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
