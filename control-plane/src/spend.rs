//! Spend events as the ledger stores them: validation of what data planes report ([`validate`]), no SQL.
//!
//! An invalid event never blocks the valid ones of its batch, and is never dropped silently: it is reported back
//! in the ack and kept in the quarantine table (see `proto/README.md`, "Spend").

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use gateway_proto::v1;
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

/// Most events one `ReportSpend` call may carry.
pub(crate) const MAX_BATCH_EVENTS: usize = 10_000;
/// Longest name-like field (key, team, alias, backend, model, policy, ...).
pub(crate) const MAX_TEXT: usize = 256;
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;
const MAX_TOOL_CALLS: usize = 128;
/// Guardrail outcomes per event (the data plane sends at most as many).
const MAX_GUARDRAIL_OUTCOMES: usize = 128;
/// Attempts named per event (the data plane names at most as many).
const MAX_ATTEMPT_RECORDS: usize = 64;
/// Costs keep at most this many decimal places...
pub(crate) const MAX_COST_SCALE: usize = 18;
/// ...and at most this many integer digits (below 1e9 USD, far beyond any request), so a cost has at most 27
/// significant digits and parses exactly into `rust_decimal` (28), and sums of billions of events stay exact.
const MAX_COST_INTEGER_DIGITS: usize = 9;
/// Events before this instant are refused (clock not set on the data plane): 2020-01-01T00:00:00Z.
const EARLIEST_MS: i64 = 1_577_836_800_000;
/// How far ahead of the control plane's clock an event may be (clock skew), in milliseconds.
const MAX_AHEAD_MS: i64 = 24 * 3600 * 1000;

/// A validated spend event, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendRecord {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub key_id: String,
    pub key_name: String,
    pub team: String,
    pub alias: String,
    pub policy: String,
    pub snapshot_version: i64,
    pub backend: String,
    pub backend_region: String,
    pub model: String,
    pub upstream_model: String,
    pub endpoint: String,
    pub status: i32,
    pub outcome: String,
    pub streamed: bool,
    pub interrupted: bool,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cache_creation_tokens: i64,
    pub usage_estimated: bool,
    pub cost_usd: Decimal,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    pub request_id: String,
    pub attempts: i32,
    /// Images generated (priced per image).
    pub images: i32,
    /// The request's W3C trace id (32 lowercase hex digits); `None`: the event carries none.
    pub trace_id: Option<String>,
    /// JSON object text.
    pub metadata: String,
    /// JSON array text of `{tool, outcome, violations}`.
    pub tool_calls: String,
    /// What the request's guardrails found, as a JSON array of `{guardrail, detector, action, side, count}`.
    pub guardrails: String,
    /// The upstream attempts in order, as a JSON array of `{backend, model, outcome, status}`.
    pub attempt_log: String,
}

/// An event that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub index: u32,
    /// The id as sent.
    pub id: String,
    pub field: String,
    pub reason: String,
    /// The event as received, for the quarantine table.
    #[serde(skip)]
    pub event: String,
}

/// The batch split into what can be stored and what cannot.
#[derive(Debug, Default)]
pub struct Validated {
    pub records: Vec<SpendRecord>,
    pub rejected: Vec<Rejected>,
}

/// A problem with the batch as a whole: the call is refused and nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("node_id must be 1 to 256 characters")]
    NodeId,
    #[error("a batch carries at most {MAX_BATCH_EVENTS} events, not {0}; split it")]
    TooLarge(usize),
}

