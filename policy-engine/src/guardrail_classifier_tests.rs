use serde_json::json;

use super::*;
use crate::base_url::BaseUrlPolicy;
use crate::config::ConfigSet;
use crate::secret_ref::SecretEnvPolicy;

fn detector(value: Value) -> DetectorSpec {
    serde_json::from_value(value).unwrap()
}

fn moderation(thresholds: Value) -> DetectorSpec {
    detector(json!({"type": "moderation", "backend": "openai", "thresholds": thresholds, "timeout_ms": 500,
        "on_error": "fail_closed"}))
}

#[test]
fn moderation_scores_flag_at_or_above_their_threshold_and_unknown_categories_are_ignored() {
    let spec = moderation(json!({"violence": 0.5, "hate": 0.9}));
    let answer = json!({"results": [
        {"flagged": true, "category_scores": {"violence": 0.2, "hate": 0.95, "sexual": 0.99}},
        {"flagged": false, "category_scores": {"violence": 0.5}},
    ]});
    assert_eq!(flagged_categories(&spec, &answer).unwrap(), vec!["hate", "violence"]);
    let below = json!({"results": [{"flagged": true, "category_scores": {"violence": 0.49, "self-harm": 1.0}}]});
    assert_eq!(flagged_categories(&spec, &below).unwrap(), Vec::<String>::new());
    assert!(flagged_categories(&spec, &json!({"id": "x"})).is_err());
    assert!(flagged_categories(&spec, &json!({"results": [{"flagged": true}]})).is_err());
}

#[test]
fn webhook_categories_decide_not_its_flag() {
    let spec = detector(json!({"type": "webhook", "url": "https://classifier.example/check",
        "thresholds": {"pii": 0.7}, "timeout_ms": 100, "on_error": "fail_open"}));
    assert_eq!(flagged_categories(&spec, &json!({"flagged": false, "categories": {"pii": 0.7}})).unwrap(), vec!["pii"]);
    assert!(flagged_categories(&spec, &json!({"flagged": true, "categories": {"other": 1}})).unwrap().is_empty());
    assert!(flagged_categories(&spec, &json!({"flagged": true})).is_err());
}

#[test]
fn request_bodies_follow_the_documented_contracts() {
    let DetectorSpec::Moderation(spec) =
        detector(json!({"type": "moderation", "backend": "b", "model": "omni-moderation-latest",
            "thresholds": {"hate": 0.5}, "timeout_ms": 500, "on_error": "fail_open"}))
    else {
        unreachable!()
    };
    assert_eq!(moderation_request(&spec, &["a", "b"]), json!({"input": ["a", "b"], "model": "omni-moderation-latest"}));
    assert_eq!(
        webhook_request("pii", Side::Completion, &["t"]),
        json!({"input": ["t"], "side": "completion", "guardrail": "pii"})
    );
}

fn refusals(value: Value) -> Vec<String> {
    match serde_json::from_value::<GuardrailSpec>(value) {
        Err(error) => vec![error.to_string()],
        Ok(spec) => {
            let mut errors = crate::validate::guardrail(&spec).err().unwrap_or_default();
            let urls = BaseUrlPolicy::from_list("classifier.example").unwrap();
            let secrets = SecretEnvPolicy::default();
            errors.extend(crate::validate::guardrail_destinations(&spec, &urls, &secrets).err().unwrap_or_default());
            errors.iter().map(ToString::to_string).collect()
        }
    }
}

