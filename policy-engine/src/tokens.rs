//! Prompt-size estimates with a real tokenizer, for routing decisions taken before any upstream answers.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// `o200k_base`, the encoding of current OpenAI models; a close estimate for other vendors' BPEs too.
static ENCODING: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn encoding() -> Option<&'static CoreBPE> {
    ENCODING.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Load the encoding now (CPU-bound, up to a second or two): servers call this at start, off their async workers,
/// so that no request waits for it; counting loads it on first use otherwise. `false` if it could not load (counts
/// then fall back to 4 bytes a token).
pub fn load() -> bool {
    encoding().is_some()
}

/// Whether [`load`] has run (successfully or not).
pub fn is_loaded() -> bool {
    ENCODING.get().is_some()
}

/// Tokens OpenAI's chat format adds around every message and to prime the reply.
const PER_MESSAGE_OVERHEAD: u64 = 3;
const REPLY_PRIMER: u64 = 3;

/// Tokens in `text`; a length-based estimate (4 bytes a token) if the encoding could not load.
pub fn count(text: &str) -> u64 {
    match encoding() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Estimated prompt tokens of a chat request whose messages' text parts are `messages`.
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = &'a str>) -> u64 {
    messages.into_iter().map(|m| count(m) + PER_MESSAGE_OVERHEAD).sum::<u64>() + REPLY_PRIMER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_the_real_encoding() {
        assert!(load());
        assert!(is_loaded());
        assert_eq!(count("hello world"), 2);
        assert_eq!(chat_prompt(["hello world"]), 2 + 3 + 3);
        assert_eq!(count(""), 0);
    }
}
