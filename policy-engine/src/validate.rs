//! Per-resource validation: everything that can be decided from one resource alone.
//!
//! Cross-resource rules (references, pinned dimensions) are [`crate::config::ConfigSet::check_integrity`].

use rust_decimal::Decimal;

use crate::base_url::BaseUrlPolicy;
use crate::cel_decls::ExpressionScope;
use crate::cel_env;
use crate::config::*;
use crate::fields::*;
use crate::guardrail_spec::{MAX_STREAM_WINDOW_CHARS, MIN_STREAM_WINDOW_CHARS};
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

    /// Short free text: not blank, at most [`MAX_LABEL_CHARS`].
    fn label(&mut self, field: &str, text: &str) {
        if text.trim().is_empty() {
            self.push(field, "must not be empty");
        } else if !fits(text, MAX_LABEL_CHARS) {
            self.push(field, format!("must be at most {MAX_LABEL_CHARS} characters"));
        }
    }

    fn labels(&mut self, field: &str, texts: &[String]) {
        for (i, text) in texts.iter().enumerate() {
            self.label(&format!("{field}[{i}]"), text);
        }
    }

    /// Free text of at most `max` characters (may be empty unless the caller says otherwise).
    fn at_most(&mut self, field: &str, text: &str, max: usize) {
        if !fits(text, max) {
            self.push(field, format!("must be at most {max} characters"));
        }
    }

    fn duration(&mut self, field: &str, ms: u64) {
        if ms == 0 || ms > MAX_DURATION_MS {
            self.push(field, format!("must be from 1 to {MAX_DURATION_MS} milliseconds (one day)"));
        }
    }

    /// An amount the store's `NUMERIC(20, 10)` columns hold exactly: at most [`MAX_MONEY_SCALE`] decimal places.
    fn scale(&mut self, field: &str, amount: Decimal) {
        if amount.normalize().scale() > MAX_MONEY_SCALE {
            self.push(field, format!("carries at most {MAX_MONEY_SCALE} decimal places"));
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
    if let Some(entra) = spec.azure.as_mut().and_then(|azure| azure.entra.as_mut()) {
        // The token endpoint receives the client secret: it is held to the base URLs' allowlist, default included.
        match urls.normalize(&entra.effective_token_url()) {
            Ok(normalized) if entra.token_url.is_some() => entra.token_url = Some(normalized),
            Ok(_) => {}
            Err(error) => errors.push("azure.entra.token_url", error.to_string()),
        }
    }
    match &spec.secret {
        Some(SecretSpec::Ref(reference)) => {
            if let Err(error) = secret_env.variable(reference) {
                errors.push("secret.ref", error.to_string());
            }
        }
        Some(SecretSpec::Value(value)) if value.is_empty() => errors.push("secret.value", "must not be empty"),
        Some(SecretSpec::Value(value)) if spec.kind == BackendKind::Bedrock => {
            if let Err(error) = crate::aws_secret::AwsKeys::parse(value) {
                errors.push("secret.value", error.to_string());
            }
        }
        Some(SecretSpec::Value(value)) if spec.kind == BackendKind::Vertex => {
            if let Err(error) = crate::google_secret::ServiceAccount::parse(value) {
                errors.push("secret.value", error.to_string());
            }
        }
        Some(SecretSpec::Sealed(_)) => errors.push("secret", "use {\"value\": ...} or {\"ref\": \"env:NAME\"}"),
        Some(SecretSpec::Value(_)) | None => {}
    }
    backend_settings_into(&mut errors, spec);
    errors.finish()
}

/// What a `bedrock` backend needs: a region to sign for, its secret as SigV4 keys (not a header), and no health check
/// (Bedrock's runtime endpoint answers no `GET`).
fn bedrock_settings(errors: &mut Errors, spec: &BackendSpec) {
    match &spec.aws {
        None => errors.push("aws", "bedrock backends need aws.region (e.g. {\"region\": \"us-east-1\"})"),
        Some(aws) => {
            let valid = !aws.region.is_empty()
                && aws.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                errors.push("aws.region", format!("{:?} is not an AWS region name (e.g. us-east-1)", aws.region));
            }
        }
    }
    if spec.auth != BackendAuth::Bearer {
        errors.push(
            "auth",
            "bedrock requests are signed with SigV4 from the backend's secret (or the data plane's AWS environment); \
             leave auth out",
        );
    }
    if spec.health_check.is_some() {
        errors.push(
            "health_check",
            "bedrock's runtime endpoint answers no GET to check; use a circuit_breaker to take a failing bedrock \
             backend out of rotation",
        );
    }
}

