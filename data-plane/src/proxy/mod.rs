//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`.
//!
//! One request, in order (each step needs the one before):
//! 1. the snapshot, loaded once so the whole request sees one version;
//! 2. the virtual key (cheapest refusal first; nothing else is parsed for an unknown caller);
//! 3. the body, read up to the limit and parsed leniently;
//! 4. the key's allowed aliases, then routing (policies, constraints, alias resolution, strategy order);
//! 5. tool governance, only when the request declares tools: the tool policy (after routing, so a route policy's
//!    deny wins), registered schemas put in place of the caller's;
//! 6. the attempts, in order, failing over on connection errors, timeouts, 5xx and 429; never after the first byte
//!    of a response reached the client;
//! 7. tool calls in the answer validated (non-streamed: whole; streamed: per call), retried while the policy allows
//!    and nothing reached the client.

pub mod auth;
pub mod error;
pub mod request;
pub mod sse;
pub mod tool_stream;
pub mod tools;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use policy_engine::config::Strategy;
use policy_engine::routing::{Decision, KeyFacts, PlannedCandidate, weighted_order};
use policy_engine::tool_policy::InvalidCallAction;
use rand::RngExt;
use serde_json::json;

use self::error::GatewayError;
use self::request::{Endpoint, ParsedRequest};
use self::upstream::{AttemptError, Upstreams};
use crate::snapshot::CompiledSnapshot;
use crate::state::Current;

/// What the proxy shares across requests.
pub struct Proxy {
    pub current: Arc<Current>,
    pub upstreams: Upstreams,
    pub max_body_bytes: usize,
    /// The longest `Retry-After` the gateway waits out before retrying the same candidate; longer ones fail over.
    pub max_retry_after: Duration,
}

pub fn routes(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .with_state(proxy)
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

fn snapshot(proxy: &Proxy) -> Result<Arc<CompiledSnapshot>, GatewayError> {
    proxy.current.load().ok_or(GatewayError::NotReady)
}

async fn chat_completions(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    serve(&proxy, Endpoint::ChatCompletions, request).await
}

async fn completions(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    serve(&proxy, Endpoint::Completions, request).await
}

async fn embeddings(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    serve(&proxy, Endpoint::Embeddings, request).await
}

async fn serve(proxy: &Proxy, endpoint: Endpoint, request: Request) -> Response {
    let id = request_id(request.headers());
    let mut response = match handle(proxy, endpoint, request, &id).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn handle(proxy: &Proxy, endpoint: Endpoint, request: Request, id: &str) -> Result<Response, GatewayError> {
    let snapshot = snapshot(proxy)?;
    let (parts, body) = request.into_parts();
    let key = auth::authenticate(&parts.headers, &snapshot, now_unix())?;
    let bytes = axum::body::to_bytes(body, proxy.max_body_bytes).await.map_err(|error| {
        let too_large = std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            GatewayError::TooLarge { limit: proxy.max_body_bytes }
        } else {
            GatewayError::InvalidRequest(format!("could not read the request body: {error}"))
        }
    })?;
    let mut parsed = request::parse(endpoint, &bytes)?;
    if !key.allowed_aliases.is_empty() && !key.allowed_aliases.contains(&parsed.model) {
        return Err(GatewayError::ModelNotAllowed { model: parsed.model });
    }
    let facts = parsed.facts(&parts.headers, snapshot.router.reads());
    let key_facts = KeyFacts {
        id: key.id.clone(),
        name: key.name.clone(),
        team: (!key.team.is_empty()).then(|| key.team.clone()),
        tags: key.tags.clone(),
    };
    let decision = snapshot.router.route(&facts, &key_facts, chrono::Utc::now(), None);
    let (policy, mut candidates, strategy) = match decision {
        Decision::Route { policy, candidates, strategy, .. } => (policy, candidates, strategy),
        Decision::Deny { policy, message } => return Err(GatewayError::PolicyDenied { policy, message }),
        Decision::UnknownModel { model } => return Err(GatewayError::ModelNotFound { model }),
        Decision::NoEligibleCandidate { rejected, .. } => {
            let by: Vec<String> = rejected.iter().map(|r| format!("{} (by '{}')", r.model, r.policy)).collect();
            return Err(GatewayError::NoEligibleCandidate(format!(
                "no backend may serve this request under the active constraints: {}",
                by.join(", ")
            )));
        }
    };
    let governance = tools::prepare(&snapshot, &mut parsed, &facts, &key_facts)?;
    if strategy == Strategy::Weighted {
        weighted_order(&mut candidates, rand::rng().random::<f64>());
    }
    let Some(governance) = governance else {
        return forward(proxy, &snapshot, &parsed, &candidates, 0, policy.as_deref(), id, None).await.map(|served| {
            match served {
                Served::Response(response) => response,
                Served::InvalidToolCalls => GatewayError::InvalidToolCall { violations: Vec::new() }.into_response(),
            }
        });
    };
    // Invalid answers are re-asked: first of the candidate that produced them, then of the following ones.
    let mut report = tools::ToolReport::new(id, &governance);
    let mut retries_left =
        if governance.decision.action == InvalidCallAction::Retry { governance.decision.max_retries } else { 0 };
    let mut start = 0;
    let mut retried = 0;
    loop {
        let check = ToolCheck { governance: &governance, can_retry: retries_left > 0, report: &mut report };
        let served = forward(proxy, &snapshot, &parsed, &candidates, start, policy.as_deref(), id, Some(check)).await;
        match served {
            Ok(Served::Response(response)) => return Ok(response),
            Ok(Served::InvalidToolCalls) => {
                retries_left -= 1;
                retried += 1;
                let last = report.last_candidate.unwrap_or(start);
                start = if retried == 1 { last } else { (last + 1) % candidates.len().max(1) };
                tracing::info!(request_id = id, retry = retried, "invalid tool calls: asking again");
            }
            Err(error) => {
                if matches!(error, GatewayError::InvalidToolCall { .. }) {
                    report.delivered = false;
                }
                tools::finish(report);
                return Err(error);
            }
        }
    }
}

/// Tool validation for one forwarding pass.
struct ToolCheck<'a> {
    governance: &'a tools::ToolGovernance,
    /// Whether an invalid answer may be re-asked (otherwise it is handled per the policy's action).
    can_retry: bool,
    report: &'a mut tools::ToolReport,
}

