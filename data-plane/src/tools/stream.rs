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
mod tests {
    use policy_engine::tool_policy::Outcome;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn declared() -> Arc<DeclaredTools> {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["city"],
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}});
        let mut tools = DeclaredTools::default();
        tools.insert("get_weather".into(), Some(Arc::new(policy_engine::tool_schema::compile(&schema).unwrap())));
        tools.insert("get_time".into(), None);
        Arc::new(tools)
    }

    fn event(value: Value) -> String {
        format!("data: {value}\n\n")
    }

    fn text(content: &str) -> String {
        event(json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]}))
    }

    fn fragment(index: u64, name: Option<&str>, arguments: &str) -> String {
        let mut function = json!({"arguments": arguments});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": function}]},
            "finish_reason": null}]}))
    }

    fn finish(reason: &str) -> String {
        event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
    }

    const DONE: &str = "data: [DONE]\n\n";

    /// A stream: some text, calls given as (name, argument pieces) sent one after the other, finish, [DONE].
    fn stream(calls: &[(&str, &[&str])]) -> Vec<String> {
        let mut events = vec![text(""), text("Let me check.")];
        for (i, (name, pieces)) in calls.iter().enumerate() {
            for (j, piece) in pieces.iter().enumerate() {
                events.push(fragment(i as u64, (j == 0).then_some(*name), piece));
            }
        }
        events.push(finish("tool_calls"));
        events.push(DONE.to_owned());
        events
    }

    /// Feed `input` split at `cuts`; the output, with what it held after each chunk.
    fn run(hold: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, ToolStream) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.extend([0, input.len()]);
        points.sort_unstable();
        points.dedup();
        let mut stage = ToolStream::new(declared(), hold);
        let mut out = Vec::new();
        for w in points.windows(2) {
            stage.push(&input[w[0]..w[1]], &mut out);
        }
        stage.end(&mut out);
        (out, stage)
    }

    fn outcomes(stage: &ToolStream) -> Vec<Outcome> {
        stage.outcomes().iter().map(|o| o.outcome).collect()
    }

    #[test]
    fn valid_calls_are_released_in_order_before_the_finish_event() {
        let events = stream(&[("get_weather", &["{\"ci", "ty\":\"Paris\"}"]), ("get_time", &["{}"])]);
        let input = events.concat();
        let (out, stage) = run(true, input.as_bytes(), &[]);
        assert_eq!(String::from_utf8(out).unwrap(), input);
        assert_eq!(outcomes(&stage), [Outcome::Valid, Outcome::Valid]);
        assert!(stage.saw_done() && stage.committed() && !stage.rejected());
    }

    #[test]
    fn fragments_are_held_until_the_call_is_complete_and_text_is_not() {
        let events = stream(&[("get_weather", &["{\"city\":", "\"Paris\"}"])]);
        let mut stage = ToolStream::new(declared(), true);
        let mut out = Vec::new();
        for e in &events[..4] {
            stage.push(e.as_bytes(), &mut out);
        }
        assert_eq!(String::from_utf8(out.clone()).unwrap(), events[..2].concat(), "text went, fragments are held");
        stage.push(events[4].as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), events[..5].concat());
    }

    #[test]
    fn one_bad_call_among_parallel_ones_rejects_with_every_violation_and_nothing_of_the_calls() {
        let events = stream(&[("get_weather", &["{\"city\":\"Paris\"}"]), ("get_weather", &["{\"unit\":\"k\"}"])]);
        let (out, stage) = run(true, events.concat().as_bytes(), &[]);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(&events[..2].concat()), "{out}");
        let error = out.strip_prefix(&events[..2].concat()).unwrap();
        assert!(!error.contains("\"delta\""), "{error}");
        let error: Value = serde_json::from_str(error.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(error["error"]["code"], json!("invalid_tool_call"));
        let mut pointers: Vec<(u64, String)> = error["error"]["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["tool_call_index"].as_u64().unwrap(), v["pointer"].as_str().unwrap().to_owned()))
            .collect();
        pointers.sort();
        assert_eq!(pointers, [(1, "/city".to_owned()), (1, "/unit".to_owned())]);
        assert!(stage.rejected() && !stage.saw_done());
        assert_eq!(outcomes(&stage), [Outcome::Valid, Outcome::SchemaViolation]);
    }

    /// Each case: calls, expected outcomes. Without holding the stream is unchanged; with it, it is rejected.
    #[test]
    fn every_kind_of_invalid_call() {
        type Calls<'a> = &'a [(&'a str, &'a [&'a str])];
        let cases: &[(Calls, &[Outcome])] = &[
            (&[("get_wether", &["{\"city\":\"Paris\"}"])], &[Outcome::UnknownTool]),
            (&[("get_weather", &["{\"city\":", "\"Par"])], &[Outcome::InvalidJson]),
            (&[("get_weather", &["{}"])], &[Outcome::SchemaViolation]),
            (&[("get_weather", &["{\"city\":", "7}"])], &[Outcome::SchemaViolation]),
            (&[("get_weather", &["{\"city\":\"P\",", "\"x\":1}"])], &[Outcome::SchemaViolation]),
        ];
        for (calls, expected) in cases {
            let input = stream(calls).concat();
            let (out, stage) = run(false, input.as_bytes(), &[]);
            assert_eq!(String::from_utf8(out).unwrap(), input, "audit passes everything");
            assert_eq!(outcomes(&stage), *expected);
            let (out, stage) = run(true, input.as_bytes(), &[]);
            assert!(stage.rejected(), "{calls:?}");
            assert!(String::from_utf8(out).unwrap().contains("invalid_tool_call"));
        }
    }

    #[test]
    fn interleaved_parallel_calls_are_assembled_per_index() {
        let events = [
            fragment(0, Some("get_weather"), "{\"city\""),
            fragment(1, Some("get_time"), "{"),
            fragment(0, None, ":\"Paris\"}"),
            fragment(1, None, "}"),
            finish("tool_calls"),
            DONE.to_owned(),
        ];
        let input = events.concat();
        let (out, stage) = run(true, input.as_bytes(), &[]);
        assert_eq!(String::from_utf8(out).unwrap(), input);
        assert_eq!(outcomes(&stage), [Outcome::Valid, Outcome::Valid]);
    }

    #[test]
    fn crlf_events_comments_and_a_missing_finish_reason() {
        let input = ": keep-alive\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\
            \"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let (out, stage) = run(true, input.as_bytes(), &[7, 40, 41]);
        assert_eq!(String::from_utf8(out).unwrap(), input);
        assert_eq!(outcomes(&stage), [Outcome::Valid]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// However the upstream chunks a valid stream, the client gets exactly its events.
        #[test]
        fn arbitrary_chunking_of_a_valid_stream_changes_nothing(cuts in prop::collection::vec(any::<usize>(), 0..40),
                                                               hold in any::<bool>()) {
            let events = stream(&[("get_weather", &["{\"ci", "ty\":", "\"Pa", "ris\",\"unit\":\"c\"}"]),
                                  ("get_time", &["{", "}"])]);
            let input = events.concat();
            let (out, stage) = run(hold, input.as_bytes(), &cuts);
            prop_assert_eq!(String::from_utf8(out).unwrap(), input);
            prop_assert_eq!(outcomes(&stage), vec![Outcome::Valid, Outcome::Valid]);
        }

        /// However an invalid stream is chunked, the verdict and the output are the same.
        #[test]
        fn arbitrary_chunking_of_an_invalid_stream_rejects_the_same_way(cuts in prop::collection::vec(any::<usize>(), 0..40)) {
            let input = stream(&[("get_weather", &["{\"ci", "ty\":", "7}"])]).concat();
            let (whole, _) = run(true, input.as_bytes(), &[]);
            let (out, stage) = run(true, input.as_bytes(), &cuts);
            prop_assert!(stage.rejected());
            prop_assert_eq!(out, whole);
        }

        /// Arbitrary bytes never panic the stage.
        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
            let _ = run(true, &input, &cuts);
        }
    }
}
