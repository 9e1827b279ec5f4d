//! The type checker of the CEL environment, and the evaluation-cost estimate that rides along with it.
//!
//! `cel` has no checker: it resolves names, overloads and types only when a program runs, so a typo such as
//! `request.prompt_tokens > '0'` would surface as a runtime error on every request. Every variable and field of
//! the environment has a type (`cel_env`, `docs/cel.md`), every function a signature, and an expression is
//! refused at write time, with its line and column, when a name is undeclared, a function unknown, or no
//! overload accepts its arguments. The checker is sound for the interpreter: an expression it accepts can
//! still fail at run time only on data (a missing map key, a null, a division by zero, a value of `dyn`
//! type), never on its own types; a property test in `routing.rs` holds it to that.
//!
//! Alongside each node's type it estimates the node's evaluation cost and, for lists and maps, the most
//! entries the value can have, so that comprehensions are charged their range's size times their body
//! ([`cel_limits::MAX_COST`]).

use std::fmt;

use cel::Program;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use crate::cel_decls::{CelError, DeclaredType, ExpressionScope, Reads, VARIABLES};
use crate::cel_limits::{self, LimitError};

/// A CEL type as the checker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    Timestamp,
    Duration,
    List(Box<Type>),
    Map(Box<Type>, Box<Type>),
    /// A value that is null or of the inner type (`key.team`, `request.max_tokens`), as CEL's wrapper types:
    /// it takes part in the inner type's operations, and fails at run time when it is null.
    Nullable(Box<Type>),
    /// A type as a value (CEL's `type`): `type(x)`, `int`, `string`...
    Kind,
    /// Any value: known only at run time (metadata entries).
    Dyn,
    /// No value: the element type of an empty list literal (and the key and value types of an empty map), so
    /// that `[] + [x]`, as `map()` and `filter()` accumulate, is a list of x's type.
    Empty,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Bool => f.write_str("bool"),
            Type::Int => f.write_str("int"),
            Type::Uint => f.write_str("uint"),
            Type::Double => f.write_str("double"),
            Type::String => f.write_str("string"),
            Type::Bytes => f.write_str("bytes"),
            Type::Null => f.write_str("null"),
            Type::Timestamp => f.write_str("timestamp"),
            Type::Duration => f.write_str("duration"),
            Type::List(element) => write!(f, "list({element})"),
            Type::Map(key, value) => write!(f, "map({key}, {value})"),
            Type::Nullable(inner) => write!(f, "{inner} or null"),
            Type::Kind => f.write_str("type"),
            Type::Dyn => f.write_str("dyn"),
            Type::Empty => f.write_str("empty"),
        }
    }
}

impl Type {
    fn list(element: Type) -> Type {
        Type::List(Box::new(element))
    }

    fn map(key: Type, value: Type) -> Type {
        Type::Map(Box::new(key), Box::new(value))
    }

    pub(crate) fn of_declared(declared: DeclaredType) -> Type {
        match declared {
            DeclaredType::Bool => Type::Bool,
            DeclaredType::Int => Type::Int,
            DeclaredType::Double => Type::Double,
            DeclaredType::String => Type::String,
            DeclaredType::Timestamp => Type::Timestamp,
            DeclaredType::NullableInt => Type::Nullable(Box::new(Type::Int)),
            DeclaredType::NullableString => Type::Nullable(Box::new(Type::String)),
            DeclaredType::StringList => Type::list(Type::String),
            DeclaredType::StringMap => Type::map(Type::String, Type::String),
            DeclaredType::DynMap => Type::map(Type::String, Type::Dyn),
        }
    }

    /// The type without its nullability: operations on a nullable value are checked as on its inner type. A
    /// value of the empty type cannot exist, so any operation on one is accepted, as on `dyn`.
    fn strip(&self) -> &Type {
        match self {
            Type::Nullable(inner) => inner,
            Type::Empty => &Type::Dyn,
            other => other,
        }
    }

    fn contains_dyn(&self) -> bool {
        match self {
            Type::Dyn => true,
            Type::List(inner) | Type::Nullable(inner) => inner.contains_dyn(),
            Type::Map(key, value) => key.contains_dyn() || value.contains_dyn(),
            _ => false,
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Type::Int | Type::Uint | Type::Double)
    }

