//! Spend across real processes: exact metering of every endpoint and kind through the real data plane into the
//! real ledger; no event lost across a control-plane restart, a Postgres restart and a data-plane SIGTERM; a batch
//! sent twice counted once; a budget enforced across two data planes within the documented bound; budget periods.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gateway_e2e::*;
use gateway_proto::v1;
use gateway_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use policy_engine::tokens;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;

pub(crate) fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

pub(crate) fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Data-plane settings that make spend reach the ledger quickly in tests.
pub(crate) fn fast_spend() -> Vec<(String, String)> {
    vec![
        ("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), "50".into()),
        ("GATEWAY_SPEND_FLUSH_TIMEOUT_MS".into(), "2000".into()),
    ]
}

/// A backend over each mock (regions `eu`, `us`), a priced chat model on each, an embedding model, the alias `chat`
/// over the chat models in order, and a key of team `search`; returns the key's secret.
pub(crate) async fn configure(cp: &ControlPlane, mocks: &[MockUpstream]) -> String {
    for (i, (mock, region)) in mocks.iter().zip(["eu", "us"]).enumerate() {
        cp.create(
            "backends",
            json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url(), "region": region,
                   "secret": {"value": "sk-test"},
                   "timeouts": {"connect_ms": 1000, "first_byte_ms": 3000, "total_ms": 10000}}),
        )
        .await;
        cp.create(
            "models",
            json!({"name": format!("priced{i}"), "backend": format!("up{i}"), "upstream_model": format!("gpt-{i}"),
                   "capabilities": {"chat": true, "completions": true},
                   "pricing": {"input": "2.50", "cached_input": "1.25", "output": "10.00"}}),
        )
        .await;
    }
    cp.create(
        "models",
        json!({"name": "embed0", "backend": "up0", "upstream_model": "text-embedding-3-small",
               "capabilities": {"embeddings": true, "embedding_dimensions": 8}, "pricing": {"input": "0.02", "output": "0"}}),
    )
    .await;
    let candidates: Vec<Value> = (0..mocks.len()).map(|i| json!({"model": format!("priced{i}")})).collect();
    cp.create("aliases", json!({"name": "chat", "candidates": candidates})).await;
    cp.create("aliases", json!({"name": "embed", "candidates": [{"model": "embed0"}]})).await;
    let (status, created) = cp.call("POST", "/keys", Some(json!({"name": "spender", "team": "search"}))).await;
    assert_eq!(status, 201, "{created}");
    created["secret"].as_str().unwrap().to_owned()
}

pub(crate) async fn config_version(cp: &ControlPlane) -> u64 {
    cp.fleet().await["config_version"].as_u64().unwrap()
}

pub(crate) fn by_request_id(events: &[Value]) -> BTreeMap<String, Value> {
    events.iter().map(|e| (e["request_id"].as_str().unwrap().to_owned(), e.clone())).collect()
}

/// `(prompt x 2.50 + cached x 1.25 + completion x 10.00) / 1e6`, the chat models' prices, with cached tokens a part
/// of the prompt.
pub(crate) fn chat_cost(prompt: u64, cached: u64, completion: u64) -> Decimal {
    (Decimal::from(prompt - cached) * d("2.50")
        + Decimal::from(cached) * d("1.25")
        + Decimal::from(completion) * d("10.00"))
        / Decimal::from(1_000_000)
}

struct Sent {
    id: String,
    status: u16,
    cost_header: String,
    text: String,
}

async fn send(dp: &DataPlane, key: &str, id: &str, path: &str, body: Value) -> Sent {
    let response = dp
        .client()
        .post(dp.url(path))
        .bearer_auth(key)
        .header("x-request-id", id)
        .header("x-gateway-meta-project", "apollo")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cost_header = header(&response, "x-gateway-cost-usd").to_owned();
    let text = response.text().await.unwrap();
    Sent { id: id.to_owned(), status, cost_header, text }
}

