//! The `anthropic` backend kind through the data plane in process: tool calls come back as OpenAI tool calls and are
//! validated. What needs the spend ledger (its metering, what an unserved request leaves there) is in the
//! end-to-end tests (`e2e/anthropic.rs`).

use gateway_e2e::MockUpstream;
use gateway_e2e::pipeline::{Pipeline, Snapshot};
use serde_json::{Value, json};

struct Gateway {
    anthropic: MockUpstream,
    _openai: MockUpstream,
    dp: Pipeline,
    key: String,
}

impl Gateway {
    async fn start(test: &str) -> Gateway {
        let anthropic = MockUpstream::in_process("claude");
        let openai = MockUpstream::in_process("gpt");
        let mut config = Snapshot::new();
        config.backend(json!({"name": "anthropic", "kind": "anthropic", "base_url": anthropic.base_url(),
            "region": "us", "secret": {"value": "sk-ant-test"}}));
        config.backend(json!({"name": "openai", "kind": "openai", "base_url": openai.base_url()}));
        config.model(json!({"name": "sonnet", "backend": "anthropic", "upstream_model": "claude-sonnet-4",
            "capabilities": {"chat": true, "tools": true},
            "pricing": {"input": "3", "cached_input": "0.30", "cache_write": "3.75", "output": "15"}}));
        config.model(json!({"name": "gpt", "backend": "openai", "upstream_model": "gpt-4o",
            "capabilities": {"chat": true, "embeddings": true, "embedding_dimensions": 8},
            "pricing": {"input": "1", "output": "2"}}));
        config.alias(json!({"name": "claude", "candidates": [{"model": "sonnet"}]}));
        config.alias(json!({"name": "claude-or-gpt", "candidates": [{"model": "sonnet"}, {"model": "gpt"}]}));
        config.tool_schema(json!({"name": "get_weather", "schema": {"type": "object", "required": ["city"],
            "additionalProperties": false, "properties": {"city": {"type": "string"}}}}));
        config.tool_policy(json!({"name": "strict", "when": "true", "on_invalid": "reject"}));
        let key = config.key(json!({"name": "app", "team": "research"}));
        let dp = Pipeline::start(test, &config).await;
        Gateway { anthropic, _openai: openai, dp, key }
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

fn with_tools(mut body: Value) -> Value {
    body["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    body
}

#[tokio::test]
async fn tool_calls_come_back_as_openai_tool_calls_and_are_validated() {
    let gw = Gateway::start("anthropic_tools").await;
    for stream in [false, true] {
        let response = gw.post("tools", "/v1/chat/completions", with_tools(chat("claude", stream))).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let arguments: String = if stream {
            text.split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|c| {
                    c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        } else {
            let body: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["choices"][0]["finish_reason"], json!("tool_calls"));
            assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], json!("get_weather"));
            body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap().to_owned()
        };
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).unwrap(),
            json!({"city": "Paris"}),
            "stream={stream}: {text}"
        );
    }
    let seen = gw.anthropic.requests().await;
    assert_eq!(seen[0]["body"]["tools"][0]["name"], json!("get_weather"));
    assert_eq!(seen[0]["body"]["tools"][0]["input_schema"]["required"], json!(["city"]), "the registered schema");
    // An invalid call is rejected like any other backend's.
    for stream in [false, true] {
        gw.anthropic
            .script(json!([{"tool_calls": [{"name": "get_weather", "arguments": "{\"town\":\"Paris\"}"}]}]))
            .await;
        let response = gw.post("bad-tools", "/v1/chat/completions", with_tools(chat("claude", stream))).await;
        let text = response.text().await.unwrap();
        assert!(text.contains("invalid_tool_call") && text.contains("/town"), "stream={stream}: {text}");
    }
}
