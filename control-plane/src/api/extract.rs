//! Request extractors whose failures are JSON errors in the OpenAI shape, never axum's plain-text rejections.
//!
//! Postgres stores no NUL character (`TEXT` refuses the byte, `JSONB` the `\u0000` escape), so every string of a
//! body and every query parameter is checked for one here, before anything is typed or reaches SQL.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use policy_engine::config::validate_name;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use crate::error::ApiError;

/// A JSON body read up to the configured size limit. Holds the parsed JSON; [`parse`] types it.
pub(crate) struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let is_json = content_type.is_empty()
            || content_type.split(';').next().is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || m.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.max_body_bytes;
        let bytes: Bytes = axum::body::to_bytes(request.into_body(), limit).await.map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>())
                || error.to_string().contains("length limit");
            if too_large {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson(format!("could not read the request body: {error}"))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::MalformedJson("the request body is empty; a JSON object is required".to_owned()));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::MalformedJson(format!("the request body is not valid JSON: {e}")))?;
        // JSON can only spell a NUL as the escape `\u0000`: walk the value (building paths) only when it occurs.
        let has_nul_escape = bytes.windows(6).any(|w| w == b"\\u0000");
        if let Some(path) = has_nul_escape.then(|| nul_in(&value, "")).flatten() {
            let field = if path.is_empty() { "the body".to_owned() } else { path.clone() };
            return Err(ApiError::InvalidBody {
                message: format!("{field}: must not contain a NUL character (U+0000)"),
                param: (!path.is_empty()).then_some(path),
            });
        }
        Ok(JsonBody(value))
    }
}

/// The path of the first string or object key holding a NUL character, spelt as serde_path_to_error spells
/// paths (`tags[2]`, `metadata.key`); `path` is where `value` sits.
fn nul_in(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then(|| path.to_owned()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| nul_in(item, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            if key.contains('\0') { Some(here.replace('\0', "\\0")) } else { nul_in(item, &here) }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Type a JSON value, naming the path of the first wrong field (`pricing.input: invalid type ...`).
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::InvalidBody {
            message: "the request body must be a JSON object".to_owned(),
            param: None,
        });
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        if path == "." {
            ApiError::InvalidBody { message: inner, param: None }
        } else {
            ApiError::InvalidBody { message: format!("{path}: {inner}"), param: Some(path) }
        }
    })
}

/// Query parameters; unknown or mistyped ones are a 400, not silently ignored.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            && let Some((name, _)) = pairs.iter().find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(ApiError::InvalidParameter {
                param: name.replace('\0', "\\0"),
                message: "must not contain a NUL character (%00)".to_owned(),
            });
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::InvalidQuery(format!("invalid query string: {}", e.body_text())))
    }
}

/// The `{name}` path segment. Every stored name passed [`validate_name`], so a segment that does not is refused
/// before it reaches the store.
pub(crate) struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidPath(format!("invalid path: {}", e.body_text())))?;
        validate_name(&name).map_err(|message| ApiError::InvalidPath(format!("invalid path: {message}")))?;
        Ok(ApiPath(name))
    }
}

/// `If-Match`: the revision a write expects the resource to be at (its `ETag`), or any with `*`.
/// Revisions are strong entity tags, quoted (`"12"`) or not; one per request.
pub(crate) struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IF_MATCH).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return if parts.headers.contains_key(IF_MATCH) {
                Err(invalid_if_match("several headers"))
            } else {
                Ok(IfMatch(None))
            };
        };
        let text = value.to_str().map_err(|_| invalid_if_match("not visible ASCII"))?.trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        let bare = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
        let digits = bare.strip_prefix('-').unwrap_or(bare);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid_if_match(text));
        }
        bare.parse::<i64>().map(|revision| IfMatch(Some(revision))).map_err(|_| invalid_if_match(text))
    }
}

fn invalid_if_match(what: &str) -> ApiError {
    ApiError::InvalidBody {
        message: format!("If-Match must be one revision (the ETag a read returned, e.g. \"12\") or *, not {what:?}"),
        param: Some("If-Match".to_owned()),
    }
}

/// The `ETag` of a resource at `revision`.
pub fn etag(revision: i64) -> [(axum::http::HeaderName, String); 1] {
    [(axum::http::header::ETAG, format!("\"{revision}\""))]
}
