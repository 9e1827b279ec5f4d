//! Times in request bodies and query strings: RFC 3339 exactly (`2026-11-01T00:00:00Z`), as the OpenAPI document's
//! `date-time` says. chrono's own deserializer is more lenient (years of five digits and more, which Postgres cannot
//! store); this one is not, so every accepted time fits a `TIMESTAMPTZ`.

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer};

pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2026-11-01T00:00:00Z): {e}"))
}

/// `#[serde(default, deserialize_with = "crate::rfc3339::optional")]`.
pub fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<String>::deserialize(deserializer)?.map(|text| parse(&text).map_err(de::Error::custom)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc_3339_years_of_four_digits() {
        assert!(parse("2026-11-01T00:00:00Z").is_ok());
        assert!(parse("0000-01-01T00:00:00+23:59").is_ok(), "the earliest still fits Postgres");
        for bad in ["+20000-01-01T00:00:00Z", "-0001-01-01T00:00:00Z", "2026-11-01", "yesterday", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
