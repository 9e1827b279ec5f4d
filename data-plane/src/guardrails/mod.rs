//! Guardrails (semantics in `docs/guardrails.md`): the snapshot's compiled [`GuardrailSet`] applied to one request.
//! [`prepare`] picks the guardrails whose `when` holds; [`Guard::prompt`] inspects and redacts the request's texts
//! before anything is sent upstream (or refuses it, `content_blocked`); [`Guard::answer`] does the same to a
//! non-streamed answer, and [`stream::GuardedStream`] to a streamed one, through a bounded window. What they find is
//! recorded as names and counts only ([`Guard::record`]): the spend event and `gateway_guardrail_matches_total`.
//! External classifiers ([`classifiers`]) run after the local detectors, over the texts as they would leave: on the
//! prompt ([`Guard::classify_prompt`]) and on non-streamed answers ([`Guard::classify_answer`]); a streamed request
//! they would have to check is refused ([`Guard::refuse_unclassifiable_stream`]).
//! Below `proxy/` and `stream/`, above `spend/` and `openai/`.

pub mod classifiers;
pub mod stream;

use std::sync::Arc;

use bytes::Bytes;
use gateway_proto::v1;
use policy_engine::facts::{KeyFacts, RequestFacts};
use policy_engine::guardrail::{Applied, Blocked, Finding, GuardrailSet, Side, Tally};
use serde_json::{Map, Value};

use crate::control::snapshot::CompiledSnapshot;
use crate::openai::error::GatewayError;
use crate::openai::request::Endpoint;
use crate::providers::upstream::Upstreams;
use crate::spend::record::SpendHandle;

/// The guardrails that apply to one request, with the snapshot that compiled them.
#[derive(Clone)]
pub struct Guard {
    snapshot: Arc<CompiledSnapshot>,
    applied: Applied,
}

/// The guardrails for a request; `None` when none applies. A `when` that fails to evaluate refuses the request.
pub fn prepare(
    snapshot: &Arc<CompiledSnapshot>,
    facts: &RequestFacts,
    key: &KeyFacts,
) -> Result<Option<Guard>, GatewayError> {
    if snapshot.guardrails.is_empty() {
        return Ok(None);
    }
    let applied = snapshot.guardrails.applicable(facts, key, chrono::Utc::now()).map_err(|failed| {
        GatewayError::PolicyFailed {
            kind: "guardrail",
            policy: failed.guardrail,
            field: "when".to_owned(),
            error: failed.error,
        }
    })?;
    Ok((!applied.is_empty()).then(|| Guard { snapshot: snapshot.clone(), applied }))
}

impl Guard {
    fn set(&self) -> &GuardrailSet {
        &self.snapshot.guardrails
    }

    pub fn covers(&self, side: Side) -> bool {
        self.set().covers(&self.applied, side)
    }

    /// Inspect one text: `Err` when a `block` guardrail matched, else the text with `redact` matches replaced
    /// (and whether it changed).
    fn inspect(
        &self,
        side: Side,
        text: &mut String,
        findings: &mut Vec<Finding>,
        tally: &mut Tally,
    ) -> Result<bool, Blocked> {
        let set = self.set();
        set.scan(&self.applied, side, text, findings);
        if findings.is_empty() {
            return Ok(false);
        }
        // Every finding is counted, a blocked text's too.
        let released = set.release(text, findings, text.len(), side, tally);
        if let Some(blocked) = set.blocked(findings, side) {
            return Err(blocked);
        }
        if released == *text {
            return Ok(false);
        }
        *text = released;
        Ok(true)
    }

