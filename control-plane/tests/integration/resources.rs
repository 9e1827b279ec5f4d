//! Create / read / update / delete / list for every configuration resource, each write bumping the config
//! version once and appending exactly one audit row with the before and after.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

/// Prerequisites every kind's examples can reference.
async fn prerequisites(app: &TestApp) {
    app.create("backends", backend("b1")).await;
    app.create("models", model("m1", "b1")).await;
    app.create("aliases", alias("a1", &["m1"])).await;
    app.create("keys", json!({"name": "k1"})).await;
}

/// The full lifecycle of one resource: `create` then `update` must differ in some field.
async fn check_crud(app: &TestApp, collection: &str, kind: &str, create: Value, update: Value) {
    let name = create["name"].as_str().unwrap().to_owned();
    let path = format!("/admin/v1/{collection}/{name}");

    let (version, audits) = (app.version().await, app.audit_rows().await);
    let created = app.create(collection, create.clone()).await;
    assert_eq!(app.version().await, version + 1, "{kind}: create bumps the version once");
    assert_eq!(app.audit_rows().await, audits + 1, "{kind}: create writes one audit row");
    assert_eq!(created["meta"]["revision"], json!(version + 1));
    assert_eq!(created["meta"]["kind"], json!(kind));
    assert_eq!(created["meta"]["created_by"], json!("bootstrap"));

    let mut read = app.call("GET", &path, None).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    // A budget's read adds its current status (period and spend); everything else is what create returned.
    let status = read.body.as_object_mut().unwrap().remove("status");
    assert_eq!(status.is_some(), kind == "budget", "{kind}: status only on budgets");
    assert_eq!(read.body, created, "{kind}: read returns what create returned");

    let listed = app.call("GET", &format!("/admin/v1/{collection}"), None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(listed.body["items"].as_array().unwrap().iter().any(|i| i["name"] == json!(name)), "{kind}: listed");

    let updated = app.call("PUT", &path, Some(update.clone())).await;
    assert_eq!(updated.status, StatusCode::OK, "{kind}: {}", updated.text);
    assert_ne!(updated.body, created);
    assert_eq!(updated.body["meta"]["revision"], json!(version + 2));
    assert_eq!(app.version().await, version + 2);

    let audit = app.call("GET", &format!("/admin/v1/audit?kind={kind}&name={name}"), None).await;
    let entries = audit.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{kind}: {}", audit.text);
    assert_eq!(entries[0]["action"], json!("update"));
    assert_eq!(entries[0]["actor"], json!("bootstrap"));
    assert_eq!(entries[0]["config_version"], json!(version + 2));
    assert_eq!(entries[0]["before"], created, "{kind}: audit before is the previous view");
    assert_eq!(entries[0]["after"], updated.body, "{kind}: audit after is the new view");
    assert_eq!(entries[1]["action"], json!("create"));
    assert_eq!(entries[1]["before"], Value::Null);

    let deleted = app.call("DELETE", &path, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{kind}: {}", deleted.text);
    assert_eq!(app.version().await, version + 3);
    let gone = app.call("GET", &path, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.error_message(), format!("{kind} \"{name}\" does not exist"));
    let audit = app.call("GET", &format!("/admin/v1/audit?kind={kind}&name={name}&action=delete"), None).await;
    assert_eq!(audit.body["items"][0]["before"], updated.body);
    assert_eq!(audit.body["items"][0]["after"], Value::Null);
}

#[sqlx::test(migrations = "../migrations")]
async fn every_resource_has_crud_with_version_and_audit(pool: PgPool) {
    let app = TestApp::new(pool).await;
    prerequisites(&app).await;
    check_crud(
        &app,
        "backends",
        "backend",
        backend("crud-backend"),
        json!({"name": "crud-backend", "kind": "openai", "base_url": "https://api.example.com/v2", "region": "eu",
               "timeouts": {"connect_ms": 1000, "first_byte_ms": 2000, "total_ms": 3000}}),
    )
    .await;
    check_crud(&app, "models", "model", model("crud-model", "b1"), {
        let mut m = model("crud-model", "b1");
        m["pricing"]["output"] = json!("3.125");
        m
    })
    .await;
    check_crud(
        &app,
        "aliases",
        "alias",
        alias("crud-alias", &["m1"]),
        json!({"name": "crud-alias", "strategy": "weighted", "candidates": [{"model": "m1", "weight": 3}]}),
    )
    .await;
    check_crud(
        &app,
        "route-policies",
        "route_policy",
        json!({"name": "crud-policy", "priority": 10, "when": "request.model == 'x'",
               "action": {"type": "route", "alias": "a1"}}),
        json!({"name": "crud-policy", "priority": 20, "when": "request.stream",
               "action": {"type": "deny", "message": "no streaming"}}),
    )
    .await;
    check_crud(
        &app,
        "tool-schemas",
        "tool_schema",
        json!({"name": "get_weather", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}),
        json!({"name": "get_weather", "schema": {"type": "object", "required": ["city"],
               "properties": {"city": {"type": "string"}}, "additionalProperties": false}}),
    )
    .await;
    check_crud(
        &app,
        "tool-policies",
        "tool_policy",
        json!({"name": "crud-tools", "when": "key.team == 'support'", "allow": ["get_weather"]}),
        json!({"name": "crud-tools", "when": "key.team == 'support'", "allow": ["*"], "deny": ["delete_account"],
               "on_invalid": "retry", "max_retries": 2}),
    )
    .await;
    check_crud(
        &app,
        "budgets",
        "budget",
        json!({"name": "crud-budget", "scope": {"type": "team", "team": "search"}, "period": "month",
               "limit_usd": "100.00"}),
        json!({"name": "crud-budget", "scope": {"type": "key", "key": "k1"}, "period": "day", "limit_usd": "5.5",
               "action": "alert", "soft_threshold": "0.8"}),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn money_is_exact_and_stored_as_numeric(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    app.create("backends", backend("b1")).await;
    let mut m = model("precise", "b1");
    m["pricing"] = json!({"input": "0.0000001", "output": 0.15, "cached_input": "1.25"});
    let created = app.create("models", m).await;
    assert_eq!(created["pricing"], json!({"input": "0.0000001", "output": "0.15", "cached_input": "1.25"}));
    let (input, output): (rust_decimal::Decimal, rust_decimal::Decimal) =
        sqlx::query_as("SELECT price_input, price_output FROM models WHERE name = 'precise'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(input.to_string(), "0.0000001000");
    assert_eq!(output.to_string(), "0.1500000000");
}

#[sqlx::test(migrations = "../migrations")]
async fn lists_page_by_name(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for i in 0..5 {
        app.create("backends", backend(&format!("b{i}"))).await;
    }
    let first = app.call("GET", "/admin/v1/backends?limit=2", None).await;
    let names = |r: &Reply| r.body["items"].as_array().unwrap().iter().map(|i| i["name"].clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), [json!("b0"), json!("b1")]);
    assert_eq!(first.body["next_after"], json!("b1"));
    let second = app.call("GET", "/admin/v1/backends?limit=2&after=b1", None).await;
    assert_eq!(names(&second), [json!("b2"), json!("b3")]);
    let last = app.call("GET", "/admin/v1/backends?limit=2&after=b3", None).await;
    assert_eq!(names(&last), [json!("b4")]);
    assert_eq!(last.body["next_after"], Value::Null);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_read_can_be_written_back_and_if_match_guards_updates(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let created = app.create("backends", backend("b1")).await;
    let revision = created["meta"]["revision"].as_i64().unwrap();
    // A GET's body, `meta` included, is a valid PUT body.
    let mut edited = created.clone();
    edited["region"] = json!("eu");
    let request = axum::http::Request::builder()
        .method("PUT")
        .uri("/admin/v1/backends/b1")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("if-match", format!("\"{revision}\""))
        .body(axum::body::Body::from(edited.to_string()))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    // The same If-Match again is stale now.
    let request = axum::http::Request::builder()
        .method("PUT")
        .uri("/admin/v1/backends/b1")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("if-match", revision.to_string())
        .body(axum::body::Body::from(edited.to_string()))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED, "a stale If-Match is 412, not 409");
    assert_eq!(reply.code(), "precondition_failed");
    assert_eq!(
        reply.error_message(),
        format!("backend \"b1\" is at revision {}, not {revision}: reload it and retry", revision + 1)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn names_cannot_change_on_update(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let reply = app.call("PUT", "/admin/v1/backends/b1", Some(backend("b2"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_message(),
        "the body names \"b2\" but the URL names \"b1\"; names cannot change (create a new backend instead)"
    );
}
