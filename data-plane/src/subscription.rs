//! The subscription to the control plane: hello, then compile / swap / persist / ACK each snapshot, or NACK it and
//! keep the last good one; the health board is reported on the same stream (`health::report`). Reconnects with
//! jittered exponential backoff, from 100 ms to 15 s, reset by the first good message of a connection.
//!
//! Versions compare only within one configuration lineage (the control plane's store, [`decide`]): a snapshot of
//! another lineage is taken whatever its version, an older one of the served lineage is ignored (docs/lineage.md).

use std::sync::Arc;

use gateway_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::control::connection::{Backoff, ClientError, ControlPlaneConnection};
use crate::control::state::Current;
use crate::control::{persist, snapshot};
use crate::health::board::HealthBoard;
use crate::health::report;
use crate::ratelimit::limiter::RateLimiter;
use crate::spend::budgets::BudgetLedger;

pub struct Subscription {
    pub connection: ControlPlaneConnection,
    pub node_id: String,
    pub state_dir: std::path::PathBuf,
    /// Receives the budget state that streams on the subscription.
    pub budgets: Arc<BudgetLedger>,
    /// The backends' health, reported to the control plane on the subscription.
    pub health: Arc<HealthBoard>,
    /// Takes this data plane's share of every rate limit from `RateShare` messages (kept while disconnected).
    pub rates: Arc<RateLimiter>,
}

impl Subscription {
    /// Subscribe until `shutdown`, reconnecting as needed.
    pub async fn run(self, current: Arc<Current>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = self.session(&current, &mut backoff) => result,
            };
            match result {
                Ok(()) => tracing::warn!("the control plane ended the subscription; reconnecting"),
                Err(error) => tracing::warn!(%error, "subscription failed; serving the last good snapshot"),
            }
            let delay = backoff.next();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(&self, current: &Current, backoff: &mut Backoff) -> Result<(), ClientError> {
        let channel = self.connection.endpoint()?.connect().await?;
        let mut client = self.connection.client(channel)?;

        let (tx, rx) = mpsc::channel(8);
        let held = current.load();
        let hello = v1::Hello {
            node_id: self.node_id.clone(),
            held_version: held.as_ref().map_or(0, |s| s.version),
            held_content_hash: held.as_ref().map(|s| s.content_hash.clone()).unwrap_or_default(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            held_lineage: held.as_ref().map(|s| s.lineage.clone()).unwrap_or_default(),
        };
        // The channel has room: this cannot fail before the stream starts.
        let _ = tx.send(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::Hello(hello)) }).await;
        let mut responses = client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(control_plane = %self.connection.url, "subscribed");
        // The health board follows the hello on this stream; the reports stop with the session.
        let pace = || tokio::time::sleep(report::REPORT_INTERVAL);
        let _reporting = AbortOnDrop(tokio::spawn(report::report(self.health.subscribe(), tx.clone(), pace)));
        let mut first = true;
        // Whether this control plane offered an older version of the served lineage: its store went back (restored
        // from a backup) and will publish past the served version.
        let mut store_behind = false;
        while let Some(response) = responses.message().await? {
            if std::mem::take(&mut first) {
                backoff.reset();
            }
            let snapshot = match response.kind {
                Some(v1::subscribe_response::Kind::Snapshot(snapshot)) => snapshot,
                Some(v1::subscribe_response::Kind::BudgetState(state)) => {
                    let (served, none) = (current.load(), Default::default());
                    let budgets = served.as_ref().map_or(&none, |s| &s.config.budgets);
                    self.budgets.apply_state(&state, budgets, chrono::Utc::now());
                    continue;
                }
                Some(v1::subscribe_response::Kind::RateShare(share)) => {
                    if self.rates.set_share(share.rank, share.of) {
                        tracing::info!(rank = share.rank, of = share.of, "rate limit share");
                    } else {
                        tracing::warn!(
                            rank = share.rank,
                            of = share.of,
                            "ignoring a rate share whose rank is not below its count"
                        );
                    }
                    continue;
                }
                None => continue,
            };
            let answer = self.apply(current, snapshot, response.nonce, &mut store_behind).await;
            if let Some(answer) = answer
                && tx.send(answer).await.is_err()
            {
                break;
            }
        }
        Ok(())
    }

    /// Compile and swap in `snapshot`; the ACK or NACK to send, or nothing for an older snapshot of the served
    /// lineage. `store_behind` remembers, for this connection, that the control plane's store was behind.
    async fn apply(
        &self,
        current: &Current,
        snapshot: v1::Snapshot,
        nonce: String,
        store_behind: &mut bool,
    ) -> Option<v1::SubscribeRequest> {
        let version = snapshot.version;
        let lineage = snapshot.lineage.clone();
        let served = current.load();
        let held = served.as_ref().map(|s| (s.lineage.clone(), s.version));
        let decision = decide(held.as_ref().map(|(l, v)| (l.as_str(), *v)), (&lineage, version));
        let (held_lineage, held_version) = held.unwrap_or_default();
        if decision == Decision::Ignore {
            *store_behind = true;
            tracing::warn!(%lineage, version, held_version,
                "ignoring a snapshot older than the one served, of the same configuration lineage: the control \
                 plane's store is behind this data plane (restored from a backup?) and should publish past the \
                 served version");
            return None;
        }
        let compiled = tokio::task::spawn_blocking(move || snapshot::compile(&snapshot).map(|c| (c, snapshot))).await;
        let kind = match compiled {
            Ok(Ok((compiled, snapshot))) => {
                current.swap(compiled);
                match decision {
                    Decision::Adopt => tracing::warn!(%lineage, version, %held_lineage, held_version,
                        "the control plane serves another configuration lineage (a new or replaced database): took \
                         its snapshot in place of the held one, whatever the versions"),
                    Decision::Take if std::mem::take(store_behind) => tracing::warn!(%lineage, version, held_version,
                        "the control plane, whose store was behind this data plane, published its configuration past \
                         the held version: took it (any change made after its backup is gone)"),
                    Decision::Take | Decision::Ignore => tracing::info!(%lineage, version, "snapshot applied"),
                }
                let dir = self.state_dir.clone();
                match tokio::task::spawn_blocking(move || persist::write(&dir, &snapshot)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::error!(%error, "could not persist the snapshot"),
                    Err(error) => tracing::error!(%error, "could not persist the snapshot"),
                }
                v1::subscribe_request::Kind::Ack(v1::Ack { version, nonce })
            }
            Ok(Err(errors)) => {
                let text: Vec<String> =
                    errors.iter().map(|e| format!("{} {}: {}", e.resource, e.field, e.message)).collect();
                tracing::error!(version, errors = %text.join("; "), "snapshot refused; serving the last good one");
                v1::subscribe_request::Kind::Nack(v1::Nack { version, nonce, errors })
            }
            Err(error) => v1::subscribe_request::Kind::Nack(v1::Nack {
                version,
                nonce,
                errors: vec![v1::Rejection {
                    resource: "snapshot".to_owned(),
                    field: String::new(),
                    message: format!("compilation panicked: {error}"),
                }],
            }),
        };
        Some(v1::SubscribeRequest { kind: Some(kind) })
    }
}

