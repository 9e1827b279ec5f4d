//! The `guardrail` resource as governance teams write it: where it applies (a CEL `when`), on which side of the
//! exchange, which detectors look at the content, and what a match does. Compiled by [`crate::guardrail`];
//! semantics in `docs/guardrails.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use crate::fields::schema;

/// Most detectors one guardrail may list.
pub const MAX_DETECTORS: usize = 32;
/// Longest custom regular expression, in characters, before it is compiled.
pub const MAX_PATTERN_CHARS: usize = 1024;
/// The compiled size a custom expression may reach (the `regex` crate's `size_limit`, bytes of program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The lazy DFA cache each compiled expression may grow to (bytes).
pub const REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;
/// Most terms in one term list, the longest term (characters) and all of a list's terms together (characters).
pub const MAX_TERMS: usize = 1000;
pub const MAX_TERM_CHARS: usize = 256;
pub const MAX_TERMS_TOTAL_CHARS: usize = 65_536;
/// The streamed-answer window (characters of text held back per choice, see `docs/guardrails.md`).
pub const MIN_STREAM_WINDOW_CHARS: u32 = 32;
pub const MAX_STREAM_WINDOW_CHARS: u32 = 4096;
pub const DEFAULT_STREAM_WINDOW_CHARS: u32 = 256;

/// Which side of the exchange a guardrail inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GuardrailSide {
    /// The request: message contents, tool-call arguments and tool results, before anything is sent upstream.
    Prompt,
    /// The answer, non-streamed or streamed, before it reaches the caller.
    Completion,
    /// Both.
    #[default]
    Both,
}

impl GuardrailSide {
    pub fn covers_prompt(self) -> bool {
        matches!(self, GuardrailSide::Prompt | GuardrailSide::Both)
    }

    pub fn covers_completion(self) -> bool {
        matches!(self, GuardrailSide::Completion | GuardrailSide::Both)
    }
}

/// What a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GuardrailAction {
    /// Refuse: a prompt gets 400 `content_blocked` and the upstream receives nothing; an answer is replaced by the
    /// error (a stream ends with an error event). The error names the guardrail and the category, never the text.
    #[default]
    Block,
    /// Replace each match with `[REDACTED:<category>]` before the request leaves the gateway, or before the answer
    /// reaches the caller.
    Redact,
    /// Only record the matches (spend event and metrics).
    Audit,
}

impl GuardrailAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailAction::Block => "block",
            GuardrailAction::Redact => "redact",
            GuardrailAction::Audit => "audit",
        }
    }
}

/// One detector. Built-in ones need no settings; the category a match is reported under is the detector's type,
/// or its `name` for custom ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields, from = "wire::DetectorSpec")]
pub enum DetectorSpec {
    /// E-mail addresses.
    Email,
    /// Phone numbers: international (`+` and 8 to 15 digits) and North American with separators.
    Phone,
    /// Payment card numbers: 13 to 19 digits (spaces or dashes between them) passing the Luhn check.
    PaymentCard,
    /// IBANs passing the ISO 13616 mod-97 check.
    Iban,
    /// US social security numbers written `AAA-GG-SSSS`, outside the never-issued ranges.
    UsSsn,
    /// IPv4 and IPv6 addresses.
    IpAddress,
    /// Credentials: well-known token prefixes (`sk-`, `AKIA`, `ghp_`, `xox?-`, `glpat-`, `AIza`, JWTs, private
    /// key headers) and long high-entropy tokens.
    Credential,
    /// A custom regular expression (the linear-time `regex` syntax), reported under `name`.
    Regex {
        /// The category matches are reported under.
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
        name: String,
        /// At most 1024 characters; compiled with a 1 MiB size limit.
        #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
        pattern: String,
    },
    /// Whole words or phrases from a list, reported under `name`.
    Terms {
        /// The category matches are reported under.
        #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
        name: String,
        /// 1 to 1000 terms of at most 256 characters each (65536 in all).
        #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 1000))]
        terms: Vec<String>,
        /// Match ASCII letters case-sensitively (default false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        case_sensitive: bool,
    },
    /// An OpenAI-compatible `/moderations` endpoint of a backend of the registry (kind `openai`), called with that
    /// backend's credentials. Its `category_scores` are compared with `thresholds`.
    Moderation(ModerationSpec),
    /// A generic HTTP classifier: `POST url` with `{"input": [texts], "side": "prompt"|"completion", "guardrail":
    /// name}`, answering `{"categories": {name: score}}` (`docs/guardrails.md`).
    Webhook(WebhookSpec),
}

