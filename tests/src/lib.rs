//! The test harnesses. End to end: starts the real `control-plane` and `data-plane` binaries against a real
//! Postgres, on free loopback ports, and talks to them over HTTP and gRPC. Processes are killed when their handle
//! drops. Each process logs to `target/e2e-logs/<test>/<name>.log`. In process: [`pipeline`] serves a data plane
//! from a snapshot built in the test, and [`mock`] is the programmable upstream both use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod background;
pub mod entra_mock;
pub mod load;
pub mod mock;
pub mod otlp;
pub mod pipeline;
pub mod tls;

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

/// Ports the harness hands out: below Linux's ephemeral range (32768 and up), so that no outgoing connection of
/// any process (Postgres clients, HTTP clients, TIME_WAIT sockets) can take a port between the moment it is
/// chosen here and the moment the spawned process binds it.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port (bound, then released for the process to take). Each test process starts at its own
/// pseudo-random offset and walks on, so parallel tests rarely even try the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(nanos);
        let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = PORTS.start + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}")
}

pub(crate) fn log_path(test: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("e2e-logs").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.log"))
}

/// A process's log: truncated at the first start of that name in this test process, appended to by restarts.
fn log_file(path: &Path) -> std::fs::File {
    static OPENED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap();
    let first = !opened.iter().any(|p| p == path);
    if first {
        opened.push(path.to_owned());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .truncate(false)
        .open(path)
        .and_then(|file| {
            if first {
                file.set_len(0)?;
            }
            Ok(file)
        })
        .unwrap()
}

/// The last lines of a process's log, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("--- last lines of {} ---\n{tail}", path.display())
}

/// How waiting for a spawned process to become ready ended badly.
enum NotReady {
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Poll `url` until it answers with a success, the child exits, or `timeout` passes.
async fn wait_ready(child: &mut Child, timeout: Duration, http: &reqwest::Client, url: &str) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        if http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process that exited early did so because its port was taken (then it is started again elsewhere).
fn lost_a_port_race(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| text.contains("Address already in use"))
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

/// The URL of the database `#[sqlx::test]` made for this test.
pub fn test_database_url(pool: &sqlx::PgPool) -> String {
    database_url(pool.connect_options().get_database().expect("test database name"))
}

/// Rewrite route policies with `update` (an SQL statement, its one parameter `$1` bound to `value`) behind the
/// admin API's back, as a control plane without today's validation would have, and publish it as a new version:
/// how tests reach a data plane with a snapshot the API would refuse. The new version.
pub async fn publish_behind_the_api(database_url: &str, update: &'static str, value: &str) -> u64 {
    let db = sqlx::PgPool::connect(database_url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(update).bind(value.to_owned()).execute(&mut *tx).await.unwrap();
    let version: i64 = sqlx::query_scalar("UPDATE config_version SET version = version + 1 RETURNING version")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('gateway_config', $1)").bind(version.to_string()).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    u64::try_from(version).unwrap()
}

/// The database URL for database `name` on the server of `DATABASE_URL`.
pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL names a database");
    format!("{prefix}/{name}")
}

/// A database of the test's own on the server of `DATABASE_URL`, besides the one `#[sqlx::test]` made: a fresh
/// database, or a copy of another (a backup). Dropped, with its connections, when the handle drops.
pub struct ExtraDatabase {
    pub name: String,
    pub url: String,
}

impl ExtraDatabase {
    /// A name for a database that does not exist yet: whoever connects first creates it (the control plane does).
    pub async fn fresh(name: &str) -> ExtraDatabase {
        // Postgres cuts longer names to 63 bytes, which could then name another database.
        assert!(name.len() <= 63, "database name {name:?} is longer than Postgres keeps");
        drop_database(name).await;
        ExtraDatabase { name: name.to_owned(), url: database_url(name) }
    }

    /// A copy of database `source`, as a backup taken now would restore it. Postgres copies a database only while
    /// nobody is connected to it: close every pool and stop every process using it first (this waits a while for
    /// the connections of killed processes to go).
    pub async fn copy_of(source: &str, name: &str) -> ExtraDatabase {
        let database = ExtraDatabase::fresh(name).await;
        let server = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).await.unwrap();
        let statement = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{source}\"");
        eventually(Duration::from_secs(20), &format!("no connection to {source} left, to copy it"), || async {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone())).execute(&server).await {
                Ok(_) => Some(()),
                Err(error) if error.to_string().contains("is being accessed by other users") => None,
                Err(error) => panic!("{statement}: {error}"),
            }
        })
        .await;
        server.close().await;
        database
    }

    /// Restore this copy in place of database `target`, as a restore from a backup does: `target`'s connections are
    /// cut, it is dropped and made again from this copy (its users reconnect to the restored database).
    pub async fn restore_into(&self, target: &str) {
        drop_database(target).await;
        let server = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).await.unwrap();
        let statement = format!("CREATE DATABASE \"{target}\" TEMPLATE \"{}\"", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&server).await.unwrap();
        server.close().await;
    }
}

