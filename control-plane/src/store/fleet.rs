//! The snapshot's source rows and the fleet's state (`data_plane_nodes`).

use chrono::{DateTime, Utc};
use policy_engine::config::ConfigSet;
use serde::Serialize;
use sqlx::FromRow;
use utoipa::ToSchema;

use super::Store;
use crate::error::ApiError;

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
    pub node_id: String,
    /// The control-plane replica it is (or was last) connected to.
    pub replica: String,
    pub software_version: String,
    pub connected: bool,
    pub connected_since: Option<DateTime<Utc>>,
    pub last_seen: DateTime<Utc>,
    pub acked_version: Option<i64>,
    pub acked_at: Option<DateTime<Utc>>,
    pub last_nack_version: Option<i64>,
    pub last_nack_error: Option<String>,
    pub last_nack_at: Option<DateTime<Utc>>,
}

impl Store {
    /// The version, configuration and keys, read from one consistent snapshot of the database.
    pub async fn snapshot_source(&self) -> Result<(i64, ConfigSet, Vec<KeyRecord>), ApiError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&mut *tx).await?;
        let config = match self.cache.get(version) {
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
        Ok((version, config, keys))
    }

    pub async fn node_connected(
        &self,
        node_id: &str,
        replica: &str,
        software_version: &str,
        held_version: Option<i64>,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO data_plane_nodes (node_id, replica, software_version, connected, connected_since, last_seen,
                                           acked_version, acked_at)
             VALUES ($1, $2, $3, TRUE, now(), now(), $4, CASE WHEN $4 IS NULL THEN NULL ELSE now() END)
             ON CONFLICT (node_id) DO UPDATE SET replica = $2, software_version = $3, connected = TRUE,
                 connected_since = now(), last_seen = now(),
                 acked_version = COALESCE($4, data_plane_nodes.acked_version),
                 acked_at = CASE WHEN $4 IS NULL THEN data_plane_nodes.acked_at ELSE now() END",
        )
        .bind(node_id)
        .bind(replica)
        .bind(software_version)
        .bind(held_version)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn node_acked(&self, node_id: &str, version: i64) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE data_plane_nodes SET acked_version = $2, acked_at = now(), last_seen = now() WHERE node_id = $1",
        )
        .bind(node_id)
        .bind(version)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn node_nacked(&self, node_id: &str, version: i64, error: &str) -> Result<(), ApiError> {
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
    pub async fn node_disconnected(&self, node_id: &str, replica: &str) -> Result<(), ApiError> {
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
    pub async fn replica_started(&self, replica: &str) -> Result<(), ApiError> {
        sqlx::query("UPDATE data_plane_nodes SET connected = FALSE WHERE replica = $1")
            .bind(replica)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn fleet(&self) -> Result<Vec<NodeState>, ApiError> {
        Ok(sqlx::query_as("SELECT * FROM data_plane_nodes ORDER BY node_id").fetch_all(self.pool()).await?)
    }
}
