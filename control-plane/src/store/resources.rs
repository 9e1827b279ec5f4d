//! Configuration resources (backends, models, aliases, route policies, tool schemas, tool policies, guardrails,
//! budgets):
//! one generic create / read / update / delete / list over tables of the same shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::config::*;
use policy_engine::secret_ref::SecretEnvPolicy;
use policy_engine::validate::{self, SpecError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Store, already_exists, sql};
use crate::secrets::Sealer;
use crate::store::error::StoreError;

/// What validation needs from configuration.
#[derive(Clone, Debug, Default)]
pub struct WriteContext {
    pub base_urls: BaseUrlPolicy,
    /// Which environment variables a backend's secret reference may name.
    pub secret_env: SecretEnvPolicy,
    pub sealer: Option<Sealer>,
    /// `GATEWAY_ADMIN_TOKEN` is set: the bootstrap principal is restored at every start, so revoking it through the
    /// API would not hold and is refused.
    pub bootstrap_from_env: bool,
}

/// A kind of configuration resource and how it is checked and shown.
pub trait Resource: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + 'static {
    /// Singular, as in audit rows and messages: `backend`.
    const KIND: &'static str;
    /// Plural, as in URLs: `backends`.
    const COLLECTION: &'static str;
    const TABLE: &'static str;

    fn name(&self) -> &str;

    /// Per-resource checks; may normalise fields (e.g. the base URL).
    fn validate(&mut self, ctx: &WriteContext) -> Result<(), Vec<SpecError>>;

    /// Last step before storing, given the stored version when updating (backends seal their secret here).
    fn prepare(&mut self, _previous: Option<&Self>, _ctx: &WriteContext) -> Result<(), StoreError> {
        Ok(())
    }

    /// Rules between a stored version and its replacement.
    fn check_update(&self, _previous: &Self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Where the resource's secret comes from, for the view's `meta` (backends only).
    fn secret_source(&self) -> Option<SecretSource> {
        None
    }

    /// The spec as shown to readers and the audit log: never a secret.
    fn public_spec(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self>;
}

impl Resource for BackendSpec {
    const KIND: &'static str = "backend";
    const COLLECTION: &'static str = "backends";
    const TABLE: &'static str = "backends";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::backend(self, &ctx.base_urls, &ctx.secret_env)
    }

    fn prepare(&mut self, previous: Option<&Self>, ctx: &WriteContext) -> Result<(), StoreError> {
        match &self.secret {
            // Omitted on update: keep what is stored.
            None => self.secret = previous.and_then(|p| p.secret.clone()),
            Some(SecretSpec::Value(value)) => {
                let sealer = ctx.sealer.as_ref().ok_or_else(|| StoreError::InvalidSpec {
                    kind: Self::KIND,
                    name: self.name.clone(),
                    errors: vec![SpecError {
                        field: "secret.value".to_owned(),
                        message: "this control plane has no GATEWAY_SECRET_KEY to encrypt secrets with; \
                                  configure one or store a reference ({\"ref\": \"env:NAME\"})"
                            .to_owned(),
                    }],
                })?;
                self.secret = Some(SecretSpec::Sealed(sealer.seal(value)));
            }
            Some(SecretSpec::Ref(_) | SecretSpec::Sealed(_)) => {}
        }
        Ok(())
    }

    fn secret_source(&self) -> Option<SecretSource> {
        match &self.secret {
            None => None,
            Some(SecretSpec::Ref(reference)) => Some(SecretSource::Reference { reference: reference.clone() }),
            Some(SecretSpec::Sealed(sealed)) => {
                Some(SecretSource::Encrypted { encrypted: true, fingerprint: fingerprint(sealed) })
            }
            // Sealed by `prepare` before anything is stored or shown.
            Some(SecretSpec::Value(_)) => None,
        }
    }

    fn public_spec(&self) -> Value {
        let mut public = self.clone();
        public.secret = None;
        serde_json::to_value(public).unwrap_or(Value::Null)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.backends
    }
}

