//! Whole-request load: the same requests straight to the mock upstream and through the data plane, in one run, at
//! fixed concurrencies (1 and 8); prints RPS, p50/p99 and the latency the gateway adds. Non-streaming and streaming.
//!
//! `cargo bench -p gateway-e2e --bench proxy_load` (no database needed: the data plane serves a snapshot file).
//! The mock upstream runs as its own process; the data plane runs in this process on its own 1-thread runtime,
//! the load generator on another, so the three do not share an executor.
//!
//! A second baseline, the bare relay, is the extra hop alone: an axum server on its own 1-thread runtime that
//! sends each body to the mock with a pooled reqwest client and returns the answer, with no gateway logic. The
//! gateway minus the relay is what the gateway's own work costs; the relay minus direct is the price of any
//! HTTP proxy built on the same stack on this machine. Every gateway request is metered (usage read, cost computed,
//! a spend event built); a third gateway phase uses a key under a budget, which adds admission; a fourth a key with
//! RPM/TPM limits on an alias whose backend has a circuit breaker (every trip), a health check and rate limits, none
//! ever reached, which adds their bookkeeping (`docs/rate-limits.md`, `docs/providers.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use data_plane::settings::{Cli, Command};
use data_plane::state::Current;
use gateway_proto::convert;
use gateway_proto::v1;
use policy_engine::config::ConfigSet;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Concurrency 1 shows the latency a request pays with nothing queued; 8 shows throughput (and queueing).
const CONCURRENCIES: [usize; 2] = [1, 8];
const REQUESTS: usize = 4000;
const WARMUP: usize = 400;
const KEY: &str = "gwk_bench_key";
/// A key of a team with a daily budget: its requests also pay for admission (prompt tokens counted, cost
/// reserved and released) on top of the metering every request pays.
const BUDGETED_KEY: &str = "gwk_bench_budgeted";
/// A key with RPM and TPM limits, sending to the `guarded` alias, whose backend has a circuit breaker with every trip,
/// a health check and rate limits (none of them ever reached): what limits and breakers cost when they are on.
const GUARDED_KEY: &str = "gwk_bench_guarded";

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock_port = free_port();
    let mut mock = std::process::Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--addr", &format!("127.0.0.1:{mock_port}"), "--name", "bench"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let snapshot_dir = std::env::temp_dir().join(format!("gateway-bench-load-{}", std::process::id()));
    let snapshot_file = data_plane::persist::write(&snapshot_dir, &snapshot(mock_port)).unwrap();

    // The data plane on its own single-threaded runtime and thread.
    let dp_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dp_addr = dp_listener.local_addr().unwrap();
    dp_listener.set_nonblocking(true).unwrap();
    let shutdown = CancellationToken::new();
    let dp_shutdown = shutdown.clone();
    // Parsed like the command line, so every other setting keeps its default.
    let Command::Serve(args) = Cli::parse_from([
        "data-plane".to_owned(),
        "serve".to_owned(),
        format!("--listen-addr={dp_addr}"),
        "--max-retry-after-ms=0".to_owned(),
        format!("--snapshot={}", snapshot_file.display()),
        format!("--state-dir={}", snapshot_dir.display()),
    ])
    .command;
    let dp_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(dp_listener).unwrap();
            data_plane::run(args, listener, Arc::new(Current::default()), dp_shutdown).await.unwrap();
        });
    });

    let relay_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay_listener.local_addr().unwrap();
    relay_listener.set_nonblocking(true).unwrap();
    let relay_shutdown = shutdown.clone();
    let relay_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(relay(relay_listener, mock_port, relay_shutdown));
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(32).build().unwrap();
        wait_ready(&client, &format!("http://127.0.0.1:{mock_port}/__mock/stats")).await;
        wait_ready(&client, &format!("http://{dp_addr}/readyz")).await;
        let direct = format!("http://127.0.0.1:{mock_port}/v1/chat/completions");
        let proxied = format!("http://{dp_addr}/v1/chat/completions");
        let relayed = format!("http://{relay_addr}/v1/chat/completions");
        println!("{REQUESTS} requests per phase after {WARMUP} warm-up");
        for (concurrency, stream) in CONCURRENCIES.iter().flat_map(|c| [(*c, false), (*c, true)]) {
            let body =
                json!({"model": "gpt", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream});
            let base = run(&client, &direct, None, &body, concurrency).await;
            let bare = run(&client, &relayed, None, &body, concurrency).await;
            let gateway = run(&client, &proxied, Some(KEY), &body, concurrency).await;
            let budgeted = run(&client, &proxied, Some(BUDGETED_KEY), &body, concurrency).await;
            let mut guarded_body = body.clone();
            guarded_body["model"] = json!("guarded");
            let guarded = run(&client, &proxied, Some(GUARDED_KEY), &guarded_body, concurrency).await;
            let label = format!("c={concurrency} {}", if stream { "streaming" } else { "non-streaming" });
            base.print(&format!("{label:>19} direct "));
            bare.print(&format!("{label:>19} relay  "));
            gateway.print(&format!("{label:>19} gateway"));
            budgeted.print(&format!("{label:>19} gateway with a budget"));
            guarded.print(&format!("{label:>19} gateway with limits and a breaker"));
            println!(
                "{label:>19} added latency: p50 {:+.3} ms, p99 {:+.3} ms; throughput ratio {:.2}",
                ms(gateway.p50) - ms(base.p50),
                ms(gateway.p99) - ms(base.p99),
                gateway.rps / base.rps
            );
            println!(
                "{label:>19} of which the bare hop: p50 {:+.3} ms, p99 {:+.3} ms; gateway over relay: p50 {:+.3} ms, p99 {:+.3} ms",
                ms(bare.p50) - ms(base.p50),
                ms(bare.p99) - ms(base.p99),
                ms(gateway.p50) - ms(bare.p50),
                ms(gateway.p99) - ms(bare.p99),
            );
            println!(
                "{label:>19} a budget adds: p50 {:+.3} ms, p99 {:+.3} ms",
                ms(budgeted.p50) - ms(gateway.p50),
                ms(budgeted.p99) - ms(gateway.p99),
            );
            println!(
                "{label:>19} limits and a breaker add: p50 {:+.3} ms, p99 {:+.3} ms; throughput ratio {:.2}",
                ms(guarded.p50) - ms(gateway.p50),
                ms(guarded.p99) - ms(gateway.p99),
                guarded.rps / gateway.rps
            );
        }
    });
    shutdown.cancel();
    let _ = dp_thread.join();
    let _ = relay_thread.join();
    let _ = mock.kill();
    let _ = mock.wait();
    let _ = std::fs::remove_dir_all(snapshot_dir);
}

