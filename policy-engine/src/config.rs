//! The declarative resources governance teams author, as both planes see them.
//!
//! These are the "raw" stage of configuration: serde types that refuse unknown fields, so a typo in a
//! policy bundle is an error instead of a silently ignored setting. [`ConfigSet`] holds one of each
//! resource by name and checks what no single resource can check alone (references, pinned dimensions).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use crate::fields::schema;
use crate::fields::{MAX_NAME_CHARS, money};
pub use crate::guardrail_spec::{DetectorSpec, GuardrailAction, GuardrailSide, GuardrailSpec};

/// Resource names appear in URLs, CEL strings and policy files, so they keep to a URL-safe alphabet
/// ([`crate::fields::NAME_PATTERN`]).
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    let starts_well = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_CHARS || !valid_chars || !starts_well {
        return Err(format!(
            "invalid name {name:?}: use 1 to 128 characters from A-Z a-z 0-9 - _ . :, starting with a letter or digit"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Any OpenAI-compatible server (OpenAI, Groq, Together, vLLM, Ollama, ...).
    Openai,
    /// Azure OpenAI: deployment paths, `api-version` query and `api-key` header.
    AzureOpenai,
    /// Anthropic's native Messages API, translated both ways.
    Anthropic,
    /// Amazon Bedrock's Converse API, translated both ways, requests signed with SigV4.
    Bedrock,
    /// Google's Gemini API (`generateContent`), translated both ways, the API key in `x-goog-api-key`.
    Gemini,
    /// Gemini models on Google Cloud's Vertex AI, translated both ways, authenticated with a service account's
    /// OAuth tokens.
    Vertex,
}

impl BackendKind {
    /// The name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Openai => "openai",
            BackendKind::AzureOpenai => "azure_openai",
            BackendKind::Anthropic => "anthropic",
            BackendKind::Bedrock => "bedrock",
            BackendKind::Gemini => "gemini",
            BackendKind::Vertex => "vertex",
        }
    }
}

/// How the gateway presents the backend's secret upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields, from = "wire::BackendAuth")]
pub enum BackendAuth {
    /// `Authorization: Bearer <secret>`.
    #[default]
    Bearer,
    /// The secret in a header of this name (e.g. `api-key`, `x-api-key`).
    Header {
        /// The header that carries the secret, as is (no `Bearer` prefix).
        #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]+$", min_length = 1, max_length = 256))]
        header: String,
    },
    /// No credentials (local servers).
    None,
}

/// A provider secret as written: a literal (sealed before it is stored) or a reference resolved where it is used.
/// The sealed form only ever comes from the control plane itself and is never returned by a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSpec {
    /// The secret itself; the control plane encrypts it before storing it.
    Value(String),
    /// A reference such as `env:PROVIDER_OPENAI_API_KEY`, resolved by each data plane from its environment; the
    /// name must start with one of the operator's prefixes (`GATEWAY_SECRET_ENV_PREFIX`, default `PROVIDER_`).
    Ref(String),
    /// Base64 of nonce and AES-256-GCM ciphertext, as stored.
    Sealed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Longest wait for the TCP (and TLS) connection to the backend, in ms (default 5000).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub connect_ms: u64,
    /// Longest wait from sending the request to the response headers, in ms (default 60000); at most `total_ms`. Past
    /// it the attempt fails over.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub first_byte_ms: u64,
    /// Longest exchange with the backend, from sending the request until the client has taken the last byte, in ms
    /// (default 600000).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect_ms: 5_000, first_byte_ms: 60_000, total_ms: 600_000 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProviderRateLimit {
    /// Requests per second, counted in whole wall-clock seconds (`docs/rate-limits.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub rps: Option<u32>,
    /// Requests per minute, counted in whole wall-clock minutes.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub rpm: Option<u32>,
    /// Tokens per minute: admitted on the request's estimate, corrected to its metered usage.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub tpm: Option<u64>,
}

