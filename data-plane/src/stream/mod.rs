//! The stages a streamed answer goes through on its way to the client: metering (usage, the stripped usage chunk,
//! the cost comment; [`metered`]), then either the plain pass-through or, for a request that declared tools, the
//! governed stream that validates tool calls ([`sse`]). Both bound the stream by the backend's total timeout and end
//! a broken one with an error event.

pub mod metered;
pub mod sse;