/// What a `vertex` backend needs: the project and location its URLs name, and its secret used as a service account
/// (not a header).
fn vertex_settings(errors: &mut Errors, spec: &BackendSpec) {
    match &spec.vertex {
        None => errors.push(
            "vertex",
            "vertex backends need vertex.project and vertex.location (e.g. {\"project\": \"my-project\", \"location\": \"us-central1\"})",
        ),
        Some(vertex) => {
            // Project ids: lowercase letters, digits and hyphens; older domain-scoped ones add `.` and `:`.
            let project_ok = !vertex.project.is_empty()
                && vertex.project.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b));
            if !project_ok {
                errors.push("vertex.project", format!("{:?} is not a Google Cloud project id", vertex.project));
            }
            let location_ok = !vertex.location.is_empty()
                && vertex.location.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !location_ok {
                errors.push(
                    "vertex.location",
                    format!("{:?} is not a Vertex AI location (e.g. us-central1, global)", vertex.location),
                );
            }
        }
    }
    if spec.auth != BackendAuth::Bearer {
        errors.push(
            "auth",
            "vertex requests carry OAuth tokens obtained with the backend's service account secret; leave auth out",
        );
    }
}

/// What Entra ID sign-in needs: ids that go into a URL and a form as they are, a scope, and the token in
/// `Authorization` (so no other `auth`).
fn entra_settings(errors: &mut Errors, spec: &BackendSpec, entra: &EntraSettings) {
    let id_ok = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    for (field, id) in [("azure.entra.tenant_id", &entra.tenant_id), ("azure.entra.client_id", &entra.client_id)] {
        errors.label(field, id);
        if !id_ok(id) {
            errors.push(field, format!("{id:?} is not an Entra ID (a GUID or a domain name)"));
        }
    }
    if let Some(scope) = &entra.scope {
        errors.label("azure.entra.scope", scope);
        if !scope.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push("azure.entra.scope", "one scope, printable ASCII without spaces");
        }
    }
    if let Some(url) = &entra.token_url {
        errors.at_most("azure.entra.token_url", url, MAX_URL_CHARS);
    }
    if spec.auth != BackendAuth::Bearer {
        errors.push(
            "auth",
            "with azure.entra, requests carry Entra ID tokens as Authorization: Bearer (the secret is the client \
             secret); leave auth out",
        );
    }
}

/// A backend's settings that need no operator policy (everything but the base URL's allowlist and the secret
/// reference's prefixes): the data plane checks them again on every snapshot, so a snapshot written behind the API's
/// back cannot serve zero timeouts or a breaker that never closes.
pub fn backend_settings(spec: &BackendSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    backend_settings_into(&mut errors, spec);
    errors.finish()
}

