//! Spend at the edges, across real processes: clients that hang up before the answer, streams nobody reads (cut at
//! the backend's `total_ms` or the write-idle timeout), SIGTERM with stalled and slow readers, a rolling restart
//! under load, repeated SIGKILLs, a control-plane outage during a budget race, the tokenizer loaded at start, and a
//! full spool. Each time: one event per request the upstream received, recorded with what ended it
//! (`docs/spend.md`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_e2e::*;
use gateway_proto::v1;
use policy_engine::tokens;
use prost::Message;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;

use super::spend::{
    by_request_id, chat, chat_cost, config_version, configure, d, fast_spend, most_within, spool_files,
};

/// Send a streamed chat `body` to `dp` over a raw connection with a 4 KiB receive buffer, and never read the
/// answer: a client that stalls. Dropping the stream hangs up.
async fn stalled_client(dp: &DataPlane, key: &str, id: &str, body: &Value) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(dp.addr).await.unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\nx-request-id: {id}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        dp.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    stream
}

/// Read `response` a chunk at a time with `pause` between chunks until it ends or fails: a slow reader.
async fn read_slowly(mut response: reqwest::Response, pause: Duration) -> usize {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        tokio::time::sleep(pause).await;
    }
    read
}

/// The request ids the mocks received, in order.
async fn upstream_ids(mocks: &[&MockUpstream]) -> Vec<String> {
    let mut ids = Vec::new();
    for mock in mocks {
        let requests = mock.requests().await;
        ids.extend(requests.iter().filter_map(|r| r["request_id"].as_str().map(str::to_owned)));
    }
    ids
}

async fn wait_upstream_saw(mock: &MockUpstream, ids: &[&str]) {
    eventually(Duration::from_secs(10), &format!("the upstream to receive {ids:?}"), || async {
        let seen = upstream_ids(&[mock]).await;
        ids.iter().all(|id| seen.iter().any(|s| s == id)).then_some(())
    })
    .await;
}

/// The ledger's event for request `id`, once it is there.
async fn event_of(cp: &ControlPlane, id: &str, within: Duration) -> Value {
    eventually(within, &format!("the spend event of {id}"), || async {
        cp.spend_events().await.into_iter().find(|e| e["request_id"] == json!(id))
    })
    .await
}

/// Every request the upstreams received has exactly one event and the ledger has no other; the events by id.
async fn assert_one_event_per_upstream_request(cp: &ControlPlane, mocks: &[&MockUpstream]) -> BTreeMap<String, Value> {
    let received = upstream_ids(mocks).await;
    let unique: BTreeSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "request ids are unique in these tests");
    let events = cp.wait_for_spend_events(received.len()).await;
    let ids: Vec<&str> = events.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    let recorded: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(recorded.len(), ids.len(), "an event counted twice");
    let received: BTreeSet<&str> = received.iter().map(String::as_str).collect();
    let missing: Vec<&&str> = received.difference(&recorded).collect();
    let extra: Vec<&&str> = recorded.difference(&received).collect();
    assert!(missing.is_empty() && extra.is_empty(), "received but not recorded: {missing:?}; recorded only: {extra:?}");
    by_request_id(&events)
}

fn request_to(dp: &DataPlane, key: &str, id: &str, body: &Value) -> reqwest::RequestBuilder {
    dp.client().post(dp.url("/v1/chat/completions")).bearer_auth(key).header("x-request-id", id).json(body)
}

