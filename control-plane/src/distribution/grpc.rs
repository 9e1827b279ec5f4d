//! The `ConfigDiscovery` gRPC service: per-node subscription streams with ACK/NACK, in the manner of xDS.
//!
//! A stream starts with the data plane's hello; the control plane then sends the latest snapshot (unless the node
//! already holds exactly it) and every later one. Each response carries a fresh nonce. A version counts as applied
//! only when ACKed; a NACK is logged with its errors and recorded in the fleet view. Budget state
//! ([`super::budgets`]) is forwarded on the same stream whenever it is recomputed.
//!
//! `ReportSpend` ingests a batch of spend events (validated by [`crate::spend::validate`]) in one transaction and
//! answers only after the commit.

use std::sync::Arc;
use std::time::Duration;

use gateway_proto::v1;
use gateway_proto::v1::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use super::budgets::BudgetStateRx;
use super::publisher::{Published, PublishedRx};
use crate::error::ApiError;
use crate::spend::{self, BatchError};
use crate::store::Store;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Discovery {
    store: Store,
    published: PublishedRx,
    budgets: BudgetStateRx,
    /// Notified after an ingestion stored new events, so budget state is recomputed soon.
    spend_changed: Arc<Notify>,
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

/// What the service streams: snapshots, and budget state with the signal that recomputes it.
pub struct Streams {
    pub published: PublishedRx,
    pub budgets: BudgetStateRx,
    pub spend_changed: Arc<Notify>,
}

pub fn service(
    store: Store,
    streams: Streams,
    replica: String,
    node_token: Option<&str>,
) -> InterceptedService<ConfigDiscoveryServer<Discovery>, NodeAuth> {
    let Streams { published, budgets, spend_changed } = streams;
    // Snapshots of 10k keys exceed tonic's 4 MiB default; so may a spend batch of 10k events.
    let server = ConfigDiscoveryServer::new(Discovery { store, published, budgets, spend_changed, replica })
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
            budgets: self.budgets.clone(),
            replica: self.replica.clone(),
            node_id: hello.node_id,
            held: hello.held_version.try_into().ok().zip(Some(hello.held_content_hash)),
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_spend(&self, request: Request<v1::SpendBatch>) -> Result<Response<v1::SpendAck>, Status> {
        let batch = request.into_inner();
        let validated = spend::validate(&batch, chrono::Utc::now()).map_err(|error| match error {
            BatchError::NodeId | BatchError::TooLarge(_) => Status::invalid_argument(error.to_string()),
        })?;
        for rejected in &validated.rejected {
            tracing::warn!(node = %batch.node_id, batch = %batch.batch_id, index = rejected.index, id = %rejected.id,
                field = %rejected.field, reason = %rejected.reason, "spend event rejected and quarantined");
        }
        let outcome = self
            .store
            .ingest_spend(&batch.node_id, &batch.batch_id, &validated.records, &validated.rejected)
            .await
            .map_err(|error| {
                // Nothing is stored: the data plane keeps the batch. UNAVAILABLE (the database is out of reach): send it
                // again later. INTERNAL (the database refused this batch): the data plane splits it to isolate the event.
                tracing::warn!(node = %batch.node_id, batch = %batch.batch_id, error = %error.detailed(),
                    "spend ingestion failed");
                match error {
                    ApiError::Unavailable(_) => Status::unavailable(error.to_string()),
                    other => Status::internal(format!("the spend ledger could not store this batch: {other}")),
                }
            })?;
        if outcome.accepted > 0 {
            self.spend_changed.notify_one();
        }
        tracing::debug!(node = %batch.node_id, batch = %batch.batch_id, accepted = outcome.accepted,
            duplicates = outcome.duplicates, rejected = validated.rejected.len(), "spend batch committed");
        Ok(Response::new(v1::SpendAck {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            rejected: validated
                .rejected
                .into_iter()
                .map(|r| v1::RejectedEvent { id: r.id, index: r.index, field: r.field, reason: r.reason })
                .collect(),
            committed_unix_us: outcome.committed_unix_us,
        }))
    }
}

struct Session {
    store: Store,
    published: PublishedRx,
    budgets: BudgetStateRx,
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
        let mut budgets_open = true;
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
                changed = self.budgets.changed(), if budgets_open => {
                    if changed.is_err() {
                        budgets_open = false; // the budget task stopped: this replica is shutting down
                        continue;
                    }
                    let state = self.budgets.borrow_and_update().clone();
                    if let Some(state) = state {
                        let response = v1::SubscribeResponse {
                            nonce: uuid::Uuid::new_v4().to_string(),
                            kind: Some(v1::subscribe_response::Kind::BudgetState((*state).clone())),
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            break;
                        }
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
            tracing::warn!(node = %self.node_id, error = %error.detailed(), "could not record the disconnection");
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
            tracing::warn!(node = %self.node_id, error = %error.detailed(), "could not record the node's answer");
        }
    }
}
