//! W3C trace context on HTTP headers: the caller's `traceparent` (and `tracestate`) read once per request, the trace
//! id a request is recorded under, and the headers each upstream attempt carries.
//!
//! The rule (docs/observability.md): with traces exported, a request's span continues the caller's trace and each
//! attempt sends its own span's context; with traces off, the caller's valid `traceparent` and `tracestate` are
//! passed on unchanged. Either way the request's trace id is the caller's when it sent a valid one.

use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;

use crate::spans::TraceSpan;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The `traceparent` of `span` (version 00), written straight into its 55 bytes: the propagator's `format!` and
/// header-name lookups were a measurable share of an exported request's instructions.
fn traceparent(span: &SpanContext) -> Option<HeaderValue> {
    let mut value = [b'-'; 55];
    value[..2].copy_from_slice(b"00");
    hex::encode_to_slice(span.trace_id().to_bytes(), &mut value[3..35]).ok()?;
    hex::encode_to_slice(span.span_id().to_bytes(), &mut value[36..52]).ok()?;
    hex::encode_to_slice([(span.trace_flags() & TraceFlags::SAMPLED).to_u8()], &mut value[53..55]).ok()?;
    HeaderValue::from_bytes(&value).ok()
}

/// W3C's lengths (the propagator also takes a 16-digit trace id, which the recommendation does not): version,
/// 32-digit trace id, 16-digit parent id, flags; a future version may append fields after a dash.
fn well_formed(value: &[u8]) -> bool {
    let parts: Vec<usize> = value.split(|b| *b == b'-').map(<[u8]>::len).collect();
    parts.len() >= 4 && parts[..4] == [2, 32, 16, 2]
}

/// One request's trace: its exported span (none unless traces are exported), the span its log lines carry (disabled
/// unless the logs are JSON) and the caller's context.
#[derive(Clone, Debug)]
pub struct RequestTrace {
    span: TraceSpan,
    log_span: Span,
    /// The caller's `traceparent` and `tracestate`, when its `traceparent` is valid.
    caller: Option<(HeaderValue, Option<HeaderValue>)>,
    trace_id: Option<String>,
}

impl RequestTrace {
    /// The request's span `name` (kind `kind`), a child of the caller's context in `headers`; `log_span` gets the
    /// trace id in its `trace_id` field.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        log_span: Span,
        headers: &HeaderMap,
    ) -> RequestTrace {
        let mut caller = None;
        let mut trace_id = None;
        let mut parent = Context::new();
        if let Some(traceparent) = headers.get(TRACEPARENT).filter(|v| well_formed(v.as_bytes())) {
            let context = TraceContextPropagator::new().extract(&Extract(headers));
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                trace_id = Some(span_context.trace_id().to_string());
                caller = Some((traceparent.clone(), headers.get(TRACESTATE).cloned()));
                parent = context;
            }
        }
        let span = TraceSpan::start(name, kind, &parent);
        if let Some(own) = span.span_context().filter(SpanContext::is_valid) {
            trace_id = Some(own.trace_id().to_string());
        }
        if let Some(id) = &trace_id {
            log_span.record("trace_id", id.as_str());
        }
        RequestTrace { span, log_span, caller, trace_id }
    }

    /// The exported span.
    pub fn span(&self) -> &TraceSpan {
        &self.span
    }

    /// The span the request's log lines carry.
    pub fn log_span(&self) -> &Span {
        &self.log_span
    }

    /// Whether the span is exported: worth computing what only the trace shows.
    pub fn exported(&self) -> bool {
        self.span.is_recording()
    }

    /// The request's trace id (32 lowercase hex digits): its span's when exported, else the caller's, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// The trace headers an upstream attempt sends: `attempt`'s context when traces are exported, else the
    /// caller's headers as they came.
    pub fn upstream_headers(&self, attempt: &TraceSpan) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(context) = attempt.context() {
            let span = context.span();
            let span = span.span_context();
            if span.is_valid() {
                if let Some(traceparent) = traceparent(span) {
                    headers.insert(TRACEPARENT, traceparent);
                }
                let state = span.trace_state().header();
                if !state.is_empty()
                    && let Ok(state) = HeaderValue::try_from(state)
                {
                    headers.insert(TRACESTATE, state);
                }
            }
        } else if let Some((traceparent, tracestate)) = &self.caller {
            headers.insert(TRACEPARENT, traceparent.clone());
            if let Some(tracestate) = tracestate {
                headers.insert(TRACESTATE, tracestate.clone());
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(traceparent: &str) -> RequestTrace {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap_or(HeaderValue::from_static("x")));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        RequestTrace::start("test", SpanKind::Server, Span::none(), &headers)
    }

    #[test]
    fn the_callers_trace_id_when_not_exporting() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = trace(valid);
        assert_eq!(trace.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let sent = trace.upstream_headers(&TraceSpan::none());
        assert_eq!(sent.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(valid));
        assert_eq!(sent.get(TRACESTATE).and_then(|v| v.to_str().ok()), Some("vendor=1"));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let trace = trace(invalid);
            assert_eq!(trace.trace_id(), None, "{invalid}");
            assert!(trace.upstream_headers(&TraceSpan::none()).is_empty(), "{invalid}");
        }
        assert_eq!(RequestTrace::start("test", SpanKind::Server, Span::none(), &HeaderMap::new()).trace_id(), None);
    }

    #[test]
    fn traceparents_are_written_as_the_propagator_writes_them() {
        use opentelemetry::trace::{SpanId, TraceId, TraceState};
        struct Headers(Vec<(String, String)>);
        impl opentelemetry::propagation::Injector for Headers {
            fn set(&mut self, key: &str, value: String) {
                self.0.push((key.to_owned(), value));
            }
        }
        for flags in [TraceFlags::SAMPLED, TraceFlags::NOT_SAMPLED, TraceFlags::new(0xff)] {
            let span = SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                flags,
                true,
                TraceState::NONE,
            );
            let mut expected = Headers(Vec::new());
            TraceContextPropagator::new()
                .inject_context(&opentelemetry::Context::new().with_remote_span_context(span.clone()), &mut expected);
            let written = traceparent(&span).and_then(|v| v.to_str().ok().map(str::to_owned));
            assert_eq!(written.as_deref(), Some(expected.0[0].1.as_str()), "{flags:?}");
        }
    }
}
