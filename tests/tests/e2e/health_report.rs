//! Backend health from a data plane to the admin API: a real control-plane process and the data plane's real
//! subscription client (`data_plane::Subscription`) reporting a `HealthBoard` the test fills, as the breakers and
//! health checks will. The fleet view and `/backends/{name}/health` show the board, follow its changes, and mark
//! it stale when the data plane goes.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use data_plane::state::Current;
use data_plane::{BackendHealth, BreakerState, ControlPlaneConnection, HealthBoard, HealthCheckResult, Subscription};
use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const SINCE_MS: u64 = 1_764_000_000_000;

fn backend(name: &str) -> Value {
    json!({"name": name, "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "secret": {"value": "sk-e2e"}})
}

fn health(backend: &str, model: Option<&str>, state: BreakerState) -> BackendHealth {
    BackendHealth {
        backend: backend.to_owned(),
        model: model.map(str::to_owned),
        state,
        since: UNIX_EPOCH + Duration::from_millis(SINCE_MS),
        reason: (state != BreakerState::Closed).then(|| "5 consecutive failures".to_owned()),
        last_check: Some(HealthCheckResult {
            at: UNIX_EPOCH + Duration::from_millis(SINCE_MS + 2_000),
            ok: state == BreakerState::Closed,
            error: (state != BreakerState::Closed).then(|| "HTTP 503".to_owned()),
        }),
        latency_ms: Some(87.5),
    }
}

/// `node_id`'s entries in `/admin/v1/backends/{backend}/health`, as (model, state, connected).
async fn views(cp: &ControlPlane, backend: &str, node_id: &str) -> Vec<(Value, Value, Value)> {
    let (status, body) = cp.call("GET", &format!("/backends/{backend}/health"), None).await;
    assert_eq!(status, 200, "{body}");
    body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["node_id"] == json!(node_id))
        .map(|n| (n["model"].clone(), n["state"].clone(), n["connected"].clone()))
        .collect()
}

fn fleet_node(fleet: &Value, id: &str) -> Option<Value> {
    fleet["nodes"].as_array()?.iter().find(|n| n["node_id"] == json!(id)).cloned()
}

#[sqlx::test(migrations = false)]
async fn a_data_plane_s_health_board_reaches_the_admin_api_and_goes_stale_when_it_leaves(pool: PgPool) {
    let test = "health_report";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    cp.create("backends", backend("b1")).await;
    cp.create("backends", backend("b2")).await;

    let board = Arc::new(HealthBoard::default());
    board.publish(vec![
        health("b1", None, BreakerState::Open),
        health("b1", Some("m1"), BreakerState::HalfOpen),
        health("b2", None, BreakerState::Closed),
    ]);
    let state_dir = std::env::temp_dir().join(format!("gateway-e2e-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let subscription = Subscription {
        connection: ControlPlaneConnection {
            url: cp.grpc_url(),
            tls: Default::default(),
            node_token: Some(NODE_TOKEN.to_owned()),
        },
        node_id: "dp-health".to_owned(),
        state_dir,
        budgets: Default::default(),
        health: board.clone(),
        rates: Default::default(),
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(subscription.run(Arc::new(Current::default()), stop.clone()));

    // On connect: the board as it is.
    let node = eventually(Duration::from_secs(20), "the fleet view to show the board", || async {
        fleet_node(&cp.fleet().await, "dp-health").filter(|n| n["backends"].as_array().is_some_and(|b| b.len() == 3))
    })
    .await;
    assert_eq!(node["connected"], json!(true));
    let b1 = &node["backends"][0];
    assert_eq!(
        (b1["backend"].clone(), b1["model"].clone(), b1["state"].clone()),
        (json!("b1"), json!(null), json!("open"))
    );
    assert_eq!(b1["since"], json!("2025-11-24T16:00:00Z"));
    assert_eq!(b1["reason"], json!("5 consecutive failures"));
    assert_eq!(b1["last_check"], json!({"at": "2025-11-24T16:00:02Z", "ok": false, "error": "HTTP 503"}));
    assert_eq!(b1["latency_ms"], json!(87.5));
    assert_eq!(
        views(&cp, "b1", "dp-health").await,
        [(json!(null), json!("open"), json!(true)), (json!("m1"), json!("half_open"), json!(true))]
    );

    // A change on the board reaches the control plane: b1 closes, b2 leaves the board.
    board.publish(vec![health("b1", None, BreakerState::Closed)]);
    eventually(Duration::from_secs(20), "the change to arrive", || async {
        (views(&cp, "b1", "dp-health").await == [(json!(null), json!("closed"), json!(true))]).then_some(())
    })
    .await;
    assert_eq!(views(&cp, "b2", "dp-health").await, Vec::<(Value, Value, Value)>::new());

    // The data plane goes: its last report stays, marked stale.
    stop.cancel();
    running.await.unwrap();
    eventually(Duration::from_secs(20), "the view to go stale", || async {
        (views(&cp, "b1", "dp-health").await == [(json!(null), json!("closed"), json!(false))]).then_some(())
    })
    .await;
    let node = fleet_node(&cp.fleet().await, "dp-health").unwrap();
    assert_eq!((node["connected"].clone(), node["backends"][0]["state"].clone()), (json!(false), json!("closed")));

    let (status, body) = cp.call("GET", "/backends/nope/health", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")), "{body}");
}
