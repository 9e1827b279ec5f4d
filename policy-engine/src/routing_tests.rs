//! Tests of routing (`routing.rs`).

use serde_json::json;

use super::*;

fn config() -> ConfigSet {
    let bundle: serde_json::Value = serde_json::from_str(include_str!("../../policies/seed/bundle.json")).unwrap();
    let mut config = ConfigSet::default();
    for b in bundle["backends"].as_array().unwrap() {
        let b: BackendSpec = serde_json::from_value(b.clone()).unwrap();
        config.backends.insert(b.name.clone(), b);
    }
    for m in bundle["models"].as_array().unwrap() {
        let m: ModelSpec = serde_json::from_value(m.clone()).unwrap();
        config.models.insert(m.name.clone(), m);
    }
    for a in bundle["aliases"].as_array().unwrap() {
        let a: AliasSpec = serde_json::from_value(a.clone()).unwrap();
        config.aliases.insert(a.name.clone(), a);
    }
    for p in bundle["route_policies"].as_array().unwrap() {
        let p: RoutePolicySpec = serde_json::from_value(p.clone()).unwrap();
        config.route_policies.insert(p.name.clone(), p);
    }
    config
}

/// Guards only skip work: with them (no trace) and without them (trace) every decision is the same.
#[test]
fn guards_never_change_a_decision() {
    let router = Router::compile(&config()).unwrap();
    let metadatas = [
        json!({}),
        json!({"sensitivity": "low"}),
        json!({"sensitivity": "high", "task": "code_generation"}),
        json!({"data_classification": "restricted"}),
        json!({"data_classification": "public", "sensitivity": "low"}),
        json!({"data_classification": 7, "task": 1}),
    ];
    for metadata in metadatas {
        for prompt_tokens in [10, 5000] {
            for tags in [vec![], vec!["blocked".to_owned()]] {
                let request = RequestFacts {
                    model: "gpt-4o".into(),
                    prompt_tokens,
                    metadata: metadata.as_object().unwrap().clone(),
                    ..RequestFacts::default()
                };
                let key = KeyFacts { tags, ..KeyFacts::default() };
                let now = Utc::now();
                let guarded = router.route(&request, &key, now, None);
                let evaluated = router.route(&request, &key, now, Some(&mut Vec::new()));
                assert_eq!(guarded, evaluated, "{metadata} {prompt_tokens}");
            }
        }
    }
}

mod native_agrees_with_the_interpreter {
    use proptest::prelude::{ProptestConfig, Strategy, any, prop, prop_assert, proptest};

    use super::*;
    use crate::cel_native::CandidateFacts;