    /// Whether a value of this type may be a list or a map (its size matters to the cost estimate).
    fn is_collection(&self) -> bool {
        matches!(self.strip(), Type::List(_) | Type::Map(..) | Type::Dyn)
    }
}

/// Whether `==` between the two types can be true, the one thing a typo makes impossible. Equality is
/// heterogeneous at run time (`'a' == 1` is false, not an error), so this is a check of intent, as cel-go's.
fn comparable(a: &Type, b: &Type) -> bool {
    match (a, b) {
        (Type::Dyn | Type::Empty, _) | (_, Type::Dyn | Type::Empty) => true,
        (Type::Nullable(_) | Type::Null, Type::Null) | (Type::Null, Type::Nullable(_)) => true,
        (Type::Nullable(a), b) | (b, Type::Nullable(a)) => comparable(a, b),
        (a, b) if a.is_numeric() && b.is_numeric() => true,
        (Type::List(a), Type::List(b)) => comparable(a, b),
        (Type::Map(ka, va), Type::Map(kb, vb)) => comparable(ka, kb) && comparable(va, vb),
        (a, b) => a == b,
    }
}

/// Whether `<` and friends accept the two types.
fn orderable(a: &Type, b: &Type) -> bool {
    let ordered = |t: &Type| {
        t.is_numeric()
            || matches!(t, Type::String | Type::Bytes | Type::Bool | Type::Timestamp | Type::Duration | Type::Dyn)
    };
    match (a.strip(), b.strip()) {
        (Type::Dyn, other) | (other, Type::Dyn) => ordered(other),
        (a, b) if a.is_numeric() && b.is_numeric() => true,
        (a, b) => a == b && ordered(a),
    }
}

/// The most specific type both branches fit (a conditional's result, a list literal's element type).
fn join(a: &Type, b: &Type) -> Type {
    match (a, b) {
        (a, b) if a == b => a.clone(),
        (Type::Empty, t) | (t, Type::Empty) => t.clone(),
        (Type::Null, Type::Nullable(t)) | (Type::Nullable(t), Type::Null) => Type::Nullable(t.clone()),
        (Type::Null, t) | (t, Type::Null) if !matches!(t, Type::Dyn) => Type::Nullable(Box::new(t.clone())),
        (Type::Nullable(x), y) | (y, Type::Nullable(x)) if **x == *y => Type::Nullable(x.clone()),
        (Type::List(a), Type::List(b)) => Type::list(join(a, b)),
        (Type::Map(ka, va), Type::Map(kb, vb)) => Type::map(join(ka, kb), join(va, vb)),
        _ => Type::Dyn,
    }
}

/// What the checker learnt of one node.
struct Typed {
    ty: Type,
    /// Estimated evaluation steps, saturating.
    cost: u64,
    /// For a list or map: the most entries it can have.
    size: u64,
}

impl Typed {
    fn new(ty: Type, cost: u64) -> Typed {
        let size = if ty.is_collection() { unknown_size() } else { 0 };
        Typed { ty, cost, size }
    }
}

fn unknown_size() -> u64 {
    cel_limits::MAX_COLLECTION_ENTRIES as u64
}

/// What checking an expression yields.
pub(crate) struct Checked {
    pub ty: Type,
    pub reads: Reads,
    pub cost: u64,
    /// Whether some part of the expression is of a type known only at run time (`dyn`, or containing it).
    #[cfg_attr(not(test), expect(dead_code, reason = "what the checker's soundness test can hold it to"))]
    pub uses_dyn: bool,
}

/// Check the names and types of `program` for `scope`, and its cost.
pub(crate) fn check(program: &Program, source: &str, scope: ExpressionScope) -> Result<Checked, CelError> {
    let mut checker = Checker { scope, source, program, bound: Vec::new(), reads: Reads::default(), uses_dyn: false };
    let typed = checker.check(program.expression())?;
    if typed.cost > cel_limits::MAX_COST {
        return Err(checker.limit_error(LimitError::Cost(typed.cost)));
    }
    Ok(Checked { ty: typed.ty, reads: checker.reads, cost: typed.cost, uses_dyn: checker.uses_dyn })
}

