//! Virtual-key authentication against the snapshot's key index.

use axum::http::HeaderMap;
use gateway_proto::v1;
use sha2::{Digest, Sha256};

use crate::control::snapshot::CompiledSnapshot;
use crate::openai::error::GatewayError;

/// The caller's key, if the `Authorization: Bearer` secret is known, not revoked and not expired.
pub fn authenticate<'a>(
    headers: &HeaderMap,
    snapshot: &'a CompiledSnapshot,
    now_unix: i64,
) -> Result<&'a v1::ApiKey, GatewayError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(GatewayError::InvalidApiKey("missing API key: send `Authorization: Bearer <key>`"))?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(GatewayError::InvalidApiKey("the Authorization header must be `Bearer <key>`"))?;
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    let key = snapshot.keys.get(&hash).ok_or(GatewayError::InvalidApiKey("incorrect API key provided"))?;
    if key.revoked {
        return Err(GatewayError::InvalidApiKey("this API key has been revoked"));
    }
    if key.expires_at_unix.is_some_and(|expiry| expiry <= now_unix) {
        return Err(GatewayError::InvalidApiKey("this API key has expired"));
    }
    Ok(key)
}
