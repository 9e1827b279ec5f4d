//! `RateShare` on the subscription stream: each data plane learns its rank among the connected nodes and their
//! count, and again when a node comes or goes (`docs/rate-limits.md`).

use std::time::Duration;

use gateway_proto::v1;
use sqlx::PgPool;

use crate::common::TestApp;
use crate::spend_grpc::{NODE_TOKEN, client, start};

/// A subscription of `node`: its sender (dropping it ends the stream) and its responses.
async fn subscribe(
    url: &str,
    node: &str,
) -> (tokio::sync::mpsc::Sender<v1::SubscribeRequest>, tonic::Streaming<v1::SubscribeResponse>) {
    let mut client = client(url, Some(NODE_TOKEN)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = v1::Hello { node_id: node.into(), ..Default::default() };
    tx.send(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::Hello(hello)) }).await.unwrap();
    let stream = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, stream)
}

/// The next rate share on `stream` (bounded, so a broken stream fails rather than hangs).
async fn next_share(stream: &mut tonic::Streaming<v1::SubscribeResponse>) -> (u32, u32) {
    let wait = async {
        loop {
            let response = stream.message().await.unwrap().expect("stream open");
            if let Some(v1::subscribe_response::Kind::RateShare(share)) = response.kind {
                return (share.rank, share.of);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await.expect("a rate share within 60 s")
}

#[sqlx::test(migrations = "../migrations")]
async fn each_node_learns_its_rank_among_the_connected_and_again_when_one_leaves(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let running = start(&app).await;
    let (_b_tx, mut b) = subscribe(&running.url, "dp-b").await;
    assert_eq!(next_share(&mut b).await, (0, 1), "alone");
    let (a_tx, mut a) = subscribe(&running.url, "dp-a").await;
    assert_eq!(next_share(&mut a).await, (0, 2), "ranked by node id");
    assert_eq!(next_share(&mut b).await, (1, 2));
    drop((a_tx, a));
    assert_eq!(next_share(&mut b).await, (0, 1), "the share grows back when a node leaves");
}
