//! Backend health as the data planes report it (`backend_health`): each node's report replaces its rows; reads per
//! node (the fleet view) and per backend (`/backends/{name}/health`), with the node's connection state.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use utoipa::ToSchema;

use super::Store;
use crate::health::HealthRecord;
use crate::store::error::StoreError;

/// One backend (or backend and model) as one data plane sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackendHealthView {
    /// The backend's name.
    pub backend: String,
    /// Set when the data plane tracks this backend per model.
    pub model: Option<String>,
    /// The breaker's state: closed | open | half_open.
    pub state: String,
    /// When it entered `state`.
    pub since: DateTime<Utc>,
    /// Why it is not closed, or why it last opened.
    pub reason: Option<String>,
    /// The last active health check (`null`: none configured, or not run yet).
    pub last_check: Option<HealthCheckView>,
    /// Observed latency (peak-EWMA of time to first byte), in milliseconds.
    pub latency_ms: Option<f64>,
    /// When the data plane reported it (each report replaces the node's previous one).
    pub reported_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthCheckView {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Whether it succeeded.
    pub ok: bool,
    /// What failed; `null` when ok.
    pub error: Option<String>,
}

/// One data plane's view of one backend, and whether that view is current (the node is connected).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeBackendHealth {
    /// The data plane that reported it.
    pub node_id: String,
    /// `false`: the node is gone and this is the last it reported (stale).
    pub connected: bool,
    /// The last message from that data plane.
    pub last_seen: DateTime<Utc>,
    #[serde(flatten)]
    pub health: BackendHealthView,
}

#[derive(FromRow)]
struct Row {
    node_id: String,
    connected: bool,
    last_seen: DateTime<Utc>,
    backend: String,
    model: String,
    state: String,
    since: DateTime<Utc>,
    reason: Option<String>,
    last_check_at: Option<DateTime<Utc>>,
    last_check_ok: Option<bool>,
    last_check_error: Option<String>,
    latency_ms: Option<f64>,
    reported_at: DateTime<Utc>,
}

impl Row {
    fn into_view(self) -> NodeBackendHealth {
        let last_check = self.last_check_at.map(|at| HealthCheckView {
            at,
            ok: self.last_check_ok.unwrap_or(false),
            error: self.last_check_error,
        });
        NodeBackendHealth {
            node_id: self.node_id,
            connected: self.connected,
            last_seen: self.last_seen,
            health: BackendHealthView {
                backend: self.backend,
                model: (!self.model.is_empty()).then_some(self.model),
                state: self.state,
                since: self.since,
                reason: self.reason,
                last_check,
                latency_ms: self.latency_ms,
                reported_at: self.reported_at,
            },
        }
    }
}

/// Every node's rows, or one backend's (`$1`), by node, then backend and model.
const SELECT: &str = "SELECT h.node_id, n.connected, n.last_seen, h.backend, h.model, h.state, h.since, h.reason,
                             h.last_check_at, h.last_check_ok, h.last_check_error, h.latency_ms, h.reported_at
                      FROM backend_health h JOIN data_plane_nodes n USING (node_id)
                      WHERE $1::TEXT IS NULL OR h.backend = $1
                      ORDER BY h.node_id, h.backend, h.model";

impl Store {
    /// Replace everything `node_id` reported before with `records` (validated by [`crate::health::validate`]), in
    /// one transaction; the report also counts as a sign of life (`last_seen`).
    pub async fn replace_node_health(&self, node_id: &str, records: &[HealthRecord]) -> Result<(), StoreError> {
        let column = |f: fn(&HealthRecord) -> String| records.iter().map(f).collect::<Vec<_>>();
        let backends = column(|r| r.backend.clone());
        let models = column(|r| r.model.clone());
        let states = column(|r| r.state.clone());
        let since: Vec<DateTime<Utc>> = records.iter().map(|r| r.since).collect();
        let reasons: Vec<Option<String>> = records.iter().map(|r| r.reason.clone()).collect();
        let check_at: Vec<Option<DateTime<Utc>>> =
            records.iter().map(|r| r.last_check.as_ref().map(|c| c.at)).collect();
        let check_ok: Vec<Option<bool>> = records.iter().map(|r| r.last_check.as_ref().map(|c| c.ok)).collect();
        let check_error: Vec<Option<String>> =
            records.iter().map(|r| r.last_check.as_ref().and_then(|c| c.error.clone())).collect();
        let latency: Vec<Option<f64>> = records.iter().map(|r| r.latency_ms).collect();

        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM backend_health WHERE node_id = $1").bind(node_id).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO backend_health (node_id, backend, model, state, since, reason, last_check_at, last_check_ok,
                                         last_check_error, latency_ms)
             SELECT $1, * FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TIMESTAMPTZ[], $6::TEXT[],
                                      $7::TIMESTAMPTZ[], $8::BOOLEAN[], $9::TEXT[], $10::DOUBLE PRECISION[])",
        )
        .bind(node_id)
        .bind(&backends)
        .bind(&models)
        .bind(&states)
        .bind(&since)
        .bind(&reasons)
        .bind(&check_at)
        .bind(&check_ok)
        .bind(&check_error)
        .bind(&latency)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE data_plane_nodes SET last_seen = now() WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every node's reported health, by node, then backend and model.
    pub async fn fleet_health(&self) -> Result<Vec<NodeBackendHealth>, StoreError> {
        self.health_rows(None).await
    }

    /// What each node reported of `backend`, by node, then model.
    pub async fn backend_health(&self, backend: &str) -> Result<Vec<NodeBackendHealth>, StoreError> {
        self.health_rows(Some(backend)).await
    }

    async fn health_rows(&self, backend: Option<&str>) -> Result<Vec<NodeBackendHealth>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(SELECT).bind(backend).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Row::into_view).collect())
    }
}