enum Served {
    Response(Response),
    /// The answer's tool calls were invalid and may be retried (only when `ToolCheck::can_retry`).
    InvalidToolCalls,
}

/// Try the candidates in order from `start` (wrapping around); answer with the first usable response.
#[expect(clippy::too_many_arguments, reason = "the request's parts, each borrowed; a struct would only rename them")]
async fn forward(
    proxy: &Proxy,
    snapshot: &CompiledSnapshot,
    parsed: &ParsedRequest,
    candidates: &[PlannedCandidate],
    start: usize,
    policy: Option<&str>,
    id: &str,
    mut tools: Option<ToolCheck<'_>>,
) -> Result<Served, GatewayError> {
    let mut failures: Vec<(String, AttemptError)> = Vec::new();
    let order = (0..candidates.len()).map(|i| (start + i) % candidates.len());
    for (position, candidate) in order.map(|i| (i, &candidates[i])) {
        let Some(backend) = snapshot.config.backends.get(&candidate.backend) else { continue };
        let mut attempt =
            proxy.upstreams.send(backend, &candidate.upstream_model, parsed.endpoint, &parsed.body, id).await;
        // A short Retry-After is waited out once on the same candidate; a long one moves on.
        if let Err(AttemptError::Status { status: 429, retry_after: Some(wait), .. }) = &attempt
            && *wait <= proxy.max_retry_after
        {
            tokio::time::sleep(*wait).await;
            attempt = proxy.upstreams.send(backend, &candidate.upstream_model, parsed.endpoint, &parsed.body, id).await;
        }
        match attempt {
            Ok(response) => {
                let total = Duration::from_millis(backend.timeouts.total_ms);
                if let Some(tools) = tools.as_mut() {
                    tools.report.last_candidate = Some(position);
                }
                let mut reply = match respond(response, parsed.stream, total, tools, candidate).await? {
                    Served::Response(reply) => reply,
                    Served::InvalidToolCalls => return Ok(Served::InvalidToolCalls),
                };
                let headers = reply.headers_mut();
                for (name, value) in [
                    ("x-gateway-backend", candidate.backend.as_str()),
                    ("x-gateway-model", candidate.model.as_str()),
                    ("x-gateway-policy", policy.unwrap_or("-")),
                    ("x-gateway-snapshot-version", &snapshot.version.to_string()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(name, value);
                    }
                }
                if !failures.is_empty() {
                    tracing::info!(served_by = %candidate.model, failed = failures.len(), "served after failover");
                }
                return Ok(Served::Response(reply));
            }
            // The caller's own mistake: the next candidate would refuse it too.
            Err(AttemptError::Status { status, body, .. }) if (400..500).contains(&status) && status != 429 => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                let mut reply = (status, body).into_response();
                reply.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                if let Some(tools) = tools {
                    tools::finish(tools.report.clone());
                }
                return Ok(Served::Response(reply));
            }
            Err(error) => {
                tracing::warn!(model = %candidate.model, backend = %candidate.backend, error = %error.describe(), "candidate failed");
                failures.push((candidate.model.clone(), error));
            }
        }
    }
    Err(all_failed(&failures))
}

