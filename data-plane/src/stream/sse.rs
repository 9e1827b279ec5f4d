//! Streaming pass-through: upstream bytes go to the client as they arrive, unbuffered. The gateway only watches for
//! the terminating `data: [DONE]`; a stream that fails or ends without it gets an error event the SDKs raise.
//! Requests that declare tools take [`governed`] instead, which parses events (see [`crate::tools::stream`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use policy_engine::tool_policy::DeclaredTools;

use crate::openai::error::GatewayError;
use crate::openai::sse::DoneWatch;
use crate::spend::record::{SpendHandle, StreamEnd};
use crate::tools::governance::ToolReport;
use crate::tools::stream::ToolStream;

/// What bounds a stream in time, named in its closing error event when the deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamLimit {
    /// The backend's `timeouts.total_ms`, counted from the attempt's start.
    BackendTotal(Duration),
    /// A route policy's `timeout_ms` for the whole request (it came before the backend's).
    RoutePolicy { policy: String, timeout: Duration },
}

impl StreamLimit {
    fn passed(&self) -> GatewayError {
        GatewayError::UpstreamTimeout(match self {
            StreamLimit::BackendTotal(total) => {
                format!("the stream exceeded the backend's total timeout of {} ms", total.as_millis())
            }
            StreamLimit::RoutePolicy { policy, timeout } => {
                format!("the stream exceeded the route policy '{policy}' timeout_ms of {} ms", timeout.as_millis())
            }
        })
    }
}

struct State<S> {
    upstream: S,
    deadline: Instant,
    limit: StreamLimit,
    done: DoneWatch,
    finished: bool,
    spend: Option<SpendHandle>,
}

/// What the stages tell a request's spend (nothing without one, as in tests and benchmarks).
fn tell(spend: &Option<SpendHandle>, f: impl FnOnce(&SpendHandle)) {
    if let Some(spend) = spend {
        f(spend);
    }
}

// Why a stream stopped short, as both stream stages report it in the closing error event.
fn ended_before_done() -> GatewayError {
    GatewayError::UpstreamFailed("the upstream ended the stream before [DONE]".to_owned())
}

fn broke(error: &reqwest::Error) -> GatewayError {
    GatewayError::UpstreamFailed(format!("the upstream stream failed: {error}"))
}

/// Forward `upstream` until it ends, fails or passes `deadline` (set by `limit`); `spend` learns when the first bytes
/// went out and whether the stream timed out.
pub fn passthrough<S>(
    upstream: S,
    deadline: Instant,
    limit: StreamLimit,
    spend: Option<SpendHandle>,
) -> impl Stream<Item = Result<Bytes, Infallible>>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin + Send + 'static,
{
    let state = State { upstream, deadline, limit, done: DoneWatch::default(), finished: false, spend };
    futures_util::stream::unfold(state, |mut state| async move {
        if state.finished {
            return None;
        }
        let next = tokio::time::timeout_at(state.deadline, state.upstream.next()).await;
        let failure = match next {
            Ok(Some(Ok(chunk))) => {
                tell(&state.spend, |s| s.first_byte());
                state.done.feed(&chunk);
                return Some((Ok(chunk), state));
            }
            Ok(None) if state.done.seen() => return None,
            Ok(None) => ended_before_done(),
            Ok(Some(Err(error))) => broke(&error),
            Err(_) => {
                tell(&state.spend, |s| s.stream_ended(StreamEnd::TimedOut));
                state.limit.passed()
            }
        };
        tracing::warn!(code = failure.code(), "{failure}");
        state.finished = true;
        Some((Ok(Bytes::from(failure.sse_event())), state))
    })
}

/// What a governed stream reports when it ends (however it ends: completed, failed, or the client went away).
pub struct StreamReport {
    pub report: ToolReport,
    pub declared: Arc<DeclaredTools>,
    pub model: String,
    pub backend: String,
    pub spend: Option<SpendHandle>,
}

struct Governed<S> {
    upstream: S,
    stage: ToolStream,
    /// Output produced before the stream was handed to the client (the retry look-ahead), sent first.
    initial: Option<Bytes>,
    deadline: Instant,
    limit: StreamLimit,
    finished: bool,
    report: Option<StreamReport>,
}

