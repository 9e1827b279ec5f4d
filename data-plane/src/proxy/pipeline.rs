//! One request through the gateway, top to bottom; each step needs the one before:
//! 1. the snapshot, loaded once so the whole request sees one version;
//! 2. the virtual key (cheapest refusal first; nothing else is parsed for an unknown caller);
//! 3. the body, read up to the limit and parsed leniently ([`crate::openai::request`]);
//! 4. the key's allowed aliases, then routing (policies, constraints, alias resolution, strategy order);
//! 5. tool governance, only when the request declares tools ([`crate::tools::governance`]): the tool policy (after
//!    routing, so a route policy's deny wins), registered schemas put in place of the caller's;
//!    then guardrails ([`crate::guardrails`]): the prompt inspected, redacted or refused (`content_blocked`)
//!    before anything is counted or sent (the answer is inspected in [`super::attempt`]);
//! 6. rate limits ([`crate::ratelimit`]): the key's RPM and TPM (429 `rate_limit_exceeded`), its tokens estimated as
//!    the prompt plus the most output; after routing because the estimate is only counted when the key or a
//!    candidate's backend limits tokens, before budgets so a refused request reserves nothing. Backends' own limits
//!    are taken per attempt ([`super::attempt`]);
//! 7. spend admission: a full spend spool refuses (503), then budgets (429, naming the budget), with the request's
//!    estimated cost reserved ([`crate::spend::estimate`]); after routing because model budgets drop candidates and
//!    prices come from them;
//! 8. the spend event is opened (every request that reaches an upstream leaves exactly one), and streams ask the
//!    upstream for usage (`stream_options.include_usage`, stripped again unless the client asked for it);
//! 9. the candidates planned against this data plane's breakers and, for `least_latency`, its observed latency
//!    ([`crate::health::tracker`]): open ones dropped, never waited on;
//! 10. the attempts ([`super::attempt`]), in order, failing over on connection errors, timeouts, 5xx and 429; never
//!     after the first byte of a response reached the client; as many as the route policy's `retries` allow, all
//!     within its `timeout_ms`; every answer is metered as it is read or streamed;
//!     tool calls in the answer validated and retried while the policy allows and nothing reached the client;
//! 11. the cost header (non-streamed), budget warnings and the key's `x-ratelimit-*` headers on the response.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use gateway_telemetry::RequestTrace;
use policy_engine::config::Strategy;
use policy_engine::facts::KeyFacts;
use policy_engine::guardrail::Tally;
use policy_engine::routing::{Decision, PlannedCandidate, weighted_order};
use policy_engine::tool_policy::InvalidCallAction;
use rand::RngExt;

use super::Proxy;
use super::attempt::{Attempts, RouteLimits};
use super::auth::authenticate;
use crate::control::snapshot::CompiledSnapshot;
use crate::guardrails;
use crate::openai::error::GatewayError;
use crate::openai::request::{self, Endpoint, ParsedRequest};
use crate::ratelimit::limiter::KeyLimits;
use crate::server::Exchange;
use crate::spend::estimate::{self, Admitting};
use crate::spend::metering;
use crate::spend::record::{RequestSpend, SpendContext};
use crate::tools::governance;
use crate::trace;

