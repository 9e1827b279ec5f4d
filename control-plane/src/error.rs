//! The admin API's one error type, rendered in the OpenAI error shape `{"error":{"message","type","param","code"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use policy_engine::validate::SpecError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{message}")]
    InvalidBody { message: String, param: Option<String> },
    #[error("{kind} {name:?} is invalid: {}", join(.errors))]
    InvalidSpec { kind: &'static str, name: String, errors: Vec<SpecError> },
    #[error("{0}")]
    DanglingReference(String),
    #[error("{0}")]
    InvalidQuery(String),
    /// The `{name}` segment of a path.
    #[error("{0}")]
    InvalidPath(String),
    #[error("query parameter {param}: {message}")]
    InvalidParameter { param: String, message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{0}")]
    MissingToken(&'static str),
    #[error("the admin token is not valid (unknown or revoked)")]
    InvalidToken,
    #[error("role {role} may not {action}")]
    Forbidden { role: &'static str, action: String },
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("method {0} is not allowed on this path")]
    MethodNotAllowed(String),
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named a revision that is no longer current.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The database is out of reach (pool timeout, connection lost). The detail is logged, never sent.
    #[error("the database is unavailable; retry shortly")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused a statement. Its text can name tables, constraints and values, so it is logged and
    /// the client gets a fixed message.
    #[error("the request failed in the database; the control plane's log has the detail")]
    Database(#[source] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

fn join(errors: &[SpecError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::InvalidBody { .. }
            | ApiError::InvalidSpec { .. }
            | ApiError::DanglingReference(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidPath(_)
            | ApiError::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MissingToken(_) | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::AlreadyExists { .. } | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` field.
    pub fn error_type(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => "conflict_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// A fixed machine-readable code, also the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "invalid_json",
            ApiError::InvalidBody { .. } => "invalid_body",
            ApiError::InvalidSpec { .. } => "invalid_spec",
            ApiError::DanglingReference(_) => "dangling_reference",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidPath(_) => "invalid_path",
            ApiError::InvalidParameter { .. } => "invalid_parameter",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MissingToken(_) => "missing_token",
            ApiError::InvalidToken => "invalid_token",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::NotFound { .. } => "not_found",
            ApiError::NoRoute { .. } => "no_route",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::AlreadyExists { .. } => "already_exists",
            ApiError::Conflict(_) => "conflict",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Database(_) => "database_error",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The message with its cause, for logs (a client only ever sees the message).
    pub fn detailed(&self) -> String {
        match std::error::Error::source(self) {
            Some(source) => format!("{self}: {source}"),
            None => self.to_string(),
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            ApiError::InvalidBody { param, .. } => param.clone(),
            ApiError::InvalidSpec { errors, .. } => errors.first().map(|e| e.field.clone()),
            ApiError::InvalidParameter { param, .. } => Some(param.clone()),
            ApiError::InvalidPath(_) => Some("name".to_owned()),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // The one place a server error is logged, with what the client is not shown (the database's text).
            tracing::error!(code = self.code(), "{}", self.detailed());
        }
        let body = json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        (status, Json(body)).into_response()
    }
}
