//! Active health checks: one task per backend with a `health_check`, started and stopped as snapshots come and go,
//! each sending `GET {base_url}{path}` with the backend's credentials through the same clients and egress rules as
//! requests ([`Upstreams::check`]) every `interval_ms`, its result fed to the backend's breaker and shown on the
//! board. The supervisor also keeps the board's latencies fresh (once a second).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use policy_engine::config::BackendSpec;
use tokio_util::sync::CancellationToken;

use super::board::{HealthBoard, HealthCheckResult};
use super::tracker::Tracker;
use crate::control::state::Current;
use crate::providers::upstream::Upstreams;

/// How often the board's latencies are refreshed when nothing else changes it.
const REFRESH: Duration = Duration::from_secs(1);

/// What the checks share.
#[derive(Clone)]
pub struct Checks {
    pub current: Arc<Current>,
    pub tracker: Arc<Tracker>,
    pub board: Arc<HealthBoard>,
    pub upstreams: Arc<Upstreams>,
}

impl Checks {
    /// Track each snapshot served and run its backends' health checks until `stop`.
    pub async fn supervise(self, stop: CancellationToken) {
        let mut versions = self.current.watch();
        let mut running: HashMap<String, (BackendSpec, CancellationToken)> = HashMap::new();
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            self.reconcile(&mut running, &stop);
            loop {
                tokio::select! {
                    changed = versions.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return self.stop_all(&running),
                    },
                    _ = refresh.tick() => self.tracker.publish(&self.board),
                    () = stop.cancelled() => return self.stop_all(&running),
                }
            }
        }
    }

    /// Track the snapshot served now; start the checks it adds or changes, stop those it drops or changes.
    fn reconcile(&self, running: &mut HashMap<String, (BackendSpec, CancellationToken)>, stop: &CancellationToken) {
        let Some(snapshot) = self.current.load() else { return };
        self.tracker.sync(&snapshot.config, snapshot.version, &snapshot.content_hash, false);
        let wanted: HashMap<String, BackendSpec> =
            self.tracker.checked_backends().into_iter().map(|b| (b.name.clone(), b)).collect();
        running.retain(|name, (spec, task)| {
            let keep = wanted.get(name) == Some(spec);
            if !keep {
                task.cancel();
            }
            keep
        });
        for (name, spec) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let task = stop.child_token();
            tokio::spawn(self.clone().run(spec.clone(), task.clone()));
            running.insert(name, (spec, task));
        }
        self.tracker.publish(&self.board);
    }

    fn stop_all(&self, running: &HashMap<String, (BackendSpec, CancellationToken)>) {
        for (_, task) in running.values() {
            task.cancel();
        }
    }

    /// One backend's checks, the first at once; the next is sent only after the last one's result is recorded.
    async fn run(self, backend: BackendSpec, stop: CancellationToken) {
        let Some(check) = backend.health_check.clone() else { return };
        let interval = Duration::from_millis(check.interval_ms);
        let timeout = Duration::from_millis(check.timeout_ms);
        loop {
            let outcome = tokio::select! {
                outcome = self.upstreams.check(&backend, &check.path, timeout) => outcome,
                () = stop.cancelled() => return,
            };
            let error = outcome.err().map(|e| e.describe());
            if let Some(error) = &error {
                tracing::debug!(backend = %backend.name, %error, "health check failed");
            }
            let result = HealthCheckResult { at: SystemTime::now(), ok: error.is_none(), error };
            self.tracker.record_check(&backend.name, result);
            self.tracker.publish(&self.board);
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
