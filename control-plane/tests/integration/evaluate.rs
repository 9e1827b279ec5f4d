//! The dry run on the seed patterns: cost-based routing, data residency, task routing, failover, deny.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

async fn evaluate(app: &TestApp, body: Value) -> Value {
    let reply = app.call("POST", "/admin/v1/evaluate", Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

fn candidates(decision: &Value) -> Vec<&str> {
    decision["candidates"].as_array().unwrap().iter().map(|c| c["model"].as_str().unwrap()).collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn failover_across_three_providers_by_default(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    let result =
        evaluate(&app, json!({"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}})).await;
    let decision = &result["decision"];
    assert_eq!(decision["outcome"], json!("route"));
    assert_eq!(decision["policy"], Value::Null, "no policy matched: the alias named by the request");
    assert_eq!(decision["alias"], json!("gpt-4o"));
    assert_eq!(decision["strategy"], json!("failover"));
    assert_eq!(candidates(decision), ["gpt-4o-openai", "gpt-4o-azure-eu", "mistral-large-eu"]);
    let backends: Vec<_> = decision["candidates"].as_array().unwrap().iter().map(|c| c["backend"].clone()).collect();
    assert_eq!(backends, [json!("openai-us"), json!("azure-eu"), json!("mistral-eu")]);
    assert_eq!(decision["candidates"][0]["upstream_model"], json!("gpt-4o"));
    assert_eq!(result["config_version"], json!(app.version().await));
}

#[sqlx::test(migrations = "../migrations")]
async fn long_low_sensitivity_prompts_go_to_the_cheap_backend(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    // Counted with the real tokenizer: ~3000 tokens of text.
    let long_text = "The quarterly report covers revenue, churn and hiring. ".repeat(300);
    let long = evaluate(
        &app,
        json!({"request": {"model": "gpt-4o", "metadata": {"sensitivity": "low"},
                                                 "messages": [{"role": "user", "content": long_text}]}}),
    )
    .await;
    assert!(long["prompt_tokens"].as_u64().unwrap() > 2000, "{}", long["prompt_tokens"]);
    assert_eq!(long["decision"]["policy"], json!("cost-long-low-sensitivity"));
    assert_eq!(candidates(&long["decision"]), ["llama-3.1-8b-groq"]);

    let short = evaluate(
        &app,
        json!({"request": {"model": "gpt-4o", "metadata": {"sensitivity": "low"},
                                                  "messages": [{"role": "user", "content": "short"}]}}),
    )
    .await;
    assert_eq!(short["decision"]["policy"], Value::Null);
    let sensitive = evaluate(
        &app,
        json!({"request": {"model": "gpt-4o", "prompt_tokens": 5000,
                                                      "metadata": {"sensitivity": "high"}}}),
    )
    .await;
    assert_eq!(sensitive["decision"]["alias"], json!("gpt-4o"));
}

#[sqlx::test(migrations = "../migrations")]
async fn restricted_data_stays_in_the_eu(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    let result =
        evaluate(&app, json!({"request": {"model": "gpt-4o", "metadata": {"data_classification": "restricted"}}}))
            .await;
    let decision = &result["decision"];
    assert_eq!(decision["outcome"], json!("route"));
    assert_eq!(candidates(decision), ["gpt-4o-azure-eu", "mistral-large-eu"]);
    assert_eq!(
        decision["rejected"],
        json!([{"model": "gpt-4o-openai", "backend": "openai-us", "policy": "data-residency"}])
    );
    assert_eq!(decision["constraints"], json!(["data-residency"]));

    // Via a header instead of the body's metadata? Headers are their own map; metadata is what residency reads.
    // Restricted and cheap: the only cheap model is in the US, so nothing may serve it.
    let none = evaluate(&app, json!({"request": {"model": "gpt-4o", "prompt_tokens": 3000,
                                                 "metadata": {"data_classification": "restricted", "sensitivity": "low"}}}))
    .await;
    assert_eq!(none["decision"]["outcome"], json!("no_eligible_candidate"));
    assert_eq!(none["decision"]["policy"], json!("cost-long-low-sensitivity"));
    assert_eq!(none["decision"]["rejected"][0]["policy"], json!("data-residency"));
}

#[sqlx::test(migrations = "../migrations")]
async fn code_generation_goes_to_the_code_model(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    let result = evaluate(&app, json!({"request": {"model": "gpt-4o", "metadata": {"task": "code_generation"}}})).await;
    assert_eq!(result["decision"]["policy"], json!("task-code-generation"));
    assert_eq!(result["decision"]["alias"], json!("code-model-fast"));
    assert_eq!(candidates(&result["decision"]), ["codestral-eu", "gpt-4o-openai"]);

    // Without `task` the policy's `has()` guard is false: it does not match, and nothing failed.
    let other = evaluate(&app, json!({"request": {"model": "gpt-4o"}})).await;
    let trace = other["trace"].as_array().unwrap();
    let task = trace.iter().find(|t| t["policy"] == json!("task-code-generation")).unwrap();
    assert_eq!(task["matched"], json!(false));
    assert_eq!(task.get("error"), None);
    assert_eq!(other["decision"]["alias"], json!("gpt-4o"));

    // A policy that reads a key the request lacks cannot decide: policies fail closed, so the request is refused,
    // naming the policy, instead of being routed as if the policy did not exist.
    app.create(
        "route-policies",
        json!({"name": "unguarded-tier", "priority": 60, "when": "request.metadata.tier == 'gold'",
               "action": {"type": "route", "alias": "cheap"}}),
    )
    .await;
    let refused = evaluate(&app, json!({"request": {"model": "gpt-4o"}})).await;
    assert_eq!(
        refused["decision"],
        json!({"outcome": "policy_error", "policy": "unguarded-tier", "field": "when", "error": "No such key: tier"})
    );
    let gold = evaluate(&app, json!({"request": {"model": "gpt-4o", "metadata": {"tier": "gold"}}})).await;
    assert_eq!(gold["decision"]["alias"], json!("cheap"));
}

#[sqlx::test(migrations = "../migrations")]
async fn keys_and_deny_policies(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    let blocked =
        evaluate(&app, json!({"request": {"model": "gpt-4o"}, "key": {"name": "x", "tags": ["blocked"]}})).await;
    assert_eq!(
        blocked["decision"],
        json!({"outcome": "deny", "policy": "deny-blocked-keys", "message": "this key is blocked by governance; contact the platform team"})
    );
    app.create("keys", json!({"name": "support-bot", "team": "support", "allowed_aliases": ["cheap"]})).await;
    let named = evaluate(&app, json!({"request": {"model": "gpt-4o"}, "key_name": "support-bot"})).await;
    assert_eq!(named["key"]["team"], json!("support"));
    assert_eq!(named["key_allows_model"], json!(false));
    let unknown = evaluate(&app, json!({"request": {"model": "no-such-model"}})).await;
    assert_eq!(unknown["decision"], json!({"outcome": "unknown_model", "model": "no-such-model"}));
    let missing_key =
        app.call("POST", "/admin/v1/evaluate", Some(json!({"request": {"model": "x"}, "key_name": "ghost"}))).await;
    assert_eq!(missing_key.status, StatusCode::NOT_FOUND);
    assert_eq!(missing_key.error_message(), "api_key \"ghost\" does not exist");
    let bad = app.call("POST", "/admin/v1/evaluate", Some(json!({"request": {}}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_message(), "request: missing field `model`");
}

#[sqlx::test(migrations = "../migrations")]
async fn the_dry_run_follows_config_changes(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    let before = evaluate(&app, json!({"request": {"model": "gpt-4o"}})).await;
    assert_eq!(before["decision"]["policy"], Value::Null);
    app.create(
        "route-policies",
        json!({"name": "everything-cheap", "priority": 10000, "when": "true",
                                        "action": {"type": "route", "alias": "cheap"}}),
    )
    .await;
    let after = evaluate(&app, json!({"request": {"model": "gpt-4o"}})).await;
    assert_eq!(after["decision"]["policy"], json!("everything-cheap"));
    assert_eq!(after["config_version"].as_i64().unwrap(), before["config_version"].as_i64().unwrap() + 1);
}