/// Serve one request of `endpoint` (see the module documentation for the steps).
pub async fn handle(
    proxy: &Proxy,
    endpoint: Endpoint,
    request: Request,
    id: &str,
    trace: &RequestTrace,
) -> Result<Response, GatewayError> {
    let arrived = Instant::now();
    let occurred_at = chrono::Utc::now();
    let snapshot = proxy.snapshot()?;
    let exchange = Exchange::of(&request);
    let (parts, body) = request.into_parts();
    let key = authenticate(&parts.headers, &snapshot, occurred_at.timestamp())?;
    let bytes = read_body(body, proxy.max_body_bytes).await?;
    let mut parsed = request::parse(endpoint, &bytes)?;
    trace::record_alias(trace.span(), super::operation(endpoint), &parsed.model);
    if !key.allowed_aliases.is_empty() && !key.allowed_aliases.contains(&parsed.model) {
        return Err(GatewayError::ModelNotAllowed { model: parsed.model });
    }
    let facts = parsed.facts(&parts.headers, snapshot.router.reads().union(snapshot.guardrails.reads()))?;
    let key_facts = KeyFacts {
        id: key.id.clone(),
        name: key.name.clone(),
        team: (!key.team.is_empty()).then(|| key.team.clone()),
        tags: key.tags.clone(),
    };
    let Routed { policy, mut candidates, strategy, limits } =
        route(snapshot.router.route(&facts, &key_facts, occurred_at, None))?;
    keep_pinned_embeddings(&snapshot, &parsed, &mut candidates)?;
    let governance = governance::prepare(&snapshot, &mut parsed, &facts, &key_facts)?;
    // Guardrails after the policies (a deny wins) and before anything is counted, reserved or sent: a blocked
    // prompt costs nothing, and a redacted one is what the upstream, the estimates and the limits see.
    let guard = guardrails::prepare(&snapshot, &facts, &key_facts)?;
    let prompt_findings = match &guard {
        Some(guard) => {
            guard.refuse_unclassifiable_stream(parsed.stream)?;
            let mut found = guard.prompt(parsed.endpoint, &mut parsed.body)?;
            // External classifiers after the local detectors: they see the prompt as it would leave.
            guard.classify_prompt(&proxy.upstreams, parsed.endpoint, &mut parsed.body, id, &mut found).await?;
            found
        }
        None => Tally::default(),
    };
    if strategy == Strategy::Weighted {
        weighted_order(&mut candidates, rand::rng().random::<f64>());
    }
    let key_limits = KeyLimits::of(key);
    let counts_tokens = key_limits.tpm.is_some()
        || candidates.iter().any(|c| {
            snapshot.config.backends.get(&c.backend).is_some_and(|b| b.rate_limit.is_some_and(|r| r.tpm.is_some()))
        });
    let prompt = counts_tokens.then(|| parsed.prompt_tokens());
    let tokens = prompt.map_or(0, |p| estimate::token_estimate(&parsed, p, proxy.reserve_output_tokens));
    let rates = proxy
        .rates
        .admit_key(&key.id, &key.name, key_limits, tokens, occurred_at.timestamp_millis().max(0) as u64)
        .map_err(GatewayError::RateLimited)?;
    // Spend must be recordable, and within every budget, before anything is sent upstream.
    if proxy.reporter.is_full() {
        return Err(GatewayError::SpendSpoolFull { retry_after: proxy.reporter.retry_after_secs() });
    }
    // Each answer a tool policy may re-ask for is billed: reserve for all of them.
    let answers = governance.as_ref().map_or(1, |g| match g.decision.action {
        InvalidCallAction::Retry => 1 + u64::from(g.decision.max_retries),
        _ => 1,
    });
    let admitting = Admitting { snapshot: &snapshot, parsed: &parsed, key, answers, now: occurred_at };
    let (admission, prompt_estimate) =
        estimate::admit(&proxy.budgets, proxy.reserve_output_tokens, &admitting, &mut candidates, prompt)?;
    let strip_usage =
        parsed.stream && parsed.endpoint.streams_usage() && metering::inject_include_usage(&mut parsed.body);
    let parsed = Arc::new(parsed);
    let context = SpendContext {
        key,
        policy: policy.as_deref(),
        request_id: id,
        metadata: &facts.metadata,
        snapshot: snapshot.clone(),
        request: parsed.clone(),
        reservation: admission.reservation,
        rates,
        prompt_estimate,
        arrived,
        occurred_at,
        exchange,
        trace: trace.clone(),
    };
    let spend = RequestSpend::start(context, proxy.reporter.clone());
    if let Some(guard) = &guard {
        guard.record(&prompt_findings, Some(&spend));
    }
    // Breakers and observed latency last: skipping an open backend must not change what was admitted or reserved.
    proxy.tracker.sync(&snapshot.config, snapshot.version, &snapshot.content_hash, true);
    let force_breakers = proxy.tracker.plan(&mut candidates, strategy);
    let attempts = Attempts {
        proxy,
        snapshot: &snapshot,
        parsed: &parsed,
        candidates: &candidates,
        policy: policy.as_deref(),
        id,
        spend: &spend,
        strip_usage,
        limits,
        force_breakers,
        request_deadline: OnceLock::new(),
        guard: guard.as_ref(),
    };
    let served = match governance {
        None => attempts.plain().await,
        Some(governance) => attempts.governed(&governance).await,
    };
    let mut response = match served {
        Ok(response) => response,
        Err(error) => {
            let outcome = match error {
                GatewayError::InvalidToolCall { .. } => "rejected",
                GatewayError::ContentBlocked { .. } | GatewayError::GuardrailUnavailable { .. } => "blocked",
                _ => "upstream_error",
            };
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
    for (name, value) in spend.rates().headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

/// An embedding alias with `pinned_dimensions` promises vectors of that size whatever serves it, and one with
/// `pinned_model` vectors of that model: a request asking for another size is refused, and candidates of another size
/// or model (which a route policy may have chosen) are dropped.
fn keep_pinned_embeddings(
    snapshot: &CompiledSnapshot,
    parsed: &ParsedRequest,
    candidates: &mut Vec<PlannedCandidate>,
) -> Result<(), GatewayError> {
    let alias = match snapshot.config.aliases.get(&parsed.model) {
        Some(alias) if parsed.endpoint == Endpoint::Embeddings => alias,
        _ => return Ok(()),
    };
    let before: Vec<String> = candidates.iter().map(|c| c.model.clone()).collect();
    if let Some(pinned) = alias.pinned_dimensions {
        if let Some(asked) = parsed.body.get("dimensions")
            && asked.as_u64() != Some(u64::from(pinned))
        {
            return Err(GatewayError::InvalidField {
                message: format!("'{}' is pinned to {pinned} dimensions; the request asked for {asked}", parsed.model),
                param: "dimensions",
            });
        }
        let size = |c: &PlannedCandidate| snapshot.config.models.get(&c.model)?.capabilities.embedding_dimensions;
        candidates.retain(|c| size(c) == Some(pinned));
        if candidates.is_empty() {
            return Err(GatewayError::Unsupported(format!(
                "'{}' is pinned to {pinned} dimensions and none of its candidates ({}) produces them",
                parsed.model,
                before.join(", ")
            )));
        }
    }
    if let Some(pinned) = &alias.pinned_model {
        let serves = |c: &PlannedCandidate| {
            snapshot.config.models.get(&c.model).is_some_and(|m| m.effective_embedding_model() == pinned)
        };
        candidates.retain(serves);
        if candidates.is_empty() {
            return Err(GatewayError::Unsupported(format!(
                "'{}' is pinned to the embedding model '{pinned}' and none of its candidates ({}) serves it",
                parsed.model,
                before.join(", ")
            )));
        }
    }
    Ok(())
}

/// The body, up to `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            GatewayError::TooLarge { limit }
        } else {
            GatewayError::InvalidRequest(format!("could not read the request body: {error}"))
        }
    })
}

