//! Prometheus metrics: one recorder per process, rendered at `GET /metrics` on the data plane's listener (no
//! second port). Every series is described here (so `/metrics` carries `# HELP` and `# TYPE`) and documented in
//! `docs/observability.md`; the request series are recorded once per request by [`record_request`], from the
//! spend event (`spend/record.rs`). Among the others: `gateway_tool_calls_total{tool,model,backend,outcome}`, and
//! the health board's `gateway_backend_breaker_state{backend,model,state}` and `gateway_backend_latency_ms`
//! (`health/gauges.rs`, `docs/health-report.md`).
//!
//! Labels are bounded: names only as the snapshot spells them ([`known_or_placeholder`]), fixed codes and classes,
//! never a key, a secret or the caller's metadata.

use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::{Equivalent, HashMap};
use metrics::{Counter, Histogram, Label, SharedString, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

pub const REQUESTS: &str = "gateway_requests_total";
pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
pub const TIME_TO_FIRST_TOKEN: &str = "gateway_time_to_first_token_seconds";
pub const TOKENS: &str = "gateway_tokens_total";
pub const USAGE_ESTIMATED: &str = "gateway_usage_estimated_total";
pub const COST: &str = "gateway_cost_nano_usd_total";
pub const UPSTREAM_ERRORS: &str = "gateway_upstream_errors_total";
pub const FAILOVERS: &str = "gateway_failovers_total";
pub const REFUSALS: &str = "gateway_refusals_total";
pub const ERRORS: &str = "gateway_request_errors_total";
pub const SNAPSHOT_VERSION: &str = "gateway_snapshot_version";
pub const GUARDRAIL_MATCHES: &str = "gateway_guardrail_matches_total";

/// The label value for a name the snapshot does not know (the caller's spelling never becomes a label).
pub const UNKNOWN: &str = "_other";

/// Whole-request latency of LLM calls: tens of milliseconds (embeddings, cached answers) to minutes (long
/// generations, reasoning models).
const DURATION_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
/// Time to the first streamed bytes: mostly under a few seconds, queueing upstreams and reasoning models beyond.
const FIRST_TOKEN_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // Fails only if the embedding process installed its own recorder first; metrics then go there.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// The exporter with the request histograms' buckets (real histograms, not summaries).
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TIME_TO_FIRST_TOKEN.to_owned()), FIRST_TOKEN_BUCKETS))
        .unwrap_or_else(|error| {
            // Only an empty bucket list fails, and ours are constants: never in practice.
            tracing::error!(%error, "histogram buckets refused; latencies render as summaries");
            PrometheusBuilder::new()
        })
}

/// `# HELP` text for the request series (the recorder renders `# TYPE` from how each is recorded).
pub fn describe() {
    describe_counter!(REQUESTS, "Requests that reached an upstream, by alias, backend, model, status and outcome.");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Whole-request latency, arrival to the last byte.");
    describe_histogram!(TIME_TO_FIRST_TOKEN, Unit::Seconds, "Streamed requests: arrival to the first bytes sent.");
    describe_counter!(TOKENS, "Tokens by kind: input, output, cached_input, cache_creation.");
    describe_counter!(USAGE_ESTIMATED, "Requests whose usage the gateway estimated (the upstream reported none).");
    describe_counter!(COST, "Cost in billionths of a US dollar (divide by 1e9 for USD).");
    describe_counter!(UPSTREAM_ERRORS, "Failed upstream attempts by backend and error class.");
    describe_counter!(FAILOVERS, "Attempts sent to a candidate after an earlier one of the same request failed.");
    describe_counter!(REFUSALS, "Requests the gateway refused before or instead of serving, by reason and code.");
    describe_counter!(ERRORS, "Requests answered with the gateway's own error, by its code.");
    describe_counter!(GUARDRAIL_MATCHES, "Guardrail matches by guardrail, detector, action and side (never content).");
    describe_gauge!(SNAPSHOT_VERSION, "The configuration snapshot version served.");
    describe_gauge!("gateway_spend_spool_bytes", Unit::Bytes, "Bytes of spend batches spooled, not acknowledged.");
    describe_gauge!("gateway_spend_queued_batches", "Spend batches waiting for the control plane's acknowledgement.");
    describe_counter!("gateway_spend_events_total", "Spend events recorded, by outcome.");
}

/// `name` as a label if the snapshot knows it, else [`UNKNOWN`]: label values stay within the configuration.
pub fn known_or_placeholder(name: &str, known: bool) -> &str {
    if known && !name.is_empty() { name } else { UNKNOWN }
}

/// One request's figures, as its spend event has them (names already bounded).
pub struct RequestFigures<'a> {
    pub alias: &'a str,
    pub backend: &'a str,
    pub model: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub latency_seconds: f64,
    pub first_token_seconds: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_tokens: u64,
    pub estimated: bool,
    /// `None` when the cost could not be computed (the ledger quarantines such an event).
    pub cost_nano_usd: Option<u64>,
}

