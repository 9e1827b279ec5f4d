//! Spend ledger throughput: ingestion into Postgres, and the grouped monthly report over 10M events.
//!
//! `scripts/bench.sh spend` (or `DATABASE_URL=... cargo bench -p control-plane --bench spend`). Each figure comes
//! with a baseline measured in the same run on the same database:
//! - ingestion through `validate` + `Store::ingest_spend` (UNNEST insert, `ON CONFLICT DO NOTHING`, roll-ups from
//!   the inserted rows, one transaction per batch) versus a bare `COPY` of the same rows into a table with the same
//!   indexes (no idempotency, no roll-ups);
//! - the report (`Store::spend_report`, grouped by team and model over a calendar month: roll-ups) versus the same
//!   report computed from raw events (`Store::spend_report_from_events`).
//!
//! Loading 10M events through the API would take minutes of the run, so they are generated in SQL with one
//! `INSERT ... SELECT generate_series` and the roll-ups built from them with one `INSERT ... SELECT ... GROUP BY`,
//! (and the monthly ones from the daily ones), exactly the sums ingestion maintains. `SPEND_BENCH_EVENTS` overrides the 10M (0: ingestion only).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use control_plane::spend::validate;
use control_plane::store::Store;
use control_plane::store::spend::{Dimension, SpendFilter};
use gateway_proto::v1;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const BATCH: usize = 1_000;
const BATCHES: usize = 100;
const WRITERS: usize = 4;

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench.sh sets one)");
    let database = format!("gateway_bench_spend_{}", std::process::id());
    let admin_pool = PgPoolOptions::new().max_connections(1).connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&admin_pool).await.unwrap();
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{database}"),
        None => panic!("DATABASE_URL has no database path"),
    };
    let pool = PgPoolOptions::new().max_connections(16).connect(&url).await.unwrap();
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();

    ingestion(&store, &pool).await;
    report(&store, &pool).await;

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}"))).execute(&admin_pool).await.unwrap();
}

/// How a batch's events spread over roll-up rows.
#[derive(Clone, Copy)]
enum Spread {
    /// 500 keys in 20 teams x 7 aliases/models x 3 backends: nearly every event its own roll-up row.
    Pessimistic,
    /// What one data plane reports in 200 ms: 20 keys, each on its own alias, model and backend.
    Typical,
}

fn batch(n: usize, day: DateTime<Utc>, seed: usize, spread: Spread) -> v1::SpendBatch {
    let events = (0..n)
        .map(|i| {
            let (k, i) = match spread {
                Spread::Pessimistic => ((seed * n + i) % 500, i),
                Spread::Typical => ((seed * n + i) % 20, (seed * n + i) % 20),
            };
            v1::SpendEvent {
                id: Uuid::now_v7().to_string(),
                occurred_at_unix_ms: day.timestamp_millis() + (seed * n + i) as i64,
                key_id: format!("key-id-{k}"),
                key_name: format!("key-{k}"),
                team: format!("team-{}", k % 20),
                alias: format!("alias-{}", i % 7),
                policy: "policy".into(),
                snapshot_version: 42,
                backend: format!("backend-{}", i % 3),
                backend_region: "eu".into(),
                model: format!("model-{}", i % 7),
                upstream_model: "upstream".into(),
                endpoint: "chat.completions".into(),
                status: 200,
                outcome: "ok".into(),
                streamed: i % 2 == 0,
                interrupted: false,
                prompt_tokens: 1200,
                cached_prompt_tokens: 200,
                completion_tokens: 300,
                cache_creation_tokens: 0,
                usage_estimated: false,
                cost_usd: format!("0.00{}", 1000 + i % 997),
                latency_ms: 850,
                ttft_ms: Some(120),
                request_id: Uuid::new_v4().to_string(),
                metadata: [("task".to_owned(), "summarise".to_owned())].into(),
                tool_calls: vec![],
                attempts: 1,
                trace_id: String::new(),
                guardrails: vec![],
                // One attempt, as the data plane reports for every answered request.
                attempt_log: vec![v1::AttemptRecord {
                    backend: format!("backend-{}", i % 3),
                    model: format!("model-{}", i % 7),
                    outcome: "answered".into(),
                    status: 200,
                }],
                images: 0,
            }
        })
        .collect();
    v1::SpendBatch { node_id: "bench".into(), events, batch_id: Uuid::new_v4().to_string() }
}

