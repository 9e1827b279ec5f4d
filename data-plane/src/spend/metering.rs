//! Metering, pure: token usage from upstream answers and streams, the `stream_options.include_usage` injection and
//! the stripping of the usage chunk the client did not ask for, and exact cost. The request path uses it through
//! [`crate::spend`].
//!
//! - Non-streamed answers: [`usage_from_body`] reads OpenAI's `usage`; `None` when it is missing or malformed, so the
//!   caller estimates instead of recording zero ([`completion_estimate`] counts what the answer generated).
//! - Streams: [`StreamMeter`] cuts the SSE bytes into events (however the upstream chunks them), records the last
//!   `usage` it sees, and accumulates the generated text (content, refusals, reasoning, tool-call names and
//!   arguments, legacy completions' `text`) so that a stream without usage (interrupted, or an upstream that ignores
//!   `include_usage`) is still metered with the real tokenizer and marked estimated. Each JSON event is parsed once,
//!   typed and borrowing its strings: the estimate needs the text of every event, so a `"usage"` pre-filter would
//!   save nothing (with `include_usage` every chunk carries `"usage":null` anyway). `[DONE]` and comments are not parsed.
//! - [`cost`]: USD from the snapshot's per-million-token prices in `Decimal`, never `f64`; overflow is an error.
//!   [`image_cost`]: generated images at the model's price for the size (and quality) asked for.

use std::borrow::Cow;

use bytes::Bytes;
use policy_engine::config::Pricing;
use policy_engine::tokens;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::openai::request::Endpoint;
use crate::openai::sse::{event_data, event_end, is_done};

/// Token counts of one request, as a spend event carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Every input token, cached and cache-creation ones included.
    pub prompt_tokens: u64,
    /// The part of `prompt_tokens` read from a provider cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The part of `prompt_tokens` written to a provider cache (Anthropic; OpenAI never reports it).
    pub cache_creation_tokens: u64,
    /// Images generated (`/v1/images/generations`), priced per image.
    pub images: u64,
    /// The counts come from the gateway's tokenizer, not the upstream.
    pub estimated: bool,
}

/// OpenAI's `usage` object; unknown fields are ignored, a wrong type fails the whole parse.
#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<RawDetails>,
    /// Anthropic's cache writes, a part of `prompt_tokens` (kept by the anthropic translation, and by OpenAI-shaped
    /// proxies in front of Anthropic).
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RawDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// `usage` as it came, borrowed: read as [`RawUsage`] only when it is an object (serde's derive would also take a
/// positional array for a struct, which is not usage), and a malformed one fails only itself, not its answer or
/// chunk. Kept raw rather than built into a `Map` of `Value`s and converted again (per answer and per stream).
type UsageObject<'a> = &'a RawValue;

impl RawUsage {
    fn from_object(usage: UsageObject<'_>) -> Option<RawUsage> {
        let text = usage.get();
        if !text.starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    /// Embeddings report only prompt (and total) tokens; the generating endpoints must report completion tokens.
    /// Counts beyond any context window are not usage but an upstream bug: estimated instead (the ledger refuses
    /// them).
    fn into_usage(self, endpoint: Endpoint) -> Option<Usage> {
        const PLAUSIBLE: u64 = 1_000_000_000_000;
        let counts = [Some(self.prompt_tokens), self.completion_tokens, self.cache_creation_input_tokens];
        if counts.into_iter().flatten().any(|count| count > PLAUSIBLE) {
            return None;
        }
        let completion_tokens = match endpoint {
            Endpoint::Embeddings | Endpoint::ImageGenerations => 0,
            Endpoint::ChatCompletions | Endpoint::Completions => self.completion_tokens?,
        };
        let cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        // Parts larger than the whole are an upstream bug; clamped so the event stays valid (the control plane
        // quarantines cached + created > prompt).
        let cached = cached.min(self.prompt_tokens);
        let created = self.cache_creation_input_tokens.unwrap_or(0).min(self.prompt_tokens - cached);
        Some(Usage {
            prompt_tokens: self.prompt_tokens,
            cached_prompt_tokens: cached,
            completion_tokens,
            cache_creation_tokens: created,
            images: 0,
            estimated: false,
        })
    }
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(default, borrow)]
    usage: Option<UsageObject<'a>>,
}

