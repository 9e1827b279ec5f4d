//! A programmable OpenAI-compatible upstream for end-to-end tests, the in-process pipeline tests and load
//! benchmarks: [`serve`] on a listener, [`MockServer`] on a free port in this process, or the `mock-upstream`
//! binary (`mock-upstream --addr 127.0.0.1:PORT --name NAME`) as a process of its own. Each request takes the next behaviour from a queue
//! (`POST /__mock/script` with a JSON array) or, when the queue is empty, the default (a 200 answer, or what
//! `POST /__mock/default` set). A behaviour:
//! `{"status": 500, "body": {...}, "delay_ms": 0, "retry_after": "1", "chunks": 3, "chunk_delay_ms": 0,
//!   "cut_after": 2, "pad_bytes": 65536, "omit_usage": true, "usage": {"prompt_tokens": 9, ...},
//!   "tool_arguments": "{bad json", "dimensions": 8,
//!   "tool_calls": [{"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}], "text": "Let me check.",
//!   "pieces": ["Hello ", "world"]}` (`pieces`: the answer's text, one content delta each when streamed).
//! `{"status": 307, "location": "http://elsewhere/v1/chat/completions"}` answers with a redirect there.
//! `tool_calls` answers with exactly those calls (parallel, in order, whatever the request declared); streamed, each
//! call's arguments are split into three deltas. `text` is sent as content before them.
//! `pad_bytes` adds an SSE comment of that many bytes to every streamed event (a large stream that costs few
//! tokens, to fill a client's socket buffers).
//! `POST /__mock/models` sets what `GET /v1/models` (a health check) answers (`status`, `delay_ms`); it is not listed
//! with the requests, only counted (`models_requests` in the stats).
//! `/images/generations` answers `n` images (URLs, or base64 for `response_format: b64_json`).
//! `GET /__mock/requests` lists what it received; `GET /__mock/stats` counts requests per wall-clock second
//! (`per_second`), streams finished and cancelled, and
//! requests cancelled (the caller closed the connection) before the answer started.
//! `POST /v1/moderations` answers as OpenAI's moderation endpoint does, every input scored with the behaviour's
//! `scores` (`{"scores": {"violence": 0.9}}`; default every category 0).
//! `POST .../messages` answers as Anthropic's Messages API does (errors, answers and event streams, tool calls as
//! `tool_use` blocks; `usage` then is Anthropic's usage object), for the `anthropic` backend kind.
//! `POST /{tenant}/oauth2/v2.0/token` is Entra ID's token endpoint ([`crate::entra_mock`]), for `azure_openai` backends
//! that sign in with Entra ID.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::background::Background;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Behaviour {
    status: Option<u16>,
    body: Option<Value>,
    delay_ms: Option<u64>,
    retry_after: Option<String>,
    chunks: Option<usize>,
    chunk_delay_ms: Option<u64>,
    cut_after: Option<usize>,
    pad_bytes: Option<usize>,
    omit_usage: Option<bool>,
    tool_arguments: Option<String>,
    dimensions: Option<usize>,
    tool_calls: Option<Vec<ScriptedCall>>,
    text: Option<String>,
    usage: Option<Value>,
    /// A `Location` header on a non-2xx answer (a redirect with a 3xx status).
    location: Option<String>,
    /// The answer's text in exactly these pieces: one content delta each when streamed, joined when not.
    pieces: Option<Vec<String>>,
    /// `/moderations`: the `category_scores` of every input (default: every category 0.0).
    scores: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: String,
    arguments: String,
}

