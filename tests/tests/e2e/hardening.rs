//! Policies from hostile or careless authors, through the real planes: bounded and type-checked at write, compiled
//! again (and NACKed) by data planes, failing closed at run time, and never able to take a plane down.

use std::time::Duration;

use gateway_e2e::*;
use gateway_proto::v1;
use prost::Message;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The expression that used to overflow every data plane's stack at about 6 KB, and the control plane's at 40 KB.
fn hostile_sum(terms: usize) -> String {
    format!("1{} < 0", " + 1".repeat(terms))
}

struct Gateway {
    cp: ControlPlane,
    dp: DataPlane,
    key: String,
    _mock: MockUpstream,
}

impl Gateway {
    async fn start(pool: &PgPool, test: &str) -> Gateway {
        let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(pool))).await;
        let mock = MockUpstream::start(test, "up").await;
        cp.create("backends", json!({"name": "up", "kind": "openai", "base_url": mock.base_url()})).await;
        cp.create(
            "models",
            json!({"name": "m", "backend": "up", "upstream_model": "u", "capabilities": {"chat": true},
                   "pricing": {"input": "1", "output": "2"}}),
        )
        .await;
        cp.create("aliases", json!({"name": "gov-chat", "candidates": [{"model": "m"}]})).await;
        let (_, created) = cp.call("POST", "/keys", Some(json!({"name": "app"}))).await;
        let key = created["secret"].as_str().unwrap().to_owned();
        let version = cp.fleet().await["config_version"].as_u64().unwrap();
        let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
        dp.wait_for_version(version).await;
        Gateway { cp, dp, key, _mock: mock }
    }

    async fn chat(&self, metadata: Value) -> (u16, Value) {
        let body = json!({"model": "gov-chat", "messages": [{"role": "user", "content": "hi"}], "metadata": metadata});
        let response = self.dp.post("/v1/chat/completions", Some(&self.key), &body).await;
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn create_policy(&self, name: &str, when: &str, action: Value) -> (u16, Value) {
        self.cp
            .call(
                "POST",
                "/route-policies",
                Some(json!({"name": name, "priority": 1000, "when": when, "action": action})),
            )
            .await
    }
}

fn node<'a>(fleet: &'a Value, id: &str) -> Option<&'a Value> {
    fleet["nodes"].as_array()?.iter().find(|n| n["node_id"] == json!(id))
}

#[sqlx::test(migrations = false)]
async fn hostile_policies_never_crash_a_plane(pool: PgPool) {
    let test = "hostile_policies";
    let gw = Gateway::start(&pool, test).await;
    let deny = json!({"type": "deny", "message": "no"});

    // Refused at write with the limit named, at 6 KB and 40 KB alike; the control plane stays up.
    for terms in [1500, 10_000] {
        let (status, body) = gw.create_policy("sum", &hostile_sum(terms), deny.clone()).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("more than 1024 tokens") || message.contains("the limit is 8192"), "{message}");
    }
    assert_eq!(gw.chat(json!({})).await.0, 200);

    // Written behind the API's back, as by a control plane from before the bounds: every data plane compiles the
    // snapshot again, NACKs it, keeps serving its last good one and stays up.
    let (status, body) = gw.create_policy("sum", "request.stream", deny.clone()).await;
    assert_eq!(status, 201, "{body}");
    let good = gw.cp.fleet().await["config_version"].as_u64().unwrap();
    gw.dp.wait_for_version(good).await;
    let bad = publish_behind_the_api(
        &test_database_url(&pool),
        "UPDATE route_policies SET spec = jsonb_set(spec, '{when}', to_jsonb($1::text)) WHERE name = 'sum'",
        &hostile_sum(1500),
    )
    .await;
    let fleet = eventually(Duration::from_secs(20), "the NACK in the fleet view", || async {
        let fleet = gw.cp.fleet().await;
        (node(&fleet, "dp")?["last_nack_version"] == json!(bad)).then_some(fleet)
    })
    .await;
    let error = node(&fleet, "dp").unwrap()["last_nack_error"].as_str().unwrap().to_owned();
    assert!(error.contains("route_policy/sum when") && error.contains("more than 1024 tokens"), "{error}");
    assert_eq!(gw.chat(json!({})).await.0, 200, "the last good snapshot keeps serving");
    assert_eq!(gw.dp.version().await, Some(good));

    // A data plane restarted on a persisted snapshot that holds such a policy (written by an older data plane)
    // refuses it, stays up and waits for a control plane instead of crashing on its first request.
    let persisted = gw.dp.state_dir.join("last-good.snapshot.pb");
    let mut snapshot = v1::Snapshot::decode(std::fs::read(&persisted).unwrap().as_slice()).unwrap();
    let content = snapshot.content.as_mut().unwrap();
    content.route_policies.iter_mut().find(|p| p.name == "sum").unwrap().when = hostile_sum(1500);
    snapshot.content_hash = gateway_proto::convert::content_hash(content);
    let config = DataPlaneConfig::new(test, "restarted", "http://127.0.0.1:1");
    std::fs::create_dir_all(&config.state_dir).unwrap();
    std::fs::write(config.state_dir.join("last-good.snapshot.pb"), snapshot.encode_to_vec()).unwrap();
    let restarted = DataPlane::start(&config);
    let (status, _) =
        eventually(Duration::from_secs(20), "the restarted data plane to answer", || restarted.readyz()).await;
    assert_eq!(status, 503);
    let body = json!({"model": "gov-chat", "messages": [{"role": "user", "content": "hi"}]});
    let response = restarted.post("/v1/chat/completions", Some(&gw.key), &body).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], json!("not_ready"));
    let log = std::fs::read_to_string(&restarted.log).unwrap();
    assert!(log.contains("the persisted snapshot is unusable"), "{log}");
    assert!(restarted.readyz().await.is_some(), "still up after the request");
}