/// A backend's circuit breaker (`docs/providers.md`, "Circuit breakers"): it opens on `failure_threshold`
/// consecutive failures, and on the optional error-rate and latency trips; open, requests skip the backend; after
/// `open_ms` (with jitter, doubled after each failed probe up to `max_open_ms`) one probe request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the breaker.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe request.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub open_ms: u64,
    /// The longest the open time grows to, doubling after each failed probe; absent: `open_ms` (no backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_duration_ms))]
    pub max_open_ms: Option<u64>,
    /// Also open when at least `percent` of the attempts in the last `window_ms` failed (once `min_requests` were
    /// made in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateTrip>,
    /// Also open when the p99 time to first byte of the last `window_ms` exceeds `p99_ms` (once `min_requests`
    /// were measured in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyTrip>,
    /// One breaker per model served by this backend instead of one for the whole backend (for upstreams that fail
    /// per model or deployment).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_model: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorRateTrip {
    /// Failed attempts, in percent of all attempts in the window, that open the breaker (1 to 100).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub percent: u32,
    /// The sliding window the failure rate is measured over, in ms.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub window_ms: u64,
    /// Attempts the window must hold before the rate counts.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub min_requests: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LatencyTrip {
    /// The p99 time to first byte (response headers) above which the breaker opens.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub p99_ms: u64,
    /// The sliding window the p99 is measured over, in ms.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub window_ms: u64,
    /// Measured attempts the window must hold before the p99 counts.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub min_requests: u32,
}

/// An active health check: `GET {base_url}{path}` with the backend's credentials every `interval_ms`; a check that
/// fails `failure_threshold` times in a row opens the backend's breaker, one that succeeds closes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// How often each data plane checks the backend, in ms.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub interval_ms: u64,
    /// Path appended to `base_url` for the check (default `/models`).
    #[serde(default = "default_health_path")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub path: String,
    /// How long one check may take (default 2000).
    #[serde(default = "default_health_timeout_ms")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::duration_ms))]
    pub timeout_ms: u64,
    /// Consecutive failed checks that open the breaker (default 1).
    #[serde(default = "default_health_failure_threshold")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub failure_threshold: u32,
}

pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 2000;

fn default_health_timeout_ms() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}

fn default_health_failure_threshold() -> u32 {
    1
}

fn default_health_path() -> String {
    "/models".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    /// The `api-version` query parameter sent with every request (e.g. `2024-10-21`).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub api_version: String,
    /// Sign in with Microsoft Entra ID instead of a key (absent: the secret is the key, sent as `auth` says). The
    /// backend's secret is then the app registration's client secret, never sent to Azure OpenAI itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<EntraSettings>,
}

/// Microsoft Entra ID's client-credentials sign-in for an `azure_openai` backend: each data plane exchanges the
/// client id and the backend's secret for an access token at `token_url`, caches it and refreshes it before it expires,
/// and sends it as `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EntraSettings {
    /// The directory (tenant) id, a GUID or a domain such as `contoso.onmicrosoft.com`.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub tenant_id: String,
    /// The application (client) id of the app registration.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub client_id: String,
    /// The token endpoint (default `https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token`; sovereign clouds
    /// have their own); it receives the client secret, so it passes the same allowlist as base URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_url))]
    pub token_url: Option<String>,
    /// The scope asked for (default `https://cognitiveservices.azure.com/.default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_label))]
    pub scope: Option<String>,
}

/// The scope Azure OpenAI's Entra ID tokens are asked for unless a backend names another.
pub const ENTRA_DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

impl EntraSettings {
    /// The token endpoint asked: `token_url`, else the public cloud's for the tenant.
    pub fn effective_token_url(&self) -> String {
        match &self.token_url {
            Some(url) => url.clone(),
            None => format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", self.tenant_id),
        }
    }

    pub fn effective_scope(&self) -> &str {
        self.scope.as_deref().unwrap_or(ENTRA_DEFAULT_SCOPE)
    }
}

/// AWS settings of a `bedrock` backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The AWS region requests are signed for (e.g. `us-east-1`).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub region: String,
}

/// Google Cloud settings of a `vertex` backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VertexSettings {
    /// The Google Cloud project id requests are billed to (e.g. `my-project-123`).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub project: String,
    /// The Vertex AI location (e.g. `us-central1`, `europe-west4`, `global`).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub location: String,
}

