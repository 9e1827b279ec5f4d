//! The LLM gateway's control plane: stores governance configuration in Postgres, validates it with the shared
//! policy engine, serves the admin REST API and keeps the audit log.
//!
//! - [`settings`]: static configuration (flags and environment).
//! - [`api`]: the axum admin API; [`api::app`] builds the whole application.
//! - [`store`]: the Postgres store, the only module that knows SQL.
//! - [`auth`]: admin principals, roles and permissions.
//! - [`secrets`]: provider secrets encrypted at rest.
//! - [`error`]: the API's error type in the OpenAI error shape.

pub mod api;
pub mod auth;
pub mod error;
pub mod secrets;
pub mod settings;
pub mod store;

use anyhow::Context;
use policy_engine::base_url::BaseUrlPolicy;

use crate::secrets::Sealer;
use crate::settings::ServeArgs;
use crate::store::Store;
use crate::store::resources::WriteContext;

/// Validation settings derived from the serve flags.
pub fn write_context(args: &ServeArgs) -> anyhow::Result<WriteContext> {
    let base_urls = BaseUrlPolicy::from_list(&args.backend_allowlist)
        .map_err(|e| anyhow::anyhow!("GATEWAY_BACKEND_ALLOWLIST: {e}"))?;
    let sealer = args.secret_key.as_deref().map(Sealer::from_config).transpose().context("GATEWAY_SECRET_KEY")?;
    Ok(WriteContext { base_urls, sealer })
}

/// Connect, migrate, bootstrap the admin token and serve until `shutdown` resolves.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let write_context = write_context(&args)?;
    let store = Store::connect(&args.database.database_url)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact(&args.database.database_url)))?;
    store.migrate().await.context("applying migrations")?;
    match &args.admin_token {
        Some(token) if !token.trim().is_empty() => {
            store.ensure_bootstrap_admin(token.trim()).await.map_err(|e| anyhow::anyhow!("bootstrap admin: {e}"))?
        }
        _ => tracing::warn!("GATEWAY_ADMIN_TOKEN is not set: only admin tokens already in the database work"),
    }
    if write_context.sealer.is_none() {
        tracing::warn!("GATEWAY_SECRET_KEY is not set: backends can only hold secret references (env:NAME)");
    }
    let state = api::AppState::new(store, write_context, args.max_body_bytes);
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin API to {}", args.admin_addr))?;
    tracing::info!(addr = %args.admin_addr, "admin API listening");
    axum::serve(listener, api::app(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
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
