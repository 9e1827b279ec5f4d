//! Detector cost per KiB of prompt: the whole built-in set (email, phone, payment card, IBAN, US SSN, IP address,
//! credential) in one redacting guardrail, scanned and released over 1, 16 and 64 KiB of ordinary prose, with and
//! without a few findings in it. Baseline in the same run: a copy of the same text (what any body rewrite costs).
//! `cargo bench -p policy-engine --bench guardrails`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use policy_engine::config::*;
use policy_engine::facts::{KeyFacts, RequestFacts};
use policy_engine::guardrail::{GuardrailSet, Side, Tally};
use serde_json::json;

const PROSE: &str = "The quarterly report covers revenue, costs and the outlook for the next two quarters. \
    Our team reviewed 42 contracts in 2025 and expects growth of about 7 percent, with risks in supply and hiring. \
    Please summarise the main points in three bullet lists and suggest follow-up questions for the meeting. ";

const FINDINGS: &str = "Contact jane.doe@example.com or +44 20 7946 0958, card 4111 1111 1111 1111, \
    IBAN DE89 3704 0044 0532 0130 00, host 10.1.2.3, key sk-proj-abcdefghijklmnopqrstuvwx. ";

fn text(kib: usize, with_findings: bool) -> String {
    let mut text = String::new();
    while text.len() < kib * 1024 {
        text.push_str(PROSE);
        if with_findings && text.len() % 4096 < PROSE.len() {
            text.push_str(FINDINGS);
        }
    }
    text.truncate(kib * 1024);
    text
}

fn built_in_set() -> GuardrailSet {
    let spec: GuardrailSpec = serde_json::from_value(json!({
        "name": "built-in", "action": "redact",
        "detectors": [{"type": "email"}, {"type": "phone"}, {"type": "payment_card"}, {"type": "iban"},
                      {"type": "us_ssn"}, {"type": "ip_address"}, {"type": "credential"}]
    }))
    .unwrap();
    let mut config = ConfigSet::default();
    config.guardrails.insert(spec.name.clone(), spec);
    GuardrailSet::compile(&config).unwrap()
}

fn bench(c: &mut Criterion) {
    let set = built_in_set();
    let applied = set.applicable(&RequestFacts::default(), &KeyFacts::default(), Utc::now()).unwrap();
    let mut group = c.benchmark_group("guardrails");
    for kib in [1usize, 16, 64] {
        for (label, with_findings) in [("clean", false), ("findings", true)] {
            let text = text(kib, with_findings);
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_function(format!("baseline_copy/{kib}KiB/{label}"), |b| {
                b.iter(|| black_box(black_box(&text).to_owned()))
            });
            group.bench_function(format!("built_in_set/{kib}KiB/{label}"), |b| {
                let mut findings = Vec::new();
                b.iter(|| {
                    set.scan(&applied, Side::Prompt, black_box(&text), &mut findings);
                    let mut tally = Tally::default();
                    black_box(set.release(&text, &findings, text.len(), Side::Prompt, &mut tally))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