/// The functions an expression may call, for the message naming an unknown one.
const FUNCTIONS: &str = "size, contains, startsWith, endsWith, matches, int, uint, double, string, bytes, bool, \
     timestamp, duration, dyn, type, the timestamp and duration getters (getFullYear, getMonth, getDayOfYear, \
     getDayOfMonth, getDate, getDayOfWeek, getHours, getMinutes, getSeconds, getMilliseconds) and the macros has, \
     all, exists, exists_one, map, filter";

/// The type names an expression may use as values (`type(x) == string`).
const TYPE_NAMES: &[&str] = &["bool", "int", "uint", "double", "string", "bytes", "list", "map", "null_type", "type"];

struct Checker<'a> {
    scope: ExpressionScope,
    source: &'a str,
    program: &'a Program,
    /// Comprehension variables in scope, innermost last, with their types and sizes.
    bound: Vec<(String, Type, u64)>,
    reads: Reads,
    uses_dyn: bool,
}

impl Checker<'_> {
    /// An error at node `id`, moved `shift` characters right (a field's name starts one after its dot).
    fn error_at(&self, id: u64, shift: usize, message: String) -> CelError {
        let offset = self.program.source_info().offset_for(id).map_or(0, |(start, _)| start as usize + shift);
        let (line, column) = line_and_column(self.source, offset);
        CelError { message, line, column }
    }

    fn limit_error(&self, error: LimitError) -> CelError {
        CelError { message: error.to_string(), line: 1, column: 1 }
    }

    fn check(&mut self, node: &IdedExpr) -> Result<Typed, CelError> {
        let typed = self.check_node(node)?;
        self.uses_dyn |= typed.ty.contains_dyn();
        Ok(typed)
    }

    fn check_node(&mut self, node: &IdedExpr) -> Result<Typed, CelError> {
        match &node.expr {
            Expr::Literal(literal) => Ok(Typed::new(literal_type(literal), 1)),
            Expr::Ident(name) => self.check_path(node.id, node.id, &[name.as_str()], false),
            Expr::Select(select) => {
                // A chain of field selections rooted at an identifier is a variable path; check it whole.
                if let Some((path, root_id, first_field_id)) = select_path(node) {
                    return self.check_path(root_id, first_field_id, &path, select.test);
                }
                let operand = self.check(&select.operand)?;
                let ty = self.select_field(node.id, &operand.ty, &select.field)?;
                let ty = if select.test { Type::Bool } else { ty };
                Ok(Typed::new(ty, operand.cost.saturating_add(1)))
            }
            Expr::Call(call) => self.check_call(node, call),
            Expr::Comprehension(comprehension) => self.check_comprehension(node, comprehension),
            Expr::List(list) => {
                let mut element: Option<Type> = None;
                let mut cost = 1u64;
                for item in &list.elements {
                    let typed = self.check(item)?;
                    cost = cost.saturating_add(typed.cost);
                    element = Some(match element {
                        None => typed.ty,
                        Some(previous) => join(&previous, &typed.ty),
                    });
                }
                Ok(Typed { ty: Type::list(element.unwrap_or(Type::Empty)), cost, size: list.elements.len() as u64 })
            }
            Expr::Map(map) => {
                let (mut key, mut value): (Option<Type>, Option<Type>) = (None, None);
                let mut cost = 1u64;
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err(self.error_at(node.id, 0, "message literals are not supported".to_owned()));
                    };
                    let (k, v) = (self.check(&entry.key)?, self.check(&entry.value)?);
                    if !matches!(k.ty.strip(), Type::String | Type::Int | Type::Uint | Type::Bool | Type::Dyn) {
                        return Err(self.error_at(entry.key.id, 0, format!("a map key cannot be a {}", k.ty)));
                    }
                    cost = cost.saturating_add(k.cost).saturating_add(v.cost);
                    key = Some(key.map_or(k.ty.clone(), |previous| join(&previous, &k.ty)));
                    value = Some(value.map_or(v.ty.clone(), |previous| join(&previous, &v.ty)));
                }
                Ok(Typed {
                    ty: Type::map(key.unwrap_or(Type::Empty), value.unwrap_or(Type::Empty)),
                    cost,
                    size: map.entries.len() as u64,
                })
            }
            Expr::Struct(_) => Err(self.error_at(node.id, 0, "message literals are not supported".to_owned())),
            Expr::Unspecified => Err(self.error_at(node.id, 0, "incomplete expression".to_owned())),
        }
    }

    /// Check `root.field...`; `root_id` and `field_id` locate the root identifier and the first selection.
    /// `test` is a `has()` over the last field.
    fn check_path(&mut self, root_id: u64, field_id: u64, path: &[&str], test: bool) -> Result<Typed, CelError> {
        let Some((root, rest)) = path.split_first() else {
            return Err(self.error_at(root_id, 0, "incomplete expression".to_owned()));
        };
        let (mut ty, mut size, fields) =
            if let Some((_, ty, size)) = self.bound.iter().rev().find(|(name, ..)| name == root) {
                (ty.clone(), *size, rest)
            } else if let Some(variable) = VARIABLES.iter().find(|v| v.name == *root) {
                if variable.candidate_only && self.scope == ExpressionScope::Request {
                    return Err(self.error_at(
                        root_id,
                        0,
                        format!("'{root}' is only available in a constraint's `require`, not in `when`"),
                    ));
                }
                match (variable.fields, rest.first()) {
                    (None, _) => (Type::of_declared(variable.ty), 0, rest),
                    // The whole object as a value: a map of its fields.
                    (Some(_), None) => (Type::map(Type::String, Type::Dyn), variable.field_count() as u64, rest),
                    (Some(fields), Some(first)) => {
                        let Some(field) = fields.iter().find(|f| f.name == *first) else {
                            let known: Vec<_> = fields.iter().map(|f| f.name).collect();
                            return Err(self.error_at(
                                field_id,
                                1,
                                format!("'{root}' has no field '{first}'; its fields are {}", known.join(", ")),
                            ));
                        };
                        match (variable.name, field.name) {
                            ("request", "prompt_tokens") => self.reads.prompt_tokens = true,
                            ("request", "headers") => self.reads.headers = true,
                            ("request", "metadata") => self.reads.metadata = true,
                            _ => {}
                        }
                        let ty = Type::of_declared(field.ty);
                        let size = if ty.is_collection() { unknown_size() } else { 0 };
                        if rest.len() > 1 && !matches!(ty, Type::Map(..)) {
                            return Err(self.error_at(field_id, 1, format!("'{root}.{first}' has no fields")));
                        }
                        (ty, size, &rest[1..])
                    }
                }
            } else if rest.is_empty() && TYPE_NAMES.contains(root) {
                (Type::Kind, 0, rest)
            } else {
                return Err(self.error_at(root_id, 0, format!("undeclared variable '{root}'; {}", self.declared())));
            };
        for field in fields {
            ty = self.select_field(field_id, &ty, field)?;
            size = if ty.is_collection() { unknown_size() } else { 0 };
        }
        if test {
            ty = Type::Bool;
            size = 0;
        }
        Ok(Typed { ty, cost: path.len() as u64, size })
    }

    fn select_field(&self, id: u64, operand: &Type, field: &str) -> Result<Type, CelError> {
        match operand.strip() {
            Type::Map(key, value) if matches!(**key, Type::String | Type::Dyn) => Ok((**value).clone()),
            Type::Dyn => Ok(Type::Dyn),
            other => Err(self.error_at(id, 0, format!("cannot select field '{field}' of a {other}"))),
        }
    }

    fn declared(&self) -> String {
        let names: Vec<_> = VARIABLES
            .iter()
            .filter(|v| self.scope == ExpressionScope::Candidate || !v.candidate_only)
            .map(|v| v.name)
            .collect();
        format!("declared variables are {}", names.join(", "))
    }

    fn check_comprehension(
        &mut self,
        node: &IdedExpr,
        comprehension: &cel::common::ast::ComprehensionExpr,
    ) -> Result<Typed, CelError> {
        let range = self.check(&comprehension.iter_range)?;
        let (first, second) = match range.ty.strip() {
            Type::List(element) => (Type::Int, (**element).clone()),
            Type::Map(key, value) => ((**key).clone(), (**value).clone()),
            Type::Dyn => (Type::Dyn, Type::Dyn),
            other => {
                return Err(self.error_at(node.id, 0, format!("cannot iterate over a {other}; use a list or a map")));
            }
        };
        let variables = match (&comprehension.iter_var2, range.ty.strip()) {
            (Some(second_var), _) => {
                vec![(comprehension.iter_var.clone(), first), (second_var.clone(), second)]
            }
            // One variable: a list's elements, a map's keys.
            (None, Type::List(_)) => vec![(comprehension.iter_var.clone(), second)],
            (None, _) => vec![(comprehension.iter_var.clone(), first)],
        };
        let init = self.check(&comprehension.accu_init)?;
        let depth = self.bound.len();
        for (name, ty) in variables {
            let size = if ty.is_collection() { unknown_size() } else { 0 };
            self.bound.push((name, ty, size));
        }
        // The accumulator starts empty for the checker: the step's size is then what one iteration adds.
        self.bound.push((comprehension.accu_var.clone(), init.ty.clone(), 0));
        let body = (|| {
            let condition = self.check(&comprehension.loop_cond)?;
            let step = self.check(&comprehension.loop_step)?;
            Ok::<_, CelError>((condition, step))
        })();
        let (condition, step) = match body {
            Ok(parts) => parts,
            Err(error) => {
                self.bound.truncate(depth);
                return Err(error);
            }
        };
        let accumulator = join(&init.ty, &step.ty);
        let accumulated = init.size.saturating_add(range.size.saturating_mul(step.size));
        // The result reads the accumulator as it is after the loop.
        self.bound.truncate(depth);
        self.bound.push((comprehension.accu_var.clone(), accumulator, accumulated));
        let result = self.check(&comprehension.result);
        self.bound.truncate(depth);
        let result = result?;
        let per_iteration = condition.cost.saturating_add(step.cost);
        let cost = range
            .cost
            .saturating_add(init.cost)
            .saturating_add(range.size.saturating_mul(per_iteration))
            .saturating_add(result.cost);
        Ok(Typed { ty: result.ty, cost, size: result.size })
    }

    fn check_call(&mut self, node: &IdedExpr, call: &cel::common::ast::CallExpr) -> Result<Typed, CelError> {
        let target = call.target.as_deref().map(|t| self.check(t)).transpose()?;
        let args = call.args.iter().map(|a| self.check(a)).collect::<Result<Vec<_>, _>>()?;
        let own_cost = target.iter().chain(&args).fold(1u64, |sum, t| sum.saturating_add(t.cost));
        let types: Vec<&Type> = args.iter().map(|a| &a.ty).collect();
        let no_overload = || {
            let mut shown: Vec<String> = target.iter().map(|t| t.ty.to_string()).collect();
            shown.extend(types.iter().map(|t| t.to_string()));
            self.error_at(
                node.id,
                0,
                format!(
                    "no matching overload for '{}' applied to ({})",
                    display_name(&call.func_name),
                    shown.join(", ")
                ),
            )
        };
        let name = call.func_name.as_str();
        if let Some(target) = &target {
            let ty = self.member_call(node, name, target, &args, &call.args).ok_or_else(no_overload)??;
            return Ok(Typed::new(ty, own_cost));
        }
        let typed = match (name, types.as_slice()) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, b]) => {
                let boolean = |t: &Type| matches!(t.strip(), Type::Bool | Type::Dyn);
                if !boolean(a) || !boolean(b) {
                    return Err(no_overload());
                }
                Typed::new(Type::Bool, own_cost)
            }
            (operators::LOGICAL_NOT, [a]) if matches!(a.strip(), Type::Bool | Type::Dyn) => {
                Typed::new(Type::Bool, own_cost)
            }
            (operators::NOT_STRICTLY_FALSE, [_]) => Typed::new(Type::Bool, own_cost),
            (operators::NEGATE, [a]) if matches!(a.strip(), Type::Int | Type::Double | Type::Dyn) => {
                Typed::new(a.strip().clone(), own_cost)
            }
            (operators::CONDITIONAL, [condition, yes, no]) => {
                if !matches!(condition.strip(), Type::Bool | Type::Dyn) {
                    return Err(no_overload());
                }
                // Only one branch runs.
                let branch = args[1].cost.max(args[2].cost);
                let cost = 1u64.saturating_add(args[0].cost).saturating_add(branch);
                Typed { ty: join(yes, no), cost, size: args[1].size.max(args[2].size) }
            }
            (operators::EQUALS | operators::NOT_EQUALS, [a, b]) => {
                if !comparable(a, b) {
                    return Err(no_overload());
                }
                // Comparing collections visits their entries.
                Typed::new(Type::Bool, own_cost.saturating_add(args[0].size.max(args[1].size)))
            }
            (operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS, [a, b]) => {
                if !orderable(a, b) {
                    return Err(no_overload());
                }
                Typed::new(Type::Bool, own_cost)
            }
            (operators::ADD, [a, b]) => {
                let ty = add_type(a.strip(), b.strip()).ok_or_else(no_overload)?;
                let size = args[0].size.saturating_add(args[1].size);
                let cost = if ty.is_collection() { own_cost.saturating_add(size) } else { own_cost };
                Typed { size: if ty.is_collection() { size } else { 0 }, ty, cost }
            }
            (operators::SUBSTRACT, [a, b]) => {
                Typed::new(subtract_type(a.strip(), b.strip()).ok_or_else(no_overload)?, own_cost)
            }
            (operators::MULTIPLY | operators::DIVIDE, [a, b]) => {
                Typed::new(same_numeric(a.strip(), b.strip(), false).ok_or_else(no_overload)?, own_cost)
            }
            (operators::MODULO, [a, b]) => {
                Typed::new(same_numeric(a.strip(), b.strip(), true).ok_or_else(no_overload)?, own_cost)
            }
            (operators::INDEX, [container, index]) => {
                let ty = match (container.strip(), index.strip()) {
                    (Type::List(element), Type::Int | Type::Uint | Type::Dyn) => (**element).clone(),
                    (Type::Map(key, value), index) if comparable(key, index) => (**value).clone(),
                    (Type::Dyn, _) => Type::Dyn,
                    _ => return Err(no_overload()),
                };
                Typed::new(ty, own_cost)
            }
            (operators::IN, [element, container]) => {
                let member = match container.strip() {
                    Type::List(item) => comparable(element, item),
                    Type::Map(key, _) => comparable(element, key),
                    Type::Dyn => true,
                    _ => false,
                };
                if !member {
                    return Err(no_overload());
                }
                // A list is searched entry by entry.
                let search = if matches!(container.strip(), Type::Map(..)) { 0 } else { args[1].size };
                Typed::new(Type::Bool, own_cost.saturating_add(search))
            }
            ("size", [a]) if sized(a) => Typed::new(Type::Int, own_cost),
            ("int", [a]) if convertible(a, &[Type::Int, Type::Uint, Type::Double, Type::String, Type::Timestamp]) => {
                Typed::new(Type::Int, own_cost)
            }
            ("uint", [a]) if convertible(a, &[Type::Int, Type::Uint, Type::Double, Type::String]) => {
                Typed::new(Type::Uint, own_cost)
            }
            ("double", [a]) if convertible(a, &[Type::Int, Type::Uint, Type::Double, Type::String]) => {
                Typed::new(Type::Double, own_cost)
            }
            ("string", [a])
                if convertible(
                    a,
                    &[
                        Type::String,
                        Type::Bool,
                        Type::Int,
                        Type::Uint,
                        Type::Double,
                        Type::Bytes,
                        Type::Timestamp,
                        Type::Duration,
                    ],
                ) =>
            {
                Typed::new(Type::String, own_cost)
            }
            ("bytes", [a]) if convertible(a, &[Type::String, Type::Bytes]) => Typed::new(Type::Bytes, own_cost),
            ("bool", [a]) if convertible(a, &[Type::Bool, Type::String]) => Typed::new(Type::Bool, own_cost),
            ("timestamp", [a]) if convertible(a, &[Type::String, Type::Timestamp, Type::Int]) => {
                Typed::new(Type::Timestamp, own_cost)
            }
            ("duration", [a]) if convertible(a, &[Type::String, Type::Duration]) => {
                Typed::new(Type::Duration, own_cost)
            }
            ("dyn", [_]) => Typed { ty: Type::Dyn, cost: own_cost, size: args[0].size.max(unknown_size()) },
            ("type", [_]) => Typed::new(Type::Kind, own_cost),
            ("matches", [text, _]) if convertible(text, &[Type::String]) => {
                let pattern_cost = self.check_pattern(&call.args[1])?;
                Typed::new(Type::Bool, own_cost.saturating_add(pattern_cost))
            }
            (
                "size" | "int" | "uint" | "double" | "string" | "bytes" | "bool" | "timestamp" | "duration" | "dyn"
                | "type" | "matches",
                _,
            ) => return Err(no_overload()),
            _ if is_operator(name) => return Err(no_overload()),
            _ if is_member_function(name) => {
                return Err(self.error_at(
                    node.id,
                    0,
                    format!("'{name}' is called on a value: write x.{name}(...) instead of {name}(x, ...)"),
                ));
            }
            _ => {
                return Err(self.error_at(
                    node.id,
                    0,
                    format!("unknown function '{name}'; the functions are {FUNCTIONS}"),
                ));
            }
        };
        Ok(typed)
    }

    /// The result type of `target.name(args)`: `None` when no overload takes these types, an error for an
    /// unknown method or a bad pattern.
    fn member_call(
        &self,
        node: &IdedExpr,
        name: &str,
        target: &Typed,
        args: &[Typed],
        arg_nodes: &[IdedExpr],
    ) -> Option<Result<Type, CelError>> {
        let types: Vec<&Type> = args.iter().map(|a| &a.ty).collect();
        let on = |accepted: &[Type]| convertible(&target.ty, accepted);
        let string_args = |n: usize| types.len() == n && types.iter().all(|t| convertible(t, &[Type::String]));
        let ty = match name {
            "size" if types.is_empty() && sized(&target.ty) => Type::Int,
            "contains" | "startsWith" | "endsWith" if on(&[Type::String]) && string_args(1) => Type::Bool,
            "matches" if on(&[Type::String]) && string_args(1) => {
                return Some(self.check_pattern(&arg_nodes[0]).map(|_| Type::Bool));
            }
            "getFullYear" | "getMonth" | "getDayOfYear" | "getDayOfMonth" | "getDate" | "getDayOfWeek"
                if on(&[Type::Timestamp]) && (types.is_empty() || string_args(1)) =>
            {
                Type::Int
            }
            "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds"
                if (on(&[Type::Timestamp]) && (types.is_empty() || string_args(1)))
                    || (on(&[Type::Duration]) && types.is_empty()) =>
            {
                Type::Int
            }
            _ if is_member_function(name) => return None,
            _ => {
                return Some(Err(self.error_at(
                    node.id,
                    0,
                    format!("unknown function '{name}'; the functions are {FUNCTIONS}"),
                )));
            }
        };
        Some(Ok(ty))
    }

    /// A `matches` pattern must be a literal, so it is checked here once instead of failing per request; its
    /// cost is the interpreter compiling it on every call.
    fn check_pattern(&self, pattern: &IdedExpr) -> Result<u64, CelError> {
        let Expr::Literal(LiteralValue::String(text)) = &pattern.expr else {
            return Err(self.error_at(pattern.id, 0, "the pattern of matches() must be a string literal".to_owned()));
        };
        regex::RegexBuilder::new(text.inner())
            .size_limit(1 << 20)
            .build()
            .map_err(|e| self.error_at(pattern.id, 0, format!("invalid matches() pattern: {e}")))?;
        Ok(PATTERN_COST)
    }
}

