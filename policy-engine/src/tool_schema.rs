//! Tool-argument JSON Schemas: bounded, checked against their meta-schema and compiled once per snapshot.
//!
//! Schemas come from policy authors (registered tool schemas) and from callers (the `parameters` of tools a
//! request declares), and the answers validated against them come from models: every schema is bounded in
//! size and depth before it is read, and its patterns run on the linear-time `regex` engine, so no schema or
//! answer can make validation backtrack without end.

use jsonschema::Validator;
use serde_json::Value;

/// The largest schema, in bytes of compact JSON.
pub(crate) const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// The deepest nesting of objects and arrays in a schema.
pub(crate) const MAX_SCHEMA_DEPTH: usize = 32;
/// The compiled size of one `pattern` (the `regex` crate's own bound on its automaton).
const MAX_PATTERN_COMPILED_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("is {0} bytes of JSON; the limit is {MAX_SCHEMA_BYTES}")]
    TooLarge(usize),
    #[error("nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    TooDeep,
    #[error("a tool schema must be a JSON object or boolean, not {0}")]
    NotASchema(&'static str),
    #[error("does not conform to the JSON Schema meta-schema at {pointer}: {message}")]
    MetaSchema { pointer: String, message: String },
    #[error("cannot be compiled: {0}")]
    Compile(String),
}

/// Checks `schema` against the meta-schema of its draft and compiles it. No references are fetched:
/// external `$ref`s are refused, which keeps compilation free of IO.
pub fn compile(schema: &Value) -> Result<Validator, SchemaError> {
    let kind = match schema {
        Value::Object(_) | Value::Bool(_) => None,
        Value::Null => Some("null"),
        Value::Number(_) => Some("a number"),
        Value::String(_) => Some("a string"),
        Value::Array(_) => Some("an array"),
    };
    if let Some(kind) = kind {
        return Err(SchemaError::NotASchema(kind));
    }
    check_bounds(schema)?;
    jsonschema::meta::validate(schema).map_err(|e| {
        let pointer = e.instance_path().to_string();
        SchemaError::MetaSchema {
            pointer: if pointer.is_empty() { "/".to_owned() } else { pointer },
            message: e.to_string(),
        }
    })?;
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(MAX_PATTERN_COMPILED_BYTES)
                .dfa_size_limit(MAX_PATTERN_COMPILED_BYTES),
        )
        .build(schema)
        .map_err(|e| SchemaError::Compile(e.to_string()))
}

/// Depth first, without recursing, then size: a deep document must not overflow the stack being measured.
fn check_bounds(schema: &Value) -> Result<(), SchemaError> {
    let mut pending = vec![(schema, 1usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(fields) => Box::new(fields.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        if depth > MAX_SCHEMA_DEPTH {
            return Err(SchemaError::TooDeep);
        }
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    let size = serde_json::to_vec(schema).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_SCHEMA_BYTES {
        return Err(SchemaError::TooLarge(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_a_typical_tool_schema() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let validator = compile(&schema).unwrap();
        assert!(validator.is_valid(&json!({"city": "Paris"})));
        assert!(!validator.is_valid(&json!({})));
    }

    #[test]
    fn refuses_meta_schema_violations_with_their_pointer() {
        let error = compile(&json!({"type": "object", "properties": {"city": {"type": "strng"}}})).unwrap_err();
        assert!(
            error.to_string().starts_with("does not conform to the JSON Schema meta-schema at /properties/city/type"),
            "{error}"
        );
        assert_eq!(compile(&json!("string")).unwrap_err(), SchemaError::NotASchema("a string"));
    }

    #[test]
    fn refuses_large_and_deep_schemas_before_reading_them() {
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        assert_eq!(compile(&deep).unwrap_err(), SchemaError::TooDeep);
        let properties: serde_json::Map<String, Value> =
            (0..4000).map(|i| (format!("field_{i}"), json!({"type": "string"}))).collect();
        let wide = json!({"type": "object", "properties": properties});
        assert!(matches!(compile(&wide), Err(SchemaError::TooLarge(_))));
        let mut shallow = json!({"type": "string"});
        for _ in 0..7 {
            shallow = json!({"type": "object", "properties": {"a": shallow}});
        }
        assert!(compile(&shallow).is_ok());
    }

    #[test]
    fn patterns_run_in_linear_time() {
        // Catastrophic for a backtracking engine on a long run of a's with no match at the end.
        let schema = json!({"type": "string", "pattern": "^(a+)+$"});
        let validator = compile(&schema).unwrap();
        let hostile = format!("{}b", "a".repeat(100_000));
        assert!(!validator.is_valid(&json!(hostile)));
        assert!(validator.is_valid(&json!("aaa")));
        // Look-around needs a backtracking engine: refused at write rather than risked at serving time.
        assert!(matches!(compile(&json!({"type": "string", "pattern": "(?=a)a"})), Err(SchemaError::Compile(_))));
    }

    /// A schema nested `depth` levels through `keyword`, `width` properties wide at each level.
    fn nested(keyword: &str, depth: usize, width: usize) -> Value {
        let mut schema = json!({"type": "string", "pattern": "^a*$"});
        for _ in 0..depth {
            schema = match keyword {
                "properties" => {
                    let properties: serde_json::Map<String, Value> =
                        (0..width).map(|i| (format!("p{i}"), schema.clone())).collect();
                    json!({"type": "object", "properties": properties})
                }
                "items" => json!({"type": "array", "items": schema}),
                "anyOf" => json!({"anyOf": vec![schema; width.min(3)]}),
                _ => json!({"not": {"not": schema}}),
            };
        }
        schema
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Deep and wide schemas are refused or compiled, never overflow the stack, and a deep answer validated
        /// against what compiled is answered too.
        #[test]
        fn hostile_schemas_are_refused_or_compiled(
            keyword in proptest::sample::select(vec!["properties", "items", "anyOf", "not"]),
            depth in proptest::sample::select(vec![1usize, 8, 15, 16, 17, 31, 33, 200, 2000]),
            width in 1usize..6,
        ) {
            // Wide and deep at once grows exponentially: keep the generated value itself small.
            let width = if depth > 8 { 1 } else { width };
            let schema = nested(keyword, depth, width);
            match compile(&schema) {
                Ok(validator) => {
                    let mut answer = json!("aaa");
                    for _ in 0..100 {
                        answer = json!({"p0": [answer]});
                    }
                    let _ = validator.is_valid(&answer);
                }
                Err(error) => proptest::prop_assert!(
                    matches!(error, SchemaError::TooDeep | SchemaError::TooLarge(_)), "{error}"
                ),
            }
        }
    }

    #[test]
    fn refuses_unknown_meta_schemas_and_remote_refs_without_panicking() {
        assert!(compile(&json!({"$schema": "https://example.invalid/custom", "type": "object"})).is_err());
        assert!(compile(&json!({"$ref": "https://example.invalid/schema.json"})).is_err());
    }
}
