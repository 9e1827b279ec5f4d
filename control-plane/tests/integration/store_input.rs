//! Every value the database could refuse is refused first, with a 400 naming the field; a refusal by the database
//! itself (which validation should make impossible) is a fixed 500 that never carries the database's text.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

/// `POST` (or `PUT` when `method` says so) and expect a 400 with `code`, the field in `param`, `message`.
async fn refused(app: &TestApp, method: &str, path: &str, body: Value, code: &str, param: &str, message: &str) {
    let reply = app.call(method, path, Some(body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {path}: {}", reply.text);
    assert_eq!(reply.code(), code, "{}", reply.text);
    assert_eq!(reply.body["error"]["param"], json!(param), "{}", reply.text);
    assert_eq!(reply.error_message(), message);
}

fn budget(limit: Value) -> Value {
    json!({"name": "b", "scope": {"type": "global"}, "period": "month", "limit_usd": limit})
}

#[sqlx::test(migrations = "../migrations")]
async fn money_out_of_the_columns_range_or_scale_is_a_400_naming_the_field(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (version, audit) = (app.version().await, app.audit_rows().await);
    // NUMERIC(20, 10): ten digits before the point (the database said "numeric field overflow")...
    refused(
        &app,
        "POST",
        "/admin/v1/budgets",
        budget(json!("99999999999.5")),
        "invalid_spec",
        "limit_usd",
        "budget \"b\" is invalid: limit_usd: must be below 10^10 USD",
    )
    .await;
    // ...and ten after it (rounded to 0, the database said "violates check constraint budgets_positive").
    refused(
        &app,
        "POST",
        "/admin/v1/budgets",
        budget(json!("0.00000000001")),
        "invalid_spec",
        "limit_usd",
        "budget \"b\" is invalid: limit_usd: carries at most 10 decimal places",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/budgets",
        budget(json!(1e-11)),
        "invalid_spec",
        "limit_usd",
        "budget \"b\" is invalid: limit_usd: carries at most 10 decimal places",
    )
    .await;
    let mut soft = budget(json!("10"));
    soft["soft_threshold"] = json!("0.50000000001");
    refused(
        &app,
        "POST",
        "/admin/v1/budgets",
        soft,
        "invalid_spec",
        "soft_threshold",
        "budget \"b\" is invalid: soft_threshold: carries at most 10 decimal places",
    )
    .await;
    refused(&app, "POST", "/admin/v1/budgets", budget(json!("1e3")), "invalid_body", "limit_usd",
        "limit_usd: invalid value: string \"1e3\", expected an amount as a decimal string such as \"2.50\" (or a JSON number)").await;
    app.create("backends", backend("b1")).await;
    let mut price = model("m", "b1");
    price["pricing"]["output"] = json!("99999999999.5");
    refused(
        &app,
        "POST",
        "/admin/v1/models",
        price,
        "invalid_spec",
        "pricing.output",
        "model \"m\" is invalid: pricing.output: prices above 1000000 USD per million tokens are not plausible",
    )
    .await;
    // The largest values that fit are stored exactly.
    let mut largest = budget(json!("9999999999.9999999999"));
    largest["soft_threshold"] = json!("0.9999999999");
    app.create("budgets", largest).await;
    assert_eq!(app.audit_rows().await, audit + 2, "only the backend and the largest budget were written");
    assert_eq!(app.version().await, version + 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_nul_character_anywhere_in_a_body_is_a_400_naming_the_field(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    app.create("models", model("m1", "b1")).await;
    let audit = app.audit_rows().await;
    let nul = "a\u{0}b";
    let mut described = alias("a1", &["m1"]);
    described["description"] = json!(nul);
    refused(
        &app,
        "POST",
        "/admin/v1/aliases",
        described,
        "invalid_body",
        "description",
        "description: must not contain a NUL character (U+0000)",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/route-policies",
        json!({"name": "p", "action": {"type": "deny", "message": nul}}),
        "invalid_body",
        "action.message",
        "action.message: must not contain a NUL character (U+0000)",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/keys",
        json!({"name": "k", "team": nul}),
        "invalid_body",
        "team",
        "team: must not contain a NUL character (U+0000)",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/keys",
        json!({"name": "k", "tags": ["ok", nul]}),
        "invalid_body",
        "tags[1]",
        "tags[1]: must not contain a NUL character (U+0000)",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/budgets",
        json!({"name": "b", "scope": {"type": "team", "team": nul}, "period": "day", "limit_usd": "1"}),
        "invalid_body",
        "scope.team",
        "scope.team: must not contain a NUL character (U+0000)",
    )
    .await;
    // In an object key too (JSONB refuses it there as well).
    refused(
        &app,
        "POST",
        "/admin/v1/tool-schemas",
        json!({"name": "t", "schema": {"type": "object", "properties": {nul: {"type": "string"}}}}),
        "invalid_body",
        "schema.properties.a\\0b",
        "schema.properties.a\\0b: must not contain a NUL character (U+0000)",
    )
    .await;
    refused(
        &app,
        "PUT",
        "/admin/v1/backends/b1",
        json!({"name": "b1", "kind": "openai",
        "base_url": "https://api.example.com/v1", "region": nul}),
        "invalid_body",
        "region",
        "region: must not contain a NUL character (U+0000)",
    )
    .await;
    assert_eq!(app.audit_rows().await, audit, "nothing was written");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_nul_character_in_a_query_or_a_path_is_a_400_naming_the_parameter(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for (path, param) in [
        ("/admin/v1/keys?after=%00", "after"),
        ("/admin/v1/keys?team=x%00y", "team"),
        ("/admin/v1/backends?after=a%00", "after"),
        ("/admin/v1/audit?actor=%00", "actor"),
        ("/admin/v1/spend/events?key=%00", "key"),
        ("/admin/v1/spend?team=%00", "team"),
    ] {
        let reply = app.call("GET", path, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {}", reply.text);
        assert_eq!(reply.code(), "invalid_parameter", "{path}");
        assert_eq!(reply.body["error"]["param"], json!(param), "{path}");
        assert_eq!(reply.error_message(), format!("query parameter {param}: must not contain a NUL character (%00)"));
    }
    // Bytes that are not UTF-8 arrive replaced (U+FFFD), which Postgres stores: a plain empty page.
    let reply = app.call("GET", "/admin/v1/keys?after=%FF%FE", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = app.call("GET", "/admin/v1/keys/a%00b", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!((reply.code(), reply.body["error"]["param"].clone()), ("invalid_path", json!("name")));
    assert_eq!(
        reply.error_message(),
        "invalid path: invalid name \"a\\0b\": use 1 to 128 characters from A-Z a-z 0-9 - _ . :, starting with a letter or digit"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn lengths_times_and_durations_are_bounded_before_the_store(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // The team is indexed: 3200 characters that do not compress were "index row size exceeds btree maximum".
    let incompressible: String = (0..400_u32).map(|i| format!("{:08x}", i.wrapping_mul(2_654_435_761))).collect();
    refused(
        &app,
        "POST",
        "/admin/v1/keys",
        json!({"name": "k", "team": incompressible}),
        "invalid_spec",
        "team",
        "api_key \"k\" is invalid: team: must be at most 256 characters",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/keys",
        json!({"name": "k", "tags": ["ok", "x".repeat(257)]}),
        "invalid_spec",
        "tags[1]",
        "api_key \"k\" is invalid: tags[1]: must be at most 256 characters",
    )
    .await;
    // A year Postgres cannot store (chrono's lenient parser took it).
    refused(&app, "POST", "/admin/v1/keys", json!({"name": "k", "expires_at": "+200000-01-01T00:00:00Z"}),
        "invalid_body", "expires_at",
        "expires_at: \"+200000-01-01T00:00:00Z\" is not an RFC 3339 time (2026-11-01T00:00:00Z): input contains invalid characters").await;
    let mut slow = backend("b");
    slow["timeouts"] = json!({"connect_ms": 1000, "first_byte_ms": 1000, "total_ms": u64::MAX});
    refused(
        &app,
        "POST",
        "/admin/v1/backends",
        slow,
        "invalid_spec",
        "timeouts.total_ms",
        "backend \"b\" is invalid: timeouts.total_ms: must be from 1 to 86400000 milliseconds (one day)",
    )
    .await;
    let mut wordy = backend("b");
    wordy["tags"] = json!(["y".repeat(300)]);
    refused(
        &app,
        "POST",
        "/admin/v1/backends",
        wordy,
        "invalid_spec",
        "tags[0]",
        "backend \"b\" is invalid: tags[0]: must be at most 256 characters",
    )
    .await;
    refused(
        &app,
        "POST",
        "/admin/v1/route-policies",
        json!({"name": "p", "description": "d".repeat(4097), "action": {"type": "deny", "message": "no"}}),
        "invalid_spec",
        "description",
        "route_policy \"p\" is invalid: description: must be at most 4096 characters",
    )
    .await;
    let reply = app.call("GET", "/admin/v1/audit?since=%2B200000-01-01T00:00:00Z", None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    // Characters, not bytes: 256 three-byte characters fit.
    app.create("keys", json!({"name": "k", "team": "€".repeat(256)})).await;
}

/// A unit variant's unknown fields were silently dropped (`{"type": "global", "team": "x"}`); now they are refused.
#[sqlx::test(migrations = "../migrations")]
async fn unknown_fields_next_to_a_unit_variant_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut scoped = budget(json!("5"));
    scoped["scope"] = json!({"type": "global", "team": "search"});
    refused(
        &app,
        "POST",
        "/admin/v1/budgets",
        scoped,
        "invalid_body",
        "scope",
        "scope: unknown field `team`, there are no fields",
    )
    .await;
    let mut auth = backend("b");
    auth["auth"] = json!({"type": "bearer", "header": "x-api-key"});
    refused(
        &app,
        "POST",
        "/admin/v1/backends",
        auth,
        "invalid_body",
        "auth",
        "auth: unknown field `header`, there are no fields",
    )
    .await;
}

/// Should the database still refuse something, the client gets a fixed message and code: no table, constraint or
/// value from the database's text.
#[sqlx::test(migrations = "../migrations")]
async fn a_database_refusal_is_a_generic_500_without_its_text(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    sqlx::query("ALTER TABLE backends ADD CONSTRAINT secret_internal_rule CHECK (region <> 'forbidden-region')")
        .execute(&pool)
        .await
        .unwrap();
    let mut body = backend("b");
    body["region"] = json!("forbidden-region");
    let request = Request::post("/admin/v1/backends")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.code(), "database_error");
    assert_eq!(reply.body["error"]["type"], json!("api_error"));
    assert_eq!(reply.error_message(), "the request failed in the database; the control plane's log has the detail");
    for leaked in ["secret_internal_rule", "violates", "backends", "forbidden-region"] {
        assert!(!reply.text.contains(leaked), "{leaked} leaked: {}", reply.text);
    }
}
