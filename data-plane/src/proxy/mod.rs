//! The OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/images/generations`, `/v1/models`, and the
//! APIs served through chat, `/v1/messages` and `/v1/responses` ([`translated`]). The routes
//! and what every request shares are here; one request's steps are in [`pipeline`], its attempts (candidates,
//! failover, tool-call retries) in [`attempt`], the virtual key in [`auth`].

mod attempt;
pub mod auth;
mod pipeline;
mod translated;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::Instrument;

use crate::control::snapshot::CompiledSnapshot;
use crate::control::state::Current;
use crate::health::board::HealthBoard;
use crate::health::tracker::Tracker;
use crate::openai::error::GatewayError;
use crate::openai::request::Endpoint;
use crate::providers::upstream::Upstreams;
use crate::ratelimit::limiter::RateLimiter;
use crate::spend::budgets::BudgetLedger;
use crate::spend::reporter::Reporter;
use crate::trace;

/// What the proxy shares across requests.
pub struct Proxy {
    pub current: Arc<Current>,
    pub upstreams: Arc<Upstreams>,
    pub max_body_bytes: usize,
    /// The largest non-streamed upstream answer read (`GATEWAY_MAX_UPSTREAM_ANSWER_BYTES`).
    pub max_upstream_answer_bytes: usize,
    /// The longest `Retry-After` the gateway waits out before retrying the same candidate; longer ones fail over.
    pub max_retry_after: Duration,
    /// Where every request's spend event goes.
    pub reporter: Arc<Reporter>,
    /// Budget state and reservations.
    pub budgets: Arc<BudgetLedger>,
    /// Rate limits: this data plane's windows and its share of every limit.
    pub rates: Arc<RateLimiter>,
    /// Output tokens reserved against budgets (and counted against token rate limits) for a request that sets no
    /// `max_tokens`.
    pub reserve_output_tokens: u64,
    /// Every backend's health as this data plane sees it (breakers and health checks write it).
    pub health: Arc<HealthBoard>,
    /// The breakers and latencies that order and admit each request's candidates; published on `health`.
    pub tracker: Arc<Tracker>,
}

pub fn routes(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/images/generations", post(image_generations))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
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

impl Proxy {
    /// The snapshot to serve with; not ready before one is loaded, nor before the tokenizer is (it is loaded at
    /// start, off the async workers, and counting on a worker would stall every request it serves meanwhile).
    fn snapshot(&self) -> Result<Arc<CompiledSnapshot>, GatewayError> {
        if !policy_engine::tokens::is_loaded() {
            return Err(GatewayError::NotReady("it is loading its tokenizer"));
        }
        self.current
            .load()
            .ok_or(GatewayError::NotReady("it has no configuration: it is waiting for the control plane"))
    }
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

async fn image_generations(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    serve(&proxy, Endpoint::ImageGenerations, request).await
}

async fn messages(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    translated::handle::<crate::apis::messages::Messages>(&proxy, request).await
}

async fn responses(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    translated::handle::<crate::apis::responses::Responses>(&proxy, request).await
}

/// Count a refused or failed request in the error metrics.
fn count_error(error: &GatewayError) {
    metrics::counter!(crate::metrics::ERRORS, "code" => error.code()).increment(1);
    if let Some(reason) = error.refusal_reason() {
        metrics::counter!(crate::metrics::REFUSALS, "reason" => reason, "code" => error.code()).increment(1);
    }
}

async fn serve(proxy: &Proxy, endpoint: Endpoint, request: Request) -> Response {
    let id = request_id(request.headers());
    let trace = trace::request_trace(operation(endpoint), &id, request.headers());
    let span = trace.span().clone();
    let log_span = trace.log_span().clone();
    let mut response = match pipeline::handle(proxy, endpoint, request, &id, &trace).instrument(log_span).await {
        Ok(response) => {
            trace::record_status(&span, response.status().as_u16(), None);
            response
        }
        Err(error) => {
            trace::record_status(&span, error.status().as_u16(), Some(error.code()));
            count_error(&error);
            error.into_response()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// `gen_ai.operation.name` of an endpoint (the GenAI semantic conventions' values).
pub(crate) fn operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
        // Not in the GenAI conventions' list yet; the name OpenAI's API gives it.
        Endpoint::ImageGenerations => "image_generation",
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
        let snapshot = proxy.snapshot()?;
        let key = auth::authenticate(&headers, &snapshot, now_unix())?;
        let data: Vec<_> = visible_models(&snapshot, &key.allowed_aliases).into_iter().map(model_object).collect();
        Ok::<_, GatewayError>(axum::Json(json!({"object": "list", "data": data})).into_response())
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn get_model(State(proxy): State<Arc<Proxy>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let result = (|| {
        let snapshot = proxy.snapshot()?;
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
