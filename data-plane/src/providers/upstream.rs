//! Sending one attempt to one candidate: the request its kind builds ([`super::Provider`]), its secret, pooled
//! keep-alive clients, timeouts.
//! Upstream redirects are never followed (a 3xx is the attempt's failure), and every destination passes this data
//! plane's egress rules ([`super::egress`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy_engine::config::{BackendAuth, BackendSpec};
use policy_engine::guardrail_spec::WebhookSpec;
use serde_json::{Map, Value};

use super::client::{SendError, UpstreamClient};
use super::egress::{self, Egress};
use super::oauth::Tokens;
use super::{Inbound, Outbound, Unsigned};
use crate::openai::request::Endpoint;

/// An upstream's error answer larger than this is not read.
const MAX_ERROR_ANSWER_BYTES: usize = 256 * 1024;
/// A classifier's answer larger than this is refused (scores for a few categories are a few hundred bytes).
const MAX_CLASSIFIER_ANSWER_BYTES: usize = 1024 * 1024;

/// Why an attempt did not produce a usable response.
#[derive(Debug)]
pub enum AttemptError {
    /// Refused or failed before a response (DNS, TCP, TLS).
    Connect(String),
    /// No response headers within the first-byte timeout.
    Timeout(u64),
    /// The upstream answered with an error status.
    Status { status: u16, body: String, retry_after: Option<Duration> },
    /// The upstream answered with a redirect, which is never followed: it could lead anywhere, the allowlist
    /// and the provider secret's destination included. Fails over like a 5xx.
    Redirect { status: u16, location: Option<String> },
    /// The data plane cannot talk to this kind of backend.
    Unsupported(String),
    /// This data plane's egress rules refuse the backend (its host, its addresses, its secret reference), or its
    /// secret is missing here: nothing was sent. The message names the backend.
    Refused(String),
    /// The backend's short-lived credentials could not be had (its token endpoint failed or refused): nothing was
    /// sent to the model. Fails over like a connection failure. The message names the backend.
    Credentials(String),
}

impl AttemptError {
    /// The upstream's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { status, .. } | AttemptError::Redirect { status, .. } => Some(*status),
            AttemptError::Connect(_) | AttemptError::Timeout(_) | AttemptError::Unsupported(_) => None,
            AttemptError::Refused(_) | AttemptError::Credentials(_) => None,
        }
    }

    /// Whether the attempt reached the upstream (else it was refused or unservable here, or lacked credentials).
    pub fn was_sent(&self) -> bool {
        !matches!(self, AttemptError::Unsupported(_) | AttemptError::Refused(_) | AttemptError::Credentials(_))
    }

    /// A fixed name of the failure's class: a trace's `error.type` and `gateway_upstream_errors_total{class}`.
    pub fn class(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::Status { status: 429, .. } => "rate_limited",
            AttemptError::Status { status, .. } if *status >= 500 => "server_error",
            AttemptError::Status { .. } => "client_error",
            AttemptError::Redirect { .. } => "redirect",
            AttemptError::Unsupported(_) => "unsupported",
            AttemptError::Refused(_) => "refused",
            AttemptError::Credentials(_) => "credentials",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AttemptError::Connect(e) => format!("connection failed ({e})"),
            AttemptError::Timeout(ms) => format!("no response within {ms} ms"),
            AttemptError::Status { status, body, .. } => {
                let body: String = body.chars().take(200).collect();
                format!("HTTP {status}: {body}")
            }
            AttemptError::Redirect { status, location } => {
                let to = location.as_ref().map(|l| format!(" to {l}")).unwrap_or_default();
                format!(
                    "HTTP {status} redirect{to}, not followed: the gateway never follows upstream redirects (set the \
                     backend's base_url to the final address)"
                )
            }
            AttemptError::Unsupported(e) | AttemptError::Refused(e) | AttemptError::Credentials(e) => e.clone(),
        }
    }
}

