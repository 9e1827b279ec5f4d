//! This data plane's rate limits: per API key (requests and tokens per minute) and per backend (requests per second
//! and per minute, tokens per minute), each at this data plane's share of the configured limit ([`window::share`],
//! the rank and count the control plane sends as `RateShare`). Bound and semantics: `docs/rate-limits.md`.
//!
//! Tokens are admitted on an estimate (the prompt estimate plus the most output the request may generate) and
//! corrected to the metered usage when the request ends ([`RequestRates::settle`], called by the spend record).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gateway_proto::v1;
use policy_engine::config::ProviderRateLimit;

use super::window::{self, Full, MINUTE_MS, SECOND_MS, Standing, Window};
pub use crate::openai::error::LimitKind;
use crate::openai::error::RateRefusal;

/// An API key's limits, as configured (the whole fleet's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

impl KeyLimits {
    pub fn of(key: &v1::ApiKey) -> KeyLimits {
        let positive = |value: i64| u64::try_from(value).ok().filter(|v| *v > 0);
        KeyLimits { rpm: key.rpm_limit.and_then(|v| positive(i64::from(v))), tpm: key.tpm_limit.and_then(positive) }
    }

    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// Where a limited key stands after its request was admitted: OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyStanding {
    pub requests: Option<Standing>,
    pub tokens: Option<Standing>,
}

impl KeyStanding {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits the key has.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        let mut add = |names: [&'static str; 3], standing: Option<Standing>| {
            if let Some(s) = standing {
                headers.push((names[0], s.limit.to_string()));
                headers.push((names[1], s.remaining.to_string()));
                headers.push((names[2], window::format_reset(s.reset_ms)));
            }
        };
        add(
            ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"],
            self.requests,
        );
        add(["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"], self.tokens);
        headers
    }
}

#[derive(Debug, Default)]
struct KeyWindows {
    requests: Window,
    tokens: Window,
}

#[derive(Debug, Default)]
struct BackendWindows {
    second: Window,
    minute: Window,
    tokens: Window,
}

/// Tokens taken in one window, to correct when the request ends.
#[derive(Debug, Clone, Copy)]
struct TokenCharge {
    window: u64,
    tokens: u64,
}

