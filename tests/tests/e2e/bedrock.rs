//! The `bedrock` backend kind through the real planes against a mock of Bedrock's runtime in Python
//! (`tests/providers/bedrock_mock.py`): every request's SigV4 signature is checked there by botocore, an
//! implementation independent of the gateway's signer, and answers come in Bedrock's wire format (JSON for Converse,
//! the binary event stream for ConverseStream). Also: Bedrock's errors in the OpenAI shape, failover away from it,
//! its usage metered, and the control plane refusing bedrock settings it cannot serve.

use std::path::Path;
use std::process::Stdio;

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;

const ACCESS_KEY: &str = "AKIDGATEWAYTEST";
pub(crate) const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLESESSION";
pub(crate) const REGION: &str = "us-west-2";
const MODEL_ID: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// The Python mock, stopped when dropped.
pub(crate) struct BedrockMock {
    _child: tokio::process::Child,
    port: u16,
}

impl BedrockMock {
    pub(crate) async fn start() -> BedrockMock {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let python = root.join(".venv/bin/python");
        assert!(python.exists(), "{} is missing: scripts/test.sh creates it", python.display());
        let mut child = tokio::process::Command::new(python)
            .arg(root.join("tests/providers/bedrock_mock.py"))
            .args([ACCESS_KEY, SECRET_KEY, REGION, SESSION_TOKEN])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next_line().await.unwrap().expect("the mock prints its port").parse().unwrap();
        BedrockMock { _child: child, port }
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn requests(&self) -> Vec<Value> {
        let url = format!("{}/requests", self.base_url());
        http_client().get(url).send().await.unwrap().json::<Value>().await.unwrap().as_array().unwrap().clone()
    }
}

struct Gateway {
    cp: ControlPlane,
    bedrock: BedrockMock,
    _openai: MockUpstream,
    dp: DataPlane,
    key: String,
}

pub(crate) fn keys(secret: &str) -> String {
    json!({"access_key_id": ACCESS_KEY, "secret_access_key": secret, "session_token": SESSION_TOKEN}).to_string()
}

impl Gateway {
    async fn start(pool: &PgPool, test: &str) -> Gateway {
        let db = test_database_url(pool);
        let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &db)).await;
        let bedrock = BedrockMock::start().await;
        let openai = MockUpstream::start(test, "gpt").await;
        for (name, secret) in [("bedrock", SECRET_KEY), ("bedrock-wrong-keys", "not-the-secret")] {
            cp.create(
                "backends",
                json!({"name": name, "kind": "bedrock", "base_url": bedrock.base_url(), "aws": {"region": REGION},
                       "secret": {"value": keys(secret)}}),
            )
            .await;
        }
        cp.create("backends", json!({"name": "openai", "kind": "openai", "base_url": openai.base_url()})).await;
        let pricing = json!({"input": "3", "cached_input": "0.30", "output": "15"});
        for (name, backend, upstream) in [
            ("claude", "bedrock", MODEL_ID),
            ("throttled", "bedrock", "throttled"),
            ("invalid", "bedrock", "invalid"),
            ("stream-error", "bedrock", "stream-error"),
            ("wrong-keys", "bedrock-wrong-keys", MODEL_ID),
        ] {
            cp.create(
                "models",
                json!({"name": name, "backend": backend, "upstream_model": upstream,
                       "capabilities": {"chat": true, "tools": true}, "pricing": pricing}),
            )
            .await;
            cp.create("aliases", json!({"name": name, "candidates": [{"model": name}]})).await;
        }
        cp.create(
            "models",
            json!({"name": "gpt", "backend": "openai", "upstream_model": "gpt-4o",
                   "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}),
        )
        .await;
        for first in ["throttled", "wrong-keys"] {
            let alias = format!("{first}-or-gpt");
            cp.create("aliases", json!({"name": alias, "candidates": [{"model": first}, {"model": "gpt"}]})).await;
        }
        let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app", "team": "research"}))).await;
        let key = created["secret"].as_str().unwrap().to_owned();
        let version = cp.fleet().await["config_version"].as_u64().unwrap();
        let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
        config.env.push(("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), "50".into()));
        let dp = DataPlane::start(&config);
        dp.wait_for_version(version).await;
        Gateway { cp, bedrock, _openai: openai, dp, key }
    }

    async fn post(&self, id: &str, body: Value) -> reqwest::Response {
        let url = self.dp.url("/v1/chat/completions");
        self.dp.client().post(url).bearer_auth(&self.key).header("x-request-id", id).json(&body).send().await.unwrap()
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 256, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]})
}

fn with_tools(mut body: Value) -> Value {
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    body
}

/// The JSON of each `data:` event of an SSE body, and whether it ended with `[DONE]`.
fn sse(text: &str) -> (Vec<Value>, bool) {
    let datas: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    let done = datas.last() == Some(&"[DONE]");
    (datas.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect(), done)
}

fn joined(chunks: &[Value], field: &str) -> String {
    chunks.iter().filter_map(|c| c["choices"][0]["delta"][field].as_str()).collect()
}

#[sqlx::test(migrations = false)]
async fn converse_is_signed_translated_both_ways_and_metered(pool: PgPool) {
    let gw = Gateway::start(&pool, "bedrock_converse").await;

    let response = gw.post("plain", chat("claude", false)).await;
    assert_eq!(response.status(), 200);
    // 12 input x 3 + 100 cache reads x 0.30 + 5 output x 15, per million.
    assert_eq!(response.headers()["x-gateway-cost-usd"], "0.000141");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello from Bedrock.", "reasoning_content": "Thinking it over."})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 112);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 100);

    let response = gw.post("tools", with_tools(chat("claude", false))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"],
        json!([{"id": "tooluse_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );

    let seen = gw.bedrock.requests().await;
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request["signature_error"], Value::Null, "botocore verified the signature: {request}");
        assert_eq!(request["path"], "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
        assert_eq!(request["model"], MODEL_ID);
    }
    assert_eq!(
        seen[0]["body"],
        json!({"system": [{"text": "Be brief."}], "messages": [{"role": "user", "content": [{"text": "Hello?"}]}],
               "inferenceConfig": {"maxTokens": 256}})
    );
    assert_eq!(
        seen[1]["body"]["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"],
        json!({"type": "string"})
    );

    let events = gw.cp.wait_for_spend_events(2).await;
    let plain = events.iter().find(|e| e["request_id"] == "plain").unwrap();
    assert_eq!((plain["backend"].clone(), plain["upstream_model"].clone()), (json!("bedrock"), json!(MODEL_ID)));
    assert_eq!(plain["cost_usd"].as_str().unwrap().parse::<f64>().unwrap(), 0.000141);
    assert_eq!((plain["prompt_tokens"].clone(), plain["usage_estimated"].clone()), (json!(112), json!(false)));
}

#[sqlx::test(migrations = false)]
async fn converse_stream_event_frames_become_chat_chunks(pool: PgPool) {
    let gw = Gateway::start(&pool, "bedrock_stream").await;

    let mut body = chat("claude", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = gw.post("streamed", body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let (chunks, done) = sse(&response.text().await.unwrap());
    assert!(done);
    assert_eq!(joined(&chunks, "content"), "Hello from Bedrock.");
    assert_eq!(joined(&chunks, "reasoning_content"), "Thinking it over.");
    let finish: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0].get("finish_reason")).collect();
    assert!(finish.contains(&&json!("stop")), "{chunks:?}");
    let usage = chunks.iter().find_map(|c| c.get("usage").filter(|u| u.is_object())).unwrap();
    assert_eq!((usage["prompt_tokens"].clone(), usage["completion_tokens"].clone()), (json!(12), json!(5)));

    let response = gw.post("streamed-tools", with_tools(chat("claude", true))).await;
    let (chunks, done) = sse(&response.text().await.unwrap());
    assert!(done);
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"city\":\"Paris\"}");
    assert!(chunks.iter().any(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"] == "tooluse_1"));
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    // An exception frame mid-stream ends it with an OpenAI error event.
    let response = gw.post("stream-error", chat("stream-error", true)).await;
    let (chunks, done) = sse(&response.text().await.unwrap());
    assert!(!done);
    assert_eq!(joined(&chunks, "content"), "Hello");
    let error = chunks.iter().find_map(|c| c.get("error")).unwrap();
    assert_eq!(
        (error["code"].clone(), error["message"].clone()),
        (json!("throttlingException"), json!("Too many tokens, please wait."))
    );

    let seen = gw.bedrock.requests().await;
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request["signature_error"], Value::Null, "{request}");
        assert_eq!(request["operation"], "converse-stream");
    }
}

#[sqlx::test(migrations = false)]
async fn bedrock_errors_take_the_openai_shape_or_fail_over(pool: PgPool) {
    let gw = Gateway::start(&pool, "bedrock_errors").await;

    let response = gw.post("invalid", chat("invalid", false)).await;
    assert_eq!(response.status(), 400, "a validation error is the caller's");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "The model returned the following errors: messages: field required");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // Throttled (429) and refused keys (403 from the signature check) are the backend's trouble: the next serves.
    for alias in ["throttled-or-gpt", "wrong-keys-or-gpt"] {
        let response = gw.post(alias, chat(alias, false)).await;
        assert_eq!(response.status(), 200, "{alias}");
        assert_eq!(response.headers()["x-gateway-backend"], "openai", "{alias}");
    }
    let seen = gw.bedrock.requests().await;
    let wrong: Vec<&Value> = seen.iter().filter(|r| r["signature_error"] != Value::Null).collect();
    assert_eq!(wrong.len(), 1, "only the wrong keys fail botocore's check: {seen:?}");
    assert!(wrong[0]["signature_error"].as_str().unwrap().starts_with("signature mismatch"));

    // Alone, a refused signature is answered as an upstream failure, not passed off as the caller's mistake.
    let response = gw.post("wrong-keys", chat("wrong-keys", false)).await;
    assert!(response.status().is_server_error(), "{}", response.status());
}

#[sqlx::test(migrations = false)]
async fn the_control_plane_refuses_bedrock_settings_it_cannot_serve(pool: PgPool) {
    let db = test_database_url(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new("bedrock_validation", "cp", &db)).await;
    let base = json!({"name": "b", "kind": "bedrock", "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
                      "aws": {"region": "us-east-1"}});
    let with = |patch: Value| {
        let mut spec = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                spec.as_object_mut().unwrap().remove(k);
            } else {
                spec[k] = v.clone();
            }
        }
        spec
    };
    for (spec, field, says) in [
        (with(json!({"aws": null})), "aws", "bedrock backends need aws.region"),
        (with(json!({"aws": {"region": "US East"}})), "aws.region", "not an AWS region name"),
        (with(json!({"secret": {"value": "sk-not-keys"}})), "secret.value", "a bedrock secret is JSON"),
        (with(json!({"auth": {"type": "header", "header": "x-api-key"}})), "auth", "signed with SigV4"),
        (with(json!({"health_check": {"interval_ms": 1000}})), "health_check", "answers no GET"),
    ] {
        let (status, reply) = cp.call("POST", "/backends", Some(spec.clone())).await;
        assert_eq!(status, 400, "{spec} {reply}");
        let text = reply.to_string();
        assert!(text.contains(field) && text.contains(says), "{spec}: {text}");
        assert!(!text.contains("sk-not-keys"), "the secret is never quoted: {text}");
    }
    let (status, reply) = cp.call("POST", "/backends", Some(base.clone())).await;
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = cp
        .call(
            "POST",
            "/backends",
            Some(json!({"name": "o", "kind": "openai", "base_url": "https://api.openai.com",
                                                  "aws": {"region": "us-east-1"}})),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
}