    /// Expressions over every native shape, and some the native subset leaves to the interpreter.
    fn expression() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "request.model",
            "request.endpoint",
            "request.stream",
            "request.prompt_tokens",
            "request.max_tokens",
            "request.tools",
            "key.id",
            "key.name",
            "key.team",
            "key.tags",
            "request.metadata.a",
            "request.metadata.b",
            "request.headers['x-h']",
            "request.headers.missing",
            "request.metadata",
            "backend.name",
            "backend.kind",
            "backend.region",
            "backend.tags",
            "model.name",
            "model.price_input",
            "model.context_window",
            "'a'",
            "'b'",
            "''",
            "1",
            "0",
            "-1",
            "2u",
            "1.5",
            "0.0",
            "true",
            "false",
            "null",
            "['a', 'b']",
            "[1, 'a', null]",
            "[]",
            "[1.5, 2u]",
            "has(request.metadata.a)",
            "has(request.headers.x)",
            "'x' in request.metadata",
            "1 in request.metadata",
            "size(key.tags)",
            "now > timestamp('2020-01-01T00:00:00Z')",
            "key.tags.exists(t, t == 'a')",
        ])
        .prop_map(str::to_owned);
        leaf.prop_recursive(4, 24, 2, |inner| {
            (inner.clone(), inner, 0..9usize).prop_map(|(a, b, op)| match op {
                0 => format!("({a} && {b})"),
                1 => format!("({a} || {b})"),
                2 => format!("!({a})"),
                3 => format!("({a} == {b})"),
                4 => format!("({a} != {b})"),
                5 => format!("({a} < {b})"),
                6 => format!("({a} >= {b})"),
                7 => format!("({a} in {b})"),
                _ => format!("({a} > {b})"),
            })
        })
    }

    fn scalar() -> impl Strategy<Value = Option<serde_json::Value>> {
        prop::sample::select(vec![
            None,
            Some(json!("a")),
            Some(json!("b")),
            Some(json!(1)),
            Some(json!(u64::MAX)),
            Some(json!(1.5)),
            Some(json!(true)),
            Some(json!(null)),
            Some(json!(["a"])),
            Some(json!({"a": 1})),
        ])
    }

    fn facts() -> impl Strategy<Value = (RequestFacts, KeyFacts, ModelSpec, BackendSpec)> {
        let names = prop::sample::subsequence(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()], 0..3);
        (
            (scalar(), scalar(), any::<bool>(), 0u64..3, prop::option::of(0u64..3), names.clone()),
            (prop::option::of(prop::sample::select(vec!["a", "b"])), names.clone(), any::<bool>()),
            (prop::option::of(prop::sample::select(vec!["a", "eu"])), names, prop::option::of(0u32..3)),
        )
            .prop_map(
                |(
                    (a, b, stream, prompt_tokens, max_tokens, tools),
                    (team, tags, header),
                    (region, backend_tags, window),
                )| {
                    let mut metadata = serde_json::Map::new();
                    metadata.extend(a.map(|v| ("a".to_owned(), v)));
                    metadata.extend(b.map(|v| ("b".to_owned(), v)));
                    let headers = if header { [("x-h".to_owned(), "a".to_owned())].into() } else { BTreeMap::new() };
                    let request = RequestFacts {
                        model: "a".into(),
                        endpoint: "chat.completions".into(),
                        stream,
                        prompt_tokens,
                        max_tokens,
                        tools,
                        images: false,
                        json_output: false,
                        image_size: None,
                        image_quality: None,
                        metadata,
                        headers,
                    };
                    let key = KeyFacts { id: "a".into(), name: "b".into(), team: team.map(str::to_owned), tags };
                    let backend: BackendSpec = serde_json::from_value(json!({"name": "a", "kind": "openai",
                    "base_url": "https://x", "region": region, "tags": backend_tags}))
                    .unwrap();
                    let model: ModelSpec = serde_json::from_value(json!({"name": "b", "backend": "a",
                    "upstream_model": "u", "capabilities": {"context_window": window},
                    "pricing": {"input": "1.5", "output": "2"}}))
                    .unwrap();
                    (request, key, model, backend)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Whatever native evaluation decides, the interpreter decides the same.
        #[test]
        fn every_decided_answer_matches((request, key, model, backend) in facts(), source in expression()) {
            let Ok(expression) = cel_env::compile(&source, ExpressionScope::Candidate) else { return Ok(()) };
            let Some(native) = expression.native() else { return Ok(()) };
            let candidate = CandidateFacts::new(&model, &backend);
            let facts = Facts { request: &request, key: &key, candidate: Some(&candidate) };
            let Some(answer) = native.evaluate(&facts) else { return Ok(()) };
            let mut root = Context::with_env(STDLIB.clone());
            root.add_variable_from_value("request", request_value(&request));
            root.add_variable_from_value("key", key_value(&key));
            root.add_variable_from_value("now", Value::Timestamp(Utc::now().fixed_offset()));
            let scope = candidate_context(&root, &CandidateValues::new(&model, &backend));
            let interpreted = expression.program().execute(&scope);
            prop_assert!(matches!(interpreted, Ok(Value::Bool(b)) if b == answer),
                "{source}: native {answer}, interpreter {interpreted:?}");
        }
    }

    /// Boundary cases, each decided natively and checked against the interpreter.
    #[test]
    fn boundaries_agree() {
        let mut metadata = serde_json::Map::new();
        metadata.insert("big".into(), json!(u64::MAX));
        metadata.insert("neg".into(), json!(-1));
        metadata.insert("half".into(), json!(0.5));
        metadata.insert("nil".into(), json!(null));
        metadata.insert("s".into(), json!("b"));
        let request = RequestFacts { prompt_tokens: u64::MAX, metadata, ..RequestFacts::default() };
        let key = KeyFacts::default();
        let mut root = Context::with_env(STDLIB.clone());
        root.add_variable_from_value("request", request_value(&request));
        root.add_variable_from_value("key", key_value(&key));
        let facts = Facts { request: &request, key: &key, candidate: None };
        for source in [
            "request.metadata.big > 1",
            "request.metadata.big < 1",
            "request.metadata.big == 18446744073709551615u",
            "request.metadata.neg < 0u",
            "request.metadata.neg == -1.0",
            "request.metadata.half < 1",
            "1 > request.metadata.half",
            "request.metadata.nil == null",
            "request.metadata.nil == 'x'",
            "request.metadata.s > 'a'",
            "key.team == null",
            "key.team == 'x'",
            "key.team in ['a', null]",
            "request.prompt_tokens == 9223372036854775807",
            "request.max_tokens == null",
            "'s' in request.metadata || request.metadata.missing == 1",
            "request.metadata.missing == 1 && false",
            "request.metadata.missing == 1 || true",
        ] {
            let expression = cel_env::compile(source, ExpressionScope::Request).unwrap();
            let native = expression.native().and_then(|n| n.evaluate(&facts));
            let interpreted = expression.program().execute(&root);
            assert!(native.is_some(), "{source} is not decided natively");
            assert!(
                matches!(interpreted, Ok(Value::Bool(b)) if Some(b) == native),
                "{source}: native {native:?}, interpreter {interpreted:?}"
            );
        }
    }

    /// The seed bundle's and the benchmark's policy shapes are all evaluated natively.
    #[test]
    fn common_shapes_are_native() {
        for source in [
            "request.prompt_tokens > 2000 && request.metadata.sensitivity == 'low'",
            "has(request.metadata.task) && request.metadata.task == 'code_generation'",
            "key.team == 'team-1' || (request.prompt_tokens > 100000 && 'x1' in key.tags)",
            "'intern' in key.tags && request.stream",
            "key.team in ['a', 'b'] && !(request.endpoint == 'embeddings')",
            "backend.region == 'eu' && model.price_input < 5",
            "request.headers['x-tenant'] == 'acme'",
        ] {
            assert!(cel_env::compile(source, ExpressionScope::Candidate).unwrap().is_native(), "{source}");
        }
    }
}

