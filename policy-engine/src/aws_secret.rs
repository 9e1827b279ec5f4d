//! The secret of a `bedrock` backend: AWS access keys as JSON, parsed alike by the control plane (a literal secret is
//! checked at write) and the data plane (which signs with it). A `Debug` of the keys never shows the secret parts.

use serde::Deserialize;

/// `{"access_key_id": "...", "secret_access_key": "...", "session_token": "..."}` (`session_token` only for temporary
/// credentials).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKeys").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// What is wrong with a `bedrock` backend's secret. Never quotes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a bedrock secret is JSON {{\"access_key_id\": ..., \"secret_access_key\": ..., \"session_token\": ... (optional)}}: {0}"
)]
pub struct InvalidAwsKeys(String);

impl AwsKeys {
    /// The keys in `secret`.
    pub fn parse(secret: &str) -> Result<AwsKeys, InvalidAwsKeys> {
        // serde's message can quote a value it did not expect: only its category is kept.
        let keys: AwsKeys = serde_json::from_str(secret).map_err(|e| {
            InvalidAwsKeys(match e.classify() {
                serde_json::error::Category::Data => {
                    "it needs exactly the fields access_key_id, secret_access_key and optionally session_token, as \
                     strings"
                        .to_owned()
                }
                _ => "it is not a JSON object".to_owned(),
            })
        })?;
        if keys.access_key_id.is_empty() || keys.secret_access_key.is_empty() {
            return Err(InvalidAwsKeys("access_key_id and secret_access_key must not be empty".to_owned()));
        }
        if keys.session_token.as_deref() == Some("") {
            return Err(InvalidAwsKeys("session_token must not be empty when present".to_owned()));
        }
        // Header values: a control character would make the signed request unsendable.
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        let all = [Some(&keys.access_key_id), Some(&keys.secret_access_key), keys.session_token.as_ref()];
        if !all.into_iter().flatten().all(|s| printable(s)) {
            return Err(InvalidAwsKeys("the keys must be printable ASCII without spaces".to_owned()));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_with_and_without_a_session_token() {
        let keys = AwsKeys::parse(r#"{"access_key_id":"AKID","secret_access_key":"s3cr3t"}"#).unwrap();
        assert_eq!((keys.access_key_id.as_str(), keys.session_token), ("AKID", None));
        let keys = AwsKeys::parse(r#"{"access_key_id":"AKID","secret_access_key":"s","session_token":"tok"}"#).unwrap();
        assert_eq!(keys.session_token.as_deref(), Some("tok"));
        assert!(!format!("{keys:?}").contains("tok"));
    }

    #[test]
    fn malformed_keys_are_refused_without_quoting_them() {
        for secret in [
            "sk-plain-key",
            r#"{"access_key_id":"AKID"}"#,
            r#"{"access_key_id":"AKID","secret_access_key":"topsecret","extra":1}"#,
            r#"{"access_key_id":"","secret_access_key":"topsecret"}"#,
            r#"{"access_key_id":"AKID","secret_access_key":"top secret"}"#,
            r#"{"access_key_id":"AKID","secret_access_key":"topsecret","session_token":""}"#,
        ] {
            let error = AwsKeys::parse(secret).unwrap_err().to_string();
            assert!(error.starts_with("a bedrock secret is JSON"), "{error}");
            assert!(!error.contains("topsecret") && !error.contains("sk-plain"), "{error}");
        }
    }
}
