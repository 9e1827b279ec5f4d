//! The built-in detectors: a candidate pattern each (run through one `RegexSet` per guardrail, see
//! [`crate::guardrail`]) and, where a pattern alone would flag too much, a check of the candidate (Luhn, mod-97,
//! the SSN ranges, an address that parses, a token's entropy).

use std::net::{Ipv4Addr, Ipv6Addr};

/// A candidate check: whether the regex's match is a real finding.
pub(crate) type Check = fn(&str) -> bool;

/// One pattern of a built-in detector and the check its matches must pass.
pub(crate) struct BuiltinPattern {
    pub pattern: &'static str,
    pub check: Option<Check>,
}

const fn plain(pattern: &'static str) -> BuiltinPattern {
    BuiltinPattern { pattern, check: None }
}

const fn checked(pattern: &'static str, check: Check) -> BuiltinPattern {
    BuiltinPattern { pattern, check: Some(check) }
}

pub(crate) const EMAIL: &[BuiltinPattern] =
    &[plain(r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.){1,8}[A-Za-z]{2,24}\b")];

pub(crate) const PHONE: &[BuiltinPattern] = &[
    // International: a plus, then 8 to 15 digits with the usual separators.
    checked(r"\+[1-9][0-9 .\-()]{6,22}[0-9]\b", phone_digits),
    // North American with separators: (555) 123-4567, 555-123-4567, 555.123.4567.
    plain(r"(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[.\-])[0-9]{3}[.\-][0-9]{4}\b"),
];

pub(crate) const PAYMENT_CARD: &[BuiltinPattern] = &[checked(r"\b[0-9](?:[ \-]?[0-9]){12,18}\b", luhn)];

pub(crate) const IBAN: &[BuiltinPattern] = &[checked(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b", iban_mod97)];

pub(crate) const US_SSN: &[BuiltinPattern] = &[checked(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", ssn_issuable)];

pub(crate) const IP_ADDRESS: &[BuiltinPattern] = &[
    checked(r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b", |s| s.parse::<Ipv4Addr>().is_ok()),
    checked(r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}", ipv6),
];

pub(crate) const CREDENTIAL: &[BuiltinPattern] = &[
    // Provider tokens by their documented prefixes.
    plain(
        r"\b(?:sk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9\-]{10,}|glpat-[A-Za-z0-9_\-]{20,}|AIza[0-9A-Za-z_\-]{35}|(?:sk|rk)_live_[0-9A-Za-z]{24,})",
    ),
    // JSON Web Tokens.
    plain(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    // PEM private keys (the header is enough to refuse or mark the whole thing).
    plain(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    // Long high-entropy tokens of mixed letters and digits.
    checked(r"\b[A-Za-z0-9+/_\-]{32,}={0,2}", high_entropy),
];

/// The Luhn checksum over the digits of a candidate of 13 to 19 digits.
pub(crate) fn luhn(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: the country and check digits moved to the end, letters as 10..35, the number mod 97 is 1.
pub(crate) fn iban_mod97(candidate: &str) -> bool {
    let compact: Vec<char> = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        remainder = if value < 10 { (remainder * 10 + value) % 97 } else { (remainder * 100 + value) % 97 };
    }
    remainder == 1
}

/// An SSN outside the ranges never issued: area 000, 666 or 900-999, group 00, serial 0000.
pub(crate) fn ssn_issuable(candidate: &str) -> bool {
    let mut parts = candidate.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let area: u32 = area.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && group != "00" && serial != "0000"
}

fn phone_digits(candidate: &str) -> bool {
    let digits = candidate.chars().filter(char::is_ascii_digit).count();
    (8..=15).contains(&digits)
}

fn ipv6(candidate: &str) -> bool {
    // `a:b` clock times and the like are not addresses; a real one parses and has a few hex digits.
    candidate.chars().filter(char::is_ascii_hexdigit).count() >= 3 && candidate.parse::<Ipv6Addr>().is_ok()
}

/// Shannon entropy in bits per character.
pub(crate) fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut total = 0u32;
    for b in text.bytes() {
        counts[usize::from(b)] += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let total = f64::from(total);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / total;
            -p * p.log2()
        })
        .sum()
}

/// A token that looks random: upper- and lower-case letters and digits, and more than 4.2 bits of entropy per
/// character (above what hexadecimal digests can reach, so commit hashes and checksums are not flagged).
pub(crate) fn high_entropy(candidate: &str) -> bool {
    let has = |f: fn(&char) -> bool| candidate.chars().any(|c| f(&c));
    has(char::is_ascii_uppercase)
        && has(char::is_ascii_lowercase)
        && has(char::is_ascii_digit)
        && entropy(candidate) > 4.2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_one_digit_off() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("5500-0000-0000-0004"));
        assert!(luhn("378282246310005"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(!luhn("123456789012"));
    }

    #[test]
    fn iban_checks_mod_97() {
        assert!(iban_mod97("DE89 3704 0044 0532 0130 00"));
        assert!(iban_mod97("GB82WEST12345698765432"));
        assert!(!iban_mod97("GB82WEST12345698765433"));
    }

    #[test]
    fn ssn_ranges_never_issued_are_refused() {
        assert!(ssn_issuable("123-45-6789"));
        assert!(!ssn_issuable("000-45-6789"));
        assert!(!ssn_issuable("666-45-6789"));
        assert!(!ssn_issuable("912-45-6789"));
        assert!(!ssn_issuable("123-00-6789"));
        assert!(!ssn_issuable("123-45-0000"));
    }

    #[test]
    fn entropy_tells_random_tokens_from_words_and_hex() {
        assert!(high_entropy("Zk3q9XvB7pLw2RtY8mNc4HsJ6dFg1QaE"));
        assert!(!high_entropy("internationalizationinternational"));
        assert!(!high_entropy("3f786850e387550fdab836ed7e6dc881de23001b"));
    }
}