/// One keep-alive pool per connect timeout, shared across snapshots so a config change keeps warm connections.
#[derive(Default)]
pub struct Upstreams {
    /// Per connect timeout ([`Clients`]).
    clients: Mutex<HashMap<u64, Arc<Clients>>>,
    /// Backends that answered 400 to the `stream_options` the gateway adds for metering.
    usage_option_refused: Mutex<std::collections::HashSet<String>>,
    /// Upstream URLs already parsed and passed by the egress rules: the same few on every request of a snapshot, so
    /// each is parsed (host IDNA included) and checked once rather than per attempt.
    checked_urls: Mutex<HashMap<String, reqwest::Url>>,
    egress: Egress,
    /// Short-lived tokens of backends whose secret is a way to get them (Vertex's service accounts).
    tokens: Tokens,
}

/// One connect timeout's clients: the reqwest client requests are built with (and classifiers sent with), and the
/// client attempts and health checks are sent with ([`super::client`]).
struct Clients {
    builder: reqwest::Client,
    sender: UpstreamClient,
}

/// The most upstream URLs [`Upstreams`] keeps parsed; past it the cache starts over (a snapshot's backends,
/// endpoints and Azure deployments are far fewer).
const MAX_CHECKED_URLS: usize = 4096;

/// How one attempt is sent.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions<'a> {
    pub request_id: &'a str,
    /// Leave out the `stream_options.include_usage` the gateway added (the backend refuses it).
    pub omit_usage_option: bool,
    /// W3C trace context for the upstream (`traceparent`, `tracestate`), possibly none.
    pub trace_headers: &'a reqwest::header::HeaderMap,
}

impl Upstreams {
    pub fn new(egress: Egress) -> Upstreams {
        Upstreams { tokens: Tokens::new(egress.clone()), egress, ..Upstreams::default() }
    }

    fn client(&self, connect_ms: u64) -> Result<reqwest::Client, AttemptError> {
        self.clients_of(connect_ms).map(|clients| clients.builder.clone())
    }

