//! The commands: each reads its arguments, calls the admin API, prints, and returns the exit code.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use crate::client::{AdminClient, ClientError};
use crate::kinds::{self, Kind};
use crate::manifest::{Manifest, ManifestError};
use crate::output::{self, Column, Output, emit};
use crate::plan::{self, PlanError};
use crate::policy_test::{self, Engine, TestError};

/// The exit code for an error (documented in `--help`).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let client = error
        .downcast_ref::<ClientError>()
        .or_else(|| match error.downcast_ref::<PlanError>() {
            Some(PlanError::Refused { source, .. }) => Some(source.as_ref()),
            Some(PlanError::Client(source)) => Some(source),
            _ => None,
        })
        .or_else(|| match error.downcast_ref::<TestError>() {
            Some(TestError::Client(source)) => Some(source),
            _ => None,
        });
    match client {
        Some(ClientError::Api { status, .. }) if status.as_u16() == 401 || status.as_u16() == 403 => 4,
        Some(ClientError::Api { status, .. }) if status.is_client_error() => 3,
        Some(_) => 5,
        None => 3,
    }
}

fn load(files: &[PathBuf]) -> Result<Manifest, ManifestError> {
    Manifest::load(files)
}

pub async fn apply(client: &AdminClient, files: &[PathBuf], prune: bool, dry_run: bool) -> anyhow::Result<u8> {
    let manifest = load(files)?;
    let plan = plan::plan(client, &manifest, prune).await?;
    if dry_run || plan.is_empty() {
        emit(plan.render().trim_end());
        return Ok(0);
    }
    plan.apply(client, |change| {
        let verb = match change.action {
            plan::Action::Create => "created",
            plan::Action::Update => "updated",
            plan::Action::Delete => "deleted",
        };
        emit(&format!("{verb} {} {}", change.kind.document_name(), change.name));
    })
    .await?;
    let count = |action| plan.changes.iter().filter(|c| c.action == action).count();
    emit(&format!(
        "applied: {} created, {} updated, {} deleted, {} unchanged",
        count(plan::Action::Create),
        count(plan::Action::Update),
        count(plan::Action::Delete),
        plan.unchanged
    ));
    Ok(0)
}

pub async fn diff(client: &AdminClient, files: &[PathBuf], prune: bool, output: Output) -> anyhow::Result<u8> {
    let manifest = load(files)?;
    let plan = plan::plan(client, &manifest, prune).await?;
    match output {
        Output::Table => emit(plan.render().trim_end()),
        other => output::print(other, &plan.to_json(), &[], &[]),
    }
    Ok(if plan.is_empty() { 0 } else { 1 })
}

pub async fn export(client: &AdminClient) -> anyhow::Result<u8> {
    emit(crate::export::export(client).await?.trim_end());
    Ok(0)
}

const NAME_COLUMNS: &[Column] =
    &[("NAME", "/name"), ("REVISION", "/meta/revision"), ("UPDATED", "/meta/updated_at"), ("BY", "/meta/updated_by")];

fn columns(kind: Kind) -> Vec<Column> {
    let mut columns = vec![NAME_COLUMNS[0]];
    columns.extend_from_slice(match kind {
        Kind::Backend => &[("KIND", "/kind"), ("REGION", "/region"), ("BASE URL", "/base_url")][..],
        Kind::Model => &[("BACKEND", "/backend"), ("UPSTREAM", "/upstream_model")][..],
        Kind::Alias => &[("STRATEGY", "/strategy"), ("CANDIDATES", "/candidates")][..],
        Kind::RoutePolicy => &[("PRIORITY", "/priority"), ("ACTION", "/action/type"), ("ENABLED", "/enabled")][..],
        Kind::ToolPolicy => &[("PRIORITY", "/priority")][..],
        Kind::Guardrail => &[("SIDE", "/side"), ("ACTION", "/action"), ("ENABLED", "/enabled")][..],
        Kind::ToolSchema | Kind::Budget => &[][..],
    });
    columns.extend_from_slice(&NAME_COLUMNS[1..]);
    columns
}

pub async fn get(client: &AdminClient, kind: Kind, name: Option<&str>, output: Output) -> anyhow::Result<u8> {
    let collection = kind.collection();
    let mut rows = match name {
        Some(name) => vec![client.get(&format!("/{collection}/{name}"), &[]).await?.body],
        None => client.list_all(&format!("/{collection}")).await?,
    };
    // An alias's candidates as their model names in a table.
    for row in &mut rows {
        if let Some(candidates) = row.get_mut("candidates").and_then(Value::as_array_mut) {
            for candidate in candidates.iter_mut() {
                if output == Output::Table {
                    *candidate = candidate.get("model").cloned().unwrap_or(Value::Null);
                }
            }
        }
    }
    let whole = match name {
        Some(_) => rows.first().cloned().unwrap_or(Value::Null),
        None => Value::Array(rows.clone()),
    };
    output::print(output, &whole, &rows, &columns(kind));
    Ok(0)
}

