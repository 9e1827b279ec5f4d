//! Native evaluation of the CEL shapes policies are mostly written in, without building CEL values.
//!
//! The `cel` interpreter needs every variable converted into its own value representation first, and costs about
//! a microsecond per evaluation; with a hundred policies that alone misses the routing budget. Most policies are
//! comparisons of request, key and candidate fields with literals, joined by `&&`, `||` and `!`, and those are
//! evaluated here directly over [`RequestFacts`], [`KeyFacts`] and the candidate.
//!
//! The rule that keeps this safe: native evaluation answers only when it is certain to give the interpreter's
//! answer, and otherwise says "undecided" (`None`), and the caller runs the interpreter. Errors are never decided
//! here (the interpreter's message is the one reported). `&&` and `||` follow CEL's commutative error rules:
//! `false && <error>` is `false`, `true || <error>` is `true`. A property test checks every decided answer against
//! the interpreter.

use std::cmp::Ordering;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::config::{BackendSpec, ModelSpec};
use crate::facts::{KeyFacts, RequestFacts};

/// A literal of the expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
}

/// A declared field with a fixed shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    RequestModel,
    RequestEndpoint,
    RequestStream,
    RequestPromptTokens,
    RequestMaxTokens,
    RequestTools,
    KeyId,
    KeyName,
    KeyTeam,
    KeyTags,
    BackendName,
    BackendKind,
    BackendRegion,
    BackendTags,
    ModelName,
    ModelUpstream,
    ModelPriceInput,
    ModelPriceOutput,
    ModelContextWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMap {
    Metadata,
    Headers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// An expression in the natively evaluated subset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Native {
    Literal(Literal),
    List(Vec<Literal>),
    Field(Field),
    /// `request.metadata.K`, `request.headers['k']`: an error when absent.
    Entry(OpenMap, String),
    /// `has(request.metadata.K)`.
    Has(OpenMap, String),
    /// The map itself, as the right side of `in`.
    Map(OpenMap),
    And(Box<Native>, Box<Native>),
    Or(Box<Native>, Box<Native>),
    Not(Box<Native>),
    Compare(Comparison, Box<Native>, Box<Native>),
    In(Box<Native>, Box<Native>),
}

/// The candidate a constraint is evaluated for, in native form. Built once per snapshot.
#[derive(Debug, Clone)]
pub(crate) struct CandidateFacts {
    backend_name: String,
    backend_kind: &'static str,
    backend_region: Option<String>,
    backend_tags: Vec<String>,
    model_name: String,
    upstream_model: String,
    price_input: f64,
    price_output: f64,
    context_window: Option<i64>,
}

impl CandidateFacts {
    pub(crate) fn new(model: &ModelSpec, backend: &BackendSpec) -> CandidateFacts {
        CandidateFacts {
            backend_name: backend.name.clone(),
            backend_kind: backend.kind.as_str(),
            backend_region: backend.region.clone(),
            backend_tags: backend.tags.clone(),
            model_name: model.name.clone(),
            upstream_model: model.upstream_model.clone(),
            price_input: price(model.pricing.input),
            price_output: price(model.pricing.output),
            context_window: model.capabilities.context_window.map(i64::from),
        }
    }
}

/// CEL has no decimal type; prices are compared, not summed, in policies, so a double is precise enough there.
pub(crate) fn price(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::MAX)
}

/// What an expression is evaluated against.
pub(crate) struct Facts<'a> {
    pub request: &'a RequestFacts,
    pub key: &'a KeyFacts,
    pub candidate: Option<&'a CandidateFacts>,
}

/// A value during native evaluation, borrowed from the facts or the expression.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    Strings(&'a [String]),
    Literals(&'a [Literal]),
    Map(OpenMap),
}

