//! End-to-end tests across real processes: what crosses the planes (the admin API, snapshots over gRPC, the spend
//! ledger, restarts and signals of real processes). Each test gets a fresh database (`#[sqlx::test]`) and starts the
//! control-plane and data-plane binaries it needs; see `gateway_e2e` for the harness. The data plane's pipeline
//! alone is tested in process, in the `pipeline` test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_api;
mod anthropic;
mod azure;
mod bedrock;
mod gatewayctl;
mod google;
mod guardrails;
mod hardening;
mod health_report;
mod images;
mod metrics;
mod outbound;
mod rate_limits;
mod resilience;
mod snapshots;
mod spend;
mod spend_edges;
mod tools;
mod traces;
