//! The `anthropic` backend kind through the real planes: OpenAI requests translated to the Messages API and the
//! answers back, Anthropic's errors in the OpenAI shape, failover from it, and its usage (cache reads and writes
//! included) metered exactly into the ledger. Its tool calls, which need no ledger, are tested in process
//! (`pipeline/anthropic.rs`).

use gateway_e2e::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;

struct Gateway {
    cp: ControlPlane,
    anthropic: MockUpstream,
    openai: MockUpstream,
    dp: DataPlane,
    key: String,
}

impl Gateway {
    async fn start(pool: &PgPool, test: &str) -> Gateway {
        let db = test_database_url(pool);
        let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &db)).await;
        let anthropic = MockUpstream::start(test, "claude").await;
        let openai = MockUpstream::start(test, "gpt").await;
        cp.create(
            "backends",
            json!({"name": "anthropic", "kind": "anthropic", "base_url": anthropic.base_url(), "region": "us",
                   "secret": {"value": "sk-ant-test"}}),
        )
        .await;
        cp.create("backends", json!({"name": "openai", "kind": "openai", "base_url": openai.base_url()})).await;
        cp.create(
            "models",
            json!({"name": "sonnet", "backend": "anthropic", "upstream_model": "claude-sonnet-4",
                   "capabilities": {"chat": true, "tools": true},
                   "pricing": {"input": "3", "cached_input": "0.30", "cache_write": "3.75", "output": "15"}}),
        )
        .await;
        cp.create(
            "models",
            json!({"name": "gpt", "backend": "openai", "upstream_model": "gpt-4o",
                   "capabilities": {"chat": true, "embeddings": true, "embedding_dimensions": 8},
                   "pricing": {"input": "1", "output": "2"}}),
        )
        .await;
        cp.create("aliases", json!({"name": "claude", "candidates": [{"model": "sonnet"}]})).await;
        cp.create("aliases", json!({"name": "claude-or-gpt", "candidates": [{"model": "sonnet"}, {"model": "gpt"}]}))
            .await;
        cp.create(
            "tool-schemas",
            json!({"name": "get_weather", "schema": {"type": "object", "required": ["city"],
            "additionalProperties": false, "properties": {"city": {"type": "string"}}}}),
        )
        .await;
        cp.create("tool-policies", json!({"name": "strict", "when": "true", "on_invalid": "reject"})).await;
        let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app", "team": "research"}))).await;
        let key = created["secret"].as_str().unwrap().to_owned();
        let version = cp.fleet().await["config_version"].as_u64().unwrap();
        let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
        config.env.push(("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), "50".into()));
        let dp = DataPlane::start(&config);
        dp.wait_for_version(version).await;
        Gateway { cp, anthropic, openai, dp, key }
    }

    async fn post(&self, id: &str, path: &str, body: Value) -> reqwest::Response {
        let url = self.dp.url(path);
        self.dp.client().post(url).bearer_auth(&self.key).header("x-request-id", id).json(&body).send().await.unwrap()
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 256, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]})
}

const CACHED: &str = r#"{"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 1000,
                         "cache_creation_input_tokens": 50}"#;

