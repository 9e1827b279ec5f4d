//! Versioned snapshots over gRPC: propagation, convergence across replicas, restarts, static stability, NACKs,
//! node authentication.

use std::time::Duration;

use gateway_e2e::*;
use gateway_proto::v1;
use gateway_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use serde_json::{Value, json};
use sqlx::PgPool;

fn backend(name: &str) -> Value {
    json!({"name": name, "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "secret": {"value": "sk-e2e"}})
}

fn node<'a>(fleet: &'a Value, id: &str) -> Option<&'a Value> {
    fleet["nodes"].as_array()?.iter().find(|n| n["node_id"] == json!(id))
}

#[sqlx::test(migrations = false)]
async fn a_change_reaches_a_subscribed_data_plane(pool: PgPool) {
    let test = "change_reaches";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    let (status, body) = eventually(Duration::from_secs(20), "the data plane to answer", || dp.readyz()).await;
    assert!(status == 200 || status == 503, "{status} {body}");
    let version = cp.create("backends", backend("b1")).await;
    dp.wait_for_version(version).await;
    let fleet = eventually(Duration::from_secs(10), "the fleet view to show the ACK", || async {
        let fleet = cp.fleet().await;
        (node(&fleet, "dp")?["acked_version"] == json!(version)).then_some(fleet)
    })
    .await;
    let dp_node = node(&fleet, "dp").unwrap();
    assert_eq!(dp_node["connected"], json!(true));
    assert_eq!(dp_node["behind"], json!(false));
    assert_eq!(dp_node["replica"], json!("cp"));
}

#[sqlx::test(migrations = false)]
async fn two_data_planes_and_two_replicas_converge(pool: PgPool) {
    let test = "converge";
    let url = test_database_url(&pool);
    let cp_a = ControlPlane::start(ControlPlaneConfig::new(test, "cp-a", &url)).await;
    let cp_b = ControlPlane::start(ControlPlaneConfig::new(test, "cp-b", &url)).await;
    let dp1 = DataPlane::start(&DataPlaneConfig::new(test, "dp1", &cp_a.grpc_url()));
    let dp2 = DataPlane::start(&DataPlaneConfig::new(test, "dp2", &cp_b.grpc_url()));
    // Writes through either replica reach data planes on both: the other replica hears of them by NOTIFY.
    let v1 = cp_a.create("backends", backend("via-a")).await;
    dp1.wait_for_version(v1).await;
    dp2.wait_for_version(v1).await;
    let mut last = v1;
    for i in 0..5 {
        last = cp_b.create("backends", backend(&format!("burst-{i}"))).await;
    }
    dp1.wait_for_version(last).await;
    dp2.wait_for_version(last).await;
    assert_eq!(dp1.version().await, dp2.version().await);
    let (_, a) = dp1.readyz().await.unwrap();
    let (_, b) = dp2.readyz().await.unwrap();
    assert_eq!(a["content_hash"], b["content_hash"], "same version, same content");
    // Either replica's fleet view shows both nodes, whichever replica they are connected to.
    eventually(Duration::from_secs(10), "both nodes acked in cp-a's fleet view", || async {
        let fleet = cp_a.fleet().await;
        let both = ["dp1", "dp2"].iter().all(|id| node(&fleet, id).is_some_and(|n| n["acked_version"] == json!(last)));
        both.then_some(())
    })
    .await;
    let fleet = cp_b.fleet().await;
    assert_eq!(node(&fleet, "dp1").unwrap()["replica"], json!("cp-a"));
    assert_eq!(node(&fleet, "dp2").unwrap()["replica"], json!("cp-b"));
}

#[sqlx::test(migrations = false)]
async fn a_killed_control_plane_loses_nothing_and_data_planes_catch_up(pool: PgPool) {
    let test = "cp_restart";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let config = cp.config();
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    let before = cp.create("backends", backend("before-kill")).await;
    dp.wait_for_version(before).await;

    cp.kill().await;
    // The data plane keeps serving its snapshot while the control plane is away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dp.version().await, Some(before));

    let cp = ControlPlane::start(config).await;
    let (status, body) = cp.call("GET", "/backends/before-kill", None).await;
    assert_eq!(status, 200, "nothing committed was lost: {body}");
    let after = cp.create("backends", backend("after-restart")).await;
    dp.wait_for_version(after).await;
}

