//! Virtual API keys for applications: generated here, shown once, stored as a SHA-256.

use chrono::{DateTime, Utc};
use policy_engine::config::{BudgetScope, validate_name};
use policy_engine::fields::{MAX_LABEL_CHARS, fits, schema};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Store, already_exists, sql};
use crate::auth::{API_KEY_PREFIX, generate_secret, hash_secret};
use crate::store::error::StoreError;
use policy_engine::validate::SpecError;

/// The writable fields of an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[schema(schema_with = schema::name)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = schema::optional_label)]
    pub team: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schema::labels)]
    pub tags: Vec<String>,
    /// Aliases (or models) this key may use; empty means any. Each must exist.
    #[serde(default)]
    #[schema(schema_with = schema::names)]
    pub allowed_aliases: Vec<String>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub rpm_limit: Option<i32>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub tpm_limit: Option<i64>,
    /// RFC 3339.
    #[serde(default, deserialize_with = "crate::rfc3339::optional")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as shown to readers: never its secret.
#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
pub struct KeyView {
    /// The key's stable id (spend events carry it as `key_id`).
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    /// The team it belongs to (budgets and spend group by it; policies read `key.team`).
    pub team: Option<String>,
    /// Free-form labels policies read as `key.tags`.
    pub tags: Vec<String>,
    /// Aliases (or models) it may use; empty: any.
    pub allowed_aliases: Vec<String>,
    /// Requests per minute it may make (absent: unlimited).
    pub rpm_limit: Option<i32>,
    /// Tokens per minute it may use (absent: unlimited).
    pub tpm_limit: Option<i64>,
    /// When it stops working (absent: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked (absent: active).
    pub revoked_at: Option<DateTime<Utc>>,
    /// The config version of its last write: the `ETag`, what `If-Match` takes.
    pub revision: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
    /// The principal that created it.
    pub created_by: String,
    /// The principal that last wrote it.
    pub updated_by: String,
}

/// A key as returned by create: the only time the secret is ever shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The key itself (`Authorization: Bearer` on the data plane). Shown only here: store it now.
    pub secret: String,
}

const COLUMNS: &str = "id, name, prefix, team, tags, allowed_aliases, rpm_limit, tpm_limit, expires_at, revoked_at, \
                       revision, created_at, updated_at, created_by, updated_by";

fn validate(spec: &KeySpec, known_alias: impl Fn(&str) -> bool) -> Result<(), StoreError> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| errors.push(SpecError { field: field.to_owned(), message });
    if let Err(message) = validate_name(&spec.name) {
        fail("name", message);
    }
    // The team is indexed: a B-tree entry holds a few kilobytes at most, so labels are bounded.
    let label = |text: &str| {
        if text.trim().is_empty() {
            Some("must not be empty".to_owned())
        } else if !fits(text, MAX_LABEL_CHARS) {
            Some(format!("must be at most {MAX_LABEL_CHARS} characters"))
        } else {
            None
        }
    };
    if let Some(message) = spec.team.as_deref().and_then(label) {
        fail("team", message);
    }
    // Policies iterate over a key's tags: their count bounds what that costs.
    if spec.tags.len() > policy_engine::cel_limits::MAX_COLLECTION_ENTRIES {
        fail("tags", format!("at most {} tags", policy_engine::cel_limits::MAX_COLLECTION_ENTRIES));
    }
    for (i, tag) in spec.tags.iter().enumerate() {
        if let Some(message) = label(tag) {
            fail(&format!("tags[{i}]"), message);
        }
    }
    for (i, alias) in spec.allowed_aliases.iter().enumerate() {
        if !known_alias(alias) {
            fail(&format!("allowed_aliases[{i}]"), format!("alias or model {alias:?} does not exist"));
        }
    }
    if spec.rpm_limit.is_some_and(|l| l <= 0) {
        fail("rpm_limit", "must be greater than zero".to_owned());
    }
    if spec.tpm_limit.is_some_and(|l| l <= 0) {
        fail("tpm_limit", "must be greater than zero".to_owned());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StoreError::InvalidSpec { kind: "api_key", name: spec.name.clone(), errors })
    }
}

fn view_json(key: &KeyView) -> serde_json::Value {
    serde_json::to_value(key).unwrap_or_default()
}

