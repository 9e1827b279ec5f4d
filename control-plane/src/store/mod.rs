//! The Postgres store: the only module that knows SQL.
//!
//! Every mutation goes through [`Mutation`]: one transaction that first bumps the global config version
//! (which row-locks it, so writers are serialised and reference checks cannot race), then changes rows,
//! then appends an audit row. Nothing is visible to readers or data planes until it commits.

pub mod audit;
pub mod fleet;
pub mod keys;
pub mod principals;
pub mod resources;
pub mod spend;

use std::sync::{Arc, Mutex};

use policy_engine::config::ConfigSet;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::error::ApiError;

pub use resources::{Resource, Stored};

/// The `LISTEN`/`NOTIFY` channel that announces new config versions to every replica.
pub const CONFIG_CHANNEL: &str = "gateway_config";

/// Migrations embedded at build time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A value derived from one config version, kept until a newer version replaces it.
pub struct VersionedCache<T>(Mutex<Option<(i64, Arc<T>)>>);

impl<T> Default for VersionedCache<T> {
    fn default() -> Self {
        VersionedCache(Mutex::new(None))
    }
}

impl<T> VersionedCache<T> {
    /// The value if it was derived from exactly `version`.
    pub fn get(&self, version: i64) -> Option<Arc<T>> {
        let cache = self.0.lock().ok()?;
        cache.as_ref().filter(|(v, _)| *v == version).map(|(_, value)| value.clone())
    }

    /// Keep `value` unless a newer version is already kept.
    pub fn put(&self, version: i64, value: Arc<T>) {
        if let Ok(mut cache) = self.0.lock()
            && cache.as_ref().is_none_or(|(v, _)| *v <= version)
        {
            *cache = Some((version, value));
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// The config set at one version, so a write need not reload every resource. Valid only while that
    /// version is the latest: any writer (this replica or another) bumps the version and so invalidates it.
    cache: Arc<VersionedCache<ConfigSet>>,
}

impl Store {
    pub fn new(pool: PgPool) -> Store {
        Store { pool, cache: Arc::default() }
    }

    /// Connect, creating the database if it does not exist yet (local defaults just work). A query waits at most
    /// `acquire_timeout` for a connection, so an unreachable database fails requests fast instead of hanging them.
    pub async fn connect(database_url: &str, acquire_timeout: std::time::Duration) -> Result<Store, sqlx::Error> {
        use sqlx::migrate::MigrateDatabase;
        if !Postgres::database_exists(database_url).await? {
            Postgres::create_database(database_url).await?;
        }
        let pool =
            PgPoolOptions::new().max_connections(16).acquire_timeout(acquire_timeout).connect(database_url).await?;
        Ok(Store::new(pool))
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), ApiError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn config_version(&self) -> Result<i64, ApiError> {
        Ok(sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&self.pool).await?)
    }

    /// The latest config set and its version, from the cache when it is current.
    pub async fn current_config(&self) -> Result<(i64, Arc<ConfigSet>), ApiError> {
        let mut tx = self.pool.begin().await?;
        // REPEATABLE READ so the version and the rows come from one snapshot of the database.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&mut *tx).await?;
        if let Some(config) = self.cache.get(version) {
            return Ok((version, config));
        }
        let config = Arc::new(resources::load_config(&mut tx).await?);
        tx.commit().await?;
        self.cache.put(version, config.clone());
        Ok((version, config))
    }

    /// Start a mutation: open a transaction and bump the config version.
    pub async fn begin(&self, actor: &str, request_id: Option<&str>) -> Result<Mutation, ApiError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query_scalar("UPDATE config_version SET version = version + 1, changed_at = now() RETURNING version")
                .fetch_one(&mut *tx)
                .await?;
        let config = match self.cache.get(version - 1) {
            Some(config) => config,
            None => Arc::new(resources::load_config(&mut tx).await?),
        };
        Ok(Mutation {
            tx,
            version,
            config,
            actor: actor.to_owned(),
            request_id: request_id.map(str::to_owned),
            store: self.clone(),
        })
    }
}

/// An open mutation: the transaction, the version it will commit as, and the config set as of before it.
pub struct Mutation {
    tx: Transaction<'static, Postgres>,
    pub version: i64,
    pub config: Arc<ConfigSet>,
    pub actor: String,
    pub request_id: Option<String>,
    store: Store,
}

impl Mutation {
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn audit(
        &mut self,
        action: &str,
        kind: &str,
        name: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, resource_kind, resource_name, config_version, request_id, before, after)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&self.actor)
        .bind(action)
        .bind(kind)
        .bind(name)
        .bind(self.version)
        .bind(&self.request_id)
        .bind(before)
        .bind(after)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Commit, and make `config` the cached config of the new version. Every replica hears of the new version
    /// through `NOTIFY`, which Postgres delivers only if and when the transaction commits.
    pub async fn commit(mut self, config: Arc<ConfigSet>) -> Result<i64, ApiError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CONFIG_CHANNEL)
            .bind(self.version.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        self.store.cache.put(self.version, config);
        Ok(self.version)
    }
}

/// Map an insert's error: a unique-constraint violation (a duplicate name) becomes `AlreadyExists`.
pub fn already_exists(kind: &'static str, name: &str) -> impl FnOnce(sqlx::Error) -> ApiError {
    let name = name.to_owned();
    move |error| match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => ApiError::AlreadyExists { kind, name },
        _ => error.into(),
    }
}

/// Mark a query built with `format!` as safe. Only compile-time constants (table and column lists) are ever
/// interpolated; every value goes through a bind parameter.
pub(crate) fn sql(query: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(query)
}
