//! The one CEL environment both planes compile policies against (documented in `docs/cel.md`).
//!
//! `cel` resolves variables only when a program runs, so a typo such as `request.modle` would only
//! surface as a runtime "no such key" on some request. We walk the parsed AST at compile time instead and
//! refuse any identifier or field the environment does not declare, with its line and column.

use std::fmt;

use cel::Program;
use cel::common::ast::{Expr, IdedExpr};

use crate::cel_native::{self, Native};

/// Where an expression is used, which decides the variables it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpressionScope {
    /// A policy's `when`: the request and the key.
    Request,
    /// A constraint's `require`: also the candidate's `backend` and `model`.
    Candidate,
}

/// A declared top-level variable and the fields it has. `None` fields means a map of arbitrary keys.
struct Variable {
    name: &'static str,
    fields: Option<&'static [Field]>,
    candidate_only: bool,
}

struct Field {
    name: &'static str,
    /// Whether the field is a map whose keys the author chooses (`request.metadata.task`).
    open_map: bool,
}

const fn field(name: &'static str) -> Field {
    Field { name, open_map: false }
}

const fn map_field(name: &'static str) -> Field {
    Field { name, open_map: true }
}

const VARIABLES: &[Variable] = &[
    Variable {
        name: "request",
        fields: Some(&[
            field("model"),
            field("endpoint"),
            field("stream"),
            field("prompt_tokens"),
            field("max_tokens"),
            field("tools"),
            map_field("metadata"),
            map_field("headers"),
        ]),
        candidate_only: false,
    },
    Variable {
        name: "key",
        fields: Some(&[field("id"), field("name"), field("team"), field("tags")]),
        candidate_only: false,
    },
    Variable { name: "now", fields: None, candidate_only: false },
    Variable {
        name: "backend",
        fields: Some(&[field("name"), field("kind"), field("region"), field("tags")]),
        candidate_only: true,
    },
    Variable {
        name: "model",
        fields: Some(&[
            field("name"),
            field("upstream_model"),
            field("price_input"),
            field("price_output"),
            field("context_window"),
        ]),
        candidate_only: true,
    },
];

/// A CEL expression that failed to compile or reads something the environment does not declare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CelError {
    pub message: String,
    /// 1-based line and column of the offending token.
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for CelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at line {}, column {})", self.message, self.line, self.column)
    }
}

/// Which parts of the context an expression reads, so the data plane can skip building what no policy needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub prompt_tokens: bool,
    pub headers: bool,
    pub metadata: bool,
}

impl Reads {
    pub fn union(self, other: Reads) -> Reads {
        Reads {
            prompt_tokens: self.prompt_tokens || other.prompt_tokens,
            headers: self.headers || other.headers,
            metadata: self.metadata || other.metadata,
        }
    }
}

/// Facts about the request without which an expression cannot be true, found in its top-level `&&` chain.
/// They let routing skip evaluating a policy that cannot match, without changing any result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guards {
    /// `has(request.metadata.K)`: K must be present.
    pub metadata_present: Vec<String>,
    /// `request.metadata.K == "v"` (either side): K must be the string v. Any other value is false or an error,
    /// and an error does not match either.
    pub metadata_equals: Vec<(String, String)>,
}

impl Guards {
    /// Whether `metadata` can satisfy every guard.
    pub fn admit(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.metadata_present.iter().all(|k| metadata.contains_key(k))
            && self
                .metadata_equals
                .iter()
                .all(|(k, v)| metadata.get(k).and_then(serde_json::Value::as_str) == Some(v.as_str()))
    }
}

/// A compiled, checked expression. Cheap to evaluate many times.
pub struct CompiledExpression {
    source: String,
    program: Program,
    reads: Reads,
    guards: Guards,
    /// The same expression in the natively evaluated subset, when all of it is in that subset.
    native: Option<Native>,
}

impl fmt::Debug for CompiledExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledExpression").field("source", &self.source).finish_non_exhaustive()
    }
}

