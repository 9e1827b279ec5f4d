//! The LLM gateway's control plane: stores governance configuration in Postgres, validates it with the shared
//! policy engine, serves the admin REST API and keeps the audit log.
//!
//! - [`settings`]: static configuration (flags and environment).
//! - [`api`]: the axum admin API; [`api::app`] builds the whole application.
//! - [`store`]: the Postgres store, the only module that knows SQL.
//! - [`distribution`]: snapshots built on every config change and streamed to data planes over gRPC.
//! - [`auth`]: admin principals, roles and permissions.
//! - [`secrets`]: provider secrets encrypted at rest.
//! - [`spend`]: validation of the spend events data planes report (the ledger's SQL is in [`store::spend`]).
//! - [`health`]: bounds on the backend health data planes report (stored by [`store::health`]).
//! - [`error`]: the API's error type in the OpenAI error shape.
//! - [`rfc3339`]: strict RFC 3339 times in request bodies and queries.

pub mod api;
pub mod auth;
pub mod distribution;
pub mod error;
pub mod health;
pub mod metrics;
pub mod rfc3339;
pub mod secrets;
pub mod settings;
pub mod spend;
pub mod store;

use std::future::IntoFuture;

use anyhow::Context;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::secret_ref::SecretEnvPolicy;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::secrets::Sealer;
use crate::settings::ServeArgs;
use crate::store::Store;
use crate::store::resources::WriteContext;

/// Validation settings derived from the serve flags.
pub(crate) fn write_context(args: &ServeArgs) -> anyhow::Result<WriteContext> {
    let base_urls = BaseUrlPolicy::from_list(&args.backend_allowlist)
        .map_err(|e| anyhow::anyhow!("GATEWAY_BACKEND_ALLOWLIST: {e}"))?;
    let secret_env = SecretEnvPolicy::from_list(&args.secret_env_prefix)
        .map_err(|e| anyhow::anyhow!("GATEWAY_SECRET_ENV_PREFIX: {e}"))?;
    let sealer = args.secret_key.as_deref().map(Sealer::from_config).transpose().context("GATEWAY_SECRET_KEY")?;
    let bootstrap_from_env = args.admin_token.as_deref().is_some_and(|token| !token.trim().is_empty());
    Ok(WriteContext { base_urls, secret_env, sealer, bootstrap_from_env })
}

/// Connect, migrate, bootstrap the admin token, bind, and serve until `shutdown` is cancelled.
pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    metrics::install();
    let acquire_timeout = std::time::Duration::from_millis(args.database.db_acquire_timeout_ms.max(1));
    let store = Store::connect(&args.database.database_url, acquire_timeout)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact(&args.database.database_url)))?;
    store.migrate().await.context("applying migrations")?;
    let admin = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin API to {}", args.admin_addr))?;
    let grpc =
        TcpListener::bind(args.grpc_addr).await.with_context(|| format!("binding gRPC to {}", args.grpc_addr))?;
    run(store, &args, admin, grpc, shutdown).await
}

/// Serve the admin API on `admin` and the snapshot stream on `grpc` with an already migrated store.
pub async fn run(
    store: Store,
    args: &ServeArgs,
    admin: TcpListener,
    grpc: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let write_context = write_context(args)?;
    match &args.admin_token {
        Some(token) if !token.trim().is_empty() => store
            .ensure_bootstrap_admin(token.trim())
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap admin: {}", e.detailed()))?,
        _ => tracing::warn!("GATEWAY_ADMIN_TOKEN is not set: only admin tokens already in the database work"),
    }
    if write_context.sealer.is_none() {
        tracing::warn!("GATEWAY_SECRET_KEY is not set: backends can only hold secret references (env:NAME)");
    }
    if args.node_token.as_deref().is_none_or(str::is_empty) {
        tracing::warn!("GATEWAY_NODE_TOKEN is not set: every data plane will be refused");
    }
    let replica = args.replica_id.clone().unwrap_or_else(default_replica_id);
    store.replica_started(&replica).await.map_err(|e| anyhow::anyhow!("fleet: {e}"))?;

    let published = distribution::publisher::spawn(store.clone(), write_context.sealer.clone(), shutdown.clone());
    let spend_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let budgets = distribution::budgets::spawn(
        store.clone(),
        std::time::Duration::from_millis(args.budget_state_interval_ms.max(10)),
        spend_changed.clone(),
        shutdown.clone(),
    );
    let fleet_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let connected = distribution::rate_shares::spawn(
        store.clone(),
        std::time::Duration::from_millis(args.rate_share_interval_ms.max(10)),
        fleet_changed.clone(),
        shutdown.clone(),
    );
    let streams = distribution::grpc::Streams { published, budgets, spend_changed, connected, fleet_changed };
    let discovery = distribution::grpc::service(store.clone(), streams, replica.clone(), args.node_token.as_deref());
    let state = api::AppState::new(store, write_context, args.max_body_bytes);

    tracing::info!(admin = %admin.local_addr()?, grpc = %grpc.local_addr()?, %replica, "control plane listening");
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc_tls(args)? {
        builder = builder.tls_config(tls).context("gRPC TLS configuration")?;
    }
    let grpc_server = builder
        .add_service(discovery)
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown.clone().cancelled_owned());
    let admin_server =
        axum::serve(admin, api::app(state)).with_graceful_shutdown(shutdown.clone().cancelled_owned()).into_future();
    let (grpc_result, admin_result) = tokio::join!(grpc_server, admin_server);
    grpc_result.context("gRPC server")?;
    admin_result.context("admin server")?;
    Ok(())
}

/// TLS for the gRPC stream: server identity, and client verification (mTLS) when a client CA is given.
fn grpc_tls(args: &ServeArgs) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let (cert, key) = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (None, None) => {
            anyhow::ensure!(
                args.grpc_client_ca.is_none(),
                "GATEWAY_GRPC_CLIENT_CA needs GATEWAY_GRPC_TLS_CERT and _KEY"
            );
            return Ok(None);
        }
        (Some(cert), Some(key)) => (read(cert)?, read(key)?),
        _ => anyhow::bail!("GATEWAY_GRPC_TLS_CERT and GATEWAY_GRPC_TLS_KEY go together"),
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &args.grpc_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "control-plane".to_owned() } else { host };
    format!("{host}-{}", std::process::id())
}

/// The URL without its password, for messages.
pub fn redact(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => database_url.to_owned(),
    }
}