#[test]
fn weighted_order_draws_by_weight() {
    let candidate = |model: &str, weight| PlannedCandidate {
        model: model.into(),
        backend: "b".into(),
        upstream_model: "u".into(),
        weight,
    };
    let order = |draw| {
        let mut list = vec![candidate("a", 3), candidate("b", 1)];
        weighted_order(&mut list, draw);
        list.iter().map(|c| c.model.clone()).collect::<Vec<_>>()
    };
    assert_eq!(order(0.0), ["a", "b"]);
    assert_eq!(order(0.74), ["a", "b"]);
    assert_eq!(order(0.75), ["b", "a"]);
    assert_eq!(order(0.999), ["b", "a"]);
}

/// A small configuration: two backends (`eu` tagged `approved`, `us`), models on them, `pair` = [basic, full].
fn small_config(policies: serde_json::Value) -> ConfigSet {
    let mut config = ConfigSet::default();
    for b in [
        json!({"name": "eu", "kind": "openai", "base_url": "https://eu.example", "region": "eu", "tags": ["approved"]}),
        json!({"name": "us", "kind": "openai", "base_url": "https://us.example", "region": "us"}),
    ] {
        let b: BackendSpec = serde_json::from_value(b).unwrap();
        config.backends.insert(b.name.clone(), b);
    }
    for m in [
        json!({"name": "basic", "backend": "us", "upstream_model": "b", "capabilities": {"chat": true},
            "pricing": {"input": "1", "output": "1"}}),
        json!({"name": "full", "backend": "eu", "upstream_model": "f", "capabilities": {"chat": true, "tools": true,
            "vision": true, "json_mode": true, "context_window": 1000}, "pricing": {"input": "1", "output": "1"}}),
    ] {
        let m: ModelSpec = serde_json::from_value(m).unwrap();
        config.models.insert(m.name.clone(), m);
    }
    let pair: AliasSpec =
        serde_json::from_value(json!({"name": "pair", "candidates": [{"model": "basic"}, {"model": "full"}]})).unwrap();
    config.aliases.insert(pair.name.clone(), pair);
    for p in policies.as_array().unwrap() {
        let p: RoutePolicySpec = serde_json::from_value(p.clone()).unwrap();
        config.route_policies.insert(p.name.clone(), p);
    }
    config
}

fn chat(model: &str) -> RequestFacts {
    RequestFacts { model: model.into(), endpoint: "chat.completions".into(), ..RequestFacts::default() }
}

/// The candidates' models, then `|` and the rejected ones as `model:policy:missing` (`-` for none).
fn outcome(decision: &Decision) -> String {
    let (candidates, rejected) = match decision {
        Decision::Route { candidates, rejected, .. } => (candidates.as_slice(), rejected),
        Decision::NoEligibleCandidate { rejected, .. } => (&[][..], rejected),
        other => panic!("{other:?}"),
    };
    let candidates: Vec<&str> = candidates.iter().map(|c| c.model.as_str()).collect();
    let rejected: Vec<String> = rejected
        .iter()
        .map(|r| format!("{}:{}:{}", r.model, r.policy.as_deref().unwrap_or("-"), r.missing.unwrap_or("-")))
        .collect();
    format!("{} | {}", candidates.join(" "), rejected.join(" ")).trim().to_owned()
}