fn backend_settings_into(errors: &mut Errors, spec: &BackendSpec) {
    if let BackendAuth::Header { header } = &spec.auth {
        let valid = !header.is_empty() && header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            errors.push("auth.header", format!("{header:?} is not a valid HTTP header name"));
        }
    }
    if spec.kind == BackendKind::AzureOpenai && spec.azure.is_none() {
        errors.push("azure", "azure_openai backends need azure.api_version");
    }
    if spec.kind != BackendKind::AzureOpenai && spec.azure.is_some() {
        errors.push("azure", "only azure_openai backends take azure settings");
    }
    if spec.kind == BackendKind::Bedrock {
        bedrock_settings(errors, spec);
    } else if spec.aws.is_some() {
        errors.push("aws", "only bedrock backends take aws settings");
    }
    if spec.kind == BackendKind::Vertex {
        vertex_settings(errors, spec);
    } else if spec.vertex.is_some() {
        errors.push("vertex", "only vertex backends take vertex settings");
    }
    let t = spec.timeouts;
    if t.connect_ms == 0 || t.first_byte_ms == 0 || t.total_ms == 0 {
        errors.push("timeouts", "timeouts must be greater than zero");
    }
    if t.first_byte_ms > t.total_ms {
        errors.push("timeouts.first_byte_ms", "must not exceed total_ms");
    }
    for (field, ms) in [
        ("timeouts.connect_ms", t.connect_ms),
        ("timeouts.first_byte_ms", t.first_byte_ms),
        ("timeouts.total_ms", t.total_ms),
    ] {
        if ms > MAX_DURATION_MS {
            errors.duration(field, ms);
        }
    }
    if let Some(region) = &spec.region {
        errors.label("region", region);
    }
    // Policies iterate over a backend's tags: their count bounds what that costs.
    if spec.tags.len() > crate::cel_limits::MAX_COLLECTION_ENTRIES {
        errors.push("tags", format!("at most {} tags", crate::cel_limits::MAX_COLLECTION_ENTRIES));
    }
    errors.labels("tags", &spec.tags);
    if let Some(limit) = spec.rate_limit {
        if limit.rps.is_none() && limit.rpm.is_none() && limit.tpm.is_none() {
            errors.push("rate_limit", "set at least one of rps, rpm and tpm (or leave rate_limit out)");
        }
        let limits = [("rps", limit.rps.map(u64::from)), ("rpm", limit.rpm.map(u64::from)), ("tpm", limit.tpm)];
        for (field, value) in limits {
            if value == Some(0) {
                errors.push(format!("rate_limit.{field}"), "must be greater than zero (leave it out for no limit)");
            }
        }
    }
    if let Some(breaker) = spec.circuit_breaker {
        if breaker.failure_threshold == 0 {
            errors.push("circuit_breaker.failure_threshold", "must be at least 1");
        }
        errors.duration("circuit_breaker.open_ms", breaker.open_ms);
        if let Some(max_open_ms) = breaker.max_open_ms {
            errors.duration("circuit_breaker.max_open_ms", max_open_ms);
            if max_open_ms < breaker.open_ms {
                errors.push("circuit_breaker.max_open_ms", "must not be below open_ms");
            }
        }
        if let Some(trip) = breaker.error_rate {
            if !(1..=100).contains(&trip.percent) {
                errors.push("circuit_breaker.error_rate.percent", "must be from 1 to 100");
            }
            errors.duration("circuit_breaker.error_rate.window_ms", trip.window_ms);
            if trip.min_requests == 0 {
                errors.push("circuit_breaker.error_rate.min_requests", "must be at least 1");
            }
        }
        if let Some(trip) = breaker.latency {
            errors.duration("circuit_breaker.latency.p99_ms", trip.p99_ms);
            errors.duration("circuit_breaker.latency.window_ms", trip.window_ms);
            if trip.min_requests == 0 {
                errors.push("circuit_breaker.latency.min_requests", "must be at least 1");
            }
        }
    }
    if let Some(check) = &spec.health_check {
        errors.duration("health_check.interval_ms", check.interval_ms);
        errors.label("health_check.path", &check.path);
        if !check.path.starts_with('/') {
            errors.push("health_check.path", "must start with '/' (it is appended to the base URL)");
        }
        errors.duration("health_check.timeout_ms", check.timeout_ms);
        if check.failure_threshold == 0 {
            errors.push("health_check.failure_threshold", "must be at least 1");
        }
    }
    if let Some(azure) = &spec.azure {
        errors.label("azure.api_version", &azure.api_version);
        if let Some(entra) = &azure.entra {
            entra_settings(errors, spec, entra);
        }
    }
    if let Some(aws) = &spec.aws {
        errors.label("aws.region", &aws.region);
    }
    if let Some(vertex) = &spec.vertex {
        errors.label("vertex.project", &vertex.project);
        errors.label("vertex.location", &vertex.location);
    }
    errors.at_most("base_url", &spec.base_url, MAX_URL_CHARS);
    if let BackendAuth::Header { header } = &spec.auth {
        errors.at_most("auth.header", header, MAX_LABEL_CHARS);
    }
    if let Some(SecretSpec::Value(value)) = &spec.secret {
        errors.at_most("secret.value", value, MAX_SECRET_CHARS);
    }
}

