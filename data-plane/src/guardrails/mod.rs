//! Guardrails (semantics in `docs/guardrails.md`): the snapshot's compiled [`GuardrailSet`] applied to one request.
//! [`prepare`] picks the guardrails whose `when` holds; [`Guard::prompt`] inspects and redacts the request's texts
//! before anything is sent upstream (or refuses it, `content_blocked`); [`Guard::answer`] does the same to a
//! non-streamed answer, and [`stream::GuardedStream`] to a streamed one, through a bounded window. What they find is
//! recorded as names and counts only ([`Guard::record`]): the spend event and `gateway_guardrail_matches_total`.
//! Below `proxy/` and `stream/`, above `spend/` and `openai/`.

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
        let outcome = match endpoint {
            Endpoint::ChatCompletions => match body.get_mut("messages") {
                Some(Value::Array(messages)) => messages.iter_mut().try_for_each(|m| message_texts(m, &mut inspect)),
                _ => Ok(()),
            },
            Endpoint::Completions => body.get_mut("prompt").map_or(Ok(()), |p| strings(p, &mut inspect)),
            Endpoint::Embeddings => body.get_mut("input").map_or(Ok(()), |i| strings(i, &mut inspect)),
            Endpoint::ImageGenerations => body.get_mut("prompt").map_or(Ok(()), |p| strings(p, &mut inspect)),
        };
        match outcome {
            Ok(()) => Ok(tally),
            Err(blocked) => {
                self.record(&tally, None);
                Err(blocked_error(blocked))
            }
        }
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
                "action" => outcome.action.as_str(),
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
                        action: o.action.as_str().to_owned(),
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
