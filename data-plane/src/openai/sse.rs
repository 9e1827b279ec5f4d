//! Server-sent events as OpenAI streams them, the one place that knows their framing: where an event ends, what its
//! `data` is, how an event is written, and the terminating `data: [DONE]`. The stream stages, metering, tool-call
//! validation and the provider translations all cut and recognise events through here.

use std::borrow::Cow;

/// The line that ends an OpenAI stream.
pub const DONE_LINE: &[u8] = b"data: [DONE]";

/// The event that ends an OpenAI stream.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// The `data` of the event that ends an OpenAI stream.
const DONE_DATA: &[u8] = b"[DONE]";

/// The end of the first event in `buf` (after its blank line), if it is complete. Lines end with `\n`, `\r\n` or
/// `\r`, so an event ends at `\n\n`, `\r\n\r\n` or `\r\r`.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    // From one line break to the next with memchr: a stream's bytes are scanned on every chunk, mostly inside lines.
    while let Some(found) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
        i += found;
        let terminator = match buf[i] {
            b'\n' => 1,
            // A lone `\r` at the end may be the first half of `\r\n`: wait for the next byte.
            _ if i + 1 == buf.len() => return None,
            _ if buf[i + 1] == b'\n' => 2,
            _ => 1,
        };
        if i == line_start {
            return Some(i + terminator);
        }
        i += terminator;
        line_start = i;
    }
    None
}

/// The lines of `raw`, split at every `\n` and every `\r` as `split` would (the last, possibly empty, included).
fn lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(raw);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr2(b'\n', b'\r', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The event's `data` (its `data:` lines joined by `\n`), borrowed when it has a single line; `None` for an event
/// without data (a comment, a keep-alive).
pub fn event_data(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in lines(raw) {
        let Some(value) = line.strip_prefix(b"data:") else { continue };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match &mut data {
            Some(data) => {
                let data = data.to_mut();
                data.push(b'\n');
                data.extend_from_slice(value);
            }
            None => data = Some(Cow::Borrowed(value)),
        }
    }
    data
}

/// Whether an event's `data` is the terminating `[DONE]`.
pub fn is_done(data: &[u8]) -> bool {
    data.trim_ascii() == DONE_DATA
}

/// An event's `data` as JSON; invalid UTF-8 is replaced (as a lenient client would), not a reason to skip it.
pub fn data_json(data: &[u8]) -> serde_json::Result<serde_json::Value> {
    match std::str::from_utf8(data) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_str(&String::from_utf8_lossy(data)),
    }
}

/// One event carrying `data` (a JSON text: it holds no raw line break).
pub fn data_event(data: &impl std::fmt::Display) -> String {
    format!("data: {data}\n\n")
}

/// Where the last `data: [DONE]` line of `chunk` starts; `byte_before` is the byte sent just before `chunk` (`None`
/// at the start of the stream). A `data: [DONE]` inside a line (in a JSON string) is not one.
pub fn done_line_position(chunk: &[u8], byte_before: Option<u8>) -> Option<usize> {
    let at_line_start = |i: usize| match i {
        0 => byte_before.is_none_or(|b| b == b'\n' || b == b'\r'),
        i => matches!(chunk[i - 1], b'\n' | b'\r'),
    };
    // The line has no overlap with itself, so the non-overlapping occurrences memmem finds are all of them.
    memchr::memmem::rfind_iter(chunk, DONE_LINE).find(|&i| at_line_start(i))
}

/// Watches a byte stream, however it is chunked, for a `data: [DONE]` line, without parsing events.
#[derive(Default)]
pub struct DoneWatch {
    /// The last bytes seen (one more than the line, for the line break before it), so that a line split across
    /// chunks is still recognised.
    tail: Vec<u8>,
    /// Whether bytes before `tail` went by (otherwise `tail` starts the stream).
    dropped: bool,
    seen: bool,
}

impl DoneWatch {
    /// Look at the next chunk; whether `data: [DONE]` has gone by.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        if self.seen || chunk.is_empty() {
            return self.seen;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        // The window's first byte starts the stream, or was looked at with the byte before it already.
        let byte_before = if self.dropped { Some(b' ') } else { None };
        self.seen = done_line_position(&window, byte_before).is_some();
        let keep = window.len().saturating_sub(DONE_LINE.len() + 1);
        self.dropped |= keep > 0;
        self.tail = window.split_off(keep);
        self.seen
    }

    pub fn seen(&self) -> bool {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn events_end_at_blank_lines_of_any_line_ending() {
        assert_eq!(event_end(b"data: a\n\nrest"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\nrest"), Some(11));
        assert_eq!(event_end(b"data: a\r\rrest"), Some(9));
        assert_eq!(event_end(b"data: a\r"), None, "a lone CR at the end may be half of CRLF");
        assert_eq!(event_end(b"data: a\n"), None);
    }

    #[test]
    fn data_lines_are_joined_and_done_is_recognised() {
        assert_eq!(event_data(b"event: x\ndata: a\ndata:b\n\n").as_deref(), Some(&b"a\nb"[..]));
        assert_eq!(event_data(b": comment\n\n"), None);
        assert!(is_done(&event_data(b"data: [DONE]\r\n\r\n").unwrap()));
        assert!(!is_done(b"{\"text\":\"[DONE]\"}"));
    }

    #[test]
    fn done_inside_a_line_is_not_the_end() {
        assert_eq!(done_line_position(b"data: {\"t\":\"data: [DONE]\"}\n\n", None), None);
        assert_eq!(done_line_position(b"x\n\ndata: [DONE]\n\n", None), Some(3));
        assert_eq!(done_line_position(b"data: [DONE]\n\n", Some(b'}')), None);
        assert_eq!(done_line_position(b"data: [DONE]\n\n", Some(b'\n')), Some(0));
    }

    proptest! {
        /// However a stream is chunked, the watch sees its `[DONE]` line, and never one inside a line.
        #[test]
        fn the_watch_sees_done_however_the_stream_is_chunked(n in 0usize..5, cuts in prop::collection::vec(any::<usize>(), 0..20), end in any::<bool>()) {
            let mut input: Vec<u8> = (0..n).flat_map(|i| format!("data: {{\"t\":\"data: [DONE] {i}\"}}\n\n").into_bytes()).collect();
            if end {
                input.extend_from_slice(b"data: [DONE]\n\n");
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.extend([0, input.len()]);
            points.sort_unstable();
            points.dedup();
            let mut watch = DoneWatch::default();
            for w in points.windows(2) {
                watch.feed(&input[w[0]..w[1]]);
            }
            prop_assert_eq!(watch.seen(), end);
        }
    }
}
