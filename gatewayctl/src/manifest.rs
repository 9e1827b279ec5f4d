//! Reading configuration files: every `*.yaml`/`*.yml` under a directory (or one file), each file a stream of
//! YAML documents separated by `---` lines, each document `kind: <Kind>` and `spec: {...}`, remembered with the
//! file and line it starts at so that errors (ours or the server's) can point there.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::kinds::Kind;

/// Where something is in the files: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One configuration document.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    /// The spec as written.
    pub spec: Value,
    pub location: Location,
    /// The document's text and the line it starts on, to find the line of a field the server names.
    text: String,
    start: usize,
}

impl Resource {
    /// The line of `field` (as the API's `param` names it, e.g. `candidates[1].model`) in the document, or the
    /// document's own line when it cannot be found.
    pub fn locate(&self, field: Option<&str>) -> Location {
        // Walk the path's keys (`pricing.input`, `candidates[1].model`) down the document from `spec:`, each found
        // at or after the line of the one before; stop at the first not found. A block key starts its line (after
        // `- `); a flow key follows `{` or `, `.
        let lines: Vec<&str> = self.text.lines().collect();
        let spec = lines.iter().position(|line| line.starts_with("spec:")).unwrap_or(0);
        let mut at: Option<usize> = None;
        let keys = field.unwrap_or_default().split('.').map(|k| k.split('[').next().unwrap_or(k));
        for key in keys.filter(|k| !k.is_empty()) {
            let from = at.unwrap_or(spec);
            let is_key = |line: &&str| {
                let trimmed = line.trim_start().trim_start_matches("- ");
                trimmed.strip_prefix(key).is_some_and(|rest| rest.starts_with(':'))
                    || [format!("{{{key}:"), format!(", {key}:"), format!("{{ {key}:")]
                        .iter()
                        .any(|p| line.contains(p.as_str()))
            };
            match lines.iter().skip(from).position(is_key) {
                Some(offset) => at = Some(from + offset),
                None => break,
            }
        }
        match at {
            Some(offset) => Location { file: self.location.file.clone(), line: self.start + offset },
            None => self.location.clone(),
        }
    }
}

/// One policy test case, with where it is written.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub case: Value,
    pub location: Location,
}

/// Everything read from the files.
#[derive(Debug, Default)]
pub struct Manifest {
    pub resources: Vec<Resource>,
    pub tests: Vec<TestCase>,
}

/// A file that cannot be read or is not a valid set of documents; each message names `file:line`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ManifestError(pub Vec<String>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    kind: String,
    #[serde(default)]
    spec: Value,
}

impl Manifest {
    /// Read `paths` (files or directories, walked in name order).
    pub fn load(paths: &[PathBuf]) -> Result<Manifest, ManifestError> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            collect_files(path, &mut files, &mut errors);
        }
        let mut manifest = Manifest::default();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => manifest.read_file(&file, &text, &mut errors),
                Err(error) => errors.push(format!("{}: {error}", file.display())),
            }
        }
        let mut seen: BTreeMap<(Kind, &str), &Location> = BTreeMap::new();
        for resource in &manifest.resources {
            if let Some(first) = seen.insert((resource.kind, &resource.name), &resource.location) {
                errors.push(format!(
                    "{}: {} {:?} is defined twice (first at {first})",
                    resource.location,
                    resource.kind.document_name(),
                    resource.name
                ));
            }
        }
        if errors.is_empty() { Ok(manifest) } else { Err(ManifestError(errors)) }
    }

    fn read_file(&mut self, file: &Path, text: &str, errors: &mut Vec<String>) {
        for (start, document) in split_documents(text) {
            let at = |line: usize| Location { file: file.to_owned(), line };
            let envelope: Envelope = match serde_norway::from_str(&document) {
                Ok(envelope) => envelope,
                Err(error) => {
                    let line = error.location().map_or(start, |l| start + l.line() - 1);
                    errors.push(format!("{}: {error}", at(line)));
                    continue;
                }
            };
            let location = at(start + first_content_line(&document));
            if envelope.kind == "PolicyTest" {
                self.read_tests(envelope.spec, &document, &location, errors);
                continue;
            }
            let Some(kind) = Kind::from_document_name(&envelope.kind) else {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.document_name()).collect();
                errors.push(format!(
                    "{location}: unknown kind {:?}; one of {}, PolicyTest",
                    envelope.kind,
                    known.join(", ")
                ));
                continue;
            };
            let Some(name) = envelope.spec.get("name").and_then(Value::as_str).map(str::to_owned) else {
                errors.push(format!("{location}: a {} needs `spec.name`", kind.document_name()));
                continue;
            };
            self.resources.push(Resource { kind, name, spec: envelope.spec, location, text: document, start });
        }
    }

    fn read_tests(&mut self, spec: Value, document: &str, location: &Location, errors: &mut Vec<String>) {
        let Some(cases) = spec.get("cases").and_then(Value::as_array) else {
            errors.push(format!("{location}: a PolicyTest needs `spec.cases`, a list of cases"));
            return;
        };
        // Each case is located at its `- name:` line, in order.
        let mut case_lines =
            document.lines().enumerate().filter(|(_, l)| l.trim_start().starts_with("- name:")).map(|(i, _)| i);
        for case in cases {
            let line = case_lines.next().map_or(location.line, |i| location.line - first_content_line(document) + i);
            self.tests.push(TestCase { case: case.clone(), location: Location { file: location.file.clone(), line } });
        }
    }
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    if path.is_file() {
        files.push(path.to_owned());
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => return errors.push(format!("{}: {error}", path.display())),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if path.is_dir() || yaml {
            collect_files(&path, files, errors);
        }
    }
}

