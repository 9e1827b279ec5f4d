//! `gatewayctl` against a real control plane: apply, diff (exit codes), export → apply round trip, prune, a
//! server-side validation error located in its file, policy tests locally and live, and the read commands.

use std::path::{Path, PathBuf};

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn gatewayctl(cp: &ControlPlane, args: &[&str]) -> Run {
    gatewayctl_as(&format!("http://{}", cp.admin), ADMIN_TOKEN, args).await
}

async fn gatewayctl_as(url: &str, token: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(binary("gatewayctl"))
        .args(args)
        .env("GATEWAY_URL", url)
        .env("GATEWAY_ADMIN_TOKEN", token)
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A fresh copy of `policies/seed/`'s YAML under this test's scratch directory.
fn seed_copy(test: &str) -> PathBuf {
    let dir = root().join("target/e2e-logs").join(test).join("seed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(root().join("policies/seed")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[sqlx::test(migrations = false)]
async fn apply_diff_export_round_trip_and_prune(pool: PgPool) {
    let test = "gatewayctl_apply";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let seed = seed_copy(test);

    let diff = gatewayctl(&cp, &["diff", "-f", arg(&seed)]).await;
    assert_eq!(diff.code, 1, "changes pending: {}{}", diff.stdout, diff.stderr);
    assert!(diff.stdout.contains("+ create Backend openai-us"), "{}", diff.stdout);

    let apply = gatewayctl(&cp, &["apply", "-f", arg(&seed)]).await;
    assert_eq!(apply.code, 0, "{}{}", apply.stdout, apply.stderr);
    assert!(apply.stdout.contains("applied: 19 created, 0 updated, 0 deleted, 0 unchanged"), "{}", apply.stdout);
    let (_, version) = cp.head().await;

    // Applied: nothing to change, and applying again writes nothing.
    let diff = gatewayctl(&cp, &["diff", "-f", arg(&seed)]).await;
    assert_eq!(diff.code, 0, "{}{}", diff.stdout, diff.stderr);
    assert!(diff.stdout.contains("0 to create, 0 to update, 0 to delete, 19 unchanged"), "{}", diff.stdout);
    let again = gatewayctl(&cp, &["apply", "-f", arg(&seed)]).await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(cp.head().await.1, version, "an unchanged apply writes nothing");

    // One change: shown per resource, exit 1; applied; then nothing again.
    edit(&seed.join("40-task-routing.yaml"), "priority: 50", "priority: 60");
    let diff = gatewayctl(&cp, &["diff", "-f", arg(&seed)]).await;
    assert_eq!(diff.code, 1, "{}{}", diff.stdout, diff.stderr);
    assert!(diff.stdout.contains("~ update RoutePolicy task-code-generation"), "{}", diff.stdout);
    assert!(diff.stdout.contains("- priority: 50") && diff.stdout.contains("+ priority: 60"), "{}", diff.stdout);
    assert!(diff.stdout.contains("0 to create, 1 to update, 0 to delete, 18 unchanged"), "{}", diff.stdout);
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&seed)]).await;
    assert!(apply.stdout.contains("updated RoutePolicy task-code-generation"), "{}", apply.stdout);
    let (_, policy) = cp.call("GET", "/route-policies/task-code-generation", None).await;
    assert_eq!(policy["priority"], 60);
    assert_eq!(gatewayctl(&cp, &["diff", "-f", arg(&seed)]).await.code, 0);

    // A backend with a sealed literal secret, written outside the files.
    cp.create(
        "backends",
        json!({"name": "sealed-one", "kind": "openai", "base_url": "https://api.example.com/v1",
               "secret": {"value": "sk-never-exported"}}),
    )
    .await;
    // And one of each remaining kind, so that every kind goes through the round trip.
    cp.create(
        "tool-schemas",
        json!({"name": "get_weather", "schema": {"type": "object", "properties": {"city": {"type": "string"}},
               "required": ["city"]}}),
    )
    .await;
    cp.create(
        "tool-policies",
        json!({"name": "strict-tools", "priority": 10, "when": "request.stream == false", "on_invalid": "reject",
               "deny": ["delete_everything"]}),
    )
    .await;
    cp.create(
        "budgets",
        json!({"name": "search-monthly", "scope": {"type": "team", "team": "search"}, "period": "month",
               "limit_usd": "500.00", "action": "block", "soft_threshold": "0.8"}),
    )
    .await;

    // Export → apply → diff: nothing changes, and the sealed secret is neither exported nor lost.
    let export = gatewayctl(&cp, &["export"]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    assert!(!export.stdout.contains("sk-never-exported"));
    assert!(export.stdout.contains("# secret: a sealed literal (sha256:"), "{}", export.stdout);
    let exported = root().join("target/e2e-logs").join(test).join("exported.yaml");
    std::fs::write(&exported, &export.stdout).unwrap();
    let (_, before) = cp.head().await;
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&exported), "--prune"]).await;
    assert_eq!(apply.code, 0, "{}{}", apply.stdout, apply.stderr);
    assert!(apply.stdout.contains("0 to create, 0 to update, 0 to delete, 23 unchanged"), "{}", apply.stdout);
    assert_eq!(cp.head().await.1, before, "the round trip writes nothing");
    let diff = gatewayctl(&cp, &["diff", "-f", arg(&exported), "--prune"]).await;
    assert_eq!(diff.code, 0, "{}{}", diff.stdout, diff.stderr);
    let (_, sealed) = cp.call("GET", "/backends/sealed-one", None).await;
    assert_eq!(sealed["meta"]["secret"]["encrypted"], true);

    // Prune: without --prune what the files lack is kept (and listed); with it, deleted in reverse order.
    std::fs::remove_file(seed.join("70-embeddings.yaml")).unwrap();
    let diff = gatewayctl(&cp, &["diff", "-f", arg(&seed)]).await;
    assert_eq!(diff.code, 0, "{}{}", diff.stdout, diff.stderr);
    assert!(
        diff.stdout.contains("kept (--prune deletes them): Backend sealed-one, Alias corpus-embeddings"),
        "{}",
        diff.stdout
    );
    let diff = gatewayctl(&cp, &["diff", "-f", arg(&seed), "--prune", "-o", "json"]).await;
    assert_eq!(diff.code, 1);
    let plan: Value = serde_json::from_str(&diff.stdout).unwrap();
    let deletes: Vec<&str> = plan["changes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(deletes, ["sealed-one", "corpus-embeddings", "get_weather", "strict-tools", "search-monthly"]);
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&seed), "--prune"]).await;
    assert_eq!(apply.code, 0, "{}{}", apply.stdout, apply.stderr);
    assert!(apply.stdout.contains("deleted Budget search-monthly\ndeleted ToolPolicy strict-tools\ndeleted ToolSchema get_weather\ndeleted Alias corpus-embeddings\ndeleted Backend sealed-one"), "{}", apply.stdout);
    assert_eq!(cp.call("GET", "/aliases/corpus-embeddings", None).await.0, 404);
    assert_eq!(gatewayctl(&cp, &["diff", "-f", arg(&seed), "--prune"]).await.code, 0);
}

