//! The Postgres store: the only module that knows SQL.
//!
//! Every mutation goes through [`Mutation`]: one transaction that first bumps the global config version
//! (which row-locks it, so writers are serialised and reference checks cannot race), then changes rows,
//! then appends an audit row. Nothing is visible to readers or data planes until it commits.
//!
//! The counter belongs to a configuration lineage ([`ConfigHead`]), created with the database: a version number
//! orders configurations only within one lineage (docs/lineage.md).

pub mod audit;
pub mod error;
pub mod fleet;
pub mod health;
pub mod keys;
pub mod principals;
pub mod resources;
pub mod spend;
mod spend_copy;

use std::sync::{Arc, Mutex};

use policy_engine::config::ConfigSet;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

pub use error::StoreError;

pub use resources::{Resource, Stored};

/// The `LISTEN`/`NOTIFY` channel that announces new config versions to every replica.
pub(crate) const CONFIG_CHANNEL: &str = "gateway_config";

/// Migrations embedded at build time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A value derived from one config version of one lineage, kept until a newer version replaces it. A version number
/// alone is not enough: a database replaced under a running replica (restored, or new) reaches the same numbers with
/// other contents.
pub(crate) struct VersionedCache<T>(Mutex<Option<(ConfigHead, Arc<T>)>>);

impl<T> Default for VersionedCache<T> {
    fn default() -> Self {
        VersionedCache(Mutex::new(None))
    }
}

impl<T> VersionedCache<T> {
    /// The value if it was derived from exactly `head`. Asked for an older version of the kept one's lineage, it
    /// forgets the kept one: the database may have gone back (restored in place), and would then reach the kept
    /// version again with other contents.
    pub fn get(&self, head: ConfigHead) -> Option<Arc<T>> {
        let mut cache = self.0.lock().ok()?;
        match cache.as_ref() {
            Some((kept, value)) if *kept == head => Some(value.clone()),
            Some((kept, _)) if kept.lineage == head.lineage && kept.version > head.version => {
                *cache = None;
                None
            }
            _ => None,
        }
    }

    /// Keep `value` unless a newer version of the same lineage is already kept.
    pub fn put(&self, head: ConfigHead, value: Arc<T>) {
        if let Ok(mut cache) = self.0.lock()
            && cache.as_ref().is_none_or(|(kept, _)| kept.lineage != head.lineage || kept.version <= head.version)
        {
            *cache = Some((head, value));
        }
    }
}

/// The store's config counter and the lineage it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ConfigHead {
    pub lineage: uuid::Uuid,
    pub version: i64,
}