/// Check every event of `batch` against `now` (the control plane's clock).
pub fn validate(batch: &v1::SpendBatch, now: DateTime<Utc>) -> Result<Validated, BatchError> {
    if batch.node_id.trim().is_empty() || batch.node_id.len() > MAX_TEXT || batch.node_id.contains('\0') {
        return Err(BatchError::NodeId);
    }
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(BatchError::TooLarge(batch.events.len()));
    }
    let mut validated = Validated { records: Vec::with_capacity(batch.events.len()), rejected: Vec::new() };
    for (index, event) in batch.events.iter().enumerate() {
        match record(event, now) {
            Ok(record) => validated.records.push(record),
            Err((field, reason)) => validated.rejected.push(Rejected {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                id: event.id.chars().take(MAX_TEXT).filter(|c| *c != '\0').collect(),
                field: field.to_owned(),
                reason,
                event: format!("{event:?}").replace('\0', "\\0"),
            }),
        }
    }
    Ok(validated)
}

type Invalid = (&'static str, String);

/// `value` if it is at most `max` bytes without NUL characters.
fn checked<'a>(field: &'static str, value: &'a str, max: usize) -> Result<&'a str, Invalid> {
    if value.len() > max {
        return Err((field, format!("longer than {max} bytes")));
    }
    if value.contains('\0') {
        return Err((field, "contains a NUL character".to_owned()));
    }
    Ok(value)
}

fn text(field: &'static str, value: &str, max: usize) -> Result<String, Invalid> {
    checked(field, value, max).map(str::to_owned)
}

// The JSON columns' elements, serialised straight from the checked event (stored as `jsonb`, so key order is
// Postgres's own).
#[derive(Serialize)]
struct ToolCallJson<'a> {
    tool: &'a str,
    outcome: &'a str,
    violations: u32,
}

#[derive(Serialize)]
struct GuardrailJson<'a> {
    guardrail: &'a str,
    detector: &'a str,
    action: &'a str,
    side: &'a str,
    count: u32,
}

#[derive(Serialize)]
struct AttemptJson<'a> {
    backend: &'a str,
    model: &'a str,
    outcome: &'a str,
    status: u32,
}

