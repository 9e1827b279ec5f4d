//! `policy test`: routing unit tests written as YAML cases, run with the policy engine the data plane uses
//! (`ConfigSet` → `routing::Router`) against the files, or against a live control plane through
//! `POST /admin/v1/evaluate` (the same engine, on the stored configuration).
//!
//! A case: a request (the shape `/admin/v1/evaluate` takes), an optional key (`name`, `team`, `tags`, and
//! `allowed_aliases`, which the data plane checks before routing), an optional `now`, and what is expected: the
//! `outcome` (`route` by default, `deny`, `unknown_model`, `no_eligible_candidate`, `policy_error`,
//! `key_forbidden`) and any of `policy`, `alias`, `model`, `backend` (of the first candidate, the one tried first),
//! `candidates` (every candidate's model, in order), `constraints`, `message` (a substring of a denial's).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use policy_engine::facts::{KeyFacts, RequestFacts};
use policy_engine::routing::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::{AdminClient, ClientError};
use crate::manifest::TestCase;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: String,
}

/// The request, as `/admin/v1/evaluate` takes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Request {
    model: String,
    #[serde(default = "chat")]
    endpoint: String,
    #[serde(default)]
    stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    images: bool,
    #[serde(default)]
    json_output: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_quality: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_tokens: Option<u64>,
}

fn chat() -> String {
    "chat.completions".to_owned()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    #[serde(default)]
    name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Empty: any alias or model.
    #[serde(default)]
    allowed_aliases: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    candidates: Option<Vec<String>>,
    #[serde(default)]
    constraints: Option<Vec<String>>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: Request,
    #[serde(default)]
    key: Option<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    now: Option<DateTime<Utc>>,
    expect: Expect,
}

/// What routing decided, reduced to what cases can expect.
#[derive(Debug, Clone, Default, PartialEq)]
struct Got {
    outcome: String,
    policy: Option<String>,
    alias: Option<String>,
    candidates: Vec<(String, String)>,
    constraints: Vec<String>,
    message: Option<String>,
}

impl Got {
    /// From a `Decision` as JSON (the engine's serialisation, locally and from `/evaluate` alike).
    fn from_decision(decision: &Value) -> Got {
        let text = |name: &str| decision.get(name).and_then(Value::as_str).map(str::to_owned);
        let list =
            |name: &str| -> Vec<Value> { decision.get(name).and_then(Value::as_array).cloned().unwrap_or_default() };
        Got {
            outcome: text("outcome").unwrap_or_default(),
            policy: text("policy"),
            alias: text("alias"),
            candidates: list("candidates")
                .iter()
                .map(|c| {
                    let field = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
                    (field("model"), field("backend"))
                })
                .collect(),
            constraints: list("constraints").iter().filter_map(|c| c.as_str().map(str::to_owned)).collect(),
            message: text("message").or_else(|| text("error")),
        }
    }

    fn summary(&self) -> String {
        let mut out = format!("outcome {}", self.outcome);
        if let Some(policy) = &self.policy {
            let _ = write!(out, ", policy {policy}");
        }
        if let Some(alias) = &self.alias {
            let _ = write!(out, ", alias {alias}");
        }
        if !self.candidates.is_empty() {
            let list: Vec<String> = self.candidates.iter().map(|(m, b)| format!("{m}@{b}")).collect();
            let _ = write!(out, ", candidates [{}]", list.join(", "));
        }
        if !self.constraints.is_empty() {
            let _ = write!(out, ", constraints [{}]", self.constraints.join(", "));
        }
        if let Some(message) = &self.message {
            let _ = write!(out, ", message {message:?}");
        }
        out
    }
}

/// Where cases are evaluated.
pub enum Engine<'a> {
    Local(Box<Router>),
    Live(&'a AdminClient),
}

/// The result of a run.
pub struct Report {
    pub passed: usize,
    pub failures: Vec<Failure>,
}

