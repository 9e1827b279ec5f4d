//! The `gateway.v1` contract between the planes (generated from `gateway/v1/*.proto` at build time) and the
//! conversions between its messages and the policy engine's configuration types.

pub mod convert;

/// Generated messages and the `ConfigDiscovery` client and server.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod v1 {
    tonic::include_proto!("gateway.v1");
}