#[sqlx::test(migrations = false)]
async fn errors_point_at_the_file_and_line(pool: PgPool) {
    let test = "gatewayctl_errors";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let dir = root().join("target/e2e-logs").join(test).join("files");
    std::fs::create_dir_all(&dir).unwrap();

    // Refused by the server (a metadata address): the document's `base_url` line.
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "kind: Backend\nspec:\n  name: ok-one\n  kind: openai\n  base_url: https://api.example.com/v1\n---\n\
         # the metadata service is never a backend\nkind: Backend\nspec:\n  name: sneaky\n  kind: openai\n\
         \x20 base_url: http://169.254.169.254/v1\n",
    )
    .unwrap();
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&file)]).await;
    assert_eq!(apply.code, 3, "{}{}", apply.stdout, apply.stderr);
    assert!(apply.stderr.contains("bad.yaml:12: Backend \"sneaky\""), "{}", apply.stderr);
    assert!(apply.stderr.contains("169.254.169.254"), "{}", apply.stderr);
    assert!(apply.stdout.contains("created Backend ok-one"), "{}", apply.stdout);

    // Refused locally (an unknown field) before anything is sent: the document's line and the field.
    std::fs::write(&file, "kind: Model\nspec:\n  name: m\n  backend: ok-one\n  upstream_model: x\n  colour: red\n")
        .unwrap();
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&file)]).await;
    assert_eq!(apply.code, 3, "{}{}", apply.stdout, apply.stderr);
    assert!(apply.stderr.contains("bad.yaml:1: Model \"m\"") && apply.stderr.contains("colour"), "{}", apply.stderr);

    // Refused by the engine's own checks before anything is sent: every error, each at its line.
    std::fs::write(
        &file,
        "kind: Model\nspec:\n  name: m\n  backend: ok-one\n  upstream_model: x\n  capabilities: {chat: true}\n\
         \x20 pricing: {input: \"-1\", output: \"1\"}\n---\nkind: Model\nspec:\n  name: m2\n  backend: ok-one\n\
         \x20 upstream_model: x\n  capabilities: {chat: true}\n  pricing: {input: \"1\", output: \"-1\"}\n",
    )
    .unwrap();
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&file)]).await;
    assert_eq!(apply.code, 3, "{}{}", apply.stdout, apply.stderr);
    assert!(
        apply.stderr.contains("bad.yaml:7: Model \"m\": pricing.input: prices must not be negative"),
        "{}",
        apply.stderr
    );
    assert!(
        apply.stderr.contains("bad.yaml:15: Model \"m2\": pricing.output: prices must not be negative"),
        "{}",
        apply.stderr
    );
    assert_eq!(cp.call("GET", "/models/m", None).await.0, 404);

    // YAML that does not parse.
    std::fs::write(&file, "kind: Model\nspec:\n  name: [m\n").unwrap();
    let apply = gatewayctl(&cp, &["apply", "-f", arg(&file)]).await;
    assert_eq!(apply.code, 3);
    assert!(apply.stderr.contains("bad.yaml:"), "{}", apply.stderr);

    // A wrong token, an unreachable control plane.
    let url = format!("http://{}", cp.admin);
    assert_eq!(gatewayctl_as(&url, "wrong", &["get", "backends"]).await.code, 4);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(gatewayctl_as(&nowhere, ADMIN_TOKEN, &["get", "backends"]).await.code, 5);
}

