//! The audit log's integrity in the database: append-only for everyone, hash-chained, and verified by
//! `GET /admin/v1/audit/verify`, which names the first broken link.

use axum::http::StatusCode;
use control_plane::store::MIGRATOR;
use serde_json::json;
use sqlx::PgPool;

use crate::common::*;

async fn verify(app: &TestApp) -> serde_json::Value {
    let reply = app.call("GET", "/admin/v1/audit/verify", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

/// Run `sql` as a superuser who switched off ordinary triggers for the session: what an attacker with the
/// database's keys can do, and the only way past the append-only trigger.
async fn tamper(pool: &PgPool, sql: &'static str) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await.unwrap();
    sqlx::query(sql).execute(&mut *conn).await.unwrap();
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn audit_rows_cannot_be_changed_or_removed(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    app.create("backends", backend("b1")).await;
    for sql in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log WHERE resource_kind = 'backend'",
        "TRUNCATE audit_log",
    ] {
        let error = sqlx::query(sql).execute(&pool).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("audit_log is append-only"), "{sql}: {text}");
    }
    assert_eq!(app.audit_rows().await, 2);
    assert_eq!(verify(&app).await["intact"], json!(true));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tampered_row_is_reported_by_the_verify_endpoint(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    for i in 0..4 {
        app.create("backends", backend(&format!("b{i}"))).await;
    }
    let clean = verify(&app).await;
    assert_eq!(clean["intact"], json!(true), "{clean}");
    assert_eq!(clean["rows_checked"], json!(5));
    assert_eq!(clean["first_broken"], json!(null));
    let newest = app.call("GET", "/admin/v1/audit?limit=1", None).await.body["items"][0].clone();
    assert_eq!((clean["last_id"].clone(), clean["head_hash"].clone()), (newest["id"].clone(), newest["hash"].clone()));

    // Someone edits the third row's `after` (the backend's URL) behind the API's back.
    let third: i64 =
        sqlx::query_scalar("SELECT id FROM audit_log ORDER BY id OFFSET 2 LIMIT 1").fetch_one(&pool).await.unwrap();
    tamper(&pool, "UPDATE audit_log SET after = jsonb_set(after, '{base_url}', '\"https://evil.example\"') WHERE id = (SELECT id FROM audit_log ORDER BY id OFFSET 2 LIMIT 1)").await;
    let report = verify(&app).await;
    assert_eq!(report["intact"], json!(false), "{report}");
    assert_eq!(report["first_broken"]["id"], json!(third), "{report}");
    assert_eq!(report["first_broken"]["field"], json!("row_hash"));
    assert_eq!(
        report["first_broken"]["reason"],
        json!("the row does not match its hash: it was changed after it was written")
    );
    assert_ne!(report["first_broken"]["stored"], report["first_broken"]["expected"]);
    // An auditor sees the same report.
    let auditor = app.token("auditor").await;
    let by_auditor = app.call_as(&auditor, "GET", "/admin/v1/audit/verify", None).await;
    assert_eq!(by_auditor.body["first_broken"]["id"], json!(third), "{}", by_auditor.text);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_removed_row_breaks_the_next_link(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    for i in 0..3 {
        app.create("backends", backend(&format!("b{i}"))).await;
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM audit_log ORDER BY id").fetch_all(&pool).await.unwrap();
    tamper(&pool, "DELETE FROM audit_log WHERE id = (SELECT id FROM audit_log ORDER BY id OFFSET 1 LIMIT 1)").await;
    let report = verify(&app).await;
    assert_eq!(report["intact"], json!(false), "{report}");
    assert_eq!(report["first_broken"]["id"], json!(ids[2]), "the row after the removed one: {report}");
    assert_eq!(report["first_broken"]["field"], json!("prev_hash"));
    assert_eq!(report["rows_checked"], json!(ids.len() - 1));
}

/// Writers racing each other still form one chain, in id order.
#[sqlx::test(migrations = "../migrations")]
async fn concurrent_writes_keep_one_chain(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let writes = (0..12).map(|i| app.call("POST", "/admin/v1/backends", Some(backend(&format!("c{i}")))));
    for reply in futures::future::join_all(writes).await {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
    let report = verify(&app).await;
    assert_eq!((report["intact"].clone(), report["rows_checked"].clone()), (json!(true), json!(13)), "{report}");
}

/// The migration chains the rows written before it, so the chain covers the whole log.
#[sqlx::test(migrations = false)]
async fn rows_written_before_the_migration_are_chained(pool: PgPool) {
    const CHAIN: i64 = 20261202000001;
    for migration in MIGRATOR.iter().filter(|m| m.version < CHAIN) {
        sqlx::raw_sql(migration.sql.clone()).execute(&pool).await.unwrap();
    }
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, resource_kind, resource_name, config_version, after)
             VALUES ('old', 'create', 'backend', $1, $2, '{\"region\": \"eu\", \"n\": 1.50}')",
        )
        .bind(format!("old{i}"))
        .bind(i + 1)
        .execute(&pool)
        .await
        .unwrap();
    }
    for migration in MIGRATOR.iter().filter(|m| m.version >= CHAIN) {
        sqlx::raw_sql(migration.sql.clone()).execute(&pool).await.unwrap();
    }
    let store = control_plane::store::Store::new(pool.clone());
    let before = store.verify_audit_log().await.unwrap();
    assert!(before.intact && before.rows_checked == 3, "{before:?}");
    let app = TestApp::with(pool.clone(), Default::default(), 64 * 1024).await;
    app.create("backends", backend("new")).await;
    let after = verify(&app).await;
    assert_eq!((after["intact"].clone(), after["rows_checked"].clone()), (json!(true), json!(5)), "{after}");
    tamper(&pool, "UPDATE audit_log SET resource_name = 'renamed' WHERE resource_name = 'old0'").await;
    assert_eq!(verify(&app).await["first_broken"]["id"], json!(1));
}