async fn drop_database(name: &str) {
    let server = sqlx::PgPool::connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).await.unwrap();
    let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&server).await.unwrap();
    server.close().await;
}

impl Drop for ExtraDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: drop the database from a thread with a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(drop_database(&name));
        })
        .join();
        if dropped.is_err() {
            eprintln!("could not drop the test database {}; it is left behind", self.name);
        }
    }
}

/// A database name of this test process's own: `{label}_{pid}`.
pub fn database_name(label: &str) -> String {
    format!("e2e_{label}_{}", std::process::id())
}

/// The name of the database `#[sqlx::test]` made for this test.
pub fn test_database_name(pool: &sqlx::PgPool) -> String {
    pool.connect_options().get_database().expect("test database name").to_owned()
}

pub struct ControlPlane {
    child: Child,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub http: reqwest::Client,
    pub log: PathBuf,
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
    /// A restart must come back on the same ports (data planes know them); a first start may move.
    keep_ports: bool,
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
            keep_ports: false,
        }
    }
}

impl ControlPlane {
    /// Start and wait until the admin API is ready. A first start that lost its port to another process is
    /// retried on fresh ports; any other early exit or a timeout fails with the end of the process's log.
    pub async fn start(mut config: ControlPlaneConfig) -> ControlPlane {
        let http = http_client();
        let log = log_path(&config.test, &config.name);
        for attempt in 1.. {
            let mut child = Command::new(binary("control-plane"))
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
                .stderr(log_file(&log))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn control-plane");
            let url = format!("http://127.0.0.1:{}/readyz", config.admin_port);
            let ready = wait_ready(&mut child, Duration::from_secs(60), &http, &url).await;
            match ready {
                Ok(()) => {
                    config.keep_ports = true;
                    return ControlPlane {
                        child,
                        admin: SocketAddr::from(([127, 0, 0, 1], config.admin_port)),
                        grpc: SocketAddr::from(([127, 0, 0, 1], config.grpc_port)),
                        http,
                        log,
                        config,
                    };
                }
                Err(NotReady::Exited(_)) if !config.keep_ports && attempt < 5 && lost_a_port_race(&log) => {
                    config.admin_port = free_port();
                    config.grpc_port = free_port();
                }
                Err(NotReady::Exited(status)) => {
                    panic!(
                        "the control plane {} exited with {status} before it was ready\n{}",
                        config.name,
                        log_tail(&log)
                    )
                }
                Err(NotReady::TimedOut) => {
                    panic!(
                        "timed out after 60s waiting for the control plane {} to be ready\n{}",
                        config.name,
                        log_tail(&log)
                    )
                }
            }
        }
        unreachable!("the loop returns or panics")
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

    /// The store's configuration lineage and version, from the fleet view.
    pub async fn head(&self) -> (String, u64) {
        let fleet = self.fleet().await;
        (fleet["lineage"].as_str().unwrap().to_owned(), fleet["config_version"].as_u64().unwrap())
    }

    /// Every spend event in the ledger, through the auditor API's pages.
    pub async fn spend_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(cursor) => format!("/spend/events?limit=1000&cursor={cursor}"),
                None => "/spend/events?limit=1000".to_owned(),
            };
            let (status, page) = self.call("GET", &path, None).await;
            assert_eq!(status, 200, "{page}");
            events.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return events,
            }
        }
    }

    /// Wait until the ledger holds at least `n` events; then give stragglers a moment and return them all.
    pub async fn wait_for_spend_events(&self, n: usize) -> Vec<Value> {
        eventually(Duration::from_secs(60), &format!("{n} events in the ledger"), || async {
            (self.spend_events().await.len() >= n).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.spend_events().await
    }
}

/// A data plane's OpenAI-compatible API as a client sees it, whether the data plane runs as a process
/// ([`DataPlane`]) or in the test's process ([`pipeline::Pipeline`]); both dereference to it.
pub struct GatewayApi {
    pub addr: SocketAddr,
    http: reqwest::Client,
}

impl GatewayApi {
    pub fn new(addr: SocketAddr) -> GatewayApi {
        GatewayApi { addr, http: http_client() }
    }

    /// `/readyz`: the status code and body (`None` while nothing answers yet).
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let response = self.http.get(self.url("/readyz")).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
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

pub struct DataPlane {
    child: Child,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    api: GatewayApi,
}

impl std::ops::Deref for DataPlane {
    type Target = GatewayApi;

    fn deref(&self) -> &GatewayApi {
        &self.api
    }
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
    /// A program the binary runs under, with its arguments (e.g. `valgrind --tool=callgrind`); empty: none.
    pub launcher: Vec<String>,
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
            launcher: Vec::new(),
        }
    }
}

