//! External classifiers of guardrails (`moderation`, `webhook`): every classifier of the applied guardrails covering
//! one side called at once over that side's texts, each within its own `timeout_ms`, through the upstream machinery
//! ([`crate::providers::upstream::Upstreams::classify`]). Their verdicts go into the request's tally (names and
//! counts only); a category at or above its threshold in a `block` guardrail refuses (`content_blocked`), and a
//! failure refuses only under `on_error: fail_closed` (`guardrail_unavailable`). Contracts in `docs/guardrails.md`.

use std::time::Duration;

use futures_util::future::join_all;
use policy_engine::config::DetectorSpec;
use policy_engine::guardrail::{Blocked, ClassifierRef, Side, Tally, Verdict};
use policy_engine::guardrail_classifier::{flagged_categories, moderation_request, webhook_request};
use policy_engine::guardrail_spec::{GuardrailAction, OnError};

use super::{Guard, blocked_error};
use crate::control::snapshot::CompiledSnapshot;
use crate::openai::error::GatewayError;
use crate::providers::upstream::{ClassifierTarget, Upstreams};

/// One classifier's call: the categories that crossed their thresholds, or why there is no verdict.
async fn call(
    snapshot: &CompiledSnapshot,
    upstreams: &Upstreams,
    classifier: &ClassifierRef<'_>,
    side: Side,
    texts: &[&str],
    request_id: &str,
) -> Result<Vec<String>, String> {
    let Some(settings) = classifier.spec.classifier() else { return Ok(Vec::new()) };
    let timeout = Duration::from_millis(settings.timeout_ms());
    let (target, body) = match classifier.spec {
        DetectorSpec::Moderation(moderation) => {
            // Integrity checks keep the backend in every snapshot that has the guardrail; this is belt and braces.
            let backend = snapshot
                .config
                .backends
                .get(&moderation.backend)
                .ok_or_else(|| format!("backend '{}' is not in this snapshot", moderation.backend))?;
            (ClassifierTarget::Moderation(backend), moderation_request(moderation, texts))
        }
        DetectorSpec::Webhook(webhook) => {
            (ClassifierTarget::Webhook(webhook), webhook_request(classifier.guardrail_name, side, texts))
        }
        _ => return Ok(Vec::new()),
    };
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let answer = upstreams.classify(target, body, request_id, timeout).await.map_err(|e| e.describe())?;
    flagged_categories(classifier.spec, &answer).map_err(|e| e.to_string())
}

impl Guard {
    /// Whether any applied guardrail covering `side` has an external classifier.
    pub fn classifies(&self, side: Side) -> bool {
        !self.set().classifiers(&self.applied, side).is_empty()
    }

    /// Run the external classifiers covering `side` over `texts` (skipped when there is no text), their verdicts
    /// counted in `tally`. `Err` when a `block` guardrail's category flagged or a `fail_closed` classifier failed.
    pub async fn classify(
        &self,
        upstreams: &Upstreams,
        side: Side,
        texts: &[&str],
        request_id: &str,
        tally: &mut Tally,
    ) -> Result<(), GatewayError> {
        let classifiers = self.set().classifiers(&self.applied, side);
        if classifiers.is_empty() || texts.iter().all(|t| t.is_empty()) {
            return Ok(());
        }
        let snapshot = &self.snapshot;
        let verdicts =
            join_all(classifiers.iter().map(|c| call(snapshot, upstreams, c, side, texts, request_id))).await;
        let mut blocked: Option<Blocked> = None;
        let mut unavailable: Option<GatewayError> = None;
        for (classifier, verdict) in classifiers.iter().zip(verdicts) {
            match verdict {
                Ok(categories) => {
                    if classifier.action == GuardrailAction::Block
                        && blocked.is_none()
                        && let Some(category) = categories.first()
                    {
                        blocked = Some(Blocked {
                            guardrail: classifier.guardrail_name.to_owned(),
                            category: category.clone(),
                            side,
                        });
                    }
                    for category in categories {
                        tally.classified(side, classifier, Verdict::Flagged(category));
                    }
                }
                Err(reason) => {
                    let on_error = classifier.spec.classifier().map_or(OnError::FailClosed, |s| s.on_error());
                    tracing::warn!(
                        guardrail = classifier.guardrail_name,
                        detector = classifier.spec.category(),
                        side = side.as_str(),
                        on_error = on_error.as_str(),
                        "guardrail classifier failed: {reason}"
                    );
                    tally.classified(side, classifier, Verdict::Failed(on_error));
                    if on_error == OnError::FailClosed && unavailable.is_none() {
                        unavailable = Some(GatewayError::GuardrailUnavailable {
                            guardrail: classifier.guardrail_name.to_owned(),
                            detector: classifier.spec.category().to_owned(),
                            side: side.as_str(),
                        });
                    }
                }
            }
        }
        match (blocked, unavailable) {
            (Some(blocked), _) => Err(blocked_error(blocked)),
            (None, Some(error)) => Err(error),
            (None, None) => Ok(()),
        }
    }
}
