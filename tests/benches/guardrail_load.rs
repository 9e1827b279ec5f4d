//! What guardrails cost a whole request: data-plane processes (the release binary) on snapshot files that differ
//! only in their guardrails, one mock upstream, measured in interleaved slices of the same run so drift hits all
//! alike; the mock straight gives the gateway's own share.
//! - Whole-request latency, non-streamed, concurrency 1 and 8: no guardrail versus a typical set (prompt: redact
//!   email, phone, payment card, IBAN, US SSN and credentials; completion: block credentials), on a ~2 KiB prompt.
//! - Time to first token of a stream (first non-empty `delta.content`) and to its end: the mock generates 48 pieces
//!   of 8 characters, 5 ms apart (~1.6 k characters/s); no guardrail, the typical set with its default 256-character
//!   window, and with the smallest window (32).
//!
//! `CARGO_TARGET_DIR=target-release cargo build --release --bin data-plane --bin mock-upstream &&
//!  CARGO_TARGET_DIR=target-release cargo bench -p gateway-e2e --bench guardrail_load` (no database).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use gateway_e2e::load::{load, percentiles, post};
use gateway_e2e::pipeline::Snapshot;
use gateway_e2e::{DataPlane, DataPlaneConfig, MockUpstream};
use serde_json::{Value, json};

const SLICES: usize = 8;
const REQUESTS: usize = 1600;
const STREAMS: usize = 96;
const WARMUP: usize = 200;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(bench());
}

