//! The snapshot's source rows and the fleet's state (`data_plane_nodes`).

use chrono::{DateTime, Utc};
use policy_engine::config::ConfigSet;
use serde::Serialize;
use sqlx::FromRow;
use utoipa::ToSchema;

use super::{ConfigHead, Store};
use crate::store::error::StoreError;

/// An API key as the data planes need it: the hash, never the secret.
#[derive(Debug, Clone, FromRow)]
pub struct KeyRecord {
    pub id: uuid::Uuid,
    pub name: String,
    pub secret_sha256: String,
    pub team: Option<String>,
    pub tags: Vec<String>,
    pub allowed_aliases: Vec<String>,
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One data plane in the fleet view.
#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
pub struct NodeState {
    /// The data plane's name (`GATEWAY_NODE_ID`).
    pub node_id: String,
    /// The control-plane replica it is (or was last) connected to.
    pub replica: String,
    /// The data plane's version.
    pub software_version: String,
    /// Connected to some replica now.
    pub connected: bool,
    /// When the current connection began (absent: not connected).
    pub connected_since: Option<DateTime<Utc>>,
    /// The last message from it.
    pub last_seen: DateTime<Utc>,
    /// The version the node holds: said in its hello, or acknowledged since.
    pub acked_version: Option<i64>,
    /// When it acknowledged `acked_version`.
    pub acked_at: Option<DateTime<Utc>>,
    /// The configuration lineage of the snapshot the node holds (`None`: unknown, or a snapshot from before
    /// lineages). `acked_version` counts in it.
    pub lineage: Option<uuid::Uuid>,
    /// The last version it refused (absent: none).
    pub last_nack_version: Option<i64>,
    /// Why it refused it.
    pub last_nack_error: Option<String>,
    /// When it refused it.
    pub last_nack_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub adopted_from_lineage: Option<uuid::Uuid>,
    #[serde(skip)]
    pub adopted_from_version: Option<i64>,
    #[serde(skip)]
    pub adopted_reason: Option<String>,
    #[serde(skip)]
    pub adopted_at: Option<DateTime<Utc>>,
}

/// Why a node gave up the snapshot it held for this store's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdoptionReason {
    /// It held a snapshot of another lineage (another database, or one from before lineages).
    LineageChanged,
    /// It held a version of this lineage the store had not reached (the store was restored from a backup): the
    /// store moved its counter past it and the node took the store's configuration at the new version.
    StoreBehind,
}

impl AdoptionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AdoptionReason::LineageChanged => "lineage_changed",
            AdoptionReason::StoreBehind => "store_behind",
        }
    }

    fn parse(text: &str) -> Option<AdoptionReason> {
        [AdoptionReason::LineageChanged, AdoptionReason::StoreBehind].into_iter().find(|r| r.as_str() == text)
    }
}

/// What a node held before it took this store's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adoption {
    pub lineage: Option<uuid::Uuid>,
    pub version: i64,
    pub reason: AdoptionReason,
}

/// The last adoption, as the fleet view shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdoptedFrom {
    /// The lineage it held (`null`: a snapshot from before lineages).
    pub lineage: Option<uuid::Uuid>,
    /// The version it held.
    pub version: i64,
    /// `lineage_changed` or `store_behind`.
    pub reason: AdoptionReason,
    /// When it acknowledged this store's snapshot.
    pub at: Option<DateTime<Utc>>,
}

impl NodeState {
    pub fn adopted_from(&self) -> Option<AdoptedFrom> {
        Some(AdoptedFrom {
            lineage: self.adopted_from_lineage,
            version: self.adopted_from_version?,
            reason: AdoptionReason::parse(self.adopted_reason.as_deref()?)?,
            at: self.adopted_at,
        })
    }
}

impl Store {
    /// The version and its lineage, configuration and keys, read from one consistent snapshot of the database.
    pub async fn snapshot_source(&self) -> Result<(ConfigHead, ConfigSet, Vec<KeyRecord>), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let head: ConfigHead =
            sqlx::query_as("SELECT lineage, version FROM config_version").fetch_one(&mut *tx).await?;
        let config = match self.cache.get(head) {
            Some(config) => (*config).clone(),
            None => super::resources::load_config(&mut tx).await?,
        };
        let keys: Vec<KeyRecord> = sqlx::query_as(
            "SELECT id, name, secret_sha256, team, tags, allowed_aliases, rpm_limit, tpm_limit, expires_at, revoked_at
             FROM api_keys ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((head, config, keys))
    }

