//! The request's spans (docs/observability.md, "Traces"): one per request with the GenAI semantic conventions and
//! the gateway's own attributes, one child per upstream attempt. Below every stage: the proxy opens them, the spend
//! record closes the request's with what it metered (so a stream's span ends when the stream does).
//!
//! Built only when [`gateway_telemetry::spans_on`]; otherwise every span is [`Span::none`] and recording is a no-op.
//! Prompt and completion content never goes into a span.

use gateway_proto::v1;
use gateway_telemetry::TARGET;
use policy_engine::config::BackendKind;
use tracing::Span;
use tracing::field::Empty;

/// The span of one request to `operation` (`chat`, `text_completion`, `embeddings`).
pub fn request_span(operation: &'static str, request_id: &str) -> Span {
    if !gateway_telemetry::spans_on() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = operation,
        otel.kind = "server",
        otel.status_code = Empty,
        request_id,
        trace_id = Empty,
        gen_ai.operation.name = operation,
        gen_ai.system = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        gateway.policy = Empty,
        gateway.alias = Empty,
        gateway.model = Empty,
        gateway.backend = Empty,
        gateway.region = Empty,
        gateway.snapshot_version = Empty,
        gateway.cost_usd = Empty,
        gateway.usage_estimated = Empty,
        gateway.outcome = Empty,
        gateway.attempts = Empty,
        gateway.streamed = Empty,
    )
}

/// The request's alias is known: the span is named `{operation} {alias}` as the conventions ask.
pub fn record_alias(span: &Span, operation: &str, alias: &str) {
    if span.is_disabled() {
        return;
    }
    gateway_telemetry::rename(span, format!("{operation} {alias}"));
    span.record("gen_ai.request.model", alias);
    span.record("gateway.alias", alias);
}

/// The request was answered with `status` (`error` names the failure's code when it failed).
pub fn record_status(span: &Span, status: u16, error: Option<&str>) {
    span.record("http.response.status_code", status);
    if let Some(error) = error {
        span.record("error.type", error);
        span.record("otel.status_code", "error");
    }
}

/// The request's spend event, made when the request is over: what served it and what it cost.
pub fn record_event(span: &Span, event: &v1::SpendEvent, kind: Option<BackendKind>, finish_reasons: &[String]) {
    if span.is_disabled() {
        return;
    }
    gateway_telemetry::set_strings(span, "gen_ai.response.finish_reasons", finish_reasons);
    if let Some(kind) = kind {
        span.record("gen_ai.system", system(kind));
    }
    span.record("gen_ai.response.model", event.upstream_model.as_str());
    span.record("gen_ai.usage.input_tokens", event.prompt_tokens);
    span.record("gen_ai.usage.output_tokens", event.completion_tokens);
    if !event.policy.is_empty() {
        span.record("gateway.policy", event.policy.as_str());
    }
    span.record("gateway.model", event.model.as_str());
    span.record("gateway.backend", event.backend.as_str());
    if !event.backend_region.is_empty() {
        span.record("gateway.region", event.backend_region.as_str());
    }
    span.record("gateway.snapshot_version", event.snapshot_version);
    span.record("gateway.cost_usd", event.cost_usd.as_str());
    span.record("gateway.usage_estimated", event.usage_estimated);
    span.record("gateway.outcome", event.outcome.as_str());
    span.record("gateway.attempts", event.attempts);
    span.record("gateway.streamed", event.streamed);
    if event.status != 0 {
        span.record("http.response.status_code", event.status);
    }
    if event.outcome != "ok" {
        span.record("otel.status_code", "error");
    }
}

/// The span of one upstream attempt, a child of the request's.
pub fn attempt_span(request: &Span, kind: BackendKind, backend: &str, model: &str, upstream_model: &str) -> Span {
    if request.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        parent: request,
        "attempt",
        otel.name = format!("attempt {backend}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.system = system(kind),
        gen_ai.request.model = upstream_model,
        gateway.backend = backend,
        gateway.model = model,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// How an attempt ended: `status` when the upstream answered, `error` (a fixed class) when it failed.
pub fn record_attempt(span: &Span, status: Option<u16>, error: Option<&'static str>) {
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if let Some(error) = error {
        span.record("error.type", error);
        span.record("otel.status_code", "error");
    }
}

/// `gen_ai.system` of a backend kind (the conventions' well-known values).
fn system(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Openai => "openai",
        BackendKind::AzureOpenai => "az.ai.openai",
        BackendKind::Anthropic => "anthropic",
        BackendKind::Bedrock => "aws.bedrock",
    }
}
