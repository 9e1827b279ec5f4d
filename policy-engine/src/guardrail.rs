//! Guardrails, pure: [`GuardrailSet::compile`] once per config version (each guardrail's CEL `when`, its detectors
//! as one `RegexSet` plus an Aho-Corasick automaton per term list), [`GuardrailSet::applicable`] per request, and
//! the scanning a data plane runs over prompts and answers: [`GuardrailSet::scan`] finds, [`GuardrailSet::release`]
//! counts and redacts up to a point (the whole text, or what a stream may release). Semantics in
//! `docs/guardrails.md`.

use std::cell::OnceCell;
use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use cel::{Context, Value};
use chrono::{DateTime, Utc};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Serialize;

use crate::cel_decls::{ExpressionScope, Reads};
use crate::cel_env::{self, CompiledExpression};
use crate::cel_native::Facts;
use crate::config::ConfigSet;
use crate::facts::{KeyFacts, RequestFacts};
use crate::guardrail_detectors::{self as builtin, BuiltinPattern, Check};
/// Which side a scan is for (declared with the spec, which the classifiers share).
pub use crate::guardrail_spec::Side;
use crate::guardrail_spec::*;
use crate::routing::{self, CompileError};

/// A detector list that does not compile, located by detector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DetectorError {
    /// `detectors[i]` or `detectors[i].<field>`.
    pub field: String,
    pub message: String,
}

struct Pattern {
    detector: usize,
    regex: Regex,
    check: Option<Check>,
}

struct TermList {
    detector: usize,
    automaton: AhoCorasick,
}

/// One guardrail's detectors, compiled.
pub struct Scanner {
    /// Every pattern of the guardrail, so one pass says which ones are worth locating.
    set: RegexSet,
    patterns: Vec<Pattern>,
    terms: Vec<TermList>,
    categories: Vec<String>,
}

fn builtin_patterns(detector: &DetectorSpec) -> &'static [BuiltinPattern] {
    match detector {
        DetectorSpec::Email => builtin::EMAIL,
        DetectorSpec::Phone => builtin::PHONE,
        DetectorSpec::PaymentCard => builtin::PAYMENT_CARD,
        DetectorSpec::Iban => builtin::IBAN,
        DetectorSpec::UsSsn => builtin::US_SSN,
        DetectorSpec::IpAddress => builtin::IP_ADDRESS,
        DetectorSpec::Credential => builtin::CREDENTIAL,
        DetectorSpec::Regex { .. }
        | DetectorSpec::Terms { .. }
        | DetectorSpec::Moderation(_)
        | DetectorSpec::Webhook(_) => &[],
    }
}

fn bounded_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_DFA_SIZE_LIMIT).build()
}

