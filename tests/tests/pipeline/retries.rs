//! A route policy's `retries` and `timeout_ms`, and `Retry-After` in both forms, through the data plane in process
//! against two in-process mock upstreams. Assertions are on statuses and on what each mock received, never on timing.

use gateway_e2e::pipeline::{Pipeline, Snapshot};
use gateway_e2e::*;
use serde_json::{Value, json};

/// Two mock upstreams (`m0`, `m1`) behind `pair` (both, in order) and `solo` (`m0` alone), and route policies chosen
/// by the request's `metadata.case`.
struct Gateway {
    mocks: Vec<MockUpstream>,
    dp: Pipeline,
    key: String,
}

impl Gateway {
    async fn start(test: &str) -> Gateway {
        let mocks: Vec<MockUpstream> = (0..2).map(|i| MockUpstream::in_process(&format!("m{i}"))).collect();
        let mut config = Snapshot::new();
        for (i, mock) in mocks.iter().enumerate() {
            // A first-byte timeout above the delays scripted below: only the route policy's deadline cuts them.
            config.backend(json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url(),
                "secret": {"value": format!("sk-up{i}")},
                "timeouts": {"connect_ms": 1000, "first_byte_ms": 3000, "total_ms": 5000}}));
            config.model(json!({"name": format!("model{i}"), "backend": format!("up{i}"),
                "upstream_model": format!("upstream-{i}"), "capabilities": {"chat": true},
                "pricing": {"input": "1", "output": "2"}}));
        }
        config.alias(json!({"name": "pair", "candidates": [{"model": "model0"}, {"model": "model1"}]}));
        config.alias(json!({"name": "solo", "candidates": [{"model": "model0"}]}));
        for (name, alias, limits) in [
            ("no-failover", "pair", json!({"retries": 0})),
            ("three-tries", "solo", json!({"retries": 2})),
            ("round-twice", "pair", json!({"retries": 3})),
            ("deadline", "pair", json!({"timeout_ms": 300})),
        ] {
            let mut action = json!({"type": "route", "alias": alias});
            action.as_object_mut().unwrap().extend(limits.as_object().unwrap().clone());
            config.route_policy(json!({"name": name, "priority": 10,
                "when": format!("has(request.metadata.case) && request.metadata.case == '{name}'"),
                "action": action}));
        }
        let key = config.key(json!({"name": "app"}));
        let dp = Pipeline::start(test, &config).await;
        Gateway { mocks, dp, key }
    }

    /// A chat completion of `pair` under the route policy named `case` (none when empty).
    async fn chat(&self, case: &str) -> reqwest::Response {
        self.chat_to("pair", case).await
    }

    async fn chat_to(&self, model: &str, case: &str) -> reqwest::Response {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if !case.is_empty() {
            body["metadata"] = json!({"case": case});
        }
        self.dp.post("/v1/chat/completions", Some(&self.key), &body).await
    }

    /// How many requests each mock received so far.
    async fn counts(&self) -> Vec<usize> {
        let mut counts = Vec::new();
        for mock in &self.mocks {
            counts.push(mock.requests().await.len());
        }
        counts
    }
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

#[tokio::test]
async fn retries_zero_answers_the_first_failure_without_failing_over() {
    let gw = Gateway::start("retries_zero").await;
    // Without a bound, a 500 fails over to the second candidate.
    gw.mocks[0].script(json!([{"status": 500}])).await;
    let response = gw.chat("").await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-backend")), (200, "up1".to_owned()));
    assert_eq!(gw.counts().await, [1, 1]);

    gw.mocks[0].script(json!([{"status": 500}])).await;
    let (status, body) = json_of(gw.chat("no-failover").await).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], json!("upstream_error"));
    assert!(body["error"]["message"].as_str().unwrap().contains("model0: HTTP 500"), "{body}");
    assert_eq!(gw.counts().await, [2, 1], "the second candidate is never tried");

    // A short Retry-After is not waited out either: repeating the candidate would be a retry.
    gw.mocks[0].script(json!([{"status": 429, "retry_after": "0.1"}])).await;
    let response = gw.chat("no-failover").await;
    assert_eq!(response.status(), 429);
    assert_eq!(gw.counts().await, [3, 1]);
}

