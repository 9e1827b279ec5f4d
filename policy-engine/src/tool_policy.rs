//! Tool governance: which callers may declare which tools ([`ToolPolicies`]), and whether a model's tool call is
//! one the caller declared with arguments that validate ([`DeclaredTools::validate`]).
//!
//! Policies compile once per config version, like route policies, and are evaluated only for requests that
//! declare tools. The highest-priority matching policy (ties broken by name) decides; when none matches, every
//! declared tool is allowed and calls are validated and recorded but never blocked (`audit`). Semantics and the
//! HTTP statuses the data plane answers with are documented in `docs/tools.md`.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel::Context;
use cel::Value;
use chrono::{DateTime, Utc};
use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde::Serialize;

use crate::cel_decls::ExpressionScope;
use crate::cel_env::{self, CompiledExpression};
use crate::cel_native::Facts;
use crate::config::{ConfigSet, OnInvalidToolCall, ToolPolicyMode, ToolPolicySpec};
use crate::facts::{KeyFacts, RequestFacts};
use crate::routing::{self, CompileError};

/// At most this many violations are reported per call, so a hostile answer cannot inflate the error without bound.
pub(crate) const MAX_VIOLATIONS_PER_CALL: usize = 32;

/// What to do with a tool call that does not validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidCallAction {
    /// Refuse the answer: 422 `invalid_tool_call`, or an error event ending the stream.
    Reject,
    /// Ask again (same candidate, then the next ones), up to the policy's `max_retries`; then reject.
    Retry,
    /// Pass the answer through, marked with `x-gateway-tool-validation: invalid`, and count it.
    Annotate,
    /// Never block; record the outcome (mode `audit`, and requests no policy matched).
    Audit,
}

impl InvalidCallAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidCallAction::Reject => "reject",
            InvalidCallAction::Retry => "retry",
            InvalidCallAction::Annotate => "annotate",
            InvalidCallAction::Audit => "audit",
        }
    }

    /// Whether an invalid call must be kept from the client (so streamed tool calls are held until validated).
    pub fn blocks(self) -> bool {
        matches!(self, InvalidCallAction::Reject | InvalidCallAction::Retry)
    }
}

/// A tool policy whose `when` failed to evaluate for a request: the request is refused (policies fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool policy '{policy}' could not be evaluated for this request: {error}")]
pub struct ToolPolicyError {
    pub policy: String,
    pub error: String,
}

/// The tool policy's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolDecision {
    /// The policy that matched; `None` when none did.
    pub policy: Option<String>,
    pub action: InvalidCallAction,
    pub max_retries: u32,
    /// Declared tools the policy does not allow, in declaration order. Non-empty means the request is refused.
    pub denied: Vec<String>,
}

struct CompiledToolPolicy {
    spec: ToolPolicySpec,
    when: CompiledExpression,
}

/// The tool policies of one config version, compiled, in evaluation order (priority descending, then name).
pub struct ToolPolicies {
    policies: Vec<CompiledToolPolicy>,
}

impl ToolPolicies {
    /// Compile every tool policy's `when`. Every error is reported, not only the first.
    pub fn compile(config: &ConfigSet) -> Result<ToolPolicies, Vec<CompileError>> {
        let mut sorted: Vec<&ToolPolicySpec> = config.tool_policies.values().collect();
        sorted.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)));
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        for spec in sorted {
            match cel_env::compile(&spec.when, ExpressionScope::Request) {
                Ok(when) => policies.push(CompiledToolPolicy { spec: spec.clone(), when }),
                Err(error) => errors.push(CompileError {
                    resource: format!("tool_policy/{}", spec.name),
                    field: "when".to_owned(),
                    error,
                }),
            }
        }
        if errors.is_empty() { Ok(ToolPolicies { policies }) } else { Err(errors) }
    }

    /// Decide for a request declaring `request.tools`. A `when` that fails to evaluate before a match refuses
    /// the request.
    pub fn evaluate(
        &self,
        request: &RequestFacts,
        key: &KeyFacts,
        now: DateTime<Utc>,
    ) -> Result<ToolDecision, ToolPolicyError> {
        let matched = if self.policies.is_empty() {
            None
        } else {
            let facts = Facts { request, key, candidate: None };
            // The interpreter's variables are built only if some `when` is outside the native subset.
            let interpreter = OnceCell::new();
            let context = || {
                interpreter.get_or_init(|| {
                    let mut context = Context::with_env(routing::STDLIB.clone());
                    context.add_variable_from_value("request", routing::request_value(request));
                    context.add_variable_from_value("key", routing::key_value(key));
                    context.add_variable_from_value("now", Value::Timestamp(now.fixed_offset()));
                    context
                })
            };
            let mut matched = None;
            for policy in &self.policies {
                match routing::evaluate_bool(&policy.when, &facts, context) {
                    Ok(true) => {
                        matched = Some(policy);
                        break;
                    }
                    Ok(false) => {}
                    Err(error) => return Err(ToolPolicyError { policy: policy.spec.name.clone(), error }),
                }
            }
            matched
        };
        let Some(policy) = matched else {
            return Ok(ToolDecision {
                policy: None,
                action: InvalidCallAction::Audit,
                max_retries: 0,
                denied: Vec::new(),
            });
        };
        let spec = &policy.spec;
        let listed = |list: &[String], tool: &str| list.iter().any(|t| t == "*" || t == tool);
        let denied = request
            .tools
            .iter()
            .filter(|tool| listed(&spec.deny, tool) || (!spec.allow.is_empty() && !listed(&spec.allow, tool)))
            .cloned()
            .collect();
        let action = match (spec.mode, spec.on_invalid) {
            (ToolPolicyMode::Audit, _) => InvalidCallAction::Audit,
            (ToolPolicyMode::Enforce, OnInvalidToolCall::Reject) => InvalidCallAction::Reject,
            (ToolPolicyMode::Enforce, OnInvalidToolCall::Retry) => InvalidCallAction::Retry,
            (ToolPolicyMode::Enforce, OnInvalidToolCall::Annotate) => InvalidCallAction::Annotate,
        };
        Ok(ToolDecision { policy: Some(spec.name.clone()), action, max_retries: spec.max_retries, denied })
    }
}

