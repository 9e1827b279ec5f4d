//! The LLM gateway's data plane: receives versioned snapshots from the control plane, compiles them off the request
//! path, swaps them in atomically and serves on the last good one, also across restarts while the control plane
//! is away.
//!
//! Laid out by request stage, each folder importing only the ones listed below it (ARCHITECTURE.md draws it):
//! - `proxy/`: the OpenAI-compatible API: routes, the per-request pipeline, attempts and failover, the virtual key.
//! - `stream/`: the stages a streamed answer goes through (metering, pass-through or tool-governed).
//! - `tools/`: tool governance: the tool policy, schemas, validation of calls whole or streamed.
//! - `ratelimit/`: per-key and per-backend rate limits, this data plane's share of each.
//! - `spend/`: metering, reservations, spend events and their loss-free reporting, budgets.
//! - `health/`: circuit breakers, active health checks and the health board they publish.
//! - `providers/`: one module per backend kind behind one interface; sending attempts; egress rules.
//! - `openai/`: the wire format: request bodies, the error shape, server-sent events and `[DONE]`.
//! - `control/`: the connection to the control plane, the compiled snapshot served, the last good one on disk.
//!
//! Beside them: `subscription.rs` (the snapshot stream from the control plane), `http.rs` (health, readiness, metrics
//! and the proxy's routes), `server.rs` (connections: accept, serve, cut stalled and overdue ones, drain on
//! shutdown), `settings.rs` (flags and environment), `metrics.rs` (the Prometheus recorder).

mod apis;
mod control;
mod guardrails;
mod health;
mod http;
mod metrics;
mod openai;
mod providers;
mod proxy;
mod ratelimit;
mod server;
pub mod settings;
mod spend;
mod stream;
mod subscription;
mod tools;
mod trace;

// The surface other crates use (the binary, the end-to-end harness, the benchmarks); everything else is private to
// this crate. `run`/`serve` with `settings` start a data plane; `state`, `persist` and `snapshot` let a harness
// serve a snapshot it built and watch what is served; `Subscription` subscribes without serving (snapshot bench),
// and reports a `HealthBoard` a test fills (the health report's end-to-end test).
pub use crate::control::connection::{ClientTls, ControlPlaneConnection};
pub use crate::control::{persist, snapshot, state};
pub use crate::health::board::{BackendHealth, BreakerState, HealthBoard, HealthCheckResult};
pub use crate::ratelimit::limiter::RateLimiter;
pub use crate::subscription::Subscription;

/// The request-path stages the criterion benchmarks (`data-plane/benches`) measure one at a time.
pub mod stages {
    pub use crate::apis::InboundFormat;
    pub use crate::apis::messages::Messages;
    pub use crate::apis::responses::Responses;
    pub use crate::apis::stream::Translation;
    pub use crate::health::breaker::Outcome;
    pub use crate::health::tracker::Tracker;
    pub use crate::metrics::{
        RequestFigures, RequestSeriesCache, builder as metrics_builder, known_or_placeholder, record_request,
    };
    pub use crate::openai::request::Endpoint;
    pub use crate::providers::anthropic::StreamTranslator;
    pub use crate::providers::{Inbound, of as provider};
    pub use crate::ratelimit::limiter::{KeyLimits, RateLimiter, RequestRates};
    pub use crate::spend::budgets::{Admission, AdmissionRequest, BudgetLedger, Scope, contributions};
    pub use crate::spend::metering::{StreamMeter, cost, usage_from_body};
    pub use crate::stream::sse::{StreamLimit, StreamReport, governed, passthrough};
    pub use crate::tools::governance::ToolReport;
    pub use crate::tools::stream::ToolStream;
}

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::secret_ref::SecretEnvPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::state::Current;
use crate::health::checks::Checks;
use crate::health::tracker::Tracker;
use crate::providers::egress::Egress;
use crate::providers::upstream::Upstreams;
use crate::server::ServerSettings;
use crate::settings::ServeArgs;
use crate::spend::budgets::{BudgetLedger, OutagePolicy};
use crate::spend::reporter::{Reporter, ReporterSettings};

/// Load a snapshot file and swap it in.
fn load_file(path: &std::path::Path, current: &Current) -> anyhow::Result<()> {
    let snapshot = persist::read(path)?;
    let compiled = snapshot::compile(&snapshot).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(|e| format!("{} {}: {}", e.resource, e.field, e.message)).collect();
        anyhow::anyhow!("{} does not compile: {}", path.display(), text.join("; "))
    })?;
    tracing::info!(path = %path.display(), lineage = %compiled.lineage, version = compiled.version,
        "serving a snapshot from disk");
    current.swap(compiled);
    Ok(())
}

/// Bind and serve until `shutdown` is cancelled.
pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(args.listen_addr).await.with_context(|| format!("binding to {}", args.listen_addr))?;
    run(args, listener, Arc::new(Current::default()), shutdown).await
}

