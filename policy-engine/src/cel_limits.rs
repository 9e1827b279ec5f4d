//! Bounds on a CEL expression, checked before it is parsed and before it is evaluated.
//!
//! Policies are written by people who can make mistakes or mean harm, and every plane compiles them: an
//! expression must never be able to exhaust a plane's stack or CPU. The bounds are applied in three steps:
//!
//! 1. before parsing, the source's size and its number of tokens ([`check_source`]): the parser recurses once
//!    per operator of a chain such as `1 + 1 + ...`, so a bounded token count bounds its stack;
//! 2. after parsing, the syntax tree's depth ([`check_depth`]), which bounds the interpreter's recursion;
//! 3. during type checking, an estimate of the evaluation cost (`cel_check`), where every comprehension costs
//!    its body times the most entries its range can have.
//!
//! The collections a request exposes to policies are bounded by the data plane before evaluation
//! ([`MAX_COLLECTION_ENTRIES`]), so the estimate is an upper bound on real evaluations.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// The longest expression source, in bytes.
pub(crate) const MAX_SOURCE_BYTES: usize = 8 * 1024;
/// The most tokens (names, literals, operators, brackets) an expression may have. Parsing recurses at most
/// once per token; this keeps the worst case a small fraction of a 2 MiB thread stack.
pub const MAX_TOKENS: usize = 1024;
/// The deepest syntax tree, which is also the interpreter's deepest recursion.
pub(crate) const MAX_DEPTH: usize = 32;
/// The highest estimated evaluation cost: roughly the number of values the interpreter visits.
pub(crate) const MAX_COST: u64 = 10_000;
/// The most entries of any list or map a policy can iterate over: declared tools, tags, metadata (and every
/// list or object inside it), headers. The data plane refuses requests above it; the control plane refuses
/// keys and backends with more tags.
pub const MAX_COLLECTION_ENTRIES: usize = 128;

/// A bound an expression exceeds, with the numbers, for a message the author can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LimitError {
    #[error("expression is {0} bytes long; the limit is {MAX_SOURCE_BYTES}")]
    Size(usize),
    #[error("expression has more than {MAX_TOKENS} tokens; split it into several policies or use a list literal")]
    Tokens,
    #[error("expression nests deeper than {MAX_DEPTH} levels")]
    Depth,
    #[error(
        "expression may cost up to {0} evaluation steps; the limit is {MAX_COST} (every comprehension costs its body \
         times the size of its range: nest fewer comprehensions or iterate over shorter lists)"
    )]
    Cost(u64),
}

/// Size and token count, before the source reaches the parser.
pub(crate) fn check_source(source: &str) -> Result<(), LimitError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(LimitError::Size(source.len()));
    }
    if count_tokens(source) > MAX_TOKENS {
        return Err(LimitError::Tokens);
    }
    Ok(())
}

/// An upper bound on the tokens the CEL lexer finds in `source`: string and bytes literals (with their
/// escapes, raw and triple-quoted forms) count as one, comments and white space as none, and every other
/// run of identifier characters or single punctuation character as one. Overcounting is harmless: two-character
/// operators count twice.
fn count_tokens(source: &str) -> usize {
    let bytes = source.as_bytes();
    let mut tokens = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if b == b'"' || b == b'\'' {
            i = skip_string(bytes, i, false);
            tokens += 1;
        } else if (b == b'r' || b == b'R' || b == b'b' || b == b'B') && matches!(bytes.get(i + 1), Some(b'"' | b'\'')) {
            i = skip_string(bytes, i + 1, b == b'r' || b == b'R');
            tokens += 1;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80 {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80) {
                i += 1;
            }
            tokens += 1;
        } else {
            i += 1;
            tokens += 1;
        }
    }
    tokens
}

/// The index just after the string literal whose opening quote is at `start` (or the end of the source when
/// it is unterminated: the parser then reports it).
fn skip_string(bytes: &[u8], start: usize, raw: bool) -> usize {
    let quote = bytes[start];
    let triple = bytes.get(start + 1) == Some(&quote) && bytes.get(start + 2) == Some(&quote);
    let mut i = start + if triple { 3 } else { 1 };
    while i < bytes.len() {
        if bytes[i] == b'\\' && !raw {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if !triple {
                return i + 1;
            }
            if bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote) {
                return i + 3;
            }
        }
        if bytes[i] == b'\n' && !triple {
            return i;
        }
        i += 1;
    }
    bytes.len()
}

/// The syntax tree's depth, without recursing (the tree is not yet known to be shallow).
pub(crate) fn check_depth(root: &IdedExpr) -> Result<(), LimitError> {
    let mut pending: Vec<(&IdedExpr, usize)> = vec![(root, 1)];
    while let Some((node, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            return Err(LimitError::Depth);
        }
        pending.extend(children(node).into_iter().map(|child| (child, depth + 1)));
    }
    Ok(())
}

fn children(node: &IdedExpr) -> Vec<&IdedExpr> {
    match &node.expr {
        Expr::Call(call) => call.target.as_deref().into_iter().chain(&call.args).collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entries(&map.entries),
        Expr::Struct(s) => entries(&s.entries),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entries(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&IdedExpr> {
    entries
        .iter()
        .flat_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tokens_like_the_lexer() {
        assert_eq!(count_tokens("request.model == 'gpt-4o'"), 6);
        assert_eq!(count_tokens("a // a comment with 'quotes\n && b"), 4);
        assert_eq!(count_tokens(r#"'it\'s' + "x" + r'\' + b'\x00' + '''a ' b'''"#), 9);
        assert_eq!(count_tokens("'unterminated"), 1);
        assert_eq!(count_tokens("résumé in key.tags"), 5);
    }

    #[test]
    fn refuses_long_and_token_heavy_sources_before_parsing() {
        // The 6 KB policy that used to overflow every data plane's stack.
        let chain = format!("1{} < 0", " + 1".repeat(1500));
        assert_eq!(check_source(&chain), Err(LimitError::Tokens));
        let long = format!("request.model == '{}'", "a".repeat(MAX_SOURCE_BYTES));
        assert_eq!(check_source(&long), Err(LimitError::Size(long.len())));
        let dense = format!("1{} < 0", "+1".repeat(MAX_TOKENS));
        assert!(dense.len() <= MAX_SOURCE_BYTES);
        assert_eq!(check_source(&dense), Err(LimitError::Tokens));
        let list = format!("key.team in [{}]", vec!["'team-name'"; 400].join(", "));
        assert_eq!(check_source(&list), Ok(()));
    }
}