#[sqlx::test(migrations = false)]
async fn clients_that_hang_up_early_leave_one_event_each_and_cancel_the_upstream(pool: PgPool) {
    let test = "edge_hang_up";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    let key = configure(&cp, &mocks).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;
    let mock = &mocks[0];

    // The upstream answers after 1.5 s; the clients leave after 0.4 s, before its first byte.
    mock.set_default(json!({"delay_ms": 1500})).await;
    let early =
        [("early-plain-1", false), ("early-plain-2", false), ("early-stream-1", true), ("early-stream-2", true)];
    let hang_ups = early.iter().map(|(id, stream)| {
        request_to(&dp, &key, id, &chat(*stream, json!({}))).timeout(Duration::from_millis(400)).send()
    });
    for result in futures::future::join_all(hang_ups).await {
        assert!(result.is_err_and(|e| e.is_timeout()), "the client gave up first");
    }
    // And one that leaves a slow stream after its first word.
    mock.set_default(json!({"chunks": 20, "chunk_delay_ms": 200})).await;
    let mut response = request_to(&dp, &key, "mid-stream", &chat(true, json!({}))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("Hello") {
        received.extend_from_slice(&response.chunk().await.unwrap().unwrap());
    }
    drop(response);

    let events = assert_one_event_per_upstream_request(&cp, &[mock]).await;
    assert_eq!(events.len(), 5, "{events:?}");
    let prompt = tokens::chat_prompt(["what does it cost?"]);
    for (id, stream) in early {
        let event = &events[id];
        let what = format!("{id}: {event}");
        assert_eq!(event["outcome"], json!("client_closed"), "{what}");
        assert_eq!(event["interrupted"], json!(true), "{what}");
        assert_eq!(event["streamed"], json!(stream), "{what}");
        assert_eq!(event["attempts"], json!(1), "counted when sent: {what}");
        assert_eq!(event["status"], json!(0), "nothing was answered: {what}");
        // The upstream read the prompt: charged as estimated.
        assert_eq!(event["usage_estimated"], json!(true), "{what}");
        assert_eq!(event["prompt_tokens"], json!(prompt), "{what}");
        assert_eq!(event["completion_tokens"], json!(0), "{what}");
        assert_eq!(d(event["cost_usd"].as_str().unwrap()), chat_cost(prompt, 0, 0), "{what}");
        assert_eq!(event["backend"], json!("up0"), "{what}");
    }
    let mid = &events["mid-stream"];
    assert_eq!(mid["outcome"], json!("client_closed"), "{mid}");
    assert_eq!(mid["usage_estimated"], json!(true), "{mid}");
    assert!(mid["completion_tokens"].as_u64().unwrap() >= 1, "metered for what went by: {mid}");
    assert!(mid["ttft_ms"].is_number(), "{mid}");

    // The upstream requests were cancelled with their callers, not left to run.
    eventually(Duration::from_secs(10), "the upstream requests to be cancelled", || async {
        let stats = mock.stats().await;
        (stats["requests_cancelled"] == json!(4) && stats["streams_cancelled"] == json!(1)).then_some(())
    })
    .await;
}

/// A backend over `mock` per `(name, total_ms)`, each with a model `<name>-model` (input free, output 1 USD per
/// million tokens) and an alias `<name>`, and a key of team `search`; the key's secret.
async fn configure_backends(cp: &ControlPlane, mock: &MockUpstream, backends: &[(&str, u64)]) -> String {
    for (name, total_ms) in backends {
        cp.create(
            "backends",
            json!({"name": name, "kind": "openai", "base_url": mock.base_url(),
                   "timeouts": {"connect_ms": 1000, "first_byte_ms": total_ms.min(&1000), "total_ms": total_ms}}),
        )
        .await;
        cp.create(
            "models",
            json!({"name": format!("{name}-model"), "backend": name, "upstream_model": "m",
                   "capabilities": {"chat": true}, "pricing": {"input": "0", "output": "1"}}),
        )
        .await;
        cp.create("aliases", json!({"name": name, "candidates": [{"model": format!("{name}-model")}]})).await;
    }
    let (status, created) = cp.call("POST", "/keys", Some(json!({"name": "k", "team": "search"}))).await;
    assert_eq!(status, 201, "{created}");
    created["secret"].as_str().unwrap().to_owned()
}

fn ask(alias: &str, stream: bool) -> Value {
    json!({"model": alias, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 1000})
}

/// A default answer that no client buffer holds: a stream of 64 KiB events (padded with SSE comments, so that it
/// costs few tokens), one every 20 ms.
fn huge_stream() -> Value {
    json!({"chunks": 400, "chunk_delay_ms": 20, "pad_bytes": 65536})
}

#[sqlx::test(migrations = false)]
async fn stalled_readers_are_cut_at_total_ms_or_the_write_idle_timeout_and_recorded(pool: PgPool) {
    let test = "edge_stalled";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mock = MockUpstream::start(test, "m0").await;
    mock.set_default(huge_stream()).await;
    const TOTAL_MS: u64 = 1200;
    const IDLE_MS: u64 = 3000;
    let key = configure_backends(&cp, &mock, &[("fast", TOTAL_MS), ("long", 60_000)]).await;
    // Each request reserves 1000 output tokens (0.001 USD): one at a time fits the team's budget.
    cp.create(
        "budgets",
        json!({"name": "search-daily", "scope": {"type": "team", "team": "search"}, "period": "day",
               "limit_usd": "0.0015", "action": "block"}),
    )
    .await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    config.env.push(("GATEWAY_WRITE_IDLE_TIMEOUT_MS".into(), IDLE_MS.to_string()));
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;

    // A client that never reads a stream of the backend whose total timeout is 1.2 s...
    let stalled = stalled_client(&dp, &key, "stalled-total", &ask("fast", true)).await;
    wait_upstream_saw(&mock, &["stalled-total"]).await;
    // ...holds the team's budget with its reservation meanwhile...
    let blocked = request_to(&dp, &key, "blocked", &ask("fast", false)).send().await.unwrap();
    assert_eq!(blocked.status(), 429);
    // ...until the exchange passes its total timeout (and the grace to deliver the closing event): a timeout.
    let event = event_of(&cp, "stalled-total", Duration::from_secs(15)).await;
    assert_eq!(event["outcome"], json!("timeout"), "{event}");
    assert_eq!(event["interrupted"], json!(true), "{event}");
    assert_eq!(event["streamed"], json!(true), "{event}");
    let latency = event["latency_ms"].as_u64().unwrap();
    assert!((TOTAL_MS..TOTAL_MS + 1000 + 2000).contains(&latency), "cut at total_ms + 1 s of grace: {event}");
    // Its reservation went with it: the team may spend again.
    let after = request_to(&dp, &key, "after", &ask("fast", false)).send().await.unwrap();
    assert_eq!(after.status(), 200, "{}", after.text().await.unwrap());

    // A client that never reads a stream with no short total timeout is cut by the write-idle timeout.
    let idle = stalled_client(&dp, &key, "stalled-idle", &ask("long", true)).await;
    let event = event_of(&cp, "stalled-idle", Duration::from_secs(20)).await;
    assert_eq!(event["outcome"], json!("client_stalled"), "{event}");
    assert_eq!(event["interrupted"], json!(true), "{event}");
    assert!(event["latency_ms"].as_u64().unwrap() >= IDLE_MS, "{event}");

    // Both upstream streams were cancelled with the cut, and nothing else was left unrecorded.
    eventually(Duration::from_secs(10), "the upstream streams to be cancelled", || async {
        (mock.stats().await["streams_cancelled"] == json!(2)).then_some(())
    })
    .await;
    let events = assert_one_event_per_upstream_request(&cp, &[&mock]).await;
    assert_eq!(events["after"]["outcome"], json!("ok"));
    drop((stalled, idle));
}

#[sqlx::test(migrations = false)]
async fn sigterm_with_stalled_and_slow_readers_loses_nothing(pool: PgPool) {
    let test = "edge_sigterm_readers";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    let key = configure(&cp, &mocks).await;
    let mock = &mocks[0];
    // Streams of 3 MiB over about 3 s: longer than the shutdown's drain, larger than any socket buffer.
    mock.set_default(json!({"chunks": 48, "chunk_delay_ms": 60, "pad_bytes": 65536})).await;
    const DRAIN_MS: u64 = 1000;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = vec![
        // Nothing is reported before the shutdown: its flush must hold every event.
        ("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), "60000".into()),
        ("GATEWAY_SPEND_FLUSH_TIMEOUT_MS".into(), "5000".into()),
        ("GATEWAY_SHUTDOWN_DRAIN_MS".into(), DRAIN_MS.to_string()),
    ];
    let version = config_version(&cp).await;
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    for trial in 0..2 {
        let dp = DataPlane::start(&config);
        dp.wait_for_version(version).await;
        let id = |what: &str| format!("{what}-{trial}");
        // One client stops reading and hangs up 0.5 s into the shutdown, one never hangs up, one reads slowly.
        let leaves = stalled_client(&dp, &key, &id("stalled-leaves"), &chat(true, json!({}))).await;
        let stays = stalled_client(&dp, &key, &id("stalled-stays"), &chat(true, json!({}))).await;
        let slow = request_to(&dp, &key, &id("slow"), &chat(true, json!({}))).send().await.unwrap();
        assert_eq!(slow.status(), 200);
        let slow = tokio::spawn(read_slowly(slow, Duration::from_millis(150)));
        let ids = [id("stalled-leaves"), id("stalled-stays"), id("slow")];
        wait_upstream_saw(mock, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stopping = Instant::now();
        dp.sigterm().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(leaves);
        let status = dp.wait_exit().await;
        let took = stopping.elapsed();
        assert!(status.success(), "{status}");
        assert!(took < Duration::from_millis(DRAIN_MS + 3000), "the shutdown took {took:?} with a {DRAIN_MS} ms drain");
        slow.await.unwrap();
        drop(stays);
        expected.insert(id("stalled-leaves"), "client_closed");
        expected.insert(id("stalled-stays"), "shutdown");
        expected.insert(id("slow"), "shutdown");
    }
    let events = assert_one_event_per_upstream_request(&cp, &[mock]).await;
    assert_eq!(events.len(), expected.len());
    for (id, outcome) in &expected {
        let event = &events[id];
        assert_eq!(event["outcome"], json!(outcome), "{id}: {event}");
        assert_eq!(event["interrupted"], json!(true), "{id}: {event}");
        assert_eq!(event["usage_estimated"], json!(true), "metered for what went by: {event}");
    }
}

#[sqlx::test(migrations = false)]
async fn a_rolling_restart_under_load_with_a_stalled_client_finishes_within_the_drain_time(pool: PgPool) {
    let test = "edge_rolling";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await, MockUpstream::start(test, "m1").await];
    mocks[0].set_default(json!({"delay_ms": 20, "chunk_delay_ms": 5})).await;
    mocks[1].set_default(huge_stream()).await;
    let key = configure(&cp, &mocks).await;
    // The stalled clients go to the second upstream (its model alone).
    cp.create("aliases", json!({"name": "slow", "candidates": [{"model": "priced1"}]})).await;
    let version = config_version(&cp).await;
    const DRAIN_MS: u64 = 1500;
    let mut configs = Vec::new();
    let mut planes = Vec::new();
    for name in ["dp-a", "dp-b"] {
        let mut config = DataPlaneConfig::new(test, name, &cp.grpc_url());
        config.env = fast_spend();
        config.env.push(("GATEWAY_SHUTDOWN_DRAIN_MS".into(), DRAIN_MS.to_string()));
        let dp = DataPlane::start(&config);
        dp.wait_for_version(version).await;
        configs.push(config);
        planes.push(Some(dp));
    }
    let addrs: Vec<SocketAddr> = planes.iter().flatten().map(|dp| dp.addr).collect();

    // Four clients spread requests over both data planes, as a load balancer would; a failed request is tried again
    // (under a new id) on the other.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (stop, served, failed, key, addrs) =
            (stop.clone(), served.clone(), failed.clone(), key.clone(), addrs.clone());
        clients.push(tokio::spawn(async move {
            let http = http_client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("roll-{client}-{n}");
                let stream = n % 3 == 0;
                let url = format!("http://{}/v1/chat/completions", addrs[(client + n) % addrs.len()]);
                let request =
                    http.post(url).bearer_auth(&key).header("x-request-id", &id).json(&chat(stream, json!({})));
                let complete = match request.send().await {
                    Ok(response) if response.status() == 200 => match response.text().await {
                        Ok(text) if stream => text.trim_end().ends_with("data: [DONE]"),
                        Ok(text) => text.contains("choices"),
                        Err(_) => false,
                    },
                    _ => false,
                };
                if complete {
                    served.lock().unwrap().push(id);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, config) in configs.iter().enumerate() {
        let dp = planes[i].take().unwrap();
        let stalled_id = format!("stalled-{}", config.node_id);
        let stalled = stalled_client(&dp, &key, &stalled_id, &chat(true, json!({"model": "slow"}))).await;
        wait_upstream_saw(&mocks[1], &[&stalled_id]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stopping = Instant::now();
        let status = dp.terminate().await;
        let took = stopping.elapsed();
        assert!(status.success(), "{status}");
        // The drain, then the flush of a few events to a reachable control plane.
        assert!(
            took < Duration::from_millis(DRAIN_MS + 2000),
            "{} took {took:?} to stop with a {DRAIN_MS} ms drain",
            config.node_id
        );
        drop(stalled);
        let dp = DataPlane::start(config);
        dp.wait_for_version(version).await;
        planes[i] = Some(dp);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let served = served.lock().unwrap().clone();
    assert!(served.len() > 50, "traffic went on: {} served, {} failed", served.len(), failed.load(Ordering::Relaxed));

    let events = assert_one_event_per_upstream_request(&cp, &[&mocks[0], &mocks[1]]).await;
    let missing: Vec<&String> = served.iter().filter(|id| !events.contains_key(*id)).collect();
    assert!(missing.is_empty(), "served but not recorded: {missing:?}");
    for name in ["dp-a", "dp-b"] {
        let event = &events[&format!("stalled-{name}")];
        assert_eq!(event["outcome"], json!("shutdown"), "{event}");
    }
    eprintln!("rolling restart: {} served, {} failed and tried again", served.len(), failed.load(Ordering::Relaxed));
}

/// The longest spool write so far (`gateway_spend_spool_write_seconds`, quantile 1), from `/metrics`.
async fn longest_spool_write(dp: &DataPlane) -> Duration {
    let text = dp.client().get(dp.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let seconds = text
        .lines()
        .find_map(|line| line.strip_prefix("gateway_spend_spool_write_seconds{quantile=\"1\"} "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Duration::from_secs_f64(seconds)
}

#[sqlx::test(migrations = false)]
async fn repeated_sigkills_under_load_lose_only_within_the_documented_bound(pool: PgPool) {
    let test = "edge_sigkill";
    const INTERVAL: Duration = Duration::from_millis(100);
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    mocks[0].set_default(json!({"delay_ms": 5, "chunk_delay_ms": 1})).await;
    let key = configure(&cp, &mocks).await;
    let version = config_version(&cp).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = vec![("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), INTERVAL.as_millis().to_string())];

    let mut served: Vec<(String, Instant, usize)> = Vec::new();
    let mut kills = Vec::new();
    let mut longest_write = Duration::ZERO;
    for round in 0..4 {
        let dp = DataPlane::start(&config);
        dp.wait_for_version(version).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..4 {
            let (stop, key, url) = (stop.clone(), key.clone(), dp.url("/v1/chat/completions"));
            clients.push(tokio::spawn(async move {
                let http = http_client();
                let mut done = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("kill-{round}-{client}-{n}");
                    let stream = n % 3 == 0;
                    let request =
                        http.post(&url).bearer_auth(&key).header("x-request-id", &id).json(&chat(stream, json!({})));
                    let Ok(response) = request.send().await else { break };
                    let Ok(text) = response.text().await else { break };
                    let complete =
                        if stream { text.trim_end().ends_with("data: [DONE]") } else { text.contains("choices") };
                    if complete {
                        done.push((id, Instant::now(), round));
                    }
                }
                done
            }));
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        longest_write = longest_write.max(longest_spool_write(&dp).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        kills.push(Instant::now());
        dp.kill().await;
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            served.extend(client.await.unwrap());
        }
    }
    // The next start sends what the spool kept.
    let dp = DataPlane::start(&config);
    dp.wait_for_version(version).await;
    let spool = config.state_dir.join("spend-spool");
    eventually(Duration::from_secs(20), "the spool to empty", || async {
        spool_files(&spool).is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = cp.spend_events().await;
    let recorded: HashSet<&str> = events.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    assert_eq!(recorded.len(), events.len(), "an event counted twice");

    // The documented bound: an event is on disk at most max(interval, w) + w after its request was served, w the
    // longest spool write (the one under way at the kill is not in the metric: allow 150 ms for it and for a
    // loaded machine's scheduling).
    let bound = INTERVAL.max(longest_write) + longest_write + Duration::from_millis(150);
    let lost: Vec<Duration> = served
        .iter()
        .filter(|(id, _, _)| !recorded.contains(id.as_str()))
        .map(|(_, at, round)| kills[*round].saturating_duration_since(*at))
        .collect();
    let oldest = lost.iter().max().copied().unwrap_or_default();
    eprintln!(
        "sigkill x{}: {} served, {} lost, the oldest served {oldest:?} before its kill; longest spool write \
         {longest_write:?}, bound {bound:?}",
        kills.len(),
        served.len(),
        lost.len()
    );
    assert!(served.len() > 100, "there was load: {} served", served.len());
    assert!(oldest <= bound, "lost an event served {oldest:?} before the kill; the bound is {bound:?}");
}

/// One budget race across `planes` with `key` (each request costs exactly 0.001 USD), with the control plane
/// already down: four clients per data plane until each data plane has been refused, then the control plane
/// restarts, and traffic goes on for 1 s. Returns each data plane's completion times, the refusals' messages and
/// when the control plane was back.
async fn race_through_an_outage(
    planes: &[DataPlane],
    key: &str,
    cp_config: ControlPlaneConfig,
) -> (Vec<Vec<Instant>>, Vec<String>, Instant, ControlPlane) {
    let stop = Arc::new(AtomicBool::new(false));
    let refused: Arc<Vec<AtomicBool>> = Arc::new(planes.iter().map(|_| AtomicBool::new(false)).collect());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let mut clients = Vec::new();
    for (plane, dp) in planes.iter().enumerate() {
        for _ in 0..4 {
            let (http, url, key, body) =
                (dp.client().clone(), dp.url("/v1/chat/completions"), key.to_owned(), body.clone());
            let (stop, refused) = (stop.clone(), refused.clone());
            clients.push(tokio::spawn(async move {
                let (mut served, mut messages) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let response = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
                    match response.status().as_u16() {
                        200 => {
                            response.bytes().await.unwrap();
                            served.push(Instant::now());
                        }
                        429 => {
                            refused[plane].store(true, Ordering::Relaxed);
                            let error: Value = response.json().await.unwrap();
                            messages.push(error["error"]["message"].as_str().unwrap_or_default().to_owned());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
                (plane, served, messages)
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !refused.iter().all(|r| r.load(Ordering::Relaxed)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cp = ControlPlane::start(cp_config).await;
    let back = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served: Vec<Vec<Instant>> = planes.iter().map(|_| Vec::new()).collect();
    let mut messages = Vec::new();
    for client in clients {
        let (plane, times, refusals) = client.await.unwrap();
        served[plane].extend(times);
        messages.extend(refusals);
    }
    (served, messages, back, cp)
}

#[sqlx::test(migrations = false)]
async fn a_control_plane_outage_during_a_budget_race_stays_within_the_documented_figure(pool: PgPool) {
    let test = "edge_outage_budget";
    const STATE_MS: u64 = 100;
    const REPORT_MS: u64 = 100;
    const STALE_MS: u64 = 400;
    // Each budget allows 200 requests of 0.001 USD.
    const LIMIT: usize = 200;
    let mut cp_config = ControlPlaneConfig::new(test, "cp", &test_database_url(&pool));
    cp_config.env.push(("GATEWAY_BUDGET_STATE_INTERVAL_MS".into(), STATE_MS.to_string()));
    let cp = ControlPlane::start(cp_config).await;
    let mock = MockUpstream::start(test, "m0").await;
    mock.set_default(json!({"delay_ms": 20})).await;
    cp.create("backends", json!({"name": "up", "kind": "openai", "base_url": mock.base_url()})).await;
    // Only output is priced and every answer has 5 completion tokens: each request costs, and reserves, 0.001 USD.
    cp.create(
        "models",
        json!({"name": "m", "backend": "up", "upstream_model": "m", "capabilities": {"chat": true},
               "pricing": {"input": "0", "output": "200"}}),
    )
    .await;
    let mut keys = Vec::new();
    for team in ["a", "b"] {
        cp.create(
            "budgets",
            json!({"name": format!("{team}-daily"), "scope": {"type": "team", "team": team}, "period": "day",
                   "limit_usd": "0.2", "action": "block"}),
        )
        .await;
        let (_, created) = cp.call("POST", "/keys", Some(json!({"name": format!("key-{team}"), "team": team}))).await;
        keys.push(created["secret"].as_str().unwrap().to_owned());
    }
    let version = config_version(&cp).await;
    // The control plane restarts on the same address.
    let grpc_url = cp.grpc_url();
    let start_planes = |share: Option<&str>| {
        let mut planes = Vec::new();
        for name in ["dp1", "dp2"] {
            let mut config = DataPlaneConfig::new(test, name, &grpc_url);
            config.env = vec![
                ("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), REPORT_MS.to_string()),
                ("GATEWAY_BUDGET_STALE_AFTER_MS".into(), STALE_MS.to_string()),
            ];
            if let Some(share) = share {
                config.env.push(("GATEWAY_BUDGET_OUTAGE_SHARE".into(), share.to_owned()));
            }
            planes.push(DataPlane::start(&config));
        }
        planes
    };
    let served_before = |times: &[Instant], back: Instant| times.iter().filter(|t| **t < back).count();
    let request_cost = d("0.001");

    // With the default share, each data plane keeps to the whole budget on its own view while the control plane
    // is away: together they may spend N times what was left.
    let planes = start_planes(None);
    for dp in &planes {
        dp.wait_for_version(version).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // budget states arrive
    let cp_config = cp.config();
    cp.kill().await;
    tokio::time::sleep(Duration::from_millis(STALE_MS + 200)).await;
    let (served, _, back, cp) = race_through_an_outage(&planes, &keys[0], cp_config).await;
    let before: Vec<usize> = served.iter().map(|times| served_before(times, back)).collect();
    let total: usize = served.iter().map(Vec::len).sum();
    eprintln!("outage, share 1: served {before:?} before the control plane was back, {total} in all");
    for count in &before {
        assert!(*count <= LIMIT, "one data plane alone stays within the limit: {before:?}");
    }
    let outage_total: usize = before.iter().sum();
    assert!(outage_total > LIMIT, "the default allows more than the limit during an outage: {before:?}");
    assert!(outage_total <= 2 * LIMIT, "at most N x the limit: {before:?}");
    for dp in planes {
        assert!(dp.terminate().await.success());
    }

    // With a share of 1/N, N data planes together stay within what was left.
    let planes = start_planes(Some("0.5"));
    for dp in &planes {
        dp.wait_for_version(version).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cp_config = cp.config();
    cp.kill().await;
    tokio::time::sleep(Duration::from_millis(STALE_MS + 200)).await;
    let (served, messages, back, cp) = race_through_an_outage(&planes, &keys[1], cp_config).await;
    let before: Vec<usize> = served.iter().map(|times| served_before(times, back)).collect();
    let total: usize = served.iter().map(Vec::len).sum();
    for count in &before {
        assert!(*count <= LIMIT / 2, "each data plane keeps to half of what was left: {before:?}");
    }
    assert!(
        messages.iter().any(|m| m.contains("while the control plane is unreachable")),
        "refused by the outage share: {messages:?}"
    );
    // Once the control plane is back, the usual bound: what the other data plane completes within one
    // propagation window (its report interval + the state interval + 1 s for commits and hops on a loaded
    // machine) plus what is in flight.
    let window = Duration::from_millis(REPORT_MS + STATE_MS + 1000);
    let after_back: Vec<Vec<Instant>> =
        served.iter().map(|t| t.iter().copied().filter(|t| *t >= back).collect()).collect();
    let missed: usize = after_back.iter().map(|times| most_within(times, window)).sum::<usize>() + 8;
    eventually(Duration::from_secs(30), "every served request of team b in the ledger", || async {
        let events = cp.spend_events().await;
        (events.iter().filter(|e| e["team"] == json!("b")).count() >= total).then_some(())
    })
    .await;
    let events = cp.spend_events().await;
    let spent: Decimal =
        events.iter().filter(|e| e["team"] == json!("b")).map(|e| d(e["cost_usd"].as_str().unwrap())).sum();
    let bound = request_cost * Decimal::from(LIMIT + missed);
    eprintln!(
        "outage, share 0.5: served {before:?} before the control plane was back, {total} in all, {spent} USD; bound \
         {bound} USD"
    );
    assert_eq!(spent, request_cost * Decimal::from(total), "every served request is in the ledger");
    assert!(spent <= bound, "spent {spent} USD of a 0.2 USD budget; the bound is {bound}");
    for dp in planes {
        assert!(dp.terminate().await.success());
    }
}

#[sqlx::test(migrations = false)]
async fn the_tokenizer_is_loaded_at_start_and_never_stalls_requests(pool: PgPool) {
    let test = "edge_tokenizer";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    let key = configure(&cp, &mocks).await;
    // A budget: every request's prompt is counted with the tokenizer before it is sent.
    cp.create(
        "budgets",
        json!({"name": "search-daily", "scope": {"type": "team", "team": "search"}, "period": "day",
               "limit_usd": "100", "action": "block"}),
    )
    .await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;

    // The first counted requests, with the health check probed meanwhile.
    let probes = async {
        let mut worst = Duration::ZERO;
        for _ in 0..40 {
            let started = Instant::now();
            let health = dp.client().get(dp.url("/healthz")).send().await.unwrap();
            assert_eq!(health.status(), 200);
            worst = worst.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worst
    };
    let requests = futures::future::join_all(
        (0..4).map(|i| request_to(&dp, &key, &format!("first-{i}"), &chat(false, json!({}))).send()),
    );
    let (worst, answers) = tokio::join!(probes, requests);
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
    assert!(worst < Duration::from_millis(250), "/healthz took {worst:?} while the first requests were counted");
    let log = std::fs::read_to_string(&dp.log).unwrap();
    assert!(log.contains("tokenizer loaded"), "loaded at start\n{}", log_tail(&dp.log));
}

#[sqlx::test(migrations = false)]
async fn a_full_spool_refuses_with_retry_after_and_serves_again_once_acknowledged(pool: PgPool) {
    let test = "edge_spool_full";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    let key = configure(&cp, &mocks).await;
    let version = config_version(&cp).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    // The smallest spool allowed.
    config.env.push(("GATEWAY_SPEND_SPOOL_MAX_BYTES".into(), (1 << 20).to_string()));
    let dp = DataPlane::start(&config);
    dp.wait_for_version(version).await;
    assert!(dp.terminate().await.success());
    let cp_config = cp.config();
    cp.kill().await;

    // A spool left full by a long outage: 18 events of 64 KB of metadata each.
    let event = |i: usize| v1::SpendEvent {
        id: uuid::Uuid::now_v7().to_string(),
        occurred_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        key_name: "spender".into(),
        team: "search".into(),
        alias: "chat".into(),
        model: "priced0".into(),
        backend: "up0".into(),
        endpoint: "chat.completions".into(),
        status: 200,
        outcome: "ok".into(),
        cost_usd: "0.001".into(),
        request_id: format!("spooled-{i}"),
        metadata: (0..64).map(|t| (format!("tag{t}"), "x".repeat(1000))).collect(),
        ..v1::SpendEvent::default()
    };
    let batch = v1::SpendBatch {
        node_id: "dp".into(),
        batch_id: uuid::Uuid::now_v7().to_string(),
        events: (0..18).map(event).collect(),
    };
    let spool = config.state_dir.join("spend-spool");
    std::fs::write(spool.join(format!("{}.pb", batch.batch_id)), batch.encode_to_vec()).unwrap();
    assert!(batch.encoded_len() > 1 << 20);

    let dp = DataPlane::start(&config);
    dp.wait_for_version(version).await;
    let refused = request_to(&dp, &key, "refused", &chat(false, json!({}))).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=15).contains(&retry_after), "{retry_after}");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], json!("spend_spool_full"), "{error}");
    assert_eq!(error["error"]["type"], json!("api_error"), "{error}");

    // The control plane comes back, acknowledges the spool, and the data plane serves again.
    let cp = ControlPlane::start(cp_config).await;
    let mut tries = 0;
    eventually(Duration::from_secs(30), "the data plane to serve again", || {
        tries += 1;
        let request = request_to(&dp, &key, &format!("after-{tries}"), &chat(false, json!({})));
        async move { (request.send().await.unwrap().status() == 200).then_some(()) }
    })
    .await;
    let events = cp.wait_for_spend_events(19).await;
    let ids: HashSet<&str> = events.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    assert!((0..18).all(|i| ids.contains(format!("spooled-{i}").as_str())), "the spool reached the ledger");
    assert!(!ids.contains("refused"), "a refused request costs nothing");
}
