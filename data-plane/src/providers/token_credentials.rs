//! A token fetched from a token endpoint ([`super::oauth`]) as an attempt's credentials: `Authorization: Bearer`, and
//! what a failed fetch means for the attempt. Shared by the kinds that sign in with tokens (Vertex, Azure's Entra ID).

use policy_engine::config::BackendSpec;

use super::Credentials;
use super::oauth::TokenError;
use super::upstream::AttemptError;

/// A token failure as an attempt's failure (`what`: the token asked for, e.g. "OAuth token for its service
/// account"): unusable credentials and egress refusals are this data plane's configuration (nothing sent), a failing
/// token endpoint the backend's trouble (failed over, counted).
pub fn attempt_error(backend: &BackendSpec, what: &str, error: TokenError) -> AttemptError {
    let message = format!("backend '{}': no {what}: {error}", backend.name);
    match error {
        TokenError::Credentials(_) | TokenError::Refused(_) => AttemptError::Refused(message),
        TokenError::Unreachable(_) | TokenError::Status { .. } | TokenError::Malformed(_) => {
            AttemptError::Credentials(message)
        }
    }
}

/// `token` as the credentials of a request to `backend`: `Authorization: Bearer`.
pub fn bearer(backend: &BackendSpec, token: &str) -> Result<Credentials, AttemptError> {
    let value = http::HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| AttemptError::Credentials(format!("backend '{}': the token is not a header", backend.name)))?;
    Ok(vec![(http::header::AUTHORIZATION, value)])
}
