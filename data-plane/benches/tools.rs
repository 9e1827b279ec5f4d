//! Tool-call validation cost: one call against a typical schema, and the CPU added before the first tool-call byte
//! of a stream leaves the gateway (held until the call is complete and validated) against the plain pass-through.
//! `cargo bench -p data-plane --bench tools`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::stages::{self as sse, StreamLimit, StreamReport, ToolReport, ToolStream};
use futures_util::StreamExt;
use policy_engine::tool_policy::{DeclaredTools, InvalidCallAction};
use serde_json::json;

/// A typical tool: six properties, two required, an enum, a bounded integer, no additional properties.
fn declared() -> Arc<DeclaredTools> {
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["city", "date"],
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "date": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "hourly": {"type": "boolean"},
        "fields": {"type": "array", "items": {"type": "string"}}
    }});
    let mut tools = DeclaredTools::default();
    tools.insert("get_weather".into(), Some(Arc::new(policy_engine::tool_schema::compile(&schema).unwrap())));
    Arc::new(tools)
}

const VALID: &str =
    r#"{"city":"Paris","date":"2026-11-25","unit":"celsius","days":3,"hourly":false,"fields":["temp","wind"]}"#;
const INVALID: &str = r#"{"city":"","unit":"kelvin","days":30,"extra":1}"#;

/// A recorded stream as a provider chunks it: role, a sentence of text, one call in 12 argument deltas, finish.
fn recorded_stream() -> Vec<Bytes> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {event}\n\n"))
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), json!(null))];
    for word in ["Let", " me", " check", " the", " weather."] {
        chunks.push(chunk(json!({"content": word}), json!(null)));
    }
    let pieces: Vec<String> =
        VALID.as_bytes().chunks(VALID.len().div_ceil(12)).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let mut fragment = json!({"index": 0, "function": {"arguments": piece}});
        if i == 0 {
            fragment = json!({"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": piece}});
        }
        chunks.push(chunk(json!({"tool_calls": [fragment]}), json!(null)));
    }
    chunks.push(chunk(json!({}), json!("tool_calls")));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

fn validation(c: &mut Criterion) {
    let tools = declared();
    let mut group = c.benchmark_group("tool_call_validation");
    group.bench_function("valid_call", |b| b.iter(|| black_box(tools.validate(0, "get_weather", black_box(VALID)))));
    group.bench_function("invalid_call_5_violations", |b| {
        b.iter(|| black_box(tools.validate(0, "get_weather", black_box(INVALID))))
    });
    group.bench_function("baseline_json_parse_only", |b| {
        b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(black_box(VALID)).unwrap()))
    });
    group.finish();
}

fn first_tool_byte(c: &mut Criterion) {
    let chunks = recorded_stream();
    let tools = declared();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let mut group = c.benchmark_group("stream_to_first_tool_call_byte");
    group.bench_function("baseline_passthrough", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let upstream = futures_util::stream::iter(chunks.clone().into_iter().map(Ok));
                let total = Duration::from_secs(60);
                let deadline = tokio::time::Instant::now() + total;
                let mut out = Box::pin(sse::passthrough(upstream, deadline, StreamLimit::BackendTotal(total), None));
                while let Some(Ok(bytes)) = out.next().await {
                    if bytes.windows(10).any(|w| w == b"tool_calls") {
                        break;
                    }
                }
            })
        })
    });
    group.bench_function("held_and_validated", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let upstream = futures_util::stream::iter(chunks.clone().into_iter().map(Ok));
                let stage = ToolStream::new(tools.clone(), true);
                let report = StreamReport {
                    report: ToolReport::of_policy("", None, InvalidCallAction::Reject),
                    declared: tools.clone(),
                    model: "m".into(),
                    backend: "b".into(),
                    spend: None,
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                let mut out = Box::pin(sse::governed(
                    upstream,
                    stage,
                    Vec::new(),
                    deadline,
                    StreamLimit::BackendTotal(Duration::from_secs(60)),
                    report,
                ));
                while let Some(Ok(bytes)) = out.next().await {
                    if bytes.windows(10).any(|w| w == b"tool_calls") {
                        break;
                    }
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, validation, first_tool_byte);
criterion_main!(benches);