/// A provider endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Unique name; models refer to it.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// The provider protocol: `openai`, `azure_openai`, `anthropic`, `bedrock`, `gemini` or `vertex`.
    pub kind: BackendKind,
    /// http(s) URL; normalised on write (a trailing slash never matters).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::url))]
    pub base_url: String,
    /// How the secret is sent upstream (default `{"type": "bearer"}`).
    #[serde(default)]
    pub auth: BackendAuth,
    /// Write-only: `{"value": "..."}` or `{"ref": "env:NAME"}`. Omitted on update keeps the stored secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSpec>,
    /// Free-form region label (e.g. `eu`), readable by policies as `backend.region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_label))]
    pub region: Option<String>,
    /// Free-form labels (default none), readable by policies as `backend.tags`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::labels))]
    pub tags: Vec<String>,
    /// Connection, first-byte and total time limits of one attempt; every field has a default (`{"connect_ms": 5000,
    /// "first_byte_ms": 60000, "total_ms": 600000}`).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Requests and tokens this backend accepts, shared across data planes (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ProviderRateLimit>,
    /// When to stop sending to a failing backend and when to try it again (absent: no breaker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// An active health check each data plane runs (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Required for `azure_openai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,
    /// Required for `bedrock`: the region its requests are signed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSettings>,
    /// Required for `vertex`: the project and location its requests name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Serves `/v1/chat/completions` (default false).
    pub chat: bool,
    /// Serves the legacy `/v1/completions` (default false).
    pub completions: bool,
    /// Serves `/v1/embeddings` (default false).
    pub embeddings: bool,
    /// Accepts requests that declare tools (default false).
    pub tools: bool,
    /// Accepts `response_format` JSON output (default false).
    pub json_mode: bool,
    /// Accepts image input (default false).
    pub vision: bool,
    /// Serves `/v1/images/generations` (default false); needs `pricing.per_image`.
    pub images: bool,
    /// Most tokens of prompt plus `max_tokens`; requests that do not fit skip this model (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub context_window: Option<u32>,
    /// Required (at least 1) when `embeddings` is true; refused otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub embedding_dimensions: Option<u32>,
}

/// Prices in USD per one million tokens, and per generated image for image models. Exact decimals; strings
/// (`"2.50"`) are the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// USD per million prompt tokens.
    #[serde(deserialize_with = "money::required")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::price))]
    pub input: Decimal,
    /// USD per million prompt tokens served from the provider's cache; `input` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "money::optional")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_price))]
    pub cached_input: Option<Decimal>,
    /// USD per million completion tokens.
    #[serde(deserialize_with = "money::required")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::price))]
    pub output: Decimal,
    /// Input tokens written to a provider cache (Anthropic prices them above `input`); `input` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "money::optional")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_price))]
    pub cache_write: Option<Decimal>,
    /// USD per generated image by the request's `size`, or `quality/size` where the quality changes the price;
    /// `default` prices a request that names no size. Required with `capabilities.images`, refused without it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "money::by_name")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::image_prices))]
    pub per_image: BTreeMap<String, Decimal>,
}

impl Pricing {
    /// The price of one image of `size` (`None`: the request names none) at `quality`: the `quality/size` entry,
    /// else the `size` one. `None` when neither is priced: such a request is never served (nor recorded as free).
    pub fn image_price(&self, quality: Option<&str>, size: Option<&str>) -> Option<Decimal> {
        let size = size.unwrap_or("default");
        quality
            .and_then(|quality| self.per_image.get(&format!("{quality}/{size}")))
            .or_else(|| self.per_image.get(size))
            .copied()
    }
}

/// A deployable model on a backend. `pricing` is required: a model without a price is a configuration
/// error, never a free model (a free local model says `"0"` explicitly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Unique name; aliases, route policies and apps (as `model`) refer to it.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// The backend that serves it.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub backend: String,
    /// The model name the provider expects.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
    pub upstream_model: String,
    /// What the model can serve; routing skips it for requests it cannot (every flag defaults to false).
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Prices in USD per million tokens, as decimal strings.
    pub pricing: Pricing,
    /// For embedding models: the model that makes the vectors, as its maker names it (e.g.
    /// `text-embedding-3-small`), when `upstream_model` names something else (an Azure deployment); default
    /// `upstream_model`. Vectors of two models are comparable only when this is the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_label))]
    pub embedding_model: Option<String>,
}

