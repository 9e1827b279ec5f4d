//! Snapshot distribution: building a snapshot whenever the config version changes ([`publisher`]) and streaming it
//! to subscribed data planes over gRPC with ACK/NACK and per-node state ([`grpc`]).

pub mod budgets;
pub mod grpc;
pub mod publisher;
