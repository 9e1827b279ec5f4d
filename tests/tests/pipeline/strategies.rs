//! Routing strategies through the data plane in process: `lowest_cost` sends each request to the candidate that is
//! cheaper for its own size (input price x prompt tokens + output price x `max_tokens`), against two in-process
//! mock upstreams; which one served is read from `x-gateway-model` and from what each mock received.

use gateway_e2e::pipeline::{Pipeline, Snapshot};
use gateway_e2e::*;
use serde_json::{Value, json};

/// `cheap-input` (input 0.10, output 20 USD per million tokens) on `m0`, `cheap-output` (input 5, output 0.50) on
/// `m1`, both behind the `lowest_cost` alias `by-cost`, listed with `cheap-input` first.
struct Gateway {
    mocks: Vec<MockUpstream>,
    dp: Pipeline,
    key: String,
}

impl Gateway {
    async fn start(test: &str) -> Gateway {
        let mocks: Vec<MockUpstream> = (0..2).map(|i| MockUpstream::in_process(&format!("m{i}"))).collect();
        let mut config = Snapshot::new();
        let prices = [("cheap-input", "0.10", "20"), ("cheap-output", "5", "0.50")];
        for (i, (mock, (model, input, output))) in mocks.iter().zip(prices).enumerate() {
            config.backend(json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url(),
                "secret": {"value": format!("sk-up{i}")}}));
            config.model(json!({"name": model, "backend": format!("up{i}"), "upstream_model": format!("upstream-{i}"),
                "capabilities": {"chat": true}, "pricing": {"input": input, "output": output}}));
        }
        config.alias(json!({"name": "by-cost", "strategy": "lowest_cost",
            "candidates": [{"model": "cheap-input"}, {"model": "cheap-output"}]}));
        let key = config.key(json!({"name": "app"}));
        let dp = Pipeline::start(test, &config).await;
        Gateway { mocks, dp, key }
    }

    /// The model that served a chat completion of `prompt` asking for at most `max_tokens`.
    async fn served_by(&self, prompt: &str, max_tokens: Option<u64>) -> String {
        let mut body = json!({"model": "by-cost", "messages": [{"role": "user", "content": prompt}]});
        if let Some(max_tokens) = max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        let response = self.dp.post("/v1/chat/completions", Some(&self.key), &body).await;
        let model = response.headers().get("x-gateway-model").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body}");
        model
    }

    async fn counts(&self) -> Vec<usize> {
        let mut counts = Vec::new();
        for mock in &self.mocks {
            counts.push(mock.requests().await.len());
        }
        counts
    }
}

#[tokio::test]
async fn lowest_cost_picks_the_cheaper_candidate_for_the_request_s_size() {
    let gw = Gateway::start("lowest_cost_by_size").await;
    // A few prompt tokens, up to 4,000 out: cheap-output (about 5 x 10 + 0.5 x 4,000) beats cheap-input
    // (about 0.1 x 10 + 20 x 4,000), though cheap-input is listed first.
    assert_eq!(gw.served_by("hi", Some(4_000)).await, "cheap-output");
    assert_eq!(gw.counts().await, [0, 1]);
    // Thousands of prompt tokens, 1 out: cheap-input (0.1 x ~5,000 + 20) beats cheap-output (5 x ~5,000 + 0.5).
    let long = "hello ".repeat(5_000);
    assert_eq!(gw.served_by(&long, Some(1)).await, "cheap-input");
    assert_eq!(gw.counts().await, [1, 1]);
    // No max_tokens: 1,024 output tokens are expected, so a short prompt goes to the cheap output again.
    assert_eq!(gw.served_by("hi", None).await, "cheap-output");
    assert_eq!(gw.counts().await, [1, 2]);
}