impl ModelSpec {
    /// The model that makes this model's vectors: `embedding_model`, else `upstream_model`.
    pub fn effective_embedding_model(&self) -> &str {
        self.embedding_model.as_deref().unwrap_or(&self.upstream_model)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Candidates in order; the next one on failure.
    #[default]
    Failover,
    /// Random by weight; the others in order on failure.
    Weighted,
    /// The candidate with the lowest observed latency first.
    LeastLatency,
    /// The candidate whose estimated cost for this request is lowest first: input price times the prompt's
    /// estimated tokens plus output price times `max_tokens` (1,024 when unset); ties in listed order.
    LowestCost,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// A model's name.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub model: String,
    /// At least 1 under the `weighted` strategy.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The public name apps send, mapped to an ordered list of candidate models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AliasSpec {
    /// The public name apps send as `model`.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_text))]
    pub description: Option<String>,
    /// How candidates are ordered: `failover` (default), `weighted`, `least_latency`, `lowest_cost`.
    #[serde(default)]
    pub strategy: Strategy,
    /// At least one, each model once.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub candidates: Vec<Candidate>,
    /// For embedding aliases: the dimension every candidate must produce. Once set it never changes,
    /// so vectors already stored for a corpus stay comparable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub pinned_dimensions: Option<u32>,
    /// For embedding aliases: the one embedding model every candidate must serve (each candidate model's
    /// `embedding_model`, which defaults to its `upstream_model`), so failover never mixes vectors of two models.
    /// Once set it never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_label))]
    pub pinned_model: Option<String>,
}

/// What a matching route policy does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyAction {
    /// Serve with an alias or an explicit candidate list. The first matching route or deny policy wins.
    Route {
        /// Exactly one of `alias` and `candidates`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_name))]
        alias: Option<String>,
        /// Explicit candidate models, instead of `alias`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(min_items = 1))]
        candidates: Option<Vec<Candidate>>,
        /// Orders the candidates; unset: the alias's strategy (or `failover`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strategy: Option<Strategy>,
        /// Attempts sent after the first one fails (0 to 10), going round the candidates; unset: each candidate
        /// once. See `docs/providers.md`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(maximum = 10))]
        retries: Option<u32>,
        /// The whole request's deadline in ms, from its first attempt to the client's last byte, across attempts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_duration_ms))]
        timeout_ms: Option<u64>,
        /// CEL over `backend` and `model`: candidates for which it is not true are dropped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        require: Option<String>,
    },
    /// Refuse the request with this message (HTTP 403 naming the policy).
    Deny {
        /// Sent to the caller in the error.
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::message))]
        message: String,
    },
    /// Filter candidates of whatever route serves the request. Every matching constraint applies.
    Constrain {
        /// CEL over `backend` and `model`: candidates for which it is not true are dropped.
        require: String,
    },
}

/// A routing or access rule: `when` (CEL over request and key) selects the requests it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RoutePolicySpec {
    /// Unique name; reported in `x-gateway-policy` and spend events.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_text))]
    pub description: Option<String>,
    /// Higher first; ties are broken by name.
    #[serde(default)]
    pub priority: i32,
    /// A disabled policy is kept but never evaluated (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CEL, must evaluate to a bool.
    #[serde(default = "default_when")]
    pub when: String,
    /// `{"type": "route", "alias": ...}` or `{"type": "route", "candidates": [...]}`, `{"type": "deny", "message":
    /// ...}`, or `{"type": "constrain", "require": ...}`.
    pub action: PolicyAction,
}

fn default_true() -> bool {
    true
}

fn default_when() -> String {
    "true".to_owned()
}