pub fn model(spec: &ModelSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    errors.name("backend", &spec.backend);
    errors.label("upstream_model", &spec.upstream_model);
    if let Some(model) = &spec.embedding_model {
        errors.label("embedding_model", model);
        if !spec.capabilities.embeddings {
            errors.push("embedding_model", "only models that serve embeddings name an embedding model");
        }
    }
    let p = &spec.pricing;
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
        if price.normalize().scale() > MAX_MONEY_SCALE {
            errors
                .push(field, format!("prices carry at most {MAX_MONEY_SCALE} decimal places (USD per million tokens)"));
        }
        if price > Decimal::from(MAX_PRICE_USD) {
            errors.push(field, format!("prices above {MAX_PRICE_USD} USD per million tokens are not plausible"));
        }
    }
    image_prices(&mut errors, spec);
    let c = spec.capabilities;
    if !(c.chat || c.completions || c.embeddings || c.images) {
        errors.push("capabilities", "a model must serve at least one of chat, completions, embeddings, images");
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

/// `pricing.per_image`: required by `capabilities.images` (an image is never served free by omission), refused
/// without it (it would price nothing).
fn image_prices(errors: &mut Errors, spec: &ModelSpec) {
    let prices = &spec.pricing.per_image;
    match (spec.capabilities.images, prices.is_empty()) {
        (true, true) => errors.push(
            "pricing.per_image",
            "image models must price their images, by size (e.g. {\"1024x1024\": \"0.04\", \"default\": \"0.04\"})",
        ),
        (false, false) => errors.push("pricing.per_image", "only image models (capabilities.images) price images"),
        _ => {}
    }
    if prices.len() > MAX_IMAGE_PRICES {
        errors.push("pricing.per_image", format!("at most {MAX_IMAGE_PRICES} image prices"));
    }
    for (key, price) in prices.iter().take(MAX_IMAGE_PRICES) {
        let field = format!("pricing.per_image.{key}");
        if !is_image_price_key(key) {
            errors.push(
                "pricing.per_image",
                format!("{key:?} is not a size (`1024x1024`, `auto`, `default`), optionally after a quality (`hd/1024x1024`)"),
            );
            continue;
        }
        if *price < Decimal::ZERO {
            errors.push(&field, "prices must not be negative");
        }
        if price.normalize().scale() > MAX_MONEY_SCALE {
            errors.push(&field, format!("prices carry at most {MAX_MONEY_SCALE} decimal places"));
        }
        if *price > Decimal::from(MAX_IMAGE_PRICE_USD) {
            errors.push(&field, format!("prices above {MAX_IMAGE_PRICE_USD} USD per image are not plausible"));
        }
    }
}

/// A key of `pricing.per_image` ([`IMAGE_PRICE_KEY_PATTERN`]): an optional lowercase quality and `/`, then a size
/// (`WxH`, up to five digits each), `auto` or `default`.
fn is_image_price_key(key: &str) -> bool {
    let (quality, size) = match key.split_once('/') {
        Some((quality, size)) => (Some(quality), size),
        None => (None, key),
    };
    let quality_ok = quality.is_none_or(|q| (1..=16).contains(&q.len()) && q.bytes().all(|b| b.is_ascii_lowercase()));
    let dimension = |d: &str| (1..=5).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit());
    let size_ok =
        matches!(size, "auto" | "default") || size.split_once('x').is_some_and(|(w, h)| dimension(w) && dimension(h));
    quality_ok && size_ok
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
    if let Some(description) = &spec.description {
        errors.at_most("description", description, MAX_TEXT_CHARS);
    }
    candidates(&mut errors, "candidates", &spec.candidates, spec.strategy);
    if spec.pinned_dimensions == Some(0) {
        errors.push("pinned_dimensions", "must be greater than zero");
    }
    if let Some(model) = &spec.pinned_model {
        errors.label("pinned_model", model);
    }
    errors.finish()
}

