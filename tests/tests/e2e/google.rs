//! The `vertex` and `gemini` backend kinds through the real planes against a mock of Google's APIs in Python
//! (`tests/providers/google_mock.py`): Vertex calls carry OAuth tokens that the mock's token endpoint issued after
//! checking the gateway's signed service-account assertion with PyJWT (an implementation independent of the
//! gateway's signer); Gemini API calls carry the API key in `x-goog-api-key`. Answers come in Google's wire format
//! (JSON, and server-sent events for `streamGenerateContent?alt=sse`). Also: tokens cached (one exchange for many
//! requests), Google's errors and safety blocks in the OpenAI shape, failover away from Vertex, usage metered, and
//! the control plane refusing vertex settings it cannot serve.

use std::path::Path;
use std::process::Stdio;

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;

const API_KEY: &str = "AIzaSy-contract-test-key";
const PROJECT: &str = "contract-project";
const LOCATION: &str = "europe-west4";
const MODEL: &str = "gemini-2.5-flash";

/// The Python mock, stopped when dropped.
struct GoogleMock {
    _child: tokio::process::Child,
    port: u16,
    /// The throwaway service account key file the mock made and verifies assertions against.
    key_file: Value,
}

impl GoogleMock {
    async fn start() -> GoogleMock {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let python = root.join(".venv/bin/python");
        assert!(python.exists(), "{} is missing: scripts/test.sh creates it", python.display());
        let mut child = tokio::process::Command::new(python)
            .arg(root.join("tests/providers/google_mock.py"))
            .arg(API_KEY)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = lines.next_line().await.unwrap().expect("the mock prints its port").parse().unwrap();
        let key_file = lines.next_line().await.unwrap().expect("the mock prints its key file");
        GoogleMock { _child: child, port, key_file: serde_json::from_str(&key_file).unwrap() }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn list(&self, what: &str) -> Vec<Value> {
        let url = format!("{}/{what}", self.base_url());
        http_client().get(url).send().await.unwrap().json::<Value>().await.unwrap().as_array().unwrap().clone()
    }
}

struct Gateway {
    cp: ControlPlane,
    google: GoogleMock,
    _openai: MockUpstream,
    dp: DataPlane,
    key: String,
}

impl Gateway {
    async fn start(pool: &PgPool, test: &str) -> Gateway {
        let db = test_database_url(pool);
        let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &db)).await;
        let google = GoogleMock::start().await;
        let openai = MockUpstream::start(test, "gpt").await;
        let mut impostor = google.key_file.clone();
        impostor["client_email"] = json!("someone-else@contract-project.iam.gserviceaccount.com");
        for (name, key_file) in [("vertex", &google.key_file), ("vertex-impostor", &impostor)] {
            cp.create(
                "backends",
                json!({"name": name, "kind": "vertex", "base_url": google.base_url(),
                       "vertex": {"project": PROJECT, "location": LOCATION},
                       "secret": {"value": key_file.to_string()}}),
            )
            .await;
        }
        for (name, key) in [("gemini", API_KEY), ("gemini-wrong-key", "AIzaSy-not-the-key")] {
            cp.create(
                "backends",
                json!({"name": name, "kind": "gemini", "base_url": format!("{}/v1beta", google.base_url()),
                       "secret": {"value": key}}),
            )
            .await;
        }
        cp.create("backends", json!({"name": "openai", "kind": "openai", "base_url": openai.base_url()})).await;
        let pricing = json!({"input": "1.25", "cached_input": "0.31", "output": "10"});
        for (name, backend, upstream) in [
            ("vertex-flash", "vertex", MODEL),
            ("vertex-throttled", "vertex", "throttled"),
            ("vertex-invalid", "vertex", "invalid"),
            ("vertex-blocked", "vertex", "blocked"),
            ("vertex-filtered", "vertex", "filtered"),
            ("vertex-impostor", "vertex-impostor", MODEL),
            ("gemini-flash", "gemini", MODEL),
            ("gemini-wrong-key", "gemini-wrong-key", MODEL),
        ] {
            cp.create(
                "models",
                json!({"name": name, "backend": backend, "upstream_model": upstream,
                       "capabilities": {"chat": true, "tools": true}, "pricing": pricing}),
            )
            .await;
            cp.create("aliases", json!({"name": name, "candidates": [{"model": name}]})).await;
        }
        for (name, backend) in [("vertex-embed", "vertex"), ("gemini-embed", "gemini")] {
            cp.create(
                "models",
                json!({"name": name, "backend": backend, "upstream_model": "text-embedding-005",
                       "capabilities": {"embeddings": true, "embedding_dimensions": 3}, "pricing": {"input": "0.1", "output": "0"}}),
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
        for first in ["vertex-throttled", "vertex-impostor"] {
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
        Gateway { cp, google, _openai: openai, dp, key }
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
async fn vertex_is_authorized_with_one_cached_token_translated_both_ways_and_metered(pool: PgPool) {
    let gw = Gateway::start(&pool, "vertex_generate").await;

    // Concurrent first requests share one token exchange.
    let first = (0..4).map(|i| gw.post(if i == 0 { "plain" } else { "concurrent" }, chat("vertex-flash", false)));
    for response in futures_util::future::join_all(first).await {
        assert_eq!(response.status(), 200);
        // 20 input x 1.25 + (6 output + 4 thought) x 10, per million.
        assert_eq!(response.headers()["x-gateway-cost-usd"], "0.000125");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": "Hello from Gemini.", "reasoning_content": "Considering the question."})
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            (body["usage"]["prompt_tokens"].clone(), body["usage"]["completion_tokens"].clone()),
            (json!(20), json!(10))
        );
        assert_eq!(body["usage"]["completion_tokens_details"]["reasoning_tokens"], 4);
    }

    let response = gw.post("tools", with_tools(chat("vertex-flash", false))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = body["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"], json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}));
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("call_"), "{id}");

