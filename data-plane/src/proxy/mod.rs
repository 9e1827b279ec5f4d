//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`.
//!
//! One request, in order (each step needs the one before):
//! 1. the snapshot, loaded once so the whole request sees one version;
//! 2. the virtual key (cheapest refusal first; nothing else is parsed for an unknown caller);
//! 3. the body, read up to the limit and parsed leniently;
//! 4. the key's allowed aliases, then routing (policies, constraints, alias resolution, strategy order);
//! 5. tool governance, only when the request declares tools: the tool policy (after routing, so a route policy's
//!    deny wins), registered schemas put in place of the caller's;
//! 6. spend admission: a full spend spool refuses (503), then budgets (429, naming the budget), with the request's
//!    estimated cost reserved; after routing because model budgets drop candidates and prices come from them;
//! 7. the spend event is opened (every request that reaches an upstream leaves exactly one), and streams ask the
//!    upstream for usage (`stream_options.include_usage`, stripped again unless the client asked for it);
//! 8. the attempts, in order, failing over on connection errors, timeouts, 5xx and 429; never after the first byte
//!    of a response reached the client; every answer is metered as it is read or streamed;
//! 9. tool calls in the answer validated (non-streamed: whole; streamed: per call), retried while the policy allows
//!    and nothing reached the client;
//! 10. the cost header (non-streamed) and budget warnings on the response.

pub mod anthropic;
pub mod auth;
pub mod egress;
pub mod error;
pub mod request;
pub mod sse;
pub mod tool_stream;
pub mod tools;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use policy_engine::config::{BackendKind, BackendSpec, Strategy};
use policy_engine::facts::KeyFacts;
use policy_engine::routing::{Decision, PlannedCandidate, weighted_order};
use policy_engine::tool_policy::InvalidCallAction;
use rand::RngExt;
use rust_decimal::Decimal;
use serde_json::json;

use self::error::GatewayError;
use self::request::{Endpoint, ParsedRequest};
use self::upstream::{AttemptError, SendOptions, Upstreams};
use crate::metering::{self, StreamMeter, Usage};
use crate::server::Exchange;
use crate::snapshot::CompiledSnapshot;
use crate::spend::budgets::{Admission, AdmissionRequest, BudgetLedger, Scope};
use crate::spend::record::{RequestSpend, SpendContext, SpendHandle};
use crate::spend::reporter::Reporter;
use crate::spend::stream::MeteredStream;
use crate::state::Current;