/// The error for a request no candidate could serve, naming what each answered.
fn all_failed(failures: &[(String, AttemptError)]) -> GatewayError {
    let detail: Vec<String> = failures.iter().map(|(model, e)| format!("{model}: {}", e.describe())).collect();
    let message = format!("every candidate failed: {}", detail.join("; "));
    let all = |f: fn(&AttemptError) -> bool| !failures.is_empty() && failures.iter().all(|(_, e)| f(e));
    if all(|e| matches!(e, AttemptError::Status { status: 429, .. })) {
        let retry_after = failures
            .iter()
            .filter_map(|(_, e)| match e {
                AttemptError::Status { retry_after, .. } => retry_after.map(|d| d.as_secs().max(1)),
                _ => None,
            })
            .min();
        GatewayError::UpstreamRateLimited { message, retry_after }
    } else if all(|e| matches!(e, AttemptError::Timeout(_))) {
        GatewayError::UpstreamTimeout(message)
    } else if all(|e| matches!(e, AttemptError::Connect(_) | AttemptError::Unsupported(_))) {
        GatewayError::UpstreamUnavailable(message)
    } else {
        GatewayError::UpstreamFailed(message)
    }
}

/// Turn a successful upstream response into ours: streamed through as it comes, or read whole. With `tools`, tool
/// calls are validated: a non-streamed answer whole, a streamed one per call (see [`tool_stream`]).
async fn respond(
    upstream: reqwest::Response,
    stream: bool,
    total: Duration,
    tools: Option<ToolCheck<'_>>,
    candidate: &PlannedCandidate,
) -> Result<Served, GatewayError> {
    let deadline = tokio::time::Instant::now() + total;
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::OK);
    let content_type = upstream.headers().get("content-type").cloned();
    let is_sse =
        content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
    let mut validation = None;
    let body = match tools {
        None if stream && is_sse => Body::from_stream(sse::passthrough(upstream.bytes_stream(), total)),
        Some(tools) if stream && is_sse => match governed_stream(upstream, deadline, total, tools, candidate).await? {
            Some(body) => body,
            None => return Ok(Served::InvalidToolCalls),
        },
        tools => {
            let bytes = tokio::time::timeout(total, upstream.bytes())
                .await
                .map_err(|_| {
                    GatewayError::UpstreamTimeout(format!(
                        "the response exceeded the total timeout of {} ms",
                        total.as_millis()
                    ))
                })?
                .map_err(|e| GatewayError::UpstreamFailed(format!("reading the upstream response failed: {e}")))?;
            if let Some(tools) = tools {
                let declared = &tools.governance.declared;
                let calls = tools::check_completion(&bytes, declared);
                tools::record(&calls, declared, &candidate.model, &candidate.backend);
                let invalid = calls.iter().any(|c| !c.is_valid());
                if !calls.is_empty() {
                    validation = Some(if invalid { "invalid" } else { "valid" });
                }
                let violations = tools::violations(&calls);
                tools.report.attempts.push(tools::AttemptOutcomes {
                    model: candidate.model.clone(),
                    backend: candidate.backend.clone(),
                    calls,
                });
                if invalid && tools.governance.decision.action.blocks() {
                    if tools.can_retry {
                        return Ok(Served::InvalidToolCalls);
                    }
                    return Err(GatewayError::InvalidToolCall { violations });
                }
                tools::finish(tools.report.clone());
            }
            Body::from(bytes)
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert("content-type", content_type);
    }
    if stream && is_sse {
        response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    }
    if let Some(validation) = validation {
        response.headers_mut().insert(tools::VALIDATION_HEADER, HeaderValue::from_static(validation));
    }
    Ok(Served::Response(response))
}

