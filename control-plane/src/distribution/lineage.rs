//! Configuration lineage on the control plane's side: how the snapshot a data plane holds stands against the
//! store's, and when the store must move its counter past the fleet (docs/lineage.md). Pure: no IO.
//!
//! A version orders configurations only within one lineage (one database's history, kept by backups). A node holding
//! another lineage takes the store's snapshot whatever the versions (the data plane decides that itself); a node
//! holding a version of the store's own lineage that the store has not reached means the store went back in time
//! (a restored backup), and then the store moves its counter past the node's version, so its configuration is
//! published anew at a version every data plane takes.

use uuid::Uuid;

use crate::store::ConfigHead;
use crate::store::fleet::{Adoption, AdoptionReason};

/// What a data plane holds: said in its hello, then each snapshot it acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// `None`: a snapshot from before lineages (or an older data plane that does not say).
    pub lineage: Option<Uuid>,
    pub version: i64,
    pub content_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Holds nothing yet.
    Nothing,
    /// A version of the store's lineage the store has reached: the ordinary case.
    InLineage,
    /// A version of the store's lineage above the store's counter: the store was restored from a backup (or
    /// otherwise went back). The store must move its counter past it.
    StoreBehind,
    /// A version of the store's lineage that the store skipped when it moved its counter past another node after a
    /// restore: the node holds a configuration of the lost timeline, and takes the store's as one that was behind.
    Skipped,
    /// Another lineage, or none: the node takes the store's snapshot whatever the versions.
    OtherLineage,
}

/// How `held` stands against the store at `store`, whose counter skipped the versions strictly inside each of the
/// `skipped` ranges (`Store::skipped_versions`).
pub(crate) fn standing(held: Option<&Holding>, store: ConfigHead, skipped: &[(i64, i64)]) -> Standing {
    match held {
        None => Standing::Nothing,
        Some(held) if held.lineage != Some(store.lineage) => Standing::OtherLineage,
        Some(held) if held.version > store.version => Standing::StoreBehind,
        Some(held) if skipped.iter().any(|&(from, to)| from < held.version && held.version < to) => Standing::Skipped,
        Some(_) => Standing::InLineage,
    }
}

/// Whether telling [`Standing::Skipped`] from [`Standing::InLineage`] needs the store's skipped ranges: only a node
/// behind the store's counter, in its lineage, can hold a skipped version.
pub(crate) fn needs_skipped(held: Option<&Holding>, store: ConfigHead) -> bool {
    held.is_some_and(|held| held.lineage == Some(store.lineage) && held.version < store.version)
}

/// What to record in the fleet view once the node acknowledges one of the store's snapshots, given how what it
/// held stood.
pub fn adoption(held: &Holding, standing: Standing) -> Option<Adoption> {
    let reason = match standing {
        Standing::OtherLineage => AdoptionReason::LineageChanged,
        Standing::StoreBehind | Standing::Skipped => AdoptionReason::StoreBehind,
        Standing::Nothing | Standing::InLineage => return None,
    };
    Some(Adoption { lineage: held.lineage, version: held.version, reason })
}

/// Whether acknowledging `version` of `lineage` completes `adoption`: the node now holds the store's lineage, past
/// the version it held.
pub fn completes(adoption: &Adoption, lineage: Uuid, version: i64) -> bool {
    match adoption.reason {
        AdoptionReason::LineageChanged => adoption.lineage != Some(lineage),
        AdoptionReason::StoreBehind => adoption.lineage == Some(lineage) && version > adoption.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);

    fn held(lineage: Option<Uuid>, version: i64) -> Holding {
        Holding { lineage, version, content_hash: "h".into() }
    }

    fn check(held: Option<Holding>, store_version: i64, expected: Standing) {
        let store = ConfigHead { lineage: STORE, version: store_version };
        assert_eq!(standing(held.as_ref(), store, &[]), expected, "{held:?} against {store:?}");
    }

    #[test]
    fn standing_of_what_a_node_holds() {
        check(None, 5, Standing::Nothing);
        check(Some(held(Some(STORE), 5)), 5, Standing::InLineage);
        check(Some(held(Some(STORE), 3)), 5, Standing::InLineage);
        check(Some(held(Some(STORE), 0)), 0, Standing::InLineage);
        // A restored backup: same lineage, the node is ahead of the counter.
        check(Some(held(Some(STORE), 6)), 5, Standing::StoreBehind);
        // A fresh database: another lineage, whatever the versions.
        check(Some(held(Some(OTHER), 12)), 1, Standing::OtherLineage);
        check(Some(held(Some(OTHER), 1)), 12, Standing::OtherLineage);
        check(Some(held(Some(OTHER), 5)), 5, Standing::OtherLineage);
        // A snapshot persisted before lineages existed.
        check(Some(held(None, 12)), 1, Standing::OtherLineage);
    }

    #[test]
    fn a_version_the_store_skipped_is_from_a_lost_timeline() {
        let store = ConfigHead { lineage: STORE, version: 10 };
        // Restored at 5, moved past a node holding 9: versions 6 to 9 never existed in the store's history.
        let skipped = [(5, 10)];
        for version in 6..=9 {
            let held = held(Some(STORE), version);
            assert!(needs_skipped(Some(&held), store));
            assert_eq!(standing(Some(&held), store, &skipped), Standing::Skipped, "held {version}");
        }
        for version in [3, 5] {
            assert_eq!(standing(Some(&held(Some(STORE), version)), store, &skipped), Standing::InLineage);
        }
        assert!(!needs_skipped(Some(&held(Some(STORE), 10)), store), "level with the store");
        assert!(!needs_skipped(Some(&held(Some(OTHER), 7)), store), "another lineage");
        let adopted = adoption(&held(Some(STORE), 9), Standing::Skipped).unwrap();
        assert_eq!(adopted.reason, AdoptionReason::StoreBehind);
        assert!(completes(&adopted, STORE, 10));
    }

    #[test]
    fn adoptions_are_recorded_only_when_the_node_gave_something_up() {
        let from_other = held(Some(OTHER), 12);
        let changed = adoption(&from_other, Standing::OtherLineage).unwrap();
        assert_eq!(changed, Adoption { lineage: Some(OTHER), version: 12, reason: AdoptionReason::LineageChanged });
        assert!(completes(&changed, STORE, 1), "any version of the store's lineage completes it");
        assert!(!completes(&changed, OTHER, 13), "still the old lineage");

        let restored = held(Some(STORE), 9);
        let behind = adoption(&restored, Standing::StoreBehind).unwrap();
        assert_eq!(behind.reason, AdoptionReason::StoreBehind);
        assert!(!completes(&behind, STORE, 9), "the version the node held is not past it");
        assert!(completes(&behind, STORE, 10));

        assert_eq!(adoption(&restored, Standing::InLineage), None);
        assert_eq!(adoption(&restored, Standing::Nothing), None);
    }
}