impl Resource for ModelSpec {
    const KIND: &'static str = "model";
    const COLLECTION: &'static str = "models";
    const TABLE: &'static str = "models";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, _ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::model(self)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.models
    }
}

impl Resource for AliasSpec {
    const KIND: &'static str = "alias";
    const COLLECTION: &'static str = "aliases";
    const TABLE: &'static str = "model_aliases";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, _ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::alias(self)
    }

    fn check_update(&self, previous: &Self) -> Result<(), StoreError> {
        if previous.pinned_model.is_some() && previous.pinned_model != self.pinned_model {
            return Err(StoreError::InvalidSpec {
                kind: Self::KIND,
                name: self.name.clone(),
                errors: vec![SpecError {
                    field: "pinned_model".to_owned(),
                    message: format!(
                        "is pinned to {:?} and can never change (stored vectors would stop being comparable); \
                         create a new alias instead",
                        previous.pinned_model.as_deref().unwrap_or_default()
                    ),
                }],
            });
        }
        if previous.pinned_dimensions.is_some() && previous.pinned_dimensions != self.pinned_dimensions {
            return Err(StoreError::InvalidSpec {
                kind: Self::KIND,
                name: self.name.clone(),
                errors: vec![SpecError {
                    field: "pinned_dimensions".to_owned(),
                    message: format!(
                        "is pinned to {} and can never change (stored vectors would stop being comparable); \
                         create a new alias instead",
                        previous.pinned_dimensions.unwrap_or_default()
                    ),
                }],
            });
        }
        Ok(())
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.aliases
    }
}

impl Resource for RoutePolicySpec {
    const KIND: &'static str = "route_policy";
    const COLLECTION: &'static str = "route-policies";
    const TABLE: &'static str = "route_policies";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, _ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::route_policy(self)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.route_policies
    }
}

impl Resource for ToolSchemaSpec {
    const KIND: &'static str = "tool_schema";
    const COLLECTION: &'static str = "tool-schemas";
    const TABLE: &'static str = "tool_schemas";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, _ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::tool_schema(self)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.tool_schemas
    }
}

impl Resource for ToolPolicySpec {
    const KIND: &'static str = "tool_policy";
    const COLLECTION: &'static str = "tool-policies";
    const TABLE: &'static str = "tool_policies";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, _ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::tool_policy(self)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.tool_policies
    }
}

impl Resource for GuardrailSpec {
    const KIND: &'static str = "guardrail";
    const COLLECTION: &'static str = "guardrails";
    const TABLE: &'static str = "guardrails";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        let mut errors = validate::guardrail(self).err().unwrap_or_default();
        errors
            .extend(validate::guardrail_destinations(self, &ctx.base_urls, &ctx.secret_env).err().unwrap_or_default());
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.guardrails
    }
}

impl Resource for BudgetSpec {
    const KIND: &'static str = "budget";
    const COLLECTION: &'static str = "budgets";
    const TABLE: &'static str = "budgets";

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&mut self, _ctx: &WriteContext) -> Result<(), Vec<SpecError>> {
        validate::budget(self)
    }

    fn slot(config: &mut ConfigSet) -> &mut BTreeMap<String, Self> {
        &mut config.budgets
    }
}

/// Where a backend's secret comes from, as reads and the audit log show it: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SecretSource {
    /// Resolved by the data plane from its environment.
    Reference {
        /// The reference as written, e.g. `env:PROVIDER_OPENAI_API_KEY`.
        #[serde(rename = "ref")]
        reference: String,
    },
    /// Stored encrypted. The fingerprint changes with every new secret (a rotation), so the audit log shows one
    /// happened; it is computed from the ciphertext (fresh nonce each time) and says nothing about the secret.
    Encrypted {
        /// Always true: the secret is stored sealed and never shown.
        encrypted: bool,
        /// `sha256:` and 16 hex digits; changes with every new secret.
        #[schema(pattern = "^sha256:[0-9a-f]{16}$")]
        fingerprint: String,
    },
}

