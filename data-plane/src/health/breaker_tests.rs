//! The breaker's state machine on a clock the tests turn (milliseconds), no sleeping.

use std::time::SystemTime;

use policy_engine::config::{ErrorRateTrip, LatencyTrip};

use super::*;

const WALL: SystemTime = SystemTime::UNIX_EPOCH;

fn settings() -> Settings {
    Settings {
        failure_threshold: Some(3),
        open_ms: 1000,
        max_open_ms: 4000,
        error_rate: None,
        latency: None,
        check_failure_threshold: 2,
    }
}

const FAILED: Outcome = Outcome::Failed { ttfb_ms: None };
const FAST: Outcome = Outcome::Answered { ttfb_ms: 10 };

/// An ordinary attempt at `now` with `outcome`; whether it was admitted.
fn attempt(core: &mut Core, now: u64, outcome: Outcome) -> bool {
    match core.admit(now, false, WALL).0 {
        Some(pass) => {
            core.record(pass, outcome, now, 0.0, WALL);
            true
        }
        None => false,
    }
}

#[test]
fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
    let mut core = Core::new(settings(), WALL);
    for outcome in [FAILED, FAILED, FAST, FAILED, FAILED] {
        assert!(attempt(&mut core, 0, outcome));
    }
    assert_eq!(core.state(), BreakerState::Closed, "two in a row since the success");
    assert!(attempt(&mut core, 0, FAILED));
    assert_eq!(core.state(), BreakerState::Open);
    assert_eq!(core.entry("b", None, None).reason.as_deref(), Some("3 consecutive failures"));
    assert!(!attempt(&mut core, 999, FAST), "open: skipped until open_ms passed");
}

#[test]
fn after_open_ms_exactly_one_probe_goes_through_and_its_success_closes() {
    let mut core = Core::new(settings(), WALL);
    for _ in 0..3 {
        attempt(&mut core, 0, FAILED);
    }
    let (probe, changed) = core.admit(1000, false, WALL);
    assert_eq!((probe, changed, core.state()), (Some(Pass::Probe), true, BreakerState::HalfOpen));
    assert_eq!(core.admit(1000, false, WALL).0, None, "one probe at a time");
    assert!(core.record(Pass::Probe, FAST, 1001, 0.0, WALL));
    assert_eq!(core.state(), BreakerState::Closed);
    assert!(attempt(&mut core, 1002, FAST));
}

#[test]
fn a_failed_probe_reopens_with_the_open_time_doubled_up_to_the_cap() {
    let mut core = Core::new(settings(), WALL);
    for _ in 0..3 {
        attempt(&mut core, 0, FAILED);
    }
    let mut now = 0;
    for expected_wait in [2000, 4000, 4000] {
        now = core.probe_at();
        let (pass, _) = core.admit(now, false, WALL);
        assert_eq!(pass, Some(Pass::Probe));
        core.record(Pass::Probe, FAILED, now, 0.0, WALL);
        assert_eq!(core.state(), BreakerState::Open);
        assert_eq!(core.probe_at() - now, expected_wait);
    }
    // Closing resets the backoff.
    let probe_at = core.probe_at();
    core.admit(probe_at, false, WALL);
    core.record(Pass::Probe, FAST, probe_at, 0.0, WALL);
    for _ in 0..3 {
        attempt(&mut core, now + 10_000, FAILED);
    }
    assert_eq!(core.probe_at() - (now + 10_000), 1000);
}

#[test]
fn jitter_lengthens_the_open_time_by_up_to_a_fifth() {
    let mut core = Core::new(settings(), WALL);
    for _ in 0..3 {
        let pass = core.admit(0, false, WALL).0.unwrap();
        core.record(pass, FAILED, 0, 0.5, WALL);
    }
    assert_eq!(core.probe_at(), 1100);
}

#[test]
fn a_probe_that_never_reports_frees_the_probe_for_the_next_request() {
    let mut core = Core::new(settings(), WALL);
    for _ in 0..3 {
        attempt(&mut core, 0, FAILED);
    }
    assert_eq!(core.admit(1000, false, WALL).0, Some(Pass::Probe));
    core.release(Pass::Probe);
    assert_eq!(core.state(), BreakerState::HalfOpen);
    assert_eq!(core.admit(1001, false, WALL).0, Some(Pass::Probe));
}

#[test]
fn outcomes_of_attempts_sent_before_it_opened_do_not_count() {
    let mut core = Core::new(settings(), WALL);
    let late = core.admit(0, false, WALL).0.unwrap();
    for _ in 0..3 {
        attempt(&mut core, 0, FAILED);
    }
    assert!(!core.record(late, FAST, 5, 0.0, WALL));
    assert_eq!(core.state(), BreakerState::Open);
}

#[test]
fn forcing_past_an_open_breaker_takes_the_probe_if_free_and_otherwise_is_not_counted() {
    let mut core = Core::new(settings(), WALL);
    for _ in 0..3 {
        attempt(&mut core, 0, FAILED);
    }
    assert_eq!(core.admit(10, true, WALL).0, Some(Pass::Probe), "all candidates open: the most due is tried");
    assert_eq!(core.admit(10, true, WALL).0, Some(Pass::Normal));
    assert!(!core.record(Pass::Normal, FAST, 11, 0.0, WALL));
    assert_eq!(core.state(), BreakerState::HalfOpen);
}

