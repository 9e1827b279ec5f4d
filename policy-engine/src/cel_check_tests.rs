//! Tests of the type checker, the cost estimate and the bounds, against the interpreter they must agree with.

use std::collections::BTreeMap;

use cel::{Context, ExecutionError, Value};
use chrono::Utc;
use proptest::prelude::{ProptestConfig, Strategy, prop, prop_assert, proptest};
use serde_json::json;

use crate::cel_decls::ExpressionScope;
use crate::cel_env;
use crate::config::{BackendSpec, ModelSpec};
use crate::facts::{KeyFacts, RequestFacts};
use crate::routing::{self, CandidateValues};

fn check(source: &str, expected: Result<(), &str>) {
    let actual = cel_env::compile(source, ExpressionScope::Candidate).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(actual, expected.map_err(str::to_owned), "{source}");
}

#[test]
fn refuses_the_typos_that_silently_disabled_policies() {
    check("request.model + 1", Err("no matching overload for '+' applied to (string, int) (at line 1, column 15)"));
    check("request.model", Err("the expression must be a boolean, but it is a string (at line 1, column 1)"));
    check(
        "request.stream == 'yes'",
        Err("no matching overload for '==' applied to (bool, string) (at line 1, column 16)"),
    );
    check(
        "request.prompt_tokens > 'a'",
        Err("no matching overload for '>' applied to (int, string) (at line 1, column 23)"),
    );
    let unknown = cel_env::compile("nosuchfn(request.model)", ExpressionScope::Request).unwrap_err();
    assert!(unknown.message.starts_with("unknown function 'nosuchfn'; the functions are size, "), "{unknown}");
    assert_eq!((unknown.line, unknown.column), (1, 9));
    check(
        "request.model == 'gov-chat' && request.prompt_tokens > '0'",
        Err("no matching overload for '>' applied to (int, string) (at line 1, column 54)"),
    );
}

#[test]
fn accepts_well_typed_policies() {
    for source in [
        "request.prompt_tokens > 2000 && has(request.metadata.sensitivity) && request.metadata.sensitivity == 'low'",
        "request.metadata.task == 'code_generation'",
        "'blocked' in key.tags",
        "key.team == 'search' || key.team == null",
        "request.max_tokens > 100 && request.max_tokens != null",
        "request.tools.exists(t, t.startsWith('search_')) && size(request.tools) < 10",
        "request.tools.all(t, t in ['a', 'b'])",
        "request.tools.exists_one(t, t == 'a')",
        "request.tools.map(t, t + '!').exists(x, x.endsWith('!'))",
        "request.tools.filter(t, t.contains('x')).size() == 0",
        "request.headers['x-tenant'] == 'acme' && request.headers.exists(h, h.startsWith('x-'))",
        "request.metadata.exists(k, k == 'a') && request.metadata.count > 3",
        "backend.region == 'eu' && model.price_input < 5 && model.price_output <= 10.0",
        "model.context_window >= 128000 && backend.kind in ['openai', 'azure_openai']",
        "now > timestamp('2020-01-01T00:00:00Z') && now.getHours('Europe/Paris') < 18",
        "now - timestamp('2020-01-01T00:00:00Z') > duration('24h')",
        "request.model.matches('^gpt-4') && matches(key.name, '-prod$')",
        "type(request.metadata.tier) == string && int(request.metadata.tier) > 2",
        "[1, 2].map(x, x * 2).size() == 2 && {'a': 1}['a'] + 1 == 2",
        "request.prompt_tokens / 2 + request.prompt_tokens % 7 - 1 > -1",
        "double(request.prompt_tokens) * model.price_input / 1000000.0 > 0.01",
        "uint(request.prompt_tokens) > 10u && 10u < request.prompt_tokens",
        "(request.stream ? 'yes' : 'no') == 'yes'",
        "request.metadata.flag",
        "!request.stream && !(key.name == 'x')",
        "string(request.prompt_tokens) + 'x' != '' && bytes('a') + b'b' == b'ab'",
    ] {
        check(source, Ok(()));
    }
}

