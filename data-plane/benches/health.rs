//! The breakers' cost on the request path: per request, planning its candidates (`Tracker::plan`), admitting an
//! attempt and recording its outcome (`Tracker::admit`, `Ticket::record`), for three candidates:
//! - baseline: backends without a breaker (the latency table is still fed);
//! - breakers with every trip (consecutive, error rate, latency), closed;
//! - the same with `least_latency` ordering;
//! - the first backend's breaker open (skipped by the plan).
//!
//! `cargo bench -p data-plane --bench health`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::stages::{Outcome, Tracker};
use policy_engine::config::{ConfigSet, Strategy};
use policy_engine::routing::PlannedCandidate;
use serde_json::{Value, json};

fn config(breaker: Option<Value>) -> ConfigSet {
    let mut config = ConfigSet::default();
    for i in 0..3 {
        let mut backend = json!({"name": format!("b{i}"), "kind": "openai", "base_url": "https://api.example.com/v1"});
        if let Some(breaker) = &breaker {
            backend["circuit_breaker"] = breaker.clone();
        }
        config.backends.insert(format!("b{i}"), serde_json::from_value(backend).unwrap());
        let model = json!({"name": format!("m{i}"), "backend": format!("b{i}"), "upstream_model": "u",
            "pricing": {"input": "1", "output": "2"}});
        config.models.insert(format!("m{i}"), serde_json::from_value(model).unwrap());
    }
    config
}

fn candidates() -> Vec<PlannedCandidate> {
    (0..3)
        .map(|i| PlannedCandidate {
            model: format!("m{i}"),
            backend: format!("b{i}"),
            upstream_model: "u".to_owned(),
            weight: 1,
        })
        .collect()
}

/// One request: plan, admit the first candidate, record a success.
fn request(tracker: &Tracker, strategy: Strategy) -> bool {
    let mut planned = candidates();
    let forced = tracker.plan(&mut planned, strategy);
    let ticket = tracker.admit(&planned[0], forced).unwrap();
    ticket.record(Some(Outcome::Answered { ttfb_ms: 120 }))
}

fn bench(c: &mut Criterion) {
    let full = json!({"failure_threshold": 5, "open_ms": 30000, "max_open_ms": 300000,
        "error_rate": {"percent": 50, "window_ms": 10000, "min_requests": 20},
        "latency": {"p99_ms": 2000, "window_ms": 30000, "min_requests": 20}});
    let mut group = c.benchmark_group("breakers per request (3 candidates)");
    let baseline = Tracker::default();
    baseline.sync(&config(None), 1, "a", false);
    group.bench_function("baseline: no breakers", |b| b.iter(|| black_box(request(&baseline, Strategy::Failover))));
    let closed = Tracker::default();
    closed.sync(&config(Some(full.clone())), 1, "b", false);
    group.bench_function("breakers with every trip, closed", |b| {
        b.iter(|| black_box(request(&closed, Strategy::Failover)))
    });
    group.bench_function("same, least_latency order", |b| {
        b.iter(|| black_box(request(&closed, Strategy::LeastLatency)))
    });
    let open = Tracker::default();
    open.sync(&config(Some(json!({"failure_threshold": 1, "open_ms": 86_400_000}))), 1, "c", false);
    let first = &candidates()[0];
    open.admit(first, false).unwrap().record(Some(Outcome::Failed { ttfb_ms: None }));
    group
        .bench_function("first candidate's breaker open", |b| b.iter(|| black_box(request(&open, Strategy::Failover))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