#[sqlx::test(migrations = false)]
async fn a_data_plane_restarted_without_a_control_plane_serves_its_persisted_snapshot(pool: PgPool) {
    let test = "static_stability";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    let dp = DataPlane::start(&config);
    let version = cp.create("backends", backend("b1")).await;
    dp.wait_for_version(version).await;
    let persisted = dp.state_dir.join("last-good.snapshot.pb");
    eventually(Duration::from_secs(10), "the snapshot to be persisted", || async { persisted.exists().then_some(()) })
        .await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&persisted).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the snapshot holds provider secrets: owner-only");
    }
    cp.kill().await;
    dp.kill().await;

    let restarted = DataPlane::start(&config);
    restarted.wait_for_version(version).await;

    // And a snapshot file alone is enough to serve, for local use.
    let mut alone = DataPlaneConfig::new(test, "dp-file", "http://127.0.0.1:9");
    alone.snapshot = Some(persisted);
    let from_file = DataPlane::start(&alone);
    from_file.wait_for_version(version).await;
}

#[sqlx::test(migrations = false)]
async fn a_snapshot_that_fails_to_compile_is_nacked_and_the_old_one_keeps_serving(pool: PgPool) {
    let test = "nack";
    let url = test_database_url(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &url)).await;
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    cp.create("backends", backend("b1")).await;
    cp.create(
        "models",
        json!({"name": "m1", "backend": "b1", "upstream_model": "m", "capabilities": {"chat": true},
                                "pricing": {"input": "1", "output": "2"}}),
    )
    .await;
    cp.create("aliases", json!({"name": "a1", "candidates": [{"model": "m1"}]})).await;
    let good = cp
        .create(
            "route-policies",
            json!({"name": "p1", "when": "request.model == 'a1'", "action": {"type": "route", "alias": "a1"}}),
        )
        .await;
    dp.wait_for_version(good).await;

    // Simulate version skew: a policy this data plane's engine cannot compile, written behind the API's back.
    let bad = publish_behind_the_api(
        &url,
        "UPDATE route_policies SET spec = jsonb_set(spec, '{when}', to_jsonb($1::text))",
        "request.future_field == 1",
    )
    .await;

    let fleet = eventually(Duration::from_secs(20), "the NACK in the fleet view", || async {
        let fleet = cp.fleet().await;
        (node(&fleet, "dp")?["last_nack_version"] == json!(bad)).then_some(fleet)
    })
    .await;
    let dp_node = node(&fleet, "dp").unwrap();
    let error = dp_node["last_nack_error"].as_str().unwrap();
    assert!(error.contains("route_policy/p1 when") && error.contains("future_field"), "{error}");
    assert_eq!(dp_node["acked_version"], json!(good));
    assert_eq!(dp_node["behind"], json!(true));
    assert_eq!(dp.version().await, Some(good), "the last good snapshot keeps serving");
}

#[sqlx::test(migrations = false)]
async fn a_bad_node_token_is_refused(pool: PgPool) {
    let test = "bad_token";
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    cp.create("backends", backend("b1")).await;

    let mut client = ConfigDiscoveryClient::connect(cp.grpc_url()).await.unwrap();
    let hello = v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello { node_id: "intruder".into(), ..Default::default() })),
    };
    let mut request = tonic::Request::new(tokio_stream_once(hello.clone()));
    request.metadata_mut().insert("authorization", "Bearer wrong-token".parse().unwrap());
    let status = client.subscribe(request).await.expect_err("a wrong token is refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "invalid node token");
    let status = client.subscribe(tonic::Request::new(tokio_stream_once(hello))).await.expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // A data plane with the wrong token never becomes ready and never joins the fleet.
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    config.node_token = "wrong-token".into();
    let dp = DataPlane::start(&config);
    let (status, body) = eventually(Duration::from_secs(20), "the data plane to answer", || dp.readyz()).await;
    assert_eq!(status, 503, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dp.readyz().await.unwrap().0, 503);
    assert!(node(&cp.fleet().await, "dp").is_none());
}

fn tokio_stream_once(
    message: v1::SubscribeRequest,
) -> impl tonic::codegen::tokio_stream::Stream<Item = v1::SubscribeRequest> {
    tonic::codegen::tokio_stream::iter(vec![message])
}

