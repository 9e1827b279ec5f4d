//! Rate limits across real processes (`docs/rate-limits.md`): a control plane, two data planes and a mock upstream
//! that counts what it receives per wall-clock second. The control plane tells each data plane its share of the
//! backend's requests per second (`RateShare`); under 64 concurrent clients spread over both, the upstream never
//! receives more than the documented bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The backend's limit: 10 requests per second, 5 for each of the two data planes.
const RPS: u64 = 10;

async fn chat(dp: &GatewayApi, key: &str) -> (u16, Value) {
    let body = json!({"model": "paced", "messages": [{"role": "user", "content": "hi"}]});
    let response = dp.post("/v1/chat/completions", Some(key), &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrations = "../migrations")]
async fn two_data_planes_keep_a_backends_requests_per_second_within_the_bound(pool: PgPool) {
    let test = "rate_limits_two_planes";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mock = MockUpstream::start(test, "m0").await;
    cp.create(
        "backends",
        json!({"name": "up0", "kind": "openai", "base_url": mock.base_url(),
        "secret": {"value": "sk-test"}, "rate_limit": {"rps": RPS}}),
    )
    .await;
    cp.create(
        "models",
        json!({"name": "model0", "backend": "up0", "upstream_model": "upstream-0",
        "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}),
    )
    .await;
    cp.create("aliases", json!({"name": "paced", "candidates": [{"model": "model0"}]})).await;
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let dps: Vec<DataPlane> =
        ["dp-a", "dp-b"].iter().map(|n| DataPlane::start(&DataPlaneConfig::new(test, n, &cp.grpc_url()))).collect();
    for dp in &dps {
        dp.wait_for_version(version).await;
    }
    // Each data plane holds its share of two: a refusal says so.
    for dp in &dps {
        eventually(Duration::from_secs(30), "a share of two on each data plane", || async {
            for _ in 0..=RPS {
                let (status, body) = chat(dp, &key).await;
                let message = body["error"]["message"].as_str().unwrap_or_default();
                if status == 429 && message.contains("this gateway's share is 5,") {
                    return Some(());
                }
            }
            None
        })
        .await;
    }

    // 64 clients, 32 on each data plane, each sending one request after another for about four seconds.
    tokio::time::sleep(Duration::from_millis(1_100)).await; // past the warm-up's second
    let before = mock.requests().await.len() as u64;
    let started = std::time::SystemTime::now();
    let until = Instant::now() + Duration::from_secs(4);
    let apis: Vec<Arc<GatewayApi>> = dps.iter().map(|dp| Arc::new(GatewayApi::new(dp.addr))).collect();
    let mut clients = Vec::new();
    for client in 0..64 {
        let (api, key) = (apis[client % 2].clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = BTreeMap::<u16, u64>::new();
            while Instant::now() < until {
                *statuses.entry(chat(&api, &key).await.0).or_default() += 1;
            }
            statuses
        }));
    }
    let mut statuses = BTreeMap::<u16, u64>::new();
    for client in clients {
        for (status, n) in client.await.unwrap() {
            *statuses.entry(status).or_default() += n;
        }
    }
    let ended = std::time::SystemTime::now();
    let unix = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let served = mock.requests().await.len() as u64 - before;
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200, 429],
        "served or refused, nothing else: {statuses:?}"
    );
    assert_eq!(statuses[&200], served, "every 200 is one upstream request");

    // The bound (docs/rate-limits.md): admitted per aligned second at most the shares' sum, RPS. The load's
    // admissions fall in the seconds it spans.
    let windows = unix(ended) - unix(started) + 1;
    assert!(served <= RPS * windows, "{served} requests in {windows} aligned seconds: more than {RPS} a second");
    // Measured at the upstream, a request admitted at a second's end may arrive in the next: at most twice the limit
    // in any one second.
    let stats = mock.stats().await;
    let per_second: BTreeMap<u64, u64> = serde_json::from_value(stats["per_second"].clone()).unwrap();
    eprintln!("served {served} in {windows} aligned seconds; statuses {statuses:?}; per second {per_second:?}");
    for (second, count) in per_second.range(unix(started)..=unix(ended)) {
        assert!(*count <= 2 * RPS, "second {second}: {count} requests: {per_second:?}");
    }
}