/// The tool calls to answer with: the scripted ones, else one call to the first declared tool (if any).
fn calls_for(request: &Value, behaviour: &Behaviour) -> Vec<ScriptedCall> {
    if let Some(calls) = &behaviour.tool_calls {
        return calls.clone();
    }
    let arguments = behaviour.tool_arguments.clone().unwrap_or_else(|| r#"{"city":"Paris"}"#.to_owned());
    wants_tool(request).map(|name| vec![ScriptedCall { name, arguments }]).unwrap_or_default()
}

/// `arguments` in three pieces (on char boundaries), as providers stream them.
fn split3(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    let pieces: Vec<String> = chars.chunks(third).map(|c| c.iter().collect()).collect();
    if pieces.is_empty() { vec![String::new()] } else { pieces }
}

#[derive(Default)]
struct Mock {
    name: String,
    script: Mutex<VecDeque<Behaviour>>,
    /// What a request gets when the script is empty.
    default: Mutex<Behaviour>,
    requests: Mutex<Vec<Value>>,
    streams_finished: AtomicU64,
    streams_cancelled: AtomicU64,
    requests_cancelled: AtomicU64,
    /// What `GET /v1/models` (a health check) gets: its `status` and `delay_ms` count.
    models: Mutex<Behaviour>,
    models_requests: AtomicU64,
    /// Requests received per wall-clock second (Unix seconds), for rate-limit tests.
    per_second: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
}

/// Counts a request as cancelled if its handler is dropped (the caller went away) before the answer is ready.
struct Pending<'a> {
    mock: &'a Mock,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.mock.requests_cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The mock's routes: the `/__mock/*` control API and the OpenAI- and Anthropic-shaped endpoints.
pub fn app(name: &str) -> Router {
    let mock = Arc::new(Mock { name: name.to_owned(), ..Mock::default() });
    Router::new()
        .route("/__mock/script", post(script))
        .route("/__mock/default", post(set_default))
        .route("/__mock/reset", post(reset))
        .route("/__mock/requests", get(requests))
        .route("/__mock/stats", get(stats))
        .route("/__mock/models", post(set_models))
        .route("/v1/models", get(models))
        .route("/v1/moderations", post(moderations))
        .fallback(post(openai))
        .with_state(mock)
        .merge(crate::entra_mock::routes())
}

/// Serve the mock named `name` (the name its answers carry) on `listener`, until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, name: &str) -> std::io::Result<()> {
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(name)).await
}

/// The mock served in this process, on a free loopback port, on a runtime and thread of its own (so it answers
/// whatever the caller's runtime is doing); stopped when dropped.
pub struct MockServer {
    pub addr: SocketAddr,
    _running: Background,
}

impl MockServer {
    pub fn start(name: &str) -> MockServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the mock");
        let addr = listener.local_addr().expect("the mock's address");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let name = name.to_owned();
        let running = Background::spawn(&format!("mock-{name}"), 1, move |stop| async move {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            tokio::select! {
                served = serve(listener, &name) => served.map_err(|e| e.to_string()),
                () = stop.cancelled() => Ok(()),
            }
        });
        MockServer { addr, _running: running }
    }
}

async fn script(State(mock): State<Arc<Mock>>, Json(list): Json<Vec<Behaviour>>) -> StatusCode {
    mock.script.lock().await.extend(list);
    StatusCode::NO_CONTENT
}

async fn set_default(State(mock): State<Arc<Mock>>, Json(behaviour): Json<Behaviour>) -> StatusCode {
    *mock.default.lock().await = behaviour;
    StatusCode::NO_CONTENT
}

async fn reset(State(mock): State<Arc<Mock>>) -> StatusCode {
    mock.script.lock().await.clear();
    mock.requests.lock().await.clear();
    StatusCode::NO_CONTENT
}

async fn requests(State(mock): State<Arc<Mock>>) -> Json<Value> {
    Json(Value::Array(mock.requests.lock().await.clone()))
}

async fn stats(State(mock): State<Arc<Mock>>) -> Json<Value> {
    Json(json!({
        "streams_finished": mock.streams_finished.load(Ordering::SeqCst),
        "streams_cancelled": mock.streams_cancelled.load(Ordering::SeqCst),
        "requests_cancelled": mock.requests_cancelled.load(Ordering::SeqCst),
        "models_requests": mock.models_requests.load(Ordering::SeqCst),
        // Requests received in each wall-clock second: {"<unix second>": count}.
        "per_second": mock.per_second.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
    }))
}

async fn set_models(State(mock): State<Arc<Mock>>, Json(behaviour): Json<Behaviour>) -> StatusCode {
    *mock.models.lock().await = behaviour;
    StatusCode::NO_CONTENT
}

async fn models(State(mock): State<Arc<Mock>>) -> Response {
    mock.models_requests.fetch_add(1, Ordering::SeqCst);
    let behaviour = mock.models.lock().await.clone();
    if let Some(delay) = behaviour.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(behaviour.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
    let body =
        json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]});
    (status, Json(body)).into_response()
}

