//! End-to-end tests across real processes. Each test gets a fresh database (`#[sqlx::test]`) and starts the
//! control-plane and data-plane binaries it needs; see `gateway_e2e` for the harness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_api;
mod anthropic;
mod hardening;
mod outbound;
mod proxy;
mod snapshots;
mod spend;
mod spend_edges;
mod tools;
