//! Tests of the streaming tool-call stage (`stream.rs`).

use policy_engine::tool_policy::Outcome;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn declared() -> Arc<DeclaredTools> {
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["city"],
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}});
    let mut tools = DeclaredTools::default();
    tools.insert("get_weather".into(), Some(Arc::new(policy_engine::tool_schema::compile(&schema).unwrap())));
    tools.insert("get_time".into(), None);
    Arc::new(tools)
}

fn event(value: Value) -> String {
    format!("data: {value}\n\n")
}

fn text(content: &str) -> String {
    event(json!({"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]}))
}

fn fragment(index: u64, name: Option<&str>, arguments: &str) -> String {
    let mut function = json!({"arguments": arguments});
    if let Some(name) = name {
        function["name"] = json!(name);
    }
    event(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": function}]},
        "finish_reason": null}]}))
}

fn finish(reason: &str) -> String {
    event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
}

const DONE: &str = "data: [DONE]\n\n";

/// A stream: some text, calls given as (name, argument pieces) sent one after the other, finish, [DONE].
fn stream(calls: &[(&str, &[&str])]) -> Vec<String> {
    let mut events = vec![text(""), text("Let me check.")];
    for (i, (name, pieces)) in calls.iter().enumerate() {
        for (j, piece) in pieces.iter().enumerate() {
            events.push(fragment(i as u64, (j == 0).then_some(*name), piece));
        }
    }
    events.push(finish("tool_calls"));
    events.push(DONE.to_owned());
    events
}

/// Feed `input` split at `cuts`; the output, with what it held after each chunk.
fn run(hold: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, ToolStream) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    let mut stage = ToolStream::new(declared(), hold);
    let mut out = Vec::new();
    for w in points.windows(2) {
        stage.push(&input[w[0]..w[1]], &mut out);
    }
    stage.end(&mut out);
    (out, stage)
}

fn outcomes(stage: &ToolStream) -> Vec<Outcome> {
    stage.outcomes().iter().map(|o| o.outcome).collect()
}

#[test]
fn valid_calls_are_released_in_order_before_the_finish_event() {
    let events = stream(&[("get_weather", &["{\"ci", "ty\":\"Paris\"}"]), ("get_time", &["{}"])]);
    let input = events.concat();
    let (out, stage) = run(true, input.as_bytes(), &[]);
    assert_eq!(String::from_utf8(out).unwrap(), input);
    assert_eq!(outcomes(&stage), [Outcome::Valid, Outcome::Valid]);
    assert!(stage.saw_done() && stage.committed() && !stage.rejected());
}

#[test]
fn fragments_are_held_until_the_call_is_complete_and_text_is_not() {
    let events = stream(&[("get_weather", &["{\"city\":", "\"Paris\"}"])]);
    let mut stage = ToolStream::new(declared(), true);
    let mut out = Vec::new();
    for e in &events[..4] {
        stage.push(e.as_bytes(), &mut out);
    }
    assert_eq!(String::from_utf8(out.clone()).unwrap(), events[..2].concat(), "text went, fragments are held");
    stage.push(events[4].as_bytes(), &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), events[..5].concat());
}

#[test]
fn one_bad_call_among_parallel_ones_rejects_with_every_violation_and_nothing_of_the_calls() {
    let events = stream(&[("get_weather", &["{\"city\":\"Paris\"}"]), ("get_weather", &["{\"unit\":\"k\"}"])]);
    let (out, stage) = run(true, events.concat().as_bytes(), &[]);
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with(&events[..2].concat()), "{out}");
    let error = out.strip_prefix(&events[..2].concat()).unwrap();
    assert!(!error.contains("\"delta\""), "{error}");
    let error: Value = serde_json::from_str(error.strip_prefix("data: ").unwrap().trim_end()).unwrap();
    assert_eq!(error["error"]["code"], json!("invalid_tool_call"));
    let mut pointers: Vec<(u64, String)> = error["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["tool_call_index"].as_u64().unwrap(), v["pointer"].as_str().unwrap().to_owned()))
        .collect();
    pointers.sort();
    assert_eq!(pointers, [(1, "/city".to_owned()), (1, "/unit".to_owned())]);
    assert!(stage.rejected() && !stage.saw_done());
    assert_eq!(outcomes(&stage), [Outcome::Valid, Outcome::SchemaViolation]);
}