#[test]
fn refuses_ill_typed_expressions_with_their_position() {
    check("key.tags > 1", Err("no matching overload for '>' applied to (list(string), int) (at line 1, column 10)"));
    check(
        "request.tools.exists(t, t + 1 == 2)",
        Err("no matching overload for '+' applied to (string, int) (at line 1, column 27)"),
    );
    check(
        "request.model.size() == 1u || request.model.foo()",
        Err(
            "unknown function 'foo'; the functions are size, contains, startsWith, endsWith, matches, int, uint, double, string, bytes, bool, timestamp, duration, dyn, type, the timestamp and duration getters (getFullYear, getMonth, getDayOfYear, getDayOfMonth, getDate, getDayOfWeek, getHours, getMinutes, getSeconds, getMilliseconds) and the macros has, all, exists, exists_one, map, filter (at line 1, column 48)",
        ),
    );
    check(
        "contains(request.model, 'a')",
        Err("'contains' is called on a value: write x.contains(...) instead of contains(x, ...) (at line 1, column 9)"),
    );
    check(
        "request.prompt_tokens.contains('a')",
        Err("no matching overload for 'contains' applied to (int, string) (at line 1, column 31)"),
    );
    check(
        "request.model.matches(key.name)",
        Err("the pattern of matches() must be a string literal (at line 1, column 26)"),
    );
    check(
        "request.model.matches('(')",
        Err(
            "invalid matches() pattern: regex parse error:\n    (\n    ^\nerror: unclosed group (at line 1, column 23)",
        ),
    );
    check("request.stream.x", Err("'request.stream' has no fields (at line 1, column 9)"));
    check("request.headers.x.y", Err("cannot select field 'y' of a string (at line 1, column 8)"));
    check(
        "request.prompt_tokens.exists(x, true)",
        Err("cannot iterate over a int; use a list or a map (at line 1, column 29)"),
    );
    check("1 + 1.0 == 2.0", Err("no matching overload for '+' applied to (int, double) (at line 1, column 3)"));
    check(
        "request.model == null",
        Err("no matching overload for '==' applied to (string, null) (at line 1, column 15)"),
    );
    check(
        "x == 1",
        Err("undeclared variable 'x'; declared variables are request, key, now, backend, model (at line 1, column 1)"),
    );
    check(
        "google.protobuf.Int64Value{value: 1} == 1",
        Err("message literals are not supported (at line 1, column 27)"),
    );
}

#[test]
fn bounds_the_cost_of_comprehensions() {
    // A comprehension over the request's tools costs its body times the most tools a request may declare.
    check("request.tools.exists(t, t in ['a', 'b', 'c'])", Ok(()));
    let nested = "request.tools.exists(a, request.tools.exists(b, a == b))";
    let error = cel_env::compile(nested, ExpressionScope::Request).unwrap_err().to_string();
    assert!(error.starts_with("expression may cost up to "), "{error}");
    let triple = "[1,2,3,4,5,6,7,8].all(a, [1,2,3,4,5,6,7,8].all(b, [1,2,3,4,5,6,7,8].all(c, \
                  [1,2,3,4,5,6,7,8].all(d, [1,2,3,4,5,6,7,8].all(e, a + b + c + d + e > 0)))))";
    assert!(cel_env::compile(triple, ExpressionScope::Request).unwrap_err().to_string().contains("may cost"));
    // map() grows its result by one entry per element: iterating over it costs as much as its range.
    let chained = "request.tools.map(t, t).map(t, t).exists(t, t == 'a')";
    let cost = cel_env::compile(chained, ExpressionScope::Request).map_err(|e| e.to_string()).unwrap().cost();
    assert!((3 * 128..crate::cel_limits::MAX_COST).contains(&cost), "{cost}");
}

#[test]
fn refuses_deep_trees_before_the_interpreter_recurses() {
    let deep = format!("{}request.stream{}", "(".repeat(40), ")".repeat(40));
    // Parenthesised groups add no nodes; negations do.
    check(&deep, Ok(()));
    let lists = format!("{}1{}.size() > 0", "[".repeat(33), "]".repeat(33));
    check(&lists, Err("expression nests deeper than 32 levels (at line 1, column 1)"));
    let sum = format!("1{} > 0", " + 1".repeat(40));
    check(&sum, Err("expression nests deeper than 32 levels (at line 1, column 1)"));
}

