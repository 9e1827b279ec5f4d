//! Streaming pass-through: upstream bytes go to the client as they arrive, unbuffered. The gateway only watches for
//! the terminating `data: [DONE]`; a stream that fails or ends without it gets an error event the SDKs raise.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::error::GatewayError;

const DONE: &[u8] = b"data: [DONE]";

struct State<S> {
    upstream: S,
    deadline: Instant,
    total_ms: u64,
    /// The last bytes seen, so `[DONE]` split across chunks is still recognised.
    tail: Vec<u8>,
    saw_done: bool,
    finished: bool,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Forward `upstream` until it ends, fails or passes `total` since the request started.
pub fn passthrough<S>(upstream: S, total: Duration) -> impl Stream<Item = Result<Bytes, Infallible>>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin + Send + 'static,
{
    let state = State {
        upstream,
        deadline: Instant::now() + total,
        total_ms: total.as_millis() as u64,
        tail: Vec::new(),
        saw_done: false,
        finished: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        let next = tokio::time::timeout_at(state.deadline, state.upstream.next()).await;
        let failure = match next {
            Ok(Some(Ok(chunk))) => {
                let mut window = std::mem::take(&mut state.tail);
                window.extend_from_slice(&chunk);
                state.saw_done |= contains(&window, DONE);
                let keep = window.len().saturating_sub(DONE.len());
                state.tail = window.split_off(keep);
                return Some((Ok(chunk), state));
            }
            Ok(None) if state.saw_done => return None,
            Ok(None) => GatewayError::UpstreamFailed("the upstream ended the stream before [DONE]".to_owned()),
            Ok(Some(Err(error))) => GatewayError::UpstreamFailed(format!("the upstream stream failed: {error}")),
            Err(_) => GatewayError::UpstreamTimeout(format!(
                "the stream exceeded the backend's total timeout of {} ms",
                state.total_ms
            )),
        };
        tracing::warn!(code = failure.code(), "{failure}");
        state.finished = true;
        Some((Ok(Bytes::from(failure.sse_event())), state))
    })
}
