//! Static settings: command-line flags, each also read from a `GATEWAY_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "data-plane", version, about = "The LLM gateway's data plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve, on snapshots from the control plane (or from `--snapshot FILE` alone).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the OpenAI-compatible API.
    #[arg(long, env = "GATEWAY_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// The control plane's gRPC address.
    #[arg(long, env = "GATEWAY_CONTROL_PLANE", default_value = "http://127.0.0.1:8082")]
    pub control_plane: String,

    /// Token presented to the control plane.
    #[arg(long, env = "GATEWAY_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,

    /// PEM CA bundle that signed the control plane's certificate (TLS on the gRPC stream; use an https URL).
    #[arg(long, env = "GATEWAY_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,

    /// PEM client certificate presented to the control plane (mTLS), with `--node-key`.
    #[arg(long, env = "GATEWAY_NODE_CERT")]
    pub node_cert: Option<PathBuf>,

    /// PEM private key of the client certificate.
    #[arg(long, env = "GATEWAY_NODE_KEY")]
    pub node_key: Option<PathBuf>,

    /// This data plane's name in the fleet view (default: host name and listen port).
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest non-streamed upstream answer read, in bytes (502 beyond); streams are metered as they pass and not
    /// held. The default leaves room for a full embeddings batch as JSON floats.
    #[arg(long, env = "GATEWAY_MAX_UPSTREAM_ANSWER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_upstream_answer_bytes: usize,

    /// Longest upstream `Retry-After` waited out before retrying the same candidate; longer ones fail over.
    #[arg(long, env = "GATEWAY_MAX_RETRY_AFTER_MS", default_value_t = 2_000)]
    pub max_retry_after_ms: u64,

    /// Comma-separated hosts and networks upstream calls may reach, as the control plane's setting of the same name:
    /// `api.openai.com`, `*.openai.azure.com`, `10.0.0.0/8`. Checked on every address connected to: a host the
    /// list does not name may use only addresses inside its networks. Empty allows any address except link-local
    /// and cloud metadata ones, which are always refused.
    #[arg(long, env = "GATEWAY_BACKEND_ALLOWLIST", default_value = "")]
    pub backend_allowlist: String,

    /// Comma-separated prefixes a backend's `env:NAME` secret reference must start with to be read from this
    /// process's environment; empty refuses every reference. `GATEWAY_*`, `DATABASE_URL` and `PG*` never are.
    #[arg(long, env = "GATEWAY_SECRET_ENV_PREFIX", default_value = policy_engine::secret_ref::DEFAULT_PREFIXES)]
    pub secret_env_prefix: String,

    /// On shutdown (SIGTERM), how long requests in flight may take to finish after the listener closed; those still
    /// running then are ended and recorded with outcome `shutdown`, before spend is flushed.
    #[arg(long, env = "GATEWAY_SHUTDOWN_DRAIN_MS", default_value_t = 15_000)]
    pub shutdown_drain_ms: u64,

    /// How long a response may wait for its client to read anything: a client that stops reading is cut after this
    /// and its request recorded with outcome `client_stalled`.
    #[arg(long, env = "GATEWAY_WRITE_IDLE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub write_idle_timeout_ms: u64,

    /// Serve this snapshot file alone, without a control plane (local use).
    #[arg(long, env = "GATEWAY_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,

    /// Where the last good snapshot is persisted, so a restart serves even while the control plane is away; spend
    /// batches not yet acknowledged are spooled in its `spend-spool/`.
    #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".local/data-plane")]
    pub state_dir: PathBuf,

    #[command(flatten)]
    pub spend: SpendArgs,
}

/// How spend is reported and budgets are enforced.
#[derive(Debug, Clone, Args)]
pub struct SpendArgs {
    /// How often spend events are batched, spooled and sent to the control plane. Other data planes see this
    /// one's spend after at most about this interval plus the control plane's budget-state interval.
    #[arg(long, env = "GATEWAY_SPEND_REPORT_INTERVAL_MS", default_value_t = 200)]
    pub spend_report_interval_ms: u64,

    /// Most events per batch (a full batch is sent without waiting for the interval).
    #[arg(long, env = "GATEWAY_SPEND_BATCH_MAX_EVENTS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub spend_batch_max_events: u64,

    /// Largest spool of unacknowledged batches, in bytes (at least 1 MiB); when full, new requests are refused (503)
    /// until the control plane acknowledges spend again.
    #[arg(long, env = "GATEWAY_SPEND_SPOOL_MAX_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub spend_spool_max_bytes: u64,

    /// On shutdown, how long to keep sending spooled spend before leaving it for the next start.
    #[arg(long, env = "GATEWAY_SPEND_FLUSH_TIMEOUT_MS", default_value_t = 10_000)]
    pub spend_flush_timeout_ms: u64,

    /// Output tokens reserved against budgets for a request without `max_tokens` (within the model's context
    /// window); the actual cost replaces the reservation when the request ends.
    #[arg(long, env = "GATEWAY_BUDGET_RESERVE_OUTPUT_TOKENS", default_value_t = 1_024)]
    pub budget_reserve_output_tokens: u64,

    /// While this data plane has no current budget state (the control plane unreachable, or none received yet), it
    /// spends at most this share of what each `block` budget had left at the last state (1: all of it). With N data
    /// planes, 1/N keeps a control-plane outage within the limit; see `docs/spend.md`.
    #[arg(long, env = "GATEWAY_BUDGET_OUTAGE_SHARE", default_value = "1", value_parser = parse_share)]
    pub budget_outage_share: rust_decimal::Decimal,

    /// How old the latest budget state may be before the control plane counts as unreachable (it sends one every
    /// `GATEWAY_BUDGET_STATE_INTERVAL_MS`, 1 s by default: keep this a few times that).
    #[arg(long, env = "GATEWAY_BUDGET_STALE_AFTER_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub budget_stale_after_ms: u64,
}

/// A share of a budget: a decimal in (0, 1].
fn parse_share(text: &str) -> Result<rust_decimal::Decimal, String> {
    let share: rust_decimal::Decimal =
        text.trim().parse().map_err(|_| format!("'{text}' is not a decimal number (e.g. 0.5)"))?;
    if share <= rust_decimal::Decimal::ZERO || share > rust_decimal::Decimal::ONE {
        return Err(format!("{share} is not a share: it must be above 0 and at most 1"));
    }
    Ok(share)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["data-plane", "serve"].into_iter().chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Serve(args) => args,
        })
    }

    #[test]
    fn shares_spools_and_timeouts_out_of_range_are_refused() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.spend.budget_outage_share, rust_decimal::Decimal::ONE);
        assert_eq!(serve(&["--budget-outage-share", "0.5"]).unwrap().spend.budget_outage_share.to_string(), "0.5");
        for bad in ["0", "1.5", "-0.1", "half"] {
            let error = serve(&[&format!("--budget-outage-share={bad}")]).err().unwrap().to_string();
            assert!(error.contains("share") || error.contains("decimal"), "{bad}: {error}");
        }
        assert!(serve(&["--spend-spool-max-bytes", "1048575"]).is_err(), "the spool is at least 1 MiB");
        assert!(serve(&["--spend-spool-max-bytes", "1048576"]).is_ok());
        assert!(serve(&["--write-idle-timeout-ms", "0"]).is_err());
        assert!(serve(&["--budget-stale-after-ms", "0"]).is_err());
    }
}
