//! The spend ledger: idempotent ingestion, exact sums, grouped reports (roll-ups and raw events agree), keyset
//! pagination, CSV, budget status and periods, and the auditor's read-only access.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::str::FromStr;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Duration, TimeZone, Utc};
use control_plane::distribution::budgets::window;
use control_plane::spend::validate;
use control_plane::store::spend::{Dimension, IngestOutcome, SpendFilter};
use gateway_proto::v1;
use policy_engine::config::{BudgetAction, BudgetPeriod, BudgetScope, BudgetSpec};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::*;

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// A UUIDv7 whose timestamp is `at` (ids are time-ordered like the data plane's).
fn id_at(at: DateTime<Utc>) -> String {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, at.timestamp() as u64, at.timestamp_subsec_nanos());
    Uuid::new_v7(ts).to_string()
}

#[derive(Clone, Debug)]
pub struct Ev {
    pub at: DateTime<Utc>,
    pub key: &'static str,
    pub team: &'static str,
    pub alias: &'static str,
    pub backend: &'static str,
    pub model: &'static str,
    pub cost: &'static str,
    pub outcome: &'static str,
}

pub fn ev(at: DateTime<Utc>, cost: &'static str) -> Ev {
    Ev {
        at,
        key: "k1",
        team: "search",
        alias: "gpt-4o",
        backend: "openai",
        model: "gpt-4o-openai",
        cost,
        outcome: "ok",
    }
}

pub fn message(e: &Ev) -> v1::SpendEvent {
    v1::SpendEvent {
        id: id_at(e.at),
        occurred_at_unix_ms: e.at.timestamp_millis(),
        key_id: format!("id-{}", e.key),
        key_name: e.key.to_owned(),
        team: e.team.to_owned(),
        alias: e.alias.to_owned(),
        policy: "p1".to_owned(),
        snapshot_version: 7,
        backend: e.backend.to_owned(),
        backend_region: "eu".to_owned(),
        model: e.model.to_owned(),
        upstream_model: "upstream".to_owned(),
        endpoint: "chat.completions".to_owned(),
        status: if e.outcome == "ok" { 200 } else { 502 },
        outcome: e.outcome.to_owned(),
        streamed: true,
        interrupted: false,
        prompt_tokens: 100,
        cached_prompt_tokens: 20,
        completion_tokens: 50,
        cache_creation_tokens: 5,
        usage_estimated: e.outcome != "ok",
        cost_usd: e.cost.to_owned(),
        latency_ms: 120,
        ttft_ms: Some(30),
        request_id: "req".to_owned(),
        metadata: [("task".to_owned(), "code, \"quoted\"".to_owned())].into(),
        tool_calls: vec![v1::ToolCallOutcome { tool: "search".into(), outcome: "valid".into(), violations: 0 }],
        attempts: 1,
        trace_id: String::new(),
        guardrails: vec![],
        attempt_log: vec![],
        images: 0,
    }
}

pub fn batch(events: Vec<v1::SpendEvent>) -> v1::SpendBatch {
    v1::SpendBatch { node_id: "dp-1".to_owned(), events, batch_id: Uuid::new_v4().to_string() }
}

/// Ingest through validation and the store, as `ReportSpend` does, with the ledger's clock at `now`.
pub async fn ingest_at(app: &TestApp, batch: &v1::SpendBatch, now: DateTime<Utc>) -> (IngestOutcome, usize) {
    let v = validate(batch, now).unwrap();
    let outcome = app.store.ingest_spend(&batch.node_id, &batch.batch_id, &v.records, &v.rejected).await.unwrap();
    (outcome, v.rejected.len())
}