pub(crate) fn chat(stream: bool, extra: Value) -> Value {
    let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "what does it cost?"}],
                          "stream": stream, "metadata": {"ticket": 42}});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[sqlx::test(migrations = false)]
async fn every_endpoint_and_kind_is_metered_exactly(pool: PgPool) {
    let test = "spend_exact";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await, MockUpstream::start(test, "m1").await];
    let key = configure(&cp, &mocks).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;

    let usage = json!({"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290});
    let cached =
        json!({"prompt_tokens": 2000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 1000}});
    let (m0, m1) = (&mocks[0], &mocks[1]);
    m0.script(json!([{"usage": usage}, {"usage": cached}, {"usage": usage}, {"usage": usage}, {"omit_usage": true},
                     {"omit_usage": true}, {"usage": {"prompt_tokens": 8191, "total_tokens": 8191}}, {},
                     {"cut_after": 2}, {"status": 500}, {"status": 500}, {"status": 400}]))
        .await;
    m1.script(json!([{}, {"status": 500}])).await;
    let include_usage = json!({"stream_options": {"include_usage": true}});
    let mut sent = Vec::new();
    sent.push(send(&dp, &key, "plain", "/v1/chat/completions", chat(false, json!({}))).await);
    sent.push(send(&dp, &key, "cached", "/v1/chat/completions", chat(false, json!({}))).await);
    sent.push(send(&dp, &key, "stream-injected", "/v1/chat/completions", chat(true, json!({}))).await);
    sent.push(send(&dp, &key, "stream-asked", "/v1/chat/completions", chat(true, include_usage)).await);
    sent.push(send(&dp, &key, "stream-no-usage", "/v1/chat/completions", chat(true, json!({}))).await);
    sent.push(send(&dp, &key, "no-usage", "/v1/chat/completions", chat(false, json!({}))).await);
    let embed = json!({"model": "embed", "input": ["a", "b"]});
    sent.push(send(&dp, &key, "embeddings", "/v1/embeddings", embed).await);
    let completion = json!({"model": "chat", "prompt": "Say hi"});
    sent.push(send(&dp, &key, "completions", "/v1/completions", completion).await);
    sent.push(send(&dp, &key, "interrupted", "/v1/chat/completions", chat(true, json!({}))).await);
    sent.push(send(&dp, &key, "failover", "/v1/chat/completions", chat(false, json!({}))).await);
    sent.push(send(&dp, &key, "all-failed", "/v1/chat/completions", chat(false, json!({}))).await);
    sent.push(send(&dp, &key, "refused-upstream", "/v1/chat/completions", chat(false, json!({}))).await);
    let sent: BTreeMap<String, Sent> = sent.into_iter().map(|s| (s.id.clone(), s)).collect();

    // What the clients saw.
    for (id, answer) in &sent {
        let expected = match id.as_str() {
            "all-failed" => 502,
            "refused-upstream" => 400,
            _ => 200,
        };
        assert_eq!(answer.status, expected, "{id}: {}", answer.text);
    }
    assert_eq!(sent["plain"].cost_header, "0.003645", "1234 x 2.50 + 56 x 10.00 per million");
    assert_eq!(sent["cached"].cost_header, "0.00475", "1000 x 2.50 + 1000 cached x 1.25 + 100 x 10.00");
    let injected = &sent["stream-injected"].text;
    assert!(!injected.contains("prompt_tokens"), "the usage chunk the client did not ask for is stripped: {injected}");
    assert!(injected.contains(": gateway-cost-usd=0.003645 usage=reported\n\ndata: [DONE]"), "{injected}");
    assert!(sent["stream-asked"].text.contains("\"prompt_tokens\":1234"), "asked for, so kept");
    let asked_upstream = &m0.requests().await[2]["body"];
    assert_eq!(asked_upstream["stream_options"], json!({"include_usage": true}), "the gateway asks for usage");

    let events = by_request_id(&cp.wait_for_spend_events(sent.len()).await);
    assert_eq!(events.len(), sent.len(), "one event per request that reached an upstream: {events:?}");
    let prompt_estimate = tokens::chat_prompt(["what does it cost?"]);
    let generated = tokens::count("Hello from m0");
    // id: (cost, prompt, cached, completion, estimated, outcome, status, attempts, backend)
    type Expected = (Decimal, u64, u64, u64, bool, &'static str, i64, i64, &'static str);
    let expected: Vec<(&str, Expected)> = vec![
        ("plain", (d("0.003645"), 1234, 0, 56, false, "ok", 200, 1, "up0")),
        ("cached", (d("0.00475"), 2000, 1000, 100, false, "ok", 200, 1, "up0")),
        ("stream-injected", (d("0.003645"), 1234, 0, 56, false, "ok", 200, 1, "up0")),
        ("stream-asked", (d("0.003645"), 1234, 0, 56, false, "ok", 200, 1, "up0")),
        (
            "stream-no-usage",
            (chat_cost(prompt_estimate, 0, generated), prompt_estimate, 0, generated, true, "ok", 200, 1, "up0"),
        ),
        (
            "no-usage",
            (chat_cost(prompt_estimate, 0, generated), prompt_estimate, 0, generated, true, "ok", 200, 1, "up0"),
        ),
        ("embeddings", (d("0.00016382"), 8191, 0, 0, false, "ok", 200, 1, "up0")),
        ("completions", (chat_cost(12, 0, 5), 12, 0, 5, false, "ok", 200, 1, "up0")),
        (
            "interrupted",
            (
                chat_cost(prompt_estimate, 0, tokens::count("Hello")),
                prompt_estimate,
                0,
                tokens::count("Hello"),
                true,
                "interrupted",
                200,
                1,
                "up0",
            ),
        ),
        ("failover", (chat_cost(12, 0, 5), 12, 0, 5, false, "ok", 200, 2, "up1")),
        ("all-failed", (Decimal::ZERO, 0, 0, 0, false, "upstream_error", 502, 2, "up1")),
        ("refused-upstream", (Decimal::ZERO, 0, 0, 0, false, "upstream_error", 400, 1, "up0")),
    ];
    for (id, (cost, prompt, cached, completion, estimated, outcome, status, attempts, backend)) in expected {
        let event = &events[id];
        let what = format!("{id}: {event}");
        assert_eq!(d(event["cost_usd"].as_str().unwrap()), cost, "{what}");
        assert_eq!(event["prompt_tokens"], json!(prompt), "{what}");
        assert_eq!(event["cached_prompt_tokens"], json!(cached), "{what}");
        assert_eq!(event["completion_tokens"], json!(completion), "{what}");
        assert_eq!(event["usage_estimated"], json!(estimated), "{what}");
        assert_eq!(event["outcome"], json!(outcome), "{what}");
        assert_eq!(event["status"], json!(status), "{what}");
        assert_eq!(event["attempts"], json!(attempts), "{what}");
        assert_eq!(event["backend"], json!(backend), "{what}");
        assert_eq!(event["backend_region"], json!(if backend == "up0" { "eu" } else { "us" }), "{what}");
        assert_eq!(event["key_name"], json!("spender"), "{what}");
        assert_eq!(event["team"], json!("search"), "{what}");
        assert_eq!(event["metadata"]["project"], json!("apollo"), "{what}");
        assert_eq!(event["interrupted"], json!(outcome == "interrupted"), "{what}");
        let streamed = id.starts_with("stream") || id == "interrupted";
        assert_eq!(event["streamed"], json!(streamed), "{what}");
        assert_eq!(event["ttft_ms"].is_number(), streamed, "{what}");
        if !sent[id].cost_header.is_empty() {
            assert_eq!(d(&sent[id].cost_header), cost, "the header says what the ledger says: {what}");
        }
    }
    let plain = &events["plain"];
    assert_eq!(plain["alias"], json!("chat"));
    assert_eq!(plain["model"], json!("priced0"));
    assert_eq!(plain["upstream_model"], json!("gpt-0"));
    assert_eq!(plain["endpoint"], json!("chat.completions"));
    assert_eq!(plain["metadata"]["ticket"], json!("42"));
    assert_eq!(plain["snapshot_version"], json!(config_version(&cp).await));
    assert_eq!(events["embeddings"]["alias"], json!("embed"));
    assert_eq!(events["completions"]["endpoint"], json!("completions"));

    // The roll-ups agree to the last decimal.
    let total: Decimal = events.values().map(|e| d(e["cost_usd"].as_str().unwrap())).sum();
    let (status, report) = cp.call("GET", "/spend?group_by=team", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(d(report["total"]["cost_usd"].as_str().unwrap()), total, "{report}");
    assert_eq!(report["total"]["requests"], json!(sent.len()));
    assert_eq!(report["total"]["errors"], json!(3), "interrupted, all-failed and refused-upstream");
}

/// Requests sent while `during` runs: `count` chat requests (every third one streamed), `concurrency` at a time,
/// each with its own request id. Returns the ids of those answered completely with 200.
pub(crate) async fn traffic(dp: &DataPlane, key: &str, prefix: &str, count: usize, concurrency: usize) -> Vec<String> {
    let requests = (0..count).map(|i| {
        let id = format!("{prefix}-{i}");
        let stream = i % 3 == 0;
        let request = dp
            .client()
            .post(dp.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-request-id", &id)
            .json(&chat(stream, json!({})));
        async move {
            let response = request.send().await.ok()?;
            if response.status() != 200 {
                return None;
            }
            let text = response.text().await.ok()?;
            let complete = if stream { text.trim_end().ends_with("data: [DONE]") } else { text.contains("choices") };
            complete.then_some(id)
        }
    });
    futures_util::stream::iter(requests).buffer_unordered(concurrency).filter_map(|id| async { id }).collect().await
}

/// The served ids are exactly the ledger's, once each.
pub(crate) async fn assert_ledger_matches(cp: &ControlPlane, served: &[String]) {
    let events = cp.wait_for_spend_events(served.len()).await;
    let ids: Vec<&str> = events.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event counted twice");
    let served: HashSet<&str> = served.iter().map(String::as_str).collect();
    let missing: Vec<&&str> = served.difference(&unique).collect();
    let extra: Vec<&&str> = unique.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not recorded: {missing:?}; recorded but not served: {extra:?}"
    );
}

/// A control plane from `cp_config`, one mock answering with `mock` by default, the configuration, and a data plane
/// (`dp_env` on top of fast reporting): what the loss tests send traffic through. Returns its config and key too.
async fn under_load(
    test: &str,
    cp_config: ControlPlaneConfig,
    mock: Value,
    dp_env: &[(&str, &str)],
) -> (ControlPlane, MockUpstream, DataPlane, DataPlaneConfig, String) {
    let cp = ControlPlane::start(cp_config).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    mocks[0].set_default(mock).await;
    let key = configure(&cp, &mocks).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    config.env.extend(dp_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;
    let mock = mocks.into_iter().next().unwrap();
    (cp, mock, dp, config, key)
}

#[sqlx::test(migrations = false)]
async fn a_control_plane_restart_during_traffic_loses_no_event(pool: PgPool) {
    let test = "spend_cp_restart";
    let cp_config = ControlPlaneConfig::new(test, "cp", &test_database_url(&pool));
    let (cp, _mock, dp, _, key) = under_load(test, cp_config, json!({"delay_ms": 5, "chunk_delay_ms": 2}), &[]).await;
    let cp_config = cp.config();
    let load = traffic(&dp, &key, "cp-restart", 400, 4);
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cp.kill().await;
        // The data plane keeps serving and spooling while the control plane is away.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        ControlPlane::start(cp_config).await
    };
    let (served, cp) = tokio::join!(load, outage);
    assert_eq!(served.len(), 400, "the data plane serves throughout");
    assert_ledger_matches(&cp, &served).await;
}

#[sqlx::test(migrations = false)]
async fn a_postgres_restart_during_traffic_loses_no_event(_pool: PgPool) {
    let test = "spend_pg_restart";
    let postgres = PostgresCluster::start(test).await;
    let mut cp_config = ControlPlaneConfig::new(test, "cp", &postgres.url("gateway"));
    // Give up quickly on a dead connection, so the outage is short for everyone.
    cp_config.env.push(("GATEWAY_DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into()));
    let (cp, _mock, dp, _, key) = under_load(test, cp_config, json!({"delay_ms": 5, "chunk_delay_ms": 2}), &[]).await;
    let load = traffic(&dp, &key, "pg-restart", 400, 4);
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        postgres.stop_server().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        postgres.start_server().await;
    };
    let (served, ()) = tokio::join!(load, outage);
    assert_eq!(served.len(), 400, "the data plane serves throughout");
    assert_ledger_matches(&cp, &served).await;
}

pub(crate) fn spool_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "pb"));
    files
}

