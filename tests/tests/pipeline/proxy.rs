//! The OpenAI-compatible endpoint through the data plane in process, serving a snapshot built here, against
//! programmable in-process mock upstreams: routing, failover, streaming, cancellation, errors, and the SDK suite.

use std::time::Duration;

use futures_util::StreamExt;
use gateway_e2e::pipeline::{Pipeline, Snapshot};
use gateway_e2e::*;
use serde_json::{Value, json};

/// Three mock upstreams (`m0`..`m2`), one data plane, and a configuration over them.
struct Gateway {
    mocks: Vec<MockUpstream>,
    dp: Pipeline,
    key: String,
    limited_key: String,
    revoked_key: String,
    expired_key: String,
    broke_key: String,
}

impl Gateway {
    async fn start(test: &str) -> Gateway {
        Gateway::start_with(test, &[]).await
    }

    async fn start_with(test: &str, flags: &[&str]) -> Gateway {
        let mut mocks = Vec::new();
        for i in 0..3 {
            mocks.push(MockUpstream::in_process(&format!("m{i}")));
        }
        let mut config = Snapshot::new();
        for (i, mock) in mocks.iter().enumerate() {
            config.backend(json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url(),
                "secret": {"value": format!("sk-up{i}")},
                "timeouts": {"connect_ms": 1000, "first_byte_ms": 700, "total_ms": 5000}}));
            config.model(json!({"name": format!("model{i}"), "backend": format!("up{i}"),
                "upstream_model": format!("upstream-{i}"),
                "capabilities": {"chat": true, "completions": true, "tools": true, "json_mode": true},
                "pricing": {"input": "1", "output": "2"}}));
            config.model(json!({"name": format!("embed{i}"), "backend": format!("up{i}"),
                "upstream_model": format!("embedding-{i}"),
                "capabilities": {"embeddings": true, "embedding_dimensions": 8},
                "pricing": {"input": "0.02", "output": "0"}}));
        }
        // An Anthropic backend (the mock answers `/messages` as the Messages API), for the SDK suite.
        config.backend(
            json!({"name": "anth", "kind": "anthropic", "base_url": mocks[2].base_url(), "secret": {"value": "sk-ant"}}),
        );
        config.model(json!({"name": "claude-model", "backend": "anth", "upstream_model": "claude-x",
            "capabilities": {"chat": true, "tools": true}, "pricing": {"input": "3", "output": "15"}}));
        config.alias(json!({"name": "claude", "candidates": [{"model": "claude-model"}]}));
        // A backend limited to one request per second (the SDK suite's rate-limit test: its retry waits it out).
        config.backend(json!({"name": "paced", "kind": "openai", "base_url": mocks[2].base_url(),
            "secret": {"value": "sk-paced"}, "rate_limit": {"rps": 1}}));
        config.model(json!({"name": "paced-model", "backend": "paced", "upstream_model": "paced-x",
            "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}));
        config.alias(json!({"name": "paced", "candidates": [{"model": "paced-model"}]}));
        // A backend nobody listens on, for refused connections.
        config.backend(
            json!({"name": "closed", "kind": "openai", "base_url": format!("http://127.0.0.1:{}/v1", free_port())}),
        );
        config.model(json!({"name": "closed-model", "backend": "closed", "upstream_model": "x",
            "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "1"}}));
        let candidates = |names: &[&str]| names.iter().map(|m| json!({"model": m})).collect::<Vec<_>>();
        config.alias(json!({"name": "chain", "candidates": candidates(&["model0", "model1", "model2"])}));
        config.alias(json!({"name": "refused-first", "candidates": candidates(&["closed-model", "model1"])}));
        config.alias(json!({"name": "split", "strategy": "weighted",
            "candidates": [{"model": "model0", "weight": 3}, {"model": "model1", "weight": 1}]}));
        config.alias(json!({"name": "embeddings", "candidates": candidates(&["embed0", "embed1"])}));
        // A vision model without JSON mode behind `model0`, which has JSON mode and no vision.
        config.model(json!({"name": "eyes", "backend": "up1", "upstream_model": "eyes-1",
            "capabilities": {"chat": true, "vision": true}, "pricing": {"input": "1", "output": "2"}}));
        config.alias(json!({"name": "see", "candidates": candidates(&["model0", "eyes"])}));
        // An alias pinned to 8 dimensions, and a route policy that would send it to a 16-dimension model first.
        config.model(json!({"name": "wide", "backend": "up1", "upstream_model": "wide-1",
            "capabilities": {"embeddings": true, "embedding_dimensions": 16}, "pricing": {"input": "1", "output": "0"}}));
        config.alias(json!({"name": "pinned", "pinned_dimensions": 8, "candidates": candidates(&["embed0"])}));
        config.route_policy(json!({"name": "widen", "priority": 50,
            "when": "request.model == 'pinned' && has(request.metadata.wide)",
            "action": {"type": "route", "candidates": candidates(&["wide", "embed0"])}}));
        // An alias pinned to one embedding model: `twin` serves it under another deployment name, `lookalike` has the
        // same size but is another model; a route policy would send the alias to the lookalike first.
        config.model(json!({"name": "twin", "backend": "up1", "upstream_model": "deploy-embed",
            "embedding_model": "embedding-0",
            "capabilities": {"embeddings": true, "embedding_dimensions": 8}, "pricing": {"input": "1", "output": "0"}}));
        config.model(json!({"name": "lookalike", "backend": "up1", "upstream_model": "lookalike-8",
            "capabilities": {"embeddings": true, "embedding_dimensions": 8}, "pricing": {"input": "1", "output": "0"}}));
        config.alias(json!({"name": "one-model", "pinned_dimensions": 8, "pinned_model": "embedding-0",
            "candidates": candidates(&["twin", "embed0"])}));
        config.route_policy(json!({"name": "mix", "priority": 60,
            "when": "request.model == 'one-model' && has(request.metadata.mix)",
            "action": {"type": "route", "candidates": candidates(&["lookalike", "twin"])}}));
        config.route_policy(json!({"name": "no-secrets-please", "priority": 100,
            "when": "has(request.metadata.classification) && request.metadata.classification == 'secret'",
            "action": {"type": "deny", "message": "secret data may not leave the building"}}));
        // Tool calls are held and validated when the request's metadata asks for it (the SDK suite's tool tests).
        config.tool_policy(json!({"name": "enforce-tools",
            "when": "has(request.metadata.tools) && request.metadata.tools == 'enforce'", "on_invalid": "reject"}));
        // Image models (the images suite): `painter` prices 1024x1024 (standard and hd) and a request naming no
        // size; `sketcher`, first in the alias, only 512x512, so other sizes skip it.
        config.model(json!({"name": "painter", "backend": "up0", "upstream_model": "image-0",
            "capabilities": {"images": true}, "pricing": {"input": "0", "output": "0",
            "per_image": {"1024x1024": "0.04", "hd/1024x1024": "0.08", "default": "0.04"}}}));
        config.model(json!({"name": "sketcher", "backend": "up1", "upstream_model": "image-1",
            "capabilities": {"images": true}, "pricing": {"input": "0", "output": "0",
            "per_image": {"512x512": "0.018"}}}));
        config.alias(json!({"name": "paint", "candidates": candidates(&["sketcher", "painter"])}));
        // Image prompts pass the guardrails too: emails redacted, a codename blocked (image requests only).
        config.guardrail(json!({"name": "image-prompts", "when": "request.model == 'paint'", "side": "prompt",
            "action": "redact", "detectors": [{"type": "email"}]}));
        config.guardrail(json!({"name": "image-codenames", "when": "request.model == 'paint'", "side": "prompt",
            "action": "block", "detectors": [{"type": "terms", "name": "codename", "terms": ["bluebird"]}]}));
        let key = config.key(json!({"name": "app", "team": "search"}));
        let limited_key = config.key(json!({"name": "limited", "allowed_aliases": ["split"]}));
        let revoked_key = config.key(json!({"name": "gone"}));
        let expired_key = config.key(json!({"name": "expired", "expires_at": "2020-01-01T00:00:00Z"}));
        // A key whose budget no request fits in (the SDK suite's budget test).
        let broke_key = config.key(json!({"name": "broke", "team": "interns"}));
        config.budget(json!({"name": "broke-total", "scope": {"type": "key", "key": "broke"}, "period": "total",
            "limit_usd": "0.000001"}));
        config.revoke("gone");

        let dp = Pipeline::start_with(test, &config, flags).await;
        Gateway { mocks, dp, key, limited_key, revoked_key, expired_key, broke_key }
    }

    async fn chat(&self, model: &str, extra: Value) -> reqwest::Response {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.dp.post("/v1/chat/completions", Some(&self.key), &body).await
    }
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn requests_go_only_to_candidates_whose_capabilities_serve_them() {
    let gw = Gateway::start("proxy_capabilities").await;
    let image = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    // `model0` comes first but has no vision: the image goes to `eyes`, and `model0`'s upstream never sees it.
    let response = gw.chat("see", image.clone()).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-model")), (200, "eyes"));
    assert_eq!(gw.mocks[0].requests().await.len(), 0);
    // JSON output goes to `model0`, the one with JSON mode; plain chat too (listed first).
    let response = gw.chat("see", json!({"response_format": {"type": "json_object"}})).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-model")), (200, "model0"));
    // Nothing in `chain` sees images: a 400 the caller must change, naming each candidate and what it lacks.
    let (status, body) = json_of(gw.chat("chain", image).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], json!("unsupported_request"));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("model0 (lacks the capability 'vision')"), "{message}");
    // An embeddings request to a chat alias is refused the same way, before any upstream.
    let before: usize = gw.mocks[1].requests().await.len();
    let response = gw.dp.post("/v1/embeddings", Some(&gw.key), &json!({"model": "see", "input": "x"})).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("eyes (lacks the capability 'embeddings')"));
    assert_eq!(gw.mocks[1].requests().await.len(), before);
}

#[tokio::test]
async fn an_alias_pinned_to_a_size_only_ever_answers_with_vectors_of_that_size() {
    let gw = Gateway::start("proxy_pinned").await;
    let embed = async |extra: Value| {
        let mut body = json!({"model": "pinned", "input": "hello"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        gw.dp.post("/v1/embeddings", Some(&gw.key), &body).await
    };
    let response = embed(json!({"dimensions": 8})).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-model")), (200, "embed0"));
    let (status, body) = json_of(embed(json!({"dimensions": 16})).await).await;
    assert_eq!((status, &body["error"]["param"]), (400, &json!("dimensions")), "{body}");
    // The route policy lists the 16-dimension model first: it is dropped, the pinned size serves.
    let response = embed(json!({"metadata": {"wide": "yes"}})).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-model")), (200, "embed0"));
    let wide_requests = gw.mocks[1].requests().await;
    assert!(wide_requests.iter().all(|r| r["body"]["model"] != json!("wide-1")), "{wide_requests:?}");
}

#[tokio::test]
async fn an_alias_pinned_to_a_model_never_mixes_in_vectors_of_another() {
    let gw = Gateway::start("proxy_pinned_model").await;
    let embed = async |metadata: Value| {
        let body = json!({"model": "one-model", "input": "hello", "metadata": metadata});
        gw.dp.post("/v1/embeddings", Some(&gw.key), &body).await
    };
    // The same embedding model under another deployment name serves.
    let response = embed(json!({})).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-model")), (200, "twin"));
    // The route policy lists a model of the same size but another make first: it is dropped.
    let response = embed(json!({"mix": "yes"})).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-gateway-model")), (200, "twin"));
    let seen = gw.mocks[1].requests().await;
    assert!(seen.iter().all(|r| r["body"]["model"] != json!("lookalike-8")), "{seen:?}");
    assert_eq!(seen.iter().filter(|r| r["body"]["model"] == json!("deploy-embed")).count(), 2, "{seen:?}");
}

#[tokio::test]
async fn chat_is_routed_forwarded_and_labelled() {
    let gw = Gateway::start("proxy_chat").await;
    let response = gw
        .dp
        .client()
        .post(gw.dp.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .header("x-request-id", "req-123")
        .json(&json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}],
                      "vendor_extension": {"keep": true}, "temperature": 0.2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-request-id"), "req-123");
    assert_eq!(header(&response, "x-gateway-backend"), "up0");
    assert_eq!(header(&response, "x-gateway-model"), "model0");
    assert_eq!(header(&response, "x-gateway-policy"), "-");
    assert!(header(&response, "x-gateway-snapshot-version").parse::<u64>().is_ok());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], json!("upstream-0"), "the response names what served it");
    assert_eq!(body["choices"][0]["message"]["content"], json!("Hello from m0"));

    let seen = &gw.mocks[0].requests().await[0];
    assert_eq!(seen["path"], json!("/v1/chat/completions"));
    assert_eq!(seen["authorization"], json!("Bearer sk-up0"), "the backend's secret, not the caller's key");
    assert_eq!(seen["request_id"], json!("req-123"));
    assert_eq!(seen["body"]["model"], json!("upstream-0"));
    assert_eq!(seen["body"]["vendor_extension"], json!({"keep": true}), "unknown fields pass through");
    assert_eq!(seen["body"]["temperature"], json!(0.2));

    // Completions and embeddings take the same path.
    let completion = gw.dp.post("/v1/completions", Some(&gw.key), &json!({"model": "chain", "prompt": "Say hi"})).await;
    let (status, body) = json_of(completion).await;
    assert_eq!((status, body["object"].clone()), (200, json!("text_completion")));
    let embedding =
        gw.dp.post("/v1/embeddings", Some(&gw.key), &json!({"model": "embeddings", "input": ["a", "b"]})).await;
    let (status, body) = json_of(embedding).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(gw.mocks[0].requests().await.last().unwrap()["body"]["model"], json!("embedding-0"));
}

#[tokio::test]
async fn streams_pass_through_and_cut_streams_end_with_an_error_event() {
    let gw = Gateway::start("proxy_stream").await;
    let response = gw.chat("chain", json!({"stream": true})).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    assert!(text.contains("\"content\":\"Hello\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    gw.mocks[0].script(json!([{"cut_after": 2}])).await;
    let text = gw.chat("chain", json!({"stream": true})).await.text().await.unwrap();
    assert!(!text.contains("data: [DONE]"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["code"], json!("upstream_error"));
    assert_eq!(event["error"]["message"], json!("the upstream ended the stream before [DONE]"));
}

#[tokio::test]
async fn failover_on_5xx_429_timeouts_and_refused_connections() {
    let gw = Gateway::start("proxy_failover").await;
    let served_by = |r: &reqwest::Response| header(r, "x-gateway-backend").to_owned();

    gw.mocks[0].script(json!([{"status": 500}])).await;
    let response = gw.chat("chain", json!({})).await;
    assert_eq!((response.status().as_u16(), served_by(&response)), (200, "up1".to_owned()), "5xx fails over");

    gw.mocks[0].script(json!([{"status": 429, "retry_after": "0.2"}])).await;
    let response = gw.chat("chain", json!({})).await;
    assert_eq!(served_by(&response), "up0", "a short Retry-After is waited out on the same candidate");

    gw.mocks[0].script(json!([{"status": 429, "retry_after": "30"}])).await;
    let response = gw.chat("chain", json!({})).await;
    assert_eq!(served_by(&response), "up1", "a long Retry-After moves on");

    gw.mocks[0].script(json!([{"status": 429}])).await;
    let response = gw.chat("chain", json!({})).await;
    assert_eq!(served_by(&response), "up1", "429 without Retry-After moves on");

    gw.mocks[0].script(json!([{"delay_ms": 1500}])).await;
    let response = gw.chat("chain", json!({})).await;
    assert_eq!(served_by(&response), "up1", "a slow first byte (over 700 ms) fails over");

    let response = gw.chat("refused-first", json!({})).await;
    assert_eq!(served_by(&response), "up1", "a refused connection fails over");

    // 4xx other than 429 is the caller's problem: returned at once, no other candidate tried.
    let before = gw.mocks[1].requests().await.len();
    gw.mocks[0].script(json!([{"status": 400, "body": {"error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature", "code": null}}}])).await;
    let (status, body) = json_of(gw.chat("chain", json!({})).await).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], json!("bad temperature"));
    assert_eq!(gw.mocks[1].requests().await.len(), before);
}

#[tokio::test]
async fn when_every_candidate_fails_the_error_says_what_each_answered() {
    let gw = Gateway::start("proxy_all_fail").await;
    for mock in &gw.mocks {
        mock.script(json!([{"status": 503}])).await;
    }
    let (status, body) = json_of(gw.chat("chain", json!({})).await).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], json!("upstream_error"));
    let message = body["error"]["message"].as_str().unwrap();
    for model in ["model0: HTTP 503", "model1: HTTP 503", "model2: HTTP 503"] {
        assert!(message.contains(model), "{message}");
    }
    for mock in &gw.mocks {
        mock.script(json!([{"delay_ms": 1200}])).await;
    }
    let (status, body) = json_of(gw.chat("chain", json!({})).await).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no response within 700 ms"));
    for mock in &gw.mocks {
        mock.script(json!([{"status": 429, "retry_after": "30"}])).await;
    }
    let response = gw.chat("chain", json!({})).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "30");
}