/// The rate limits' state on this data plane, shared by every request.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// `rank << 32 | of` from the latest `RateShare`; 0 before any: this data plane then takes whole limits.
    share: AtomicU64,
    keys: Mutex<HashMap<String, KeyWindows>>,
    backends: Mutex<HashMap<String, BackendWindows>>,
    /// A clock tests set (Unix milliseconds); `None`: the wall clock. Only settlement on drop reads it: every other
    /// call takes the time as an argument.
    test_clock: Option<Arc<AtomicU64>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RateLimiter {
    /// A limiter whose requests dropped unsettled give their tokens back at the time `clock` holds.
    #[cfg(test)]
    fn with_clock(clock: Arc<AtomicU64>) -> RateLimiter {
        RateLimiter { test_clock: Some(clock), ..RateLimiter::default() }
    }

    fn now_ms(&self) -> u64 {
        self.test_clock.as_ref().map_or_else(now_ms, |clock| clock.load(Ordering::Relaxed))
    }

    /// Take `rank` of `of` as this data plane's place among those connected; refused (`false`) unless `rank < of`.
    pub fn set_share(&self, rank: u32, of: u32) -> bool {
        if rank >= of {
            return false;
        }
        self.share.store(u64::from(rank) << 32 | u64::from(of), Ordering::Relaxed);
        true
    }

    /// `(rank, of)`; `(0, 1)` before any share was received.
    pub fn rank(&self) -> (u32, u32) {
        let packed = self.share.load(Ordering::Relaxed);
        if packed == 0 {
            return (0, 1);
        }
        ((packed >> 32) as u32, packed as u32)
    }

    /// This data plane's part of the fleet-wide `limit`.
    pub fn share_of(&self, limit: u64) -> u64 {
        let (rank, of) = self.rank();
        window::share(limit, rank, of)
    }

    /// Admit one request of `key_id` (named `key_name` in messages) estimated at `tokens` under `limits`, at
    /// `now_ms`: both limits must allow it, and then both are taken. The request's rate state, whose headers are
    /// sent with the response, and which corrects the tokens when it ends.
    pub fn admit_key(
        self: &Arc<Self>,
        key_id: &str,
        key_name: &str,
        limits: KeyLimits,
        tokens: u64,
        now_ms: u64,
    ) -> Result<RequestRates, RateRefusal> {
        let mut rates = RequestRates::new(self.clone(), tokens);
        if limits.is_empty() {
            return Ok(rates);
        }
        let rpm = limits.rpm.map(|l| self.share_of(l));
        let tpm = limits.tpm.map(|l| self.share_of(l));
        let mut keys = locked(&self.keys);
        let windows = keys.entry(key_id.to_owned()).or_default();
        let refused = |kind, full: Full, windows: &mut KeyWindows, configured: Option<u64>| {
            let standing = KeyStanding {
                requests: rpm.map(|l| windows.requests.standing(l, now_ms, MINUTE_MS)),
                tokens: tpm.map(|l| windows.tokens.standing(l, now_ms, MINUTE_MS)),
            };
            let subject = format!("API key '{key_name}'");
            refusal(&[(subject, kind, full, configured.unwrap_or_default())], standing.headers())
        };
        if let Some(limit) = rpm
            && let Err(full) = windows.requests.check(limit, 1, now_ms, MINUTE_MS)
        {
            return Err(refused(LimitKind::RequestsPerMinute, full, windows, limits.rpm));
        }
        if let Some(limit) = tpm
            && let Err(full) = windows.tokens.check(limit, tokens, now_ms, MINUTE_MS)
        {
            return Err(refused(LimitKind::TokensPerMinute, full, windows, limits.tpm));
        }
        if rpm.is_some() {
            windows.requests.take(1, now_ms, MINUTE_MS);
        }
        if tpm.is_some() {
            let window = windows.tokens.take(tokens, now_ms, MINUTE_MS);
            rates.key = Some((key_id.to_owned(), TokenCharge { window, tokens }));
        }
        rates.standing = KeyStanding {
            requests: rpm.map(|l| windows.requests.standing(l, now_ms, MINUTE_MS)),
            tokens: tpm.map(|l| windows.tokens.standing(l, now_ms, MINUTE_MS)),
        };
        Ok(rates)
    }

    /// Take one request of `tokens` on `backend` under `limits`, or say which limit is reached.
    fn admit_backend(
        &self,
        backend: &str,
        limits: ProviderRateLimit,
        tokens: u64,
        now_ms: u64,
    ) -> Result<Option<TokenCharge>, (LimitKind, Full, u64)> {
        let rps = limits.rps.map(|l| (l, self.share_of(u64::from(l))));
        let rpm = limits.rpm.map(|l| (l, self.share_of(u64::from(l))));
        let tpm = limits.tpm.map(|l| (l, self.share_of(l)));
        let mut backends = locked(&self.backends);
        let windows = backends.entry(backend.to_owned()).or_default();
        if let Some((configured, limit)) = rps {
            windows
                .second
                .check(limit, 1, now_ms, SECOND_MS)
                .map_err(|full| (LimitKind::RequestsPerSecond, full, u64::from(configured)))?;
        }
        if let Some((configured, limit)) = rpm {
            windows
                .minute
                .check(limit, 1, now_ms, MINUTE_MS)
                .map_err(|full| (LimitKind::RequestsPerMinute, full, u64::from(configured)))?;
        }
        if let Some((configured, limit)) = tpm {
            windows
                .tokens
                .check(limit, tokens, now_ms, MINUTE_MS)
                .map_err(|full| (LimitKind::TokensPerMinute, full, configured))?;
        }
        if rps.is_some() {
            windows.second.take(1, now_ms, SECOND_MS);
        }
        if rpm.is_some() {
            windows.minute.take(1, now_ms, MINUTE_MS);
        }
        Ok(tpm.map(|_| TokenCharge { window: windows.tokens.take(tokens, now_ms, MINUTE_MS), tokens }))
    }

    fn correct_key(&self, key_id: &str, charge: TokenCharge, actual: u64, now_ms: u64) {
        if let Some(windows) = locked(&self.keys).get_mut(key_id) {
            windows.tokens.correct(charge.window, charge.tokens, actual, now_ms, MINUTE_MS);
        }
    }

    fn correct_backend(&self, backend: &str, charge: TokenCharge, actual: u64, now_ms: u64) {
        if let Some(windows) = locked(&self.backends).get_mut(backend) {
            windows.tokens.correct(charge.window, charge.tokens, actual, now_ms, MINUTE_MS);
        }
    }
}