/// The next scripted behaviour (else the default), after its `delay_ms`; a caller that hangs up during the delay is
/// counted in `requests_cancelled`.
async fn next_behaviour(mock: &Mock) -> Behaviour {
    let scripted = mock.script.lock().await.pop_front();
    let behaviour = match scripted {
        Some(behaviour) => behaviour,
        None => mock.default.lock().await.clone(),
    };
    let mut pending = Pending { mock, answered: false };
    if let Some(delay) = behaviour.delay_ms {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    pending.answered = true;
    behaviour
}

async fn openai(State(mock): State<Arc<Mock>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    *mock.per_second.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(second).or_default() += 1;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    mock.requests.lock().await.push(json!({
        "path": uri.path(),
        "query": uri.query(),
        "authorization": header("authorization"),
        "api_key": header("api-key"),
        "x_api_key": header("x-api-key"),
        "anthropic_version": header("anthropic-version"),
        "request_id": header("x-request-id"),
        "traceparent": header("traceparent"),
        "tracestate": header("tracestate"),
        "body": request,
    }));
    let behaviour = next_behaviour(&mock).await;
    let status = StatusCode::from_u16(behaviour.status.unwrap_or(200)).unwrap();
    if uri.path().ends_with("/messages") {
        return anthropic(mock, request, behaviour, status);
    }
    if !status.is_success() {
        let body = behaviour.body.clone().unwrap_or_else(|| {
            json!({"error": {"message": format!("{} says {}", mock.name, status), "type": "server_error", "param": null, "code": null}})
        });
        let mut response = (status, Json(body)).into_response();
        if let Some(retry_after) = &behaviour.retry_after {
            response.headers_mut().insert("retry-after", retry_after.parse().unwrap());
        }
        if let Some(location) = &behaviour.location {
            response.headers_mut().insert("location", location.parse().unwrap());
        }
        return response;
    }
    if let Some(body) = behaviour.body.clone() {
        return Json(body).into_response();
    }
    let path = uri.path();
    if path.ends_with("/embeddings") {
        return Json(embeddings(&request, &behaviour)).into_response();
    }
    if path.ends_with("/images/generations") {
        return Json(images(&request, &behaviour)).into_response();
    }
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    if request["stream"].as_bool() == Some(true) {
        return stream(mock, request, model, behaviour);
    }
    let completion = path.ends_with("/completions") && !path.ends_with("/chat/completions");
    Json(chat(&mock.name, &request, &model, &behaviour, completion)).into_response()
}

/// An OpenAI `/moderations` answer: one result per input, each with the behaviour's `scores` (a category flagged
/// when its score is at least 0.5, as OpenAI's own flags are opaque to callers anyway). Recorded like every request;
/// `status` and `delay_ms` apply; a caller that hangs up during the delay is counted in `requests_cancelled`.
async fn moderations(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    mock.requests.lock().await.push(json!({
        "path": "/v1/moderations",
        "authorization": header("authorization"),
        "request_id": header("x-request-id"),
        "body": request,
    }));
    let behaviour = next_behaviour(&mock).await;
    let status = StatusCode::from_u16(behaviour.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
    if !status.is_success() {
        let error = json!({"error": {"message": format!("{} says {status}", mock.name), "type": "server_error"}});
        return (status, Json(error)).into_response();
    }
    let scores = behaviour.scores.clone().unwrap_or_else(|| {
        ["hate", "harassment", "self-harm", "sexual", "violence"].iter().map(|c| (c.to_string(), json!(0.0))).collect()
    });
    let categories: serde_json::Map<String, Value> =
        scores.iter().map(|(c, s)| (c.clone(), json!(s.as_f64().unwrap_or(0.0) >= 0.5))).collect();
    let flagged = categories.values().any(|f| f == &json!(true));
    let inputs = match &request["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let result = json!({"flagged": flagged, "categories": categories, "category_scores": scores});
    let model = request["model"].as_str().unwrap_or("omni-moderation-latest");
    Json(json!({"id": "modr-mock", "model": model, "results": vec![result; inputs]})).into_response()
}

fn content_for(name: &str, request: &Value) -> String {
    if request.pointer("/response_format/type").and_then(Value::as_str) == Some("json_object") {
        return r#"{"answer": 42}"#.to_owned();
    }
    format!("Hello from {name}")
}

fn wants_tool(request: &Value) -> Option<String> {
    let tools = request["tools"].as_array()?;
    if request["tool_choice"].as_str() == Some("none") {
        return None;
    }
    tools.first()?.pointer("/function/name").and_then(Value::as_str).map(str::to_owned)
}

/// The scripted usage, else a fixed one.
fn usage(behaviour: &Behaviour) -> Value {
    behaviour.usage.clone().unwrap_or_else(|| json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}))
}

fn chat(name: &str, request: &Value, model: &str, behaviour: &Behaviour, completion: bool) -> Value {
    let mut body = if completion {
        json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
               "choices": [{"index": 0, "text": content_for(name, request), "finish_reason": "stop", "logprobs": null}]})
    } else {
        let calls = calls_for(request, behaviour);
        let message = if calls.is_empty() {
            let content = behaviour.pieces.as_ref().map_or_else(|| content_for(name, request), |p| p.concat());
            json!({"role": "assistant", "content": content})
        } else {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"id": format!("call_mock_{}", i + 1), "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            json!({"role": "assistant", "content": behaviour.text, "tool_calls": calls})
        };
        let finish = if message["tool_calls"].is_array() { "tool_calls" } else { "stop" };
        json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
               "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}]})
    };
    if behaviour.omit_usage != Some(true) {
        body["usage"] = usage(behaviour);
    }
    body
}

