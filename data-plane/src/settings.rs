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

    /// Longest upstream `Retry-After` waited out before retrying the same candidate; longer ones fail over.
    #[arg(long, env = "GATEWAY_MAX_RETRY_AFTER_MS", default_value_t = 2_000)]
    pub max_retry_after_ms: u64,

    /// Serve this snapshot file alone, without a control plane (local use).
    #[arg(long, env = "GATEWAY_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,

    /// Where the last good snapshot is persisted, so a restart serves even while the control plane is away.
    #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".local/data-plane")]
    pub state_dir: PathBuf,
}
