//! Tool governance across the real planes: validation outcomes and every billed answer in the control plane's spend
//! ledger. The data plane's side alone (validation, each action, the tool policy's 403, the schema replacement) is
//! tested in process (`pipeline/tools.rs`). Semantics: `docs/tools.md`.

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The registered schema of `get_weather`: what the model is asked for and what its calls are checked against.
fn weather_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["city"],
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"}}})
}

struct Gateway {
    cp: ControlPlane,
    mocks: Vec<MockUpstream>,
    dp: DataPlane,
    key: String,
}

impl Gateway {
    async fn start(pool: &PgPool, test: &str) -> Gateway {
        let db = test_database_url(pool);
        let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &db)).await;
        let mut mocks = Vec::new();
        for i in 0..2 {
            let mock = MockUpstream::start(test, &format!("m{i}")).await;
            cp.create("backends", json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url()}))
                .await;
            cp.create(
                "models",
                json!({"name": format!("model{i}"), "backend": format!("up{i}"), "upstream_model": format!("upstream-{i}"),
                "capabilities": {"chat": true, "tools": true}, "pricing": {"input": "1", "output": "2"}}),
            )
            .await;
            mocks.push(mock);
        }
        cp.create("aliases", json!({"name": "chain", "candidates": [{"model": "model0"}, {"model": "model1"}]})).await;
        cp.create("tool-schemas", json!({"name": "get_weather", "schema": weather_schema()})).await;
        // One policy per action, chosen by the request's metadata; no metadata matches none (audit).
        for (action, extra) in [
            ("reject", json!({"on_invalid": "reject", "deny": ["delete_everything"]})),
            ("retry", json!({"on_invalid": "retry", "max_retries": 2})),
            ("annotate", json!({"on_invalid": "annotate"})),
            ("audit", json!({"mode": "audit", "on_invalid": "reject"})),
        ] {
            let mut policy = json!({"name": format!("tools-{action}"), "priority": 10,
                "when": format!("has(request.metadata.action) && request.metadata.action == '{action}'")});
            policy.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            cp.create("tool-policies", policy).await;
        }
        let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
        let key = created["secret"].as_str().unwrap().to_owned();
        let version = cp.fleet().await["config_version"].as_u64().unwrap();
        let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
        dp.wait_for_version(version).await;
        Gateway { cp, mocks, dp, key }
    }
}

/// Calls as the mock's script wants them.
fn calls(list: &[(&str, &str)]) -> Value {
    Value::Array(list.iter().map(|(name, arguments)| json!({"name": name, "arguments": arguments})).collect())
}

const PARIS: (&str, &str) = ("get_weather", r#"{"city":"Paris","unit":"c"}"#);

#[sqlx::test(migrations = false)]
async fn validation_outcomes_and_every_billed_answer_reach_the_spend_ledger(pool: PgPool) {
    let gw = Gateway::start(&pool, "tools_spend").await;
    let bad = calls(&[("get_weather", r#"{"city":7}"#)]);
    let good = calls(&[PARIS]);
    let ask = |id: &'static str, action: &'static str, stream: bool| {
        let body = json!({"model": "chain", "stream": stream, "metadata": {"action": action},
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
        gw.dp
            .client()
            .post(gw.dp.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .header("x-request-id", id)
            .json(&body)
    };
    gw.mocks[0]
        .script(json!([{"tool_calls": bad}, {"tool_calls": good}, {"tool_calls": bad}, {"tool_calls": bad}]))
        .await;
    assert_eq!(ask("retried", "retry", false).send().await.unwrap().status(), 200);
    assert_eq!(ask("rejected", "reject", false).send().await.unwrap().status(), 422);
    let streamed = ask("rejected-stream", "reject", true).send().await.unwrap().text().await.unwrap();
    assert!(streamed.contains("invalid_tool_call"), "{streamed}");

    let events = gw.cp.wait_for_spend_events(3).await;
    let event = |id: &str| events.iter().find(|e| e["request_id"] == json!(id)).cloned().unwrap();
    let outcomes = |e: &Value| -> Vec<(String, String, u64)> {
        e["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["tool"].as_str().unwrap().to_owned(),
                    c["outcome"].as_str().unwrap().to_owned(),
                    c["violations"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let tool = |outcome: &str, violations: u64| ("get_weather".to_owned(), outcome.to_owned(), violations);
    // The invalid answer was billed too: two answers of 12 + 5 tokens at 1 and 2 USD per million.
    let retried = event("retried");
    assert_eq!(outcomes(&retried), [tool("schema_violation", 1), tool("valid", 0)]);
    assert_eq!((retried["attempts"].clone(), retried["outcome"].clone()), (json!(2), json!("ok")));
    assert_eq!(retried["cost_usd"], json!("0.000044"));
    let rejected = event("rejected");
    assert_eq!(outcomes(&rejected), [tool("schema_violation", 1)]);
    assert_eq!((rejected["status"].clone(), rejected["outcome"].clone()), (json!(422), json!("rejected")));
    assert_eq!(rejected["cost_usd"], json!("0.000022"));
    let rejected_stream = event("rejected-stream");
    assert_eq!(outcomes(&rejected_stream), [tool("schema_violation", 1)]);
    assert_eq!(rejected_stream["outcome"], json!("rejected"));
    assert_eq!(rejected_stream["streamed"], json!(true));
}
