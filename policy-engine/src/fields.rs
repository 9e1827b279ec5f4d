//! The limits every written field is held to, in one place. Validation ([`crate::validate`]) enforces them and the
//! OpenAPI document states them through the `schema_with` functions below, so the two cannot drift. They also keep
//! every value inside what the control plane's store accepts (`NUMERIC(20, 10)` money columns, B-tree index
//! entries of a few kilobytes at most).
//!
//! NUL characters are refused in every string of every admin request before typing (Postgres stores none), so they
//! appear in no pattern here.

use std::fmt;

use rust_decimal::Decimal;
use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// Names: identities in URLs, CEL strings and policy files (see [`crate::config::validate_name`]).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:-]*$";
pub const MAX_NAME_CHARS: usize = 128;
/// Short free text: teams, tags, regions, upstream model names, header names, API versions, paths.
pub const MAX_LABEL_CHARS: usize = 256;
/// Longer free text: descriptions and deny messages.
pub(crate) const MAX_TEXT_CHARS: usize = 4096;
pub(crate) const MAX_URL_CHARS: usize = 2048;
pub const MAX_SECRET_CHARS: usize = 8192;
/// Every duration in milliseconds (timeouts, intervals): 1 ms to one day.
pub(crate) const MAX_DURATION_MS: u64 = 86_400_000;
/// A route policy's `retries`: attempts sent after the first. Each may cost up to a backend's whole timeout.
pub(crate) const MAX_ROUTE_RETRIES: u32 = 10;

/// Money as a string: an optional minus sign, digits, and an optional fraction. JSON numbers are accepted too.
pub const MONEY_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?$";
/// Most decimal places of any amount, as the store's `NUMERIC(20, 10)` columns keep them.
pub(crate) const MAX_MONEY_SCALE: u32 = 10;
/// Highest price (USD per million tokens): far above any real model, low enough that no request's cost can leave
/// the ledger's range.
pub(crate) const MAX_PRICE_USD: u32 = 1_000_000;
/// A key of `pricing.per_image`: a size (`1024x1024`, `auto`) or `default`, optionally after a quality (`hd/`).
pub const IMAGE_PRICE_KEY_PATTERN: &str = r"^([a-z]{1,16}/)?([0-9]{1,5}x[0-9]{1,5}|auto|default)$";
/// Most entries of `pricing.per_image`.
pub const MAX_IMAGE_PRICES: usize = 64;
/// Highest price of one generated image (USD).
pub(crate) const MAX_IMAGE_PRICE_USD: u32 = 100;
/// Budget limits stay below 10^10 USD: `NUMERIC(20, 10)` keeps ten digits before the point.
pub(crate) const MAX_BUDGET_DIGITS: u32 = 10;

/// Whether `text` has the money syntax of [`MONEY_PATTERN`].
pub(crate) fn is_money_syntax(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && fraction.is_none_or(all_digits)
}

/// An amount of money as written: a string of [`MONEY_PATTERN`] (`"2.50"`, the canonical form) or a JSON number.
/// Anything else (`"1e3"`, `"1_000"`, `" 2"`) is refused rather than guessed at.
struct Money(Decimal);

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MoneyVisitor)
    }
}

struct MoneyVisitor;

impl MoneyVisitor {
    fn exact<E: de::Error>(text: &str) -> Result<Money, E> {
        Decimal::from_str_exact(text)
            .map(Money)
            .map_err(|_| E::custom(format!("{text:?} has more digits than an amount can hold (28 significant)")))
    }
}

