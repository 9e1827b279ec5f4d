//! Sending one attempt to one candidate: URL and auth per backend kind, pooled keep-alive clients, timeouts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use policy_engine::config::{BackendAuth, BackendKind, BackendSpec, SecretSpec};
use serde_json::{Map, Value};

use super::anthropic;
use super::request::Endpoint;

/// Why an attempt did not produce a usable response.
#[derive(Debug)]
pub enum AttemptError {
    /// Refused or failed before a response (DNS, TCP, TLS).
    Connect(String),
    /// No response headers within the first-byte timeout.
    Timeout(u64),
    /// The upstream answered with an error status.
    Status { status: u16, body: String, retry_after: Option<Duration> },
    /// The data plane cannot talk to this kind of backend.
    Unsupported(String),
}

impl AttemptError {
    pub fn describe(&self) -> String {
        match self {
            AttemptError::Connect(e) => format!("connection failed ({e})"),
            AttemptError::Timeout(ms) => format!("no response within {ms} ms"),
            AttemptError::Status { status, body, .. } => {
                let body: String = body.chars().take(200).collect();
                format!("HTTP {status}: {body}")
            }
            AttemptError::Unsupported(e) => e.clone(),
        }
    }
}

/// One keep-alive pool per connect timeout, shared across snapshots so a config change keeps warm connections.
#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<u64, reqwest::Client>>,
    /// Backends that answered 400 to the `stream_options` the gateway adds for metering.
    usage_option_refused: Mutex<std::collections::HashSet<String>>,
}

/// How one attempt is sent.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions<'a> {
    pub request_id: &'a str,
    /// Leave out the `stream_options.include_usage` the gateway added (the backend refuses it).
    pub omit_usage_option: bool,
}

impl Upstreams {
    fn client(&self, connect_ms: u64) -> Result<reqwest::Client, AttemptError> {
        let mut clients = self.clients.lock().map_err(|_| AttemptError::Connect("client pool poisoned".to_owned()))?;
        if let Some(client) = clients.get(&connect_ms) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(connect_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| AttemptError::Connect(e.to_string()))?;
        clients.insert(connect_ms, client.clone());
        Ok(client)
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
        let with_model = || {
            let body = WithModel { body, model: upstream_model, omit_usage_option: options.omit_usage_option };
            serde_json::to_vec(&body).map_err(|e| AttemptError::Connect(e.to_string()))
        };
        // The URL, the body, and the header a `bearer` secret goes in (None: `Authorization: Bearer`).
        let (url, payload, native_key_header) = match backend.kind {
            BackendKind::Openai => (format!("{}{}", backend.base_url, endpoint.path()), with_model()?, None),
            BackendKind::AzureOpenai => {
                let version = backend.azure.as_ref().map(|a| a.api_version.as_str()).unwrap_or_default();
                let url = format!(
                    "{}/openai/deployments/{upstream_model}{}?api-version={version}",
                    backend.base_url,
                    endpoint.path()
                );
                (url, with_model()?, None)
            }
            BackendKind::Anthropic => {
                if endpoint != Endpoint::ChatCompletions {
                    return Err(AttemptError::Unsupported(format!(
                        "anthropic backends serve chat completions only, not {}",
                        endpoint.cel_name()
                    )));
                }
                let translated = anthropic::request(body, upstream_model).map_err(AttemptError::Unsupported)?;
                let payload = serde_json::to_vec(&translated).map_err(|e| AttemptError::Connect(e.to_string()))?;
                (format!("{}/messages", backend.base_url), payload, Some("x-api-key"))
            }
        };
        let client = self.client(backend.timeouts.connect_ms)?;
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .body(payload);
        if backend.kind == BackendKind::Anthropic {
            request = request.header("anthropic-version", anthropic::API_VERSION);
        }
        if let Some(secret) = resolve_secret(backend.secret.as_ref()) {
            request = match (&backend.auth, native_key_header) {
                (BackendAuth::Bearer, None) => request.bearer_auth(secret),
                (BackendAuth::Bearer, Some(header)) => request.header(header, secret),
                (BackendAuth::Header { header }, _) => request.header(header.as_str(), secret),
                (BackendAuth::None, _) => request,
            };
        }
        let first_byte = backend.timeouts.first_byte_ms;
        let response = match tokio::time::timeout(Duration::from_millis(first_byte), request.send()).await {
            Err(_) => return Err(AttemptError::Timeout(first_byte)),
            Ok(Err(error)) if error.is_timeout() => return Err(AttemptError::Timeout(backend.timeouts.connect_ms)),
            Ok(Err(error)) => return Err(AttemptError::Connect(error_chain(&error))),
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            // Absurd values would overflow a Duration; a day is as good as forever here (it fails over).
            .and_then(|s| Duration::try_from_secs_f64(s.min(86_400.0)).ok());
        let body = match tokio::time::timeout(Duration::from_millis(first_byte), response.text()).await {
            Ok(Ok(text)) => text,
            _ => String::new(),
        };
        Err(AttemptError::Status { status, body, retry_after })
    }
}

/// The request body with `model` replaced by the upstream's name, serialised without copying the body.
struct WithModel<'a> {
    body: &'a Map<String, Value>,
    model: &'a str,
    /// Serialise `stream_options` without `include_usage` (and not at all when nothing else is left).
    omit_usage_option: bool,
}

impl serde::Serialize for WithModel<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let len = (!self.omit_usage_option).then(|| self.body.len() + usize::from(!self.body.contains_key("model")));
        let mut map = serializer.serialize_map(len)?;
        map.serialize_entry("model", self.model)?;
        for (name, value) in self.body {
            match (name.as_str(), value) {
                ("model", _) => {}
                ("stream_options", Value::Object(options)) if self.omit_usage_option => {
                    let rest: Map<String, Value> = options
                        .iter()
                        .filter(|(k, _)| *k != "include_usage")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !rest.is_empty() {
                        map.serialize_entry(name, &rest)?;
                    }
                }
                _ => map.serialize_entry(name, value)?,
            }
        }
        map.end()
    }
}

fn resolve_secret(secret: Option<&SecretSpec>) -> Option<String> {
    match secret? {
        SecretSpec::Value(value) => Some(value.clone()),
        SecretSpec::Ref(reference) => std::env::var(reference.strip_prefix("env:")?).ok(),
        SecretSpec::Sealed(_) => None,
    }
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