#[sqlx::test(migrations = false)]
async fn a_data_plane_sigterm_flushes_and_its_spool_survives_restarts_counted_once(pool: PgPool) {
    let test = "spend_sigterm";
    let cp_config = ControlPlaneConfig::new(test, "cp", &test_database_url(&pool));
    // A long interval: what SIGTERM finds unreported must be flushed by the shutdown itself.
    let long_interval = [("GATEWAY_SPEND_REPORT_INTERVAL_MS", "60000")];
    let mock = json!({"delay_ms": 20, "chunk_delay_ms": 10});
    let (cp, _mock, dp, config, key) = under_load(test, cp_config, mock, &long_interval).await;
    let cp_config = cp.config();

    // SIGTERM in the middle of traffic: requests in flight finish and are metered; the rest is refused.
    let load = traffic(&dp, &key, "sigterm", 300, 6);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        dp.sigterm().await;
    };
    let (served, ()) = tokio::join!(load, stop);
    let status = dp.wait_exit().await;
    assert!(status.success(), "a graceful shutdown exits cleanly: {status}");
    assert!(!served.is_empty() && served.len() < 300, "the shutdown came during traffic: {} served", served.len());
    assert_ledger_matches(&cp, &served).await;

    // With the control plane away, SIGTERM leaves the unacknowledged spend in the spool...
    cp.kill().await;
    let dp = DataPlane::start(&config);
    dp.wait_for_version(1).await;
    let offline = traffic(&dp, &key, "offline", 30, 3).await;
    assert_eq!(offline.len(), 30, "served from the persisted snapshot");
    assert!(dp.terminate().await.success());
    let spool = config.state_dir.join("spend-spool");
    let files = spool_files(&spool);
    assert!(!files.is_empty(), "the flush could not reach the ledger: the batches stay spooled");
    let copies = std::env::temp_dir().join(format!("gateway-e2e-spool-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copies);
    std::fs::create_dir_all(&copies).unwrap();
    for file in &files {
        std::fs::copy(file, copies.join(file.file_name().unwrap())).unwrap();
    }

    // ...which the next start sends once the control plane is back.
    let cp = ControlPlane::start(cp_config).await;
    let dp = DataPlane::start(&config);
    let everything: Vec<String> = served.iter().chain(&offline).cloned().collect();
    assert_ledger_matches(&cp, &everything).await;
    eventually(Duration::from_secs(20), "the spool to empty", || async {
        spool_files(&spool).is_empty().then_some(())
    })
    .await;
    assert!(dp.terminate().await.success());

    // The same batches sent again (as after an acknowledgement lost on the way) are counted once.
    for file in std::fs::read_dir(&copies).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, spool.join(file.file_name().unwrap())).unwrap();
    }
    let dp = DataPlane::start(&config);
    eventually(Duration::from_secs(20), "the resent spool to empty", || async {
        spool_files(&spool).is_empty().then_some(())
    })
    .await;
    assert_ledger_matches(&cp, &everything).await;
    let (_, report) = cp.call("GET", "/spend", None).await;
    assert_eq!(report["total"]["requests"], json!(everything.len()), "{report}");
    drop(dp);
    let _ = std::fs::remove_dir_all(&copies);
}

