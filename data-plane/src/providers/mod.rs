//! Backends, one module per kind behind [`Provider`]: how a request is put to that kind of upstream, how its answers,
//! streams and errors are turned into OpenAI's, and how its failures are classified. Everything above this stage
//! (failover, metering, tool validation, the stream stages) sees OpenAI-shaped traffic only, so a new backend kind
//! is a new module here and one arm in [`of`].
//!
//! - [`openai`]: `openai` and `azure_openai` (the same wire format, different URLs; [`entra`]: Azure's Entra ID
//!   sign-in).
//! - [`anthropic`]: the Messages API, translated both ways.
//! - [`bedrock`]: Amazon Bedrock's Converse API, translated both ways ([`bedrock_stream`]: its binary event stream),
//!   signed with SigV4 ([`sigv4`]).
//! - [`gemini`]: Google's `generateContent` (the Gemini API), translated both ways ([`gemini_stream`]: its event
//!   stream; [`gemini_shapes`]: what answers and events share); [`vertex`]: the same on Vertex AI, with service-account OAuth tokens ([`oauth`]: the token cache; [`token_credentials`]: a token as an attempt's credentials).
//! - [`upstream`]: sending an attempt: pooled clients, timeouts, secrets, no redirects; [`body`]: answers read
//!   whole (tokens, classifiers, errors, non-streamed answers) with a size bound.
//!
//! Credentials a static header cannot carry (a signature over the request, a token fetched from an endpoint) are a
//! kind's own: it says so ([`Provider::per_request_credentials`]) and computes them from the request as it will be
//! sent ([`Provider::authorize`]); the upstream stage then adds them instead of the static secret.
//! - [`egress`]: this data plane's egress rules, checked on resolved addresses.

pub mod anthropic;
pub mod bedrock;
pub mod bedrock_shapes;
pub mod bedrock_stream;
pub mod body;
pub mod client;
pub mod egress;
pub mod entra;
pub mod gemini;
pub mod gemini_shapes;
pub mod gemini_stream;
pub mod google_embeddings;
pub mod oauth;
pub mod openai;
pub mod sigv4;
pub mod token_credentials;
pub mod upstream;
pub mod vertex;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use policy_engine::config::{BackendKind, BackendSpec};
use serde_json::{Map, Value};

use self::upstream::AttemptError;
use crate::openai::request::Endpoint;

/// An upstream's response body as it arrives.
pub type UpstreamBytes = BoxStream<'static, reqwest::Result<Bytes>>;

/// Why a successful status's body is not served as an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The body is not an answer of this kind: the upstream misbehaved (a bad gateway).
    #[error("{0}")]
    Malformed(String),
    /// The provider's safety system refused the prompt or withheld the answer (says why, never the text).
    #[error("{0}")]
    Filtered(String),
}

/// One request as a backend kind wants it.
pub struct Outbound {
    pub url: String,
    pub body: Vec<u8>,
    /// The header a `bearer` secret goes in (`None`: `Authorization: Bearer`).
    pub native_key_header: Option<&'static str>,
    /// Headers this kind always needs.
    pub headers: &'static [(&'static str, &'static str)],
}

/// What the failover loop does with an upstream's error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// The caller's own mistake: every candidate would refuse it too, so it is answered as it is.
    CallersMistake,
    /// The candidate's trouble (5xx, 429, a redirect): the next candidate is tried.
    FailOver,
}

/// One attempt's request as the gateway has it (OpenAI's shape), before a kind turns it into its own.
#[derive(Clone, Copy)]
pub struct Inbound<'a> {
    pub backend: &'a BackendSpec,
    pub upstream_model: &'a str,
    pub endpoint: Endpoint,
    pub body: &'a Map<String, Value>,
    /// Leave out the `stream_options.include_usage` the gateway added (the backend refuses it).
    pub omit_usage_option: bool,
}

/// Headers that carry a request's credentials, computed for that request.
pub type Credentials = Vec<(http::HeaderName, http::HeaderValue)>;

/// A request as it will be sent, for a kind whose credentials are computed per request.
pub struct Unsigned<'a> {
    pub backend: &'a BackendSpec,
    /// The backend's secret as this data plane resolved it (`None`: it has none).
    pub secret: Option<&'a str>,
    /// Method, URL, headers and body, all final: a signature over them stays valid.
    pub request: &'a reqwest::Request,
    /// This data plane's OAuth token cache, for kinds whose credentials are fetched tokens.
    pub tokens: &'a oauth::Tokens,
}

/// One backend kind (see the module documentation).
pub trait Provider: Sync {
    /// The request this kind wants; `AttemptError::Unsupported` when it cannot serve it (another candidate may).
    fn request(&self, request: &Inbound<'_>) -> Result<Outbound, AttemptError>;

    /// Whether `backend`'s credentials are computed per request by [`Provider::authorize`] (then the static secret
    /// is not presented as a header: it is the kind's to use).
    fn per_request_credentials(&self, _backend: &BackendSpec) -> bool {
        false
    }

    /// The credential headers for `request` (a signature, a token), for kinds with per-request credentials;
    /// `AttemptError::Refused` when they cannot be had (a malformed secret: nothing is sent).
    fn authorize<'a>(&'a self, _request: Unsigned<'a>) -> BoxFuture<'a, Result<Credentials, AttemptError>> {
        Box::pin(async { Ok(Credentials::new()) })
    }

    /// Whether an answer with this content type is a stream this kind translates (default: server-sent events).
    fn streams(&self, content_type: &str) -> bool {
        content_type.starts_with("text/event-stream")
    }

    /// Whether answers are translated (they are then always JSON, whatever content type the upstream sent).
    fn translates(&self) -> bool {
        false
    }

    /// A successful non-streamed answer in OpenAI's shape; `Err` for an answer that is not one.
    fn answer(&self, body: Bytes) -> Result<Bytes, AnswerError> {
        Ok(body)
    }

    /// A streamed answer as OpenAI's server-sent events.
    fn stream(&self, upstream: UpstreamBytes) -> UpstreamBytes {
        upstream
    }

    /// An error answer's body in OpenAI's error shape.
    fn error_body(&self, body: String) -> String {
        body
    }

    /// The output tokens a request that sets no limit is sent with, when this kind requires one.
    fn default_max_tokens(&self) -> Option<u64> {
        None
    }

    /// The health check's request, `GET {base_url}{path}` (no body) with this kind's credentials header and fixed
    /// headers.
    fn health_check(&self, backend: &BackendSpec, path: &str) -> Outbound {
        Outbound { url: join(&backend.base_url, path), body: Vec::new(), native_key_header: None, headers: &[] }
    }

    /// How an error status counts (see `docs/providers.md`).
    fn classify(&self, status: u16) -> StatusClass {
        if (400..500).contains(&status) && status != 429 { StatusClass::CallersMistake } else { StatusClass::FailOver }
    }
}

/// `base_url` and `path` with one slash between them.
pub fn join(base_url: &str, path: &str) -> String {
    format!("{}/{}", base_url.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// The provider of a backend kind.
pub fn of(kind: BackendKind) -> &'static dyn Provider {
    match kind {
        BackendKind::Openai => &openai::OpenAi,
        BackendKind::AzureOpenai => &openai::AzureOpenAi,
        BackendKind::Anthropic => &anthropic::Anthropic,
        BackendKind::Bedrock => &bedrock::Bedrock,
        BackendKind::Gemini => &gemini::Gemini,
        BackendKind::Vertex => &vertex::Vertex,
    }
}
