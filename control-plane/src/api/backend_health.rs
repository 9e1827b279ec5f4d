//! `GET /admin/v1/backends/{name}/health`: one backend as each data plane sees it (breaker state and since when,
//! last health check, latency), from the nodes' health reports; stale entries say so (`connected: false`).

use axum::Json;
use axum::extract::State;
use policy_engine::config::BackendSpec;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::extract::ApiPath;
use crate::auth::{Authorized, may};
use crate::error::ApiError;
use crate::store::health::NodeBackendHealth;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BackendHealth {
    /// The backend's name.
    pub backend: String,
    /// One entry per data plane that reported the backend (per model, when it tracks the backend per model), by
    /// node id. Empty: no data plane has reported it.
    pub nodes: Vec<NodeBackendHealth>,
}

pub async fn read(
    State(state): State<AppState>,
    _principal: Authorized<may::ReadConfig>,
    ApiPath(name): ApiPath,
) -> Result<Json<BackendHealth>, ApiError> {
    // A backend that is not configured is a 404, even if some data plane still reports it.
    state.store.get::<BackendSpec>(&name).await?;
    let nodes = state.store.backend_health(&name).await?;
    Ok(Json(BackendHealth { backend: name, nodes }))
}