/// Longest and shortest wait for an external classifier, in ms.
pub const MIN_CLASSIFIER_TIMEOUT_MS: u64 = 10;
pub const MAX_CLASSIFIER_TIMEOUT_MS: u64 = 30_000;
/// Most categories one classifier may threshold, and most headers a webhook may add.
pub const MAX_THRESHOLDS: usize = 64;
pub const MAX_WEBHOOK_HEADERS: usize = 16;

/// What a guardrail does when its external classifier fails (error, timeout, unreadable answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let the request or answer through; the failure is recorded (`action: fail_open`).
    FailOpen,
    /// Refuse it: 503 `guardrail_unavailable`, naming the guardrail (`action: fail_closed`).
    FailClosed,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FailOpen => "fail_open",
            OnError::FailClosed => "fail_closed",
        }
    }
}

/// A score from 0 to 1 at or above which a category flags. JSON numbers are never NaN, and validation refuses any
/// value outside 0..=1, so equality is total.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Threshold(pub f64);

impl Eq for Threshold {}

/// The settings every external classifier shares.
pub trait ClassifierSettings {
    /// Category name to the score at or above which it flags; categories the classifier reports without a
    /// threshold here are ignored.
    fn thresholds(&self) -> &BTreeMap<String, Threshold>;
    fn timeout_ms(&self) -> u64;
    fn on_error(&self) -> OnError;
}

/// `{"type": "moderation", "backend": ..., "model": ..., "thresholds": {...}, "timeout_ms": ..., "on_error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModerationSpec {
    /// A backend of kind `openai`; its base URL, secret and egress rules are used as for its chat requests.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub backend: String,
    /// The `model` sent (e.g. `omni-moderation-latest`); omitted when absent, so the endpoint's default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// 1 to 64 categories (the endpoint's `category_scores` names, e.g. `violence`, `hate`) and their thresholds
    /// (0 to 1).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, f64>))]
    pub thresholds: BTreeMap<String, Threshold>,
    /// Longest wait for the answer, 10 to 30000 ms; past it `on_error` decides.
    #[cfg_attr(feature = "openapi", schema(minimum = 10, maximum = 30000))]
    pub timeout_ms: u64,
    /// `fail_open` or `fail_closed`: required, there is no silent default.
    pub on_error: OnError,
}

/// `{"type": "webhook", "url": ..., "headers": {...}, "secret_ref": "env:NAME", "thresholds": {...}, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http` or `https` URL, checked against the backend allowlist at write and the data plane's egress rules.
    pub url: String,
    /// Up to 16 extra headers sent as they are (no secrets here: they are shown to readers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A secret sent as `Authorization: Bearer <secret>`: a reference `env:NAME` resolved by each data plane, under
    /// the same prefixes as backends' secret references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// 1 to 64 categories of the answer's `categories` and their thresholds (0 to 1).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, f64>))]
    pub thresholds: BTreeMap<String, Threshold>,
    /// Longest wait for the answer, 10 to 30000 ms; past it `on_error` decides.
    #[cfg_attr(feature = "openapi", schema(minimum = 10, maximum = 30000))]
    pub timeout_ms: u64,
    /// `fail_open` or `fail_closed`: required, there is no silent default.
    pub on_error: OnError,
}

macro_rules! classifier_settings {
    ($spec:ty) => {
        impl ClassifierSettings for $spec {
            fn thresholds(&self) -> &BTreeMap<String, Threshold> {
                &self.thresholds
            }
            fn timeout_ms(&self) -> u64 {
                self.timeout_ms
            }
            fn on_error(&self) -> OnError {
                self.on_error
            }
        }
    };
}
classifier_settings!(ModerationSpec);
classifier_settings!(WebhookSpec);

