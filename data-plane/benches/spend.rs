//! The request path's spend work, each next to a baseline measured in the same run:
//! - metering a recorded stream (every event parsed, text kept for an estimate, the usage chunk stripped) against
//!   forwarding the same chunks untouched;
//! - translating a recorded Anthropic stream into OpenAI chunks, against the same baseline;
//! - budget admission (check, reserve, release) under ten budgets against the no-budget path;
//! - a non-streamed answer's usage and cost against parsing its JSON alone.
//!
//! `cargo bench -p data-plane --bench spend`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::stages::{
    self as metering, AdmissionRequest, BudgetLedger, Endpoint, Scope, StreamMeter, StreamTranslator, contributions,
};
use policy_engine::config::{BudgetSpec, Pricing};
use serde_json::json;

/// A chat stream as a provider chunks it: role, twenty words, finish, the usage chunk, `[DONE]`.
fn recorded_stream() -> Vec<Bytes> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null});
        Bytes::from(format!("data: {event}\n\n"))
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), json!(null))];
    for i in 0..20 {
        chunks.push(chunk(json!({"content": format!(" word{i}")}), json!(null)));
    }
    chunks.push(chunk(json!({}), json!("stop")));
    let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}});
    chunks.push(Bytes::from(format!("data: {usage}\n\n")));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

/// The same answer from Anthropic's Messages API.
fn recorded_anthropic_stream() -> Vec<Bytes> {
    let event = |kind: &str, data: serde_json::Value| Bytes::from(format!("event: {kind}\ndata: {data}\n\n"));
    let mut chunks = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 120, "output_tokens": 1}}}),
    )];
    chunks.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    for i in 0..20 {
        chunks.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!(" word{i}")}}),
        ));
    }
    chunks.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    chunks.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}}),
    ));
    chunks.push(event("message_stop", json!({"type": "message_stop"})));
    chunks
}

fn streams(c: &mut Criterion) {
    let chunks = recorded_stream();
    let anthropic = recorded_anthropic_stream();
    let mut group = c.benchmark_group("stream_metering");
    group.bench_function("baseline_forward_untouched", |b| {
        b.iter(|| {
            let mut total = 0;
            for chunk in &chunks {
                total += black_box(chunk.clone()).len();
            }
            black_box(total)
        })
    });
    group.bench_function("metered_and_usage_chunk_stripped", |b| {
        b.iter(|| {
            let mut meter = StreamMeter::new(true);
            let mut total = 0;
            for chunk in &chunks {
                total += meter.feed(chunk.clone()).len();
            }
            black_box((total, meter.finish(|| 0)))
        })
    });
    group.bench_function("anthropic_translated", |b| {
        b.iter(|| {
            let mut translator = StreamTranslator::new();
            let mut total = 0;
            for chunk in &anthropic {
                total += translator.push(chunk).len();
            }
            black_box(total)
        })
    });
    group.finish();
}

fn budgets() -> BTreeMap<String, BudgetSpec> {
    let spec = |name: &str, scope: serde_json::Value, period: &str| -> BudgetSpec {
        serde_json::from_value(json!({"name": name, "scope": scope, "period": period, "limit_usd": "1000000"})).unwrap()
    };
    let mut all = vec![
        spec("team-daily", json!({"type": "team", "team": "search"}), "day"),
        spec("key-monthly", json!({"type": "key", "key": "app"}), "month"),
        spec("global-weekly", json!({"type": "global"}), "week"),
        spec("model-total", json!({"type": "model", "model": "gpt-4o"}), "total"),
    ];
    for i in 0..6 {
        all.push(spec(&format!("other-{i}"), json!({"type": "team", "team": format!("team-{i}")}), "day"));
    }
    all.into_iter().map(|b| (b.name.clone(), b)).collect()
}

fn admission(c: &mut Criterion) {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = budgets();
    let scope = Scope { key_name: "app", team: "search", alias: "gpt", model: "" };
    let models = ["gpt-4o", "gpt-4o-mini"];
    let cost: rust_decimal::Decimal = "0.0012".parse().unwrap();
    let mut group = c.benchmark_group("budget_admission");
    group.bench_function("baseline_no_budgets", |b| b.iter(|| black_box(data_plane::stages::Admission::unlimited())));
    group.bench_function("ten_budgets_four_apply", |b| {
        b.iter(|| {
            let request = AdmissionRequest { scope, candidate_models: &models, estimate: cost, now: Utc::now() };
            let admission = ledger.admit(&budgets, black_box(&request)).unwrap();
            // What a finished request does: its cost counted, then its reservation released.
            let served = Scope { model: "gpt-4o", ..scope };
            ledger.record_local(&contributions(&budgets, &served, Utc::now(), cost));
            drop(black_box(admission));
        })
    });
    group.finish();
}

fn answers(c: &mut Criterion) {
    let body = serde_json::to_vec(&json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(40)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
                  "prompt_tokens_details": {"cached_tokens": 1000}}}))
    .unwrap();
    let pricing = Pricing {
        input: "2.50".parse().unwrap(),
        cached_input: Some("1.25".parse().unwrap()),
        output: "10".parse().unwrap(),
        cache_write: None,
        per_image: Default::default(),
    };
    let mut group = c.benchmark_group("answer_metering");
    group.bench_function("baseline_json_parse_only", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap()))
    });
    group.bench_function("usage_and_exact_cost", |b| {
        b.iter(|| {
            let usage = metering::usage_from_body(Endpoint::ChatCompletions, black_box(&body)).unwrap();
            black_box(metering::cost(&usage, &pricing).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, streams, admission, answers);
criterion_main!(benches);