async fn ingestion(store: &Store, pool: &sqlx::PgPool) {
    let day = Utc::now() - chrono::Duration::hours(1);
    let batches: Vec<v1::SpendBatch> = (0..BATCHES).map(|s| batch(BATCH, day, s, Spread::Pessimistic)).collect();
    let typical: Vec<v1::SpendBatch> =
        (0..BATCHES / 2).map(|s| batch(BATCH, day, BATCHES + s, Spread::Typical)).collect();
    let events = (BATCHES * BATCH) as f64;

    // One writer, batch after batch, as one data plane's sender does.
    let cpu = CpuClock::new(pool).await;
    let started = Instant::now();
    for b in &batches[..BATCHES / 2] {
        let v = validate(b, Utc::now()).unwrap();
        let outcome = store.ingest_spend(&b.node_id, &b.batch_id, &v.records, &v.rejected).await.unwrap();
        assert_eq!(outcome.accepted, BATCH as u64);
    }
    let sequential = events / 2.0 / started.elapsed().as_secs_f64();
    let sequential_cpu = cpu.per_event_us(pool, events / 2.0).await;
    // The same with a typical spread (about 20 roll-up rows per batch).
    let cpu = CpuClock::new(pool).await;
    let started = Instant::now();
    for b in &typical {
        let v = validate(b, Utc::now()).unwrap();
        let outcome = store.ingest_spend(&b.node_id, &b.batch_id, &v.records, &v.rejected).await.unwrap();
        assert_eq!(outcome.accepted, BATCH as u64);
    }
    let typical_rate = events / 2.0 / started.elapsed().as_secs_f64();
    let typical_cpu = cpu.per_event_us(pool, events / 2.0).await;
    // Several writers at once (several data planes), into the same roll-up rows.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in batches[BATCHES / 2..].chunks(BATCHES / 2 / WRITERS) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for b in &chunk {
                let v = validate(b, Utc::now()).unwrap();
                store.ingest_spend(&b.node_id, &b.batch_id, &v.records, &v.rejected).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let concurrent = events / 2.0 / started.elapsed().as_secs_f64();
    // Resending everything: all duplicates, nothing double counted.
    let started = Instant::now();
    for b in &batches[..BATCHES / 2] {
        let v = validate(b, Utc::now()).unwrap();
        let outcome = store.ingest_spend(&b.node_id, &b.batch_id, &v.records, &v.rejected).await.unwrap();
        assert_eq!(outcome.duplicates, BATCH as u64);
    }
    let duplicates = events / 2.0 / started.elapsed().as_secs_f64();

    // Baseline: bare COPY of the same rows into a table with the same indexes, one batch per COPY.
    sqlx::query("CREATE TABLE spend_baseline (LIKE spend_events INCLUDING ALL)").execute(pool).await.unwrap();
    let started = Instant::now();
    for b in &batches[..BATCHES / 2] {
        let v = validate(b, Utc::now()).unwrap();
        let mut text = Vec::with_capacity(BATCH * 400);
        {
            let mut writer = csv::Writer::from_writer(&mut text);
            for r in &v.records {
                writer
                    .write_record([
                        r.id.to_string(),
                        r.occurred_at.to_rfc3339(),
                        "bench".to_owned(),
                        r.key_id.clone(),
                        r.key_name.clone(),
                        r.team.clone(),
                        r.alias.clone(),
                        r.policy.clone(),
                        r.snapshot_version.to_string(),
                        r.backend.clone(),
                        r.backend_region.clone(),
                        r.model.clone(),
                        r.upstream_model.clone(),
                        r.endpoint.clone(),
                        r.status.to_string(),
                        r.outcome.clone(),
                        r.streamed.to_string(),
                        r.interrupted.to_string(),
                        r.prompt_tokens.to_string(),
                        r.cached_prompt_tokens.to_string(),
                        r.completion_tokens.to_string(),
                        r.cache_creation_tokens.to_string(),
                        r.usage_estimated.to_string(),
                        r.cost_usd.to_string(),
                        r.latency_ms.to_string(),
                        r.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
                        r.request_id.clone(),
                        r.attempts.to_string(),
                        r.metadata.clone(),
                        r.tool_calls.clone(),
                    ])
                    .unwrap();
            }
        }
        let mut conn = pool.acquire().await.unwrap();
        let mut copy = conn
            .copy_in_raw(
                "COPY spend_baseline (id, occurred_at, node_id, key_id, key_name, team, alias, policy, snapshot_version,
                    backend, backend_region, model, upstream_model, endpoint, status, outcome, streamed, interrupted,
                    prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens, usage_estimated,
                    cost_usd, latency_ms, ttft_ms, request_id, attempts, metadata, tool_calls)
                 FROM STDIN (FORMAT csv)",
            )
            .await
            .unwrap();
        copy.send(text).await.unwrap();
        copy.finish().await.unwrap();
    }
    let baseline = events / 2.0 / started.elapsed().as_secs_f64();
    println!("ingestion CPU per event, one writer: {sequential_cpu}; typical spread: {typical_cpu}");
    println!(
        "ingestion, batches of {BATCH}: one writer {sequential:.0} events/s (typical spread: {typical_rate:.0}); \
         {WRITERS} writers {concurrent:.0} events/s; resent (all duplicates) {duplicates:.0} events/s; bare COPY \
         baseline {baseline:.0} events/s; one writer / baseline {:.2} (typical {:.2})",
        sequential / baseline,
        typical_rate / baseline
    );
}

