//! What Google's answers and stream events share (`generateContent` and `streamGenerateContent` carry the same
//! candidate, usage and error shapes): finish reasons, blocked prompts, usage, a candidate's parts, ids, errors.
//! [`super::gemini`] (whole answers) and [`super::gemini_stream`] (events) both read them from here.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The id of the `position`th function call of an answer: derived from the call, so the same answer (streamed or
/// not, retried or not) names its calls alike; a `tool` message answering it is matched by id to its call's name.
pub fn call_id(position: usize, name: &str, args: &Value) -> String {
    let digest = Sha256::new().chain_update(position.to_le_bytes()).chain_update(name).chain_update(args.to_string());
    format!("call_{}", &hex::encode(digest.finalize())[..24])
}

/// An OpenAI finish reason for a candidate's `finishReason` (`None`: not finished yet); `calls`: it made function
/// calls.
pub fn finish_reason(reason: &str, calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" | "LANGUAGE" => {
            "content_filter"
        }
        _ if calls => "tool_calls",
        _ => "stop",
    }
}

/// Finish reasons that say the model failed, not that it finished: the answer is not served.
pub fn failed_finish(reason: &str) -> Option<String> {
    match reason {
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" => {
            Some(format!("the model produced a function call it could not complete ({reason})"))
        }
        _ => None,
    }
}

/// `promptFeedback.blockReason`, when the prompt was refused: the error that says so.
pub fn blocked_prompt(answer: &Value) -> Option<String> {
    let reason = answer.pointer("/promptFeedback/blockReason").and_then(Value::as_str)?;
    let has_candidates = answer.get("candidates").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
    (!has_candidates).then(|| format!("the provider's safety filter blocked the prompt ({reason})"))
}

/// `usageMetadata` in OpenAI's shape: thoughts count as output (Google bills them as output tokens), tool-use prompt
/// tokens as input, cached content as `cached_tokens` (already inside `promptTokenCount`, as in OpenAI's usage).
pub fn usage(metadata: &Value) -> Value {
    let field = |name: &str| metadata.get(name).and_then(Value::as_u64).unwrap_or_default();
    let prompt = field("promptTokenCount").saturating_add(field("toolUsePromptTokenCount"));
    let thoughts = field("thoughtsTokenCount");
    let completion = field("candidatesTokenCount").saturating_add(thoughts);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion),
           "prompt_tokens_details": {"cached_tokens": field("cachedContentTokenCount")},
           "completion_tokens_details": {"reasoning_tokens": thoughts}})
}

/// What one candidate's parts say, in OpenAI's terms.
#[derive(Default)]
pub struct Parts {
    pub text: String,
    pub reasoning: String,
    /// Complete OpenAI tool calls (Google sends each call whole).
    pub calls: Vec<Value>,
}

/// The parts of `candidate`; `first_call` numbers its function calls after those already seen.
pub fn read_parts(candidate: &Value, first_call: usize) -> Parts {
    let mut read = Parts::default();
    for part in candidate.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                read.reasoning.push_str(text);
            } else {
                read.text.push_str(text);
            }
        } else if let Some(call) = part.get("functionCall") {
            let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            let id = match call.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => call_id(first_call + read.calls.len(), name, &args),
            };
            read.calls.push(json!({"id": id, "type": "function",
                                   "function": {"name": name, "arguments": args.to_string()}}));
        }
    }
    read
}

/// The completion id of an answer: Google's `responseId` when it sent one.
pub fn completion_id(answer: &Value) -> String {
    match answer.get("responseId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// OpenAI's error `type` for a Google RPC status.
fn error_type(status: &str) -> &'static str {
    match status {
        "UNAUTHENTICATED" => "authentication_error",
        "PERMISSION_DENIED" => "permission_error",
        "NOT_FOUND" => "not_found_error",
        "RESOURCE_EXHAUSTED" => "rate_limit_error",
        "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "UNKNOWN" => "api_error",
        _ => "invalid_request_error",
    }
}

/// Google's error body (`{"error": {"code", "message", "status"}}`, or a list of them, as streams send it) in the
/// OpenAI error shape; other bodies are wrapped as they are.
pub fn openai_error(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let parsed = match parsed {
        Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
        other => other,
    };
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let status = error.and_then(|e| e.get("status")).and_then(Value::as_str).unwrap_or("UNKNOWN");
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or(body);
    json!({"error": {"message": message, "type": error_type(status), "param": null, "code": status}}).to_string()
}
