//! What Converse answers and ConverseStream events share once in OpenAI's shape: finish reasons, usage, completion
//! ids and error bodies. Below both `bedrock` (whole answers) and `bedrock_stream` (event frames), so neither imports
//! the other's internals.

use serde_json::{Value, json};

/// An OpenAI finish reason for Converse's `stopReason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// Converse's `usage` in OpenAI's shape (see the module documentation).
pub fn usage(usage: &Value) -> Value {
    let field = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or_default();
    let (input, output) = (field("inputTokens"), field("outputTokens"));
    let (cache_read, cache_write) = (field("cacheReadInputTokens"), field("cacheWriteInputTokens"));
    let prompt = input.saturating_add(cache_read).saturating_add(cache_write);
    json!({"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt.saturating_add(output),
           "prompt_tokens_details": {"cached_tokens": cache_read},
           "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write})
}

/// A chat completion id for answers that carry none.
pub fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// An OpenAI error body for a Bedrock error named `kind` (its exception type, e.g. `throttlingException`, when
/// known) with `message`.
pub fn openai_error_of(kind: &str, message: &str) -> String {
    let kind = kind.split(':').next().unwrap_or(kind);
    let kind = if kind.is_empty() { "bedrock_error" } else { kind };
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": kind}}).to_string()
}
