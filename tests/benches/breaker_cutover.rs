//! How fast traffic stops going to a hung backend: a backend that accepts connections and never answers, first in
//! its alias, with a healthy one behind it. Each phase sends the same closed-loop load (8 clients, 25 requests each)
//! through the data plane in process; every request is answered by the healthy backend, but until something stops
//! sending to the hung one, each request first waits out its `first_byte_ms` (250 ms). Phases: the hung backend with
//! a circuit breaker (`failure_threshold` 3), and the same backend without one (a fresh backend each, same mock).
//!
//! `cargo bench -p gateway-e2e --bench breaker_cutover` (no database needed). Prints, per phase: how many requests
//! reached the hung backend, how many waited for it, when the last of those started, and the latency percentiles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use gateway_e2e::MockUpstream;
use gateway_e2e::pipeline::{Pipeline, Snapshot};
use serde_json::json;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 25;
const FIRST_BYTE_MS: u64 = 250;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let hung = MockUpstream::in_process("hung");
        let healthy = MockUpstream::in_process("healthy");
        hung.set_default(json!({"delay_ms": 600_000})).await;
        let mut config = Snapshot::new();
        let timeouts = json!({"connect_ms": 1000, "first_byte_ms": FIRST_BYTE_MS, "total_ms": 10_000});
        for (name, breaker) in
            [("hung-with-breaker", Some(json!({"failure_threshold": 3, "open_ms": 600_000}))), ("hung-without", None)]
        {
            let mut backend =
                json!({"name": name, "kind": "openai", "base_url": hung.base_url(), "timeouts": timeouts});
            if let Some(breaker) = breaker {
                backend["circuit_breaker"] = breaker;
            }
            config.backend(backend);
        }
        config.backend(json!({"name": "healthy", "kind": "openai", "base_url": healthy.base_url()}));
        for backend in ["hung-with-breaker", "hung-without", "healthy"] {
            config.model(json!({"name": backend, "backend": backend, "upstream_model": "x",
                "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "1"}}));
        }
        config.alias(
            json!({"name": "with-breaker", "candidates": [{"model": "hung-with-breaker"}, {"model": "healthy"}]}),
        );
        config.alias(json!({"name": "without", "candidates": [{"model": "hung-without"}, {"model": "healthy"}]}));
        let key = config.key(json!({"name": "bench"}));
        let dp = Pipeline::start("breaker_cutover", &config).await;
        println!(
            "{CLIENTS} clients x {PER_CLIENT} requests per phase; the hung backend's first_byte_ms is {FIRST_BYTE_MS}"
        );
        for alias in ["with-breaker", "without"] {
            let before = hung.requests().await.len();
            let started = Instant::now();
            let clients = (0..CLIENTS).map(|_| async {
                let mut samples = Vec::new();
                for _ in 0..PER_CLIENT {
                    let sent = started.elapsed();
                    let body = json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]});
                    let response = dp.post("/v1/chat/completions", Some(&key), &body).await;
                    assert_eq!(response.status(), 200);
                    let _ = response.bytes().await.unwrap();
                    samples.push((sent, started.elapsed() - sent));
                }
                samples
            });
            let samples: Vec<(Duration, Duration)> =
                futures::future::join_all(clients).await.into_iter().flatten().collect();
            let elapsed = started.elapsed();
            let reached = hung.requests().await.len() - before;
            let waited: Vec<Duration> = samples
                .iter()
                .filter(|(_, took)| *took >= Duration::from_millis(FIRST_BYTE_MS))
                .map(|(sent, _)| *sent)
                .collect();
            let last_waiting = waited.iter().max().copied().unwrap_or_default();
            let mut latencies: Vec<Duration> = samples.iter().map(|(_, took)| *took).collect();
            latencies.sort_unstable();
            let at = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
            println!(
                "{alias:>12}: {} requests in {:.2} s; reached the hung backend: {reached}; waited for it: {} (the last \
                 sent at {:.0} ms); p50 {:.1} ms, p99 {:.1} ms",
                samples.len(),
                elapsed.as_secs_f64(),
                waited.len(),
                last_waiting.as_secs_f64() * 1e3,
                at(0.5),
                at(0.99),
            );
        }
    });
}