#[test]
fn the_error_rate_opens_it_once_the_window_holds_enough_attempts() {
    let trip = ErrorRateTrip { percent: 50, window_ms: 1000, min_requests: 4 };
    let mut core = Core::new(Settings { failure_threshold: Some(100), error_rate: Some(trip), ..settings() }, WALL);
    for (now, outcome) in [(0, FAILED), (1, FAST), (2, FAILED)] {
        attempt(&mut core, now, outcome);
    }
    assert_eq!(core.state(), BreakerState::Closed, "3 attempts, under min_requests");
    attempt(&mut core, 3, FAST);
    assert_eq!(core.state(), BreakerState::Closed, "a success never opens it");
    attempt(&mut core, 4, FAILED);
    assert_eq!(core.state(), BreakerState::Open, "3 of 5 failed");
    assert_eq!(core.entry("b", None, None).reason.as_deref(), Some("3 of 5 attempts failed in 1000 ms"));
}

#[test]
fn failures_older_than_the_window_are_forgotten() {
    let trip = ErrorRateTrip { percent: 50, window_ms: 1000, min_requests: 2 };
    let mut core = Core::new(Settings { failure_threshold: Some(100), error_rate: Some(trip), ..settings() }, WALL);
    attempt(&mut core, 0, FAILED);
    attempt(&mut core, 1500, FAST);
    attempt(&mut core, 1600, FAST);
    attempt(&mut core, 1700, FAILED);
    assert_eq!(core.state(), BreakerState::Closed, "1 of 3 in the window");
}

#[test]
fn the_latency_trip_opens_when_more_than_one_percent_of_the_window_is_over_p99_ms() {
    let trip = LatencyTrip { p99_ms: 100, window_ms: 10_000, min_requests: 5 };
    let mut core = Core::new(Settings { latency: Some(trip), ..settings() }, WALL);
    for now in 0..4 {
        attempt(&mut core, now, Outcome::Answered { ttfb_ms: 500 });
    }
    assert_eq!(core.state(), BreakerState::Closed, "under min_requests");
    attempt(&mut core, 4, Outcome::Answered { ttfb_ms: 500 });
    assert_eq!(core.state(), BreakerState::Open);

    let mut core = Core::new(Settings { latency: Some(trip), ..settings() }, WALL);
    for now in 0..200 {
        attempt(&mut core, now, FAST);
    }
    attempt(&mut core, 200, Outcome::Answered { ttfb_ms: 500 });
    attempt(&mut core, 201, Outcome::Answered { ttfb_ms: 500 });
    assert_eq!(core.state(), BreakerState::Closed, "2 of 202 over: the p99 is still fast");
    attempt(&mut core, 202, Outcome::Answered { ttfb_ms: 500 });
    assert_eq!(core.state(), BreakerState::Open, "3 of 203 over");
    // A timeout counts as slow too.
    let mut core = Core::new(Settings { latency: Some(trip), failure_threshold: Some(100), ..settings() }, WALL);
    for now in 0..5 {
        attempt(&mut core, now, Outcome::Failed { ttfb_ms: Some(300) });
    }
    assert_eq!(core.state(), BreakerState::Open);
}

#[test]
fn a_429_with_retry_after_opens_for_that_long_without_counting_as_a_failure() {
    let mut core = Core::new(settings(), WALL);
    attempt(&mut core, 0, FAILED);
    attempt(&mut core, 0, FAILED);
    attempt(&mut core, 0, Outcome::RateLimited { retry_after_ms: 1500 });
    assert_eq!(core.state(), BreakerState::Open);
    assert_eq!(core.probe_at(), 1500);
    assert_eq!(core.admit(1500, false, WALL).0, Some(Pass::Probe));
    core.record(Pass::Probe, FAST, 1500, 0.0, WALL);
    assert_eq!(core.state(), BreakerState::Closed);
    let mut capped = Core::new(settings(), WALL);
    attempt(&mut capped, 0, Outcome::RateLimited { retry_after_ms: 86_400_000 });
    assert_eq!(capped.probe_at(), 4000, "at most max_open_ms");
}

fn check(ok: bool) -> HealthCheckResult {
    HealthCheckResult { at: WALL, ok, error: (!ok).then(|| "HTTP 500".to_owned()) }
}

#[test]
fn failed_health_checks_open_it_and_a_successful_one_closes_it() {
    let mut core = Core::new(settings(), WALL);
    core.record_check(check(false), 0, 0.0, WALL);
    assert_eq!(core.state(), BreakerState::Closed, "one of two");
    core.record_check(check(false), 100, 0.0, WALL);
    assert_eq!(core.state(), BreakerState::Open);
    let entry = core.entry("b", None, None);
    assert_eq!(entry.reason.as_deref(), Some("2 consecutive failed health checks (HTTP 500)"));
    assert_eq!(entry.last_check, Some(check(false)));
    core.record_check(check(true), 200, 0.0, WALL);
    assert_eq!(core.state(), BreakerState::Closed, "a good check acts as the probe");
}

#[test]
fn a_check_only_breaker_never_opens_on_requests() {
    let backend: BackendSpec = serde_json::from_value(serde_json::json!({"name": "b", "kind": "openai",
        "base_url": "https://x", "health_check": {"interval_ms": 5000}}))
    .unwrap();
    let settings = Settings::of(&backend).unwrap();
    assert_eq!((settings.failure_threshold, settings.open_ms, settings.check_failure_threshold), (None, 5000, 1));
    let mut core = Core::new(settings, WALL);
    for _ in 0..50 {
        attempt(&mut core, 0, FAILED);
    }
    assert_eq!(core.state(), BreakerState::Closed);
    core.record_check(check(false), 0, 0.0, WALL);
    assert_eq!(core.state(), BreakerState::Open);
    assert_eq!(core.admit(1_000_000, false, WALL).0, None, "no request probes it");
    assert_eq!(core.admit(1_000_000, true, WALL).0, Some(Pass::Normal), "forced, it is tried but not as a probe");
    core.record_check(check(true), 0, 0.0, WALL);
    assert_eq!(core.state(), BreakerState::Closed);
}
