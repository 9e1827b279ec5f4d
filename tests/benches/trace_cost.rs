//! What tracing costs a request in instructions, counted by `valgrind --tool=callgrind` (repeatable on this noisy
//! machine, which has no hardware counters): the data-plane binary runs under callgrind on a snapshot file, in front
//! of the mock upstream, and serves a fixed number of requests, one at a time; the OTLP receiver is in this
//! process, so its decoding is not counted; exporting planes batch as in production (the SDK's defaults). Each mode
//! runs three times (a base load, then more non-streamed requests, then more streamed ones), and the differences
//! divided by the extra requests are the instructions per request, without the process's start and shutdown.
//!
//! `cargo build --release --bin data-plane --bin mock-upstream && cargo bench -p gateway-e2e --bench trace_cost`
//! (needs valgrind; no database); `-- sampled` runs only tracing off and the modes whose name holds `sampled`;
//! `KEEP_CALLGRIND=1` keeps the callgrind output files (their folder is printed) for `callgrind_annotate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use gateway_e2e::otlp::OtlpReceiver;
use gateway_e2e::pipeline::Snapshot;
use gateway_e2e::{DataPlane, DataPlaneConfig, MockUpstream};
use serde_json::json;

/// Requests every run serves, of each kind.
const BASE: u64 = 20;
/// The extra requests of one kind in the runs that measure it.
const EXTRA: u64 = 200;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    if std::process::Command::new("valgrind").arg("--version").output().is_err() {
        panic!("valgrind is needed: apt-get install valgrind");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let mock = MockUpstream::start("trace_cost", "mock").await;
    let mut snapshot = Snapshot::new();
    snapshot.backend(json!({"name": "mock", "kind": "openai", "base_url": mock.base_url(), "auth": {"type": "none"}}));
    snapshot.model(json!({"name": "m", "backend": "mock", "upstream_model": "mock-model",
                          "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}));
    snapshot.alias(json!({"name": "gpt", "candidates": [{"model": "m"}]}));
    let key = snapshot.key(json!({"name": "bench"}));
    let dir = std::env::temp_dir().join(format!("gateway-bench-trace-cost-{}", std::process::id()));
    let file = data_plane::persist::write(&dir, &snapshot.build()).unwrap();
    let receiver = OtlpReceiver::start().await;
    let mut ratio = receiver.production_env("grpc", "sampled");
    ratio.push(("OTEL_TRACES_SAMPLER".into(), "parentbased_traceidratio".into()));
    ratio.push(("OTEL_TRACES_SAMPLER_ARG".into(), "0.01".into()));
    let modes: [(&str, Vec<(String, String)>); 4] = [
        ("tracing off", Vec::new()),
        ("JSON logs, no export", vec![("GATEWAY_LOG_FORMAT".into(), "json".into())]),
        ("exporting every request", receiver.production_env("grpc", "all")),
        ("exporting, 1 % sampled", ratio),
    ];
    // `cargo bench ... -- WORD`: only the modes whose name holds WORD (and tracing off, the baseline).
    let only: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    println!("instructions per request (callgrind), one request at a time, {EXTRA} extra requests per difference");
    let mut off = None;
    for (mode, env) in modes {
        if mode != "tracing off" && !only.is_empty() && !only.iter().any(|word| mode.contains(word.as_str())) {
            continue;
        }
        let mut totals = Vec::new();
        for (plain, streamed) in [(BASE, BASE), (BASE + EXTRA, BASE), (BASE, BASE + EXTRA)] {
            let out = dir.join(format!(
                "callgrind-{}-{plain}-{streamed}.out",
                mode.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            ));
            let mut config = DataPlaneConfig::new("trace_cost", "dp", "http://127.0.0.1:1");
            config.snapshot = Some(file.clone());
            config.env = env.clone();
            config.env.push(("RUST_LOG".into(), "warn".into()));
            config.launcher =
                vec!["valgrind".into(), "--tool=callgrind".into(), format!("--callgrind-out-file={}", out.display())];
            let dp = DataPlane::start(&config);
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            while dp.readyz().await.is_none_or(|(status, _)| status != 200) {
                assert!(std::time::Instant::now() < deadline, "the data plane under callgrind never got ready");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let client = reqwest::Client::new();
            for (count, stream) in [(plain, false), (streamed, true)] {
                let body =
                    json!({"model": "gpt", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream});
                for _ in 0..count {
                    let response =
                        client.post(dp.url("/v1/chat/completions")).bearer_auth(&key).json(&body).send().await.unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.unwrap();
                }
            }
            let status = dp.terminate().await;
            assert!(status.success(), "the data plane under callgrind exited with {status}");
            totals.push(instructions(&out));
        }
        let per = |extra: u64| (extra - totals[0]) as f64 / EXTRA as f64;
        let (plain, streamed) = (per(totals[1]), per(totals[2]));
        let against = off.map_or(String::new(), |(p, s): (f64, f64)| {
            format!(
                " (adds {:+.0} = {:+.1} %, {:+.0} = {:+.1} %)",
                plain - p,
                (plain / p - 1.0) * 100.0,
                streamed - s,
                (streamed / s - 1.0) * 100.0
            )
        });
        println!("{mode:>24}: non-streamed {plain:.0}, streamed {streamed:.0}{against}");
        off.get_or_insert((plain, streamed));
    }
    println!("spans received: {}", receiver.spans().len());
    // `KEEP_CALLGRIND=1` keeps the output files, for `callgrind_annotate`.
    if std::env::var_os("KEEP_CALLGRIND").is_some() {
        println!("callgrind output kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The total instructions of a callgrind output file (its `summary:` line).
fn instructions(out: &Path) -> u64 {
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("summary:").or_else(|| line.strip_prefix("totals:")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}: no summary line", out.display()))
}
