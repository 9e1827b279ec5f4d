use anyhow::Context;
use clap::Parser;
use control_plane::settings::{Cli, Command};
use control_plane::store::Store;
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc: spend ingestion decodes, validates and encodes thousands of small strings
/// per batch (docs/benchmarks.md, "Spend ledger").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = gateway_telemetry::init("gateway-control-plane")?;
    let result = run(cli).await;
    // The last spans (the shutdown's own included) leave before the process does.
    telemetry.shutdown().await;
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let shutdown = CancellationToken::new();
            let trigger = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                trigger.cancel();
            });
            control_plane::serve(*args, shutdown).await
        }
        Command::Migrate(args) => {
            let acquire_timeout = std::time::Duration::from_millis(args.db_acquire_timeout_ms.max(1));
            let store = Store::connect(&args.database_url, acquire_timeout)
                .await
                .with_context(|| format!("connecting to Postgres at {}", control_plane::redact(&args.database_url)))?;
            store.migrate().await.context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
