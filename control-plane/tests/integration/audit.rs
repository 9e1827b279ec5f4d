//! The audit log's filters and pagination.

use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

#[sqlx::test(migrations = "../migrations")]
async fn audit_filters_and_pages(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let author = app.token("author").await;
    for i in 0..3 {
        app.create("backends", backend(&format!("b{i}"))).await;
    }
    let reply = app.call_as(&author, "POST", "/admin/v1/backends", Some(backend("by-author"))).await;
    let author_name = reply.body["meta"]["created_by"].as_str().unwrap().to_owned();

    let by_author = app.call("GET", &format!("/admin/v1/audit?actor={author_name}"), None).await;
    let items = by_author.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["resource_name"], json!("by-author"));
    assert!(items[0]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "request id recorded");

    let page = app.call("GET", "/admin/v1/audit?kind=backend&limit=2", None).await;
    let first: Vec<_> = page.body["items"].as_array().unwrap().iter().map(|i| i["resource_name"].clone()).collect();
    assert_eq!(first, [json!("by-author"), json!("b2")], "newest first");
    let before = page.body["next_before_id"].as_i64().unwrap();
    let next = app.call("GET", &format!("/admin/v1/audit?kind=backend&limit=2&before_id={before}"), None).await;
    let second: Vec<_> = next.body["items"].as_array().unwrap().iter().map(|i| i["resource_name"].clone()).collect();
    assert_eq!(second, [json!("b1"), json!("b0")]);

    let future = app.call("GET", "/admin/v1/audit?since=2999-01-01T00:00:00Z", None).await;
    assert_eq!(future.body["items"], json!([]));
    let bad = app.call("GET", "/admin/v1/audit?since=yesterday", None).await;
    assert_eq!(bad.status, axum::http::StatusCode::BAD_REQUEST);
    assert!(bad.error_message().starts_with("invalid query string: "), "{}", bad.text);
}
