use chrono::Utc;
use serde_json::json;

use super::*;
use crate::facts::{KeyFacts, RequestFacts};

fn spec(value: serde_json::Value) -> GuardrailSpec {
    serde_json::from_value(value).unwrap()
}

fn set_of(specs: Vec<serde_json::Value>) -> GuardrailSet {
    let mut config = ConfigSet::default();
    for value in specs {
        let spec = spec(value);
        crate::validate::guardrail(&spec).unwrap();
        config.guardrails.insert(spec.name.clone(), spec);
    }
    GuardrailSet::compile(&config).unwrap()
}

fn applied_all(set: &GuardrailSet) -> Applied {
    set.applicable(&RequestFacts::default(), &KeyFacts::default(), Utc::now()).unwrap()
}

/// The text with every finding of one redacting guardrail of `detector` replaced.
fn redacted(detector: serde_json::Value, text: &str) -> String {
    let set = set_of(vec![json!({"name": "g", "action": "redact", "detectors": [detector]})]);
    let applied = applied_all(&set);
    let mut findings = Vec::new();
    set.scan(&applied, Side::Prompt, text, &mut findings);
    set.release(text, &findings, text.len(), Side::Prompt, &mut Tally::default())
}

#[test]
fn built_in_detectors_find_what_they_name_and_leave_the_rest() {
    let cases: &[(serde_json::Value, &str, &str)] = &[
        (json!({"type": "email"}), "mail jane.doe@example.co.uk now", "mail [REDACTED:email] now"),
        (json!({"type": "payment_card"}), "card 4111 1111 1111 1111.", "card [REDACTED:payment_card]."),
        (json!({"type": "payment_card"}), "order 4111 1111 1111 1112", "order 4111 1111 1111 1112"),
        (json!({"type": "iban"}), "to DE89 3704 0044 0532 0130 00 please", "to [REDACTED:iban] please"),
        (json!({"type": "iban"}), "to DE89 3704 0044 0532 0130 01 please", "to DE89 3704 0044 0532 0130 01 please"),
        (json!({"type": "us_ssn"}), "ssn 123-45-6789", "ssn [REDACTED:us_ssn]"),
        (json!({"type": "us_ssn"}), "ssn 666-45-6789", "ssn 666-45-6789"),
        (
            json!({"type": "ip_address"}),
            "host 10.1.2.3 and ::1 or 2001:db8::1",
            "host [REDACTED:ip_address] and ::1 or [REDACTED:ip_address]",
        ),
        (json!({"type": "ip_address"}), "version 1.2.3.999 at 10:30", "version 1.2.3.999 at 10:30"),
        (
            json!({"type": "phone"}),
            "call +44 20 7946 0958 or (415) 555-0132",
            "call [REDACTED:phone] or [REDACTED:phone]",
        ),
        (json!({"type": "credential"}), "key sk-proj-abcdefghijklmnopqrstuvwx end", "key [REDACTED:credential] end"),
        (json!({"type": "credential"}), "AKIAIOSFODNN7EXAMPLE", "[REDACTED:credential]"),
        (json!({"type": "credential"}), "tok ghp_0123456789abcdefghijklmnopqrstuvwxyzAB", "tok [REDACTED:credential]"),
        (json!({"type": "credential"}), "slack xoxb-1234567890-abcdefghij", "slack [REDACTED:credential]"),
        (
            json!({"type": "credential"}),
            "commit 3f786850e387550fdab836ed7e6dc881de23001b",
            "commit 3f786850e387550fdab836ed7e6dc881de23001b",
        ),
        (
            json!({"type": "regex", "name": "ticket", "pattern": "PRJ-[0-9]{4}"}),
            "see PRJ-1234",
            "see [REDACTED:ticket]",
        ),
        (
            json!({"type": "terms", "name": "codename", "terms": ["Bluebird", "night owl"]}),
            "the bluebird and NIGHT OWL, not bluebirds",
            "the [REDACTED:codename] and [REDACTED:codename], not bluebirds",
        ),
        (
            json!({"type": "terms", "name": "codename", "terms": ["Bluebird"], "case_sensitive": true}),
            "bluebird Bluebird",
            "bluebird [REDACTED:codename]",
        ),
    ];
    for (detector, text, expected) in cases {
        assert_eq!(&redacted(detector.clone(), text), expected, "{detector} over {text:?}");
    }
}

