//! Malformed, oversized, unknown and mistyped input: a clear 4xx JSON error each, never a panic.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

fn raw(method: &str, path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {ADMIN}"));
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(body.into()).unwrap()
}

async fn check(app: &TestApp, request: Request<Body>, status: StatusCode, code: &str, message: &str) {
    let reply = app.send(request).await;
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.code(), code, "{}", reply.text);
    assert_eq!(reply.error_message(), message);
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_bodies_get_clear_errors(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let json = Some("application/json");
    let bad = StatusCode::BAD_REQUEST;
    check(
        &app,
        raw("POST", "/admin/v1/backends", json, "{\"name\": "),
        bad,
        "invalid_json",
        "the request body is not valid JSON: EOF while parsing a value at line 1 column 9",
    )
    .await;
    check(
        &app,
        raw("POST", "/admin/v1/backends", json, ""),
        bad,
        "invalid_json",
        "the request body is empty; a JSON object is required",
    )
    .await;
    check(
        &app,
        raw("POST", "/admin/v1/backends", json, "[1, 2]"),
        bad,
        "invalid_body",
        "the request body must be a JSON object",
    )
    .await;
    check(&app, raw("POST", "/admin/v1/backends", json, json!({"name": "b", "kind": "openai", "base_url": "https://x.example", "colour": "red"}).to_string()),
        bad, "invalid_body", "colour: unknown field `colour`, expected one of `name`, `kind`, `base_url`, `auth`, `secret`, `region`, `tags`, `timeouts`, `rate_limit`, `circuit_breaker`, `health_check`, `azure`, `aws`, `vertex`").await;
    check(
        &app,
        raw(
            "POST",
            "/admin/v1/backends",
            json,
            json!({"name": "b", "kind": "openai", "base_url": "https://x.example", "timeouts": {"connect_ms": "fast"}})
                .to_string(),
        ),
        bad,
        "invalid_body",
        "timeouts.connect_ms: invalid type: string \"fast\", expected u64",
    )
    .await;
    check(
        &app,
        raw(
            "POST",
            "/admin/v1/backends",
            json,
            json!({"name": 7, "kind": "openai", "base_url": "https://x.example"}).to_string(),
        ),
        bad,
        "invalid_body",
        "name: invalid type: integer `7`, expected a string",
    )
    .await;
    check(
        &app,
        raw(
            "POST",
            "/admin/v1/backends",
            json,
            json!({"name": "b", "kind": "palm", "base_url": "https://x.example"}).to_string(),
        ),
        bad,
        "invalid_body",
        "kind: unknown variant `palm`, expected one of `openai`, `azure_openai`, `anthropic`, `bedrock`, `gemini`, \
         `vertex`",
    )
    .await;
    check(
        &app,
        raw(
            "POST",
            "/admin/v1/models",
            json,
            json!({"name": "m", "backend": "b", "upstream_model": "x", "pricing": {"input": "cheap", "output": "1"}})
                .to_string(),
        ),
        bad,
        "invalid_body",
        "pricing.input: invalid value: string \"cheap\", expected an amount as a decimal string such as \"2.50\" (or a JSON number)",
    )
    .await;
    check(
        &app,
        raw("POST", "/admin/v1/backends", Some("text/plain"), "name=b"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "request body must be JSON (Content-Type: application/json)",
    )
    .await;
    let huge = json!({"name": "b", "kind": "openai", "base_url": "https://x.example", "tags": ["x".repeat(70 * 1024)]})
        .to_string();
    check(
        &app,
        raw("POST", "/admin/v1/backends", json, huge),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "request body is larger than the limit of 65536 bytes",
    )
    .await;
    check(
        &app,
        raw("POST", "/admin/v1/backends", json, vec![0xff, 0xfe, 0x00]),
        bad,
        "invalid_json",
        "the request body is not valid JSON: expected value at line 1 column 1",
    )
    .await;
    assert_eq!(app.version().await, 1, "only the bootstrap principal was ever written");
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_paths_methods_and_queries_get_json_errors(pool: PgPool) {
    let app = TestApp::new(pool).await;
    check(
        &app,
        raw("GET", "/admin/v1/nothing-here", None, ""),
        StatusCode::NOT_FOUND,
        "no_route",
        "no route for GET /admin/v1/nothing-here",
    )
    .await;
    // Every answer carries a request id: generated, or the caller's echoed.
    let reply = app.send(raw("GET", "/admin/v1/nothing-here", None, "")).await;
    assert!(reply.headers.get("x-request-id").is_some_and(|v| !v.is_empty()));
    let mut request = raw("GET", "/admin/v1/backends", None, "");
    request.headers_mut().insert("x-request-id", "caller-chosen-id".parse().unwrap());
    assert_eq!(app.send(request).await.headers["x-request-id"], "caller-chosen-id");
    check(
        &app,
        raw("PATCH", "/admin/v1/backends", None, ""),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method PATCH is not allowed on this path",
    )
    .await;
    check(
        &app,
        raw("GET", "/admin/v1/backends?limit=0", None, ""),
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "limit must be between 1 and 1000, not 0",
    )
    .await;
    check(
        &app,
        raw("GET", "/admin/v1/backends?limit=ten", None, ""),
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "invalid query string: Failed to deserialize query string: limit: invalid digit found in string",
    )
    .await;
    check(&app, raw("GET", "/admin/v1/backends?colour=red", None, ""), StatusCode::BAD_REQUEST, "invalid_query",
        "invalid query string: Failed to deserialize query string: colour: unknown field `colour`, expected `limit` or `after`").await;
    check(
        &app,
        raw("GET", "/admin/v1/backends/%FF%FE", None, ""),
        StatusCode::BAD_REQUEST,
        "invalid_path",
        "invalid path: Invalid URL: Invalid UTF-8 in `name`",
    )
    .await;
    check(
        &app,
        raw("GET", "/admin/v1/backends/ghost", None, ""),
        StatusCode::NOT_FOUND,
        "not_found",
        "backend \"ghost\" does not exist",
    )
    .await;
}