/// The cost charged for a `matches` call: the interpreter compiles the pattern every time.
const PATTERN_COST: u64 = 50;

fn literal_type(literal: &LiteralValue) -> Type {
    match literal {
        LiteralValue::Boolean(_) => Type::Bool,
        LiteralValue::Bytes(_) => Type::Bytes,
        LiteralValue::Double(_) => Type::Double,
        LiteralValue::Int(_) => Type::Int,
        LiteralValue::Null => Type::Null,
        LiteralValue::String(_) => Type::String,
        LiteralValue::UInt(_) => Type::Uint,
    }
}

/// Whether a value of type `ty` is accepted where one of `accepted` is expected.
fn convertible(ty: &Type, accepted: &[Type]) -> bool {
    matches!(ty.strip(), Type::Dyn) || accepted.contains(ty.strip())
}

fn sized(ty: &Type) -> bool {
    matches!(ty.strip(), Type::String | Type::Bytes | Type::List(_) | Type::Map(..) | Type::Dyn)
}

fn add_type(a: &Type, b: &Type) -> Option<Type> {
    Some(match (a, b) {
        (Type::Dyn, Type::Dyn) => Type::Dyn,
        (Type::Dyn, t) | (t, Type::Dyn) if add_type(t, t).is_some() => Type::Dyn,
        (Type::Timestamp, Type::Duration) | (Type::Duration, Type::Timestamp) => Type::Timestamp,
        (Type::List(x), Type::List(y)) => Type::list(join(x, y)),
        (a, b) if a == b && matches!(a, Type::Int | Type::Uint | Type::Double | Type::String | Type::Bytes) => {
            a.clone()
        }
        (Type::Duration, Type::Duration) => Type::Duration,
        _ => return None,
    })
}

