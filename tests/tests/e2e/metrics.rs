//! Both planes' `/metrics` after known traffic: a success, a failover, a stream and refusals through a real data
//! plane, spend into a real control plane; every figure the traffic determines is checked exactly, from the
//! Prometheus text parsed line by line (and held to the format: a `# TYPE` for every family, once).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use gateway_e2e::*;
use serde_json::json;
use sqlx::PgPool;

use crate::spend::{config_version, configure, fast_spend};

/// One sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a text exposition, refusing what Prometheus would refuse: a sample of a family without a
/// `# TYPE` before it, a family typed twice, a malformed line.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(typed.insert(family.to_owned(), kind.to_owned()).is_none(), "{family} typed twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                matches!(typed.get(base).map(String::as_str), Some("histogram" | "summary")).then_some(base)
            })
            .unwrap_or(&sample.name);
        assert!(typed.contains_key(family), "{} has no # TYPE before it", sample.name);
        samples.push(sample);
    }
    samples
}

fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("malformed sample line {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // A label: name="value" (escapes \\ \" \n), then , or }.
            let Some(&(start, c)) = chars.peek() else { bad() };
            if c == '}' {
                end = start + 1;
                break;
            }
            let eq = after[start..].find('=').unwrap_or_else(|| bad()) + start;
            let key = after[start..eq].to_owned();
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => bad(),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            }
            assert!(labels.insert(key, value).is_none(), "label repeated in {line:?}");
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    end = i + 1;
                    break;
                }
                _ => bad(),
            }
        }
        rest = &after[end..];
    }
    let value = rest.trim().split(' ').next().unwrap_or_else(|| bad());
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or_else(|_| bad()),
    };
    Sample { name: name.to_owned(), labels, value }
}

/// The scraped samples, queried by name and labels.
struct Scrape(Vec<Sample>);

impl Scrape {
    async fn of(url: String) -> Scrape {
        let response = http_client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        Scrape(parse(&response.text().await.unwrap()))
    }

    /// The samples named `name` whose labels include `labels`.
    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The sum of those samples' values (0 when there is none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    /// The one sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> =
            self.matching(name, labels).into_iter().filter(|s| s.labels.len() == labels.len()).collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    fn label_values(&self, prefix: &str, label: &str) -> HashSet<String> {
        self.0.iter().filter(|s| s.name.starts_with(prefix)).filter_map(|s| s.labels.get(label).cloned()).collect()
    }
}

#[test]
fn the_parser_reads_labels_escapes_and_histograms() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"u,o}te\",y=\"\\\\\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n# TYPE g gauge\ng 1.5e3\n";
    let samples = parse(text);
    assert_eq!(samples.len(), 5);
    assert_eq!(samples[0].labels["x"], "q\"u,o}te");
    assert_eq!(samples[0].labels["y"], "\\");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(samples[4].value, 1500.0);
    let untyped = std::panic::catch_unwind(|| parse("b 1\n"));
    assert!(untyped.is_err(), "a sample without # TYPE is refused");
    let twice = std::panic::catch_unwind(|| parse("# TYPE b gauge\n# TYPE b gauge\n"));
    assert!(twice.is_err(), "a family typed twice is refused");
}

