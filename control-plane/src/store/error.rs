//! The store's one error type. It says what went wrong in the store's terms; the admin API turns it into an HTTP
//! answer (`api/store_error.rs`) and the gRPC service into a status (`distribution/grpc.rs`), each in one place.

use policy_engine::validate::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// The change contradicts what is stored (a resource still referenced, a key already revoked).
    #[error("{0}")]
    Conflict(String),
    /// The caller's expected revision is no longer the current one.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A resource names another that does not exist.
    #[error("{0}")]
    DanglingReference(String),
    /// A resource failed validation; each error names its field.
    #[error("{kind} {name:?} is invalid: {}", join(.errors))]
    InvalidSpec { kind: &'static str, name: String, errors: Vec<SpecError> },
    /// Input the store refuses, naming the field when there is one.
    #[error("{message}")]
    InvalidInput { message: String, field: Option<String> },
    /// The database is out of reach (pool timeout, connection lost).
    #[error("the database is unavailable; retry shortly")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused a statement. Its text can name tables, constraints and values, so it is kept as the
    /// source for the log and never shown.
    #[error("the request failed in the database; the control plane's log has the detail")]
    Database(#[source] sqlx::Error),
    /// Stored data that does not decode, or a value that does not encode.
    #[error("internal error: {0}")]
    Internal(String),
}

fn join(errors: &[SpecError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl StoreError {
    /// The message with its cause, for logs.
    pub fn detailed(&self) -> String {
        match std::error::Error::source(self) {
            Some(source) => format!("{self}: {source}"),
            None => self.to_string(),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => StoreError::Unavailable(error),
            _ => StoreError::Database(error),
        }
    }
}
