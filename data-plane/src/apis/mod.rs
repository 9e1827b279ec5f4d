//! Inbound API formats served by translation to OpenAI chat: Anthropic's Messages API ([`messages`]) and OpenAI's
//! Responses API ([`responses`]). Each one translates a request into the chat body the pipeline serves, and the
//! pipeline's answer, stream and errors back into its own shape; the pipeline (routing, tool policies, rate limits,
//! budgets, metering, failover) never knows which format the caller spoke. Pure: no IO, bytes and JSON in and out.
//! Below `proxy/` (which serves them), above `openai/` (the wire format they translate to). `docs/apis.md`.

pub mod messages;
pub mod responses;
pub mod stream;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::openai::error::GatewayError;

/// A field of the inbound request that is wrong: `param` names it.
fn invalid(param: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidField { message: message.into(), param }
}

/// A feature of the inbound format the translation to chat cannot carry.
fn unsupported(message: impl Into<String>) -> GatewayError {
    GatewayError::Unsupported(message.into())
}

/// One inbound format: its requests into chat, chat's answers, streams and errors out of it.
pub trait InboundFormat {
    /// What the answer's translation needs to know of the request (echoed fields, the model asked for).
    type Context: Send + 'static;
    /// The stream translation of one request.
    type Stream: stream::EventTranslator;

    /// The chat body for a request of this format, after checking its bounds; refusals are OpenAI-shaped
    /// [`GatewayError`]s that [`InboundFormat::error`] renders in this format.
    fn to_chat(bytes: &[u8]) -> Result<(Map<String, Value>, Self::Context), GatewayError>;

    /// A non-streamed chat answer in this format.
    fn answer(chat: &Value, context: &Self::Context) -> Result<Value, GatewayError>;

    /// The translation of a chat stream.
    fn stream(context: Self::Context) -> Self::Stream;

    /// An OpenAI-shaped error body (`{"error": {...}}`) with its status, in this format.
    fn error(status: StatusCode, openai: &Value) -> Value;
}

/// A field of a request as JSON, with what kind of value it is for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body as a JSON object, or the refusal every endpoint gives.
pub(crate) fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    if bytes.is_empty() {
        return Err(GatewayError::InvalidRequest("the request body is empty; a JSON object is required".to_owned()));
    }
    // serde_json refuses nesting deeper than 128 levels, which bounds the parse's recursion.
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(GatewayError::InvalidRequest("the request body must be a JSON object".to_owned())),
        Err(e) => Err(GatewayError::InvalidRequest(format!("the request body is not valid JSON: {e}"))),
    }
}

/// An OpenAI-shaped error's message, or a generic one naming the status.
pub(crate) fn error_message(status: StatusCode, openai: &Value) -> String {
    openai
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(|| format!("the gateway answered {status}"), str::to_owned)
}