/// The sliding-window maximum of `times` (completion instants): the most requests finished within any `window`.
pub(crate) fn most_within(times: &[Instant], window: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) > window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[sqlx::test(migrations = false)]
async fn a_budget_stops_two_data_planes_under_load_within_the_documented_bound(pool: PgPool) {
    let test = "spend_budget";
    const REPORT_MS: u64 = 100;
    const STATE_MS: u64 = 100;
    let mut cp_config = ControlPlaneConfig::new(test, "cp", &test_database_url(&pool));
    cp_config.env.push(("GATEWAY_BUDGET_STATE_INTERVAL_MS".into(), STATE_MS.to_string()));
    let cp = ControlPlane::start(cp_config).await;
    let mock = MockUpstream::start(test, "m0").await;
    mock.set_default(json!({"delay_ms": 20})).await;
    cp.create("backends", json!({"name": "up", "kind": "openai", "base_url": mock.base_url()})).await;
    // Only output is priced, and every answer has 5 completion tokens, so each request costs exactly 0.001 USD and
    // its reservation (max_tokens 5) is exactly its cost.
    cp.create(
        "models",
        json!({"name": "m", "backend": "up", "upstream_model": "m", "capabilities": {"chat": true},
               "pricing": {"input": "0", "output": "200"}}),
    )
    .await;
    cp.create(
        "budgets",
        json!({"name": "search-daily", "scope": {"type": "team", "team": "search"}, "period": "day", "limit_usd": "1.00",
               "action": "block", "soft_threshold": "0.5"}),
    )
    .await;
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "k", "team": "search"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = config_version(&cp).await;
    let mut planes = Vec::new();
    for name in ["dp1", "dp2"] {
        let mut config = DataPlaneConfig::new(test, name, &cp.grpc_url());
        config.env.push(("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), REPORT_MS.to_string()));
        let dp = DataPlane::start(&config);
        dp.wait_for_version(version).await;
        planes.push(dp);
    }

    // Each data plane under 4 concurrent clients for 5 s: without enforcement, about 2,000 requests (2 USD).
    const CONCURRENCY: usize = 4;
    let until = Instant::now() + Duration::from_secs(5);
    let stopped = Arc::new(AtomicBool::new(false));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    let mut clients = Vec::new();
    for (plane, dp) in planes.iter().enumerate() {
        for _ in 0..CONCURRENCY {
            let (http, url, key, body, stopped) =
                (dp.client().clone(), dp.url("/v1/chat/completions"), key.clone(), body.clone(), stopped.clone());
            clients.push(tokio::spawn(async move {
                let (mut served, mut refusals, mut warned) = (Vec::new(), Vec::new(), 0);
                while Instant::now() < until {
                    let response = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
                    match response.status().as_u16() {
                        200 => {
                            warned += usize::from(response.headers().contains_key("x-gateway-budget-warning"));
                            response.bytes().await.unwrap();
                            served.push(Instant::now());
                        }
                        429 => {
                            stopped.store(true, Ordering::Relaxed);
                            refusals.push(response.json::<Value>().await.unwrap());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
                (plane, served, refusals, warned)
            }));
        }
    }
    let mut served: [Vec<Instant>; 2] = [Vec::new(), Vec::new()];
    let mut refusals = Vec::new();
    let mut warned = 0;
    for client in clients {
        let (plane, times, refused, warnings) = client.await.unwrap();
        served[plane].extend(times);
        refusals.extend(refused);
        warned += warnings;
    }
    assert!(stopped.load(Ordering::Relaxed), "the budget never stopped the traffic");
    let refusal = &refusals[0]["error"];
    assert_eq!(refusal["code"], json!("budget_exceeded"), "{refusal}");
    assert_eq!(refusal["type"], json!("rate_limit_error"));
    assert_eq!(refusal["budget"], json!("search-daily"));
    assert!(refusal["message"].as_str().unwrap().contains("budget 'search-daily' (1 USD per day)"), "{refusal}");
    assert!(warned > 0, "past the soft threshold, answers carry x-gateway-budget-warning");

    // The documented bound: a data plane's view misses at most what the other one finished within one
    // propagation window (its report interval + the budget-state interval + commit and hops, given 1 s here for a
    // loaded CI machine) plus what it had in flight; every reservation equals its request's cost.
    let window = Duration::from_millis(REPORT_MS + STATE_MS + 1000);
    let request_cost = d("0.001");
    let missed = served.iter().map(|times| most_within(times, window)).max().unwrap() + CONCURRENCY;
    let bound = d("1.00") + request_cost * Decimal::from(missed);
    let total_served = served[0].len() + served[1].len();
    let events = cp.wait_for_spend_events(total_served).await;
    assert_eq!(events.len(), total_served, "every served request is in the ledger");
    let spent: Decimal = events.iter().map(|e| d(e["cost_usd"].as_str().unwrap())).sum();
    assert_eq!(spent, request_cost * Decimal::from(total_served));
    let tight = served.iter().map(|times| most_within(times, Duration::from_millis(REPORT_MS + STATE_MS))).max();
    eprintln!(
        "budget: spent {spent} of 1.00 over {total_served} requests; bound {bound} ({missed} requests; with no \
         processing time {tight:?} + {CONCURRENCY})"
    );
    assert!(spent <= bound, "spent {spent} USD against a 1.00 USD budget; the bound is {bound} ({missed} requests)");
    // And no false blocks: the budget was used up before refusals began (less than one request per client left).
    let slack = request_cost * Decimal::from(2 * CONCURRENCY);
    assert!(spent >= d("1.00") - slack, "refused with {spent} USD of 1.00 spent");
    let (status, budget) = cp.call("GET", "/budgets/search-daily", None).await;
    assert_eq!(status, 200);
    assert_eq!(d(budget["status"]["spent_usd"].as_str().unwrap()), spent, "{budget}");
    assert_eq!(budget["status"]["exceeded"], json!(spent >= d("1.00")));
}

type Client = ConfigDiscoveryClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>,
    >,
>;

async fn spend_client(cp: &ControlPlane) -> Client {
    let channel = tonic::transport::Channel::from_shared(cp.grpc_url()).unwrap().connect().await.unwrap();
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {NODE_TOKEN}").parse().unwrap();
    ConfigDiscoveryClient::with_interceptor(
        channel,
        Box::new(move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", token.clone());
            Ok(request)
        }),
    )
}

#[sqlx::test(migrations = false)]
async fn spend_of_the_previous_period_does_not_count_in_the_current_one(pool: PgPool) {
    let test = "spend_periods";
    let mut cp_config = ControlPlaneConfig::new(test, "cp", &test_database_url(&pool));
    cp_config.env.push(("GATEWAY_BUDGET_STATE_INTERVAL_MS".into(), "100".into()));
    let cp = ControlPlane::start(cp_config).await;
    let mocks = vec![MockUpstream::start(test, "m0").await, MockUpstream::start(test, "m1").await];
    let key = configure(&cp, &mocks).await;
    cp.create(
        "budgets",
        json!({"name": "search-daily", "scope": {"type": "team", "team": "search"}, "period": "day", "limit_usd": "0.001",
               "action": "block"}),
    )
    .await;
    // Another data plane reported: yesterday, in the last second before midnight (UTC), 100 times the team's daily
    // limit; today, 90% of it.
    let midnight = (chrono::Utc::now().timestamp() / 86_400) * 86_400;
    let event = |at_ms: i64, cost: &str| v1::SpendEvent {
        id: uuid::Uuid::now_v7().to_string(),
        occurred_at_unix_ms: at_ms,
        key_id: "k".into(),
        key_name: "spender".into(),
        team: "search".into(),
        alias: "chat".into(),
        model: "priced0".into(),
        backend: "up0".into(),
        endpoint: "chat.completions".into(),
        status: 200,
        outcome: "ok".into(),
        cost_usd: cost.into(),
        ..v1::SpendEvent::default()
    };
    let events = vec![event((midnight - 1) * 1000, "0.1"), event(chrono::Utc::now().timestamp_millis(), "0.0009")];
    let batch = v1::SpendBatch { node_id: "elsewhere".into(), events, batch_id: "b".into() };
    let ack = spend_client(&cp).await.report_spend(batch).await.unwrap().into_inner();
    assert_eq!(ack.accepted, 2);
    let (_, budget) = cp.call("GET", "/budgets/search-daily", None).await;
    assert_eq!(d(budget["status"]["spent_usd"].as_str().unwrap()), d("0.0009"), "only today's: {budget}");

    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // budget states arrive every 100 ms
    // A request costs (and reserves) 0.00008: the first fits next to today's 0.0009, the second would not.
    let body = chat(false, json!({"max_tokens": 5}));
    let first = send(&dp, &key, "today-1", "/v1/chat/completions", body.clone()).await;
    assert_eq!(first.status, 200, "yesterday's spend does not count today: {}", first.text);
    let refused = send(&dp, &key, "today-2", "/v1/chat/completions", body).await;
    assert_eq!(refused.status, 429, "today's spend from elsewhere and from here does: {}", refused.text);
    let error: Value = serde_json::from_str(&refused.text).unwrap();
    assert_eq!(error["error"]["code"], json!("budget_exceeded"));
    let resets = chrono::DateTime::from_timestamp(midnight + 86_400, 0).unwrap();
    let resets = resets.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(error["error"]["message"].as_str().unwrap().ends_with(&format!("it resets at {resets}")), "{error}");
}

#[sqlx::test(migrations = false)]
async fn a_backend_that_refuses_stream_options_is_asked_without_them_and_metered_by_the_tokenizer(pool: PgPool) {
    let test = "spend_no_stream_options";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await];
    let key = configure(&cp, &mocks).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    let dp = DataPlane::start(&config);
    dp.wait_for_version(config_version(&cp).await).await;
    let refusal = json!({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                   "type": "invalid_request_error", "param": null, "code": null}});
    mocks[0].script(json!([{"status": 400, "body": refusal}])).await;
    let first = send(&dp, &key, "first", "/v1/chat/completions", chat(true, json!({}))).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(first.text.trim_end().ends_with("data: [DONE]"), "{}", first.text);
    let second = send(&dp, &key, "second", "/v1/chat/completions", chat(true, json!({}))).await;
    assert_eq!(second.status, 200);
    let seen: Vec<Value> = mocks[0].requests().await.into_iter().map(|r| r["body"]["stream_options"].clone()).collect();
    assert_eq!(seen, [json!({"include_usage": true}), Value::Null, Value::Null], "asked again without, then never");

    let events = by_request_id(&cp.wait_for_spend_events(2).await);
    assert_eq!(events["first"]["attempts"], json!(2));
    assert_eq!(events["second"]["attempts"], json!(1));
    for event in events.values() {
        assert_eq!(event["usage_estimated"], json!(true), "{event}");
        assert_eq!(event["completion_tokens"], json!(tokens::count("Hello from m0")), "{event}");
    }
}
