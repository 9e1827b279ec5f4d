//! Tool governance (semantics in `docs/tools.md`): the tool policy and the schemas a request's declared tools get
//! ([`governance`]), and the validation of the tool calls in an answer, whole or streamed ([`stream`]).

pub mod governance;
pub mod stream;
