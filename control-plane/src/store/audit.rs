//! Reading the audit log (rows are appended by [`super::Mutation::audit`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};

use super::Store;
use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub resource_kind: String,
    pub resource_name: String,
    pub config_version: i64,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<sqlx::types::Json<serde_json::Value>>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<sqlx::types::Json<serde_json::Value>>,
}

/// Filters for `GET /admin/v1/audit`; entries come newest first, paged with `before_id`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only entries with a smaller id (the previous page's `next_before_id`).
    pub before_id: Option<i64>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
}

impl Store {
    pub async fn audit_log(&self, filter: &AuditFilter, limit: i64) -> Result<Vec<AuditEntry>, ApiError> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, resource_kind, resource_name, config_version, request_id, before, after
             FROM audit_log
             WHERE ($1::TEXT IS NULL OR actor = $1) AND ($2::TEXT IS NULL OR action = $2)
               AND ($3::TEXT IS NULL OR resource_kind = $3) AND ($4::TEXT IS NULL OR resource_name = $4)
               AND ($5::TIMESTAMPTZ IS NULL OR at >= $5) AND ($6::TIMESTAMPTZ IS NULL OR at < $6)
               AND ($7::BIGINT IS NULL OR id < $7)
             ORDER BY id DESC LIMIT $8",
        )
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.kind)
        .bind(&filter.name)
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.before_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