/// Facts with nothing null: any failure of a well-typed, dyn-free expression is then a checker bug.
fn non_null_facts() -> (RequestFacts, KeyFacts, ModelSpec, BackendSpec) {
    let request = RequestFacts {
        model: "gpt".into(),
        endpoint: "chat.completions".into(),
        stream: true,
        prompt_tokens: 7,
        max_tokens: Some(3),
        tools: vec!["a".into(), "b".into()],
        images: false,
        json_output: false,
        image_size: None,
        image_quality: None,
        metadata: serde_json::Map::new(),
        headers: BTreeMap::from([("x-h".to_owned(), "v".to_owned())]),
    };
    let key = KeyFacts { id: "k".into(), name: "n".into(), team: Some("t".into()), tags: vec!["a".into()] };
    let backend: BackendSpec = serde_json::from_value(json!({"name": "b", "kind": "openai",
        "base_url": "https://x", "region": "eu", "tags": ["x"]}))
    .unwrap();
    let model: ModelSpec = serde_json::from_value(json!({"name": "m", "backend": "b", "upstream_model": "u",
        "capabilities": {"context_window": 8}, "pricing": {"input": "1.5", "output": "2"}}))
    .unwrap();
    (request, key, model, backend)
}

/// Errors a well-typed expression may still meet at run time: they depend on the data, not the types.
fn is_data_error(error: &ExecutionError) -> bool {
    matches!(
        error,
        ExecutionError::NoSuchKey(_)
            | ExecutionError::DivisionByZero(_)
            | ExecutionError::RemainderByZero(_)
            | ExecutionError::Overflow(..)
            | ExecutionError::IndexOutOfBounds(_)
            | ExecutionError::DuplicateKey(_)
            | ExecutionError::FunctionError { .. }
    )
}

/// The types a generated expression is built to have.
#[derive(Clone, Copy)]
enum Want {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    Strings,
    Ints,
}

/// A small deterministic generator (xorshift), so one proptest seed is one expression.
struct Generator(u64);

