//! The metering stage of a streamed answer, between the upstream's bytes and the SSE stages of [`crate::stream::sse`]:
//! every chunk goes through a [`StreamMeter`] (which strips the usage chunk the gateway asked for on the client's
//! behalf), the stream's end is reported to the request's spend, and just before `data: [DONE]` the client gets the
//! request's cost as an SSE comment, `: gateway-cost-usd=<decimal> usage=<reported|estimated>`, which SSE parsers
//! (the OpenAI SDKs among them) skip. When the stage is dropped, however the stream ended, the usage metered so far
//! is added to the spend.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::openai::sse::done_line_position;
use crate::spend::metering::StreamMeter;
use crate::spend::record::{SpendHandle, StreamEnd};

pub struct MeteredStream<S> {
    upstream: S,
    /// `None` once the usage was handed to the spend.
    meter: Option<StreamMeter>,
    spend: SpendHandle,
    /// The gateway model whose prices apply.
    model: String,
    /// The last byte forwarded (a line break there means a chunk may start with a new line).
    last_byte: Option<u8>,
    /// `data: [DONE]` went out whole: the stream is over for the client, whenever the upstream closes.
    done: bool,
}

impl<S> MeteredStream<S> {
    pub fn new(upstream: S, meter: StreamMeter, spend: SpendHandle, model: String) -> MeteredStream<S> {
        MeteredStream { upstream, meter: Some(meter), spend, model, last_byte: None, done: false }
    }
}

/// `out` with the request's cost comment before its `data: [DONE]` line (after `out` when that line began in an
/// earlier chunk, whose last byte was `last_byte`).
fn with_cost_comment(
    out: Bytes,
    meter: &StreamMeter,
    spend: &SpendHandle,
    model: &str,
    last_byte: Option<u8>,
) -> Bytes {
    let usage = meter.usage_so_far(|| spend.prompt_estimate());
    let Some((cost, estimated)) = spend.cost_with(model, &usage) else { return out };
    let kind = if estimated { "estimated" } else { "reported" };
    let comment = format!(": gateway-cost-usd={cost} usage={kind}\n\n");
    // The real [DONE] is the last event and starts a line; JSON text cannot hold a raw line break.
    let position = done_line_position(&out, last_byte).unwrap_or(out.len());
    let mut joined = BytesMut::with_capacity(out.len() + comment.len());
    joined.extend_from_slice(&out[..position]);
    joined.extend_from_slice(comment.as_bytes());
    joined.extend_from_slice(&out[position..]);
    joined.freeze()
}

impl<S> Stream for MeteredStream<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let next = ready!(this.upstream.poll_next_unpin(cx));
            let Some(meter) = this.meter.as_mut() else { return Poll::Ready(None) };
            match next {
                Some(Ok(chunk)) => {
                    let was_done = meter.saw_done();
                    let mut out = meter.feed(chunk);
                    if !was_done && meter.saw_done() {
                        // Complete: an upstream that keeps the connection open after [DONE] holds nobody up.
                        this.done = true;
                        this.spend.stream_ended(StreamEnd::Done);
                        out = with_cost_comment(out, meter, &this.spend, &this.model, this.last_byte);
                    }
                    // The stripped usage chunk, or half an event held back: nothing to send yet.
                    if out.is_empty() {
                        continue;
                    }
                    this.last_byte = out.last().copied();
                    return Poll::Ready(Some(Ok(out)));
                }
                Some(Err(error)) => {
                    this.spend.stream_ended(StreamEnd::Broke);
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    let end = if meter.saw_done() { StreamEnd::Done } else { StreamEnd::EndedEarly };
                    this.spend.stream_ended(end);
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl<S> Drop for MeteredStream<S> {
    fn drop(&mut self) {
        if let Some(mut meter) = self.meter.take() {
            self.spend.set_finish_reasons(meter.take_finish_reasons());
            let usage = meter.finish(|| self.spend.prompt_estimate());
            self.spend.add_usage(&self.model, usage);
        }
    }
}