#[derive(Deserialize)]
struct ImagesAnswer {
    data: Vec<serde::de::IgnoredAny>,
}

/// The usage of a non-streamed answer of `endpoint`, or `None` when it is missing or malformed (never panics).
/// An image answer's usage is the images it holds (`data`), whatever token counts it also reports: images are
/// priced per image.
pub fn usage_from_body(endpoint: Endpoint, body: &[u8]) -> Option<Usage> {
    if endpoint == Endpoint::ImageGenerations {
        let answer: ImagesAnswer = serde_json::from_slice(body).ok()?;
        return Some(Usage { images: answer.data.len() as u64, ..Usage::default() });
    }
    let answer: Answer<'_> = serde_json::from_slice(body).ok()?;
    RawUsage::from_object(answer.usage?)?.into_usage(endpoint)
}

/// The most finish reasons kept for a request's span (one per choice; `n` is not bounded by the gateway).
const MAX_FINISH_REASONS: usize = 16;
/// Longer than any real reason (`stop`, `length`, `tool_calls`, `content_filter`...): a longer one is not kept.
const MAX_FINISH_REASON_BYTES: usize = 64;

fn push_finish_reason(reasons: &mut Vec<String>, reason: &str) {
    if reasons.len() < MAX_FINISH_REASONS && reason.len() <= MAX_FINISH_REASON_BYTES {
        reasons.push(reason.to_owned());
    }
}

#[derive(Deserialize)]
struct FinishedAnswer<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<FinishedChoice<'a>>>,
}

#[derive(Deserialize)]
struct FinishedChoice<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

/// Each choice's `finish_reason` in a non-streamed answer (none for a body that is not a chat or completions answer).
/// A second parse of the body, so only asked for when the request's span is exported.
pub fn finish_reasons_from_body(body: &[u8]) -> Vec<String> {
    let mut reasons = Vec::new();
    let Ok(answer) = serde_json::from_slice::<FinishedAnswer<'_>>(body) else { return reasons };
    for reason in answer.choices.iter().flatten().filter_map(|choice| choice.finish_reason.as_deref()) {
        push_finish_reason(&mut reasons, reason);
    }
    reasons
}

/// Completion tokens of a non-streamed answer that carries no usage, counted with the tokenizer over what it
/// generated: message content, refusals, reasoning, tool-call names and arguments, legacy completions' `text`.
/// Embeddings generate nothing. A body that is not JSON counts as nothing generated (never panics).
pub fn completion_estimate(endpoint: Endpoint, body: &[u8]) -> u64 {
    if matches!(endpoint, Endpoint::Embeddings | Endpoint::ImageGenerations) {
        return 0;
    }
    let Ok(answer) = serde_json::from_slice::<Value>(body) else { return 0 };
    let mut total = 0;
    let mut count = |value: Option<&Value>| {
        if let Some(text) = value.and_then(Value::as_str) {
            total += tokens::count(text);
        }
    };
    for choice in answer.get("choices").and_then(Value::as_array).into_iter().flatten() {
        count(choice.get("text"));
        let Some(message) = choice.get("message") else { continue };
        for field in ["content", "refusal", "reasoning_content"] {
            count(message.get(field));
        }
        for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            count(call.pointer("/function/name"));
            count(call.pointer("/function/arguments"));
        }
    }
    total
}

/// For a streamed request, ask the upstream for usage: set `stream_options.include_usage = true`, keeping any other
/// `stream_options` field. Returns whether the client had not asked for it, i.e. whether the usage chunk must be
/// stripped from what the client receives. Unchanged (and `false`) for a request that does not stream, and when
/// `stream_options` is present but not an object: the upstream rejects that, and the gateway must not hide the
/// caller's error by rewriting it.
pub fn inject_include_usage(body: &mut Map<String, Value>) -> bool {
    if body.get("stream") != Some(&Value::Bool(true)) {
        return false;
    }
    match body.get_mut("stream_options") {
        Some(Value::Object(options)) => {
            if options.get("include_usage") == Some(&Value::Bool(true)) {
                return false;
            }
            options.insert("include_usage".to_owned(), Value::Bool(true));
            true
        }
        None | Some(Value::Null) => {
            let mut options = Map::new();
            options.insert("include_usage".to_owned(), Value::Bool(true));
            body.insert("stream_options".to_owned(), Value::Object(options));
            true
        }
        Some(_) => false,
    }
}

