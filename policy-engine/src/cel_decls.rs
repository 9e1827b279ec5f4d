//! The declarations of the CEL environment (`docs/cel.md`): the variables and fields an expression may read with
//! their types, where an expression is used (`ExpressionScope`), what it reads (`Reads`) and the error a compile
//! reports (`CelError`). The checker (`cel_check`) reads them; the environment (`cel_env`) compiles with both.

use std::fmt;

/// Where an expression is used, which decides the variables it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpressionScope {
    /// A policy's `when`: the request and the key.
    Request,
    /// A constraint's `require`: also the candidate's `backend` and `model`.
    Candidate,
}

/// The type of a declared variable or field (`docs/cel.md` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclaredType {
    Bool,
    Int,
    Double,
    String,
    Timestamp,
    /// An int, or null when absent (`request.max_tokens`).
    NullableInt,
    /// A string, or null when absent (`key.team`).
    NullableString,
    StringList,
    /// Lower-case header names to values.
    StringMap,
    /// Keys the author chooses to values of any JSON type (`request.metadata.task`).
    DynMap,
}

/// A declared top-level variable: an object with fields, or (`fields: None`) a value of type `ty`.
pub(crate) struct Variable {
    pub name: &'static str,
    pub fields: Option<&'static [Field]>,
    pub ty: DeclaredType,
    pub candidate_only: bool,
}

impl Variable {
    pub fn field_count(&self) -> usize {
        self.fields.map_or(0, <[Field]>::len)
    }
}

pub(crate) struct Field {
    pub name: &'static str,
    pub ty: DeclaredType,
}

const fn field(name: &'static str, ty: DeclaredType) -> Field {
    Field { name, ty }
}

const fn object(name: &'static str, fields: &'static [Field], candidate_only: bool) -> Variable {
    Variable { name, fields: Some(fields), ty: DeclaredType::DynMap, candidate_only }
}

pub(crate) const VARIABLES: &[Variable] = {
    use DeclaredType::*;
    &[
        object(
            "request",
            &[
                field("model", String),
                field("endpoint", String),
                field("stream", Bool),
                field("prompt_tokens", Int),
                field("max_tokens", NullableInt),
                field("tools", StringList),
                field("metadata", DynMap),
                field("headers", StringMap),
            ],
            false,
        ),
        object(
            "key",
            &[field("id", String), field("name", String), field("team", NullableString), field("tags", StringList)],
            false,
        ),
        Variable { name: "now", fields: None, ty: Timestamp, candidate_only: false },
        object(
            "backend",
            &[field("name", String), field("kind", String), field("region", NullableString), field("tags", StringList)],
            true,
        ),
        object(
            "model",
            &[
                field("name", String),
                field("upstream_model", String),
                field("price_input", Double),
                field("price_output", Double),
                field("context_window", NullableInt),
            ],
            true,
        ),
    ]
};

/// A CEL expression that failed to compile or reads something the environment does not declare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CelError {
    pub message: String,
    /// 1-based line and column of the offending token.
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for CelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at line {}, column {})", self.message, self.line, self.column)
    }
}

/// Which parts of the context an expression reads, so the data plane can skip building what no policy needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub prompt_tokens: bool,
    pub headers: bool,
    pub metadata: bool,
}

impl Reads {
    pub fn union(self, other: Reads) -> Reads {
        Reads {
            prompt_tokens: self.prompt_tokens || other.prompt_tokens,
            headers: self.headers || other.headers,
            metadata: self.metadata || other.metadata,
        }
    }
}