/// What the proxy shares across requests.
pub struct Proxy {
    pub current: Arc<Current>,
    pub upstreams: Upstreams,
    pub max_body_bytes: usize,
    /// The longest `Retry-After` the gateway waits out before retrying the same candidate; longer ones fail over.
    pub max_retry_after: Duration,
    /// Where every request's spend event goes.
    pub reporter: Arc<Reporter>,
    /// Budget state and reservations.
    pub budgets: Arc<BudgetLedger>,
    /// Output tokens reserved against budgets for a request that sets no `max_tokens`.
    pub reserve_output_tokens: u64,
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

/// The snapshot to serve with; not ready before one is loaded, nor before the tokenizer is (it is loaded at start,
/// off the async workers, and counting on a worker would stall every request it serves meanwhile).
fn snapshot(proxy: &Proxy) -> Result<Arc<CompiledSnapshot>, GatewayError> {
    if !policy_engine::tokens::is_loaded() {
        return Err(GatewayError::NotReady("it is loading its tokenizer"));
    }
    proxy.current.load().ok_or(GatewayError::NotReady("it has no configuration: it is waiting for the control plane"))
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
    let arrived = Instant::now();
    let occurred_at = chrono::Utc::now();
    let snapshot = snapshot(proxy)?;
    let exchange = Exchange::of(&request);
    let (parts, body) = request.into_parts();
    let key = auth::authenticate(&parts.headers, &snapshot, occurred_at.timestamp())?;
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
    let facts = parsed.facts(&parts.headers, snapshot.router.reads())?;
    let key_facts = KeyFacts {
        id: key.id.clone(),
        name: key.name.clone(),
        team: (!key.team.is_empty()).then(|| key.team.clone()),
        tags: key.tags.clone(),
    };
    let decision = snapshot.router.route(&facts, &key_facts, occurred_at, None);
    let (policy, mut candidates, strategy) = match decision {
        Decision::Route { policy, candidates, strategy, .. } => (policy, candidates, strategy),
        Decision::Deny { policy, message } => return Err(GatewayError::PolicyDenied { policy, message }),
        Decision::UnknownModel { model } => return Err(GatewayError::ModelNotFound { model }),
        Decision::PolicyError { policy, field, error } => {
            return Err(GatewayError::PolicyFailed { kind: "route policy", policy, field, error });
        }
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
    // Spend must be recordable, and within every budget, before anything is sent upstream.
    if proxy.reporter.is_full() {
        return Err(GatewayError::SpendSpoolFull { retry_after: proxy.reporter.retry_after_secs() });
    }
    // Each answer a tool policy may re-ask for is billed: reserve for all of them.
    let answers = governance.as_ref().map_or(1, |g| match g.decision.action {
        InvalidCallAction::Retry => 1 + u64::from(g.decision.max_retries),
        _ => 1,
    });
    let (admission, prompt_estimate) = admit(proxy, &snapshot, &parsed, key, &mut candidates, answers, occurred_at)?;
    let strip_usage =
        parsed.stream && parsed.endpoint != Endpoint::Embeddings && metering::inject_include_usage(&mut parsed.body);
    let parsed = Arc::new(parsed);
    let context = SpendContext {
        key,
        policy: policy.as_deref(),
        request_id: id,
        metadata: &facts.metadata,
        snapshot: snapshot.clone(),
        request: parsed.clone(),
        reservation: admission.reservation,
        prompt_estimate,
        arrived,
        occurred_at,
        exchange,
    };
    let spend = RequestSpend::start(context, proxy.reporter.clone());
    let pass = Pass {
        proxy,
        snapshot: &snapshot,
        parsed: &parsed,
        candidates: &candidates,
        policy: policy.as_deref(),
        id,
        spend: &spend,
        strip_usage,
    };
    let served = match governance {
        None => pass.forward(0, None).await.map(|served| match served {
            Served::Response(response) => response,
            Served::InvalidToolCalls => GatewayError::InvalidToolCall { violations: Vec::new() }.into_response(),
        }),
        Some(governance) => pass.governed(&governance).await,
    };
    let mut response = match served {
        Ok(response) => response,
        Err(error) => {
            let outcome =
                if matches!(error, GatewayError::InvalidToolCall { .. }) { "rejected" } else { "upstream_error" };
            spend.finish(error.status().as_u16(), outcome);
            return Err(error);
        }
    };
    let headers = response.headers_mut();
    if !spend.is_streaming()
        && let Some((cost, estimated)) = spend.cost()
        && let Ok(value) = HeaderValue::from_str(&cost.to_string())
    {
        headers.insert(COST_HEADER, value);
        if estimated {
            headers.insert(USAGE_ESTIMATED_HEADER, HeaderValue::from_static("true"));
        }
    }
    if !admission.warnings.is_empty()
        && let Ok(value) = HeaderValue::from_str(&admission.warnings.join("; "))
    {
        headers.insert(BUDGET_WARNING_HEADER, value);
    }
    Ok(response)
}

/// The response header with a non-streamed request's cost in USD (streams carry it in a closing SSE comment).
pub const COST_HEADER: &str = "x-gateway-cost-usd";
/// Set (to `true`) when the cost comes from the gateway's tokenizer because the upstream reported no usage.
pub const USAGE_ESTIMATED_HEADER: &str = "x-gateway-usage-estimated";
/// Alert budgets over their limit and budgets past their soft threshold, `name: reason; ...`.
pub const BUDGET_WARNING_HEADER: &str = "x-gateway-budget-warning";

/// Admit the request under its budgets (reserving its estimated cost) and drop candidates whose model budget is
/// exhausted; with the prompt estimate, when budgets needed it. Requests with no budget in force skip this.
fn admit(
    proxy: &Proxy,
    snapshot: &CompiledSnapshot,
    parsed: &ParsedRequest,
    key: &gateway_proto::v1::ApiKey,
    candidates: &mut Vec<PlannedCandidate>,
    answers: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Admission, Option<u64>), GatewayError> {
    let budgets = &snapshot.config.budgets;
    if budgets.is_empty() {
        return Ok((Admission::unlimited(), None));
    }
    let prompt = parsed.prompt_tokens();
    let estimate = reservation_estimate(snapshot, parsed, candidates, prompt, proxy.reserve_output_tokens)
        .saturating_mul(Decimal::from(answers));
    let admission = {
        let models: Vec<&str> = candidates.iter().map(|c| c.model.as_str()).collect();
        let scope = Scope { key_name: &key.name, team: &key.team, alias: &parsed.model, model: "" };
        let request = AdmissionRequest { scope, candidate_models: &models, estimate, now };
        proxy.budgets.admit(budgets, &request).map_err(GatewayError::from)?
    };
    for &position in admission.excluded.iter().rev() {
        candidates.remove(position);
    }
    Ok((admission, Some(prompt)))
}

/// The most one answer may cost as far as the gateway can tell before it runs, at the highest figure among its
/// candidates: the estimated prompt (at the dearer of the input and cache-write prices) and the most output it may
/// generate: `n` choices of `max_completion_tokens`/`max_tokens`, else of what the backend is sent by default
/// (`default_output`, or the anthropic translation's `max_tokens`), within the context window.
fn reservation_estimate(
    snapshot: &CompiledSnapshot,
    parsed: &ParsedRequest,
    candidates: &[PlannedCandidate],
    prompt: u64,
    default_output: u64,
) -> Decimal {
    let choices = parsed.body.get("n").and_then(serde_json::Value::as_u64).unwrap_or(1).clamp(1, 128);
    let priced = candidates.iter().filter_map(|candidate| {
        let model = snapshot.config.models.get(&candidate.model)?;
        let anthropic =
            snapshot.config.backends.get(&candidate.backend).is_some_and(|b| b.kind == BackendKind::Anthropic);
        let per_choice =
            match parsed.endpoint {
                Endpoint::Embeddings => 0,
                Endpoint::ChatCompletions | Endpoint::Completions => parsed
                    .max_output_tokens()
                    .unwrap_or(if anthropic { anthropic::DEFAULT_MAX_TOKENS } else { default_output }),
            };
        let window = model.capabilities.context_window.map_or(u64::MAX, u64::from);
        let output = per_choice.min(window.saturating_sub(prompt)).saturating_mul(choices);
        let pricing = &model.pricing;
        let dearest_input = pricing.cache_write.map_or(pricing.input, |write| write.max(pricing.input));
        let worst = policy_engine::config::Pricing { input: dearest_input, ..*pricing };
        let usage = Usage { prompt_tokens: prompt, completion_tokens: output, ..Usage::default() };
        metering::cost(&usage, &worst).ok()
    });
    priced.max().unwrap_or_default()
}

/// One request's forwarding, shared by its attempts (and by the retries of invalid tool calls).
struct Pass<'a> {
    proxy: &'a Proxy,
    snapshot: &'a CompiledSnapshot,
    parsed: &'a ParsedRequest,
    candidates: &'a [PlannedCandidate],
    policy: Option<&'a str>,
    id: &'a str,
    spend: &'a SpendHandle,
    /// The gateway injected `stream_options.include_usage`: the usage chunk is metered, not forwarded.
    strip_usage: bool,
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

impl Pass<'_> {
    /// A request that declares tools: invalid answers are re-asked while the policy allows, first of the candidate
    /// that produced them, then of the following ones.
    async fn governed(&self, governance: &tools::ToolGovernance) -> Result<Response, GatewayError> {
        let mut report = tools::ToolReport::new(self.id, governance);
        let mut retries_left =
            if governance.decision.action == InvalidCallAction::Retry { governance.decision.max_retries } else { 0 };
        let mut start = 0;
        let mut retried = 0;
        loop {
            let check = ToolCheck { governance, can_retry: retries_left > 0, report: &mut report };
            match self.forward(start, Some(check)).await {
                Ok(Served::Response(response)) => return Ok(response),
                Ok(Served::InvalidToolCalls) => {
                    retries_left -= 1;
                    retried += 1;
                    let last = report.last_candidate.unwrap_or(start);
                    start = if retried == 1 { last } else { (last + 1) % self.candidates.len().max(1) };
                    tracing::info!(request_id = self.id, retry = retried, "invalid tool calls: asking again");
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

    /// One attempt to `candidate`, which must be over by `deadline`. It counts (and the request is billed however
    /// it ends) from the moment it is sent, not when an answer starts: a client that leaves while the upstream
    /// works still leaves its event. A backend that refuses the `stream_options` the gateway added (older Azure API
    /// versions, strict servers) is asked again without them at once, and from then on never sent them: its streams
    /// are metered with the tokenizer instead.
    async fn send(
        &self,
        backend: &BackendSpec,
        candidate: &PlannedCandidate,
        deadline: tokio::time::Instant,
    ) -> Result<reqwest::Response, AttemptError> {
        let (upstreams, parsed) = (&self.proxy.upstreams, self.parsed);
        let send = |omit_usage_option: bool| {
            let options = SendOptions { request_id: self.id, omit_usage_option };
            upstreams.send(backend, &candidate.upstream_model, parsed.endpoint, &parsed.body, options)
        };
        let omitted = self.strip_usage && upstreams.refuses_usage_option(&backend.name);
        let previous = self.spend.attempt(candidate);
        self.spend.exchange().set_deadline(deadline);
        let attempt = send(omitted).await;
        if let Err(AttemptError::Unsupported(_) | AttemptError::Refused(_)) = &attempt {
            // Refused before anything was sent: a backend kind that cannot serve the endpoint, a secret or an
            // address the egress rules refuse.
            self.spend.not_sent(previous);
            return attempt;
        }
        match &attempt {
            Err(AttemptError::Status { status: 400, body, .. })
                if self.strip_usage && !omitted && body.contains("stream_options") =>
            {
                tracing::info!(backend = %backend.name, "the backend refuses stream_options; its streams are metered by the tokenizer");
                upstreams.remember_usage_option_refused(&backend.name);
                self.spend.attempt(candidate);
                send(true).await
            }
            _ => attempt,
        }
    }

    /// Try the candidates in order from `start` (wrapping around); answer with the first usable response.
    async fn forward(&self, start: usize, mut tools: Option<ToolCheck<'_>>) -> Result<Served, GatewayError> {
        let (proxy, candidates) = (self.proxy, self.candidates);
        let mut failures: Vec<(String, AttemptError)> = Vec::new();
        let order = (0..candidates.len()).map(|i| (start + i) % candidates.len());
        for (position, candidate) in order.map(|i| (i, &candidates[i])) {
            let Some(backend) = self.snapshot.config.backends.get(&candidate.backend) else { continue };
            // The backend's total timeout covers the whole exchange: from sending the attempt to the client taking
            // the response's last byte.
            let total = Duration::from_millis(backend.timeouts.total_ms);
            let mut deadline = tokio::time::Instant::now() + total;
            let mut attempt = self.send(backend, candidate, deadline).await;
            // A short Retry-After is waited out once on the same candidate; a long one moves on.
            if let Err(AttemptError::Status { status: 429, retry_after: Some(wait), .. }) = &attempt
                && *wait <= proxy.max_retry_after
            {
                tokio::time::sleep(*wait).await;
                deadline = tokio::time::Instant::now() + total;
                attempt = self.send(backend, candidate, deadline).await;
            }
            match attempt {
                Ok(response) => {
                    if let Some(tools) = tools.as_mut() {
                        tools.report.last_candidate = Some(position);
                    }
                    let mut reply = match self.respond(response, backend, tools, candidate, deadline).await? {
                        Served::Response(reply) => reply,
                        Served::InvalidToolCalls => return Ok(Served::InvalidToolCalls),
                    };
                    let headers = reply.headers_mut();
                    for (name, value) in [
                        ("x-gateway-backend", candidate.backend.as_str()),
                        ("x-gateway-model", candidate.model.as_str()),
                        ("x-gateway-policy", self.policy.unwrap_or("-")),
                        ("x-gateway-snapshot-version", &self.snapshot.version.to_string()),
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
                    self.spend.finish(status, "upstream_error");
                    let body = match backend.kind {
                        BackendKind::Anthropic => anthropic::openai_error(&body),
                        BackendKind::Openai | BackendKind::AzureOpenai => body,
                    };
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

    /// Turn a successful upstream response into ours: streamed through as it comes (metered on the way), or read
    /// whole and metered, all by the attempt's `deadline`. With `tools`, tool calls are validated: a non-streamed
    /// answer whole, a streamed one per call (see [`tool_stream`]).
    async fn respond(
        &self,
        upstream: reqwest::Response,
        backend: &BackendSpec,
        tools: Option<ToolCheck<'_>>,
        candidate: &PlannedCandidate,
        deadline: tokio::time::Instant,
    ) -> Result<Served, GatewayError> {
        let total = Duration::from_millis(backend.timeouts.total_ms);
        let translate = backend.kind == BackendKind::Anthropic;
        let stream = self.parsed.stream;
        let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::OK);
        let content_type = upstream.headers().get("content-type").cloned();
        let is_sse =
            content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
        let mut validation = None;
        let body = if stream && is_sse {
            let meter = StreamMeter::new(self.strip_usage);
            let bytes: BoxStream<'static, reqwest::Result<bytes::Bytes>> = if translate {
                anthropic::translate_stream(upstream.bytes_stream()).boxed()
            } else {
                upstream.bytes_stream().boxed()
            };
            let metered = MeteredStream::new(bytes, meter, self.spend.clone(), candidate.model.clone());
            match tools {
                None => {
                    self.spend.streaming();
                    Body::from_stream(sse::passthrough(metered, deadline, total, Some(self.spend.clone())))
                }
                Some(tools) => match self.governed_stream(metered, deadline, total, tools, candidate).await? {
                    Some(body) => {
                        self.spend.streaming();
                        body
                    }
                    None => return Ok(Served::InvalidToolCalls),
                },
            }
        } else {
            let bytes = tokio::time::timeout_at(deadline, upstream.bytes())
                .await
                .map_err(|_| {
                    GatewayError::UpstreamTimeout(format!(
                        "the response exceeded the total timeout of {} ms",
                        total.as_millis()
                    ))
                })?
                .map_err(|e| GatewayError::UpstreamFailed(format!("reading the upstream response failed: {e}")))?;
            let bytes = match translate.then(|| anthropic::answer(&bytes)) {
                None => bytes,
                Some(Ok(translated)) => bytes::Bytes::from(translated),
                Some(Err(error)) => {
                    // The upstream read the prompt whatever came back: metered as estimated.
                    self.spend.add_answer(&candidate.model, &bytes);
                    return Err(GatewayError::UpstreamFailed(error));
                }
            };
            // Metered before the tool check: an answer that is rejected or retried was still billed.
            self.spend.add_answer(&candidate.model, &bytes);
            if let Some(tools) = tools {
                let declared = &tools.governance.declared;
                let calls = tools::check_completion(&bytes, declared);
                tools::record(&calls, declared, &candidate.model, &candidate.backend, Some(self.spend));
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
            self.spend.finish(status.as_u16(), "ok");
            Body::from(bytes)
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        if translate && !is_sse {
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
        } else if let Some(content_type) = content_type {
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

    /// A streamed answer to a request that declared tools. When an invalid answer may be retried, the stream is
    /// read ahead (nothing sent) until text or a validated call is ready to go out; an invalid call before that
    /// point returns `None` so the caller asks again (the abandoned stream is metered for what it produced). Once
    /// the client has received something, an invalid call ends the stream with an error event instead.
    async fn governed_stream(
        &self,
        upstream: MeteredStream<BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
        deadline: tokio::time::Instant,
        total: Duration,
        tools: ToolCheck<'_>,
        candidate: &PlannedCandidate,
    ) -> Result<Option<Body>, GatewayError> {
        let declared = tools.governance.declared.clone();
        let mut stage = tool_stream::ToolStream::new(declared.clone(), tools.governance.decision.action.blocks());
        let mut upstream = upstream.fuse();
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
                    tools::record(&calls, &declared, &candidate.model, &candidate.backend, Some(self.spend));
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
            spend: Some(self.spend.clone()),
        };
        Ok(Some(Body::from_stream(sse::governed(upstream, stage, initial, deadline, total, report))))
    }
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
    } else if all(|e| matches!(e, AttemptError::Refused(_))) {
        // This data plane will not use any candidate as configured: retrying cannot help until the configuration
        // (or this data plane's settings) change.
        GatewayError::BackendMisconfigured(message)
    } else if all(|e| matches!(e, AttemptError::Timeout(_))) {
        GatewayError::UpstreamTimeout(message)
    } else if all(|e| matches!(e, AttemptError::Unsupported(_))) {
        // No candidate can take this request at all: the caller's to change, not an outage.
        GatewayError::Unsupported(message)
    } else if all(|e| matches!(e, AttemptError::Connect(_) | AttemptError::Unsupported(_))) {
        GatewayError::UpstreamUnavailable(message)
    } else {
        GatewayError::UpstreamFailed(message)
    }
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
