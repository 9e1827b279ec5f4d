//! Reading the audit log (rows are appended by [`super::Mutation::audit`]) and verifying its hash chain.
//!
//! The chain is kept by the database (migration `20261202000001_audit_integrity.sql`): rows are append-only, and each
//! carries `row_hash` = SHA-256(previous row's hash || the row's canonical text). Verification recomputes every link
//! with the same SQL functions the insert trigger uses, so there is one definition of a row's hash.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};

use super::Store;
use crate::store::error::StoreError;

#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
pub struct AuditEntry {
    /// Ascending with time; `before_id` pages by it.
    pub id: i64,
    /// When the change was committed.
    pub at: DateTime<Utc>,
    /// The principal that made it.
    pub actor: String,
    /// `create`, `update`, `delete`, `revoke`, ...
    pub action: String,
    /// `backend`, `model`, `alias`, `route_policy`, `tool_schema`, `tool_policy`, `guardrail`, `budget`, `api_key`,
    /// `principal`.
    pub resource_kind: String,
    /// The resource's name.
    pub resource_name: String,
    /// The config version the change produced.
    pub config_version: i64,
    /// The admin request's `x-request-id`.
    pub request_id: Option<String>,
    /// The resource as read before the change (absent on create); secrets appear only as their source.
    #[schema(value_type = Option<Object>)]
    pub before: Option<sqlx::types::Json<serde_json::Value>>,
    /// The resource as read after the change (absent on delete).
    #[schema(value_type = Option<Object>)]
    pub after: Option<sqlx::types::Json<serde_json::Value>>,
    /// This row's link in the hash chain (hex SHA-256); the latest row's is the head `GET /audit/verify` reports.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
}

/// The outcome of `GET /admin/v1/audit/verify`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditVerification {
    /// True when every row matches its hash and links to the row before it.
    pub intact: bool,
    /// How many rows were checked.
    pub rows_checked: i64,
    /// The newest row and its hash. Record them elsewhere: a chain can only show that rows were removed from its
    /// end by comparison with a head recorded earlier.
    pub last_id: Option<i64>,
    /// The newest row's hash (hex SHA-256).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub head_hash: Option<String>,
    /// The first broken link, by id; absent when intact.
    pub first_broken: Option<BrokenLink>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BrokenLink {
    /// The row at fault: changed after it was written (`row_hash`), or not linked to the row before it
    /// (`prev_hash`: a row before it was removed, or the chain was rewritten from there).
    pub id: i64,
    /// `row_hash` or `prev_hash`.
    pub field: String,
    /// What is wrong, in words.
    pub reason: String,
    /// What the column holds, and what it should hold (hex SHA-256).
    pub stored: String,
    /// What the column should hold (hex SHA-256).
    pub expected: String,
}

#[derive(FromRow)]
struct LinkRow {
    id: i64,
    row_hash: Vec<u8>,
    recomputed: Vec<u8>,
    prev_hash: Vec<u8>,
    expected_prev: Vec<u8>,
}

/// Filters for `GET /admin/v1/audit`; entries come newest first, paged with `before_id`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// `create`, `update`, `delete`, `revoke`, `rotate_token`.
    pub action: Option<String>,
    /// A resource kind: `backend`, `api_key`, `principal`, ...
    pub kind: Option<String>,
    pub name: Option<String>,
    /// RFC 3339, inclusive.
    #[serde(default, deserialize_with = "crate::rfc3339::optional")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// RFC 3339, exclusive.
    #[serde(default, deserialize_with = "crate::rfc3339::optional")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<DateTime<Utc>>,
    /// Only entries with a smaller id (the previous page's `next_before_id`).
    pub before_id: Option<i64>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl Store {
    pub async fn audit_log(&self, filter: &AuditFilter, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, resource_kind, resource_name, config_version, request_id, before, after,
                    encode(row_hash, 'hex') AS hash
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

    /// Recompute every link of the chain, oldest first, from one snapshot of the log.
    pub async fn verify_audit_log(&self) -> Result<AuditVerification, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let broken: Option<LinkRow> = sqlx::query_as(
            "WITH links AS (
                 SELECT a.id, a.row_hash, audit_row_hash(a.prev_hash, a) AS recomputed, a.prev_hash,
                        coalesce(lag(a.row_hash) OVER (ORDER BY a.id), audit_genesis_hash()) AS expected_prev
                 FROM audit_log a
             )
             SELECT id, row_hash, recomputed, prev_hash, expected_prev FROM links
             WHERE row_hash IS DISTINCT FROM recomputed OR prev_hash IS DISTINCT FROM expected_prev
             ORDER BY id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let (rows_checked, last_id, head_hash): (i64, Option<i64>, Option<String>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_log), last.id, encode(last.row_hash, 'hex')
             FROM (SELECT 1) AS one LEFT JOIN (SELECT id, row_hash FROM audit_log ORDER BY id DESC LIMIT 1) AS last ON TRUE",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let first_broken = broken.map(|row| {
            if row.row_hash != row.recomputed {
                BrokenLink {
                    id: row.id,
                    field: "row_hash".to_owned(),
                    reason: "the row does not match its hash: it was changed after it was written".to_owned(),
                    stored: hex::encode(&row.row_hash),
                    expected: hex::encode(&row.recomputed),
                }
            } else {
                BrokenLink {
                    id: row.id,
                    field: "prev_hash".to_owned(),
                    reason: "the row does not link to the row before it: a row before it was removed, or the chain \
                             was rewritten from here"
                        .to_owned(),
                    stored: hex::encode(&row.prev_hash),
                    expected: hex::encode(&row.expected_prev),
                }
            }
        });
        Ok(AuditVerification { intact: first_broken.is_none(), rows_checked, last_id, head_hash, first_broken })
    }
}
