//! The store's failures as admin-API answers: each keeps its status, code and message.

use crate::error::ApiError;
use crate::store::StoreError;

/// The one translation of the store's failures into answers.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { kind, name } => ApiError::NotFound { kind, name },
            StoreError::AlreadyExists { kind, name } => ApiError::AlreadyExists { kind, name },
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::PreconditionFailed(message) => ApiError::PreconditionFailed(message),
            StoreError::DanglingReference(message) => ApiError::DanglingReference(message),
            StoreError::InvalidSpec { kind, name, errors } => ApiError::InvalidSpec { kind, name, errors },
            StoreError::InvalidInput { message, field } => ApiError::InvalidBody { message, param: field },
            StoreError::Unavailable(source) => ApiError::Unavailable(source),
            StoreError::Database(source) => ApiError::Database(source),
            StoreError::Internal(message) => ApiError::Internal(message),
        }
    }
}
