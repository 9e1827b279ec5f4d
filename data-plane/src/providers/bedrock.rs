//! The `bedrock` backend kind: an OpenAI chat completion request translated into Amazon Bedrock's Converse API
//! (`POST {base_url}/model/{model}/converse`, or `/converse-stream` for streams), signed with SigV4
//! ([`super::sigv4`]), and the answer translated back ([`answer`], and [`super::bedrock_stream`] for the binary event
//! stream).
//!
//! - Requests ([`request`]): `system`/`developer` messages become `system` blocks; `tool` messages become
//!   `toolResult` blocks of a user turn; assistant `tool_calls` become `toolUse` blocks; consecutive turns of one role
//!   are merged (Converse wants them alternating); data-URL images become `image` blocks; `max_tokens`,
//!   `temperature` (clamped to Converse's 0 to 1), `top_p` and `stop` become `inferenceConfig`; `tools` and
//!   `tool_choice` become `toolConfig`. What has no equivalent (`n > 1`, `tool_choice: "none"`, images by URL, audio
//!   and file parts) makes this candidate unable to serve the request, so another one can.
//! - Answers: `text`, `toolUse` and `reasoningContent` blocks become `content`, `tool_calls` and
//!   `reasoning_content`; stop reasons become finish reasons (guardrail and content-filter stops:
//!   `content_filter`); usage becomes OpenAI usage with every input token in `prompt_tokens` and the cache fields
//!   kept as the `anthropic` kind keeps them, so metering prices them alike.
//! - Errors: Bedrock's `{"message": ...}` bodies become the OpenAI error shape. Access, missing-model, model-timeout
//!   and model-error answers (401, 403, 404, 408, 424) are this backend's trouble, not the caller's: they fail over.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::bedrock_shapes::{completion_id, finish_reason, openai_error_of, usage};
use super::upstream::AttemptError;
use super::{Credentials, Inbound, Outbound, Provider, StatusClass, Unsigned, UpstreamBytes};
use crate::openai::request::Endpoint;

/// The SigV4 service name Bedrock's runtime is signed for.
pub const SERVICE: &str = "bedrock";

fn invalid(message: impl Into<String>) -> String {
    message.into()
}

/// An OpenAI image part's URL as a Converse image block: only inline data URLs (Converse takes bytes, not URLs).
fn image_block(url: &str) -> Result<Value, String> {
    let Some((media_type, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) else {
        return Err(invalid("bedrock backends take images as data URLs only, not by URL"));
    };
    let format = match media_type {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => return Err(format!("bedrock backends take png, jpeg, gif and webp images, not {other}")),
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"text": part.get("text").and_then(Value::as_str).unwrap_or_default()})),
                Some("image_url") => {
                    image_block(part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or_default())
                }
                other => Err(format!("bedrock backends take no {} content parts", other.unwrap_or("typeless"))),
            })
            .collect(),
        Some(_) => Err(invalid("message content must be a string or an array of parts")),
    }
}

fn text_of(content: Option<&Value>) -> Result<String, String> {
    let blocks = content_blocks(content)?;
    let texts: Option<Vec<&str>> = blocks.iter().map(|b| b.get("text").and_then(Value::as_str)).collect();
    texts.map(|t| t.join("\n")).ok_or_else(|| invalid("system and tool messages must be text"))
}

/// Append a turn, merging it into the previous one of the same role.
fn push_turn(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last["role"] == role
        && let Some(content) = last["content"].as_array_mut()
    {
        content.extend(blocks);
        return;
    }
    messages.push(json!({"role": role, "content": blocks}));
}