/// Each case: calls, expected outcomes. Without holding the stream is unchanged; with it, it is rejected.
#[test]
fn every_kind_of_invalid_call() {
    type Calls<'a> = &'a [(&'a str, &'a [&'a str])];
    let cases: &[(Calls, &[Outcome])] = &[
        (&[("get_wether", &["{\"city\":\"Paris\"}"])], &[Outcome::UnknownTool]),
        (&[("get_weather", &["{\"city\":", "\"Par"])], &[Outcome::InvalidJson]),
        (&[("get_weather", &["{}"])], &[Outcome::SchemaViolation]),
        (&[("get_weather", &["{\"city\":", "7}"])], &[Outcome::SchemaViolation]),
        (&[("get_weather", &["{\"city\":\"P\",", "\"x\":1}"])], &[Outcome::SchemaViolation]),
    ];
    for (calls, expected) in cases {
        let input = stream(calls).concat();
        let (out, stage) = run(false, input.as_bytes(), &[]);
        assert_eq!(String::from_utf8(out).unwrap(), input, "audit passes everything");
        assert_eq!(outcomes(&stage), *expected);
        let (out, stage) = run(true, input.as_bytes(), &[]);
        assert!(stage.rejected(), "{calls:?}");
        assert!(String::from_utf8(out).unwrap().contains("invalid_tool_call"));
    }
}

#[test]
fn interleaved_parallel_calls_are_assembled_per_index() {
    let events = [
        fragment(0, Some("get_weather"), "{\"city\""),
        fragment(1, Some("get_time"), "{"),
        fragment(0, None, ":\"Paris\"}"),
        fragment(1, None, "}"),
        finish("tool_calls"),
        DONE.to_owned(),
    ];
    let input = events.concat();
    let (out, stage) = run(true, input.as_bytes(), &[]);
    assert_eq!(String::from_utf8(out).unwrap(), input);
    assert_eq!(outcomes(&stage), [Outcome::Valid, Outcome::Valid]);
}

#[test]
fn crlf_events_comments_and_a_missing_finish_reason() {
    let input = ": keep-alive\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\
        \"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
    let (out, stage) = run(true, input.as_bytes(), &[7, 40, 41]);
    assert_eq!(String::from_utf8(out).unwrap(), input);
    assert_eq!(outcomes(&stage), [Outcome::Valid]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// However the upstream chunks a valid stream, the client gets exactly its events.
    #[test]
    fn arbitrary_chunking_of_a_valid_stream_changes_nothing(cuts in prop::collection::vec(any::<usize>(), 0..40),
                                                           hold in any::<bool>()) {
        let events = stream(&[("get_weather", &["{\"ci", "ty\":", "\"Pa", "ris\",\"unit\":\"c\"}"]),
                              ("get_time", &["{", "}"])]);
        let input = events.concat();
        let (out, stage) = run(hold, input.as_bytes(), &cuts);
        prop_assert_eq!(String::from_utf8(out).unwrap(), input);
        prop_assert_eq!(outcomes(&stage), vec![Outcome::Valid, Outcome::Valid]);
    }

    /// However an invalid stream is chunked, the verdict and the output are the same.
    #[test]
    fn arbitrary_chunking_of_an_invalid_stream_rejects_the_same_way(cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        let input = stream(&[("get_weather", &["{\"ci", "ty\":", "7}"])]).concat();
        let (whole, _) = run(true, input.as_bytes(), &[]);
        let (out, stage) = run(true, input.as_bytes(), &cuts);
        prop_assert!(stage.rejected());
        prop_assert_eq!(out, whole);
    }

    /// Arbitrary bytes never panic the stage.
    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
        let _ = run(true, &input, &cuts);
    }
}
