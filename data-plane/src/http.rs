//! The data plane's HTTP surface: health, readiness, Prometheus metrics and the OpenAI-compatible API
//! ([`crate::proxy`]). `/healthz`, `/readyz` and `/metrics` need no key. Served by [`crate::server`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::control::state::Current;
use crate::proxy::{self, Proxy};

pub fn app(proxy: Arc<Proxy>) -> Router {
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(proxy.current.clone())
        .route("/metrics", get(metrics));
    health.merge(proxy::routes(proxy)).fallback(proxy::no_route)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics() -> Response {
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render()).into_response()
}

/// Ready once a snapshot and the tokenizer are loaded; says which snapshot.
async fn readyz(State(current): State<Arc<Current>>) -> Response {
    let loading = |reason: &str| {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading", "reason": reason}))).into_response()
    };
    if !policy_engine::tokens::is_loaded() {
        return loading("loading the tokenizer");
    }
    match current.load() {
        Some(snapshot) => Json(json!({
            "status": "ready",
            "snapshot_version": snapshot.version,
            "content_hash": snapshot.content_hash,
            "lineage": snapshot.lineage,
        }))
        .into_response(),
        None => loading("no snapshot yet: waiting for the control plane"),
    }
}
