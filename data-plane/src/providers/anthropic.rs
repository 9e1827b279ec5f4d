//! The `anthropic` backend kind: an OpenAI chat completion request translated into Anthropic's Messages API
//! (`POST {base_url}/messages`), and the answer translated back, streamed or not, tool calls included. Everything
//! after translation (metering, tool validation, the SSE stages) sees OpenAI-shaped answers.
//!
//! - Requests ([`request`]): `system`/`developer` messages become `system`; `tool` messages become `tool_result`
//!   blocks of a user turn; assistant `tool_calls` become `tool_use` blocks; consecutive turns of one role are merged
//!   (the Messages API wants them alternating); image parts become image blocks; `tools`, `tool_choice` (with
//!   `parallel_tool_calls: false`), `stop`, `temperature`, `top_p`, `user` and `max_tokens` map to their
//!   equivalents (`max_tokens` is required there: 4096 when the caller sets none). What has no equivalent
//!   (`n > 1`, audio or file parts) makes this candidate unable to serve the request, so another one can.
//! - Answers ([`answer`], [`StreamTranslator`]): text and `tool_use` blocks become `content` and `tool_calls`;
//!   `thinking` becomes `reasoning_content`; stop reasons become finish reasons; usage becomes OpenAI usage with
//!   every input token in `prompt_tokens` (`input_tokens + cache_read_input_tokens + cache_creation_input_tokens`),
//!   the cache reads in `prompt_tokens_details.cached_tokens`, and Anthropic's two cache fields kept as they are,
//!   so metering prices cache reads and writes exactly. Streams always end with a usage chunk (Anthropic always
//!   reports usage); the metering stage strips it unless the client asked for it.
//! - Errors: Anthropic's error body becomes the OpenAI error shape ([`openai_error`]); an `error` event mid-stream
//!   becomes an OpenAI error event and ends the stream.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};

use super::upstream::AttemptError;
use super::{Inbound, Outbound, Provider, UpstreamBytes};
use crate::openai::request::Endpoint;
use crate::openai::sse::{DONE_EVENT, data_event, data_json, event_data, event_end};

/// The Messages API version the translation speaks.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the caller sets none (the Messages API requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// Longest event held while waiting for its end.
const MAX_EVENT_BYTES: usize = 1 << 20;

fn text_of(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(part.get("text").and_then(Value::as_str).unwrap_or_default()),
                    other => return Err(format!("a {} part has no text for this turn", other.unwrap_or("typeless"))),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err("message content must be a string or an array of parts".to_owned()),
    }
}

/// An OpenAI image part's URL as an image block source: data URLs inline, others by URL.
fn image_source(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "base64", "media_type": media_type, "data": data});
    }
    json!({"type": "url", "url": url})
}

fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({"type": "text", "text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": part.get("text").cloned().unwrap_or_default()})),
                Some("image_url") => {
                    let url = part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or_default();
                    Ok(json!({"type": "image", "source": image_source(url)}))
                }
                other => Err(format!("anthropic backends take no {} content parts", other.unwrap_or("typeless"))),
            })
            .collect(),
        Some(_) => Err("message content must be a string or an array of parts".to_owned()),
    }
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

fn tool_choice(choice: &Value, parallel: Option<bool>) -> Result<Option<Value>, String> {
    let mut translated = match choice {
        Value::Null => json!({"type": "auto"}),
        Value::String(mode) => match mode.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(format!("tool_choice {other:?} has no anthropic equivalent")),
        },
        Value::Object(_) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err("tool_choice must name a function".to_owned()),
        },
        _ => return Err("tool_choice must be a string or an object".to_owned()),
    };
    if parallel == Some(false) && translated["type"] != "none" {
        translated["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(translated))
}

/// The Messages API request for the OpenAI chat request `body`, to `model`; `Err` says why this backend cannot
/// serve it.
pub fn request(body: &Map<String, Value>, model: &str) -> Result<Value, String> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("anthropic backends produce one choice: n must be 1".to_owned());
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for message in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let content = message.get("content");
        match message.get("role").and_then(Value::as_str).unwrap_or_default() {
            "system" | "developer" => {
                let text = text_of(content)?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_turn(&mut messages, "user", content_blocks(content)?),
            "assistant" => {
                let mut blocks = content_blocks(content)?;
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    let input: Value =
                        match serde_json::from_str(if arguments.trim().is_empty() { "{}" } else { arguments }) {
                            Ok(input @ Value::Object(_)) => input,
                            _ => return Err("an assistant tool call's arguments must be a JSON object".to_owned()),
                        };
                    blocks.push(json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or_default(),
                        "name": call.pointer("/function/name").cloned().unwrap_or_default(), "input": input}));
                }
                push_turn(&mut messages, "assistant", blocks);
            }
            "tool" => {
                let result = json!({"type": "tool_result",
                    "tool_use_id": message.get("tool_call_id").cloned().unwrap_or_default(),
                    "content": text_of(content)?});
                push_turn(&mut messages, "user", vec![result]);
            }
            other => return Err(format!("anthropic backends take no {other:?} messages")),
        }
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.get(*f)?.as_u64())
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut translated = json!({"model": model, "max_tokens": max_tokens, "messages": messages});
    let out = translated.as_object_mut().ok_or("unreachable")?;
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::String(system.join("\n\n")));
    }
    for field in ["top_p", "stream"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            out.insert(field.to_owned(), value.clone());
        }
    }
    // OpenAI's range is 0 to 2, Anthropic's 0 to 1.
    if let Some(temperature) = body.get("temperature").and_then(Value::as_f64) {
        out.insert("temperature".to_owned(), json!(temperature.clamp(0.0, 1.0)));
    }
    match body.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".to_owned(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            out.insert("stop_sequences".to_owned(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|tool| tool.get("function"))
            .map(|function| {
                let mut tool = json!({"name": function.get("name").cloned().unwrap_or_default(),
                    "input_schema": function.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(description) = function.get("description").filter(|d| d.is_string()) {
                    tool["description"] = description.clone();
                }
                tool
            })
            .collect();
        out.insert("tools".to_owned(), Value::Array(tools));
        let parallel = body.get("parallel_tool_calls").and_then(Value::as_bool);
        if let Some(choice) = tool_choice(body.get("tool_choice").unwrap_or(&Value::Null), parallel)? {
            out.insert("tool_choice".to_owned(), choice);
        }
    }
    Ok(translated)
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's usage, as it accumulates over a stream.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
    /// The upstream reported usage at all (otherwise none is passed on, so metering estimates).
    seen: bool,
}

