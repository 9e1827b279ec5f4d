//! Exported spans, built with the OpenTelemetry SDK's tracer directly rather than through `tracing`: the sampler
//! decides when a span starts, and a span it leaves out records nothing, so a request that is not sampled costs a
//! span id and little else (docs/benchmarks.md, "Traces exported versus off"). Without an exporter there is no
//! tracer and every span is [`TraceSpan::none`].

use std::borrow::Cow;
use std::sync::OnceLock;

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::SdkTracer;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

pub(crate) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// One span that may be exported: cheap to clone (the clones are the same span), ended by [`TraceSpan::end`] or
/// when the last clone is dropped.
#[derive(Clone, Debug, Default)]
pub struct TraceSpan {
    context: Option<Context>,
}

impl TraceSpan {
    /// No span: every call on it does nothing.
    pub const fn none() -> TraceSpan {
        TraceSpan { context: None }
    }

    /// A new span under `parent` (a remote caller's context, or the empty context for a new trace); none when traces
    /// are not exported.
    pub fn start(name: impl Into<Cow<'static, str>>, kind: SpanKind, parent: &Context) -> TraceSpan {
        let Some(tracer) = TRACER.get() else { return TraceSpan::none() };
        let span = tracer.span_builder(name).with_kind(kind).start_with_context(tracer, parent);
        TraceSpan { context: Some(parent.with_span(span)) }
    }

    /// A new span in a trace of its own (e.g. background work no request caused).
    pub fn root(name: impl Into<Cow<'static, str>>, kind: SpanKind) -> TraceSpan {
        TraceSpan::start(name, kind, &Context::new())
    }

    /// A child of this span, with `attributes` computed only when it records.
    pub fn child(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> TraceSpan {
        let (Some(tracer), Some(parent)) = (TRACER.get(), &self.context) else { return TraceSpan::none() };
        if !parent.span().is_recording() {
            // Sampled out with its parent (the parent-based samplers' rule): only its context is needed, for the
            // headers that carry it on.
            let span = tracer.span_builder("").with_kind(kind).start_with_context(tracer, parent);
            return TraceSpan { context: Some(parent.with_span(span)) };
        }
        let span = tracer
            .span_builder(name())
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, parent);
        TraceSpan { context: Some(parent.with_span(span)) }
    }

    /// Whether the span records (it exists and was sampled): worth computing what only the trace shows.
    pub fn is_recording(&self) -> bool {
        self.context.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    /// Its context (for the headers that carry it to an upstream), when it exists.
    pub fn context(&self) -> Option<&Context> {
        self.context.as_ref()
    }

    /// Its span context, when it exists (a sampled-out span still has its trace id).
    pub fn span_context(&self) -> Option<SpanContext> {
        self.context.as_ref().map(|cx| cx.span().span_context().clone())
    }

    /// Set one attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = self.recording() {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Set the attributes `attributes` computes, computed only when the span records.
    pub fn set_with(&self, attributes: impl FnOnce(&mut Vec<KeyValue>)) {
        if let Some(cx) = self.recording() {
            let mut list = Vec::with_capacity(16);
            attributes(&mut list);
            cx.span().set_attributes(list);
        }
    }

    /// Rename it (its name once more is known than when it started, e.g. the alias after the body is read).
    pub fn rename(&self, name: impl FnOnce() -> String) {
        if let Some(cx) = self.recording() {
            cx.span().update_name(name());
        }
    }

    /// Mark it failed.
    pub fn set_error(&self) {
        if let Some(cx) = self.recording() {
            cx.span().set_status(Status::error(""));
        }
    }

    /// End it now (else the last clone's drop does).
    pub fn end(&self) {
        if let Some(cx) = &self.context {
            cx.span().end();
        }
    }

    fn recording(&self) -> Option<&Context> {
        self.context.as_ref().filter(|cx| cx.span().is_recording())
    }
}

/// A list of strings as one attribute value (e.g. `gen_ai.response.finish_reasons`).
pub fn strings(values: &[String]) -> Value {
    Value::Array(opentelemetry::Array::String(values.iter().map(|v| v.clone().into()).collect()))
}