fn tool_config(body: &Map<String, Value>) -> Result<Option<Value>, String> {
    let Some(tools) = body.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let tools: Vec<Value> = tools
        .iter()
        .filter_map(|tool| tool.get("function"))
        .map(|function| {
            let schema = function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}));
            let mut spec = json!({"name": function.get("name").cloned().unwrap_or_default(),
                                  "inputSchema": {"json": schema}});
            if let Some(description) = function.get("description").filter(|d| d.is_string()) {
                spec["description"] = description.clone();
            }
            json!({"toolSpec": spec})
        })
        .collect();
    let choice = match body.get("tool_choice").unwrap_or(&Value::Null) {
        Value::Null => None,
        Value::String(mode) => match mode.as_str() {
            "auto" => Some(json!({"auto": {}})),
            "required" => Some(json!({"any": {}})),
            "none" => return Err(invalid("bedrock's Converse API has no tool_choice \"none\"; leave the tools out")),
            other => return Err(format!("tool_choice {other:?} has no bedrock equivalent")),
        },
        choice @ Value::Object(_) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Some(json!({"tool": {"name": name}})),
            None => return Err(invalid("tool_choice must name a function")),
        },
        _ => return Err(invalid("tool_choice must be a string or an object")),
    };
    let mut config = json!({"tools": tools});
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Ok(Some(config))
}

/// The Converse request for the OpenAI chat request `body`; `Err` says why this backend cannot serve it.
pub fn request(body: &Map<String, Value>) -> Result<Value, String> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid("bedrock backends produce one choice: n must be 1"));
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for message in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let content = message.get("content");
        match message.get("role").and_then(Value::as_str).unwrap_or_default() {
            "system" | "developer" => {
                let text = text_of(content)?;
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            "user" => push_turn(&mut messages, "user", content_blocks(content)?),
            "assistant" => {
                let mut blocks = content_blocks(content)?;
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
                    let Ok(input @ Value::Object(_)) = serde_json::from_str::<Value>(arguments) else {
                        return Err(invalid("an assistant tool call's arguments must be a JSON object"));
                    };
                    blocks.push(json!({"toolUse": {"toolUseId": call.get("id").cloned().unwrap_or_default(),
                        "name": call.pointer("/function/name").cloned().unwrap_or_default(), "input": input}}));
                }
                push_turn(&mut messages, "assistant", blocks);
            }
            "tool" => {
                let result = json!({"toolResult": {
                    "toolUseId": message.get("tool_call_id").cloned().unwrap_or_default(),
                    "content": [{"text": text_of(content)?}]}});
                push_turn(&mut messages, "user", vec![result]);
            }
            other => return Err(format!("bedrock backends take no {other:?} messages")),
        }
    }
    let mut translated = json!({"messages": messages});
    let out = translated.as_object_mut().ok_or("unreachable")?;
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(max) = ["max_completion_tokens", "max_tokens"].iter().find_map(|f| body.get(*f)?.as_u64()) {
        inference.insert("maxTokens".to_owned(), json!(max));
    }
    if let Some(temperature) = body.get("temperature").and_then(Value::as_f64) {
        inference.insert("temperature".to_owned(), json!(temperature.clamp(0.0, 1.0)));
    }
    if let Some(top_p) = body.get("top_p").and_then(Value::as_f64) {
        inference.insert("topP".to_owned(), json!(top_p));
    }
    match body.get("stop") {
        Some(Value::String(stop)) => {
            inference.insert("stopSequences".to_owned(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            inference.insert("stopSequences".to_owned(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".to_owned(), Value::Object(inference));
    }
    if let Some(config) = tool_config(body)? {
        out.insert("toolConfig".to_owned(), config);
    }
    Ok(translated)
}

/// A non-streamed Converse answer as an OpenAI chat completion; `Err` for a body that is not one.
pub fn answer(body: &[u8]) -> Result<Vec<u8>, String> {
    let converse: Value = serde_json::from_slice(body).map_err(|e| format!("the bedrock answer is not JSON: {e}"))?;
    let Some(blocks) = converse.pointer("/output/message/content").and_then(Value::as_array) else {
        return Err("the bedrock answer has no output message".to_owned());
    };
    let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    for block in blocks {
        if let Some(piece) = block.get("text").and_then(Value::as_str) {
            text.push_str(piece);
        } else if let Some(piece) = block.pointer("/reasoningContent/reasoningText/text").and_then(Value::as_str) {
            reasoning.push_str(piece);
        } else if let Some(call) = block.get("toolUse") {
            calls.push(json!({"id": call.get("toolUseId").cloned().unwrap_or_default(), "type": "function",
                "function": {"name": call.get("name").cloned().unwrap_or_default(),
                             "arguments": call.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)}}));
        }
    }
    let content = if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) };
    let mut reply = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        reply["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        reply["reasoning_content"] = Value::String(reasoning);
    }
    let mut completion = json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": "",
        "choices": [{"index": 0, "message": reply,
                     "finish_reason": finish_reason(converse.get("stopReason").and_then(Value::as_str)),
                     "logprobs": null}],
    });
    if let Some(reported) = converse.get("usage").filter(|u| u.is_object()) {
        completion["usage"] = usage(reported);
    }
    serde_json::to_vec(&completion).map_err(|e| e.to_string())
}

