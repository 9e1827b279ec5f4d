//! Backend health as data planes report it on their subscription (`HealthReport`): bounded here ([`validate`])
//! before the store keeps it; no SQL.
//!
//! A report is never refused as a whole and never ends the session: what is out of bounds is dropped or cut, and
//! counted in the [`Validated`] answer so the session can log it once (`docs/admin-api.md`, "Backend health").

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use gateway_proto::v1;

/// Most entries kept from one report (a data plane tracks one per backend, or per backend and model); the rest
/// are dropped.
pub(crate) const MAX_ENTRIES: usize = 1_000;
/// Longest backend or model name, in bytes: a longer one names nothing configured, the entry is dropped.
pub(crate) const MAX_NAME_BYTES: usize = 256;
/// Longest free text (`reason`, a health check's `error`), in characters: a longer one is cut.
pub(crate) const MAX_TEXT_CHARS: usize = 512;
/// Longest breaker state: the states known today are `closed`, `open` and `half_open`; a newer data plane's
/// state is kept as it says it, if it looks like one (lower-case letters and `_`).
const MAX_STATE_BYTES: usize = 32;
/// The latest instant a TIMESTAMPTZ column takes comfortably: 9999-12-31T23:59:59.999Z.
const LATEST_MS: i64 = 253_402_300_799_999;

/// One validated entry, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRecord {
    pub backend: String,
    /// Empty: the backend as a whole.
    pub model: String,
    pub state: String,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
    pub last_check: Option<CheckRecord>,
    /// Finite and non-negative, or absent.
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckRecord {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub error: Option<String>,
}

/// What [`validate`] kept, and how much it left out.
#[derive(Debug, Default, PartialEq)]
pub struct Validated {
    pub records: Vec<HealthRecord>,
    /// Entries dropped: beyond [`MAX_ENTRIES`], a bad name or state, a `since` out of range, a repeated
    /// (backend, model).
    pub dropped: usize,
    /// Texts cut to [`MAX_TEXT_CHARS`], or check results left out for a time out of range.
    pub trimmed: usize,
}

/// Bound a report before it is stored: at most [`MAX_ENTRIES`] entries, names and states that a column takes and
/// that can name something, texts cut, NUL characters removed (Postgres text refuses them), times in range,
/// latency finite. The first entry for a (backend, model) wins.
pub fn validate(report: &v1::HealthReport) -> Validated {
    let mut validated = Validated { dropped: report.entries.len().saturating_sub(MAX_ENTRIES), ..Validated::default() };
    let mut seen = BTreeSet::new();
    for entry in report.entries.iter().take(MAX_ENTRIES) {
        match record(entry, &mut validated.trimmed) {
            Some(record) if seen.insert((record.backend.clone(), record.model.clone())) => {
                validated.records.push(record);
            }
            Some(_) | None => validated.dropped += 1,
        }
    }
    validated
}

fn record(entry: &v1::BackendHealth, trimmed: &mut usize) -> Option<HealthRecord> {
    let name_ok = |name: &str| name.len() <= MAX_NAME_BYTES && !name.contains('\0');
    if entry.backend.is_empty() || !name_ok(&entry.backend) || !name_ok(&entry.model) {
        return None;
    }
    let state_ok = !entry.state.is_empty()
        && entry.state.len() <= MAX_STATE_BYTES
        && entry.state.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if !state_ok {
        return None;
    }
    let since = time(entry.since_unix_ms)?;
    let last_check = entry.last_check.as_ref().and_then(|check| {
        let Some(at) = time(check.at_unix_ms) else {
            *trimmed += 1;
            return None;
        };
        Some(CheckRecord { at, ok: check.ok, error: text(&check.error, trimmed) })
    });
    Some(HealthRecord {
        backend: entry.backend.clone(),
        model: entry.model.clone(),
        state: entry.state.clone(),
        since,
        reason: text(&entry.reason, trimmed),
        last_check,
        latency_ms: entry.latency_ms.filter(|ms| ms.is_finite() && *ms >= 0.0),
    })
}

fn time(unix_ms: i64) -> Option<DateTime<Utc>> {
    (0..=LATEST_MS).contains(&unix_ms).then(|| DateTime::from_timestamp_millis(unix_ms)).flatten()
}