async fn ingest(app: &TestApp, batch: &v1::SpendBatch) -> IngestOutcome {
    ingest_at(app, batch, Utc::now()).await.0
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_batch_twice_is_counted_once(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let now = Utc::now() - Duration::minutes(5);
    let mut events: Vec<v1::SpendEvent> = (0..3).map(|_| message(&ev(now, "0.25"))).collect();
    // The same id twice within one batch counts once too.
    events.push(events[0].clone());
    let batch = batch(events);
    let first = ingest(&app, &batch).await;
    assert_eq!((first.accepted, first.duplicates), (3, 1));
    let second = ingest(&app, &batch).await;
    assert_eq!((second.accepted, second.duplicates), (0, 4));
    assert!(second.committed_unix_us >= first.committed_unix_us);

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_events").fetch_one(&pool).await.unwrap();
    let (requests, cost): (i64, Decimal) =
        sqlx::query_as("SELECT sum(requests)::BIGINT, sum(cost_usd) FROM spend_daily").fetch_one(&pool).await.unwrap();
    assert_eq!((rows, requests, cost), (3, 3, dec("0.75")));
    let (requests, cost): (i64, Decimal) =
        sqlx::query_as("SELECT sum(requests)::BIGINT, sum(cost_usd) FROM spend_monthly")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((requests, cost), (3, dec("0.75")));
    let from = (now - Duration::hours(1)).to_rfc3339();
    let reply = app.call("GET", &format!("/admin/v1/spend?from={}", enc(&from)), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["total"]["requests"], json!(3));
    assert_eq!(reply.body["total"]["cost_usd"], json!("0.75"));
}

/// Every stored column and roll-up row as Postgres writes them (numbers with their scale), `ingested_at` aside.
async fn ledger_text(pool: &PgPool) -> (Vec<String>, Vec<String>, Vec<String>) {
    let rows = |sql: &'static str| async move { sqlx::query_scalar::<_, String>(sql).fetch_all(pool).await.unwrap() };
    (
        rows("SELECT (to_jsonb(e) - 'ingested_at')::TEXT FROM spend_events e ORDER BY id").await,
        rows("SELECT d::TEXT FROM spend_daily d ORDER BY d::TEXT").await,
        rows("SELECT m::TEXT FROM spend_monthly m ORDER BY m::TEXT").await,
    )
}

/// The bulk path (`COPY`, roll-ups summed in the control plane) and the general one (`INGEST`, which a batch
/// repeating an event takes) store the same rows and the same roll-ups, to the scale of every sum.
#[sqlx::test(migrations = "../migrations")]
async fn bulk_and_general_ingestion_store_the_same_ledger(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let now = at("2026-12-02T12:00:00Z");
    // Groups summed at different scales: 0, 1 and 2 decimal places here, 18 in the group below.
    let costs = ["0.5", "0.25", "3", "0.10", "0"];
    let mut events: Vec<v1::SpendEvent> = (0..70)
        .map(|i: usize| {
            // Across a day and a month boundary, two keys and teams, errors and estimates.
            let mut e = ev(at("2026-11-30T22:00:00Z") + Duration::minutes(7 * i as i64), costs[i % costs.len()]);
            e.key = ["k1", "k2"][i % 2];
            e.team = ["search", ""][(i / 2) % 2];
            e.outcome = if i.is_multiple_of(9) { "upstream_error" } else { "ok" };
            let mut m = message(&e);
            m.ttft_ms = (!i.is_multiple_of(3)).then_some(i as u64);
            m.trace_id = if i.is_multiple_of(4) { String::new() } else { format!("{:032x}", i + 1) };
            m.guardrails = vec![v1::GuardrailOutcome {
                guardrail: "pii".into(),
                detector: "email".into(),
                action: "redact".into(),
                side: "prompt".into(),
                count: 2,
            }];
            m.attempt_log = vec![v1::AttemptRecord {
                backend: "openai".into(),
                model: "m".into(),
                outcome: "answered".into(),
                status: 200,
            }];
            m.images = (i % 5) as u32;
            m
        })
        .collect();
    // One group's cost past what rust_decimal holds (about 7.9e10 at 18 decimal places).
    let big = "999999999.999999999999999999";
    events.extend((0..89).map(|i| message(&ev(at("2026-11-30T10:00:00Z") + Duration::seconds(i), big))));
    events.push(message(&ev(at("2026-11-30T11:00:00Z"), "0.000000000000000001")));
    events.sort_by(|a, b| a.id.cmp(&b.id));
    // Roll-up rows that exist before, so the upserts add to them.
    let earlier: Vec<v1::SpendEvent> = (0..5).map(|_| message(&ev(at("2026-11-30T23:00:00Z"), "1.5"))).collect();
    let fresh = batch(events.clone());
    let mut repeating = batch(events.clone());
    repeating.events.push(events[0].clone());

    ingest_at(&app, &batch(earlier.clone()), now).await;
    let (outcome, _) = ingest_at(&app, &fresh, now).await;
    assert_eq!((outcome.accepted, outcome.duplicates), (160, 0));
    let bulk = ledger_text(&pool).await;
    // Sent again: every event a duplicate, nothing changes.
    let (outcome, _) = ingest_at(&app, &fresh, now).await;
    assert_eq!((outcome.accepted, outcome.duplicates), (0, 160));
    assert_eq!(ledger_text(&pool).await, bulk);

    sqlx::query("TRUNCATE spend_events, spend_daily, spend_monthly").execute(&pool).await.unwrap();
    ingest_at(&app, &batch(earlier), now).await;
    let (outcome, _) = ingest_at(&app, &repeating, now).await;
    assert_eq!((outcome.accepted, outcome.duplicates), (160, 1));
    let general = ledger_text(&pool).await;

    assert_eq!(bulk.0.len(), 165);
    assert_eq!(bulk, general);
    // The paths agree beyond what rust_decimal holds.
    let biggest: String =
        sqlx::query_scalar("SELECT max(cost_usd)::TEXT FROM spend_daily").fetch_one(&pool).await.unwrap();
    assert_eq!(biggest, "89000000011.349999999999999912");
}

/// A caller dropped mid-ingestion (a data plane killed during `ReportSpend`) neither loses the batch's commit nor
/// leaves a pooled connection out of step: later queries on it read their own results.
#[sqlx::test(migrations = "../migrations")]
async fn an_ingestion_whose_caller_hangs_up_leaves_the_connection_in_step(pool: PgPool) {
    // One connection, so the queries after a dropped call run on the connection it used.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let store = control_plane::store::Store::new(one.clone());
    let now = Utc::now();
    for (round, after_us) in [0_u64, 300, 1_000, 3_000, 10_000, 30_000].into_iter().enumerate() {
        let start = now - Duration::minutes(10) + Duration::seconds(round as i64 * 10);
        let events = (0..5_000).map(|i| message(&ev(start + Duration::milliseconds(i), "0.001"))).collect();
        let b = batch(events);
        let v = validate(&b, now).unwrap();
        let call = store.ingest_spend(&b.node_id, &b.batch_id, &v.records, &v.rejected);
        // Dropped after `after_us`, or not at all if it finished by then.
        let _ = tokio::time::timeout(std::time::Duration::from_micros(after_us), call).await;
        let answer: i32 = sqlx::query_scalar("SELECT 42").fetch_one(&one).await.unwrap();
        assert_eq!(answer, 42, "round {round}");
        let expected = 5_000 * (round as i64 + 1);
        let mut stored = 0;
        for _ in 0..200 {
            stored = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM spend_events").fetch_one(&one).await.unwrap();
            if stored == expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(stored, expected, "round {round}: the abandoned batch is stored whole");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn invalid_events_are_quarantined_and_never_block_valid_ones(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let now = Utc::now();
    let mut events: Vec<v1::SpendEvent> = (0..3).map(|_| message(&ev(now, "1.5"))).collect();
    events[1].cost_usd = "free".to_owned();
    let b = batch(events);
    let (outcome, rejected) = ingest_at(&app, &b, now).await;
    assert_eq!((outcome.accepted, outcome.duplicates, rejected), (2, 0, 1));
    assert_eq!(app.store.quarantined_spend().await.unwrap(), 1);
    // Sent again: nothing new anywhere.
    let (outcome, rejected) = ingest_at(&app, &b, now).await;
    assert_eq!((outcome.accepted, outcome.duplicates, rejected), (0, 2, 1));
    assert_eq!(app.store.quarantined_spend().await.unwrap(), 1);
}

#[sqlx::test(migrations = "../migrations")]
async fn costs_are_exact_to_the_last_decimal(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let day = at("2026-11-20T00:00:00Z");
    let now = at("2026-11-25T12:00:00Z");
    // 100,000 micro-dollar events: exactly 0.1, however they are summed.
    for chunk in 0..10 {
        let events =
            (0..10_000).map(|i| message(&ev(day + Duration::milliseconds(chunk * 10_000 + i), "0.000001"))).collect();
        assert_eq!(ingest_at(&app, &batch(events), now).await.0.accepted, 10_000);
    }
    // Known tokens x prices: 1234 input at $2.50/M + 567 output at $10.00/M = 0.003085 + 0.00567 = 0.008755.
    let per_request =
        (Decimal::from(1234) * dec("2.50") + Decimal::from(567) * dec("10.00")) / Decimal::from(1_000_000);
    assert_eq!(per_request, dec("0.008755"));
    let events = (0..1000)
        .map(|i| {
            let mut e = ev(day + Duration::hours(13) + Duration::milliseconds(i), "0");
            e.key = "k2";
            let mut m = message(&e);
            m.cost_usd = per_request.to_string();
            m
        })
        .collect();
    ingest_at(&app, &batch(events), now).await;
    // And the smallest cost the ledger keeps: 18 decimal places.
    let mut e = message(&ev(day + Duration::hours(14), "0"));
    e.key_name = "k3".to_owned();
    e.cost_usd = "0.000000000000000001".to_owned();
    ingest_at(&app, &batch(vec![e]), now).await;

    let whole_day = "from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z&group_by=key";
    let part_day = "from=2026-11-20T00:00:00Z&to=2026-11-20T23:00:00Z&group_by=key";
    for query in [whole_day, part_day] {
        let reply = app.call("GET", &format!("/admin/v1/spend?{query}"), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let costs: Vec<(&str, &str)> = reply.body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].as_str().unwrap(), r["cost_usd"].as_str().unwrap()))
            .collect();
        assert_eq!(costs, [("k1", "0.1"), ("k2", "8.755"), ("k3", "0.000000000000000001")], "{query}");
        assert_eq!(reply.body["total"]["cost_usd"], json!("8.855000000000000001"), "{query}");
        assert_eq!(reply.body["total"]["requests"], json!(101_001), "{query}");
    }
}

/// Events spread over three days and every dimension, for the grouping tests.
fn spread() -> Vec<Ev> {
    let keys = ["k1", "k2", "k3"];
    let teams = ["search", "ads"];
    let aliases = ["gpt-4o", "code-fast"];
    let backends = ["openai", "azure", "anthropic"];
    let models = ["m-a", "m-b"];
    let costs = ["0.000001", "0.5", "1.25", "0.000123", "3"];
    let start = at("2026-11-10T00:00:00Z");
    (0..240)
        .map(|i: usize| Ev {
            // Every 17 minutes over ~3 days.
            at: start + Duration::minutes(17 * i as i64),
            key: keys[i % 3],
            team: teams[(i / 3) % 2],
            alias: aliases[(i / 2) % 2],
            backend: backends[(i / 5) % 3],
            model: models[(i / 7) % 2],
            cost: costs[i % 5],
            outcome: if i.is_multiple_of(11) { "upstream_error" } else { "ok" },
        })
        .collect()
}

type Group = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

fn expected(
    events: &[Ev],
    dims: &[Dimension],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    team: Option<&str>,
) -> BTreeMap<Group, (i64, i64, Decimal)> {
    let mut groups = BTreeMap::new();
    for e in events.iter().filter(|e| e.at >= from && e.at < to && team.is_none_or(|t| t == e.team)) {
        let pick = |d: Dimension, v: String| dims.contains(&d).then_some(v);
        let group = (
            pick(Dimension::Key, e.key.to_owned()),
            pick(Dimension::Team, e.team.to_owned()),
            pick(Dimension::Alias, e.alias.to_owned()),
            pick(Dimension::Backend, e.backend.to_owned()),
            pick(Dimension::Model, e.model.to_owned()),
            pick(Dimension::Day, e.at.date_naive().to_string()),
        );
        let entry = groups.entry(group).or_insert((0, 0, Decimal::ZERO));
        entry.0 += 1;
        entry.1 += i64::from(e.outcome != "ok");
        entry.2 += dec(e.cost);
    }
    groups
}

fn actual(body: &Value) -> BTreeMap<Group, (i64, i64, Decimal)> {
    let s = |row: &Value, f: &str| row[f].as_str().map(str::to_owned);
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let group = (s(r, "key"), s(r, "team"), s(r, "alias"), s(r, "backend"), s(r, "model"), s(r, "day"));
            (
                group,
                (r["requests"].as_i64().unwrap(), r["errors"].as_i64().unwrap(), dec(r["cost_usd"].as_str().unwrap())),
            )
        })
        .collect()
}

