//! A server run on a runtime and thread of its own, so that it keeps answering whatever the test's runtime does
//! (a current-thread runtime blocked in a synchronous call, or dropped), as a separate process would.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long dropping waits for the server to stop (its own drain included) before leaving its thread behind.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs `serve(stop)` until it returns; dropping cancels `stop` and waits for it to end.
pub(crate) struct Background {
    name: String,
    stop: CancellationToken,
    ended: mpsc::Receiver<Result<(), String>>,
    /// What it returned, once seen (by [`Background::ended`] or the drop).
    outcome: Option<Result<(), String>>,
}

impl Background {
    /// `workers` 1 is a current-thread runtime; more, a multi-threaded one with that many workers.
    pub(crate) fn spawn<F, Fut>(name: &str, workers: usize, serve: F) -> Background
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>>,
    {
        let stop = CancellationToken::new();
        let (report, ended) = mpsc::channel();
        let token = stop.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = if workers <= 1 {
                    tokio::runtime::Builder::new_current_thread().enable_all().build()
                } else {
                    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
                };
                let outcome = match runtime {
                    Ok(runtime) => runtime.block_on(serve(token)),
                    Err(error) => Err(format!("building a runtime: {error}")),
                };
                let _ = report.send(outcome);
            })
            .unwrap_or_else(|error| panic!("spawning the thread of {name}: {error}"));
        Background { name: name.to_owned(), stop, ended, outcome: None }
    }

    /// What the server returned, if it has ended (`None` while it runs).
    pub(crate) fn ended(&mut self) -> Option<&Result<(), String>> {
        if self.outcome.is_none() {
            self.outcome = self.ended.try_recv().ok();
        }
        self.outcome.as_ref()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.outcome.is_some() {
            return;
        }
        match self.ended.recv_timeout(STOP_WAIT) {
            Ok(Err(error)) => eprintln!("{} ended with an error: {error}", self.name),
            Ok(Ok(())) => {}
            Err(_) => eprintln!("{} did not stop within {STOP_WAIT:?}; its thread is left behind", self.name),
        }
    }
}
