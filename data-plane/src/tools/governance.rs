//! Tool governance on the request path (semantics in `docs/tools.md`):
//! - [`prepare`]: for a request that declares tools, the tool policy's decision (403 for a tool it does not allow),
//!   the registered schemas put in place of the caller's `parameters`, and the schema each declared tool's
//!   arguments must satisfy;
//! - [`check_completion`]: every `tool_calls[i].function` of a non-streamed answer validated;
//! - [`record`] and [`finish`]: metrics per call and the per-request [`ToolReport`].
//!
//! Streamed answers go through [`crate::tools::stream`] instead.

use std::sync::Arc;

use policy_engine::facts::{KeyFacts, RequestFacts};
use policy_engine::tool_policy::{DeclaredTools, InvalidCallAction, ToolCallOutcome, ToolDecision};
use policy_engine::tool_schema;
use serde_json::Value;

use crate::control::snapshot::CompiledSnapshot;
use crate::openai::error::{GatewayError, ToolViolation};
use crate::openai::request::ParsedRequest;
use crate::spend::record::RequestSpend;

/// The header that marks an answer whose tool calls were checked: `valid` or `invalid`.
pub const VALIDATION_HEADER: &str = "x-gateway-tool-validation";

/// What a request that declares tools carries through forwarding.
pub struct ToolGovernance {
    pub decision: ToolDecision,
    pub declared: Arc<DeclaredTools>,
}

/// Apply the tool policy to a request that declares tools (`facts.tools`); `None` when it declares none.
///
/// Registered tools get the registered schema as their `parameters` in the forwarded body, so the model is asked
/// for exactly what the gateway will check. Unregistered tools keep the caller's `parameters`, and calls to them are
/// checked against it (when it is a valid JSON Schema; otherwise only that the arguments are JSON).
pub fn prepare(
    snapshot: &CompiledSnapshot,
    parsed: &mut ParsedRequest,
    facts: &RequestFacts,
    key: &KeyFacts,
) -> Result<Option<ToolGovernance>, GatewayError> {
    if facts.tools.is_empty() {
        return Ok(None);
    }
    let decision = snapshot.tool_policies.evaluate(facts, key, chrono::Utc::now()).map_err(|failed| {
        GatewayError::PolicyFailed {
            kind: "tool policy",
            policy: failed.policy,
            field: "when".to_owned(),
            error: failed.error,
        }
    })?;
    if !decision.denied.is_empty() {
        return Err(GatewayError::ToolNotAllowed {
            policy: decision.policy.clone().unwrap_or_default(),
            tools: decision.denied.clone(),
        });
    }
    let mut declared = DeclaredTools::default();
    let tools = parsed.body.get_mut("tools").and_then(Value::as_array_mut).into_iter().flatten();
    for function in tools.filter_map(|tool| tool.get_mut("function")).filter_map(Value::as_object_mut) {
        let Some(name) = function.get("name").and_then(Value::as_str).map(str::to_owned) else { continue };
        let registered = snapshot.config.tool_schemas.get(&name).zip(snapshot.tool_validators.get(&name));
        let schema = match registered {
            Some((spec, validator)) => {
                function.insert("parameters".to_owned(), spec.schema.clone());
                Some(validator.clone())
            }
            None => function.get("parameters").and_then(|p| tool_schema::compile(p).ok()).map(Arc::new),
        };
        declared.insert(name, schema);
    }
    Ok(Some(ToolGovernance { decision, declared: Arc::new(declared) }))
}

/// Validate every tool call of a non-streamed chat completion. A body that is not a chat completion has none.
pub fn check_completion(body: &[u8], declared: &DeclaredTools) -> Vec<ToolCallOutcome> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let choices = value.get("choices").and_then(Value::as_array).into_iter().flatten();
    let calls = choices.filter_map(|c| c.pointer("/message/tool_calls")?.as_array()).flat_map(|calls| {
        calls.iter().enumerate().map(|(i, call)| {
            let text = |field: &str| call.pointer(field).and_then(Value::as_str).unwrap_or_default();
            declared.validate(i as u64, text("/function/name"), text("/function/arguments"))
        })
    });
    calls.collect()
}