fn enc(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[sqlx::test(migrations = "../migrations")]
async fn reports_group_by_every_subset_filter_and_cut_ranges_exactly(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let events = spread();
    let now = at("2026-11-25T00:00:00Z");
    ingest_at(&app, &batch(events.iter().map(message).collect()), now).await;
    let ranges = [
        // Whole days: roll-ups only.
        ("2026-11-10T00:00:00Z", "2026-11-13T00:00:00Z"),
        // Partial days at both ends: raw events for them, roll-ups in between.
        ("2026-11-10T05:30:00Z", "2026-11-12T19:00:00.001Z"),
        // Whole months (the monthly roll-ups), whole days around them and partial days at the ends.
        ("2026-10-20T10:00:00Z", "2026-12-05T07:00:00Z"),
        // Within one day: raw events only.
        ("2026-11-11T01:00:00Z", "2026-11-11T02:42:00Z"),
        // Boundaries are [from, to): an event exactly at `to` is out, one exactly at `from` in.
        ("2026-11-11T00:00:00Z", "2026-11-12T00:00:00Z"),
    ];
    for mask in 0..64_u32 {
        let dims: Vec<Dimension> =
            Dimension::ALL.into_iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, d)| d).collect();
        let names: Vec<&str> = dims.iter().map(|d| d.as_str()).collect();
        for (from, to) in ranges {
            for team in [None, Some("ads")] {
                let mut query = format!("group_by={}&from={}&to={}", names.join(","), enc(from), enc(to));
                if let Some(team) = team {
                    query.push_str(&format!("&team={team}"));
                }
                let reply = app.call("GET", &format!("/admin/v1/spend?{query}"), None).await;
                assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
                assert_eq!(actual(&reply.body), expected(&events, &dims, at(from), at(to), team), "{query}");
            }
        }
        // The roll-up path agrees with the raw-events baseline.
        let filter = SpendFilter::default();
        let (from, to) = (at(ranges[1].0), at(ranges[1].1));
        assert_eq!(
            app.store.spend_report(&dims, &filter, from, to).await.unwrap(),
            app.store.spend_report_from_events(&dims, &filter, from, to).await.unwrap(),
            "{names:?}"
        );
    }
    // Every filter alone, and all together.
    let from = "from=2026-11-01T00:00:00Z&to=2026-11-20T00:00:00Z";
    type Matcher = fn(&Ev) -> bool;
    let cases: [(&str, &str, Matcher); 6] = [
        ("key", "k2", |e| e.key == "k2"),
        ("team", "search", |e| e.team == "search"),
        ("alias", "code-fast", |e| e.alias == "code-fast"),
        ("backend", "azure", |e| e.backend == "azure"),
        ("model", "m-b", |e| e.model == "m-b"),
        ("nothing", "", |_| true),
    ];
    for (param, value, matches) in cases {
        let query = if param == "nothing" { from.to_owned() } else { format!("{from}&{param}={value}") };
        let reply = app.call("GET", &format!("/admin/v1/spend?{query}"), None).await;
        let want: Decimal = events.iter().filter(|e| matches(e)).map(|e| dec(e.cost)).sum();
        let count = events.iter().filter(|e| matches(e)).count();
        assert_eq!(dec(reply.body["total"]["cost_usd"].as_str().unwrap()), want, "{query}");
        assert_eq!(reply.body["total"]["requests"], json!(count), "{query}");
    }
    let all = app
        .call("GET", &format!("/admin/v1/spend?{from}&key=k1&team=search&alias=gpt-4o&backend=openai&model=m-a"), None)
        .await;
    let want: Vec<&Ev> = events
        .iter()
        .filter(|e| (e.key, e.team, e.alias, e.backend, e.model) == ("k1", "search", "gpt-4o", "openai", "m-a"))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(all.body["total"]["requests"], json!(want.len()));
}

