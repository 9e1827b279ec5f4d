//! What a request may cost before it runs, reserved against its budgets at admission: the estimated prompt and the
//! most output it may generate, at the dearest of its candidates (semantics in `docs/spend.md`).

use std::sync::Arc;

use policy_engine::routing::PlannedCandidate;
use rust_decimal::Decimal;

use super::budgets::{Admission, AdmissionRequest, BudgetLedger, Scope};
use super::metering::{self, Usage};
use crate::control::snapshot::CompiledSnapshot;
use crate::openai::error::Refusal;
use crate::openai::request::{Endpoint, ParsedRequest};
use crate::providers;

/// The request being admitted.
#[derive(Clone, Copy)]
pub struct Admitting<'a> {
    pub snapshot: &'a CompiledSnapshot,
    pub parsed: &'a ParsedRequest,
    pub key: &'a gateway_proto::v1::ApiKey,
    /// How many answers it may be billed for (a tool policy may re-ask for invalid ones).
    pub answers: u64,
    pub now: chrono::DateTime<chrono::Utc>,
}

/// Admit the request under its budgets (reserving its estimated cost) and drop candidates whose model budget is
/// exhausted; with the prompt estimate, when budgets needed it. Requests with no budget in force skip this.
/// `known_prompt` is the prompt estimate when an earlier step (rate limits) counted it already.
pub fn admit(
    ledger: &Arc<BudgetLedger>,
    reserve_output_tokens: u64,
    request: &Admitting<'_>,
    candidates: &mut Vec<PlannedCandidate>,
    known_prompt: Option<u64>,
) -> Result<(Admission, Option<u64>), Refusal> {
    let Admitting { snapshot, parsed, key, answers, now } = *request;
    let budgets = &snapshot.config.budgets;
    if budgets.is_empty() {
        return Ok((Admission::unlimited(), known_prompt));
    }
    let prompt = known_prompt.unwrap_or_else(|| parsed.prompt_tokens());
    let estimate = reservation_estimate(snapshot, parsed, candidates, prompt, reserve_output_tokens)
        .saturating_mul(Decimal::from(answers));
    let admission = {
        let models: Vec<&str> = candidates.iter().map(|c| c.model.as_str()).collect();
        let scope = Scope { key_name: &key.name, team: &key.team, alias: &parsed.model, model: "" };
        let request = AdmissionRequest { scope, candidate_models: &models, estimate, now };
        ledger.admit(budgets, &request)?
    };
    for &position in admission.excluded.iter().rev() {
        candidates.remove(position);
    }
    Ok((admission, Some(prompt)))
}

/// The most tokens one answer may use, for token rate limits: the estimated `prompt` and `n` choices of
/// `max_completion_tokens`/`max_tokens`, else of `default_output` (none for embeddings).
pub fn token_estimate(parsed: &ParsedRequest, prompt: u64, default_output: u64) -> u64 {
    let choices = parsed.body.get("n").and_then(serde_json::Value::as_u64).unwrap_or(1).clamp(1, 128);
    let output = match parsed.endpoint {
        Endpoint::Embeddings | Endpoint::ImageGenerations => 0,
        Endpoint::ChatCompletions | Endpoint::Completions => parsed.max_output_tokens().unwrap_or(default_output),
    };
    prompt.saturating_add(output.saturating_mul(choices))
}

/// The most one answer may cost as far as the gateway can tell before it runs, at the highest figure among its
/// candidates: every image asked for, and the estimated prompt (at the dearer of the input and cache-write prices) and the most output it may
/// generate: `n` choices of `max_completion_tokens`/`max_tokens`, else of what the backend is sent by default
/// (`default_output`, or what its backend kind requires, e.g. the anthropic translation's `max_tokens`), within the context window.
fn reservation_estimate(
    snapshot: &CompiledSnapshot,
    parsed: &ParsedRequest,
    candidates: &[PlannedCandidate],
    prompt: u64,
    default_output: u64,
) -> Decimal {
    let choices = parsed.body.get("n").and_then(serde_json::Value::as_u64).unwrap_or(1).clamp(1, 128);
    let priced = candidates.iter().filter_map(|candidate| {
        let model = snapshot.config.models.get(&candidate.model)?;
        let kind_default =
            snapshot.config.backends.get(&candidate.backend).and_then(|b| providers::of(b.kind).default_max_tokens());
        let per_choice = match parsed.endpoint {
            Endpoint::Embeddings | Endpoint::ImageGenerations => 0,
            Endpoint::ChatCompletions | Endpoint::Completions => {
                parsed.max_output_tokens().unwrap_or(kind_default.unwrap_or(default_output))
            }
        };
        let window = model.capabilities.context_window.map_or(u64::MAX, u64::from);
        let output = per_choice.min(window.saturating_sub(prompt)).saturating_mul(choices);
        let pricing = &model.pricing;
        let dearest_input = pricing.cache_write.map_or(pricing.input, |write| write.max(pricing.input));
        let worst = policy_engine::config::Pricing { input: dearest_input, ..pricing.clone() };
        let usage = Usage { prompt_tokens: prompt, completion_tokens: output, ..Usage::default() };
        let tokens = metering::cost(&usage, &worst).ok()?;
        // Every image asked for, at this model's price for the size and quality asked for (routing kept only
        // candidates that price it).
        let images = match parsed.images_requested() {
            0 => Decimal::ZERO,
            n => {
                let (quality, size) = parsed.image_options();
                metering::image_cost(n, pricing.image_price(quality, size)?).ok()?
            }
        };
        tokens.checked_add(images)
    });
    priced.max().unwrap_or_default()
}