/// The refusal of limits `refused` (what refused, which limit, where its window stood, the configured limit).
fn refusal(refused: &[(String, LimitKind, Full, u64)], headers: Vec<(&'static str, String)>) -> RateRefusal {
    let parts: Vec<String> = refused
        .iter()
        .map(|(subject, kind, full, configured)| {
            let hopeless = if full.cost > full.limit { " (more than the limit itself)" } else { "" };
            format!(
                "{subject} is at its limit of {} {}: this gateway's share is {}, {} used in the current window, {} \
                 requested{hopeless}; it resets in {}",
                configured,
                kind.describe(),
                full.limit,
                full.used,
                full.cost,
                window::format_reset(full.reset_ms)
            )
        })
        .collect();
    let (kind, reset_ms) = refused
        .iter()
        .map(|(_, kind, full, _)| (*kind, full.reset_ms))
        .min_by_key(|(_, reset)| *reset)
        .unwrap_or((LimitKind::RequestsPerMinute, MINUTE_MS));
    RateRefusal {
        message: format!("Rate limit reached: {}.", parts.join("; ")),
        kind,
        retry_after: window::retry_after_secs(reset_ms),
        // A request that alone exceeds every limit that refused it never fits: retrying cannot help.
        hopeless: refused.iter().all(|(_, _, full, _)| full.cost > full.limit),
        headers,
    }
}

/// One request's rate-limit state: the key's token charge, the backends it was admitted to, the key's standing for
/// the response headers. Settled once when the request ends; dropped unsettled, it gives its tokens back.
#[derive(Debug)]
pub struct RequestRates {
    limiter: Arc<RateLimiter>,
    /// The estimate admitted under token limits.
    tokens: u64,
    key: Option<(String, TokenCharge)>,
    backends: Mutex<Vec<(String, TokenCharge)>>,
    standing: KeyStanding,
    /// Backends refused at their limit, for the message when no candidate could be sent to.
    at_limit: Mutex<Vec<(String, LimitKind, Full, u64)>>,
    settled: AtomicBool,
}

impl RequestRates {
    fn new(limiter: Arc<RateLimiter>, tokens: u64) -> RequestRates {
        RequestRates {
            limiter,
            tokens,
            key: None,
            backends: Mutex::new(Vec::new()),
            standing: KeyStanding::default(),
            at_limit: Mutex::new(Vec::new()),
            settled: AtomicBool::new(false),
        }
    }

    /// The key's `x-ratelimit-*` headers (none for a key without limits).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.standing.headers()
    }

    /// Whether an attempt may go to `backend` now under its limits (taking its share if so). A backend at its limit
    /// is remembered for [`RequestRates::refusal`].
    pub fn admit_backend(&self, backend: &str, limits: Option<ProviderRateLimit>, now_ms: u64) -> bool {
        let Some(limits) = limits else { return true };
        match self.limiter.admit_backend(backend, limits, self.tokens, now_ms) {
            Ok(charge) => {
                if let Some(charge) = charge {
                    locked(&self.backends).push((backend.to_owned(), charge));
                }
                true
            }
            Err((kind, full, configured)) => {
                locked(&self.at_limit).push((format!("backend '{backend}'"), kind, full, configured));
                false
            }
        }
    }

    /// The refusal when every candidate was at its limit (`None` if none was).
    pub fn refusal(&self) -> Option<RateRefusal> {
        let at_limit = locked(&self.at_limit);
        (!at_limit.is_empty()).then(|| refusal(&at_limit, self.headers()))
    }

    /// The request ended having used `actual` tokens, served by `served` (the backend of its last attempt): the key's
    /// and that backend's charges become `actual`; the other backends, whose attempts failed, get theirs back.
    pub fn settle(&self, actual: u64, served: Option<&str>, now_ms: u64) {
        if self.settled.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some((key, charge)) = &self.key {
            self.limiter.correct_key(key, *charge, actual, now_ms);
        }
        let backends = std::mem::take(&mut *locked(&self.backends));
        let last_served = served.and_then(|s| backends.iter().rposition(|(b, _)| b == s));
        for (position, (backend, charge)) in backends.iter().enumerate() {
            let used = if Some(position) == last_served { actual } else { 0 };
            self.limiter.correct_backend(backend, *charge, used, now_ms);
        }
    }
}

impl Drop for RequestRates {
    fn drop(&mut self) {
        // Never settled: nothing reached an upstream.
        self.settle(0, None, self.limiter.now_ms());
    }
}

/// The wall clock in Unix milliseconds (windows align to it across data planes).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
