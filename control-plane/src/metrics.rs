//! Prometheus metrics of the control plane, rendered at `GET /metrics` on the admin listener (open, like
//! `/healthz`). The recorder's series are recorded where they happen (admin requests by [`track_admin`], snapshot
//! builds by the publisher, spend ingestion by the gRPC service); the fleet and database pool series are read when
//! scraped ([`render`]). Every series is documented in `docs/observability.md`.
//!
//! Labels are bounded: the route template (never the raw path), the method, the status; versions as the fleet
//! table holds them.

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::Store;

pub const ADMIN_REQUESTS: &str = "gateway_admin_requests_total";
pub const ADMIN_DURATION: &str = "gateway_admin_request_duration_seconds";
pub const SNAPSHOT_BUILD: &str = "gateway_snapshot_build_seconds";
pub const SNAPSHOT_SIZE: &str = "gateway_snapshot_size_bytes";
pub const SNAPSHOT_VERSION: &str = "gateway_snapshot_version";
pub const SPEND_EVENTS: &str = "gateway_spend_events_ingested_total";
pub const SPEND_BATCHES: &str = "gateway_spend_batches_ingested_total";
pub const SPEND_LAG: &str = "gateway_spend_ingest_lag_seconds";
pub const POOL_SIZE: &str = "gateway_db_pool_connections";
pub const POOL_IDLE: &str = "gateway_db_pool_idle_connections";
pub const DATA_PLANES: &str = "gateway_data_planes_connected";

/// Admin calls: a few milliseconds (reads) to a second or more (writes that validate policies, spend reports).
const ADMIN_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Snapshot builds: milliseconds for small configurations, seconds for thousands of keys and policies.
const BUILD_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Spend lag: a data plane reports every second or so; an outage makes it minutes or hours.
const LAG_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        // Fails only if the embedding process (a test) installed its own recorder first; metrics then go there.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only the fleet and pool");
        }
        describe();
        handle
    })
}

fn builder() -> PrometheusBuilder {
    let buckets = |b: PrometheusBuilder, name: &str, buckets: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
    };
    buckets(PrometheusBuilder::new(), ADMIN_DURATION, ADMIN_BUCKETS)
        .and_then(|b| buckets(b, SNAPSHOT_BUILD, BUILD_BUCKETS))
        .and_then(|b| buckets(b, SPEND_LAG, LAG_BUCKETS))
        .unwrap_or_else(|error| {
            // Only an empty bucket list fails, and ours are constants: never in practice.
            tracing::error!(%error, "histogram buckets refused; durations render as summaries");
            PrometheusBuilder::new()
        })
}

fn describe() {
    describe_counter!(ADMIN_REQUESTS, "Admin API requests by method, route template and status.");
    describe_histogram!(ADMIN_DURATION, Unit::Seconds, "Admin API latency by method, route template and status.");
    describe_histogram!(SNAPSHOT_BUILD, Unit::Seconds, "Time to build a configuration snapshot.");
    describe_gauge!(SNAPSHOT_SIZE, Unit::Bytes, "Encoded size of the latest snapshot built.");
    describe_gauge!(SNAPSHOT_VERSION, "Version of the latest snapshot built.");
    describe_counter!(SPEND_EVENTS, "Spend events committed to the ledger (duplicates and rejected ones excluded).");
    describe_counter!(SPEND_BATCHES, "Spend batches reported by data planes, by result.");
    describe_histogram!(SPEND_LAG, Unit::Seconds, "Ingested spend events: commit time minus occurred_at.");
    describe_gauge!(POOL_SIZE, "Open database connections of this replica's pool (in use and idle).");
    describe_gauge!(POOL_IDLE, "Idle database connections of this replica's pool.");
}

/// The label for a request's route: its template (`/admin/v1/backends/{name}`), or `unmatched`.
fn route_label(matched: Option<&MatchedPath>) -> String {
    matched.map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned())
}

/// Middleware: count and time every request by method, route template and status.
pub async fn track_admin(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = route_label(request.extensions().get::<MatchedPath>());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(ADMIN_REQUESTS, &labels).increment(1);
    metrics::histogram!(ADMIN_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// A built snapshot: how long it took, its size and version.
pub fn snapshot_built(seconds: f64, bytes: usize, version: i64) {
    metrics::histogram!(SNAPSHOT_BUILD).record(seconds);
    metrics::gauge!(SNAPSHOT_SIZE).set(bytes as f64);
    metrics::gauge!(SNAPSHOT_VERSION).set(version as f64);
}

/// A spend batch: `result` (`committed`, `invalid`, `failed`), events newly committed, and each committed event's
/// lag.
pub fn spend_batch(result: &'static str, accepted: u64, lags: impl Iterator<Item = f64>) {
    metrics::counter!(SPEND_BATCHES, "result" => result).increment(1);
    if accepted > 0 {
        metrics::counter!(SPEND_EVENTS).increment(accepted);
    }
    let lag = metrics::histogram!(SPEND_LAG);
    for seconds in lags {
        lag.record(seconds.max(0.0));
    }
}

/// Every series: the recorder's, then the database pool and the connected data planes, read now.
pub async fn render(store: &Store) -> String {
    let pool = store.pool();
    metrics::gauge!(POOL_SIZE).set(f64::from(pool.size()));
    metrics::gauge!(POOL_IDLE).set(pool.num_idle() as f64);
    let mut text = install().render();
    match store.connected_by_version().await {
        Ok(rows) => text.push_str(&data_planes_text(&rows)),
        Err(error) => tracing::warn!(error = %error.detailed(), "/metrics: the fleet could not be read"),
    }
    text
}

/// `gateway_data_planes_connected{software_version,config_version}`: nodes connected to any replica (the fleet
/// table), so every replica reports the same figure. Rendered here, not recorded: a version nobody holds any more
/// disappears instead of staying at 0 for the life of the process.
fn data_planes_text(rows: &[(String, Option<i64>, i64)]) -> String {
    let mut text = format!(
        "# HELP {DATA_PLANES} Data planes connected to any replica, by software and configuration version.\n\
         # TYPE {DATA_PLANES} gauge\n"
    );
    for (software, config, count) in rows {
        let config = config.map_or_else(|| "none".to_owned(), |v| v.to_string());
        let _ = writeln!(
            text,
            "{DATA_PLANES}{{software_version=\"{}\",config_version=\"{config}\"}} {count}",
            escape(software)
        );
    }
    text
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_planes_render_one_line_per_version_escaped() {
        let rows = vec![("0.1.0".to_owned(), Some(7), 2), ("we\"ird\n".to_owned(), None, 1)];
        let text = data_planes_text(&rows);
        assert!(text.contains("# TYPE gateway_data_planes_connected gauge\n"));
        assert!(text.contains("gateway_data_planes_connected{software_version=\"0.1.0\",config_version=\"7\"} 2\n"));
        assert!(
            text.contains(
                "gateway_data_planes_connected{software_version=\"we\\\"ird\\n\",config_version=\"none\"} 1\n"
            )
        );
        assert_eq!(route_label(None), "unmatched");
    }
}