#[test]
fn candidates_that_cannot_serve_the_request_are_dropped_with_what_they_lack() {
    let router = Router::compile(&small_config(json!([]))).unwrap();
    assert!(router.reads().prompt_tokens, "a context window needs the prompt counted");
    let key = KeyFacts::default();
    let route = |request: RequestFacts| outcome(&router.route(&request, &key, Utc::now(), None));

    assert_eq!(route(chat("pair")), "basic full |");
    let tools = RequestFacts { tools: vec!["get_weather".into()], ..chat("pair") };
    assert_eq!(route(tools), "full | basic:-:tools");
    let images = RequestFacts { images: true, ..chat("pair") };
    assert_eq!(route(images), "full | basic:-:vision");
    let json_output = RequestFacts { json_output: true, ..chat("pair") };
    assert_eq!(route(json_output), "full | basic:-:json_mode");
    // 900 prompt tokens and 100 of output fit a 1,000-token window; 101 do not.
    let fits = RequestFacts { prompt_tokens: 900, max_tokens: Some(100), ..chat("pair") };
    assert_eq!(route(fits), "basic full |");
    let too_long = RequestFacts { prompt_tokens: 900, max_tokens: Some(101), ..chat("pair") };
    assert_eq!(route(too_long), "basic | full:-:context_window");
    // Neither is an embedding model: nothing is eligible, and each says why.
    let embeddings = RequestFacts { endpoint: "embeddings".into(), ..chat("pair") };
    assert_eq!(route(embeddings), "| basic:-:embeddings full:-:embeddings");
    let completions = RequestFacts { endpoint: "completions".into(), ..chat("basic") };
    assert_eq!(route(completions), "| basic:-:completions");
}

#[test]
fn image_candidates_need_a_price_for_the_size_and_quality_asked_for() {
    let mut config = small_config(json!([]));
    for m in [
        json!({"name": "small", "backend": "us", "upstream_model": "s", "capabilities": {"images": true},
            "pricing": {"input": "0", "output": "0", "per_image": {"512x512": "0.02"}}}),
        json!({"name": "large", "backend": "eu", "upstream_model": "l", "capabilities": {"images": true},
            "pricing": {"input": "0", "output": "0", "per_image": {"1024x1024": "0.04", "hd/1792x1024": "0.12"}}}),
    ] {
        let m: ModelSpec = serde_json::from_value(m).unwrap();
        config.models.insert(m.name.clone(), m);
    }
    let paint: AliasSpec = serde_json::from_value(
        json!({"name": "paint", "candidates": [{"model": "small"}, {"model": "large"}, {"model": "basic"}]}),
    )
    .unwrap();
    config.aliases.insert(paint.name.clone(), paint);
    let router = Router::compile(&config).unwrap();
    let key = KeyFacts::default();
    let route = |size: Option<&str>, quality: Option<&str>| {
        let request = RequestFacts {
            model: "paint".into(),
            endpoint: "images.generations".into(),
            image_size: size.map(str::to_owned),
            image_quality: quality.map(str::to_owned),
            ..RequestFacts::default()
        };
        outcome(&router.route(&request, &key, Utc::now(), None))
    };
    assert_eq!(route(Some("512x512"), None), "small | large:-:image_price basic:-:images");
    assert_eq!(route(Some("1024x1024"), Some("hd")), "large | small:-:image_price basic:-:images");
    assert_eq!(route(Some("1792x1024"), Some("hd")), "large | small:-:image_price basic:-:images");
    assert_eq!(route(Some("1792x1024"), None), "| small:-:image_price large:-:image_price basic:-:images");
    // No size named and no `default` price: nobody may serve it unpriced.
    assert_eq!(route(None, None), "| small:-:image_price large:-:image_price basic:-:images");
}