    // The tool's answer goes back as a functionResponse named after the call its id names.
    let mut follow_up = with_tools(chat("vertex-flash", false));
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "{\"celsius\": 21}"}));
    let response = gw.post("tool-result", follow_up).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from Gemini.");

    let seen = gw.google.list("requests").await;
    assert_eq!(seen.len(), 6);
    for request in &seen {
        assert_eq!(request["auth_error"], Value::Null, "the mock issued the bearer token: {request}");
        assert_eq!((request["kind"].clone(), request["model"].clone()), (json!("vertex"), json!(MODEL)));
        assert_eq!((request["project"].clone(), request["location"].clone()), (json!(PROJECT), json!(LOCATION)));
        assert_eq!(request["method"], "generateContent");
    }
    assert_eq!(
        seen[0]["body"],
        json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
               "contents": [{"role": "user", "parts": [{"text": "Hello?"}]}],
               "generationConfig": {"maxOutputTokens": 256}})
    );
    let declared = &seen[4]["body"]["tools"][0]["functionDeclarations"][0];
    assert_eq!(declared["parametersJsonSchema"]["properties"]["city"], json!({"type": "string"}));
    let contents = seen[5]["body"]["contents"].as_array().unwrap();
    assert_eq!(
        contents[1..],
        [
            json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}),
            json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}}]}),
        ]
    );
    let tokens = gw.google.list("tokens").await;
    assert_eq!(tokens, vec![json!({"error": null})], "one exchange, its assertion verified by PyJWT");

    let events = gw.cp.wait_for_spend_events(6).await;
    let plain = events.iter().find(|e| e["request_id"] == "plain").unwrap();
    assert_eq!((plain["backend"].clone(), plain["upstream_model"].clone()), (json!("vertex"), json!(MODEL)));
    assert_eq!(plain["cost_usd"].as_str().unwrap().parse::<f64>().unwrap(), 0.000125);
    assert_eq!(
        (plain["prompt_tokens"].clone(), plain["completion_tokens"].clone(), plain["usage_estimated"].clone()),
        (json!(20), json!(10), json!(false))
    );
}

