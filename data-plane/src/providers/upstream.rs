//! Sending one attempt to one candidate: the request its kind builds ([`super::Provider`]), its secret, pooled keep-alive clients, timeouts.
//! Upstream redirects are never followed (a 3xx is the attempt's failure), and every destination passes this data
//! plane's egress rules ([`super::egress`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use policy_engine::config::{BackendAuth, BackendSpec};
use serde_json::{Map, Value};

use super::Outbound;
use super::egress::{self, Egress};
use crate::openai::request::Endpoint;

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
            AttemptError::Redirect { status, location } => {
                let to = location.as_ref().map(|l| format!(" to {l}")).unwrap_or_default();
                format!(
                    "HTTP {status} redirect{to}, not followed: the gateway never follows upstream redirects (set the \
                     backend's base_url to the final address)"
                )
            }
            AttemptError::Unsupported(e) | AttemptError::Refused(e) => e.clone(),
        }
    }
}

/// One keep-alive pool per connect timeout, shared across snapshots so a config change keeps warm connections.
#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<u64, reqwest::Client>>,
    /// Backends that answered 400 to the `stream_options` the gateway adds for metering.
    usage_option_refused: Mutex<std::collections::HashSet<String>>,
    egress: Egress,
}

/// How one attempt is sent.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions<'a> {
    pub request_id: &'a str,
    /// Leave out the `stream_options.include_usage` the gateway added (the backend refuses it).
    pub omit_usage_option: bool,
}

impl Upstreams {
    pub fn new(egress: Egress) -> Upstreams {
        Upstreams { egress, ..Upstreams::default() }
    }