/// Serve on `listener` with `current` (shared so tests and benchmarks can watch swaps). On `shutdown`: the listener
/// closes, requests in flight get the drain time to finish and are then ended, every request's spend is recorded,
/// and spend not yet acknowledged is flushed (or left spooled) before this returns.
pub async fn run(
    args: ServeArgs,
    listener: TcpListener,
    current: Arc<Current>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let hosts = BaseUrlPolicy::from_list(&args.backend_allowlist)
        .map_err(|e| anyhow::anyhow!("GATEWAY_BACKEND_ALLOWLIST: {e}"))?;
    let secret_env = SecretEnvPolicy::from_list(&args.secret_env_prefix)
        .map_err(|e| anyhow::anyhow!("GATEWAY_SECRET_ENV_PREFIX: {e}"))?;
    // One TLS crypto provider for every upstream client (ring: no C toolchain beyond cc needed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    metrics::install();
    // CPU-bound for a second or so: on a blocking thread, while the rest starts; not ready until it is loaded.
    tokio::task::spawn_blocking(|| {
        let started = std::time::Instant::now();
        if policy_engine::tokens::load() {
            tracing::info!(ms = started.elapsed().as_millis() as u64, "tokenizer loaded");
        } else {
            tracing::error!("the tokenizer did not load: token estimates fall back to 4 bytes a token");
        }
    });
    let local = listener.local_addr()?;
    let node_id = args.node_id.clone().unwrap_or_else(|| default_node_id(local.port()));
    let spend = &args.spend;
    let outage = OutagePolicy {
        share: spend.budget_outage_share,
        stale_after: Duration::from_millis(spend.budget_stale_after_ms),
    };
    let budgets = Arc::new(BudgetLedger::new(outage));
    let health = Arc::new(HealthBoard::default());
    let rates = Arc::new(RateLimiter::default());
    // Background tasks stop with the listener; the reporter's flush comes after the last request.
    let background = CancellationToken::new();
    tokio::spawn(crate::health::gauges::run(health.clone(), current.clone(), background.clone()));
    let connection = if let Some(path) = &args.snapshot {
        load_file(path, &current)?;
        None
    } else {
        let persisted = args.state_dir.join(persist::FILE_NAME);
        if persisted.exists()
            && let Err(error) = load_file(&persisted, &current)
        {
            tracing::warn!(%error, "the persisted snapshot is unusable; waiting for the control plane");
        }
        let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let identity = match (&args.node_cert, &args.node_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => anyhow::bail!("GATEWAY_NODE_CERT and GATEWAY_NODE_KEY go together"),
        };
        let ca = args.control_plane_ca.as_deref().map(read).transpose()?;
        let connection = ControlPlaneConnection {
            url: args.control_plane.clone(),
            tls: ClientTls { ca, identity },
            node_token: args.node_token.clone(),
        };
        let subscription = Subscription {
            connection: connection.clone(),
            node_id: node_id.clone(),
            state_dir: args.state_dir.clone(),
            budgets: budgets.clone(),
            health: health.clone(),
            rates: rates.clone(),
        };
        tokio::spawn(subscription.run(current.clone(), background.clone()));
        Some(connection)
    };
    let settings = ReporterSettings {
        node_id,
        interval: Duration::from_millis(spend.spend_report_interval_ms.max(1)),
        max_batch_events: spend.spend_batch_max_events as usize,
        flush_timeout: Duration::from_millis(spend.spend_flush_timeout_ms),
        spool_dir: args.state_dir.join("spend-spool"),
        spool_max_bytes: spend.spend_spool_max_bytes,
    };
    let (loaded, none) = (current.load(), Default::default());
    let known_budgets = loaded.as_ref().map_or(&none, |s| &s.config.budgets);
    let reporter = Reporter::open(settings, budgets.clone(), connection, known_budgets);
    let reporting = reporter.spawn(background.clone());
    let upstreams = Arc::new(Upstreams::new(Egress::new(hosts, secret_env)));
    let tracker = Arc::new(Tracker::default());
    let checks = Checks {
        current: current.clone(),
        tracker: tracker.clone(),
        board: health.clone(),
        upstreams: upstreams.clone(),
    };
    tokio::spawn(checks.supervise(background.clone()));
    let proxy = Arc::new(proxy::Proxy {
        current,
        upstreams,
        max_body_bytes: args.max_body_bytes,
        max_upstream_answer_bytes: args.max_upstream_answer_bytes,
        max_retry_after: Duration::from_millis(args.max_retry_after_ms),
        reporter: reporter.clone(),
        budgets,
        rates,
        reserve_output_tokens: spend.budget_reserve_output_tokens,
        health,
        tracker,
    });
    tracing::info!(addr = %local, "data plane listening");
    let server = ServerSettings {
        drain: Duration::from_millis(args.shutdown_drain_ms),
        write_idle: Duration::from_millis(args.write_idle_timeout_ms),
    };
    server::serve(listener, http::app(proxy), server, shutdown).await;
    tracing::info!("no request in flight; flushing spend");
    background.cancel();
    for task in reporting {
        let _ = task.await;
    }
    reporter.close().await;
    Ok(())
}

fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "data-plane".to_owned() } else { host };
    format!("{host}:{port}")
}
