//! The `azure_openai` backend kind through the real planes: deployment paths, `api-version`, the `api-key` header,
//! chat (streamed and not) and embeddings, and Azure's content-filter refusal turned into a clear OpenAI error.

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn azure_deployments_are_called_with_their_api_version_and_key(pool: PgPool) {
    let test = "azure_openai";
    let db = test_database_url(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &db)).await;
    let azure = MockUpstream::start(test, "azure").await;
    cp.create(
        "backends",
        json!({"name": "azure-eu", "kind": "azure_openai", "base_url": azure.base_url(),
               "auth": {"type": "header", "header": "api-key"}, "secret": {"value": "azure-key"},
               "azure": {"api_version": "2024-10-21"}}),
    )
    .await;
    cp.create(
        "models",
        json!({"name": "gpt", "backend": "azure-eu", "upstream_model": "gpt4o-prod",
               "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}),
    )
    .await;
    cp.create(
        "models",
        json!({"name": "embed", "backend": "azure-eu", "upstream_model": "embed-prod",
               "capabilities": {"embeddings": true, "embedding_dimensions": 8},
               "pricing": {"input": "1", "output": "0"}}),
    )
    .await;
    cp.create("aliases", json!({"name": "gpt", "candidates": [{"model": "gpt"}]})).await;
    cp.create("aliases", json!({"name": "embed", "candidates": [{"model": "embed"}]})).await;
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app", "team": "research"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    dp.wait_for_version(version).await;
    let post = |path: &'static str, body: Value| dp.client().post(dp.url(path)).bearer_auth(&key).json(&body).send();
    let chat =
        |stream: bool| json!({"model": "gpt", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]});

    let response = post("/v1/chat/completions", chat(false)).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from azure");
    let text = post("/v1/chat/completions", chat(true)).await.unwrap().text().await.unwrap();
    assert!(text.contains("\"content\":\"Hello") && text.ends_with("data: [DONE]\n\n"), "{text}");
    let response = post("/v1/embeddings", json!({"model": "embed", "input": "x"})).await.unwrap();
    assert_eq!(response.status(), 200);

    let seen = azure.requests().await;
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/v1/openai/deployments/gpt4o-prod/chat/completions",
            "/v1/openai/deployments/gpt4o-prod/chat/completions",
            "/v1/openai/deployments/embed-prod/embeddings"
        ]
    );
    for request in &seen {
        assert_eq!(request["query"], "api-version=2024-10-21", "{request}");
        assert_eq!(request["api_key"], "azure-key", "{request}");
        assert_eq!(request["authorization"], Value::Null, "the key goes in api-key only: {request}");
    }

    azure
        .script(json!([{"status": 400, "body": {"error": {"code": "content_filter", "param": "prompt", "status": 400,
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                "hate": {"filtered": false, "severity": "safe"}, "violence": {"filtered": true, "severity": "high"}}}}}}]))
        .await;
    let response = post("/v1/chat/completions", chat(false)).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"type": "invalid_request_error", "code": "content_filter", "param": "prompt",
            "message": "Azure OpenAI's content filter refused the request (filtered: violence): The response was \
                        filtered due to the prompt triggering Azure OpenAI's content management policy."}})
    );
}