    fn client(&self, connect_ms: u64) -> Result<reqwest::Client, AttemptError> {
        let mut clients = self.clients.lock().map_err(|_| AttemptError::Connect("client pool poisoned".to_owned()))?;
        if let Some(client) = clients.get(&connect_ms) {
            return Ok(client.clone());
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
        let provider = super::of(backend.kind);
        let Outbound { url, body: payload, native_key_header, headers } =
            provider.request(backend, upstream_model, endpoint, body, options.omit_usage_option)?;
        let refused = |reason: egress::Refused| AttemptError::Refused(format!("backend '{}': {reason}", backend.name));
        let url = reqwest::Url::parse(&url).map_err(|e| refused(egress::Refused(format!("invalid URL {url}: {e}"))))?;
        self.egress.check_url(&url).map_err(refused)?;
        let secret = self.egress.secret(backend).map_err(|reason| AttemptError::Refused(reason.0))?;
        let client = self.client(backend.timeouts.connect_ms)?;
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .body(payload);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(secret) = secret {
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
            Ok(Err(error)) => match egress::refusal_in(&error) {
                Some(reason) => return Err(refused(reason.clone())),
                None => return Err(AttemptError::Connect(error_chain(&error))),
            },
            Ok(Ok(response)) => response,
        };
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
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use policy_engine::base_url::BaseUrlPolicy;
    use policy_engine::config::SecretSpec;
    use policy_engine::secret_ref::SecretEnvPolicy;
    use serde_json::json;

    use super::egress::{Environment, Lookup};
    use super::*;

    /// A local upstream that counts the connections it accepts and records each request's credentials.
    struct Upstream {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        credentials: Arc<Mutex<Vec<String>>>,
    }

    impl Upstream {
        async fn start(status: StatusCode, location: Option<String>) -> Upstream {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let credentials = Arc::new(Mutex::new(Vec::new()));
            let counted = connections.clone();
            let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
            let recorded = credentials.clone();
            let app = axum::Router::new().fallback(move |headers: HeaderMap| {
                let (recorded, location) = (recorded.clone(), location.clone());
                async move {
                    for name in ["authorization", "api-key"] {
                        if let Some(value) = headers.get(name) {
                            recorded.lock().unwrap().push(format!("{name}: {}", value.to_str().unwrap()));
                        }
                    }
                    let mut response = (status, axum::Json(json!({"choices": []}))).into_response();
                    if let Some(location) = location {
                        response.headers_mut().insert("location", location.parse().unwrap());
                    }
                    response
                }
            });
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Upstream { addr, connections, credentials }
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn credentials(&self) -> Vec<String> {
            self.credentials.lock().unwrap().clone()
        }
    }

    /// A resolver that knows only `entries`.
    fn dns(entries: &[(&str, &[&str])]) -> Lookup {
        let map: HashMap<String, Vec<IpAddr>> = entries
            .iter()
            .map(|(name, addresses)| (name.to_string(), addresses.iter().map(|a| a.parse().unwrap()).collect()))
            .collect();
        Arc::new(move |name: String| {
            let found = map.get(&name).cloned().ok_or_else(|| std::io::Error::other(format!("no such name {name}")));
            Box::pin(async move { found })
        })
    }

    fn environment(variables: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = variables.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Arc::new(move |name: &str| map.get(name).cloned())
    }

    fn upstreams(allowlist: &str, lookup: Lookup) -> Upstreams {
        // As `crate::run` does: reqwest is built without a default TLS crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let egress = Egress::new(BaseUrlPolicy::from_list(allowlist).unwrap(), SecretEnvPolicy::default())
            .with_lookup(lookup)
            .with_environment(environment(&[("GATEWAY_NODE_TOKEN", "node-secret"), ("PROVIDER_KEY", "sk-provider")]));
        Upstreams::new(egress)
    }

    fn backend(base_url: &str, auth: BackendAuth, secret: Option<SecretSpec>) -> BackendSpec {
        let mut spec: BackendSpec =
            serde_json::from_value(json!({"name": "b", "kind": "openai", "base_url": base_url})).unwrap();
        spec.auth = auth;
        spec.secret = secret;
        spec
    }

    async fn send(upstreams: &Upstreams, backend: &BackendSpec) -> Result<reqwest::Response, AttemptError> {
        let body = json!({"messages": [{"role": "user", "content": "hi"}]});
        let options = SendOptions { request_id: "test", omit_usage_option: false };
        upstreams.send(backend, "m", Endpoint::ChatCompletions, body.as_object().unwrap(), options).await
    }

    fn refusal(result: Result<reqwest::Response, AttemptError>) -> String {
        match result {
            Err(AttemptError::Refused(message)) => message,
            Err(other) => panic!("expected a refusal, got {}", other.describe()),
            Ok(response) => panic!("expected a refusal, got HTTP {}", response.status()),
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_metadata_address_is_never_connected_to() {
        let up =
            upstreams("", dns(&[("meta.test", &["169.254.169.254"]), ("mapped.test", &["::ffff:169.254.169.254"])]));
        let refused = refusal(send(&up, &backend("http://meta.test/v1", BackendAuth::None, None)).await);
        assert_eq!(
            refused,
            "backend 'b': meta.test resolves only to refused addresses: 169.254.169.254 is a link-local or cloud \
             metadata address, which is always refused"
        );
        let refused = refusal(send(&up, &backend("http://mapped.test/v1", BackendAuth::None, None)).await);
        assert!(refused.contains("169.254.169.254 is a link-local or cloud metadata address"), "{refused}");
    }

    #[tokio::test]
    async fn refused_addresses_are_dropped_and_the_others_used() {
        let server = Upstream::start(StatusCode::OK, None).await;
        // A rebinding answer: the metadata address first, a permitted one after it.
        let up = upstreams("", dns(&[("mixed.test", &["169.254.169.254", "127.0.0.1"])]));
        let url = format!("http://mixed.test:{}/v1", server.addr.port());
        let response = send(&up, &backend(&url, BackendAuth::None, None)).await.map_err(|e| e.describe()).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn a_name_the_allowlist_does_not_name_may_only_reach_its_networks() {
        let server = Upstream::start(StatusCode::OK, None).await;
        let url = format!("http://local.test:{}/v1", server.addr.port());
        let lookup = dns(&[("local.test", &["127.0.0.1", "::1"])]);
        let up = upstreams("10.0.0.0/8", lookup.clone());
        let refused = refusal(send(&up, &backend(&url, BackendAuth::None, None)).await);
        assert_eq!(
            refused,
            "backend 'b': local.test resolves only to refused addresses: 127.0.0.1 is not in the backend allowlist \
             (10.0.0.0/8); ::1 is not in the backend allowlist (10.0.0.0/8)"
        );
        assert_eq!(server.connections(), 0, "refused before connecting");
        // Named by the allowlist, the same host may use its addresses; inside a listed network too.
        for allowlist in ["10.0.0.0/8,local.test", "10.0.0.0/8,*.test", "127.0.0.0/8"] {
            let up = upstreams(allowlist, lookup.clone());
            let response = send(&up, &backend(&url, BackendAuth::None, None)).await.map_err(|e| e.describe()).unwrap();
            assert_eq!(response.status(), 200, "{allowlist}");
        }
        // Without networks in the list, an unnamed host is refused before any lookup.
        let up = upstreams("api.openai.com", dns(&[]));
        let refused = refusal(send(&up, &backend(&url, BackendAuth::None, None)).await);
        assert_eq!(refused, "backend 'b': local.test is not in the backend allowlist (api.openai.com)");
    }

    #[tokio::test]
    async fn ip_literals_and_metadata_names_are_checked_before_connecting() {
        let server = Upstream::start(StatusCode::OK, None).await;
        let port = server.addr.port();
        let up = upstreams("10.0.0.0/8", dns(&[]));
        for (url, expected) in [
            (format!("http://127.0.0.1:{port}/v1"), "127.0.0.1 is not in the backend allowlist (10.0.0.0/8)"),
            (format!("http://0x7f000001:{port}/v1"), "127.0.0.1 is not in the backend allowlist (10.0.0.0/8)"),
            (
                format!("http://[::ffff:169.254.169.254]:{port}/v1"),
                "169.254.169.254 is a link-local or cloud metadata address, which is always refused",
            ),
            (
                "http://metadata.google.internal./v1".to_owned(),
                "metadata.google.internal is a link-local or cloud metadata address, which is always refused",
            ),
        ] {
            let refused = refusal(send(&up, &backend(&url, BackendAuth::None, None)).await);
            assert_eq!(refused, format!("backend 'b': {expected}"), "{url}");
        }
        assert_eq!(server.connections(), 0);
        // With an empty allowlist loopback stays reachable (local Ollama, vLLM, the tests' mock upstreams).
        let up = upstreams("", dns(&[]));
        let url = format!("http://127.0.0.1:{port}/v1");
        let response = send(&up, &backend(&url, BackendAuth::None, None)).await.map_err(|e| e.describe()).unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn only_references_within_the_prefix_are_read_and_sent() {
        let server = Upstream::start(StatusCode::OK, None).await;
        let url = format!("http://127.0.0.1:{}/v1", server.addr.port());
        let up = upstreams("", dns(&[]));
        let with_ref =
            |reference: &str| backend(&url, BackendAuth::Bearer, Some(SecretSpec::Ref(reference.to_owned())));
        for (reference, expected) in [
            (
                "env:GATEWAY_NODE_TOKEN",
                "backend 'b': this data plane refuses its secret reference: env:GATEWAY_NODE_TOKEN names one of the \
                 gateway's own settings (GATEWAY_*, DATABASE_URL, PG*), which a backend may never reference",
            ),
            (
                "env:OPENAI_API_KEY",
                "backend 'b': this data plane refuses its secret reference: env:OPENAI_API_KEY is not a variable \
                 backends may reference: the name must start with PROVIDER_ (GATEWAY_SECRET_ENV_PREFIX)",
            ),
            (
                "env:PROVIDER_MISSING",
                "backend 'b': its secret env:PROVIDER_MISSING is not set in this data plane's environment",
            ),
        ] {
            assert_eq!(refusal(send(&up, &with_ref(reference)).await), expected);
        }
        assert_eq!(server.connections(), 0, "nothing is sent for a refused reference");
        let response = send(&up, &with_ref("env:PROVIDER_KEY")).await.map_err(|e| e.describe()).unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(server.credentials(), ["authorization: Bearer sk-provider"]);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let elsewhere = Upstream::start(StatusCode::OK, None).await;
        let target = format!("http://127.0.0.1:{}/v1/chat/completions", elsewhere.addr.port());
        let redirecting = Upstream::start(StatusCode::TEMPORARY_REDIRECT, Some(target.clone())).await;
        let up = upstreams("", dns(&[]));
        let url = format!("http://127.0.0.1:{}/v1", redirecting.addr.port());
        let header = BackendAuth::Header { header: "api-key".to_owned() };
        let spec = backend(&url, header, Some(SecretSpec::Value("sk-custom-header".to_owned())));
        match send(&up, &spec).await {
            Err(AttemptError::Redirect { status: 307, location }) => assert_eq!(location.as_deref(), Some(&*target)),
            Err(other) => panic!("expected a redirect failure, got {}", other.describe()),
            Ok(response) => panic!("expected a redirect failure, got HTTP {}", response.status()),
        }
        assert_eq!(redirecting.credentials(), ["api-key: sk-custom-header"]);
        assert_eq!(elsewhere.connections(), 0, "the redirect target never hears of the request or its secret");
    }
}
