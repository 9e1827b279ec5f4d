//! Tests of metering (`metering.rs`).

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn usage(prompt: u64, cached: u64, completion: u64) -> Usage {
    Usage { prompt_tokens: prompt, cached_prompt_tokens: cached, completion_tokens: completion, ..Usage::default() }
}

#[test]
fn usage_from_answers() {
    #[track_caller]
    fn check(endpoint: Endpoint, body: &str, expected: Option<Usage>) {
        assert_eq!(usage_from_body(endpoint, body.as_bytes()), expected, "{body}");
    }
    use Endpoint::*;
    let chat = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],
        "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
    check(ChatCompletions, chat, Some(usage(12, 0, 3)));
    check(Completions, chat, Some(usage(12, 0, 3)));
    check(
        ChatCompletions,
        r#"{"usage":{"prompt_tokens":2000,"completion_tokens":5,
            "prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":0}}}"#,
        Some(usage(2000, 1920, 5)),
    );
    check(
        ChatCompletions,
        r#"{"usage":{"prompt_tokens":7,"completion_tokens":1,"prompt_tokens_details":null}}"#,
        Some(usage(7, 0, 1)),
    );
    check(
        ChatCompletions,
        r#"{"usage":{"prompt_tokens":7,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":9}}}"#,
        Some(usage(7, 7, 1)),
    );
    check(
        Embeddings,
        r#"{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        Some(usage(8, 0, 0)),
    );
    // Missing or malformed: the caller estimates.
    // The anthropic translation's usage: every input token in prompt_tokens, reads and writes as parts.
    check(
        ChatCompletions,
        r#"{"usage":{"prompt_tokens":1150,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":1000},
            "cache_read_input_tokens":1000,"cache_creation_input_tokens":50}}"#,
        Some(Usage { cache_creation_tokens: 50, ..usage(1150, 1000, 20) }),
    );
    check(
        ChatCompletions,
        r#"{"usage":{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":8},
            "cache_creation_input_tokens":50}}"#,
        Some(Usage { cache_creation_tokens: 2, ..usage(10, 8, 1) }),
    );
    check(ChatCompletions, r#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#, None);
    check(ChatCompletions, r#"{"choices":[]}"#, None);
    check(ChatCompletions, r#"{"usage":null}"#, None);
    check(ChatCompletions, r#"{"usage":{"prompt_tokens":"8","completion_tokens":1}}"#, None);
    check(ChatCompletions, r#"{"usage":{"prompt_tokens":-1,"completion_tokens":1}}"#, None);
    check(ChatCompletions, r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":1}}"#, None);
    check(
        ChatCompletions,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":"x"}}}"#,
        None,
    );
    check(ChatCompletions, r#"{"usage":[1,2]}"#, None);
    check(ChatCompletions, r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#, None);
    check(ChatCompletions, "[]", None);
    check(ChatCompletions, "", None);
    check(ChatCompletions, "not json", None);
}

#[test]
fn include_usage_injection() {
    #[track_caller]
    fn check(body: Value, expected_strip: bool, expected: Value) {
        let Value::Object(mut body) = body else { panic!("not an object") };
        assert_eq!(inject_include_usage(&mut body), expected_strip);
        assert_eq!(Value::Object(body), expected);
    }
    let on = json!({"stream": true, "stream_options": {"include_usage": true}});
    check(json!({"stream": true}), true, on.clone());
    check(json!({"stream": true, "stream_options": null}), true, on.clone());
    check(json!({"stream": true, "stream_options": {}}), true, on.clone());
    check(json!({"stream": true, "stream_options": {"include_usage": false}}), true, on.clone());
    check(on.clone(), false, on.clone());
    check(
        json!({"stream": true, "stream_options": {"include_obfuscation": false}}),
        true,
        json!({"stream": true, "stream_options": {"include_obfuscation": false, "include_usage": true}}),
    );
    // Not streamed, or a caller error the upstream should report: untouched.
    check(json!({"messages": []}), false, json!({"messages": []}));
    check(json!({"stream": false}), false, json!({"stream": false}));
    check(json!({"stream": true, "stream_options": "x"}), false, json!({"stream": true, "stream_options": "x"}));
}

#[test]
fn exact_costs() {
    #[track_caller]
    fn check(usage: Usage, pricing: (&str, Option<&str>, &str), expected: &str) {
        let pricing = Pricing {
            input: pricing.0.parse().unwrap(),
            cached_input: pricing.1.map(|p| p.parse().unwrap()),
            output: pricing.2.parse().unwrap(),
            cache_write: None,
            per_image: Default::default(),
        };
        let cost = cost(&usage, &pricing).unwrap();
        assert_eq!(cost.to_string(), expected);
    }
    check(usage(1234, 0, 56), ("2.50", None, "10.00"), "0.003645");
    check(usage(0, 0, 0), ("2.50", None, "10.00"), "0");
    check(usage(1_000_000, 0, 1_000_000), ("2.50", None, "10.00"), "12.5");
    check(usage(1, 0, 0), ("0.000001", None, "0"), "0.000000000001");
    // 1000 uncached at 2.50, 1000 cached at 1.25, 100 out at 10.00.
    check(usage(2000, 1000, 100), ("2.50", Some("1.25"), "10.00"), "0.00475");
    // No cached price: cached tokens cost the input price.
    check(usage(2000, 1000, 100), ("2.50", None, "10.00"), "0.006");
    // Cache creation at the input price: 500 uncached + 300 cached at 0.30 + 200 created, all else 3.00.
    let created = Usage { cache_creation_tokens: 200, ..usage(1000, 300, 10) };
    check(created, ("3.00", Some("0.30"), "15.00"), "0.00234");
    // Anthropic: 100 uncached at 3.00, 1000 cache reads at 0.30, 50 cache writes at 3.75, 20 out at 15.00.
    let anthropic = Usage { cache_creation_tokens: 50, ..usage(1150, 1000, 20) };
    let priced = Pricing {
        input: "3".parse().unwrap(),
        cached_input: Some("0.30".parse().unwrap()),
        output: "15".parse().unwrap(),
        cache_write: Some("3.75".parse().unwrap()),
        per_image: Default::default(),
    };
    assert_eq!(cost(&anthropic, &priced).unwrap().to_string(), "0.0010875");
    // Inconsistent parts: no negative remainder.
    let odd = Usage { cache_creation_tokens: 10, ..usage(5, 5, 0) };
    check(odd, ("1", Some("0.5"), "1"), "0.0000125");
    // Embeddings: prompt only.
    check(usage(8191, 0, 0), ("0.02", None, "0"), "0.00016382");
    check(usage(u64::MAX, 0, u64::MAX), ("0", None, "0"), "0");
    check(usage(u64::MAX, 0, 0), ("1", None, "0"), "18446744073709.551615");
}

#[test]
fn absurd_costs_are_errors() {
    let pricing = Pricing {
        input: Decimal::MAX,
        cached_input: None,
        output: Decimal::MAX,
        cache_write: None,
        per_image: Default::default(),
    };
    assert_eq!(cost(&usage(u64::MAX, 0, u64::MAX), &pricing), Err(CostOverflow));
    assert_eq!(cost(&usage(2, 0, 0), &pricing), Err(CostOverflow));
}

const CONTENT: [&str; 4] = ["Hello", " wor", "ld \\\"quoted\\\"", "!"];
const USAGE_EVENT: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\
    \"completion_tokens\":6,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n";

/// A recorded chat stream: a role event, content, a tool call in fragments, a finish, maybe usage, `[DONE]`.
fn recorded(with_usage: bool) -> String {
    let mut s = String::from(
        ": keep-alive\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n",
    );
    for c in CONTENT {
        s += &format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{c}\"}}}}],\"usage\":null}}\r\n\r\n"
        );
    }
    s += "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get\",\"arguments\":\"\"}}]}}]}\n\n";
    s += "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n";
    s += "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    if with_usage {
        s += USAGE_EVENT;
    }
    s += "data: [DONE]\n\n";
    s
}

fn generated_text() -> String {
    let content: String = CONTENT.concat().replace("\\\"", "\"");
    format!("{content}get{{\"a\":1}}")
}

/// Feed `input` split at `cuts`; what was forwarded and the usage.
fn meter(input: &[u8], cuts: &[usize], strip: bool, prompt_estimate: u64) -> (Vec<u8>, Usage) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    let mut meter = StreamMeter::new(strip);
    let mut out = Vec::new();
    for w in points.windows(2) {
        out.extend_from_slice(&meter.feed(Bytes::copy_from_slice(&input[w[0]..w[1]])));
    }
    (out, meter.finish(|| prompt_estimate))
}

#[test]
fn streams_metered() {
    let reported = usage(9, 4, 6);
    let estimated = Usage {
        prompt_tokens: 42,
        completion_tokens: tokens::count(&generated_text()),
        estimated: true,
        ..Usage::default()
    };
    assert!(estimated.completion_tokens > 0);
    #[track_caller]
    fn check(input: &str, strip: bool, expected_out: &str, expected: Usage) {
        let (out, usage) = meter(input.as_bytes(), &[], strip, 42);
        assert_eq!(String::from_utf8_lossy(&out), expected_out);
        assert_eq!(usage, expected);
    }
    let full = recorded(true);
    let bare = recorded(false);
    check(&full, false, &full, reported);
    check(&full, true, &bare, reported);
    check(&bare, false, &bare, estimated);
    check(&bare, true, &bare, estimated);
    // Interrupted mid-event: the text so far is estimated.
    let cut = &bare[..bare.find("finish_reason").unwrap_or(0)];
    let (_, interrupted) = meter(cut.as_bytes(), &[], false, 42);
    assert_eq!(interrupted, estimated);
    // A usage event without its blank line at the end still counts; stripped, it is not forwarded.
    let tail = USAGE_EVENT.trim_end();
    check(tail, true, "", reported);
    check(tail, false, tail, reported);
    // Usage on a content chunk (continuous usage stats): recorded, never stripped; the last one wins.
    let inline = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    check(inline, true, inline, usage(1, 0, 2));
    // Legacy completions stream `text`; multi-line data is joined.
    let legacy =
        "data: {\"choices\":[{\"text\":\"hello world\"}]}\n\ndata: {\"choices\":\ndata: [{\"text\":\" again\"}]}\n\n";
    let expected = Usage { completion_tokens: tokens::count("hello world again"), ..estimated };
    check(legacy, false, legacy, expected);
    // Malformed usage is not usage: forwarded, estimated.
    let bad = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"9\"}}\n\n";
    check(bad, true, bad, Usage { completion_tokens: 0, ..estimated });
}

#[test]
fn forwards_without_copying_when_not_stripping() {
    let mut meter = StreamMeter::new(false);
    let chunk = Bytes::from(recorded(true));
    let out = meter.feed(chunk.clone());
    assert_eq!(out.as_ptr(), chunk.as_ptr());
    let mut meter = StreamMeter::new(true);
    let chunk = Bytes::from(recorded(false));
    let out = meter.feed(chunk.clone());
    assert_eq!(out.as_ptr(), chunk.as_ptr());
}

#[test]
fn long_text_is_counted_in_bounded_memory() {
    let word = "data: {\"choices\":[{\"delta\":{\"content\":\"lorem ipsum \"}}]}\n\n";
    let mut meter = StreamMeter::new(false);
    for _ in 0..20_000 {
        meter.feed(Bytes::from_static(word.as_bytes()));
    }
    assert!(meter.text.len() < TEXT_FLUSH_BYTES);
    let usage = meter.finish(|| 0);
    let exact = tokens::count(&"lorem ipsum ".repeat(20_000));
    assert!(usage.completion_tokens.abs_diff(exact) <= 5, "{} vs {exact}", usage.completion_tokens);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// However the upstream chunks a stream, the forwarded bytes and the usage are the same.
    #[test]
    fn chunking_does_not_matter(with_usage: bool, strip: bool, cuts in prop::collection::vec(any::<usize>(), 0..40)) {
        let input = recorded(with_usage);
        let (out, usage) = meter(input.as_bytes(), &cuts, strip, 42);
        let expected_out = if strip { recorded(false) } else { input.clone() };
        prop_assert_eq!(String::from_utf8_lossy(&out), expected_out);
        let (_, whole) = meter(input.as_bytes(), &[], strip, 42);
        prop_assert_eq!(usage, whole);
        prop_assert_eq!(usage.estimated, !with_usage);
    }

    /// Arbitrary bytes never panic, and without stripping pass through unchanged.
    #[test]
    fn arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..10), strip: bool) {
        let (out, _) = meter(&input, &cuts, strip, 0);
        if !strip {
            prop_assert_eq!(out, input);
        }
    }

    /// Arbitrary SSE-looking events never panic either, and stripping only ever removes bytes.
    #[test]
    fn arbitrary_events(events in prop::collection::vec("(data: |: )?[{}\\[\\]\":,a-z0-9 ]{0,40}(\n\n|\r\n\r\n|\r\r|\n)", 0..20), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
        let input = events.concat();
        let (out, _) = meter(input.as_bytes(), &cuts, true, 0);
        prop_assert!(out.len() <= input.len());
    }

    #[test]
    fn costs_never_panic(prompt: u64, cached: u64, completion: u64, created: u64, input: i64, output: i64, scale in 0u32..=28) {
        let usage = Usage { prompt_tokens: prompt, cached_prompt_tokens: cached, completion_tokens: completion, cache_creation_tokens: created, images: 0, estimated: false };
        let pricing = Pricing { input: Decimal::new(input, scale), cached_input: Some(Decimal::new(output, 0)), output: Decimal::new(output, scale), cache_write: Some(Decimal::new(input, 0)), per_image: Default::default() };
        let _ = cost(&usage, &pricing);
    }
}

#[test]
fn finish_reasons_are_read_per_choice_and_bounded() {
    // Streams: each choice's reason as it ends, however the bytes are cut; `null` ones are not reasons.
    let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n\
                  data: {\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
                  data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n\
                  data: [DONE]\n\n";
    let mut meter = StreamMeter::new(false);
    let (head, tail) = stream.as_bytes().split_at(70);
    meter.feed(Bytes::copy_from_slice(head));
    meter.feed(Bytes::copy_from_slice(tail));
    assert_eq!(meter.take_finish_reasons(), ["length", "tool_calls"]);

    // Answers: one per choice; a body that is not an answer has none.
    let answer = json!({"choices": [{"finish_reason": "stop"}, {"finish_reason": "content_filter"}, {}]});
    assert_eq!(finish_reasons_from_body(answer.to_string().as_bytes()), ["stop", "content_filter"]);
    assert!(finish_reasons_from_body(b"not json").is_empty());
    assert!(finish_reasons_from_body(br#"{"choices": 3}"#).is_empty());

    // A caller asking for many choices, or an upstream sending odd reasons, cannot grow what the span carries.
    let many: Vec<_> = (0..100).map(|_| json!({"finish_reason": "stop"})).collect();
    let reasons = finish_reasons_from_body(json!({"choices": many}).to_string().as_bytes());
    assert_eq!(reasons.len(), MAX_FINISH_REASONS);
    let odd = json!({"choices": [{"finish_reason": "x".repeat(65)}, {"finish_reason": "stop"}]});
    assert_eq!(finish_reasons_from_body(odd.to_string().as_bytes()), ["stop"]);
}

#[test]
fn image_answers_are_metered_by_the_images_they_hold() {
    let answer = br#"{"created": 1, "data": [{"url": "a"}, {"b64_json": "aW1n"}],
        "usage": {"input_tokens": 10, "output_tokens": 4000, "total_tokens": 4010}}"#;
    let usage = usage_from_body(Endpoint::ImageGenerations, answer).unwrap();
    assert_eq!((usage.images, usage.prompt_tokens, usage.completion_tokens, usage.estimated), (2, 0, 0, false));
    assert_eq!(usage_from_body(Endpoint::ImageGenerations, br#"{"created": 1}"#), None, "estimated by the caller");
    assert_eq!(usage_from_body(Endpoint::ImageGenerations, b"not json"), None);
    assert_eq!(completion_estimate(Endpoint::ImageGenerations, answer), 0);
    assert_eq!(image_cost(3, Decimal::new(4, 2)).unwrap().to_string(), "0.12");
    assert_eq!(image_cost(u64::MAX, Decimal::MAX), Err(CostOverflow));
}
