//! OpenAI's wire format as the gateway speaks it to its callers: the request bodies it accepts ([`request`]), the
//! error shape it answers with ([`error`]) and the server-sent events of its streams ([`sse`]). The lowest stage of
//! the request path: it imports no other.

pub mod error;
pub mod request;
pub mod sse;
