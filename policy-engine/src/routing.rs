//! Compiled routing: which policy matches a request, which candidates survive the constraints, in what order.
//!
//! [`Router::compile`] runs once per config version (off the request path); [`Router::route`] runs per
//! request and only evaluates precompiled programs. The control plane's dry run and the data plane call
//! the same two functions, so what `POST /admin/v1/evaluate` answers is what serving would do.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map};
use cel::{Context, Value};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::cel_decls::{CelError, ExpressionScope, Reads};
use crate::cel_env::{self, CompiledExpression};
use crate::cel_native::{self, CandidateFacts, Facts};
use crate::config::*;
use crate::facts::{KeyFacts, RequestFacts};

/// The standard CEL environment, built once: `Context::default()` would rebuild it on every request.
pub(crate) static STDLIB: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A policy that does not compile, located by resource and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource} {field}: {error}")]
pub struct CompileError {
    pub resource: String,
    pub field: String,
    pub error: CelError,
}

struct CompiledPolicy {
    spec: RoutePolicySpec,
    when: CompiledExpression,
    require: Option<CompiledExpression>,
}

/// A candidate model the request may be sent to, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedCandidate {
    /// The model's name.
    pub model: String,
    /// The backend that serves it.
    pub backend: String,
    /// The model name sent to the backend.
    pub upstream_model: String,
    /// Its weight under the `weighted` strategy.
    pub weight: u32,
}

/// A candidate dropped because its model cannot serve the request, or by a policy's `require`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RejectedCandidate {
    /// The model's name.
    pub model: String,
    /// The backend that serves it.
    pub backend: String,
    /// The policy whose `require` was false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What the request needs that the model's `capabilities` lack: `chat`, `completions`, `embeddings`, `images`,
    /// `tools`, `vision`, `json_mode`, `context_window` (its prompt and `max_tokens` do not fit), or `image_price`
    /// (no price for the image size and quality asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<&'static str>,
}

/// What `request` needs that `model` lacks, if anything: the first of its endpoint, declared tools, image input,
/// JSON output, and room in the context window for the prompt and the requested output.
pub fn missing_capability(model: &ModelSpec, request: &RequestFacts) -> Option<&'static str> {
    let can = &model.capabilities;
    let endpoint = match request.endpoint.as_str() {
        "chat.completions" => Some(("chat", can.chat)),
        "completions" => Some(("completions", can.completions)),
        "embeddings" => Some(("embeddings", can.embeddings)),
        "images.generations" => Some(("images", can.images)),
        _ => None,
    };
    if let Some((name, false)) = endpoint {
        return Some(name);
    }
    if request.endpoint == "images.generations"
        && model.pricing.image_price(request.image_quality.as_deref(), request.image_size.as_deref()).is_none()
    {
        return Some("image_price");
    }
    if !request.tools.is_empty() && !can.tools {
        return Some("tools");
    }
    if request.images && !can.vision {
        return Some("vision");
    }
    if request.json_output && !can.json_mode {
        return Some("json_mode");
    }
    let needed = request.prompt_tokens.saturating_add(request.max_tokens.unwrap_or(0));
    if can.context_window.is_some_and(|window| needed > u64::from(window)) {
        return Some("context_window");
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    Route {
        /// The route policy that matched; `None` when the request's model was used as is.
        policy: Option<String>,
        /// The alias served, when the request or the policy named one.
        alias: Option<String>,
        /// The strategy the candidates were ordered by.
        strategy: Strategy,
        /// The route policy's `retries` (absent: each candidate once).
        retries: Option<u32>,
        /// The route policy's `timeout_ms` (absent: none).
        timeout_ms: Option<u64>,
        /// The candidates to try, in order.
        candidates: Vec<PlannedCandidate>,
        /// Candidates dropped, with why.
        rejected: Vec<RejectedCandidate>,
        /// Constraint policies that applied.
        constraints: Vec<String>,
    },
    Deny {
        /// The deny policy that matched.
        policy: String,
        /// Its message, as the caller gets it.
        message: String,
    },
    /// `request.model` names no alias or model and no policy routed the request.
    UnknownModel {
        /// The name the request asked for.
        model: String,
    },
    /// A policy's `when` or `require` failed to evaluate for this request (a missing metadata key, a null, a
    /// value of the wrong type): the request is refused. Policies fail closed: routing on as if the policy did
    /// not exist could skip a residency rule or a deny.
    PolicyError {
        /// The policy whose expression failed.
        policy: String,
        /// Which expression failed: `when` or `require`.
        field: String,
        /// The evaluation error.
        error: String,
    },
    /// Every candidate was filtered out by constraints.
    NoEligibleCandidate {
        /// The route policy that matched, if any.
        policy: Option<String>,
        /// The alias served, if any.
        alias: Option<String>,
        /// Every candidate, with why it was dropped.
        rejected: Vec<RejectedCandidate>,
        /// Constraint policies that applied.
        constraints: Vec<String>,
    },
}

