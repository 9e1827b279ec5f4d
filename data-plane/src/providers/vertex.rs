//! The `vertex` backend kind: Gemini models on Google Cloud's Vertex AI, the same `generateContent` wire format as the
//! `gemini` kind ([`super::gemini`] translates both) at
//! `{base_url}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`,
//! authenticated with OAuth access tokens of the service account in the backend's secret.
//!
//! Google's service-account flow (RFC 7523): an assertion (a JWT signed RS256 with the account's private key:
//! `iss` the account, `scope` cloud-platform, `aud` the token endpoint, `iat`/`exp` an hour apart) is exchanged at
//! the key file's `token_uri` for an access token, which [`super::oauth::Tokens`] caches per backend and secret and
//! refreshes before it expires; concurrent requests share one exchange.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use policy_engine::config::BackendSpec;
use policy_engine::google_secret::ServiceAccount;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::gemini::{self, google_request, model_segment};
use super::gemini_shapes;
use super::oauth::{self, TokenError, TokenRequest};
use super::token_credentials;
use super::upstream::AttemptError;
use super::{AnswerError, Credentials, Inbound, Outbound, Provider, StatusClass, Unsigned, UpstreamBytes};

/// The scope Vertex AI's tokens are asked for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The grant type of a JWT assertion (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long an assertion is valid: Google accepts at most an hour.
const ASSERTION_SECONDS: u64 = 3600;

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signed assertion for `account` at `now` (seconds since the epoch): `header.claims.signature`, each
/// base64url, the signature RSASSA-PKCS1-v1_5 with SHA-256 over the first two (RFC 7515, `RS256`).
pub fn assertion(account: &ServiceAccount, now: u64) -> Result<String, TokenError> {
    let unusable = |why: &str| TokenError::Credentials(format!("the service account's private_key {why}"));
    let der = PrivatePkcs8KeyDer::from_pem_slice(account.private_key.as_bytes())
        .map_err(|_| unusable("is not a PKCS#8 PEM key"))?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|_| unusable("is not an RSA key ring accepts"))?;
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(id) = &account.private_key_id {
        header["kid"] = json!(id);
    }
    let claims = json!({"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri,
                        "iat": now, "exp": now + ASSERTION_SECONDS});
    let signed = format!("{}.{}", base64url(header.to_string().as_bytes()), base64url(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signed.as_bytes(), &mut signature)
        .map_err(|_| unusable("could not sign"))?;
    Ok(format!("{signed}.{}", base64url(&signature)))
}

/// The token request for `account`: its assertion posted to its `token_uri`.
pub fn token_request(account: &ServiceAccount) -> Result<TokenRequest, TokenError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    Ok(TokenRequest {
        url: account.token_uri.clone(),
        form: vec![("grant_type", GRANT_TYPE.to_owned()), ("assertion", assertion(account, now)?)],
    })
}

/// The `vertex` backend kind (see the module documentation).
pub struct Vertex;

impl Provider for Vertex {
    fn request(&self, inbound: &Inbound<'_>) -> Result<Outbound, AttemptError> {
        let backend = inbound.backend;
        let Some(settings) = &backend.vertex else {
            return Err(AttemptError::Refused(format!(
                "backend '{}': vertex backends need vertex.project and vertex.location",
                backend.name
            )));
        };
        let (body, method) = google_request(inbound, true)?;
        let url = format!(
            "{}/v1/projects/{}/locations/{}/publishers/google/models/{}{method}",
            backend.base_url,
            settings.project,
            settings.location,
            model_segment(inbound.upstream_model),
        );
        Ok(Outbound { url, body, native_key_header: None, headers: &[] })
    }

    fn per_request_credentials(&self, _backend: &BackendSpec) -> bool {
        true
    }

    fn authorize<'a>(&'a self, unsigned: Unsigned<'a>) -> BoxFuture<'a, Result<Credentials, AttemptError>> {
        Box::pin(async move {
            let backend = unsigned.backend;
            let Some(secret) = unsigned.secret else {
                return Err(AttemptError::Refused(format!(
                    "backend '{}': vertex backends need a service account key as their secret",
                    backend.name
                )));
            };
            let account = ServiceAccount::parse(secret)
                .map_err(|e| AttemptError::Refused(format!("backend '{}': {e}", backend.name)))?;
            // A changed secret (or a renamed backend) gets its own token, never the previous account's.
            let key = oauth::cache_key(backend, &[], secret);
            let token = unsigned.tokens.get(&key, || token_request(&account)).await.map_err(|error| {
                token_credentials::attempt_error(backend, "OAuth token for its service account", error)
            })?;
            token_credentials::bearer(backend, &token)
        })
    }

    fn translates(&self) -> bool {
        true
    }

    fn answer(&self, body: Bytes) -> Result<Bytes, AnswerError> {
        gemini::answer(&body).map(Bytes::from)
    }

    fn stream(&self, upstream: UpstreamBytes) -> UpstreamBytes {
        super::gemini_stream::translate(upstream).boxed()
    }

    fn error_body(&self, body: String) -> String {
        gemini_shapes::openai_error(&body)
    }

    fn classify(&self, status: u16) -> StatusClass {
        gemini::classify(status)
    }
}

#[cfg(test)]
#[path = "vertex_tests.rs"]
mod tests;
