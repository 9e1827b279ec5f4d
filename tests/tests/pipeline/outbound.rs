//! Outbound calls through the data plane in process: what a backend may make it send where (issue 10, findings 4
//! and 5). Redirects are not followed, and a host is checked on the addresses it resolves to. Finding 3 (secret
//! references outside the data plane's prefixes) needs a process's own environment: `e2e/outbound.rs`.

use gateway_e2e::MockUpstream;
use gateway_e2e::pipeline::{Pipeline, Snapshot};
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn chat(dp: &Pipeline, key: &str, model: &str) -> reqwest::Response {
    dp.post(
        "/v1/chat/completions",
        Some(key),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

/// `backend` with a model and an alias of the same name over it; then an alias `chain` over `models` in order.
fn backend_with_alias(config: &mut Snapshot, backend: Value) {
    let name = backend["name"].as_str().unwrap().to_owned();
    config.backend(backend);
    config.model(json!({"name": format!("{name}-model"), "backend": name, "upstream_model": "x",
        "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "1"}}));
    config.alias(json!({"name": name, "candidates": [{"model": format!("{name}-model")}]}));
}

fn chain(config: &mut Snapshot, name: &str, backends: &[&str]) {
    let candidates: Vec<Value> = backends.iter().map(|b| json!({"model": format!("{b}-model")})).collect();
    config.alias(json!({"name": name, "candidates": candidates}));
}

/// Finding 4: an allowed upstream answering 307 to another host had the request, and a secret sent in a custom
/// header, re-posted there. Now the redirect is the attempt's failure (502 `upstream_error` naming it, or the
/// next candidate), and the other host hears nothing.
#[tokio::test]
async fn an_upstream_redirect_is_not_followed() {
    let test = "outbound_redirect";
    let redirecting = MockUpstream::in_process("redirecting");
    let elsewhere = MockUpstream::in_process("elsewhere");
    let fallback = MockUpstream::in_process("fallback");
    let mut config = Snapshot::new();
    backend_with_alias(
        &mut config,
        json!({"name": "redirecting", "kind": "openai", "base_url": redirecting.base_url(),
               "auth": {"type": "header", "header": "api-key"}, "secret": {"value": "sk-custom-header"}}),
    );
    backend_with_alias(&mut config, json!({"name": "fallback", "kind": "openai", "base_url": fallback.base_url()}));
    chain(&mut config, "redirect-then-fallback", &["redirecting", "fallback"]);
    let key = config.key(json!({"name": "app"}));
    let dp = Pipeline::start(test, &config).await;

    let target = format!("{}/chat/completions", elsewhere.base_url());
    redirecting.set_default(json!({"status": 307, "location": target})).await;
    let (status, body) = json_of(chat(&dp, &key, "redirecting").await).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], json!("upstream_error"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("HTTP 307 redirect to {target}, not followed")), "{message}");

    // A redirect fails over like a 5xx.
    let response = chat(&dp, &key, "redirect-then-fallback").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-backend"], "fallback");

    let asked = redirecting.requests().await;
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|r| r["api_key"] == json!("sk-custom-header")));
    assert!(elsewhere.requests().await.is_empty(), "the redirect target never hears of the request or its secret");
}

/// Finding 5: the host check was by name only. A data plane checks the addresses it connects to: with an
/// allowlist of networks, a name it does not list may use only addresses inside them, and an IP literal is
/// checked before connecting. Here `localhost` resolves to loopback, outside `10.0.0.0/8`.
#[tokio::test]
async fn a_host_that_resolves_outside_the_data_planes_allowlist_is_never_connected_to() {
    let test = "outbound_resolved";
    let mock = MockUpstream::in_process("m");
    let port = mock.addr.port();
    let mut config = Snapshot::new();
    for (name, url) in
        [("by-name", format!("http://localhost:{port}/v1")), ("literal", format!("http://127.0.0.1:{port}/v1"))]
    {
        backend_with_alias(&mut config, json!({"name": name, "kind": "openai", "base_url": url}));
    }
    let key = config.key(json!({"name": "app"}));
    let strict = Pipeline::start_with(test, &config, &["--backend-allowlist=10.0.0.0/8"]).await;

    for (alias, expected) in [
        ("by-name", "backend 'by-name': localhost resolves only to refused addresses: "),
        ("literal", "backend 'literal': 127.0.0.1 is not in the backend allowlist (10.0.0.0/8)"),
    ] {
        let (status, body) = json_of(chat(&strict, &key, alias).await).await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["code"], json!("backend_misconfigured"));
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("127.0.0.1 is not in the backend allowlist (10.0.0.0/8)"), "{message}");
    }
    assert!(mock.requests().await.is_empty(), "nothing reached the upstream");

    // The same backends through a data plane whose allowlist names them.
    let allowing = Pipeline::start_with(test, &config, &["--backend-allowlist=10.0.0.0/8,localhost,127.0.0.1"]).await;
    for alias in ["by-name", "literal"] {
        let response = chat(&allowing, &key, alias).await;
        assert_eq!(response.status(), 200, "{alias}");
    }
    assert_eq!(mock.requests().await.len(), 2);
}
