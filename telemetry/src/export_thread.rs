//! The thread trace export runs on: a single-threaded Tokio runtime of its own, so that batching spans, encoding
//! them as OTLP and the exporter's connection (gRPC or HTTP) never run on the workers that serve requests. On the
//! serving runtime an export of 512 spans held a worker for its whole encoding, and the requests queued behind it
//! waited (docs/benchmarks.md, "Traces exported versus off").

use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The running export thread; [`ExportThread::stop`] ends it once the processor has flushed.
pub(crate) struct ExportThread {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl ExportThread {
    pub(crate) fn start() -> std::io::Result<ExportThread> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        // The runtime runs its tasks (the processor's loop, the exporter's connection) while it waits for the stop.
        let thread = std::thread::Builder::new().name("otlp-export".into()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(ExportThread { handle, stop, thread })
    }

    /// Run `build` with this thread's runtime as the current one: what it spawns (the processor's loop, the
    /// exporter's connection tasks) and the timers those create run on the export thread.
    pub(crate) fn within<T>(&self, build: impl FnOnce() -> T) -> T {
        let _entered = self.handle.enter();
        build()
    }

    /// End the thread (blocking until it has: call off the async workers).
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
