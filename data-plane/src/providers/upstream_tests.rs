//! Tests of sending attempts (`upstream.rs`).

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
    let no_trace = reqwest::header::HeaderMap::new();
    let options = SendOptions { request_id: "test", omit_usage_option: false, trace_headers: &no_trace };
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
    let up = upstreams("", dns(&[("meta.test", &["169.254.169.254"]), ("mapped.test", &["::ffff:169.254.169.254"])]));
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
    let with_ref = |reference: &str| backend(&url, BackendAuth::Bearer, Some(SecretSpec::Ref(reference.to_owned())));
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

#[test]
fn retry_after_reads_seconds_and_http_dates_and_ignores_junk() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let wait = |value: &str| retry_after(value, now);
    assert_eq!(wait("120"), Some(Duration::from_secs(120)));
    assert_eq!(wait(" 0.25 "), Some(Duration::from_millis(250)));
    assert_eq!(wait("0"), Some(Duration::ZERO));
    assert_eq!(wait("99999999999"), Some(Duration::from_secs(86_400)), "clamped to a day");
    // The three forms of RFC 9110's HTTP-date, ten seconds ahead.
    for ahead in ["Sun, 06 Nov 1994 08:49:47 GMT", "Sunday, 06-Nov-94 08:49:47 GMT", "Sun Nov  6 08:49:47 1994"] {
        assert_eq!(wait(ahead), Some(Duration::from_secs(10)), "{ahead}");
    }
    assert_eq!(wait("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "now");
    assert_eq!(wait("Sat, 05 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO), "a date in the past: no wait");
    assert_eq!(wait("Fri, 06 Nov 2099 08:49:37 GMT"), Some(Duration::from_secs(86_400)), "clamped to a day");
    assert_eq!(retry_after("Thu, 01 Jan 1970 00:01:00 GMT", SystemTime::UNIX_EPOCH), Some(Duration::from_secs(60)));
    for junk in
        ["", " ", "-1", "1e3", "inf", "NaN", "1.2.3", "soon", "Sun, 06 Nov 1994 25:00:00 GMT", "Sun, 06 Nov 1994"]
    {
        assert_eq!(wait(junk), None, "{junk:?}");
    }
}