#[test]
fn classifier_settings_are_refused_with_their_place() {
    let guardrail = |action: &str, detector: Value| json!({"name": "g", "action": action, "detectors": [detector]});
    let webhook = |extra: Value| {
        let mut d = json!({"type": "webhook", "url": "https://classifier.example/v1", "thresholds": {"pii": 0.5},
            "timeout_ms": 200, "on_error": "fail_open"});
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        guardrail("block", d)
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5},
            "timeout_ms": 200}),
            ),
            "missing field `on_error`",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5},
            "timeout_ms": 200, "on_error": "maybe"}),
            ),
            "unknown variant `maybe`",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {},
            "timeout_ms": 200, "on_error": "fail_open"}),
            ),
            "detectors[0].thresholds: list 1 to 64",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 1.5},
            "timeout_ms": 200, "on_error": "fail_open"}),
            ),
            "detectors[0].thresholds.hate: must be a score from 0 to 1",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5},
            "timeout_ms": 0, "on_error": "fail_open"}),
            ),
            "detectors[0].timeout_ms: must be from 10 to 30000",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5},
            "timeout_ms": 60000, "on_error": "fail_open"}),
            ),
            "detectors[0].timeout_ms",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "B A D", "thresholds": {"hate": 0.5},
            "timeout_ms": 200, "on_error": "fail_open"}),
            ),
            "detectors[0].backend",
        ),
        (
            guardrail(
                "block",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5},
            "timeout_ms": 200, "on_error": "fail_open", "extra": 1}),
            ),
            "unknown field `extra`",
        ),
        (
            guardrail(
                "redact",
                json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5},
            "timeout_ms": 200, "on_error": "fail_open"}),
            ),
            "detectors[0]: 'moderation' is an external classifier",
        ),
        (webhook(json!({"url": "ftp://classifier.example/"})), "detectors[0].url: must be an http or https URL"),
        (webhook(json!({"url": "https://elsewhere.example/"})), "detectors[0].url:"),
        (webhook(json!({"url": "https://u:p@classifier.example/"})), "detectors[0].url: must not carry credentials"),
        (webhook(json!({"headers": {"Authorization": "Bearer x"}})), "detectors[0].headers.Authorization: is set by"),
        (webhook(json!({"headers": {"bad header": "x"}})), "detectors[0].headers: \"bad header\""),
        (webhook(json!({"headers": {"x-tenant": "a\nb"}})), "detectors[0].headers.x-tenant"),
        (webhook(json!({"secret_ref": "PROVIDER_X"})), "detectors[0].secret_ref: \"PROVIDER_X\" is not a reference"),
        (webhook(json!({"secret_ref": "env:HOME"})), "detectors[0].secret_ref: env:HOME is not a variable"),
        (webhook(json!({"secret_ref": "env:GATEWAY_NODE_TOKEN"})), "detectors[0].secret_ref: env:GATEWAY_NODE_TOKEN"),
    ];
    for (value, expected) in cases {
        let errors = refusals(value.clone());
        assert!(errors.iter().any(|e| e.contains(expected)), "{value}: {errors:?} lacks {expected:?}");
    }
    let accepted = webhook(json!({"headers": {"x-tenant": "acme"}, "secret_ref": "env:PROVIDER_CLASSIFIER"}));
    assert_eq!(refusals(accepted), Vec::<String>::new());
}

#[test]
fn a_moderation_backend_must_exist_and_speak_openai() {
    let mut config = ConfigSet::default();
    let spec: GuardrailSpec = serde_json::from_value(json!({"name": "g", "action": "block", "detectors": [
        {"type": "moderation", "backend": "mod", "thresholds": {"hate": 0.5}, "timeout_ms": 200,
         "on_error": "fail_open"}]}))
    .unwrap();
    config.guardrails.insert(spec.name.clone(), spec);
    let messages = |config: &ConfigSet| config.check_integrity().iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(messages(&config), vec!["guardrail/g: detectors[0].backend: backend \"mod\" does not exist"]);
    let backend = |kind: &str| {
        serde_json::from_value::<crate::config::BackendSpec>(
            json!({"name": "mod", "kind": kind, "base_url": "https://api.example/v1", "auth": {"type": "none"}}),
        )
        .unwrap()
    };
    config.backends.insert("mod".into(), backend("anthropic"));
    assert!(
        messages(&config)[0].contains("is of kind anthropic; a moderation classifier needs"),
        "{:?}",
        messages(&config)
    );
    config.backends.insert("mod".into(), backend("openai"));
    assert_eq!(messages(&config), Vec::<String>::new());
}