#[sqlx::test(migrations = false)]
async fn streamed_answers_become_chat_chunks(pool: PgPool) {
    let gw = Gateway::start(&pool, "vertex_stream").await;

    for model in ["vertex-flash", "gemini-flash"] {
        let mut body = chat(model, true);
        body["stream_options"] = json!({"include_usage": true});
        let response = gw.post("streamed", body).await;
        assert_eq!(response.status(), 200, "{model}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let (chunks, done) = sse(&response.text().await.unwrap());
        assert!(done, "{model}: {chunks:?}");
        assert_eq!(joined(&chunks, "content"), "Hello from Gemini.", "{model}");
        assert_eq!(joined(&chunks, "reasoning_content"), "Considering the question.", "{model}");
        assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"), "{chunks:?}");
        let usage = chunks.iter().find_map(|c| c.get("usage").filter(|u| u.is_object())).unwrap();
        assert_eq!((usage["prompt_tokens"].clone(), usage["completion_tokens"].clone()), (json!(20), json!(10)));
    }

    let response = gw.post("streamed-tools", with_tools(chat("vertex-flash", true))).await;
    let (chunks, done) = sse(&response.text().await.unwrap());
    assert!(done);
    let call = chunks.iter().find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).unwrap();
    assert_eq!(call["function"], json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}));
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    let seen = gw.google.list("requests").await;
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request["auth_error"], Value::Null, "{request}");
        assert_eq!(
            (request["method"].clone(), request["query"].clone()),
            (json!("streamGenerateContent"), json!("alt=sse"))
        );
    }
    assert_eq!(gw.google.list("tokens").await.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn gemini_takes_its_key_in_x_goog_api_key(pool: PgPool) {
    let gw = Gateway::start(&pool, "gemini_api_key").await;

    let response = gw.post("gemini", chat("gemini-flash", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-backend"], "gemini");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from Gemini.");

    // Google answers a wrong key 400 INVALID_ARGUMENT: in the OpenAI shape.
    let response = gw.post("wrong-key", chat("gemini-wrong-key", false)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("API key not valid"));

    let seen = gw.google.list("requests").await;
    assert_eq!(seen[0]["path"], format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(seen[0]["auth_error"], Value::Null);
    assert_eq!(seen[1]["auth_error"], "wrong or missing x-goog-api-key");
    assert!(gw.google.list("tokens").await.is_empty(), "the Gemini API needs no token");
}

#[sqlx::test(migrations = false)]
async fn embeddings_go_to_batch_embed_contents_and_predict(pool: PgPool) {
    let gw = Gateway::start(&pool, "google_embeddings").await;
    let embed = |model: &str| {
        let url = gw.dp.url("/v1/embeddings");
        let body = json!({"model": model, "input": ["one two three", "four"]});
        gw.dp.client().post(url).bearer_auth(&gw.key).json(&body).send()
    };

    let response = embed("gemini-embed").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1], json!({"object": "embedding", "index": 1, "embedding": [0.4, 0.2, 0.3]}));

    let response = embed("vertex-embed").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["embedding"], json!([0.5, 0.25, 0.125]));
    assert_eq!(body["usage"]["prompt_tokens"], 4, "Vertex's token counts, summed");

    let seen = gw.google.list("requests").await;
    assert_eq!((seen[0]["kind"].clone(), seen[0]["method"].clone()), (json!("gemini"), json!("batchEmbedContents")));
    assert_eq!(
        seen[0]["body"]["requests"][0],
        json!({"model": "models/text-embedding-005", "content": {"parts": [{"text": "one two three"}]}})
    );
    assert_eq!((seen[1]["kind"].clone(), seen[1]["method"].clone()), (json!("vertex"), json!("predict")));
    assert_eq!(seen[1]["body"], json!({"instances": [{"content": "one two three"}, {"content": "four"}]}));
    assert_eq!(seen[1]["auth_error"], Value::Null);
}