/// `None` for an empty text; NUL characters removed; cut to [`MAX_TEXT_CHARS`] characters.
fn text(value: &str, trimmed: &mut usize) -> Option<String> {
    let clean: String = value.chars().filter(|c| *c != '\0').collect();
    if clean.is_empty() {
        return None;
    }
    if clean.len() != value.len() || clean.chars().count() > MAX_TEXT_CHARS {
        *trimmed += 1;
    }
    Some(clean.chars().take(MAX_TEXT_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(backend: &str, model: &str, state: &str) -> v1::BackendHealth {
        v1::BackendHealth {
            backend: backend.to_owned(),
            model: model.to_owned(),
            state: state.to_owned(),
            since_unix_ms: 1_764_000_000_000,
            reason: String::new(),
            last_check: None,
            latency_ms: Some(12.5),
        }
    }

    fn check(entries: Vec<v1::BackendHealth>, kept: &[(&str, &str)], dropped: usize, trimmed: usize) {
        let validated = validate(&v1::HealthReport { entries, as_of_unix_ms: 0 });
        let names: Vec<(&str, &str)> =
            validated.records.iter().map(|r| (r.backend.as_str(), r.model.as_str())).collect();
        assert_eq!(names, kept);
        assert_eq!((validated.dropped, validated.trimmed), (dropped, trimmed));
    }

    #[test]
    fn names_states_and_repeats() {
        check(vec![entry("a", "", "closed"), entry("a", "m", "half_open")], &[("a", ""), ("a", "m")], 0, 0);
        check(vec![entry("", "", "closed")], &[], 1, 0);
        check(vec![entry(&"x".repeat(257), "", "open")], &[], 1, 0);
        check(vec![entry("a", &"x".repeat(257), "open")], &[], 1, 0);
        check(vec![entry("a\0", "", "open")], &[], 1, 0);
        check(vec![entry("a", "", "")], &[], 1, 0);
        check(vec![entry("a", "", "Open")], &[], 1, 0);
        check(vec![entry("a", "", "draining")], &[("a", "")], 0, 0);
        check(vec![entry("a", "", "open"), entry("a", "", "closed")], &[("a", "")], 1, 0);
    }

    #[test]
    fn at_most_max_entries() {
        let entries = (0..MAX_ENTRIES + 5).map(|i| entry(&format!("b{i:05}"), "", "closed")).collect();
        let validated = validate(&v1::HealthReport { entries, as_of_unix_ms: 0 });
        assert_eq!((validated.records.len(), validated.dropped), (MAX_ENTRIES, 5));
    }

    #[test]
    fn texts_times_and_latency() {
        let mut long = entry("a", "", "open");
        long.reason = "é".repeat(MAX_TEXT_CHARS + 1);
        long.latency_ms = Some(f64::NAN);
        long.last_check = Some(v1::HealthCheckResult { at_unix_ms: -1, ok: false, error: "x".into() });
        let validated = validate(&v1::HealthReport { entries: vec![long], as_of_unix_ms: 0 });
        let record = &validated.records[0];
        assert_eq!(record.reason.as_deref().map(|r| r.chars().count()), Some(MAX_TEXT_CHARS));
        assert_eq!((record.latency_ms, &record.last_check, validated.trimmed), (None, &None, 2));

        let mut nul = entry("a", "", "open");
        nul.reason = "a\0b".into();
        nul.latency_ms = Some(-1.0);
        nul.last_check = Some(v1::HealthCheckResult { at_unix_ms: 1_764_000_000_000, ok: false, error: "\0".into() });
        let validated = validate(&v1::HealthReport { entries: vec![nul], as_of_unix_ms: 0 });
        let record = &validated.records[0];
        assert_eq!((record.reason.as_deref(), record.latency_ms), (Some("ab"), None));
        assert_eq!(record.last_check.as_ref().map(|c| (c.ok, c.error.clone())), Some((false, None)));

        let mut future = entry("a", "", "open");
        future.since_unix_ms = i64::MAX;
        check(vec![future], &[], 1, 0);
    }
}
