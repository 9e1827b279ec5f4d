//! `streamGenerateContent?alt=sse` translated into OpenAI chat completion chunks, for the `gemini` and `vertex` kinds.
//! Each event is a whole `GenerateContentResponse` carrying the next parts: text parts become `content` deltas,
//! thought parts `reasoning_content` deltas, function calls (sent whole) one `tool_calls` delta each. Google's
//! stream has no end marker: when the upstream closes after a finish reason, the finish chunk, the usage chunk (the
//! last `usageMetadata`; the metering stage strips it unless the client asked for it) and `[DONE]` are sent; a
//! stream that closes before one, an error event, a blocked prompt or a failed finish ends with an OpenAI error
//! event instead.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::UpstreamBytes;
use super::gemini_shapes::{
    Parts, blocked_prompt, completion_id, failed_finish, finish_reason, openai_error, read_parts, usage,
};
use crate::openai::sse::{DONE_EVENT, data_event, data_json, event_data, event_end};

/// Longest event held while waiting for its end.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Translates Google's stream events into OpenAI chat completion chunks (see the module documentation).
#[derive(Default)]
pub struct StreamTranslator {
    pending: Vec<u8>,
    id: Option<String>,
    model: String,
    created: i64,
    /// Function calls seen so far (OpenAI numbers them across the stream).
    calls: usize,
    finish: Option<&'static str>,
    usage: Option<Value>,
    ended: bool,
}

fn error_event(message: &str, kind: &str, code: &str) -> String {
    data_event(&json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

impl StreamTranslator {
    pub fn new() -> StreamTranslator {
        StreamTranslator { created: chrono::Utc::now().timestamp(), ..StreamTranslator::default() }
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
            {
                match data_json(&data) {
                    Ok(event) => self.event(&event, &mut out),
                    Err(_) => {
                        let message = "the upstream stream sent an event that is not JSON";
                        out.push_str(&error_event(message, "api_error", "upstream_error"));
                        self.ended = true;
                    }
                }
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
        if event.get("error").is_some() {
            out.push_str(&data_event(&openai_error(&event.to_string())));
            self.ended = true;
            return;
        }
        if let Some(blocked) = blocked_prompt(event) {
            out.push_str(&error_event(&blocked, "invalid_request_error", "content_filter"));
            self.ended = true;
            return;
        }
        if self.id.is_none() {
            self.id = Some(completion_id(event));
            self.model = event.get("modelVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
            out.push_str(&self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        if let Some(metadata) = event.get("usageMetadata").filter(|u| u.is_object()) {
            self.usage = Some(usage(metadata));
        }
        let Some(candidate) = event.pointer("/candidates/0") else {
            return;
        };
        let Parts { text, reasoning, calls } = read_parts(candidate, self.calls);
        if !reasoning.is_empty() {
            out.push_str(&self.chunk(json!({"reasoning_content": reasoning}), None));
        }
        if !text.is_empty() {
            out.push_str(&self.chunk(json!({"content": text}), None));
        }
        for mut call in calls {
            call["index"] = json!(self.calls);
            self.calls += 1;
            out.push_str(&self.chunk(json!({"tool_calls": [call]}), None));
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            if let Some(failed) = failed_finish(reason) {
                out.push_str(&error_event(&failed, "api_error", "upstream_error"));
                self.ended = true;
                return;
            }
            self.finish = Some(finish_reason(reason, self.calls > 0));
        }
    }

    /// The upstream closed: the end of the OpenAI stream.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        let Some(finish) = self.finish else {
            let message = "the upstream stream ended before the model finished";
            return error_event(message, "api_error", "upstream_error").into_bytes();
        };
        let mut out = self.chunk(json!({}), Some(finish));
        if let Some(usage) = &self.usage {
            let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model, "choices": [], "usage": usage});
            out.push_str(&data_event(&chunk));
        }
        out.push_str(DONE_EVENT);
        out.into_bytes()
    }
}

/// `upstream` (Google's event stream) as OpenAI SSE bytes, ended when the upstream closes.
pub fn translate(upstream: UpstreamBytes) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some((upstream, StreamTranslator::new())), |state| async move {
        let (mut upstream, mut translator) = state?;
        loop {
            match upstream.next().await {
                Some(Ok(bytes)) => {
                    let out = translator.push(&bytes);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((upstream, translator))));
                    }
                }
                Some(Err(error)) => return Some((Err(error), Some((upstream, translator)))),
                None => {
                    let out = translator.finish();
                    return (!out.is_empty()).then(|| (Ok(Bytes::from(out)), None));
                }
            }
        }
    })
}

#[cfg(test)]
#[path = "gemini_stream_tests.rs"]
mod tests;