#[sqlx::test(migrations = false)]
async fn google_errors_and_safety_blocks_take_the_openai_shape_or_fail_over(pool: PgPool) {
    let gw = Gateway::start(&pool, "vertex_errors").await;

    let response = gw.post("invalid", chat("vertex-invalid", false)).await;
    assert_eq!(response.status(), 400, "an invalid argument is the caller's");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        json!({"message": "Request contains an invalid argument.", "type": "invalid_request_error", "param": null,
               "code": "INVALID_ARGUMENT"})
    );

    // A prompt the provider's safety filter blocked: a clear 400 content_filter, streamed or not.
    let response = gw.post("blocked", chat("vertex-blocked", false)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "content_filter");
    assert_eq!(body["error"]["message"], "the provider's safety filter blocked the prompt (SAFETY)");
    let response = gw.post("blocked-stream", chat("vertex-blocked", true)).await;
    let (chunks, done) = sse(&response.text().await.unwrap());
    assert!(!done);
    let error = chunks.iter().find_map(|c| c.get("error")).unwrap();
    assert_eq!(error["code"], "content_filter", "{chunks:?}");

    // An answer the filter stopped midway finishes with content_filter.
    let response = gw.post("filtered", chat("vertex-filtered", false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");

    // Throttled (429) and a token exchange the endpoint refuses are the backend's trouble: the next one serves.
    for alias in ["vertex-throttled-or-gpt", "vertex-impostor-or-gpt"] {
        let response = gw.post(alias, chat(alias, false)).await;
        assert_eq!(response.status(), 200, "{alias}");
        assert_eq!(response.headers()["x-gateway-backend"], "openai", "{alias}");
    }
    let refused: Vec<Value> =
        gw.google.list("tokens").await.into_iter().filter(|t| t["error"] != Value::Null).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["error"].as_str().unwrap().contains("Invalid issuer"), "{refused:?}");

    // Alone, a refused token exchange is answered as an upstream failure naming it, never the caller's mistake.
    let response = gw.post("impostor", chat("vertex-impostor", false)).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no OAuth token") && message.contains("invalid_grant"), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "{message}");
}

