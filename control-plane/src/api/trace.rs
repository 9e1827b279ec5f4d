//! A span per admin write (docs/observability.md, "Traces"): every request that may change the configuration,
//! keys or principals, under the caller's W3C trace when it sent one. Reads are not traced. Exported only when
//! traces are exported (and the write sampled); its log span only for JSON logs.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use gateway_telemetry::{KeyValue, LOG_SPAN_TARGET, RequestTrace, SpanKind};
use tower_http::request_id::RequestId;
use tracing::Instrument;
use tracing::field::Empty;

/// The middleware (a route layer, so the matched route names the span).
pub async fn admin_write(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let traced = gateway_telemetry::exporting() || gateway_telemetry::log_spans_on();
    if !traced || matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map_or("-", MatchedPath::as_str).to_owned();
    let request_id =
        request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or_default();
    let log_span = if gateway_telemetry::log_spans_on() {
        tracing::info_span!(target: LOG_SPAN_TARGET, "admin write", request_id, trace_id = Empty)
    } else {
        tracing::Span::none()
    };
    let trace = RequestTrace::start(format!("{method} {route}"), SpanKind::Server, log_span, request.headers());
    let span = trace.span().clone();
    span.set_with(|attributes| {
        attributes.push(KeyValue::new("request_id", request_id.to_owned()));
        attributes.push(KeyValue::new("http.request.method", method.to_string()));
        attributes.push(KeyValue::new("http.route", route));
        if let Some(id) = trace.trace_id() {
            attributes.push(KeyValue::new("trace_id", id.to_owned()));
        }
    });
    let response = next.run(request).instrument(trace.log_span().clone()).await;
    let status = response.status();
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_error();
    }
    span.end();
    response
}