#[sqlx::test(migrations = false)]
async fn data_planes_can_be_required_to_present_a_client_certificate(pool: PgPool) {
    let test = "mtls";
    let dir = std::env::temp_dir().join(format!("gateway-e2e-mtls-{}", std::process::id()));
    let gateway_e2e::tls::Certificates { ca, server_cert, server_key, client_cert, client_key } =
        gateway_e2e::tls::certificates(&dir);
    let path = |p: &std::path::PathBuf| p.display().to_string();
    let mut config = ControlPlaneConfig::new(test, "cp", &test_database_url(&pool));
    config.env = vec![
        ("GATEWAY_GRPC_TLS_CERT".into(), path(&server_cert)),
        ("GATEWAY_GRPC_TLS_KEY".into(), path(&server_key)),
        ("GATEWAY_GRPC_CLIENT_CA".into(), path(&ca)),
    ];
    let cp = ControlPlane::start(config).await;
    let version = cp.create("backends", backend("b1")).await;
    let url = format!("https://127.0.0.1:{}", cp.grpc.port());

    let mut with_cert = DataPlaneConfig::new(test, "dp-cert", &url);
    with_cert.env = vec![
        ("GATEWAY_CONTROL_PLANE_CA".into(), path(&ca)),
        ("GATEWAY_NODE_CERT".into(), path(&client_cert)),
        ("GATEWAY_NODE_KEY".into(), path(&client_key)),
    ];
    let dp = DataPlane::start(&with_cert);
    dp.wait_for_version(version).await;

    // Trusting the server is not enough: without a client certificate the handshake fails.
    let mut without_cert = DataPlaneConfig::new(test, "dp-no-cert", &url);
    without_cert.env = vec![("GATEWAY_CONTROL_PLANE_CA".into(), path(&ca))];
    let refused = DataPlane::start(&without_cert);
    let (status, _) = eventually(Duration::from_secs(20), "the data plane to answer", || refused.readyz()).await;
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refused.readyz().await.unwrap().0, 503);
    let fleet = cp.fleet().await;
    assert!(node(&fleet, "dp-cert").is_some());
    assert!(node(&fleet, "dp-no-cert").is_none());
    let _ = std::fs::remove_dir_all(dir);
}

/// A backend on `mock`, a model, the alias `chat` and a key named `key`: the key's secret.
async fn configure_chat(cp: &ControlPlane, mock: &MockUpstream, key: &str) -> String {
    cp.create("backends", json!({"name": "mock", "kind": "openai", "base_url": mock.base_url()})).await;
    cp.create(
        "models",
        json!({"name": "m", "backend": "mock", "upstream_model": "m", "capabilities": {"chat": true},
               "pricing": {"input": "1", "output": "2"}}),
    )
    .await;
    cp.create("aliases", json!({"name": "chat", "candidates": [{"model": "m"}]})).await;
    create_key(cp, key).await
}

async fn create_key(cp: &ControlPlane, name: &str) -> String {
    let (status, created) = cp.call("POST", "/keys", Some(json!({"name": name}))).await;
    assert_eq!(status, 201, "{created}");
    created["secret"].as_str().unwrap().to_owned()
}

/// The status of a chat request with `key`.
async fn chat_status(dp: &DataPlane, key: &str) -> u16 {
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
    dp.post("/v1/chat/completions", Some(key), &body).await.status().as_u16()
}

/// The snapshot a data plane persisted, once it is `version` of `lineage`.
async fn persisted(dp: &DataPlane, lineage: &str, version: u64) -> v1::Snapshot {
    use prost::Message;
    let path = dp.state_dir.join("last-good.snapshot.pb");
    eventually(Duration::from_secs(10), "the snapshot to be persisted", || async {
        let snapshot = v1::Snapshot::decode(std::fs::read(&path).ok()?.as_slice()).ok()?;
        (snapshot.lineage == lineage && snapshot.version == version).then_some(snapshot)
    })
    .await
}