#[sqlx::test(migrations = false)]
async fn the_control_plane_refuses_vertex_settings_it_cannot_serve(pool: PgPool) {
    let db = test_database_url(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new("vertex_validation", "cp", &db)).await;
    let base = json!({"name": "v", "kind": "vertex", "base_url": "https://europe-west4-aiplatform.googleapis.com",
                      "vertex": {"project": "my-project", "location": "europe-west4"}});
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
    let leaked_key = json!({"type": "service_account", "client_email": "a@b", "private_key": "topsecret"}).to_string();
    for (spec, field, says) in [
        (with(json!({"vertex": null})), "vertex", "vertex backends need vertex.project"),
        (
            with(json!({"vertex": {"project": "My Project", "location": "europe-west4"}})),
            "vertex.project",
            "not a Google Cloud project id",
        ),
        (
            with(json!({"vertex": {"project": "p", "location": "Europe West"}})),
            "vertex.location",
            "not a Vertex AI location",
        ),
        (with(json!({"secret": {"value": "AIzaSy-an-api-key"}})), "secret.value", "service account"),
        (with(json!({"secret": {"value": leaked_key}})), "secret.value", "PKCS#8"),
        (with(json!({"auth": {"type": "header", "header": "x-goog-api-key"}})), "auth", "OAuth tokens"),
    ] {
        let (status, reply) = cp.call("POST", "/backends", Some(spec.clone())).await;
        assert_eq!(status, 400, "{spec} {reply}");
        let text = reply.to_string();
        assert!(text.contains(field) && text.contains(says), "{spec}: {text}");
        assert!(!text.contains("topsecret") && !text.contains("AIzaSy"), "the secret is never quoted: {text}");
    }
    let (status, reply) = cp.call("POST", "/backends", Some(base.clone())).await;
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = cp
        .call(
            "POST",
            "/backends",
            Some(json!({"name": "g", "kind": "gemini", "base_url": "https://generativelanguage.googleapis.com/v1beta",
                        "vertex": {"project": "p", "location": "us-central1"}})),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = cp
        .call(
            "POST",
            "/backends",
            Some(json!({"name": "g", "kind": "gemini", "base_url": "https://generativelanguage.googleapis.com/v1beta",
                        "secret": {"value": "AIzaSy-key"}})),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
}

#[sqlx::test(migrations = false)]
async fn one_alias_fails_over_from_bedrock_to_vertex_to_openai_and_the_spend_event_names_each_attempt(pool: PgPool) {
    use crate::bedrock::{BedrockMock, REGION, SECRET_KEY, keys};

    let db = test_database_url(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new("cross_kind_failover", "cp", &db)).await;
    let (bedrock, google) = (BedrockMock::start().await, GoogleMock::start().await);
    let openai = MockUpstream::start("cross_kind_failover", "gpt").await;
    cp.create(
        "backends",
        json!({"name": "bedrock", "kind": "bedrock", "base_url": bedrock.base_url(), "aws": {"region": REGION},
               "secret": {"value": keys(SECRET_KEY)}}),
    )
    .await;
    cp.create(
        "backends",
        json!({"name": "vertex", "kind": "vertex", "base_url": google.base_url(),
               "vertex": {"project": PROJECT, "location": LOCATION}, "secret": {"value": google.key_file.to_string()}}),
    )
    .await;
    cp.create("backends", json!({"name": "openai", "kind": "openai", "base_url": openai.base_url()})).await;
    let pricing = json!({"input": "1", "output": "2"});
    for (name, backend, upstream) in [
        ("claude-throttled", "bedrock", "throttled"),
        ("gemini-broken", "vertex", "broken"),
        ("gpt", "openai", "gpt-4o"),
    ] {
        cp.create(
            "models",
            json!({"name": name, "backend": backend, "upstream_model": upstream,
                   "capabilities": {"chat": true}, "pricing": pricing}),
        )
        .await;
    }
    cp.create(
        "aliases",
        json!({"name": "any-kind", "candidates": [{"model": "claude-throttled"}, {"model": "gemini-broken"}, {"model": "gpt"}]}),
    )
    .await;
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app", "team": "research"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let mut config = DataPlaneConfig::new("cross_kind_failover", "dp", &cp.grpc_url());
    config.env.push(("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), "50".into()));
    let dp = DataPlane::start(&config);
    dp.wait_for_version(version).await;

    let response = dp
        .client()
        .post(dp.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-request-id", "failover")
        .json(&chat("any-kind", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-backend"], "openai");

    // Each mock saw its attempt, authenticated its own way.
    let signed = bedrock.requests().await;
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0]["signature_error"], Value::Null);
    let tokened = google.list("requests").await;
    assert_eq!((tokened.len(), tokened[0]["auth_error"].clone()), (1, Value::Null));

    let events = cp.wait_for_spend_events(1).await;
    let event = events.iter().find(|e| e["request_id"] == "failover").unwrap();
    assert_eq!((event["backend"].clone(), event["attempts"].clone()), (json!("openai"), json!(3)));
    assert_eq!(
        event["attempt_log"],
        json!([
            {"backend": "bedrock", "model": "claude-throttled", "outcome": "rate_limited", "status": 429},
            {"backend": "vertex", "model": "gemini-broken", "outcome": "server_error", "status": 500},
            {"backend": "openai", "model": "gpt", "outcome": "answered", "status": 0},
        ])
    );
}