/// `sha256:` and the first 16 hex digits of the SHA-256 of a sealed secret.
fn fingerprint(sealed: &str) -> String {
    let digest = hex::encode(Sha256::digest(sealed.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

/// The read-only bookkeeping every resource read carries as `meta` (ignored when a read is written back).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ResourceMeta {
    /// The resource's stable id.
    pub id: Uuid,
    /// The resource's kind: `backend`, `model`, `alias`, `route_policy`, `tool_schema`, `tool_policy`, `guardrail`,
    /// `budget`.
    pub kind: String,
    /// The config version of the last write: the read's `ETag`, and what `If-Match` takes.
    pub revision: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
    /// The principal that created it.
    pub created_by: String,
    /// The principal that last wrote it.
    pub updated_by: String,
    /// Backends with a secret: where it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
}

/// A resource as stored, with its bookkeeping.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub id: Uuid,
    pub spec: T,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl<T: Resource> Stored<T> {
    /// The JSON shown to readers: the public spec plus a read-only `meta` object.
    pub fn view(&self) -> Value {
        let mut view = self.spec.public_spec();
        let meta = ResourceMeta {
            id: self.id,
            kind: T::KIND.to_owned(),
            revision: self.revision,
            created_at: self.created_at,
            updated_at: self.updated_at,
            created_by: self.created_by.clone(),
            updated_by: self.updated_by.clone(),
            secret: self.spec.secret_source(),
        };
        if let Some(object) = view.as_object_mut() {
            object.insert("meta".to_owned(), serde_json::to_value(meta).unwrap_or(Value::Null));
        }
        view
    }
}

#[derive(FromRow)]
struct Row {
    id: Uuid,
    spec: sqlx::types::Json<Value>,
    revision: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
    updated_by: String,
}

const COLUMNS: &str = "id, spec, revision, created_at, updated_at, created_by, updated_by";

fn decode<T: Resource>(row: Row) -> Result<Stored<T>, StoreError> {
    let spec = serde_json::from_value(row.spec.0)
        .map_err(|e| StoreError::Internal(format!("stored {} {} does not decode: {e}", T::KIND, row.id)))?;
    Ok(Stored {
        id: row.id,
        spec,
        revision: row.revision,
        created_at: row.created_at,
        updated_at: row.updated_at,
        created_by: row.created_by,
        updated_by: row.updated_by,
    })
}

async fn load_all<T: Resource>(conn: &mut PgConnection, config: &mut ConfigSet) -> Result<(), StoreError> {
    let rows: Vec<Row> = sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM {}", T::TABLE))).fetch_all(conn).await?;
    let slot = T::slot(config);
    for row in rows {
        let stored = decode::<T>(row)?;
        slot.insert(stored.spec.name().to_owned(), stored.spec);
    }
    Ok(())
}

/// Every configuration resource, as the connection's transaction sees them.
pub(crate) async fn load_config(conn: &mut PgConnection) -> Result<ConfigSet, StoreError> {
    let mut config = ConfigSet::default();
    load_all::<BackendSpec>(conn, &mut config).await?;
    load_all::<ModelSpec>(conn, &mut config).await?;
    load_all::<AliasSpec>(conn, &mut config).await?;
    load_all::<RoutePolicySpec>(conn, &mut config).await?;
    load_all::<ToolSchemaSpec>(conn, &mut config).await?;
    load_all::<ToolPolicySpec>(conn, &mut config).await?;
    load_all::<GuardrailSpec>(conn, &mut config).await?;
    load_all::<BudgetSpec>(conn, &mut config).await?;
    Ok(config)
}

/// Refuse a change whose result breaks a reference. `deleting` phrases the error for a delete.
async fn check_references(
    conn: &mut PgConnection,
    config: &ConfigSet,
    deleting: Option<(&str, &str)>,
) -> Result<(), StoreError> {
    let mut problems: Vec<String> = config.check_integrity().iter().map(ToString::to_string).collect();
    // Keys live outside the config set: budgets name keys, keys name aliases.
    let key_names: Vec<&str> = config
        .budgets
        .values()
        .filter_map(|b| match &b.scope {
            BudgetScope::Key { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    if !key_names.is_empty() {
        let existing: Vec<String> = sqlx::query_scalar("SELECT name FROM api_keys WHERE name = ANY($1)")
            .bind(&key_names)
            .fetch_all(&mut *conn)
            .await?;
        for budget in config.budgets.values() {
            if let BudgetScope::Key { key } = &budget.scope
                && !existing.contains(key)
            {
                problems.push(format!("budget/{}: API key {key:?} does not exist", budget.name));
            }
        }
    }
    if let Some((kind, name)) = deleting
        && matches!(kind, "alias" | "model")
        && !config.has_alias_or_model(name)
    {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT name FROM api_keys WHERE $1 = ANY(allowed_aliases) ORDER BY name LIMIT 10")
                .bind(name)
                .fetch_all(&mut *conn)
                .await?;
        for key in keys {
            problems.push(format!("api_key/{key}: allows {name:?}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(match deleting {
        Some((kind, name)) => {
            StoreError::Conflict(format!("cannot delete {kind} {name:?}: still referenced by {}", problems.join("; ")))
        }
        None => StoreError::DanglingReference(format!("invalid reference: {}", problems.join("; "))),
    })
}

impl Store {
    pub async fn get<T: Resource>(&self, name: &str) -> Result<Stored<T>, StoreError> {
        let row: Option<Row> = sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM {} WHERE name = $1", T::TABLE)))
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(decode).transpose()?.ok_or_else(|| StoreError::NotFound { kind: T::KIND, name: name.to_owned() })
    }

    /// Up to `limit` resources ordered by name, after `after` (keyset pagination).
    pub async fn list<T: Resource>(&self, after: Option<&str>, limit: i64) -> Result<Vec<Stored<T>>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(sql(format!(
            "SELECT {COLUMNS} FROM {} WHERE ($1::TEXT IS NULL OR name > $1) ORDER BY name LIMIT $2",
            T::TABLE
        )))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(decode).collect()
    }

    pub async fn create<T: Resource>(
        &self,
        ctx: &WriteContext,
        actor: &str,
        request_id: Option<&str>,
        mut spec: T,
    ) -> Result<Stored<T>, StoreError> {
        validate_spec(&mut spec, ctx)?;
        spec.prepare(None, ctx)?;
        let mut mutation = self.begin(actor, request_id).await?;
        let mut config = (*mutation.config).clone();
        if T::slot(&mut config).insert(spec.name().to_owned(), spec.clone()).is_some() {
            return Err(StoreError::AlreadyExists { kind: T::KIND, name: spec.name().to_owned() });
        }
        check_references(mutation.conn(), &config, None).await?;
        let spec_json = serde_json::to_value(&spec).map_err(|e| StoreError::Internal(e.to_string()))?;
        let row: Row = sqlx::query_as(sql(format!(
            "INSERT INTO {} (id, name, spec, revision, created_by, updated_by) VALUES ($1, $2, $3, $4, $5, $5)
             RETURNING {COLUMNS}",
            T::TABLE
        )))
        .bind(Uuid::now_v7())
        .bind(spec.name())
        .bind(sqlx::types::Json(spec_json))
        .bind(mutation.version)
        .bind(actor)
        .fetch_one(mutation.conn())
        .await
        .map_err(already_exists(T::KIND, spec.name()))?;
        let stored = decode::<T>(row)?;
        mutation.audit("create", T::KIND, spec.name(), None, Some(stored.view())).await?;
        mutation.commit(Arc::new(config)).await?;
        Ok(stored)
    }

    /// Replace the spec of `name`. `expected_revision`, when given, must match (optimistic concurrency).
    pub async fn update<T: Resource>(
        &self,
        ctx: &WriteContext,
        actor: &str,
        request_id: Option<&str>,
        name: &str,
        expected_revision: Option<i64>,
        mut spec: T,
    ) -> Result<Stored<T>, StoreError> {
        if spec.name() != name {
            return Err(StoreError::InvalidInput {
                message: format!(
                    "the body names {:?} but the URL names {name:?}; names cannot change (create a new {} instead)",
                    spec.name(),
                    T::KIND
                ),
                field: Some("name".to_owned()),
            });
        }
        validate_spec(&mut spec, ctx)?;
        let mut mutation = self.begin(actor, request_id).await?;
        let previous = lock_row::<T>(mutation.conn(), name).await?;
        check_revision(T::KIND, name, previous.revision, expected_revision)?;
        spec.check_update(&previous.spec)?;
        spec.prepare(Some(&previous.spec), ctx)?;
        let mut config = (*mutation.config).clone();
        T::slot(&mut config).insert(name.to_owned(), spec.clone());
        check_references(mutation.conn(), &config, None).await?;
        let spec_json = serde_json::to_value(&spec).map_err(|e| StoreError::Internal(e.to_string()))?;
        let row: Row = sqlx::query_as(sql(format!(
            "UPDATE {} SET spec = $2, revision = $3, updated_at = now(), updated_by = $4 WHERE name = $1
             RETURNING {COLUMNS}",
            T::TABLE
        )))
        .bind(name)
        .bind(sqlx::types::Json(spec_json))
        .bind(mutation.version)
        .bind(actor)
        .fetch_one(mutation.conn())
        .await?;
        let stored = decode::<T>(row)?;
        mutation.audit("update", T::KIND, name, Some(previous.view()), Some(stored.view())).await?;
        mutation.commit(Arc::new(config)).await?;
        Ok(stored)
    }

    /// Delete `name`. `expected_revision`, when given, must match (optimistic concurrency).
    pub async fn delete<T: Resource>(
        &self,
        actor: &str,
        request_id: Option<&str>,
        name: &str,
        expected_revision: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut mutation = self.begin(actor, request_id).await?;
        let previous = lock_row::<T>(mutation.conn(), name).await?;
        check_revision(T::KIND, name, previous.revision, expected_revision)?;
        let mut config = (*mutation.config).clone();
        T::slot(&mut config).remove(name);
        check_references(mutation.conn(), &config, Some((T::KIND, name))).await?;
        sqlx::query(sql(format!("DELETE FROM {} WHERE name = $1", T::TABLE)))
            .bind(name)
            .execute(mutation.conn())
            .await?;
        mutation.audit("delete", T::KIND, name, Some(previous.view()), None).await?;
        mutation.commit(Arc::new(config)).await?;
        Ok(())
    }
}

/// `If-Match`: 412 when the caller's revision is not the current one.
pub(crate) fn check_revision(kind: &str, name: &str, current: i64, expected: Option<i64>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current => Err(StoreError::PreconditionFailed(format!(
            "{kind} {name:?} is at revision {current}, not {expected}: reload it and retry"
        ))),
        _ => Ok(()),
    }
}

fn validate_spec<T: Resource>(spec: &mut T, ctx: &WriteContext) -> Result<(), StoreError> {
    spec.validate(ctx).map_err(|errors| StoreError::InvalidSpec { kind: T::KIND, name: spec.name().to_owned(), errors })
}

async fn lock_row<T: Resource>(conn: &mut PgConnection, name: &str) -> Result<Stored<T>, StoreError> {
    let row: Option<Row> =
        sqlx::query_as(sql(format!("SELECT {COLUMNS} FROM {} WHERE name = $1 FOR UPDATE", T::TABLE)))
            .bind(name)
            .fetch_optional(conn)
            .await?;
    row.map(decode).transpose()?.ok_or_else(|| StoreError::NotFound { kind: T::KIND, name: name.to_owned() })
}
