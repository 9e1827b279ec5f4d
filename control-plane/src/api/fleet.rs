//! `GET /admin/v1/fleet`: which version each data plane runs, who is behind, who refused what, and who gave up a
//! snapshot of another lineage (or one the store had not reached) for this store's configuration, and how each sees
//! its backends' health.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::store::fleet::{AdoptedFrom, NodeState};
use crate::store::health::BackendHealthView;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FleetNode {
    #[serde(flatten)]
    pub node: NodeState,
    /// Not running the store's current version: behind it, or holding another lineage.
    pub behind: bool,
    /// The last time the node gave up what it held for this store's configuration (`null`: never).
    pub adopted_from: Option<AdoptedFrom>,
    /// The node's last health report: each backend's (or backend and model's) breaker state, last health check and
    /// latency. Stale when `connected` is false: the last the node reported before it went.
    pub backends: Vec<BackendHealthView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Fleet {
    /// The store's current config version.
    pub config_version: i64,
    /// The store's configuration lineage: `config_version` counts in it (docs/lineage.md).
    pub lineage: uuid::Uuid,
    /// Every data plane ever connected, by node id.
    pub nodes: Vec<FleetNode>,
}

pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<Fleet>, ApiError> {
    principal.require(Action::ReadConfig)?;
    let head = state.store.config_head().await?;
    let mut health: HashMap<String, Vec<BackendHealthView>> = HashMap::new();
    for row in state.store.fleet_health().await? {
        health.entry(row.node_id).or_default().push(row.health);
    }
    let nodes = state
        .store
        .fleet()
        .await?
        .into_iter()
        .map(|node| FleetNode {
            behind: node.lineage != Some(head.lineage) || node.acked_version.is_none_or(|v| v < head.version),
            adopted_from: node.adopted_from(),
            backends: health.remove(&node.node_id).unwrap_or_default(),
            node,
        })
        .collect();
    Ok(Json(Fleet { config_version: head.version, lineage: head.lineage, nodes }))
}