impl CompiledExpression {
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn reads(&self) -> Reads {
        self.reads
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    pub(crate) fn native(&self) -> Option<&Native> {
        self.native.as_ref()
    }

    /// Whether the whole expression is evaluated natively (no interpreter, no CEL values) when it can be.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }
}

/// The metadata key of `request.metadata.K` (or `has(request.metadata.K)` when `test`).
fn metadata_key(node: &IdedExpr, test: bool) -> Option<&str> {
    let Expr::Select(select) = &node.expr else { return None };
    if select.test != test {
        return None;
    }
    let Expr::Select(metadata) = &select.operand.expr else { return None };
    let Expr::Ident(root) = &metadata.operand.expr else { return None };
    (root == "request" && metadata.field == "metadata" && !metadata.test).then_some(select.field.as_str())
}

fn string_literal(node: &IdedExpr) -> Option<String> {
    match &node.expr {
        Expr::Literal(cel::common::ast::LiteralValue::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn collect_guards(node: &IdedExpr, guards: &mut Guards) {
    let Expr::Call(call) = &node.expr else {
        if let Some(key) = metadata_key(node, true) {
            guards.metadata_present.push(key.to_owned());
        }
        return;
    };
    match (call.func_name.as_str(), call.args.as_slice()) {
        (cel::common::ast::operators::LOGICAL_AND, [left, right]) => {
            collect_guards(left, guards);
            collect_guards(right, guards);
        }
        (cel::common::ast::operators::EQUALS, [left, right]) => {
            let pair = metadata_key(left, false)
                .zip(string_literal(right))
                .or_else(|| metadata_key(right, false).zip(string_literal(left)));
            if let Some((key, value)) = pair {
                guards.metadata_equals.push((key.to_owned(), value));
            }
        }
        _ => {}
    }
}

/// Compile `source` for `scope`, refusing syntax errors and undeclared variables or fields.
pub fn compile(source: &str, scope: ExpressionScope) -> Result<CompiledExpression, CelError> {
    if source.trim().is_empty() {
        return Err(CelError { message: "expression is empty".to_owned(), line: 1, column: 1 });
    }
    let program = Program::compile(source).map_err(|errors| {
        let first = errors.errors.first();
        CelError {
            message: first.map_or_else(|| errors.to_string(), |e| e.msg.clone()),
            line: first.map_or(1, |e| usize::try_from(e.pos.0).unwrap_or(1).max(1)),
            column: first.map_or(1, |e| usize::try_from(e.pos.1).unwrap_or(1).max(1)),
        }
    })?;
    let mut checker = Checker { scope, source, program: &program, bound: Vec::new(), reads: Reads::default() };
    checker.check(program.expression())?;
    let reads = checker.reads;
    let mut guards = Guards::default();
    collect_guards(program.expression(), &mut guards);
    let native = cel_native::translate(program.expression());
    Ok(CompiledExpression { source: source.to_owned(), program, reads, guards, native })
}

struct Checker<'a> {
    scope: ExpressionScope,
    source: &'a str,
    program: &'a Program,
    /// Comprehension variables in scope (`x` in `request.tools.exists(x, x == "search")`).
    bound: Vec<String>,
    reads: Reads,
}

impl Checker<'_> {
    /// An error at node `id`, moved `shift` characters right (a field's name starts one after its dot).
    fn error_at(&self, id: u64, shift: usize, message: String) -> CelError {
        let offset = self.program.source_info().offset_for(id).map_or(0, |(start, _)| start as usize + shift);
        let (line, column) = line_and_column(self.source, offset);
        CelError { message, line, column }
    }

    fn check(&mut self, node: &IdedExpr) -> Result<(), CelError> {
        match &node.expr {
            Expr::Ident(name) => self.check_path(node.id, node.id, &[name.as_str()]),
            Expr::Select(select) => {
                // A chain of field selections rooted at an identifier is a variable path; check it whole.
                if let Some((path, root_id, first_field_id)) = select_path(node) {
                    return self.check_path(root_id, first_field_id, &path);
                }
                self.check(&select.operand)
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.check(target)?;
                }
                call.args.iter().try_for_each(|arg| self.check(arg))
            }
            Expr::Comprehension(comprehension) => {
                self.check(&comprehension.iter_range)?;
                self.check(&comprehension.accu_init)?;
                let mut added = vec![comprehension.iter_var.clone(), comprehension.accu_var.clone()];
                added.extend(comprehension.iter_var2.clone());
                let depth = self.bound.len();
                self.bound.extend(added);
                let result = self
                    .check(&comprehension.loop_cond)
                    .and_then(|()| self.check(&comprehension.loop_step))
                    .and_then(|()| self.check(&comprehension.result));
                self.bound.truncate(depth);
                result
            }
            Expr::List(list) => list.elements.iter().try_for_each(|e| self.check(e)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::MapEntry(e) => self.check(&e.key).and_then(|()| self.check(&e.value)),
                cel::common::ast::EntryExpr::StructField(f) => self.check(&f.value),
            }),
            Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
                cel::common::ast::EntryExpr::MapEntry(e) => self.check(&e.key).and_then(|()| self.check(&e.value)),
                cel::common::ast::EntryExpr::StructField(f) => self.check(&f.value),
            }),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    /// Check `root.field...`; `root_id` and `field_id` locate the root identifier and the first selection.
    fn check_path(&mut self, root_id: u64, field_id: u64, path: &[&str]) -> Result<(), CelError> {
        let Some((root, rest)) = path.split_first() else { return Ok(()) };
        if self.bound.iter().any(|b| b == root) {
            return Ok(());
        }
        let Some(variable) = VARIABLES.iter().find(|v| v.name == *root) else {
            return Err(self.error_at(root_id, 0, format!("undeclared variable '{root}'; {}", self.declared())));
        };
        if variable.candidate_only && self.scope == ExpressionScope::Request {
            return Err(self.error_at(
                root_id,
                0,
                format!("'{root}' is only available in a constraint's `require`, not in `when`"),
            ));
        }
        let (Some(fields), Some(first)) = (variable.fields, rest.first()) else { return Ok(()) };
        let Some(field) = fields.iter().find(|f| f.name == *first) else {
            let known: Vec<_> = fields.iter().map(|f| f.name).collect();
            return Err(self.error_at(
                field_id,
                1,
                format!("'{root}' has no field '{first}'; its fields are {}", known.join(", ")),
            ));
        };
        if !field.open_map && rest.len() > 1 {
            return Err(self.error_at(field_id, 1, format!("'{root}.{first}' has no fields")));
        }
        match (variable.name, field.name) {
            ("request", "prompt_tokens") => self.reads.prompt_tokens = true,
            ("request", "headers") => self.reads.headers = true,
            ("request", "metadata") => self.reads.metadata = true,
            _ => {}
        }
        Ok(())
    }

