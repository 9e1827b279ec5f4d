//! This data plane's view of every backend: its breakers (one per backend, or per backend+model with
//! `per_model`) and the latency table of the `least_latency` strategy, rebuilt when a snapshot arrives while keeping
//! the state of backends whose spec did not change. The request path reads it without locks (an `ArcSwap` of the
//! registry, then one uncontended mutex per breaker before an attempt and one after).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use policy_engine::config::{BackendSpec, ConfigSet, Strategy};
use policy_engine::routing::PlannedCandidate;
use rand::RngExt;

use super::board::{BackendHealth, BreakerState, HealthBoard, HealthCheckResult};
use super::breaker::{Core, Outcome, Pass, Settings};
use super::latency::{PeakEwma, Rank};

type Breaker = Mutex<Core>;

/// One backend's tracked state.
struct Tracked {
    spec: BackendSpec,
    /// Its breaker, unless it has none or has one per model.
    shared: Option<Arc<Breaker>>,
    /// With `per_model`: a breaker per model it serves.
    per_model: HashMap<String, Arc<Breaker>>,
    /// Its latency over every model (the board's backend entry).
    latency: Arc<PeakEwma>,
}

/// The tracked state for one snapshot.
#[derive(Default)]
struct Registry {
    content_hash: String,
    version: u64,
    backends: HashMap<String, Tracked>,
    /// Per model (a model names its backend, so this is per backend+model), with the backend it was measured on.
    latency: HashMap<String, (String, Arc<PeakEwma>)>,
}

pub struct Tracker {
    /// The monotonic clock's zero.
    epoch: Instant,
    started: SystemTime,
    registry: ArcSwap<Registry>,
    rebuilding: Mutex<()>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            epoch: Instant::now(),
            started: SystemTime::now(),
            registry: ArcSwap::from_pointee(Registry::default()),
            rebuilding: Mutex::new(()),
        }
    }
}

/// An admitted attempt: record its outcome, or drop it (nothing sent, the client left) to free a probe.
pub struct Ticket {
    breaker: Option<(Arc<Breaker>, Pass)>,
    latency: Option<(Arc<PeakEwma>, Arc<PeakEwma>)>,
    epoch: Instant,
    /// Whether admitting it changed a breaker's state (to half-open).
    pub changed: bool,
}