/// One policy's evaluation, for the dry run and for debugging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyTrace {
    /// The policy's name.
    pub policy: String,
    /// Its priority.
    pub priority: i32,
    /// Whether its `when` was true.
    pub matched: bool,
    /// An evaluation error, which refuses the request (`Decision::PolicyError`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The routing configuration of one version, compiled.
pub struct Router {
    /// Route and deny policies, in evaluation order (priority descending, then name).
    policies: Vec<CompiledPolicy>,
    /// Constraint policies, in the same order.
    constraints: Vec<CompiledPolicy>,
    aliases: HashMap<String, AliasSpec>,
    models: HashMap<String, ModelSpec>,
    backends: HashMap<String, BackendSpec>,
    candidate_values: HashMap<String, CandidateValues>,
    reads: Reads,
}

impl Router {
    /// Compile every enabled route policy of `config`. Every error is reported, not only the first.
    pub fn compile(config: &ConfigSet) -> Result<Router, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        let mut constraints = Vec::new();
        let mut reads = Reads::default();
        let mut sorted: Vec<&RoutePolicySpec> = config.route_policies.values().filter(|p| p.enabled).collect();
        sorted.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
        for spec in sorted {
            let compile = |field: &str, source: &str, scope| {
                cel_env::compile(source, scope).map_err(|error| CompileError {
                    resource: format!("route_policy/{}", spec.name),
                    field: field.to_owned(),
                    error,
                })
            };
            let when = compile("when", &spec.when, ExpressionScope::Request);
            let require = match &spec.action {
                PolicyAction::Route { require: Some(r), .. } | PolicyAction::Constrain { require: r } => {
                    Some(compile("action.require", r, ExpressionScope::Candidate))
                }
                _ => None,
            }
            .transpose();
            match (when, require) {
                (Ok(when), Ok(require)) => {
                    reads = reads.union(when.reads());
                    if let Some(r) = &require {
                        reads = reads.union(r.reads());
                    }
                    let compiled = CompiledPolicy { spec: spec.clone(), when, require };
                    if matches!(spec.action, PolicyAction::Constrain { .. }) {
                        constraints.push(compiled);
                    } else {
                        policies.push(compiled);
                    }
                }
                (when, require) => errors.extend(when.err().into_iter().chain(require.err())),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // A context window is only checked against a counted prompt.
        if config.models.values().any(|m| m.capabilities.context_window.is_some()) {
            reads.prompt_tokens = true;
        }
        // `lowest_cost` orders by the request's estimated cost, so the prompt must be counted.
        let by_cost = config.aliases.values().any(|a| a.strategy == Strategy::LowestCost)
            || config.route_policies.values().any(|p| {
                p.enabled && matches!(p.action, PolicyAction::Route { strategy: Some(Strategy::LowestCost), .. })
            });
        reads.prompt_tokens |= by_cost;
        let candidate_values = config
            .models
            .values()
            .filter_map(|m| Some((m.name.clone(), CandidateValues::new(m, config.backends.get(&m.backend)?))))
            .collect();
        Ok(Router {
            candidate_values,
            policies,
            constraints,
            aliases: clone_map(&config.aliases),
            models: clone_map(&config.models),
            backends: clone_map(&config.backends),
            reads,
        })
    }

    /// Which request attributes some policy reads (e.g. whether to count prompt tokens at all).
    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// Decide how to serve `request` for `key` at `now`. `trace`, when given, receives every policy's result.
    pub fn route(
        &self,
        request: &RequestFacts,
        key: &KeyFacts,
        now: DateTime<Utc>,
        mut trace: Option<&mut Vec<PolicyTrace>>,
    ) -> Decision {
        // Header names are matched in lower case, as HTTP has them; callers of the dry run may not send them so.
        let lowered;
        let request = if request.headers.keys().any(|k| k.bytes().any(|b| b.is_ascii_uppercase())) {
            let headers = request.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
            lowered = RequestFacts { headers, ..request.clone() };
            &lowered
        } else {
            request
        };
        let facts = Facts { request, key, candidate: None };
        // The interpreter's variables are built only if some expression is outside the native subset.
        let interpreter = OnceCell::new();
        let context = || {
            interpreter.get_or_init(|| {
                let mut context = Context::with_env(STDLIB.clone());
                context.add_variable_from_value("request", request_value(request));
                context.add_variable_from_value("key", key_value(key));
                context.add_variable_from_value("now", Value::Timestamp(now.fixed_offset()));
                context
            })
        };

        // Guards skip policies that cannot match; the dry run (with a trace) evaluates everything.
        let tracing = trace.is_some();
        let mut record = |policy: &CompiledPolicy, result: &Result<bool, String>| {
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(PolicyTrace {
                    policy: policy.spec.name.clone(),
                    priority: policy.spec.priority,
                    matched: matches!(result, Ok(true)),
                    error: result.as_ref().err().cloned(),
                });
            }
        };

        let admitted = |e: &CompiledExpression| tracing || e.guards().admit(&request.metadata);
        let failed = |policy: &CompiledPolicy, field: &str, error: String| Decision::PolicyError {
            policy: policy.spec.name.clone(),
            field: field.to_owned(),
            error,
        };
        let mut matched = None;
        for policy in &self.policies {
            if !admitted(&policy.when) {
                continue;
            }
            let result = evaluate_bool(&policy.when, &facts, context);
            record(policy, &result);
            match result {
                Ok(true) => {
                    matched = Some(policy);
                    break;
                }
                Ok(false) => {}
                Err(error) => return failed(policy, "when", error),
            }
        }
        let mut active_constraints: Vec<&CompiledPolicy> = Vec::new();
        for constraint in &self.constraints {
            if !admitted(&constraint.when) {
                continue;
            }
            let result = evaluate_bool(&constraint.when, &facts, context);
            record(constraint, &result);
            match result {
                Ok(true) => active_constraints.push(constraint),
                Ok(false) => {}
                Err(error) => return failed(constraint, "when", error),
            }
        }

        let (policy_name, alias, strategy, retries, timeout_ms, listed, own_require) =
            match matched.map(|p| (p, &p.spec.action)) {
                Some((policy, PolicyAction::Deny { message })) => {
                    return Decision::Deny { policy: policy.spec.name.clone(), message: message.clone() };
                }
                Some((policy, PolicyAction::Route { alias, candidates, strategy, retries, timeout_ms, .. })) => {
                    let (alias_name, listed, alias_strategy) = match (alias, candidates) {
                        (Some(alias), _) => match self.aliases.get(alias) {
                            Some(spec) => (Some(alias.clone()), spec.candidates.clone(), spec.strategy),
                            None => return Decision::UnknownModel { model: alias.clone() },
                        },
                        (None, Some(list)) => (None, list.clone(), Strategy::default()),
                        (None, None) => (None, Vec::new(), Strategy::default()),
                    };
                    (
                        Some(policy.spec.name.clone()),
                        alias_name,
                        strategy.unwrap_or(alias_strategy),
                        *retries,
                        *timeout_ms,
                        listed,
                        policy.require.as_ref().map(|r| (policy, r)),
                    )
                }
                Some((_, PolicyAction::Constrain { .. })) | None => match self.resolve_public_name(&request.model) {
                    Some((alias, listed, strategy)) => (None, alias, strategy, None, None, listed, None),
                    None => return Decision::UnknownModel { model: request.model.clone() },
                },
            };

        let requirements: Vec<(&CompiledPolicy, &CompiledExpression)> = own_require
            .into_iter()
            .chain(active_constraints.iter().filter_map(|c| c.require.as_ref().map(|r| (*c, r))))
            .collect();
        let mut candidates = Vec::new();
        let mut rejected = Vec::new();
        for candidate in &listed {
            let Some((model, backend)) = self.model_and_backend(&candidate.model) else { continue };
            if let Some(missing) = missing_capability(model, request) {
                rejected.push(RejectedCandidate {
                    model: model.name.clone(),
                    backend: backend.name.clone(),
                    policy: None,
                    missing: Some(missing),
                });
                continue;
            }
            // Most requests have no constraint: build the candidate's CEL scope only when one must be evaluated.
            let refused_by = if requirements.is_empty() {
                None
            } else {
                let built;
                let values = match self.candidate_values.get(&model.name) {
                    Some(values) => values,
                    None => {
                        built = CandidateValues::new(model, backend);
                        &built
                    }
                };
                let facts = Facts { candidate: Some(&values.facts), ..facts };
                let scope = OnceCell::new();
                let scope = || scope.get_or_init(|| candidate_context(context(), values));
                let mut failed_by = None;
                for (policy, require) in &requirements {
                    match evaluate_bool(require, &facts, scope) {
                        Ok(true) => {}
                        Ok(false) => {
                            failed_by = Some(*policy);
                            break;
                        }
                        Err(error) => return failed(policy, "action.require", error),
                    }
                }
                failed_by
            };
            match refused_by {
                Some(policy) => rejected.push(RejectedCandidate {
                    model: model.name.clone(),
                    backend: backend.name.clone(),
                    policy: Some(policy.spec.name.clone()),
                    missing: None,
                }),
                None => candidates.push(PlannedCandidate {
                    model: model.name.clone(),
                    backend: backend.name.clone(),
                    upstream_model: model.upstream_model.clone(),
                    weight: candidate.weight,
                }),
            }
        }
        let constraints = active_constraints.iter().map(|c| c.spec.name.clone()).collect();
        if candidates.is_empty() {
            return Decision::NoEligibleCandidate { policy: policy_name, alias, rejected, constraints };
        }
        if strategy == Strategy::LowestCost {
            // A stable sort: equally priced candidates keep their listed order; an unknown model sorts last.
            let estimate = |c: &PlannedCandidate| {
                self.models.get(&c.model).map_or(Decimal::MAX, |m| estimated_cost(&m.pricing, request))
            };
            candidates.sort_by_cached_key(estimate);
        }
        Decision::Route { policy: policy_name, alias, strategy, retries, timeout_ms, candidates, rejected, constraints }
    }