/// The violations of the invalid calls among `outcomes`, for the `invalid_tool_call` error.
pub fn violations(outcomes: &[ToolCallOutcome]) -> Vec<ToolViolation> {
    outcomes
        .iter()
        .flat_map(|o| {
            o.violations.iter().map(|v| ToolViolation {
                tool_call_index: o.index,
                tool: o.tool.clone(),
                pointer: v.pointer.clone(),
                message: v.message.clone(),
            })
        })
        .collect()
}

/// Count each call in `gateway_tool_calls_total{tool,model,backend,outcome}`. A name the request did not declare is
/// counted as `tool="_undeclared"`: hallucinated names are unbounded, label values must not be.
/// The request's spend event (when there is one) gets the outcomes too.
fn record(
    outcomes: &[ToolCallOutcome],
    declared: &DeclaredTools,
    model: &str,
    backend: &str,
    spend: Option<&RequestSpend>,
) {
    if let Some(spend) = spend {
        spend.tool_outcomes(outcomes);
    }
    for outcome in outcomes {
        let tool = if declared.contains(&outcome.tool) { outcome.tool.clone() } else { "_undeclared".to_owned() };
        metrics::counter!("gateway_tool_calls_total",
            "tool" => tool, "model" => model.to_owned(), "backend" => backend.to_owned(),
            "outcome" => outcome.outcome.as_str())
        .increment(1);
    }
}

/// The tool-validation record of one request, across its attempts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolReport {
    pub request_id: String,
    /// The tool policy that decided (`None`: no policy matched, calls were audited).
    pub policy: Option<String>,
    pub action: InvalidCallAction,
    /// One entry per answer that was validated, in order; more than one when invalid answers were retried.
    pub attempts: Vec<AttemptOutcomes>,
    /// Whether the client got the answer (`false` when it was rejected).
    pub delivered: bool,
    /// Which candidate (position in the routing plan) answered last, so a retry knows where to go.
    #[serde(skip)]
    pub last_candidate: Option<usize>,
    /// Another copy (the one a stream took) logs the request's end.
    #[serde(skip)]
    handed_over: bool,
}

/// The calls of one upstream answer and who produced them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptOutcomes {
    pub model: String,
    pub backend: String,
    pub calls: Vec<ToolCallOutcome>,
}

impl ToolReport {
    pub fn new(request_id: &str, governance: &ToolGovernance) -> ToolReport {
        ToolReport::of_policy(request_id, governance.decision.policy.clone(), governance.decision.action)
    }

    /// The report of a request under `policy` (`None`: no policy matched) whose invalid calls get `action`.
    pub fn of_policy(request_id: &str, policy: Option<String>, action: InvalidCallAction) -> ToolReport {
        ToolReport {
            request_id: request_id.to_owned(),
            policy,
            action,
            attempts: Vec::new(),
            delivered: true,
            last_candidate: None,
            handed_over: false,
        }
    }

    /// Validated calls of one answer, from `model` at `backend`: counted and added to the request's spend.
    pub fn add_answer(
        &mut self,
        calls: Vec<ToolCallOutcome>,
        declared: &DeclaredTools,
        model: &str,
        backend: &str,
        spend: Option<&RequestSpend>,
    ) {
        record(&calls, declared, model, backend, spend);
        self.attempts.push(AttemptOutcomes { model: model.to_owned(), backend: backend.to_owned(), calls });
    }

    /// The report, for a stream that outlives the request's handler and ends it; this copy says nothing more.
    pub fn hand_over(&mut self) -> ToolReport {
        let report = self.clone();
        self.handed_over = true;
        report
    }

    pub fn any_invalid(&self) -> bool {
        self.attempts.iter().flat_map(|a| &a.calls).any(|c| !c.is_valid())
    }
}

/// The end of a request that declared tools: its validation outcomes are logged when a call was invalid. (The
/// request's spend event gets each answer's outcomes as they are validated: [`ToolReport::add_answer`].)
impl Drop for ToolReport {
    fn drop(&mut self) {
        if self.handed_over || !self.any_invalid() {
            return;
        }
        let summary: Vec<String> = self
            .attempts
            .iter()
            .flat_map(|a| a.calls.iter().map(move |c| format!("{}:{}:{}", a.model, c.tool, c.outcome.as_str())))
            .collect();
        tracing::info!(request_id = %self.request_id, policy = self.policy.as_deref().unwrap_or("-"),
            action = self.action.as_str(), delivered = self.delivered, calls = %summary.join(","),
            "invalid tool calls");
    }
}
