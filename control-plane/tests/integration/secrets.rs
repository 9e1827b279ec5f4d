//! Provider secrets: encrypted at rest, never returned by any read, never in the audit log.

use axum::http::StatusCode;
use control_plane::secrets::Sealer;
use control_plane::store::resources::WriteContext;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::secret_ref::SecretEnvPolicy;
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

    update["secret"] = json!({"ref": "env:PROVIDER_OPENAI_API_KEY"});
    let replaced = app.call("PUT", "/admin/v1/backends/b1", Some(update)).await;
    assert_eq!(replaced.body["meta"]["secret"], json!({"ref": "env:PROVIDER_OPENAI_API_KEY"}));
}

#[sqlx::test(migrations = "../migrations")]
async fn literal_secrets_need_an_encryption_key(pool: PgPool) {
    let context = WriteContext { sealer: None, ..WriteContext::default() };
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

/// Finding: a backend with `{"ref": "env:GATEWAY_NODE_TOKEN"}` made every data plane send its node token to the
/// backend's URL. References are limited to the operator's prefixes, and the gateway's own settings never pass.
#[sqlx::test(migrations = "../migrations")]
async fn secret_references_are_limited_to_the_allowed_prefixes(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let with_ref = |name: &str, reference: &str| {
        let mut body = backend(name);
        body["secret"] = json!({"ref": reference});
        body
    };
    for (reference, message) in [
        (
            "env:GATEWAY_NODE_TOKEN",
            "backend \"b\" is invalid: secret.ref: env:GATEWAY_NODE_TOKEN names one of the gateway's own settings \
             (GATEWAY_*, DATABASE_URL, PG*), which a backend may never reference",
        ),
        (
            "env:DATABASE_URL",
            "backend \"b\" is invalid: secret.ref: env:DATABASE_URL names one of the gateway's own settings \
             (GATEWAY_*, DATABASE_URL, PG*), which a backend may never reference",
        ),
        (
            "env:OPENAI_API_KEY",
            "backend \"b\" is invalid: secret.ref: env:OPENAI_API_KEY is not a variable backends may reference: the \
             name must start with PROVIDER_ (GATEWAY_SECRET_ENV_PREFIX)",
        ),
    ] {
        let reply = app.call("POST", "/admin/v1/backends", Some(with_ref("b", reference))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reference}: {}", reply.text);
        assert_eq!(reply.code(), "invalid_spec");
        assert_eq!(reply.body["error"]["param"], json!("secret.ref"));
        assert_eq!(reply.error_message(), message);
    }
    let created = app.create("backends", with_ref("b", "env:PROVIDER_OPENAI_API_KEY")).await;
    assert_eq!(created["meta"]["secret"], json!({"ref": "env:PROVIDER_OPENAI_API_KEY"}));
    // An update cannot swap in a reserved name either, and the stored reference stays.
    let reply = app.call("PUT", "/admin/v1/backends/b", Some(with_ref("b", "env:GATEWAY_SECRET_KEY"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let stored: String = sqlx::query_scalar("SELECT spec->'secret'->>'ref' FROM backends WHERE name = 'b'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "env:PROVIDER_OPENAI_API_KEY");

    // The operator's own prefixes replace the default.
    let context = WriteContext {
        base_urls: BaseUrlPolicy::default(),
        secret_env: SecretEnvPolicy::from_list("ACME_LLM_").unwrap(),
        sealer: None,
        bootstrap_from_env: true,
    };
    let custom = TestApp::with(pool, context, 64 * 1024).await;
    custom.create("backends", with_ref("acme", "env:ACME_LLM_KEY")).await;
    let reply = custom.call("POST", "/admin/v1/backends", Some(with_ref("other", "env:PROVIDER_KEY"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_message(),
        "backend \"other\" is invalid: secret.ref: env:PROVIDER_KEY is not a variable backends may reference: the \
         name must start with ACME_LLM_ (GATEWAY_SECRET_ENV_PREFIX)"
    );
}