/// Record a finished request's series, through the process's handles ([`RequestSeriesCache::global`]).
pub fn record_request(figures: &RequestFigures<'_>) {
    RequestSeriesCache::global().record(figures);
}

/// The request series' handles per alias, backend and model, registered on first use: a request then records
/// through one map look-up and its handles instead of building label lists and looking up each series in the
/// recorder's registry (six look-ups a request; docs/benchmarks.md, "CPU per request"). Bounded like the labels:
/// names come from the snapshot or are [`UNKNOWN`], and the map starts over past [`MAX_CACHED_SERIES`] (snapshots
/// that renamed many things), the recorder keeping the series themselves.
pub struct RequestSeriesCache {
    series: RwLock<HashMap<SeriesKey, Arc<RequestSeries>>>,
}

/// More alias × backend × model combinations than a configuration routes (a map of them is ~1 KiB each).
const MAX_CACHED_SERIES: usize = 4096;

#[derive(Hash, PartialEq, Eq)]
struct SeriesKey(Box<str>, Box<str>, Box<str>);

/// A look-up's borrowed names; hashes as [`SeriesKey`] does (the fields in order).
#[derive(Hash)]
struct SeriesNames<'a>(&'a str, &'a str, &'a str);

impl Equivalent<SeriesKey> for SeriesNames<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        *self.0 == *key.0 && *self.1 == *key.1 && *self.2 == *key.2
    }
}

/// One alias, backend and model's handles; those that only some requests record are registered when first
/// recorded, so `/metrics` shows no series a request did not cause.
struct RequestSeries {
    labels: [Label; 3],
    duration: Histogram,
    first_token: OnceLock<Histogram>,
    /// `gateway_requests_total` by status and outcome: a handful each.
    requests: RwLock<Vec<(u16, Box<str>, Counter)>>,
    tokens: [OnceLock<Counter>; 4],
    estimated: OnceLock<Counter>,
    cost: OnceLock<Counter>,
}

const TOKEN_KINDS: [&str; 4] = ["input", "output", "cached_input", "cache_creation"];

impl RequestSeriesCache {
    pub fn new() -> RequestSeriesCache {
        RequestSeriesCache { series: RwLock::new(HashMap::new()) }
    }

    /// The process's cache, for the global recorder.
    pub fn global() -> &'static RequestSeriesCache {
        static GLOBAL: OnceLock<RequestSeriesCache> = OnceLock::new();
        GLOBAL.get_or_init(RequestSeriesCache::new)
    }

    /// Record a finished request's series (through the recorder current when a series is first used).
    pub fn record(&self, figures: &RequestFigures<'_>) {
        let series = self.series(figures.alias, figures.backend, figures.model);
        series.requests(figures.status, figures.outcome).increment(1);
        series.duration.record(figures.latency_seconds);
        if let Some(seconds) = figures.first_token_seconds {
            series
                .first_token
                .get_or_init(|| metrics::histogram!(TIME_TO_FIRST_TOKEN, series.labels.to_vec()))
                .record(seconds);
        }
        let tokens =
            [figures.input_tokens, figures.output_tokens, figures.cached_input_tokens, figures.cache_creation_tokens];
        for ((count, handle), kind) in tokens.into_iter().zip(&series.tokens).zip(TOKEN_KINDS) {
            if count > 0 {
                handle
                    .get_or_init(|| metrics::counter!(TOKENS, series.with("kind", SharedString::const_str(kind))))
                    .increment(count);
            }
        }
        if figures.estimated {
            series.estimated.get_or_init(|| metrics::counter!(USAGE_ESTIMATED, series.labels.to_vec())).increment(1);
        }
        if let Some(cost) = figures.cost_nano_usd {
            series.cost.get_or_init(|| metrics::counter!(COST, series.labels.to_vec())).increment(cost);
        }
    }

    fn series(&self, alias: &str, backend: &str, model: &str) -> Arc<RequestSeries> {
        let names = SeriesNames(alias, backend, model);
        if let Some(series) = read(&self.series).get(&names) {
            return Arc::clone(series);
        }
        let mut map = write(&self.series);
        if map.len() >= MAX_CACHED_SERIES {
            map.clear();
        }
        let key = SeriesKey(alias.into(), backend.into(), model.into());
        Arc::clone(map.entry(key).or_insert_with(|| Arc::new(RequestSeries::new(alias, backend, model))))
    }
}

impl Default for RequestSeriesCache {
    fn default() -> Self {
        RequestSeriesCache::new()
    }
}

