//! Configuration lineage: the store's counter moves past a version its fleet holds (a restored backup), once and
//! only in its own lineage; a node of another lineage takes the store's snapshot; the fleet view shows both.

use std::time::Duration;

use gateway_proto::v1;
use serde_json::json;
use sqlx::PgPool;
use tonic::Code;
use uuid::Uuid;

use crate::common::*;
use crate::spend_grpc::{NODE_TOKEN, client, start};

async fn advances(app: &TestApp) -> Vec<serde_json::Value> {
    let reply = app.call("GET", "/admin/v1/audit?action=advance", None).await;
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_counter_moves_past_a_held_version_once_and_only_in_its_own_lineage(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let head = app.store.config_head().await.unwrap();
    let v = head.version;

    let other = Uuid::new_v4();
    assert_eq!(app.store.advance_past(other, v + 5, "test").await.unwrap(), None, "another lineage: no move");
    assert_eq!(app.store.advance_past(head.lineage, v, "test").await.unwrap(), None, "not behind");
    assert_eq!(app.store.advance_past(head.lineage, v - 1, "test").await.unwrap(), None, "ahead");
    assert_eq!(app.version().await, v);

    // Replicas and sessions racing for the same held version move the counter once.
    let racing = (0..8).map(|i| {
        let store = app.store.clone();
        tokio::spawn(async move { store.advance_past(head.lineage, v + 5, &format!("data-plane:n{i}")).await })
    });
    let results: Vec<_> = futures::future::join_all(racing).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let moved: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!((moved[0].from, moved[0].to), (v, v + 6));
    assert_eq!(
        app.store.config_head().await.unwrap(),
        control_plane::store::ConfigHead { lineage: head.lineage, version: v + 6 }
    );

    let rows = advances(&app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["config_version"], json!(v + 6));
    assert_eq!(rows[0]["resource_kind"], json!("config_version"));
    assert_eq!(rows[0]["before"], json!({"lineage": head.lineage, "version": v}));
    assert_eq!(rows[0]["after"], json!({"lineage": head.lineage, "version": v + 6, "past_held_version": v + 5}));
    // The configuration itself is untouched.
    let reply = app.call("GET", "/admin/v1/backends/b1", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

pub(crate) type Stream = tonic::Streaming<v1::SubscribeResponse>;
pub(crate) type Sender = tokio::sync::mpsc::Sender<v1::SubscribeRequest>;

pub(crate) async fn subscribe(url: &str, hello: v1::Hello) -> Result<(Sender, Stream), tonic::Status> {
    let mut node = client(url, Some(NODE_TOKEN)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::Hello(hello)) }).await.unwrap();
    let stream = node.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, stream))
}

