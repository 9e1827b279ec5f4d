//! The admin API against its own OpenAPI document, with a real control plane: the document passes a real
//! OpenAPI 3.1 validator, and a bounded schemathesis run from it finds no server error and no answer the document
//! does not allow. The Python tools come from the venv `scripts/test.sh` prepares (`tests/admin_api/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A tool installed in the repository's `.venv`.
fn venv_tool(name: &str) -> PathBuf {
    let path = root().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs it (python3 -m venv .venv && .venv/bin/pip install -r tests/admin_api/requirements.txt)",
        path.display()
    );
    path
}

/// A scratch directory of this test's own under `target/` (the tools' caches and files land there).
fn scratch(test: &str) -> PathBuf {
    let dir = root().join("target/e2e-logs").join(test).join("work");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn document(cp: &ControlPlane) -> Value {
    let url = format!("http://{}/admin/v1/openapi.json", cp.admin);
    cp.http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn validate(path: &Path) -> (bool, String) {
    let output = tokio::process::Command::new(venv_tool("openapi-spec-validator")).arg(path).output().await.unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), report)
}

#[sqlx::test(migrations = false)]
async fn the_openapi_document_passes_an_openapi_3_1_validator(pool: PgPool) {
    let test = "openapi_valid";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let document = document(&cp).await;
    assert_eq!(document["openapi"], json!("3.1.0"));
    let dir = scratch(test);
    let path = dir.join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let (valid, report) = validate(&path).await;
    assert!(valid, "the served document is not valid OpenAPI 3.1:\n{report}");
    assert!(report.contains("OK"), "{report}");

    // The validator does catch what the document used to get wrong: a path parameter without a schema.
    let mut broken = document.clone();
    let parameter = broken.pointer_mut("/paths/~1admin~1v1~1backends~1{name}/get/parameters/0").unwrap();
    parameter.as_object_mut().unwrap().remove("schema");
    let broken_path = dir.join("openapi-broken.json");
    std::fs::write(&broken_path, serde_json::to_vec(&broken).unwrap()).unwrap();
    let (valid, report) = validate(&broken_path).await;
    assert!(!valid, "the validator accepted a parameter without a schema:\n{report}");
}

/// Every check schemathesis has but `positive_data_acceptance`: the document cannot state everything a write must
/// satisfy (names that must exist, CEL that must compile, URLs the allowlist must permit), so schema-valid data is
/// legitimately refused. Everything it does state is enforced (`negative_data_rejection`), and every answer must be
/// documented and match its schema, headers included.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance";
/// Test cases per operation and phase: about a minute on two cores, a few minutes on a loaded CI machine.
const MAX_EXAMPLES: &str = "50";
/// The message of a CPython 3.11 interpreter bug that hypothesis can trip over, whatever the server answered.
const INTERPRETER_BUG: &str = "AST constructor recursion depth mismatch";

#[sqlx::test(migrations = false)]
async fn a_bounded_fuzz_of_the_admin_api_finds_no_server_error_and_no_schema_violation(pool: PgPool) {
    let test = "admin_api_fuzz";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    // A data plane, so the fleet view answers with a node in it.
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    eventually(Duration::from_secs(30), "the data plane in the fleet view", || async {
        cp.fleet().await["nodes"].as_array().is_some_and(|nodes| !nodes.is_empty()).then_some(())
    })
    .await;
    let base = format!("http://{}", cp.admin);
    let run = || async {
        let mut command = tokio::process::Command::new(venv_tool("schemathesis"));
        command
            .args(["run", &format!("{base}/admin/v1/openapi.json"), "--url", &base])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args(["--checks", "all", "--exclude-checks", EXCLUDED_CHECKS])
            .args(["--max-examples", MAX_EXAMPLES, "--workers", "2", "--request-timeout", "20", "--no-color"])
            .current_dir(scratch(test))
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(600), command.output())
            .await
            .expect("schemathesis ran for more than 10 minutes")
            .unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output, report)
    };
    let (mut output, mut report) = run().await;
    if !output.status.success() && report.contains(INTERPRETER_BUG) {
        // This machine's Python 3.11.7 can raise this inside hypothesis itself (a CPython bug, gh-106905, seen once
        // in many runs); it says nothing about the gateway, so the run is repeated once, loudly, and a second
        // occurrence fails the test.
        eprintln!("schemathesis hit the CPython bug {INTERPRETER_BUG:?}; running it once more:\n{report}");
        (output, report) = run().await;
    }
    std::fs::write(scratch(test).join("schemathesis.log"), &report).unwrap();
    assert!(
        output.status.success(),
        "schemathesis found failures (rerun one with the `st replay` or curl line it prints):\n{report}\n{}",
        log_tail(&cp.log)
    );
    let operations: usize =
        document(&cp).await["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    assert!(report.contains(&format!("Tested: {operations}")), "all {operations} operations were tested:\n{report}");
    assert!(report.contains(" passed"), "{report}");

    // The control plane is still there, and its audit log, written to by the whole run, is one intact chain.
    let (status, verified) = cp.call("GET", "/audit/verify", None).await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["intact"], json!(true), "{verified}");
    assert!(verified["rows_checked"].as_i64().unwrap() > 10, "{verified}");
    drop(dp);
}
