//! Prometheus metrics: one recorder per process, rendered at `GET /metrics` on the data plane's listener (no
//! second port). Among them: `gateway_tool_calls_total{tool,model,backend,outcome}`, and the health board's
//! `gateway_backend_breaker_state{backend,model,state}` and `gateway_backend_latency_ms{backend,model}`
//! (`health/gauges.rs`, `docs/health-report.md`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if the embedding process installed its own recorder first; metrics then go there.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// The text exposition of every metric.
pub fn render() -> String {
    install().render()
}
