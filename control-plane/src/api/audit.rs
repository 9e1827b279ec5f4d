//! `GET /admin/v1/audit`: who changed what, newest first.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::extract::ApiQuery;
use super::resources::page_limit;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::store::audit::{AuditEntry, AuditFilter};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    pub next_before_id: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> Result<Json<AuditPage>, ApiError> {
    principal.require(Action::ReadAudit)?;
    let limit = page_limit(filter.limit)?;
    let items = state.store.audit_log(&filter, limit).await?;
    let next_before_id = if items.len() as i64 == limit { items.last().map(|e| e.id) } else { None };
    Ok(Json(AuditPage { items, next_before_id }))
}
