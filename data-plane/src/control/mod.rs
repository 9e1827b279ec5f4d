//! What a data plane knows of its control plane's configuration: the connection to it, the compiled snapshot being
//! served, and the last good one on local disk. The subscription that feeds them is [`crate::subscription`].
//!
//! - [`connection`]: the gRPC endpoint (TLS, mTLS), the node token, the reconnection backoff.
//! - [`snapshot`]: compiling a snapshot (CEL, JSON Schemas, key index) with the shared policy engine.
//! - [`state`]: the current snapshot, swapped atomically.
//! - [`persist`]: the last good snapshot on local disk.

pub mod connection;
pub mod persist;
pub mod snapshot;
pub mod state;