    fn declared(&self) -> String {
        let names: Vec<_> = VARIABLES
            .iter()
            .filter(|v| self.scope == ExpressionScope::Candidate || !v.candidate_only)
            .map(|v| v.name)
            .collect();
        format!("declared variables are {}", names.join(", "))
    }
}

/// `a.b.c` as `["a", "b", "c"]` with the ids of `a` and of the `.b` selection, or `None` when the chain is
/// not rooted at an identifier.
fn select_path(node: &IdedExpr) -> Option<(Vec<&str>, u64, u64)> {
    let mut segments = Vec::new();
    let mut current = node;
    let mut first_field_id = node.id;
    loop {
        match &current.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some((segments, current.id, first_field_id));
            }
            Expr::Select(select) => {
                segments.push(select.field.as_str());
                first_field_id = current.id;
                current = &select.operand;
            }
            _ => return None,
        }
    }
}

fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &str, scope: ExpressionScope, expected: Result<(), &str>) {
        let actual: Result<(), String> = compile(source, scope).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(actual, expected.map_err(str::to_owned), "{source}");
    }

    #[test]
    fn accepts_the_declared_environment() {
        use ExpressionScope::*;
        check("request.prompt_tokens > 2000 && request.metadata.sensitivity == 'low'", Request, Ok(()));
        check("request.tools.exists(t, t == 'search')", Request, Ok(()));
        check("has(request.metadata.task) && key.team in ['a', 'b']", Request, Ok(()));
        check("request.headers['x-tenant'] == 'acme'", Request, Ok(()));
        check("backend.region == 'eu' && model.price_input < 5.0", Candidate, Ok(()));
        check("[1, 2].map(x, x * 2).size() == 2", Request, Ok(()));
        check("now > timestamp('2020-01-01T00:00:00Z')", Request, Ok(()));
    }

    #[test]
    fn refuses_unknown_names_with_their_position() {
        use ExpressionScope::*;
        check(
            "request.modle == 'x'",
            Request,
            Err(
                "'request' has no field 'modle'; its fields are model, endpoint, stream, prompt_tokens, max_tokens, tools, metadata, headers (at line 1, column 9)",
            ),
        );
        check(
            "true &&\n  reqest.model == 'x'",
            Request,
            Err("undeclared variable 'reqest'; declared variables are request, key, now (at line 2, column 3)"),
        );
        check(
            "backend.region == 'eu'",
            Request,
            Err("'backend' is only available in a constraint's `require`, not in `when` (at line 1, column 1)"),
        );
        check("request.model.x == 1", Request, Err("'request.model' has no fields (at line 1, column 9)"));
    }

    #[test]
    fn refuses_syntax_errors_with_their_position() {
        let error = compile("request.model == ", ExpressionScope::Request).map(|_| ()).unwrap_err();
        assert_eq!((error.line, error.column), (1, 18), "{error}");
        assert!(compile("  ", ExpressionScope::Request).is_err());
    }

    #[test]
    fn finds_guards_only_in_the_top_level_conjunction() {
        let guards = |src: &str| compile(src, ExpressionScope::Request).unwrap().guards().clone();
        assert_eq!(
            guards("has(request.metadata.tenant) && request.metadata.tier == 'gold' && request.prompt_tokens > 5"),
            Guards { metadata_present: vec!["tenant".into()], metadata_equals: vec![("tier".into(), "gold".into())] }
        );
        assert_eq!(guards("'eu' == request.metadata.region").metadata_equals, [("region".into(), "eu".into())]);
        assert_eq!(guards("has(request.metadata.a) || request.metadata.b == 'x'"), Guards::default());
        assert_eq!(guards("!(request.metadata.b == 'x')"), Guards::default());
        let g = guards("has(request.metadata.t) && request.metadata.t == 'a'");
        let metadata = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(g.admit(&metadata(serde_json::json!({"t": "a"}))));
        assert!(!g.admit(&metadata(serde_json::json!({"t": "b"}))));
        assert!(!g.admit(&metadata(serde_json::json!({"t": 1}))));
        assert!(!g.admit(&metadata(serde_json::json!({}))));
    }

    #[test]
    fn records_what_it_reads() {
        let e = compile("request.prompt_tokens > 10", ExpressionScope::Request).unwrap();
        assert_eq!(e.reads(), Reads { prompt_tokens: true, headers: false, metadata: false });
    }
}
