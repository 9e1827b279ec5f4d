//! The end-to-end harness: starts the real `control-plane` and `data-plane` binaries against a real Postgres,
//! on free loopback ports, and talks to them over HTTP and gRPC. Processes are killed when their handle drops.
//! Each process logs to `target/e2e-logs/<test>/<name>.log`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

pub const ADMIN_TOKEN: &str = "e2e-admin-token";
pub const NODE_TOKEN: &str = "e2e-node-token";
pub const SECRET_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// An HTTP client (installing the TLS crypto provider reqwest is built to expect, once).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A built workspace binary, next to the test executable's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (scripts/test.sh does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A free loopback port (bound, then released for the process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn log_file(test: &str, name: &str) -> std::fs::File {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("e2e-logs").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()
}

/// Wait until `check` returns `Some`, polling; panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database URL for database `name` on the server of `DATABASE_URL`.
pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL names a database");
    format!("{prefix}/{name}")
}

pub struct ControlPlane {
    child: Child,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub http: reqwest::Client,
    config: ControlPlaneConfig,
}

#[derive(Clone)]
pub struct ControlPlaneConfig {
    pub test: String,
    pub name: String,
    pub database_url: String,
    pub admin_port: u16,
    pub grpc_port: u16,
    pub env: Vec<(String, String)>,
}

impl ControlPlaneConfig {
    pub fn new(test: &str, name: &str, database_url: &str) -> ControlPlaneConfig {
        ControlPlaneConfig {
            test: test.to_owned(),
            name: name.to_owned(),
            database_url: database_url.to_owned(),
            admin_port: free_port(),
            grpc_port: free_port(),
            env: Vec::new(),
        }
    }
}

impl ControlPlane {
    /// Start and wait until the admin API is ready.
    pub async fn start(config: ControlPlaneConfig) -> ControlPlane {
        let log = log_file(&config.test, &config.name);
        let child = Command::new(binary("control-plane"))
            .arg("serve")
            .env("DATABASE_URL", &config.database_url)
            .env("GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{}", config.admin_port))
            .env("GATEWAY_GRPC_ADDR", format!("127.0.0.1:{}", config.grpc_port))
            .env("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("GATEWAY_NODE_TOKEN", NODE_TOKEN)
            .env("GATEWAY_SECRET_KEY", SECRET_KEY)
            .env("GATEWAY_REPLICA_ID", &config.name)
            .env("RUST_LOG", "info,control_plane=debug")
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn control-plane");
        let plane = ControlPlane {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], config.admin_port)),
            grpc: SocketAddr::from(([127, 0, 0, 1], config.grpc_port)),
            http: http_client(),
            config,
        };
        let url = format!("http://{}/readyz", plane.admin);
        let http = plane.http.clone();
        eventually(Duration::from_secs(30), "the control plane to be ready", || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        plane
    }

    pub fn config(&self) -> ControlPlaneConfig {
        self.config.clone()
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// SIGKILL: no graceful shutdown.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}/admin/v1{path}", self.admin);
        let mut request = self.http.request(method.parse().unwrap(), url).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Create, asserting success; returns the new config version.
    pub async fn create(&self, collection: &str, body: Value) -> u64 {
        let (status, reply) = self.call("POST", &format!("/{collection}"), Some(body)).await;
        assert!(status == 201, "create {collection}: {status} {reply}");
        reply["meta"]["revision"].as_u64().unwrap_or_else(|| reply["revision"].as_u64().unwrap())
    }

    pub async fn fleet(&self) -> Value {
        self.call("GET", "/fleet", None).await.1
    }
}

pub struct DataPlane {
    child: Child,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    http: reqwest::Client,
}

pub struct DataPlaneConfig {
    pub test: String,
    pub node_id: String,
    pub control_plane: String,
    pub node_token: String,
    pub state_dir: PathBuf,
    pub snapshot: Option<PathBuf>,
    pub port: u16,
    pub env: Vec<(String, String)>,
}

