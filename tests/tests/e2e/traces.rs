//! Traces and JSON logs through the real planes (docs/observability.md): a real OTLP receiver started by the test
//! gets the data plane's spans (the GenAI attributes, one child per attempt of a failover, the caller's trace
//! carried through to the upstream and the ledger) and the control plane's (an admin write, a snapshot build); with
//! tracing off the caller's trace id still reaches the upstream and the ledger, and JSON logs are JSON lines with
//! the request id.

use gateway_e2e::otlp::{OtlpReceiver, ReceivedSpan};
use gateway_e2e::*;
use serde_json::{Value, json};
use sqlx::PgPool;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{CALLER_SPAN}-01")
}

struct Gateway {
    cp: ControlPlane,
    primary: MockUpstream,
    secondary: MockUpstream,
    dp: DataPlane,
    key: String,
}

/// Two backends behind one alias, `primary` first; the data plane started with `env`.
async fn start(pool: &PgPool, test: &str, env: Vec<(String, String)>) -> Gateway {
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(pool))).await;
    let primary = MockUpstream::start(test, "primary").await;
    let secondary = MockUpstream::start(test, "secondary").await;
    cp.create("backends", json!({"name": "primary", "kind": "openai", "base_url": primary.base_url(), "region": "eu"}))
        .await;
    cp.create(
        "backends",
        json!({"name": "secondary", "kind": "openai", "base_url": secondary.base_url(),
                                 "region": "us"}),
    )
    .await;
    for (model, backend, upstream) in [("m1", "primary", "gpt-a"), ("m2", "secondary", "gpt-b")] {
        cp.create(
            "models",
            json!({"name": model, "backend": backend, "upstream_model": upstream,
                   "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "2"}}),
        )
        .await;
    }
    cp.create("aliases", json!({"name": "smart", "candidates": [{"model": "m1"}, {"model": "m2"}]})).await;
    let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
    let key = created["secret"].as_str().unwrap().to_owned();
    let version = cp.fleet().await["config_version"].as_u64().unwrap();
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env.push(("GATEWAY_SPEND_REPORT_INTERVAL_MS".into(), "50".into()));
    config.env.extend(env);
    let dp = DataPlane::start(&config);
    dp.wait_for_version(version).await;
    Gateway { cp, primary, secondary, dp, key }
}

impl Gateway {
    /// A chat request with the caller's `traceparent`; the whole answer.
    async fn chat(&self, id: &str, stream: bool) -> (u16, String) {
        let body = json!({"model": "smart", "stream": stream, "messages": [{"role": "user", "content": "Hello?"}]});
        let response = self
            .dp
            .client()
            .post(self.dp.url("/v1/chat/completions"))
            .bearer_auth(&self.key)
            .header("x-request-id", id)
            .header("traceparent", traceparent())
            .header("tracestate", "caller=1")
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The spend event of request `id`, once in the ledger.
    async fn event(&self, id: &str) -> Value {
        eventually(std::time::Duration::from_secs(30), &format!("the spend event of {id}"), || async {
            self.cp.spend_events().await.into_iter().find(|e| e["request_id"] == id)
        })
        .await
    }
}

fn attempts_of<'a>(spans: &'a [ReceivedSpan], request: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut attempts: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.parent_span_id == request.span_id).collect();
    attempts.sort_by_key(|s| s.ended_unix_ns);
    attempts
}

