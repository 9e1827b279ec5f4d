//! The HTTP server: accepts connections and serves each with hyper (HTTP/1.1), and owns what ends a connection
//! before its client does, so that the request it carries is recorded with the reason:
//!
//! - a client that reads nothing of a response for `GATEWAY_WRITE_IDLE_TIMEOUT_MS` ([`Cut::WriteIdle`]);
//! - an exchange past its backend's `total_ms` whose response the client has not taken ([`Cut::Deadline`]);
//! - the end of the drain on shutdown ([`Cut::Shutdown`]).
//!
//! Shutdown, in order: stop accepting; let every connection finish its request in flight (hyper's graceful
//! shutdown) for at most the drain time (`GATEWAY_SHUTDOWN_DRAIN_MS`); then end the connections still open.
//! [`serve`] returns only once every connection task is over, and since a connection's requests and response
//! bodies are dropped within its task, every request's spend record has been made by then (see
//! `docs/spend.md`, "Shutdown"). The flush of spend comes after, in [`crate::run`].
//!
//! Each request carries an [`Exchange`] (a request extension), its handle on the connection: the proxy sets the
//! deadline of the exchange on it, and the request's spend record reads from it why the connection was cut.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// How connections are served and ended.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// On shutdown, how long requests in flight may take before their connections are ended.
    pub drain: Duration,
    /// How long a response may wait for its client to read anything before the connection is cut.
    pub write_idle: Duration,
}

/// Why the gateway ended a connection before its client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client read nothing for the write-idle timeout.
    WriteIdle,
    /// The exchange passed its backend's total timeout (and the grace to deliver the closing error event).
    Deadline,
    /// The drain time ran out on shutdown.
    Shutdown,
}

/// After an exchange's deadline, how long the closing error event (`upstream_timeout`) has to reach a client that
/// reads before the connection is cut.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// One connection, shared by its task, its socket wrapper and the requests it serves.
#[derive(Default)]
struct Connection {
    cut: OnceLock<Cut>,
    /// When the request in flight must be over (its exchange's deadline plus the grace).
    deadline: Mutex<Option<Instant>>,
    /// The deadline moved earlier (a later or cleared one is found when the earlier one fires: one wake-up per
    /// request, not two).
    rearm: tokio::sync::Notify,
}

impl Connection {
    fn deadline(&self) -> MutexGuard<'_, Option<Instant>> {
        self.deadline.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first reason wins: a connection is cut once.
    fn cut(&self, why: Cut) {
        let _ = self.cut.set(why);
    }
}

/// A request's handle on its connection. Dropping it clears the deadline it set: the request is over.
pub struct Exchange {
    connection: Option<Arc<Connection>>,
}

impl Exchange {
    /// The exchange of `request` (none when it did not come through [`serve`], as in tests that call the router).
    pub fn of<B>(request: &Request<B>) -> Exchange {
        Exchange { connection: request.extensions().get::<Arc<Connection>>().cloned() }
    }

    /// An exchange with no connection behind it.
    pub fn detached() -> Exchange {
        Exchange { connection: None }
    }

    /// The exchange must be over by `at`: past it (and [`DEADLINE_GRACE`]) the connection is cut.
    pub fn set_deadline(&self, at: Instant) {
        if let Some(connection) = &self.connection {
            let at = at + DEADLINE_GRACE;
            let earlier = connection.deadline().replace(at).is_none_or(|before| at < before);
            if earlier {
                connection.rearm.notify_one();
            }
        }
    }

    /// Why the connection was cut, if it was.
    pub fn cut(&self) -> Option<Cut> {
        self.connection.as_ref().and_then(|c| c.cut.get().copied())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            *connection.deadline() = None;
        }
    }
}

