//! `gatewayctl`: the gateway's configuration as code, policy tests, keys, fleet, spend and audit, over the control
//! plane's admin API. The commands are in `commands.rs`; this file is the command line and the exit codes.

mod client;
mod commands;
mod export;
mod kinds;
mod manifest;
mod output;
mod plan;
mod policy_test;
#[cfg(test)]
mod seed_tests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::kinds::Kind;
use crate::output::FormatArgs;

const AFTER_HELP: &str = "\
Examples:
  export GATEWAY_URL=http://127.0.0.1:8081 GATEWAY_ADMIN_TOKEN=...
  gatewayctl export > gateway.yaml          # today's configuration as YAML
  gatewayctl diff -f policies/seed          # what apply would change (exit 1 when something would)
  gatewayctl apply -f policies/seed         # create and update, in dependency order
  gatewayctl apply -f policies/ --prune     # ... and delete what the files no longer hold
  gatewayctl policy test policies/seed      # routing unit tests against the files
  gatewayctl policy test policies/seed --live   # ... against the running control plane
  gatewayctl get aliases -o json
  gatewayctl keys create ci-bot --team platform --allow gpt-4o
  gatewayctl spend --group-by team,model --format csv

Files hold YAML documents separated by `---`, each `kind: Backend|Model|Alias|ToolSchema|ToolPolicy|RoutePolicy|\
Budget|PolicyTest` and `spec:` (the admin API's body for that resource). See policies/README.md.

Exit codes:
  0  success; diff found nothing to change; every policy test passed
  1  diff found changes; a policy test failed
  2  the command line is wrong
  3  the files are invalid, or the control plane refused a resource or a request (4xx other than 401/403)
  4  the token is missing, wrong, or not allowed to do this (401, 403)
  5  the control plane is unreachable or failed (5xx)";

const APPLY_HELP: &str = "\
A document (files hold several, separated by `---` lines):
  kind: Alias                 # Backend, Model, Alias, ToolSchema, ToolPolicy, RoutePolicy, Budget (PolicyTest: ignored)
  spec:                       # the admin API's body for the resource
    name: gpt-4o
    candidates: [{model: gpt-4o-openai}, {model: gpt-4o-azure-eu}]

Only what differs from the server is written (PUT with If-Match). A backend without `secret` keeps the stored one;
a literal `secret: {value: ...}` is sent when the server holds none or a reference (it cannot be read back).
Errors name file:line at the field: YAML errors, unknown fields and the engine's checks (before anything is
written), then the server's refusals (allowlist, references, conflicts).

Examples:
  gatewayctl apply -f policies/seed
  gatewayctl apply -f config/ --prune --dry-run     # the plan, deletions included, nothing written";

#[derive(Debug, Parser)]
#[command(name = "gatewayctl", version, about = "Configure and inspect the LLM gateway through its control plane's admin API", after_help = AFTER_HELP)]
struct Cli {
    /// The control plane's admin API.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8081", global = true)]
    url: String,
    /// An admin token (Bearer).
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Files {
    /// A YAML file or a directory of them (walked recursively, `*.yaml`/`*.yml`); repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make the control plane hold what the files say: creates and updates in dependency order (backends, models,
    /// aliases, tool schemas, tool policies, route policies, budgets); unchanged resources are not written.
    #[command(after_help = APPLY_HELP)]
    Apply {
        #[command(flatten)]
        files: Files,
        /// Also delete resources the files do not hold (in reverse dependency order).
        #[arg(long)]
        prune: bool,
        /// Show the plan without writing anything (as `diff`, exit code 0).
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what `apply` would change, per resource; exit code 1 when there are changes, 0 when none.
    #[command(after_help = "Example (CI): gatewayctl diff -f policies/ --prune || echo \"config drifted\"")]
    Diff {
        #[command(flatten)]
        files: Files,
        /// Count resources the files do not hold as deletions.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Print today's configuration as YAML that `apply` takes back unchanged (sealed secrets are omitted, and so kept).
    #[command(after_help = "Example: gatewayctl export > gateway.yaml && gatewayctl diff -f gateway.yaml")]
    Export,
    /// List a kind, or show one resource.
    #[command(after_help = "Examples:\n  gatewayctl get route-policies\n  gatewayctl get backend openai-us -o yaml")]
    Get {
        /// The kind (plural forms work too: `backends`, `route-policies`, ...).
        kind: Kind,
        /// One resource; without it, every resource of the kind.
        name: Option<String>,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Delete one resource (refused by the server while something refers to it).
    #[command(after_help = "Example: gatewayctl delete route-policy task-code-generation")]
    Delete { kind: Kind, name: String },
    /// API keys: create (the secret is shown once), revoke, list.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The data planes: which version each holds, connected or not, last NACK.
    Fleet {
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Spend report from the ledger (default: this month, one total row).
    #[command(
        after_help = "Examples:\n  gatewayctl spend --group-by team\n  gatewayctl spend --group-by key,day --from 2026-11-01T00:00:00Z --format csv"
    )]
    Spend(commands::SpendArgs),
    /// The audit log, newest first.
    #[command(after_help = "Example: gatewayctl audit --kind route_policy --limit 20")]
    Audit(commands::AuditArgs),
    /// Policy unit tests.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (the only time it is shown).
    Create(commands::KeyCreateArgs),
    /// Revoke a key: the data planes refuse it from their next snapshot on.
    Revoke { name: String },
    /// List keys.
    List {
        /// Only this team's keys.
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        format: FormatArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Run the `kind: PolicyTest` cases under PATH against the configuration documents under PATH (with the data
    /// plane's routing engine), or with --live against the control plane's stored configuration.
    #[command(
        after_help = "Examples:\n  gatewayctl policy test policies/seed\n  gatewayctl policy test policies/seed --live"
    )]
    Test {
        /// Files or directories with the tests (and, unless --live, the configuration).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Evaluate through POST /admin/v1/evaluate on the control plane instead of the files' configuration.
        #[arg(long)]
        live: bool,
        /// `table` prints each failure and a summary line; json and yaml a summary with every failure.
        #[command(flatten)]
        format: FormatArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(5);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(commands::exit_code(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let client = client::AdminClient::new(&cli.url, cli.token)?;
    match cli.command {
        Command::Apply { files, prune, dry_run } => commands::apply(&client, &files.files, prune, dry_run).await,
        Command::Diff { files, prune, format } => commands::diff(&client, &files.files, prune, format.output).await,
        Command::Export => commands::export(&client).await,
        Command::Get { kind, name, format } => commands::get(&client, kind, name.as_deref(), format.output).await,
        Command::Delete { kind, name } => commands::delete(&client, kind, &name).await,
        Command::Keys(KeysCommand::Create(args)) => commands::key_create(&client, args).await,
        Command::Keys(KeysCommand::Revoke { name }) => commands::key_revoke(&client, &name).await,
        Command::Keys(KeysCommand::List { team, format }) => commands::key_list(&client, team, format.output).await,
        Command::Fleet { format } => commands::fleet(&client, format.output).await,
        Command::Spend(args) => commands::spend(&client, args).await,
        Command::Audit(args) => commands::audit(&client, args).await,
        Command::Policy(PolicyCommand::Test { paths, live, format }) => {
            commands::policy_test(&client, &paths, live, format.output).await
        }
    }
}
