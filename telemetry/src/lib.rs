//! What both planes share to be observed: the process's `tracing` subscriber (text or JSON log lines, and
//! OpenTelemetry traces exported over OTLP when an endpoint is configured), its flush on shutdown, and W3C trace
//! context on HTTP headers ([`RequestTrace`]). Described in `docs/observability.md`.
//!
//! Off costs nothing: without an endpoint no exporter, processor or tracer exists and every exported span is
//! [`TraceSpan::none`]; the spans log lines carry are built only for JSON logs ([`log_spans_on`]).
//!
//! Exported spans are built with the OpenTelemetry SDK directly ([`TraceSpan`]), not through `tracing`: the sampler
//! decides when a span starts and a span sampled out records nothing, where a `tracing` layer would record every
//! field of every span first.

mod context;
mod export_thread;
mod settings;
mod spans;
mod switches;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::export_thread::ExportThread;

pub use context::{RequestTrace, TRACEPARENT, TRACESTATE};
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::{KeyValue, Value};
pub use settings::{ExportTls, LogFormat, Protocol, Settings, SettingsError};
pub use spans::{TraceSpan, strings};
pub use switches::{exporting, log_spans_on};

/// The target of the spans a request's log lines carry (its id and trace id, in JSON logs): the planes create them
/// with `target: gateway_telemetry::LOG_SPAN_TARGET`, and the filter lets them through at any `RUST_LOG` level.
pub const LOG_SPAN_TARGET: &str = "gateway_request";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("could not build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("could not start the trace export thread: {0}")]
    ExportThread(#[from] std::io::Error),
    #[error("a tracing subscriber is already installed: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans not exported yet.
#[must_use = "shut it down to export the last spans"]
pub struct Telemetry {
    export: Option<(SdkTracerProvider, ExportThread)>,
}

/// Install the process's subscriber from the environment; `service` names the process in traces unless
/// `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) does. Must run inside a Tokio runtime.
pub fn init(service: &'static str) -> Result<Telemetry, InitError> {
    let settings = Settings::from_env()?;
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    // RUST_LOG's directives, plus the request spans' target for JSON logs (their lines carry its fields).
    let json = settings.log_format == LogFormat::Json;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json && let Ok(directive) = format!("{LOG_SPAN_TARGET}=info").parse() {
        filter = filter.add_directive(directive);
    }
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let export = match settings.export {
        None => None,
        Some(protocol) => {
            let resource =
                if named { Resource::builder() } else { Resource::builder().with_service_name(service) }.build();
            let thread = ExportThread::start()?;
            let processor = thread.within(|| {
                exporter(protocol, &settings.tls)
                    .map(|exporter| BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build())
            });
            let processor = match processor {
                Ok(processor) => processor,
                Err(error) => {
                    thread.stop();
                    return Err(error);
                }
            };
            let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
            spans::install(provider.tracer(service));
            Some((provider, thread))
        }
    };
    tracing_subscriber::registry().with(logs).with(filter).try_init()?;
    switches::set(export.is_some(), json);
    if let Some(protocol) = settings.export {
        tracing::info!(?protocol, "exporting traces over OTLP");
    }
    Ok(Telemetry { export })
}

fn exporter(protocol: Protocol, tls: &ExportTls) -> Result<opentelemetry_otlp::SpanExporter, InitError> {
    let pem = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| InitError::Exporter(format!("cannot read {}: {e}", path.display())))
    };
    let ca = tls.ca.as_deref().map(pem).transpose()?;
    let identity = match &tls.client_identity {
        Some((cert, key)) => Some((pem(cert)?, pem(key)?)),
        None => None,
    };
    let built = match protocol {
        Protocol::Grpc if tls.https => {
            // The system's roots as well as the configured CA: the SDK's own default for https has no roots.
            let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = ca {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_tls_config(config).build()
        }
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().build(),
        Protocol::HttpProtobuf => {
            // The workspace's reqwest brings no TLS provider of its own: ring, as the planes' other clients use.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let invalid = |what: &str, e: reqwest::Error| InitError::Exporter(format!("{what}: {e}"));
            let mut client = reqwest::Client::builder();
            if let Some(ca) = ca {
                let certs = reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| invalid("the OTLP CA", e))?;
                client = client.tls_certs_merge(certs);
            }
            if let Some((mut cert, key)) = identity {
                cert.extend_from_slice(b"\n");
                cert.extend_from_slice(&key);
                let identity =
                    reqwest::Identity::from_pem(&cert).map_err(|e| invalid("the OTLP client identity", e))?;
                client = client.identity(identity);
            }
            let client = client.build().map_err(|e| invalid("the OTLP HTTP client", e))?;
            opentelemetry_otlp::SpanExporter::builder().with_http().with_http_client(client).build()
        }
    };
    built.map_err(|e| InitError::Exporter(e.to_string()))
}

/// How long the last export may take on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Export the spans still buffered, within a few seconds (a collector that is down must not hold a shutdown).
    pub async fn shutdown(self) {
        let Some((provider, thread)) = self.export else { return };
        // The processor answers from its own thread: wait for it off the async workers.
        let flushed = tokio::time::timeout(
            FLUSH_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let flushed = provider.shutdown();
                thread.stop();
                flushed
            }),
        )
        .await;
        match flushed {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the last traces could not be exported"),
            Ok(Err(error)) => tracing::warn!(%error, "the trace exporter's shutdown failed"),
            Err(_) => tracing::warn!("the last traces were not exported within {FLUSH_TIMEOUT:?}"),
        }
    }
}