pub async fn delete(client: &AdminClient, kind: Kind, name: &str) -> anyhow::Result<u8> {
    let path = format!("/{}/{name}", kind.collection());
    let read = client.get(&path, &[]).await?;
    client.delete(&path, read.etag.as_deref()).await?;
    emit(&format!("deleted {} {name}", kind.document_name()));
    Ok(0)
}

#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    name: String,
    #[arg(long)]
    team: Option<String>,
    /// A tag policies can read as `key.tags` (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// An alias or model the key may use (repeatable; none: any).
    #[arg(long = "allow")]
    allowed_aliases: Vec<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<i32>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<i64>,
    /// RFC 3339 expiry.
    #[arg(long)]
    expires_at: Option<String>,
    #[command(flatten)]
    format: output::FormatArgs,
}

const KEY_COLUMNS: &[Column] = &[
    ("NAME", "/name"),
    ("PREFIX", "/prefix"),
    ("TEAM", "/team"),
    ("TAGS", "/tags"),
    ("ALLOWED", "/allowed_aliases"),
    ("EXPIRES", "/expires_at"),
    ("REVOKED", "/revoked_at"),
];

pub async fn key_create(client: &AdminClient, args: KeyCreateArgs) -> anyhow::Result<u8> {
    let mut body = json!({"name": args.name, "tags": args.tags, "allowed_aliases": args.allowed_aliases});
    for (field, value) in [
        ("team", args.team.map(Value::from)),
        ("rpm_limit", args.rpm.map(Value::from)),
        ("tpm_limit", args.tpm.map(Value::from)),
        ("expires_at", args.expires_at.map(Value::from)),
    ] {
        if let Some(value) = value {
            body[field] = value;
        }
    }
    let created = client.post("/keys", &body).await?.body;
    match args.format.output {
        Output::Table => {
            emit(&output::table(std::slice::from_ref(&created), KEY_COLUMNS));
            let secret = created.get("secret").and_then(Value::as_str).unwrap_or_default();
            emit(&format!("secret (shown only now): {secret}"));
        }
        other => output::print(other, &created, &[], &[]),
    }
    Ok(0)
}

pub async fn key_revoke(client: &AdminClient, name: &str) -> anyhow::Result<u8> {
    client.post(&format!("/keys/{name}/revoke"), &json!({})).await?;
    emit(&format!("revoked key {name}"));
    Ok(0)
}

