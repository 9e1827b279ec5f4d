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
