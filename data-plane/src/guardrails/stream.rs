//! The completion side of guardrails on a streamed chat answer: a stage between metering and the SSE stages.
//!
//! - Events are cut at blank lines ([`event_end`]); events without text (role, usage, comments such as the cost
//!   comment, anything unparsable) go out as they came.
//! - Each choice's `delta.content`, and each of its tool calls' `function.arguments` fragments, is appended to its
//!   own held text (one per choice and part: the content, or the tool call of that `index`). It is scanned whole
//!   each time;
//!   what may go out is everything but the last `window` characters (the widest `stream_window_chars` of the
//!   applied guardrails), moved back to the start of any finding it would cut, with `redact` findings replaced. So
//!   a match split across chunks (or events) is still seen whole, as long as it is no longer than the window.
//! - The choice's `finish_reason`, or `[DONE]`, releases the rest of its texts (held arguments go out as deltas of
//!   their tool call's `index`, which clients append to the call's arguments).
//! - A `block` finding ends the stream at once: an error event (`content_blocked`, naming the guardrail and the
//!   category, never the text), then `data: [DONE]`; held text is never sent.
//!
//! The cost to time to first token: the first text goes out once the answer is `window` characters long (or
//! finishes), see `docs/guardrails.md`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use policy_engine::guardrail::{Finding, Side, Tally, safe_release_point};
use serde_json::{Value, json};

use super::{Guard, blocked_error};
use crate::openai::sse::{DONE_EVENT, data_event, data_json, event_data, event_end, is_done};
use crate::spend::record::{SpendHandle, StreamEnd};

/// Which text of a choice's deltas: its content, or the arguments of its tool call of this `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Content,
    Arguments(u64),
}

impl Part {
    /// The text of this part in `delta`, if the delta has one.
    fn text(self, delta: &Value) -> Option<&str> {
        match self {
            Part::Content => delta.get("content").and_then(Value::as_str),
            Part::Arguments(call) => tool_call(delta, call)?.pointer("/function/arguments").and_then(Value::as_str),
        }
    }

    /// Put `text` in `delta` as this part, adding the tool call's entry when the delta has none.
    fn set(self, delta: &mut serde_json::Map<String, Value>, text: String) {
        match self {
            Part::Content => {
                delta.insert("content".to_owned(), Value::String(text));
            }
            Part::Arguments(call) => {
                let calls = delta.entry("tool_calls").or_insert_with(|| Value::Array(Vec::new()));
                let Some(calls) = calls.as_array_mut() else { return };
                let position = calls.iter().position(|c| c.get("index").and_then(Value::as_u64) == Some(call));
                let entry = match position {
                    Some(position) => calls.get_mut(position),
                    None => {
                        calls.push(json!({"index": call}));
                        calls.last_mut()
                    }
                };
                let Some(entry) = entry.and_then(Value::as_object_mut) else { return };
                let function = entry.entry("function").or_insert_with(|| json!({}));
                if let Some(function) = function.as_object_mut() {
                    function.insert("arguments".to_owned(), Value::String(text));
                }
            }
        }
    }
}

fn tool_call(delta: &Value, call: u64) -> Option<&Value> {
    delta.get("tool_calls")?.as_array()?.iter().find(|c| c.get("index").and_then(Value::as_u64) == Some(call))
}

/// The parts a delta carries text for.
fn parts_of(delta: Option<&Value>) -> Vec<Part> {
    let Some(delta) = delta else { return Vec::new() };
    let mut parts = Vec::new();
    if Part::Content.text(delta).is_some() {
        parts.push(Part::Content);
    }
    for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        if let Some(index) = call.get("index").and_then(Value::as_u64)
            && Part::Arguments(index).text(delta).is_some()
        {
            parts.push(Part::Arguments(index));
        }
    }
    parts
}

pub struct GuardedStream<S> {
    upstream: S,
    guard: Guard,
    window: usize,
    /// Bytes of an event not terminated yet.
    pending: Vec<u8>,
    /// Text held back per choice index and part.
    held: BTreeMap<(u64, Part), String>,
    /// The last chunk event seen (its id, model, created), the shape of the events that release held text.
    template: Option<Value>,
    findings: Vec<Finding>,
    tally: Tally,
    finished: bool,
    spend: Option<SpendHandle>,
}

impl<S> GuardedStream<S> {
    pub fn new(upstream: S, guard: Guard, spend: Option<SpendHandle>) -> GuardedStream<S> {
        let window = guard.set().stream_window(&guard.applied);
        GuardedStream {
            upstream,
            guard,
            window,
            pending: Vec::new(),
            held: BTreeMap::new(),
            template: None,
            findings: Vec::new(),
            tally: Tally::default(),
            finished: false,
            spend,
        }
    }