#[sqlx::test(migrations = "../migrations")]
async fn csv_reports_and_event_pages_parse_back(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let events = spread();
    ingest_at(&app, &batch(events.iter().map(message).collect()), at("2026-11-25T00:00:00Z")).await;
    let query = "group_by=day,team,key&from=2026-11-10T00:00:00Z&to=2026-11-13T00:00:00Z";
    let json_reply = app.call("GET", &format!("/admin/v1/spend?{query}"), None).await;
    for request in [
        Request::get(format!("/admin/v1/spend?{query}&format=csv")),
        Request::get(format!("/admin/v1/spend?{query}")).header("accept", "text/csv"),
    ] {
        let reply =
            app.send(request.header("authorization", format!("Bearer {ADMIN}")).body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.headers["content-type"], "text/csv; charset=utf-8");
        let mut reader = csv::Reader::from_reader(reply.text.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header[..4], ["key_id", "key", "team", "day"]);
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let rows = json_reply.body["rows"].as_array().unwrap();
        assert_eq!(records.len(), rows.len());
        for (record, row) in records.iter().zip(rows) {
            assert_eq!(record.get(1), row["key"].as_str());
            assert_eq!(record.get(3), row["day"].as_str());
            assert_eq!(record.get(4).unwrap(), row["requests"].to_string());
            assert_eq!(record.get(11), row["cost_usd"].as_str());
        }
    }
    // Events: every page as CSV, following x-next-cursor, yields each event once, metadata intact.
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut uri = "/admin/v1/spend/events?format=csv&limit=70".to_owned();
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let reply = app.call("GET", &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let mut reader = csv::Reader::from_reader(reply.text.as_bytes());
        for record in reader.records() {
            let record = record.unwrap();
            ids.push(record[0].to_owned());
            let metadata: Value = serde_json::from_str(&record[29]).unwrap();
            assert_eq!(metadata["task"], json!("code, \"quoted\""));
        }
        cursor = reply.headers.get("x-next-cursor").map(|v| v.to_str().unwrap().to_owned());
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(ids.len(), events.len());
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), events.len());
}

