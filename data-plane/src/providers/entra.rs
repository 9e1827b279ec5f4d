//! Microsoft Entra ID sign-in for `azure_openai` backends that set `azure.entra`: the OAuth 2.0 client-credentials
//! grant (the app registration's client id and the backend's secret, the client secret, posted to the tenant's token
//! endpoint for one scope), the access token cached by [`super::oauth::Tokens`] per backend, settings and secret,
//! refreshed before it expires, and sent as `Authorization: Bearer`. The secret goes only to the token endpoint.

use policy_engine::config::{BackendSpec, EntraSettings};

use super::oauth::{self, TokenRequest};
use super::token_credentials;
use super::upstream::AttemptError;
use super::{Credentials, Unsigned};

/// The token request for `entra` with `client_secret`.
pub fn token_request(entra: &EntraSettings, client_secret: &str) -> TokenRequest {
    TokenRequest {
        url: entra.effective_token_url(),
        form: vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", entra.client_id.clone()),
            ("client_secret", client_secret.to_owned()),
            ("scope", entra.effective_scope().to_owned()),
        ],
    }
}

/// The Entra ID settings of `backend`, when it signs in with Entra ID.
pub fn settings(backend: &BackendSpec) -> Option<&EntraSettings> {
    backend.azure.as_ref()?.entra.as_ref()
}

/// The `Authorization` header for a request to `backend` (which signs in with Entra ID): the cached token, or one
/// fetched now; refused without sending anything when there is no client secret.
pub async fn authorize(unsigned: Unsigned<'_>) -> Result<Credentials, AttemptError> {
    let backend = unsigned.backend;
    let Some(entra) = settings(backend) else {
        return Err(AttemptError::Refused(format!("backend '{}' has no azure.entra settings", backend.name)));
    };
    let Some(secret) = unsigned.secret else {
        return Err(AttemptError::Refused(format!(
            "backend '{}': Entra ID sign-in needs the app registration's client secret as the backend's secret",
            backend.name
        )));
    };
    let token_url = entra.effective_token_url();
    let key = oauth::cache_key(backend, &[&token_url, &entra.client_id, entra.effective_scope()], secret);
    let token = unsigned
        .tokens
        .get(&key, || Ok(token_request(entra, secret)))
        .await
        .map_err(|error| token_credentials::attempt_error(backend, "Entra ID token", error))?;
    token_credentials::bearer(backend, &token)
}

#[cfg(test)]
#[path = "entra_tests.rs"]
mod tests;