/// The bare relay: forward the body to the mock and its answer back, streamed, with nothing else.
async fn relay(listener: std::net::TcpListener, mock_port: u16, shutdown: CancellationToken) {
    use axum::body::{Body, Bytes};
    let client = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let upstream = format!("http://127.0.0.1:{mock_port}/v1/chat/completions");
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: Bytes| {
            let (client, upstream) = (client.clone(), upstream.clone());
            async move {
                let response =
                    client.post(upstream).header("content-type", "application/json").body(body).send().await.unwrap();
                let mut reply = axum::response::Response::new(Body::from_stream(response.bytes_stream()));
                reply.headers_mut().insert("content-type", "application/json".parse().unwrap());
                reply
            }
        }),
    );
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn snapshot(mock_port: u16) -> v1::Snapshot {
    let base_url = format!("http://127.0.0.1:{mock_port}/v1");
    let breaker = json!({"failure_threshold": 5, "open_ms": 30_000,
        "error_rate": {"percent": 50, "window_ms": 10_000, "min_requests": 20},
        "latency": {"p99_ms": 10_000, "window_ms": 10_000, "min_requests": 20}});
    let config: ConfigSet = ConfigSet {
        backends: [
            json!({"name": "mock", "kind": "openai", "base_url": base_url, "auth": {"type": "none"}}),
            json!({"name": "guarded-mock", "kind": "openai", "base_url": base_url, "auth": {"type": "none"},
                "circuit_breaker": breaker, "health_check": {"interval_ms": 1000},
                "rate_limit": {"rps": 1_000_000, "rpm": 60_000_000, "tpm": 4_000_000_000u64}}),
        ]
        .map(|b| (b["name"].as_str().unwrap().to_owned(), serde_json::from_value(b).unwrap()))
        .into(),
        models: [("m", "mock"), ("gm", "guarded-mock")]
            .map(|(name, backend)| {
                let model = json!({"name": name, "backend": backend, "upstream_model": "mock-model",
                    "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}});
                (name.to_owned(), serde_json::from_value(model).unwrap())
            })
            .into(),
        aliases: [("gpt", "m"), ("guarded", "gm")]
            .map(|(name, model)| {
                let alias = json!({"name": name, "candidates": [{"model": model}]});
                (name.to_owned(), serde_json::from_value(alias).unwrap())
            })
            .into(),
        budgets: [(
            "team-daily".to_owned(),
            serde_json::from_value(json!({"name": "team-daily", "scope": {"type": "team", "team": "t"},
            "period": "day", "limit_usd": "1000000000"}))
            .unwrap(),
        )]
        .into(),
        ..ConfigSet::default()
    };
    let key = |id: &str, secret: &str, team: &str| v1::ApiKey {
        id: id.into(),
        name: id.into(),
        team: team.into(),
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        ..v1::ApiKey::default()
    };
    let guarded =
        v1::ApiKey { rpm_limit: Some(60_000_000), tpm_limit: Some(4_000_000_000), ..key("guarded", GUARDED_KEY, "") };
    let keys = vec![key("bench", KEY, ""), key("budgeted", BUDGETED_KEY, "t"), guarded];
    let content = convert::encode(&config, keys, |_| None);
    v1::Snapshot {
        version: 1,
        content_hash: convert::content_hash(&content),
        content: Some(content),
        lineage: String::new(),
    }
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never became ready");
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn print(&self, label: &str) {
        println!("{label}: {:>7.0} req/s, p50 {:.3} ms, p99 {:.3} ms", self.rps, ms(self.p50), ms(self.p99));
    }
}

async fn one(client: &reqwest::Client, url: &str, key: Option<&str>, body: &serde_json::Value) -> Duration {
    let started = Instant::now();
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let bytes = response.bytes().await.unwrap();
    assert!(!bytes.is_empty());
    started.elapsed()
}

async fn run(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &serde_json::Value,
    concurrency: usize,
) -> Figures {
    for _ in 0..WARMUP / concurrency {
        let batch = (0..concurrency).map(|_| one(client, url, key, body));
        futures::future::join_all(batch).await;
    }
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| async {
        let mut samples = Vec::with_capacity(REQUESTS / concurrency);
        for _ in 0..REQUESTS / concurrency {
            samples.push(one(client, url, key, body).await);
        }
        samples
    });
    let mut samples: Vec<Duration> = futures::future::join_all(workers).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    Figures { rps: samples.len() as f64 / elapsed.as_secs_f64(), p50: at(0.5), p99: at(0.99) }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
