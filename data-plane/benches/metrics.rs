//! The request metrics' cost on the request path: what one request's spend event adds when it records its series
//! (`crate::metrics::record_request`, through its cache of series handles: the request counter, the latency and first-token histograms, three token
//! kinds and the cost), with the names bounded against the snapshot's maps and the cost turned to nano-dollars, as
//! `spend/record.rs` does. Measured into the Prometheus recorder already holding 60 label sets (as after traffic
//! over 5 aliases x 3 backends x 4 models), against the same calls into a no-op recorder; and one scrape
//! (`render`) of those series.
//!
//! `cargo bench -p data-plane --bench metrics`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::stages::{RequestFigures, RequestSeriesCache, known_or_placeholder, metrics_builder};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// What the spend event holds and what the snapshot knows.
struct Request {
    alias: String,
    backend: String,
    model: String,
    cost_usd: String,
}

fn record(known: &HashMap<String, ()>, series: &RequestSeriesCache, request: &Request) {
    let cost = request
        .cost_usd
        .parse::<Decimal>()
        .ok()
        .and_then(|usd| (usd * Decimal::from(1_000_000_000u64)).round().to_u64());
    series.record(&RequestFigures {
        alias: known_or_placeholder(&request.alias, known.contains_key(&request.alias)),
        backend: known_or_placeholder(&request.backend, known.contains_key(&request.backend)),
        model: known_or_placeholder(&request.model, known.contains_key(&request.model)),
        status: 200,
        outcome: "ok",
        latency_seconds: 0.84,
        first_token_seconds: Some(0.21),
        input_tokens: 1234,
        output_tokens: 56,
        cached_input_tokens: 1000,
        cache_creation_tokens: 0,
        estimated: false,
        cost_nano_usd: black_box(cost),
    });
}

fn traffic() -> Vec<Request> {
    let mut requests = Vec::new();
    for a in 0..5 {
        for b in 0..3 {
            for m in 0..4 {
                requests.push(Request {
                    alias: format!("alias-{a}"),
                    backend: format!("backend-{b}"),
                    model: format!("model-{b}-{m}"),
                    cost_usd: "0.003645".to_owned(),
                });
            }
        }
    }
    requests
}

fn bench(c: &mut Criterion) {
    let requests = traffic();
    let known: HashMap<String, ()> = requests
        .iter()
        .flat_map(|r| [r.alias.clone(), r.backend.clone(), r.model.clone()])
        .map(|name| (name, ()))
        .collect();
    let recorder = metrics_builder().build_recorder();
    let handle = recorder.handle();
    // Each recorder with its cache of handles (the data plane has one of each), warmed by the traffic.
    let series = RequestSeriesCache::new();
    metrics::with_local_recorder(&recorder, || requests.iter().for_each(|r| record(&known, &series, r)));
    let noop_series = RequestSeriesCache::new();
    metrics::with_local_recorder(&metrics::NoopRecorder, || {
        requests.iter().for_each(|r| record(&known, &noop_series, r))
    });
    let one = &requests[17];

    let mut group = c.benchmark_group("request metrics per request");
    group.bench_function("no-op recorder (the calls alone)", |b| {
        b.iter(|| metrics::with_local_recorder(&metrics::NoopRecorder, || record(&known, &noop_series, black_box(one))))
    });
    group.bench_function("prometheus recorder, 60 label sets", |b| {
        b.iter(|| metrics::with_local_recorder(&recorder, || record(&known, &series, black_box(one))))
    });
    group.finish();
    c.bench_function("render /metrics (60 label sets of the request series)", |b| b.iter(|| handle.render().len()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