impl Generator {
    fn pick(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn one<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.pick(options.len())]
    }

    fn among(&mut self, types: &[Want], depth: u32) -> String {
        let want = types[self.pick(types.len())];
        self.expression(want, depth)
    }

    /// An expression of type `want`, at most `depth` operators deep, using every operator, function and macro
    /// of the environment, with numeric types mixed wherever comparisons allow it.
    fn expression(&mut self, want: Want, depth: u32) -> String {
        use Want::*;
        if depth == 0 || self.pick(4) == 0 {
            return self
                .one(match want {
                    Bool => &["request.stream", "true", "false", "has(request.metadata.a)", "has(request.headers.x)"],
                    Int => &["request.prompt_tokens", "request.max_tokens", "model.context_window", "1", "-2", "0"],
                    Uint => &["3u", "0u", "uint(request.prompt_tokens)"],
                    Double => &["model.price_input", "1.5", "0.0", "-2.5"],
                    String => &["request.model", "key.team", "backend.region", "'a'", "''", "request.headers['x-h']"],
                    Bytes => &["b'x'", "bytes('ab')"],
                    Timestamp => &["now", "timestamp('2020-01-01T00:00:00Z')"],
                    Duration => &["duration('1h')", "duration('90s')"],
                    Strings => &["request.tools", "key.tags", "backend.tags", "['a', 'b']", "[]"],
                    Ints => &["[1, 2]", "[]", "[0, -1, 3]"],
                })
                .to_owned();
        }
        let d = depth - 1;
        let numeric = [Int, Uint, Double];
        let any = [Bool, Int, Uint, Double, String, Bytes, Timestamp, Duration, Strings, Ints];
        match (want, self.pick(12)) {
            (Bool, 0) => format!("({} && {})", self.expression(Bool, d), self.expression(Bool, d)),
            (Bool, 1) => format!("({} || {})", self.expression(Bool, d), self.expression(Bool, d)),
            (Bool, 2) => format!("!({})", self.expression(Bool, d)),
            (Bool, 3) => {
                let t = any[self.pick(any.len())];
                let op = self.one(&["==", "!="]);
                format!("({} {op} {})", self.expression(t, d), self.expression(t, d))
            }
            (Bool, 4) => {
                let (a, b) = (numeric[self.pick(3)], numeric[self.pick(3)]);
                let op = self.one(&["<", "<=", ">", ">=", "=="]);
                format!("({} {op} {})", self.expression(a, d), self.expression(b, d))
            }
            (Bool, 5) => {
                let t = [String, Bytes, Bool, Timestamp, Duration][self.pick(5)];
                let op = self.one(&["<", "<=", ">", ">="]);
                format!("({} {op} {})", self.expression(t, d), self.expression(t, d))
            }
            (Bool, 6) => match self.pick(3) {
                0 => format!("({} in {})", self.expression(String, d), self.expression(Strings, d)),
                1 => format!("({} in {})", self.expression(Int, d), self.expression(Ints, d)),
                _ => format!("('a' in {{'a': {}}})", self.expression(Int, d)),
            },
            (Bool, 7) => {
                let method = self.one(&["contains", "startsWith", "endsWith"]);
                format!("{}.{method}({})", self.expression(String, d), self.expression(String, d))
            }
            (Bool, 8) => format!("{}.matches('^a')", self.expression(String, d)),
            (Bool, 9) => {
                let macro_ = self.one(&["exists", "all", "exists_one"]);
                format!("{}.{macro_}(x, x.startsWith({}))", self.expression(Strings, d), self.expression(String, d))
            }
            (Bool, 10) => format!("{}.exists(x, x > {})", self.expression(Ints, d), self.expression(Int, d)),
            (Bool, _) => format!("(type({}) == int)", self.among(&any, d)),
            (Int, 0..=4) => {
                let op = self.one(&["+", "-", "*", "/", "%"]);
                format!("({} {op} {})", self.expression(Int, d), self.expression(Int, d))
            }
            (Int, 5) => format!("-({})", self.expression(Int, d)),
            (Int, 6) => format!("size({})", self.among(&[String, Strings, Bytes], d)),
            (Int, 7) => format!("int({})", self.among(&[Uint, Double, Timestamp, String], d)),
            (Int, 8) => {
                format!("({} ? {} : {})", self.expression(Bool, d), self.expression(Int, d), self.expression(Int, d))
            }
            (Int, 9) => format!("{}[{}]", self.expression(Ints, d), self.expression(Int, d)),
            (Int, 10) => format!("{}.getHours()", self.among(&[Timestamp, Duration], d)),
            (Int, _) => format!("{}.getDayOfWeek('UTC')", self.expression(Timestamp, d)),
            (Uint, 0..=5) => {
                let op = self.one(&["+", "-", "*", "/", "%"]);
                format!("({} {op} {})", self.expression(Uint, d), self.expression(Uint, d))
            }
            (Uint, _) => format!("uint({})", self.among(&[Int, Double, String], d)),
            // No division: NaN compares with nothing, a data error this generator does not tell from a type one.
            (Double, 0..=5) => {
                let op = self.one(&["+", "-", "*"]);
                format!("({} {op} {})", self.expression(Double, d), self.expression(Double, d))
            }
            (Double, 6) => format!("-({})", self.expression(Double, d)),
            (Double, _) => format!("double({})", self.among(&[Int, Uint, String], d)),
            (String, 0..=3) => format!("({} + {})", self.expression(String, d), self.expression(String, d)),
            (String, 4..=6) => format!("string({})", self.among(&any[..8], d)),
            (String, 7..=8) => format!("{}[{}]", self.expression(Strings, d), self.expression(Int, d)),
            (String, _) => {
                format!(
                    "({} ? {} : {})",
                    self.expression(Bool, d),
                    self.expression(String, d),
                    self.expression(String, d)
                )
            }
            (Bytes, _) => format!("({} + {})", self.expression(Bytes, d), self.expression(Bytes, d)),
            (Timestamp, 0..=5) => {
                let op = self.one(&["+", "-"]);
                format!("({} {op} {})", self.expression(Timestamp, d), self.expression(Duration, d))
            }
            (Timestamp, _) => format!("({} + {})", self.expression(Duration, d), self.expression(Timestamp, d)),
            (Duration, 0..=5) => format!("({} - {})", self.expression(Timestamp, d), self.expression(Timestamp, d)),
            (Duration, _) => format!("({} + {})", self.expression(Duration, d), self.expression(Duration, d)),
            (Strings, 0..=3) => format!("({} + {})", self.expression(Strings, d), self.expression(Strings, d)),
            (Strings, 4..=6) => format!("{}.map(x, x + {})", self.expression(Strings, d), self.expression(String, d)),
            (Strings, 7..=9) => {
                format!("{}.filter(x, x != {})", self.expression(Strings, d), self.expression(String, d))
            }
            (Strings, _) => format!("[{}, {}]", self.expression(String, d), self.expression(String, d)),
            (Ints, 0..=5) => format!("{}.map(x, size(x))", self.expression(Strings, d)),
            (Ints, _) => format!("({} + [{}])", self.expression(Ints, d), self.expression(Int, d)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    /// Whatever the checker accepts without `dyn` runs without a type error on non-null facts: only data
    /// errors (a missing key, a division by zero, an overflow, a failed conversion) remain. Expressions are
    /// built to be well typed, so most are accepted; an ill-typed one the checker let through would fail here.
    #[test]
    fn accepted_expressions_never_fail_on_types(seed in 1u64..) {
        let source = Generator(seed).expression(Want::Bool, 4);
        let program = cel::Program::compile(&source).map_err(|e| format!("{source}: {e}")).unwrap();
        let checked = match super::check(&program, &source, ExpressionScope::Candidate) {
            Ok(checked) => checked,
            // Too costly is the only refusal a well-typed expression may get.
            Err(error) => {
                prop_assert!(error.message.contains("may cost"), "{source} refused: {error}");
                return Ok(());
            }
        };
        if checked.uses_dyn {
            return Ok(());
        }
        let (request, key, model, backend) = non_null_facts();
        let mut root = Context::with_env(routing::STDLIB.clone());
        root.add_variable_from_value("request", routing::request_value(&request));
        root.add_variable_from_value("key", routing::key_value(&key));
        root.add_variable_from_value("now", Value::Timestamp(Utc::now().fixed_offset()));
        let scope = routing::candidate_context(&root, &CandidateValues::new(&model, &backend));
        match program.execute(&scope) {
            Ok(_) => {}
            Err(error) => prop_assert!(is_data_error(&error), "{source} is {}, but failed with {error:?}", checked.ty),
        }
    }
}

/// Shapes that nest or repeat without bound, at sizes around and far beyond the limits.
fn hostile_expression() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        ("1 + ", "1 > 0", ""),
        ("(", "true", ")"),
        ("!", "true", ""),
        ("-", "1 < 0", ""),
        ("[", "1", "]"),
        ("{'a': ", "1", "}"),
        ("request.tools.exists(t, ", "true", ")"),
        ("request.metadata.a.", "b == 1", ""),
        ("true && ", "true", ""),
        ("f(", "1", ")"),
        ("'x' + ", "'y' == 'xy'", ""),
        ("request.headers[", "'a'", "] == 'b'"),
    ]);
    (unit, prop::sample::select(vec![1usize, 8, 31, 32, 33, 100, 500, 1500, 5000, 20000]))
        .prop_map(|((open, core, close), n)| format!("{}{core}{}", open.repeat(n), close.repeat(n)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Deep and wide expressions are refused or evaluated, never overflow the stack. Test threads have the same
    /// 2 MiB stack as the planes' async workers.
    #[test]
    fn hostile_expressions_are_refused_or_evaluated(source in hostile_expression()) {
        let (request, key, model, backend) = non_null_facts();
        let mut config = crate::config::ConfigSet::default();
        config.models.insert(model.name.clone(), model);
        config.backends.insert(backend.name.clone(), backend);
        let policy: crate::config::RoutePolicySpec = serde_json::from_value(json!({"name": "p", "priority": 1,
            "when": source, "action": {"type": "deny", "message": "no"}}))
        .unwrap();
        config.route_policies.insert(policy.name.clone(), policy);
        match routing::Router::compile(&config) {
            Ok(router) => {
                let decision = router.route(&request, &key, Utc::now(), None);
                prop_assert!(!matches!(decision, routing::Decision::Route { .. }), "{decision:?}");
            }
            Err(errors) => prop_assert!(errors.iter().all(|e| !e.error.message.is_empty())),
        }
    }
}