#[test]
fn a_block_names_the_guardrail_and_category_and_wins_over_redaction() {
    let set = set_of(vec![
        json!({"name": "a-redact", "action": "redact", "detectors": [{"type": "email"}]}),
        json!({"name": "z-block", "action": "block", "detectors": [{"type": "credential"}]}),
    ]);
    let applied = applied_all(&set);
    let text = "me@example.com AKIAIOSFODNN7EXAMPLE";
    let mut findings = Vec::new();
    set.scan(&applied, Side::Prompt, text, &mut findings);
    let blocked = set.blocked(&findings, Side::Prompt).unwrap();
    assert_eq!((blocked.guardrail.as_str(), blocked.category.as_str()), ("z-block", "credential"));
    assert!(!format!("{blocked:?}").contains("AKIA"));
}

#[test]
fn sides_when_and_disabled_guardrails_select_what_applies() {
    let set = set_of(vec![
        json!({"name": "p", "action": "audit", "side": "prompt", "detectors": [{"type": "email"}]}),
        json!({"name": "c", "action": "audit", "side": "completion", "detectors": [{"type": "email"}]}),
        json!({"name": "team", "action": "audit", "when": "key.team == 'legal'", "detectors": [{"type": "email"}]}),
        json!({"name": "off", "action": "audit", "enabled": false, "detectors": [{"type": "email"}]}),
    ]);
    let applied = applied_all(&set);
    assert_eq!(set.names(&applied, Side::Prompt), vec!["p"]);
    assert_eq!(set.names(&applied, Side::Completion), vec!["c"]);
    let legal = KeyFacts { team: Some("legal".into()), ..KeyFacts::default() };
    let applied = set.applicable(&RequestFacts::default(), &legal, Utc::now()).unwrap();
    assert_eq!(set.names(&applied, Side::Prompt), vec!["p", "team"]);
}

#[test]
fn audits_count_and_outcomes_carry_names_not_content() {
    let set =
        set_of(vec![json!({"name": "pii", "action": "audit", "detectors": [{"type": "email"}, {"type": "us_ssn"}]})]);
    let applied = applied_all(&set);
    let text = "a@b.io c@d.io 123-45-6789";
    let mut findings = Vec::new();
    set.scan(&applied, Side::Prompt, text, &mut findings);
    let mut tally = Tally::default();
    assert_eq!(set.release(text, &findings, text.len(), Side::Prompt, &mut tally), text);
    let outcomes = set.outcomes(&tally);
    let summary: Vec<(&str, &str, u32)> =
        outcomes.iter().map(|o| (o.guardrail.as_str(), o.detector.as_str(), o.count)).collect();
    assert_eq!(summary, vec![("pii", "email", 2), ("pii", "us_ssn", 1)]);
}

#[test]
fn the_release_point_never_cuts_a_finding_and_keeps_the_window() {
    let set = set_of(vec![json!({"name": "g", "action": "redact", "detectors": [{"type": "email"}]})]);
    let applied = applied_all(&set);
    let text = "hello there, write to someone@example.com";
    let mut findings = Vec::new();
    set.scan(&applied, Side::Completion, text, &mut findings);
    let point = safe_release_point(text, &findings, 10);
    assert_eq!(&text[..point], "hello there, write to ");
    assert_eq!(safe_release_point("short", &[], 10), 0);
    assert_eq!(safe_release_point("ééééé", &[], 2), "ééé".len());
}