fn log_of(dp: &DataPlane) -> String {
    std::fs::read_to_string(&dp.log).unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn a_data_plane_takes_a_fresh_database_s_configuration_whatever_its_own_version(pool: PgPool) {
    let test = "lineage_fresh";
    let mock = MockUpstream::start(test, "mock").await;
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let mut config = DataPlaneConfig::new(test, "dp", &cp.grpc_url());
    let dp = DataPlane::start(&config);
    let old_key = configure_chat(&cp, &mock, "old").await;
    for i in 0..8 {
        cp.create("backends", backend(&format!("filler-{i}"))).await;
    }
    let (old_lineage, old_version) = cp.head().await;
    dp.wait_for_snapshot(&old_lineage, old_version).await;
    assert_eq!(chat_status(&dp, &old_key).await, 200);
    persisted(&dp, &old_lineage, old_version).await;
    cp.kill().await;
    dp.kill().await;

    // The next run starts on a new database: its counter starts again, far below the data plane's.
    let fresh = ExtraDatabase::fresh(&database_name(test)).await;
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp-fresh", &fresh.url)).await;
    let new_key = configure_chat(&cp, &mock, "new").await;
    let (new_lineage, new_version) = cp.head().await;
    assert_ne!(new_lineage, old_lineage, "a new database is a new lineage");
    assert!(new_version < old_version, "{new_version} < {old_version}: the case that used to be ignored");

    config.control_plane = cp.grpc_url();
    let dp = DataPlane::start(&config);
    dp.wait_for_snapshot(&new_lineage, new_version).await;
    assert_eq!(dp.version().await, Some(new_version), "the new store's version, lower than the one held");
    assert_eq!(chat_status(&dp, &new_key).await, 200, "the key created in the new database works");
    assert_eq!(chat_status(&dp, &old_key).await, 401, "the old database's key is gone");
    persisted(&dp, &new_lineage, new_version).await;
    assert!(log_of(&dp).contains("another configuration lineage"), "a loud log line\n{}", log_tail(&dp.log));

    let fleet = eventually(Duration::from_secs(10), "the fleet view to show the adoption", || async {
        let fleet = cp.fleet().await;
        (node(&fleet, "dp")?["acked_version"] == json!(new_version)).then_some(fleet)
    })
    .await;
    let dp_node = node(&fleet, "dp").unwrap();
    assert_eq!(dp_node["lineage"], json!(new_lineage));
    assert_eq!(dp_node["behind"], json!(false));
    assert_eq!(dp_node["adopted_from"]["reason"], json!("lineage_changed"), "{dp_node}");
    assert_eq!(dp_node["adopted_from"]["lineage"], json!(old_lineage));
    assert_eq!(dp_node["adopted_from"]["version"], json!(old_version));

    // Within the new lineage, versions order as usual: the next write is taken.
    let (status, _) = cp.call("POST", "/keys/new/revoke", None).await;
    assert_eq!(status, 200);
    let (_, revoked) = cp.head().await;
    dp.wait_for_snapshot(&new_lineage, revoked).await;
    assert_eq!(chat_status(&dp, &new_key).await, 401);
}

#[sqlx::test(migrations = false)]
async fn a_store_restored_from_a_backup_moves_past_its_fleet_and_is_served(pool: PgPool) {
    let test = "lineage_restore";
    let mock = MockUpstream::start(test, "mock").await;
    let database = test_database_name(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let cp_config = cp.config();
    let dp1 = DataPlane::start(&DataPlaneConfig::new(test, "dp1", &cp.grpc_url()));
    let mut dp2_config = DataPlaneConfig::new(test, "dp2", &cp.grpc_url());
    let dp2 = DataPlane::start(&dp2_config);
    let kept_key = configure_chat(&cp, &mock, "kept").await;
    let (lineage, backed_up) = cp.head().await;
    dp1.wait_for_snapshot(&lineage, backed_up).await;
    dp2.wait_for_snapshot(&lineage, backed_up).await;

    // The backup: a copy of the database, taken while nothing is connected to it.
    cp.kill().await;
    pool.close().await;
    let backup = ExtraDatabase::copy_of(&database, &database_name(test)).await;

    // Life goes on after the backup, and the fleet takes it.
    let cp = ControlPlane::start(cp_config.clone()).await;
    let lost_key = create_key(&cp, "lost").await;
    for i in 0..3 {
        cp.create("backends", backend(&format!("after-backup-{i}"))).await;
    }
    let (_, latest) = cp.head().await;
    assert!(latest > backed_up);
    dp1.wait_for_snapshot(&lineage, latest).await;
    dp2.wait_for_snapshot(&lineage, latest).await;
    assert_eq!(chat_status(&dp1, &lost_key).await, 200);
    persisted(&dp2, &lineage, latest).await;
    cp.kill().await;
    // Stopped before the restore, so each node meets the restored store with one process and one connection, and
    // the mover's log below tells its whole story. (A process that moves the store and dies before taking the new
    // version leaves its successor holding a skipped version: the unit test
    // `lineage::a_version_the_store_skipped_is_from_a_lost_timeline`.)
    dp2.kill().await;

    // The restore: two replicas on the backup, one in place of the old control plane, one new; a data plane on each.
    let mut restored = cp_config;
    restored.database_url = backup.url.clone();
    let cp_a = ControlPlane::start(restored).await;
    let cp_b = ControlPlane::start(ControlPlaneConfig::new(test, "cp-b", &backup.url)).await;
    assert_eq!(cp_a.head().await.0, lineage, "a restored backup keeps its lineage");
    dp2_config.control_plane = cp_b.grpc_url();
    let dp2 = DataPlane::start(&dp2_config);

    // Both data planes held a version the restored store never reached: it moves past it, once, and both serve the
    // restored configuration at that version.
    dp1.wait_for_snapshot(&lineage, latest + 1).await;
    dp2.wait_for_snapshot(&lineage, latest + 1).await;
    assert_eq!(cp_b.head().await, (lineage.clone(), latest + 1), "moved exactly past the fleet, once");
    let (_, dp1_ready) = dp1.readyz().await.unwrap();
    let (_, dp2_ready) = dp2.readyz().await.unwrap();
    assert_eq!(dp1_ready["content_hash"], dp2_ready["content_hash"]);
    for dp in [&dp1, &dp2] {
        assert_eq!(dp.version().await, Some(latest + 1));
        assert_eq!(chat_status(dp, &kept_key).await, 200, "the restored configuration is served");
        assert_eq!(chat_status(dp, &lost_key).await, 401, "what came after the backup is gone");
    }
    let (status, audit) = cp_a.call("GET", "/audit?action=advance", None).await;
    assert_eq!(status, 200, "{audit}");
    let advances: Vec<&Value> = audit["items"].as_array().into_iter().flatten().collect();
    assert_eq!(advances.len(), 1, "{audit}");
    let advance = advances[0];
    assert_eq!(advance["config_version"], json!(latest + 1));
    assert_eq!(advance["before"]["version"], json!(backed_up));
    let advanced_for = advance["actor"].as_str().unwrap().strip_prefix("data-plane:").unwrap().to_owned();
    let fleet = eventually(Duration::from_secs(10), "both nodes acked in the fleet view", || async {
        let fleet = cp_a.fleet().await;
        let acked =
            ["dp1", "dp2"].iter().all(|id| node(&fleet, id).is_some_and(|n| n["acked_version"] == json!(latest + 1)));
        acked.then_some(fleet)
    })
    .await;
    // Whichever moved the store, both gave up a configuration the restored store had lost, and the fleet says so.
    for id in ["dp1", "dp2"] {
        let held = node(&fleet, id).unwrap();
        assert_eq!(held["adopted_from"]["reason"], json!("store_behind"), "{held}");
        assert_eq!(held["adopted_from"]["version"], json!(latest));
        assert_eq!(held["adopted_from"]["lineage"], json!(lineage));
    }
    let moved_dp = if advanced_for == "dp1" { &dp1 } else { &dp2 };
    let log = log_of(moved_dp);
    assert!(log.contains("ignoring a snapshot older") && log.contains("published its configuration past"), "{log}");

    // A key revoked on the restored store is refused across the fleet promptly.
    let (status, _) = cp_b.call("POST", "/keys/kept/revoke", None).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    for dp in [&dp1, &dp2] {
        eventually(Duration::from_secs(10), "the revoked key refused", || async {
            (chat_status(dp, &kept_key).await == 401).then_some(())
        })
        .await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "refused after {:?}", started.elapsed());
}

#[sqlx::test(migrations = false)]
async fn a_database_restored_under_a_running_control_plane_is_served_past_the_fleet(pool: PgPool) {
    let test = "lineage_in_place";
    let mock = MockUpstream::start(test, "mock").await;
    let database = test_database_name(&pool);
    let cp = ControlPlane::start(ControlPlaneConfig::new(test, "cp", &test_database_url(&pool))).await;
    let cp_config = cp.config();
    let dp = DataPlane::start(&DataPlaneConfig::new(test, "dp", &cp.grpc_url()));
    let kept_key = configure_chat(&cp, &mock, "kept").await;
    let (lineage, backed_up) = cp.head().await;
    dp.wait_for_snapshot(&lineage, backed_up).await;
    cp.kill().await;
    pool.close().await;
    let backup = ExtraDatabase::copy_of(&database, &database_name(test)).await;

    let cp = ControlPlane::start(cp_config).await;
    let lost_key = create_key(&cp, "lost").await;
    cp.create("backends", backend("after-backup")).await;
    let (_, latest) = cp.head().await;
    dp.wait_for_snapshot(&lineage, latest).await;
    assert_eq!(chat_status(&dp, &lost_key).await, 200);

    // The database is restored in place while the control plane runs: it reconnects, finds the store behind the
    // data plane's version, moves past it and publishes the restored configuration, without a restart.
    backup.restore_into(&database).await;
    dp.wait_for_snapshot(&lineage, latest + 1).await;
    assert_eq!(cp.head().await, (lineage.clone(), latest + 1));
    assert_eq!(chat_status(&dp, &kept_key).await, 200);
    assert_eq!(chat_status(&dp, &lost_key).await, 401, "what came after the backup is gone");
    let (status, _) = cp.call("POST", "/keys/kept/revoke", None).await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), "the revoked key refused", || async {
        (chat_status(&dp, &kept_key).await == 401).then_some(())
    })
    .await;
}