    /// What of `text` may go out now (all of it when `all`), redacted; the rest stays held. `Err` on a block.
    fn release(&mut self, text: &str, all: bool) -> Result<(String, String), crate::openai::error::GatewayError> {
        let set = self.guard.set();
        set.scan(&self.guard.applied, Side::Completion, text, &mut self.findings);
        if let Some(blocked) = set.blocked(&self.findings, Side::Completion) {
            let _ = set.release(text, &self.findings, text.len(), Side::Completion, &mut self.tally);
            return Err(blocked_error(blocked));
        }
        let point = if all { text.len() } else { safe_release_point(text, &self.findings, self.window) };
        let released = set.release(text, &self.findings, point, Side::Completion, &mut self.tally);
        Ok((released, text[point..].to_owned()))
    }

    /// One event through the stage, its output appended to `out`.
    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let Some(data) = event_data(raw) else {
            out.extend_from_slice(raw);
            return;
        };
        if is_done(&data) {
            if self.flush_all(out) {
                out.extend_from_slice(raw);
            }
            return;
        }
        let Ok(mut value) = data_json(&data) else {
            out.extend_from_slice(raw);
            return;
        };
        let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) else {
            out.extend_from_slice(raw);
            return;
        };
        let mut rewritten = false;
        let mut texts: Vec<(usize, u64, Part, String, bool)> = Vec::new();
        for (position, choice) in choices.iter().enumerate() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let finishing = choice.get("finish_reason").is_some_and(|r| !r.is_null());
            let delta = choice.get("delta");
            let mut parts = parts_of(delta);
            if finishing {
                // What is held of this choice goes out with its last event, even parts this delta lacks.
                for &(held_index, part) in self.held.keys() {
                    if held_index == index && !parts.contains(&part) {
                        parts.push(part);
                    }
                }
            }
            for part in parts {
                let mut text = self.held.remove(&(index, part)).unwrap_or_default();
                text.push_str(delta.and_then(|d| part.text(d)).unwrap_or(""));
                texts.push((position, index, part, text, finishing));
            }
        }
        for (position, index, part, text, finishing) in texts {
            match self.release(&text, finishing) {
                Ok((released, rest)) => {
                    if !rest.is_empty() {
                        self.held.insert((index, part), rest);
                    }
                    let Some(choice) = choices.get_mut(position).and_then(Value::as_object_mut) else { continue };
                    let delta = choice.entry("delta").or_insert_with(|| json!({}));
                    if let Some(delta) = delta.as_object_mut() {
                        part.set(delta, released);
                        rewritten = true;
                    }
                }
                Err(error) => return self.block(error, out),
            }
        }
        if !rewritten {
            out.extend_from_slice(raw);
            return;
        }
        self.template = Some(value.clone());
        out.extend_from_slice(data_event(&value).as_bytes());
    }

    /// Release every choice's held text, in one event shaped like the last one seen; `false` if that blocked.
    fn flush_all(&mut self, out: &mut Vec<u8>) -> bool {
        let held = std::mem::take(&mut self.held);
        let mut deltas: BTreeMap<u64, serde_json::Map<String, Value>> = BTreeMap::new();
        for ((index, part), text) in held {
            match self.release(&text, true) {
                Ok((released, _)) => part.set(deltas.entry(index).or_default(), released),
                Err(error) => {
                    self.block(error, out);
                    return false;
                }
            }
        }
        let choices: Vec<Value> = deltas
            .into_iter()
            .map(|(index, delta)| json!({"index": index, "delta": delta, "finish_reason": null}))
            .collect();
        if !choices.is_empty() {
            let mut event = self.template.clone().unwrap_or_else(|| json!({"object": "chat.completion.chunk"}));
            if let Some(object) = event.as_object_mut() {
                object.remove("usage");
                object.insert("choices".to_owned(), Value::Array(choices));
            }
            out.extend_from_slice(data_event(&event).as_bytes());
        }
        true
    }

    fn block(&mut self, error: crate::openai::error::GatewayError, out: &mut Vec<u8>) {
        tracing::warn!(code = error.code(), "{error}");
        self.held.clear();
        self.finished = true;
        if let Some(spend) = &self.spend {
            spend.stream_ended(StreamEnd::Rejected);
        }
        out.extend_from_slice(error.sse_event().as_bytes());
        out.extend_from_slice(DONE_EVENT.as_bytes());
    }

    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(chunk);
        while !self.finished {
            let Some(end) = event_end(&self.pending) else { break };
            let raw: Vec<u8> = self.pending.drain(..end).collect();
            self.event(&raw, out);
        }
    }

    /// The upstream ended: release what is held (an answer cut short still shows what it had), then the rest.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.flush_all(out) {
            out.append(&mut self.pending);
        }
        self.finished = true;
    }
}

impl<S> Stream for GuardedStream<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match ready!(this.upstream.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => this.push(&chunk, &mut out),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.end(&mut out),
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Bytes::from(out))));
            }
        }
    }
}

impl<S> Drop for GuardedStream<S> {
    fn drop(&mut self) {
        self.guard.record(&self.tally, self.spend.as_ref());
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
