//! Spend in the data plane: every request that reaches an upstream becomes one spend event, reported to the
//! control plane's ledger without loss, and counted against budgets before and after it runs.
//!
//! - [`metering`]: token usage from answers and streams, `include_usage` injection and stripping, exact cost.
//! - [`estimate`]: what a request may cost before it runs, reserved at admission.
//! - [`record`]: one request's event, built up while it is served and recorded exactly once when it ends.
//! - [`reporter`]: batches, the spool, `ReportSpend` with retries, the flush on shutdown.
//! - [`spool`]: the on-disk spool of batches not acknowledged yet.
//! - [`budgets`]: budget state from the control plane, local spend, reservations and admission.
//!
//! The metering stage of streamed answers is [`crate::stream::metered`]. Semantics, the loss bounds and the
//! overspend bound are in `docs/spend.md`.

pub mod budgets;
pub mod estimate;
pub mod metering;
pub mod record;
pub mod reporter;
pub mod spool;
