//! The inbound APIs' translation (`data-plane/src/apis/`), each next to a baseline measured in the same run:
//! - a recorded chat stream (role, twenty words, finish, usage, `[DONE]`) translated into Anthropic Messages events
//!   and into Responses events, against forwarding the same chunks untouched;
//! - a Messages request translated to chat and its answer back, against parsing the request and the answer alone.
//!
//! `cargo bench -p data-plane --bench apis`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::stages::{InboundFormat, Messages, Responses, Translation};
use serde_json::{Value, json};

fn recorded_stream() -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
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

fn streams(c: &mut Criterion) {
    let chunks = recorded_stream();
    let mut group = c.benchmark_group("inbound_stream");
    group.bench_function("baseline_forward_untouched", |b| {
        b.iter(|| {
            let mut total = 0;
            for chunk in &chunks {
                total += black_box(chunk.clone()).len();
            }
            black_box(total)
        })
    });
    let request =
        br#"{"model": "m", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;
    group.bench_function("to_anthropic_messages_events", |b| {
        b.iter(|| {
            let (_, context) = Messages::to_chat(request).unwrap();
            let mut translation = Translation::new(Messages::stream(context));
            let mut total = 0;
            for chunk in &chunks {
                total += translation.feed(chunk).len();
            }
            black_box(total)
        })
    });
    let request = br#"{"model": "m", "input": "hi", "stream": true}"#;
    group.bench_function("to_responses_events", |b| {
        b.iter(|| {
            let (_, context) = Responses::to_chat(request).unwrap();
            let mut translation = Translation::new(Responses::stream(context));
            let mut total = 0;
            for chunk in &chunks {
                total += translation.feed(chunk).len();
            }
            black_box(total)
        })
    });
    group.finish();
}

fn requests(c: &mut Criterion) {
    let request = serde_json::to_vec(&json!({"model": "m", "max_tokens": 1024, "system": "be brief",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]}],
        "tools": [{"name": "get_weather", "description": "The weather", "input_schema": {"type": "object",
            "properties": {"city": {"type": "string"}}}}]}))
    .unwrap();
    let answer = serde_json::to_vec(&json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0,
        "finish_reason": "stop", "message": {"role": "assistant", "content": "It is sunny in Paris today."}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}}))
    .unwrap();
    let mut group = c.benchmark_group("inbound_request");
    group.bench_function("baseline_parse_request_and_answer", |b| {
        b.iter(|| {
            let request: Value = serde_json::from_slice(black_box(&request)).unwrap();
            let answer: Value = serde_json::from_slice(black_box(&answer)).unwrap();
            black_box((request, serde_json::to_vec(&answer).unwrap().len()))
        })
    });
    group.bench_function("messages_translated_both_ways", |b| {
        b.iter(|| {
            let (chat, context) = Messages::to_chat(black_box(&request)).unwrap();
            let body = serde_json::to_vec(&chat).unwrap();
            let answer: Value = serde_json::from_slice(black_box(&answer)).unwrap();
            let translated = Messages::answer(&answer, &context).unwrap();
            black_box((body.len(), translated.to_string().len()))
        })
    });
    group.finish();
}

criterion_group!(benches, streams, requests);
criterion_main!(benches);
