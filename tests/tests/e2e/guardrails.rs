//! Guardrails across the real planes, with the official `openai` SDK as the caller (`tests/sdk/guardrails_client.py`)
//! and the mock's request log as the upstream's view: a prompt redacted before it leaves, a blocked one never sent, a
//! secret split across two streamed chunks redacted in what the client assembles, the outcomes in the ledger and the
//! metrics, and no matched text in any log, event or error. Semantics: `docs/guardrails.md`.

use std::path::PathBuf;

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const STREAM_KEY_HEAD: &str = "sk-proj-abcdefghij";
const STREAM_KEY_TAIL: &str = "klmnopqrstuvwx";

fn root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// What the SDK caller saw.
async fn sdk(dp: &DataPlane, key: &str, mode: &str, case: &str, prompt: &str) -> Value {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: scripts/test.sh creates the venv", python.display());
    let output = tokio::process::Command::new(python)
        .arg(root().join("tests/sdk/guardrails_client.py"))
        .args([&dp.url("/v1"), key, mode, case, prompt])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{stdout}{}", String::from_utf8_lossy(&output.stderr)))
}

#[sqlx::test(migrations = false)]
async fn prompts_are_redacted_or_blocked_streams_redacted_and_outcomes_recorded_without_content(pool: PgPool) {
    let test = "guardrails";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mock = MockUpstream::start(test, "m0").await;
    cp.create("backends", json!({"name": "up", "kind": "openai", "base_url": mock.base_url()})).await;
    cp.create(
        "models",
        json!({"name": "m", "backend": "up", "upstream_model": "upstream-m",
        "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}),
    )
    .await;
    cp.create("aliases", json!({"name": "chat", "candidates": [{"model": "m"}]})).await;
    let when = |case: &str| format!("has(request.metadata.case) && request.metadata.case == '{case}'");
    cp.create(
        "guardrails",
        json!({"name": "pii", "when": when("redact"), "side": "prompt", "action": "redact",
        "detectors": [{"type": "email"}, {"type": "payment_card"}]}),
    )
    .await;
    cp.create(
        "guardrails",
        json!({"name": "secrets", "when": when("block"), "side": "prompt", "action": "block",
        "detectors": [{"type": "credential"}]}),
    )
    .await;
    cp.create(
        "guardrails",
        json!({"name": "answer-secrets", "when": when("stream"), "side": "completion",
        "action": "redact", "stream_window_chars": 64, "detectors": [{"type": "credential"}]}),
    )
    .await;
    // Refused at write, never silently accepted: external classifiers are not built yet.
    let (status, refused) = cp
        .call(
            "POST",
            "/guardrails",
            Some(json!({"name": "mod", "action": "block",
            "detectors": [{"type": "moderation", "backend": "up"}]})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("not supported"), "{refused}");
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    dp.wait_for_version(version).await;

    // The dry run names the guardrails that apply.
    let (status, dry) = cp
        .call(
            "POST",
            "/evaluate",
            Some(json!({"request": {"model": "chat", "metadata": {"case": "redact"},
            "messages": [{"role": "user", "content": "hi"}]}})),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["guardrails"], json!({"prompt": ["pii"], "completion": []}));

    // 1. Redacted before it leaves; the caller's answer is the upstream's, unaffected.
    let prompt = format!("My email is {EMAIL} and my card is {CARD}.");
    let answer = sdk(&dp, &key, "chat", "redact", &prompt).await;
    assert_eq!(answer["content"], json!("Hello from m0"), "{answer}");
    let requests = mock.requests().await;
    assert_eq!(requests.len(), 1);
    let sent = requests[0].to_string();
    assert!(sent.contains("My email is [REDACTED:email] and my card is [REDACTED:payment_card]."), "{sent}");
    assert!(!sent.contains(EMAIL) && !sent.contains(CARD), "{sent}");

    // 2. Blocked: content_blocked naming the guardrail and the category, never the text; nothing sent upstream.
    let blocked = sdk(&dp, &key, "chat", "block", &format!("deploy with {AWS_KEY} please")).await;
    assert_eq!(
        (blocked["status"].clone(), blocked["code"].clone()),
        (json!(400), json!("content_blocked")),
        "{blocked}"
    );
    let message = blocked["message"].as_str().unwrap();
    assert!(message.contains("'secrets'") && message.contains("credential"), "{message}");
    assert!(!message.contains(AWS_KEY), "{message}");
    assert_eq!(mock.requests().await.len(), 1, "the blocked prompt never reached the upstream");

    // 3. A secret split across two streamed chunks is redacted in what the client assembles.
    mock.script(
        json!([{"pieces": [format!("Your key is {STREAM_KEY_HEAD}"), format!("{STREAM_KEY_TAIL}, keep it safe.")]}]),
    )
    .await;
    let streamed = sdk(&dp, &key, "stream", "stream", "what is my key?").await;
    assert_eq!(streamed["content"], json!("Your key is [REDACTED:credential], keep it safe."), "{streamed}");

    // Outcomes in the ledger: names and counts.
    let events = cp.wait_for_spend_events(2).await;
    let outcomes = |id: &str| -> Vec<Value> {
        let event = events.iter().find(|e| e["request_id"] == json!(id)).unwrap_or_else(|| panic!("{id}: {events:?}"));
        event["guardrails"].as_array().unwrap().clone()
    };
    assert_eq!(
        outcomes("guardrails-redact"),
        vec![
            json!({"guardrail": "pii", "detector": "email", "action": "redact", "side": "prompt", "count": 1}),
            json!({"guardrail": "pii", "detector": "payment_card", "action": "redact", "side": "prompt", "count": 1}),
        ]
    );
    assert_eq!(
        outcomes("guardrails-stream"),
        vec![json!({"guardrail": "answer-secrets", "detector": "credential", "action": "redact",
            "side": "completion", "count": 1})]
    );

    // Metrics: every outcome, the block included (it left no spend event, as nothing reached an upstream).
    let metrics = http_client().get(dp.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |labels: &[&str]| -> Option<String> {
        metrics
            .lines()
            .find(|l| l.starts_with("gateway_guardrail_matches_total{") && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next().map(str::to_owned))
    };
    assert_eq!(count(&["guardrail=\"secrets\"", "detector=\"credential\"", "action=\"block\""]).as_deref(), Some("1"));
    assert_eq!(count(&["guardrail=\"pii\"", "detector=\"email\"", "side=\"prompt\""]).as_deref(), Some("1"));
    assert_eq!(count(&["guardrail=\"answer-secrets\"", "side=\"completion\""]).as_deref(), Some("1"));

    // No matched text in any log, event or error.
    let mut seen = format!("{events:?}{blocked}{metrics}");
    for log in [&dp.log, &cp.log] {
        seen.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    for secret in [EMAIL, CARD, AWS_KEY, STREAM_KEY_HEAD, STREAM_KEY_TAIL] {
        assert!(!seen.contains(secret), "{secret} appears in a log, event or error");
    }
}
