//! The data plane in this process, for tests of its request pipeline that need neither Postgres nor a control
//! plane: a [`Snapshot`] built in the test from the same JSON bodies the admin API takes, served by
//! `data_plane::run` on a free loopback port on a runtime of its own ([`Pipeline`]), usually in front of in-process
//! mock upstreams (`MockUpstream::in_process`). Starting one takes milliseconds, plus the tokenizer's load.
//!
//! The data plane serves the snapshot as a snapshot file (`--snapshot`), so it never connects to a control plane:
//! its spend events are made, spooled under its state directory and never sent. What crosses the planes (snapshots
//! over gRPC, the spend ledger, restarts of real processes) stays in the end-to-end tests (`tests/e2e/`).
//!
//! The process-wide parts of a data plane stay process-wide: the Prometheus recorder (`/metrics` counts every
//! pipeline of the process, so a test that counts a metric counts labels no other test touches) and the tracing
//! subscriber (the first pipeline's log, `target/e2e-logs/<test>/pipeline.log`). nextest runs each test in a
//! process of its own; `cargo test` runs them together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use data_plane::settings::{Cli, Command};
use data_plane::state::Current;
use gateway_proto::{convert, v1};
use policy_engine::config::{ConfigSet, SecretSpec};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::background::Background;
use crate::{GatewayApi, log_path};

/// A configuration built in the test, as the control plane would publish it: resources from admin API bodies,
/// API keys whose secrets the test knows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    config: ConfigSet,
    keys: Vec<v1::ApiKey>,
}

/// An API key as `POST /admin/v1/keys` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    allowed_aliases: Vec<String>,
    #[serde(default)]
    rpm_limit: Option<i32>,
    #[serde(default)]
    tpm_limit: Option<i64>,
    #[serde(default)]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Add `spec` (an admin API body) to `resources` under its name.
fn insert<T: DeserializeOwned>(resources: &mut BTreeMap<String, T>, kind: &str, spec: Value) {
    let name = spec["name"].as_str().unwrap_or_else(|| panic!("a {kind} needs a name: {spec}")).to_owned();
    let parsed = serde_json::from_value(spec.clone()).unwrap_or_else(|e| panic!("{kind} {spec}: {e}"));
    assert!(resources.insert(name.clone(), parsed).is_none(), "{kind} {name} is defined twice");
}

impl Snapshot {
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    pub fn backend(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.backends, "backend", spec);
        self
    }

    pub fn model(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.models, "model", spec);
        self
    }

    pub fn alias(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.aliases, "alias", spec);
        self
    }

    pub fn route_policy(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.route_policies, "route policy", spec);
        self
    }

    pub fn tool_schema(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.tool_schemas, "tool schema", spec);
        self
    }

    pub fn tool_policy(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.tool_policies, "tool policy", spec);
        self
    }

    pub fn budget(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.budgets, "budget", spec);
        self
    }

    pub fn guardrail(&mut self, spec: Value) -> &mut Snapshot {
        insert(&mut self.config.guardrails, "guardrail", spec);
        self
    }

    /// An API key from a `POST /keys` body; its secret, as the admin API shows it once.
    pub fn key(&mut self, spec: Value) -> String {
        let spec: KeySpec = serde_json::from_value(spec.clone()).unwrap_or_else(|e| panic!("key {spec}: {e}"));
        assert!(self.keys.iter().all(|k| k.name != spec.name), "key {} is defined twice", spec.name);
        let secret = format!("gwk_pipeline_{}_{}", spec.name, self.keys.len());
        self.keys.push(v1::ApiKey {
            id: format!("key-{}", self.keys.len()),
            name: spec.name,
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            team: spec.team.unwrap_or_default(),
            tags: spec.tags,
            allowed_aliases: spec.allowed_aliases,
            rpm_limit: spec.rpm_limit,
            tpm_limit: spec.tpm_limit,
            expires_at_unix: spec.expires_at.map(|at| at.timestamp()),
            revoked: false,
        });
        secret
    }

    /// Revoke the key `name`, as `POST /keys/{name}/revoke` does.
    pub fn revoke(&mut self, name: &str) -> &mut Snapshot {
        let key = self.keys.iter_mut().find(|k| k.name == name).unwrap_or_else(|| panic!("no key {name}"));
        key.revoked = true;
        self
    }

    /// The snapshot a control plane would send: version 1, secrets as it opens them, its content hash.
    pub fn build(&self) -> v1::Snapshot {
        let content = convert::encode(&self.config, self.keys.clone(), |backend| match backend.secret.as_ref()? {
            SecretSpec::Value(value) => Some(v1::backend::Secret::SecretValue(value.clone())),
            SecretSpec::Ref(reference) => Some(v1::backend::Secret::SecretRef(reference.clone())),
            SecretSpec::Sealed(_) => panic!("backend {}: a test snapshot holds open secrets only", backend.name),
        });
        v1::Snapshot {
            version: 1,
            content_hash: convert::content_hash(&content),
            content: Some(content),
            lineage: String::new(),
        }
    }
}