/// How one tool call fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Valid,
    /// The model called a tool the request did not declare.
    UnknownTool,
    /// The arguments are not JSON.
    InvalidJson,
    /// The arguments are JSON but break the tool's schema.
    SchemaViolation,
}

impl Outcome {
    /// The label value in metrics and spend events.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::UnknownTool => "unknown_tool",
            Outcome::InvalidJson => "invalid_json",
            Outcome::SchemaViolation => "schema_violation",
        }
    }
}

/// One reason a call is invalid: where in the arguments (a JSON pointer, `""` for the whole) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

/// The validation outcome of one tool call of one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallOutcome {
    /// The call's position among the answer's tool calls (`tool_calls[i].index` when streamed).
    pub index: u64,
    /// The name the model used (it may not be a declared tool).
    pub tool: String,
    pub outcome: Outcome,
    pub violations: Vec<Violation>,
}

impl ToolCallOutcome {
    pub fn is_valid(&self) -> bool {
        self.outcome == Outcome::Valid
    }
}

/// The tools a request declared, each with the schema its arguments must satisfy: the registered one when the
/// tool is registered, else the caller's own `parameters` (when they compile), else none (JSON only).
#[derive(Default, Clone)]
pub struct DeclaredTools {
    tools: HashMap<String, Option<Arc<Validator>>>,
}

impl DeclaredTools {
    pub fn insert(&mut self, name: String, schema: Option<Arc<Validator>>) {
        self.tools.insert(name, schema);
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tools.contains_key(name)
    }

    /// Check the call at `index` to `name` with the raw `arguments` string the model produced.
    pub fn validate(&self, index: u64, name: &str, arguments: &str) -> ToolCallOutcome {
        let outcome = |outcome, violations| ToolCallOutcome { index, tool: name.to_owned(), outcome, violations };
        let Some(schema) = self.tools.get(name) else {
            let message = format!("'{name}' is not a tool the request declared");
            return outcome(Outcome::UnknownTool, vec![Violation { pointer: String::new(), message }]);
        };
        let value: serde_json::Value = match serde_json::from_str(arguments) {
            Ok(value) => value,
            Err(error) => {
                let message = format!("the arguments are not valid JSON: {error}");
                return outcome(Outcome::InvalidJson, vec![Violation { pointer: String::new(), message }]);
            }
        };
        let Some(validator) = schema else { return outcome(Outcome::Valid, Vec::new()) };
        if validator.is_valid(&value) {
            return outcome(Outcome::Valid, Vec::new());
        }
        let mut violations = Vec::new();
        for error in validator.iter_errors(&value) {
            let at = error.instance_path().as_str();
            match error.kind() {
                // Point at the property itself rather than at the object that lacks or has it.
                ValidationErrorKind::Required { property } => {
                    let property = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
                    violations.push(Violation {
                        pointer: format!("{at}/{}", escape(&property)),
                        message: format!("required property '{property}' is missing"),
                    });
                }
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    violations.extend(unexpected.iter().map(|p| Violation {
                        pointer: format!("{at}/{}", escape(p)),
                        message: format!("additional property '{p}' is not allowed"),
                    }));
                }
                _ => violations.push(Violation { pointer: at.to_owned(), message: error.to_string() }),
            }
            if violations.len() >= MAX_VIOLATIONS_PER_CALL {
                violations.truncate(MAX_VIOLATIONS_PER_CALL);
                break;
            }
        }
        outcome(Outcome::SchemaViolation, violations)
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::ToolPolicySpec;

    fn policy(name: &str, priority: i32, when: &str, allow: &[&str], deny: &[&str]) -> ToolPolicySpec {
        ToolPolicySpec {
            name: name.into(),
            priority,
            when: when.into(),
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            mode: ToolPolicyMode::Enforce,
            on_invalid: OnInvalidToolCall::Reject,
            max_retries: 1,
        }
    }

