//! Circuit breakers, health checks and the `least_latency` strategy (issue #13), through the data plane in process
//! against two in-process mock upstreams. Assertions are on which backend served (`x-gateway-backend`) and on what
//! each mock received, never on timing.

use std::time::Duration;

use gateway_e2e::pipeline::{Pipeline, Snapshot};
use gateway_e2e::*;
use serde_json::{Value, json};

/// Two mock upstreams `m0`, `m1` behind backends `up0` (with `up0` settings merged in) and `up1`, models `model0` and
/// `model1`, and the alias `pair` (both, in order, with `strategy`).
struct Gateway {
    mocks: Vec<MockUpstream>,
    dp: Pipeline,
    key: String,
}

impl Gateway {
    /// The mocks first, so a test can program them before the data plane (and its health checks) starts.
    fn mocks() -> Vec<MockUpstream> {
        (0..2).map(|i| MockUpstream::in_process(&format!("m{i}"))).collect()
    }

    async fn start(test: &str, mocks: Vec<MockUpstream>, up0: Value, strategy: &str) -> Gateway {
        let mut config = Snapshot::new();
        for (i, mock) in mocks.iter().enumerate() {
            let mut backend = json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url(),
                "secret": {"value": format!("sk-up{i}")},
                "timeouts": {"connect_ms": 1000, "first_byte_ms": 3000, "total_ms": 10000}});
            if i == 0 {
                backend.as_object_mut().unwrap().extend(up0.as_object().unwrap().clone());
            }
            config.backend(backend);
            config.model(json!({"name": format!("model{i}"), "backend": format!("up{i}"),
                "upstream_model": format!("upstream-{i}"), "capabilities": {"chat": true},
                "pricing": {"input": "1", "output": "2"}}));
        }
        config.alias(json!({"name": "pair", "strategy": strategy,
            "candidates": [{"model": "model0"}, {"model": "model1"}]}));
        let key = config.key(json!({"name": "app"}));
        let dp = Pipeline::start(test, &config).await;
        Gateway { mocks, dp, key }
    }

    /// A chat completion of `pair`: its status and the backend that served it.
    async fn chat(&self) -> (u16, String) {
        let body = json!({"model": "pair", "messages": [{"role": "user", "content": "hi"}]});
        let response = self.dp.post("/v1/chat/completions", Some(&self.key), &body).await;
        let backend = response.headers().get("x-gateway-backend").and_then(|v| v.to_str().ok()).unwrap_or("");
        (response.status().as_u16(), backend.to_owned())
    }

    /// The backends that served `n` chat completions, in order (each must succeed).
    async fn served(&self, n: usize) -> Vec<String> {
        let mut served = Vec::new();
        for _ in 0..n {
            let (status, backend) = self.chat().await;
            assert_eq!(status, 200, "served by {backend:?}");
            served.push(backend);
        }
        served
    }

    /// Chat requests mock `i` received so far.
    async fn received(&self, i: usize) -> usize {
        self.mocks[i].requests().await.len()
    }
}

fn all(backend: &str, n: usize) -> Vec<String> {
    vec![backend.to_owned(); n]
}

#[tokio::test]
async fn a_backend_that_never_answers_is_skipped_once_its_breaker_opens_and_probed_back_when_it_recovers() {
    let mocks = Gateway::mocks();
    mocks[0].set_default(json!({"delay_ms": 600_000})).await;
    let up0 = json!({"timeouts": {"connect_ms": 1000, "first_byte_ms": 300, "total_ms": 10000},
        "circuit_breaker": {"failure_threshold": 1, "open_ms": 3000}});
    let gw = Gateway::start("breaker_hung_backend", mocks, up0, "failover").await;

    assert_eq!(gw.served(1).await, all("up1", 1), "the first request fails over after up0's first-byte timeout");
    assert_eq!(gw.received(0).await, 1);
    assert_eq!(gw.served(3).await, all("up1", 3));
    assert_eq!(gw.received(0).await, 1, "open: later requests skip up0 without sending it anything");

    gw.mocks[0].set_default(json!({})).await;
    eventually(Duration::from_secs(30), "a half-open probe to reach the recovered up0", || async {
        (gw.chat().await == (200, "up0".to_owned())).then_some(())
    })
    .await;
    assert_eq!(gw.served(3).await, all("up0", 3), "the probe's success closed the breaker");
}

#[tokio::test]
async fn a_backend_whose_latency_rises_past_the_p99_threshold_is_cut_over() {
    let up0 = json!({"circuit_breaker": {"failure_threshold": 5, "open_ms": 600_000,
        "latency": {"p99_ms": 500, "window_ms": 600_000, "min_requests": 5}}});
    let gw = Gateway::start("breaker_latency", Gateway::mocks(), up0, "failover").await;
    assert_eq!(gw.served(5).await, all("up0", 5));

    gw.mocks[0].set_default(json!({"delay_ms": 1200})).await;
    let served = gw.served(4).await;
    assert_eq!(served, ["up0", "up1", "up1", "up1"], "one slow answer puts the p99 over 500 ms");
    assert_eq!(gw.received(0).await, 6);
}

#[tokio::test]
async fn a_health_check_marks_a_dead_backend_before_any_request_reaches_it() {
    let mocks = Gateway::mocks();
    mocks[0].set_models(json!({"status": 500})).await;
    let up0 = json!({"health_check": {"interval_ms": 100, "path": "/models", "failure_threshold": 1}});
    let gw = Gateway::start("health_check_dead", mocks, up0, "failover").await;
    // Checks of a backend run one after the other: a second one means the first one's result was recorded.
    eventually(Duration::from_secs(20), "two health checks of up0", || async {
        (gw.mocks[0].stats().await["models_requests"].as_u64() >= Some(2)).then_some(())
    })
    .await;

    assert_eq!(gw.served(3).await, all("up1", 3), "the first request goes straight to the healthy backend");
    assert_eq!(gw.received(0).await, 0, "up0 never got a chat request");

    gw.mocks[0].set_models(json!({})).await;
    eventually(Duration::from_secs(20), "a successful check to close up0's breaker", || async {
        (gw.chat().await == (200, "up0".to_owned())).then_some(())
    })
    .await;
}

#[tokio::test]
async fn least_latency_prefers_the_faster_backend_and_moves_when_their_speeds_swap() {
    let mocks = Gateway::mocks();
    mocks[0].set_default(json!({"delay_ms": 200})).await;
    let gw = Gateway::start("least_latency", mocks, json!({}), "least_latency").await;
    let served = gw.served(5).await;
    assert_eq!(served, ["up0", "up1", "up1", "up1", "up1"], "each unmeasured one first, then the faster");

    gw.mocks[0].set_default(json!({})).await;
    gw.mocks[1].set_default(json!({"delay_ms": 400})).await;
    let served = gw.served(4).await;
    assert_eq!(served, ["up1", "up0", "up0", "up0"], "up1's slow answer counts at once; up0 is now the faster");
}
