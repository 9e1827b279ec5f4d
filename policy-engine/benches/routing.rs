//! The routing decision per request: 100 route policies evaluated (the matching one last), a residency
//! constraint, a three-candidate alias. Baseline in the same run: no policies, the alias named by the request.
//! The interpreted case shows what policies outside the natively evaluated subset cost.
//! `cargo bench -p policy-engine --bench routing`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use policy_engine::config::*;
use policy_engine::facts::{KeyFacts, RequestFacts};
use policy_engine::routing::Router;
use serde_json::json;

#[derive(Clone, Copy)]
enum Shape {
    /// Policies open with `has(request.metadata.tenant) && ...`, which routing skips without evaluating when the
    /// request has no tenant.
    Guarded,
    /// Every policy must be evaluated; all are in the natively evaluated subset.
    Unguarded,
    /// Every policy must be evaluated, and each calls a function (`size`) only the CEL interpreter evaluates.
    Interpreted,
}

fn config(policies: usize, shape: Shape) -> ConfigSet {
    let mut config = ConfigSet::default();
    for (i, region) in ["us", "eu", "eu"].iter().enumerate() {
        let backend: BackendSpec = serde_json::from_value(json!({"name": format!("b{i}"), "kind": "openai",
            "base_url": "https://api.example.com", "region": region}))
        .unwrap();
        config.backends.insert(backend.name.clone(), backend);
        let model: ModelSpec = serde_json::from_value(json!({"name": format!("m{i}"), "backend": format!("b{i}"),
            "upstream_model": "x", "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}))
        .unwrap();
        config.models.insert(model.name.clone(), model);
    }
    let alias: AliasSpec = serde_json::from_value(
        json!({"name": "gpt", "candidates": [{"model": "m0"}, {"model": "m1"}, {"model": "m2"}]}),
    )
    .unwrap();
    config.aliases.insert(alias.name.clone(), alias);
    for i in 0..policies {
        // Realistic shapes: metadata, key and size conditions. Only the last (lowest priority) matches.
        let when = if i + 1 == policies {
            "request.metadata.task == 'code_generation' && key.team == 'search'".to_owned()
        } else {
            match shape {
                Shape::Guarded => format!(
                    "has(request.metadata.tenant) && request.metadata.tenant == 't{i}' && request.prompt_tokens > {i}"
                ),
                Shape::Unguarded => {
                    format!("key.team == 'team-{i}' || (request.prompt_tokens > 100000 && 'x{i}' in key.tags)")
                }
                Shape::Interpreted => format!("key.team == 'team-{i}' || size(key.tags) > {}", i + 10),
            }
        };
        let policy: RoutePolicySpec =
            serde_json::from_value(json!({"name": format!("p{i:03}"), "priority": 1000 - i as i32,
            "when": when, "action": {"type": "route", "alias": "gpt"}}))
            .unwrap();
        config.route_policies.insert(policy.name.clone(), policy);
    }
    if policies > 0 {
        let residency: RoutePolicySpec = serde_json::from_value(json!({"name": "residency", "priority": 5000,
            "when": "has(request.metadata.data_classification) && request.metadata.data_classification == 'restricted'",
            "action": {"type": "constrain", "require": "backend.region == 'eu'"}}))
        .unwrap();
        config.route_policies.insert(residency.name.clone(), residency);
    }
    config
}

fn request() -> RequestFacts {
    let metadata = json!({"task": "code_generation", "data_classification": "restricted"});
    RequestFacts {
        model: "gpt".into(),
        endpoint: "chat.completions".into(),
        prompt_tokens: 1200,
        metadata: metadata.as_object().unwrap().clone(),
        ..RequestFacts::default()
    }
}

fn bench(c: &mut Criterion) {
    let key = KeyFacts { id: "k".into(), name: "app".into(), team: Some("search".into()), tags: vec!["prod".into()] };
    let request = request();
    let mut group = c.benchmark_group("route");
    for (policies, shape, name) in [
        (0, Shape::Unguarded, "0_policies"),
        (100, Shape::Guarded, "100_guarded_policies"),
        (100, Shape::Unguarded, "100_unguarded_policies"),
        (100, Shape::Interpreted, "100_interpreted_policies"),
    ] {
        let router = Router::compile(&config(policies, shape)).unwrap();
        let decision = router.route(&request, &key, Utc::now(), None);
        let policy = match &decision {
            policy_engine::routing::Decision::Route { policy, candidates, .. } => {
                assert_eq!(candidates.len(), if policies > 0 { 2 } else { 3 });
                policy.clone()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(policy.is_some(), policies > 0);
        group.bench_function(name, |b| {
            b.iter(|| black_box(router.route(black_box(&request), black_box(&key), Utc::now(), None)))
        });
    }
    group.finish();

    // Compiling is once per snapshot, off the request path: parsing, bounds, type checking and cost of each policy.
    let mut group = c.benchmark_group("compile");
    let hundred = config(100, Shape::Unguarded);
    group.bench_function("100_unguarded_policies", |b| b.iter(|| black_box(Router::compile(black_box(&hundred)))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
