//! The health board: the latest state of every backend (and backend+model) this data plane tracks, published as a
//! whole whenever it changes. Breakers and health checks write it; the subscription reports it to the control plane
//! and the metrics endpoint exports it. Readers get the latest board, never a queue of changes.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests skip the backend until a probe is due.
    Open,
    /// One probe is allowed through; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// One backend's (or one backend+model's) health as this data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendHealth {
    pub backend: String,
    /// Set when the state is tracked per model (an upstream that fails per model).
    pub model: Option<String>,
    pub state: BreakerState,
    /// When `state` was entered.
    pub since: SystemTime,
    /// Why it is not closed (or why it last opened): e.g. `5 consecutive failures`, `p99 2300 ms over 2000 ms`.
    pub reason: Option<String>,
    /// The last active health check's result, if the backend has a health check.
    pub last_check: Option<HealthCheckResult>,
    /// Observed latency (peak-EWMA of time to first byte), if any request or check measured one.
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckResult {
    pub at: SystemTime,
    pub ok: bool,
    /// What failed (status, timeout, connection error); `None` when ok.
    pub error: Option<String>,
}

/// The latest board, shared by writers and readers.
pub struct HealthBoard {
    entries: watch::Sender<Arc<Vec<BackendHealth>>>,
}

impl Default for HealthBoard {
    fn default() -> Self {
        HealthBoard { entries: watch::Sender::new(Arc::new(Vec::new())) }
    }
}

impl HealthBoard {
    /// Replace the board (entries sorted by backend, then model), waking readers only when it changed.
    pub fn publish(&self, mut entries: Vec<BackendHealth>) {
        entries.sort_by(|a, b| (&a.backend, &a.model).cmp(&(&b.backend, &b.model)));
        self.entries.send_if_modified(|current| {
            if **current == entries {
                return false;
            }
            *current = Arc::new(entries);
            true
        });
    }

    /// The board now.
    pub fn current(&self) -> Arc<Vec<BackendHealth>> {
        self.entries.borrow().clone()
    }

    /// A receiver woken on each change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<BackendHealth>>> {
        self.entries.subscribe()
    }
}
