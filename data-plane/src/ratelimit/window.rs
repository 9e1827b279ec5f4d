//! Fixed windows aligned to the wall clock, and a data plane's share of a limit. Pure: every function takes the time
//! (`now_ms`, Unix milliseconds), so tests drive the clock.
//!
//! A window of `length_ms` holds what was admitted in `[k * length_ms, (k + 1) * length_ms)`. Because every data
//! plane aligns its windows to the same wall clock and admits at most its share in each, the shares' sum bounds what
//! the fleet admits in each aligned window (`docs/rate-limits.md`).

/// One second, for requests per second.
pub const SECOND_MS: u64 = 1_000;
/// One minute, for requests and tokens per minute.
pub const MINUTE_MS: u64 = 60_000;

/// This data plane's part of `limit` when it is `rank` of `of` data planes: `floor(limit / of)`, plus one for the
/// first `limit % of` ranks, so the parts of ranks `0..of` sum to exactly `limit`. `of == 0` counts as one plane.
pub fn share(limit: u64, rank: u32, of: u32) -> u64 {
    let of = u64::from(of.max(1));
    let extra = u64::from(u64::from(rank) < limit % of);
    limit / of + extra
}

/// What one window has admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// The window's number: `now_ms / length_ms`.
    index: u64,
    used: u64,
}

/// A refusal: the window has `used` of `limit`, `cost` more does not fit, and it resets in `reset_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub limit: u64,
    pub used: u64,
    pub cost: u64,
    pub reset_ms: u64,
}

/// Where a window stands after an admission: for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// Milliseconds from `now_ms` to the end of its window of `length_ms`.
pub fn reset_ms(now_ms: u64, length_ms: u64) -> u64 {
    length_ms - now_ms % length_ms
}

impl Window {
    /// The window for `now_ms`, emptied if it moved on. Only forward: a time read just before a newer one (threads
    /// race to the lock) counts in the newer window, never resets it, so no admission is forgotten.
    fn roll(&mut self, now_ms: u64, length_ms: u64) {
        let index = now_ms / length_ms;
        if index > self.index {
            *self = Window { index, used: 0 };
        }
    }

    /// Whether `cost` more fits under `limit` in the window of `now_ms` (nothing is taken).
    pub fn check(&mut self, limit: u64, cost: u64, now_ms: u64, length_ms: u64) -> Result<(), Full> {
        self.roll(now_ms, length_ms);
        if self.used.saturating_add(cost) > limit {
            return Err(Full { limit, used: self.used, cost, reset_ms: reset_ms(now_ms, length_ms) });
        }
        Ok(())
    }

    /// Take `cost` in the window of `now_ms` (after [`Window::check`]); the window's number, for corrections.
    pub fn take(&mut self, cost: u64, now_ms: u64, length_ms: u64) -> u64 {
        self.roll(now_ms, length_ms);
        self.used = self.used.saturating_add(cost);
        self.index
    }

    /// Replace `charged` taken in window `index` by `actual`: within that window the difference is given back or
    /// added; once it has passed only an excess counts, in the current window (the past one cannot admit any more).
    pub fn correct(&mut self, index: u64, charged: u64, actual: u64, now_ms: u64, length_ms: u64) {
        self.roll(now_ms, length_ms);
        if self.index == index {
            self.used = self.used.saturating_sub(charged).saturating_add(actual);
        } else if actual > charged {
            self.used = self.used.saturating_add(actual - charged);
        }
    }

    /// The window of `now_ms` against `limit`.
    pub fn standing(&mut self, limit: u64, now_ms: u64, length_ms: u64) -> Standing {
        self.roll(now_ms, length_ms);
        Standing { limit, remaining: limit.saturating_sub(self.used), reset_ms: reset_ms(now_ms, length_ms) }
    }
}