#[tokio::test]
async fn weighted_routing_splits_by_weight() {
    let gw = Gateway::start("proxy_weighted").await;
    let mut first = 0;
    let n = 200;
    for _ in 0..n {
        let response = gw.chat("split", json!({})).await;
        if header(&response, "x-gateway-backend") == "up0" {
            first += 1;
        }
    }
    // Weights 3:1, so up0 serves Binomial(200, 0.75): mean 150, sd 6.1. Five sd either side: 120..=180.
    assert!((120..=180).contains(&first), "up0 served {first} of {n}");
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_stream() {
    let gw = Gateway::start("proxy_cancel").await;
    gw.mocks[0].script(json!([{"chunks": 50, "chunk_delay_ms": 100}])).await;
    let response = gw.chat("chain", json!({"stream": true})).await;
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    eventually(Duration::from_secs(10), "the upstream stream to be cancelled", || async {
        let stats = gw.mocks[0].stats().await;
        (stats["streams_cancelled"] == json!(1)).then_some(())
    })
    .await;
    assert_eq!(gw.mocks[0].stats().await["streams_finished"], json!(0));
}

#[tokio::test]
async fn an_upstream_answer_over_the_bound_is_refused_not_buffered() {
    let gw = Gateway::start_with("proxy_answer_bound", &["--max-upstream-answer-bytes=65536"]).await;
    let big = "x".repeat(100_000);
    gw.mocks[0]
        .script(json!([{"body": {"id": "c", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": big}, "finish_reason": "stop"}]}}]))
        .await;
    let chat = json!({"model": "chain", "messages": [{"role": "user", "content": "Hi"}]});
    let (status, body) = json_of(gw.dp.post("/v1/chat/completions", Some(&gw.key), &chat).await).await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("larger than 65536 bytes (GATEWAY_MAX_UPSTREAM_ANSWER_BYTES)"), "{message}");
    // Answers within the bound are served as before.
    let response = gw.dp.post("/v1/chat/completions", Some(&gw.key), &chat).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let gw = Gateway::start_with("proxy_errors", &["--max-body-bytes=65536"]).await;
    let raw = |body: &'static str| {
        gw.dp
            .client()
            .post(gw.dp.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, u16, &str, &str)> = vec![
        (
            raw("{\"model\": ").await.unwrap(),
            400,
            "invalid_request",
            "the request body is not valid JSON: EOF while parsing a value at line 1 column 10",
        ),
        (raw("[]").await.unwrap(), 400, "invalid_request", "the request body must be a JSON object"),
        (
            raw("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}").await.unwrap(),
            400,
            "invalid_value",
            "you must provide a model parameter",
        ),
        (
            raw("{\"model\": 5, \"messages\": []}").await.unwrap(),
            400,
            "invalid_value",
            "model must be a string, not a number",
        ),
        (raw("{\"model\": \"chain\"}").await.unwrap(), 400, "invalid_value", "you must provide a messages parameter"),
        (
            raw("{\"model\": \"chain\", \"messages\": \"hi\"}").await.unwrap(),
            400,
            "invalid_value",
            "messages must be an array, not a string",
        ),
        (
            raw("{\"model\": \"chain\", \"messages\": [{\"role\": \"user\"}], \"stream\": \"yes\"}").await.unwrap(),
            400,
            "invalid_value",
            "stream must be a boolean, not a string",
        ),
        (
            gw.chat("no-such-alias", json!({})).await,
            404,
            "model_not_found",
            "the model 'no-such-alias' does not exist or you do not have access to it",
        ),
        (
            gw.chat("chain", json!({"metadata": {"classification": "secret"}})).await,
            403,
            "policy_denied",
            "request denied by policy 'no-secrets-please': secret data may not leave the building",
        ),
        (
            gw.dp.post("/v1/chat/completions", None, &json!({"model": "chain"})).await,
            401,
            "invalid_api_key",
            "missing API key: send `Authorization: Bearer <key>` or `x-api-key`",
        ),
        (
            gw.dp.post("/v1/chat/completions", Some("gwk_wrong"), &json!({"model": "chain"})).await,
            401,
            "invalid_api_key",
            "incorrect API key provided",
        ),
        (
            gw.dp.post("/v1/chat/completions", Some(&gw.revoked_key), &json!({"model": "chain"})).await,
            401,
            "invalid_api_key",
            "this API key has been revoked",
        ),
        (
            gw.dp.post("/v1/chat/completions", Some(&gw.expired_key), &json!({"model": "chain"})).await,
            401,
            "invalid_api_key",
            "this API key has expired",
        ),
        (
            gw.dp
                .post(
                    "/v1/chat/completions",
                    Some(&gw.limited_key),
                    &json!({"model": "chain", "messages": [{"role": "user", "content": "x"}]}),
                )
                .await,
            403,
            "model_not_allowed",
            "this API key may not use model 'chain'",
        ),
        (gw.dp.post("/v1/nope", Some(&gw.key), &json!({})).await, 404, "unknown_url", "no route for POST /v1/nope"),
    ];
    for (response, status, code, message) in cases {
        let (actual_status, body) = json_of(response).await;
        assert_eq!(actual_status, status, "{body}");
        assert_eq!(body["error"]["code"], json!(code), "{body}");
        assert_eq!(body["error"]["message"], json!(message));
        assert!(body["error"]["type"].is_string());
    }
    // The metadata header works like the body's metadata.
    let response = gw
        .dp
        .client()
        .post(gw.dp.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .header("x-gateway-meta-classification", "secret")
        .json(&json!({"model": "chain", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let huge = json!({"model": "chain", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let (status, body) = json_of(gw.dp.post("/v1/chat/completions", Some(&gw.key), &huge).await).await;
    assert_eq!((status, body["error"]["code"].clone()), (413, json!("request_too_large")));
    assert_eq!(gw.mocks[0].requests().await.len(), 0, "nothing invalid was forwarded");
}

#[tokio::test]
async fn models_lists_what_the_key_may_use() {
    let gw = Gateway::start("proxy_models").await;
    let list = |key: String| {
        let client = gw.dp.client().clone();
        let url = gw.dp.url("/v1/models");
        async move { client.get(url).bearer_auth(key).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let all = list(gw.key.clone()).await;
    let ids: Vec<&str> = all["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["chain", "claude", "embeddings", "one-model", "paced", "paint", "pinned", "refused-first", "see", "split"]
    );
    assert_eq!(all["object"], json!("list"));
    let limited = list(gw.limited_key.clone()).await;
    assert_eq!(limited["data"], json!([{"id": "split", "object": "model", "created": 0, "owned_by": "gateway"}]));
    let one = gw.dp.client().get(gw.dp.url("/v1/models/chain")).bearer_auth(&gw.key).send().await.unwrap();
    assert_eq!(one.json::<Value>().await.unwrap()["id"], json!("chain"));
    let hidden = gw.dp.client().get(gw.dp.url("/v1/models/chain")).bearer_auth(&gw.limited_key).send().await.unwrap();
    assert_eq!(hidden.status(), 404);
}

/// The SDK conformance suite (`tests/sdk/test_openai_sdk.py`) with the official `openai` Python package, in the
/// venv that `scripts/test.sh` prepares.
#[tokio::test]
async fn the_official_python_sdk_works_unchanged() {
    sdk_suite("sdk", "tests/sdk/test_openai_sdk.py", 25).await;
}

/// `/v1/messages` with the official `anthropic` Python package (`tests/sdk/test_anthropic_sdk.py`).
#[tokio::test]
async fn the_official_anthropic_sdk_works_unchanged() {
    sdk_suite("sdk_anthropic", "tests/sdk/test_anthropic_sdk.py", 18).await;
}

#[tokio::test]
async fn image_prompts_are_redacted_or_blocked_by_guardrails() {
    let gw = Gateway::start("proxy_image_guardrails").await;
    let paint = |prompt: &str| json!({"model": "paint", "prompt": prompt, "size": "1024x1024"});
    let response = gw.dp.post("/v1/images/generations", Some(&gw.key), &paint("a portrait for jane@example.com")).await;
    assert_eq!(response.status(), 200);
    let seen = gw.mocks[0].requests().await;
    let sent = seen.iter().find(|r| r["path"] == json!("/v1/images/generations")).expect("the image request");
    assert_eq!(sent["body"]["prompt"], json!("a portrait for [REDACTED:email]"), "{sent}");
    let before = gw.mocks[0].requests().await.len();
    let (status, body) =
        json_of(gw.dp.post("/v1/images/generations", Some(&gw.key), &paint("the bluebird launch poster")).await).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("content_blocked")), "{body}");
    assert!(!body.to_string().contains("bluebird"), "the error names the category, never the text: {body}");
    assert_eq!(gw.mocks[0].requests().await.len(), before, "a blocked prompt is never sent");
}

/// `/v1/images/generations` with the official `openai` Python package (`tests/sdk/test_openai_images.py`).
#[tokio::test]
async fn the_official_python_sdk_generates_images() {
    sdk_suite("sdk_images", "tests/sdk/test_openai_images.py", 9).await;
}

/// `/v1/responses` with the official `openai` Python package (`tests/sdk/test_openai_responses.py`).
#[tokio::test]
async fn the_official_python_sdk_speaks_the_responses_api() {
    sdk_suite("sdk_responses", "tests/sdk/test_openai_responses.py", 13).await;
}

/// The official `openai` Node SDK's smoke suite (`tests/node/smoke.test.mjs`: chat, stream, tools, embeddings,
/// errors), installed by `scripts/test.sh` with `npm ci`.
#[tokio::test]
async fn the_official_node_sdk_works_unchanged() {
    let gw = Gateway::start("sdk_node").await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    assert!(
        root.join("tests/node/node_modules/openai").exists(),
        "the openai Node SDK is missing: scripts/test.sh installs it (cd tests/node && npm ci)"
    );
    let output = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=tap", "tests/node/smoke.test.mjs"])
        .current_dir(&root)
        .env("GATEWAY_BASE_URL", gw.dp.url("/v1"))
        .env("GATEWAY_KEY", &gw.key)
        .env("GATEWAY_BROKE_KEY", &gw.broke_key)
        .output()
        .await
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the Node SDK suite failed:\n{report}");
    assert!(report.contains("# pass 8") && report.contains("# fail 0"), "every Node SDK test ran:\n{report}");
    assert!(
        report.contains("# skipped 0") && report.contains("# todo 0"),
        "no Node SDK test may be skipped:\n{report}"
    );
}

/// Run one pytest file of `tests/sdk/` against a fresh gateway; every one of its `tests` must pass, none skipped.
async fn sdk_suite(test: &str, file: &str, tests: usize) {
    let gw = Gateway::start(test).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh creates it (python3 -m venv .venv && .venv/bin/pip install -r tests/sdk/requirements.txt)",
        python.display()
    );
    let mocks: Vec<String> = gw.mocks.iter().map(|m| format!("http://{}", m.addr)).collect();
    let output = tokio::process::Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", file])
        .current_dir(&root)
        .env("GATEWAY_BASE_URL", gw.dp.url("/v1"))
        .env("GATEWAY_KEY", &gw.key)
        .env("GATEWAY_LIMITED_KEY", &gw.limited_key)
        .env("GATEWAY_REVOKED_KEY", &gw.revoked_key)
        .env("GATEWAY_BROKE_KEY", &gw.broke_key)
        .env("MOCK_URLS", mocks.join(","))
        .output()
        .await
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK suite {file} failed:\n{report}");
    assert!(report.contains(&format!("{tests} passed")), "every SDK test of {file} ran:\n{report}");
    assert!(!report.contains("skipped"), "no SDK test may be skipped:\n{report}");
}