/// Aborts its task when dropped: a session's helpers end with it, whichever way it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What to do with a snapshot the control plane offers, given the lineage and version served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is served yet, or a version of the served lineage at least as new.
    Take,
    /// Another lineage (a new or replaced database), or a served snapshot that has none (from before lineages):
    /// versions do not compare, the control plane's configuration wins.
    Adopt,
    /// An older version of the served lineage: a data plane never regresses within a lineage. A control plane whose
    /// store went back moves its counter past the served version instead.
    Ignore,
}

/// Decide on a snapshot of `offered` (lineage, version) while serving `served`. An offered snapshot without a
/// lineage comes from a control plane that predates lineages: versions are compared as they were then.
pub fn decide(served: Option<(&str, u64)>, offered: (&str, u64)) -> Decision {
    let Some((served_lineage, served_version)) = served else {
        return Decision::Take;
    };
    let (offered_lineage, offered_version) = offered;
    if !offered_lineage.is_empty() && offered_lineage != served_lineage {
        Decision::Adopt
    } else if offered_version < served_version {
        Decision::Ignore
    } else {
        Decision::Take
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0193a7a4-0000-7000-8000-00000000000a";
    const B: &str = "0193a7a4-0000-7000-8000-00000000000b";

    fn check(served: Option<(&str, u64)>, offered: (&str, u64), expected: Decision) {
        assert_eq!(decide(served, offered), expected, "serving {served:?}, offered {offered:?}");
    }

    #[test]
    fn versions_compare_only_within_a_lineage() {
        check(None, (A, 1), Decision::Take);
        check(None, ("", 1), Decision::Take);
        check(Some((A, 5)), (A, 6), Decision::Take);
        check(Some((A, 5)), (A, 5), Decision::Take);
        check(Some((A, 5)), (A, 4), Decision::Ignore);
        // A fresh database: lower version, another lineage.
        check(Some((A, 12)), (B, 1), Decision::Adopt);
        check(Some((A, 1)), (B, 12), Decision::Adopt);
        check(Some((A, 5)), (B, 5), Decision::Adopt);
        // A snapshot persisted before lineages existed gives way to any lineage.
        check(Some(("", 12)), (A, 1), Decision::Adopt);
        // A control plane that predates lineages: versions compare as before.
        check(Some((A, 12)), ("", 1), Decision::Ignore);
        check(Some((A, 12)), ("", 13), Decision::Take);
        check(Some(("", 12)), ("", 11), Decision::Ignore);
    }
}