#[sqlx::test(migrations = false)]
async fn policy_tests_fail_when_a_policy_routes_elsewhere_locally_and_live(pool: PgPool) {
    let test = "gatewayctl_policy_test";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let seed = seed_copy(test);

    let local = gatewayctl(&cp, &["policy", "test", arg(&seed)]).await;
    assert_eq!(local.code, 0, "{}{}", local.stdout, local.stderr);
    assert!(local.stdout.contains(" passed, 0 failed (files)"), "{}", local.stdout);
    assert_eq!(gatewayctl(&cp, &["apply", "-f", arg(&seed)]).await.code, 0);
    let live = gatewayctl(&cp, &["policy", "test", arg(&seed), "--live"]).await;
    assert_eq!(live.code, 0, "{}{}", live.stdout, live.stderr);
    assert!(live.stdout.contains(" passed, 0 failed (live control plane)"), "{}", live.stdout);

    // Code generation now routed to the cheap alias: the case fails, locally at once, live once applied.
    edit(
        &seed.join("40-task-routing.yaml"),
        "action: {type: route, alias: code-model-fast}",
        "action: {type: route, alias: cheap}",
    );
    for (args, applied) in
        [(vec!["policy", "test", arg(&seed)], false), (vec!["policy", "test", arg(&seed), "--live"], true)]
    {
        if applied {
            assert_eq!(gatewayctl(&cp, &["apply", "-f", arg(&seed)]).await.code, 0);
        }
        let run = gatewayctl(&cp, &args).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("FAIL code generation goes to the code model ("), "{}", run.stdout);
        assert!(
            run.stdout.contains("40-task-routing.yaml:18): expected alias code-model-fast, got cheap"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("expected backend mistral-eu, got groq-us"), "{}", run.stdout);
        let json = gatewayctl(&cp, &[args.as_slice(), &["-o", "json"]].concat()).await;
        assert_eq!(json.code, 1, "{}{}", json.stdout, json.stderr);
        let summary: Value = serde_json::from_str(&json.stdout).unwrap();
        let failure = &summary["failures"][0];
        assert_eq!(failure["case"], "code generation goes to the code model");
        assert_eq!(failure["mismatches"][0], "expected alias code-model-fast, got cheap");
    }
}

