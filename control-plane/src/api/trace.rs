//! A span per admin write (docs/observability.md, "Traces"): every request that may change the configuration,
//! keys or principals, under the caller's W3C trace when it sent one. Reads are not traced. Built only when
//! [`gateway_telemetry::spans_on`].

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use gateway_telemetry::{RequestTrace, TARGET};
use tower_http::request_id::RequestId;
use tracing::Instrument;
use tracing::field::Empty;

/// The middleware (a route layer, so the matched route names the span).
pub async fn admin_write(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if !gateway_telemetry::spans_on() || matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map_or("-", MatchedPath::as_str).to_owned();
    let request_id =
        request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or_default();
    let span = tracing::info_span!(
        target: TARGET,
        "admin write",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        request_id,
        trace_id = Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
    );
    let trace = RequestTrace::new(span, request.headers());
    let span = trace.span().clone();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}
