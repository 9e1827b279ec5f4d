//! Circuit breakers and health checks across the planes (issue #13): the breaker's and health check's settings
//! written through the admin API reach a data plane process over gRPC and are enforced there. The behaviours
//! themselves (latency trips, least_latency, probes) are tested in process, in `pipeline/resilience.rs`.

use gateway_e2e::*;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

/// A backend that accepts connections and never answers: the first request fails over after its first-byte
/// timeout, the breaker opens, and later requests skip it (its mock receives nothing more); a second backend whose
/// health check fails is never sent a chat request at all.
#[sqlx::test(migrations = false)]
async fn breaker_and_health_check_settings_written_through_the_admin_api_are_enforced(pool: PgPool) {
    let test = "resilience_e2e";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let (hung, dead, healthy) = (
        MockUpstream::start(test, "hung").await,
        MockUpstream::start(test, "dead").await,
        MockUpstream::start(test, "healthy").await,
    );
    hung.set_default(json!({"delay_ms": 600_000})).await;
    dead.set_models(json!({"status": 500})).await;
    let breaker = json!({"failure_threshold": 1, "open_ms": 600_000, "max_open_ms": 1_200_000,
        "error_rate": {"percent": 50, "window_ms": 10_000, "min_requests": 10},
        "latency": {"p99_ms": 5000, "window_ms": 10_000, "min_requests": 10}});
    let backends = [
        json!({"name": "hung", "kind": "openai", "base_url": hung.base_url(), "circuit_breaker": breaker,
            "timeouts": {"connect_ms": 1000, "first_byte_ms": 300, "total_ms": 10_000}}),
        json!({"name": "dead", "kind": "openai", "base_url": dead.base_url(),
            "health_check": {"interval_ms": 100, "timeout_ms": 500, "failure_threshold": 1}}),
        json!({"name": "healthy", "kind": "openai", "base_url": healthy.base_url()}),
    ];
    for backend in backends {
        let name = backend["name"].as_str().unwrap().to_owned();
        cp.create("backends", backend).await;
        cp.create(
            "models",
            json!({"name": format!("{name}-model"), "backend": name, "upstream_model": "x",
            "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "1"}}),
        )
        .await;
    }
    let (status, stored) = cp.call("GET", "/backends/hung", None).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["circuit_breaker"]["latency"]["p99_ms"], 5000, "{stored}");
    let (_, stored) = cp.call("GET", "/backends/dead", None).await;
    assert_eq!(stored["health_check"]["path"], "/models", "the default path: {stored}");
    let candidates = ["hung", "dead", "healthy"].map(|b| json!({"model": format!("{b}-model")}));
    cp.create("aliases", json!({"name": "chain", "candidates": candidates})).await;
    let (status, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    assert_eq!(status, 201, "{created}");
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();

    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    dp.wait_for_version(version).await;
    eventually(Duration::from_secs(20), "two health checks of the dead backend", || async {
        (dead.stats().await["models_requests"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    for _ in 0..4 {
        let body = json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]});
        let response = dp.post("/v1/chat/completions", Some(&key), &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-gateway-backend"], "healthy");
    }
    assert_eq!(hung.requests().await.len(), 1, "only the first request waited on the hung backend");
    assert_eq!(dead.requests().await.len(), 0, "the health check opened the dead backend's breaker first");

    // The fleet sees it: the data plane reports both open breakers to the control plane, and exports them.
    let health = |backend: &'static str| {
        let cp = &cp;
        async move {
            let (status, body) = cp.call("GET", &format!("/backends/{backend}/health"), None).await;
            assert_eq!(status, 200, "{body}");
            body["nodes"].as_array().and_then(|nodes| nodes.first().cloned()).unwrap_or_default()
        }
    };
    let seen = Duration::from_secs(20);
    let hung_view = eventually(seen, "the hung backend open in the fleet", || async {
        let view = health("hung").await;
        (view["state"] == "open").then_some(view)
    })
    .await;
    assert_eq!(hung_view["node_id"], "dp", "{hung_view}");
    assert!(hung_view["since"].is_string() && hung_view["reason"].is_string(), "{hung_view}");
    let dead_view = eventually(seen, "the dead backend open in the fleet", || async {
        let view = health("dead").await;
        (view["state"] == "open").then_some(view)
    })
    .await;
    assert_eq!(dead_view["last_check"]["ok"], false, "{dead_view}");
    let healthy_view = health("healthy").await;
    assert!(healthy_view.is_null() || healthy_view["state"] == "closed", "{healthy_view}");
    let fleet = cp.fleet().await;
    let node = fleet["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "dp").unwrap().clone();
    let open: Vec<&str> = node["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "open")
        .map(|b| b["backend"].as_str().unwrap())
        .collect();
    assert_eq!(open, ["dead", "hung"], "{node}");
    let metrics = dp.client().get(dp.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for backend in ["dead", "hung"] {
        let series = format!("gateway_backend_breaker_state{{backend=\"{backend}\",model=\"\",state=\"open\"}} 1");
        assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
    }

    // The dead backend recovers: its next passing health check closes the breaker, the fleet sees it closed, and it
    // serves again (ahead of `healthy` in the alias; `hung` stays open).
    dead.set_models(json!({"status": 200})).await;
    eventually(seen, "the recovered backend closed in the fleet", || async {
        (health("dead").await["state"] == "closed").then_some(())
    })
    .await;
    let body = json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}]});
    let response = dp.post("/v1/chat/completions", Some(&key), &body).await;
    assert_eq!((response.status().as_u16(), response.headers()["x-gateway-backend"].to_str().unwrap()), (200, "dead"));
    assert_eq!(hung.requests().await.len(), 1, "the hung backend is still skipped");
}
