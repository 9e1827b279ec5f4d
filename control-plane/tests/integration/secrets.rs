//! Provider secrets: encrypted at rest, never returned by any read, never in the audit log.

use axum::http::StatusCode;
use control_plane::secrets::Sealer;
use control_plane::store::resources::WriteContext;
use policy_engine::base_url::BaseUrlPolicy;
use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

const SECRET: &str = "sk-live-THIS-MUST-NEVER-LEAK-0123456789";

#[sqlx::test(migrations = "../migrations")]
async fn secrets_are_sealed_and_never_returned(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let mut body = backend("b1");
    body["secret"] = json!({"value": SECRET});
    let created = app.create("backends", body.clone()).await;
    assert_eq!(created["meta"]["secret"]["encrypted"], json!(true));

    // Update without `secret` keeps it; with a ref replaces it.
    let mut update = backend("b1");
    update["region"] = json!("eu");
    app.call("PUT", "/admin/v1/backends/b1", Some(update.clone())).await;
    let stored: String =
        sqlx::query_scalar("SELECT spec::TEXT FROM backends WHERE name = 'b1'").fetch_one(&pool).await.unwrap();
    assert!(!stored.contains(SECRET), "stored encrypted");
    let sealed: String = sqlx::query_scalar("SELECT spec->'secret'->>'sealed' FROM backends WHERE name = 'b1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(Sealer::from_config(SECRET_KEY).unwrap().open(&sealed).unwrap(), SECRET, "kept across the update");

    let mut reads = vec![
        app.call("GET", "/admin/v1/backends/b1", None).await.text,
        app.call("GET", "/admin/v1/backends", None).await.text,
        app.call("GET", "/admin/v1/audit", None).await.text,
    ];
    let auditor = app.token("auditor").await;
    reads.push(app.call_as(&auditor, "GET", "/admin/v1/audit?kind=backend", None).await.text);
    for text in &reads {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        assert!(!text.contains(&sealed), "ciphertext leaked: {text}");
    }
    let audit_rows: Vec<String> =
        sqlx::query_scalar("SELECT coalesce(before::TEXT, '') || coalesce(after::TEXT, '') FROM audit_log")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(audit_rows.iter().all(|r| !r.contains(SECRET) && !r.contains(&sealed)));

    update["secret"] = json!({"ref": "env:OPENAI_API_KEY"});
    let replaced = app.call("PUT", "/admin/v1/backends/b1", Some(update)).await;
    assert_eq!(replaced.body["meta"]["secret"], json!({"ref": "env:OPENAI_API_KEY"}));
}

#[sqlx::test(migrations = "../migrations")]
async fn literal_secrets_need_an_encryption_key(pool: PgPool) {
    let context = WriteContext { base_urls: BaseUrlPolicy::default(), sealer: None };
    let app = TestApp::with(pool, context, 64 * 1024).await;
    let mut body = backend("b1");
    body["secret"] = json!({"value": SECRET});
    let reply = app.call("POST", "/admin/v1/backends", Some(body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_message(),
        "backend \"b1\" is invalid: secret.value: this control plane has no GATEWAY_SECRET_KEY to encrypt secrets with; configure one or store a reference ({\"ref\": \"env:NAME\"})"
    );
    assert!(!reply.text.contains(SECRET));
    let mut sealed = backend("b2");
    sealed["secret"] = json!({"sealed": "AAAA"});
    let reply = app.call("POST", "/admin/v1/backends", Some(sealed)).await;
    assert_eq!(
        reply.error_message(),
        "backend \"b2\" is invalid: secret: use {\"value\": ...} or {\"ref\": \"env:NAME\"}"
    );
}
