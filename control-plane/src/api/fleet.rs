//! `GET /admin/v1/fleet`: which version each data plane runs, who is behind, who refused what.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::store::fleet::NodeState;

#[derive(Debug, Serialize, ToSchema)]
pub struct FleetNode {
    #[serde(flatten)]
    pub node: NodeState,
    /// Connected and not yet running the current version.
    pub behind: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Fleet {
    pub config_version: i64,
    pub nodes: Vec<FleetNode>,
}

pub async fn list(State(state): State<AppState>, principal: Principal) -> Result<Json<Fleet>, ApiError> {
    principal.require(Action::ReadConfig)?;
    let config_version = state.store.config_version().await?;
    let nodes = state
        .store
        .fleet()
        .await?
        .into_iter()
        .map(|node| FleetNode { behind: node.acked_version.is_none_or(|v| v < config_version), node })
        .collect();
    Ok(Json(Fleet { config_version, nodes }))
}
