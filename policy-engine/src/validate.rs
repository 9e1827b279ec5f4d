//! Per-resource validation: everything that can be decided from one resource alone.
//!
//! Cross-resource rules (references, pinned dimensions) are [`crate::config::ConfigSet::check_integrity`].

use rust_decimal::Decimal;

use crate::base_url::BaseUrlPolicy;
use crate::cel_env::{self, ExpressionScope};
use crate::config::*;
use crate::secret_ref::SecretEnvPolicy;
use crate::tool_schema;

/// One thing wrong with a resource, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

#[derive(Default)]
struct Errors(Vec<SpecError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError { field: field.into(), message: message.into() });
    }

    fn name(&mut self, field: &str, name: &str) {
        if let Err(message) = validate_name(name) {
            self.push(field, message);
        }
    }

    fn cel(&mut self, field: &str, source: &str, scope: ExpressionScope) {
        if let Err(error) = cel_env::compile(source, scope) {
            self.push(field, format!("CEL {error}"));
        }
    }

    fn finish(self) -> Result<(), Vec<SpecError>> {
        if self.0.is_empty() { Ok(()) } else { Err(self.0) }
    }
}

/// Checks a backend and normalises its base URL in place: the URL against `urls`, a secret reference against
/// `secret_env`.
pub fn backend(
    spec: &mut BackendSpec,
    urls: &BaseUrlPolicy,
    secret_env: &SecretEnvPolicy,
) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    match urls.normalize(&spec.base_url) {
        Ok(normalized) => spec.base_url = normalized,
        Err(error) => errors.push("base_url", error.to_string()),
    }
    if let BackendAuth::Header { header } = &spec.auth {
        let valid = !header.is_empty() && header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            errors.push("auth.header", format!("{header:?} is not a valid HTTP header name"));
        }
    }
    match &spec.secret {
        Some(SecretSpec::Ref(reference)) => {
            if let Err(error) = secret_env.variable(reference) {
                errors.push("secret.ref", error.to_string());
            }
        }
        Some(SecretSpec::Value(value)) if value.is_empty() => errors.push("secret.value", "must not be empty"),
        Some(SecretSpec::Sealed(_)) => errors.push("secret", "use {\"value\": ...} or {\"ref\": \"env:NAME\"}"),
        Some(SecretSpec::Value(_)) | None => {}
    }
    if spec.kind == BackendKind::AzureOpenai && spec.azure.is_none() {
        errors.push("azure", "azure_openai backends need azure.api_version");
    }
    if spec.kind != BackendKind::AzureOpenai && spec.azure.is_some() {
        errors.push("azure", "only azure_openai backends take azure settings");
    }
    let t = spec.timeouts;
    if t.connect_ms == 0 || t.first_byte_ms == 0 || t.total_ms == 0 {
        errors.push("timeouts", "timeouts must be greater than zero");
    }
    if t.first_byte_ms > t.total_ms {
        errors.push("timeouts.first_byte_ms", "must not exceed total_ms");
    }
    if let Some(region) = &spec.region
        && region.trim().is_empty()
    {
        errors.push("region", "must not be empty when given");
    }
    if spec.tags.len() > crate::cel_limits::MAX_COLLECTION_ENTRIES {
        errors.push("tags", format!("at most {} tags", crate::cel_limits::MAX_COLLECTION_ENTRIES));
    }
    if spec.tags.iter().any(|t| t.trim().is_empty()) {
        errors.push("tags", "tags must not be empty strings");
    }
    if let Some(breaker) = spec.circuit_breaker
        && breaker.failure_threshold == 0
    {
        errors.push("circuit_breaker.failure_threshold", "must be at least 1");
    }
    errors.finish()
}

/// Most decimal places of a price (USD per million tokens), as the store's price columns keep them.
pub const MAX_PRICE_SCALE: u32 = 10;
/// Highest price accepted (USD per million tokens): far above any real model, low enough that no request's cost
/// can leave the ledger's range.
pub const MAX_PRICE_USD: u32 = 1_000_000;

