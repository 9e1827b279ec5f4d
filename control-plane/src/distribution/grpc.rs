//! The `ConfigDiscovery` gRPC service: per-node subscription streams with ACK/NACK, in the manner of xDS.
//!
//! A stream starts with the data plane's hello; the control plane then sends the latest snapshot (unless the node
//! already holds exactly it) and every later one. A node that holds a version of this store's lineage beyond the
//! store's counter makes the store move its counter past it ([`super::lineage`]). Each response carries a fresh
//! nonce. A version counts as applied only when ACKed; a NACK is logged with its errors and recorded in the fleet
//! view. Budget state ([`super::budgets`]) is forwarded on the same stream whenever it is recomputed, and the node's
//! rate-limit share ([`super::rate_shares`]) whenever its rank or the count of connected nodes changes. Health
//! reports from the node ([`crate::health`]) replace what it reported before.
//!
//! `ReportSpend` ingests a batch of spend events (validated by [`crate::spend::validate`]) in one transaction and
//! answers only after the commit.

use std::collections::VecDeque;
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
use super::lineage::{self, Holding, Standing};
use super::publisher::{Published, PublishedRx};
use super::rate_shares::{self, ConnectedRx};
use crate::health;
use crate::spend::{self, BatchError};
use crate::store::fleet::Adoption;
use crate::store::{ConfigHead, Store, StoreError};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Discovery {
    store: Store,
    published: PublishedRx,
    budgets: BudgetStateRx,
    /// Notified after an ingestion stored new events, so budget state is recomputed soon.
    spend_changed: Arc<Notify>,
    connected: ConnectedRx,
    /// Notified when a session starts or ends, so the connected nodes are read again at once.
    fleet_changed: Arc<Notify>,
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
    /// The connected nodes (every replica's), for rate-limit shares, and the signal that reads them again.
    pub connected: ConnectedRx,
    pub fleet_changed: Arc<Notify>,
}

pub fn service(
    store: Store,
    streams: Streams,
    replica: String,
    node_token: Option<&str>,
) -> InterceptedService<ConfigDiscoveryServer<Discovery>, NodeAuth> {
    let Streams { published, budgets, spend_changed, connected, fleet_changed } = streams;
    // Snapshots of 10k keys exceed tonic's 4 MiB default; so may a spend batch of 10k events.
    let discovery = Discovery { store, published, budgets, spend_changed, connected, fleet_changed, replica };
    let server =
        ConfigDiscoveryServer::new(discovery).max_decoding_message_size(64 << 20).max_encoding_message_size(256 << 20);
    InterceptedService::new(server, NodeAuth::new(node_token))
}