async fn report(store: &Store, pool: &sqlx::PgPool) {
    let events: i64 = std::env::var("SPEND_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    if events == 0 {
        return;
    }
    sqlx::query("TRUNCATE spend_events, spend_daily, spend_monthly").execute(pool).await.unwrap();
    let started = Instant::now();
    // November 2026, evenly spread; 500 keys in 20 teams, 7 aliases/models, 3 backends; ids are UUIDv7-shaped
    // (millisecond timestamp, version 7, variant 8, md5 bits).
    sqlx::query(
        "INSERT INTO spend_events (id, occurred_at, node_id, key_id, key_name, team, alias, policy, snapshot_version,
            backend, backend_region, model, upstream_model, endpoint, status, outcome, streamed, interrupted,
            prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens, usage_estimated, cost_usd,
            latency_ms, ttft_ms, request_id, attempts)
         SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::UUID,
                to_timestamp(ms / 1000.0), 'bench', 'key-id-' || (i % 500), 'key-' || (i % 500),
                'team-' || (i % 500 % 20), 'alias-' || (i % 7), 'policy', 42, 'backend-' || (i % 3), 'eu',
                'model-' || (i % 7), 'upstream', 'chat.completions', 200, CASE WHEN i % 50 = 0 THEN 'upstream_error' ELSE 'ok' END,
                FALSE, FALSE, 1200, 200, 300, 0, FALSE, ((i % 997) + 1000) / 1000000.0, 850, 120, 'r', 1
         FROM (SELECT i, md5(i::TEXT) AS h,
                      (extract(epoch FROM TIMESTAMPTZ '2026-11-01T00:00:00Z') * 1000)::BIGINT
                        + i * (30 * 86400 * 1000::BIGINT) / $1 AS ms
               FROM generate_series(0, $1 - 1) AS i) AS g",
    )
    .bind(events)
    .execute(pool)
    .await
    .unwrap();
    let loaded = started.elapsed();
    sqlx::query(
        "INSERT INTO spend_daily
         SELECT (occurred_at AT TIME ZONE 'UTC')::DATE, key_id, key_name, team, alias, backend, model, count(*),
                count(*) FILTER (WHERE outcome <> 'ok'), count(*) FILTER (WHERE usage_estimated),
                sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens), sum(cache_creation_tokens),
                sum(cost_usd)
         FROM spend_events GROUP BY 1, 2, 3, 4, 5, 6, 7",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO spend_monthly
         SELECT date_trunc('month', day)::DATE, key_id, key_name, team, alias, backend, model, sum(requests),
                sum(errors), sum(estimated), sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens),
                sum(cache_creation_tokens), sum(cost_usd)
         FROM spend_daily GROUP BY 1, 2, 3, 4, 5, 6, 7",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE spend_monthly").execute(pool).await.unwrap();
    sqlx::query("VACUUM ANALYZE spend_events").execute(pool).await.unwrap();
    sqlx::query("VACUUM ANALYZE spend_daily").execute(pool).await.unwrap();
    let daily: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_daily").fetch_one(pool).await.unwrap();
    let monthly: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_monthly").fetch_one(pool).await.unwrap();
    println!(
        "report data: {events} events generated in {:.1} s; roll-ups: {daily} daily rows, {monthly} monthly rows",
        loaded.as_secs_f64()
    );

    let group = [Dimension::Team, Dimension::Model];
    let filter = SpendFilter::default();
    let from = "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let to = "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let rollup = store.spend_report(&group, &filter, from, to).await.unwrap();
    let runs = time(20, || store.spend_report(&group, &filter, from, to)).await;
    let raw = store.spend_report_from_events(&group, &filter, from, to).await.unwrap();
    assert_eq!(rollup, raw, "the roll-ups and the raw events agree");
    let baseline = time(3, || store.spend_report_from_events(&group, &filter, from, to)).await;
    // A range cut mid-day at both ends: roll-ups for whole days plus raw events for the two partial days.
    let (cut_from, cut_to) = (from + chrono::Duration::hours(7), to - chrono::Duration::hours(5));
    let cut = time(10, || store.spend_report(&group, &filter, cut_from, cut_to)).await;
    println!(
        "monthly report grouped by team,model ({} groups): median {:.1} ms (p90 {:.1} ms) from roll-ups; \
         cut mid-day at both ends: median {:.1} ms; baseline from raw events: median {:.1} ms; ratio {:.3}",
        rollup.len(),
        ms(runs.0),
        ms(runs.1),
        ms(cut.0),
        ms(baseline.0),
        ms(runs.0) / ms(baseline.0)
    );
}