    /// The request's texts inspected in place: message contents (strings and text parts), tool-call arguments and
    /// tool results of the conversation, a completion's `prompt`, an embedding's `input`. A block refuses the
    /// request (counted in metrics; no spend event, since nothing reached an upstream).
    pub fn prompt(&self, endpoint: Endpoint, body: &mut Map<String, Value>) -> Result<Tally, GatewayError> {
        let mut tally = Tally::default();
        if !self.covers(Side::Prompt) {
            return Ok(tally);
        }
        let mut findings = Vec::new();
        let mut inspect = |text: &mut String| self.inspect(Side::Prompt, text, &mut findings, &mut tally).map(drop);
        let outcome = prompt_texts(endpoint, body, &mut inspect);
        match outcome {
            Ok(()) => Ok(tally),
            Err(blocked) => {
                self.record(&tally, None);
                Err(blocked_error(blocked))
            }
        }
    }

    /// Refuse a streamed request when an applied guardrail would classify its answer with an external classifier:
    /// streamed answers are released as they come, and a classifier needs the text whole (`docs/guardrails.md`).
    pub fn refuse_unclassifiable_stream(&self, stream: bool) -> Result<(), GatewayError> {
        if !stream {
            return Ok(());
        }
        match self.set().classifiers(&self.applied, Side::Completion).first() {
            None => Ok(()),
            Some(classifier) => Err(GatewayError::Unsupported(format!(
                "guardrail '{}' checks answers with an external {} classifier, which streamed answers do not \
                 support: ask without stream, or have the guardrail cover only the prompt (side: prompt) or skip \
                 streams (when: !request.stream)",
                classifier.guardrail_name,
                classifier.spec.category()
            ))),
        }
    }

    /// The prompt's texts, as they now stand (redacted), through the external classifiers; their verdicts added to
    /// `tally`. A refusal records the tally (no spend event: nothing reached an upstream).
    pub async fn classify_prompt(
        &self,
        upstreams: &Upstreams,
        endpoint: Endpoint,
        body: &mut Map<String, Value>,
        request_id: &str,
        tally: &mut Tally,
    ) -> Result<(), GatewayError> {
        if !self.classifies(Side::Prompt) {
            return Ok(());
        }
        let mut texts = Vec::new();
        let mut collect = |text: &mut String| -> Result<(), Blocked> {
            texts.push(text.clone());
            Ok(())
        };
        let _ = prompt_texts(endpoint, body, &mut collect);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let outcome = self.classify(upstreams, Side::Prompt, &texts, request_id, tally).await;
        if outcome.is_err() {
            self.record(tally, None);
        }
        outcome
    }

    /// A non-streamed answer's texts (`bytes`, as they will go out) through the external classifiers covering
    /// completions; their verdicts added to `tally`.
    pub async fn classify_answer(
        &self,
        upstreams: &Upstreams,
        bytes: &Bytes,
        request_id: &str,
        tally: &mut Tally,
    ) -> Result<(), GatewayError> {
        if !self.classifies(Side::Completion) {
            return Ok(());
        }
        let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(bytes) else { return Ok(()) };
        let mut texts = Vec::new();
        let mut collect = |text: &mut String| -> Result<(), Blocked> {
            texts.push(text.clone());
            Ok(())
        };
        if let Some(Value::Array(choices)) = answer.get_mut("choices") {
            for choice in choices {
                if let Some(message) = choice.get_mut("message") {
                    let _ = message_texts(message, &mut collect);
                }
                if let Some(Value::String(text)) = choice.get_mut("text") {
                    let _ = collect(text);
                }
            }
        }
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.classify(upstreams, Side::Completion, &texts, request_id, tally).await
    }

    /// A non-streamed answer inspected: each choice's message content and tool-call arguments (chat) or text
    /// (completions). The answer comes back re-serialized only when something was redacted.
    pub fn answer(&self, bytes: &Bytes, tally: &mut Tally) -> Result<Option<Bytes>, GatewayError> {
        if !self.covers(Side::Completion) {
            return Ok(None);
        }
        let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(bytes) else { return Ok(None) };
        let mut findings = Vec::new();
        let mut changed = false;
        let mut inspect = |text: &mut String| {
            changed |= self.inspect(Side::Completion, text, &mut findings, tally)?;
            Ok(())
        };
        let outcome = match answer.get_mut("choices") {
            Some(Value::Array(choices)) => choices.iter_mut().try_for_each(|choice| {
                if let Some(message) = choice.get_mut("message") {
                    message_texts(message, &mut inspect)?;
                }
                match choice.get_mut("text") {
                    Some(Value::String(text)) => inspect(text),
                    _ => Ok(()),
                }
            }),
            _ => Ok(()),
        };
        outcome.map_err(blocked_error)?;
        if !changed {
            return Ok(None);
        }
        Ok(serde_json::to_vec(&answer).ok().map(Bytes::from))
    }