/// `n` images (default 1), as URLs or as base64 (`response_format: b64_json`); with `usage` only when scripted
/// (`gpt-image-1` reports tokens, `dall-e-3` none).
fn images(request: &Value, behaviour: &Behaviour) -> Value {
    let n = request["n"].as_u64().unwrap_or(1);
    let b64 = request["response_format"].as_str() == Some("b64_json");
    let data: Vec<Value> = (0..n)
        .map(|i| {
            if b64 {
                json!({"b64_json": "aW1hZ2U=", "revised_prompt": request["prompt"]})
            } else {
                json!({"url": format!("https://images.example/{i}.png"), "revised_prompt": request["prompt"]})
            }
        })
        .collect();
    let mut body = json!({"created": 1_700_000_000, "data": data});
    if let Some(usage) = &behaviour.usage {
        body["usage"] = usage.clone();
    }
    body
}

fn embeddings(request: &Value, behaviour: &Behaviour) -> Value {
    let dimensions = behaviour.dimensions.unwrap_or(8);
    let inputs = match &request["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let base64 = request["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let vector: Vec<f32> = (0..dimensions).map(|d| (i * dimensions + d) as f32 / 100.0).collect();
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let usage = behaviour.usage.clone().unwrap_or_else(|| json!({"prompt_tokens": 4, "total_tokens": 4}));
    let mut body = json!({"object": "list", "data": data, "model": request["model"]});
    if behaviour.omit_usage != Some(true) {
        body["usage"] = usage;
    }
    body
}

fn stream(mock: Arc<Mock>, request: Value, model: String, behaviour: Behaviour) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        let calls = calls_for(&request, &behaviour);
        if let Some(text) = &behaviour.text {
            events.push(chunk(json!({"content": text}), Value::Null));
        }
        {
            if !calls.is_empty() {
                for (i, call) in calls.iter().enumerate() {
                    for (j, piece) in split3(&call.arguments).into_iter().enumerate() {
                        let fragment = if j == 0 {
                            json!({"index": i, "id": format!("call_mock_{}", i + 1), "type": "function",
                                   "function": {"name": call.name, "arguments": piece}})
                        } else {
                            json!({"index": i, "function": {"arguments": piece}})
                        };
                        events.push(chunk(json!({"tool_calls": [fragment]}), Value::Null));
                    }
                }
                events.push(chunk(json!({}), json!("tool_calls")));
            } else if let Some(pieces) = &behaviour.pieces {
                for piece in pieces {
                    events.push(chunk(json!({"content": piece}), Value::Null));
                }
                events.push(chunk(json!({}), json!("stop")));
            } else {
                let content = content_for(&mock.name, &request);
                let words: Vec<&str> = content.split(' ').collect();
                let n = behaviour.chunks.unwrap_or(words.len()).max(1);
                for i in 0..n {
                    let word = words.get(i).copied().unwrap_or("more");
                    let text = if i == 0 { word.to_owned() } else { format!(" {word}") };
                    events.push(chunk(json!({"content": text}), Value::Null));
                }
                events.push(chunk(json!({}), json!("stop")));
            }
        }
        let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        if include_usage && behaviour.omit_usage != Some(true) {
            events.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                               "model": model, "choices": [], "usage": usage(&behaviour)}));
        }
        let padding = behaviour.pad_bytes.map(|n| format!(": {}\n", "x".repeat(n))).unwrap_or_default();
        for (i, event) in events.iter().enumerate() {
            if behaviour.cut_after == Some(i) {
                return; // the connection ends without [DONE]
            }
            if tx.send(Ok(Bytes::from(format!("{padding}data: {event}\n\n")))).await.is_err() {
                mock.streams_cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if let Some(delay) = behaviour.chunk_delay_ms {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
        if tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await.is_err() {
            mock.streams_cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
        mock.streams_finished.fetch_add(1, Ordering::SeqCst);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([("content-type", "text/event-stream")], body).into_response()
}

/// Anthropic's Messages API: the same behaviours, in its shapes.
fn anthropic(mock: Arc<Mock>, request: Value, behaviour: Behaviour, status: StatusCode) -> Response {
    if !status.is_success() {
        let body = behaviour.body.clone().unwrap_or_else(|| {
            json!({"type": "error", "error": {"type": "api_error", "message": format!("{} says {}", mock.name, status)}})
        });
        return (status, Json(body)).into_response();
    }
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let wanted = request["tools"].as_array().and_then(|t| t.first()).and_then(|t| t["name"].as_str());
    let calls = match (&behaviour.tool_calls, wanted) {
        (Some(calls), _) => calls.clone(),
        (None, Some(name)) if request.pointer("/tool_choice/type").and_then(Value::as_str) != Some("none") => {
            vec![ScriptedCall { name: name.to_owned(), arguments: r#"{"city":"Paris"}"#.to_owned() }]
        }
        _ => Vec::new(),
    };
    let usage = behaviour.usage.clone().unwrap_or_else(|| json!({"input_tokens": 12, "output_tokens": 5}));
    let text = behaviour
        .text
        .clone()
        .unwrap_or_else(|| if calls.is_empty() { format!("Hello from {}", mock.name) } else { String::new() });
    let stop = if calls.is_empty() { "end_turn" } else { "tool_use" };
    if request["stream"].as_bool() != Some(true) {
        let mut content = Vec::new();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for (i, call) in calls.iter().enumerate() {
            let input: Value = serde_json::from_str(&call.arguments).unwrap_or(json!({}));
            content.push(
                json!({"type": "tool_use", "id": format!("toolu_mock_{}", i + 1), "name": call.name, "input": input}),
            );
        }
        return Json(json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                           "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage}))
        .into_response();
    }
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
        "role": "assistant", "model": model, "content": [], "usage": start_usage}})];
    let mut index = 0;
    if !text.is_empty() {
        events.push(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
        events.push(json!({"type": "ping"}));
        for (i, word) in text.split(' ').enumerate() {
            let piece = if i == 0 { word.to_owned() } else { format!(" {word}") };
            events.push(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            );
        }
        events.push(json!({"type": "content_block_stop", "index": 0}));
        index = 1;
    }
    for (i, call) in calls.iter().enumerate() {
        let block = index + i;
        events.push(json!({"type": "content_block_start", "index": block, "content_block": {"type": "tool_use",
            "id": format!("toolu_mock_{}", i + 1), "name": call.name, "input": {}}}));
        for piece in split3(&call.arguments) {
            events.push(json!({"type": "content_block_delta", "index": block,
                               "delta": {"type": "input_json_delta", "partial_json": piece}}));
        }
        events.push(json!({"type": "content_block_stop", "index": block}));
    }
    let output = usage.get("output_tokens").cloned().unwrap_or(json!(5));
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                       "usage": {"output_tokens": output}}));
    events.push(json!({"type": "message_stop"}));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    tokio::spawn(async move {
        for (i, event) in events.iter().enumerate() {
            if behaviour.cut_after == Some(i) {
                return;
            }
            let kind = event["type"].as_str().unwrap_or_default();
            if tx.send(Ok(Bytes::from(format!("event: {kind}\ndata: {event}\n\n")))).await.is_err() {
                mock.streams_cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if let Some(delay) = behaviour.chunk_delay_ms {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
        mock.streams_finished.fetch_add(1, Ordering::SeqCst);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([("content-type", "text/event-stream")], body).into_response()
}
