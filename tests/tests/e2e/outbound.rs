//! Outbound calls through the real data plane: what a backend may make it send where (issue 10, findings 3 to 5).
//! Redirects are not followed, a secret reference outside the data plane's prefixes is never read (not even when
//! a snapshot carries it), and a host is checked on the addresses it resolves to.

use gateway_e2e::*;
use gateway_proto::{convert, v1};
use prost::Message;
use serde_json::{Value, json};
use sqlx::PgPool;

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn chat(dp: &DataPlane, key: &str, model: &str) -> reqwest::Response {
    dp.post(
        "/v1/chat/completions",
        Some(key),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

/// `backend` with a model and an alias of the same name over it; then an alias `chain` over `models` in order.
async fn backend_with_alias(cp: &ControlPlane, backend: Value) {
    let name = backend["name"].as_str().unwrap().to_owned();
    cp.create("backends", backend).await;
    cp.create(
        "models",
        json!({"name": format!("{name}-model"), "backend": name, "upstream_model": "x",
               "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "1"}}),
    )
    .await;
    cp.create("aliases", json!({"name": name, "candidates": [{"model": format!("{name}-model")}]})).await;
}

async fn chain(cp: &ControlPlane, name: &str, backends: &[&str]) {
    let candidates: Vec<Value> = backends.iter().map(|b| json!({"model": format!("{b}-model")})).collect();
    cp.create("aliases", json!({"name": name, "candidates": candidates})).await;
}

async fn key(cp: &ControlPlane) -> String {
    let (status, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    assert_eq!(status, 201, "{created}");
    created["secret"].as_str().unwrap().to_owned()
}

async fn version(cp: &ControlPlane) -> u64 {
    cp.fleet().await["config_version"].as_u64().unwrap()
}

/// Finding 4: an allowed upstream answering 307 to another host had the request, and a secret sent in a custom
/// header, re-posted there. Now the redirect is the attempt's failure (502 `upstream_error` naming it, or the
/// next candidate), and the other host hears nothing.
#[sqlx::test(migrations = false)]
async fn an_upstream_redirect_is_not_followed(pool: PgPool) {
    let test = "outbound_redirect";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let redirecting = MockUpstream::start(test, "redirecting").await;
    let elsewhere = MockUpstream::start(test, "elsewhere").await;
    let fallback = MockUpstream::start(test, "fallback").await;
    backend_with_alias(
        &cp,
        json!({"name": "redirecting", "kind": "openai", "base_url": redirecting.base_url(),
               "auth": {"type": "header", "header": "api-key"}, "secret": {"value": "sk-custom-header"}}),
    )
    .await;
    backend_with_alias(&cp, json!({"name": "fallback", "kind": "openai", "base_url": fallback.base_url()})).await;
    chain(&cp, "redirect-then-fallback", &["redirecting", "fallback"]).await;
    let key = key(&cp).await;
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    dp.wait_for_version(version(&cp).await).await;

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

/// Finding 3: a backend referencing `env:GATEWAY_NODE_TOKEN` made the data plane send its node token upstream.
/// The control plane refuses such a write; this shows the data plane refuses it too when a snapshot carries it
/// anyway (an older control plane, a snapshot file): 502 `backend_misconfigured` naming the backend, logged, and
/// nothing sent.
#[sqlx::test(migrations = false)]
async fn a_snapshot_that_references_the_node_token_never_sends_it(pool: PgPool) {
    let test = "outbound_secret_ref";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mock = MockUpstream::start(test, "m").await;
    for (name, reference) in [("leak", "env:PROVIDER_E2E_UNUSED"), ("good", "env:PROVIDER_E2E_KEY")] {
        backend_with_alias(
            &cp,
            json!({"name": name, "kind": "openai", "base_url": mock.base_url(), "secret": {"ref": reference}}),
        )
        .await;
    }
    chain(&cp, "leak-then-good", &["leak", "good"]).await;
    let key = key(&cp).await;
    let provider_key = ("PROVIDER_E2E_KEY".to_owned(), "sk-e2e-provider".to_owned());
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = vec![provider_key.clone()];
    let dp = DataPlane::start(&config);
    dp.wait_for_version(version(&cp).await).await;
    let persisted = dp.state_dir.join("last-good.snapshot.pb");
    eventually(std::time::Duration::from_secs(10), "the persisted snapshot", || async {
        persisted.exists().then_some(())
    })
    .await;

    // The same snapshot, its `leak` backend now referencing the node token (re-hashed: it compiles).
    let mut snapshot = v1::Snapshot::decode(std::fs::read(&persisted).unwrap().as_slice()).unwrap();
    let content = snapshot.content.as_mut().unwrap();
    let leak = content.backends.iter_mut().find(|b| b.name == "leak").unwrap();
    leak.secret = Some(v1::backend::Secret::SecretRef("env:GATEWAY_NODE_TOKEN".to_owned()));
    snapshot.content_hash = convert::content_hash(content);
    let tampered = std::env::temp_dir().join(format!("gateway-e2e-{test}-{}.pb", std::process::id()));
    std::fs::write(&tampered, snapshot.encode_to_vec()).unwrap();
    let mut alone = DataPlaneConfig::new(test, "dp-file", "http://127.0.0.1:9");
    alone.snapshot = Some(tampered.clone());
    alone.env = vec![provider_key];
    let from_file = DataPlane::start(&alone);
    from_file.wait_for_version(snapshot.version).await;

    let response = chat(&from_file, &key, "leak").await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], json!("backend_misconfigured"));
    let expected = "backend 'leak': this data plane refuses its secret reference: env:GATEWAY_NODE_TOKEN names one \
                    of the gateway's own settings";
    assert!(body["error"]["message"].as_str().unwrap().contains(expected), "{body}");
    // Another candidate still serves, with its own secret.
    let response = chat(&from_file, &key, "leak-then-good").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-backend"], "good");

    let seen = mock.requests().await;
    assert_eq!(seen.len(), 1, "only the good backend's request: {seen:?}");
    assert_eq!(seen[0]["authorization"], json!("Bearer sk-e2e-provider"));
    assert!(!Value::Array(seen).to_string().contains(NODE_TOKEN), "the node token reached the upstream");
    let log = std::fs::read_to_string(&from_file.log).unwrap();
    assert!(log.contains(expected), "the refusal is logged\n{}", log_tail(&from_file.log));
    let _ = std::fs::remove_file(&tampered);
}

/// Finding 5: the host check was by name only. A data plane checks the addresses it connects to: with an
/// allowlist of networks, a name it does not list may use only addresses inside them, and an IP literal is
/// checked before connecting. Here `localhost` resolves to loopback, outside `10.0.0.0/8`.
#[sqlx::test(migrations = false)]
async fn a_host_that_resolves_outside_the_data_planes_allowlist_is_never_connected_to(pool: PgPool) {
    let test = "outbound_resolved";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mock = MockUpstream::start(test, "m").await;
    let port = mock.addr.port();
    for (name, url) in
        [("by-name", format!("http://localhost:{port}/v1")), ("literal", format!("http://127.0.0.1:{port}/v1"))]
    {
        backend_with_alias(&cp, json!({"name": name, "kind": "openai", "base_url": url})).await;
    }
    let key = key(&cp).await;
    let current = version(&cp).await;
    let allowlist = |list: &str| vec![("GATEWAY_BACKEND_ALLOWLIST".to_owned(), list.to_owned())];
    let mut config = DataPlaneConfig::new(test, "dp-strict", &cp.grpc_url());
    config.env = allowlist("10.0.0.0/8");
    let strict = DataPlane::start(&config);
    strict.wait_for_version(current).await;

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
    let mut config = DataPlaneConfig::new(test, "dp-allowing", &cp.grpc_url());
    config.env = allowlist("10.0.0.0/8,localhost,127.0.0.1");
    let allowing = DataPlane::start(&config);
    allowing.wait_for_version(current).await;
    for alias in ["by-name", "literal"] {
        let response = chat(&allowing, &key, alias).await;
        assert_eq!(response.status(), 200, "{alias}");
    }
    assert_eq!(mock.requests().await.len(), 2);
}