#[tokio::test]
async fn retries_ask_again_going_round_the_candidates() {
    let gw = Gateway::start("retries_round").await;
    // One candidate, retries 2: 500, 500, then the default 200.
    gw.mocks[0].script(json!([{"status": 500}, {"status": 500}])).await;
    let (status, body) = json_of(gw.chat_to("solo", "three-tries").await).await;
    assert_eq!((status, body["model"].clone()), (200, json!("upstream-0")), "{body}");
    assert_eq!(gw.counts().await, [3, 0], "served by the third attempt");

    // Three failures use up the bound: the fourth attempt is never sent.
    gw.mocks[0].script(json!([{"status": 500}, {"status": 503}, {"status": 502}])).await;
    let (status, body) = json_of(gw.chat_to("solo", "three-tries").await).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for failure in ["model0: HTTP 500", "model0: HTTP 503", "model0: HTTP 502"] {
        assert!(message.contains(failure), "{message}");
    }
    assert_eq!(gw.counts().await, [6, 0]);

    // Two candidates, retries 3: m0, m1, m0 fail, the fourth attempt (m1 again) serves.
    gw.mocks[0].script(json!([{"status": 500}, {"status": 500}])).await;
    gw.mocks[1].script(json!([{"status": 503}])).await;
    let response = gw.chat("round-twice").await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-backend")), (200, "up1".to_owned()));
    assert_eq!(gw.counts().await, [8, 2]);
}

#[tokio::test]
async fn the_policy_timeout_bounds_the_whole_request() {
    let gw = Gateway::start("retries_deadline").await;
    // The first candidate is slower than the policy's 300 ms: 504 naming the policy, the second never tried.
    gw.mocks[0].script(json!([{"delay_ms": 1000}])).await;
    let (status, body) = json_of(gw.chat("deadline").await).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], json!("upstream_timeout"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("'deadline'") && message.contains("timeout_ms of 300 ms"), "{message}");
    assert_eq!(gw.counts().await, [1, 0]);

    // A quick failure within the deadline still fails over.
    gw.mocks[0].script(json!([{"status": 500}])).await;
    let response = gw.chat("deadline").await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-backend")), (200, "up1".to_owned()));
    assert_eq!(gw.counts().await, [2, 1]);

    // Without the policy the same delay is waited for (the backend's own timeouts are longer).
    gw.mocks[0].script(json!([{"delay_ms": 1000}])).await;
    let response = gw.chat("").await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-backend")), (200, "up0".to_owned()));
    assert_eq!(gw.counts().await, [3, 1]);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_waited_out_or_moved_on_from() {
    let gw = Gateway::start("retries_http_date").await;
    let in_seconds = |seconds: i64| {
        (chrono::Utc::now() + chrono::Duration::seconds(seconds)).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    };
    // A second ahead: within the data plane's longest wait (2 s by default), so the same candidate is asked again.
    gw.mocks[0].script(json!([{"status": 429, "retry_after": in_seconds(1)}])).await;
    let response = gw.chat("").await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-backend")), (200, "up0".to_owned()));
    assert_eq!(gw.counts().await, [2, 0], "waited out and retried on the same candidate");

    // A minute ahead: too long to wait, the next candidate serves.
    gw.mocks[0].script(json!([{"status": 429, "retry_after": in_seconds(60)}])).await;
    let response = gw.chat("").await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-backend")), (200, "up1".to_owned()));
    assert_eq!(gw.counts().await, [3, 1]);

    // When every candidate asks for it, the client is told how long to wait, in seconds.
    for mock in &gw.mocks {
        mock.script(json!([{"status": 429, "retry_after": in_seconds(60)}])).await;
    }
    let response = gw.chat("").await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
    assert!((55..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(gw.counts().await, [4, 2]);
}

#[tokio::test]
async fn a_stream_cut_by_the_policy_timeout_names_the_policy() {
    let gw = Gateway::start("retries_stream_deadline").await;
    // The answer starts at once, then trickles for longer than the policy's 300 ms (the backend's total is 5 s).
    gw.mocks[0].script(json!([{"chunks": 10, "chunk_delay_ms": 100}])).await;
    let body = json!({"model": "pair", "stream": true, "metadata": {"case": "deadline"},
        "messages": [{"role": "user", "content": "hi"}]});
    let response = gw.dp.post("/v1/chat/completions", Some(&gw.key), &body).await;
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("upstream_timeout"), "{text}");
    assert!(last.contains("route policy 'deadline' timeout_ms of 300 ms"), "{last}");
    assert!(!text.contains("[DONE]"), "{text}");
}
