//! A failed write leaves nothing behind: no version bump, no audit row, no partial change.

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

#[sqlx::test(migrations = "../migrations")]
async fn a_rolled_back_write_leaves_version_and_audit_untouched(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let (version, audits) = (app.version().await, app.audit_rows().await);

    // Each of these fails inside the transaction, after the version was bumped.
    let duplicate = app.call("POST", "/admin/v1/backends", Some(backend("b1"))).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    let dangling = app.call("POST", "/admin/v1/models", Some(model("m1", "missing"))).await;
    assert_eq!(dangling.status, StatusCode::BAD_REQUEST);
    let missing = app.call("PUT", "/admin/v1/backends/nope", Some(backend("nope"))).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    assert_eq!(app.version().await, version, "version unchanged");
    assert_eq!(app.audit_rows().await, audits, "no audit rows");
    let models = app.call("GET", "/admin/v1/models", None).await;
    assert_eq!(models.body["items"], json!([]), "nothing written");
}

#[sqlx::test(migrations = "../migrations")]
async fn concurrent_writers_get_distinct_consecutive_versions(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let start = app.version().await;
    let writes = (0..20).map(|i| app.call("POST", "/admin/v1/backends", Some(backend(&format!("c{i}")))));
    // Polled together, so the writes really contend for the version row.
    let replies = futures::future::join_all(writes).await;
    let mut versions: Vec<i64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            r.body["meta"]["revision"].as_i64().unwrap()
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, ((start + 1)..=(start + 20)).collect::<Vec<_>>());
}