#[sqlx::test(migrations = false)]
async fn both_planes_count_the_requests_tokens_cost_and_failovers_they_served(pool: PgPool) {
    let test = "metrics";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mocks = vec![MockUpstream::start(test, "m0").await, MockUpstream::start(test, "m1").await];
    let key = configure(&cp, &mocks).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.env = fast_spend();
    let dp = DataPlane::start(&config);
    let version = config_version(&cp).await;
    dp.wait_for_version(version).await;

    let usage = json!({"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290});
    // plain → m0; failover: m0 fails (500), m1 answers (its default: 12 + 5 tokens); the stream → m0.
    mocks[0].script(json!([{"usage": usage}, {"status": 500}, {"usage": usage}])).await;
    let chat =
        |stream: bool| json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    for (stream, what) in [(false, "plain"), (false, "failover"), (true, "stream")] {
        let response = dp.post("/v1/chat/completions", Some(&key), &chat(stream)).await;
        assert_eq!(response.status(), 200, "{what}");
        let text = response.text().await.unwrap();
        if stream {
            assert!(text.contains("[DONE]"), "{text}");
        }
    }
    let refused = dp.post("/v1/chat/completions", Some("sk-not-a-key"), &chat(false)).await;
    assert_eq!(refused.status(), 401);
    let unknown = json!({"model": "no-such-model-from-the-caller", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(dp.post("/v1/chat/completions", Some(&key), &unknown).await.status(), 404);
    // Every request's spend event is in the ledger: each was recorded, and its series with it.
    cp.wait_for_spend_events(3).await;

    let metrics = Scrape::of(dp.url("/metrics")).await;
    let up0 = [("alias", "chat"), ("backend", "up0"), ("model", "priced0")];
    let up1 = [("alias", "chat"), ("backend", "up1"), ("model", "priced1")];
    let with = |base: &[(&'static str, &'static str)], more: &[(&'static str, &'static str)]| {
        base.iter().chain(more).copied().collect::<Vec<_>>()
    };
    let ok = [("status", "200"), ("outcome", "ok")];
    assert_eq!(metrics.value("gateway_requests_total", &with(&up0, &ok)), 2.0, "plain and the stream");
    assert_eq!(metrics.value("gateway_requests_total", &with(&up1, &ok)), 1.0, "served after failing over");
    assert_eq!(metrics.sum("gateway_requests_total", &[]), 3.0, "refusals never reach an upstream");
    assert_eq!(metrics.value("gateway_tokens_total", &with(&up0, &[("kind", "input")])), 2468.0);
    assert_eq!(metrics.value("gateway_tokens_total", &with(&up0, &[("kind", "output")])), 112.0);
    assert_eq!(metrics.value("gateway_tokens_total", &with(&up1, &[("kind", "input")])), 12.0);
    assert_eq!(metrics.value("gateway_tokens_total", &with(&up1, &[("kind", "output")])), 5.0);
    // 1234 x 2.50 + 56 x 10.00 per million = 0.003645 USD, twice; 12 x 2.50 + 5 x 10.00 per million = 0.00008 USD.
    assert_eq!(metrics.value("gateway_cost_nano_usd_total", &up0), 7_290_000.0);
    assert_eq!(metrics.value("gateway_cost_nano_usd_total", &up1), 80_000.0);
    assert_eq!(metrics.value("gateway_failovers_total", &[("alias", "chat"), ("backend", "up1")]), 1.0);
    assert_eq!(metrics.value("gateway_upstream_errors_total", &[("backend", "up0"), ("class", "server_error")]), 1.0);
    assert_eq!(metrics.sum("gateway_upstream_errors_total", &[]), 1.0);
    assert_eq!(metrics.value("gateway_request_duration_seconds_count", &up0), 2.0);
    assert_eq!(metrics.value("gateway_request_duration_seconds_count", &up1), 1.0);
    assert_eq!(metrics.value("gateway_request_duration_seconds_bucket", &with(&up0, &[("le", "+Inf")])), 2.0);
    assert_eq!(metrics.value("gateway_time_to_first_token_seconds_count", &up0), 1.0, "only the stream");
    assert!(metrics.matching("gateway_time_to_first_token_seconds_count", &up1).is_empty());
    assert_eq!(metrics.value("gateway_refusals_total", &[("reason", "auth"), ("code", "invalid_api_key")]), 1.0);
    assert_eq!(metrics.value("gateway_refusals_total", &[("reason", "bad_request"), ("code", "model_not_found")]), 1.0);
    assert_eq!(metrics.value("gateway_request_errors_total", &[("code", "invalid_api_key")]), 1.0);
    assert_eq!(metrics.sum("gateway_request_errors_total", &[]), 2.0, "the two refusals; the failover was served");
    assert_eq!(metrics.value("gateway_snapshot_version", &[]), version as f64);
    assert!(!metrics.0.iter().any(|s| s.labels.values().any(|v| v.contains("no-such-model"))), "caller's names");
    assert!(!metrics.0.iter().any(|s| s.labels.values().any(|v| v.contains(&key))), "no key secret");

    // The control plane: the spend it ingested, the snapshot it built, the data plane connected, its admin calls.
    let metrics = eventually(Duration::from_secs(30), "the spend ingested", || async {
        let metrics = Scrape::of(format!("http://{}/metrics", cp.admin)).await;
        (metrics.sum("gateway_spend_events_ingested_total", &[]) == 3.0).then_some(metrics)
    })
    .await;
    assert!(metrics.sum("gateway_spend_batches_ingested_total", &[("result", "committed")]) >= 1.0);
    let lags = metrics.value("gateway_spend_ingest_lag_seconds_count", &[]);
    assert!((1.0..=3.0).contains(&lags), "one sample per event committed (a redelivered batch adds none): {lags}");
    assert_eq!(metrics.value("gateway_snapshot_version", &[]), version as f64);
    assert!(metrics.value("gateway_snapshot_size_bytes", &[]) > 0.0);
    assert!(metrics.value("gateway_snapshot_build_seconds_count", &[]) >= 1.0);
    let connected = metrics.matching("gateway_data_planes_connected", &[("config_version", &version.to_string())]);
    assert_eq!(connected.iter().map(|s| s.value).sum::<f64>(), 1.0, "{connected:?}");
    assert!(metrics.value("gateway_db_pool_connections", &[]) >= 1.0);
    assert!(metrics.value("gateway_db_pool_idle_connections", &[]) >= 0.0);
    let created = [("method", "POST"), ("route", "/admin/v1/backends"), ("status", "201")];
    assert_eq!(metrics.value("gateway_admin_requests_total", &created), 2.0, "the two backends");
    let models = [("method", "POST"), ("route", "/admin/v1/models"), ("status", "201")];
    assert_eq!(metrics.value("gateway_admin_requests_total", &models), 3.0);
    assert_eq!(metrics.value("gateway_admin_request_duration_seconds_count", &created), 2.0);

    // Route templates, never raw paths.
    assert_eq!(cp.call("GET", "/backends/up0", None).await.0, 200);
    assert_eq!(cp.call("GET", "/no/such/route-xyz", None).await.0, 404);
    let metrics = Scrape::of(format!("http://{}/metrics", cp.admin)).await;
    let read = [("method", "GET"), ("route", "/admin/v1/backends/{name}"), ("status", "200")];
    assert_eq!(metrics.value("gateway_admin_requests_total", &read), 1.0);
    let routes = metrics.label_values("gateway_admin_request", "route");
    assert!(routes.iter().all(|r| !r.contains("up0") && !r.contains("route-xyz")), "{routes:?}");
    assert_eq!(metrics.sum("gateway_admin_requests_total", &[("route", "unmatched"), ("status", "404")]), 1.0);
}