fn refusals(value: serde_json::Value) -> Vec<String> {
    match serde_json::from_value::<GuardrailSpec>(value) {
        Err(error) => vec![error.to_string()],
        Ok(spec) => {
            crate::validate::guardrail(&spec).err().unwrap_or_default().iter().map(ToString::to_string).collect()
        }
    }
}

#[test]
fn hostile_or_incomplete_detectors_are_refused_with_their_place() {
    let base = |detectors: serde_json::Value| json!({"name": "g", "action": "block", "detectors": detectors});
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (base(json!([])), "detectors: list at least one detector"),
        (base(json!(vec![json!({"type": "email"}); 33])), "at most 32 detectors"),
        (
            base(json!([{"type": "regex", "name": "x", "pattern": "a{1000}{1000}"}])),
            "detectors[0].pattern: does not compile",
        ),
        (base(json!([{"type": "regex", "name": "x", "pattern": "a*"}])), "must not match the empty string"),
        (
            base(json!([{"type": "regex", "name": "x", "pattern": "a".repeat(1025)}])),
            "detectors[0].pattern: must be 1 to 1024",
        ),
        (base(json!([{"type": "terms", "name": "x", "terms": vec!["t"; 1001]}])), "detectors[0].terms: list 1 to 1000"),
        (base(json!([{"type": "terms", "name": "x", "terms": ["ok", " "]}])), "detectors[0].terms[1]"),
        (base(json!([{"type": "moderation", "backend": "openai"}])), "missing field `thresholds`"),
        (
            base(json!([{"type": "webhook", "url": "http://x", "thresholds": {"pii": 0.5}, "timeout_ms": 100}])),
            "missing field `on_error`",
        ),
        (base(json!([{"type": "email", "extra": 1}])), "unknown field"),
        (
            json!({"name": "g", "action": "block", "when": "request.nope", "detectors": [{"type": "email"}]}),
            "when: CEL",
        ),
        (
            json!({"name": "g", "action": "block", "stream_window_chars": 8, "detectors": [{"type": "email"}]}),
            "stream_window_chars",
        ),
    ];
    for (value, expected) in cases {
        let errors = refusals(value.clone());
        assert!(errors.iter().any(|e| e.contains(expected)), "{value}: {errors:?} lacks {expected:?}");
    }
}

#[test]
fn classifier_verdicts_are_outcomes_named_by_category_or_failure() {
    let classifier = json!({"type": "moderation", "backend": "b", "thresholds": {"hate": 0.5}, "timeout_ms": 100,
        "on_error": "fail_open"});
    let set = set_of(vec![
        json!({"name": "mod", "action": "block", "side": "prompt", "detectors": [{"type": "email"}, classifier]}),
        json!({"name": "local", "action": "audit", "detectors": [{"type": "email"}]}),
    ]);
    let applied = applied_all(&set);
    let prompt = set.classifiers(&applied, Side::Prompt);
    assert_eq!(prompt.len(), 1);
    assert_eq!((prompt[0].guardrail_name, prompt[0].detector, prompt[0].action), ("mod", 1, GuardrailAction::Block));
    assert!(set.classifiers(&applied, Side::Completion).is_empty(), "the guardrail covers only the prompt");
    let mut tally = Tally::default();
    tally.classified(Side::Prompt, &prompt[0], Verdict::Flagged("hate".to_owned()));
    tally.classified(Side::Prompt, &prompt[0], Verdict::Failed(OnError::FailOpen));
    tally.classified(Side::Prompt, &prompt[0], Verdict::Failed(OnError::FailOpen));
    let outcomes: Vec<(&str, String, &str, u32)> =
        set.outcomes(&tally).into_iter().map(|o| (o.action, o.detector, o.side.as_str(), o.count)).collect();
    assert_eq!(
        outcomes,
        vec![("block", "hate".to_owned(), "prompt", 1), ("fail_open", "moderation".to_owned(), "prompt", 2)]
    );
}
