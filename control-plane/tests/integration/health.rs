//! Health reports over real gRPC: stored per node (each report replaces the last), shown in the fleet view and per
//! backend, stale once the node goes, and bounded without ending the session.

use std::time::Duration;

use gateway_proto::v1;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;
use crate::lineage::{Sender, fleet_node, next_snapshot, subscribe};
use crate::spend_grpc::start;

const SINCE_MS: i64 = 1_764_000_000_000;

fn entry(backend: &str, model: &str, state: &str) -> v1::BackendHealth {
    v1::BackendHealth {
        backend: backend.into(),
        model: model.into(),
        state: state.into(),
        since_unix_ms: SINCE_MS,
        reason: if state == "closed" { String::new() } else { "5 consecutive failures".into() },
        last_check: Some(v1::HealthCheckResult {
            at_unix_ms: SINCE_MS + 1_000,
            ok: state == "closed",
            error: String::new(),
        }),
        latency_ms: Some(250.5),
    }
}

async fn report(tx: &Sender, entries: Vec<v1::BackendHealth>) {
    let report = v1::HealthReport { entries, as_of_unix_ms: SINCE_MS };
    tx.send(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::HealthReport(report)) }).await.unwrap();
}

/// `GET /admin/v1/backends/{name}/health` once `done` holds for it.
async fn backend_health(app: &TestApp, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let reply = app.call("GET", &format!("/admin/v1/backends/{name}/health"), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if done(&reply.body) {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the health of {name} never showed as expected");
}

async fn node(app: &TestApp, running: &str, node_id: &str) -> (Sender, crate::lineage::Stream) {
    let hello = v1::Hello { node_id: node_id.into(), ..Default::default() };
    let (tx, mut stream) = subscribe(running, hello).await.unwrap();
    next_snapshot(&mut stream).await;
    fleet_node(app, node_id, |n| n["connected"] == json!(true)).await;
    (tx, stream)
}

#[sqlx::test(migrations = "../migrations")]
async fn reports_replace_the_node_s_view_and_go_stale_when_it_leaves(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    app.create("backends", backend("b2")).await;
    let running = start(&app).await;
    let (tx1, stream1) = node(&app, &running.url, "dp-1").await;
    let (tx2, _stream2) = node(&app, &running.url, "dp-2").await;

    report(&tx1, vec![entry("b1", "", "open"), entry("b1", "m1", "half_open"), entry("b2", "", "closed")]).await;
    report(&tx2, vec![entry("b1", "", "closed")]).await;
    let fleet = fleet_node(&app, "dp-1", |n| n["backends"].as_array().is_some_and(|b| b.len() == 3)).await;
    let b1 = &fleet["backends"][0];
    assert_eq!(
        (b1["backend"].clone(), b1["model"].clone(), b1["state"].clone()),
        (json!("b1"), json!(null), json!("open"))
    );
    assert_eq!(b1["since"], json!("2025-11-24T16:00:00Z"));
    assert_eq!(b1["reason"], json!("5 consecutive failures"));
    assert_eq!(b1["last_check"], json!({"at": "2025-11-24T16:00:01Z", "ok": false, "error": null}));
    assert_eq!(b1["latency_ms"], json!(250.5));
    assert_eq!(fleet["backends"][1]["model"], json!("m1"));

    let view = backend_health(&app, "b1", |v| v["nodes"].as_array().is_some_and(|n| n.len() == 3)).await;
    let seen: Vec<(Value, Value, Value, Value)> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].clone(), n["model"].clone(), n["state"].clone(), n["connected"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (json!("dp-1"), json!(null), json!("open"), json!(true)),
            (json!("dp-1"), json!("m1"), json!("half_open"), json!(true)),
            (json!("dp-2"), json!(null), json!("closed"), json!(true)),
        ]
    );
    assert_eq!(view["backend"], json!("b1"));

    // A report replaces the node's previous one whole: b2 is gone from dp-1, b1 closed again.
    report(&tx1, vec![entry("b1", "", "closed")]).await;
    let fleet = fleet_node(&app, "dp-1", |n| n["backends"].as_array().is_some_and(|b| b.len() == 1)).await;
    assert_eq!(fleet["backends"][0]["state"], json!("closed"));
    let b2 = backend_health(&app, "b2", |v| v["nodes"].as_array().is_some_and(Vec::is_empty)).await;
    assert_eq!(b2["nodes"], json!([]));

    // dp-1 leaves: its last report stays, marked as the view of a node that is gone.
    drop((tx1, stream1));
    let view = backend_health(&app, "b1", |v| v["nodes"][0]["connected"] == json!(false)).await;
    assert_eq!(
        (view["nodes"][0]["node_id"].clone(), view["nodes"][0]["state"].clone()),
        (json!("dp-1"), json!("closed"))
    );
    assert_eq!(view["nodes"][1]["connected"], json!(true), "dp-2 is still there");
    let gone = fleet_node(&app, "dp-1", |n| n["connected"] == json!(false)).await;
    assert_eq!(gone["backends"].as_array().map(Vec::len), Some(1), "kept, stale");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_oversized_report_is_bounded_and_the_session_goes_on(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let running = start(&app).await;
    let (tx, mut stream) = node(&app, &running.url, "dp-big").await;

    let mut entries: Vec<v1::BackendHealth> = (0..5_000).map(|i| entry(&format!("b{i:05}"), "", "open")).collect();
    entries[0].reason = "x".repeat(100_000);
    entries[1].backend = "y".repeat(10_000);
    entries[2].state = "'; DROP TABLE backend_health; --".into();
    entries[3].reason = "nul\0inside".into();
    entries[4].since_unix_ms = i64::MIN;
    entries[5].latency_ms = Some(f64::INFINITY);
    entries.push(entry("b1", "", "open"));
    report(&tx, entries).await;
    let fleet = fleet_node(&app, "dp-big", |n| n["backends"].as_array().is_some_and(|b| !b.is_empty())).await;
    let backends = fleet["backends"].as_array().unwrap();
    // The first 1,000 entries are considered, three of them refused (name, state, time); the rest dropped.
    assert_eq!(backends.len(), 997);
    assert_eq!(backends[0]["reason"].as_str().map(|r| r.chars().count()), Some(512));
    let nul = backends.iter().find(|b| b["backend"] == json!("b00003")).unwrap();
    assert_eq!(nul["reason"], json!("nulinside"));
    let infinite = backends.iter().find(|b| b["backend"] == json!("b00005")).unwrap();
    assert_eq!(infinite["latency_ms"], json!(null));
    assert!(backends.iter().all(|b| b["backend"] != json!("b1")), "beyond the first 1,000");

    // The session lives on: the next report is stored, and a snapshot still reaches the node.
    report(&tx, vec![entry("b1", "", "half_open")]).await;
    let view = backend_health(&app, "b1", |v| v["nodes"].as_array().is_some_and(|n| n.len() == 1)).await;
    assert_eq!(view["nodes"][0]["state"], json!("half_open"));
    app.create("backends", backend("b2")).await;
    let (snapshot, _) = next_snapshot(&mut stream).await;
    assert!(snapshot.content.unwrap().backends.iter().any(|b| b.name == "b2"));
}

#[sqlx::test(migrations = "../migrations")]
async fn backend_health_is_read_like_the_fleet_and_404s_for_an_unknown_backend(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let reply = app.call("GET", "/admin/v1/backends/nope/health", None).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.code(), "not_found");
    assert!(reply.body["error"]["message"].is_string(), "{}", reply.text);
    let reply = app.call("GET", "/admin/v1/backends/b1/health", None).await;
    assert_eq!((reply.status.as_u16(), reply.body.clone()), (200, json!({"backend": "b1", "nodes": []})));
    for role in ["auditor", "author"] {
        let token = app.token(role).await;
        let reply = app.call_as(&token, "GET", "/admin/v1/backends/b1/health", None).await;
        assert_eq!(reply.status, 200, "{role}: {}", reply.text);
        let fleet = app.call_as(&token, "GET", "/admin/v1/fleet", None).await;
        assert_eq!(fleet.status, 200, "{role}: {}", fleet.text);
    }
    let anonymous = app
        .send(axum::http::Request::get("/admin/v1/backends/b1/health").body(axum::body::Body::empty()).unwrap())
        .await;
    assert_eq!(anonymous.status, 401);
}
