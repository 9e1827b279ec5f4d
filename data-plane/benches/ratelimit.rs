//! The rate limiter's bookkeeping per request: a key with RPM and TPM admitted, one backend with RPS, RPM and TPM
//! taken, the tokens settled at the end; next to a key and backend without limits (the path every request takes).
//! 1,000 keys and 10 backends, so the maps are not trivially small.
//!
//! `cargo bench -p data-plane --bench ratelimit`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::stages::{KeyLimits, RateLimiter};
use policy_engine::config::ProviderRateLimit;

fn limiter(c: &mut Criterion) {
    let limiter = Arc::new(RateLimiter::default());
    let keys: Vec<String> = (0..1_000).map(|i| format!("key-{i}")).collect();
    let backends: Vec<String> = (0..10).map(|i| format!("backend-{i}")).collect();
    // Limits no run reaches: every request is admitted, as in the common case.
    let key_limits = KeyLimits { rpm: Some(u64::from(u32::MAX)), tpm: Some(u64::MAX / 2) };
    let backend_limits = ProviderRateLimit { rps: Some(u32::MAX), rpm: Some(u32::MAX), tpm: Some(u64::MAX / 2) };
    let now = 1_800_000_000_000u64;
    let mut i = 0usize;
    c.bench_function("rate limits: limited key and backend, admit + settle", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let rates = limiter.admit_key(&keys[i % keys.len()], "app", key_limits, 1_200, now).unwrap();
            let backend = &backends[i % backends.len()];
            assert!(rates.admit_backend(backend, Some(backend_limits), now));
            black_box(rates.headers());
            rates.settle(900, Some(backend), now);
        })
    });
    c.bench_function("rate limits: no limits (baseline)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let rates = limiter.admit_key(&keys[i % keys.len()], "app", KeyLimits::default(), 0, now).unwrap();
            assert!(rates.admit_backend(&backends[i % backends.len()], None, now));
            black_box(rates.headers());
            rates.settle(900, None, now);
        })
    });
}

criterion_group!(benches, limiter);
criterion_main!(benches);
