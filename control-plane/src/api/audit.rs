//! `GET /admin/v1/audit`: who changed what, newest first; `GET /admin/v1/audit/verify`: the hash chain checked.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::extract::ApiQuery;
use super::resources::page_limit;
use crate::auth::{Authorized, may};
use crate::error::ApiError;
use crate::store::audit::{AuditEntry, AuditFilter, AuditVerification};

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// Entries, newest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    pub next_before_id: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    _: Authorized<may::ReadAudit>,
    ApiQuery(filter): ApiQuery<AuditFilter>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_limit(filter.limit)?;
    let items = state.store.audit_log(&filter, limit).await?;
    let next_before_id = if items.len() as i64 == limit { items.last().map(|e| e.id) } else { None };
    Ok(Json(AuditPage { items, next_before_id }))
}

/// Every row matches its hash and links to the one before it, or the first that does not.
pub async fn verify(
    State(state): State<AppState>,
    _: Authorized<may::ReadAudit>,
) -> Result<Json<AuditVerification>, ApiError> {
    Ok(Json(state.store.verify_audit_log().await?))
}