/// The next snapshot on the stream, with its nonce.
pub(crate) async fn next_snapshot(stream: &mut Stream) -> (v1::Snapshot, String) {
    let wait = async {
        loop {
            let response = stream.message().await.unwrap().expect("stream open");
            if let Some(v1::subscribe_response::Kind::Snapshot(snapshot)) = response.kind {
                return (snapshot, response.nonce);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.expect("a snapshot within 30 s")
}

async fn ack(tx: &Sender, snapshot: &v1::Snapshot, nonce: String) {
    let ack = v1::Ack { version: snapshot.version, nonce };
    tx.send(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::Ack(ack)) }).await.unwrap();
}

/// The fleet view's entry for `node`, once `done` holds for it.
pub(crate) async fn fleet_node(
    app: &TestApp,
    node: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..300 {
        let reply = app.call("GET", "/admin/v1/fleet", None).await;
        let found =
            reply.body["nodes"].as_array().and_then(|nodes| nodes.iter().find(|n| n["node_id"] == node).cloned());
        if let Some(found) = found.filter(|n| done(n)) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fleet view never showed {node} as expected");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_node_ahead_of_a_restored_store_gets_the_store_s_configuration_past_its_version(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let head = app.store.config_head().await.unwrap();
    let v = head.version;
    let running = start(&app).await;
    let hello = v1::Hello {
        node_id: "dp-ahead".into(),
        held_version: (v + 3) as u64,
        held_content_hash: "held-after-the-backup".into(),
        held_lineage: head.lineage.to_string(),
        ..Default::default()
    };
    let (tx, mut stream) = subscribe(&running.url, hello).await.unwrap();
    // The store's snapshot may come first at its old version (the node ignores it), then past the node's.
    let (mut taken, mut nonce) = next_snapshot(&mut stream).await;
    let mut older = None;
    if taken.version == v as u64 {
        older = Some(taken);
        (taken, nonce) = next_snapshot(&mut stream).await;
    }
    assert_eq!(taken.version, (v + 4) as u64, "just past the held version");
    assert_eq!(taken.lineage, head.lineage.to_string());
    if let Some(older) = older {
        assert_eq!(older.content_hash, taken.content_hash, "the same configuration, at a new version");
    }
    let config = taken.content.as_ref().unwrap();
    assert_eq!(config.backends.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["b1"]);
    assert_eq!(app.version().await, v + 4);
    assert_eq!(advances(&app).await[0]["actor"], json!("data-plane:dp-ahead"));

    ack(&tx, &taken, nonce).await;
    let node = fleet_node(&app, "dp-ahead", |n| n["acked_version"] == json!(v + 4)).await;
    assert_eq!(node["behind"], json!(false));
    assert_eq!(node["lineage"], json!(head.lineage));
    assert_eq!(node["adopted_from"]["reason"], json!("store_behind"), "{node}");
    assert_eq!(node["adopted_from"]["version"], json!(v + 3));
    assert_eq!(node["adopted_from"]["lineage"], json!(head.lineage));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_node_of_another_lineage_takes_the_store_s_snapshot_and_the_fleet_shows_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let head = app.store.config_head().await.unwrap();
    let running = start(&app).await;
    let other = Uuid::new_v4();
    let hello = v1::Hello {
        node_id: "dp-elsewhere".into(),
        held_version: 100,
        held_content_hash: "from-another-database".into(),
        held_lineage: other.to_string(),
        ..Default::default()
    };
    let (tx, mut stream) = subscribe(&running.url, hello).await.unwrap();
    let (snapshot, nonce) = next_snapshot(&mut stream).await;
    assert_eq!((snapshot.version, snapshot.lineage.as_str()), (head.version as u64, head.lineage.to_string().as_str()));
    assert_eq!(app.version().await, head.version, "another lineage's versions do not move the counter");
    assert!(advances(&app).await.is_empty());

    // Until it acknowledges, the node holds another lineage: behind, whatever its version.
    let node = fleet_node(&app, "dp-elsewhere", |n| n["acked_version"] == json!(100)).await;
    assert_eq!((node["lineage"].clone(), node["behind"].clone()), (json!(other), json!(true)));
    assert_eq!(node["adopted_from"], json!(null));

    ack(&tx, &snapshot, nonce).await;
    let node = fleet_node(&app, "dp-elsewhere", |n| n["acked_version"] == json!(head.version)).await;
    assert_eq!((node["lineage"].clone(), node["behind"].clone()), (json!(head.lineage), json!(false)));
    assert_eq!(node["adopted_from"]["reason"], json!("lineage_changed"), "{node}");
    assert_eq!(node["adopted_from"]["lineage"], json!(other));
    assert_eq!(node["adopted_from"]["version"], json!(100));
    let fleet = app.call("GET", "/admin/v1/fleet", None).await;
    assert_eq!(fleet.body["lineage"], json!(head.lineage));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_hello_with_a_malformed_lineage_or_version_is_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let running = start(&app).await;
    let cases = [
        (
            v1::Hello { node_id: "n".into(), held_version: 3, held_lineage: "not-a-uuid".into(), ..Default::default() },
            "hello.held_lineage must be empty or a UUID",
        ),
        (
            v1::Hello { node_id: "n".into(), held_version: u64::MAX, ..Default::default() },
            "hello.held_version is out of range",
        ),
    ];
    for (hello, message) in cases {
        let Err(status) = subscribe(&running.url, hello).await else { panic!("accepted: {message}") };
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, message));
    }
    let fleet = app.call("GET", "/admin/v1/fleet", None).await;
    assert_eq!(fleet.body["nodes"], json!([]));
}
