//! `policies/seed/`: its YAML is the same configuration as `bundle.json` (which other tests apply), and its own
//! policy tests pass with the engine, so CI keeps the examples honest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::kinds::Kind;
use crate::manifest::Manifest;
use crate::policy_test::{self, Engine};

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/seed")
}

fn local_engine(manifest: &Manifest) -> Engine<'static> {
    let resources: Vec<(Kind, Value)> =
        manifest.resources.iter().map(|r| (r.kind, r.kind.canonical(r.spec.clone()).unwrap())).collect();
    let config = crate::kinds::config_set(&resources).unwrap();
    assert!(config.check_integrity().is_empty(), "{:?}", config.check_integrity());
    Engine::Local(Box::new(policy_engine::routing::Router::compile(&config).unwrap()))
}

#[test]
fn the_yaml_holds_the_same_configuration_as_the_bundle() {
    let manifest = Manifest::load(&[seed_dir()]).unwrap();
    let bundle: Value = serde_json::from_str(include_str!("../../policies/seed/bundle.json")).unwrap();
    let sections = [
        (Kind::Backend, "backends"),
        (Kind::Model, "models"),
        (Kind::Alias, "aliases"),
        (Kind::RoutePolicy, "route_policies"),
        (Kind::ToolSchema, "tool_schemas"),
        (Kind::ToolPolicy, "tool_policies"),
        (Kind::Budget, "budgets"),
        (Kind::Guardrail, "guardrails"),
    ];
    for (kind, section) in sections {
        let mut from_bundle: Vec<Value> = bundle[section]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|spec| kind.canonical(spec).unwrap())
            .collect();
        let mut from_yaml: Vec<Value> = manifest
            .resources
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| kind.canonical(r.spec.clone()).unwrap())
            .collect();
        let by_name = |v: &Value| v["name"].as_str().unwrap_or_default().to_owned();
        from_bundle.sort_by_key(by_name);
        from_yaml.sort_by_key(by_name);
        assert_eq!(from_yaml, from_bundle, "{section} differ between policies/seed/*.yaml and bundle.json");
    }
}

#[test]
fn the_seed_policy_tests_pass() {
    let manifest = Manifest::load(&[seed_dir()]).unwrap();
    assert!(manifest.tests.len() >= 10, "the seed patterns carry their tests");
    let engine = local_engine(&manifest);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let report = runtime.block_on(policy_test::run(&engine, &manifest.tests)).unwrap();
    let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(report.passed, manifest.tests.len());
}

#[test]
fn a_failing_case_names_itself_with_expected_and_got() {
    let mut manifest = Manifest::load(&[seed_dir()]).unwrap();
    for resource in &mut manifest.resources {
        if resource.name == "task-code-generation" {
            resource.spec["action"]["alias"] = "cheap".into();
        }
    }
    let engine = local_engine(&manifest);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let report = runtime.block_on(policy_test::run(&engine, &manifest.tests)).unwrap();
    let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    let failure = failures.iter().find(|f| f.contains("code generation goes to the code model")).unwrap();
    assert!(failure.contains("40-task-routing.yaml:18"), "{failure}");
    assert!(failure.contains("expected alias code-model-fast, got cheap"), "{failure}");
    assert!(failure.contains("expected backend mistral-eu, got groq-us"), "{failure}");
}
