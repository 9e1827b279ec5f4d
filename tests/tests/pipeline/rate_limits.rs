//! Rate limits through the data plane in process (`docs/rate-limits.md`): a key over its RPM or TPM is refused with
//! OpenAI's 429 and headers; a backend at its limit is skipped for the next candidate, and only when every candidate
//! is at its limit is the request refused. Served from a snapshot file, the data plane never gets a `RateShare` and
//! enforces whole limits.

use gateway_e2e::pipeline::{Pipeline, Snapshot};
use gateway_e2e::*;
use serde_json::{Value, json};

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

/// Start well inside a wall-clock minute, so the requests of a test share one window (a test near a minute's end
/// waits for the next one: a wait before the test, never a timed assertion).
async fn fresh_minute() {
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        tokio::time::sleep(std::time::Duration::from_secs((61 - second) as u64)).await;
    }
}

/// Whether `text` is a reset as OpenAI writes it (`1s`, `59.5s`, `1m0s`, `17ms`).
fn is_reset(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.');
    text.strip_suffix("ms").is_some_and(digits)
        || text
            .strip_suffix('s')
            .is_some_and(|s| digits(s) || s.split_once('m').is_some_and(|(m, s)| digits(m) && digits(s)))
}

/// Two mock backends (`up0`, `up1`, each limited to `backend_limit`) behind `pair` (in order) and `solo` (`up0`).
async fn gateway(test: &str, backend_limit: Value, key: Value) -> (Vec<MockUpstream>, Pipeline, String) {
    let mocks: Vec<MockUpstream> = (0..2).map(|i| MockUpstream::in_process(&format!("m{i}"))).collect();
    let mut config = Snapshot::new();
    for (i, mock) in mocks.iter().enumerate() {
        let mut backend = json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url(),
            "secret": {"value": format!("sk-up{i}")}});
        if !backend_limit.is_null() {
            backend["rate_limit"] = backend_limit.clone();
        }
        config.backend(backend);
        config.model(json!({"name": format!("model{i}"), "backend": format!("up{i}"),
            "upstream_model": format!("upstream-{i}"), "capabilities": {"chat": true},
            "pricing": {"input": "1", "output": "2"}}));
    }
    config.alias(json!({"name": "pair", "candidates": [{"model": "model0"}, {"model": "model1"}]}));
    config.alias(json!({"name": "solo", "candidates": [{"model": "model0"}]}));
    let secret = config.key(key);
    let dp = Pipeline::start(test, &config).await;
    (mocks, dp, secret)
}

async fn chat(dp: &Pipeline, key: &str, model: &str, max_tokens: u64) -> reqwest::Response {
    let body = json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    dp.post("/v1/chat/completions", Some(key), &body).await
}

#[tokio::test]
async fn a_key_over_its_rpm_gets_openai_429_with_its_headers() {
    fresh_minute().await;
    let (mocks, dp, key) = gateway("key_rpm", Value::Null, json!({"name": "app", "rpm_limit": 2})).await;
    for remaining in ["1", "0"] {
        let response = chat(&dp, &key, "pair", 10).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "2");
        assert_eq!(header(&response, "x-ratelimit-remaining-requests"), remaining);
        assert!(is_reset(&header(&response, "x-ratelimit-reset-requests")), "{:?}", response.headers());
        assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "", "the key has no token limit");
    }
    let response = chat(&dp, &key, "pair", 10).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = header(&response, "retry-after").parse().expect("retry-after in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&response, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&response, "x-ratelimit-remaining-requests"), "0");
    assert!(is_reset(&header(&response, "x-ratelimit-reset-requests")));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("rate_limit_exceeded"), "{body}");
    assert_eq!(body["error"]["type"], json!("requests"), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("API key 'app' is at its limit of 2 requests per minute (RPM)"), "{message}");
    assert!(!message.contains(&key), "never the secret");
    assert_eq!(mocks[0].requests().await.len(), 2, "the refused request reached no upstream");
}

#[tokio::test]
async fn a_keys_tokens_are_admitted_on_the_estimate_and_corrected_to_the_usage() {
    fresh_minute().await;
    let (_mocks, dp, key) = gateway("key_tpm", Value::Null, json!({"name": "app", "tpm_limit": 100})).await;
    // Estimated at the prompt plus max_tokens 60; the mock reports 17 tokens used.
    let first = chat(&dp, &key, "solo", 60).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "100");
    let after_first: u64 = header(&first, "x-ratelimit-remaining-tokens").parse().unwrap();
    assert!(after_first < 40, "the estimate counts max_tokens: {after_first}");
    // Without the correction the second estimate would not fit; with it, 17 tokens are gone.
    let second = chat(&dp, &key, "solo", 60).await;
    assert_eq!(second.status(), 200);
    let after_second: u64 = header(&second, "x-ratelimit-remaining-tokens").parse().unwrap();
    assert_eq!(after_second, after_first - 17);
    let refused = chat(&dp, &key, "solo", 90).await;
    assert_eq!(refused.status(), 429);
    assert!(header(&refused, "retry-after").parse::<u64>().is_ok());
    assert_eq!(header(&refused, "x-ratelimit-remaining-tokens"), (100 - 34).to_string());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        (body["error"]["type"].clone(), body["error"]["code"].clone()),
        (json!("tokens"), json!("rate_limit_exceeded"))
    );
}

#[tokio::test]
async fn a_backend_at_its_limit_is_skipped_for_the_next_candidate() {
    fresh_minute().await;
    let (mocks, dp, key) = gateway("backend_rpm", json!({"rpm": 1}), json!({"name": "app"})).await;
    let first = chat(&dp, &key, "pair", 10).await;
    assert_eq!((first.status().as_u16(), header(&first, "x-gateway-backend")), (200, "up0".to_owned()));
    let second = chat(&dp, &key, "pair", 10).await;
    assert_eq!(
        (second.status().as_u16(), header(&second, "x-gateway-backend")),
        (200, "up1".to_owned()),
        "skipped, not refused"
    );
    assert_eq!(header(&second, "x-ratelimit-limit-requests"), "", "an unlimited key gets no key headers");
    // A single candidate at its limit, then every candidate at its limit: 429 naming them.
    for (model, backends) in [("solo", vec!["up0"]), ("pair", vec!["up0", "up1"])] {
        let refused = chat(&dp, &key, model, 10).await;
        assert_eq!(refused.status(), 429, "{model}");
        assert!(header(&refused, "retry-after").parse::<u64>().is_ok());
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], json!("rate_limit_exceeded"), "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        for backend in backends {
            assert!(
                message.contains(&format!("backend '{backend}' is at its limit of 1 requests per minute (RPM)")),
                "{message}"
            );
        }
        assert!(!message.contains("sk-up"), "never a secret: {message}");
    }
    let counts = [mocks[0].requests().await.len(), mocks[1].requests().await.len()];
    assert_eq!(counts, [1, 1], "nothing was sent past a limit");
}
