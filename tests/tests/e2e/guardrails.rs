//! Guardrails across the real planes, with the official `openai` SDK as the caller (`tests/sdk/guardrails_client.py`)
//! and the mock's request log as the upstream's view: a prompt redacted before it leaves, a blocked one never sent, a
//! secret split across two streamed chunks (or a streamed tool call's argument deltas) redacted in what the client
//! assembles, the outcomes in the ledger and the metrics, and no matched text in any log, event or error; external
//! classifiers (a moderation backend, a webhook) blocking, passing, failing open or closed. Semantics:
//! `docs/guardrails.md`.

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
        json!({"name": "answer-secrets", "when": "has(request.metadata.case) && request.metadata.case in ['stream', 'stream-tool']",
        "side": "completion",
        "action": "redact", "stream_window_chars": 64, "detectors": [{"type": "credential"}]}),
    )
    .await;
    // A moderation classifier on a backend that does not exist is refused at write, naming the field.
    let (status, refused) = cp
        .call(
            "POST",
            "/guardrails",
            Some(json!({"name": "mod", "action": "block", "detectors": [{"type": "moderation", "backend": "nope",
            "thresholds": {"violence": 0.5}, "timeout_ms": 500, "on_error": "fail_closed"}]})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused.to_string().contains("detectors[0].backend: backend \\\"nope\\\" does not exist"), "{refused}");
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

    // 4. So is a secret split across a streamed tool call's argument deltas (the mock cuts them in three).
    mock.script(json!([{"tool_calls": [{"name": "send", "arguments": format!(
        "{{\"token\": \"{STREAM_KEY_HEAD}{STREAM_KEY_TAIL}\"}}")}]}]))
        .await;
    let tool = sdk(&dp, &key, "stream_tool", "stream-tool", "send my key").await;
    assert_eq!(tool["arguments"], json!("{\"token\": \"[REDACTED:credential]\"}"), "{tool}");

    // Outcomes in the ledger: names and counts.
    let events = cp.wait_for_spend_events(3).await;
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
    assert_eq!(count(&["guardrail=\"answer-secrets\"", "side=\"completion\""]).as_deref(), Some("2"));

    // No matched text in any log, event or error.
    let mut seen = format!("{events:?}{blocked}{metrics}");
    for log in [&dp.log, &cp.log] {
        seen.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    for secret in [EMAIL, CARD, AWS_KEY, STREAM_KEY_HEAD, STREAM_KEY_TAIL] {
        assert!(!seen.contains(secret), "{secret} appears in a log, event or error");
    }
}

const VIOLENT: &str = "a prompt the classifier scores as violent";
const HOOKED: &str = "a prompt the webhook scores as personal data";

#[sqlx::test(migrations = false)]
async fn external_classifiers_block_pass_and_fail_open_or_closed_as_configured(pool: PgPool) {
    let test = "guardrail_classifiers";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let chat = MockUpstream::start(test, "m0").await;
    let moderator = MockUpstream::start(test, "mod0").await;
    let hook = MockUpstream::start(test, "hook0").await;
    cp.create("backends", json!({"name": "up", "kind": "openai", "base_url": chat.base_url()})).await;
    cp.create(
        "backends",
        json!({"name": "moderator", "kind": "openai", "base_url": moderator.base_url(),
        "secret": {"value": "sk-moderator"}}),
    )
    .await;
    cp.create(
        "models",
        json!({"name": "m", "backend": "up", "upstream_model": "upstream-m",
        "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}),
    )
    .await;
    cp.create("aliases", json!({"name": "chat", "candidates": [{"model": "m"}]})).await;
    let when = |case: &str| format!("has(request.metadata.case) && request.metadata.case == '{case}'");
    let moderation = |timeout_ms: u64, on_error: &str| {
        json!({"type": "moderation", "backend": "moderator", "model": "omni-moderation-latest",
        "thresholds": {"violence": 0.5, "hate": 0.5}, "timeout_ms": timeout_ms, "on_error": on_error})
    };
    let guardrails = [
        json!({"name": "moderated", "when": when("moderate"), "side": "prompt", "action": "block",
            "detectors": [moderation(5000, "fail_closed")]}),
        json!({"name": "mod-open", "when": when("slow-open"), "side": "prompt", "action": "block",
            "detectors": [moderation(300, "fail_open")]}),
        json!({"name": "mod-closed", "when": when("slow-closed"), "side": "prompt", "action": "block",
            "detectors": [moderation(300, "fail_closed")]}),
        json!({"name": "answers", "when": when("answer"), "side": "completion", "action": "block",
            "detectors": [moderation(5000, "fail_closed")]}),
        json!({"name": "hook", "when": when("webhook"), "side": "prompt", "action": "block",
            "detectors": [{"type": "webhook", "url": format!("{}/classify", hook.base_url()),
            "headers": {"x-tenant": "acme"}, "secret_ref": "env:PROVIDER_HOOK_TOKEN",
            "thresholds": {"pii": 0.8}, "timeout_ms": 5000, "on_error": "fail_closed"}]}),
    ];
    for guardrail in guardrails {
        cp.create("guardrails", guardrail).await;
    }
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env.push(("PROVIDER_HOOK_TOKEN".to_owned(), "hook-token".to_owned()));
    let dp = DataPlane::start(&config);
    dp.wait_for_version(version).await;
    let error_of = |seen: &Value| (seen["status"].clone(), seen["code"].clone());

    // 1. A category at or above its threshold blocks: content_blocked naming the guardrail and the category; the
    // chat upstream receives nothing; the moderation endpoint got the prompt with the backend's credentials.
    moderator.set_default(json!({"scores": {"violence": 0.91, "hate": 0.1, "sexual": 1.0}})).await;
    let blocked = sdk(&dp, &key, "chat", "moderate", VIOLENT).await;
    assert_eq!(error_of(&blocked), (json!(400), json!("content_blocked")), "{blocked}");
    let message = blocked["message"].as_str().unwrap();
    assert!(message.contains("'moderated'") && message.contains("violence"), "{message}");
    assert!(!message.contains(VIOLENT), "{message}");
    assert!(chat.requests().await.is_empty(), "a blocked prompt never reaches the chat upstream");
    let asked = moderator.requests().await;
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["body"], json!({"input": [VIOLENT], "model": "omni-moderation-latest"}));
    assert_eq!(asked[0]["authorization"], json!("Bearer sk-moderator"));

    // 2. Below every threshold (and a category without one ignored): served.
    moderator.set_default(json!({"scores": {"violence": 0.49, "sexual": 1.0}})).await;
    let passed = sdk(&dp, &key, "chat", "moderate", "a harmless prompt").await;
    assert_eq!(passed["content"], json!("Hello from m0"), "{passed}");
    assert_eq!(chat.requests().await.len(), 1);

    // 3. A classifier slower than its timeout: fail_open serves, and fail_closed refuses with 503
    // guardrail_unavailable; neither waits for the classifier, which answers after 60 s: the data plane hangs up
    // on it (the mock counts the call cancelled before its answer, which it would not be had the answer come).
    moderator.set_default(json!({"delay_ms": 60000, "scores": {"violence": 1.0}})).await;
    let hung_up_on = |calls: u64| {
        let moderator = &moderator;
        eventually(std::time::Duration::from_secs(30), "the classifier's call cancelled", move || async move {
            (moderator.stats().await["requests_cancelled"] == json!(calls)).then_some(())
        })
    };
    let open = sdk(&dp, &key, "chat", "slow-open", "a prompt while the classifier hangs").await;
    assert_eq!(open["content"], json!("Hello from m0"), "{open}");
    assert_eq!(chat.requests().await.len(), 2);
    hung_up_on(1).await;
    let closed = sdk(&dp, &key, "chat", "slow-closed", "another prompt while it hangs").await;
    hung_up_on(2).await;
    assert_eq!(error_of(&closed), (json!(503), json!("guardrail_unavailable")), "{closed}");
    assert!(closed["message"].as_str().unwrap().contains("'mod-closed'"), "{closed}");
    assert_eq!(chat.requests().await.len(), 2, "a fail_closed refusal sends nothing upstream");

    // 4. A webhook that scores a category over its threshold blocks; it got the documented request.
    hook.set_default(json!({"body": {"flagged": true, "categories": {"pii": 0.95, "other": 1.0}}})).await;
    let hooked = sdk(&dp, &key, "chat", "webhook", HOOKED).await;
    assert_eq!(error_of(&hooked), (json!(400), json!("content_blocked")), "{hooked}");
    assert!(hooked["message"].as_str().unwrap().contains("'hook' (pii"), "{hooked}");
    let calls = hook.requests().await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["path"], json!("/v1/classify"));
    assert_eq!(calls[0]["body"], json!({"input": [HOOKED], "side": "prompt", "guardrail": "hook"}));
    assert_eq!(calls[0]["authorization"], json!("Bearer hook-token"));
    assert_eq!(chat.requests().await.len(), 2);

    // 5. The completion side of a non-streamed answer: the answer is classified before it reaches the caller.
    moderator.set_default(json!({"scores": {"hate": 0.7}})).await;
    let answer = sdk(&dp, &key, "chat", "answer", "say something").await;
    assert_eq!(error_of(&answer), (json!(400), json!("content_blocked")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("hate found in the completion"), "{answer}");
    let last = moderator.requests().await.pop().unwrap();
    assert_eq!(last["body"]["input"], json!(["Hello from m0"]));
    // A streamed request such a guardrail would have to classify is refused before anything is sent.
    let streamed = sdk(&dp, &key, "stream", "answer", "say something").await;
    assert_eq!(error_of(&streamed), (json!(400), json!("unsupported_request")), "{streamed}");
    assert!(streamed["message"].as_str().unwrap().contains("guardrail 'answers'"), "{streamed}");
    assert_eq!(chat.requests().await.len(), 3);

    // Outcomes in the ledger: the flagged category, the classifier failing open; never content.
    let events = cp.wait_for_spend_events(3).await;
    let outcomes = |id: &str| -> Vec<Value> {
        let event = events.iter().find(|e| e["request_id"] == json!(id)).unwrap_or_else(|| panic!("{id}: {events:?}"));
        event["guardrails"].as_array().unwrap().clone()
    };
    assert_eq!(
        outcomes("guardrails-slow-open"),
        vec![json!({"guardrail": "mod-open", "detector": "moderation", "action": "fail_open", "side": "prompt",
            "count": 1})]
    );
    assert_eq!(
        outcomes("guardrails-answer"),
        vec![json!({"guardrail": "answers", "detector": "hate", "action": "block", "side": "completion", "count": 1})]
    );
    let metrics = http_client().get(dp.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |labels: &[&str]| -> Option<String> {
        metrics
            .lines()
            .find(|l| l.starts_with("gateway_guardrail_matches_total{") && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next().map(str::to_owned))
    };
    assert_eq!(count(&["guardrail=\"moderated\"", "detector=\"violence\"", "action=\"block\""]).as_deref(), Some("1"));
    assert_eq!(count(&["guardrail=\"mod-open\"", "action=\"fail_open\""]).as_deref(), Some("1"));
    assert_eq!(count(&["guardrail=\"mod-closed\"", "action=\"fail_closed\""]).as_deref(), Some("1"));
    assert_eq!(count(&["guardrail=\"hook\"", "detector=\"pii\""]).as_deref(), Some("1"));
    let mut seen = format!("{events:?}{blocked}{hooked}{metrics}");
    for log in [&dp.log, &cp.log] {
        seen.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    for text in [VIOLENT, HOOKED] {
        assert!(!seen.contains(text), "{text:?} appears in a log, event or error");
    }

    // The moderation backend is a reference: it cannot be deleted while a guardrail uses it.
    let (status, refused) = cp.call("DELETE", "/backends/moderator", None).await;
    assert_eq!(status, 409, "{refused}");
    assert!(refused.to_string().contains("guardrail/answers: detectors[0].backend"), "{refused}");
}
