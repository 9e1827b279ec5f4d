//! Admin principals, their roles and what each role may do.
//!
//! | role    | config resources | API keys | principals | audit, evaluate | spend, budget status |
//! |---------|------------------|----------|------------|-----------------|----------------------|
//! | admin   | read, write      | read, write | read, write | yes          | read                 |
//! | author  | read, write      | no       | no         | yes             | read                 |
//! | auditor | read             | read     | no         | yes             | read                 |
//!
//! Spend is only ever written by data planes over gRPC (node token), never through the admin API: no role writes
//! it. Authors read it because they set the budgets it is measured against. "audit" includes verifying the audit
//! log's hash chain. `/evaluate` with `key_name` reads a stored key, so it also needs to read API keys: authors
//! evaluate with the key's facts instead.

use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Author,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Author => "author",
            Role::Auditor => "auditor",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "author" => Ok(Role::Author),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// Something a principal may or may not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ReadConfig,
    WriteConfig,
    ReadKeys,
    WriteKeys,
    ManagePrincipals,
    ReadAudit,
    Evaluate,
    ReadSpend,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::ReadConfig => "read configuration",
            Action::WriteConfig => "change configuration",
            Action::ReadKeys => "read API keys",
            Action::WriteKeys => "create, change or revoke API keys",
            Action::ManagePrincipals => "manage admin principals",
            Action::ReadAudit => "read the audit log",
            Action::Evaluate => "evaluate requests",
            Action::ReadSpend => "read spend",
        }
    }
}

/// Whether `role` may perform `action`. Every pair is spelled out so a new action forces a decision.
pub fn allows(role: Role, action: Action) -> bool {
    match (role, action) {
        (Role::Admin, _) => true,
        (
            Role::Author,
            Action::ReadConfig | Action::WriteConfig | Action::ReadAudit | Action::Evaluate | Action::ReadSpend,
        ) => true,
        (Role::Author, Action::ReadKeys | Action::WriteKeys | Action::ManagePrincipals) => false,
        (
            Role::Auditor,
            Action::ReadConfig | Action::ReadKeys | Action::ReadAudit | Action::Evaluate | Action::ReadSpend,
        ) => true,
        (Role::Auditor, Action::WriteConfig | Action::WriteKeys | Action::ManagePrincipals) => false,
    }
}

/// The authenticated caller of an admin request, put in the request's extensions by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub request_id: Option<String>,
}

impl Principal {
    pub fn require(&self, action: Action) -> Result<(), ApiError> {
        if allows(self.role, action) {
            Ok(())
        } else {
            Err(ApiError::Forbidden { role: self.role.as_str(), action: action.describe().to_owned() })
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or(ApiError::MissingToken("authentication is required"))
    }
}

/// An action a handler needs, as a type: `Authorized<may::WriteConfig>`.
pub(crate) trait Permission {
    const ACTION: Action;
}

/// The permissions as types, named after [`Action`]'s variants.
pub mod may {
    macro_rules! permissions {
        ($($action:ident),*) => {$(
            pub struct $action;
            impl super::Permission for $action {
                const ACTION: super::Action = super::Action::$action;
            }
        )*};
    }
    permissions!(ReadConfig, WriteConfig, ReadKeys, WriteKeys, ManagePrincipals, ReadAudit, Evaluate, ReadSpend);
}

/// The caller, known to be allowed `P`. As an extractor it runs before the body is read, so a caller without the
/// permission gets 403 whatever the body holds (a malformed body from an auditor is not a 400).
pub(crate) struct Authorized<P>(pub Principal, std::marker::PhantomData<P>);

impl<P> std::ops::Deref for Authorized<P> {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S: Send + Sync, P: Permission> FromRequestParts<S> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(P::ACTION)?;
        Ok(Authorized(principal, std::marker::PhantomData))
    }
}

/// A new random secret: `prefix` then 32 random bytes in URL-safe base64.
pub(crate) fn generate_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// How secrets are stored: SHA-256, hex. The secrets are 256-bit random, so a slow hash adds nothing.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) const ADMIN_TOKEN_PREFIX: &str = "gwa_";
pub(crate) const API_KEY_PREFIX: &str = "gwk_";

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Action; 8] = [
        Action::ReadConfig,
        Action::WriteConfig,
        Action::ReadKeys,
        Action::WriteKeys,
        Action::ManagePrincipals,
        Action::ReadAudit,
        Action::Evaluate,
        Action::ReadSpend,
    ];

    /// Actions that change nothing. `Evaluate` is a dry run: it reads the configuration and stores nothing.
    fn is_read(action: Action) -> bool {
        match action {
            Action::ReadConfig | Action::ReadKeys | Action::ReadAudit | Action::Evaluate | Action::ReadSpend => true,
            Action::WriteConfig | Action::WriteKeys | Action::ManagePrincipals => false,
        }
    }

    #[test]
    fn auditors_may_read_everything_and_write_nothing() {
        for action in ALL {
            assert_eq!(allows(Role::Auditor, action), is_read(action), "{action:?}");
        }
    }

    #[test]
    fn every_role_reads_spend_and_admins_do_everything() {
        for role in [Role::Admin, Role::Author, Role::Auditor] {
            assert!(allows(role, Action::ReadSpend), "{role:?}");
        }
        assert!(ALL.iter().all(|a| allows(Role::Admin, *a)));
        assert!(!allows(Role::Author, Action::WriteKeys) && !allows(Role::Author, Action::ManagePrincipals));
    }
}