    /// Shared, not cloned: a hyper client's clone copies its connector (the resolver, the TLS settings).
    fn clients_of(&self, connect_ms: u64) -> Result<Arc<Clients>, AttemptError> {
        let mut clients = self.clients.lock().map_err(|_| AttemptError::Connect("client pool poisoned".to_owned()))?;
        if let Some(clients) = clients.get(&connect_ms) {
            return Ok(Arc::clone(clients));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(connect_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            // A redirect could lead past the allowlist, with the body and a secret sent in a custom header.
            .redirect(reqwest::redirect::Policy::none())
            // Every address connected to is checked here; an HTTP(S)_PROXY would resolve names out of sight.
            .no_proxy()
            .dns_resolver(self.egress.resolver())
            .build()
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        let tls = super::client::platform_tls().map_err(AttemptError::Connect)?;
        let sender = UpstreamClient::new(Duration::from_millis(connect_ms), self.egress.resolver(), tls);
        let made = Arc::new(Clients { builder: client, sender });
        clients.insert(connect_ms, Arc::clone(&made));
        Ok(made)
    }

    /// Send `body` (with `model` set to the upstream name) to `backend`; the response once its headers arrived.
    pub fn refuses_usage_option(&self, backend: &str) -> bool {
        self.usage_option_refused.lock().is_ok_and(|refused| refused.contains(backend))
    }

    pub fn remember_usage_option_refused(&self, backend: &str) {
        if let Ok(mut refused) = self.usage_option_refused.lock() {
            refused.insert(backend.to_owned());
        }
    }

    pub async fn send(
        &self,
        backend: &BackendSpec,
        upstream_model: &str,
        endpoint: Endpoint,
        body: &Map<String, Value>,
        options: SendOptions<'_>,
    ) -> Result<reqwest::Response, AttemptError> {
        let request_id = options.request_id;
        let provider = super::of(backend.kind);
        let Outbound { url, body: payload, native_key_header, headers } = provider.request(&Inbound {
            backend,
            upstream_model,
            endpoint,
            body,
            omit_usage_option: options.omit_usage_option,
        })?;
        let request = self
            .authorized(backend, reqwest::Method::POST, &url, native_key_header, headers)?
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .headers(options.trace_headers.clone())
            .body(payload);
        let request = self.with_credentials(backend, request).await?;
        let first_byte = backend.timeouts.first_byte_ms;
        let response = self.send_within(backend, request, Duration::from_millis(first_byte)).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let location = response.headers().get("location").map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                text.chars().take(200).collect()
            });
            return Err(AttemptError::Redirect { status, location });
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        // An error answer is passed on or quoted: a larger one is not read (as if it had none).
        let read = super::body::read_at_most(response, MAX_ERROR_ANSWER_BYTES);
        let body = match tokio::time::timeout(Duration::from_millis(first_byte), read).await {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        Err(AttemptError::Status { status, body, retry_after })
    }

    /// One health check of `backend`: `GET` its check URL with its credentials, through the same clients and egress
    /// rules as its requests; `Ok` for a 2xx within `timeout`.
    pub async fn check(&self, backend: &BackendSpec, path: &str, timeout: Duration) -> Result<(), AttemptError> {
        let Outbound { url, native_key_header, headers, .. } = super::of(backend.kind).health_check(backend, path);
        let request = self.authorized(backend, reqwest::Method::GET, &url, native_key_header, headers)?;
        let request = self.with_credentials(backend, request).await?;
        let response = self.send_within(backend, request, timeout).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The body is not read: its status says enough, and a check must not wait on it.
        Err(AttemptError::Status { status: status.as_u16(), body: String::new(), retry_after: None })
    }
}

/// Where a guardrail's external classifier is sent (`docs/guardrails.md`).
pub enum ClassifierTarget<'a> {
    /// `POST {base_url}/moderations` on an `openai` backend, with its secret and headers.
    Moderation(&'a BackendSpec),
    /// `POST url` with the webhook's headers and, from its `secret_ref`, `Authorization: Bearer`.
    Webhook(&'a WebhookSpec),
}

impl Upstreams {
    /// One call of an external classifier: `body` posted as JSON, its answer read as JSON, all within `timeout`
    /// (connection, response head and body together). Same pooled clients, egress rules and no redirects as
    /// attempts.
    pub async fn classify(
        &self,
        target: ClassifierTarget<'_>,
        body: Vec<u8>,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Value, AttemptError> {
        let call = async {
            let request = match target {
                ClassifierTarget::Moderation(backend) => {
                    let url = super::join(&backend.base_url, "/moderations");
                    self.authorized(backend, reqwest::Method::POST, &url, None, &[])?
                }
                ClassifierTarget::Webhook(webhook) => {
                    let refused =
                        |reason: egress::Refused| AttemptError::Refused(format!("webhook classifier: {reason}"));
                    let url = reqwest::Url::parse(&webhook.url)
                        .map_err(|e| refused(egress::Refused(format!("invalid URL: {e}"))))?;
                    self.egress.check_url(&url).map_err(refused)?;
                    let connect_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                    let mut request = self.client(connect_ms)?.post(url);
                    for (name, value) in &webhook.headers {
                        request = request.header(name.as_str(), value.as_str());
                    }
                    if let Some(reference) = &webhook.secret_ref {
                        let secret = self.egress.referenced("webhook classifier", reference).map_err(refused)?;
                        request = request.bearer_auth(secret);
                    }
                    request
                }
            };
            let request = request.header("content-type", "application/json").header("x-request-id", request_id);
            let response = match request.body(body).send().await {
                Ok(response) => response,
                Err(error) => {
                    return Err(match egress::refusal_in(&error) {
                        Some(reason) => AttemptError::Refused(reason.to_string()),
                        None => AttemptError::Connect(error_chain(&error)),
                    });
                }
            };
            let status = response.status();
            if !status.is_success() {
                // The body is not read: an error status says enough, and the caller is waiting.
                return Err(AttemptError::Status { status: status.as_u16(), body: String::new(), retry_after: None });
            }
            let bytes =
                super::body::read_at_most(response, MAX_CLASSIFIER_ANSWER_BYTES).await.map_err(|e| match e {
                    super::body::BodyError::Read(e) => AttemptError::Connect(error_chain(&e)),
                    too_large @ super::body::BodyError::TooLarge { .. } => {
                        AttemptError::Unsupported(format!("the classifier's answer: {too_large}"))
                    }
                })?;
            serde_json::from_slice(&bytes)
                .map_err(|e| AttemptError::Unsupported(format!("the classifier's answer is not JSON: {e}")))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(AttemptError::Timeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))))
    }
}

impl Upstreams {
    /// A request to `backend` at `url`, checked against the egress rules, with its headers and its secret presented as
    /// its `auth` (or its kind's native header) says; shared by requests and health checks.
    fn authorized(
        &self,
        backend: &BackendSpec,
        method: reqwest::Method,
        url: &str,
        native_key_header: Option<&'static str>,
        headers: &[(&'static str, &'static str)],
    ) -> Result<reqwest::RequestBuilder, AttemptError> {
        let url = self.checked_url(backend, url)?;
        let secret = self.egress.secret(backend).map_err(|reason| AttemptError::Refused(reason.0))?;
        let mut request = self.client(backend.timeouts.connect_ms)?.request(method, url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let per_request = super::of(backend.kind).per_request_credentials(backend);
        if let Some(secret) = secret.filter(|_| !per_request) {
            request = match (&backend.auth, native_key_header) {
                (BackendAuth::Bearer, None) => request.bearer_auth(secret),
                (BackendAuth::Bearer, Some(header)) => request.header(header, secret),
                (BackendAuth::Header { header }, _) => request.header(header.as_str(), secret),
                (BackendAuth::None, _) => request,
            };
        }
        Ok(request)
    }

    /// `request` with the credentials its backend's kind computes for it, for kinds that do
    /// ([`super::Provider::authorize`]); others' requests as they are.
    async fn with_credentials(
        &self,
        backend: &BackendSpec,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, AttemptError> {
        let provider = super::of(backend.kind);
        if !provider.per_request_credentials(backend) {
            return Ok(request);
        }
        let secret = self.egress.secret(backend).map_err(|reason| AttemptError::Refused(reason.0))?;
        let (client, request) = request.build_split();
        let mut request = request.map_err(|e| AttemptError::Connect(error_chain(&e)))?;
        let credentials = provider
            .authorize(Unsigned { backend, secret: secret.as_deref(), request: &request, tokens: &self.tokens })
            .await?;
        request.headers_mut().extend(credentials);
        Ok(reqwest::RequestBuilder::from_parts(client, request))
    }

    /// `url` parsed and passed by the egress rules (which depend on the URL alone), from the cache when seen before.
    fn checked_url(&self, backend: &BackendSpec, url: &str) -> Result<reqwest::Url, AttemptError> {
        if let Some(checked) = self.checked_urls.lock().ok().and_then(|urls| urls.get(url).cloned()) {
            return Ok(checked);
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| refused(backend, egress::Refused(format!("invalid URL {url}: {e}"))))?;
        self.egress.check_url(&parsed).map_err(|reason| refused(backend, reason))?;
        if let Ok(mut urls) = self.checked_urls.lock() {
            if urls.len() >= MAX_CHECKED_URLS {
                urls.clear();
            }
            urls.insert(url.to_owned(), parsed.clone());
        }
        Ok(parsed)
    }

    /// Send `request`, its response head due within `timeout`; connection failures and egress refusals as the
    /// failover code classifies them.
    async fn send_within(
        &self,
        backend: &BackendSpec,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, AttemptError> {
        let request = request.build().map_err(|e| AttemptError::Connect(error_chain(&e)))?;
        let clients = self.clients_of(backend.timeouts.connect_ms)?;
        match tokio::time::timeout(timeout, clients.sender.send(request)).await {
            Err(_) => Err(AttemptError::Timeout(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))),
            Ok(Err(SendError::ConnectTimeout)) => Err(AttemptError::Timeout(backend.timeouts.connect_ms)),
            Ok(Err(SendError::Refused(reason))) => Err(refused(backend, reason)),
            Ok(Err(error)) => Err(AttemptError::Connect(error_chain(&error))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The egress rules refused sending to `backend`.
fn refused(backend: &BackendSpec, reason: egress::Refused) -> AttemptError {
    AttemptError::Refused(format!("backend '{}': {reason}", backend.name))
}

/// The longest `Retry-After` kept: absurd values would overflow a `Duration`, and a day is as good as forever here
/// (the attempt fails over).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// A `Retry-After` value as a wait from `now`: delay-seconds (fractions accepted, as some providers send them) or an
/// HTTP-date (RFC 9110: IMF-fixdate and the two obsolete forms), a date in the past meaning no wait; at most a day.
/// Anything else is no `Retry-After` at all.
pub(crate) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    // Digits and a point only: `f64` would also read `-1`, `1e3`, `inf` and `NaN`, none of them a delay.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds = value.parse::<f64>().ok()?;
        return Duration::try_from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())).ok();
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
