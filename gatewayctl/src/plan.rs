//! What `apply` would change: the files' resources against the server's, in canonical form, as creates, updates
//! and (with `--prune`) deletes; and carrying a plan out in dependency order.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::client::{AdminClient, ClientError};
use crate::kinds::{self, Kind};
use crate::manifest::{Location, Manifest, Resource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One resource to write or delete.
#[derive(Debug, Clone)]
pub struct Change {
    pub action: Action,
    pub kind: Kind,
    pub name: String,
    /// The server's resource as shown in a diff (canonical, the secret as its source).
    pub before: Option<Value>,
    /// The files' resource as shown in a diff (a literal secret hidden).
    pub after: Option<Value>,
    /// What is sent (creates and updates).
    pub body: Option<Value>,
    /// The server's revision, sent as `If-Match` so a concurrent edit is not overwritten.
    pub etag: Option<String>,
    /// The document (creates and updates).
    pub source: Option<Resource>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// On the server but not in the files, kept because `--prune` was not given.
    pub unmanaged: Vec<(Kind, String)>,
}

/// Why a plan could not be made or carried out.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The files are wrong (each message starts with `file:line`).
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The server refused a write; `at` is the document (and field, when the server named one).
    #[error("{at}: {kind} {name:?}: {source}")]
    Refused { at: Location, kind: &'static str, name: String, source: Box<ClientError> },
    #[error(transparent)]
    Client(#[from] ClientError),
}

const HIDDEN: &str = "(literal secret, sealed by the control plane)";

/// Compare the files with the server.
pub async fn plan(client: &AdminClient, manifest: &Manifest, prune: bool) -> Result<Plan, PlanError> {
    let mut desired: BTreeMap<(Kind, String), (Value, &Resource)> = BTreeMap::new();
    let mut errors = Vec::new();
    for resource in &manifest.resources {
        match resource.kind.canonical(resource.spec.clone()) {
            Ok(spec) => {
                // The engine's own checks first: every error in the files at once, before anything is written.
                if let Err(invalid) = kinds::check(resource.kind, &spec) {
                    let what = format!("{} {:?}", resource.kind.document_name(), resource.name);
                    errors.extend(invalid.iter().map(|e| format!("{}: {what}: {e}", resource.locate(Some(&e.field)))));
                }
                desired.insert((resource.kind, resource.name.clone()), (spec, resource));
            }
            Err(message) => errors.push(format!(
                "{}: {} {:?}: {message}",
                resource.location,
                resource.kind.document_name(),
                resource.name
            )),
        }
    }
    if !errors.is_empty() {
        return Err(PlanError::Invalid(errors));
    }
    let mut plan = Plan::default();
    for kind in Kind::ALL {
        let mut current: BTreeMap<String, Value> = BTreeMap::new();
        for view in client.list_all(&format!("/{}", kind.collection())).await? {
            if let Some(name) = kinds::name_of(&view) {
                current.insert(name.to_owned(), view);
            }
        }
        for ((_, name), (spec, resource)) in desired.range((kind, String::new())..).take_while(|((k, _), _)| *k == kind)
        {
            let after = shown_desired(spec);
            match current.remove(name) {
                None => plan.changes.push(Change {
                    action: Action::Create,
                    kind,
                    name: name.clone(),
                    before: None,
                    after: Some(after),
                    body: Some(spec.clone()),
                    etag: None,
                    source: Some((*resource).clone()),
                }),
                Some(view) => {
                    let (before, etag) = shown_current(kind, view)?;
                    let after = keep_unchanged_secret(spec, after, &before);
                    if before == after {
                        plan.unchanged += 1;
                    } else {
                        plan.changes.push(Change {
                            action: Action::Update,
                            kind,
                            name: name.clone(),
                            before: Some(before),
                            after: Some(after),
                            body: Some(spec.clone()),
                            etag,
                            source: Some((*resource).clone()),
                        });
                    }
                }
            }
        }
        for (name, view) in current {
            if prune {
                let (before, etag) = shown_current(kind, view)?;
                plan.changes.push(Change {
                    action: Action::Delete,
                    kind,
                    name,
                    before: Some(before),
                    after: None,
                    body: None,
                    etag,
                    source: None,
                });
            } else {
                plan.unmanaged.push((kind, name));
            }
        }
    }
    Ok(plan)
}

/// A server view as a diff shows it, and its revision as an `ETag`.
fn shown_current(kind: Kind, view: Value) -> Result<(Value, Option<String>), PlanError> {
    let revision = view.pointer("/meta/revision").and_then(Value::as_i64).map(|r| format!("\"{r}\""));
    let secret = view.pointer("/meta/secret").cloned();
    let mut shown = kind
        .canonical(kinds::spec_of_view(view))
        .map_err(|e| ClientError::Unexpected(format!("a stored {} does not parse: {e}", kind.document_name())))?;
    if let (Some(secret), Some(object)) = (secret, shown.as_object_mut()) {
        object.insert("secret".to_owned(), secret);
    }
    Ok((shown, revision))
}

/// The files' spec as a diff shows it: a literal secret hidden.
fn shown_desired(spec: &Value) -> Value {
    let mut shown = spec.clone();
    if let Some(secret) = shown.get_mut("secret").and_then(Value::as_object_mut)
        && secret.contains_key("value")
    {
        secret.insert("value".to_owned(), json!(HIDDEN));
    }
    shown
}

/// A backend's secret cannot be read back, so the files' secret counts as unchanged when it cannot differ from the
/// server's: omitted (an update keeps the stored one), or a literal value where the server holds an encrypted one.
/// A reference counts as changed unless the server holds the same reference.
fn keep_unchanged_secret(spec: &Value, mut after: Value, before: &Value) -> Value {
    let stored = before.get("secret");
    let unchanged = match spec.get("secret") {
        None => true,
        Some(written) if written.get("value").is_some() => {
            stored.is_some_and(|s| s.get("encrypted").and_then(Value::as_bool) == Some(true))
        }
        Some(written) => Some(written) == stored,
    };
    if unchanged && let Some(object) = after.as_object_mut() {
        match stored {
            Some(stored) => object.insert("secret".to_owned(), stored.clone()),
            None => object.remove("secret"),
        };
    }
    after
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// A readable per-resource diff.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for change in &self.changes {
            let (sign, verb) = match change.action {
                Action::Create => ('+', "create"),
                Action::Update => ('~', "update"),
                Action::Delete => ('-', "delete"),
            };
            let at = change.source.as_ref().map(|s| format!("  ({})", s.location)).unwrap_or_default();
            let _ = writeln!(out, "{sign} {verb} {} {}{at}", change.kind.document_name(), change.name);
            let before = change.before.as_ref().map(yaml).unwrap_or_default();
            let after = change.after.as_ref().map(yaml).unwrap_or_default();
            if change.action == Action::Delete {
                continue;
            }
            for line in similar::TextDiff::from_lines(&before, &after).iter_all_changes() {
                let mark = match line.tag() {
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                    similar::ChangeTag::Equal => ' ',
                };
                let _ = write!(out, "    {mark} {line}");
            }
        }
        let count = |action| self.changes.iter().filter(|c| c.action == action).count();
        let _ = writeln!(
            out,
            "{} to create, {} to update, {} to delete, {} unchanged",
            count(Action::Create),
            count(Action::Update),
            count(Action::Delete),
            self.unchanged
        );
        if !self.unmanaged.is_empty() {
            let names: Vec<String> = self.unmanaged.iter().map(|(k, n)| format!("{} {n}", k.document_name())).collect();
            let _ = writeln!(out, "not in the files, kept (--prune deletes them): {}", names.join(", "));
        }
        out
    }

    /// The plan as JSON (`--output json`).
    pub fn to_json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|c| {
                json!({"action": c.action, "kind": c.kind.document_name(), "name": c.name,
                       "before": c.before, "after": c.after,
                       "location": c.source.as_ref().map(|s| s.location.to_string())})
            })
            .collect();
        let unmanaged: Vec<Value> =
            self.unmanaged.iter().map(|(k, n)| json!({"kind": k.document_name(), "name": n})).collect();
        json!({"changes": changes, "unchanged": self.unchanged, "unmanaged": unmanaged})
    }

    /// Carry the plan out: creates and updates in dependency order, then deletes in reverse. Stops at the first
    /// refusal (later resources may depend on it). Calls `done` after each write.
    pub async fn apply(&self, client: &AdminClient, mut done: impl FnMut(&Change)) -> Result<(), PlanError> {
        let mut writes: Vec<&Change> = self.changes.iter().filter(|c| c.action != Action::Delete).collect();
        writes.sort_by_key(|c| c.kind);
        let mut deletes: Vec<&Change> = self.changes.iter().filter(|c| c.action == Action::Delete).collect();
        deletes.sort_by_key(|c| std::cmp::Reverse(c.kind));
        for change in writes.into_iter().chain(deletes) {
            let collection = change.kind.collection();
            let path = format!("/{collection}/{}", change.name);
            let body = change.body.clone().unwrap_or(Value::Null);
            let result = match change.action {
                Action::Create => client.post(&format!("/{collection}"), &body).await.map(drop),
                Action::Update => client.put(&path, change.etag.as_deref(), &body).await.map(drop),
                Action::Delete => client.delete(&path, change.etag.as_deref()).await,
            };
            match result {
                Ok(()) => done(change),
                Err(source @ ClientError::Api { .. }) if source.status().is_some_and(|s| s.is_client_error()) => {
                    let param = match &source {
                        ClientError::Api { param, .. } => param.clone(),
                        _ => None,
                    };
                    let at = match &change.source {
                        Some(resource) => resource.locate(param.as_deref()),
                        None => Location { file: "(server)".into(), line: 0 },
                    };
                    return Err(PlanError::Refused {
                        at,
                        kind: change.kind.document_name(),
                        name: change.name.clone(),
                        source: Box::new(source),
                    });
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}

/// A value as YAML text, `name` and `kind` first in every mapping (the rest in name order) so a reader finds them.
pub fn yaml(value: &Value) -> String {
    serde_norway::to_value(value)
        .map(names_first)
        .and_then(|v| serde_norway::to_string(&v))
        .unwrap_or_else(|e| format!("(not representable as YAML: {e})\n"))
}

fn names_first(value: serde_norway::Value) -> serde_norway::Value {
    use serde_norway::Value as Yaml;
    match value {
        Yaml::Mapping(mapping) => {
            let (mut first, rest): (Vec<_>, Vec<_>) =
                mapping.into_iter().partition(|(k, _)| matches!(k.as_str(), Some("kind" | "name")));
            first.sort_by_key(|(k, _)| k.as_str() != Some("name"));
            Yaml::Mapping(first.into_iter().chain(rest).map(|(k, v)| (k, names_first(v))).collect())
        }
        Yaml::Sequence(items) => Yaml::Sequence(items.into_iter().map(names_first).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compare(written: Value, stored: Option<Value>) -> bool {
        let spec = json!({"name": "b", "kind": "openai", "base_url": "https://x.example"});
        let mut desired = spec.clone();
        desired["secret"] = written;
        if desired["secret"].is_null() {
            desired.as_object_mut().map(|o| o.remove("secret"));
        }
        let mut before = spec;
        if let Some(stored) = stored {
            before["secret"] = stored;
        }
        keep_unchanged_secret(&desired, shown_desired(&desired), &before) == before
    }

    #[test]
    fn a_secret_counts_as_changed_only_when_it_can_differ() {
        let sealed = json!({"encrypted": true, "fingerprint": "sha256:0123456789abcdef"});
        let reference = json!({"ref": "env:PROVIDER_A"});
        // Omitted: an update keeps the stored secret, whatever it is.
        assert!(compare(Value::Null, Some(sealed.clone())));
        assert!(compare(Value::Null, Some(reference.clone())));
        assert!(compare(Value::Null, None));
        // A literal against a sealed one: unreadable, so unchanged; against a reference or nothing: changed.
        assert!(compare(json!({"value": "sk-1"}), Some(sealed.clone())));
        assert!(!compare(json!({"value": "sk-1"}), Some(reference.clone())));
        assert!(!compare(json!({"value": "sk-1"}), None));
        // A reference: unchanged only against the same reference.
        assert!(compare(reference.clone(), Some(reference)));
        assert!(!compare(json!({"ref": "env:PROVIDER_B"}), Some(json!({"ref": "env:PROVIDER_A"}))));
        assert!(!compare(json!({"ref": "env:PROVIDER_A"}), Some(sealed)));
    }

    #[test]
    fn a_literal_secret_never_shows_in_a_diff() {
        let shown = shown_desired(&json!({"name": "b", "secret": {"value": "sk-secret"}}));
        assert!(!shown.to_string().contains("sk-secret"));
    }
}
