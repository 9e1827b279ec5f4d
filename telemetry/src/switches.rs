//! What `init` turned on, read on every request: whether traces are exported, and whether the planes build the
//! spans their log lines carry. Below everything else in the crate, so any module can ask without importing `init`.

use std::sync::atomic::{AtomicBool, Ordering};

static EXPORTING: AtomicBool = AtomicBool::new(false);
static SPANS: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Whether the planes build the spans their log lines carry: for JSON logs (whose lines carry the request's id and
/// trace id from its span).
pub fn log_spans_on() -> bool {
    SPANS.load(Ordering::Relaxed)
}

pub(crate) fn set(exporting: bool, spans: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
    SPANS.store(spans, Ordering::Relaxed);
}
