//! The README's "every resource with every field" block stays true: each example is accepted by the admin API as
//! written, and names (in the JSON or its comments) every field the resource's write schema has.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use sqlx::PgPool;

use crate::common::*;

const README: &str = include_str!("../../../README.md");

/// The block's examples in order: (collection, the example's text with comments, the JSON without them).
fn examples() -> Vec<(String, String, Value)> {
    let start = README.find("Every resource with every field").expect("the README's resource block");
    let block = &README[start..];
    let block = &block[block.find("```jsonc\n").expect("its jsonc fence") + 9..];
    let block = &block[..block.find("```").expect("the fence's end")];
    let mut examples: Vec<(String, String, String)> = Vec::new();
    for line in block.lines() {
        let trimmed = line.trim_start();
        if let Some(collection) = trimmed.strip_prefix("// POST $A/") {
            let collection = collection.split_whitespace().next().unwrap_or_default().to_owned();
            examples.push((collection, String::new(), String::new()));
            continue;
        }
        let Some((_, commented, json)) = examples.last_mut() else { continue };
        commented.push_str(line);
        commented.push('\n');
        // A comment starts at ` //` (never inside the examples' strings, whose URLs have `://`).
        let code = line.find(" //").map_or(line, |at| &line[..at]);
        if !trimmed.starts_with("//") {
            json.push_str(code);
            json.push('\n');
        }
    }
    examples
        .into_iter()
        .map(|(collection, commented, json)| {
            let mut stream = serde_json::Deserializer::from_str(&json).into_iter::<Value>();
            let value = stream.next().unwrap_or_else(|| panic!("{collection}: no JSON")).unwrap_or_else(|e| {
                panic!("{collection}: the README's example is not JSON once its comments are removed: {e}\n{json}")
            });
            (collection, commented, value)
        })
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_readme_shows_every_field_of_every_resource_and_each_example_is_accepted(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let document = app.send(Request::get("/admin/v1/openapi.json").body(Body::empty()).unwrap()).await.body;
    let examples = examples();
    let collections: Vec<&str> = examples.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        collections,
        [
            "backends",
            "models",
            "aliases",
            "route-policies",
            "tool-schemas",
            "tool-policies",
            "guardrails",
            "budgets",
            "keys",
            "principals"
        ]
    );
    let mut created = BTreeMap::new();
    for (collection, commented, example) in &examples {
        let operation = &document["paths"][format!("/admin/v1/{collection}")]["post"];
        let reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
        let schema = &document["components"]["schemas"][reference.trim_start_matches("#/components/schemas/")];
        for field in schema["properties"].as_object().unwrap().keys() {
            if field != "meta" && field != "status" {
                assert!(commented.contains(&format!("\"{field}\"")), "the README's {collection} example lacks {field}");
            }
        }
        let reply = app.call("POST", &format!("/admin/v1/{collection}"), Some(example.clone())).await;
        assert_eq!(reply.status, StatusCode::CREATED, "the README's {collection} example: {}", reply.text);
        created.insert(collection.clone(), reply.body);
    }
    assert!(created["keys"]["secret"].is_string() && created["principals"]["token"].is_string());
    assert_eq!(
        created["backends"]["timeouts"],
        serde_json::json!({"connect_ms": 5000, "first_byte_ms": 60000, "total_ms": 600000})
    );
}