    fn policies(specs: Vec<ToolPolicySpec>) -> ToolPolicies {
        let mut config = ConfigSet::default();
        for spec in specs {
            config.tool_policies.insert(spec.name.clone(), spec);
        }
        ToolPolicies::compile(&config).unwrap()
    }

    fn decide(policies: &ToolPolicies, tools: &[&str], team: Option<&str>) -> (Option<String>, Vec<String>) {
        let request =
            RequestFacts { tools: tools.iter().map(|s| (*s).to_owned()).collect(), ..RequestFacts::default() };
        let key = KeyFacts { team: team.map(str::to_owned), ..KeyFacts::default() };
        let decision = policies.evaluate(&request, &key, Utc::now()).unwrap();
        (decision.policy, decision.denied)
    }

    #[test]
    fn highest_priority_match_decides_allow_and_deny() {
        let set = policies(vec![
            policy("search-team", 10, "key.team == 'search'", &["search", "get_weather"], &[]),
            policy("everyone", 0, "true", &["*"], &["delete_user"]),
            policy("tie-b", 10, "key.team == 'tie'", &[], &["x"]),
            policy("tie-a", 10, "key.team == 'tie'", &[], &["y"]),
        ]);
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(decide(&set, &["search"], Some("search")), (some("search-team"), s(&[])));
        assert_eq!(decide(&set, &["search", "exec", "x"], Some("search")), (some("search-team"), s(&["exec", "x"])));
        assert_eq!(decide(&set, &["exec", "delete_user"], None), (some("everyone"), s(&["delete_user"])));
        // Ties by name: tie-a comes first; an empty allow list allows anything not denied.
        assert_eq!(decide(&set, &["x", "y"], Some("tie")), (some("tie-a"), s(&["y"])));
    }

    #[test]
    fn no_match_means_audit_and_everything_allowed() {
        let set = policies(vec![policy("only-search", 0, "key.team == 'search'", &["search"], &["*"])]);
        let request = RequestFacts { tools: vec!["anything".into()], ..RequestFacts::default() };
        let decision = set.evaluate(&request, &KeyFacts::default(), Utc::now()).unwrap();
        assert_eq!(
            decision,
            ToolDecision { policy: None, action: InvalidCallAction::Audit, max_retries: 0, denied: vec![] }
        );
        assert_eq!(decide(&set, &["search"], Some("search")).1, vec!["search".to_owned()], "deny * wins over allow");
    }

    #[test]
    fn compile_errors_name_the_policy_and_position() {
        let mut config = ConfigSet::default();
        let spec = policy("bad", 0, "request.modle == 'x'", &[], &[]);
        config.tool_policies.insert(spec.name.clone(), spec);
        let errors = ToolPolicies::compile(&config).err().unwrap();
        assert_eq!(errors[0].resource, "tool_policy/bad");
        assert_eq!(errors[0].field, "when");
        assert_eq!((errors[0].error.line, errors[0].error.column), (1, 9));
    }

    fn tools() -> DeclaredTools {
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["city"],
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"}}});
        let mut tools = DeclaredTools::default();
        tools.insert("get_weather".into(), Some(Arc::new(crate::tool_schema::compile(&schema).unwrap())));
        tools.insert("free_form".into(), None);
        tools
    }

    /// One case: tool, arguments, expected outcome and violation pointers.
    fn check(tool: &str, arguments: &str, outcome: Outcome, pointers: &[&str]) {
        let result = tools().validate(3, tool, arguments);
        assert_eq!(result.outcome, outcome, "{tool} {arguments}: {result:?}");
        assert_eq!(result.index, 3);
        let got: Vec<&str> = result.violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(got, pointers, "{tool} {arguments}: {result:?}");
    }

    #[test]
    fn calls_are_validated_with_pointers() {
        check("get_weather", r#"{"city":"Paris"}"#, Outcome::Valid, &[]);
        check("get_weather", r#"{"city":"Paris","unit":"c","days":3}"#, Outcome::Valid, &[]);
        check("get_wether", r#"{"city":"Paris"}"#, Outcome::UnknownTool, &[""]);
        check("get_weather", r#"{"city":"Par"#, Outcome::InvalidJson, &[""]);
        check("get_weather", "", Outcome::InvalidJson, &[""]);
        check("get_weather", r#"{}"#, Outcome::SchemaViolation, &["/city"]);
        check("get_weather", r#"{"city":7}"#, Outcome::SchemaViolation, &["/city"]);
        check("get_weather", r#"{"city":"Paris","unit":"k"}"#, Outcome::SchemaViolation, &["/unit"]);
        check("get_weather", r#"{"city":"Paris","a/b":1,"x":2}"#, Outcome::SchemaViolation, &["/a~1b", "/x"]);
        check("free_form", r#"[1, 2]"#, Outcome::Valid, &[]);
        check("free_form", r#"nope"#, Outcome::InvalidJson, &[""]);
    }
}
