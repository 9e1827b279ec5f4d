//! Secret references: which environment variables a backend's `{"ref": "env:NAME"}` may name.
//!
//! A data plane resolves a reference from its own environment and sends the value to the backend's URL, so an
//! unrestricted reference would let whoever may write backends read any variable of the data plane (its node
//! token first) through a server they control. Operators therefore choose the prefixes a referenced name must
//! start with (`GATEWAY_SECRET_ENV_PREFIX`, [`DEFAULT_PREFIXES`] by default), and the gateway's own settings can
//! never be referenced whatever the prefixes ([`is_reserved`]). Both planes apply the same rule: the control plane
//! at write, each data plane (with its own setting) before it reads its environment.

/// The prefixes allowed when the operator sets none.
pub const DEFAULT_PREFIXES: &str = "PROVIDER_";

/// The setting that holds the prefixes, named in messages.
pub(crate) const SETTING: &str = "GATEWAY_SECRET_ENV_PREFIX";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefError {
    #[error("{reference:?} is not a reference of the form env:NAME")]
    Form { reference: String },
    #[error(
        "env:{name} names one of the gateway's own settings (GATEWAY_*, DATABASE_URL, PG*), which a backend may never \
         reference"
    )]
    Reserved { name: String },
    #[error("env:{name} is not a variable backends may reference: the name must start with {allowed} ({SETTING})")]
    NotAllowed { name: String, allowed: String },
    #[error(
        "env:{name}: environment references are disabled ({SETTING} is empty); store the secret itself with \
         {{\"value\": ...}}"
    )]
    Disabled { name: String },
}

/// The prefixes a referenced variable's name must start with. Empty: no reference is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEnvPolicy {
    prefixes: Vec<String>,
}

impl Default for SecretEnvPolicy {
    fn default() -> Self {
        SecretEnvPolicy { prefixes: vec![DEFAULT_PREFIXES.to_owned()] }
    }
}

impl SecretEnvPolicy {
    /// Parse a comma-separated list of prefixes such as `PROVIDER_,LLM_`; an empty list disables references.
    pub fn from_list(list: &str) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        for prefix in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("{prefix:?} is not a variable-name prefix (letters, digits and _)"));
            }
            if is_reserved(prefix) {
                return Err(format!("{prefix:?} would name the gateway's own settings, which are never referenced"));
            }
            prefixes.push(prefix.to_owned());
        }
        Ok(SecretEnvPolicy { prefixes })
    }

    /// The prefixes for messages: `PROVIDER_`, `PROVIDER_ or LLM_`.
    pub fn describe(&self) -> String {
        self.prefixes.join(" or ")
    }

    /// The variable `reference` names, if it is a well-formed `env:NAME` that this policy allows.
    pub fn variable<'a>(&self, reference: &'a str) -> Result<&'a str, SecretRefError> {
        let name = reference
            .strip_prefix("env:")
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .ok_or_else(|| SecretRefError::Form { reference: reference.to_owned() })?;
        if is_reserved(name) {
            return Err(SecretRefError::Reserved { name: name.to_owned() });
        }
        if self.prefixes.is_empty() {
            return Err(SecretRefError::Disabled { name: name.to_owned() });
        }
        if !self.prefixes.iter().any(|prefix| name.starts_with(prefix.as_str())) {
            return Err(SecretRefError::NotAllowed { name: name.to_owned(), allowed: self.describe() });
        }
        Ok(name)
    }
}

/// The gateway's own settings: `GATEWAY_*`, `DATABASE_URL`, and libpq's `PG*` (sqlx reads `PGPASSWORD` and the
/// rest). Compared ignoring case, so no spelling slips through on a platform whose environment ignores it.
pub(crate) fn is_reserved(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("GATEWAY_") || upper == "DATABASE_URL" || upper.starts_with("PG")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(prefixes: &str, reference: &str, expected: Result<&str, &str>) {
        let policy = SecretEnvPolicy::from_list(prefixes).unwrap();
        let actual = policy.variable(reference).map_err(|e| e.to_string());
        assert_eq!(actual, expected.map_err(str::to_owned), "{prefixes} {reference}");
    }

    #[test]
    fn references_must_start_with_an_allowed_prefix() {
        check("PROVIDER_", "env:PROVIDER_OPENAI_KEY", Ok("PROVIDER_OPENAI_KEY"));
        check("PROVIDER_, LLM_", "env:LLM_GROQ", Ok("LLM_GROQ"));
        check(
            "PROVIDER_",
            "env:OPENAI_API_KEY",
            Err("env:OPENAI_API_KEY is not a variable backends may reference: the name must start with PROVIDER_ \
                 (GATEWAY_SECRET_ENV_PREFIX)"),
        );
        check(
            "PROVIDER_,LLM_",
            "env:provider_x",
            Err("env:provider_x is not a variable backends may reference: the name must start with PROVIDER_ or LLM_ \
                 (GATEWAY_SECRET_ENV_PREFIX)"),
        );
        check(
            "",
            "env:PROVIDER_X",
            Err("env:PROVIDER_X: environment references are disabled (GATEWAY_SECRET_ENV_PREFIX is empty); store the \
                 secret itself with {\"value\": ...}"),
        );
        assert_eq!(SecretEnvPolicy::default().variable("env:PROVIDER_A"), Ok("PROVIDER_A"));
    }

    #[test]
    fn the_gateways_own_settings_are_never_referenced() {
        for name in ["GATEWAY_NODE_TOKEN", "gateway_secret_key", "DATABASE_URL", "PGPASSWORD"] {
            // Even by a prefix that would otherwise allow them.
            for prefixes in ["", "G,D,P,g", "PROVIDER_"] {
                let error = SecretEnvPolicy::from_list(prefixes).unwrap().variable(&format!("env:{name}")).unwrap_err();
                assert_eq!(error, SecretRefError::Reserved { name: name.to_owned() }, "{prefixes}");
            }
        }
        check(
            "G",
            "env:GATEWAY_NODE_TOKEN",
            Err(
                "env:GATEWAY_NODE_TOKEN names one of the gateway's own settings (GATEWAY_*, DATABASE_URL, PG*), which a \
                 backend may never reference",
            ),
        );
    }

    #[test]
    fn malformed_references_and_prefixes_are_refused() {
        for reference in ["vault:x", "env:", "env:A-B", "env:A B", "PROVIDER_X"] {
            check("PROVIDER_", reference, Err(&format!("{reference:?} is not a reference of the form env:NAME")));
        }
        assert_eq!(
            SecretEnvPolicy::from_list("GATEWAY_").unwrap_err(),
            "\"GATEWAY_\" would name the gateway's own settings, which are never referenced"
        );
        assert_eq!(
            SecretEnvPolicy::from_list("A-").unwrap_err(),
            "\"A-\" is not a variable-name prefix (letters, digits and _)"
        );
    }
}
