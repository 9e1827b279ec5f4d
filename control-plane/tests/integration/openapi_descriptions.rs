//! Every field a client reads is explained in the served OpenAPI document: each property of each schema reachable
//! from a response (through `$ref`, `allOf`/`oneOf`/`anyOf`, `items` and `additionalProperties`) has a non-empty
//! `description`, which the `ToSchema` derives take from the doc comments.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use sqlx::PgPool;

use crate::common::*;

/// The schema names `value` refers to, anywhere inside it.
fn references(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.insert(target.trim_start_matches("#/components/schemas/").to_owned());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// `where.property` for every property under `schema` (nested objects included) without a description.
fn undescribed(schema: &Value, place: &str, missing: &mut Vec<String>) {
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            let described = property["description"].as_str().is_some_and(|text| !text.trim().is_empty());
            if !described {
                missing.push(format!("{place}.{name}"));
            }
            undescribed(property, &format!("{place}.{name}"), missing);
        }
    }
    for combinator in ["allOf", "oneOf", "anyOf"] {
        for (index, part) in schema[combinator].as_array().into_iter().flatten().enumerate() {
            undescribed(part, &format!("{place}[{combinator} {index}]"), missing);
        }
    }
    for nested in ["items", "additionalProperties"] {
        if schema[nested].is_object() {
            undescribed(&schema[nested], &format!("{place}.{nested}"), missing);
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn every_response_property_has_a_description(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let document = app.send(Request::get("/admin/v1/openapi.json").body(Body::empty()).unwrap()).await.body;
    let mut pending = BTreeSet::new();
    for item in document["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            references(&operation["responses"], &mut pending);
        }
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    let mut reached = BTreeSet::new();
    while let Some(name) = pending.pop_first() {
        if reached.insert(name.clone()) {
            let schema = schemas.get(&name).unwrap_or_else(|| panic!("a response refers to a missing schema {name}"));
            let mut more = BTreeSet::new();
            references(schema, &mut more);
            pending.extend(more.into_iter().filter(|n| !reached.contains(n)));
        }
    }
    assert!(reached.len() >= 60, "only {} schemas reached from the responses", reached.len());
    let mut missing = Vec::new();
    for name in &reached {
        undescribed(&schemas[name], name, &mut missing);
    }
    assert!(missing.is_empty(), "{} response properties have no description:\n{}", missing.len(), missing.join("\n"));
}