impl Ticket {
    /// The attempt's outcome (`None`: it says nothing of the backend); whether a breaker's state changed.
    pub fn record(mut self, outcome: Option<Outcome>) -> bool {
        let now = millis(self.epoch);
        let ttfb = match outcome {
            Some(Outcome::Answered { ttfb_ms } | Outcome::Failed { ttfb_ms: Some(ttfb_ms) }) => Some(ttfb_ms),
            _ => None,
        };
        if let (Some(ttfb), Some((model, backend))) = (ttfb, &self.latency) {
            model.observe(ttfb, now);
            backend.observe(ttfb, now);
        }
        let Some((breaker, pass)) = self.breaker.take() else { return false };
        let Ok(mut core) = breaker.lock() else { return false };
        match outcome {
            Some(outcome) => core.record(pass, outcome, now, rand::rng().random::<f64>(), SystemTime::now()),
            None => {
                core.release(pass);
                false
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((breaker, pass)) = self.breaker.take()
            && let Ok(mut core) = breaker.lock()
        {
            core.release(pass);
        }
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Tracker {
    fn now(&self) -> u64 {
        millis(self.epoch)
    }

    /// Track `config` (of snapshot `version`, hashing to `content_hash`) unless it is already tracked. With
    /// `only_newer`, an older version is ignored: a request still serving the previous snapshot must not roll the
    /// registry back.
    pub fn sync(&self, config: &ConfigSet, version: u64, content_hash: &str, only_newer: bool) {
        let current = self.registry.load();
        if current.content_hash == content_hash || (only_newer && version < current.version) {
            return;
        }
        let Ok(_rebuilding) = self.rebuilding.lock() else { return };
        let old = self.registry.load();
        if old.content_hash == content_hash {
            return;
        }
        let mut backends = HashMap::new();
        for (name, spec) in &config.backends {
            // An unchanged backend keeps its breakers and latency; any change starts it afresh.
            let kept = old.backends.get(name).filter(|t| t.spec == *spec);
            let settings = Settings::of(spec);
            let per_model = settings.is_some() && spec.circuit_breaker.is_some_and(|b| b.per_model);
            let new_breaker = || settings.map(|s| Arc::new(Mutex::new(Core::new(s, SystemTime::now()))));
            let shared = match kept {
                Some(kept) if !per_model => kept.shared.clone(),
                _ if per_model => None,
                _ => new_breaker(),
            };
            let mut models = HashMap::new();
            if per_model {
                for model in config.models.values().filter(|m| &m.backend == name) {
                    let kept = kept.and_then(|k| k.per_model.get(&model.name)).cloned();
                    if let Some(breaker) = kept.or_else(new_breaker) {
                        models.insert(model.name.clone(), breaker);
                    }
                }
            }
            let latency = kept.map(|k| k.latency.clone()).unwrap_or_default();
            backends.insert(name.clone(), Tracked { spec: spec.clone(), shared, per_model: models, latency });
        }
        let mut latency = HashMap::new();
        for model in config.models.values() {
            let unchanged = old
                .backends
                .get(&model.backend)
                .zip(backends.get(&model.backend))
                .is_some_and(|(o, n)| o.spec == n.spec);
            let kept = old.latency.get(&model.name).filter(|(backend, _)| unchanged && *backend == model.backend);
            let table = kept.map(|(_, l)| l.clone()).unwrap_or_default();
            latency.insert(model.name.clone(), (model.backend.clone(), table));
        }
        self.registry.store(Arc::new(Registry { content_hash: content_hash.to_owned(), version, backends, latency }));
    }

    fn breaker(registry: &Registry, candidate: &PlannedCandidate) -> Option<Arc<Breaker>> {
        let tracked = registry.backends.get(&candidate.backend)?;
        tracked.shared.clone().or_else(|| tracked.per_model.get(&candidate.model).cloned())
    }

    /// Order `candidates` for this request: by observed latency for `least_latency`; then those whose breaker
    /// would admit them now, in that order, dropping the others. When every candidate's breaker is open, the one
    /// whose probe is most due is kept alone and `true` returned: it is tried anyway (as its probe), rather than
    /// refusing the request.
    pub fn plan(&self, candidates: &mut Vec<PlannedCandidate>, strategy: Strategy) -> bool {
        let registry = self.registry.load();
        let now = self.now();
        if strategy == Strategy::LeastLatency {
            let mut ranked: Vec<(Rank, PlannedCandidate)> = candidates
                .drain(..)
                .map(|c| (registry.latency.get(&c.model).map_or(Rank::Unmeasured, |(_, l)| l.rank(now)), c))
                .collect();
            ranked.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
            candidates.extend(ranked.into_iter().map(|(_, c)| c));
        }
        let mut most_due: Option<(u64, usize)> = None;
        let mut admitted = Vec::with_capacity(candidates.len());
        for (position, candidate) in candidates.iter().enumerate() {
            let Some(breaker) = Self::breaker(&registry, candidate) else {
                admitted.push(position);
                continue;
            };
            let Ok(core) = breaker.lock() else { continue };
            if core.admits(now) {
                admitted.push(position);
            } else if most_due.is_none_or(|(at, _)| core.probe_at() < at) {
                most_due = Some((core.probe_at(), position));
            }
        }
        if admitted.len() == candidates.len() {
            return false;
        }
        if admitted.is_empty()
            && let Some((_, position)) = most_due
        {
            let kept = candidates.swap_remove(position);
            *candidates = vec![kept];
            return true;
        }
        let mut position = 0;
        candidates.retain(|_| {
            let keep = admitted.contains(&position);
            position += 1;
            keep
        });
        false
    }

    /// Admit an attempt to `candidate` now (`force`: past an open breaker, see [`Tracker::plan`]); `None` when its
    /// breaker is open (it opened since the plan, or its probe is taken).
    pub fn admit(&self, candidate: &PlannedCandidate, force: bool) -> Option<Ticket> {
        let registry = self.registry.load();
        let latency = registry.latency.get(&candidate.model).and_then(|(backend, model)| {
            let backend = registry.backends.get(backend)?;
            Some((model.clone(), backend.latency.clone()))
        });
        let mut ticket = Ticket { breaker: None, latency, epoch: self.epoch, changed: false };
        if let Some(breaker) = Self::breaker(&registry, candidate) {
            let (pass, changed) = {
                let Ok(mut core) = breaker.lock() else { return Some(ticket) };
                core.admit(self.now(), force, SystemTime::now())
            };
            ticket.breaker = Some((breaker, pass?));
            ticket.changed = changed;
        }
        Some(ticket)
    }

    /// One health check's result for `backend`, fed to its breakers (all of them, with `per_model`).
    pub fn record_check(&self, backend: &str, result: HealthCheckResult) {
        let registry = self.registry.load();
        let Some(tracked) = registry.backends.get(backend) else { return };
        let (now, wall) = (self.now(), SystemTime::now());
        for breaker in tracked.shared.iter().chain(tracked.per_model.values()) {
            if let Ok(mut core) = breaker.lock() {
                core.record_check(result.clone(), now, rand::rng().random::<f64>(), wall);
            }
        }
    }

    /// Every tracked backend (and backend+model with `per_model`) as the board shows it.
    pub fn entries(&self) -> Vec<BackendHealth> {
        let registry = self.registry.load();
        let mut entries = Vec::new();
        for (name, tracked) in &registry.backends {
            let latency = tracked.latency.value();
            match &tracked.shared {
                Some(breaker) => {
                    if let Ok(core) = breaker.lock() {
                        entries.push(core.entry(name, None, latency));
                    }
                }
                None if tracked.per_model.is_empty() => entries.push(BackendHealth {
                    backend: name.clone(),
                    model: None,
                    state: BreakerState::Closed,
                    since: self.started,
                    reason: None,
                    last_check: None,
                    latency_ms: latency,
                }),
                None => {}
            }
            for (model, breaker) in &tracked.per_model {
                let latency = registry.latency.get(model).and_then(|(_, l)| l.value());
                if let Ok(core) = breaker.lock() {
                    entries.push(core.entry(name, Some(model), latency));
                }
            }
        }
        entries
    }

    /// Put the current entries on `board` (which wakes its readers only if they changed).
    pub fn publish(&self, board: &HealthBoard) {
        board.publish(self.entries());
    }

    /// The backends with a health check, as tracked now.
    pub fn checked_backends(&self) -> Vec<BackendSpec> {
        let registry = self.registry.load();
        registry.backends.values().filter(|t| t.spec.health_check.is_some()).map(|t| t.spec.clone()).collect()
    }
}
