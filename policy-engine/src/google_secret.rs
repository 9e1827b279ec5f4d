//! The secret of a `vertex` backend: a Google Cloud service account's JSON key file, parsed alike by the control plane
//! (a literal secret is checked at write) and the data plane (which signs token requests with it). A `Debug` of the
//! key never shows the private key.

use serde::Deserialize;

/// The fields of a service account key file the OAuth flow needs (the file's other fields are ignored).
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceAccount {
    /// Always `service_account` in such a file.
    #[serde(rename = "type")]
    pub kind: String,
    pub client_email: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as Google issues it.
    pub private_key: String,
    /// Named in the signed assertion's header (`kid`), when the file has it.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// Where the signed assertion is exchanged for an access token.
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

/// Google's token endpoint, for files that do not name one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.to_owned()
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a `vertex` backend's secret. Never quotes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a vertex secret is a service account's JSON key file (type, client_email, private_key, token_uri): {0}")]
pub struct InvalidServiceAccount(String);

impl ServiceAccount {
    /// The service account in `secret`.
    pub fn parse(secret: &str) -> Result<ServiceAccount, InvalidServiceAccount> {
        // serde's message can quote a value it did not expect: only its category is kept.
        let account: ServiceAccount = serde_json::from_str(secret).map_err(|e| {
            InvalidServiceAccount(match e.classify() {
                serde_json::error::Category::Data => {
                    "it needs the fields type, client_email and private_key as strings".to_owned()
                }
                _ => "it is not a JSON object".to_owned(),
            })
        })?;
        if account.kind != "service_account" {
            return Err(InvalidServiceAccount("its type must be \"service_account\"".to_owned()));
        }
        if account.client_email.is_empty() || !account.client_email.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidServiceAccount("client_email must be a non-empty address".to_owned()));
        }
        let key = account.private_key.trim();
        if !key.starts_with("-----BEGIN PRIVATE KEY-----") || !key.ends_with("-----END PRIVATE KEY-----") {
            return Err(InvalidServiceAccount("private_key must be a PKCS#8 PEM private key".to_owned()));
        }
        let token_uri = url::Url::parse(&account.token_uri)
            .map_err(|_| InvalidServiceAccount("token_uri must be an http(s) URL".to_owned()))?;
        if !matches!(token_uri.scheme(), "http" | "https") || token_uri.host().is_none() {
            return Err(InvalidServiceAccount("token_uri must be an http(s) URL".to_owned()));
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn file(patch: serde_json::Value) -> String {
        let mut file = serde_json::json!({"type": "service_account", "project_id": "p", "client_email": "sa@p.iam.gserviceaccount.com",
                                          "private_key": KEY, "private_key_id": "k1"});
        for (k, v) in patch.as_object().unwrap() {
            file[k] = v.clone();
        }
        file.to_string()
    }

    #[test]
    fn a_key_file_parses_with_the_default_token_uri() {
        let account = ServiceAccount::parse(&file(serde_json::json!({}))).unwrap();
        assert_eq!(account.token_uri, DEFAULT_TOKEN_URI);
        assert_eq!(account.private_key_id.as_deref(), Some("k1"));
        assert!(!format!("{account:?}").contains("MIIE"));
        let account =
            ServiceAccount::parse(&file(serde_json::json!({"token_uri": "http://127.0.0.1:9/token"}))).unwrap();
        assert_eq!(account.token_uri, "http://127.0.0.1:9/token");
    }

    #[test]
    fn malformed_key_files_are_refused_without_quoting_them() {
        for (secret, says) in [
            ("AIzaSy-an-api-key".to_owned(), "not a JSON object"),
            (file(serde_json::json!({"type": "authorized_user"})), "service_account"),
            (file(serde_json::json!({"private_key": "topsecret"})), "PKCS#8"),
            (file(serde_json::json!({"private_key": 7})), "as strings"),
            (file(serde_json::json!({"client_email": ""})), "client_email"),
            (file(serde_json::json!({"token_uri": "file:///etc/passwd"})), "token_uri"),
        ] {
            let error = ServiceAccount::parse(&secret).unwrap_err().to_string();
            assert!(error.contains(says), "{secret}: {error}");
            assert!(!error.contains("topsecret") && !error.contains("MIIE"), "{error}");
        }
    }
}