/// One streamed chunk, typed only as far as metering reads it; strings borrow from the event when unescaped.
#[derive(Deserialize)]
struct StreamChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<StreamChoice<'a>>>,
    #[serde(default, borrow)]
    usage: Option<UsageObject<'a>>,
}

#[derive(Deserialize)]
struct StreamChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    /// Legacy completions stream `choices[].text`.
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    /// Reasoning models of some providers (DeepSeek, vLLM) stream their billed reasoning here.
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// An event longer than this without its blank line is not held: passed on (stripping) and left unparsed, so a
/// broken upstream cannot grow the buffer without bound.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Accumulated text is counted and dropped past this size, bounding memory on long streams; a cut may split one
/// token in two, an error of about one token per 64 KiB.
const TEXT_FLUSH_BYTES: usize = 64 << 10;

/// The metering stage of a chat or completions stream (see the module documentation).
pub struct StreamMeter {
    strip_usage_chunk: bool,
    /// Bytes of an event not terminated yet (held back from the client only when stripping).
    pending: Vec<u8>,
    usage: Option<Usage>,
    /// Generated text not counted yet, and the tokens of the text already counted.
    text: String,
    counted: u64,
    saw_done: bool,
    /// Each choice's `finish_reason` as it ended, for the request's span (at most [`MAX_FINISH_REASONS`]).
    finish_reasons: Vec<String>,
}

impl StreamMeter {
    /// `strip_usage_chunk`: the gateway injected `include_usage` (see [`inject_include_usage`]), so the usage-only
    /// event is metered but not forwarded.
    pub fn new(strip_usage_chunk: bool) -> StreamMeter {
        StreamMeter {
            strip_usage_chunk,
            pending: Vec::new(),
            usage: None,
            text: String::new(),
            counted: 0,
            saw_done: false,
            finish_reasons: Vec::new(),
        }
    }

    /// The `finish_reason` of each choice that ended, in the order they ended.
    pub fn take_finish_reasons(&mut self) -> Vec<String> {
        std::mem::take(&mut self.finish_reasons)
    }

