use super::*;

const T0: u64 = 1_800_000_000_000; // a whole minute

/// A limiter on a clock stopped at `T0`; the tests pass their times explicitly.
fn limiter() -> Arc<RateLimiter> {
    Arc::new(RateLimiter::with_clock(Arc::new(AtomicU64::new(T0))))
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> &'a str {
    headers.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v.as_str())
}

#[test]
fn a_key_is_refused_past_its_rpm_with_openai_headers() {
    let limiter = limiter();
    let limits = KeyLimits { rpm: Some(2), tpm: None };
    let first = limiter.admit_key("k1", "app", limits, 10, T0).unwrap();
    assert_eq!(header(&first.headers(), "x-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&first.headers(), "x-ratelimit-reset-requests"), "1m0s");
    let _second = limiter.admit_key("k1", "app", limits, 10, T0 + 1_500).unwrap();
    let refused = limiter.admit_key("k1", "app", limits, 10, T0 + 1_500).unwrap_err();
    assert_eq!(refused.kind, LimitKind::RequestsPerMinute);
    assert_eq!(refused.retry_after, 59, "58.5 s rounded up");
    assert_eq!(header(&refused.headers, "x-ratelimit-limit-requests"), "2");
    assert_eq!(header(&refused.headers, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&refused.headers, "x-ratelimit-reset-requests"), "58.5s");
    assert!(
        refused.message.contains("API key 'app' is at its limit of 2 requests per minute (RPM)"),
        "{}",
        refused.message
    );
    assert!(limiter.admit_key("k2", "other", limits, 10, T0 + 1_500).is_ok(), "keys are counted apart");
    assert!(limiter.admit_key("k1", "app", limits, 10, T0 + MINUTE_MS).is_ok(), "the next minute is empty");
}

#[test]
fn tokens_are_admitted_on_the_estimate_and_corrected_to_the_usage() {
    let limiter = limiter();
    let limits = KeyLimits { rpm: None, tpm: Some(1_000) };
    let first = limiter.admit_key("k", "app", limits, 600, T0).unwrap();
    assert_eq!(header(&first.headers(), "x-ratelimit-remaining-tokens"), "400");
    let refused = limiter.admit_key("k", "app", limits, 600, T0 + 1).unwrap_err();
    assert_eq!((refused.kind, refused.hopeless), (LimitKind::TokensPerMinute, false));
    // The answer used 100 tokens: 900 left, and the second request fits.
    first.settle(100, None, T0 + 2);
    let second = limiter.admit_key("k", "app", limits, 600, T0 + 3).unwrap();
    assert_eq!(header(&second.headers(), "x-ratelimit-remaining-tokens"), "300");
    // Dropped without reaching an upstream: its tokens come back.
    drop(second);
    let third = limiter.admit_key("k", "app", limits, 900, T0 + 4).unwrap();
    assert_eq!(header(&third.headers(), "x-ratelimit-remaining-tokens"), "0");
    let alone = limiter.admit_key("k", "app", limits, 5_000, T0 + MINUTE_MS).unwrap_err();
    assert!(alone.hopeless, "a request above the limit itself never fits");
}

#[test]
fn a_refused_request_takes_nothing() {
    let limiter = limiter();
    let limits = KeyLimits { rpm: Some(5), tpm: Some(100) };
    let _held = limiter.admit_key("k", "app", limits, 90, T0).unwrap();
    assert!(limiter.admit_key("k", "app", limits, 20, T0).is_err(), "over the TPM");
    let fits = limiter.admit_key("k", "app", limits, 10, T0).unwrap();
    assert_eq!(header(&fits.headers(), "x-ratelimit-remaining-requests"), "3", "the refused one took no request");
}

#[test]
fn backends_count_requests_per_aligned_second_and_minute() {
    let limiter = limiter();
    let limits = ProviderRateLimit { rps: Some(2), rpm: Some(3), tpm: None };
    let rates = limiter.admit_key("k", "app", KeyLimits::default(), 10, T0).unwrap();
    assert!(rates.admit_backend("up", Some(limits), T0 + 900));
    assert!(rates.admit_backend("up", Some(limits), T0 + 950));
    assert!(!rates.admit_backend("up", Some(limits), T0 + 999), "two in this second");
    assert!(rates.admit_backend("up", Some(limits), T0 + 1_000), "a new second");
    assert!(!rates.admit_backend("up", Some(limits), T0 + 2_000), "three in this minute");
    assert!(rates.admit_backend("other", Some(limits), T0 + 2_000));
    assert!(rates.admit_backend("free", None, T0 + 2_000));
    let refusal = rates.refusal().unwrap();
    assert_eq!(refusal.kind, LimitKind::RequestsPerSecond, "the limit that resets first leads");
    assert_eq!(refusal.retry_after, 1);
    assert!(
        refusal.message.contains("backend 'up' is at its limit of 2 requests per second (RPS)"),
        "{}",
        refusal.message
    );
    assert!(
        refusal.message.contains("backend 'up' is at its limit of 3 requests per minute (RPM)"),
        "{}",
        refusal.message
    );
}

#[test]
fn the_served_backend_keeps_the_usage_and_failed_ones_get_their_tokens_back() {
    let limiter = limiter();
    let limits = ProviderRateLimit { rps: None, rpm: None, tpm: Some(1_000) };
    let rates = limiter.admit_key("k", "app", KeyLimits::default(), 400, T0).unwrap();
    assert!(rates.admit_backend("a", Some(limits), T0));
    assert!(rates.admit_backend("b", Some(limits), T0));
    rates.settle(50, Some("b"), T0 + 10);
    let next = limiter.admit_key("k", "app", KeyLimits::default(), 1_000, T0 + 20).unwrap();
    assert!(next.admit_backend("a", Some(limits), T0 + 20), "a's charge came back");
    assert!(!next.admit_backend("b", Some(limits), T0 + 20), "b keeps the 50 tokens used");
}

#[test]
fn shares_divide_every_limit_and_sum_to_it() {
    let planes: Vec<Arc<RateLimiter>> = (0..3).map(|_| limiter()).collect();
    for (rank, plane) in planes.iter().enumerate() {
        assert!(plane.set_share(rank as u32, 3));
    }
    assert!(!planes[0].set_share(3, 3), "a rank must be below the count");
    assert_eq!(planes[0].rank(), (0, 3), "a refused share changes nothing");
    let limits = ProviderRateLimit { rps: Some(10), rpm: None, tpm: None };
    let mut admitted = 0;
    for plane in &planes {
        let rates = plane.admit_key("k", "app", KeyLimits::default(), 1, T0).unwrap();
        while rates.admit_backend("up", Some(limits), T0 + 500) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "the fleet admits exactly the limit in one aligned second");
    assert_eq!(RateLimiter::default().share_of(7), 7, "no share received: the whole limit");
}
