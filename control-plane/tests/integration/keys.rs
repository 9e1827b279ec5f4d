//! Virtual API keys: generated server-side, shown once, stored hashed, with limits, expiry and revocation.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

#[sqlx::test(migrations = "../migrations")]
async fn keys_are_shown_once_and_stored_hashed(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    app.create("backends", backend("b1")).await;
    app.create("models", model("m1", "b1")).await;
    app.create("aliases", alias("gpt", &["m1"])).await;
    let created = app
        .create(
            "keys",
            json!({"name": "search-prod", "team": "search", "tags": ["prod"], "allowed_aliases": ["gpt"],
                               "rpm_limit": 600, "tpm_limit": 100000, "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gwk_") && secret.len() > 40, "{secret}");
    assert_eq!(created["prefix"].as_str().unwrap(), &secret[..12]);
    assert_eq!(created["team"], json!("search"));
    assert_eq!(created["rpm_limit"], json!(600));

    let hash: String = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys").fetch_one(&pool).await.unwrap();
    assert_eq!(hash, control_plane::auth::hash_secret(&secret));
    for path in ["/admin/v1/keys", "/admin/v1/keys/search-prod", "/admin/v1/audit"] {
        let reply = app.call("GET", path, None).await;
        assert!(!reply.text.contains(&secret), "{path} shows the secret");
    }
    let listed = app.call("GET", "/admin/v1/keys?team=search", None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.call("GET", "/admin/v1/keys?team=other", None).await.body["items"], json!([]));
}

#[sqlx::test(migrations = "../migrations")]
async fn keys_update_revoke_and_delete(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("keys", json!({"name": "k1"})).await;
    let updated = app.call("PUT", "/admin/v1/keys/k1", Some(json!({"team": "ml", "rpm_limit": 10}))).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.body["team"], json!("ml"));
    let version = app.version().await;
    let revoked = app.call("POST", "/admin/v1/keys/k1/revoke", None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    assert_eq!(app.version().await, version + 1, "revocation is a config change the data planes must see");
    let audit = app.call("GET", "/admin/v1/audit?kind=api_key&action=revoke", None).await;
    assert_eq!(audit.body["items"][0]["resource_name"], json!("k1"));

    let bad = app.call("POST", "/admin/v1/keys", Some(json!({"name": "k2", "rpm_limit": 0}))).await;
    assert_eq!(bad.error_message(), "api_key \"k2\" is invalid: rpm_limit: must be greater than zero");
    let duplicate = app.call("POST", "/admin/v1/keys", Some(json!({"name": "k1"}))).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.error_message(), "api_key \"k1\" already exists");

    app.create(
        "budgets",
        json!({"name": "k1-daily", "scope": {"type": "key", "key": "k1"}, "period": "day", "limit_usd": "1"}),
    )
    .await;
    let refused = app.call("DELETE", "/admin/v1/keys/k1", None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.error_message(), "cannot delete api_key \"k1\": still referenced by budget(s) k1-daily");
    app.call("DELETE", "/admin/v1/budgets/k1-daily", None).await;
    assert_eq!(app.call("DELETE", "/admin/v1/keys/k1", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.call("GET", "/admin/v1/keys/k1", None).await.status, StatusCode::NOT_FOUND);
}
