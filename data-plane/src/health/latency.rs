//! Observed latency for the `least_latency` strategy: a peak-EWMA of the time to first byte per backend+model (a
//! slower sample is taken at once, faster ones pull the average down with a weight that grows with the time since
//! the last sample), and the ranking that orders candidates by it with exploration: a candidate never measured
//! comes first, and one not measured for [`EXPLORE_AFTER_MS`] is tried first once, so a backend that recovered is
//! seen again. Times are milliseconds on the tracker's monotonic clock.

use std::sync::Mutex;

/// How fast the average forgets: the weight of the old average after `dt` is `exp(-dt / DECAY_MS)`.
const DECAY_MS: f64 = 10_000.0;
/// A candidate without a sample for this long is tried first once (and then again after as long).
pub const EXPLORE_AFTER_MS: u64 = 5_000;

#[derive(Debug, Default)]
pub struct PeakEwma {
    inner: Mutex<Option<Sampled>>,
}

#[derive(Debug, Clone, Copy)]
struct Sampled {
    ewma_ms: f64,
    at: u64,
    /// When it was last put first to be measured again.
    explored_at: u64,
}

/// Where a candidate goes in the `least_latency` order: lower first.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub enum Rank {
    /// No sample yet.
    Unmeasured,
    /// Its last sample is stale: it is tried first, once.
    Explore,
    Measured(f64),
}

impl PeakEwma {
    pub fn observe(&self, ttfb_ms: u64, now: u64) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let sample = ttfb_ms as f64;
        *inner = Some(match *inner {
            None => Sampled { ewma_ms: sample, at: now, explored_at: now },
            Some(last) => {
                let ewma_ms = if sample > last.ewma_ms {
                    sample
                } else {
                    let kept = (-(now.saturating_sub(last.at) as f64) / DECAY_MS).exp();
                    last.ewma_ms * kept + sample * (1.0 - kept)
                };
                Sampled { ewma_ms, at: now, explored_at: last.explored_at }
            }
        });
    }

    pub fn value(&self) -> Option<f64> {
        self.inner.lock().ok().and_then(|inner| inner.map(|s| s.ewma_ms))
    }

    /// The rank now; a stale sample is explored by this one call (the next calls see it measured again).
    pub fn rank(&self, now: u64) -> Rank {
        let Ok(mut inner) = self.inner.lock() else { return Rank::Unmeasured };
        match inner.as_mut() {
            None => Rank::Unmeasured,
            Some(s)
                if now.saturating_sub(s.at) >= EXPLORE_AFTER_MS
                    && now.saturating_sub(s.explored_at) >= EXPLORE_AFTER_MS =>
            {
                s.explored_at = now;
                Rank::Explore
            }
            Some(s) => Rank::Measured(s.ewma_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slower_sample_is_taken_at_once_and_faster_ones_pull_it_down_over_time() {
        let latency = PeakEwma::default();
        assert_eq!(latency.rank(0), Rank::Unmeasured);
        latency.observe(100, 0);
        latency.observe(400, 10);
        assert_eq!(latency.value(), Some(400.0), "peak");
        latency.observe(100, 20);
        let barely = latency.value().unwrap();
        assert!(barely > 399.0 && barely < 400.0, "10 ms later the old average still weighs: {barely}");
        latency.observe(100, 60_000);
        assert!(latency.value().unwrap() < 102.0, "a minute later the new sample dominates");
    }

    #[test]
    fn a_stale_candidate_is_explored_once_per_period() {
        let latency = PeakEwma::default();
        latency.observe(300, 0);
        assert_eq!(latency.rank(100), Rank::Measured(300.0));
        assert_eq!(latency.rank(EXPLORE_AFTER_MS), Rank::Explore);
        assert_eq!(latency.rank(EXPLORE_AFTER_MS + 1), Rank::Measured(300.0), "once");
        assert_eq!(latency.rank(2 * EXPLORE_AFTER_MS), Rank::Explore, "and again a period later");
    }
}