/// A named JSON Schema for one tool's arguments; its revision is the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolSchemaSpec {
    /// The tool's name, as requests declare it.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_text))]
    pub description: Option<String>,
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise).
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::json_schema))]
    pub schema: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ToolPolicyMode {
    /// Violations act as `on_invalid` says.
    #[default]
    Enforce,
    /// Violations are only recorded.
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnInvalidToolCall {
    #[default]
    Reject,
    Retry,
    Annotate,
}

/// Which callers may declare which tools, and what happens to a tool call that does not validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolPolicySpec {
    /// Unique name.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// Higher first; the highest-priority matching policy applies (ties by name). Default 0.
    #[serde(default)]
    pub priority: i32,
    /// CEL over `request` and `key` selecting the requests it applies to (default `true`).
    #[serde(default = "default_when")]
    pub when: String,
    /// Tool names callers matching `when` may declare; `*` or an empty list allows any (see `docs/tools.md`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::tool_names))]
    pub allow: Vec<String>,
    /// Tool names they may not declare (wins over `allow`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::tool_names))]
    pub deny: Vec<String>,
    /// `enforce` (default): violations act as `on_invalid` says; `audit`: only recorded.
    #[serde(default)]
    pub mode: ToolPolicyMode,
    /// What an invalid tool call does: `reject` (default), `retry` (ask the model again), `annotate`.
    #[serde(default)]
    pub on_invalid: OnInvalidToolCall,
    /// Retries under `on_invalid: retry` (0 to 5, default 1).
    #[serde(default = "default_max_retries")]
    #[cfg_attr(feature = "openapi", schema(maximum = 5))]
    pub max_retries: u32,
}

fn default_max_retries() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields, from = "wire::BudgetScope")]
pub enum BudgetScope {
    /// One API key, by name.
    Key {
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
        key: String,
    },
    Team {
        /// The team name, as on keys.
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::label))]
        team: String,
    },
    /// One alias or model, by name.
    Model {
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
        model: String,
    },
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// Calendar periods in UTC: they reset exactly at the boundary.
    Day,
    Week,
    Month,
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    #[default]
    Block,
    Alert,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Unique name; refusals name it.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// What is counted: `{"type": "key", "key"}`, `{"type": "team", "team"}`, `{"type": "model", "model"}` or
    /// `{"type": "global"}`.
    pub scope: BudgetScope,
    /// `day`, `week` (ISO, from Monday), `month` or `total`, calendar periods in UTC.
    pub period: BudgetPeriod,
    /// The limit in USD, a decimal string.
    #[serde(deserialize_with = "money::required")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::budget_limit))]
    pub limit_usd: Decimal,
    /// `block` (default): refuse requests once spent; `alert`: only report.
    #[serde(default)]
    pub action: BudgetAction,
    /// Fraction of the limit (0 < x < 1) at which an alert fires before the limit.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "money::optional")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::soft_threshold))]
    pub soft_threshold: Option<Decimal>,
}

/// How the tagged enums with unit variants are read. serde ignores unknown fields next to the tag of a unit
/// variant even under `deny_unknown_fields` (`{"type": "global", "team": "x"}` would pass, the team silently
/// dropped), so they are read through these twins whose variants are all structs, which refuse them.
mod wire {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum BackendAuth {
        Bearer {},
        Header { header: String },
        None {},
    }

    impl From<BackendAuth> for super::BackendAuth {
        fn from(wire: BackendAuth) -> Self {
            match wire {
                BackendAuth::Bearer {} => super::BackendAuth::Bearer,
                BackendAuth::Header { header } => super::BackendAuth::Header { header },
                BackendAuth::None {} => super::BackendAuth::None,
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum BudgetScope {
        Key { key: String },
        Team { team: String },
        Model { model: String },
        Global {},
    }

    impl From<BudgetScope> for super::BudgetScope {
        fn from(wire: BudgetScope) -> Self {
            match wire {
                BudgetScope::Key { key } => super::BudgetScope::Key { key },
                BudgetScope::Team { team } => super::BudgetScope::Team { team },
                BudgetScope::Model { model } => super::BudgetScope::Model { model },
                BudgetScope::Global {} => super::BudgetScope::Global,
            }
        }
    }
}

/// Every stored resource of one config version, by name. Keys live apart: they are many and change alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSet {
    pub backends: BTreeMap<String, BackendSpec>,
    pub models: BTreeMap<String, ModelSpec>,
    pub aliases: BTreeMap<String, AliasSpec>,
    pub route_policies: BTreeMap<String, RoutePolicySpec>,
    pub tool_schemas: BTreeMap<String, ToolSchemaSpec>,
    pub tool_policies: BTreeMap<String, ToolPolicySpec>,
    pub budgets: BTreeMap<String, BudgetSpec>,
    pub guardrails: BTreeMap<String, GuardrailSpec>,
}

/// A reference from one resource to another that does not resolve, or a cross-resource rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {message}")]
pub struct IntegrityError {
    /// `kind/name` of the resource at fault.
    pub resource: String,
    pub message: String,
}

impl ConfigSet {
    /// Whether `name` is a servable public name: an alias or a model.
    pub fn has_alias_or_model(&self, name: &str) -> bool {
        self.aliases.contains_key(name) || self.models.contains_key(name)
    }