impl Scanner {
    /// Compile `detectors`, checking every bound before anything is compiled. Every error is reported.
    pub fn compile(detectors: &[DetectorSpec]) -> Result<Scanner, Vec<DetectorError>> {
        let mut errors = Vec::new();
        let mut fail = |field: String, message: String| errors.push(DetectorError { field, message });
        if detectors.is_empty() {
            fail("detectors".to_owned(), "list at least one detector".to_owned());
        }
        if detectors.len() > MAX_DETECTORS {
            fail("detectors".to_owned(), format!("at most {MAX_DETECTORS} detectors"));
        }
        let mut sources: Vec<String> = Vec::new();
        let mut patterns = Vec::new();
        let mut terms = Vec::new();
        for (i, detector) in detectors.iter().enumerate().take(MAX_DETECTORS) {
            let at = |field: &str| {
                if field.is_empty() { format!("detectors[{i}]") } else { format!("detectors[{i}].{field}") }
            };
            for builtin in builtin_patterns(detector) {
                match bounded_regex(builtin.pattern) {
                    Ok(regex) => {
                        sources.push(builtin.pattern.to_owned());
                        patterns.push(Pattern { detector: i, regex, check: builtin.check });
                    }
                    Err(error) => fail(at(""), format!("built-in pattern does not compile: {error}")),
                }
            }
            match detector {
                DetectorSpec::Regex { name, pattern } => {
                    if let Err(message) = crate::config::validate_name(name) {
                        fail(at("name"), message);
                    }
                    if pattern.is_empty() || pattern.chars().count() > MAX_PATTERN_CHARS {
                        fail(at("pattern"), format!("must be 1 to {MAX_PATTERN_CHARS} characters"));
                        continue;
                    }
                    match bounded_regex(pattern) {
                        Ok(regex) if regex.is_match("") => {
                            fail(at("pattern"), "must not match the empty string".to_owned());
                        }
                        Ok(regex) => {
                            sources.push(pattern.clone());
                            patterns.push(Pattern { detector: i, regex, check: None });
                        }
                        Err(error) => fail(at("pattern"), format!("does not compile: {error}")),
                    }
                }
                DetectorSpec::Terms { name, terms: list, case_sensitive } => {
                    if let Err(message) = crate::config::validate_name(name) {
                        fail(at("name"), message);
                    }
                    let total: usize = list.iter().map(|t| t.chars().count()).sum();
                    if list.is_empty() || list.len() > MAX_TERMS {
                        fail(at("terms"), format!("list 1 to {MAX_TERMS} terms"));
                        continue;
                    }
                    if total > MAX_TERMS_TOTAL_CHARS {
                        fail(at("terms"), format!("at most {MAX_TERMS_TOTAL_CHARS} characters in all"));
                        continue;
                    }
                    if let Some(j) = list.iter().position(|t| t.trim().is_empty() || t.chars().count() > MAX_TERM_CHARS)
                    {
                        fail(
                            at(&format!("terms[{j}]")),
                            format!("must be 1 to {MAX_TERM_CHARS} characters, not blank"),
                        );
                        continue;
                    }
                    match AhoCorasickBuilder::new()
                        .match_kind(MatchKind::LeftmostLongest)
                        .ascii_case_insensitive(!case_sensitive)
                        .build(list)
                    {
                        Ok(automaton) => terms.push(TermList { detector: i, automaton }),
                        Err(error) => fail(at("terms"), format!("do not compile: {error}")),
                    }
                }
                DetectorSpec::Moderation(_) | DetectorSpec::Webhook(_) => {
                    for (field, message) in crate::guardrail_classifier::check_settings(detector) {
                        fail(at(&field), message);
                    }
                }
                _ => {}
            }
        }
        let set = RegexSetBuilder::new(&sources)
            .size_limit(REGEX_SIZE_LIMIT * MAX_DETECTORS)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT * 4)
            .build();
        let set = match set {
            Ok(set) => Some(set),
            Err(error) => {
                fail("detectors".to_owned(), format!("the detectors together exceed the compiled size limit: {error}"));
                None
            }
        };
        match set {
            Some(set) if errors.is_empty() => Ok(Scanner {
                set,
                patterns,
                terms,
                categories: detectors.iter().map(|d| d.category().to_owned()).collect(),
            }),
            _ => Err(errors),
        }
    }

    /// Every finding of `text`, by byte range and detector (possibly overlapping), in no particular order.
    fn find(&self, text: &str, guardrail: usize, out: &mut Vec<Finding>) {
        if !self.patterns.is_empty() {
            for index in self.set.matches(text).iter() {
                let pattern = &self.patterns[index];
                for found in pattern.regex.find_iter(text) {
                    if pattern.check.is_none_or(|check| check(found.as_str())) {
                        out.push(Finding {
                            start: found.start(),
                            end: found.end(),
                            guardrail,
                            detector: pattern.detector,
                        });
                    }
                }
            }
        }
        for list in &self.terms {
            for found in list.automaton.find_iter(text) {
                // Whole words only: a term inside a longer word is not that term.
                let before = text[..found.start()].chars().next_back();
                let after = text[found.end()..].chars().next();
                if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
                    continue;
                }
                out.push(Finding { start: found.start(), end: found.end(), guardrail, detector: list.detector });
            }
        }
    }
}

/// One match: a byte range of the scanned text, the guardrail (its position in the set) and its detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub guardrail: usize,
    pub detector: usize,
}

/// A guardrail whose `block` matched: what the error names (never the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub guardrail: String,
    pub category: String,
    pub side: Side,
}

