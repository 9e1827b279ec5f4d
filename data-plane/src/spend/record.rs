//! One request's spend event: built up while the request is served (attempts, usage of every answer, outcome) and
//! handed to the reporter exactly once, when its last holder lets go: the request handler for answers read whole,
//! the response stream for streamed ones. So a stream is metered however it ends (completed, cut, timed out, or
//! abandoned by the client), and a request whose client went away mid-flight still leaves its event.
//!
//! An attempt counts from the moment it is sent, so a client that leaves before any answer leaves an event too,
//! charged the estimated prompt. When the gateway itself ended the connection (see [`crate::server::Cut`]), the
//! outcome says why: `timeout`, `client_stalled` or `shutdown`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gateway_proto::v1;
use gateway_telemetry::RequestTrace;
use policy_engine::routing::PlannedCandidate;
use policy_engine::tool_policy::ToolCallOutcome;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// The most attempts a spend event names (the control plane accepts as many).
const MAX_ATTEMPT_RECORDS: usize = 64;

use super::budgets::{Reservation, event_contributions};
use super::reporter::{OpenRecord, Reporter};
use crate::control::snapshot::CompiledSnapshot;
use crate::openai::request::ParsedRequest;
use crate::ratelimit::limiter::RequestRates;
use crate::server::{Cut, Exchange};
use crate::spend::metering::{self, CostOverflow, Usage};

/// How a streamed answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// `data: [DONE]` and the end of the upstream stream.
    Done,
    /// The upstream closed without `[DONE]`.
    EndedEarly,
    /// The upstream connection failed mid-stream.
    Broke,
    /// The backend's total timeout passed.
    TimedOut,
    /// An invalid tool call ended the stream (tool policy `reject`).
    Rejected,
}

/// The metadata tags an event may carry (the ledger refuses more, or longer, ones; see `control-plane/src/spend.rs`).
const MAX_TAGS: usize = 64;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 1024;
/// Tool-call outcomes an event may carry, and the longest tool name the ledger takes (bytes).
const MAX_TOOL_CALLS: usize = 128;
const MAX_TOOL_NAME: usize = 256;
/// Guardrail outcomes an event may carry (the ledger refuses more).
const MAX_GUARDRAIL_OUTCOMES: usize = 128;

/// `text` without NUL characters and cut to at most `max` bytes at a character boundary: what the ledger takes.
fn bounded(text: &str, max: usize) -> String {
    let mut text = text.replace('\0', "");
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The caller's metadata as event tags: strings as they are, other JSON values as JSON text; keys past the ledger's
/// limits are left out and values cut at a character boundary, so a tag can never get the event quarantined.
pub fn metadata_tags(metadata: &Map<String, Value>) -> HashMap<String, String> {
    let mut tags = HashMap::new();
    for (key, value) in metadata {
        if tags.len() == MAX_TAGS {
            break;
        }
        if key.is_empty() || key.len() > MAX_TAG_KEY || key.contains('\0') {
            continue;
        }
        let text = match value {
            Value::String(text) => bounded(text, MAX_TAG_VALUE),
            other => bounded(&other.to_string(), MAX_TAG_VALUE),
        };
        tags.insert(key.clone(), text);
    }
    tags
}

/// What the request is, fixed before the first attempt.
pub struct SpendContext<'a> {
    pub key: &'a v1::ApiKey,
    pub policy: Option<&'a str>,
    pub request_id: &'a str,
    pub metadata: &'a Map<String, Value>,
    pub snapshot: Arc<CompiledSnapshot>,
    pub request: Arc<ParsedRequest>,
    pub reservation: Reservation,
    /// The request's rate-limit charges, settled to its usage when it ends.
    pub rates: RequestRates,
    /// Already counted for budget admission, if it was.
    pub prompt_estimate: Option<u64>,
    pub arrived: Instant,
    pub occurred_at: DateTime<Utc>,
    /// The request's handle on its connection.
    pub exchange: Exchange,
    /// The request's span, ended with what was metered when the event is made, and its trace id.
    pub trace: RequestTrace,
}

struct SpendState {
    attempts: u32,
    /// The candidate last attempted: the one that served, or the last that failed.
    candidate: Option<PlannedCandidate>,
    usage: Usage,
    /// Summed per answer at its own model's prices.
    cost: Result<Decimal, CostOverflow>,
    status: u16,
    outcome: Option<&'static str>,
    streaming: bool,
    stream_end: Option<StreamEnd>,
    first_byte: Option<Duration>,
    tool_calls: Vec<v1::ToolCallOutcome>,
    /// What the request's guardrails found (names and counts).
    guardrails: Vec<v1::GuardrailOutcome>,
    /// The attempts sent, in order, each `answered` until it fails (at most [`MAX_ATTEMPT_RECORDS`]).
    attempt_log: Vec<v1::AttemptRecord>,
    /// The answer's finish reasons, kept only while the span is exported (`gen_ai.response.finish_reasons`).
    finish_reasons: Vec<String>,
}

