//! The `ConfigDiscovery` gRPC service: per-node subscription streams with ACK/NACK, in the manner of xDS.
//!
//! A stream starts with the data plane's hello; the control plane then sends the latest snapshot (unless the node
//! already holds exactly it) and every later one. Each response carries a fresh nonce. A version counts as applied
//! only when ACKed; a NACK is logged with its errors and recorded in the fleet view.

use std::sync::Arc;
use std::time::Duration;

use gateway_proto::v1;
use gateway_proto::v1::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use super::publisher::{Published, PublishedRx};
use crate::store::Store;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Discovery {
    store: Store,
    published: PublishedRx,
    replica: String,
}

/// Checks the node token on every call. Without a configured token every call is refused: nodes are never
/// trusted by default.
#[derive(Clone)]
pub struct NodeAuth {
    expected: Option<[u8; 32]>,
}

impl NodeAuth {
    pub fn new(token: Option<&str>) -> NodeAuth {
        NodeAuth { expected: token.filter(|t| !t.is_empty()).map(|t| Sha256::digest(t.as_bytes()).into()) }
    }
}

impl tonic::service::Interceptor for NodeAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = self.expected else {
            return Err(Status::unauthenticated("this control plane has no GATEWAY_NODE_TOKEN configured"));
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing node token (authorization: Bearer <GATEWAY_NODE_TOKEN>)")
            })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare digests in constant time.
        let difference = digest.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(Status::unauthenticated("invalid node token"));
        }
        Ok(request)
    }
}

pub fn service(
    store: Store,
    published: PublishedRx,
    replica: String,
    node_token: Option<&str>,
) -> InterceptedService<ConfigDiscoveryServer<Discovery>, NodeAuth> {
    // Snapshots of 10k keys exceed tonic's 4 MiB default.
    let server = ConfigDiscoveryServer::new(Discovery { store, published, replica })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(256 << 20);
    InterceptedService::new(server, NodeAuth::new(node_token))
}

fn response(published: &Published) -> v1::SubscribeResponse {
    v1::SubscribeResponse {
        nonce: uuid::Uuid::new_v4().to_string(),
        kind: Some(v1::subscribe_response::Kind::Snapshot(published.snapshot.clone())),
    }
}

#[tonic::async_trait]
impl ConfigDiscovery for Discovery {
    type SubscribeStream = ReceiverStream<Result<v1::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message of a subscription must be a hello"));
        };
        if hello.node_id.trim().is_empty() || hello.node_id.len() > 256 {
            return Err(Status::invalid_argument("hello.node_id must be 1 to 256 characters"));
        }
        let held = (hello.held_version > 0).then(|| i64::try_from(hello.held_version).unwrap_or(i64::MAX));
        self.store
            .node_connected(&hello.node_id, &self.replica, &hello.software_version, held)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(node = %hello.node_id, held_version = hello.held_version, "data plane subscribed");
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            store: self.store.clone(),
            published: self.published.clone(),
            replica: self.replica.clone(),
            node_id: hello.node_id,
            held: hello.held_version.try_into().ok().zip(Some(hello.held_content_hash)),
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_spend(&self, _request: Request<v1::SpendBatch>) -> Result<Response<v1::SpendAck>, Status> {
        Err(Status::unimplemented("spend ingestion is not implemented by this control plane yet"))
    }
}

struct Session {
    store: Store,
    published: PublishedRx,
    replica: String,
    node_id: String,
    /// The version and hash the node said it holds.
    held: Option<(i64, String)>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<v1::SubscribeRequest>,
        tx: mpsc::Sender<Result<v1::SubscribeResponse, Status>>,
    ) {
        let mut sent: Option<i64> = None;
        loop {
            // Send the latest snapshot if this node has not got it.
            let latest: Option<Arc<Published>> = self.published.borrow_and_update().clone();
            if let Some(latest) = latest {
                let already_held =
                    self.held.as_ref().is_some_and(|(v, h)| *v == latest.version && *h == latest.content_hash);
                if sent.is_none_or(|s| s < latest.version) && !already_held {
                    if tx.send(Ok(response(&latest))).await.is_err() {
                        break;
                    }
                    sent = Some(latest.version);
                }
            }
            tokio::select! {
                changed = self.published.changed() => {
                    if changed.is_err() {
                        break; // the publisher stopped: this replica is shutting down
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %self.node_id, %status, "subscription ended");
                        break;
                    }
                },
                () = tx.closed() => break,
            }
        }
        if let Err(error) = self.store.node_disconnected(&self.node_id, &self.replica).await {
            tracing::warn!(node = %self.node_id, %error, "could not record the disconnection");
        }
        tracing::info!(node = %self.node_id, "data plane disconnected");
    }

    async fn handle(&mut self, request: v1::SubscribeRequest) {
        let result = match request.kind {
            Some(v1::subscribe_request::Kind::Ack(ack)) => {
                let version = i64::try_from(ack.version).unwrap_or(i64::MAX);
                tracing::debug!(node = %self.node_id, version, "ACK");
                self.store.node_acked(&self.node_id, version).await
            }
            Some(v1::subscribe_request::Kind::Nack(nack)) => {
                let version = i64::try_from(nack.version).unwrap_or(i64::MAX);
                let errors: Vec<String> =
                    nack.errors.iter().map(|e| format!("{} {}: {}", e.resource, e.field, e.message)).collect();
                let error = errors.join("; ");
                tracing::warn!(node = %self.node_id, version, %error, "NACK: the data plane refused the snapshot");
                self.store.node_nacked(&self.node_id, version, &error).await
            }
            Some(v1::subscribe_request::Kind::Hello(_)) | None => {
                tracing::warn!(node = %self.node_id, "unexpected message on an established subscription");
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::warn!(node = %self.node_id, %error, "could not record the node's answer");
        }
    }
}