/// Matches counted per (side, guardrail, detector) over a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    counts: BTreeMap<(Side, usize, usize), u32>,
    /// External classifiers' verdicts: a category that crossed its threshold, or a failure and what it did.
    classified: BTreeMap<(Side, usize, usize, Verdict), u32>,
}

/// What one external classifier said about one side of a request, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// This category's score reached its threshold.
    Flagged(String),
    /// The classifier failed (error, timeout, unreadable answer); `on_error` said what happened next.
    Failed(OnError),
}

impl Tally {
    fn add(&mut self, side: Side, finding: &Finding) {
        let count = self.counts.entry((side, finding.guardrail, finding.detector)).or_default();
        *count = count.saturating_add(1);
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.classified.is_empty()
    }

    /// Count an external classifier's verdict on one side.
    pub fn classified(&mut self, side: Side, classifier: &ClassifierRef<'_>, verdict: Verdict) {
        let count = self.classified.entry((side, classifier.guardrail, classifier.detector, verdict)).or_default();
        *count = count.saturating_add(1);
    }

    /// Add another tally's counts (a stream's, to the request's).
    pub fn merge(&mut self, other: &Tally) {
        for (key, count) in &other.counts {
            let total = self.counts.entry(*key).or_default();
            *total = total.saturating_add(*count);
        }
        for (key, count) in &other.classified {
            let total = self.classified.entry(key.clone()).or_default();
            *total = total.saturating_add(*count);
        }
    }
}

/// One guardrail outcome as recorded: names and counts, never content. `detector` is the category (a built-in
/// detector's type, a custom detector's name, or the category an external classifier flagged; the classifier's
/// type, `moderation` or `webhook`, when it failed); `action` the guardrail's, or `fail_open` / `fail_closed` for a
/// classifier that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub guardrail: String,
    pub detector: String,
    pub action: &'static str,
    pub side: Side,
    pub count: u32,
}

/// A guardrail whose `when` failed to evaluate for a request: the request is refused (guardrails fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guardrail '{guardrail}' could not be evaluated for this request: {error}")]
pub struct GuardrailError {
    pub guardrail: String,
    pub error: String,
}

pub struct CompiledGuardrail {
    pub name: String,
    pub side: GuardrailSide,
    pub action: GuardrailAction,
    pub stream_window_chars: u32,
    when: CompiledExpression,
    scanner: Scanner,
    /// The external classifiers among the detectors, by detector position.
    classifiers: Vec<(usize, DetectorSpec)>,
}

/// One external classifier of an applied guardrail: what the data plane calls.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierRef<'a> {
    /// The guardrail's position in the set, and the detector's in the guardrail.
    pub guardrail: usize,
    pub detector: usize,
    pub guardrail_name: &'a str,
    pub action: GuardrailAction,
    pub spec: &'a DetectorSpec,
}

/// The guardrails of one config version, compiled: enabled ones only, `block` first, then `audit`, then `redact`
/// (so audits and blocks see the text before any redaction), by name within an action.
#[derive(Default)]
pub struct GuardrailSet {
    guardrails: Vec<CompiledGuardrail>,
    reads: Reads,
}

fn action_rank(action: GuardrailAction) -> u8 {
    match action {
        GuardrailAction::Block => 0,
        GuardrailAction::Audit => 1,
        GuardrailAction::Redact => 2,
    }
}

/// The guardrails that apply to one request (positions in the set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    indices: Vec<usize>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