#[test]
fn disabled_policies_never_match_and_priority_then_name_decides() {
    let deny = |name: &str, priority: i32, enabled: bool| {
        json!({"name": name, "priority": priority, "enabled": enabled, "when": "request.model == 'pair'",
            "action": {"type": "deny", "message": name}})
    };
    let key = KeyFacts::default();
    let decide = |policies| {
        let router = Router::compile(&small_config(policies)).unwrap();
        match router.route(&chat("pair"), &key, Utc::now(), None) {
            Decision::Deny { policy, .. } => Some(policy),
            Decision::Route { .. } => None,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(decide(json!([deny("off", 100, false)])), None, "a disabled deny lets the request through");
    assert_eq!(decide(json!([deny("low", 1, true), deny("high", 5, true)])), Some("high".to_owned()));
    assert_eq!(decide(json!([deny("b-second", 5, true), deny("a-first", 5, true)])), Some("a-first".to_owned()));
    assert_eq!(decide(json!([deny("low", 1, true), deny("high", 5, false)])), Some("low".to_owned()));
}

#[test]
fn a_route_policy_s_own_candidates_strategy_and_require_apply() {
    let policies = json!([{"name": "approved-only", "priority": 1, "when": "request.model == 'pair'",
        "action": {"type": "route", "candidates": [{"model": "full"}, {"model": "basic"}],
            "strategy": "weighted", "require": "'approved' in backend.tags"}}]);
    let router = Router::compile(&small_config(policies)).unwrap();
    let decision = router.route(&chat("pair"), &KeyFacts::default(), Utc::now(), None);
    let Decision::Route { policy, strategy, .. } = &decision else { panic!("{decision:?}") };
    assert_eq!((policy.as_deref(), *strategy), (Some("approved-only"), Strategy::Weighted));
    // `basic` is on `us`, which lacks the `approved` tag: the policy's own require drops it.
    assert_eq!(outcome(&decision), "full | basic:approved-only:-");
}

/// `lowest_cost` prices the request's own size: a short prompt asking for much output goes to the model with cheap
/// output, a long prompt asking for little goes to the model with cheap input.
#[test]
fn lowest_cost_orders_by_the_request_s_estimated_cost() {
    let model = |name: &str, input: &str, output: &str| -> ModelSpec {
        serde_json::from_value(json!({
            "name": name, "backend": "openai-us", "upstream_model": name,
            "pricing": {"input": input, "output": output},
        }))
        .unwrap()
    };
    let mut config = config();
    for m in [model("cheap-input", "0.10", "20"), model("cheap-output", "5", "0.50"), model("dear", "10", "30")] {
        config.models.insert(m.name.clone(), m);
    }
    let alias: AliasSpec = serde_json::from_value(json!({
        "name": "by-cost", "strategy": "lowest_cost",
        "candidates": [{"model": "dear"}, {"model": "cheap-input"}, {"model": "cheap-output"}],
    }))
    .unwrap();
    config.aliases.insert(alias.name.clone(), alias);
    config.route_policies.clear();
    let router = Router::compile(&config).unwrap();
    assert!(router.reads().prompt_tokens, "lowest_cost needs the prompt counted");
    let order = |prompt_tokens, max_tokens| {
        let request = RequestFacts { model: "by-cost".into(), prompt_tokens, max_tokens, ..RequestFacts::default() };
        match router.route(&request, &KeyFacts::default(), Utc::now(), None) {
            Decision::Route { candidates, .. } => candidates.into_iter().map(|c| c.model).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    // 10 prompt tokens, 4,000 out: cheap-output 5*10 + 0.5*4000 = 2,050; cheap-input 1 + 80,000; dear 120,100.
    assert_eq!(order(10, Some(4_000)), ["cheap-output", "cheap-input", "dear"]);
    // 100,000 prompt tokens, 10 out: cheap-input 10,000 + 200; cheap-output 500,005; dear 1,000,300.
    assert_eq!(order(100_000, Some(10)), ["cheap-input", "cheap-output", "dear"]);
    // No max_tokens: 1,024 expected. 100 prompt tokens: cheap-output 500 + 512; cheap-input 10 + 20,480.
    assert_eq!(order(100, None), ["cheap-output", "cheap-input", "dear"]);
    // The largest counts are priced exactly, without overflow: 5.5, 20.1 and 40 times u64::MAX.
    assert_eq!(order(u64::MAX, Some(u64::MAX)), ["cheap-output", "cheap-input", "dear"]);
}

#[test]
fn estimated_cost_is_input_times_prompt_plus_output_times_expected_output() {
    let pricing: Pricing = serde_json::from_value(json!({"input": "2", "output": "3"})).unwrap();
    let cost = |prompt_tokens, max_tokens| {
        estimated_cost(&pricing, &RequestFacts { prompt_tokens, max_tokens, ..RequestFacts::default() })
    };
    assert_eq!(cost(100, Some(10)), Decimal::from(230));
    assert_eq!(cost(0, None), Decimal::from(3 * LOWEST_COST_DEFAULT_OUTPUT_TOKENS));
    assert_eq!(cost(u64::MAX, Some(u64::MAX)), Decimal::from(5) * Decimal::from(u64::MAX));
}
