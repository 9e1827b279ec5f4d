//! A fixed, in-process request loop for counting the data plane's work per request without timing noise:
//! `valgrind --tool=callgrind` over two runs of different lengths gives instructions per request as the difference
//! of their totals over the difference of their request counts (start-up, the tokenizer's load and shutdown cancel
//! out). `scripts/callgrind-requests.sh` runs it; figures in `docs/benchmarks.md`.
//!
//! `request-loop --requests N [--direct] [--stream] [--concurrency C]`: an upstream serving the same fixed OpenAI
//! answers as the nginx of `scripts/bench-throughput.sh` (`scripts/bench/chat.json`, `chat.sse`), the data plane
//! serving a snapshot file on a multi-thread runtime as `main.rs` builds it (metering and spend events on; the
//! events spooled to disk, as with the control plane away), and a client sending N chat completions through it, C at
//! a time. `--direct` sends them straight to the upstream instead: the baseline subtracted from the gateway's figure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use data_plane::settings::{Cli, Command};
use data_plane::state::Current;
use gateway_proto::{convert, v1};
use policy_engine::config::ConfigSet;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// As the data plane's `main.rs` sets it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHAT_ANSWER: &str = include_str!("../../scripts/bench/chat.json");
const CHAT_STREAM: &str = include_str!("../../scripts/bench/chat.sse");
const KEY: &str = "gwk_request_loop";

struct Options {
    requests: usize,
    concurrency: usize,
    direct: bool,
    stream: bool,
}

fn options() -> Options {
    let mut options = Options { requests: 1000, concurrency: 4, direct: false, stream: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => options.requests = args.next().and_then(|n| n.parse().ok()).expect("--requests N"),
            "--concurrency" => options.concurrency = args.next().and_then(|n| n.parse().ok()).expect("--concurrency C"),
            "--direct" => options.direct = true,
            "--stream" => options.stream = true,
            other => panic!("unknown argument {other}: --requests N [--concurrency C] [--direct] [--stream]"),
        }
    }
    options
}

fn main() {
    let options = options();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = CancellationToken::new();

    let upstream_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream_listener.local_addr().unwrap().port();
    upstream_listener.set_nonblocking(true).unwrap();
    let upstream_shutdown = shutdown.clone();
    let upstream_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(upstream(upstream_listener, upstream_shutdown));
    });

    let state_dir = std::env::temp_dir().join(format!("gateway-request-loop-{}", std::process::id()));
    let snapshot_file = data_plane::persist::write(&state_dir, &snapshot(upstream_port)).unwrap();
    let dp_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dp_addr = dp_listener.local_addr().unwrap();
    dp_listener.set_nonblocking(true).unwrap();
    let Command::Serve(args) = Cli::parse_from([
        "data-plane".to_owned(),
        "serve".to_owned(),
        format!("--listen-addr={dp_addr}"),
        format!("--snapshot={}", snapshot_file.display()),
        format!("--state-dir={}", state_dir.display()),
    ])
    .command;
    let dp_shutdown = shutdown.clone();
    let dp_thread = (!options.direct).then(|| {
        std::thread::spawn(move || {
            // As `#[tokio::main]` in main.rs builds it.
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(dp_listener).unwrap();
                data_plane::run(args, listener, Arc::new(Current::default()), dp_shutdown).await.unwrap();
            });
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
        let prefix = if options.stream { "/sse" } else { "" };
        let url = if options.direct {
            wait_ready(&client, &format!("http://127.0.0.1:{upstream_port}/ready")).await;
            format!("http://127.0.0.1:{upstream_port}{prefix}/v1/chat/completions")
        } else {
            wait_ready(&client, &format!("http://{dp_addr}/readyz")).await;
            format!("http://{dp_addr}/v1/chat/completions")
        };
        let model = if options.stream { "gpt-stream" } else { "gpt" };
        let body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}],
            "stream": options.stream})
        .to_string();
        let workers = (0..options.concurrency).map(|worker| {
            let (client, url, body) = (&client, &url, &body);
            let count =
                options.requests / options.concurrency + usize::from(worker < options.requests % options.concurrency);
            async move {
                for _ in 0..count {
                    let response = client
                        .post(url)
                        .bearer_auth(KEY)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_success(), "{}", response.status());
                    assert!(!response.bytes().await.unwrap().is_empty());
                }
            }
        });
        futures_util::future::join_all(workers).await;
    });
    println!("{} requests sent", options.requests);
    shutdown.cancel();
    if let Some(thread) = dp_thread {
        let _ = thread.join();
    }
    let _ = upstream_thread.join();
    let _ = std::fs::remove_dir_all(state_dir);
}

/// The fixed answers, as the benchmark's nginx serves them.
async fn upstream(listener: std::net::TcpListener, shutdown: CancellationToken) {
    use axum::routing::{get, post};
    let json = || async { ([("content-type", "application/json")], CHAT_ANSWER) };
    let sse = || async { ([("content-type", "text/event-stream")], CHAT_STREAM) };
    let app = axum::Router::new()
        .route("/ready", get(|| async { "ok" }))
        .route("/v1/chat/completions", post(json))
        .route("/sse/v1/chat/completions", post(sse));
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await.unwrap();
}

fn snapshot(upstream_port: u16) -> v1::Snapshot {
    let backend = |name: &str, path: &str| {
        let base_url = format!("http://127.0.0.1:{upstream_port}{path}/v1");
        let spec = json!({"name": name, "kind": "openai", "base_url": base_url, "auth": {"type": "none"}});
        (name.to_owned(), serde_json::from_value(spec).unwrap())
    };
    let model = |name: &str, backend: &str| {
        let spec = json!({"name": name, "backend": backend, "upstream_model": "mock-model",
            "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}});
        (name.to_owned(), serde_json::from_value(spec).unwrap())
    };
    let alias = |name: &str, model: &str| {
        let spec = json!({"name": name, "candidates": [{"model": model}]});
        (name.to_owned(), serde_json::from_value(spec).unwrap())
    };
    let config = ConfigSet {
        backends: [backend("json", ""), backend("sse", "/sse")].into(),
        models: [model("m", "json"), model("ms", "sse")].into(),
        aliases: [alias("gpt", "m"), alias("gpt-stream", "ms")].into(),
        ..ConfigSet::default()
    };
    let key = v1::ApiKey {
        id: "loop".into(),
        name: "loop".into(),
        secret_sha256: hex::encode(Sha256::digest(KEY.as_bytes())),
        ..v1::ApiKey::default()
    };
    let content = convert::encode(&config, vec![key], |_| None);
    v1::Snapshot {
        version: 1,
        content_hash: convert::content_hash(&content),
        content: Some(content),
        lineage: String::new(),
    }
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    for _ in 0..2400 {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}
