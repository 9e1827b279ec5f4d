//! External classifiers of guardrails (`moderation`, `webhook`), pure: their settings checked
//! ([`check_settings`]), the request bodies they are sent ([`moderation_request`], [`webhook_request`]) and their
//! answers read into the categories that crossed a threshold ([`flagged_categories`]). The data plane does the IO
//! (`data-plane/src/guardrails/classifiers.rs`); contracts in `docs/guardrails.md`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::guardrail_spec::*;

/// Longest category name a threshold may name, and longest `model` or header value.
const MAX_CATEGORY_CHARS: usize = 128;
const MAX_SETTING_CHARS: usize = 1024;

/// Headers the gateway sets itself, which a webhook's `headers` may not replace.
const RESERVED_HEADERS: &[&str] =
    &["authorization", "content-type", "content-length", "host", "transfer-encoding", "connection", "x-request-id"];

/// Every problem of one classifier's settings, as (field below the detector, message).
pub fn check_settings(detector: &DetectorSpec) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let Some(settings) = detector.classifier() else { return errors };
    let mut fail = |field: &str, message: String| errors.push((field.to_owned(), message));
    let thresholds = settings.thresholds();
    if thresholds.is_empty() || thresholds.len() > MAX_THRESHOLDS {
        fail(
            "thresholds",
            format!("list 1 to {MAX_THRESHOLDS} categories and the score (0 to 1) at or above which each flags"),
        );
    }
    for (category, threshold) in thresholds.iter().take(MAX_THRESHOLDS) {
        if category.trim().is_empty() || category.chars().count() > MAX_CATEGORY_CHARS {
            fail("thresholds", format!("a category name must be 1 to {MAX_CATEGORY_CHARS} characters, not blank"));
        } else if !(threshold.0.is_finite() && (0.0..=1.0).contains(&threshold.0)) {
            fail(&format!("thresholds.{category}"), "must be a score from 0 to 1".to_owned());
        }
    }
    if !(MIN_CLASSIFIER_TIMEOUT_MS..=MAX_CLASSIFIER_TIMEOUT_MS).contains(&settings.timeout_ms()) {
        fail(
            "timeout_ms",
            format!("must be from {MIN_CLASSIFIER_TIMEOUT_MS} to {MAX_CLASSIFIER_TIMEOUT_MS} milliseconds"),
        );
    }
    match detector {
        DetectorSpec::Moderation(spec) => {
            if let Err(message) = crate::config::validate_name(&spec.backend) {
                fail("backend", message);
            }
            if let Some(model) = &spec.model
                && (model.trim().is_empty() || model.chars().count() > MAX_SETTING_CHARS)
            {
                fail("model", format!("must be 1 to {MAX_SETTING_CHARS} characters when given"));
            }
        }
        DetectorSpec::Webhook(spec) => {
            match url::Url::parse(&spec.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                    if !url.username().is_empty() || url.password().is_some() {
                        fail("url", "must not carry credentials; use secret_ref".to_owned());
                    }
                }
                Ok(_) => fail("url", "must be an http or https URL with a host".to_owned()),
                Err(error) => fail("url", format!("is not a URL: {error}")),
            }
            if spec.headers.len() > MAX_WEBHOOK_HEADERS {
                fail("headers", format!("at most {MAX_WEBHOOK_HEADERS} headers"));
            }
            for (name, value) in &spec.headers {
                let valid_name =
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid_name {
                    fail("headers", format!("{name:?} is not a valid HTTP header name"));
                } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    fail(
                        &format!("headers.{name}"),
                        "is set by the gateway (use secret_ref for an Authorization secret)".to_owned(),
                    );
                } else if value.chars().count() > MAX_SETTING_CHARS
                    || !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
                {
                    fail(
                        &format!("headers.{name}"),
                        format!("must be at most {MAX_SETTING_CHARS} visible ASCII characters"),
                    );
                }
            }
            if let Some(reference) = &spec.secret_ref {
                let well_formed = reference.strip_prefix("env:").is_some_and(|name| {
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                if !well_formed {
                    fail("secret_ref", format!("{reference:?} is not a reference of the form env:NAME"));
                }
            }
        }
        _ => {}
    }
    errors
}

/// The body of a `/moderations` call: every text of one side, in order.
pub fn moderation_request(spec: &ModerationSpec, texts: &[&str]) -> Value {
    let mut body = json!({"input": texts});
    if let Some(model) = &spec.model {
        body["model"] = json!(model);
    }
    body
}

/// The body of a webhook call (the contract in `docs/guardrails.md`).
pub fn webhook_request(guardrail: &str, side: Side, texts: &[&str]) -> Value {
    json!({"input": texts, "side": side.as_str(), "guardrail": guardrail})
}

/// An answer that does not have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the classifier's answer is not in the expected shape: {0}")]
pub struct UnreadableAnswer(pub String);

/// The categories of `answer` whose score reached their threshold, sorted by name. Scores are read from a
/// moderation answer's `results[*].category_scores` (the highest over the inputs) or a webhook answer's
/// `categories`; categories without a threshold are ignored, and so is a classifier's own `flagged` (the
/// governance team's thresholds decide).
pub fn flagged_categories(detector: &DetectorSpec, answer: &Value) -> Result<Vec<String>, UnreadableAnswer> {
    let Some(settings) = detector.classifier() else { return Ok(Vec::new()) };
    let mut scores: BTreeMap<String, f64> = BTreeMap::new();
    let mut read = |categories: &serde_json::Map<String, Value>| {
        for (category, score) in categories {
            if let Some(score) = score.as_f64() {
                let best = scores.entry(category.clone()).or_insert(f64::NEG_INFINITY);
                *best = best.max(score);
            }
        }
    };
    match detector {
        DetectorSpec::Moderation(_) => {
            let results = answer
                .get("results")
                .and_then(Value::as_array)
                .ok_or_else(|| UnreadableAnswer("no `results` array".to_owned()))?;
            for result in results {
                let categories = result
                    .get("category_scores")
                    .and_then(Value::as_object)
                    .ok_or_else(|| UnreadableAnswer("a result without `category_scores`".to_owned()))?;
                read(categories);
            }
        }
        DetectorSpec::Webhook(_) => {
            let categories = answer
                .get("categories")
                .and_then(Value::as_object)
                .ok_or_else(|| UnreadableAnswer("no `categories` object".to_owned()))?;
            read(categories);
        }
        _ => {}
    }
    Ok(settings
        .thresholds()
        .iter()
        .filter(|(category, threshold)| scores.get(category.as_str()).is_some_and(|score| *score >= threshold.0))
        .map(|(category, _)| category.clone())
        .collect())
}

#[cfg(test)]
#[path = "guardrail_classifier_tests.rs"]
mod tests;
