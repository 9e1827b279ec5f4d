//! A ConverseStream answer (AWS's binary event stream, `application/vnd.amazon.eventstream`) as OpenAI chat
//! completion chunks. Frames are decoded, checksums included, by `aws-smithy-eventstream`; each event's JSON payload
//! is translated: `messageStart` (the role chunk), `contentBlockStart` (a tool call's id and name),
//! `contentBlockDelta` (text, `reasoning_content`, tool call arguments), `messageStop` (the finish reason),
//! `metadata` (the usage chunk, then `data: [DONE]`). An exception (`:message-type: exception`, e.g.
//! `throttlingException` mid-stream) or a frame that does not decode becomes an OpenAI error event and ends the
//! stream.

use std::collections::HashMap;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::UpstreamBytes;
use super::bedrock_shapes::{completion_id, finish_reason, openai_error_of, usage};
use crate::openai::sse::{DONE_EVENT, data_event};

/// The content type of a ConverseStream answer.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";
/// Most bytes held while waiting for a frame's end (Bedrock's frames are a few hundred bytes).
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Translates one ConverseStream answer (see the module documentation).
pub struct StreamTranslator {
    pending: BytesMut,
    decoder: MessageFrameDecoder,
    id: String,
    created: i64,
    /// Tool calls by content-block index, numbered in order of appearance as OpenAI does.
    tools: HashMap<u64, u64>,
    finish: Option<&'static str>,
    ended: bool,
}

impl Default for StreamTranslator {
    fn default() -> Self {
        StreamTranslator::new()
    }
}

fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    let header = message.headers().iter().find(|h| h.name().as_str() == name)?;
    header.value().as_string().ok().map(|s| s.as_str())
}

impl StreamTranslator {
    pub fn new() -> StreamTranslator {
        StreamTranslator {
            pending: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            id: completion_id(),
            created: chrono::Utc::now().timestamp(),
            tools: HashMap::new(),
            finish: None,
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": "",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        data_event(&chunk)
    }

    fn fail(&mut self, kind: &str, message: &str, out: &mut String) {
        out.push_str(&data_event(&openai_error_of(kind, message)));
        self.ended = true;
    }

    /// Feed upstream bytes; the OpenAI SSE bytes to send on. Frames split across chunks wait for their end.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = String::new();
        if self.ended {
            return Vec::new();
        }
        self.pending.extend_from_slice(chunk);
        while !self.ended {
            match self.decoder.decode_frame(&mut self.pending) {
                Ok(DecodedFrame::Complete(message)) => self.message(&message, &mut out),
                Ok(DecodedFrame::Incomplete) => break,
                Err(error) => {
                    self.fail("bedrock_stream_error", &format!("undecodable bedrock event: {error}"), &mut out)
                }
            }
        }
        if !self.ended && self.pending.len() > MAX_PENDING_BYTES {
            self.fail("bedrock_stream_error", "a bedrock event exceeded 1 MiB", &mut out);
        }
        out.into_bytes()
    }

    /// The upstream ended: what is still owed (the end of a stream whose `metadata` never came, or an error when
    /// the answer stopped before it finished).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        match self.finish {
            Some(_) => DONE_EVENT.as_bytes().to_vec(),
            None => data_event(&openai_error_of("bedrock_stream_error", "the bedrock stream ended before its answer"))
                .into_bytes(),
        }
    }

    fn message(&mut self, message: &Message, out: &mut String) {
        match header(message, ":message-type") {
            Some("event") => {}
            Some("exception") => {
                let payload: Value = serde_json::from_slice(message.payload()).unwrap_or_default();
                let text = payload.get("message").and_then(Value::as_str).unwrap_or("bedrock stream exception");
                let kind = header(message, ":exception-type").unwrap_or("bedrock_error").to_owned();
                return self.fail(&kind, text, out);
            }
            _ => {
                let kind = header(message, ":error-code").unwrap_or("bedrock_error").to_owned();
                let text = header(message, ":error-message").unwrap_or("bedrock stream error").to_owned();
                return self.fail(&kind, &text, out);
            }
        }
        let Ok(event) = serde_json::from_slice::<Value>(message.payload()) else {
            return self.fail("bedrock_stream_error", "a bedrock event's payload is not JSON", out);
        };
        let index = event.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or_default();
        match header(message, ":event-type").unwrap_or_default() {
            "messageStart" => out.push_str(&self.chunk(json!({"role": "assistant", "content": ""}), None)),
            "contentBlockStart" => {
                if let Some(tool) = event.pointer("/start/toolUse") {
                    let call = self.tools.len() as u64;
                    self.tools.insert(index, call);
                    let delta = json!({"tool_calls": [{"index": call, "id": tool.get("toolUseId").cloned().unwrap_or_default(),
                        "type": "function", "function": {"name": tool.get("name").cloned().unwrap_or_default(), "arguments": ""}}]});
                    out.push_str(&self.chunk(delta, None));
                }
            }
            "contentBlockDelta" => {
                let delta = &event["delta"];
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    out.push_str(&self.chunk(json!({"content": text}), None));
                } else if let Some(text) = delta.pointer("/reasoningContent/text").and_then(Value::as_str) {
                    out.push_str(&self.chunk(json!({"reasoning_content": text}), None));
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str)
                    && let Some(call) = self.tools.get(&index)
                {
                    let delta = json!({"tool_calls": [{"index": call, "function": {"arguments": input}}]});
                    out.push_str(&self.chunk(delta, None));
                }
            }
            "messageStop" => {
                let finish = finish_reason(event.get("stopReason").and_then(Value::as_str));
                self.finish = Some(finish);
                out.push_str(&self.chunk(json!({}), Some(finish)));
            }
            "metadata" => {
                if let Some(reported) = event.get("usage").filter(|u| u.is_object()) {
                    let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                       "model": "", "choices": [], "usage": usage(reported)});
                    out.push_str(&data_event(&chunk));
                }
                if self.finish.is_some() {
                    out.push_str(DONE_EVENT);
                    self.ended = true;
                }
            }
            // contentBlockStop and event kinds added later carry nothing for the client.
            _ => {}
        }
    }
}

/// `upstream` (a ConverseStream answer) as OpenAI SSE bytes.
pub fn translate(upstream: UpstreamBytes) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some((upstream, StreamTranslator::new())), |state| async move {
        let (mut upstream, mut translator) = state?;
        loop {
            match upstream.next().await {
                Some(Ok(chunk)) => {
                    let out = translator.push(&chunk);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some((upstream, translator))));
                    }
                }
                Some(Err(error)) => return Some((Err(error), None)),
                None => {
                    let out = translator.finish();
                    return (!out.is_empty()).then(|| (Ok(Bytes::from(out)), None));
                }
            }
        }
    })
}

#[cfg(test)]
#[path = "bedrock_stream_tests.rs"]
mod tests;