/// The one translation of a store failure into a gRPC status. UNAVAILABLE (the database is out of reach) tells the
/// data plane to send the same again later; anything else is INTERNAL, prefixed with what `refused` says.
fn store_status(error: StoreError, refused: &str) -> Status {
    match error {
        StoreError::Unavailable(_) => Status::unavailable(error.to_string()),
        StoreError::NotFound { .. }
        | StoreError::AlreadyExists { .. }
        | StoreError::Conflict(_)
        | StoreError::PreconditionFailed(_)
        | StoreError::DanglingReference(_)
        | StoreError::InvalidSpec { .. }
        | StoreError::InvalidInput { .. }
        | StoreError::Database(_)
        | StoreError::Internal(_) => Status::internal(format!("{refused}: {error}")),
    }
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
        let Ok(held_version) = i64::try_from(hello.held_version) else {
            return Err(Status::invalid_argument("hello.held_version is out of range"));
        };
        let held_lineage = match hello.held_lineage.as_str() {
            "" => None,
            text => Some(
                uuid::Uuid::try_parse(text)
                    .map_err(|_| Status::invalid_argument("hello.held_lineage must be empty or a UUID"))?,
            ),
        };
        let holding = (held_version > 0 || !hello.held_content_hash.is_empty()).then_some(Holding {
            lineage: held_lineage,
            version: held_version,
            content_hash: hello.held_content_hash,
        });
        self.store
            .node_connected(
                &hello.node_id,
                &self.replica,
                &hello.software_version,
                (held_version > 0).then_some((held_lineage, held_version)),
            )
            .await
            .map_err(|error| store_status(error, "the subscription could not be recorded"))?;
        tracing::info!(node = %hello.node_id, held_version, held_lineage = %hello.held_lineage,
            "data plane subscribed");
        self.fleet_changed.notify_one();
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            store: self.store.clone(),
            published: self.published.clone(),
            budgets: self.budgets.clone(),
            replica: self.replica.clone(),
            node_id: hello.node_id,
            holding,
            adoption: None,
            sent: VecDeque::new(),
            compared: None,
            connected: self.connected.clone(),
            fleet_changed: self.fleet_changed.clone(),
            rate_share: None,
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_spend(&self, request: Request<v1::SpendBatch>) -> Result<Response<v1::SpendAck>, Status> {
        let batch = request.into_inner();
        let validated = spend::validate(&batch, chrono::Utc::now()).map_err(|error| {
            crate::metrics::spend_batch("invalid", 0, std::iter::empty());
            match error {
                BatchError::NodeId | BatchError::TooLarge(_) => Status::invalid_argument(error.to_string()),
            }
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
                crate::metrics::spend_batch("failed", 0, std::iter::empty());
                store_status(error, "the spend ledger could not store this batch")
            })?;
        if outcome.accepted > 0 {
            self.spend_changed.notify_one();
        }
        // Lag of the events committed now; a batch delivered again (some events held already) adds none, as the
        // lag of which ones is not known.
        let committed = chrono::Utc::now();
        let fresh = if outcome.duplicates == 0 { validated.records.as_slice() } else { &[] };
        let lags = fresh.iter().map(|r| (committed - r.occurred_at).num_milliseconds() as f64 / 1000.0);
        crate::metrics::spend_batch("committed", outcome.accepted, lags);
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

/// A snapshot sent on a session.
#[derive(Clone)]
struct Sent {
    lineage: uuid::Uuid,
    version: i64,
    content_hash: String,
}

/// How many sent snapshots a session remembers for the ACKs that trail them.
const SENT_REMEMBERED: usize = 16;

struct Session {
    store: Store,
    published: PublishedRx,
    budgets: BudgetStateRx,
    replica: String,
    node_id: String,
    /// What the node holds: said in its hello, then each snapshot it acknowledges.
    holding: Option<Holding>,
    /// What the node held before it started taking this store's configuration, recorded in the fleet view with the
    /// ACK that completes it.
    adoption: Option<Adoption>,
    /// The snapshots last sent (the newest last), to know what an ACK acknowledges: ACKs may trail a burst.
    sent: VecDeque<Sent>,
    /// The published snapshot last compared with what the node holds, so that each is compared once.
    compared: Option<ConfigHead>,
    connected: ConnectedRx,
    fleet_changed: Arc<Notify>,
    /// The rate share last sent.
    rate_share: Option<v1::RateShare>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<v1::SubscribeRequest>,
        tx: mpsc::Sender<Result<v1::SubscribeResponse, Status>>,
    ) {
        let mut budgets_open = true;
        let mut connected_open = true;
        // The share as the nodes stand now (later changes wake the loop); this node is listed once its hello is
        // recorded and the fleet read again.
        self.connected.mark_changed();
        loop {
            // Send the latest snapshot if this node has not got it. An older version of the node's own lineage is
            // sent too (the node ignores it, saying so) while the store moves past the node's version.
            let latest: Option<Arc<Published>> = self.published.borrow_and_update().clone();
            if let Some(latest) = latest {
                self.compare(&latest).await;
                let already_held = self.holding.as_ref().is_some_and(|held| {
                    held.lineage == Some(latest.lineage)
                        && held.version == latest.version
                        && held.content_hash == latest.content_hash
                });
                let already_sent = self
                    .sent
                    .back()
                    .is_some_and(|sent| sent.lineage == latest.lineage && sent.version == latest.version);
                if !already_held && !already_sent {
                    if tx.send(Ok(response(&latest))).await.is_err() {
                        break;
                    }
                    if self.sent.len() == SENT_REMEMBERED {
                        self.sent.pop_front();
                    }
                    self.sent.push_back(Sent {
                        lineage: latest.lineage,
                        version: latest.version,
                        content_hash: latest.content_hash.clone(),
                    });
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
                changed = self.connected.changed(), if connected_open => {
                    if changed.is_err() {
                        connected_open = false; // the fleet reader stopped: this replica is shutting down
                        continue;
                    }
                    if !self.send_rate_share(&tx).await {
                        break;
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
        self.fleet_changed.notify_one();
        tracing::info!(node = %self.node_id, "data plane disconnected");
    }

    /// Send the node its rate share if it changed (and it is listed); `false` once the stream is closed.
    async fn send_rate_share(&mut self, tx: &mpsc::Sender<Result<v1::SubscribeResponse, Status>>) -> bool {
        let connected = self.connected.borrow_and_update().clone();
        let Some(share) = connected.and_then(|nodes| rate_shares::share_of(&self.node_id, &nodes)) else {
            return true;
        };
        if self.rate_share == Some(share) {
            return true;
        }
        tracing::debug!(node = %self.node_id, rank = share.rank, of = share.of, "rate share");
        self.rate_share = Some(share);
        let response = v1::SubscribeResponse {
            nonce: uuid::Uuid::new_v4().to_string(),
            kind: Some(v1::subscribe_response::Kind::RateShare(share)),
        };
        tx.send(Ok(response)).await.is_ok()
    }

    /// Compare what the node holds with the published snapshot (once per snapshot): a node holding a version of
    /// this store's lineage that the store has not reached means the store went back (restored from a backup), and
    /// the store moves its counter past it; a node holding another lineage will take this store's snapshot. Both
    /// are remembered for the fleet view.
    async fn compare(&mut self, latest: &Published) {
        let head = ConfigHead { lineage: latest.lineage, version: latest.version };
        if self.compared == Some(head) {
            return;
        }
        let Some(held) = self.holding.clone() else {
            self.compared = Some(head);
            return;
        };
        let skipped = if lineage::needs_skipped(Some(&held), head) {
            match self.store.skipped_versions(head.lineage).await {
                Ok(skipped) => skipped,
                Err(error) => {
                    tracing::error!(node = %self.node_id, %error,
                        "could not read the versions the store skipped; comparing again on the next wake-up");
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let standing = lineage::standing(Some(&held), head, &skipped);
        if let Some(adoption) = lineage::adoption(&held, standing) {
            self.adoption.get_or_insert(adoption);
        }
        match standing {
            Standing::Nothing | Standing::InLineage => {}
            Standing::Skipped => tracing::warn!(
                node = %self.node_id,
                lineage = %latest.lineage,
                held_version = held.version,
                version = latest.version,
                "the data plane holds a version the store skipped when it moved past the fleet after a restore (a \
                 configuration the store lost); it takes this store's"
            ),
            Standing::OtherLineage => tracing::warn!(
                node = %self.node_id,
                held_lineage = %held.lineage.map(|l| l.to_string()).unwrap_or_default(),
                held_version = held.version,
                lineage = %latest.lineage,
                version = latest.version,
                "the data plane holds a snapshot of another configuration lineage (another database); it takes this \
                 store's whatever the versions"
            ),
            Standing::StoreBehind => {
                let actor = format!("data-plane:{}", self.node_id);
                match self.store.advance_past(latest.lineage, held.version, &actor).await {
                    Ok(Some(advanced)) => tracing::warn!(
                        node = %self.node_id,
                        lineage = %latest.lineage,
                        held_version = held.version,
                        from = advanced.from,
                        to = advanced.to,
                        "the store's config version is behind a version of its lineage that a data plane holds (a \
                         database restored from a backup?): moved the counter past it, so the store's configuration \
                         is published again at a version every data plane takes"
                    ),
                    // Already moved, by another session or replica: the snapshot past it is on its way.
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(node = %self.node_id, %error,
                            "could not move the config version past the data plane's; retrying");
                        return; // compared again on the next wake-up
                    }
                }
            }
        }
        self.compared = Some(head);
    }

    async fn handle(&mut self, request: v1::SubscribeRequest) {
        let result = match request.kind {
            Some(v1::subscribe_request::Kind::Ack(ack)) => {
                let version = i64::try_from(ack.version).unwrap_or(i64::MAX);
                tracing::debug!(node = %self.node_id, version, "ACK");
                match self.sent.iter().rev().find(|sent| sent.version == version).cloned() {
                    Some(sent) => {
                        let adoption =
                            self.adoption.take_if(|adoption| lineage::completes(adoption, sent.lineage, version));
                        if let Some(adoption) = &adoption {
                            tracing::warn!(node = %self.node_id, lineage = %sent.lineage, version,
                                from_version = adoption.version, reason = adoption.reason.as_str(),
                                "the data plane took this store's configuration in place of what it held");
                        }
                        self.holding =
                            Some(Holding { lineage: Some(sent.lineage), version, content_hash: sent.content_hash });
                        self.store.node_acked(&self.node_id, sent.lineage, version, adoption).await
                    }
                    None => {
                        tracing::warn!(node = %self.node_id, version, "ACK of a version this session did not send");
                        Ok(())
                    }
                }
            }
            Some(v1::subscribe_request::Kind::Nack(nack)) => {
                let version = i64::try_from(nack.version).unwrap_or(i64::MAX);
                let errors: Vec<String> =
                    nack.errors.iter().map(|e| format!("{} {}: {}", e.resource, e.field, e.message)).collect();
                let error = errors.join("; ");
                tracing::warn!(node = %self.node_id, version, %error, "NACK: the data plane refused the snapshot");
                self.store.node_nacked(&self.node_id, version, &error).await
            }
            Some(v1::subscribe_request::Kind::HealthReport(report)) => {
                let validated = health::validate(&report);
                if validated.dropped > 0 || validated.trimmed > 0 {
                    tracing::warn!(node = %self.node_id, entries = report.entries.len(), dropped = validated.dropped,
                        trimmed = validated.trimmed, "health report out of bounds: stored what fits");
                }
                self.store.replace_node_health(&self.node_id, &validated.records).await
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