    /// A node subscribed, holding `held` (its lineage and version) or nothing.
    pub async fn node_connected(
        &self,
        node_id: &str,
        replica: &str,
        software_version: &str,
        held: Option<(Option<uuid::Uuid>, i64)>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO data_plane_nodes (node_id, replica, software_version, connected, connected_since, last_seen,
                                           acked_version, acked_at, lineage)
             VALUES ($1, $2, $3, TRUE, now(), now(), $4, CASE WHEN $4 IS NULL THEN NULL ELSE now() END, $5)
             ON CONFLICT (node_id) DO UPDATE SET replica = $2, software_version = $3, connected = TRUE,
                 connected_since = now(), last_seen = now(),
                 acked_version = COALESCE($4, data_plane_nodes.acked_version),
                 acked_at = CASE WHEN $4 IS NULL THEN data_plane_nodes.acked_at ELSE now() END,
                 lineage = CASE WHEN $4 IS NULL THEN data_plane_nodes.lineage ELSE $5 END",
        )
        .bind(node_id)
        .bind(replica)
        .bind(software_version)
        .bind(held.map(|(_, version)| version))
        .bind(held.and_then(|(lineage, _)| lineage))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A node acknowledged `version` of `lineage`, giving up what `adoption` says it held before, if anything.
    pub async fn node_acked(
        &self,
        node_id: &str,
        lineage: uuid::Uuid,
        version: i64,
        adoption: Option<Adoption>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE data_plane_nodes SET acked_version = $2, acked_at = now(), last_seen = now(), lineage = $3,
                 adopted_from_lineage = CASE WHEN $5::TEXT IS NULL THEN adopted_from_lineage ELSE $4 END,
                 adopted_from_version = CASE WHEN $5::TEXT IS NULL THEN adopted_from_version ELSE $6 END,
                 adopted_reason = COALESCE($5, adopted_reason),
                 adopted_at = CASE WHEN $5::TEXT IS NULL THEN adopted_at ELSE now() END
             WHERE node_id = $1",
        )
        .bind(node_id)
        .bind(version)
        .bind(lineage)
        .bind(adoption.and_then(|a| a.lineage))
        .bind(adoption.map(|a| a.reason.as_str()))
        .bind(adoption.map(|a| a.version))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn node_nacked(&self, node_id: &str, version: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE data_plane_nodes SET last_nack_version = $2, last_nack_error = $3, last_nack_at = now(),
                                         last_seen = now()
             WHERE node_id = $1",
        )
        .bind(node_id)
        .bind(version)
        .bind(error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Mark a node disconnected, unless it has meanwhile reconnected to another replica.
    pub async fn node_disconnected(&self, node_id: &str, replica: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE data_plane_nodes SET connected = FALSE, last_seen = now() WHERE node_id = $1 AND replica = $2",
        )
        .bind(node_id)
        .bind(replica)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A replica's connections end with it: at start it marks the nodes it had as disconnected.
    pub async fn replica_started(&self, replica: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE data_plane_nodes SET connected = FALSE WHERE replica = $1")
            .bind(replica)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The ids of the nodes connected to any replica, sorted: their positions are the data planes' rate-limit ranks.
    pub async fn connected_nodes(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT node_id FROM data_plane_nodes WHERE connected ORDER BY node_id COLLATE \"C\"")
            .fetch_all(self.pool())
            .await?)
    }

    /// The connected nodes counted by software version and held configuration version (for `/metrics`).
    pub async fn connected_by_version(&self) -> Result<Vec<(String, Option<i64>, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT software_version, acked_version, count(*) FROM data_plane_nodes WHERE connected \
             GROUP BY software_version, acked_version ORDER BY software_version, acked_version",
        )
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn fleet(&self) -> Result<Vec<NodeState>, StoreError> {
        Ok(sqlx::query_as("SELECT * FROM data_plane_nodes ORDER BY node_id").fetch_all(self.pool()).await?)
    }
}
