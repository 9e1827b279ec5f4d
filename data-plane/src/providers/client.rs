//! The HTTP client attempts and health checks are sent with: hyper's pooled client, connecting through the egress
//! rules' resolver ([`super::egress::GuardedResolver`]) and TLS by rustls with the platform's verifier, set up as
//! reqwest's client was (keep-alive and TCP settings, ALPN `h2` then `http/1.1`, `accept: */*`). The requests are
//! still built as reqwest requests (providers sign and inspect those); only sending skips reqwest's per-request
//! pipeline, which parsed each request's URL twice more (its redirect layer and its pending request) with redirects
//! off: about an eighth of the data plane's instructions per request (docs/benchmarks.md, "CPU per request").

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::ResponseBuilderExt;

use super::egress::{self, GuardedResolver};

/// Why sending failed, before any response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request could not be turned into an HTTP request (an invalid URL or header).
    #[error("invalid request")]
    Invalid(#[source] reqwest::Error),
    /// The egress rules refused the destination (the resolver's refusal): nothing was sent.
    #[error("{0}")]
    Refused(egress::Refused),
    /// No connection within the connect timeout.
    #[error("connect timeout")]
    ConnectTimeout,
    /// Connecting or exchanging failed (DNS, TCP, TLS, a connection closed early).
    #[error(transparent)]
    Failed(#[from] hyper_util::client::legacy::Error),
}

/// One keep-alive pool with one connect timeout.
pub struct UpstreamClient {
    client: Client<Within<HttpsConnector<HttpConnector<GuardedResolver>>>, reqwest::Body>,
}

/// A connector whose whole connection (name resolution, TCP, TLS handshake) must be made within a time, as
/// reqwest's connect timeout was: hyper's own bounds only each TCP connect, so a host whose TLS handshake hangs
/// would otherwise hold an attempt until its first-byte timeout.
#[derive(Clone)]
struct Within<C> {
    connector: C,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<http::Uri> for Within<C>
where
    C: tower_service::Service<http::Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<C::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.connector.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout").into()),
            }
        })
    }
}

/// As reqwest's defaults: idle connections kept 90 s, TCP keep-alive probes after 15 s, every 15 s, 3 of them,
/// and unacknowledged data given up on after 30 s.
const POOL_IDLE: Duration = Duration::from_secs(90);
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

impl UpstreamClient {
    /// A client connecting within `connect_timeout`, through `resolver`, with `tls` for `https` (its ALPN set here):
    /// [`platform_tls`] but in tests.
    pub fn new(connect_timeout: Duration, resolver: GuardedResolver, tls: rustls::ClientConfig) -> UpstreamClient {
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        // Each address's TCP connect within the whole connection's time ([`Within`] bounds the rest).
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(KEEPALIVE));
        http.set_keepalive_interval(Some(KEEPALIVE));
        http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = Within { connector: https, timeout: connect_timeout };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        UpstreamClient { client }
    }

    /// Send `request`; the response once its head arrived (its body streams as reqwest's would). A request the
    /// server refused unprocessed (HTTP/2 `REFUSED_STREAM`, or a graceful `GOAWAY` closing the connection under it)
    /// is sent again, at most [`PROTOCOL_NACK_RETRIES`] times, as reqwest's client did: providers behind HTTP/2
    /// front ends rotate connections that way.
    pub async fn send(&self, mut request: reqwest::Request) -> Result<reqwest::Response, SendError> {
        let mut retries = 0;
        loop {
            let again = (retries < PROTOCOL_NACK_RETRIES).then(|| request.try_clone()).flatten();
            match (self.send_once(request).await, again) {
                (Err(SendError::Failed(error)), Some(again)) if refused_unprocessed(&error) => {
                    request = again;
                    retries += 1;
                }
                (sent, _) => return sent,
            }
        }
    }

    async fn send_once(&self, request: reqwest::Request) -> Result<reqwest::Response, SendError> {
        let url = request.url().clone();
        let mut request = http::Request::<reqwest::Body>::try_from(request).map_err(SendError::Invalid)?;
        request.headers_mut().entry(http::header::ACCEPT).or_insert_with(|| http::HeaderValue::from_static("*/*"));
        let response = self.client.request(request).await.map_err(classify)?;
        let (mut parts, body) = response.into_parts();
        // The response's URL is the request's, as reqwest's own (else it parses a placeholder URL per response).
        if let Ok(marked) = http::Response::builder().url(url).body(()) {
            parts.extensions.extend(marked.into_parts().0.extensions);
        }
        Ok(reqwest::Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(body))))
    }
}

/// As reqwest's default retry policy: twice on top of the first send.
const PROTOCOL_NACK_RETRIES: usize = 2;

/// Whether the server refused the request before processing it: safe to send again on a new stream (RFC 9113,
/// 8.7).
fn refused_unprocessed(error: &hyper_util::client::legacy::Error) -> bool {
    let Some(h2) = egress::find_source::<h2::Error>(error) else { return false };
    let remote = h2.is_remote();
    (h2.is_go_away() && remote && h2.reason() == Some(h2::Reason::NO_ERROR))
        || (h2.is_reset() && remote && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

fn classify(error: hyper_util::client::legacy::Error) -> SendError {
    if let Some(refused) = egress::refusal_in(&error) {
        return SendError::Refused(refused.clone());
    }
    if error.is_connect() && timed_out(&error) {
        return SendError::ConnectTimeout;
    }
    SendError::Failed(error)
}

/// Whether an I/O timeout is somewhere in `error`'s sources (a connect timeout).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    egress::find_source::<std::io::Error>(error).is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
}

/// The TLS settings of every upstream connection, built once: TLS 1.2 and 1.3 with the process's crypto provider
/// (ring unless another was installed) and the platform's certificate verifier (the system's roots, and
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`), as reqwest set them up.
pub fn platform_tls() -> Result<rustls::ClientConfig, String> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
            let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| format!("the platform's TLS verifier: {e}"))?;
            Ok(rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS versions: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth())
        })
        .clone()
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
