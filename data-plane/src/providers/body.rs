//! Reading an answer's body with a size bound, for answers that are read whole (token endpoints, classifiers,
//! upstream errors, non-streamed upstream answers): a peer that sends more is refused once the bound is passed, never
//! buffered whole.

use bytes::{Bytes, BytesMut};

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the answer failed: {0}")]
    Read(#[from] reqwest::Error),
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// `response`'s body, if it is at most `limit` bytes; reading stops at the first chunk past it.
pub async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