/// CPU time (user + system) of this process and of the database's Postgres sessions, from `/proc`: what ingestion
/// costs per event, whatever else the machine is doing.
struct CpuClock {
    ticks: (u64, u64),
}

/// Per event, in microseconds.
struct CpuPerEvent {
    process: f64,
    postgres: f64,
}

impl std::fmt::Display for CpuPerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (process, postgres) = (self.process, self.postgres);
        write!(f, "{:.1} µs (this process {process:.1}, Postgres {postgres:.1})", process + postgres)
    }
}

impl CpuClock {
    async fn new(pool: &sqlx::PgPool) -> Self {
        Self { ticks: Self::ticks(pool).await }
    }

    async fn per_event_us(self, pool: &sqlx::PgPool, events: f64) -> CpuPerEvent {
        let now = Self::ticks(pool).await;
        // Linux reports these in USER_HZ, 100 per second on every architecture it supports.
        let us = |after: u64, before: u64| after.saturating_sub(before) as f64 * 10_000.0 / events;
        CpuPerEvent { process: us(now.0, self.ticks.0), postgres: us(now.1, self.ticks.1) }
    }

    async fn ticks(pool: &sqlx::PgPool) -> (u64, u64) {
        let backends: Vec<i32> =
            // Client sessions only: autovacuum's workers come and go with the table's growth, whichever path inserts.
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'",
            )
                .fetch_all(pool)
                .await
                .unwrap();
        let of = |path: String| -> u64 {
            let stat = std::fs::read_to_string(path).unwrap_or_default();
            // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            let fields: Vec<&str> = after.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            field(11) + field(12)
        };
        let postgres = backends.into_iter().map(|pid| of(format!("/proc/{pid}/stat"))).sum::<u64>();
        (of("/proc/self/stat".to_owned()), postgres)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p90 of `n` runs.
async fn time<F, Fut, T>(n: usize, f: F) -> (Duration, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, control_plane::store::StoreError>>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    (samples[n / 2], samples[(n * 9 / 10).min(n - 1)])
}
