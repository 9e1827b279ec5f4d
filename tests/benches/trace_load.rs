//! What exporting traces costs a whole request: two data-plane processes (the release binary) on one snapshot and
//! one mock upstream, one with tracing off and one exporting every request's spans over OTLP/gRPC to a receiver in
//! this process (`gateway_e2e::otlp`, decoding every batch; the SDK's default batching, as in production), measured
//! in interleaved slices of the same run so drift hits both alike; the mock straight gives the gateway's own share.
//! A third process samples one trace in a hundred (`parentbased_traceidratio`, 0.01). Concurrency 1 and 8,
//! non-streaming and streaming.
//!
//! `cargo build --release --bin data-plane && cargo bench -p gateway-e2e --bench trace_load` (no database: the
//! data planes serve a snapshot file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use gateway_e2e::load::{load, percentiles};
use gateway_e2e::otlp::OtlpReceiver;
use gateway_e2e::pipeline::Snapshot;
use gateway_e2e::{DataPlane, DataPlaneConfig, MockUpstream};
use serde_json::json;

const SLICES: usize = 8;
const REQUESTS: usize = 3200;
const WARMUP: usize = 400;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let mock = MockUpstream::start("trace_load", "mock").await;
    let mut snapshot = Snapshot::new();
    snapshot.backend(json!({"name": "mock", "kind": "openai", "base_url": mock.base_url(), "auth": {"type": "none"}}));
    snapshot.model(json!({"name": "m", "backend": "mock", "upstream_model": "mock-model",
                          "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}));
    snapshot.alias(json!({"name": "gpt", "candidates": [{"model": "m"}]}));
    let key = snapshot.key(json!({"name": "bench"}));
    let dir = std::env::temp_dir().join(format!("gateway-bench-traces-{}", std::process::id()));
    let file = data_plane::persist::write(&dir, &snapshot.build()).unwrap();
    let receiver = OtlpReceiver::start().await;
    let plane = |name: &str, env: Vec<(String, String)>| {
        let mut config = DataPlaneConfig::new("trace_load", name, "http://127.0.0.1:1");
        config.snapshot = Some(file.clone());
        config.env = env;
        config.env.push(("RUST_LOG".into(), "warn".into()));
        DataPlane::start(&config)
    };
    let off = plane("off", Vec::new());
    let on = plane("on", receiver.production_env("grpc", "bench"));
    // What production would run: one trace in a hundred sampled (the others build their spans but export nothing).
    let mut ratio = receiver.production_env("grpc", "bench-sampled");
    ratio.push(("OTEL_TRACES_SAMPLER".into(), "parentbased_traceidratio".into()));
    ratio.push(("OTEL_TRACES_SAMPLER_ARG".into(), "0.01".into()));
    let sampled = plane("sampled", ratio);
    for dp in [&off, &on, &sampled] {
        while dp.readyz().await.is_none_or(|(status, _)| status != 200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(32).build().unwrap();
    let direct = format!("{}/chat/completions", mock.base_url());
    println!("{REQUESTS} requests per target in {SLICES} interleaved slices, after {WARMUP} warm-up each");
    for (concurrency, stream) in [(1, false), (1, true), (8, false), (8, true)] {
        let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream});
        let targets = [
            (direct.as_str(), None),
            (&*off.url("/v1/chat/completions"), Some(key.as_str())),
            (&*on.url("/v1/chat/completions"), Some(key.as_str())),
            (&*sampled.url("/v1/chat/completions"), Some(key.as_str())),
        ];
        let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for (url, key) in targets {
            load(&client, url, key, &body, concurrency, WARMUP).await;
        }
        for _ in 0..SLICES {
            for (i, (url, key)) in targets.iter().enumerate() {
                samples[i].extend(load(&client, url, *key, &body, concurrency, REQUESTS / SLICES).await);
            }
        }
        let [base, off, on, ratio] = samples.map(percentiles);
        let label = format!("c={concurrency} {}", if stream { "streaming" } else { "non-streaming" });
        println!(
            "{label:>17}: direct p50 {:.3} p99 {:.3} | tracing off p50 {:.3} p99 {:.3} | exporting p50 {:.3} p99 {:.3} ms",
            base.0, base.1, off.0, off.1, on.0, on.1
        );
        let own = off.0 - base.0;
        println!(
            "{label:>17}: exporting adds p50 {:+.3} ms, p99 {:+.3} ms; p50 {:+.1} % of the gateway's own share ({own:.3} ms)",
            on.0 - off.0,
            on.1 - off.1,
            (on.0 - off.0) / own * 100.0
        );
        println!(
            "{label:>17}: 1 % sampled p50 {:.3} p99 {:.3} ms, adds p50 {:+.3} ms; {:+.1} % of the gateway's own share",
            ratio.0,
            ratio.1,
            ratio.0 - off.0,
            (ratio.0 - off.0) / own * 100.0
        );
    }
    println!("spans received: {}", receiver.spans().len());
    drop((off, on, sampled));
    let _ = std::fs::remove_dir_all(dir);
}