impl DataPlane {
    pub fn start(config: &DataPlaneConfig) -> DataPlane {
        let log = log_path(&config.test, &config.node_id);
        let mut command = match config.launcher.split_first() {
            None => Command::new(binary("data-plane")),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("data-plane"));
                command
            }
        };
        command
            .arg("serve")
            .env("GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{}", config.port))
            .env("GATEWAY_CONTROL_PLANE", &config.control_plane)
            .env("GATEWAY_NODE_TOKEN", &config.node_token)
            .env("GATEWAY_NODE_ID", &config.node_id)
            .env("GATEWAY_STATE_DIR", &config.state_dir)
            .env("RUST_LOG", "info,data_plane=debug")
            .stdout(Stdio::null())
            .stderr(log_file(&log))
            .kill_on_drop(true);
        if let Some(snapshot) = &config.snapshot {
            command.env("GATEWAY_SNAPSHOT", snapshot);
        }
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().expect("spawn data-plane");
        DataPlane {
            child,
            state_dir: config.state_dir.clone(),
            log,
            api: GatewayApi::new(SocketAddr::from(([127, 0, 0, 1], config.port))),
        }
    }

    /// The snapshot version served, once ready.
    pub async fn version(&self) -> Option<u64> {
        let (status, body) = self.readyz().await?;
        (status == 200).then(|| body["snapshot_version"].as_u64()).flatten()
    }

    /// The configuration lineage of the snapshot served, once ready.
    pub async fn lineage(&self) -> Option<String> {
        let (status, body) = self.readyz().await?;
        (status == 200).then(|| body["lineage"].as_str().map(str::to_owned)).flatten()
    }

    /// Wait until the data plane serves `version` (or newer) of `lineage`; fails with the end of its log.
    pub async fn wait_for_snapshot(&self, lineage: &str, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let served = self.readyz().await.filter(|(status, _)| *status == 200).map(|(_, body)| body);
            if served.as_ref().is_some_and(|body| {
                body["lineage"] == lineage && body["snapshot_version"].as_u64().is_some_and(|v| v >= version)
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after 30s waiting for data plane {} to serve version {version} of lineage {lineage}: it \
                 serves {served:?}\n{}",
                self.addr,
                log_tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the data plane serves `version` (or newer); fails with the end of its log.
    pub async fn wait_for_version(&self, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.version().await.is_none_or(|v| v < version) {
            assert!(
                Instant::now() < deadline,
                "timed out after 30s waiting for data plane {} to serve version {version}\n{}",
                self.addr,
                log_tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no graceful shutdown.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Send SIGTERM (a graceful shutdown begins); see [`DataPlane::wait_exit`].
    pub async fn sigterm(&self) {
        let pid = self.child.id().expect("the data plane is running");
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Wait for the process to exit; its exit status.
    pub async fn wait_exit(mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the data plane did not exit within 60s\n{}", log_tail(&self.log)),
        }
    }

    /// SIGTERM, then wait for the graceful shutdown to end; the exit status.
    pub async fn terminate(self) -> std::process::ExitStatus {
        self.sigterm().await;
        self.wait_exit().await
    }
}

/// A programmable OpenAI-compatible upstream ([`mock`]): the `mock-upstream` binary as a process of its own, or
/// served in this process; the same control API either way.
pub struct MockUpstream {
    _running: MockRunning,
    pub addr: SocketAddr,
    pub name: String,
    http: reqwest::Client,
}

/// Held only to be dropped with its `MockUpstream`, which stops the mock.
#[expect(dead_code, reason = "never read: each variant is held for its drop")]
enum MockRunning {
    Process(Child),
    InProcess(mock::MockServer),
}

impl MockUpstream {
    /// The `mock-upstream` binary, logging to `target/e2e-logs/<test>/<name>.log`.
    pub async fn start(test: &str, name: &str) -> MockUpstream {
        let http = http_client();
        let log = log_path(test, name);
        for attempt in 1.. {
            let port = free_port();
            let mut child = Command::new(binary("mock-upstream"))
                .args(["--addr", &format!("127.0.0.1:{port}"), "--name", name])
                .stdout(Stdio::null())
                .stderr(log_file(&log))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn mock-upstream");
            let url = format!("http://127.0.0.1:{port}/__mock/stats");
            let ready = wait_ready(&mut child, Duration::from_secs(20), &http, &url).await;
            match ready {
                Ok(()) => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    return MockUpstream { _running: MockRunning::Process(child), addr, name: name.to_owned(), http };
                }
                Err(NotReady::Exited(_)) if attempt < 5 && lost_a_port_race(&log) => {}
                Err(NotReady::Exited(status)) => {
                    panic!("the mock upstream {name} exited with {status}\n{}", log_tail(&log))
                }
                Err(NotReady::TimedOut) => panic!("the mock upstream {name} did not listen\n{}", log_tail(&log)),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The mock served in this process on a free port (listening before this returns).
    pub fn in_process(name: &str) -> MockUpstream {
        let server = mock::MockServer::start(name);
        let addr = server.addr;
        MockUpstream { _running: MockRunning::InProcess(server), addr, name: name.to_owned(), http: http_client() }
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

    /// What every request gets when the script is empty.
    pub async fn set_default(&self, behaviour: Value) {
        let response =
            self.http.post(format!("http://{}/__mock/default", self.addr)).json(&behaviour).send().await.unwrap();
        assert!(response.status().is_success(), "mock default refused: {}", response.text().await.unwrap_or_default());
    }

    /// What `GET /v1/models` (a health check) answers.
    pub async fn set_models(&self, behaviour: Value) {
        let response =
            self.http.post(format!("http://{}/__mock/models", self.addr)).json(&behaviour).send().await.unwrap();
        assert!(response.status().is_success(), "mock models refused: {}", response.text().await.unwrap_or_default());
    }

    pub async fn requests(&self) -> Vec<Value> {
        let reply = self.http.get(format!("http://{}/__mock/requests", self.addr)).send().await.unwrap();
        reply.json::<Value>().await.unwrap().as_array().cloned().unwrap_or_default()
    }

    pub async fn stats(&self) -> Value {
        self.http.get(format!("http://{}/__mock/stats", self.addr)).send().await.unwrap().json().await.unwrap()
    }

    /// The app registration its Entra ID token endpoint accepts ([`entra_mock`]).
    pub async fn register_entra_app(&self, registration: Value) {
        let url = format!("http://{}/__mock/entra", self.addr);
        let response = self.http.post(url).json(&registration).send().await.unwrap();
        assert!(response.status().is_success(), "entra registration refused: {}", response.text().await.unwrap());
    }

    /// The token requests its Entra ID endpoint received.
    pub async fn entra_token_requests(&self) -> Vec<Value> {
        let reply = self.http.get(format!("http://{}/__mock/entra/tokens", self.addr)).send().await.unwrap();
        reply.json::<Value>().await.unwrap().as_array().cloned().unwrap_or_default()
    }
}

/// A Postgres server of the test's own, from the machine's PostgreSQL binaries, for tests that restart the
/// database under the gateway. Stopped and deleted on drop. Without the binaries the test fails, saying so.
pub struct PostgresCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Postgres refuses to run as root: the cluster then belongs to this user.
    owner: Option<String>,
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, else the newest under `/usr/lib/postgresql/*/bin`.
fn postgres_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    installed.retain(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    installed.sort_by_key(|dir| {
        dir.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    on_path.or_else(|| installed.pop()).unwrap_or_else(|| {
        panic!(
            "this test restarts a Postgres server of its own and needs the PostgreSQL server binaries (initdb, \
             pg_ctl) on PATH or under /usr/lib/postgresql/*/bin: apt-get install postgresql (or brew install \
             postgresql@16)"
        )
    })
}

impl PostgresCluster {
    pub async fn start(test: &str) -> PostgresCluster {
        let bin = postgres_bin();
        let dir = std::env::temp_dir().join(format!("gateway-e2e-pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let is_root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let owner = is_root.then(|| "postgres".to_owned());
        if let Some(owner) = &owner {
            let chown = std::process::Command::new("chown").args(["-R", owner]).arg(&dir).status().unwrap();
            assert!(chown.success(), "chown {} to {owner} (the cluster cannot belong to root)", dir.display());
        }
        let cluster = PostgresCluster { dir, bin, port: free_port(), owner };
        let data = cluster.dir.join("data");
        cluster
            .run(
                "initdb",
                &["-D", &data.display().to_string(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            )
            .await;
        cluster.start_server().await;
        cluster
    }

    /// `tool` of the Postgres binaries, run as the cluster's owner.
    fn command(&self, tool: &str) -> std::process::Command {
        let tool = self.bin.join(tool);
        match &self.owner {
            Some(owner) => {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", owner, "--"]).arg(&tool);
                command
            }
            None => std::process::Command::new(&tool),
        }
    }

    async fn run(&self, tool: &str, args: &[&str]) {
        let output = Command::from(self.command(tool))
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Start the server (again) on its port, and wait until it accepts connections.
    pub async fn start_server(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data").display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-o", &options, "start"]).await;
    }

    /// Stop the server (fast shutdown: connections are cut, as in a real restart).
    pub async fn stop_server(&self) {
        let data = self.dir.join("data").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]).await;
    }

    /// The URL of database `name` on this server (the database is created by whoever connects first).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
