//! Admin principals: bearer tokens with a role, stored as SHA-256.

use chrono::{DateTime, Utc};
use policy_engine::config::validate_name;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Store, already_exists, sql};
use crate::auth::{ADMIN_TOKEN_PREFIX, Principal, Role, generate_secret, hash_secret};
use crate::store::error::StoreError;

/// The principal that `GATEWAY_ADMIN_TOKEN` authenticates as.
pub(crate) const BOOTSTRAP_PRINCIPAL: &str = "bootstrap";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    #[schema(schema_with = policy_engine::fields::schema::name)]
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PrincipalView {
    /// The principal's stable id.
    pub id: Uuid,
    /// Unique name; the audit log's `actor`.
    pub name: String,
    /// `admin`, `author` or `auditor`.
    pub role: Role,
    /// When it was revoked (absent: active).
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The principal that created it.
    pub created_by: String,
}

/// A principal as returned by create: the only time its token is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedPrincipal {
    #[serde(flatten)]
    pub principal: PrincipalView,
    /// Its bearer token for the admin API. Shown only here: store it now.
    pub token: String,
}

#[derive(FromRow)]
struct Row {
    id: Uuid,
    name: String,
    role: String,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    created_by: String,
}

const COLUMNS: &str = "id, name, role, revoked_at, created_at, created_by";

impl TryFrom<Row> for PrincipalView {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        Ok(PrincipalView {
            id: row.id,
            name: row.name,
            role: row.role.parse().map_err(StoreError::Internal)?,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
            created_by: row.created_by,
        })
    }
}

fn view_json(view: &PrincipalView) -> serde_json::Value {
    serde_json::to_value(view).unwrap_or_default()
}

impl Store {
    /// The principal a bearer token belongs to, if it is known and not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT name, role FROM admin_principals WHERE token_sha256 = $1 AND revoked_at IS NULL")
                .bind(hash_secret(token))
                .fetch_optional(self.pool())
                .await?;
        row.map(|(name, role)| Ok((name, role.parse().map_err(StoreError::Internal)?))).transpose()
    }

    /// Make `token` the bootstrap admin's token (creating the principal, or rotating its token).
    pub async fn ensure_bootstrap_admin(&self, token: &str) -> Result<(), StoreError> {
        let hash = hash_secret(token);
        let current: Option<String> =
            sqlx::query_scalar("SELECT token_sha256 FROM admin_principals WHERE name = $1 AND revoked_at IS NULL")
                .bind(BOOTSTRAP_PRINCIPAL)
                .fetch_optional(self.pool())
                .await?;
        if current.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
        let mut mutation = self.begin("system", None).await?;
        let config = mutation.config.clone();
        let row: Row = sqlx::query_as(sql(format!(
            "INSERT INTO admin_principals (id, name, role, token_sha256, created_by) VALUES ($1, $2, 'admin', $3, 'system')
             ON CONFLICT (name) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, role = 'admin', revoked_at = NULL
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(BOOTSTRAP_PRINCIPAL)
        .bind(&hash)
        .fetch_one(mutation.conn())
        .await?;
        let view = PrincipalView::try_from(row)?;
        let action = if current.is_some() { "rotate_token" } else { "create" };
        mutation.audit(action, "principal", BOOTSTRAP_PRINCIPAL, None, Some(view_json(&view))).await?;
        mutation.commit(config).await?;
        Ok(())
    }

    pub async fn create_principal(&self, by: &Principal, spec: PrincipalSpec) -> Result<CreatedPrincipal, StoreError> {
        validate_name(&spec.name)
            .map_err(|message| StoreError::InvalidInput { message, field: Some("name".to_owned()) })?;
        let mut mutation = self.begin(&by.name, by.request_id.as_deref()).await?;
        let config = mutation.config.clone();
        let token = generate_secret(ADMIN_TOKEN_PREFIX);
        let row: Row = sqlx::query_as(sql(format!(
            "INSERT INTO admin_principals (id, name, role, token_sha256, created_by) VALUES ($1, $2, $3, $4, $5)
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(&spec.name)
        .bind(spec.role.as_str())
        .bind(hash_secret(&token))
        .bind(&by.name)
        .fetch_one(mutation.conn())
        .await
        .map_err(already_exists("principal", &spec.name))?;
        let principal = PrincipalView::try_from(row)?;
        mutation.audit("create", "principal", &spec.name, None, Some(view_json(&principal))).await?;
        mutation.commit(config).await?;
        Ok(CreatedPrincipal { principal, token })
    }

    pub async fn list_principals(&self) -> Result<Vec<PrincipalView>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM admin_principals ORDER BY name")))
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(PrincipalView::try_from).collect()
    }

    pub async fn get_principal(&self, name: &str) -> Result<PrincipalView, StoreError> {
        let row: Option<Row> = sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM admin_principals WHERE name = $1")))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(PrincipalView::try_from)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound { kind: "principal", name: name.to_owned() })
    }

    /// Revoke a principal's token. The row stays, so the audit log's actors stay resolvable. The last admin that
    /// can still sign in is never revoked (nobody could manage principals after it), and neither is the bootstrap
    /// principal while `GATEWAY_ADMIN_TOKEN` restores it at every start (`bootstrap_from_env`).
    pub async fn revoke_principal(
        &self,
        by: &Principal,
        name: &str,
        bootstrap_from_env: bool,
    ) -> Result<PrincipalView, StoreError> {
        if bootstrap_from_env && name == BOOTSTRAP_PRINCIPAL {
            return Err(StoreError::Conflict(format!(
                "principal {BOOTSTRAP_PRINCIPAL:?} is restored from GATEWAY_ADMIN_TOKEN at every start; unset that \
                 variable on every control plane replica to retire it"
            )));
        }
        let mut mutation = self.begin(&by.name, by.request_id.as_deref()).await?;
        let config = mutation.config.clone();
        // Locking every active admin row makes two admins revoking each other at once take turns.
        let active_admins: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM admin_principals WHERE role = 'admin' AND revoked_at IS NULL ORDER BY name FOR UPDATE",
        )
        .fetch_all(mutation.conn())
        .await?;
        if active_admins == [name] {
            return Err(StoreError::Conflict(format!(
                "principal {name:?} is the last admin that can sign in; create another admin before revoking it"
            )));
        }
        let before: Option<Row> =
            sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM admin_principals WHERE name = $1 FOR UPDATE")))
                .bind(name)
                .fetch_optional(mutation.conn())
                .await?;
        let before = before
            .map(PrincipalView::try_from)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound { kind: "principal", name: name.to_owned() })?;
        let row: Row = sqlx::query_as(sql(format!(
            "UPDATE admin_principals SET revoked_at = COALESCE(revoked_at, now()) WHERE name = $1 RETURNING {COLUMNS}"
        )))
        .bind(name)
        .fetch_one(mutation.conn())
        .await?;
        let after = PrincipalView::try_from(row)?;
        mutation.audit("revoke", "principal", name, Some(view_json(&before)), Some(view_json(&after))).await?;
        mutation.commit(config).await?;
        Ok(after)
    }
}