    /// An alias by that name, else a model by that name served alone.
    fn resolve_public_name(&self, name: &str) -> Option<(Option<String>, Vec<Candidate>, Strategy)> {
        if let Some(alias) = self.aliases.get(name) {
            return Some((Some(alias.name.clone()), alias.candidates.clone(), alias.strategy));
        }
        self.models.get(name).map(|m| (None, vec![Candidate { model: m.name.clone(), weight: 1 }], Strategy::Failover))
    }

    fn model_and_backend(&self, model: &str) -> Option<(&ModelSpec, &BackendSpec)> {
        let model = self.models.get(model)?;
        Some((model, self.backends.get(&model.backend)?))
    }
}

/// Output tokens `lowest_cost` expects from a request that sets no `max_tokens` (nor `max_completion_tokens`).
pub const LOWEST_COST_DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// What `request` would cost on a model priced `pricing`, for ordering candidates under `lowest_cost`: the input
/// price times the estimated prompt tokens plus the output price times the expected output (`max_tokens`, else
/// [`LOWEST_COST_DEFAULT_OUTPUT_TOKENS`]), in USD per million tokens times tokens (the common factor is left out).
/// Saturates instead of overflowing: an absurd `max_tokens` orders, it never panics.
pub fn estimated_cost(pricing: &Pricing, request: &RequestFacts) -> Decimal {
    let output = request.max_tokens.unwrap_or(LOWEST_COST_DEFAULT_OUTPUT_TOKENS);
    let input = pricing.input.checked_mul(Decimal::from(request.prompt_tokens));
    let output = pricing.output.checked_mul(Decimal::from(output));
    input.zip(output).and_then(|(i, o)| i.checked_add(o)).unwrap_or(Decimal::MAX)
}

