//! Snapshot distribution, in one process over real loopback gRPC and a real Postgres:
//! 1. a large snapshot (10k keys, 1k route policies, 1k tool schemas): build (DB read + encode + hash), compile on
//!    the data plane, and write-to-swap end to end; baseline: the same path for a tiny configuration.
//! 2. write-to-applied and write-to-all-ACKed latency with 50 subscribed data planes; baseline: one subscriber.
//!
//! `scripts/bench.sh snapshots` (or `DATABASE_URL=... cargo bench -p gateway-e2e --bench snapshots`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::distribution::publisher;
use control_plane::settings::{DatabaseArgs, ServeArgs};
use control_plane::store::Store;
use control_plane::store::resources::WriteContext;
use data_plane::state::Current;
use data_plane::{ControlPlaneConnection, Subscription};
use policy_engine::config::BackendSpec;
use prost::Message;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-node-token";

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench.sh sets one)");
    let admin = PgPoolOptions::new().max_connections(1).connect(&base).await.unwrap();

    // 1. Large versus tiny snapshot.
    let tiny = Fixture::new(&admin, &base, "tiny").await;
    let large = Fixture::new(&admin, &base, "large").await;
    large.seed_large().await;
    for fixture in [&tiny, &large] {
        let (build, bytes) = build_time(&fixture.store).await;
        let published = publisher::build_if_changed(&fixture.store, None, None).await.unwrap().unwrap();
        let started = Instant::now();
        let compiled = data_plane::snapshot::compile(&published.snapshot).unwrap();
        let compile = started.elapsed();
        drop(compiled);
        let (cp, _) = fixture.start_control_plane().await;
        let (current, _) = subscribe(&cp, 1, "single").await;
        let end_to_end = write_to_applied(fixture, &current, 5).await;
        println!(
            "{:>5} snapshot ({} keys, {} policies, {} tool schemas; {:.1} MiB): build {:.0} ms, compile {:.0} ms, write-to-swap median {:.0} ms",
            fixture.name,
            fixture.count("api_keys").await,
            fixture.count("route_policies").await,
            fixture.count("tool_schemas").await,
            bytes as f64 / (1 << 20) as f64,
            ms(build),
            ms(compile),
            ms(percentile(&end_to_end, 0.5)),
        );
        cp.cancel();
    }

    // 2. Write-to-applied with 50 subscribers versus 1.
    let fleet = Fixture::new(&admin, &base, "fleet").await;
    let (cp, _) = fleet.start_control_plane().await;
    let (one, _) = subscribe(&cp, 1, "solo").await;
    let baseline = write_to_applied(&fleet, &one, 40).await;
    let (many, _) = subscribe(&cp, 50, "node").await;
    let mut applied = Vec::new();
    let mut all_acked = Vec::new();
    for _ in 0..40 {
        let (version, started) = fleet.write().await;
        let waits = many.iter().map(|c| wait_version(c, version, started));
        applied.extend(futures::future::join_all(waits).await);
        loop {
            let acked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM data_plane_nodes WHERE node_id LIKE 'node-%' AND acked_version >= $1",
            )
            .bind(version as i64)
            .fetch_one(fleet.store.pool())
            .await
            .unwrap();
            if acked == 50 {
                all_acked.push(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    applied.sort_unstable();
    all_acked.sort_unstable();
    println!(
        "write-to-applied, 50 data planes: p50 {:.1} ms, p99 {:.1} ms ({} samples); 1 data plane baseline: p50 {:.1} ms, p99 {:.1} ms; p99 ratio {:.2}",
        ms(percentile(&applied, 0.5)),
        ms(percentile(&applied, 0.99)),
        applied.len(),
        ms(percentile(&baseline, 0.5)),
        ms(percentile(&baseline, 0.99)),
        percentile(&applied, 0.99).as_secs_f64() / percentile(&baseline, 0.99).as_secs_f64(),
    );
    println!(
        "write-to-all-50-ACKed (as recorded in Postgres): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&all_acked, 0.5)),
        ms(percentile(&all_acked, 0.99))
    );
    cp.cancel();
    for fixture in [tiny, large, fleet] {
        fixture.drop_database(&admin).await;
    }
}

struct Fixture {
    name: &'static str,
    database: String,
    store: Store,
    url: String,
}

impl Fixture {
    async fn new(admin: &sqlx::PgPool, base: &str, name: &'static str) -> Fixture {
        let database = format!("gateway_bench_{name}_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(admin).await.unwrap();
        let url = format!("{}/{database}", base.rsplit_once('/').unwrap().0);
        let pool = PgPoolOptions::new().max_connections(32).connect(&url).await.unwrap();
        let store = Store::new(pool);
        store.migrate().await.unwrap();
        let ctx = WriteContext::default();
        let backend: BackendSpec =
            serde_json::from_value(json!({"name": "b", "kind": "openai", "base_url": "http://127.0.0.1:9"})).unwrap();
        store.create(&ctx, "bench", None, backend).await.unwrap();
        let model = serde_json::from_value(json!({"name": "m", "backend": "b", "upstream_model": "m",
            "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}))
        .unwrap();
        store.create::<policy_engine::config::ModelSpec>(&ctx, "bench", None, model).await.unwrap();
        let alias = serde_json::from_value(json!({"name": "a", "candidates": [{"model": "m"}]})).unwrap();
        store.create::<policy_engine::config::AliasSpec>(&ctx, "bench", None, alias).await.unwrap();
        Fixture { name, database, store, url }
    }

    async fn seed_large(&self) {
        let pool = self.store.pool();
        sqlx::query(
            "INSERT INTO api_keys (id, name, prefix, secret_sha256, team, tags, allowed_aliases, revision, created_by, updated_by)
             SELECT gen_random_uuid(), 'key-' || i, 'gwk_' || i, md5(i::TEXT) || md5(i::TEXT || 'x'), 'team-' || (i % 50),
                    ARRAY['t' || (i % 7)], ARRAY['a'], 1, 'seed', 'seed'
             FROM generate_series(1, 10000) AS i",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO route_policies (id, name, spec, revision, created_by, updated_by)
             SELECT gen_random_uuid(), 'policy-' || i,
                    jsonb_build_object('name', 'policy-' || i, 'priority', i,
                        'when', 'has(request.metadata.tenant) && request.metadata.tenant == ''t' || i || ''' && request.prompt_tokens > ' || i,
                        'action', jsonb_build_object('type', 'route', 'alias', 'a')),
                    1, 'seed', 'seed'
             FROM generate_series(1, 1000) AS i",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO tool_schemas (id, name, spec, revision, created_by, updated_by)
             SELECT gen_random_uuid(), 'tool-' || i,
                    jsonb_build_object('name', 'tool-' || i, 'schema', jsonb_build_object(
                        'type', 'object', 'required', jsonb_build_array('city', 'days'), 'additionalProperties', false,
                        'properties', jsonb_build_object(
                            'city', jsonb_build_object('type', 'string', 'minLength', 1),
                            'days', jsonb_build_object('type', 'integer', 'minimum', 1, 'maximum', 14),
                            'units', jsonb_build_object('enum', jsonb_build_array('metric', 'imperial'))))),
                    1, 'seed', 'seed'
             FROM generate_series(1, 1000) AS i",
        )
        .execute(pool)
        .await
        .unwrap();
        sqlx::query("UPDATE config_version SET version = version + 1").execute(pool).await.unwrap();
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// The control plane's servers in-process on free ports; returns its shutdown token and gRPC URL.
    async fn start_control_plane(&self) -> (ControlPlaneHandle, String) {
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", grpc.local_addr().unwrap());
        let args = ServeArgs {
            database: DatabaseArgs { database_url: self.url.clone(), db_acquire_timeout_ms: 5_000 },
            admin_addr: admin.local_addr().unwrap(),
            grpc_addr: grpc.local_addr().unwrap(),
            node_token: Some(TOKEN.to_owned()),
            grpc_tls_cert: None,
            grpc_tls_key: None,
            grpc_client_ca: None,
            replica_id: Some(format!("bench-{}", self.name)),
            admin_token: None,
            secret_key: None,
            backend_allowlist: String::new(),
            secret_env_prefix: "PROVIDER_".to_owned(),
            max_body_bytes: 1 << 20,
            budget_state_interval_ms: 1000,
            rate_share_interval_ms: 50,
        };
        let shutdown = CancellationToken::new();
        let store = self.store.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { control_plane::run(store, &args, admin, grpc, token).await.unwrap() });
        (ControlPlaneHandle { shutdown, url: url.clone() }, url)
    }

    /// A small configuration change through the store; its version and when it was committed.
    async fn write(&self) -> (u64, Instant) {
        let name = format!("w-{}", uuid_like());
        let backend: BackendSpec =
            serde_json::from_value(json!({"name": name, "kind": "openai", "base_url": "http://127.0.0.1:9"})).unwrap();
        let started = Instant::now();
        let stored = self.store.create(&WriteContext::default(), "bench", None, backend).await.unwrap();
        (stored.revision as u64, started)
    }

    async fn drop_database(self, admin: &sqlx::PgPool) {
        self.store.pool().close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", self.database)))
            .execute(admin)
            .await
            .unwrap();
    }
}

struct ControlPlaneHandle {
    shutdown: CancellationToken,
    url: String,
}

impl ControlPlaneHandle {
    fn cancel(&self) {
        self.shutdown.cancel();
    }
}

fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

/// `n` data-plane subscriptions (the real client: compile, swap, persist, ACK), each with its own state.
async fn subscribe(cp: &ControlPlaneHandle, n: usize, prefix: &str) -> (Vec<Arc<Current>>, CancellationToken) {
    let shutdown = cp.shutdown.child_token();
    let mut currents = Vec::new();
    for i in 0..n {
        let current = Arc::new(Current::default());
        let subscription = Subscription {
            connection: ControlPlaneConnection {
                url: cp.url.clone(),
                tls: Default::default(),
                node_token: Some(TOKEN.to_owned()),
            },
            node_id: format!("{prefix}-{i}"),
            state_dir: std::env::temp_dir().join(format!("gateway-bench-{prefix}-{i}-{}", std::process::id())),
            budgets: Default::default(),
            health: Default::default(),
            rates: Default::default(),
        };
        tokio::spawn(subscription.run(current.clone(), shutdown.clone()));
        currents.push(current);
    }
    for current in &currents {
        let mut watch = current.watch();
        tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|v| *v > 0)).await.unwrap().unwrap();
    }
    (currents, shutdown)
}

async fn wait_version(current: &Current, version: u64, started: Instant) -> Duration {
    let mut watch = current.watch();
    tokio::time::timeout(Duration::from_secs(30), watch.wait_for(|v| *v >= version)).await.unwrap().unwrap();
    started.elapsed()
}

async fn write_to_applied(fixture: &Fixture, currents: &[Arc<Current>], writes: usize) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..writes {
        let (version, started) = fixture.write().await;
        samples.extend(futures::future::join_all(currents.iter().map(|c| wait_version(c, version, started))).await);
    }
    samples.sort_unstable();
    samples
}

async fn build_time(store: &Store) -> (Duration, usize) {
    let started = Instant::now();
    let published = publisher::build_if_changed(store, None, None).await.unwrap().unwrap();
    (started.elapsed(), published.snapshot.encoded_len())
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
