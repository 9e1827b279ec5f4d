//! Tool governance through the data plane in process, against mock upstreams scripted to answer with given tool
//! calls: validation (non-streamed and streamed), each action, the tool policy's 403 and the schema replacement.
//! Semantics: `docs/tools.md`. That outcomes reach the spend ledger is the end-to-end tests' (`e2e/tools.rs`).

use gateway_e2e::MockUpstream;
use gateway_e2e::pipeline::{Pipeline, Snapshot};
use serde_json::{Value, json};

/// The registered schema of `get_weather`: what the model is asked for and what its calls are checked against.
fn weather_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["city"],
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"}}})
}

struct Gateway {
    mocks: Vec<MockUpstream>,
    dp: Pipeline,
    key: String,
}

impl Gateway {
    async fn start(test: &str) -> Gateway {
        let mut config = Snapshot::new();
        let mut mocks = Vec::new();
        for i in 0..2 {
            let mock = MockUpstream::in_process(&format!("m{i}"));
            config.backend(json!({"name": format!("up{i}"), "kind": "openai", "base_url": mock.base_url()}));
            config.model(json!({"name": format!("model{i}"), "backend": format!("up{i}"),
                "upstream_model": format!("upstream-{i}"),
                "capabilities": {"chat": true, "tools": true}, "pricing": {"input": "1", "output": "2"}}));
            mocks.push(mock);
        }
        config.alias(json!({"name": "chain", "candidates": [{"model": "model0"}, {"model": "model1"}]}));
        config.tool_schema(json!({"name": "get_weather", "schema": weather_schema()}));
        // One policy per action, chosen by the request's metadata; no metadata matches none (audit).
        for (action, extra) in [
            ("reject", json!({"on_invalid": "reject", "deny": ["delete_everything"]})),
            ("retry", json!({"on_invalid": "retry", "max_retries": 2})),
            ("annotate", json!({"on_invalid": "annotate"})),
            ("audit", json!({"mode": "audit", "on_invalid": "reject"})),
        ] {
            let mut policy = json!({"name": format!("tools-{action}"), "priority": 10,
                "when": format!("has(request.metadata.action) && request.metadata.action == '{action}'")});
            policy.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            config.tool_policy(policy);
        }
        let key = config.key(json!({"name": "app"}));
        let dp = Pipeline::start(test, &config).await;
        Gateway { mocks, dp, key }
    }

    /// A chat request declaring `get_weather` (with a looser schema than the registered one) and `get_time`
    /// (unregistered: its own schema applies), under the policy for `action` ("" for none).
    async fn ask(&self, action: &str, stream: bool) -> reqwest::Response {
        let mut body = json!({"model": "chain", "stream": stream, "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
                "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
        ]});
        if !action.is_empty() {
            body["metadata"] = json!({"action": action});
        }
        self.dp.post("/v1/chat/completions", Some(&self.key), &body).await
    }
}

/// Calls as the mock's script wants them.
fn calls(list: &[(&str, &str)]) -> Value {
    Value::Array(list.iter().map(|(name, arguments)| json!({"name": name, "arguments": arguments})).collect())
}

/// What the client got: the tool calls (name, arguments) assembled, and the error if there was one.
#[derive(Debug, PartialEq)]
struct Got {
    status: u16,
    calls: Vec<(String, String)>,
    /// (tool_call_index, pointer) of each violation in the error, sorted.
    violations: Option<Vec<(u64, String)>>,
    header: String,
}

