//! Provider secrets at rest: AES-256-GCM with a key from configuration (`GATEWAY_SECRET_KEY`).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngExt;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("GATEWAY_SECRET_KEY must be 32 bytes, as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("a sealed secret could not be opened: wrong GATEWAY_SECRET_KEY or corrupted data")]
    Unseal,
}

/// Seals and opens provider secrets. Cloning shares nothing mutable.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A key given as 64 hex digits or as base64 of 32 bytes.
    pub fn from_config(key: &str) -> Result<Sealer, SecretError> {
        let key = key.trim();
        let bytes = hex::decode(key).ok().filter(|b| b.len() == 32).or_else(|| STANDARD.decode(key).ok());
        let bytes = bytes.filter(|b| b.len() == 32).ok_or(SecretError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretError::BadKey)?;
        Ok(Sealer { cipher })
    }

    /// Base64 of a fresh random nonce followed by the ciphertext and tag.
    pub fn seal(&self, plaintext: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::rng().random();
        let nonce = Nonce::from(nonce_bytes);
        // Encryption with a valid key and an in-memory buffer cannot fail; an empty ciphertext would fail to open.
        let ciphertext = self.cipher.encrypt(&nonce, plaintext.as_bytes()).unwrap_or_default();
        let mut sealed = nonce_bytes.to_vec();
        sealed.extend_from_slice(&ciphertext);
        STANDARD.encode(sealed)
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SecretError::Unseal)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SecretError::Unseal);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Unseal)?;
        let plaintext = self.cipher.decrypt(&Nonce::from(nonce_bytes), ciphertext).map_err(|_| SecretError::Unseal)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens() {
        let sealer = Sealer::from_config(&"11".repeat(32)).unwrap();
        let sealed = sealer.seal("sk-secret");
        assert!(!sealed.contains("sk-secret"));
        assert_ne!(sealed, sealer.seal("sk-secret"), "fresh nonce each time");
        assert_eq!(sealer.open(&sealed).unwrap(), "sk-secret");
        let other = Sealer::from_config(&"22".repeat(32)).unwrap();
        assert_eq!(other.open(&sealed), Err(SecretError::Unseal));
    }

    #[test]
    fn refuses_short_keys() {
        assert_eq!(Sealer::from_config("abcd").unwrap_err(), SecretError::BadKey);
    }
}
