//! Virtual-key authentication against the snapshot's key index.

use std::collections::HashMap;

use axum::http::HeaderMap;
use gateway_proto::v1;
use sha2::{Digest, Sha256};

use crate::control::snapshot::CompiledSnapshot;
use crate::openai::error::GatewayError;

/// The header Anthropic's SDKs send their key in; accepted when there is no `Authorization` header.
pub const X_API_KEY: &str = "x-api-key";

/// The caller's key, if the `Authorization: Bearer` secret (or, without that header, the `x-api-key` one) is known,
/// not revoked and not expired.
pub fn authenticate<'a>(
    headers: &HeaderMap,
    snapshot: &'a CompiledSnapshot,
    now_unix: i64,
) -> Result<&'a v1::ApiKey, GatewayError> {
    let secret = match headers.get(axum::http::header::AUTHORIZATION) {
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| GatewayError::InvalidApiKey("the Authorization header must be `Bearer <key>`"))?;
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or(GatewayError::InvalidApiKey("the Authorization header must be `Bearer <key>`"))?
        }
        None => {
            headers.get(X_API_KEY).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty()).ok_or(
                GatewayError::InvalidApiKey("missing API key: send `Authorization: Bearer <key>` or `x-api-key`"),
            )?
        }
    };
    let key = indexed(&snapshot.keys, secret).ok_or(GatewayError::InvalidApiKey("incorrect API key provided"))?;
    if key.revoked {
        return Err(GatewayError::InvalidApiKey("this API key has been revoked"));
    }
    if key.expires_at_unix.is_some_and(|expiry| expiry <= now_unix) {
        return Err(GatewayError::InvalidApiKey("this API key has expired"));
    }
    Ok(key)
}

/// The key `secret` is, looked up by its SHA-256 in lowercase hex (the index's form), written into a buffer rather
/// than a `String` per request.
fn indexed<'a>(keys: &'a HashMap<String, v1::ApiKey>, secret: &str) -> Option<&'a v1::ApiKey> {
    let mut hash = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(secret.as_bytes()), &mut hash).ok()?;
    keys.get(std::str::from_utf8(&hash).ok()?)
}
