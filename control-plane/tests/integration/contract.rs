//! The API's contract: rotations visible in the audit log, 412 and ETag, permission before the body, `/evaluate`
//! by key name only for key readers, and every answer matching the OpenAPI document's schema for it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use control_plane::health::{CheckRecord, HealthRecord};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

fn request(method: &str, path: &str, token: &str, if_match: Option<&str>, body: Option<String>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
    if let Some(tag) = if_match {
        builder = builder.header("if-match", tag);
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    builder.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_secret_rotation_shows_in_the_audit_row_without_the_secret(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut body = backend("b1");
    body["secret"] = json!({"value": "sk-first-0123456789"});
    let created = app.create("backends", body.clone()).await;
    let first = created["meta"]["secret"]["fingerprint"].as_str().unwrap().to_owned();
    assert!(first.starts_with("sha256:") && first.len() == 23, "{first}");

    body["secret"] = json!({"value": "sk-second-9876543210"});
    let rotated = app.call("PUT", "/admin/v1/backends/b1", Some(body.clone())).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let audit = app.call("GET", "/admin/v1/audit?kind=backend&action=update", None).await;
    let row = &audit.body["items"][0];
    assert_eq!(row["before"]["meta"]["secret"]["fingerprint"], json!(first));
    let second = row["after"]["meta"]["secret"]["fingerprint"].as_str().unwrap();
    assert_ne!(second, first, "the rotation is visible: before and after differ");
    assert_ne!(row["before"], row["after"]);
    assert!(!audit.text.contains("sk-first") && !audit.text.contains("sk-second"), "{}", audit.text);

    // A replacement that leaves the secret out keeps it: same fingerprint.
    body.as_object_mut().unwrap().remove("secret");
    body["region"] = json!("eu");
    let kept = app.call("PUT", "/admin/v1/backends/b1", Some(body)).await;
    assert_eq!(kept.body["meta"]["secret"]["fingerprint"], json!(second));
}

#[sqlx::test(migrations = "../migrations")]
async fn reads_send_an_etag_and_a_stale_if_match_is_412(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let created = app.call("POST", "/admin/v1/backends", Some(backend("b1"))).await;
    let revision = created.body["meta"]["revision"].as_i64().unwrap();
    assert_eq!(created.headers["etag"], format!("\"{revision}\""));
    let read = app.call("GET", "/admin/v1/backends/b1", None).await;
    assert_eq!(read.headers["etag"], format!("\"{revision}\""));

    // Another writer moves it on.
    let mut moved = backend("b1");
    moved["region"] = json!("eu");
    let replaced = app
        .send(request("PUT", "/admin/v1/backends/b1", ADMIN, Some(&format!("\"{revision}\"")), Some(moved.to_string())))
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    let current = replaced.body["meta"]["revision"].as_i64().unwrap();
    assert_eq!(replaced.headers["etag"], format!("\"{current}\""));

    let audit = app.audit_rows().await;
    for (method, body) in [("PUT", Some(backend("b1").to_string())), ("DELETE", None)] {
        let stale =
            app.send(request(method, "/admin/v1/backends/b1", ADMIN, Some(&format!("\"{revision}\"")), body)).await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{method}: {}", stale.text);
        assert_eq!(stale.code(), "precondition_failed");
        assert_eq!(
            stale.error_message(),
            format!("backend \"b1\" is at revision {current}, not {revision}: reload it and retry")
        );
    }
    assert_eq!(app.audit_rows().await, audit, "nothing changed");
    let malformed = app.send(request("DELETE", "/admin/v1/backends/b1", ADMIN, Some("W/\"3\""), None)).await;
    assert_eq!((malformed.status, malformed.code()), (StatusCode::BAD_REQUEST, "invalid_body"));
    assert_eq!(malformed.body["error"]["param"], json!("If-Match"));
    // `*` matches whatever revision exists.
    let any = app.send(request("DELETE", "/admin/v1/backends/b1", ADMIN, Some("*"), None)).await;
    assert_eq!(any.status, StatusCode::NO_CONTENT, "{}", any.text);

    // Budgets (their own read) and keys too.
    app.create("budgets", json!({"name": "bud", "scope": {"type": "global"}, "period": "day", "limit_usd": "5"})).await;
    let budget = app.call("GET", "/admin/v1/budgets/bud", None).await;
    assert_eq!(budget.headers["etag"], format!("\"{}\"", budget.body["meta"]["revision"]));
    let key = app.call("POST", "/admin/v1/keys", Some(json!({"name": "k1"}))).await;
    let key_revision = key.body["revision"].as_i64().unwrap();
    assert_eq!(app.call("GET", "/admin/v1/keys/k1", None).await.headers["etag"], format!("\"{key_revision}\""));
    let updated = app
        .send(request(
            "PUT",
            "/admin/v1/keys/k1",
            ADMIN,
            Some(&key_revision.to_string()),
            Some(json!({"team": "a"}).to_string()),
        ))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    let stale = app
        .send(request(
            "PUT",
            "/admin/v1/keys/k1",
            ADMIN,
            Some(&key_revision.to_string()),
            Some(json!({"team": "b"}).to_string()),
        ))
        .await;
    assert_eq!((stale.status, stale.code()), (StatusCode::PRECONDITION_FAILED, "precondition_failed"));
    let stale = app.send(request("DELETE", "/admin/v1/keys/k1", ADMIN, Some(&key_revision.to_string()), None)).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
}

#[sqlx::test(migrations = "../migrations")]
async fn permission_is_checked_before_the_body_is_read(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let auditor = app.token("auditor").await;
    let author = app.token("author").await;
    for (token, method, path) in [
        (&auditor, "POST", "/admin/v1/backends"),
        (&auditor, "PUT", "/admin/v1/models/m1"),
        (&auditor, "POST", "/admin/v1/keys"),
        (&author, "PUT", "/admin/v1/keys/k1"),
        (&author, "POST", "/admin/v1/principals"),
    ] {
        for body in ["{\"name\": ", "[1, 2]", "{\"colour\": \"red\"}"] {
            let reply = app.send(request(method, path, token, None, Some(body.to_owned()))).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path} {body}: {}", reply.text);
            assert_eq!(reply.code(), "forbidden");
        }
    }
    // And before the path's name or If-Match is looked at.
    let reply = app.send(request("DELETE", "/admin/v1/backends/bad%20name", &auditor, Some("nonsense"), None)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    // Too large or of the wrong type: still 403 first.
    let reply = app
        .send(
            Request::post("/admin/v1/backends")
                .header("authorization", format!("Bearer {auditor}"))
                .header("content-type", "text/plain")
                .body(Body::from("x".repeat(128 * 1024)))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
}

#[sqlx::test(migrations = "../migrations")]
async fn evaluate_by_key_name_needs_the_right_to_read_keys(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.apply_seed().await;
    app.call("POST", "/admin/v1/keys", Some(json!({"name": "secret-team-key", "team": "covert", "tags": ["x"]}))).await;
    let author = app.token("author").await;
    let auditor = app.token("auditor").await;
    let by_name = json!({"request": {"model": "gpt-4o"}, "key_name": "secret-team-key"});
    let reply = app.call_as(&author, "POST", "/admin/v1/evaluate", Some(by_name.clone())).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"), "{}", reply.text);
    assert_eq!(
        reply.error_message(),
        "role author may not evaluate with `key_name`: that reads a stored API key, which needs permission to read \
         API keys; send the key's facts in `key` instead"
    );
    assert!(!reply.text.contains("covert"));
    // Nor learn whether a name exists: the same answer for a key that does not.
    let ghost = app
        .call_as(
            &author,
            "POST",
            "/admin/v1/evaluate",
            Some(json!({"request": {"model": "gpt-4o"}, "key_name": "ghost"})),
        )
        .await;
    assert_eq!(ghost.text, reply.text);
    // Facts given directly are fine for an author; key readers may name the key.
    let facts = json!({"request": {"model": "gpt-4o"}, "key": {"id": "", "name": "k", "team": "covert", "tags": []}});
    assert_eq!(app.call_as(&author, "POST", "/admin/v1/evaluate", Some(facts)).await.status, StatusCode::OK);
    for token in [&auditor, &ADMIN.to_owned()] {
        let reply = app.call_as(token, "POST", "/admin/v1/evaluate", Some(by_name.clone())).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["key"]["team"], json!("covert"));
    }
}

/// The document as a JSON Schema: `#/components/schemas/...` references resolve inside it.
fn validator(document: &Value, schema: Value) -> jsonschema::Validator {
    let mut root = schema;
    root["components"] = document["components"].clone();
    jsonschema::validator_for(&root).unwrap()
}

/// The schema the document gives for `method path`'s answer with `status`.
fn response_schema(document: &Value, path: &str, method: &str, status: u16) -> Value {
    let operation = &document["paths"][path][method];
    operation["responses"][status.to_string()]["content"]["application/json"]["schema"].clone()
}

#[sqlx::test(migrations = "../migrations")]
async fn every_answer_matches_the_documented_schema(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let document = app.send(Request::get("/admin/v1/openapi.json").body(Body::empty()).unwrap()).await.body;
    app.apply_seed().await;
    let mut secret = backend("sealed");
    secret["secret"] = json!({"value": "sk-x"});
    app.create("backends", secret).await;
    app.create("tool-schemas", json!({"name": "t1", "description": "", "schema": true})).await;
    app.create("tool-policies", json!({"name": "tp", "allow": ["*"]})).await;
    app.create("keys", json!({"name": "k1", "team": "t", "tags": ["a"], "expires_at": "2030-01-01T00:00:00Z"})).await;
    app.create(
        "budgets",
        json!({"name": "bud", "scope": {"type": "key", "key": "k1"}, "period": "week",
        "limit_usd": "12.5", "soft_threshold": "0.5"}),
    )
    .await;
    // A data plane's health report, so the fleet view and the backend's health have entries to check.
    app.store.node_connected("dp-1", "test", "1.0.0", None).await.unwrap();
    let since = chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap();
    let reported = |model: &str, state: &str, check: Option<CheckRecord>| HealthRecord {
        backend: "sealed".into(),
        model: model.into(),
        state: state.into(),
        since,
        reason: (state != "closed").then(|| "5 consecutive failures".into()),
        last_check: check,
        latency_ms: (state == "closed").then_some(12.5),
    };
    let failed = CheckRecord { at: since, ok: false, error: Some("HTTP 503".into()) };
    app.store
        .replace_node_health("dp-1", &[reported("", "closed", None), reported("m", "open", Some(failed))])
        .await
        .unwrap();
    let mut checked = 0;
    let mut check = |method: &str, path: &str, template: &str, status: u16, reply: &Reply| {
        assert_eq!(reply.status.as_u16(), status, "{method} {path}: {}", reply.text);
        let schema = response_schema(&document, template, method, status);
        assert!(!schema.is_null(), "{method} {template} documents no {status} answer");
        let validator = validator(&document, schema);
        let errors: Vec<String> =
            validator.iter_errors(&reply.body).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{method} {path}: {errors:?}\n{}", reply.text);
        checked += 1;
    };
    for (collection, name) in [
        ("backends", "sealed"),
        ("models", "gpt-4o-openai"),
        ("aliases", "gpt-4o"),
        ("route-policies", "data-residency"),
        ("tool-schemas", "t1"),
        ("tool-policies", "tp"),
        ("budgets", "bud"),
        ("keys", "k1"),
    ] {
        let list = format!("/admin/v1/{collection}");
        check("get", &list, &list, 200, &app.call("GET", &list, None).await);
        let item = format!("{list}/{name}");
        let template = format!("{list}/{{name}}");
        check("get", &item, &template, 200, &app.call("GET", &item, None).await);
        let mut read = app.call("GET", &item, None).await.body;
        if collection == "keys" {
            read = json!({"team": "t2"});
        }
        // A configuration read written back (meta and status included) is a valid replacement.
        check("put", &item, &template, 200, &app.call("PUT", &item, Some(read)).await);
    }
    for path in [
        "/admin/v1/principals",
        "/admin/v1/audit",
        "/admin/v1/audit/verify",
        "/admin/v1/fleet",
        "/admin/v1/spend",
        "/admin/v1/spend/events",
        "/admin/v1/principals/bootstrap",
    ] {
        let template = path.replace("/bootstrap", "/{name}");
        check("get", path, &template, 200, &app.call("GET", path, None).await);
    }
    let health = app.call("GET", "/admin/v1/backends/sealed/health", None).await;
    assert_eq!(health.body["nodes"].as_array().map(Vec::len), Some(2), "{}", health.text);
    check("get", "/admin/v1/backends/sealed/health", "/admin/v1/backends/{name}/health", 200, &health);
    let evaluated =
        app.call("POST", "/admin/v1/evaluate", Some(json!({"request": {"model": "gpt-4o"}, "key_name": "k1"}))).await;
    check("post", "/admin/v1/evaluate", "/admin/v1/evaluate", 200, &evaluated);
    let created = app.call("POST", "/admin/v1/keys", Some(json!({"name": "k2"}))).await;
    check("post", "/admin/v1/keys", "/admin/v1/keys", 201, &created);
    let principal = app.call("POST", "/admin/v1/principals", Some(json!({"name": "p2", "role": "auditor"}))).await;
    check("post", "/admin/v1/principals", "/admin/v1/principals", 201, &principal);
    let revoked = app.call("POST", "/admin/v1/keys/k2/revoke", None).await;
    check("post", "/admin/v1/keys/k2/revoke", "/admin/v1/keys/{name}/revoke", 200, &revoked);
    assert_eq!(checked, 8 * 3 + 7 + 5);

    // Errors have the documented shape too.
    let error = app.call("GET", "/admin/v1/backends/ghost", None).await;
    let schema = document["paths"]["/admin/v1/backends/{name}"]["get"]["responses"]["default"]["content"]["application/json"]["schema"].clone();
    assert!(validator(&document, schema).is_valid(&error.body), "{}", error.text);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_document_declares_every_path_parameter_and_constraint(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let document = app.send(Request::get("/admin/v1/openapi.json").body(Body::empty()).unwrap()).await.body;
    assert_eq!(document["openapi"], json!("3.1.0"));
    let paths = document["paths"].as_object().unwrap();
    let mut named = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            for parameter in &parameters {
                assert!(parameter["schema"].is_object(), "{method} {path}: {parameter}");
            }
            if path.contains("{name}") {
                let name = parameters.iter().find(|p| p["name"] == json!("name") && p["in"] == json!("path"));
                let name = name.unwrap_or_else(|| panic!("{method} {path} does not declare {{name}}"));
                assert_eq!(name["schema"]["pattern"], json!("^[A-Za-z0-9][A-Za-z0-9._:-]*$"), "{method} {path}");
                assert_eq!(name["schema"]["maxLength"], json!(128));
                named += 1;
            }
        }
    }
    assert!(named >= 27, "{named} operations on {{name}}");
    assert!(paths.contains_key("/admin/v1/fleet") && paths.contains_key("/admin/v1/audit/verify"));
    assert_eq!(
        document["paths"]["/admin/v1/principals"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["type"],
        json!("array")
    );
    let list = &document["paths"]["/admin/v1/backends"]["get"]["parameters"];
    let limit = list.as_array().unwrap().iter().find(|p| p["name"] == json!("limit")).unwrap();
    assert_eq!((limit["schema"]["minimum"].clone(), limit["schema"]["maximum"].clone()), (json!(1), json!(1000)));
    let schemas = &document["components"]["schemas"];
    assert_eq!(schemas["BudgetSpec"]["properties"]["name"]["pattern"], json!("^[A-Za-z0-9][A-Za-z0-9._:-]*$"));
    assert_eq!(schemas["Timeouts"]["properties"]["total_ms"]["maximum"], json!(86_400_000));
    assert_eq!(schemas["KeySpec"]["properties"]["team"]["maxLength"], json!(256));
    assert_eq!(schemas["Candidate"]["properties"]["weight"]["maximum"], json!(u32::MAX));
    assert!(schemas["Backend"]["properties"]["meta"].is_object(), "reads carry meta");
    assert!(schemas["Backend"]["properties"].get("secret").is_none(), "reads never carry a secret");
    assert!(schemas["BackendSpec"]["properties"]["meta"]["readOnly"] == json!(true), "a read can be written back");
}
