//! Outbound calls through the real data plane: a secret reference outside the data plane's prefixes is never read,
//! not even when a snapshot carries it (issue 10, finding 3). It stays a real process because the reference names
//! the data plane's own environment and the refusal is read in its log. Findings 4 and 5 (redirects not followed,
//! hosts checked on their resolved addresses) are tested in process (`pipeline/outbound.rs`).

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
