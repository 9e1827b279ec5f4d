//! Request extractors whose failures are JSON errors in the OpenAI shape, never axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use crate::error::ApiError;

/// A JSON body read up to the configured size limit. Holds the parsed JSON; [`parse`] types it.
pub struct JsonBody(pub Value);

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
        Ok(JsonBody(value))
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
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::InvalidQuery(format!("invalid query string: {}", e.body_text())))
    }
}

/// One path segment (a resource name).
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::InvalidPath(format!("invalid path: {}", e.body_text())))
    }
}