/// Order `candidates` for the weighted strategy: one drawn by weight with `draw` in `[0, 1)` first,
/// the rest in their listed order as failover.
pub fn weighted_order(candidates: &mut [PlannedCandidate], draw: f64) {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return;
    }
    let mut point = (draw.clamp(0.0, 1.0 - f64::EPSILON) * total as f64) as u64;
    let chosen = candidates
        .iter()
        .position(|c| {
            let weight = u64::from(c.weight);
            if point < weight {
                true
            } else {
                point -= weight;
                false
            }
        })
        .unwrap_or(0);
    candidates[..=chosen].rotate_right(1);
}

fn clone_map<T: Clone>(map: &BTreeMap<String, T>) -> HashMap<String, T> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Natively when the answer is certain, else with the interpreter (whose context `context` builds on first use).
pub(crate) fn evaluate_bool<'c, 'v: 'c>(
    expression: &CompiledExpression,
    facts: &Facts,
    context: impl FnOnce() -> &'c Context<'c, 'v>,
) -> Result<bool, String> {
    if let Some(answer) = expression.native().and_then(|native| native.evaluate(facts)) {
        return Ok(answer);
    }
    match expression.program().execute(context()) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("`{}` evaluated to {other:?}, not a bool", expression.source())),
        Err(error) => Err(error.to_string()),
    }
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_owned()))
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries.into_iter().map(|(k, v)| (Key::from(k), v)).collect();
    Value::Map(Map { map: Arc::new(map) })
}