pub fn model(spec: &ModelSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    errors.name("backend", &spec.backend);
    if spec.upstream_model.trim().is_empty() {
        errors.push("upstream_model", "must not be empty");
    }
    let p = spec.pricing;
    for (field, price) in [
        ("pricing.input", Some(p.input)),
        ("pricing.output", Some(p.output)),
        ("pricing.cached_input", p.cached_input),
        ("pricing.cache_write", p.cache_write),
    ] {
        let Some(price) = price else { continue };
        if price < Decimal::ZERO {
            errors.push(field, "prices must not be negative");
        }
        // A cost is tokens x price / 1e6: prices of at most 10 places keep every cost exact within the ledger's 18.
        if price.normalize().scale() > MAX_PRICE_SCALE {
            errors
                .push(field, format!("prices carry at most {MAX_PRICE_SCALE} decimal places (USD per million tokens)"));
        }
        if price > Decimal::from(MAX_PRICE_USD) {
            errors.push(field, format!("prices above {MAX_PRICE_USD} USD per million tokens are not plausible"));
        }
    }
    let c = spec.capabilities;
    if !(c.chat || c.completions || c.embeddings) {
        errors.push("capabilities", "a model must serve at least one of chat, completions, embeddings");
    }
    match (c.embeddings, c.embedding_dimensions) {
        (true, None | Some(0)) => {
            errors.push("capabilities.embedding_dimensions", "embedding models must state their dimensions")
        }
        (false, Some(_)) => errors.push("capabilities.embedding_dimensions", "only embedding models have dimensions"),
        _ => {}
    }
    if c.context_window == Some(0) {
        errors.push("capabilities.context_window", "must be greater than zero");
    }
    errors.finish()
}

fn candidates(errors: &mut Errors, field: &str, list: &[Candidate], strategy: Strategy) {
    if list.is_empty() {
        errors.push(field, "at least one candidate is required");
    }
    for (i, candidate) in list.iter().enumerate() {
        errors.name(&format!("{field}[{i}].model"), &candidate.model);
        if list[..i].iter().any(|c| c.model == candidate.model) {
            errors.push(format!("{field}[{i}].model"), format!("model {:?} is listed twice", candidate.model));
        }
        if strategy == Strategy::Weighted && candidate.weight == 0 {
            errors.push(format!("{field}[{i}].weight"), "weights must be at least 1");
        }
    }
}

pub fn alias(spec: &AliasSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    candidates(&mut errors, "candidates", &spec.candidates, spec.strategy);
    if spec.pinned_dimensions == Some(0) {
        errors.push("pinned_dimensions", "must be greater than zero");
    }
    errors.finish()
}

pub fn route_policy(spec: &RoutePolicySpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    errors.cel("when", &spec.when, ExpressionScope::Request);
    match &spec.action {
        PolicyAction::Route { alias, candidates: list, strategy, require, .. } => {
            match (alias, list) {
                (Some(alias), None) => errors.name("action.alias", alias),
                (None, Some(list)) => candidates(&mut errors, "action.candidates", list, strategy.unwrap_or_default()),
                _ => errors.push("action", "a route names exactly one of `alias` or `candidates`"),
            }
            if let Some(require) = require {
                errors.cel("action.require", require, ExpressionScope::Candidate);
            }
        }
        PolicyAction::Deny { message } => {
            if message.trim().is_empty() {
                errors.push("action.message", "a deny policy needs a message for the caller");
            }
        }
        PolicyAction::Constrain { require } => errors.cel("action.require", require, ExpressionScope::Candidate),
    }
    errors.finish()
}

pub fn tool_schema(spec: &ToolSchemaSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    if let Err(error) = tool_schema::compile(&spec.schema) {
        errors.push("schema", error.to_string());
    }
    errors.finish()
}

pub fn tool_policy(spec: &ToolPolicySpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    errors.cel("when", &spec.when, ExpressionScope::Request);
    for (field, names) in [("allow", &spec.allow), ("deny", &spec.deny)] {
        for (i, tool) in names.iter().enumerate() {
            if tool != "*" {
                errors.name(&format!("{field}[{i}]"), tool);
            }
        }
    }
    if spec.max_retries > 5 {
        errors.push("max_retries", "at most 5 retries");
    }
    errors.finish()
}

pub fn budget(spec: &BudgetSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    if spec.limit_usd <= Decimal::ZERO {
        errors.push("limit_usd", "must be greater than zero");
    }
    if let Some(soft) = spec.soft_threshold
        && (soft <= Decimal::ZERO || soft >= Decimal::ONE)
    {
        errors.push("soft_threshold", "must be a fraction between 0 and 1 (exclusive)");
    }
    match &spec.scope {
        BudgetScope::Key { key } => errors.name("scope.key", key),
        BudgetScope::Model { model } => errors.name("scope.model", model),
        BudgetScope::Team { team } if team.trim().is_empty() => errors.push("scope.team", "must not be empty"),
        BudgetScope::Team { .. } | BudgetScope::Global => {}
    }
    errors.finish()
}