#[sqlx::test(migrations = false)]
async fn typos_are_refused_and_policies_that_cannot_decide_fail_closed(pool: PgPool) {
    let test = "fail_closed";
    let gw = Gateway::start(&pool, test).await;
    let deny = json!({"type": "deny", "message": "gov-chat needs a prompt"});

    // The mistyped deny that used to be accepted and then never match is refused, with its position.
    let (status, body) =
        gw.create_policy("gov", "request.model == 'gov-chat' && request.prompt_tokens > '0'", deny.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        json!(
            "route_policy \"gov\" is invalid: when: CEL no matching overload for '>' applied to (int, string) (at line 1, column 54)"
        )
    );
    for when in ["request.model + 1", "request.model", "request.stream == 'yes'", "nosuchfn(request.model)"] {
        let (status, body) = gw.create_policy("gov", when, deny.clone()).await;
        assert_eq!(status, 400, "{when}: {body}");
    }
    let (status, body) =
        gw.create_policy("gov", "request.model == 'gov-chat' && request.prompt_tokens > 0", deny).await;
    assert_eq!(status, 201, "{body}");
    let version = gw.cp.fleet().await["config_version"].as_u64().unwrap();
    gw.dp.wait_for_version(version).await;
    let (status, body) = gw.chat(json!({})).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("policy_denied")), "{body}");

    // A policy that reads metadata the request lacks cannot decide: the request is refused, naming the policy,
    // rather than routed as if the policy did not exist; the error is counted.
    let (status, body) = gw.cp.call("DELETE", "/route-policies/gov", None).await;
    assert_eq!(status, 204, "{body}");
    let residency = json!({"type": "constrain", "require": "backend.region == 'eu'"});
    let (status, body) = gw.create_policy("residency", "request.metadata.classification != 'public'", residency).await;
    assert_eq!(status, 201, "{body}");
    let version = gw.cp.fleet().await["config_version"].as_u64().unwrap();
    gw.dp.wait_for_version(version).await;
    let (status, body) = gw.chat(json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], json!("policy_evaluation_failed"));
    assert_eq!(
        body["error"]["message"],
        json!(
            "request refused: route policy 'residency' could not be evaluated for it (when: No such key: classification); policies fail closed, so a request a policy cannot decide is not served"
        )
    );
    assert_eq!(gw.chat(json!({"classification": "public"})).await.0, 200);
    let metrics = gw.dp.client().get(gw.dp.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"gateway_policy_errors_total{kind="route policy",policy="residency"} 1"#), "{metrics}");
}