fn list(items: &[String]) -> Value {
    Value::List(Arc::new(items.iter().map(|s| string(s)).collect()))
}

/// Counts are CEL `int`s so that `request.prompt_tokens > 2000` compares like with like.
fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn optional_int(value: Option<u64>) -> Value {
    value.map_or(Value::Null, int)
}

fn json_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (None, None, Some(f)) => Value::Float(f),
            (None, None, None) => Value::Null,
        },
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(json_value).collect())),
        serde_json::Value::Object(fields) => json_object(fields),
    }
}

fn json_object(fields: &serde_json::Map<String, serde_json::Value>) -> Value {
    let map: HashMap<Key, Value> = fields.iter().map(|(k, v)| (Key::from(k.as_str()), json_value(v))).collect();
    Value::Map(Map { map: Arc::new(map) })
}

pub(crate) fn request_value(request: &RequestFacts) -> Value {
    let headers: HashMap<Key, Value> =
        request.headers.iter().map(|(k, v)| (Key::from(k.to_ascii_lowercase()), string(v))).collect();
    map(vec![
        ("model", string(&request.model)),
        ("endpoint", string(&request.endpoint)),
        ("stream", Value::Bool(request.stream)),
        ("prompt_tokens", int(request.prompt_tokens)),
        ("max_tokens", optional_int(request.max_tokens)),
        ("tools", list(&request.tools)),
        ("metadata", json_object(&request.metadata)),
        ("headers", Value::Map(Map { map: Arc::new(headers) })),
    ])
}

pub(crate) fn key_value(key: &KeyFacts) -> Value {
    map(vec![
        ("id", string(&key.id)),
        ("name", string(&key.name)),
        ("team", key.team.as_deref().map_or(Value::Null, string)),
        ("tags", list(&key.tags)),
    ])
}

fn price(value: Decimal) -> Value {
    Value::Float(cel_native::price(value))
}

/// The CEL values of one candidate (`backend` and `model`), built once per snapshot instead of per request.
pub(crate) struct CandidateValues {
    backend: Value,
    model: Value,
    facts: CandidateFacts,
}

impl CandidateValues {
    pub(crate) fn new(model: &ModelSpec, backend: &BackendSpec) -> CandidateValues {
        let kind =
            serde_json::to_value(backend.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        CandidateValues {
            backend: map(vec![
                ("name", string(&backend.name)),
                ("kind", string(&kind)),
                ("region", backend.region.as_deref().map_or(Value::Null, string)),
                ("tags", list(&backend.tags)),
            ]),
            model: map(vec![
                ("name", string(&model.name)),
                ("upstream_model", string(&model.upstream_model)),
                ("price_input", price(model.pricing.input)),
                ("price_output", price(model.pricing.output)),
                ("context_window", optional_int(model.capabilities.context_window.map(u64::from))),
            ]),
            facts: CandidateFacts::new(model, backend),
        }
    }
}

pub(crate) fn candidate_context<'a, 'v>(parent: &'a Context<'a, 'v>, values: &CandidateValues) -> Context<'a, 'v> {
    let mut scope = parent.new_inner_scope();
    scope.add_variable_from_value("backend", values.backend.clone());
    scope.add_variable_from_value("model", values.model.clone());
    scope
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
