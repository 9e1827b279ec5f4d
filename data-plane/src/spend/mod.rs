//! Spend in the data plane: every request that reaches an upstream becomes one spend event, reported to the
//! control plane's ledger without loss, and counted against budgets before and after it runs.
//!
//! - [`record`]: one request's event, built up while it is served and recorded exactly once when it ends.
//! - [`stream`]: the metering stage of streamed answers (usage, the stripped usage chunk, the cost comment).
//! - [`reporter`]: batches, the spool, `ReportSpend` with retries, the flush on shutdown.
//! - [`spool`]: the on-disk spool of batches not acknowledged yet.
//! - [`budgets`]: budget state from the control plane, local spend, reservations and admission.
//!
//! Token counting and prices are in [`crate::metering`]. Semantics, the loss bounds and the overspend bound are in
//! `docs/spend.md`.

pub mod budgets;
pub mod record;
pub mod reporter;
pub mod spool;
pub mod stream;
