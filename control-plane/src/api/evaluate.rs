//! `POST /admin/v1/evaluate`: a dry run of routing (and of which guardrails apply) for a sample request, with the
//! data plane's engine code.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use policy_engine::facts::{KeyFacts, RequestFacts};
use policy_engine::guardrail::{GuardrailSet, Side};
use policy_engine::routing::{Decision, PolicyTrace, Router};
use policy_engine::tokens;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::extract::{JsonBody, parse};
use crate::auth::{Action, Authorized, may};
use crate::error::ApiError;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleMessage {
    #[expect(dead_code, reason = "accepted so real chat bodies can be pasted; the per-message overhead covers it")]
    pub role: String,
    pub content: String,
}

/// The parts of an OpenAI request routing looks at.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SampleRequest {
    pub model: String,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Declared tool names.
    #[serde(default)]
    pub tools: Vec<String>,
    /// The request carries image input (candidates need `capabilities.vision`).
    #[serde(default)]
    pub images: bool,
    /// The request asks for JSON output (candidates need `capabilities.json_mode`).
    #[serde(default)]
    pub json_output: bool,
    /// `images.generations`: the `size` asked for (candidates need a price for it in `pricing.per_image`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32)]
    pub image_size: Option<String>,
    /// `images.generations`: the `quality` asked for (it may change the price).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 32)]
    pub image_quality: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Chat messages; their text is counted with the real tokenizer.
    #[serde(default)]
    pub messages: Vec<SampleMessage>,
    /// A plain prompt (completions, embeddings), counted like `messages`.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Use this count instead of tokenizing.
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
}

/// The longest `image_size` or `image_quality` (characters), as the data plane takes them.
const MAX_IMAGE_OPTION_CHARS: usize = 32;

