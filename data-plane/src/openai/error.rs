//! The data plane's one HTTP-facing error, rendered in the OpenAI error shape so every SDK raises its own class.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use policy_engine::config::BudgetPeriod;
use serde_json::json;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{message}")]
    InvalidField { message: String, param: &'static str },
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    InvalidApiKey(&'static str),
    #[error("request denied by policy '{policy}': {message}")]
    PolicyDenied { policy: String, message: String },
    #[error(
        "request refused: {kind} '{policy}' could not be evaluated for it ({field}: {error}); policies fail closed, \
         so a request a policy cannot decide is not served"
    )]
    PolicyFailed { kind: &'static str, policy: String, field: String, error: String },
    #[error("this API key may not use model '{model}'")]
    ModelNotAllowed { model: String },
    #[error("{0}")]
    NoEligibleCandidate(String),
    #[error("the model '{model}' does not exist or you do not have access to it")]
    ModelNotFound { model: String },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("the gateway is not ready yet: {0}")]
    NotReady(&'static str),
    #[error("{message}")]
    UpstreamRateLimited { message: String, retry_after: Option<u64> },
    #[error("{0}")]
    UpstreamFailed(String),
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    /// Every candidate was refused by this data plane's egress rules or lacks its secret here; nothing was sent.
    #[error("{0}")]
    BackendMisconfigured(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{}", tool_not_allowed_message(policy, tools))]
    ToolNotAllowed { policy: String, tools: Vec<String> },
    #[error("{}", invalid_tool_call_message(violations))]
    InvalidToolCall { violations: Vec<ToolViolation> },
    /// A guardrail's `block` matched (`docs/guardrails.md`): names the guardrail and the category, never the text.
    #[error("content blocked by guardrail '{guardrail}' ({category} found in the {side})")]
    ContentBlocked { guardrail: String, category: String, side: &'static str },
    /// The provider's own safety system refused the prompt or withheld the answer (e.g. Gemini's `blockReason`).
    #[error("{0}")]
    ContentFiltered(String),
    /// A guardrail's external classifier failed (error, timeout) under `on_error: fail_closed`.
    #[error(
        "guardrail '{guardrail}' could not check the {side}: its {detector} classifier failed, and the guardrail \
         fails closed; try again later"
    )]
    GuardrailUnavailable { guardrail: String, detector: String, side: &'static str },
    #[error("{}", budget_exceeded_message(.0))]
    BudgetExceeded(Refusal),
    /// An API key over its rate limit, or every candidate's backend at its own (`docs/rate-limits.md`).
    #[error("{}", .0.message)]
    RateLimited(RateRefusal),
    #[error(
        "the gateway cannot record spend right now (its spend spool is full: the control plane has not acknowledged \
         spend for a while); try again in {retry_after} s"
    )]
    SpendSpoolFull {
        /// Seconds until the gateway next tries to hand spend to the control plane.
        retry_after: u64,
    },
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    RequestsPerSecond,
    RequestsPerMinute,
    TokensPerMinute,
}

impl LimitKind {
    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::RequestsPerSecond => "requests per second (RPS)",
            LimitKind::RequestsPerMinute => "requests per minute (RPM)",
            LimitKind::TokensPerMinute => "tokens per minute (TPM)",
        }
    }

    /// OpenAI's error `type` for it.
    pub fn openai_type(self) -> &'static str {
        match self {
            LimitKind::RequestsPerSecond | LimitKind::RequestsPerMinute => "requests",
            LimitKind::TokensPerMinute => "tokens",
        }
    }
}

/// A rate limit that refuses a request: 429 `rate_limit_exceeded`, OpenAI's `type` (`requests` or `tokens`),
/// `retry-after` and, for a limited key, its `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    pub message: String,
    pub kind: LimitKind,
    /// Seconds until the window that refused resets.
    pub retry_after: u64,
    /// The request alone exceeds the limit: retrying cannot help.
    pub hopeless: bool,
    pub headers: Vec<(&'static str, String)>,
}

/// A `block` budget that would be crossed: the request is refused with 429 `budget_exceeded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub budget: String,
    pub period: BudgetPeriod,
    pub limit: Decimal,
    /// Spend known here (confirmed, local and reserved), before this request.
    pub spent: Decimal,
    /// When the period resets (`None` for `total`).
    pub resets_at: Option<DateTime<Utc>>,
    /// Refused by the outage share, not by the limit itself: the control plane is unreachable.
    pub outage: Option<OutageRefusal>,
}

/// A refusal under the outage share: `spent` is then this data plane's own spend beyond the last confirmed figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutageRefusal {
    pub share: Decimal,
    /// What the budget had left at the last budget state.
    pub left: Decimal,
}