pub fn route_policy(spec: &RoutePolicySpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    if let Some(description) = &spec.description {
        errors.at_most("description", description, MAX_TEXT_CHARS);
    }
    errors.cel("when", &spec.when, ExpressionScope::Request);
    match &spec.action {
        PolicyAction::Route { alias, candidates: list, strategy, require, .. } => {
            route_limits_into(&mut errors, &spec.action);
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
            errors.at_most("action.message", message, MAX_TEXT_CHARS);
        }
        PolicyAction::Constrain { require } => errors.cel("action.require", require, ExpressionScope::Candidate),
    }
    errors.finish()
}

/// A route policy's `retries` and `timeout_ms` bounds, which the data plane checks again on every snapshot (its CEL
/// is compiled again there anyway).
pub fn route_limits(spec: &RoutePolicySpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    route_limits_into(&mut errors, &spec.action);
    errors.finish()
}

fn route_limits_into(errors: &mut Errors, action: &PolicyAction) {
    if let PolicyAction::Route { retries, timeout_ms, .. } = action {
        if retries.is_some_and(|retries| retries > MAX_ROUTE_RETRIES) {
            errors.push("action.retries", format!("at most {MAX_ROUTE_RETRIES} retries"));
        }
        if let Some(timeout_ms) = timeout_ms {
            errors.duration("action.timeout_ms", *timeout_ms);
        }
    }
}

pub fn tool_schema(spec: &ToolSchemaSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    if let Some(description) = &spec.description {
        errors.at_most("description", description, MAX_TEXT_CHARS);
    }
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

/// A guardrail: its `when`, bounds, and its detectors compiled (bounded regexes, term lists) exactly as the data
/// plane compiles them.
pub fn guardrail(spec: &GuardrailSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    if let Some(description) = &spec.description {
        errors.at_most("description", description, MAX_TEXT_CHARS);
    }
    errors.cel("when", &spec.when, ExpressionScope::Request);
    if !(MIN_STREAM_WINDOW_CHARS..=MAX_STREAM_WINDOW_CHARS).contains(&spec.stream_window_chars) {
        errors.push(
            "stream_window_chars",
            format!("must be from {MIN_STREAM_WINDOW_CHARS} to {MAX_STREAM_WINDOW_CHARS} characters"),
        );
    }
    if let Err(detector_errors) = crate::guardrail::Scanner::compile(&spec.detectors) {
        for error in detector_errors {
            errors.push(error.field, error.message);
        }
    }
    if spec.action == GuardrailAction::Redact {
        for (i, detector) in spec.detectors.iter().enumerate() {
            if detector.classifier().is_some() {
                errors.push(
                    format!("detectors[{i}]"),
                    format!(
                        "'{}' is an external classifier: it reports categories, not where they are in the text, so \
                         a redact guardrail cannot use it; use block or audit",
                        detector.category()
                    ),
                );
            }
        }
    }
    errors.finish()
}

/// What only the control plane checks of a guardrail at write (as for backends): webhook URLs against the backend
/// allowlist and secret references against the allowed prefixes. Each data plane checks both again with its own
/// settings, at connection and before it reads its environment.
pub fn guardrail_destinations(
    spec: &GuardrailSpec,
    urls: &BaseUrlPolicy,
    secret_env: &SecretEnvPolicy,
) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    for (i, detector) in spec.detectors.iter().enumerate() {
        let DetectorSpec::Webhook(webhook) = detector else { continue };
        if let Err(error) = urls.normalize(&webhook.url) {
            errors.push(format!("detectors[{i}].url"), error.to_string());
        }
        if let Some(reference) = &webhook.secret_ref
            && let Err(error) = secret_env.variable(reference)
        {
            errors.push(format!("detectors[{i}].secret_ref"), error.to_string());
        }
    }
    errors.finish()
}