pub async fn key_list(client: &AdminClient, team: Option<String>, output: Output) -> anyhow::Result<u8> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        query.extend(team.clone().map(|t| ("team", t)));
        query.extend(after.clone().map(|a| ("after", a)));
        let page = client.get("/keys", &query).await?.body;
        keys.extend(page.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
        match page.get("next_after").and_then(Value::as_str) {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    output::print(output, &Value::Array(keys.clone()), &keys, KEY_COLUMNS);
    Ok(0)
}

pub async fn fleet(client: &AdminClient, output: Output) -> anyhow::Result<u8> {
    let fleet = client.get("/fleet", &[]).await?.body;
    let nodes = fleet.get("nodes").and_then(Value::as_array).cloned().unwrap_or_default();
    if output == Output::Table {
        let version = fleet.get("config_version").map(Value::to_string).unwrap_or_default();
        emit(&format!("config version {version}"));
    }
    let columns: &[Column] = &[
        ("NODE", "/node_id"),
        ("REPLICA", "/replica"),
        ("VERSION", "/software_version"),
        ("CONNECTED", "/connected"),
        ("ACKED", "/acked_version"),
        ("BEHIND", "/behind"),
        ("LAST SEEN", "/last_seen"),
        ("LAST NACK", "/last_nack_error"),
    ];
    output::print(output, &fleet, &nodes, columns);
    Ok(0)
}

#[derive(Debug, Args)]
pub struct SpendArgs {
    /// Comma-separated subset of key, team, alias, backend, model, day.
    #[arg(long)]
    group_by: Option<String>,
    /// RFC 3339, inclusive (default: the start of this month).
    #[arg(long)]
    from: Option<String>,
    /// RFC 3339, exclusive (default: now).
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    team: Option<String>,
    #[arg(long)]
    alias: Option<String>,
    #[arg(long)]
    backend: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// table, json, yaml or csv.
    #[arg(long = "format", short = 'o', alias = "output", value_enum, default_value_t = SpendFormat::Table)]
    format: SpendFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpendFormat {
    Table,
    Json,
    Yaml,
    Csv,
}

pub async fn spend(client: &AdminClient, args: SpendArgs) -> anyhow::Result<u8> {
    let mut query: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("group_by", args.group_by),
        ("from", args.from),
        ("to", args.to),
        ("key", args.key),
        ("team", args.team),
        ("alias", args.alias),
        ("backend", args.backend),
        ("model", args.model),
    ] {
        query.extend(value.map(|v| (name, v)));
    }
    if args.format == SpendFormat::Csv {
        query.push(("format", "csv".to_owned()));
        emit(client.get_text("/spend", &query).await?.trim_end());
        return Ok(0);
    }
    let report = client.get("/spend", &query).await?.body;
    let output = match args.format {
        SpendFormat::Json => Output::Json,
        SpendFormat::Yaml => Output::Yaml,
        _ => Output::Table,
    };
    let mut rows = report.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
    // One column per grouped dimension, then the totals.
    let dimensions: Vec<String> = report
        .get("group_by")
        .and_then(Value::as_array)
        .map(|d| d.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if let Some(total) = report.get("total") {
        let mut total = total.clone();
        if let Some(first) = dimensions.first() {
            total[first.as_str()] = json!("TOTAL");
        }
        rows.push(total);
    }
    let mut columns: Vec<Column> = dimensions
        .iter()
        .map(|d| -> Column {
            match d.as_str() {
                "key" => ("KEY", "/key"),
                "team" => ("TEAM", "/team"),
                "alias" => ("ALIAS", "/alias"),
                "backend" => ("BACKEND", "/backend"),
                "model" => ("MODEL", "/model"),
                _ => ("DAY", "/day"),
            }
        })
        .collect();
    columns.extend_from_slice(&[
        ("REQUESTS", "/requests"),
        ("INPUT TOKENS", "/input_tokens"),
        ("OUTPUT TOKENS", "/output_tokens"),
        ("COST USD", "/cost_usd"),
    ]);
    output::print(output, &report, &rows, &columns);
    Ok(0)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    actor: Option<String>,
    /// create, update, delete, revoke, rotate_token.
    #[arg(long)]
    action: Option<String>,
    /// A resource kind: backend, route_policy, api_key, principal, ...
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// RFC 3339, inclusive.
    #[arg(long)]
    since: Option<String>,
    /// 1 to 1000.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    format: output::FormatArgs,
}

pub async fn audit(client: &AdminClient, args: AuditArgs) -> anyhow::Result<u8> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    for (name, value) in [
        ("actor", args.actor),
        ("action", args.action),
        ("kind", args.kind),
        ("name", args.name),
        ("since", args.since),
    ] {
        query.extend(value.map(|v| (name, v)));
    }
    let page = client.get("/audit", &query).await?.body;
    let items = page.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    let columns: &[Column] = &[
        ("ID", "/id"),
        ("AT", "/at"),
        ("ACTOR", "/actor"),
        ("ACTION", "/action"),
        ("KIND", "/resource_kind"),
        ("NAME", "/resource_name"),
        ("VERSION", "/config_version"),
    ];
    output::print(args.format.output, &page, &items, columns);
    Ok(0)
}

pub async fn policy_test(client: &AdminClient, paths: &[PathBuf], live: bool, output: Output) -> anyhow::Result<u8> {
    let manifest = load(paths)?;
    if manifest.tests.is_empty() {
        anyhow::bail!("no `kind: PolicyTest` documents under the given paths");
    }
    let engine = if live {
        Engine::Live(client)
    } else {
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        for resource in &manifest.resources {
            let what = format!("{} {:?}", resource.kind.document_name(), resource.name);
            match resource.kind.canonical(resource.spec.clone()) {
                Ok(spec) => {
                    if let Err(invalid) = kinds::check(resource.kind, &spec) {
                        for error in invalid {
                            errors.push(format!("{}: {what}: {error}", resource.locate(Some(&error.field))));
                        }
                    }
                    resources.push((resource.kind, spec));
                }
                Err(message) => errors.push(format!("{}: {what}: {message}", resource.location)),
            }
        }
        if !errors.is_empty() {
            anyhow::bail!("{}", errors.join("\n"));
        }
        let config = kinds::config_set(&resources).map_err(anyhow::Error::msg)?;
        let integrity: Vec<String> = config.check_integrity().iter().map(ToString::to_string).collect();
        if !integrity.is_empty() {
            anyhow::bail!("the configuration under the given paths is inconsistent:\n{}", integrity.join("\n"));
        }
        let router = policy_engine::routing::Router::compile(&config).map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("route policies do not compile:\n{}", text.join("\n"))
        })?;
        Engine::Local(Box::new(router))
    };
    let report = policy_test::run(&engine, &manifest.tests).await.context("policy test")?;
    let where_ = if live { "live control plane" } else { "files" };
    match output {
        Output::Table => {
            for failure in &report.failures {
                emit(&failure.to_string());
            }
            emit(&format!("{} passed, {} failed ({where_})", report.passed, report.failures.len()));
        }
        other => {
            let summary = json!({"passed": report.passed, "failed": report.failures.len(), "against": where_,
                                 "failures": report.failures});
            output::print(other, &summary, &[], &[]);
        }
    }
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}