/// A case whose expectations did not hold.
#[derive(Debug, Serialize)]
pub struct Failure {
    pub case: String,
    pub location: String,
    /// Each expectation that did not hold: `expected X, got Y`.
    pub mismatches: Vec<String>,
    /// What routing decided, in one line.
    pub got: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FAIL {} ({}): {}\n     got: {}", self.case, self.location, self.mismatches.join("; "), self.got)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

pub async fn run(engine: &Engine<'_>, cases: &[crate::manifest::TestCase]) -> Result<Report, TestError> {
    let mut report = Report { passed: 0, failures: Vec::new() };
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for TestCase { case, location } in cases {
        match serde_path_to_error::deserialize::<_, Case>(case.clone()) {
            Ok(case) => parsed.push((case, location.clone())),
            Err(error) => errors.push(format!("{location}: policy test case: {}: {}", error.path(), error.inner())),
        }
    }
    if !errors.is_empty() {
        return Err(TestError::Invalid(errors.join("\n")));
    }
    for (case, location) in parsed {
        let got = evaluate(engine, &case).await?;
        let mismatches = compare(&case.expect, &got);
        if mismatches.is_empty() {
            report.passed += 1;
        } else {
            report.failures.push(Failure {
                case: case.name,
                location: location.to_string(),
                mismatches,
                got: got.summary(),
            });
        }
    }
    Ok(report)
}

async fn evaluate(engine: &Engine<'_>, case: &Case) -> Result<Got, TestError> {
    let key = case.key.clone().unwrap_or_default();
    // The data plane refuses a model outside the key's allowed aliases (403) before it routes.
    if !key.allowed_aliases.is_empty() && !key.allowed_aliases.contains(&case.request.model) {
        return Ok(Got { outcome: "key_forbidden".to_owned(), ..Got::default() });
    }
    let facts = KeyFacts { id: String::new(), name: key.name, team: key.team, tags: key.tags };
    let decision = match engine {
        Engine::Local(router) => {
            let request = &case.request;
            let prompt_tokens = request.prompt_tokens.unwrap_or_else(|| {
                let texts = request.messages.iter().map(|m| m.content.as_str()).chain(request.prompt.as_deref());
                policy_engine::tokens::chat_prompt(texts)
            });
            let request = RequestFacts {
                model: request.model.clone(),
                endpoint: request.endpoint.clone(),
                stream: request.stream,
                prompt_tokens,
                max_tokens: request.max_tokens,
                tools: request.tools.clone(),
                images: request.images,
                json_output: request.json_output,
                image_size: request.image_size.clone(),
                image_quality: request.image_quality.clone(),
                metadata: request.metadata.clone(),
                headers: request.headers.clone(),
            };
            let decision = router.route(&request, &facts, case.now.unwrap_or_else(Utc::now), None);
            serde_json::to_value(decision).map_err(|e| TestError::Invalid(e.to_string()))?
        }
        Engine::Live(client) => {
            let mut body = json!({"request": case.request, "key": facts});
            if let Some(now) = case.now {
                body["now"] = json!(now.to_rfc3339());
            }
            let answer = client.post("/evaluate", &body).await?.body;
            answer.get("decision").cloned().unwrap_or(Value::Null)
        }
    };
    Ok(Got::from_decision(&decision))
}

fn compare(expect: &Expect, got: &Got) -> Vec<String> {
    let mut mismatches = Vec::new();
    let mut check = |what: &str, expected: &str, actual: Option<&str>| {
        if actual != Some(expected) {
            mismatches.push(format!("expected {what} {expected}, got {}", actual.unwrap_or("none")));
        }
    };
    check("outcome", expect.outcome.as_deref().unwrap_or("route"), Some(&got.outcome));
    if let Some(policy) = &expect.policy {
        check("policy", policy, got.policy.as_deref());
    }
    if let Some(alias) = &expect.alias {
        check("alias", alias, got.alias.as_deref());
    }
    let first = got.candidates.first();
    if let Some(model) = &expect.model {
        check("model", model, first.map(|(m, _)| m.as_str()));
    }
    if let Some(backend) = &expect.backend {
        check("backend", backend, first.map(|(_, b)| b.as_str()));
    }
    if let Some(candidates) = &expect.candidates {
        let models: Vec<&str> = got.candidates.iter().map(|(m, _)| m.as_str()).collect();
        if models != *candidates {
            mismatches.push(format!("expected candidates [{}], got [{}]", candidates.join(", "), models.join(", ")));
        }
    }
    if let Some(constraints) = &expect.constraints
        && *constraints != got.constraints
    {
        mismatches.push(format!(
            "expected constraints [{}], got [{}]",
            constraints.join(", "),
            got.constraints.join(", ")
        ));
    }
    if let Some(message) = &expect.message
        && !got.message.as_deref().is_some_and(|m| m.contains(message.as_str()))
    {
        mismatches.push(format!("expected a message containing {message:?}, got {:?}", got.message));
    }
    mismatches
}
