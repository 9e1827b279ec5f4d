//! Rate-limit shares: which data planes are connected, across every replica, so that each session can tell its data
//! plane its rank and their count (`RateShare`). Each data plane then enforces `floor(L / of) + (rank < L % of)` of
//! every limit `L`, and the shares sum to `L` (`docs/rate-limits.md`).
//!
//! Each replica reads the connected nodes from `data_plane_nodes` every `GATEWAY_RATE_SHARE_INTERVAL_MS`, and at once
//! when one of its own sessions starts or ends: a node connecting to another replica is seen within one interval.

use std::sync::Arc;
use std::time::Duration;

use gateway_proto::v1;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The connected nodes' ids, sorted (`None` until the first read).
pub type ConnectedRx = watch::Receiver<Option<Arc<Vec<String>>>>;

/// Read the connected nodes every `interval` and whenever `changed` is notified; publish them when they change.
pub fn spawn(store: Store, interval: Duration, changed: Arc<Notify>, shutdown: CancellationToken) -> ConnectedRx {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            match store.connected_nodes().await {
                Ok(nodes) => {
                    tx.send_if_modified(|current| {
                        let modified = current.as_deref() != Some(&nodes);
                        if modified {
                            *current = Some(Arc::new(nodes));
                        }
                        modified
                    });
                }
                Err(error) => tracing::warn!(error = %error.detailed(), "reading the connected data planes failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
                () = changed.notified() => {}
            }
        }
    });
    rx
}

/// `node`'s share message among `connected`, or `None` while it is not listed (its connection is not recorded yet,
/// or it just left).
pub fn share_of(node: &str, connected: &[String]) -> Option<v1::RateShare> {
    let rank = connected.iter().position(|n| n == node)?;
    Some(v1::RateShare { rank: u32::try_from(rank).ok()?, of: u32::try_from(connected.len()).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_ranks_by_its_place_among_the_connected() {
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(share_of("a", &nodes), Some(v1::RateShare { rank: 0, of: 3 }));
        assert_eq!(share_of("c", &nodes), Some(v1::RateShare { rank: 2, of: 3 }));
        assert_eq!(share_of("d", &nodes), None);
        assert_eq!(share_of("a", &[]), None);
    }
}