pub fn budget(spec: &BudgetSpec) -> Result<(), Vec<SpecError>> {
    let mut errors = Errors::default();
    errors.name("name", &spec.name);
    if spec.limit_usd <= Decimal::ZERO {
        errors.push("limit_usd", "must be greater than zero");
    }
    if spec.limit_usd >= Decimal::from(10_u64.pow(MAX_BUDGET_DIGITS)) {
        errors.push("limit_usd", format!("must be below 10^{MAX_BUDGET_DIGITS} USD"));
    }
    errors.scale("limit_usd", spec.limit_usd);
    if let Some(soft) = spec.soft_threshold {
        if soft <= Decimal::ZERO || soft >= Decimal::ONE {
            errors.push("soft_threshold", "must be a fraction between 0 and 1 (exclusive)");
        }
        errors.scale("soft_threshold", soft);
    }
    match &spec.scope {
        BudgetScope::Key { key } => errors.name("scope.key", key),
        BudgetScope::Model { model } => errors.name("scope.model", model),
        BudgetScope::Team { team } => errors.label("scope.team", team),
        BudgetScope::Global => {}
    }
    errors.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    #[test]
    fn image_prices_are_looked_up_by_quality_and_size_and_bounded() {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({"name": "img", "backend": "b",
            "upstream_model": "dall-e-3", "capabilities": {"images": true},
            "pricing": {"input": "0", "output": "0",
                "per_image": {"1024x1024": "0.04", "hd/1024x1024": "0.08", "default": "0.02"}}}))
        .expect("a model");
        assert!(model(&spec).is_ok());
        let price = |quality: Option<&str>, size: Option<&str>| spec.pricing.image_price(quality, size);
        assert_eq!(price(None, Some("1024x1024")), Some(Decimal::new(4, 2)));
        assert_eq!(price(Some("hd"), Some("1024x1024")), Some(Decimal::new(8, 2)));
        assert_eq!(price(Some("standard"), Some("1024x1024")), Some(Decimal::new(4, 2)), "the size's own price");
        assert_eq!(price(Some("hd"), None), Some(Decimal::new(2, 2)), "no size named: the default");
        assert_eq!(price(None, Some("256x256")), None, "never free by omission");

        let refused = |prices: serde_json::Value| {
            let mut spec = spec.clone();
            spec.pricing.per_image = serde_json::from_value::<BTreeMap<String, String>>(prices)
                .expect("prices")
                .into_iter()
                .map(|(k, v)| (k, v.parse().expect("a decimal")))
                .collect();
            model(&spec).err().unwrap_or_default().into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        assert_eq!(refused(serde_json::json!({"1024x1024": "-1"})), ["pricing.per_image.1024x1024"]);
        assert_eq!(refused(serde_json::json!({"1024x1024": "101"})), ["pricing.per_image.1024x1024"]);
        assert_eq!(refused(serde_json::json!({"1024x1024": "0.00000000001"})), ["pricing.per_image.1024x1024"]);
        assert_eq!(refused(serde_json::json!({"HD/1024x1024": "1"})), ["pricing.per_image"]);
        assert_eq!(refused(serde_json::json!({"1024*1024": "1"})), ["pricing.per_image"]);
        assert_eq!(refused(serde_json::json!({"/1024x1024": "1"})), ["pricing.per_image"]);
        assert_eq!(refused(serde_json::json!({"hd/hd/1024x1024": "1"})), ["pricing.per_image"]);
        assert_eq!(refused(serde_json::json!({"123456x1": "1"})), ["pricing.per_image"]);
        assert!(refused(serde_json::json!({"auto": "1", "hd/default": "2", "1x99999": "3"})).is_empty());
        assert_eq!(refused(serde_json::json!({})), ["pricing.per_image"]);
        let many: serde_json::Map<String, serde_json::Value> =
            (0..=MAX_IMAGE_PRICES).map(|i| (format!("{i}x{i}"), serde_json::json!("1"))).collect();
        assert_eq!(refused(serde_json::Value::Object(many)), ["pricing.per_image"]);
    }

    /// The fields a route policy with this action is refused for (empty: accepted).
    fn refused_fields(action: serde_json::Value) -> Vec<String> {
        let spec: RoutePolicySpec =
            serde_json::from_value(serde_json::json!({"name": "p", "action": action})).expect("a route policy");
        route_policy(&spec).err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_routes_retries_and_timeout_are_bounded() {
        let route = |extra: serde_json::Value| {
            let mut action = serde_json::json!({"type": "route", "alias": "a"});
            if let (Some(action), Some(extra)) = (action.as_object_mut(), extra.as_object()) {
                action.extend(extra.clone());
            }
            refused_fields(action)
        };
        for ok in [
            serde_json::json!({}),
            serde_json::json!({"retries": 0}),
            serde_json::json!({"retries": MAX_ROUTE_RETRIES}),
            serde_json::json!({"timeout_ms": 1}),
            serde_json::json!({"timeout_ms": MAX_DURATION_MS, "retries": 3}),
        ] {
            assert!(route(ok.clone()).is_empty(), "{ok}");
        }
        assert_eq!(route(serde_json::json!({"retries": MAX_ROUTE_RETRIES + 1})), ["action.retries"]);
        assert_eq!(route(serde_json::json!({"timeout_ms": 0})), ["action.timeout_ms"]);
        assert_eq!(route(serde_json::json!({"timeout_ms": MAX_DURATION_MS + 1})), ["action.timeout_ms"]);
        assert_eq!(route(serde_json::json!({"retries": 11, "timeout_ms": 0})), ["action.retries", "action.timeout_ms"]);
    }

    /// The fields a backend with this `rate_limit` is refused for (empty: accepted).
    fn rate_limit_refusals(rate_limit: serde_json::Value) -> Vec<String> {
        let mut spec: BackendSpec = serde_json::from_value(serde_json::json!({"name": "b", "kind": "openai",
            "base_url": "https://api.openai.com/v1", "rate_limit": rate_limit}))
        .expect("a backend");
        let (urls, secret_env) = (BaseUrlPolicy::default(), SecretEnvPolicy::default());
        backend(&mut spec, &urls, &secret_env).err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn rate_limits_are_positive_and_located() {
        let refusals = |value: serde_json::Value| rate_limit_refusals(value);
        assert!(refusals(serde_json::json!({"rps": 1, "rpm": 60, "tpm": 1000})).is_empty());
        assert!(refusals(serde_json::json!({"rps": 5})).is_empty());
        assert_eq!(refusals(serde_json::json!({"rps": 0})), ["rate_limit.rps"]);
        assert_eq!(refusals(serde_json::json!({"rpm": 0, "tpm": 0})), ["rate_limit.rpm", "rate_limit.tpm"]);
        assert_eq!(refusals(serde_json::json!({})), ["rate_limit"]);
        let unknown: Result<BackendSpec, _> = serde_json::from_value(serde_json::json!({"name": "b", "kind": "openai",
            "base_url": "https://x.example", "rate_limit": {"rph": 1}}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field `rph`"));
    }
}

#[cfg(test)]
mod backend_tests {
    use super::*;

    /// The fields a backend with these `circuit_breaker` and `health_check` settings is refused for.
    fn refused(breaker: serde_json::Value, check: serde_json::Value) -> Vec<String> {
        let mut spec: BackendSpec = serde_json::from_value(serde_json::json!({
            "name": "b", "kind": "openai", "base_url": "https://api.example.com/v1",
            "circuit_breaker": breaker, "health_check": check,
        }))
        .expect("a backend");
        let urls = BaseUrlPolicy::from_list("").expect("no allowlist");
        let secret_env = SecretEnvPolicy::from_list("").expect("no prefixes");
        backend(&mut spec, &urls, &secret_env).err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn breaker_and_health_check_settings_are_checked_field_by_field() {
        use serde_json::json;
        let minimal = json!({"failure_threshold": 5, "open_ms": 30000});
        assert!(refused(minimal, json!({"interval_ms": 10000})).is_empty(), "specs written before the new fields");
        let full = json!({"failure_threshold": 3, "open_ms": 1000, "max_open_ms": 60000, "per_model": true,
            "error_rate": {"percent": 50, "window_ms": 10000, "min_requests": 10},
            "latency": {"p99_ms": 2000, "window_ms": 30000, "min_requests": 20}});
        assert!(refused(full, json!({"interval_ms": 5000, "timeout_ms": 1000, "failure_threshold": 2})).is_empty());
        let bad = json!({"failure_threshold": 0, "open_ms": 1000, "max_open_ms": 500,
            "error_rate": {"percent": 101, "window_ms": 0, "min_requests": 0},
            "latency": {"p99_ms": 0, "window_ms": 1000, "min_requests": 0}});
        assert_eq!(
            refused(bad, json!({"interval_ms": 5000, "timeout_ms": 0, "failure_threshold": 0})),
            [
                "circuit_breaker.failure_threshold",
                "circuit_breaker.max_open_ms",
                "circuit_breaker.error_rate.percent",
                "circuit_breaker.error_rate.window_ms",
                "circuit_breaker.error_rate.min_requests",
                "circuit_breaker.latency.p99_ms",
                "circuit_breaker.latency.min_requests",
                "health_check.timeout_ms",
                "health_check.failure_threshold",
            ]
        );
        let unknown: Result<BackendSpec, _> = serde_json::from_value(json!({"name": "b", "kind": "openai",
            "base_url": "https://x", "circuit_breaker": {"failure_threshold": 1, "open_ms": 1, "p50_ms": 3}}));
        assert!(unknown.is_err(), "unknown breaker fields are still refused");
    }

    /// The fields an `azure_openai` backend with these `entra` settings (and `auth`) is refused for under `allowlist`,
    /// and the token URL it keeps.
    fn entra(allowlist: &str, entra: serde_json::Value, auth: serde_json::Value) -> (Vec<String>, Option<String>) {
        let mut spec: BackendSpec = serde_json::from_value(serde_json::json!({
            "name": "b", "kind": "azure_openai", "base_url": "https://contoso.openai.azure.com", "auth": auth,
            "azure": {"api_version": "2024-10-21", "entra": entra},
        }))
        .expect("a backend");
        let urls = BaseUrlPolicy::from_list(allowlist).expect("an allowlist");
        let secret_env = SecretEnvPolicy::from_list("").expect("no prefixes");
        let refused = backend(&mut spec, &urls, &secret_env).err().unwrap_or_default();
        let token_url = spec.azure.and_then(|azure| azure.entra).and_then(|entra| entra.token_url);
        (refused.into_iter().map(|e| e.field).collect(), token_url)
    }

    #[test]
    fn entra_sign_in_is_checked_and_its_token_endpoint_held_to_the_allowlist() {
        use serde_json::json;
        let bearer = json!({"type": "bearer"});
        let ids = json!({"tenant_id": "contoso.onmicrosoft.com", "client_id": "0f8fad5b-d9cb-469f-a165-70867728950e"});
        assert_eq!(entra("", ids.clone(), bearer.clone()), (vec![], None));
        let allowlist = "*.openai.azure.com,login.microsoftonline.us";
        assert_eq!(
            entra(allowlist, ids.clone(), bearer.clone()).0,
            ["azure.entra.token_url"],
            "the default endpoint (login.microsoftonline.com) is not on this allowlist"
        );
        let mut sovereign = ids.clone();
        sovereign["token_url"] = json!("HTTPS://Login.MicrosoftOnline.us/contoso/oauth2/v2.0/token");
        sovereign["scope"] = json!("https://cognitiveservices.azure.us/.default");
        assert_eq!(
            entra(allowlist, sovereign, bearer.clone()),
            (vec![], Some("https://login.microsoftonline.us/contoso/oauth2/v2.0/token".to_owned()))
        );
        let bad = json!({"tenant_id": "a/../b", "client_id": "", "scope": "two scopes",
                         "token_url": "ftp://login.microsoftonline.com/x"});
        assert_eq!(
            entra("", bad, json!({"type": "header", "header": "api-key"})).0,
            [
                "azure.entra.token_url",
                "azure.entra.tenant_id",
                "azure.entra.client_id",
                "azure.entra.client_id",
                "azure.entra.scope",
                "auth"
            ]
        );
        let unknown: Result<BackendSpec, _> = serde_json::from_value(json!({"name": "b", "kind": "azure_openai",
            "base_url": "https://x", "azure": {"api_version": "v", "entra": {"tenant_id": "t", "client_id": "c",
            "managed_identity": true}}}));
        assert!(unknown.is_err(), "settings not built are refused, not ignored");
    }
}
