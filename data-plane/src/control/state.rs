//! The snapshot being served: swapped atomically, readable without locks on the request path.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::control::snapshot::CompiledSnapshot;

/// The current snapshot plus a channel announcing each swap (its version), for readiness and tests.
pub struct Current {
    snapshot: ArcSwapOption<CompiledSnapshot>,
    version: watch::Sender<u64>,
}

impl Default for Current {
    fn default() -> Self {
        Current { snapshot: ArcSwapOption::empty(), version: watch::channel(0).0 }
    }
}

impl Current {
    pub fn load(&self) -> Option<Arc<CompiledSnapshot>> {
        self.snapshot.load_full()
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub fn swap(&self, compiled: CompiledSnapshot) {
        let version = compiled.version;
        self.snapshot.store(Some(Arc::new(compiled)));
        self.version.send_replace(version);
        metrics::gauge!(crate::metrics::SNAPSHOT_VERSION).set(version as f64);
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