    /// Whether the terminating `data: [DONE]` event went by.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// Feed upstream bytes; returns what to forward now. Without stripping that is `chunk` itself (no copy); with
    /// stripping, the complete events other than the usage-only one (an unterminated event waits for its end: a
    /// client cannot act on half an event anyway).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let mut buf = std::mem::take(&mut self.pending);
        let carried = buf.len();
        buf.extend_from_slice(&chunk);
        let mut out = Vec::new();
        let mut stripped = false;
        let mut start = 0;
        while let Some(len) = event_end(&buf[start..]) {
            let raw = &buf[start..start + len];
            let usage_only = self.observe(raw);
            if self.strip_usage_chunk {
                if usage_only {
                    stripped = true;
                } else {
                    out.extend_from_slice(raw);
                }
            }
            start += len;
        }
        let whole = start == buf.len();
        if buf.len() - start > MAX_EVENT_BYTES {
            if self.strip_usage_chunk {
                out.extend_from_slice(&buf[start..]);
            }
            buf.clear();
        } else {
            buf.drain(..start);
        }
        self.pending = buf;
        if !self.strip_usage_chunk || (carried == 0 && whole && !stripped) {
            return chunk;
        }
        Bytes::from(out)
    }

    /// Meter one complete event; whether it is the usage-only event (`usage` with no choices).
    fn observe(&mut self, raw: &[u8]) -> bool {
        let Some(data) = event_data(raw) else { return false };
        if is_done(&data) {
            self.saw_done = true;
            return false;
        }
        // Only JSON objects can carry text or usage (`[DONE]`, comments and keep-alives are skipped unparsed).
        if data.trim_ascii_start().first() != Some(&b'{') {
            return false;
        }
        let Ok(chunk) = serde_json::from_slice::<StreamChunk<'_>>(&data) else { return false };
        let mut has_choices = false;
        for choice in chunk.choices.iter().flatten() {
            has_choices = true;
            if let Some(reason) = &choice.finish_reason {
                push_finish_reason(&mut self.finish_reasons, reason);
            }
            self.push_text(choice.text.as_deref());
            if let Some(delta) = &choice.delta {
                self.push_text(delta.content.as_deref());
                self.push_text(delta.refusal.as_deref());
                self.push_text(delta.reasoning_content.as_deref());
                for call in delta.tool_calls.iter().flatten() {
                    if let Some(function) = &call.function {
                        self.push_text(function.name.as_deref());
                        self.push_text(function.arguments.as_deref());
                    }
                }
            }
        }
        let Some(usage) =
            chunk.usage.and_then(RawUsage::from_object).and_then(|u| u.into_usage(Endpoint::ChatCompletions))
        else {
            return false;
        };
        // The last usage wins: some upstreams send running totals.
        self.usage = Some(usage);
        !has_choices
    }

    fn push_text(&mut self, text: Option<&str>) {
        let Some(text) = text else { return };
        self.text.push_str(text);
        if self.text.len() >= TEXT_FLUSH_BYTES {
            // Cut before the last whitespace: BPE tokens start with their leading space, so that cut rarely splits
            // one (falls back to counting everything when there is none).
            let cut = self.text.rfind(char::is_whitespace).filter(|&i| i > 0).unwrap_or(self.text.len());
            self.counted = self.counted.saturating_add(tokens::count(&self.text[..cut]));
            self.text.drain(..cut);
        }
    }

    /// The usage so far, as [`StreamMeter::finish`] would say without an unterminated last event.
    /// `prompt_estimate` is asked only when the upstream sent no usage.
    pub fn usage_so_far(&self, prompt_estimate: impl FnOnce() -> u64) -> Usage {
        self.usage.unwrap_or_else(|| Usage {
            prompt_tokens: prompt_estimate(),
            completion_tokens: self.counted.saturating_add(tokens::count(&self.text)),
            estimated: true,
            ..Usage::default()
        })
    }

    /// The stream's usage: the upstream's if it sent one, else `prompt_estimate` and the tokens of the text
    /// received, marked estimated. An unterminated last event is metered too (the upstream produced it); when
    /// stripping it was never forwarded, as SSE clients discard such an event anyway.
    pub fn finish(mut self, prompt_estimate: impl FnOnce() -> u64) -> Usage {
        let tail = std::mem::take(&mut self.pending);
        if !tail.is_empty() {
            self.observe(&tail);
        }
        self.usage_so_far(prompt_estimate)
    }
}

/// The cost does not fit a `Decimal` (about 7.9e28): absurd token counts or prices. An error rather than a
/// saturated amount, because a made-up number in the ledger is worse than an event the caller marks as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cost overflows the decimal range")]
pub struct CostOverflow;

/// Exact USD cost of `usage` at `pricing` (USD per million tokens). Cached tokens are priced at `cached_input`,
/// cache-creation tokens at `cache_write` (each `input` when the model has none). Parts larger than
/// `prompt_tokens` leave no uncached remainder rather than a negative one. Normalised (no trailing zeros).
pub fn cost(usage: &Usage, pricing: &Pricing) -> Result<Decimal, CostOverflow> {
    let uncached =
        usage.prompt_tokens.saturating_sub(usage.cached_prompt_tokens).saturating_sub(usage.cache_creation_tokens);
    let parts = [
        (uncached, pricing.input),
        (usage.cached_prompt_tokens, pricing.cached_input.unwrap_or(pricing.input)),
        (usage.cache_creation_tokens, pricing.cache_write.unwrap_or(pricing.input)),
        (usage.completion_tokens, pricing.output),
    ];
    let mut total = Decimal::ZERO;
    for (count, price) in parts {
        let part = Decimal::from(count).checked_mul(price).ok_or(CostOverflow)?;
        total = total.checked_add(part).ok_or(CostOverflow)?;
    }
    Ok(total.checked_div(Decimal::from(1_000_000u32)).ok_or(CostOverflow)?.normalize())
}

/// `images` at `unit` USD each.
pub fn image_cost(images: u64, unit: Decimal) -> Result<Decimal, CostOverflow> {
    Decimal::from(images).checked_mul(unit).map(|cost| cost.normalize()).ok_or(CostOverflow)
}

#[cfg(test)]
#[path = "metering_tests.rs"]
mod tests;
