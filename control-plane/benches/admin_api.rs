//! Admin API throughput and latency against a store holding 10k API keys and 1k route policies.
//!
//! `scripts/bench.sh admin_api` (or `DATABASE_URL=... cargo bench -p control-plane --bench admin_api`). Each figure
//! is reported next to a baseline measured in the same run on the same database: the bare SQL the operation
//! boils down to, so the ratio is what the API (validation, version bump, audit, JSON) adds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use control_plane::api::{AppState, app};
use control_plane::store::Store;
use control_plane::store::resources::WriteContext;
use http_body_util::BodyExt;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

const KEYS: usize = 10_000;
const POLICIES: usize = 1_000;
const WRITES: usize = 400;
const READS: usize = 300;
const TOKEN: &str = "bench-admin-token";

#[tokio::main]
async fn main() {
    // Only `cargo bench` (which passes --bench) runs it; test runners listing or running bench targets get nothing.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench.sh sets one)");
    let database = format!("gateway_bench_{}", std::process::id());
    let admin_pool = PgPoolOptions::new().max_connections(1).connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin_pool).await.unwrap();
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{database}"),
        None => panic!("DATABASE_URL has no database path"),
    };
    let pool = PgPoolOptions::new().max_connections(16).connect(&url).await.unwrap();
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    store.ensure_bootstrap_admin(TOKEN).await.unwrap();
    let router = app(AppState::new(store.clone(), WriteContext::default(), 1 << 20));

    seed(&router, &pool).await;
    println!("store: {KEYS} API keys, {POLICIES} route policies");

    // Writes: create a route policy through the API (validate, CEL compile, lock, integrity, insert, audit, commit)
    // versus a bare INSERT of the same row in its own transaction.
    let started = Instant::now();
    for i in 0..WRITES {
        let body = json!({"name": format!("bench-write-{i}"), "priority": i, "when": "request.metadata.team == 'x'",
                          "action": {"type": "route", "alias": "bench-alias"}});
        let status = call(&router, "POST", "/admin/v1/route-policies", Some(body)).await.0;
        assert_eq!(status, 201);
    }
    let api_writes = WRITES as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..WRITES {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO route_policies (id, name, spec, revision, created_by, updated_by) VALUES ($1, $2, $3, 0, 'b', 'b')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(format!("bench-raw-{i}"))
        .bind(json!({"name": format!("bench-raw-{i}"), "priority": i, "when": "true", "action": {"type": "deny", "message": "x"}}))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let raw_writes = WRITES as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DELETE FROM route_policies WHERE name LIKE 'bench-raw-%'").execute(&pool).await.unwrap();
    println!(
        "admin writes (sequential, each with version bump + audit row): {api_writes:.0} writes/s; bare INSERT+COMMIT baseline {raw_writes:.0}/s; ratio {:.2}",
        raw_writes / api_writes
    );

    // Reads: a page of 100 keys from the middle of 10k, and the first 1000 policies.
    let key_page = latencies(READS, || call(&router, "GET", "/admin/v1/keys?limit=100&after=key-05000", None)).await;
    let key_sql = latencies(READS, || async {
        sqlx::query("SELECT * FROM api_keys WHERE name > 'key-05000' ORDER BY name LIMIT 100")
            .fetch_all(&pool)
            .await
            .unwrap();
        (200, 0)
    })
    .await;
    report("GET /admin/v1/keys?limit=100 (of 10k)", &key_page, &key_sql);
    let policy_page = latencies(READS / 3, || call(&router, "GET", "/admin/v1/route-policies?limit=1000", None)).await;
    let policy_sql = latencies(READS / 3, || async {
        sqlx::query("SELECT * FROM route_policies ORDER BY name LIMIT 1000").fetch_all(&pool).await.unwrap();
        (200, 0)
    })
    .await;
    report("GET /admin/v1/route-policies?limit=1000 (of 1.4k)", &policy_page, &policy_sql);

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")))
        .execute(&admin_pool)
        .await
        .unwrap();
}

/// 10k keys and 1k policies through SQL (fast), then one write through the API so every cache starts cold.
async fn seed(router: &axum::Router, pool: &sqlx::PgPool) {
    call(
        router,
        "POST",
        "/admin/v1/backends",
        Some(json!({"name": "bench-backend", "kind": "openai", "base_url": "https://api.example.com"})),
    )
    .await;
    call(
        router,
        "POST",
        "/admin/v1/models",
        Some(json!({"name": "bench-model", "backend": "bench-backend", "upstream_model": "m",
        "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}})),
    )
    .await;
    call(
        router,
        "POST",
        "/admin/v1/aliases",
        Some(json!({"name": "bench-alias", "candidates": [{"model": "bench-model"}]})),
    )
    .await;
    sqlx::query(
        "INSERT INTO api_keys (id, name, prefix, secret_sha256, team, tags, revision, created_by, updated_by)
         SELECT gen_random_uuid(), 'key-' || lpad(i::TEXT, 5, '0'), 'gwk_' || i, md5(i::TEXT) || md5(i::TEXT || 'x'),
                'team-' || (i % 50), ARRAY['t' || (i % 7)], 1, 'seed', 'seed'
         FROM generate_series(1, $1) AS i",
    )
    .bind(KEYS as i32)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO route_policies (id, name, spec, revision, created_by, updated_by)
         SELECT gen_random_uuid(), 'policy-' || lpad(i::TEXT, 4, '0'),
                jsonb_build_object('name', 'policy-' || lpad(i::TEXT, 4, '0'), 'priority', i,
                                   'when', 'request.metadata.tenant == ''t' || i || '''',
                                   'action', jsonb_build_object('type', 'route', 'alias', 'bench-alias')),
                1, 'seed', 'seed'
         FROM generate_series(1, $1) AS i",
    )
    .bind(POLICIES as i32)
    .execute(pool)
    .await
    .unwrap();
    // Seeding bypassed the version bump; bump so no cache built before it is reused.
    sqlx::query("UPDATE config_version SET version = version + 1").execute(pool).await.unwrap();
}

async fn call(router: &axum::Router, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, usize) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(status < 300, "{method} {path}: {status} {}", String::from_utf8_lossy(&bytes));
    (status, bytes.len())
}

async fn latencies<F, Fut>(n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, usize)>,
{
    for _ in 0..n / 10 {
        f().await; // warm-up
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    samples
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, api: &[Duration], sql: &[Duration]) {
    let (p50, p99) = (percentile(api, 0.5), percentile(api, 0.99));
    let (b50, b99) = (percentile(sql, 0.5), percentile(sql, 0.99));
    println!(
        "{name}: p50 {:.2} ms, p99 {:.2} ms; bare SQL baseline p50 {:.2} ms, p99 {:.2} ms; p50 ratio {:.2}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        b50.as_secs_f64() * 1e3,
        b99.as_secs_f64() * 1e3,
        p50.as_secs_f64() / b50.as_secs_f64()
    );
}