/// An `azure_openai` backend signing in with Entra ID: one client-credentials exchange serves concurrent requests,
/// the token goes in `Authorization: Bearer` (the client secret never reaches Azure OpenAI), it is fetched again
/// before it expires, and a backend whose secret Entra refuses sends nothing and fails over.
#[sqlx::test(migrations = false)]
async fn entra_id_tokens_are_fetched_once_sent_as_bearer_refreshed_and_refusals_fail_over(pool: PgPool) {
    let test = "azure_entra";
    let db = test_database_url(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &db)).await;
    let azure = MockUpstream::start(test, "azure").await;
    let tenant = "contoso.onmicrosoft.com";
    // Tokens of two seconds: refreshed after one (half their lifetime, as for any token under five minutes).
    azure
        .register_entra_app(json!({"tenant_id": tenant, "client_id": "app-1", "client_secret": "s3cret",
                                   "expires_in": 2}))
        .await;
    let token_url = format!("http://{}/{tenant}/oauth2/v2.0/token", azure.addr);
    for (name, secret) in [("azure-entra", "s3cret"), ("azure-wrong-secret", "not-the-secret")] {
        cp.create(
            "backends",
            json!({"name": name, "kind": "azure_openai", "base_url": azure.base_url(), "secret": {"value": secret},
                   "azure": {"api_version": "2024-10-21",
                             "entra": {"tenant_id": tenant, "client_id": "app-1", "token_url": token_url}}}),
        )
        .await;
    }
    for (name, backend, chat) in
        [("gpt", "azure-entra", true), ("gpt-wrong", "azure-wrong-secret", true), ("embed", "azure-entra", false)]
    {
        let capabilities =
            if chat { json!({"chat": true}) } else { json!({"embeddings": true, "embedding_dimensions": 8}) };
        cp.create(
            "models",
            json!({"name": name, "backend": backend, "upstream_model": format!("{name}-prod"),
                   "capabilities": capabilities, "pricing": {"input": "1", "output": "2"}}),
        )
        .await;
    }
    for (alias, candidates) in [
        ("gpt", json!([{"model": "gpt"}])),
        ("embed", json!([{"model": "embed"}])),
        ("wrong-first", json!([{"model": "gpt-wrong"}, {"model": "gpt"}])),
        ("wrong-only", json!([{"model": "gpt-wrong"}])),
    ] {
        cp.create("aliases", json!({"name": alias, "candidates": candidates})).await;
    }
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app", "team": "research"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    dp.wait_for_version(version).await;
    let post = |path: &'static str, body: Value| dp.client().post(dp.url(path)).bearer_auth(&key).json(&body).send();
    let chat = |model: &str, stream: bool| json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]});

    // Concurrent first requests, streamed or not, and embeddings: one exchange between them.
    let first = futures::future::join_all([
        post("/v1/chat/completions", chat("gpt", false)),
        post("/v1/chat/completions", chat("gpt", false)),
        post("/v1/chat/completions", chat("gpt", true)),
        post("/v1/embeddings", json!({"model": "embed", "input": "x"})),
    ])
    .await;
    for response in first {
        let response = response.unwrap();
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
    }
    let exchange = json!({"tenant": tenant, "grant_type": "client_credentials", "client_id": "app-1",
                          "scope": "https://cognitiveservices.azure.com/.default", "secret_matches": true,
                          "status": 200});
    assert_eq!(azure.entra_token_requests().await, std::slice::from_ref(&exchange));
    let seen = azure.requests().await;
    assert_eq!(seen.len(), 4);
    for request in &seen {
        assert_eq!(request["authorization"], "Bearer entra-token-1", "{request}");
        assert_eq!(request["api_key"], Value::Null, "{request}");
        assert_eq!(request["query"], "api-version=2024-10-21", "{request}");
    }

    // Past half its lifetime the token is fetched again before it is used.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let response = post("/v1/chat/completions", chat("gpt", false)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(azure.entra_token_requests().await, [exchange.clone(), exchange.clone()]);
    assert_eq!(azure.requests().await[4]["authorization"], "Bearer entra-token-2");

    // A secret Entra refuses: nothing is sent to that deployment, the next candidate serves.
    let response = post("/v1/chat/completions", chat("wrong-first", false)).await.unwrap();
    assert_eq!(response.status(), 200);
    let tokens = azure.entra_token_requests().await;
    assert_eq!(
        (tokens.len(), tokens[2]["secret_matches"].clone(), tokens[2]["status"].clone()),
        (3, json!(false), json!(401))
    );
    let paths: Vec<Value> = azure.requests().await.iter().map(|r| r["path"].clone()).collect();
    assert_eq!(paths.len(), 6);
    assert_eq!(paths[5], "/v1/openai/deployments/gpt-prod/chat/completions");

    // With no other candidate the caller is told why, in OpenAI's error shape, without the secret.
    let response = post("/v1/chat/completions", chat("wrong-only", false)).await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (503, Some("upstream_unavailable")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("azure-wrong-secret") && message.contains("no Entra ID token"), "{body}");
    assert!(message.contains("AADSTS7000215") && !message.contains("not-the-secret"), "{body}");
    assert_eq!(azure.requests().await.len(), 6, "nothing reached the deployment");
}