/// Serve `router` on `listener` until `shutdown`, then drain (see the module documentation). Returns once every
/// connection is over.
pub async fn serve(listener: TcpListener, router: Router, settings: ServerSettings, shutdown: CancellationToken) {
    let end_now = CancellationToken::new();
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Small SSE chunks must leave at once, not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let task = serve_connection(stream, router.clone(), settings, shutdown.clone(), end_now.clone());
                connections.spawn(task);
            }
            // Out of file descriptors and the like: accepting again at once would spin.
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // New connections are refused from here on.
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, drain_ms = settings.drain.as_millis() as u64, "draining");
    }
    let drained =
        tokio::time::timeout(settings.drain, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "the drain time is over: ending the requests still running (recorded as outcome shutdown)"
        );
        end_now.cancel();
        while connections.join_next().await.is_some() {}
    }
}

/// Serve one connection until it closes, is cut, or is ended after the drain. Its requests and response bodies are
/// dropped before this returns.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    settings: ServerSettings,
    shutdown: CancellationToken,
    end_now: CancellationToken,
) {
    let connection = Arc::new(Connection::default());
    let service = {
        let connection = connection.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(connection.clone());
            router.clone().call(request)
        })
    };
    let io = TokioIo::new(WriteIdle::new(stream, settings.write_idle, connection.clone()));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = *connection.deadline();
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                // Finish the request in flight, then close instead of keeping the connection alive.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = end_now.cancelled() => {
                connection.cut(Cut::Shutdown);
                break;
            }
            () = sleep_until(deadline) => {
                // Cleared or moved later meanwhile: sleep on the current one.
                if connection.deadline().is_none_or(|at| at > Instant::now()) {
                    continue;
                }
                tracing::warn!("the exchange passed its backend's total timeout; cutting the connection");
                connection.cut(Cut::Deadline);
                break;
            }
            () = connection.rearm.notified() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The socket, failing writes that make no progress for the write-idle timeout: a client that stops reading
/// fills the socket's buffers, after which every write waits; once one has waited that long the connection is cut.
struct WriteIdle {
    stream: TcpStream,
    idle: Duration,
    /// Running while a write waits.
    stalled: Option<Pin<Box<Sleep>>>,
    connection: Arc<Connection>,
}

impl WriteIdle {
    fn new(stream: TcpStream, idle: Duration, connection: Arc<Connection>) -> WriteIdle {
        WriteIdle { stream, idle, stalled: None, connection }
    }

