//! `/v1/images/generations` through the real planes: an OpenAI and an Azure OpenAI backend (deployment path and
//! `api-version`), priced per image at the size and quality asked for, and the images counted in the ledger next to
//! the cost, in JSON and CSV. A client that hangs up before the images arrive is still billed for them.

use std::time::Duration;

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn images_are_priced_per_image_and_counted_in_the_ledger(pool: PgPool) {
    let test = "images";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let openai = MockUpstream::start(test, "openai").await;
    let azure = MockUpstream::start(test, "azure").await;
    cp.create("backends", json!({"name": "oai", "kind": "openai", "base_url": openai.base_url()})).await;
    cp.create(
        "backends",
        json!({"name": "az", "kind": "azure_openai", "base_url": azure.base_url(),
               "auth": {"type": "header", "header": "api-key"}, "secret": {"value": "azure-key"},
               "azure": {"api_version": "2024-10-21"}}),
    )
    .await;
    let prices = json!({"input": "0", "output": "0", "per_image": {"1024x1024": "0.04", "hd/1024x1024": "0.08"}});
    for (name, backend, upstream) in [("dalle", "oai", "dall-e-3"), ("dalle-az", "az", "dalle3-prod")] {
        cp.create(
            "models",
            json!({"name": name, "backend": backend, "upstream_model": upstream,
                   "capabilities": {"images": true}, "pricing": prices}),
        )
        .await;
    }
    cp.create("aliases", json!({"name": "images", "candidates": [{"model": "dalle"}]})).await;
    cp.create("aliases", json!({"name": "images-az", "candidates": [{"model": "dalle-az"}]})).await;
    // An image model on a backend kind without an image endpoint is refused, naming why.
    cp.create("backends", json!({"name": "claude", "kind": "anthropic", "base_url": openai.base_url()})).await;
    let (status, refused) = cp
        .call(
            "POST",
            "/models",
            Some(json!({"name": "painter", "backend": "claude", "upstream_model": "x",
                        "capabilities": {"images": true}, "pricing": prices})),
        )
        .await;
    assert_eq!((status, &refused["error"]["code"]), (400, &json!("dangling_reference")), "{refused}");
    assert!(refused.to_string().contains("is of kind Anthropic, which serves no image generation"), "{refused}");

    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    dp.wait_for_version(version).await;
    let generate = |model: &str, id: &str, extra: Value| {
        let mut body = json!({"model": model, "prompt": "a lighthouse at dusk", "size": "1024x1024"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        dp.client()
            .post(dp.url("/v1/images/generations"))
            .bearer_auth(&key)
            .header("x-request-id", id)
            .json(&body)
            .send()
    };

    let response = generate("images", "img-1", json!({"n": 3})).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-cost-usd"], "0.12");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    let response = generate("images-az", "img-az", json!({"quality": "hd"})).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-gateway-cost-usd"], "0.08");
    let seen = azure.requests().await;
    assert_eq!(seen[0]["path"], "/v1/openai/deployments/dalle3-prod/images/generations");
    assert_eq!(seen[0]["query"], "api-version=2024-10-21");
    assert_eq!(seen[0]["api_key"], "azure-key");

    // The client leaves before the images arrive: they are generated anyway, so they are billed (estimated).
    openai.script(json!([{"delay_ms": 1500}])).await;
    let gone = tokio::time::timeout(Duration::from_millis(300), generate("images", "img-gone", json!({"n": 2}))).await;
    assert!(gone.is_err(), "the client gave up first");

    let event = |id: &'static str| {
        let cp = &cp;
        async move {
            eventually(Duration::from_secs(30), &format!("the spend event of {id}"), || async {
                cp.spend_events().await.into_iter().find(|e| e["request_id"] == id)
            })
            .await
        }
    };
    let served = event("img-1").await;
    assert_eq!(
        (&served["endpoint"], &served["images"], &served["cost_usd"], &served["outcome"]),
        (&json!("images.generations"), &json!(3), &json!("0.12"), &json!("ok")),
        "{served}"
    );
    assert_eq!(served["usage_estimated"], false);
    let hd = event("img-az").await;
    assert_eq!((&hd["images"], &hd["cost_usd"], &hd["backend"]), (&json!(1), &json!("0.08"), &json!("az")), "{hd}");
    let abandoned = event("img-gone").await;
    assert_eq!(
        (&abandoned["images"], &abandoned["cost_usd"], &abandoned["outcome"], &abandoned["usage_estimated"]),
        (&json!(2), &json!("0.08"), &json!("client_closed"), &json!(true)),
        "{abandoned}"
    );

    let csv = cp
        .http
        .get(format!("http://{}/admin/v1/spend/events?format=csv", cp.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // `images` is the last column (appended, so readers locating columns by position keep theirs); the ones before
    // it hold JSON with commas, so the row is read from its end.
    assert!(csv.lines().next().unwrap().ends_with(",images"), "{csv}");
    let row = csv.lines().find(|l| l.contains("img-1")).unwrap();
    assert_eq!(row.rsplit(',').next(), Some("3"), "{row}");
}