impl Store {
    pub async fn create_key(
        &self,
        actor: &str,
        request_id: Option<&str>,
        spec: KeySpec,
    ) -> Result<CreatedKey, StoreError> {
        let mut mutation = self.begin(actor, request_id).await?;
        let config = mutation.config.clone();
        validate(&spec, |alias| config.has_alias_or_model(alias))?;
        let secret = generate_secret(API_KEY_PREFIX);
        let prefix: String = secret.chars().take(API_KEY_PREFIX.len() + 8).collect();
        let key: KeyView = sqlx::query_as(sql(format!(
            "INSERT INTO api_keys (id, name, prefix, secret_sha256, team, tags, allowed_aliases, rpm_limit, tpm_limit,
                                   expires_at, revision, created_by, updated_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(&spec.name)
        .bind(&prefix)
        .bind(hash_secret(&secret))
        .bind(&spec.team)
        .bind(&spec.tags)
        .bind(&spec.allowed_aliases)
        .bind(spec.rpm_limit)
        .bind(spec.tpm_limit)
        .bind(spec.expires_at)
        .bind(mutation.version)
        .bind(actor)
        .fetch_one(mutation.conn())
        .await
        .map_err(already_exists("api_key", &spec.name))?;
        mutation.audit("create", "api_key", &spec.name, None, Some(view_json(&key))).await?;
        mutation.commit(config).await?;
        Ok(CreatedKey { key, secret })
    }

    pub async fn get_key(&self, name: &str) -> Result<KeyView, StoreError> {
        sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM api_keys WHERE name = $1")))
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "api_key", name: name.to_owned() })
    }

    pub async fn list_keys(
        &self,
        team: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<KeyView>, StoreError> {
        Ok(sqlx::query_as(sql(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE ($1::TEXT IS NULL OR team = $1) AND ($2::TEXT IS NULL OR name > $2)
             ORDER BY name LIMIT $3"
        )))
        .bind(team)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Replace a key's writable fields; its secret does not change.
    pub async fn update_key(
        &self,
        actor: &str,
        request_id: Option<&str>,
        name: &str,
        expected_revision: Option<i64>,
        spec: KeySpec,
    ) -> Result<KeyView, StoreError> {
        if spec.name != name {
            return Err(StoreError::InvalidInput {
                message: format!("the body names {:?} but the URL names {name:?}; key names cannot change", spec.name),
                field: Some("name".to_owned()),
            });
        }
        let mut mutation = self.begin(actor, request_id).await?;
        let config = mutation.config.clone();
        validate(&spec, |alias| config.has_alias_or_model(alias))?;
        let before = self.lock_key(&mut mutation, name).await?;
        super::resources::check_revision("api_key", name, before.revision, expected_revision)?;
        let key: KeyView = sqlx::query_as(sql(format!(
            "UPDATE api_keys SET team = $2, tags = $3, allowed_aliases = $4, rpm_limit = $5, tpm_limit = $6,
                                 expires_at = $7, revision = $8, updated_at = now(), updated_by = $9
             WHERE name = $1 RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(&spec.team)
        .bind(&spec.tags)
        .bind(&spec.allowed_aliases)
        .bind(spec.rpm_limit)
        .bind(spec.tpm_limit)
        .bind(spec.expires_at)
        .bind(mutation.version)
        .bind(actor)
        .fetch_one(mutation.conn())
        .await?;
        mutation.audit("update", "api_key", name, Some(view_json(&before)), Some(view_json(&key))).await?;
        mutation.commit(config).await?;
        Ok(key)
    }

    /// Revoke a key: it stays listed (spend stays attributable) but never authenticates again.
    pub async fn revoke_key(&self, actor: &str, request_id: Option<&str>, name: &str) -> Result<KeyView, StoreError> {
        let mut mutation = self.begin(actor, request_id).await?;
        let config = mutation.config.clone();
        let before = self.lock_key(&mut mutation, name).await?;
        let key: KeyView = sqlx::query_as(sql(format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()), revision = $2, updated_at = now(),
                                 updated_by = $3
             WHERE name = $1 RETURNING {COLUMNS}"
        )))
        .bind(name)
        .bind(mutation.version)
        .bind(actor)
        .fetch_one(mutation.conn())
        .await?;
        mutation.audit("revoke", "api_key", name, Some(view_json(&before)), Some(view_json(&key))).await?;
        mutation.commit(config).await?;
        Ok(key)
    }

    pub async fn delete_key(
        &self,
        actor: &str,
        request_id: Option<&str>,
        name: &str,
        expected_revision: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut mutation = self.begin(actor, request_id).await?;
        let config = mutation.config.clone();
        let before = self.lock_key(&mut mutation, name).await?;
        super::resources::check_revision("api_key", name, before.revision, expected_revision)?;
        let budgets: Vec<&str> = config
            .budgets
            .values()
            .filter(|b| matches!(&b.scope, BudgetScope::Key { key } if key == name))
            .map(|b| b.name.as_str())
            .collect();
        if !budgets.is_empty() {
            return Err(StoreError::Conflict(format!(
                "cannot delete api_key {name:?}: still referenced by budget(s) {}",
                budgets.join(", ")
            )));
        }
        sqlx::query("DELETE FROM api_keys WHERE name = $1").bind(name).execute(mutation.conn()).await?;
        mutation.audit("delete", "api_key", name, Some(view_json(&before)), None).await?;
        mutation.commit(config).await?;
        Ok(())
    }

    async fn lock_key(&self, mutation: &mut super::Mutation, name: &str) -> Result<KeyView, StoreError> {
        sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM api_keys WHERE name = $1 FOR UPDATE")))
            .bind(name)
            .fetch_optional(mutation.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "api_key", name: name.to_owned() })
    }
}