    /// Every broken reference and cross-resource rule, in a stable order.
    pub fn check_integrity(&self) -> Vec<IntegrityError> {
        let mut errors = Vec::new();
        let mut fail = |kind: &str, name: &str, message: String| {
            errors.push(IntegrityError { resource: format!("{kind}/{name}"), message })
        };
        for model in self.models.values() {
            match self.backends.get(&model.backend) {
                None => fail("model", &model.name, format!("backend {:?} does not exist", model.backend)),
                // Only the OpenAI wire format has an image endpoint the gateway passes through.
                Some(backend)
                    if model.capabilities.images
                        && !matches!(backend.kind, BackendKind::Openai | BackendKind::AzureOpenai) =>
                {
                    fail(
                        "model",
                        &model.name,
                        format!(
                            "capabilities.images: backend {:?} is of kind {:?}, which serves no image generation \
                             (openai and azure_openai do)",
                            model.backend, backend.kind
                        ),
                    )
                }
                Some(_) => {}
            }
        }
        for alias in self.aliases.values() {
            for candidate in &alias.candidates {
                match self.models.get(&candidate.model) {
                    None => fail("alias", &alias.name, format!("model {:?} does not exist", candidate.model)),
                    Some(model) => {
                        if let Some(pinned) = &alias.pinned_model {
                            let serves = model.effective_embedding_model();
                            if !model.capabilities.embeddings || serves != pinned {
                                fail(
                                    "alias",
                                    &alias.name,
                                    format!(
                                        "model {:?} serves {} but the alias is pinned to the embedding model {pinned:?} \
                                         (vectors of two models are not comparable)",
                                        model.name,
                                        if model.capabilities.embeddings {
                                            format!("the embedding model {serves:?}")
                                        } else {
                                            "no embeddings".to_owned()
                                        },
                                    ),
                                );
                            }
                        }
                        if let Some(pinned) = alias.pinned_dimensions {
                            let dims = model.capabilities.embedding_dimensions;
                            if !model.capabilities.embeddings || dims != Some(pinned) {
                                fail(
                                    "alias",
                                    &alias.name,
                                    format!(
                                        "model {:?} produces {} but the alias is pinned to {pinned} embedding dimensions",
                                        model.name,
                                        dims.map_or("no embeddings".to_owned(), |d| format!("{d} dimensions")),
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
        for policy in self.route_policies.values() {
            if let PolicyAction::Route { alias, candidates, .. } = &policy.action {
                if let Some(alias) = alias
                    && !self.aliases.contains_key(alias)
                {
                    fail("route_policy", &policy.name, format!("alias {alias:?} does not exist"));
                }
                for candidate in candidates.iter().flatten() {
                    if !self.models.contains_key(&candidate.model) {
                        fail("route_policy", &policy.name, format!("model {:?} does not exist", candidate.model));
                    }
                }
            }
        }
        for budget in self.budgets.values() {
            if let BudgetScope::Model { model } = &budget.scope
                && !self.has_alias_or_model(model)
            {
                fail("budget", &budget.name, format!("alias or model {model:?} does not exist"));
            }
        }
        for guardrail in self.guardrails.values() {
            for (i, detector) in guardrail.detectors.iter().enumerate() {
                let DetectorSpec::Moderation(moderation) = detector else { continue };
                match self.backends.get(&moderation.backend) {
                    None => fail(
                        "guardrail",
                        &guardrail.name,
                        format!("detectors[{i}].backend: backend {:?} does not exist", moderation.backend),
                    ),
                    Some(backend) if backend.kind != BackendKind::Openai => fail(
                        "guardrail",
                        &guardrail.name,
                        format!(
                            "detectors[{i}].backend: backend {:?} is of kind {}; a moderation classifier needs an \
                             OpenAI-compatible backend (kind openai) serving /moderations",
                            moderation.backend,
                            backend.kind.as_str()
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        errors
    }
}