/// The documents of a file with the (1-based) line each starts on; documents of only comments and blank lines are
/// dropped. A document separator is a line starting with `---`.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            documents.push((start, std::mem::take(&mut current)));
            start = index + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    documents.push((start, current));
    documents.retain(|(_, d)| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    documents
}

/// The 0-based offset of the first line that is neither blank nor a comment.
fn first_content_line(document: &str) -> usize {
    document.lines().position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn load(text: &str) -> Result<Manifest, ManifestError> {
        let dir = std::env::temp_dir().join(format!("gatewayctl-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.yaml", text.len()));
        std::fs::write(&file, text).unwrap();
        Manifest::load(&[file])
    }

    #[test]
    fn documents_are_located_at_their_first_line() {
        let text =
            "# header\nkind: Model\nspec:\n  name: a\n---\n\n# c\nkind: Alias\nspec:\n  name: b\n  strategy: x\n";
        let manifest = load(text).unwrap();
        assert_eq!(manifest.resources[0].location.line, 2);
        assert_eq!(manifest.resources[1].location.line, 8);
        assert_eq!(manifest.resources[1].locate(Some("strategy")).line, 11);
        assert_eq!(manifest.resources[1].locate(Some("candidates[0].model")).line, 8);
        let backend = load("kind: Backend\nspec:\n  name: b\n  kind: openai\n").unwrap();
        assert_eq!(backend.resources[0].locate(Some("kind")).line, 4);
        let model = load(
            "kind: Model\nspec:\n  name: m\n  capabilities: {chat: true}\n  pricing: {input: \"-1\", output: \"1\"}\n",
        )
        .unwrap();
        assert_eq!(model.resources[0].locate(Some("pricing.output")).line, 5);
        assert_eq!(model.resources[0].locate(Some("name")).line, 3);
    }

    #[test]
    fn yaml_errors_name_the_file_line() {
        let text = "kind: Model\nspec:\n  name: a\n---\nkind: Alias\nspec:\n  name: [b\n";
        let error = load(text).unwrap_err().to_string();
        assert!(error.contains(".yaml:7") || error.contains(".yaml:8"), "{error}");
    }

    #[test]
    fn unknown_kinds_and_duplicates_are_refused() {
        let error = load("kind: Gadget\nspec: {name: a}\n").unwrap_err().to_string();
        assert!(error.contains(":1: unknown kind \"Gadget\""), "{error}");
        let error = load("kind: Model\nspec: {name: a}\n---\nkind: Model\nspec: {name: a}\n").unwrap_err().to_string();
        assert!(error.contains(":4: Model \"a\" is defined twice (first at"), "{error}");
    }
}