/// The configuration every plane shares, plus `guardrails`; the key's secret.
fn snapshot(mock: &MockUpstream, guardrails: &[Value]) -> (gateway_proto::v1::Snapshot, String) {
    let mut snapshot = Snapshot::new();
    snapshot.backend(json!({"name": "mock", "kind": "openai", "base_url": mock.base_url(), "auth": {"type": "none"}}));
    snapshot.model(json!({"name": "m", "backend": "mock", "upstream_model": "mock-model",
                          "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}));
    snapshot.alias(json!({"name": "gpt", "candidates": [{"model": "m"}]}));
    for guardrail in guardrails {
        snapshot.guardrail(guardrail.clone());
    }
    let key = snapshot.key(json!({"name": "bench"}));
    (snapshot.build(), key)
}

fn typical(window: u32) -> Vec<Value> {
    vec![
        json!({"name": "pii-out", "side": "prompt", "action": "redact", "detectors": [
            {"type": "email"}, {"type": "phone"}, {"type": "payment_card"}, {"type": "iban"}, {"type": "us_ssn"},
            {"type": "credential"}]}),
        json!({"name": "no-secrets-back", "side": "completion", "action": "block", "stream_window_chars": window,
            "detectors": [{"type": "credential"}]}),
    ]
}

async fn bench() {
    let mock = MockUpstream::start("guardrail_load", "mock").await;
    let pieces: Vec<String> = (0..48).map(|i| format!("word{i:03} ")).collect();
    mock.set_default(json!({"pieces": pieces, "chunk_delay_ms": 5})).await;
    let dir = std::env::temp_dir().join(format!("gateway-bench-guardrails-{}", std::process::id()));
    let plane = |name: &str, guardrails: Vec<Value>| {
        let (built, key) = snapshot(&mock, &guardrails);
        let file = data_plane::persist::write(&dir.join(name), &built).unwrap();
        let mut config = DataPlaneConfig::new("guardrail_load", name, "http://127.0.0.1:1");
        config.snapshot = Some(file);
        config.env.push(("RUST_LOG".into(), "warn".into()));
        (DataPlane::start(&config), key)
    };
    let (off, off_key) = plane("off", Vec::new());
    let (on, on_key) = plane("on", typical(256));
    let (narrow, narrow_key) = plane("narrow", typical(32));
    for dp in [&off, &on, &narrow] {
        while dp.readyz().await.is_none_or(|(status, _)| status != 200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(32).build().unwrap();
    let direct = format!("{}/chat/completions", mock.base_url());
    // A ~2 KiB prompt of ordinary prose with one email and one card number in it.
    let prose = "The quarterly report covers revenue, costs and the outlook for the next two quarters. ".repeat(22);
    let prompt = format!("{prose} Send it to jane.doe@example.com and charge 4111 1111 1111 1111.");

    println!("whole request, non-streamed, {REQUESTS} per target in {SLICES} interleaved slices, {WARMUP} warm-up");
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": prompt}]});
    for concurrency in [1, 8] {
        let targets = [
            (direct.clone(), None),
            (off.url("/v1/chat/completions"), Some(off_key.as_str())),
            (on.url("/v1/chat/completions"), Some(on_key.as_str())),
        ];
        for (url, key) in &targets {
            load(&client, url, *key, &body, concurrency, WARMUP).await;
        }
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..SLICES {
            for (i, (url, key)) in targets.iter().enumerate() {
                samples[i].extend(load(&client, url, *key, &body, concurrency, REQUESTS / SLICES).await);
            }
        }
        let [base, off_ms, on_ms] = samples.map(percentiles);
        let own = off_ms.0 - base.0;
        println!(
            "c={concurrency}: direct p50 {:.3} p99 {:.3} | no guardrail p50 {:.3} p99 {:.3} | typical set p50 {:.3} \
             p99 {:.3} ms",
            base.0, base.1, off_ms.0, off_ms.1, on_ms.0, on_ms.1
        );
        println!(
            "c={concurrency}: the set adds p50 {:+.3} ms, p99 {:+.3} ms; p50 ratio on/off {:.3}; {:+.1} % of the \
             gateway's own share ({own:.3} ms)",
            on_ms.0 - off_ms.0,
            on_ms.1 - off_ms.1,
            on_ms.0 / off_ms.0,
            (on_ms.0 - off_ms.0) / own * 100.0
        );
    }

    println!("streams: {STREAMS} per target in {SLICES} interleaved slices, one at a time");
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Tell me a story"}], "stream": true});
    let targets = [
        (direct.clone(), None),
        (off.url("/v1/chat/completions"), Some(off_key.as_str())),
        (on.url("/v1/chat/completions"), Some(on_key.as_str())),
        (narrow.url("/v1/chat/completions"), Some(narrow_key.as_str())),
    ];
    for (url, key) in &targets {
        for _ in 0..10 {
            first_token(&client, url, *key, &body).await;
        }
    }
    let mut first = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut whole = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..SLICES {
        for (i, (url, key)) in targets.iter().enumerate() {
            for _ in 0..STREAMS / SLICES {
                let (ttft, total) = first_token(&client, url, *key, &body).await;
                first[i].push(ttft);
                whole[i].push(total);
            }
        }
    }
    let names = ["direct", "no guardrail", "typical set, window 256", "typical set, window 32"];
    let first = first.map(percentiles);
    let whole = whole.map(percentiles);
    for (i, name) in names.iter().enumerate() {
        println!(
            "{name:>24}: first token p50 {:.1} p99 {:.1} ms (vs no guardrail {:+.1} ms) | whole stream p50 {:.1} ms \
             (vs no guardrail {:+.1} ms)",
            first[i].0,
            first[i].1,
            first[i].0 - first[1].0,
            whole[i].0,
            whole[i].0 - whole[1].0
        );
    }
    drop((off, on, narrow));
    let _ = std::fs::remove_dir_all(dir);
}

/// One stream: the time to its first non-empty `delta.content`, and to its end.
async fn first_token(client: &reqwest::Client, url: &str, key: Option<&str>, body: &Value) -> (Duration, Duration) {
    let started = Instant::now();
    let response = post(client, url, key, body).send().await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    let mut stream = response.bytes_stream();
    let mut seen = Vec::new();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.unwrap());
        if first.is_none() && has_text(&seen) {
            first = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    (first.expect("the stream carried text"), total)
}

/// Whether an SSE event with non-empty `delta.content` has arrived whole.
fn has_text(seen: &[u8]) -> bool {
    String::from_utf8_lossy(seen).split("\n\n").filter_map(|e| e.strip_prefix("data: ")).any(|data| {
        serde_json::from_str::<Value>(data)
            .ok()
            .and_then(|v| v.pointer("/choices/0/delta/content").and_then(Value::as_str).map(|t| !t.is_empty()))
            .unwrap_or(false)
    })
}
