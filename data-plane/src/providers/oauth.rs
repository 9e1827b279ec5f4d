//! Short-lived OAuth access tokens for backends whose secret is not itself a credential (a Vertex service account,
//! an Entra ID client secret): fetched from a token endpoint with a form POST, cached per backend, settings and
//! secret ([`cache_key`]), refreshed before they expire.
//! Concurrent requests needing the same token share one fetch (each entry is behind an async lock the fetch holds).
//! Token endpoints pass this data plane's egress rules like every upstream, through a client that follows no
//! redirects and resolves names with the guarded resolver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use policy_engine::config::BackendSpec;

use super::egress::{self, Egress};

/// How long a token fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Refreshed this long before it expires (or at half its lifetime, for shorter ones), so no request carries a token
/// that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Token answers larger than this are refused, not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why no token could be had. Never quotes the secret or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The credentials to ask with are unusable (a malformed key).
    #[error("{0}")]
    Credentials(String),
    #[error("this data plane's egress rules refuse the token endpoint: {0}")]
    Refused(String),
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the token endpoint's answer is not a token: {0}")]
    Malformed(String),
}

/// A token request: a form posted to a token endpoint.
pub struct TokenRequest {
    pub url: String,
    pub form: Vec<(&'static str, String)>,
}

#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
}

/// Cached tokens by key (see the module documentation), and the client that fetches them.
pub struct Tokens {
    egress: Egress,
    /// Built at the first fetch (after the process installed its TLS provider); `Err`: it could not be built, and
    /// no token is fetched rather than one fetched past the rules.
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

impl Default for Tokens {
    /// Tokens fetched under the default egress rules.
    fn default() -> Tokens {
        Tokens::new(Egress::default())
    }
}

impl Tokens {
    pub fn new(egress: Egress) -> Tokens {
        Tokens { egress, client: std::sync::OnceLock::new(), entries: Mutex::default() }
    }

    fn client(&self) -> Result<&reqwest::Client, TokenError> {
        let built = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(self.egress.resolver())
                .build()
                .map_err(|e| e.to_string())
        });
        built.as_ref().map_err(|e| TokenError::Unreachable(e.clone()))
    }

    /// The token cached under `key`, fetched with the request `make` builds when there is none or it is due for
    /// refresh; callers asking meanwhile wait for that one fetch. A failed fetch caches nothing: the next caller
    /// tries again.
    pub async fn get(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<TokenRequest, TokenError>,
    ) -> Result<String, TokenError> {
        let entry = {
            let mut entries = self.entries.lock().map_err(|_| TokenError::Unreachable("cache poisoned".to_owned()))?;
            entries.entry(key.to_owned()).or_default().clone()
        };
        let mut slot = entry.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let token = self.fetch(make()?).await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    async fn fetch(&self, request: TokenRequest) -> Result<Token, TokenError> {
        let url = reqwest::Url::parse(&request.url).map_err(|e| TokenError::Refused(format!("invalid URL: {e}")))?;
        self.egress.check_url(&url).map_err(|reason| TokenError::Refused(reason.0))?;
        let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&request.form).finish();
        let sent = Instant::now();
        let response = self
            .client()?
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| match egress::refusal_in(&e) {
                Some(reason) => TokenError::Refused(reason.0.clone()),
                None => TokenError::Unreachable(e.to_string()),
            })?;
        let status = response.status();
        let body = super::body::read_at_most(response, MAX_ANSWER_BYTES).await.map_err(|e| match e {
            super::body::BodyError::Read(e) => TokenError::Unreachable(e.to_string()),
            too_large @ super::body::BodyError::TooLarge { .. } => TokenError::Malformed(too_large.to_string()),
        })?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(TokenError::Status { status: status.as_u16(), body: text });
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| TokenError::Malformed("not JSON".to_owned()))?;
        let value = answer
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| TokenError::Malformed("no printable access_token".to_owned()))?;
        let lifetime = answer
            .get("expires_in")
            .and_then(|e| e.as_u64().or_else(|| e.as_str().and_then(|s| s.parse().ok())))
            .ok_or_else(|| TokenError::Malformed("no expires_in".to_owned()))?;
        let lifetime = Duration::from_secs(lifetime);
        // Counted from when the fetch was sent: the endpoint's clock started no later.
        let refresh_at = sent + lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 2));
        Ok(Token { value: value.to_owned(), refresh_at })
    }
}

/// The cache key of a token asked with `secret` for `backend`: a changed secret or other settings (`settings`, joined
/// in as they are) get their own token, never the previous one; the secret itself is not kept, only its hash.
pub fn cache_key(backend: &BackendSpec, settings: &[&str], secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in settings.iter().chain([&secret]) {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("{}/{}", backend.name, hex::encode(hash.finalize()))
}

#[cfg(test)]
#[path = "oauth_tests.rs"]
mod tests;