impl Usage {
    fn read(&mut self, usage: &Value) {
        self.seen |= usage.is_object();
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        if let Some(input) = field("input_tokens") {
            self.input = input;
        }
        if let Some(output) = field("output_tokens") {
            self.output = output;
        }
        if let Some(read) = field("cache_read_input_tokens") {
            self.cache_read = read;
        }
        if let Some(created) = field("cache_creation_input_tokens") {
            self.cache_creation = created;
        }
    }

    fn openai(&self) -> Value {
        let prompt = self.input.saturating_add(self.cache_read).saturating_add(self.cache_creation);
        json!({"prompt_tokens": prompt, "completion_tokens": self.output,
               "total_tokens": prompt.saturating_add(self.output),
               "prompt_tokens_details": {"cached_tokens": self.cache_read},
               "cache_read_input_tokens": self.cache_read, "cache_creation_input_tokens": self.cache_creation})
    }
}

fn created() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A non-streamed Messages answer as an OpenAI chat completion; `Err` for a body that is not one.
pub fn answer(body: &[u8]) -> Result<Vec<u8>, String> {
    let message: Value = serde_json::from_slice(body).map_err(|e| format!("the anthropic answer is not JSON: {e}"))?;
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return Err("the anthropic answer is not a message".to_owned());
    }
    let (mut text, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    for block in message.get("content").and_then(Value::as_array).into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => {
                calls.push(json!({"id": block.get("id").cloned().unwrap_or_default(), "type": "function",
                "function": {"name": block.get("name").cloned().unwrap_or_default(),
                             "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)}}))
            }
            _ => {}
        }
    }
    let mut reply = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        reply["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        reply["reasoning_content"] = Value::String(reasoning);
    }
    let mut usage = Usage::default();
    if let Some(reported) = message.get("usage") {
        usage.read(reported);
    }
    let mut completion = json!({
        "id": message.get("id").cloned().unwrap_or_default(),
        "object": "chat.completion",
        "created": created(),
        "model": message.get("model").cloned().unwrap_or_default(),
        "choices": [{"index": 0, "message": reply,
                     "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
                     "logprobs": null}],
    });
    if usage.seen {
        completion["usage"] = usage.openai();
    }
    serde_json::to_vec(&completion).map_err(|e| e.to_string())
}

/// Anthropic's error body (`{"type":"error","error":{"type","message"}}`) in the OpenAI error shape; other bodies are
/// wrapped as they are.
pub fn openai_error(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("api_error");
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or(body);
    json!({"error": {"message": message, "type": kind, "param": null, "code": kind}}).to_string()
}

/// Translates Anthropic's stream events into OpenAI chat completion chunks (see the module documentation).
#[derive(Default)]
pub struct StreamTranslator {
    pending: Vec<u8>,
    id: String,
    model: String,
    created: i64,
    /// Tool calls by content-block index, numbered in order of appearance as OpenAI does.
    tools: HashMap<u64, u64>,
    usage: Usage,
    finish: Option<&'static str>,
    ended: bool,
}

impl StreamTranslator {
    pub fn new() -> StreamTranslator {
        StreamTranslator { created: created(), ..StreamTranslator::default() }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        data_event(&chunk)
    }

    /// Feed upstream bytes; the OpenAI SSE bytes to send on. Events split across chunks wait for their end.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = String::new();
        let mut start = 0;
        while let Some(len) = event_end(&self.pending[start..]) {
            let raw = self.pending[start..start + len].to_vec();
            start += len;
            if !self.ended
                && let Some(data) = event_data(&raw)
                && let Ok(event) = data_json(&data)
            {
                self.event(&event, &mut out);
            }
        }
        self.pending.drain(..start);
        // An event that never ends is not buffered without bound.
        if self.pending.len() > MAX_EVENT_BYTES {
            self.pending.clear();
        }
        out.into_bytes()
    }

    fn event(&mut self, event: &Value, out: &mut String) {
        match event.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let message = &event["message"];
                self.id = message.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                self.model = message.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
                if let Some(usage) = message.get("usage") {
                    self.usage.read(usage);
                }
                out.push_str(&self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => {
                let block = &event["content_block"];
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let index = event.get("index").and_then(Value::as_u64).unwrap_or_default();
                    let call = self.tools.len() as u64;
                    self.tools.insert(index, call);
                    let delta = json!({"tool_calls": [{"index": call, "id": block.get("id").cloned().unwrap_or_default(),
                        "type": "function", "function": {"name": block.get("name").cloned().unwrap_or_default(), "arguments": ""}}]});
                    out.push_str(&self.chunk(delta, None));
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                let piece = |field: &str| delta.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
                match delta.get("type").and_then(Value::as_str).unwrap_or_default() {
                    "text_delta" => out.push_str(&self.chunk(json!({"content": piece("text")}), None)),
                    "thinking_delta" => {
                        out.push_str(&self.chunk(json!({"reasoning_content": piece("thinking")}), None))
                    }
                    "input_json_delta" => {
                        let index = event.get("index").and_then(Value::as_u64).unwrap_or_default();
                        if let Some(call) = self.tools.get(&index) {
                            let delta = json!({"tool_calls": [{"index": call, "function": {"arguments": piece("partial_json")}}]});
                            out.push_str(&self.chunk(delta, None));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = event.get("usage") {
                    self.usage.read(usage);
                }
                let stop = event.pointer("/delta/stop_reason").and_then(Value::as_str);
                self.finish = Some(finish_reason(stop));
            }
            "message_stop" => {
                out.push_str(&self.chunk(json!({}), Some(self.finish.unwrap_or("stop"))));
                if self.usage.seen {
                    let usage = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                       "model": self.model, "choices": [], "usage": self.usage.openai()});
                    out.push_str(&data_event(&usage));
                }
                out.push_str(DONE_EVENT);
                self.ended = true;
            }
            "error" => {
                let body = json!({"error": event.get("error").cloned().unwrap_or_default()}).to_string();
                out.push_str(&data_event(&openai_error(&body)));
                self.ended = true;
            }
            // ping, content_block_stop and event kinds added later carry nothing for the client.
            _ => {}
        }
    }
}

/// `upstream` (an Anthropic event stream) as OpenAI SSE bytes.
pub fn translate_stream<S>(upstream: S) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
{
    let mut translator = StreamTranslator::new();
    upstream
        .map(move |chunk| chunk.map(|bytes| Bytes::from(translator.push(&bytes))))
        .filter(|chunk| std::future::ready(chunk.as_ref().map_or(true, |bytes| !bytes.is_empty())))
}

/// The `anthropic` backend kind (see the module documentation).
pub struct Anthropic;

impl Provider for Anthropic {
    fn request(&self, inbound: &Inbound<'_>) -> Result<Outbound, AttemptError> {
        let Inbound { backend, upstream_model, endpoint, body, .. } = *inbound;
        if endpoint != Endpoint::ChatCompletions {
            return Err(AttemptError::Unsupported(format!(
                "anthropic backends serve chat completions only, not {}",
                endpoint.cel_name()
            )));
        }
        let translated = request(body, upstream_model).map_err(AttemptError::Unsupported)?;
        let body = serde_json::to_vec(&translated).map_err(|e| AttemptError::Connect(e.to_string()))?;
        Ok(Outbound {
            url: format!("{}/messages", backend.base_url),
            body,
            native_key_header: Some("x-api-key"),
            headers: &[("anthropic-version", API_VERSION)],
        })
    }

    fn health_check(&self, backend: &policy_engine::config::BackendSpec, path: &str) -> Outbound {
        Outbound {
            url: super::join(&backend.base_url, path),
            body: Vec::new(),
            native_key_header: Some("x-api-key"),
            headers: &[("anthropic-version", API_VERSION)],
        }
    }

    fn translates(&self) -> bool {
        true
    }

    fn answer(&self, body: Bytes) -> Result<Bytes, super::AnswerError> {
        answer(&body).map(Bytes::from).map_err(super::AnswerError::Malformed)
    }

    fn stream(&self, upstream: UpstreamBytes) -> UpstreamBytes {
        translate_stream(upstream).boxed()
    }

    fn error_body(&self, body: String) -> String {
        openai_error(&body)
    }

    fn default_max_tokens(&self) -> Option<u64> {
        Some(DEFAULT_MAX_TOKENS)
    }
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