impl DataPlaneConfig {
    pub fn new(test: &str, node_id: &str, control_plane: &str) -> DataPlaneConfig {
        let state_dir = std::env::temp_dir().join(format!("gateway-e2e-{test}-{node_id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        DataPlaneConfig {
            test: test.to_owned(),
            node_id: node_id.to_owned(),
            control_plane: control_plane.to_owned(),
            node_token: NODE_TOKEN.to_owned(),
            state_dir,
            snapshot: None,
            port: free_port(),
            env: Vec::new(),
        }
    }
}

impl DataPlane {
    pub fn start(config: &DataPlaneConfig) -> DataPlane {
        let log = log_file(&config.test, &config.node_id);
        let mut command = Command::new(binary("data-plane"));
        command
            .arg("serve")
            .env("GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{}", config.port))
            .env("GATEWAY_CONTROL_PLANE", &config.control_plane)
            .env("GATEWAY_NODE_TOKEN", &config.node_token)
            .env("GATEWAY_NODE_ID", &config.node_id)
            .env("GATEWAY_STATE_DIR", &config.state_dir)
            .env("RUST_LOG", "info,data_plane=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(snapshot) = &config.snapshot {
            command.env("GATEWAY_SNAPSHOT", snapshot);
        }
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().expect("spawn data-plane");
        DataPlane {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], config.port)),
            state_dir: config.state_dir.clone(),
            http: http_client(),
        }
    }

    /// `/readyz`: the status code and body (`None` while the process is not answering yet).
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let response = self.http.get(format!("http://{}/readyz", self.addr)).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// The snapshot version served, once ready.
    pub async fn version(&self) -> Option<u64> {
        let (status, body) = self.readyz().await?;
        (status == 200).then(|| body["snapshot_version"].as_u64()).flatten()
    }

    /// Wait until the data plane serves `version` (or newer).
    pub async fn wait_for_version(&self, version: u64) {
        eventually(
            Duration::from_secs(20),
            &format!("data plane {} to serve version {version}", self.addr),
            || async { self.version().await.filter(|v| *v >= version) },
        )
        .await;
    }

    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POST `body` as JSON with the API key `key`.
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A programmable OpenAI-compatible upstream (the `mock-upstream` binary).
pub struct MockUpstream {
    _child: Child,
    pub addr: SocketAddr,
    pub name: String,
    http: reqwest::Client,
}

impl MockUpstream {
    pub async fn start(test: &str, name: &str) -> MockUpstream {
        let port = free_port();
        let child = Command::new(binary("mock-upstream"))
            .args(["--addr", &format!("127.0.0.1:{port}"), "--name", name])
            .stdout(Stdio::null())
            .stderr(log_file(test, name))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mock-upstream");
        let mock = MockUpstream {
            _child: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            name: name.to_owned(),
            http: http_client(),
        };
        eventually(Duration::from_secs(10), "the mock upstream to listen", || async {
            mock.http.get(format!("http://{}/__mock/stats", mock.addr)).send().await.ok().map(|_| ())
        })
        .await;
        mock
    }

    /// The base URL a backend uses.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queue behaviours for the next requests, in order.
    pub async fn script(&self, behaviours: Value) {
        let response =
            self.http.post(format!("http://{}/__mock/script", self.addr)).json(&behaviours).send().await.unwrap();
        assert!(response.status().is_success(), "mock script refused: {}", response.text().await.unwrap_or_default());
    }

    pub async fn requests(&self) -> Vec<Value> {
        let reply = self.http.get(format!("http://{}/__mock/requests", self.addr)).send().await.unwrap();
        reply.json::<Value>().await.unwrap().as_array().cloned().unwrap_or_default()
    }

    pub async fn stats(&self) -> Value {
        self.http.get(format!("http://{}/__mock/stats", self.addr)).send().await.unwrap().json().await.unwrap()
    }
}
