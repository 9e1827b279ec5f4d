//! The closed-loop load the whole-request benchmarks share (`tests/benches/trace_load.rs`,
//! `tests/benches/guardrail_load.rs`): requests posted as JSON with an optional key, latencies as p50 and p99.

use std::time::{Duration, Instant};

use serde_json::Value;

/// `body` posted to `url`, with `key` as the bearer token when there is one.
pub fn post(client: &reqwest::Client, url: &str, key: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    let request = client.post(url).json(body);
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

/// `count` requests at `concurrency`; each one's latency (the whole answer read).
pub async fn load(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
    concurrency: usize,
    count: usize,
) -> Vec<Duration> {
    let worker = || async {
        let mut taken = Vec::with_capacity(count / concurrency);
        for _ in 0..count / concurrency {
            let started = Instant::now();
            let response = post(client, url, key, body).send().await.unwrap();
            assert!(response.status().is_success(), "{url}: {}", response.status());
            response.bytes().await.unwrap();
            taken.push(started.elapsed());
        }
        taken
    };
    futures_util::future::join_all((0..concurrency).map(|_| worker())).await.into_iter().flatten().collect()
}

/// p50 and p99 in milliseconds.
pub fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}
