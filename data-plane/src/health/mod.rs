//! What this data plane knows of each backend's health: circuit breakers fed by requests and active health checks,
//! and the board that publishes their state (to the control plane on the subscription stream, and as gauges).
//! `report.rs` turns the board into the subscription's paced `HealthReport`s, `gauges.rs` into Prometheus gauges.
//!
//! Sits between `proxy/` (which consults breakers before an attempt and reports its outcome) and `providers/`
//! (which the health checks use to send their probe).
//!
//! - [`breaker`]: one breaker's state machine, pure (time passed in).
//! - [`latency`]: the peak-EWMA of time to first byte and the `least_latency` ranking.
//! - [`tracker`]: every backend's breakers and latencies for the snapshot served, the request path's entry point.
//! - [`checks`]: the health-check tasks and their supervisor.
//! - [`board`]: the published state; [`report`] sends it to the control plane, [`gauges`] exports it.

pub mod board;
pub mod breaker;
pub mod checks;
pub mod gauges;
pub mod latency;
pub mod report;
pub mod tracker;
