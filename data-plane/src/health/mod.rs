//! What this data plane knows of each backend's health: circuit breakers fed by requests and active health checks,
//! and the board that publishes their state (to the control plane on the subscription stream, and as gauges).
//! `report.rs` turns the board into the subscription's paced `HealthReport`s, `gauges.rs` into Prometheus gauges.
//!
//! Sits between `proxy/` (which consults breakers before an attempt and reports its outcome) and `providers/`
//! (which the health checks use to send their probe).

pub mod board;
pub mod gauges;
pub mod report;