fn violations_of(error: &Value) -> Vec<(u64, String)> {
    assert_eq!(error["code"], json!("invalid_tool_call"), "{error}");
    assert_eq!(error["type"], json!("invalid_request_error"), "{error}");
    let mut list: Vec<(u64, String)> = error["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["tool_call_index"].as_u64().unwrap(), v["pointer"].as_str().unwrap().to_owned()))
        .collect();
    list.sort();
    list
}

async fn got(response: reqwest::Response, stream: bool) -> Got {
    let status = response.status().as_u16();
    let header = response.headers().get("x-gateway-tool-validation").map_or("", |v| v.to_str().unwrap()).to_owned();
    let text = response.text().await.unwrap();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut violations = None;
    if !stream || status != 200 {
        let body: Value = serde_json::from_str(&text).unwrap();
        if let Some(error) = body.get("error") {
            violations = Some(violations_of(error));
        }
        for call in body.pointer("/choices/0/message/tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let field = |f: &str| call["function"][f].as_str().unwrap().to_owned();
            calls.push((field("name"), field("arguments")));
        }
    } else {
        for data in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            if data == "[DONE]" {
                continue;
            }
            let event: Value = serde_json::from_str(data).unwrap();
            if let Some(error) = event.get("error") {
                violations = Some(violations_of(error));
                continue;
            }
            let deltas = event.pointer("/choices/0/delta/tool_calls").and_then(Value::as_array);
            for fragment in deltas.into_iter().flatten() {
                let index = fragment["index"].as_u64().unwrap() as usize;
                if calls.len() <= index {
                    calls.resize(index + 1, Default::default());
                }
                if let Some(name) = fragment.pointer("/function/name").and_then(Value::as_str) {
                    calls[index].0.push_str(name);
                }
                if let Some(arguments) = fragment.pointer("/function/arguments").and_then(Value::as_str) {
                    calls[index].1.push_str(arguments);
                }
            }
        }
        assert_eq!(violations.is_none(), text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
    Got { status, calls, violations, header }
}

const PARIS: (&str, &str) = ("get_weather", r#"{"city":"Paris","unit":"c"}"#);
const TIME: (&str, &str) = ("get_time", r#"{"tz":"Europe/Paris"}"#);

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, a)| ((*n).to_owned(), (*a).to_owned())).collect()
}

#[tokio::test]
async fn tool_calls_are_validated_streaming_or_not() {
    let gw = Gateway::start("tools_validation").await;
    // (calls the model makes, violations expected: (tool_call_index, pointer)); empty = valid.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [(u64, &'a str)]);
    let cases: &[Case] = &[
        (&[PARIS], &[]),
        (&[PARIS, TIME], &[]),
        (&[("get_wether", r#"{"city":"Paris"}"#)], &[(0, "")]),
        (&[("get_weather", r#"{"city": "Par"#)], &[(0, "")]),
        (&[("get_weather", r#"{"unit":"c"}"#)], &[(0, "/city")]),
        (&[("get_weather", r#"{"city":7}"#)], &[(0, "/city")]),
        (&[("get_weather", r#"{"city":"Paris","country":"FR"}"#)], &[(0, "/country")]),
        (&[PARIS, ("get_time", r#"{"tz":5}"#)], &[(1, "/tz")]),
        (&[PARIS, ("get_weather", r#"{"days":"two"}"#), TIME], &[(1, "/city"), (1, "/days")]),
    ];
    for stream in [false, true] {
        for (model_calls, expected) in cases {
            gw.mocks[0].script(json!([{"tool_calls": calls(model_calls), "text": "Checking."}])).await;
            let result = got(gw.ask("reject", stream).await, stream).await;
            let case = format!("stream={stream} {model_calls:?}");
            if expected.is_empty() {
                assert_eq!((result.status, result.violations), (200, None), "{case}");
                assert_eq!(result.calls, owned(model_calls), "{case}: calls reach the app intact");
                if !stream {
                    assert_eq!(result.header, "valid", "{case}");
                }
            } else {
                let expected: Vec<(u64, String)> = expected.iter().map(|(i, p)| (*i, (*p).to_owned())).collect();
                assert_eq!(result.violations, Some(expected), "{case}");
                assert!(result.calls.is_empty(), "{case}: nothing of the calls reaches the app: {:?}", result.calls);
                assert_eq!(result.status, if stream { 200 } else { 422 }, "{case}");
            }
        }
    }
    // Every outcome is counted per tool, model and backend; undeclared names share one label value.
    let metrics = gw.dp.client().get(gw.dp.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        r#"gateway_tool_calls_total{tool="get_weather",model="model0",backend="up0",outcome="valid"}"#,
        r#"gateway_tool_calls_total{tool="_undeclared",model="model0",backend="up0",outcome="unknown_tool"} 2"#,
        r#"gateway_tool_calls_total{tool="get_weather",model="model0",backend="up0",outcome="invalid_json"} 2"#,
        r#"gateway_tool_calls_total{tool="get_time",model="model0",backend="up0",outcome="schema_violation"} 2"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[tokio::test]
async fn each_action_handles_an_invalid_call() {
    let gw = Gateway::start("tools_actions").await;
    let bad = calls(&[("get_weather", r#"{"city":7}"#)]);
    let good = calls(&[PARIS]);
    for stream in [false, true] {
        // retry: the first answer is invalid, the second (same candidate) is served.
        gw.mocks[0].script(json!([{"tool_calls": bad}, {"tool_calls": good}])).await;
        let before = gw.mocks[0].requests().await.len();
        let result = got(gw.ask("retry", stream).await, stream).await;
        assert_eq!((result.status, result.violations, result.calls), (200, None, owned(&[PARIS])), "retry {stream}");
        assert_eq!(gw.mocks[0].requests().await.len(), before + 2, "asked the same candidate again");

        // retry: two more invalid answers from m0, the third retry goes to the next candidate.
        gw.mocks[0].script(json!([{"tool_calls": bad}, {"tool_calls": bad}])).await;
        gw.mocks[1].script(json!([{"tool_calls": good}])).await;
        let response = gw.ask("retry", stream).await;
        assert_eq!(response.headers()["x-gateway-backend"], "up1", "retry {stream}");
        let result = got(response, stream).await;
        assert_eq!((result.status, result.calls), (200, owned(&[PARIS])), "retry {stream}");

        // retry, exhausted (1 + max_retries answers, all invalid): rejected like `reject`.
        gw.mocks[0].script(json!([{"tool_calls": bad}, {"tool_calls": bad}])).await;
        gw.mocks[1].script(json!([{"tool_calls": bad}])).await;
        let result = got(gw.ask("retry", stream).await, stream).await;
        assert_eq!(result.violations, Some(vec![(0, "/city".to_owned())]), "retry exhausted {stream}");
        assert_eq!(result.status, if stream { 200 } else { 422 });

        // annotate, audit and no matching policy: the invalid call passes through; non-streamed it is marked.
        for action in ["annotate", "audit", ""] {
            gw.mocks[0].script(json!([{"tool_calls": bad}])).await;
            let result = got(gw.ask(action, stream).await, stream).await;
            let header = if stream { "" } else { "invalid" };
            let expected = Got {
                status: 200,
                calls: owned(&[("get_weather", r#"{"city":7}"#)]),
                violations: None,
                header: header.to_owned(),
            };
            assert_eq!(result, expected, "{action:?} stream={stream}");
        }
    }
    // Streamed, once text went to the client a retry is impossible: the invalid call ends the stream as `reject`.
    gw.mocks[0].script(json!([{"tool_calls": bad, "text": "Let me look that up."}])).await;
    let response = gw.ask("retry", true).await;
    let text = response.text().await.unwrap();
    assert!(text.contains("Let me look that up."), "{text}");
    assert!(text.contains("invalid_tool_call") && !text.contains("tool_calls\""), "{text}");
}

#[tokio::test]
async fn policies_govern_declared_tools_and_registered_schemas_replace_declared_ones() {
    let gw = Gateway::start("tools_policy").await;
    let body = json!({"model": "chain", "messages": [{"role": "user", "content": "hi"}], "metadata": {"action": "reject"},
        "tools": [{"type": "function", "function": {"name": "get_weather"}},
                  {"type": "function", "function": {"name": "delete_everything"}}]});
    let response = gw.dp.post("/v1/chat/completions", Some(&gw.key), &body).await;
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], json!("tool_not_allowed"));
    assert_eq!(
        error["error"]["message"],
        json!("the tool 'delete_everything' is not allowed for this caller by tool policy 'tools-reject'")
    );
    assert!(gw.mocks[0].requests().await.is_empty(), "a refused request is not forwarded");

    // The same tool under no policy is allowed; the registered schema is what the model sees.
    gw.mocks[0].script(json!([{"tool_calls": calls(&[PARIS])}])).await;
    let response = gw.ask("", false).await;
    assert_eq!(response.status(), 200);
    let seen = gw.mocks[0].requests().await.pop().unwrap();
    let tools = &seen["body"]["tools"];
    assert_eq!(tools[0]["function"]["parameters"], weather_schema(), "registered schema replaces the declared one");
    assert_eq!(tools[1]["function"]["parameters"]["required"], json!(["tz"]), "unregistered tools pass unchanged");
}