impl DetectorSpec {
    /// The category a match of this detector is reported under.
    pub fn category(&self) -> &str {
        match self {
            DetectorSpec::Email => "email",
            DetectorSpec::Phone => "phone",
            DetectorSpec::PaymentCard => "payment_card",
            DetectorSpec::Iban => "iban",
            DetectorSpec::UsSsn => "us_ssn",
            DetectorSpec::IpAddress => "ip_address",
            DetectorSpec::Credential => "credential",
            DetectorSpec::Regex { name, .. } | DetectorSpec::Terms { name, .. } => name,
            DetectorSpec::Moderation(_) => "moderation",
            DetectorSpec::Webhook(_) => "webhook",
        }
    }

    /// The settings of an external classifier; `None` for the local detectors.
    pub fn classifier(&self) -> Option<&dyn ClassifierSettings> {
        match self {
            DetectorSpec::Moderation(spec) => Some(spec),
            DetectorSpec::Webhook(spec) => Some(spec),
            _ => None,
        }
    }
}

/// Content safety and data protection applied to every backend alike (`docs/guardrails.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    /// Unique name; errors, spend events and metrics name it.
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::optional_text))]
    pub description: Option<String>,
    /// A disabled guardrail is kept but never applied (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// CEL over `request` and `key` selecting the requests it applies to (default `true`). Every matching
    /// guardrail applies, in name order.
    #[serde(default = "default_when")]
    pub when: String,
    /// `prompt`, `completion` or `both` (default).
    #[serde(default)]
    pub side: GuardrailSide,
    /// `block`, `redact` or `audit`.
    pub action: GuardrailAction,
    /// 1 to 32 detectors.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 32))]
    pub detectors: Vec<DetectorSpec>,
    /// Characters of a streamed answer held back per choice so a match split across chunks is still caught
    /// (32 to 4096, default 256). The longest match caught whole in a stream.
    #[serde(default = "default_stream_window")]
    #[cfg_attr(feature = "openapi", schema(minimum = 32, maximum = 4096))]
    pub stream_window_chars: u32,
}

fn default_true() -> bool {
    true
}

fn default_when() -> String {
    "true".to_owned()
}

fn default_stream_window() -> u32 {
    DEFAULT_STREAM_WINDOW_CHARS
}

/// The detectors read through struct-variant twins: serde ignores unknown fields next to the tag of a unit variant
/// even under `deny_unknown_fields` (see `config::wire`).
mod wire {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum DetectorSpec {
        Email {},
        Phone {},
        PaymentCard {},
        Iban {},
        UsSsn {},
        IpAddress {},
        Credential {},
        Regex {
            name: String,
            pattern: String,
        },
        Terms {
            name: String,
            terms: Vec<String>,
            #[serde(default)]
            case_sensitive: bool,
        },
        Moderation(super::ModerationSpec),
        Webhook(super::WebhookSpec),
    }

    impl From<DetectorSpec> for super::DetectorSpec {
        fn from(wire: DetectorSpec) -> Self {
            match wire {
                DetectorSpec::Email {} => super::DetectorSpec::Email,
                DetectorSpec::Phone {} => super::DetectorSpec::Phone,
                DetectorSpec::PaymentCard {} => super::DetectorSpec::PaymentCard,
                DetectorSpec::Iban {} => super::DetectorSpec::Iban,
                DetectorSpec::UsSsn {} => super::DetectorSpec::UsSsn,
                DetectorSpec::IpAddress {} => super::DetectorSpec::IpAddress,
                DetectorSpec::Credential {} => super::DetectorSpec::Credential,
                DetectorSpec::Regex { name, pattern } => super::DetectorSpec::Regex { name, pattern },
                DetectorSpec::Terms { name, terms, case_sensitive } => {
                    super::DetectorSpec::Terms { name, terms, case_sensitive }
                }
                DetectorSpec::Moderation(settings) => super::DetectorSpec::Moderation(settings),
                DetectorSpec::Webhook(settings) => super::DetectorSpec::Webhook(settings),
            }
        }
    }
}

/// Which side a scan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Prompt,
    Completion,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Prompt => "prompt",
            Side::Completion => "completion",
        }
    }
}