impl RequestSeries {
    fn new(alias: &str, backend: &str, model: &str) -> RequestSeries {
        let labels = [
            Label::new("alias", alias.to_owned()),
            Label::new("backend", backend.to_owned()),
            Label::new("model", model.to_owned()),
        ];
        RequestSeries {
            duration: metrics::histogram!(REQUEST_DURATION, labels.to_vec()),
            labels,
            first_token: OnceLock::new(),
            requests: RwLock::new(Vec::new()),
            tokens: Default::default(),
            estimated: OnceLock::new(),
            cost: OnceLock::new(),
        }
    }

    /// The three names' labels and one more.
    fn with(&self, key: &'static str, value: SharedString) -> Vec<Label> {
        let mut labels = Vec::with_capacity(self.labels.len() + 2);
        labels.extend_from_slice(&self.labels);
        labels.push(Label::new(key, value));
        labels
    }

    fn requests(&self, status: u16, outcome: &str) -> Counter {
        let found = |list: &[(u16, Box<str>, Counter)]| {
            list.iter().find(|(s, o, _)| *s == status && **o == *outcome).map(|(_, _, counter)| counter.clone())
        };
        if let Some(counter) = found(&read(&self.requests)) {
            return counter;
        }
        let mut list = write(&self.requests);
        if let Some(counter) = found(&list) {
            return counter;
        }
        let mut labels = self.with("status", SharedString::from_owned(status_label(status)));
        labels.push(Label::new("outcome", outcome.to_owned()));
        let counter = metrics::counter!(REQUESTS, labels);
        list.push((status, outcome.into(), counter.clone()));
        counter
    }
}

/// A poisoned lock only means a panic elsewhere mid-insert; the map is still whole.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// HTTP statuses as labels: the common ones as themselves, anything outside 100..=599 as `other`.
fn status_label(status: u16) -> String {
    if (100..600).contains(&status) { status.to_string() } else { "other".to_owned() }
}

/// The exporter's text of every metric.
pub fn render() -> String {
    install().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_snapshot_become_the_placeholder() {
        assert_eq!(known_or_placeholder("chat", true), "chat");
        assert_eq!(known_or_placeholder("sk-live-secret-looking-name", false), UNKNOWN);
        assert_eq!(known_or_placeholder("", true), UNKNOWN, "no empty label value");
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(0), "other");
        assert_eq!(status_label(1000), "other");
    }

    #[test]
    fn request_series_render_as_histograms_and_counters() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // A cache of its own: its handles come from this test's recorder.
        let cache = RequestSeriesCache::new();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let answered = RequestFigures {
                alias: "chat",
                backend: "primary",
                model: "gpt",
                status: 200,
                outcome: "ok",
                latency_seconds: 0.3,
                first_token_seconds: Some(0.04),
                input_tokens: 12,
                output_tokens: 5,
                cached_input_tokens: 0,
                cache_creation_tokens: 0,
                estimated: false,
                cost_nano_usd: Some(1500),
            };
            cache.record(&answered);
            // The same names again, through the cached handles: another status and outcome, nothing else to count.
            cache.record(&RequestFigures {
                status: 502,
                outcome: "upstream_error",
                latency_seconds: 1.0,
                first_token_seconds: None,
                input_tokens: 0,
                output_tokens: 0,
                cost_nano_usd: None,
                ..answered
            });
        });
        let text = handle.render();
        for line in [
            "# HELP gateway_requests_total Requests that reached an upstream, by alias, backend, model, status and outcome.",
            "# TYPE gateway_request_duration_seconds histogram",
            "# TYPE gateway_time_to_first_token_seconds histogram",
            "# TYPE gateway_requests_total counter",
            r#"gateway_request_duration_seconds_bucket{alias="chat",backend="primary",model="gpt",le="0.5"} 1"#,
            r#"gateway_time_to_first_token_seconds_bucket{alias="chat",backend="primary",model="gpt",le="0.05"} 1"#,
            r#"gateway_requests_total{alias="chat",backend="primary",model="gpt",status="200",outcome="ok"} 1"#,
            r#"gateway_requests_total{alias="chat",backend="primary",model="gpt",status="502",outcome="upstream_error"} 1"#,
            r#"gateway_request_duration_seconds_count{alias="chat",backend="primary",model="gpt"} 2"#,
            r#"gateway_time_to_first_token_seconds_count{alias="chat",backend="primary",model="gpt"} 1"#,
            r#"gateway_tokens_total{alias="chat",backend="primary",model="gpt",kind="input"} 12"#,
            r#"gateway_tokens_total{alias="chat",backend="primary",model="gpt",kind="output"} 5"#,
            r#"gateway_cost_nano_usd_total{alias="chat",backend="primary",model="gpt"} 1500"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains(r#"kind="cached_input""#), "kinds without tokens leave no series");
        assert!(!text.contains("gateway_usage_estimated_total{"));
    }
}