impl GuardrailSet {
    /// Compile every enabled guardrail. Every error is reported, not only the first; detector errors become
    /// [`CompileError`]s only through [`crate::validate::guardrail`], which runs first on both planes.
    pub fn compile(config: &ConfigSet) -> Result<GuardrailSet, Vec<CompileError>> {
        let mut sorted: Vec<&GuardrailSpec> = config.guardrails.values().filter(|g| g.enabled).collect();
        sorted.sort_by(|a, b| action_rank(a.action).cmp(&action_rank(b.action)).then_with(|| a.name.cmp(&b.name)));
        let mut errors = Vec::new();
        let mut guardrails = Vec::new();
        let mut reads = Reads::default();
        for spec in sorted {
            let when = match cel_env::compile(&spec.when, ExpressionScope::Request) {
                Ok(when) => when,
                Err(error) => {
                    errors.push(CompileError {
                        resource: format!("guardrail/{}", spec.name),
                        field: "when".to_owned(),
                        error,
                    });
                    continue;
                }
            };
            // Detector lists were validated with the spec; one that fails here is left out of an Err already.
            let Ok(scanner) = Scanner::compile(&spec.detectors) else { continue };
            reads = reads.union(when.reads());
            guardrails.push(CompiledGuardrail {
                name: spec.name.clone(),
                side: spec.side,
                action: spec.action,
                stream_window_chars: spec.stream_window_chars,
                when,
                scanner,
                classifiers: spec
                    .detectors
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.classifier().is_some())
                    .map(|(i, d)| (i, d.clone()))
                    .collect(),
            });
        }
        if errors.is_empty() { Ok(GuardrailSet { guardrails, reads }) } else { Err(errors) }
    }

    /// What the guardrails' `when`s read (so the request's facts carry it).
    pub fn reads(&self) -> Reads {
        self.reads
    }

    pub fn is_empty(&self) -> bool {
        self.guardrails.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&CompiledGuardrail> {
        self.guardrails.get(index)
    }

    /// Every guardrail whose `when` is true for the request. A `when` that fails to evaluate refuses it.
    pub fn applicable(
        &self,
        request: &RequestFacts,
        key: &KeyFacts,
        now: DateTime<Utc>,
    ) -> Result<Applied, GuardrailError> {
        let mut indices = Vec::new();
        if self.guardrails.is_empty() {
            return Ok(Applied { indices });
        }
        let facts = Facts { request, key, candidate: None };
        let interpreter = OnceCell::new();
        let context = || {
            interpreter.get_or_init(|| {
                let mut context = Context::with_env(routing::STDLIB.clone());
                context.add_variable_from_value("request", routing::request_value(request));
                context.add_variable_from_value("key", routing::key_value(key));
                context.add_variable_from_value("now", Value::Timestamp(now.fixed_offset()));
                context
            })
        };
        for (index, guardrail) in self.guardrails.iter().enumerate() {
            match routing::evaluate_bool(&guardrail.when, &facts, context) {
                Ok(true) => indices.push(index),
                Ok(false) => {}
                Err(error) => return Err(GuardrailError { guardrail: guardrail.name.clone(), error }),
            }
        }
        Ok(Applied { indices })
    }

    /// The names of the applied guardrails covering `side` (the dry run shows them).
    pub fn names(&self, applied: &Applied, side: Side) -> Vec<String> {
        self.covering(applied, side).map(|g| g.name.clone()).collect()
    }

    fn covering<'a>(&'a self, applied: &'a Applied, side: Side) -> impl Iterator<Item = &'a CompiledGuardrail> {
        applied.indices.iter().filter_map(move |&i| self.guardrails.get(i)).filter(move |g| match side {
            Side::Prompt => g.side.covers_prompt(),
            Side::Completion => g.side.covers_completion(),
        })
    }

    /// The external classifiers of the applied guardrails covering `side`, in the set's order.
    pub fn classifiers<'a>(&'a self, applied: &'a Applied, side: Side) -> Vec<ClassifierRef<'a>> {
        applied
            .indices
            .iter()
            .filter_map(|&i| Some((i, self.guardrails.get(i)?)))
            .filter(|(_, g)| match side {
                Side::Prompt => g.side.covers_prompt(),
                Side::Completion => g.side.covers_completion(),
            })
            .flat_map(|(i, g)| {
                g.classifiers.iter().map(move |(detector, spec)| ClassifierRef {
                    guardrail: i,
                    detector: *detector,
                    guardrail_name: &g.name,
                    action: g.action,
                    spec,
                })
            })
            .collect()
    }

    /// Whether any applied guardrail covers `side`.
    pub fn covers(&self, applied: &Applied, side: Side) -> bool {
        self.covering(applied, side).next().is_some()
    }

    /// The widest stream window of the applied completion guardrails (0 when none applies).
    pub fn stream_window(&self, applied: &Applied) -> usize {
        self.covering(applied, Side::Completion).map(|g| g.stream_window_chars as usize).max().unwrap_or(0)
    }

    /// Every finding of the applied guardrails covering `side` in `text`, sorted by start (then longest first).
    pub fn scan(&self, applied: &Applied, side: Side, text: &str, out: &mut Vec<Finding>) {
        out.clear();
        for &index in &applied.indices {
            let Some(guardrail) = self.guardrails.get(index) else { continue };
            let covers = match side {
                Side::Prompt => guardrail.side.covers_prompt(),
                Side::Completion => guardrail.side.covers_completion(),
            };
            if covers {
                guardrail.scanner.find(text, index, out);
            }
        }
        out.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    }

    /// The first `block` finding, if any: the text must not go on.
    pub fn blocked(&self, findings: &[Finding], side: Side) -> Option<Blocked> {
        findings.iter().find_map(|f| {
            let guardrail = self.guardrails.get(f.guardrail)?;
            (guardrail.action == GuardrailAction::Block).then(|| Blocked {
                guardrail: guardrail.name.clone(),
                category: guardrail.scanner.categories.get(f.detector).cloned().unwrap_or_default(),
                side,
            })
        })
    }

    /// `text[..upto]` as it may go on: every `redact` finding inside it replaced by `[REDACTED:<category>]`
    /// (overlapping ones merged), every finding inside it counted in `tally`. Findings reaching past `upto` are
    /// left for a later call (a stream's held window); `upto` must not cut one (see [`safe_release_point`]).
    pub fn release(&self, text: &str, findings: &[Finding], upto: usize, side: Side, tally: &mut Tally) -> String {
        let mut out = String::with_capacity(upto);
        let mut copied = 0;
        for finding in findings.iter().filter(|f| f.end <= upto) {
            tally.add(side, finding);
            let Some(guardrail) = self.guardrails.get(finding.guardrail) else { continue };
            if guardrail.action != GuardrailAction::Redact || finding.end <= copied {
                continue;
            }
            if finding.start >= copied {
                out.push_str(&text[copied..finding.start]);
                out.push_str("[REDACTED:");
                out.push_str(guardrail.scanner.categories.get(finding.detector).map_or("", String::as_str));
                out.push(']');
            }
            // Overlapping the previous redaction: extend it.
            copied = finding.end;
        }
        if copied < upto {
            out.push_str(&text[copied..upto]);
        }
        out
    }

    /// The recorded outcomes of a tally, in a stable order.
    pub fn outcomes(&self, tally: &Tally) -> Vec<Outcome> {
        let found = tally.counts.iter().filter_map(|(&(side, guardrail, detector), &count)| {
            let compiled = self.guardrails.get(guardrail)?;
            Some(Outcome {
                guardrail: compiled.name.clone(),
                detector: compiled.scanner.categories.get(detector)?.clone(),
                action: compiled.action.as_str(),
                side,
                count,
            })
        });
        let classified = tally.classified.iter().filter_map(|((side, guardrail, detector, verdict), &count)| {
            let compiled = self.guardrails.get(*guardrail)?;
            let (detector, action) = match verdict {
                Verdict::Flagged(category) => (category.clone(), compiled.action.as_str()),
                Verdict::Failed(on_error) => (compiled.scanner.categories.get(*detector)?.clone(), on_error.as_str()),
            };
            Some(Outcome { guardrail: compiled.name.clone(), detector, action, side: *side, count })
        });
        found.chain(classified).collect()
    }
}

/// How much of `text` a stream may release now: everything but the last `window` characters, moved back to the
/// start of any finding it would cut (a match still growing into the window is held whole).
pub fn safe_release_point(text: &str, findings: &[Finding], window: usize) -> usize {
    let chars = text.chars().count();
    let mut point =
        if chars <= window { 0 } else { text.char_indices().nth(chars - window).map_or(text.len(), |(i, _)| i) };
    // Findings are sorted by start: walking back over them settles every overlap.
    for finding in findings.iter().rev() {
        if finding.start < point && point < finding.end {
            point = finding.start;
        }
    }
    point
}

#[cfg(test)]
#[path = "guardrail_tests.rs"]
mod tests;