/// The counter moved past a version a data plane held: `from` was the store's version, `to` is the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    pub from: i64,
    pub to: i64,
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

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn config_version(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT version FROM config_version").fetch_one(&self.pool).await?)
    }

    pub async fn config_head(&self) -> Result<ConfigHead, StoreError> {
        Ok(sqlx::query_as("SELECT lineage, version FROM config_version").fetch_one(&self.pool).await?)
    }

    /// Move the counter of `lineage` past `held`, a version some data plane holds, when the counter is behind it
    /// (the database was restored from a backup): the configuration is unchanged, but its next snapshot is newer
    /// than anything the fleet holds, so every data plane takes it. A mutation like any other (the row lock
    /// serialises it with writers and with other replicas advancing for other nodes, an audit row, `NOTIFY`), so
    /// concurrent calls move the counter once. `None` when the counter is already at or past `held`, or counts
    /// another lineage.
    pub async fn advance_past(
        &self,
        lineage: uuid::Uuid,
        held: i64,
        actor: &str,
    ) -> Result<Option<Advanced>, StoreError> {
        // A cheap read first: almost every hello needs nothing and must not queue behind the writers' row lock.
        let head = self.config_head().await?;
        if head.lineage != lineage || head.version >= held || held == i64::MAX {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        let head: ConfigHead =
            sqlx::query_as("SELECT lineage, version FROM config_version FOR UPDATE").fetch_one(&mut *tx).await?;
        if head.lineage != lineage || head.version >= held {
            return Ok(None);
        }
        let version: i64 =
            sqlx::query_scalar("UPDATE config_version SET version = $1, changed_at = now() RETURNING version")
                .bind(held + 1)
                .fetch_one(&mut *tx)
                .await?;
        let config = match self.cache.get(head) {
            Some(config) => config,
            None => Arc::new(resources::load_config(&mut tx).await?),
        };
        let mut mutation =
            Mutation { tx, lineage, version, config, actor: actor.to_owned(), request_id: None, store: self.clone() };
        let lineage = lineage.to_string();
        let before = serde_json::json!({"lineage": lineage, "version": head.version});
        let after = serde_json::json!({"lineage": lineage, "version": version, "past_held_version": held});
        mutation.audit("advance", "config_version", &lineage, Some(before), Some(after)).await?;
        let config = mutation.config.clone();
        mutation.commit(config).await?;
        Ok(Some(Advanced { from: head.version, to: version }))
    }

    /// The versions of `lineage` this store skipped when it moved its counter past a data plane (see
    /// [`Store::advance_past`]): each range is `(from, to)`, the versions strictly between never existed in this
    /// store's history, so a node holding one of them holds a configuration of a timeline the store lost.
    pub async fn skipped_versions(&self, lineage: uuid::Uuid) -> Result<Vec<(i64, i64)>, StoreError> {
        let ranges: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT (before->>'version')::BIGINT, (after->>'version')::BIGINT FROM audit_log
             WHERE resource_kind = 'config_version' AND resource_name = $1 AND action = 'advance'",
        )
        .bind(lineage.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(ranges.into_iter().filter_map(|(from, to)| Some((from?, to?))).collect())
    }

    /// The latest config set and its lineage and version, from the cache when it is current.
    pub async fn current_config(&self) -> Result<(ConfigHead, Arc<ConfigSet>), StoreError> {
        let mut tx = self.pool.begin().await?;
        // REPEATABLE READ so the version and the rows come from one snapshot of the database.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let head: ConfigHead =
            sqlx::query_as("SELECT lineage, version FROM config_version").fetch_one(&mut *tx).await?;
        if let Some(config) = self.cache.get(head) {
            return Ok((head, config));
        }
        let config = Arc::new(resources::load_config(&mut tx).await?);
        tx.commit().await?;
        self.cache.put(head, config.clone());
        Ok((head, config))
    }

    /// Start a mutation: open a transaction and bump the config version.
    pub async fn begin(&self, actor: &str, request_id: Option<&str>) -> Result<Mutation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ConfigHead { lineage, version } = sqlx::query_as(
            "UPDATE config_version SET version = version + 1, changed_at = now() RETURNING lineage, version",
        )
        .fetch_one(&mut *tx)
        .await?;
        let config = match self.cache.get(ConfigHead { lineage, version: version - 1 }) {
            Some(config) => config,
            None => Arc::new(resources::load_config(&mut tx).await?),
        };
        Ok(Mutation {
            tx,
            lineage,
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
    lineage: uuid::Uuid,
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
    ) -> Result<(), StoreError> {
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
    pub async fn commit(mut self, config: Arc<ConfigSet>) -> Result<i64, StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CONFIG_CHANNEL)
            .bind(self.version.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        self.store.cache.put(ConfigHead { lineage: self.lineage, version: self.version }, config);
        Ok(self.version)
    }
}

/// Map an insert's error: a unique-constraint violation (a duplicate name) becomes `AlreadyExists`.
pub fn already_exists(kind: &'static str, name: &str) -> impl FnOnce(sqlx::Error) -> StoreError {
    let name = name.to_owned();
    move |error| match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => StoreError::AlreadyExists { kind, name },
        _ => error.into(),
    }
}

/// Mark a query built with `format!` as safe. Only compile-time constants (table and column lists) are ever
/// interpolated; every value goes through a bind parameter.
pub(crate) fn sql(query: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_keyed_by_lineage_and_version() {
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let head = |lineage, version| ConfigHead { lineage, version };
        let cache = VersionedCache::default();
        cache.put(head(a, 9), Arc::new("a9"));
        assert_eq!(cache.get(head(a, 9)).as_deref(), Some(&"a9"));
        assert_eq!(cache.get(head(b, 9)), None, "the same number in another lineage is another configuration");
        cache.put(head(a, 5), Arc::new("a5"));
        assert_eq!(cache.get(head(a, 9)).as_deref(), Some(&"a9"), "an older version does not replace a newer one");
        // Asked for an older version of its lineage (a database restored in place), it forgets the newer one, which
        // the database may reach again with other contents.
        assert_eq!(cache.get(head(a, 5)), None);
        assert_eq!(cache.get(head(a, 9)), None);
        cache.put(head(a, 9), Arc::new("a9"));
        cache.put(head(b, 3), Arc::new("b3"));
        assert_eq!(cache.get(head(b, 3)).as_deref(), Some(&"b3"), "another lineage replaces it whatever the version");
        assert_eq!(cache.get(head(a, 9)), None);
    }
}