#[sqlx::test(migrations = false)]
async fn read_commands_and_keys(pool: PgPool) {
    let test = "gatewayctl_reads";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    assert_eq!(gatewayctl(&cp, &["apply", "-f", arg(&seed_copy(test))]).await.code, 0);

    let table = gatewayctl(&cp, &["get", "aliases"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.lines().any(|l| l.starts_with("gpt-4o ") && l.contains("gpt-4o-openai,gpt-4o-azure-eu")),
        "{}",
        table.stdout
    );
    let one = gatewayctl(&cp, &["get", "route-policy", "data-residency", "-o", "json"]).await;
    let one: Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(one["action"]["type"], "constrain");
    assert_eq!(gatewayctl(&cp, &["get", "model", "nope"]).await.code, 3);

    let created =
        gatewayctl(&cp, &["keys", "create", "ci-bot", "--team", "platform", "--allow", "gpt-4o", "-o", "json"]).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let created: Value = serde_json::from_str(&created.stdout).unwrap();
    assert!(created["secret"].as_str().is_some_and(|s| !s.is_empty()));
    let list = gatewayctl(&cp, &["keys", "list", "--team", "platform", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(list[0]["name"], "ci-bot");
    assert_eq!(gatewayctl(&cp, &["keys", "revoke", "ci-bot"]).await.code, 0);
    let (_, key) = cp.call("GET", "/keys/ci-bot", None).await;
    assert!(key["revoked_at"].is_string());

    assert_eq!(gatewayctl(&cp, &["delete", "route-policy", "task-code-generation"]).await.code, 0);
    assert_eq!(cp.call("GET", "/route-policies/task-code-generation", None).await.0, 404);
    // Still referred to by models: refused by the server.
    assert_eq!(gatewayctl(&cp, &["delete", "backend", "openai-us"]).await.code, 3);

    let fleet = gatewayctl(&cp, &["fleet", "-o", "json"]).await;
    let fleet: Value = serde_json::from_str(&fleet.stdout).unwrap();
    assert!(fleet["nodes"].is_array());
    let spend = gatewayctl(&cp, &["spend", "--group-by", "team", "--format", "csv"]).await;
    assert_eq!(spend.code, 0, "{}", spend.stderr);
    assert!(spend.stdout.starts_with("team,"), "{}", spend.stdout);
    let spend = gatewayctl(&cp, &["spend", "--group-by", "team"]).await;
    assert!(spend.stdout.starts_with("TEAM") && spend.stdout.contains("\nTOTAL "), "{}", spend.stdout);
    let keys = gatewayctl(&cp, &["keys", "list"]).await;
    assert!(keys.stdout.starts_with("NAME") && keys.stdout.contains("\nci-bot "), "{}", keys.stdout);
    let fleet = gatewayctl(&cp, &["fleet"]).await;
    assert!(fleet.stdout.starts_with("config version ") && fleet.stdout.contains("NODE"), "{}", fleet.stdout);
    let spend = gatewayctl(&cp, &["spend", "-o", "json"]).await;
    assert!(serde_json::from_str::<Value>(&spend.stdout).unwrap()["total"].is_object());
    let audit = gatewayctl(&cp, &["audit", "--kind", "api_key", "-o", "json"]).await;
    let audit: Value = serde_json::from_str(&audit.stdout).unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["revoke", "create"]);
    let audit_table = gatewayctl(&cp, &["audit", "--limit", "5"]).await;
    assert!(audit_table.stdout.starts_with("ID") && audit_table.stdout.lines().count() == 6, "{}", audit_table.stdout);
}