/// Bedrock's error body (`{"message": ...}`, sometimes with `__type`) in the OpenAI error shape; other bodies are
/// wrapped as they are.
pub fn openai_error(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str);
    let message = field("message").or_else(|| field("Message")).unwrap_or(body);
    openai_error_of(field("__type").unwrap_or_default(), message)
}

/// Path-encode a model id (ids such as `anthropic.claude-3-5-sonnet-20240620-v1:0` and ARNs carry `:` and `/`).
fn path_segment(model: &str) -> String {
    percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        // Unreserved characters stay as they are (RFC 3986), as AWS's SDKs send them.
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

/// The `bedrock` backend kind (see the module documentation).
pub struct Bedrock;

impl Provider for Bedrock {
    fn request(&self, inbound: &Inbound<'_>) -> Result<Outbound, AttemptError> {
        let Inbound { backend, upstream_model, endpoint, body, .. } = *inbound;
        if endpoint != Endpoint::ChatCompletions {
            return Err(AttemptError::Unsupported(format!(
                "bedrock backends serve chat completions only, not {}",
                endpoint.cel_name()
            )));
        }
        let translated = request(body).map_err(AttemptError::Unsupported)?;
        let body = serde_json::to_vec(&translated).map_err(|e| AttemptError::Connect(e.to_string()))?;
        let stream = inbound.body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let operation = if stream { "converse-stream" } else { "converse" };
        let url = format!("{}/model/{}/{operation}", backend.base_url, path_segment(upstream_model));
        Ok(Outbound { url, body, native_key_header: None, headers: &[] })
    }

    fn per_request_credentials(&self, _backend: &policy_engine::config::BackendSpec) -> bool {
        true
    }

    fn authorize<'a>(&'a self, unsigned: Unsigned<'a>) -> BoxFuture<'a, Result<Credentials, AttemptError>> {
        Box::pin(async move {
            let backend = unsigned.backend;
            let misconfigured = |why: String| AttemptError::Refused(format!("backend '{}': {why}", backend.name));
            let region = backend
                .aws
                .as_ref()
                .map(|a| a.region.as_str())
                .ok_or_else(|| misconfigured("bedrock backends need aws.region".to_owned()))?;
            let host = unsigned.request.url().host_str().unwrap_or_default();
            let keys = super::sigv4::keys(unsigned.secret, host, |name| std::env::var(name).ok())
                .map_err(|e| misconfigured(format!("cannot sign its requests: {e}")))?;
            super::sigv4::signature(unsigned.request, &keys, region, SERVICE, std::time::SystemTime::now())
                .map_err(misconfigured)
        })
    }

    fn translates(&self) -> bool {
        true
    }

    fn answer(&self, body: Bytes) -> Result<Bytes, super::AnswerError> {
        answer(&body).map(Bytes::from).map_err(super::AnswerError::Malformed)
    }

    fn streams(&self, content_type: &str) -> bool {
        content_type.starts_with(super::bedrock_stream::CONTENT_TYPE)
    }

    fn stream(&self, upstream: UpstreamBytes) -> UpstreamBytes {
        super::bedrock_stream::translate(upstream).boxed()
    }

    fn error_body(&self, body: String) -> String {
        openai_error(&body)
    }

    fn classify(&self, status: u16) -> StatusClass {
        match status {
            401 | 403 | 404 | 408 | 424 | 429 => StatusClass::FailOver,
            400..=499 => StatusClass::CallersMistake,
            _ => StatusClass::FailOver,
        }
    }
}

#[cfg(test)]
#[path = "bedrock_tests.rs"]
mod tests;
