//! The one CEL environment both planes compile policies against (documented in `docs/cel.md`).
//!
//! `cel` resolves variables, overloads and types only when a program runs, so a typo such as `request.modle`
//! or `request.prompt_tokens > '0'` would only surface as a runtime error on some request. Compiling an
//! expression here bounds it (`cel_limits`), then type-checks it against the declarations of `cel_decls`
//! (`cel_check`), refusing undeclared names, unknown functions and ill-typed calls with their line and column.

use std::fmt;

use cel::Program;
use cel::common::ast::{Expr, IdedExpr};

use crate::cel_check::{self, Type};
use crate::cel_decls::{CelError, ExpressionScope, Reads};
use crate::cel_limits;
use crate::cel_native::{self, Native};

/// Facts about the request that make an expression false whatever else it reads, found in its top-level `&&`
/// chain. They let routing skip evaluating a policy that cannot match, without changing any result: in CEL
/// `false && error` is false, so a conjunct known false decides the chain even where another one would fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guards {
    /// `has(request.metadata.K)`: false when K is absent.
    pub metadata_present: Vec<String>,
    /// `request.metadata.K == "v"` (either side): false when K holds anything but the string v (equality never
    /// fails between types). An absent K makes it an error, not false, so absence decides nothing.
    pub metadata_equals: Vec<(String, String)>,
}

impl Guards {
    /// Whether the expression can be anything but false for `metadata` (and so must be evaluated).
    pub fn admit(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.metadata_present.iter().all(|k| metadata.contains_key(k))
            && self.metadata_equals.iter().all(|(k, v)| match metadata.get(k) {
                None => true,
                Some(value) => value.as_str() == Some(v.as_str()),
            })
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
    /// The estimated evaluation cost (`cel_limits::MAX_COST` at most).
    cost: u64,
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

    pub fn cost(&self) -> u64 {
        self.cost
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

/// Compile `source` for `scope`: bounded, parsed, name- and type-checked, costed.
pub fn compile(source: &str, scope: ExpressionScope) -> Result<CompiledExpression, CelError> {
    if source.trim().is_empty() {
        return Err(CelError { message: "expression is empty".to_owned(), line: 1, column: 1 });
    }
    let at_start = |error: cel_limits::LimitError| CelError { message: error.to_string(), line: 1, column: 1 };
    cel_limits::check_source(source).map_err(at_start)?;
    let program = Program::compile(source).map_err(|errors| {
        let first = errors.errors.first();
        CelError {
            message: first.map_or_else(|| errors.to_string(), |e| e.msg.clone()),
            line: first.map_or(1, |e| usize::try_from(e.pos.0).unwrap_or(1).max(1)),
            column: first.map_or(1, |e| usize::try_from(e.pos.1).unwrap_or(1).max(1)),
        }
    })?;
    cel_limits::check_depth(program.expression()).map_err(at_start)?;
    let checked = cel_check::check(&program, source, scope)?;
    if !matches!(checked.ty, Type::Bool | Type::Dyn) {
        return Err(CelError {
            message: format!("the expression must be a boolean, but it is a {}", checked.ty),
            line: 1,
            column: 1,
        });
    }
    let mut guards = Guards::default();
    collect_guards(program.expression(), &mut guards);
    let native = cel_native::translate(program.expression());
    Ok(CompiledExpression {
        source: source.to_owned(),
        program,
        reads: checked.reads,
        guards,
        native,
        cost: checked.cost,
    })
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
        // Absent, an equality is an error (which fails closed), not false: it must be evaluated.
        let g = guards("request.metadata.t == 'a'");
        assert!(g.admit(&metadata(serde_json::json!({}))));
    }

    #[test]
    fn records_what_it_reads() {
        let e = compile("request.prompt_tokens > 10", ExpressionScope::Request).unwrap();
        assert_eq!(e.reads(), Reads { prompt_tokens: true, headers: false, metadata: false });
    }
}