impl Visitor<'_> for MoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an amount as a decimal string such as \"2.50\" (or a JSON number)")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Money, E> {
        if !is_money_syntax(text) {
            return Err(E::invalid_value(Unexpected::Str(text), &self));
        }
        Self::exact(text)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Money, E> {
        Ok(Money(Decimal::from(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Money, E> {
        Ok(Money(Decimal::from(value)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Money, E> {
        // The shortest decimal that reads back as this double: `0.15` stays `0.15`.
        let text = value.to_string();
        if !is_money_syntax(&text) {
            return Err(E::invalid_value(Unexpected::Float(value), &self));
        }
        Self::exact(&text)
    }
}

/// `#[serde(deserialize_with = "money::required")]` and `#[serde(default, deserialize_with = "money::optional")]`.
pub mod money {
    use super::*;

    pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        Money::deserialize(deserializer).map(|m| m.0)
    }

    pub fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
        Option::<Money>::deserialize(deserializer).map(|m| m.map(|m| m.0))
    }

    /// Amounts by name (`{"1024x1024": "0.04"}`).
    pub fn by_name<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<std::collections::BTreeMap<String, Decimal>, D::Error> {
        std::collections::BTreeMap::<String, Money>::deserialize(deserializer)
            .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

/// Whether a text of free form fits in `max` characters (JSON Schema's `maxLength` counts characters too).
pub fn fits(text: &str, max: usize) -> bool {
    text.chars().count() <= max
}

/// The OpenAPI schema of each kind of constrained field, for `#[schema(schema_with = ...)]`. Only the control
/// plane documents an HTTP API, so only it enables the `openapi` feature.
#[cfg(feature = "openapi")]
pub mod schema {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};

    use super::*;

    fn nullable(ty: Type, optional: bool) -> SchemaType {
        if optional { SchemaType::from_iter([ty, Type::Null]) } else { SchemaType::from(ty) }
    }

    fn name_schema(optional: bool) -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(nullable(Type::String, optional))
                .pattern(Some(NAME_PATTERN))
                .min_length(Some(1))
                .max_length(Some(MAX_NAME_CHARS))
                .description(Some("A name: 1 to 128 of A-Z a-z 0-9 - _ . :, starting with a letter or digit."))
                .build(),
        )
    }

    /// A string of at most `max` characters, of at least one unless it may be `empty`.
    fn text_schema(optional: bool, empty: bool, max: usize, description: &str) -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(nullable(Type::String, optional))
                .min_length((!empty).then_some(1))
                .max_length(Some(max))
                .description(Some(description))
                .build(),
        )
    }

    fn money_schema(optional: bool, description: &str, example: &str) -> Schema {
        let types: Vec<Type> =
            if optional { vec![Type::String, Type::Number, Type::Null] } else { vec![Type::String, Type::Number] };
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter(types))
                .pattern(Some(MONEY_PATTERN))
                .description(Some(description))
                .examples([serde_json::Value::String(example.to_owned())])
                .build(),
        )
    }

    fn duration_schema(optional: bool, description: &str) -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(nullable(Type::Integer, optional))
                .minimum(Some(1))
                .maximum(Some(MAX_DURATION_MS))
                .description(Some(description))
                .build(),
        )
    }

    pub fn name() -> Schema {
        name_schema(false)
    }

    pub fn optional_name() -> Schema {
        name_schema(true)
    }

    pub fn names() -> Schema {
        Schema::Array(ArrayBuilder::new().items(RefOr::T(name_schema(false))).build())
    }

    /// Tool names in a tool policy: names, or `*` for any.
    pub fn tool_names() -> Schema {
        let item = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^(\*|[A-Za-z0-9][A-Za-z0-9._:-]*)$"))
            .min_length(Some(1))
            .max_length(Some(MAX_NAME_CHARS))
            .description(Some("A tool name, or `*` for any."))
            .build();
        Schema::Array(ArrayBuilder::new().items(item).description(Some("Tool names; `*` names any tool.")).build())
    }

    pub fn label() -> Schema {
        text_schema(false, false, MAX_LABEL_CHARS, "Up to 256 characters, not blank.")
    }

    pub fn optional_label() -> Schema {
        text_schema(true, false, MAX_LABEL_CHARS, "Up to 256 characters, not blank.")
    }

    pub fn labels() -> Schema {
        let labels = ArrayBuilder::new().items(RefOr::T(label())).description(Some("Free-form labels (default none)."));
        Schema::Array(labels.build())
    }

    pub fn optional_text() -> Schema {
        text_schema(true, true, MAX_TEXT_CHARS, "Up to 4096 characters.")
    }

    pub fn message() -> Schema {
        text_schema(false, false, MAX_TEXT_CHARS, "Shown to the caller: up to 4096 characters, not blank.")
    }

    pub fn url() -> Schema {
        text_schema(false, false, MAX_URL_CHARS, "An http(s) URL of up to 2048 characters; normalised on write.")
    }

    pub fn optional_url() -> Schema {
        text_schema(true, false, MAX_URL_CHARS, "An http(s) URL of up to 2048 characters; normalised on write.")
    }

    pub fn price() -> Schema {
        money_schema(false, "USD per million tokens: 0 to 1000000, at most 10 decimal places.", "2.50")
    }

    pub fn optional_price() -> Schema {
        money_schema(true, "USD per million tokens: 0 to 1000000, at most 10 decimal places.", "1.25")
    }

    /// Prices per generated image, by `size` or `quality/size`.
    pub fn image_prices() -> Schema {
        let price = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(MONEY_PATTERN))
            .description(Some("USD per image: 0 to 100, at most 10 decimal places."));
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(price))
                .property_names(Some(Schema::Object(
                    ObjectBuilder::new().schema_type(Type::String).pattern(Some(IMAGE_PRICE_KEY_PATTERN)).build(),
                )))
                .max_properties(Some(MAX_IMAGE_PRICES))
                .description(Some(
                    "USD per generated image, by the request's `size` (`1024x1024`), or `quality/size` \
                     (`hd/1024x1024`) where the quality changes the price; `default` prices a request that names \
                     no size. Required with `capabilities.images`.",
                ))
                .examples([serde_json::json!({"1024x1024": "0.04", "hd/1024x1024": "0.08", "default": "0.04"})])
                .build(),
        )
    }

    pub fn budget_limit() -> Schema {
        money_schema(false, "USD: greater than 0, below 10000000000, at most 10 decimal places.", "100.00")
    }

    pub fn soft_threshold() -> Schema {
        money_schema(
            true,
            "Fraction of the limit (0 < x < 1, at most 10 decimal places) at which an alert fires before the limit.",
            "0.8",
        )
    }

    /// A JSON Schema: an object, or `true`/`false`.
    pub fn json_schema() -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Object, Type::Boolean]))
                .description(Some(
                    "A JSON Schema (draft 2020-12 unless `$schema` says otherwise): an object or a boolean.",
                ))
                .build(),
        )
    }

    pub fn duration_ms() -> Schema {
        duration_schema(false, "Milliseconds: 1 to 86400000 (one day).")
    }

    pub fn optional_duration_ms() -> Schema {
        duration_schema(true, "Milliseconds: 1 to 86400000 (one day).")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_syntax_is_the_pattern() {
        for ok in ["0", "2.50", "-1", "0.0000000001", "123456789012345678901234567"] {
            assert!(is_money_syntax(ok), "{ok}");
        }
        for bad in ["", "-", ".5", "1.", "1e3", "1_000", " 2", "+1", "1.2.3", "--1", "0x10", "٣"] {
            assert!(!is_money_syntax(bad), "{bad}");
        }
    }

    #[test]
    fn money_reads_strings_and_numbers_exactly() {
        let read = |v: serde_json::Value| money::required(v).map(|d| d.to_string());
        assert_eq!(read(serde_json::json!("2.50")).ok().as_deref(), Some("2.50"));
        assert_eq!(read(serde_json::json!(0.15)).ok().as_deref(), Some("0.15"));
        assert_eq!(read(serde_json::json!(7)).ok().as_deref(), Some("7"));
        assert!(read(serde_json::json!("1e3")).is_err());
        assert!(read(serde_json::json!(1e300)).is_err());
        assert!(read(serde_json::json!(true)).is_err());
        assert_eq!(money::optional(serde_json::Value::Null).ok(), Some(None));
    }
}