#[sqlx::test(migrations = false)]
async fn the_data_plane_exports_a_failover_with_genai_attributes_under_the_callers_trace(pool: PgPool) {
    let receiver = OtlpReceiver::start().await;
    let gw = start(&pool, "traces_failover", receiver.env("grpc", "dp-under-test")).await;
    gw.primary.script(json!([{"status": 500}])).await;
    let (status, _) = gw.chat("traced-1", false).await;
    assert_eq!(status, 200);

    let request =
        receiver.wait_for("the request's span", |s| s.attr("request_id").as_deref() == Some("traced-1")).await;
    assert_eq!(request.service, "dp-under-test");
    assert_eq!(request.name, "chat smart");
    assert_eq!(request.trace_id, TRACE, "the caller's trace continues");
    assert_eq!(request.parent_span_id, CALLER_SPAN, "a child of the caller's span");
    for (key, expected) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.system", "openai"),
        ("gen_ai.request.model", "smart"),
        ("gen_ai.response.model", "gpt-b"),
        ("gen_ai.usage.input_tokens", "12"),
        ("gen_ai.usage.output_tokens", "5"),
        ("gateway.alias", "smart"),
        ("gateway.model", "m2"),
        ("gateway.backend", "secondary"),
        ("gateway.region", "us"),
        ("gateway.cost_usd", "0.000022"),
        ("gateway.usage_estimated", "false"),
        ("gateway.outcome", "ok"),
        ("gateway.attempts", "2"),
        ("http.response.status_code", "200"),
        ("trace_id", TRACE),
    ] {
        assert_eq!(request.attr(key).as_deref(), Some(expected), "{key} in {:?}", request.attributes);
    }
    assert_eq!(request.attributes.get("gen_ai.response.finish_reasons"), Some(&json!(["stop"])), "a list of strings");
    let version = gw.cp.fleet().await["config_version"].as_u64().unwrap();
    assert_eq!(request.attr("gateway.snapshot_version"), Some(version.to_string()));
    let attributes = format!("{:?}", request.attributes);
    assert!(!attributes.contains("Hello?"), "no prompt in spans: {attributes}");

    // One child span per attempt: the failed one, then the one that served.
    let spans = receiver.spans();
    let attempts = attempts_of(&spans, &request);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let (failed, served) = (attempts[0], attempts[1]);
    assert_eq!(failed.attr("gateway.backend").as_deref(), Some("primary"));
    assert_eq!(failed.attr("gen_ai.request.model").as_deref(), Some("gpt-a"));
    assert_eq!(failed.attr("http.response.status_code").as_deref(), Some("500"));
    assert_eq!(failed.attr("error.type").as_deref(), Some("server_error"));
    assert_eq!(served.attr("gateway.backend").as_deref(), Some("secondary"));
    assert_eq!(served.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(served.attr("error.type"), None);
    assert!(attempts.iter().all(|a| a.trace_id == TRACE));

    // Each upstream got the trace, with its own attempt's span as the parent.
    for (mock, attempt) in [(&gw.primary, failed), (&gw.secondary, served)] {
        let received = mock.requests().await;
        let sent = received[0]["traceparent"].as_str().unwrap().to_owned();
        assert_eq!(sent, format!("00-{TRACE}-{}-01", attempt.span_id));
    }

    // The auditor goes from the dollar to the trace: JSON and CSV.
    let event = gw.event("traced-1").await;
    assert_eq!(event["trace_id"], TRACE);
    let csv = gw
        .cp
        .http
        .get(format!("http://{}/admin/v1/spend/events?format=csv", gw.cp.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = header.iter().position(|c| *c == "trace_id").expect("a trace_id column");
    let row = csv.lines().find(|l| l.contains("traced-1")).unwrap();
    assert_eq!(row.split(',').nth(column), Some(TRACE), "{row}");

    // A stream's span ends with the stream, its usage known.
    let (status, body) = gw.chat("traced-stream", true).await;
    assert_eq!(status, 200);
    assert!(body.contains("[DONE]"));
    let streamed =
        receiver.wait_for("the stream's span", |s| s.attr("request_id").as_deref() == Some("traced-stream")).await;
    assert_eq!(streamed.attr("gateway.streamed").as_deref(), Some("true"));
    assert_eq!(streamed.attr("gateway.outcome").as_deref(), Some("ok"));
    assert_eq!(streamed.attr("gen_ai.usage.output_tokens").as_deref(), Some("5"));
    assert_eq!(streamed.attributes.get("gen_ai.response.finish_reasons"), Some(&json!(["stop"])));
}

#[sqlx::test(migrations = false)]
async fn without_tracing_the_callers_trace_id_still_reaches_the_upstream_and_the_ledger_and_logs_are_json(
    pool: PgPool,
) {
    let env = vec![("GATEWAY_LOG_FORMAT".to_owned(), "json".to_owned())];
    let gw = start(&pool, "traces_off", env).await;
    gw.primary.script(json!([{"status": 500}])).await;
    let (status, _) = gw.chat("untraced-1", false).await;
    assert_eq!(status, 200);
    for mock in [&gw.primary, &gw.secondary] {
        let received = mock.requests().await;
        assert_eq!(received[0]["traceparent"], traceparent(), "passed on unchanged");
        assert_eq!(received[0]["tracestate"], "caller=1");
    }
    let event = gw.event("untraced-1").await;
    assert_eq!(event["trace_id"], TRACE);

    // JSON lines: every line parses; the failover's warning carries the request's id and trace id.
    let log = std::fs::read_to_string(&gw.dp.log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    let failed = lines
        .iter()
        .find(|l| l["message"] == "candidate failed")
        .unwrap_or_else(|| panic!("no 'candidate failed' line in {log}"));
    assert_eq!(failed["span"]["request_id"], "untraced-1", "{failed}");
    assert_eq!(failed["span"]["trace_id"], TRACE, "{failed}");
    assert_eq!(failed["level"], "WARN");
}

#[sqlx::test(migrations = false)]
async fn the_control_plane_traces_admin_writes_and_snapshot_builds(pool: PgPool) {
    let receiver = OtlpReceiver::start().await;
    let mut config = ControlPlaneConfig::new("traces_cp", "cp", &test_database_url(&pool));
    config.env = receiver.env("http/protobuf", "cp-under-test");
    let cp = ControlPlane::start(config).await;
    let response = cp
        .http
        .post(format!("http://{}/admin/v1/backends", cp.admin))
        .bearer_auth(ADMIN_TOKEN)
        .header("traceparent", traceparent())
        .header("x-request-id", "admin-write-1")
        .json(&json!({"name": "b", "kind": "openai", "base_url": "https://api.openai.com/v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let write = receiver.wait_for("the admin write's span", |s| s.name == "POST /admin/v1/backends").await;
    assert_eq!(write.service, "cp-under-test");
    assert_eq!(write.trace_id, TRACE);
    assert_eq!(write.parent_span_id, CALLER_SPAN);
    assert_eq!(write.attr("request_id").as_deref(), Some("admin-write-1"));
    assert_eq!(write.attr("http.response.status_code").as_deref(), Some("201"));
    let (_, version) = cp.head().await;
    let build = receiver
        .wait_for("the snapshot build's span", |s| {
            s.name == "snapshot build" && s.attr("gateway.config_version") == Some(version.to_string())
        })
        .await;
    assert!(build.attr("gateway.snapshot.content_hash").is_some_and(|h| !h.is_empty()));
    // Reads are not traced.
    cp.call("GET", "/backends", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!receiver.spans().iter().any(|s| s.name.starts_with("GET ")));
}

#[sqlx::test(migrations = false)]
async fn both_planes_export_to_a_collector_that_requires_mutual_tls(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("gateway-e2e-otlp-tls-{}", std::process::id()));
    let certificates = gateway_e2e::tls::certificates(&dir);
    let receiver = OtlpReceiver::start_tls(&certificates).await;
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let tls = |mut env: Vec<(String, String)>| {
        env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), path(&certificates.ca)));
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(), path(&certificates.client_cert)));
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY".into(), path(&certificates.client_key)));
        env
    };
    // The data plane over gRPC, the control plane over HTTP: both transports' TLS.
    let gw = start(&pool, "traces_tls", tls(receiver.env("grpc", "dp-tls"))).await;
    let (status, _) = gw.chat("tls-1", false).await;
    assert_eq!(status, 200);
    let request =
        receiver.wait_for("the request's span over TLS", |s| s.attr("request_id").as_deref() == Some("tls-1")).await;
    assert_eq!(request.service, "dp-tls");
    assert_eq!(request.trace_id, TRACE);

    let mut config = ControlPlaneConfig::new("traces_tls", "cp-tls", &test_database_url(&pool));
    config.env = tls(receiver.env("http/protobuf", "cp-tls"));
    let cp = ControlPlane::start(config).await;
    cp.create("backends", json!({"name": "b", "kind": "openai", "base_url": "https://api.openai.com/v1"})).await;
    let write = receiver
        .wait_for("the admin write's span over TLS", |s| s.service == "cp-tls" && s.name.starts_with("POST /admin/v1/"))
        .await;
    assert_eq!(write.attr("http.response.status_code").as_deref(), Some("201"));

    // A TLS setting with a plain endpoint would do nothing: the plane refuses to start, naming it.
    let mut plain = DataPlaneConfig::new("traces_tls", "dp-plain", &gw.cp.grpc_url());
    plain.env = OtlpReceiver::start().await.env("grpc", "dp-plain");
    plain.env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), path(&certificates.ca)));
    let refused = DataPlane::start(&plain);
    let log = refused.log.clone();
    assert!(!refused.wait_exit().await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("OTEL_EXPORTER_OTLP_CERTIFICATE is set but the OTLP endpoint"), "{text}");
}