/// Translate `expr` into the native subset, or `None` when any part of it is outside the subset.
pub(crate) fn translate(expr: &IdedExpr) -> Option<Native> {
    match &expr.expr {
        Expr::Literal(literal) => Some(Native::Literal(literal_of(literal)?)),
        Expr::List(list) if list.optional_indices.is_empty() => {
            let items = list.elements.iter().map(|e| match &e.expr {
                Expr::Literal(literal) => literal_of(literal),
                _ => None,
            });
            Some(Native::List(items.collect::<Option<Vec<_>>>()?))
        }
        Expr::Select(select) => {
            if select.test {
                let (map, key) = map_entry(&select.operand, &select.field)?;
                return Some(Native::Has(map, key));
            }
            if let Some(field) = field_of(expr) {
                return Some(Native::Field(field));
            }
            if let Some(map) = open_map(expr) {
                return Some(Native::Map(map));
            }
            let (map, key) = map_entry(&select.operand, &select.field)?;
            Some(Native::Entry(map, key))
        }
        Expr::Call(call) if call.target.is_none() => {
            let arg = |i: usize| call.args.get(i).and_then(translate).map(Box::new);
            match (call.func_name.as_str(), call.args.len()) {
                (operators::LOGICAL_AND, 2) => Some(Native::And(arg(0)?, arg(1)?)),
                (operators::LOGICAL_OR, 2) => Some(Native::Or(arg(0)?, arg(1)?)),
                (operators::LOGICAL_NOT, 1) => Some(Native::Not(arg(0)?)),
                (operators::IN, 2) => Some(Native::In(arg(0)?, arg(1)?)),
                (operators::INDEX, 2) => {
                    let Expr::Literal(LiteralValue::String(key)) = &call.args.get(1)?.expr else { return None };
                    let map = open_map(call.args.first()?)?;
                    Some(Native::Entry(map, key.inner().to_owned()))
                }
                (name, 2) => {
                    let comparison = match name {
                        operators::EQUALS => Comparison::Eq,
                        operators::NOT_EQUALS => Comparison::Ne,
                        operators::LESS => Comparison::Lt,
                        operators::LESS_EQUALS => Comparison::Le,
                        operators::GREATER => Comparison::Gt,
                        operators::GREATER_EQUALS => Comparison::Ge,
                        _ => return None,
                    };
                    Some(Native::Compare(comparison, arg(0)?, arg(1)?))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn literal_of(literal: &LiteralValue) -> Option<Literal> {
    Some(match literal {
        LiteralValue::Null => Literal::Null,
        LiteralValue::Boolean(b) => Literal::Bool(*b.inner()),
        LiteralValue::Int(i) => Literal::Int(*i.inner()),
        LiteralValue::UInt(u) => Literal::UInt(*u.inner()),
        LiteralValue::Double(f) => Literal::Float(*f.inner()),
        LiteralValue::String(s) => Literal::Str(s.inner().to_owned()),
        LiteralValue::Bytes(_) => return None,
    })
}

/// `root.name` for a plain (non-`has`) selection of an identifier.
fn path(expr: &IdedExpr) -> Option<(&str, &str)> {
    let Expr::Select(select) = &expr.expr else { return None };
    let Expr::Ident(root) = &select.operand.expr else { return None };
    (!select.test).then_some((root.as_str(), select.field.as_str()))
}

fn field_of(expr: &IdedExpr) -> Option<Field> {
    Some(match path(expr)? {
        ("request", "model") => Field::RequestModel,
        ("request", "endpoint") => Field::RequestEndpoint,
        ("request", "stream") => Field::RequestStream,
        ("request", "prompt_tokens") => Field::RequestPromptTokens,
        ("request", "max_tokens") => Field::RequestMaxTokens,
        ("request", "tools") => Field::RequestTools,
        ("key", "id") => Field::KeyId,
        ("key", "name") => Field::KeyName,
        ("key", "team") => Field::KeyTeam,
        ("key", "tags") => Field::KeyTags,
        ("backend", "name") => Field::BackendName,
        ("backend", "kind") => Field::BackendKind,
        ("backend", "region") => Field::BackendRegion,
        ("backend", "tags") => Field::BackendTags,
        ("model", "name") => Field::ModelName,
        ("model", "upstream_model") => Field::ModelUpstream,
        ("model", "price_input") => Field::ModelPriceInput,
        ("model", "price_output") => Field::ModelPriceOutput,
        ("model", "context_window") => Field::ModelContextWindow,
        _ => return None,
    })
}

fn open_map(expr: &IdedExpr) -> Option<OpenMap> {
    match path(expr)? {
        ("request", "metadata") => Some(OpenMap::Metadata),
        ("request", "headers") => Some(OpenMap::Headers),
        _ => None,
    }
}

fn map_entry(operand: &IdedExpr, key: &str) -> Option<(OpenMap, String)> {
    Some((open_map(operand)?, key.to_owned()))
}

impl Native {
    /// The boolean value of the expression when it is certain, `None` when only the interpreter can tell (an
    /// error, a non-boolean, or a value outside the native subset).
    pub(crate) fn evaluate(&self, facts: &Facts) -> Option<bool> {
        match self {
            Native::And(left, right) => match left.evaluate(facts) {
                Some(false) => Some(false),
                Some(true) => right.evaluate(facts),
                None => (right.evaluate(facts) == Some(false)).then_some(false),
            },
            Native::Or(left, right) => match left.evaluate(facts) {
                Some(true) => Some(true),
                Some(false) => right.evaluate(facts),
                None => (right.evaluate(facts) == Some(true)).then_some(true),
            },
            Native::Not(inner) => inner.evaluate(facts).map(|b| !b),
            Native::Has(map, key) => Some(match map {
                OpenMap::Metadata => facts.request.metadata.contains_key(key),
                OpenMap::Headers => facts.request.headers.contains_key(key),
            }),
            Native::Compare(comparison, left, right) => {
                let (left, right) = (left.value(facts)?, right.value(facts)?);
                match comparison {
                    Comparison::Eq => equal(left, right),
                    Comparison::Ne => equal(left, right).map(|e| !e),
                    Comparison::Lt => order(left, right).map(|o| o == Ordering::Less),
                    Comparison::Le => order(left, right).map(|o| o != Ordering::Greater),
                    Comparison::Gt => order(left, right).map(|o| o == Ordering::Greater),
                    Comparison::Ge => order(left, right).map(|o| o != Ordering::Less),
                }
            }
            Native::In(item, container) => {
                let item = item.value(facts)?;
                match container.value(facts)? {
                    Value::Strings(list) => Some(list.iter().any(|s| equal(Value::Str(s), item) == Some(true))),
                    Value::Literals(list) => {
                        let mut found = false;
                        for element in list {
                            found |= equal(literal_value(element), item)?;
                        }
                        Some(found)
                    }
                    // A string is looked up; other keys are left to the interpreter.
                    Value::Map(map) => match item {
                        Value::Str(key) => Some(match map {
                            OpenMap::Metadata => facts.request.metadata.contains_key(key),
                            OpenMap::Headers => facts.request.headers.contains_key(key),
                        }),
                        _ => None,
                    },
                    _ => None,
                }
            }
            other => match other.value(facts)? {
                Value::Bool(b) => Some(b),
                _ => None,
            },
        }
    }

    /// The value of a leaf; `None` for an error (an absent map entry) or a value outside the subset.
    fn value<'a>(&'a self, facts: &Facts<'a>) -> Option<Value<'a>> {
        let request = facts.request;
        let key = facts.key;
        let candidate = || facts.candidate;
        Some(match self {
            Native::Literal(literal) => literal_value(literal),
            Native::List(items) => Value::Literals(items),
            Native::Map(map) => Value::Map(*map),
            Native::Entry(OpenMap::Metadata, name) => json_value(request.metadata.get(name)?)?,
            Native::Entry(OpenMap::Headers, name) => Value::Str(request.headers.get(name)?),
            Native::Field(field) => match field {
                Field::RequestModel => Value::Str(&request.model),
                Field::RequestEndpoint => Value::Str(&request.endpoint),
                Field::RequestStream => Value::Bool(request.stream),
                Field::RequestPromptTokens => Value::Int(count(request.prompt_tokens)),
                Field::RequestMaxTokens => request.max_tokens.map_or(Value::Null, |m| Value::Int(count(m))),
                Field::RequestTools => Value::Strings(&request.tools),
                Field::KeyId => Value::Str(&key.id),
                Field::KeyName => Value::Str(&key.name),
                Field::KeyTeam => key.team.as_deref().map_or(Value::Null, Value::Str),
                Field::KeyTags => Value::Strings(&key.tags),
                Field::BackendName => Value::Str(&candidate()?.backend_name),
                Field::BackendKind => Value::Str(candidate()?.backend_kind),
                Field::BackendRegion => candidate()?.backend_region.as_deref().map_or(Value::Null, Value::Str),
                Field::BackendTags => Value::Strings(&candidate()?.backend_tags),
                Field::ModelName => Value::Str(&candidate()?.model_name),
                Field::ModelUpstream => Value::Str(&candidate()?.upstream_model),
                Field::ModelPriceInput => Value::Float(candidate()?.price_input),
                Field::ModelPriceOutput => Value::Float(candidate()?.price_output),
                Field::ModelContextWindow => candidate()?.context_window.map_or(Value::Null, Value::Int),
            },
            Native::And(..) | Native::Or(..) | Native::Not(..) | Native::Has(..) | Native::Compare(..) => {
                Value::Bool(self.evaluate(facts)?)
            }
            Native::In(..) => Value::Bool(self.evaluate(facts)?),
        })
    }
}

/// Counts are CEL `int`s, saturating as the interpreter's variables do.
fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn literal_value(literal: &Literal) -> Value<'_> {
    match literal {
        Literal::Null => Value::Null,
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Int(i) => Value::Int(*i),
        Literal::UInt(u) => Value::UInt(*u),
        Literal::Float(f) => Value::Float(*f),
        Literal::Str(s) => Value::Str(s),
    }
}

/// Scalars of caller metadata as the interpreter sees them; arrays and objects are left to it.
fn json_value(value: &serde_json::Value) -> Option<Value<'_>> {
    Some(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (None, None, Some(f)) => Value::Float(f),
            (None, None, None) => Value::Null,
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => return None,
    })
}

/// Numbers compare across int, uint and double as the interpreter does; NaN compares with nothing.
fn numeric_order(left: Value, right: Value) -> Option<Option<Ordering>> {
    Some(match (left, right) {
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(&b)),
        (Value::UInt(a), Value::UInt(b)) => Some(a.cmp(&b)),
        (Value::Int(a), Value::UInt(b)) => Some(u64::try_from(a).map_or(Ordering::Less, |a| a.cmp(&b))),
        (Value::UInt(a), Value::Int(b)) => Some(i64::try_from(a).map_or(Ordering::Greater, |a| a.cmp(&b))),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(&b),
        (Value::Int(a), Value::Float(b)) => (a as f64).partial_cmp(&b),
        (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(b as f64)),
        (Value::UInt(a), Value::Float(b)) => (a as f64).partial_cmp(&b),
        _ => return None,
    })
}

/// `==`: never an error in CEL. Different kinds are unequal, except numbers.
fn equal(left: Value, right: Value) -> Option<bool> {
    if let Some(order) = numeric_order(left, right) {
        return Some(order == Some(Ordering::Equal));
    }
    Some(match (left, right) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Str(a), Value::Str(b)) => a == b,
        // Lists, maps and a double against a uint are left to the interpreter.
        (Value::Strings(_) | Value::Literals(_) | Value::Map(_), _)
        | (_, Value::Strings(_) | Value::Literals(_) | Value::Map(_))
        | (Value::Float(_), Value::UInt(_)) => return None,
        _ => false,
    })
}

/// `<` and friends: defined for numbers, strings and bools of the same kind; anything else is an error.
fn order(left: Value, right: Value) -> Option<Ordering> {
    if let Some(order) = numeric_order(left, right) {
        return order;
    }
    match (left, right) {
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(&b)),
        _ => None,
    }
}