impl From<Refusal> for GatewayError {
    fn from(refusal: Refusal) -> GatewayError {
        GatewayError::BudgetExceeded(refusal)
    }
}

fn budget_exceeded_message(refusal: &Refusal) -> String {
    let period = match refusal.period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Week => "week",
        BudgetPeriod::Month => "month",
        BudgetPeriod::Total => "in total",
    };
    let per = if refusal.period == BudgetPeriod::Total { period.to_owned() } else { format!("per {period}") };
    let resets = match refusal.resets_at {
        Some(at) => format!("; it resets at {}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => String::new(),
    };
    if let Some(outage) = &refusal.outage {
        return format!(
            "budget '{}' ({} USD {per}) does not allow this request while the control plane is unreachable: this \
             gateway keeps to its share ({}) of the {} USD left at the last budget state, and {} USD of it is spent or \
             reserved",
            refusal.budget,
            refusal.limit.normalize(),
            outage.share.normalize(),
            outage.left.normalize(),
            refusal.spent.normalize()
        );
    }
    format!(
        "budget '{}' ({} USD {per}) does not allow this request: {} USD spent or reserved{resets}",
        refusal.budget,
        refusal.limit.normalize(),
        refusal.spent.normalize()
    )
}

/// One violation in an `invalid_tool_call` error: which call, which tool, where in its arguments, what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolViolation {
    pub tool_call_index: u64,
    pub tool: String,
    pub pointer: String,
    pub message: String,
}

fn tool_not_allowed_message(policy: &str, tools: &[String]) -> String {
    let names: Vec<String> = tools.iter().map(|t| format!("'{t}'")).collect();
    let (noun, verb) = if tools.len() == 1 { ("tool", "is") } else { ("tools", "are") };
    format!("the {noun} {} {verb} not allowed for this caller by tool policy '{policy}'", names.join(", "))
}