impl<S> Drop for Governed<S> {
    fn drop(&mut self) {
        if let Some(mut end) = self.report.take() {
            let calls = self.stage.take_outcomes();
            end.report.delivered = !self.stage.rejected();
            end.report.add_answer(calls, &end.declared, &end.model, &end.backend, end.spend.as_deref());
            // Dropping the report logs the request's end.
        }
    }
}

/// Like [`passthrough`], but every event goes through the tool-call `stage` (see [`crate::tools::stream`]).
pub fn governed<S>(
    upstream: S,
    stage: ToolStream,
    initial: Vec<u8>,
    deadline: Instant,
    limit: StreamLimit,
    report: StreamReport,
) -> impl Stream<Item = Result<Bytes, Infallible>>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin + Send + 'static,
{
    let state = Governed {
        upstream,
        stage,
        initial: (!initial.is_empty()).then(|| Bytes::from(initial)),
        deadline,
        limit,
        finished: false,
        report: Some(report),
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let spend = state.report.as_ref().and_then(|r| r.spend.clone());
        if let Some(initial) = state.initial.take() {
            tell(&spend, |s| s.first_byte());
            return Some((Ok(initial), state));
        }
        loop {
            if state.finished || state.stage.rejected() {
                return None;
            }
            let mut out = Vec::new();
            let failure = match tokio::time::timeout_at(state.deadline, state.upstream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    state.stage.push(&chunk, &mut out);
                    if state.stage.rejected() {
                        tell(&spend, |s| s.stream_ended(StreamEnd::Rejected));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    tell(&spend, |s| s.first_byte());
                    return Some((Ok(Bytes::from(out)), state));
                }
                Ok(None) => {
                    state.stage.end(&mut out);
                    if state.stage.rejected() {
                        tell(&spend, |s| s.stream_ended(StreamEnd::Rejected));
                    }
                    if state.stage.saw_done() || state.stage.rejected() {
                        state.finished = true;
                        return (!out.is_empty()).then(|| (Ok(Bytes::from(out)), state));
                    }
                    ended_before_done()
                }
                Ok(Some(Err(error))) => broke(&error),
                Err(_) => {
                    tell(&spend, |s| s.stream_ended(StreamEnd::TimedOut));
                    state.limit.passed()
                }
            };
            tracing::warn!(code = failure.code(), "{failure}");
            state.finished = true;
            out.extend_from_slice(failure.sse_event().as_bytes());
            return Some((Ok(Bytes::from(out)), state));
        }
    })
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use proptest::prelude::*;

    use super::*;

    /// Run `passthrough` over `input` split at `cuts`, and collect what the client would receive.
    fn run(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(0);
        points.push(input.len());
        points.sort_unstable();
        points.dedup();
        let chunks: Vec<reqwest::Result<Bytes>> =
            points.windows(2).map(|w| Ok(Bytes::copy_from_slice(&input[w[0]..w[1]]))).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let out: Vec<Result<Bytes, Infallible>> = passthrough(
                stream::iter(chunks),
                Instant::now() + Duration::from_secs(60),
                StreamLimit::BackendTotal(Duration::from_secs(60)),
                None,
            )
            .collect()
            .await;
            out.into_iter().flat_map(|chunk| chunk.unwrap().to_vec()).collect()
        })
    }

    fn events(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"w{i}\"}}}}]}}\n\n"))
            .collect::<String>()
            .into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// However the upstream chunks a complete stream, the client gets exactly its bytes.
        #[test]
        fn complete_streams_pass_through_byte_for_byte(n in 0usize..20, cuts in prop::collection::vec(any::<usize>(), 0..30)) {
            let mut input = events(n);
            input.extend_from_slice(b"data: [DONE]\n\n");
            prop_assert_eq!(run(&input, &cuts), input);
        }

        /// A stream that ends without [DONE] is passed through, then closed with one error event.
        #[test]
        fn cut_streams_end_with_an_error_event(n in 0usize..20, cuts in prop::collection::vec(any::<usize>(), 0..30)) {
            let input = events(n);
            let output = run(&input, &cuts);
            prop_assert!(output.starts_with(&input));
            let tail = std::str::from_utf8(&output[input.len()..]).unwrap();
            prop_assert!(tail.starts_with("data: {\"error\":"), "{}", tail);
            prop_assert!(tail.ends_with("\n\n"));
        }

        /// Arbitrary bytes never panic the pass-through.
        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..10)) {
            let output = run(&input, &cuts);
            prop_assert!(output.starts_with(&input));
        }
    }
}