#[sqlx::test(migrations = "../migrations")]
async fn keyset_pages_visit_every_event_once_during_concurrent_inserts(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let start = Utc::now() - Duration::hours(2);
    // Many events share a millisecond, so the id breaks ties.
    let initial: Vec<v1::SpendEvent> =
        (0..1050).map(|i| message(&ev(start + Duration::milliseconds(i / 7), "0.01"))).collect();
    let initial_ids: BTreeSet<String> = initial.iter().map(|e| e.id.clone()).collect();
    ingest(&app, &batch(initial)).await;

    let writer_store = app.store.clone();
    let writer = tokio::spawn(async move {
        // Concurrent inserts, before and after the reader's position.
        for round in 0..20 {
            let events: Vec<v1::SpendEvent> = (0..25)
                .map(|i| {
                    message(&ev(start + Duration::milliseconds(round * 40 + i) + Duration::microseconds(500), "0.02"))
                })
                .collect();
            let v = validate(&batch(events.clone()), Utc::now()).unwrap();
            writer_store.ingest_spend("dp-2", "b", &v.records, &v.rejected).await.unwrap();
            tokio::task::yield_now().await;
        }
    });

    let mut seen: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut uri = "/admin/v1/spend/events?limit=100".to_owned();
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let reply = app.call("GET", &uri, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        for item in reply.body["items"].as_array().unwrap() {
            seen.push((item["occurred_at"].as_str().unwrap().to_owned(), item["id"].as_str().unwrap().to_owned()));
        }
        cursor = reply.body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    writer.await.unwrap();
    let ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "no event twice");
    let seen_ids: BTreeSet<String> = seen.iter().map(|(_, id)| id.clone()).collect();
    assert!(initial_ids.is_subset(&seen_ids), "every event stored before paging began is visited");
    let keys: Vec<(DateTime<Utc>, Uuid)> = seen.iter().map(|(t, id)| (at(t), Uuid::parse_str(id).unwrap())).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "strictly ordered by (occurred_at, id)");
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_query_parameters_are_400s_naming_the_parameter(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for (uri, param) in [
        ("/admin/v1/spend?group_by=team,colour", "group_by"),
        ("/admin/v1/spend?from=yesterday", "from"),
        ("/admin/v1/spend?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "to"),
        ("/admin/v1/spend?format=xml", "format"),
        ("/admin/v1/spend/events?limit=0", "limit"),
        ("/admin/v1/spend/events?limit=1001", "limit"),
        ("/admin/v1/spend/events?limit=ten", "limit"),
        ("/admin/v1/spend/events?cursor=bm9wZQ", "cursor"),
        ("/admin/v1/spend/events?to=2026-13-01T00:00:00Z", "to"),
    ] {
        let reply = app.call("GET", uri, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(reply.code(), "invalid_parameter", "{uri}");
        assert_eq!(reply.body["error"]["param"], json!(param), "{uri}");
        assert!(reply.error_message().starts_with(&format!("query parameter {param}: ")), "{uri}");
    }
    let reply = app.call("GET", "/admin/v1/spend?colour=red", None).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_query"));
}

fn budget(name: &str, scope: BudgetScope, period: BudgetPeriod) -> BudgetSpec {
    BudgetSpec {
        name: name.to_owned(),
        scope,
        period,
        limit_usd: dec("10"),
        action: BudgetAction::Block,
        soft_threshold: None,
    }
}

async fn spent(app: &TestApp, spec: &BudgetSpec, now: DateTime<Utc>) -> Decimal {
    let (spend, _) = app.store.budget_spend(&[window(spec, now)]).await.unwrap();
    spend[&spec.name]
}

#[sqlx::test(migrations = "../migrations")]
async fn budget_periods_roll_over_exactly_at_the_boundary(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let ledger_now = at("2027-01-05T00:00:00Z");
    // One event on each side of each boundary, a microsecond... a millisecond apart (the events' resolution).
    let times = [
        ("2026-11-30T23:59:59.999Z", "1"), // last ms of November (Monday 30th: its week is Nov 30 - Dec 6)
        ("2026-12-01T00:00:00Z", "2"),     // first ms of December, a Tuesday
        ("2026-11-29T23:59:59.999Z", "4"), // last ms of the week of Nov 23, a Sunday
        ("2026-12-31T23:59:59.999Z", "8"), // last ms of 2026
        ("2027-01-01T00:00:00Z", "16"),    // first ms of 2027, a Friday
    ];
    let events = times.iter().map(|(t, cost)| message(&ev(at(t), cost))).collect();
    ingest_at(&app, &batch(events), ledger_now).await;
    let global = |p| budget("b", BudgetScope::Global, p);
    use BudgetPeriod::*;
    for (period, now, want) in [
        (Day, "2026-11-30T12:00:00Z", "1"),
        (Day, "2026-12-01T00:00:00Z", "2"),
        (Day, "2026-11-30T00:00:00Z", "1"),
        (Day, "2026-11-29T23:59:59.999Z", "4"),
        (Week, "2026-11-29T12:00:00Z", "4"),  // the week of Monday Nov 23
        (Week, "2026-11-30T00:00:00Z", "3"),  // Nov 30 + Dec 1
        (Week, "2026-12-31T10:00:00Z", "24"), // week of Monday Dec 28: Dec 31 and Jan 1
        (Month, "2026-11-15T00:00:00Z", "5"),
        (Month, "2026-11-30T23:59:59.999Z", "5"),
        (Month, "2026-12-01T00:00:00Z", "10"),
        (Month, "2026-12-31T23:59:59.999Z", "10"),
        (Month, "2027-01-01T00:00:00Z", "16"),
        (Month, "2027-02-01T00:00:00Z", "0"),
        (Total, "2027-06-01T00:00:00Z", "31"),
    ] {
        assert_eq!(spent(&app, &global(period), at(now)).await, dec(want), "{period:?} at {now}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn budgets_sum_their_scope_and_show_status(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("openai")).await;
    app.create("models", model("gpt-4o-openai", "openai")).await;
    app.create("aliases", alias("gpt-4o", &["gpt-4o-openai"])).await;
    let now = Utc::now();
    // Today and, for the day budget's sake, a little before today began.
    let today = Utc.from_utc_datetime(&now.date_naive().and_hms_opt(0, 0, 0).unwrap());
    let mut events = vec![ev(today, "1.5"), ev(today, "2"), ev(today - Duration::milliseconds(1), "100")];
    events.push(Ev { key: "other", team: "ads", alias: "x", model: "y", ..ev(today, "1000") });
    events.push(Ev { alias: "gpt-4o", model: "another", ..ev(today, "0.25") });
    ingest_at(&app, &batch(events.iter().map(message).collect()), now).await;

    for (scope, want) in [
        (BudgetScope::Key { key: "k1".into() }, "3.75"),
        (BudgetScope::Team { team: "search".into() }, "3.75"),
        (BudgetScope::Model { model: "gpt-4o".into() }, "3.75"),
        (BudgetScope::Model { model: "gpt-4o-openai".into() }, "3.5"),
        (BudgetScope::Global, "1003.75"),
    ] {
        assert_eq!(spent(&app, &budget("b", scope.clone(), BudgetPeriod::Day), now).await, dec(want), "{scope:?}");
    }

    app.create(
        "budgets",
        json!({"name": "search-daily", "scope": {"type": "team", "team": "search"}, "period": "day",
               "limit_usd": "5", "soft_threshold": "0.5"}),
    )
    .await;
    let auditor = app.token("auditor").await;
    let reply = app.call_as(&auditor, "GET", "/admin/v1/budgets/search-daily", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let status = &reply.body["status"];
    assert_eq!(status["period"], json!("day"));
    assert_eq!(status["spent_usd"], json!("3.75"));
    assert_eq!(status["remaining_usd"], json!("1.25"));
    assert_eq!(status["limit_usd"], json!("5"));
    assert_eq!(status["exceeded"], json!(false));
    assert_eq!(status["soft_threshold_usd"], json!("2.5"));
    assert_eq!(status["soft_threshold_reached"], json!(true));
    assert_eq!(at(status["period_start"].as_str().unwrap()), today);
    assert_eq!(at(status["period_end"].as_str().unwrap()), today + Duration::days(1));
    // A read can be written back as is: `status` and `meta` are dropped.
    let mut body = reply.body.clone();
    body["limit_usd"] = json!("3");
    let put = app.call("PUT", "/admin/v1/budgets/search-daily", Some(body)).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let reply = app.call("GET", "/admin/v1/budgets/search-daily", None).await;
    assert_eq!(reply.body["status"]["remaining_usd"], json!("0"));
    assert_eq!(reply.body["status"]["exceeded"], json!(true));

    app.create("budgets", json!({"name": "forever", "scope": {"type": "global"}, "period": "total", "limit_usd": "1"}))
        .await;
    let reply = app.call("GET", "/admin/v1/budgets/forever", None).await;
    assert_eq!(reply.body["status"]["period_start"], Value::Null);
    assert_eq!(reply.body["status"]["period_end"], Value::Null);
    assert_eq!(reply.body["status"]["spent_usd"], json!("1103.75"));
}

#[sqlx::test(migrations = "../migrations")]
async fn auditors_read_spend_and_get_403_on_every_write(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    app.create("backends", backend("b1")).await;
    app.create("models", model("m1", "b1")).await;
    app.create("aliases", alias("a1", &["m1"])).await;
    app.create("keys", json!({"name": "k1"})).await;
    app.create("budgets", json!({"name": "bud", "scope": {"type": "global"}, "period": "month", "limit_usd": "1"}))
        .await;
    ingest(&app, &batch(vec![message(&ev(Utc::now(), "0.5"))])).await;
    let auditor = app.token("auditor").await;
    for path in
        ["/admin/v1/spend", "/admin/v1/spend?group_by=key,day", "/admin/v1/spend/events", "/admin/v1/budgets/bud"]
    {
        let reply = app.call_as(&auditor, "GET", path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }

    // Every operation the OpenAPI document lists that is not a read: the auditor is refused, nothing changes.
    let document = app.send(Request::get("/admin/v1/openapi.json").body(Body::empty()).unwrap()).await;
    let version = app.version().await;
    let audit_rows = app.audit_rows().await;
    let mut writes = 0;
    for (path, item) in document.body["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_none() || path == "/admin/v1/evaluate" {
                continue; // evaluate is a dry run: a read (checked in auth.rs's matrix)
            }
            let concrete = path.replace("{name}", "b1");
            let reply = app.call_as(&auditor, &method.to_uppercase(), &concrete, Some(json!({"name": "b1"}))).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}: {}", reply.text);
            assert_eq!(reply.code(), "forbidden");
            writes += 1;
        }
    }
    assert!(writes >= 20, "the document lists the writes ({writes})");
    assert_eq!(app.version().await, version);
    assert_eq!(app.audit_rows().await, audit_rows);
    // And the spend routes take no writes at all.
    for method in ["POST", "PUT", "DELETE"] {
        for path in ["/admin/v1/spend", "/admin/v1/spend/events"] {
            let reply = app.call(method, path, Some(json!({}))).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_events").fetch_one(&pool).await.unwrap();
    assert_eq!(events, 1);
}

#[test]
fn uuid_helper_makes_v7_ids_at_the_given_time() {
    let t = at("2026-11-20T10:00:00.123Z");
    let id = Uuid::parse_str(&id_at(t)).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    assert_eq!(Utc.timestamp_opt(secs as i64, nanos).unwrap(), t);
}
