//! The control plane's integration tests: the whole admin application in-process against a real Postgres,
//! one fresh database per test (`#[sqlx::test]`, which needs DATABASE_URL; `scripts/test.sh` provides one).

// A failed unwrap is a failed test, with the reason in its panic message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod audit_chain;
mod auth;
mod bad_input;
mod common;
mod contract;
mod evaluate;
mod health;
mod keys;
mod lineage;
mod openapi_descriptions;
mod rate_shares;
mod readme_shapes;
mod resources;
mod secrets;
mod spend;
mod spend_grpc;
mod store_input;
mod transactions;
mod validation;
