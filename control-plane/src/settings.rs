//! Static settings: command-line flags, each also read from a `GATEWAY_*` (or `DATABASE_URL`) variable.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about = "The LLM gateway's control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve the admin API.
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/gateway")]
    pub database_url: String,

    /// How long a query waits for a database connection before it fails (the admin API answers 503 and data
    /// planes keep their spend to send again), in milliseconds.
    #[arg(long, env = "GATEWAY_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 5_000)]
    pub db_acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address of the admin REST API.
    #[arg(long, env = "GATEWAY_ADMIN_ADDR", default_value = "127.0.0.1:8081")]
    pub admin_addr: SocketAddr,

    /// Address of the gRPC snapshot stream for data planes.
    #[arg(long, env = "GATEWAY_GRPC_ADDR", default_value = "127.0.0.1:8082")]
    pub grpc_addr: SocketAddr,

    /// Token data planes present on the gRPC stream. Without it every data plane is refused.
    #[arg(long, env = "GATEWAY_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,

    /// PEM certificate chain for TLS on the gRPC stream (with `--grpc-tls-key`).
    #[arg(long, env = "GATEWAY_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for TLS on the gRPC stream.
    #[arg(long, env = "GATEWAY_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<std::path::PathBuf>,

    /// PEM CA bundle: when set, data planes must present a client certificate it signed (mTLS).
    #[arg(long, env = "GATEWAY_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<std::path::PathBuf>,

    /// This replica's name in the fleet view (default: host name and process id).
    #[arg(long, env = "GATEWAY_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Bootstrap admin token: the `bootstrap` principal (role admin) authenticates with it.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// 32-byte key (64 hex digits or base64) that encrypts provider secrets at rest.
    #[arg(long, env = "GATEWAY_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Comma-separated hosts backends may point at: `api.openai.com`, `*.openai.azure.com`, `10.0.0.0/8`.
    /// Empty allows any host; link-local and cloud metadata addresses are always refused. At write a host name
    /// must match a name entry (data planes also check the addresses they connect to, with their own setting).
    #[arg(long, env = "GATEWAY_BACKEND_ALLOWLIST", default_value = "")]
    pub backend_allowlist: String,

    /// Comma-separated prefixes a backend's `{"ref": "env:NAME"}` must start with; empty refuses every reference.
    /// The gateway's own settings (`GATEWAY_*`, `DATABASE_URL`, `PG*`) can never be referenced.
    #[arg(long, env = "GATEWAY_SECRET_ENV_PREFIX", default_value = policy_engine::secret_ref::DEFAULT_PREFIXES)]
    pub secret_env_prefix: String,

    /// How often each data plane receives every budget's spend in its current period, in milliseconds (also soon
    /// after ingested spend changes it).
    #[arg(long, env = "GATEWAY_BUDGET_STATE_INTERVAL_MS", default_value_t = 1000)]
    pub budget_state_interval_ms: u64,

    /// How often each replica reads which data planes are connected (to any replica), in milliseconds, to tell each
    /// its rate-limit share; its own connections and disconnections are read at once.
    #[arg(long, env = "GATEWAY_RATE_SHARE_INTERVAL_MS", default_value_t = 1000)]
    pub rate_share_interval_ms: u64,

    /// Largest admin request body, in bytes.
    #[arg(long, env = "GATEWAY_ADMIN_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
}