fn json_text(value: &impl Serialize) -> String {
    // Serialising borrowed strings and integers into a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Most tokens of one kind one event may count: far above any context window, low enough that the roll-ups'
/// BIGINT sums cannot overflow.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;

fn count(field: &'static str, value: u64) -> Result<i64, Invalid> {
    if value > MAX_TOKENS {
        return Err((field, format!("{value} is above {MAX_TOKENS} tokens")));
    }
    i64::try_from(value).map_err(|_| (field, format!("{value} is out of range")))
}

fn record(event: &v1::SpendEvent, now: DateTime<Utc>) -> Result<SpendRecord, Invalid> {
    let id = Uuid::parse_str(&event.id).map_err(|e| ("id", format!("not a UUID: {e}")))?;
    if id.get_version_num() != 7 {
        return Err(("id", format!("must be a UUIDv7, not version {}", id.get_version_num())));
    }
    let at = event.occurred_at_unix_ms;
    if at < EARLIEST_MS || at > now.timestamp_millis().saturating_add(MAX_AHEAD_MS) {
        return Err(("occurred_at_unix_ms", format!("{at} is before 2020 or more than a day ahead of the ledger")));
    }
    let occurred_at = Utc.timestamp_millis_opt(at).single().ok_or(("occurred_at_unix_ms", format!("{at}")))?;
    let cost_usd = cost(&event.cost_usd)?;
    let prompt_tokens = count("prompt_tokens", event.prompt_tokens)?;
    let cached_prompt_tokens = count("cached_prompt_tokens", event.cached_prompt_tokens)?;
    let cache_creation_tokens = count("cache_creation_tokens", event.cache_creation_tokens)?;
    if cached_prompt_tokens.checked_add(cache_creation_tokens).is_none_or(|parts| parts > prompt_tokens) {
        return Err((
            "cached_prompt_tokens",
            format!(
                "cached ({cached_prompt_tokens}) + cache creation ({cache_creation_tokens}) tokens exceed prompt_tokens \
                 ({prompt_tokens}), which counts every input token"
            ),
        ));
    }
    if event.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(("metadata", format!("more than {MAX_METADATA_ENTRIES} entries")));
    }
    let mut metadata = BTreeMap::new();
    for (key, value) in &event.metadata {
        metadata.insert(checked("metadata", key, MAX_METADATA_KEY)?, checked("metadata", value, MAX_METADATA_VALUE)?);
    }
    if event.tool_calls.len() > MAX_TOOL_CALLS {
        return Err(("tool_calls", format!("more than {MAX_TOOL_CALLS} tool calls")));
    }
    let mut tool_calls = Vec::with_capacity(event.tool_calls.len());
    for call in &event.tool_calls {
        tool_calls.push(ToolCallJson {
            tool: checked("tool_calls.tool", &call.tool, MAX_TEXT)?,
            outcome: checked("tool_calls.outcome", &call.outcome, MAX_TEXT)?,
            violations: call.violations,
        });
    }
    if event.guardrails.len() > MAX_GUARDRAIL_OUTCOMES {
        return Err(("guardrails", format!("more than {MAX_GUARDRAIL_OUTCOMES} guardrail outcomes")));
    }
    let mut guardrails = Vec::with_capacity(event.guardrails.len());
    for found in &event.guardrails {
        guardrails.push(GuardrailJson {
            guardrail: checked("guardrails.guardrail", &found.guardrail, MAX_TEXT)?,
            detector: checked("guardrails.detector", &found.detector, MAX_TEXT)?,
            action: checked("guardrails.action", &found.action, 64)?,
            side: checked("guardrails.side", &found.side, 64)?,
            count: found.count,
        });
    }
    if event.attempt_log.len() > MAX_ATTEMPT_RECORDS {
        return Err(("attempt_log", format!("more than {MAX_ATTEMPT_RECORDS} attempts")));
    }
    let mut attempt_log = Vec::with_capacity(event.attempt_log.len());
    for attempt in &event.attempt_log {
        if attempt.status > 999 {
            return Err(("attempt_log.status", format!("{} is not an HTTP status", attempt.status)));
        }
        attempt_log.push(AttemptJson {
            backend: checked("attempt_log.backend", &attempt.backend, MAX_TEXT)?,
            model: checked("attempt_log.model", &attempt.model, MAX_TEXT)?,
            outcome: checked("attempt_log.outcome", &attempt.outcome, 64)?,
            status: attempt.status,
        });
    }
    let outcome = text("outcome", &event.outcome, 64)?;
    if outcome.is_empty() {
        return Err(("outcome", "must not be empty (ok, upstream_error, interrupted, rejected, ...)".to_owned()));
    }
    if event.status > 999 {
        return Err(("status", format!("{} is not an HTTP status", event.status)));
    }
    Ok(SpendRecord {
        id,
        occurred_at,
        key_id: text("key_id", &event.key_id, MAX_TEXT)?,
        key_name: text("key_name", &event.key_name, MAX_TEXT)?,
        team: text("team", &event.team, MAX_TEXT)?,
        alias: text("alias", &event.alias, MAX_TEXT)?,
        policy: text("policy", &event.policy, MAX_TEXT)?,
        snapshot_version: count("snapshot_version", event.snapshot_version)?,
        backend: text("backend", &event.backend, MAX_TEXT)?,
        backend_region: text("backend_region", &event.backend_region, MAX_TEXT)?,
        model: text("model", &event.model, MAX_TEXT)?,
        upstream_model: text("upstream_model", &event.upstream_model, MAX_TEXT)?,
        endpoint: text("endpoint", &event.endpoint, MAX_TEXT)?,
        status: i32::try_from(event.status).unwrap_or(i32::MAX),
        outcome,
        streamed: event.streamed,
        interrupted: event.interrupted,
        prompt_tokens,
        cached_prompt_tokens,
        completion_tokens: count("completion_tokens", event.completion_tokens)?,
        cache_creation_tokens,
        usage_estimated: event.usage_estimated,
        cost_usd,
        latency_ms: count("latency_ms", event.latency_ms)?,
        ttft_ms: event.ttft_ms.map(|t| count("ttft_ms", t)).transpose()?,
        request_id: text("request_id", &event.request_id, MAX_TEXT)?,
        attempts: i32::try_from(event.attempts)
            .map_err(|_| ("attempts", format!("{} is out of range", event.attempts)))?,
        images: i32::try_from(event.images).map_err(|_| ("images", format!("{} is out of range", event.images)))?,
        trace_id: trace_id(&event.trace_id)?,
        metadata: json_text(&metadata),
        tool_calls: json_text(&tool_calls),
        guardrails: json_text(&guardrails),
        attempt_log: json_text(&attempt_log),
    })
}