/// A streamed answer to a request that declared tools. When an invalid answer may be retried, the stream is read
/// ahead (nothing sent) until text or a validated call is ready to go out; an invalid call before that point
/// returns `None` so the caller asks again. Once the client has received something, an invalid call ends the
/// stream with an error event instead.
async fn governed_stream(
    upstream: reqwest::Response,
    deadline: tokio::time::Instant,
    total: Duration,
    tools: ToolCheck<'_>,
    candidate: &PlannedCandidate,
) -> Result<Option<Body>, GatewayError> {
    use futures_util::StreamExt;
    let declared = tools.governance.declared.clone();
    let mut stage = tool_stream::ToolStream::new(declared.clone(), tools.governance.decision.action.blocks());
    let mut upstream = upstream.bytes_stream().fuse();
    let mut initial = Vec::new();
    if tools.can_retry {
        while !stage.committed() && !stage.saw_done() {
            match tokio::time::timeout_at(deadline, upstream.next()).await {
                Ok(Some(Ok(chunk))) => stage.push(&chunk, &mut initial),
                // Ended, failed or timed out: the stream wrapper reports it to the client.
                _ => break,
            }
            if stage.rejected() {
                let calls = stage.take_outcomes();
                tools::record(&calls, &declared, &candidate.model, &candidate.backend);
                tools.report.attempts.push(tools::AttemptOutcomes {
                    model: candidate.model.clone(),
                    backend: candidate.backend.clone(),
                    calls,
                });
                return Ok(None);
            }
        }
    }
    let report = sse::StreamReport {
        report: tools.report.clone(),
        declared,
        model: candidate.model.clone(),
        backend: candidate.backend.clone(),
    };
    Ok(Some(Body::from_stream(sse::governed(upstream, stage, initial, deadline, total, report))))
}

/// The aliases (and models) a key may use.
fn visible_models<'a>(snapshot: &'a CompiledSnapshot, allowed: &'a [String]) -> Vec<&'a str> {
    let mut names: Vec<&str> = snapshot.config.aliases.keys().map(String::as_str).collect();
    if !allowed.is_empty() {
        names = allowed.iter().map(String::as_str).filter(|n| snapshot.config.has_alias_or_model(n)).collect();
    }
    names.sort_unstable();
    names
}

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "gateway"})
}

async fn list_models(State(proxy): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let result = (|| {
        let snapshot = snapshot(&proxy)?;
        let key = auth::authenticate(&headers, &snapshot, now_unix())?;
        let data: Vec<_> = visible_models(&snapshot, &key.allowed_aliases).into_iter().map(model_object).collect();
        Ok::<_, GatewayError>(axum::Json(json!({"object": "list", "data": data})).into_response())
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn get_model(State(proxy): State<Arc<Proxy>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let result = (|| {
        let snapshot = snapshot(&proxy)?;
        let key = auth::authenticate(&headers, &snapshot, now_unix())?;
        let visible = visible_models(&snapshot, &key.allowed_aliases);
        let allowed_model = key.allowed_aliases.is_empty() && snapshot.config.models.contains_key(&id);
        if visible.contains(&id.as_str()) || allowed_model {
            Ok(axum::Json(model_object(&id)).into_response())
        } else {
            Err(GatewayError::ModelNotFound { model: id })
        }
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Unknown paths and methods, in the OpenAI shape.
pub async fn no_route(method: Method, uri: Uri) -> Response {
    GatewayError::NoRoute { method: method.to_string(), path: uri.path().to_owned() }.into_response()
}
