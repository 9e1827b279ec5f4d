//! Builds the snapshot of the latest config version and publishes it on a `watch` channel.
//!
//! Every replica `LISTEN`s on [`CONFIG_CHANNEL`]; a commit on any replica `NOTIFY`s it. Notifications that arrive
//! while a build runs are drained before the next build, and the build reads whatever version is latest then, so
//! a burst of writes yields one snapshot. A slow poll covers notifications lost while the listener reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_proto::convert;
use gateway_proto::v1;
use gateway_telemetry::{KeyValue, SpanKind, TraceSpan};
use policy_engine::config::SecretSpec;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::secrets::Sealer;
use crate::store::fleet::KeyRecord;
use crate::store::{CONFIG_CHANNEL, ConfigHead, Store, StoreError};

/// A built snapshot, shared by every stream that sends it.
#[derive(Debug)]
pub struct Published {
    /// The store's configuration lineage: `version` counts in it.
    pub lineage: uuid::Uuid,
    pub version: i64,
    pub content_hash: String,
    pub snapshot: v1::Snapshot,
    pub build_time: Duration,
}

pub(crate) type PublishedRx = watch::Receiver<Option<Arc<Published>>>;

const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Start publishing; the receiver sees `None` until the first snapshot is built.
pub fn spawn(store: Store, sealer: Option<Sealer>, shutdown: CancellationToken) -> PublishedRx {
    let (tx, rx) = watch::channel::<Option<Arc<Published>>>(None);
    tokio::spawn(async move {
        let mut listener = match PgListener::connect_with(store.pool()).await {
            Ok(mut listener) => match listener.listen(CONFIG_CHANNEL).await {
                Ok(()) => Some(listener),
                Err(error) => {
                    tracing::error!(%error, "LISTEN failed; falling back to polling");
                    None
                }
            },
            Err(error) => {
                tracing::error!(%error, "no LISTEN connection; falling back to polling");
                None
            }
        };
        loop {
            let current = tx.borrow().as_ref().map(|p| ConfigHead { lineage: p.lineage, version: p.version });
            match build_if_changed(&store, sealer.as_ref(), current).await {
                Ok(Some(published)) => {
                    tracing::info!(
                        lineage = %published.lineage,
                        version = published.version,
                        build_ms = published.build_time.as_millis() as u64,
                        "snapshot published"
                    );
                    let size = prost::Message::encoded_len(&published.snapshot);
                    crate::metrics::snapshot_built(published.build_time.as_secs_f64(), size, published.version);
                    tx.send_replace(Some(Arc::new(published)));
                }
                Ok(None) => {}
                Err(error) => tracing::error!(error = %error.detailed(), "building the snapshot failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wait_for_change(&mut listener) => {}
            }
        }
    });
    rx
}

/// Wait for a notification (draining any that queued up behind it) or the poll interval.
async fn wait_for_change(listener: &mut Option<PgListener>) {
    let Some(active) = listener.as_mut() else {
        tokio::time::sleep(POLL_INTERVAL).await;
        return;
    };
    match tokio::time::timeout(POLL_INTERVAL, active.recv()).await {
        Ok(Ok(_)) => while active.next_buffered().is_some() {},
        Ok(Err(error)) => {
            // PgListener reconnects on the next recv; pause so a dead database is not spun on.
            tracing::warn!(%error, "LISTEN connection lost; reconnecting");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(_elapsed) => {}
    }
}

/// Build the snapshot of the latest version unless `current` is already it. A database replaced under a running
/// replica (another lineage, or a restored backup at a lower version) is a change like any other.
pub async fn build_if_changed(
    store: &Store,
    sealer: Option<&Sealer>,
    current: Option<ConfigHead>,
) -> Result<Option<Published>, StoreError> {
    let started = Instant::now();
    if current == Some(store.config_head().await?) {
        return Ok(None);
    }
    let span = TraceSpan::root("snapshot build", SpanKind::Internal);
    let (ConfigHead { lineage, version }, config, keys) = store.snapshot_source().await?;
    span.set("gateway.config_version", version);
    span.set_with(|attributes| attributes.push(KeyValue::new("gateway.lineage", lineage.to_string())));
    let sealer = sealer.cloned();
    let published = tokio::task::spawn_blocking(move || {
        let content = convert::encode(&config, keys.iter().map(key_message).collect(), |backend| {
            secret_message(&backend.name, backend.secret.as_ref(), sealer.as_ref())
        });
        let content_hash = convert::content_hash(&content);
        Published {
            lineage,
            version,
            content_hash: content_hash.clone(),
            snapshot: v1::Snapshot {
                version: version as u64,
                content_hash,
                content: Some(content),
                lineage: lineage.to_string(),
            },
            build_time: started.elapsed(),
        }
    })
    .await
    .map_err(|e| StoreError::Internal(e.to_string()))?;
    span.set_with(|attributes| {
        attributes.push(KeyValue::new("gateway.snapshot.content_hash", published.content_hash.clone()));
    });
    span.end();
    Ok(Some(published))
}

fn secret_message(backend: &str, secret: Option<&SecretSpec>, sealer: Option<&Sealer>) -> Option<v1::backend::Secret> {
    match secret? {
        SecretSpec::Ref(reference) => Some(v1::backend::Secret::SecretRef(reference.clone())),
        SecretSpec::Value(value) => Some(v1::backend::Secret::SecretValue(value.clone())),
        SecretSpec::Sealed(sealed) => match sealer.map(|s| s.open(sealed)) {
            Some(Ok(value)) => Some(v1::backend::Secret::SecretValue(value)),
            Some(Err(error)) => {
                tracing::error!(backend, %error, "cannot open the backend's secret; it is sent without one");
                None
            }
            None => {
                tracing::error!(backend, "the backend has an encrypted secret but GATEWAY_SECRET_KEY is not set");
                None
            }
        },
    }
}

fn key_message(key: &KeyRecord) -> v1::ApiKey {
    v1::ApiKey {
        id: key.id.to_string(),
        name: key.name.clone(),
        secret_sha256: key.secret_sha256.clone(),
        team: key.team.clone().unwrap_or_default(),
        tags: key.tags.clone(),
        allowed_aliases: key.allowed_aliases.clone(),
        rpm_limit: key.rpm_limit,
        tpm_limit: key.tpm_limit,
        expires_at_unix: key.expires_at.map(|t| t.timestamp()),
        revoked: key.revoked_at.is_some(),
    }
}
