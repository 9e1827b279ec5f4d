//! The request's spans (docs/observability.md, "Traces"): one per request with the GenAI semantic conventions and
//! the gateway's own attributes, one child per upstream attempt. Below every stage: the proxy opens them, the spend
//! record closes the request's with what it metered (so a stream's span ends when the stream does).
//!
//! Exported spans exist only when traces are exported, and record only when sampled ([`TraceSpan`]): every function
//! here computes its attributes only then. The span a request's log lines carry (its id and trace id) exists only
//! for JSON logs. Prompt and completion content never goes into a span.

use axum::http::HeaderMap;
use gateway_proto::v1;
use gateway_telemetry::{KeyValue, LOG_SPAN_TARGET, RequestTrace, SpanKind, TraceSpan};
use policy_engine::config::BackendKind;
use tracing::Span;
use tracing::field::Empty;

/// The trace of one request to `operation` (`chat`, `text_completion`, `embeddings`) with the caller's `headers`.
pub fn request_trace(operation: &'static str, request_id: &str, headers: &HeaderMap) -> RequestTrace {
    let log_span = if gateway_telemetry::log_spans_on() {
        tracing::info_span!(target: LOG_SPAN_TARGET, "request", request_id, trace_id = Empty)
    } else {
        Span::none()
    };
    let trace = RequestTrace::start(operation, SpanKind::Server, log_span, headers);
    trace.span().set_with(|attributes| {
        attributes.push(KeyValue::new("request_id", request_id.to_owned()));
        attributes.push(KeyValue::new("gen_ai.operation.name", operation));
        if let Some(id) = trace.trace_id() {
            attributes.push(KeyValue::new("trace_id", id.to_owned()));
        }
    });
    trace
}

/// The request's alias is known: the span is named `{operation} {alias}` as the conventions ask.
pub fn record_alias(span: &TraceSpan, operation: &str, alias: &str) {
    span.rename(|| format!("{operation} {alias}"));
    span.set_with(|attributes| {
        attributes.push(KeyValue::new("gen_ai.request.model", alias.to_owned()));
        attributes.push(KeyValue::new("gateway.alias", alias.to_owned()));
    });
}

/// The request was answered with `status` (`error` names the failure's code when it failed).
pub fn record_status(span: &TraceSpan, status: u16, error: Option<&str>) {
    span.set_with(|attributes| {
        attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error.to_owned()));
        }
    });
    if error.is_some() {
        span.set_error();
    }
}

/// The request's spend event, made when the request is over: what served it and what it cost.
pub fn record_event(span: &TraceSpan, event: &v1::SpendEvent, kind: Option<BackendKind>, finish_reasons: &[String]) {
    span.set_with(|attributes| {
        if !finish_reasons.is_empty() {
            attributes
                .push(KeyValue::new("gen_ai.response.finish_reasons", gateway_telemetry::strings(finish_reasons)));
        }
        if let Some(kind) = kind {
            attributes.push(KeyValue::new("gen_ai.system", system(kind)));
        }
        attributes.push(KeyValue::new("gen_ai.response.model", event.upstream_model.clone()));
        attributes.push(KeyValue::new("gen_ai.usage.input_tokens", to_i64(event.prompt_tokens)));
        attributes.push(KeyValue::new("gen_ai.usage.output_tokens", to_i64(event.completion_tokens)));
        if !event.policy.is_empty() {
            attributes.push(KeyValue::new("gateway.policy", event.policy.clone()));
        }
        attributes.push(KeyValue::new("gateway.model", event.model.clone()));
        attributes.push(KeyValue::new("gateway.backend", event.backend.clone()));
        if !event.backend_region.is_empty() {
            attributes.push(KeyValue::new("gateway.region", event.backend_region.clone()));
        }
        attributes.push(KeyValue::new("gateway.snapshot_version", to_i64(event.snapshot_version)));
        attributes.push(KeyValue::new("gateway.cost_usd", event.cost_usd.clone()));
        attributes.push(KeyValue::new("gateway.usage_estimated", event.usage_estimated));
        attributes.push(KeyValue::new("gateway.outcome", event.outcome.clone()));
        attributes.push(KeyValue::new("gateway.attempts", i64::from(event.attempts)));
        attributes.push(KeyValue::new("gateway.streamed", event.streamed));
        if event.status != 0 {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(event.status)));
        }
    });
    if event.outcome != "ok" {
        span.set_error();
    }
}

/// The span of one upstream attempt, a child of the request's.
pub fn attempt_span(
    request: &TraceSpan,
    kind: BackendKind,
    backend: &str,
    model: &str,
    upstream_model: &str,
) -> TraceSpan {
    request.child(
        || format!("attempt {backend}"),
        SpanKind::Client,
        || {
            vec![
                KeyValue::new("gen_ai.system", system(kind)),
                KeyValue::new("gen_ai.request.model", upstream_model.to_owned()),
                KeyValue::new("gateway.backend", backend.to_owned()),
                KeyValue::new("gateway.model", model.to_owned()),
            ]
        },
    )
}

/// How an attempt ended: `status` when the upstream answered, `error` (a fixed class) when it failed. Ends its span.
pub fn record_attempt(span: &TraceSpan, status: Option<u16>, error: Option<&'static str>) {
    span.set_with(|attributes| {
        if let Some(status) = status {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        if let Some(error) = error {
            attributes.push(KeyValue::new("error.type", error));
        }
    });
    if error.is_some() {
        span.set_error();
    }
    span.end();
}

/// A count as an attribute value (OTLP integers are signed).
fn to_i64<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// `gen_ai.system` of a backend kind (the conventions' well-known values).
fn system(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Openai => "openai",
        BackendKind::AzureOpenai => "az.ai.openai",
        BackendKind::Anthropic => "anthropic",
        BackendKind::Bedrock => "aws.bedrock",
        BackendKind::Gemini => "gcp.gemini",
        BackendKind::Vertex => "gcp.vertex_ai",
    }
}