#[sqlx::test(migrations = false)]
async fn chat_is_translated_both_ways_and_metered_with_its_cache_tokens(pool: PgPool) {
    let gw = Gateway::start(&pool, "anthropic_chat").await;
    let usage: Value = serde_json::from_str(CACHED).unwrap();
    gw.anthropic.script(json!([{"usage": usage}, {"usage": usage}])).await;

    let response = gw.post("plain", "/v1/chat/completions", chat("claude", false)).await;
    assert_eq!(response.status(), 200);
    // 100 x 3 + 1000 cache reads x 0.30 + 50 cache writes x 3.75 + 20 x 15, per million.
    assert_eq!(response.headers()["x-gateway-cost-usd"], "0.0010875");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], json!("chat.completion"));
    assert_eq!(body["model"], json!("claude-sonnet-4"));
    assert_eq!(body["choices"][0]["message"], json!({"role": "assistant", "content": "Hello from claude"}));
    assert_eq!(body["choices"][0]["finish_reason"], json!("stop"));
    assert_eq!(body["usage"]["prompt_tokens"], json!(1150));
    let seen = &gw.anthropic.requests().await[0];
    assert_eq!(seen["path"], json!("/v1/messages"));
    assert_eq!(seen["x_api_key"], json!("sk-ant-test"));
    assert_eq!(seen["anthropic_version"], json!("2023-06-01"));
    assert_eq!(seen["authorization"], Value::Null, "the key goes in x-api-key only");
    assert_eq!(seen["body"]["system"], json!("Be brief."));
    assert_eq!(seen["body"]["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}]));
    assert_eq!(
        (seen["body"]["model"].clone(), seen["body"]["max_tokens"].clone()),
        (json!("claude-sonnet-4"), json!(256))
    );

    let text = gw.post("streamed", "/v1/chat/completions", chat("claude", true)).await.text().await.unwrap();
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_owned))
        .collect();
    assert_eq!(content, "Hello from claude");
    assert!(!text.contains("prompt_tokens"), "the usage chunk was not asked for: {text}");
    assert!(text.contains(": gateway-cost-usd=0.0010875 usage=reported\n\ndata: [DONE]\n\n"), "{text}");

    let events = gw.cp.wait_for_spend_events(2).await;
    for event in &events {
        let what = event.to_string();
        assert_eq!(
            event["cost_usd"].as_str().unwrap().parse::<Decimal>().unwrap(),
            "0.0010875".parse::<Decimal>().unwrap(),
            "{what}"
        );
        assert_eq!(event["prompt_tokens"], json!(1150), "{what}");
        assert_eq!(event["cached_prompt_tokens"], json!(1000), "{what}");
        assert_eq!(event["cache_creation_tokens"], json!(50), "{what}");
        assert_eq!(event["completion_tokens"], json!(20), "{what}");
        assert_eq!(event["usage_estimated"], json!(false), "{what}");
        assert_eq!(
            (event["backend"].clone(), event["upstream_model"].clone()),
            (json!("anthropic"), json!("claude-sonnet-4"))
        );
    }
}

#[sqlx::test(migrations = false)]
async fn errors_take_the_openai_shape_and_failover_leaves_anthropic(pool: PgPool) {
    let gw = Gateway::start(&pool, "anthropic_errors").await;
    gw.anthropic
        .script(json!([{"status": 400, "body": {"type": "error", "error": {"type": "invalid_request_error",
            "message": "messages: roles must alternate"}}}, {"status": 529}]))
        .await;
    let response = gw.post("refused", "/v1/chat/completions", chat("claude", false)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "messages: roles must alternate", "type": "invalid_request_error",
                                      "param": null, "code": "invalid_request_error"}})
    );
    // Overloaded (529): the next candidate serves.
    let response = gw.post("failover", "/v1/chat/completions", chat("claude-or-gpt", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-backend"], "openai");
    // Endpoints the Messages API has no equivalent for move on to a candidate that has one.
    let response = gw.post("embed", "/v1/embeddings", json!({"model": "claude-or-gpt", "input": "x"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-backend"], "openai");
    assert_eq!(gw.openai.requests().await.len(), 2);
    let response = gw.post("embed-only-claude", "/v1/embeddings", json!({"model": "claude", "input": "x"})).await;
    assert_eq!(response.status(), 400, "no candidate can take it: the caller's to change");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("unsupported_request"));
    assert!(
        body["error"]["message"].as_str().unwrap().contains("sonnet (lacks the capability 'embeddings')"),
        "{body}"
    );
    // Nothing reached an upstream for it, so the ledger has no event of it.
    let events = gw.cp.wait_for_spend_events(3).await;
    let ids: Vec<&str> = events.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&"embed-only-claude"), "{ids:?}");
}
