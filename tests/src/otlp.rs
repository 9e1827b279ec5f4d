//! A real OTLP trace receiver for the tests: the collector's `TraceService` over gRPC (tonic, the generated server
//! of `opentelemetry-proto`) and `POST /v1/traces` over HTTP (protobuf, decoded with prost), on free loopback ports
//! of this process, in plain text or over mutual TLS. Every span it receives is kept, flattened, for the test to look for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;
use serde_json::Value;
use tokio_stream::wrappers::TcpListenerStream;

use crate::tls::Certificates;

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    /// Lowercase hex.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: HashMap<String, Value>,
    pub ended_unix_ns: u64,
}

impl ReceivedSpan {
    /// An attribute as text (strings as they are, other values as JSON).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Received {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(json)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .filter_map(|kv| Some((kv.key.clone(), json(kv.value.as_ref()?))))
                            .collect(),
                        ended_unix_ns: span.end_time_unix_nano,
                    });
                }
            }
        }
    }
}

fn json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(json).collect()),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex::encode(b)),
        Some(any_value::Value::KvlistValue(_)) | Some(any_value::Value::StringValueStrindex(_)) | None => Value::Null,
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn http_export(State(received): State<Received>, body: Bytes) -> (StatusCode, Vec<u8>) {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            received.take(request);
            (StatusCode::OK, ExportTraceServiceResponse { partial_success: None }.encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
    }
}

/// The receiver, serving until dropped (with the test's runtime).
pub struct OtlpReceiver {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// `https` when started with [`OtlpReceiver::start_tls`].
    scheme: &'static str,
    received: Received,
}

impl OtlpReceiver {
    /// Serve both transports on the current Tokio runtime.
    pub async fn start() -> OtlpReceiver {
        OtlpReceiver::serve(None).await
    }

    /// Serve both transports over TLS with `certificates`' server certificate, requiring a client certificate
    /// signed by their CA (mutual TLS, as a collector that authenticates its senders does).
    pub async fn start_tls(certificates: &Certificates) -> OtlpReceiver {
        OtlpReceiver::serve(Some(certificates)).await
    }

    async fn serve(tls: Option<&Certificates>) -> OtlpReceiver {
        let received = Received::default();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let mut server = tonic::transport::Server::builder();
        if let Some(certificates) = tls {
            let pem = |path: &std::path::Path| std::fs::read(path).unwrap();
            let config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    pem(&certificates.server_cert),
                    pem(&certificates.server_key),
                ))
                .client_ca_root(tonic::transport::Certificate::from_pem(pem(&certificates.ca)));
            server = server.tls_config(config).unwrap();
        }
        tokio::spawn(
            server
                .add_service(TraceServiceServer::new(received.clone()))
                .serve_with_incoming(TcpListenerStream::new(grpc_listener)),
        );
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let app =
            axum::Router::new().route("/v1/traces", axum::routing::post(http_export)).with_state(received.clone());
        match tls {
            None => drop(tokio::spawn(async move { axum::serve(http_listener, app).await })),
            Some(certificates) => {
                let listener = TlsListener { tcp: http_listener, acceptor: mutual_tls_acceptor(certificates) };
                drop(tokio::spawn(async move { axum::serve(listener, app).await }));
            }
        }
        OtlpReceiver { grpc, http, scheme: if tls.is_some() { "https" } else { "http" }, received }
    }

    /// The environment that makes a plane export to this receiver over `protocol` (`grpc` or `http/protobuf`),
    /// in batches of at most 100 ms.
    pub fn env(&self, protocol: &str, service: &str) -> Vec<(String, String)> {
        let scheme = self.scheme;
        let endpoint = match protocol {
            "grpc" => format!("{scheme}://{}", self.grpc),
            _ => format!("{scheme}://{}", self.http),
        };
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// [`OtlpReceiver::env`] with the SDK's own batching (a batch every 5 s or every 512 spans), as a production
    /// plane exports: for benchmarks, where the tests' 100 ms batches would cost an export call per request or two.
    pub fn production_env(&self, protocol: &str, service: &str) -> Vec<(String, String)> {
        let mut env = self.env(protocol, service);
        env.retain(|(name, _)| name != "OTEL_BSP_SCHEDULE_DELAY");
        env
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.0.lock().unwrap().clone()
    }

    /// Wait (up to 30 s) for a span `matching`; the failure lists the spans received.
    pub async fn wait_for(&self, what: &str, matching: impl Fn(&ReceivedSpan) -> bool) -> ReceivedSpan {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if let Some(found) = spans.iter().find(|s| matching(s)) {
                return found.clone();
            }
            if std::time::Instant::now() > deadline {
                let names: Vec<String> = spans.iter().map(|s| format!("{} {:?}", s.name, s.attributes)).collect();
                panic!("timed out after 30s waiting for {what}; received: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A TLS acceptor with `certificates`' server identity that requires a client certificate from their CA.
fn mutual_tls_acceptor(certificates: &Certificates) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&certificates.ca).unwrap()).unwrap();
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let chain = vec![CertificateDer::from_pem_file(&certificates.server_cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&certificates.server_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// The HTTP receiver's listener over TLS: a connection whose handshake fails is dropped, as a collector would.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(stream)).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
