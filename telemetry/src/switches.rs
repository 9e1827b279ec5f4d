//! What `init` turned on, read on every request: whether traces are exported, and whether the planes build their
//! request spans. Below everything else in the crate, so the header handling can ask without importing `init`.

use std::sync::atomic::{AtomicBool, Ordering};

static EXPORTING: AtomicBool = AtomicBool::new(false);
static SPANS: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Whether the planes build their request spans: when traces are exported, and for JSON logs (whose lines carry the
/// request's id and trace id from its span).
pub fn spans_on() -> bool {
    SPANS.load(Ordering::Relaxed)
}

pub(crate) fn set(exporting: bool, spans: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
    SPANS.store(spans, Ordering::Relaxed);
}
