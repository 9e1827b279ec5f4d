//! Tool-argument JSON Schemas: checked against their meta-schema and compiled once per snapshot.

use jsonschema::Validator;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
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
    jsonschema::meta::validate(schema).map_err(|e| {
        let pointer = e.instance_path().to_string();
        SchemaError::MetaSchema {
            pointer: if pointer.is_empty() { "/".to_owned() } else { pointer },
            message: e.to_string(),
        }
    })?;
    jsonschema::validator_for(schema).map_err(|e| SchemaError::Compile(e.to_string()))
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
    fn refuses_unknown_meta_schemas_and_remote_refs_without_panicking() {
        assert!(compile(&json!({"$schema": "https://example.invalid/custom", "type": "object"})).is_err());
        assert!(compile(&json!({"$ref": "https://example.invalid/schema.json"})).is_err());
    }
}