/// A routing decision to serve.
struct Routed {
    /// The route policy that chose, if one did.
    policy: Option<String>,
    candidates: Vec<PlannedCandidate>,
    strategy: Strategy,
    /// That policy's `retries` and `timeout_ms`.
    limits: RouteLimits,
}

/// The routing decision to serve, or its refusal.
fn route(decision: Decision) -> Result<Routed, GatewayError> {
    match decision {
        Decision::Route { policy, candidates, strategy, retries, timeout_ms, .. } => {
            Ok(Routed { policy, candidates, strategy, limits: RouteLimits { retries, timeout_ms } })
        }
        Decision::Deny { policy, message } => Err(GatewayError::PolicyDenied { policy, message }),
        Decision::UnknownModel { model } => Err(GatewayError::ModelNotFound { model }),
        Decision::PolicyError { policy, field, error } => {
            Err(GatewayError::PolicyFailed { kind: "route policy", policy, field, error })
        }
        Decision::NoEligibleCandidate { rejected, .. } => {
            let by: Vec<String> = rejected
                .iter()
                .map(|r| match (&r.policy, r.missing) {
                    (_, Some("context_window")) => {
                        format!("{} (the prompt and max_tokens exceed its context window)", r.model)
                    }
                    (_, Some("image_price")) => {
                        format!("{} (has no price for the image size and quality asked for)", r.model)
                    }
                    (_, Some(missing)) => format!("{} (lacks the capability '{missing}')", r.model),
                    (Some(policy), None) => format!("{} (by '{policy}')", r.model),
                    (None, None) => r.model.clone(),
                })
                .collect();
            let message = format!("no backend may serve this request: {}", by.join(", "));
            // Only the request's own needs ruled every candidate out: the caller's to change (400), not a refusal.
            if rejected.iter().all(|r| r.policy.is_none()) {
                Err(GatewayError::Unsupported(message))
            } else {
                Err(GatewayError::NoEligibleCandidate(message))
            }
        }
    }
}

/// The response header with a non-streamed request's cost in USD (streams carry it in a closing SSE comment).
pub const COST_HEADER: &str = "x-gateway-cost-usd";
/// Set (to `true`) when the cost comes from the gateway's tokenizer because the upstream reported no usage.
pub const USAGE_ESTIMATED_HEADER: &str = "x-gateway-usage-estimated";
/// Alert budgets over their limit and budgets past their soft threshold, `name: reason; ...`.
pub const BUDGET_WARNING_HEADER: &str = "x-gateway-budget-warning";