/// A request's spend, shared by whoever serves it (see the module documentation).
pub struct RequestSpend {
    /// The fixed fields, filled in at the start.
    template: v1::SpendEvent,
    arrived: Instant,
    snapshot: Arc<CompiledSnapshot>,
    request: Arc<ParsedRequest>,
    prompt_estimate: OnceLock<u64>,
    reporter: Arc<Reporter>,
    state: Mutex<SpendState>,
    exchange: Exchange,
    rates: RequestRates,
    trace: RequestTrace,
    /// Released after the event is recorded (fields drop after `Drop::drop`), so the budget never sees neither.
    _reservation: Reservation,
    /// Closed after the event is recorded: the reporter's last cut on shutdown waits for it.
    _open: OpenRecord,
}

pub type SpendHandle = Arc<RequestSpend>;

impl RequestSpend {
    pub fn start(context: SpendContext<'_>, reporter: Arc<Reporter>) -> SpendHandle {
        let key = context.key;
        let template = v1::SpendEvent {
            id: uuid::Uuid::now_v7().to_string(),
            occurred_at_unix_ms: context.occurred_at.timestamp_millis(),
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            team: key.team.clone(),
            alias: context.request.model.clone(),
            policy: context.policy.unwrap_or_default().to_owned(),
            snapshot_version: context.snapshot.version,
            endpoint: context.request.endpoint.cel_name().to_owned(),
            streamed: context.request.stream,
            request_id: context.request_id.to_owned(),
            metadata: metadata_tags(context.metadata),
            trace_id: context.trace.trace_id().unwrap_or_default().to_owned(),
            ..v1::SpendEvent::default()
        };
        let prompt_estimate = OnceLock::new();
        if let Some(estimate) = context.prompt_estimate {
            let _ = prompt_estimate.set(estimate);
        }
        let open = reporter.open_record();
        Arc::new(RequestSpend {
            template,
            arrived: context.arrived,
            snapshot: context.snapshot,
            request: context.request,
            prompt_estimate,
            reporter,
            state: Mutex::new(SpendState {
                attempts: 0,
                candidate: None,
                usage: Usage::default(),
                cost: Ok(Decimal::ZERO),
                status: 0,
                outcome: None,
                streaming: false,
                stream_end: None,
                first_byte: None,
                tool_calls: Vec::new(),
                guardrails: Vec::new(),
                attempt_log: Vec::new(),
                finish_reasons: Vec::new(),
            }),
            exchange: context.exchange,
            rates: context.rates,
            trace: context.trace,
            _reservation: context.reservation,
            _open: open,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SpendState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The estimated prompt tokens (the real tokenizer over the request's text), counted once and only if needed.
    pub fn prompt_estimate(&self) -> u64 {
        *self.prompt_estimate.get_or_init(|| self.request.prompt_tokens())
    }

    /// An upstream attempt to `candidate` is being sent: from here on, the request is billed however it ends.
    /// Returns the candidate attempted before, for [`RequestSpend::not_sent`].
    pub fn attempt(&self, candidate: &PlannedCandidate) -> Option<PlannedCandidate> {
        let mut state = self.lock();
        state.attempts += 1;
        if state.attempt_log.len() < MAX_ATTEMPT_RECORDS {
            state.attempt_log.push(v1::AttemptRecord {
                backend: candidate.backend.clone(),
                model: candidate.model.clone(),
                outcome: "answered".to_owned(),
                status: 0,
            });
        }
        state.candidate.replace(candidate.clone())
    }

    /// The attempt just counted was not sent after all (the backend cannot take the request).
    pub fn not_sent(&self, previous: Option<PlannedCandidate>) {
        let mut state = self.lock();
        if state.attempt_log.len() == state.attempts as usize {
            state.attempt_log.pop();
        }
        state.attempts = state.attempts.saturating_sub(1);
        state.candidate = previous;
    }

    /// The last attempt sent failed over: `class` names how (`AttemptError::class`), `status` the upstream's answer.
    pub fn attempt_failed(&self, class: &str, status: Option<u16>) {
        let mut state = self.lock();
        if state.attempt_log.len() == state.attempts as usize
            && let Some(last) = state.attempt_log.last_mut()
        {
            last.outcome = class.to_owned();
            last.status = u32::from(status.unwrap_or(0));
        }
    }

    /// The request's rate-limit charges: backends are admitted per attempt, the key's headers go on the response.
    pub fn rates(&self) -> &RequestRates {
        &self.rates
    }

    /// The request's trace: its span (the parent of each attempt's) and the headers attempts carry.
    pub fn trace(&self) -> &RequestTrace {
        &self.trace
    }

    /// The request's handle on its connection (where the proxy sets the exchange's deadline).
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    fn priced(&self, model: &str, usage: &Usage) -> Result<Decimal, CostOverflow> {
        // Candidates come from the same snapshot, so an unknown model cannot happen; never price it as free.
        let spec = self.snapshot.config.models.get(model).ok_or(CostOverflow)?;
        let tokens = metering::cost(usage, &spec.pricing)?;
        if usage.images == 0 {
            return Ok(tokens);
        }
        // Routing kept only candidates that price the size and quality asked for; never price an image as free.
        let (quality, size) = self.request.image_options();
        let unit = spec.pricing.image_price(quality, size).ok_or(CostOverflow)?;
        tokens.checked_add(metering::image_cost(usage.images, unit)?).ok_or(CostOverflow)
    }

    /// One answer of `model` used `usage` (every answer is billed: retried ones and rejected ones too).
    pub fn add_usage(&self, model: &str, usage: Usage) {
        let cost = self.priced(model, &usage);
        let mut state = self.lock();
        let total = &mut state.usage;
        total.prompt_tokens = total.prompt_tokens.saturating_add(usage.prompt_tokens);
        total.cached_prompt_tokens = total.cached_prompt_tokens.saturating_add(usage.cached_prompt_tokens);
        total.completion_tokens = total.completion_tokens.saturating_add(usage.completion_tokens);
        total.cache_creation_tokens = total.cache_creation_tokens.saturating_add(usage.cache_creation_tokens);
        total.images = total.images.saturating_add(usage.images);
        total.estimated |= usage.estimated;
        state.cost = match (state.cost, cost) {
            (Ok(sum), Ok(cost)) => sum.checked_add(cost).ok_or(CostOverflow),
            _ => Err(CostOverflow),
        };
    }

    /// The usage of a non-streamed `body` from `model`: the upstream's, else estimated with the tokenizer.
    pub fn add_answer(&self, model: &str, body: &[u8]) {
        let endpoint = self.request.endpoint;
        let usage = metering::usage_from_body(endpoint, body).unwrap_or_else(|| Usage {
            prompt_tokens: self.prompt_estimate(),
            completion_tokens: metering::completion_estimate(endpoint, body),
            // An image answer that does not say what it holds is billed for every image asked for.
            images: self.request.images_requested(),
            estimated: true,
            ..Usage::default()
        });
        self.add_usage(model, usage);
        if self.trace.exported() {
            self.set_finish_reasons(metering::finish_reasons_from_body(body));
        }
    }

    /// How the served answer's choices ended (the last answer's win: a retried answer's are replaced).
    pub fn set_finish_reasons(&self, reasons: Vec<String>) {
        if !reasons.is_empty() {
            self.lock().finish_reasons = reasons;
        }
    }

    /// The request is answered with `status`; `outcome` as the ledger records it (`ok`, `upstream_error`, ...).
    pub fn finish(&self, status: u16, outcome: &'static str) {
        let mut state = self.lock();
        state.status = status;
        state.outcome = Some(outcome);
    }

    /// The answer streams to the client; how the stream ends decides the outcome.
    pub fn streaming(&self) {
        let mut state = self.lock();
        state.status = 200;
        state.streaming = true;
    }

    /// Whether the answer streams (its cost then travels in the stream, not in a header).
    pub fn is_streaming(&self) -> bool {
        self.lock().streaming
    }

    pub fn stream_ended(&self, end: StreamEnd) {
        let mut state = self.lock();
        // A timeout or a rejection decided by the stage wins over what the upstream did afterwards.
        if !matches!(state.stream_end, Some(StreamEnd::TimedOut | StreamEnd::Rejected)) {
            state.stream_end = Some(end);
        }
    }

    /// The first bytes reached the client (time to first byte).
    pub fn first_byte(&self) {
        let mut state = self.lock();
        if state.first_byte.is_none() {
            state.first_byte = Some(self.arrived.elapsed());
        }
    }

    /// Validation outcomes of the tool calls of one answer. Names come from the model, so they are cut to what the
    /// ledger takes, and past its 128 entries the rest is summed up in one `_more` entry: a diagnostic field must
    /// never get a billing record quarantined.
    pub fn tool_outcomes(&self, outcomes: &[ToolCallOutcome]) {
        let mut state = self.lock();
        for outcome in outcomes {
            let violations = u32::try_from(outcome.violations.len()).unwrap_or(u32::MAX);
            if state.tool_calls.len() < MAX_TOOL_CALLS - 1 {
                state.tool_calls.push(v1::ToolCallOutcome {
                    tool: bounded(&outcome.tool, MAX_TOOL_NAME),
                    outcome: outcome.outcome.as_str().to_owned(),
                    violations,
                });
                continue;
            }
            if state.tool_calls.len() == MAX_TOOL_CALLS - 1 {
                state.tool_calls.push(v1::ToolCallOutcome {
                    tool: "_more".to_owned(),
                    outcome: "summed".to_owned(),
                    violations: 0,
                });
            }
            if let Some(more) = state.tool_calls.last_mut() {
                more.violations = more.violations.saturating_add(violations);
            }
        }
    }

    /// Guardrail outcomes of one side (names and counts, bounded by the snapshot's guardrails and detectors); past
    /// the ledger's limit of entries the rest are left out rather than risk the billing record.
    pub fn guardrail_outcomes(&self, outcomes: Vec<v1::GuardrailOutcome>) {
        let mut state = self.lock();
        let room = MAX_GUARDRAIL_OUTCOMES.saturating_sub(state.guardrails.len());
        state.guardrails.extend(outcomes.into_iter().take(room));
    }

    /// The cost so far, plus `extra` of `model` (a stream's usage before it is final); `None` on overflow.
    pub fn cost_with(&self, model: &str, extra: &Usage) -> Option<(Decimal, bool)> {
        let extra_cost = self.priced(model, extra).ok()?;
        let state = self.lock();
        let total = state.cost.ok()?.checked_add(extra_cost)?;
        Some((total.normalize(), state.usage.estimated || extra.estimated))
    }

    /// The cost of what was recorded so far; `None` on overflow.
    pub fn cost(&self) -> Option<(Decimal, bool)> {
        let state = self.lock();
        Some((state.cost.ok()?.normalize(), state.usage.estimated))
    }

    fn event(&self) -> v1::SpendEvent {
        let mut state = self.lock();
        // Neither the handler nor the stream finished: the connection ended under the request, its client's doing
        // unless the gateway says it cut it.
        let ended_early = match self.exchange.cut() {
            Some(Cut::Deadline) => "timeout",
            Some(Cut::WriteIdle) => "client_stalled",
            Some(Cut::Shutdown) => "shutdown",
            None => "client_closed",
        };
        let (outcome, interrupted) = match state.outcome {
            Some(outcome) => (outcome, false),
            // The handler was dropped before it answered.
            None if !state.streaming => (ended_early, true),
            None => match state.stream_end {
                Some(StreamEnd::Done) => ("ok", false),
                Some(StreamEnd::EndedEarly | StreamEnd::Broke) => ("interrupted", true),
                Some(StreamEnd::TimedOut) => ("timeout", true),
                Some(StreamEnd::Rejected) => ("rejected", false),
                None => (ended_early, true),
            },
        };
        // Ended before any answer was read: the upstream still read the prompt (a stream's own stage charges it).
        if state.outcome.is_none()
            && !state.streaming
            && state.usage == Usage::default()
            && let Some(candidate) = state.candidate.clone()
        {
            drop(state);
            // An image request's images are generated (and billed by the provider) whether or not anyone waits.
            let images = self.request.images_requested();
            let usage = Usage { prompt_tokens: self.prompt_estimate(), images, estimated: true, ..Usage::default() };
            self.add_usage(&candidate.model, usage);
            state = self.lock();
        }
        let candidate = state.candidate.clone().unwrap_or_else(|| PlannedCandidate {
            model: String::new(),
            backend: String::new(),
            upstream_model: String::new(),
            weight: 0,
        });
        let region = self.snapshot.config.backends.get(&candidate.backend).and_then(|b| b.region.clone());
        let usage = state.usage;
        let cost_usd = match state.cost {
            Ok(cost) => cost.normalize().to_string(),
            Err(CostOverflow) => {
                // The ledger quarantines an event without a cost: visible to operators, never recorded as free.
                tracing::error!(request_id = %self.template.request_id, "the request's cost could not be computed");
                String::new()
            }
        };
        v1::SpendEvent {
            backend: candidate.backend,
            backend_region: region.unwrap_or_default(),
            model: candidate.model,
            upstream_model: candidate.upstream_model,
            status: u32::from(state.status),
            outcome: outcome.to_owned(),
            interrupted,
            prompt_tokens: usage.prompt_tokens,
            cached_prompt_tokens: usage.cached_prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cache_creation_tokens: usage.cache_creation_tokens,
            usage_estimated: usage.estimated,
            cost_usd,
            latency_ms: self.arrived.elapsed().as_millis() as u64,
            ttft_ms: state.first_byte.map(|d| d.as_millis() as u64),
            tool_calls: std::mem::take(&mut state.tool_calls),
            guardrails: std::mem::take(&mut state.guardrails),
            attempt_log: std::mem::take(&mut state.attempt_log),
            attempts: state.attempts,
            images: u32::try_from(usage.images).unwrap_or(u32::MAX),
            ..self.template.clone()
        }
    }
}

impl RequestSpend {
    /// The request's Prometheus series (`crate::metrics`), names bounded by the snapshot it was served with.
    fn record_metrics(&self, event: &v1::SpendEvent) {
        let config = &self.snapshot.config;
        // The summed Decimal itself, not the event's text of it (no second parse per request).
        let cost = self.lock().cost.as_ref().ok().and_then(|usd| {
            use rust_decimal::prelude::ToPrimitive;
            usd.checked_mul(Decimal::from(1_000_000_000u64))?.round().to_u64()
        });
        crate::metrics::record_request(&crate::metrics::RequestFigures {
            alias: crate::metrics::known_or_placeholder(&event.alias, config.has_alias_or_model(&event.alias)),
            backend: crate::metrics::known_or_placeholder(&event.backend, config.backends.contains_key(&event.backend)),
            model: crate::metrics::known_or_placeholder(&event.model, config.models.contains_key(&event.model)),
            status: u16::try_from(event.status).unwrap_or(0),
            outcome: &event.outcome,
            latency_seconds: self.arrived.elapsed().as_secs_f64(),
            first_token_seconds: event.ttft_ms.map(|ms| ms as f64 / 1000.0),
            input_tokens: event.prompt_tokens,
            output_tokens: event.completion_tokens,
            cached_input_tokens: event.cached_prompt_tokens,
            cache_creation_tokens: event.cache_creation_tokens,
            estimated: event.usage_estimated,
            cost_nano_usd: cost,
        });
    }
}

impl Drop for RequestSpend {
    fn drop(&mut self) {
        // No attempt was sent (every candidate was unable to take the request): nothing was spent.
        if self.lock().attempts == 0 {
            return;
        }
        let event = self.event();
        // Token limits admitted the estimate: the metered usage replaces it (an attempt that sent nothing keeps none).
        let used = event.prompt_tokens.saturating_add(event.completion_tokens);
        self.rates.settle(used, Some(&event.backend), crate::ratelimit::limiter::now_ms());
        let contributions = event_contributions(&self.snapshot.config.budgets, &event);
        metrics::counter!("gateway_spend_events_total", "outcome" => event.outcome.clone()).increment(1);
        self.record_metrics(&event);
        let kind = self.snapshot.config.backends.get(&event.backend).map(|b| b.kind);
        let finish_reasons = std::mem::take(&mut self.lock().finish_reasons);
        crate::trace::record_event(self.trace.span(), &event, kind, &finish_reasons);
        self.reporter.record(event, contributions);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metadata_becomes_tags_within_the_ledger_limits() {
        let mut metadata = Map::new();
        metadata.insert("task".into(), json!("code_generation"));
        metadata.insert("priority".into(), json!(3));
        metadata.insert("nested".into(), json!({"a": [1, "b"]}));
        metadata.insert("k".repeat(129), json!("too long a key"));
        metadata.insert("long".into(), json!("é".repeat(600)));
        metadata.insert("nul".into(), json!("a\0b"));
        let tags = metadata_tags(&metadata);
        assert_eq!(tags["task"], "code_generation");
        assert_eq!(tags["priority"], "3");
        assert_eq!(tags["nested"], r#"{"a":[1,"b"]}"#);
        assert_eq!(tags["nul"], "ab");
        assert_eq!(tags["long"].len(), 1024, "cut at a character boundary");
        assert!(!tags.keys().any(|k| k.len() > 128));
        assert_eq!(bounded("日本語", 7), "日本", "never half a character");
        let many: Map<String, Value> = (0..100).map(|i| (format!("t{i:03}"), json!(i))).collect();
        assert_eq!(metadata_tags(&many).len(), 64);
    }
}
