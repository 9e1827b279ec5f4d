//! A chat stream (OpenAI's SSE events, as the pipeline's stream stages send them) translated event by event into
//! another format's events. Comments (the gateway's closing cost comment, keep-alives) pass through unchanged: every
//! SSE client ignores them.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::openai::sse;

/// The most bytes of one event the translation holds; the pipeline's events are far smaller, so a longer one means a
/// broken stream, which ends.
const MAX_EVENT_BYTES: usize = 16 << 20;

/// One format's side of a stream translation.
pub trait EventTranslator: Send + 'static {
    /// The events for one chat chunk.
    fn chunk(&mut self, chunk: &Value, out: &mut String);
    /// The events for an error event (`{"error": {...}}`, the stream stages' closing error).
    fn error(&mut self, error: &Value, out: &mut String);
    /// The events for the stream's `[DONE]`.
    fn done(&mut self, out: &mut String);
}

/// Cuts the chat stream into events and translates each.
pub struct Translation<T> {
    translator: T,
    pending: Vec<u8>,
    ended: bool,
}

impl<T: EventTranslator> Translation<T> {
    pub fn new(translator: T) -> Self {
        Translation { translator, pending: Vec::new(), ended: false }
    }

    /// The translated bytes for the next chunk of the chat stream (empty while no event is complete).
    pub fn feed(&mut self, chunk: &[u8]) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = sse::event_end(&self.pending[start..]) {
            let raw = &self.pending[start..start + end];
            start += end;
            match sse::event_data(raw) {
                None => out.push_str(&String::from_utf8_lossy(raw)),
                Some(data) if sse::is_done(&data) => {
                    self.translator.done(&mut out);
                    self.ended = true;
                    break;
                }
                Some(data) => match sse::data_json(&data) {
                    Ok(event) if event.get("error").is_some() => self.translator.error(&event, &mut out),
                    Ok(event) => self.translator.chunk(&event, &mut out),
                    // Not JSON: nothing a client of this format could read.
                    Err(_) => {}
                },
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_EVENT_BYTES {
            let error = serde_json::json!({"error": {"message": "the upstream stream sent an event over 16 MiB",
                "type": "api_error", "code": "upstream_error"}});
            self.translator.error(&error, &mut out);
            self.ended = true;
            self.pending = Vec::new();
        }
        out
    }
}

/// The chat stream `upstream` translated by `translator`; dropping it drops `upstream` (and so ends the request's
/// spend record as the chat stream would).
pub fn translate<S, E, T>(upstream: S, translator: T) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
    T: EventTranslator,
{
    let mut translation = Translation::new(translator);
    upstream.filter_map(move |chunk| {
        let out = match chunk {
            Ok(bytes) => {
                let text = translation.feed(&bytes);
                (!text.is_empty()).then(|| Ok(Bytes::from(text)))
            }
            Err(error) => Some(Err(error)),
        };
        futures_util::future::ready(out)
    })
}

/// One SSE event with an `event:` name, as Anthropic's and the Responses API's streams carry.
pub fn named_event(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}