fn invalid_tool_call_message(violations: &[ToolViolation]) -> String {
    let list: Vec<String> = violations
        .iter()
        .map(|v| {
            let at = if v.pointer.is_empty() { String::new() } else { format!(" at {}", v.pointer) };
            format!("tool_calls[{}] '{}'{at}: {}", v.tool_call_index, v.tool, v.message)
        })
        .collect();
    format!("the model produced an invalid tool call: {}", list.join("; "))
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest(_)
            | GatewayError::InvalidField { .. }
            | GatewayError::Unsupported(_)
            | GatewayError::ContentBlocked { .. }
            | GatewayError::ContentFiltered(_) => StatusCode::BAD_REQUEST,
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::InvalidApiKey(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InvalidToolCall { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::PolicyDenied { .. }
            | GatewayError::PolicyFailed { .. }
            | GatewayError::ToolNotAllowed { .. }
            | GatewayError::ModelNotAllowed { .. }
            | GatewayError::NoEligibleCandidate(_) => StatusCode::FORBIDDEN,
            GatewayError::ModelNotFound { .. } | GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::NotReady(_)
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::SpendSpoolFull { .. }
            | GatewayError::GuardrailUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamRateLimited { .. }
            | GatewayError::BudgetExceeded(_)
            | GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::UpstreamFailed(_) | GatewayError::BackendMisconfigured(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A fixed code for the body and for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::InvalidField { .. } => "invalid_value",
            GatewayError::TooLarge { .. } => "request_too_large",
            GatewayError::InvalidApiKey(_) => "invalid_api_key",
            GatewayError::PolicyDenied { .. } => "policy_denied",
            GatewayError::PolicyFailed { .. } => "policy_evaluation_failed",
            GatewayError::ModelNotAllowed { .. } => "model_not_allowed",
            GatewayError::NoEligibleCandidate(_) => "no_eligible_backend",
            GatewayError::ModelNotFound { .. } => "model_not_found",
            GatewayError::NoRoute { .. } => "unknown_url",
            GatewayError::NotReady(_) => "not_ready",
            GatewayError::UpstreamRateLimited { .. } => "upstream_rate_limited",
            GatewayError::UpstreamFailed(_) => "upstream_error",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::BackendMisconfigured(_) => "backend_misconfigured",
            GatewayError::Unsupported(_) => "unsupported_request",
            GatewayError::ToolNotAllowed { .. } => "tool_not_allowed",
            GatewayError::InvalidToolCall { .. } => "invalid_tool_call",
            GatewayError::ContentBlocked { .. } => "content_blocked",
            // Azure OpenAI's code for its own filter's refusals, which OpenAI-shaped clients already know.
            GatewayError::ContentFiltered(_) => "content_filter",
            GatewayError::GuardrailUnavailable { .. } => "guardrail_unavailable",
            GatewayError::BudgetExceeded(_) => "budget_exceeded",
            GatewayError::RateLimited(_) => "rate_limit_exceeded",
            GatewayError::SpendSpoolFull { .. } => "spend_spool_full",
        }
    }

    /// Why the gateway refused the request, for `gateway_refusals_total{reason}`; `None` for upstream failures
    /// (counted by class in `gateway_upstream_errors_total`) and unknown URLs.
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidApiKey(_) => Some("auth"),
            GatewayError::BudgetExceeded(_) => Some("budget"),
            GatewayError::RateLimited(_) => Some("rate_limit"),
            GatewayError::PolicyDenied { .. }
            | GatewayError::PolicyFailed { .. }
            | GatewayError::ModelNotAllowed { .. }
            | GatewayError::NoEligibleCandidate(_) => Some("policy"),
            GatewayError::ToolNotAllowed { .. }
            | GatewayError::InvalidToolCall { .. }
            | GatewayError::ContentBlocked { .. }
            | GatewayError::GuardrailUnavailable { .. } => Some("guard"),
            GatewayError::InvalidRequest(_)
            | GatewayError::InvalidField { .. }
            | GatewayError::TooLarge { .. }
            | GatewayError::ModelNotFound { .. }
            | GatewayError::Unsupported(_) => Some("bad_request"),
            GatewayError::NotReady(_) | GatewayError::SpendSpoolFull { .. } => Some("unavailable"),
            GatewayError::NoRoute { .. }
            | GatewayError::UpstreamRateLimited { .. }
            | GatewayError::UpstreamFailed(_)
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::ContentFiltered(_)
            | GatewayError::BackendMisconfigured(_) => None,
        }
    }

    /// The OpenAI `type`.
    fn error_type(&self) -> &'static str {
        if let GatewayError::RateLimited(refusal) = self {
            // OpenAI's own rate-limit errors name the limit's unit.
            return refusal.kind.openai_type();
        }
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidField { param, .. } => Some(param),
            GatewayError::ModelNotFound { .. } | GatewayError::ModelNotAllowed { .. } => Some("model"),
            GatewayError::ToolNotAllowed { .. } => Some("tools"),
            _ => None,
        }
    }

    /// The error as an SSE event, for failures after a stream has started.
    pub fn sse_event(&self) -> String {
        crate::openai::sse::data_event(&self.body())
    }

    fn body(&self) -> serde_json::Value {
        let mut body = json!({"error": {"message": self.to_string(), "type": self.error_type(), "param": self.param(), "code": self.code()}});
        match self {
            GatewayError::InvalidToolCall { violations } => body["error"]["violations"] = json!(violations),
            GatewayError::BudgetExceeded(refusal) => body["error"]["budget"] = json!(refusal.budget),
            _ => {}
        }
        body
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let GatewayError::PolicyFailed { kind, policy, .. } = &self {
            // A policy that cannot decide is a configuration problem the operator must see, not only the caller.
            metrics::counter!("gateway_policy_errors_total", "kind" => *kind, "policy" => policy.clone()).increment(1);
            tracing::warn!(code = self.code(), "{self}");
        } else if status.is_server_error() {
            tracing::warn!(code = self.code(), "{self}");
        }
        let mut response = (status, Json(self.body())).into_response();
        let retry_after = match &self {
            GatewayError::UpstreamRateLimited { retry_after, .. } => *retry_after,
            // Retrying before the period resets cannot succeed (unless the control plane comes back: no hint).
            GatewayError::BudgetExceeded(refusal) if refusal.outage.is_none() => {
                refusal.resets_at.map(|at| (at - chrono::Utc::now()).num_seconds().max(1) as u64)
            }
            GatewayError::SpendSpoolFull { retry_after } => Some((*retry_after).max(1)),
            GatewayError::RateLimited(refusal) => Some(refusal.retry_after),
            _ => None,
        };
        if let Some(seconds) = retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert("retry-after", value);
        }
        // The OpenAI SDKs honour this: retrying an exhausted budget or a refused configuration within seconds is
        // pointless (a budget refused only because the control plane is away may clear sooner).
        if let GatewayError::RateLimited(refusal) = &self {
            for (name, value) in &refusal.headers {
                if let Ok(value) = HeaderValue::from_str(value) {
                    response.headers_mut().insert(*name, value);
                }
            }
        }
        if matches!(&self, GatewayError::BudgetExceeded(refusal) if refusal.outage.is_none())
            || matches!(&self, GatewayError::RateLimited(refusal) if refusal.hopeless)
            || matches!(self, GatewayError::BackendMisconfigured(_))
        {
            response.headers_mut().insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}