fn default_endpoint() -> String {
    "chat.completions".to_owned()
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvaluateRequest {
    pub request: SampleRequest,
    /// Facts of a hypothetical key.
    #[serde(default)]
    pub key: Option<KeyFacts>,
    /// Or the name of an existing key, whose team, tags and allowed aliases apply (roles that may read keys only).
    #[serde(default)]
    #[schema(schema_with = policy_engine::fields::schema::optional_name)]
    pub key_name: Option<String>,
    /// Evaluate as of this time (RFC 3339; default: now).
    #[serde(default, deserialize_with = "crate::rfc3339::optional")]
    pub now: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// The config version evaluated.
    pub config_version: i64,
    /// The prompt's estimated tokens (as the data plane would count them).
    pub prompt_tokens: u64,
    /// The key as policies saw it.
    pub key: KeyFacts,
    /// False when the key's allowed aliases exclude the requested model: the data plane answers 403 before routing.
    pub key_allows_model: bool,
    /// What the data plane would do: `outcome` says which (`route`, `deny`, `unknown_model`, `policy_error`,
    /// `no_eligible_candidate`).
    pub decision: Decision,
    /// Every policy evaluated, in order.
    pub trace: Vec<PolicyTrace>,
    /// The guardrails that would inspect this request (`docs/guardrails.md`).
    pub guardrails: GuardrailsApplied,
}

/// The enabled guardrails whose `when` holds for the sample, by side, in the order they run.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct GuardrailsApplied {
    /// Inspecting the prompt (before anything is sent upstream).
    pub prompt: Vec<String>,
    /// Inspecting the answer (non-streamed or streamed).
    pub completion: Vec<String>,
    /// A guardrail whose `when` failed to evaluate: the data plane would refuse the request (guardrails fail closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which guardrails of the latest configuration apply to `facts` for `key` at `now`.
async fn applied_guardrails(
    state: &AppState,
    facts: RequestFacts,
    key: KeyFacts,
    now: DateTime<Utc>,
) -> Result<GuardrailsApplied, ApiError> {
    let (_, config) = state.store.current_config().await?;
    if config.guardrails.is_empty() {
        return Ok(GuardrailsApplied::default());
    }
    // Regex and CEL compilation are CPU-bound: off the async workers.
    tokio::task::spawn_blocking(move || {
        let set = GuardrailSet::compile(&config).map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ApiError::Internal(format!("stored guardrails do not compile: {}", text.join("; ")))
        })?;
        Ok(match set.applicable(&facts, &key, now) {
            Ok(applied) => GuardrailsApplied {
                prompt: set.names(&applied, Side::Prompt),
                completion: set.names(&applied, Side::Completion),
                error: None,
            },
            Err(error) => GuardrailsApplied { error: Some(error.to_string()), ..GuardrailsApplied::default() },
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

pub async fn evaluate(
    State(state): State<AppState>,
    principal: Authorized<may::Evaluate>,
    JsonBody(body): JsonBody,
) -> Result<Json<EvaluateResponse>, ApiError> {
    let input: EvaluateRequest = parse(body)?;
    // As the data plane bounds them (`data-plane/src/openai/request.rs`).
    for (field, value) in
        [("request.image_size", &input.request.image_size), ("request.image_quality", &input.request.image_quality)]
    {
        if value.as_ref().is_some_and(|v| v.is_empty() || v.chars().count() > MAX_IMAGE_OPTION_CHARS) {
            return Err(ApiError::InvalidBody {
                message: format!("{field} must be a string of 1 to {MAX_IMAGE_OPTION_CHARS} characters"),
                param: Some(field.to_owned()),
            });
        }
    }
    // A key's team and tags (and whether the name exists at all) are what `ReadKeys` protects.
    if input.key_name.is_some() && !crate::auth::allows(principal.role, Action::ReadKeys) {
        return Err(ApiError::Forbidden {
            role: principal.role.as_str(),
            action: "evaluate with `key_name`: that reads a stored API key, which needs permission to read API \
                     keys; send the key's facts in `key` instead"
                .to_owned(),
        });
    }
    let (key, key_allows_model) = match (&input.key_name, input.key) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidBody {
                message: "give either `key` or `key_name`, not both".to_owned(),
                param: Some("key_name".to_owned()),
            });
        }
        (Some(name), None) => {
            policy_engine::config::validate_name(name)
                .map_err(|message| ApiError::InvalidBody { message, param: Some("key_name".to_owned()) })?;
            let stored = state.store.get_key(name).await?;
            let allows = stored.allowed_aliases.is_empty() || stored.allowed_aliases.contains(&input.request.model);
            (KeyFacts { id: stored.id.to_string(), name: stored.name, team: stored.team, tags: stored.tags }, allows)
        }
        (None, key) => (key.unwrap_or_default(), true),
    };
    let (version, router) = state.router().await?;
    let sample = input.request;
    let prompt_tokens = sample.prompt_tokens.unwrap_or_else(|| {
        let texts = sample.messages.iter().map(|m| m.content.as_str()).chain(sample.prompt.as_deref());
        tokens::chat_prompt(texts)
    });
    let facts = RequestFacts {
        model: sample.model,
        endpoint: sample.endpoint,
        stream: sample.stream,
        prompt_tokens,
        max_tokens: sample.max_tokens,
        tools: sample.tools,
        images: sample.images,
        json_output: sample.json_output,
        image_size: sample.image_size,
        image_quality: sample.image_quality,
        metadata: sample.metadata,
        headers: sample.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
    };
    let mut trace = Vec::new();
    let now = input.now.unwrap_or_else(Utc::now);
    let decision = router.route(&facts, &key, now, Some(&mut trace));
    let guardrails = applied_guardrails(&state, facts, key.clone(), now).await?;
    Ok(Json(EvaluateResponse {
        config_version: version,
        prompt_tokens,
        key,
        key_allows_model,
        decision,
        trace,
        guardrails,
    }))
}

/// The compiled router of the latest version, compiled at most once per version.
pub(super) async fn compiled_router(state: &AppState) -> Result<(i64, Arc<Router>), ApiError> {
    let (head, config) = state.store.current_config().await?;
    let version = head.version;
    if let Some(router) = state.router_cache.get(head) {
        return Ok((version, router));
    }
    // CEL compilation is CPU-bound: keep it off the async workers.
    let router = tokio::task::spawn_blocking(move || Router::compile(&config))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|errors| {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ApiError::Internal(format!("stored policies do not compile: {}", text.join("; ")))
        })?;
    let router = Arc::new(router);
    state.router_cache.put(head, router.clone());
    Ok((version, router))
}