/// A duration as OpenAI's `x-ratelimit-reset-*` headers write it (Go's `Duration.String`): `17ms`, `1s`, `1.5s`,
/// `6m0s`, `1h0m0s`.
pub fn format_reset(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let seconds = if rest % 1_000 == 0 {
        format!("{}s", rest / 1_000)
    } else {
        let text = format!("{}.{:03}", rest / 1_000, rest % 1_000);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

/// Whole seconds to wait for a reset `ms` away, as `retry-after` carries it: rounded up, at least one.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_limit_and_differ_by_at_most_one() {
        for limit in [0, 1, 2, 5, 7, 60, 100, 1_000_003] {
            for of in 1..=9u32 {
                let parts: Vec<u64> = (0..of).map(|rank| share(limit, rank, of)).collect();
                assert_eq!(parts.iter().sum::<u64>(), limit, "limit {limit} of {of}: {parts:?}");
                let (min, max) = (parts.iter().min().unwrap(), parts.iter().max().unwrap());
                assert!(max - min <= 1, "limit {limit} of {of}: {parts:?}");
            }
        }
        assert_eq!(share(10, 0, 0), 10, "no count yet: one plane");
        assert_eq!([share(5, 0, 3), share(5, 1, 3), share(5, 2, 3)], [2, 2, 1]);
    }

    #[test]
    fn a_window_admits_up_to_its_limit_then_resets_at_the_aligned_boundary() {
        let mut window = Window::default();
        let start = 1_700_000_000_000; // a whole second
        for i in 0..3 {
            assert_eq!(window.check(3, 1, start + i * 100, SECOND_MS), Ok(()));
            window.take(1, start + i * 100, SECOND_MS);
        }
        let full = window.check(3, 1, start + 999, SECOND_MS).unwrap_err();
        assert_eq!(full, Full { limit: 3, used: 3, cost: 1, reset_ms: 1 });
        assert_eq!(window.check(3, 1, start + 1_000, SECOND_MS), Ok(()), "the next aligned second is empty");
        assert!(window.check(3, 4, start + 1_000, SECOND_MS).is_err(), "a cost above the limit never fits");
    }

    #[test]
    fn a_late_reading_of_the_clock_counts_in_the_newer_window() {
        let mut window = Window::default();
        let boundary = 5_000;
        window.take(2, boundary, SECOND_MS);
        // A request that read the clock just before the boundary but reached the window after it.
        assert!(window.check(3, 2, boundary - 1, SECOND_MS).is_err(), "not an empty window of its own");
        window.take(1, boundary - 1, SECOND_MS);
        assert_eq!(window.standing(3, boundary + 1, SECOND_MS).remaining, 0);
    }

    #[test]
    fn corrections_give_back_or_add_within_the_window_and_only_add_after_it() {
        let mut window = Window::default();
        let now = 120_000;
        let index = window.take(500, now, MINUTE_MS);
        window.correct(index, 500, 120, now + 10, MINUTE_MS);
        assert_eq!(window.standing(1000, now + 10, MINUTE_MS).remaining, 880);
        let index = window.take(100, now + 20, MINUTE_MS);
        window.correct(index, 100, 300, now + 30, MINUTE_MS);
        assert_eq!(window.standing(1000, now + 30, MINUTE_MS).remaining, 580);
        // Ended in the next minute: a refund is lost with the window, an excess counts in the new one.
        let index = window.take(100, now + 40, MINUTE_MS);
        window.correct(index, 100, 10, now + MINUTE_MS, MINUTE_MS);
        assert_eq!(window.standing(1000, now + MINUTE_MS, MINUTE_MS).remaining, 1000);
        window.correct(index, 100, 250, now + MINUTE_MS, MINUTE_MS);
        assert_eq!(window.standing(1000, now + MINUTE_MS, MINUTE_MS).remaining, 850);
    }

    #[test]
    fn resets_are_written_as_openai_writes_them() {
        for (ms, text) in [
            (17, "17ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (59_988, "59.988s"),
            (60_000, "1m0s"),
            (360_000, "6m0s"),
            (61_250, "1m1.25s"),
            (3_600_000, "1h0m0s"),
        ] {
            assert_eq!(format_reset(ms), text, "{ms} ms");
        }
        assert_eq!([retry_after_secs(1), retry_after_secs(1_000), retry_after_secs(1_001)], [1, 1, 2]);
        assert_eq!(retry_after_secs(0), 1);
    }
}