    /// What a write that returned `written` means for the idle timer.
    fn watch(&mut self, cx: &mut Context<'_>, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match written {
            Poll::Pending => {
                let idle = self.idle;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                self.connection.cut(Cut::WriteIdle);
                tracing::warn!(idle_ms = idle.as_millis() as u64, "the client read nothing; cutting the connection");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl AsyncRead for WriteIdle {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteIdle {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;

    /// Sends, when dropped (with the request or its response body), why the connection was cut.
    struct Report(Exchange, Option<oneshot::Sender<Option<Cut>>>);

    impl Drop for Report {
        fn drop(&mut self) {
            if let Some(tx) = self.1.take() {
                let _ = tx.send(self.0.cut());
            }
        }
    }

    type Slot = Arc<Mutex<Option<oneshot::Sender<Option<Cut>>>>>;

    fn report(request: &Request<Body>, slot: &Slot) -> Report {
        Report(Exchange::of(request), slot.lock().unwrap().take())
    }

    /// Serve `router` with `settings`, send `GET path` on a raw connection; the connection and the shutdown.
    async fn start(router: Router, settings: ServerSettings, path: &str) -> (TcpStream, CancellationToken, JoinHandle) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, settings, shutdown.clone()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
        (client, shutdown, server)
    }

    type JoinHandle = tokio::task::JoinHandle<()>;

    /// A response far larger than the socket buffers, to a client that never reads: cut after the idle time, and
    /// the request's exchange says why.
    #[tokio::test]
    async fn a_client_that_reads_nothing_is_cut_after_the_write_idle_timeout() {
        let (tx, rx) = oneshot::channel();
        let slot: Slot = Arc::new(Mutex::new(Some(tx)));
        let router = Router::new().route(
            "/big",
            get(move |request: Request<Body>| async move {
                let report = report(&request, &slot);
                let chunks =
                    (0..4096).map(|_| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![b'x'; 1 << 16])));
                // The report goes with the body: dropped when hyper drops the body.
                Body::from_stream(futures_util::StreamExt::map(futures_util::stream::iter(chunks), move |chunk| {
                    let _ = &report;
                    chunk
                }))
            }),
        );
        let settings = ServerSettings { drain: Duration::from_secs(5), write_idle: Duration::from_millis(300) };
        let (mut client, shutdown, server) = start(router, settings, "/big").await;
        let started = std::time::Instant::now();
        let cut = tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap();
        assert_eq!(cut, Some(Cut::WriteIdle));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // What the client can still read ends well before the 256 MiB of the response.
        let mut received = 0usize;
        let mut buf = vec![0; 1 << 16];
        while let Ok(n) = client.read(&mut buf).await {
            if n == 0 {
                break;
            }
            received += n;
        }
        assert!(received < 64 << 20, "the response was cut: {received} bytes");
        shutdown.cancel();
        server.await.unwrap();
    }

    /// On shutdown a request that does not finish within the drain time is ended, before `serve` returns, and its
    /// exchange says so; new connections are refused.
    #[tokio::test]
    async fn the_drain_ends_what_is_still_running() {
        let (tx, mut rx) = oneshot::channel();
        let slot: Slot = Arc::new(Mutex::new(Some(tx)));
        let router = Router::new().route(
            "/slow",
            get(move |request: Request<Body>| async move {
                let _report = report(&request, &slot);
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
        let settings = ServerSettings { drain: Duration::from_millis(300), write_idle: Duration::from_secs(30) };
        let (client, shutdown, server) = start(router, settings, "/slow").await;
        let addr = client.peer_addr().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        shutdown.cancel();
        server.await.unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(rx.try_recv().unwrap(), Some(Cut::Shutdown), "recorded before serve returned");
        assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    }

    /// A request that finishes within the drain time is answered, and the connection closed after it.
    #[tokio::test]
    async fn the_drain_lets_requests_in_flight_finish() {
        let router = Router::new().route(
            "/short",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "done"
            }),
        );
        let settings = ServerSettings { drain: Duration::from_secs(5), write_idle: Duration::from_secs(30) };
        let (mut client, shutdown, server) = start(router, settings, "/short").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(2), server).await.unwrap().unwrap();
    }

    /// A deadline set on the exchange cuts a request still running past it (and the grace).
    #[tokio::test]
    async fn an_exchange_past_its_deadline_is_cut() {
        let (tx, rx) = oneshot::channel();
        let slot: Slot = Arc::new(Mutex::new(Some(tx)));
        let router = Router::new().route(
            "/slow",
            get(move |request: Request<Body>| async move {
                let report = report(&request, &slot);
                report.0.set_deadline(Instant::now() + Duration::from_millis(200));
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
        let settings = ServerSettings { drain: Duration::from_secs(5), write_idle: Duration::from_secs(30) };
        let (_client, shutdown, server) = start(router, settings, "/slow").await;
        let started = std::time::Instant::now();
        let cut = tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap();
        assert_eq!(cut, Some(Cut::Deadline));
        assert!(started.elapsed() >= Duration::from_millis(200) + DEADLINE_GRACE - Duration::from_millis(50));
        shutdown.cancel();
        server.await.unwrap();
    }

    /// A request that finished before its deadline leaves none behind: the connection serves the next one after it.
    #[tokio::test]
    async fn a_finished_exchange_leaves_no_deadline_behind() {
        let router = Router::new().route(
            "/quick",
            get(|request: Request<Body>| async move {
                let exchange = Exchange::of(&request);
                exchange.set_deadline(Instant::now() + Duration::from_millis(50));
                "quick"
            }),
        );
        let settings = ServerSettings { drain: Duration::from_secs(5), write_idle: Duration::from_secs(30) };
        let (mut client, shutdown, server) = start(router, settings, "/quick").await;
        tokio::time::sleep(DEADLINE_GRACE + Duration::from_millis(300)).await;
        client.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answers = String::new();
        client.read_to_string(&mut answers).await.unwrap();
        assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