fn subtract_type(a: &Type, b: &Type) -> Option<Type> {
    Some(match (a, b) {
        (Type::Dyn, _) | (_, Type::Dyn) => Type::Dyn,
        (Type::Timestamp, Type::Timestamp) => Type::Duration,
        (Type::Timestamp, Type::Duration) => Type::Timestamp,
        (Type::Duration, Type::Duration) => Type::Duration,
        (a, b) if a == b && a.is_numeric() => a.clone(),
        _ => return None,
    })
}

fn same_numeric(a: &Type, b: &Type, integral: bool) -> Option<Type> {
    let accepted = |t: &Type| if integral { matches!(t, Type::Int | Type::Uint) } else { t.is_numeric() };
    match (a, b) {
        (Type::Dyn, Type::Dyn) => Some(Type::Dyn),
        (Type::Dyn, t) | (t, Type::Dyn) if accepted(t) => Some(t.clone()),
        (a, b) if a == b && accepted(a) => Some(a.clone()),
        _ => None,
    }
}

fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('@') || name == operators::LOGICAL_NOT || name == operators::NEGATE
}

fn is_member_function(name: &str) -> bool {
    matches!(
        name,
        "contains"
            | "startsWith"
            | "endsWith"
            | "getFullYear"
            | "getMonth"
            | "getDayOfYear"
            | "getDayOfMonth"
            | "getDate"
            | "getDayOfWeek"
            | "getHours"
            | "getMinutes"
            | "getSeconds"
            | "getMilliseconds"
            | "size"
            | "matches"
    )
}

/// `_+_` as `+`, for messages.
fn display_name(function: &str) -> &str {
    match function {
        operators::IN => "in",
        operators::INDEX => "[]",
        operators::CONDITIONAL => "?:",
        operators::LOGICAL_NOT => "!",
        operators::NEGATE => "-",
        other => other.strip_prefix('_').and_then(|f| f.strip_suffix('_')).unwrap_or(other),
    }
}

/// `a.b.c` as `["a", "b", "c"]` with the ids of `a` and of the `.b` selection, or `None` when the chain is
/// not rooted at an identifier. A `has()` may only be the outermost selection.
fn select_path(node: &IdedExpr) -> Option<(Vec<&str>, u64, u64)> {
    let mut segments = Vec::new();
    let mut current = node;
    let mut first_field_id = node.id;
    loop {
        match &current.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some((segments, current.id, first_field_id));
            }
            Expr::Select(select) if current.id == node.id || !select.test => {
                segments.push(select.field.as_str());
                first_field_id = current.id;
                current = &select.operand;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
#[path = "cel_check_tests.rs"]
mod tests;

pub(crate) fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
