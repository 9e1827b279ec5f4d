//! The streaming tool-call stage: parses the SSE events of a chat-completion stream whose request declared tools,
//! validates each tool call once it is complete and, when the policy blocks invalid calls, holds the events that
//! carry tool-call fragments until then.
//!
//! - Events are cut at blank lines (`\n\n`, `\r\n\r\n`, `\r\r`), so an event split across chunks, or several in one
//!   chunk, is handled; events are re-emitted byte for byte.
//! - Events without tool-call fragments (text, role, usage, comments, anything unparsable) go out at once.
//! - Fragments are accumulated per (choice, `tool_calls[].index`). A choice's calls are complete when its
//!   `finish_reason` arrives (or at `[DONE]`): a later index starting is not taken as completion, because providers
//!   may interleave fragments of parallel calls.
//! - Complete and valid: the held events are released in their original order, ahead of the finishing event.
//!   Invalid while holding: the held events are dropped, an `invalid_tool_call` error event ends the stream.
//! - Without holding (annotate, audit) events pass at once and calls are only validated and recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use policy_engine::tool_policy::{DeclaredTools, ToolCallOutcome};
use serde_json::Value;

use crate::openai::error::GatewayError;
use crate::openai::sse::{data_json, event_data, event_end, is_done};
use crate::tools::governance;

#[derive(Default)]
struct Call {
    name: String,
    arguments: String,
}

struct HeldEvent {
    choices: BTreeSet<u64>,
    raw: Vec<u8>,
}

pub struct ToolStream {
    declared: Arc<DeclaredTools>,
    hold: bool,
    /// Bytes of an event not terminated yet.
    pending: Vec<u8>,
    /// Calls being assembled, by (choice index, call index); removed once validated.
    calls: BTreeMap<(u64, u64), Call>,
    finished_choices: BTreeSet<u64>,
    held: Vec<HeldEvent>,
    outcomes: Vec<ToolCallOutcome>,
    saw_done: bool,
    rejected: bool,
    committed: bool,
}

impl ToolStream {
    pub fn new(declared: Arc<DeclaredTools>, hold: bool) -> ToolStream {
        ToolStream {
            declared,
            hold,
            pending: Vec::new(),
            calls: BTreeMap::new(),
            finished_choices: BTreeSet::new(),
            held: Vec::new(),
            outcomes: Vec::new(),
            saw_done: false,
            rejected: false,
            committed: false,
        }
    }

    /// Feed upstream bytes; what may go to the client is appended to `out`. Nothing is accepted after a rejection.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.rejected {
            return;
        }
        self.pending.extend_from_slice(chunk);
        while let Some(end) = event_end(&self.pending) {
            let raw: Vec<u8> = self.pending.drain(..end).collect();
            self.event(raw, out);
            if self.rejected {
                self.pending.clear();
                return;
            }
        }
    }

    /// The upstream ended: an unterminated last event is processed as if terminated. Calls still incomplete are
    /// neither validated nor released (the stream is broken; the caller ends it with an error unless `[DONE]` came).
    pub fn end(&mut self, out: &mut Vec<u8>) {
        if !self.rejected && !self.pending.is_empty() {
            let raw = std::mem::take(&mut self.pending);
            self.event(raw, out);
        }
    }

    /// `data: [DONE]` went through.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// An invalid call was refused: the error event is out, the stream must end.
    pub fn rejected(&self) -> bool {
        self.rejected
    }

    /// Text or tool calls went to the client (after this, an invalid call can no longer be retried unseen).
    pub fn committed(&self) -> bool {
        self.committed
    }

    /// Every call validated so far.
    pub fn outcomes(&self) -> &[ToolCallOutcome] {
        &self.outcomes
    }

    pub fn take_outcomes(&mut self) -> Vec<ToolCallOutcome> {
        std::mem::take(&mut self.outcomes)
    }

    fn event(&mut self, raw: Vec<u8>, out: &mut Vec<u8>) {
        let Some(data) = event_data(&raw) else {
            out.extend_from_slice(&raw);
            return;
        };
        if is_done(&data) {
            let open: BTreeSet<u64> = self.calls.keys().map(|(choice, _)| *choice).collect();
            for choice in open {
                self.complete(choice, out);
            }
            if !self.rejected {
                self.saw_done = true;
                out.extend_from_slice(&raw);
            }
            return;
        }
        let Ok(value) = data_json(&data) else {
            out.extend_from_slice(&raw);
            return;
        };
        let mut touched = BTreeSet::new();
        let mut finished = Vec::new();
        let mut text = false;
        let choices = value.get("choices").and_then(Value::as_array).into_iter().flatten();
        for (position, choice) in choices.enumerate() {
            let choice_index = choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
            text |= choice.pointer("/delta/content").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
            let fragments = choice.pointer("/delta/tool_calls").and_then(Value::as_array).into_iter().flatten();
            for (i, fragment) in fragments.enumerate() {
                let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
                let call = self.calls.entry((choice_index, index)).or_default();
                if let Some(name) = fragment.pointer("/function/name").and_then(Value::as_str) {
                    // Some providers repeat the whole name in every fragment; others send it once.
                    if call.name != name {
                        call.name.push_str(name);
                    }
                }
                if let Some(arguments) = fragment.pointer("/function/arguments").and_then(Value::as_str) {
                    call.arguments.push_str(arguments);
                }
                touched.insert(choice_index);
            }
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                finished.push(choice_index);
            }
        }
        if !touched.is_empty() {
            if self.hold {
                self.held.push(HeldEvent { choices: touched.clone(), raw: raw.clone() });
            } else {
                self.committed = true;
                out.extend_from_slice(&raw);
            }
        }
        for choice in finished {
            self.complete(choice, out);
            if self.rejected {
                return;
            }
        }
        if touched.is_empty() {
            self.committed |= text;
            out.extend_from_slice(&raw);
        }
    }

    /// Validate the calls of `choice`; release its held events or, when one is invalid and calls are held, reject.
    fn complete(&mut self, choice: u64, out: &mut Vec<u8>) {
        self.finished_choices.insert(choice);
        let keys: Vec<(u64, u64)> = self.calls.range((choice, 0)..=(choice, u64::MAX)).map(|(k, _)| *k).collect();
        let first_new = self.outcomes.len();
        for key in keys {
            if let Some(call) = self.calls.remove(&key) {
                self.outcomes.push(self.declared.validate(key.1, &call.name, &call.arguments));
            }
        }
        let invalid: Vec<ToolCallOutcome> =
            self.outcomes[first_new..].iter().filter(|o| !o.is_valid()).cloned().collect();
        if self.hold && !invalid.is_empty() {
            self.held.clear();
            self.rejected = true;
            let error = GatewayError::InvalidToolCall { violations: governance::violations(&invalid) };
            out.extend_from_slice(error.sse_event().as_bytes());
            return;
        }
        let finished = &self.finished_choices;
        let (release, keep): (Vec<HeldEvent>, Vec<HeldEvent>) =
            std::mem::take(&mut self.held).into_iter().partition(|e| e.choices.is_subset(finished));
        self.held = keep;
        for event in release {
            self.committed = true;
            out.extend_from_slice(&event.raw);
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
