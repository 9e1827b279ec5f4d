//! Bearer admin tokens and what each role may do.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use control_plane::store::resources::WriteContext;

use crate::common::*;

#[sqlx::test(migrations = "../migrations")]
async fn requests_without_a_valid_token_get_401(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let reply = app.send(Request::get("/admin/v1/backends").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_message(), "an admin token is required: send `Authorization: Bearer <token>`");
    assert_eq!(reply.body["error"]["type"], json!("authentication_error"));
    let reply = app
        .send(Request::get("/admin/v1/backends").header("authorization", "Basic abc").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.error_message(), "the Authorization header must be `Bearer <token>`");
    let reply = app.call_as("wrong", "GET", "/admin/v1/backends", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_message(), "the admin token is not valid (unknown or revoked)");
    // Open routes need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/admin/v1/openapi.json"] {
        let reply = app.send(Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn auditors_read_but_never_write(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    app.create("keys", json!({"name": "k1"})).await;
    let auditor = app.token("auditor").await;
    for path in
        ["/admin/v1/backends", "/admin/v1/backends/b1", "/admin/v1/keys", "/admin/v1/keys/k1", "/admin/v1/audit"]
    {
        let reply = app.call_as(&auditor, "GET", path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }
    let evaluate = app.call_as(&auditor, "POST", "/admin/v1/evaluate", Some(json!({"request": {"model": "x"}}))).await;
    assert_eq!(evaluate.status, StatusCode::OK, "{}", evaluate.text);

    let version = app.version().await;
    let writes = [
        ("POST", "/admin/v1/backends", Some(backend("b2")), "change configuration"),
        ("PUT", "/admin/v1/backends/b1", Some(backend("b1")), "change configuration"),
        ("DELETE", "/admin/v1/backends/b1", None, "change configuration"),
        (
            "POST",
            "/admin/v1/budgets",
            Some(json!({"name": "x", "scope": {"type": "global"}, "period": "day", "limit_usd": "1"})),
            "change configuration",
        ),
        ("POST", "/admin/v1/keys", Some(json!({"name": "k2"})), "create, change or revoke API keys"),
        ("POST", "/admin/v1/keys/k1/revoke", None, "create, change or revoke API keys"),
        ("DELETE", "/admin/v1/keys/k1", None, "create, change or revoke API keys"),
        ("POST", "/admin/v1/principals", Some(json!({"name": "p", "role": "admin"})), "manage admin principals"),
        ("GET", "/admin/v1/principals", None, "manage admin principals"),
    ];
    for (method, path, body, action) in writes {
        let reply = app.call_as(&auditor, method, path, body).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(reply.error_message(), format!("role auditor may not {action}"));
        assert_eq!(reply.body["error"]["type"], json!("permission_error"));
    }
    assert_eq!(app.version().await, version, "nothing was written");
}

#[sqlx::test(migrations = "../migrations")]
async fn authors_write_config_but_not_keys_or_principals(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let author = app.token("author").await;
    let reply = app.call_as(&author, "POST", "/admin/v1/backends", Some(backend("b1"))).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["meta"]["created_by"].as_str().unwrap().split('-').next(), Some("author"));
    let reply = app.call_as(&author, "GET", "/admin/v1/keys", None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_message(), "role author may not read API keys");
    let reply = app.call_as(&author, "POST", "/admin/v1/principals", Some(json!({"name": "x", "role": "admin"}))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[sqlx::test(migrations = "../migrations")]
async fn principals_are_hashed_shown_once_and_revocable(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let reply = app.call("POST", "/admin/v1/principals", Some(json!({"name": "ops", "role": "admin"}))).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let token = reply.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("gwa_"));
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT token_sha256 FROM admin_principals").fetch_all(&pool).await.unwrap();
    assert!(stored.iter().all(|h| h.len() == 64 && !h.contains(&token)), "only hashes are stored");
    let read = app.call("GET", "/admin/v1/principals/ops", None).await;
    assert!(!read.text.contains(&token) && read.body.get("token").is_none());
    assert_eq!(app.call_as(&token, "GET", "/admin/v1/backends", None).await.status, StatusCode::OK);
    let revoked = app.call("DELETE", "/admin/v1/principals/ops", None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["revoked_at"].is_string());
    assert_eq!(app.call_as(&token, "GET", "/admin/v1/backends", None).await.status, StatusCode::UNAUTHORIZED);
    let bad_role = app.call("POST", "/admin/v1/principals", Some(json!({"name": "x", "role": "root"}))).await;
    assert_eq!(bad_role.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_role.error_message(), "role: unknown variant `root`, expected one of `admin`, `author`, `auditor`");
}

#[sqlx::test(migrations = "../migrations")]
async fn no_revocation_locks_every_admin_out(pool: PgPool) {
    // While GATEWAY_ADMIN_TOKEN is set the bootstrap principal comes back at every start: a revoke would not hold.
    let app = TestApp::new(pool.clone()).await;
    let reply = app.call("DELETE", "/admin/v1/principals/bootstrap", None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert!(reply.error_message().contains("GATEWAY_ADMIN_TOKEN"), "{}", reply.text);
    assert_eq!(app.call("GET", "/admin/v1/backends", None).await.status, StatusCode::OK);

    // Without it, the bootstrap principal can be retired once another admin exists, and the last admin stays.
    let context = WriteContext { sealer: None, ..WriteContext::default() };
    let app = TestApp::with(pool, context, 64 * 1024).await;
    let auditor = app.call("POST", "/admin/v1/principals", Some(json!({"name": "audit", "role": "auditor"}))).await;
    assert_eq!(auditor.status, StatusCode::CREATED);
    let reply = app.call("DELETE", "/admin/v1/principals/bootstrap", None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "an auditor cannot manage principals: {}", reply.text);
    assert_eq!(
        reply.error_message(),
        "principal \"bootstrap\" is the last admin that can sign in; create another admin before revoking it"
    );
    let ops = app.call("POST", "/admin/v1/principals", Some(json!({"name": "ops", "role": "admin"}))).await;
    let ops = ops.body["token"].as_str().unwrap().to_owned();
    let reply = app.call("DELETE", "/admin/v1/principals/bootstrap", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(app.call("GET", "/admin/v1/backends", None).await.status, StatusCode::UNAUTHORIZED);
    let reply = app.call_as(&ops, "DELETE", "/admin/v1/principals/ops", None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(app.call_as(&ops, "GET", "/admin/v1/principals/ops", None).await.body["revoked_at"], json!(null));
}

#[sqlx::test(migrations = "../migrations")]
async fn the_bootstrap_token_rotates_from_configuration(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.store.ensure_bootstrap_admin("a-new-bootstrap-token").await.unwrap();
    assert_eq!(app.call("GET", "/admin/v1/backends", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.call_as("a-new-bootstrap-token", "GET", "/admin/v1/backends", None).await.status, StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_openapi_document_covers_every_route(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let reply = app.send(Request::get("/admin/v1/openapi.json").body(Body::empty()).unwrap()).await;
    let paths = reply.body["paths"].as_object().unwrap();
    for collection in
        ["backends", "models", "aliases", "route-policies", "tool-schemas", "tool-policies", "budgets", "keys"]
    {
        assert!(paths.contains_key(&format!("/admin/v1/{collection}")), "{collection}");
        assert!(paths.contains_key(&format!("/admin/v1/{collection}/{{name}}")), "{collection}/{{name}}");
    }
    for path in ["/admin/v1/keys/{name}/revoke", "/admin/v1/principals", "/admin/v1/audit", "/admin/v1/evaluate"] {
        assert!(paths.contains_key(path), "{path}");
    }
    let schemas = reply.body["components"]["schemas"].as_object().unwrap();
    for schema in
        ["BackendSpec", "ModelSpec", "Pricing", "RoutePolicySpec", "PolicyAction", "EvaluateResponse", "Error"]
    {
        assert!(schemas.contains_key(schema), "{schema}");
    }
    // Every $ref resolves.
    let text = reply.text.clone();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {name}");
    }
}