/// A data plane served by `data_plane::run` in this process, on its own runtime; stopped (and its state directory
/// removed) when dropped.
pub struct Pipeline {
    api: GatewayApi,
    /// Where its snapshot file and spend spool live.
    pub state_dir: PathBuf,
    /// The snapshot served, as the data plane holds it.
    pub current: Arc<Current>,
    /// `None` only while dropping.
    running: Option<Background>,
}

impl Pipeline {
    /// Serve `snapshot` with the default settings.
    pub async fn start(test: &str, snapshot: &Snapshot) -> Pipeline {
        Pipeline::start_with(test, snapshot, &[]).await
    }

    /// Serve `snapshot` with the data plane's command-line `flags` (`--max-body-bytes=65536`) on top of the
    /// harness's own; wait until it is ready (the snapshot and the tokenizer loaded).
    pub async fn start_with(test: &str, snapshot: &Snapshot, flags: &[&str]) -> Pipeline {
        init_tracing(test);
        let state_dir =
            std::env::temp_dir().join(format!("gateway-pipeline-{test}-{}-{}", std::process::id(), instance()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let file = data_plane::persist::write(&state_dir, &snapshot.build())
            .unwrap_or_else(|e| panic!("writing the snapshot file under {}: {e}", state_dir.display()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the data plane");
        let addr = listener.local_addr().expect("the data plane's address");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let mut argv = vec![
            "data-plane".to_owned(),
            "serve".to_owned(),
            format!("--listen-addr={addr}"),
            format!("--snapshot={}", file.display()),
            format!("--state-dir={}", state_dir.display()),
            format!("--node-id=pipeline-{test}"),
            // Never dialled while a snapshot file is served; a closed port should that ever change.
            "--control-plane=http://127.0.0.1:9".to_owned(),
            // Dropping the pipeline waits for the drain: keep it short.
            "--shutdown-drain-ms=2000".to_owned(),
        ];
        argv.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let Command::Serve(args) = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command;
        let current = Arc::new(Current::default());
        let served = current.clone();
        let running = Background::spawn(&format!("data-plane-{test}"), 2, move |stop| async move {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            data_plane::run(args, listener, served, stop).await.map_err(|e| format!("{e:#}"))
        });
        let mut pipeline = Pipeline { api: GatewayApi::new(addr), state_dir, current, running: Some(running) };
        pipeline.wait_ready().await;
        pipeline
    }

    async fn wait_ready(&mut self) {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        loop {
            if self.readyz().await.is_some_and(|(status, _)| status == 200) {
                return;
            }
            if let Some(ended) = self.running.as_mut().and_then(Background::ended) {
                panic!("the data plane ended before it was ready: {ended:?}");
            }
            assert!(
                Instant::now() < deadline,
                "the data plane was not ready within {timeout:?}: {:?}",
                self.readyz().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::ops::Deref for Pipeline {
    type Target = GatewayApi;

    fn deref(&self) -> &GatewayApi {
        &self.api
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Stop the data plane first (the field would drop after this body), then remove what it wrote.
        drop(self.running.take());
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// A number of this pipeline's own within the process, for its state directory.
fn instance() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The data plane's log in `target/e2e-logs/<test>/pipeline.log`, as the processes of the end-to-end tests have
/// theirs; the subscriber is the process's, so the first pipeline's test names it.
fn init_tracing(test: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(file) = std::fs::File::create(log_path(test, "pipeline")) else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,data_plane=debug"))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init();
    });
}
