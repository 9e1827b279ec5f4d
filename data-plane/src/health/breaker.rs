//! One circuit breaker's state machine, pure: every method takes the time (`now`, milliseconds on the tracker's
//! monotonic clock) and the jitter, so tests drive it without sleeping. [`super::tracker`] wraps it in a mutex and
//! feeds it the attempts' outcomes and the health checks' results. Semantics: `docs/providers.md`, "Circuit
//! breakers".

use std::time::SystemTime;

use policy_engine::config::{BackendSpec, ErrorRateTrip, LatencyTrip};

use super::board::{BackendHealth, BreakerState, HealthCheckResult};

/// What one attempt's answer says of its backend (classified by `proxy/attempt.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered: a 2xx, or a 4xx that is the caller's mistake; `ttfb_ms` after sending.
    Answered { ttfb_ms: u64 },
    /// A 5xx, a redirect, a refused or broken connection, or (with how long it waited) a timeout.
    Failed { ttfb_ms: Option<u64> },
    /// A 429 with `Retry-After`: no failure, but the backend asked for a pause of that long.
    RateLimited { retry_after_ms: u64 },
}

/// How an admitted attempt goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// An ordinary attempt (its outcome counts while the breaker is closed).
    Normal,
    /// The one probe of a half-open breaker: its outcome closes or reopens it.
    Probe,
}

/// A breaker's settings, from the backend's `circuit_breaker` and `health_check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Consecutive failed attempts that open it; `None`: only health checks open it.
    pub failure_threshold: Option<u32>,
    pub open_ms: u64,
    pub max_open_ms: u64,
    pub error_rate: Option<ErrorRateTrip>,
    pub latency: Option<LatencyTrip>,
    /// Consecutive failed health checks that open it.
    pub check_failure_threshold: u32,
}

impl Settings {
    /// The breaker a backend has: the one it configures, else (with a health check only) one that only its checks
    /// open and close; none without either.
    pub fn of(backend: &BackendSpec) -> Option<Settings> {
        let check_failure_threshold = backend.health_check.as_ref().map_or(1, |c| c.failure_threshold.max(1));
        match (&backend.circuit_breaker, &backend.health_check) {
            (Some(b), _) => Some(Settings {
                failure_threshold: Some(b.failure_threshold.max(1)),
                open_ms: b.open_ms,
                max_open_ms: b.max_open_ms.unwrap_or(b.open_ms).max(b.open_ms),
                error_rate: b.error_rate,
                latency: b.latency,
                check_failure_threshold,
            }),
            (None, Some(check)) => Some(Settings {
                failure_threshold: None,
                open_ms: check.interval_ms,
                max_open_ms: check.interval_ms,
                error_rate: None,
                latency: None,
                check_failure_threshold,
            }),
            (None, None) => None,
        }
    }
}

/// Counts of good and bad events over a sliding window, kept in ten buckets: O(1) to add and to sum, a few dozen
/// bytes, whatever the traffic.
#[derive(Debug, Clone)]
struct Window {
    bucket_ms: u64,
    /// Per bucket: its index (time / bucket_ms), events, bad events.
    buckets: [(u64, u32, u32); BUCKETS],
}

const BUCKETS: usize = 10;

impl Window {
    fn new(window_ms: u64) -> Window {
        Window { bucket_ms: (window_ms / BUCKETS as u64).max(1), buckets: [(0, 0, 0); BUCKETS] }
    }

    fn add(&mut self, now: u64, bad: bool) {
        let index = now / self.bucket_ms;
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.0 != index {
            *bucket = (index, 0, 0);
        }
        bucket.1 = bucket.1.saturating_add(1);
        bucket.2 = bucket.2.saturating_add(u32::from(bad));
    }

    /// Events and bad events in the window ending now.
    fn counts(&self, now: u64) -> (u32, u32) {
        let index = now / self.bucket_ms;
        self.buckets
            .iter()
            .filter(|(at, _, _)| *at <= index && index - *at < BUCKETS as u64)
            .fold((0_u32, 0_u32), |(n, bad), (_, bn, bb)| (n.saturating_add(*bn), bad.saturating_add(*bb)))
    }

    fn clear(&mut self) {
        self.buckets = [(0, 0, 0); BUCKETS];
    }
}

