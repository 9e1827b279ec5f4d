//! Snapshot distribution: building a snapshot whenever the config version changes ([`publisher`]) and streaming it
//! to subscribed data planes over gRPC with ACK/NACK and per-node state ([`grpc`]); how what a node holds stands
//! against the store's configuration lineage ([`lineage`]); the connected data planes, for rate-limit shares
//! ([`rate_shares`]).

pub mod budgets;
pub mod grpc;
pub mod lineage;
pub mod publisher;
pub mod rate_shares;
