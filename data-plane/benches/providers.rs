//! What each backend kind's translation costs (`data-plane/src/providers/`), next to the plain pass-through of the
//! `openai` kind measured in the same run: building the upstream request from a chat request with a system prompt,
//! history and a tool; turning a non-streamed answer into OpenAI's; and turning a stream of twenty text deltas (plus
//! the kind's opening and closing events) into OpenAI's chunks, reported per upstream event.
//!
//! `cargo bench -p data-plane --bench providers`; figures in `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use data_plane::stages::{Endpoint, Inbound, provider};
use futures_util::StreamExt;
use policy_engine::config::BackendSpec;
use serde_json::{Map, Value, json};

/// Words in every recorded answer and stream.
const WORDS: usize = 20;

/// One backend kind: its backend, a non-streamed answer and a stream in its own wire format.
struct Kind {
    name: &'static str,
    backend: BackendSpec,
    answer: Bytes,
    stream: Vec<Bytes>,
}

fn backend(spec: Value) -> BackendSpec {
    serde_json::from_value(spec).unwrap()
}

fn text() -> String {
    (0..WORDS).map(|i| format!(" word{i}")).collect()
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(event) => Bytes::from(format!("event: {event}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

fn openai() -> Kind {
    let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text()}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}});
    let chunk = |delta: Value, finish: Value| {
        sse(
            None,
            &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut stream = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    stream.extend((0..WORDS).map(|i| chunk(json!({"content": format!(" word{i}")}), Value::Null)));
    stream.push(chunk(json!({}), json!("stop")));
    stream.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Kind {
        name: "openai (pass-through)",
        backend: backend(json!({"name": "b", "kind": "openai", "base_url": "https://api.openai.com/v1"})),
        answer: Bytes::from(answer.to_string()),
        stream,
    }
}

fn anthropic() -> Kind {
    let answer = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": text()}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 120, "output_tokens": 40}});
    let mut stream = vec![
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 120, "output_tokens": 1}}}),
        ),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    stream.extend((0..WORDS).map(|i| {
        sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": format!(" word{i}")}}),
        )
    }));
    stream.push(sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})));
    stream.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 40}}),
    ));
    stream.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    Kind {
        name: "anthropic",
        backend: backend(json!({"name": "b", "kind": "anthropic", "base_url": "https://api.anthropic.com/v1"})),
        answer: Bytes::from(answer.to_string()),
        stream,
    }
}

fn bedrock_event(kind: &str, payload: Value) -> Bytes {
    let mut message = Message::new(payload.to_string().into_bytes());
    for (name, value) in [(":message-type", "event"), (":event-type", kind), (":content-type", "application/json")] {
        message = message.add_header(Header::new(name.to_owned(), HeaderValue::String(value.to_owned().into())));
    }
    let mut out = Vec::new();
    write_message_to(&message, &mut out).unwrap();
    Bytes::from(out)
}

fn bedrock() -> Kind {
    let answer = json!({"output": {"message": {"role": "assistant", "content": [{"text": text()}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 120, "outputTokens": 40, "totalTokens": 160},
        "metrics": {"latencyMs": 300}});
    let mut stream = vec![bedrock_event("messageStart", json!({"role": "assistant"}))];
    stream.extend((0..WORDS).map(|i| {
        bedrock_event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": format!(" word{i}")}}))
    }));
    stream.push(bedrock_event("contentBlockStop", json!({"contentBlockIndex": 0})));
    stream.push(bedrock_event("messageStop", json!({"stopReason": "end_turn"})));
    stream.push(bedrock_event(
        "metadata",
        json!({"usage": {"inputTokens": 120, "outputTokens": 40,
        "totalTokens": 160}, "metrics": {"latencyMs": 300}}),
    ));
    Kind {
        name: "bedrock",
        backend: backend(
            json!({"name": "b", "kind": "bedrock", "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
            "aws": {"region": "us-east-1"}}),
        ),
        answer: Bytes::from(answer.to_string()),
        stream,
    }
}

fn gemini() -> Kind {
    let answer = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text()}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 40, "totalTokenCount": 160},
        "responseId": "r1", "modelVersion": "gemini-2.5-flash"});
    let mut stream: Vec<Bytes> = (0..WORDS)
        .map(|i| {
            sse(
                None,
                &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": format!(" word{i}")}]},
                "index": 0}], "responseId": "r1", "modelVersion": "gemini-2.5-flash"}),
            )
        })
        .collect();
    stream.push(sse(
        None,
        &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 40, "totalTokenCount": 160},
        "responseId": "r1", "modelVersion": "gemini-2.5-flash"}),
    ));
    Kind {
        name: "gemini (and vertex, the same translation)",
        backend: backend(
            json!({"name": "b", "kind": "gemini", "base_url": "https://generativelanguage.googleapis.com/v1beta"}),
        ),
        answer: Bytes::from(answer.to_string()),
        stream,
    }
}

fn kinds() -> Vec<Kind> {
    vec![openai(), anthropic(), bedrock(), gemini()]
}

/// A chat request as the gateway has it: a system prompt, a tool call and its result in the history, one tool.
fn chat_request() -> Map<String, Value> {
    let request = json!({"model": "m", "max_tokens": 1024, "temperature": 0.2,
        "messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "The weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    request.as_object().unwrap().clone()
}

fn requests(c: &mut Criterion) {
    let body = chat_request();
    let mut group = c.benchmark_group("provider_request");
    for kind in kinds() {
        let provider = provider(kind.backend.kind);
        let inbound = Inbound {
            backend: &kind.backend,
            upstream_model: "upstream-model",
            endpoint: Endpoint::ChatCompletions,
            body: &body,
            omit_usage_option: false,
        };
        group.bench_function(kind.name, |b| {
            b.iter(|| black_box(provider.request(black_box(&inbound)).unwrap().body.len()))
        });
    }
    group.finish();
}

fn answers(c: &mut Criterion) {
    let mut group = c.benchmark_group("provider_answer");
    for kind in kinds() {
        let provider = provider(kind.backend.kind);
        group.bench_function(kind.name, |b| {
            b.iter(|| black_box(provider.answer(black_box(kind.answer.clone())).unwrap().len()))
        });
    }
    group.finish();
}

fn streams(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("provider_stream_event");
    for kind in kinds() {
        let provider = provider(kind.backend.kind);
        // Per upstream event: criterion divides by the events of the recorded stream.
        group.throughput(Throughput::Elements(kind.stream.len() as u64));
        group.bench_function(kind.name, |b| {
            b.iter(|| {
                let upstream = futures_util::stream::iter(kind.stream.clone().into_iter().map(Ok)).boxed();
                let translated = provider.stream(upstream);
                let chunks: Vec<_> = runtime.block_on(translated.collect());
                black_box(chunks.iter().map(|c| c.as_ref().map_or(0, Bytes::len)).sum::<usize>())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, requests, answers, streams);
criterion_main!(benches);