/// One breaker (see the module documentation).
#[derive(Debug, Clone)]
pub struct Core {
    settings: Settings,
    state: BreakerState,
    since: SystemTime,
    reason: Option<String>,
    consecutive_failures: u32,
    consecutive_check_failures: u32,
    /// When an open breaker lets its probe through.
    probe_at: u64,
    /// The open time before jitter: `open_ms`, doubled after each failed probe up to `max_open_ms`.
    open_for: u64,
    probe_in_flight: bool,
    errors: Option<Window>,
    /// Measured attempts, bad when over the latency trip's `p99_ms`.
    slow: Option<Window>,
    last_check: Option<HealthCheckResult>,
}

impl Core {
    pub fn new(settings: Settings, wall: SystemTime) -> Core {
        Core {
            settings,
            state: BreakerState::Closed,
            since: wall,
            reason: None,
            consecutive_failures: 0,
            consecutive_check_failures: 0,
            probe_at: 0,
            open_for: settings.open_ms,
            probe_in_flight: false,
            errors: settings.error_rate.map(|t| Window::new(t.window_ms)),
            slow: settings.latency.map(|t| Window::new(t.window_ms)),
            last_check: None,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// When an open breaker's probe is due (for ordering candidates that are all open).
    pub fn probe_at(&self) -> u64 {
        self.probe_at
    }

    /// Whether an attempt would be admitted now (without taking the probe).
    pub fn admits(&self, now: u64) -> bool {
        match self.state {
            BreakerState::Closed => true,
            _ if !self.probed_by_requests() => false,
            BreakerState::Open => now >= self.probe_at && !self.probe_in_flight,
            BreakerState::HalfOpen => !self.probe_in_flight,
        }
    }

    /// A breaker only health checks open is closed only by a successful check: a request could not tell the
    /// backend healthy (its check path may fail while chat works, and the check is what the operator asked for).
    fn probed_by_requests(&self) -> bool {
        self.settings.failure_threshold.is_some()
    }

    /// Admit an attempt now: closed, always; open or half-open, only as the one probe once it is due. `force` (every
    /// candidate is open) admits anyway, as the probe if it is free, else as an attempt whose outcome is ignored.
    /// Returns whether the state changed (open → half-open).
    pub fn admit(&mut self, now: u64, force: bool, wall: SystemTime) -> (Option<Pass>, bool) {
        match self.state {
            BreakerState::Closed => (Some(Pass::Normal), false),
            _ if !self.probe_in_flight && self.probed_by_requests() && (now >= self.probe_at || force) => {
                self.probe_in_flight = true;
                let changed = self.state != BreakerState::HalfOpen;
                if changed {
                    self.enter(BreakerState::HalfOpen, wall);
                }
                (Some(Pass::Probe), changed)
            }
            _ if force => (Some(Pass::Normal), false),
            _ => (None, false),
        }
    }

    /// An admitted attempt ended without an outcome (nothing sent, the client left, the request's deadline passed):
    /// its probe, if it was one, goes to the next request.
    pub fn release(&mut self, pass: Pass) {
        if pass == Pass::Probe {
            self.probe_in_flight = false;
        }
    }

    /// An admitted attempt's outcome; whether the state changed. `jitter` in `[0, 1)` lengthens a new open time by
    /// up to a fifth, so breakers opened together do not probe together.
    pub fn record(&mut self, pass: Pass, outcome: Outcome, now: u64, jitter: f64, wall: SystemTime) -> bool {
        if pass == Pass::Probe {
            self.probe_in_flight = false;
        }
        if pass == Pass::Probe && self.state == BreakerState::HalfOpen {
            return match outcome {
                Outcome::Answered { .. } => self.close(wall),
                Outcome::Failed { .. } => {
                    self.open_for = self.open_for.saturating_mul(2).min(self.settings.max_open_ms);
                    let reason = "the half-open probe failed".to_owned();
                    self.open(now, self.open_for, jitter, reason, wall)
                }
                Outcome::RateLimited { retry_after_ms } => self.rate_limited(now, retry_after_ms, wall),
            };
        }
        if self.state != BreakerState::Closed {
            // Sent before it opened, or forced past it: the probe decides.
            return false;
        }
        match outcome {
            Outcome::Answered { ttfb_ms } => {
                self.consecutive_failures = 0;
                if let Some(errors) = &mut self.errors {
                    errors.add(now, false);
                }
                self.measured(now, ttfb_ms, jitter, wall)
            }
            Outcome::Failed { ttfb_ms } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if let Some(errors) = &mut self.errors {
                    errors.add(now, true);
                }
                if let Some(threshold) = self.settings.failure_threshold
                    && self.consecutive_failures >= threshold
                {
                    let reason = format!("{} consecutive failures", self.consecutive_failures);
                    return self.open(now, self.settings.open_ms, jitter, reason, wall);
                }
                if let (Some(trip), Some(errors)) = (self.settings.error_rate, &self.errors) {
                    let (n, bad) = errors.counts(now);
                    if n >= trip.min_requests && u64::from(bad) * 100 >= u64::from(trip.percent) * u64::from(n) {
                        let reason = format!("{bad} of {n} attempts failed in {} ms", trip.window_ms);
                        return self.open(now, self.settings.open_ms, jitter, reason, wall);
                    }
                }
                ttfb_ms.is_some_and(|ttfb_ms| self.measured(now, ttfb_ms, jitter, wall))
            }
            Outcome::RateLimited { retry_after_ms } => self.rate_limited(now, retry_after_ms, wall),
        }
    }

    /// One measured time to first byte; opens on the latency trip. The p99 is over the threshold exactly when more
    /// than 1% of the window's samples are, so only that count is kept.
    fn measured(&mut self, now: u64, ttfb_ms: u64, jitter: f64, wall: SystemTime) -> bool {
        let (Some(trip), Some(slow)) = (self.settings.latency, &mut self.slow) else { return false };
        slow.add(now, ttfb_ms > trip.p99_ms);
        let (n, over) = slow.counts(now);
        if n >= trip.min_requests && u64::from(over) * 100 > u64::from(n) {
            let reason =
                format!("p99 time to first byte over {} ms ({over} of {n} in {} ms)", trip.p99_ms, trip.window_ms);
            return self.open(now, self.settings.open_ms, jitter, reason, wall);
        }
        false
    }

    /// A 429 with `Retry-After`: open for that long (at most `max_open_ms`), the backoff unchanged.
    fn rate_limited(&mut self, now: u64, retry_after_ms: u64, wall: SystemTime) -> bool {
        if retry_after_ms == 0 {
            return false;
        }
        let wait = retry_after_ms.min(self.settings.max_open_ms);
        self.open(now, wait, 0.0, format!("rate limited: Retry-After {retry_after_ms} ms"), wall)
    }

    /// One health check's result; whether anything on the board changed (always: the result is shown).
    pub fn record_check(&mut self, result: HealthCheckResult, now: u64, jitter: f64, wall: SystemTime) -> bool {
        let ok = result.ok;
        let error = result.error.clone();
        self.last_check = Some(result);
        if ok {
            self.consecutive_check_failures = 0;
            if self.state != BreakerState::Closed {
                // A successful check is as good as a successful probe.
                self.probe_in_flight = false;
                self.close(wall);
            }
            return true;
        }
        self.consecutive_check_failures = self.consecutive_check_failures.saturating_add(1);
        if self.consecutive_check_failures >= self.settings.check_failure_threshold
            && self.state == BreakerState::Closed
        {
            let reason = format!(
                "{} consecutive failed health checks ({})",
                self.consecutive_check_failures,
                error.unwrap_or_default()
            );
            self.open(now, self.settings.open_ms, jitter, reason, wall);
        }
        true
    }

    fn open(&mut self, now: u64, ms: u64, jitter: f64, reason: String, wall: SystemTime) -> bool {
        let jitter = (ms as f64 * 0.2 * jitter.clamp(0.0, 1.0)) as u64;
        self.probe_at = now.saturating_add(ms).saturating_add(jitter);
        self.reason = Some(reason);
        self.consecutive_failures = 0;
        self.enter(BreakerState::Open, wall);
        true
    }

    fn close(&mut self, wall: SystemTime) -> bool {
        self.open_for = self.settings.open_ms;
        self.consecutive_failures = 0;
        // A fresh start: what tripped it is history.
        for window in [&mut self.errors, &mut self.slow].into_iter().flatten() {
            window.clear();
        }
        self.enter(BreakerState::Closed, wall);
        true
    }

    fn enter(&mut self, state: BreakerState, wall: SystemTime) {
        self.state = state;
        self.since = wall;
    }

    /// The breaker on the board.
    pub fn entry(&self, backend: &str, model: Option<&str>, latency_ms: Option<f64>) -> BackendHealth {
        BackendHealth {
            backend: backend.to_owned(),
            model: model.map(str::to_owned),
            state: self.state,
            since: self.since,
            reason: self.reason.clone(),
            last_check: self.last_check.clone(),
            latency_ms,
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