/// A trace id: empty (none), or W3C's form, 32 lowercase hex digits not all zero.
fn trace_id(text: &str) -> Result<Option<String>, Invalid> {
    if text.is_empty() {
        return Ok(None);
    }
    let hex = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex || text.bytes().all(|b| b == b'0') {
        let shown: String = text.chars().take(64).collect();
        return Err(("trace_id", format!("{shown:?} is not a W3C trace id (32 lowercase hex digits, not all zero)")));
    }
    Ok(Some(text.to_owned()))
}

/// A cost: a plain non-negative decimal (`"0.000123"`), at most 18 decimal places, below 1e9. Checked as text
/// first, because `rust_decimal` rounds numbers with more than 28 digits instead of refusing them.
pub fn cost(text: &str) -> Result<Decimal, Invalid> {
    let field = "cost_usd";
    if text.is_empty() {
        return Err((field, "missing: every event carries its cost (\"0\" for a real zero)".to_owned()));
    }
    let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
    // Plain digits only: no exponent, sign, spaces or underscores that a lenient parser might accept.
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if integer.is_empty() || !digits(integer) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
        return Err((field, format!("{text:?} is not a non-negative decimal number")));
    }
    if fraction.len() > MAX_COST_SCALE {
        return Err((field, format!("{text:?} has more than {MAX_COST_SCALE} decimal places")));
    }
    if integer.trim_start_matches('0').len() > MAX_COST_INTEGER_DIGITS {
        return Err((field, format!("{text:?} is implausibly large (1e9 USD or more)")));
    }
    Decimal::from_str(text).map_err(|e| (field, format!("{text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event() -> v1::SpendEvent {
        v1::SpendEvent {
            id: Uuid::now_v7().to_string(),
            occurred_at_unix_ms: Utc::now().timestamp_millis(),
            cost_usd: "0.5".to_owned(),
            outcome: "ok".to_owned(),
            prompt_tokens: 10,
            ..Default::default()
        }
    }

    #[track_caller]
    fn check(change: impl FnOnce(&mut v1::SpendEvent), field: Option<&str>) {
        let mut e = event();
        change(&mut e);
        let batch = v1::SpendBatch { node_id: "n".into(), events: vec![e], batch_id: String::new() };
        let v = validate(&batch, Utc::now()).unwrap();
        assert_eq!(v.rejected.first().map(|r| r.field.as_str()), field, "{:?}", v.rejected);
        assert_eq!(v.records.len() + v.rejected.len(), 1);
    }

    #[test]
    fn events() {
        check(|_| {}, None);
        check(|e| e.id = "nope".into(), Some("id"));
        check(|e| e.id = Uuid::new_v4().to_string(), Some("id"));
        check(|e| e.cost_usd = String::new(), Some("cost_usd"));
        check(|e| e.cost_usd = "-1".into(), Some("cost_usd"));
        check(|e| e.cost_usd = "1e3".into(), Some("cost_usd"));
        check(|e| e.cost_usd = " 1".into(), Some("cost_usd"));
        check(|e| e.cost_usd = "1.2.3".into(), Some("cost_usd"));
        check(|e| e.cost_usd = "0.0000000000000000001".into(), Some("cost_usd"));
        check(|e| e.cost_usd = "1000000000".into(), Some("cost_usd"));
        check(|e| e.cost_usd = ".5".into(), Some("cost_usd"));
        check(|e| e.cost_usd = "5.".into(), Some("cost_usd"));
        check(|e| e.cost_usd = "999999999.999999999999999999".into(), None);
        check(|e| e.cost_usd = "000000000000999999999.5".into(), None);
        check(|e| e.cost_usd = "0".into(), None);
        check(|e| e.prompt_tokens = u64::MAX, Some("prompt_tokens"));
        check(|e| e.completion_tokens = MAX_TOKENS + 1, Some("completion_tokens"));
        check(|e| e.completion_tokens = MAX_TOKENS, None);
        check(|e| e.cached_prompt_tokens = 11, Some("cached_prompt_tokens"));
        check(|e| (e.cached_prompt_tokens, e.cache_creation_tokens) = (5, 5), None);
        check(|e| (e.cached_prompt_tokens, e.cache_creation_tokens) = (6, 5), Some("cached_prompt_tokens"));
        check(|e| e.occurred_at_unix_ms = 0, Some("occurred_at_unix_ms"));
        check(|e| e.occurred_at_unix_ms += 25 * 3600 * 1000, Some("occurred_at_unix_ms"));
        check(|e| e.team = "a\0b".into(), Some("team"));
        check(|e| e.key_name = "k".repeat(257), Some("key_name"));
        check(|e| _ = e.metadata.insert("k".into(), "v\0".into()), Some("metadata"));
        check(|e| e.outcome = String::new(), Some("outcome"));
        check(|e| e.status = 1000, Some("status"));
        check(|e| e.attempts = u32::MAX, Some("attempts"));
        check(|e| e.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".into(), None);
        check(|e| e.trace_id = "4BF92F3577B34DA6A3CE929D0E0E4736".into(), Some("trace_id"));
        check(|e| e.trace_id = "4bf92f3577b34da6a3ce929d0e0e473".into(), Some("trace_id"));
        check(|e| e.trace_id = "4bf92f3577b34da6a3ce929d0e0e47360".into(), Some("trace_id"));
        check(|e| e.trace_id = "0".repeat(32), Some("trace_id"));
        check(|e| e.trace_id = "4bf92f3577b34da6a3ce929d0e0e473g".into(), Some("trace_id"));
        let outcome = |guardrail: &str| v1::GuardrailOutcome {
            guardrail: guardrail.into(),
            detector: "email".into(),
            action: "redact".into(),
            side: "prompt".into(),
            count: 2,
        };
        check(|e| e.guardrails = vec![outcome("pii")], None);
        check(|e| e.guardrails = vec![outcome("pii"); MAX_GUARDRAIL_OUTCOMES + 1], Some("guardrails"));
        check(|e| e.guardrails = vec![outcome("p\0ii")], Some("guardrails.guardrail"));
    }

    #[test]
    fn batches() {
        let batch = |node: &str, n: usize| v1::SpendBatch {
            node_id: node.into(),
            events: (0..n).map(|_| event()).collect(),
            batch_id: String::new(),
        };
        assert_eq!(validate(&batch("", 1), Utc::now()).unwrap_err(), BatchError::NodeId);
        assert_eq!(validate(&batch("n", MAX_BATCH_EVENTS + 1), Utc::now()).unwrap_err(), BatchError::TooLarge(10_001));
        let mut mixed = batch("n", 3);
        mixed.events[1].cost_usd = "x".into();
        let v = validate(&mixed, Utc::now()).unwrap();
        assert_eq!((v.records.len(), v.rejected.len(), v.rejected[0].index), (2, 1, 1));
    }

    #[test]
    fn costs_parse_exactly_or_not_at_all() {
        // 27 significant digits: kept to the last one.
        let largest = "999999999.999999999999999999";
        assert_eq!(cost(largest).unwrap().to_string(), largest);
        assert_eq!(cost("0.000000000000000001").unwrap().to_string(), "0.000000000000000001");
        assert_eq!(cost("1.10").unwrap().to_string(), "1.10");
    }
}