    /// Record a tally: each (guardrail, detector) counted in metrics and, with a spend record, on its event.
    pub fn record(&self, tally: &Tally, spend: Option<&SpendHandle>) {
        if tally.is_empty() {
            return;
        }
        let outcomes = self.set().outcomes(tally);
        for outcome in &outcomes {
            metrics::counter!(crate::metrics::GUARDRAIL_MATCHES,
                "guardrail" => outcome.guardrail.clone(),
                "detector" => outcome.detector.clone(),
                "action" => outcome.action,
                "side" => outcome.side.as_str())
            .increment(u64::from(outcome.count));
        }
        if let Some(spend) = spend {
            spend.guardrail_outcomes(
                outcomes
                    .into_iter()
                    .map(|o| v1::GuardrailOutcome {
                        guardrail: o.guardrail,
                        detector: o.detector,
                        action: o.action.to_owned(),
                        side: o.side.as_str().to_owned(),
                        count: o.count,
                    })
                    .collect(),
            );
        }
    }
}

fn blocked_error(blocked: Blocked) -> GatewayError {
    GatewayError::ContentBlocked {
        guardrail: blocked.guardrail,
        category: blocked.category,
        side: blocked.side.as_str(),
    }
}

/// A string, or an array of strings (a completion's `prompt`, an embedding's `input`); token arrays are left alone.
fn strings(value: &mut Value, inspect: &mut impl FnMut(&mut String) -> Result<(), Blocked>) -> Result<(), Blocked> {
    match value {
        Value::String(text) => inspect(text),
        Value::Array(items) => items.iter_mut().try_for_each(|item| match item {
            Value::String(text) => inspect(text),
            _ => Ok(()),
        }),
        _ => Ok(()),
    }
}

/// Each text of a request's prompt, by endpoint: chat messages (with tool calls and results), a completion's
/// `prompt`, an embedding's `input`, an image's `prompt`.
fn prompt_texts(
    endpoint: Endpoint,
    body: &mut Map<String, Value>,
    f: &mut impl FnMut(&mut String) -> Result<(), Blocked>,
) -> Result<(), Blocked> {
    match endpoint {
        Endpoint::ChatCompletions => match body.get_mut("messages") {
            Some(Value::Array(messages)) => messages.iter_mut().try_for_each(|m| message_texts(m, f)),
            _ => Ok(()),
        },
        Endpoint::Completions | Endpoint::ImageGenerations => body.get_mut("prompt").map_or(Ok(()), |p| strings(p, f)),
        Endpoint::Embeddings => body.get_mut("input").map_or(Ok(()), |i| strings(i, f)),
    }
}

/// A chat message's texts: its content (a string, or the `text` of its parts), its tool calls' arguments and a
/// legacy `function_call`'s. Tool results are messages of role `tool`, so their content is covered too.
fn message_texts(
    message: &mut Value,
    inspect: &mut impl FnMut(&mut String) -> Result<(), Blocked>,
) -> Result<(), Blocked> {
    let Value::Object(message) = message else { return Ok(()) };
    match message.get_mut("content") {
        Some(Value::String(text)) => inspect(text)?,
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(Value::String(text)) = part.get_mut("text") {
                    inspect(text)?;
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for call in calls {
            if let Some(Value::String(arguments)) = call.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                inspect(arguments)?;
            }
        }
    }
    if let Some(Value::String(arguments)) = message.get_mut("function_call").and_then(|f| f.get_mut("arguments")) {
        inspect(arguments)?;
    }
    Ok(())
}
