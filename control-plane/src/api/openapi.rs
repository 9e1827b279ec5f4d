//! `GET /admin/v1/openapi.json`: an OpenAPI 3.1 document generated from the code. Schemas come from the request
//! and response types' `ToSchema` derives (their constraints from `policy_engine::fields`, the limits validation
//! enforces), and one set of paths per registered resource kind, so the document cannot drift from what the router
//! serves. `tests/tests/e2e/admin_api.rs` checks it with a real OpenAPI validator and fuzzes the API from it.
//!
//! Each resource kind has two schemas: `BackendSpec` is what a write takes (a read's `meta` and `status` may come
//! back with it and are ignored), `Backend` what a read returns (the public spec and `meta`; never a secret).

use std::sync::LazyLock;

use axum::Json;
use policy_engine::config::*;
use policy_engine::facts::KeyFacts;
use policy_engine::fields::{MAX_NAME_CHARS, NAME_PATTERN};
use policy_engine::routing::{Decision, PolicyTrace};
use serde_json::{Map, Value, json};
use utoipa::openapi::ComponentsBuilder;
use utoipa::openapi::path::ParameterIn;
use utoipa::{IntoParams, ToSchema};

use super::audit::AuditPage;
use super::backend_health::BackendHealth;
use super::budgets::BudgetStatus;
use super::evaluate::{EvaluateRequest, EvaluateResponse};
use super::fleet::Fleet;
use super::keys::{KeyListParams, KeyPage};
use super::resources::ListParams;
use super::spend::{EventParams, ReportParams, SpendEventPage, SpendReport};
use crate::store::Resource;
use crate::store::audit::{AuditEntry, AuditFilter, AuditVerification};
use crate::store::keys::{CreatedKey, KeySpec, KeyView};
use crate::store::principals::{CreatedPrincipal, PrincipalSpec, PrincipalView};
use crate::store::resources::ResourceMeta;
use crate::store::spend::{SpendEventRow, SpendRow, SpendTotals};

static DOCUMENT: LazyLock<Value> = LazyLock::new(document);

pub async fn serve() -> Json<Value> {
    Json(DOCUMENT.clone())
}

/// `If-Match` as the server parses it (`extract::IfMatch`): `*`, or one revision, quoted or not.
const IF_MATCH_PATTERN: &str = r#"^(\*|-?[0-9]+|"-?[0-9]+")$"#;

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// An operation: authenticated, every error in the OpenAI shape.
fn operation(tag: &str, summary: &str, id: &str) -> Map<String, Value> {
    let op = json!({
        "tags": [tag],
        "summary": summary,
        "operationId": id,
        "security": [{"bearer": []}],
        "responses": {
            "default": {"description": "An error in the OpenAI shape", "content": json_content(schema_ref("Error"))}
        },
    });
    match op {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

trait OperationExt {
    fn param(self, parameter: Value) -> Self;
    fn params(self, parameters: Vec<utoipa::openapi::path::Parameter>) -> Self;
    fn body(self, schema: &str) -> Self;
    fn answer(self, status: &str, schema: Option<Value>, etag: bool) -> Self;
    fn links(self, status: &str, links: Value) -> Self;
}

impl OperationExt for Map<String, Value> {
    fn param(mut self, parameter: Value) -> Self {
        let list = self.entry("parameters").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            list.push(parameter);
        }
        self
    }

    fn params(self, parameters: Vec<utoipa::openapi::path::Parameter>) -> Self {
        parameters.into_iter().fold(self, |op, p| op.param(query_param(serde_json::to_value(p).unwrap_or_default())))
    }

    fn body(mut self, schema: &str) -> Self {
        self.insert("requestBody".into(), json!({"required": true, "content": json_content(schema_ref(schema))}));
        self
    }

    fn answer(mut self, status: &str, schema: Option<Value>, etag: bool) -> Self {
        let mut response = json!({"description": "Success"});
        if let Some(schema) = schema {
            response["content"] = json_content(schema);
        }
        if etag {
            response["headers"] = json!({"ETag": {
                "description": "The resource's revision, for `If-Match`",
                "required": true,
                "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"},
            }});
        }
        if let Some(responses) = self.get_mut("responses").and_then(Value::as_object_mut) {
            responses.insert(status.to_owned(), response);
        }
        self
    }

    fn links(mut self, status: &str, links: Value) -> Self {
        if let Some(response) = self.get_mut("responses").and_then(|r| r.get_mut(status)) {
            response["links"] = links;
        }
        self
    }
}

/// A query parameter as the server reads it: absent or a value, never JSON `null`.
fn query_param(mut parameter: Value) -> Value {
    if let Some(types) = parameter.pointer_mut("/schema/type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let single = types.remove(0);
            parameter["schema"]["type"] = single;
        }
    }
    parameter
}

fn name_param() -> Value {
    json!({
        "name": "name",
        "in": "path",
        "required": true,
        "schema": {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": MAX_NAME_CHARS},
    })
}

fn if_match_param() -> Value {
    json!({
        "name": "If-Match",
        "in": "header",
        "required": false,
        "description": "Only if the resource is at this revision (its `ETag`); 412 `precondition_failed` otherwise.",
        "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
    })
}

/// Links from a create's answer to the operations on what it created (by the `name` it returned).
fn links_by_name(targets: &[(&str, &str)]) -> Value {
    let mut links = Map::new();
    for (link, operation_id) in targets {
        links.insert(
            (*link).to_owned(),
            json!({"operationId": operation_id, "parameters": {"name": "$response.body#/name"}}),
        );
    }
    Value::Object(links)
}

#[derive(Default)]
struct Paths(Map<String, Value>);

impl Paths {
    fn add(&mut self, path: &str, method: &str, operation: Map<String, Value>) {
        let item = self.0.entry(path.to_owned()).or_insert_with(|| json!({}));
        item[method] = Value::Object(operation);
    }
}

/// The view schema's name for a kind: `BackendSpec` → `Backend`.
fn view_name<T: ToSchema>() -> String {
    let spec = T::name().to_string();
    spec.strip_suffix("Spec").unwrap_or(&spec).to_owned()
}

fn resource_paths<T: Resource + ToSchema>(paths: &mut Paths, schemas: &mut Map<String, Value>) {
    let kind = T::KIND;
    let spec = <T as ToSchema>::name().to_string();
    let view = view_name::<T>();
    add_view_schemas(schemas, &spec, &view);
    let collection = format!("/admin/v1/{}", T::COLLECTION);
    let item = format!("/admin/v1/{}/{{name}}", T::COLLECTION);
    let (read, update, delete) = (format!("read_{kind}"), format!("update_{kind}"), format!("delete_{kind}"));

    let list = operation(kind, &format!("List {}", T::COLLECTION), &format!("list_{kind}"))
        .params(ListParams::into_params(|| Some(ParameterIn::Query)))
        .answer("200", Some(schema_ref(&format!("{view}Page"))), false);
    paths.add(&collection, "get", list);
    let create = operation(kind, &format!("Create a {kind}"), &format!("create_{kind}"))
        .body(&spec)
        .answer("201", Some(schema_ref(&view)), true)
        .links("201", links_by_name(&[("read", &read), ("update", &update), ("delete", &delete)]));
    paths.add(&collection, "post", create);

    let read_op = operation(kind, &format!("Read a {kind}"), &read).param(name_param()).answer(
        "200",
        Some(schema_ref(&view)),
        true,
    );
    paths.add(&item, "get", read_op);
    let update_op =
        operation(kind, &format!("Replace a {kind} (If-Match: its revision, for optimistic concurrency)"), &update)
            .param(name_param())
            .param(if_match_param())
            .body(&replacement_schema(schemas, &spec))
            .answer("200", Some(schema_ref(&view)), true);
    paths.add(&item, "put", update_op);
    let delete_op = operation(kind, &format!("Delete a {kind}"), &delete)
        .param(name_param())
        .param(if_match_param())
        .answer("204", None, false);
    paths.add(&item, "delete", delete_op);
}

/// The body of a `PUT`: the spec, whose `name` may be left out (it is the URL's; when given it must be the same).
/// Named `BackendSpecReplacement` for `BackendSpec`.
fn replacement_schema(schemas: &mut Map<String, Value>, spec: &str) -> String {
    let name = format!("{spec}Replacement");
    if let Some(mut replacement) = schemas.get(spec).cloned() {
        if let Some(required) = replacement.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|field| field != "name");
        }
        replacement["description"] =
            json!(format!("{spec} for a replacement: `name` may be left out (it is the URL's)."));
        schemas.insert(name.clone(), replacement);
    }
    name
}

/// `Backend` (a read: the public spec, `meta`), `BackendPage`, and `meta`/`status` allowed back in `BackendSpec`.
fn add_view_schemas(schemas: &mut Map<String, Value>, spec: &str, view: &str) {
    let Some(mut read) = schemas.get(spec).cloned() else { return };
    if let Some(properties) = read.get_mut("properties").and_then(Value::as_object_mut) {
        // Write-only: never part of a read.
        properties.remove("secret");
        properties.insert(
            "meta".into(),
            json!({"$ref": "#/components/schemas/ResourceMeta", "description": "Bookkeeping: id, revision, who and when."}),
        );
    }
    if let Some(required) = read.get_mut("required").and_then(Value::as_array_mut) {
        required.push(json!("meta"));
    }
    schemas.insert(view.to_owned(), read);
    schemas.insert(
        format!("{view}Page"),
        json!({
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": schema_ref(view), "description": "This page's resources, by name."},
                "next_after": {
                    "type": ["string", "null"],
                    "description": "Pass as `after` for the next page; absent on the last page.",
                },
            },
            "additionalProperties": false,
        }),
    );
    if let Some(properties) = schemas.get_mut(spec).and_then(|s| s.get_mut("properties")).and_then(Value::as_object_mut)
    {
        for read_only in ["meta", "status"] {
            properties.insert(
                read_only.into(),
                json!({"readOnly": true, "description": "What a read returned; ignored on write."}),
            );
        }
    }
}

pub fn document() -> Value {
    let mut schemas = component_schemas();
    let mut paths = Paths::default();
    resource_paths::<BackendSpec>(&mut paths, &mut schemas);
    resource_paths::<ModelSpec>(&mut paths, &mut schemas);
    resource_paths::<AliasSpec>(&mut paths, &mut schemas);
    resource_paths::<RoutePolicySpec>(&mut paths, &mut schemas);
    resource_paths::<ToolSchemaSpec>(&mut paths, &mut schemas);
    resource_paths::<ToolPolicySpec>(&mut paths, &mut schemas);
    resource_paths::<GuardrailSpec>(&mut paths, &mut schemas);
    resource_paths::<BudgetSpec>(&mut paths, &mut schemas);
    // A budget read also shows its current period's spend.
    if let Some(mut budget_view) = schemas.get("Budget").cloned() {
        budget_view["properties"]["status"] = json!({
            "$ref": "#/components/schemas/BudgetStatus",
            "description": "The current period and its spend so far.",
        });
        if let Some(required) = budget_view["required"].as_array_mut() {
            required.push(json!("status"));
        }
        schemas.insert("BudgetView".into(), budget_view);
    }
    paths.add(
        "/admin/v1/budgets/{name}",
        "get",
        operation("budget", "Read a budget and its status: period, spent, remaining", "read_budget")
            .param(name_param())
            .answer("200", Some(schema_ref("BudgetView")), true),
    );

    let (keys, key) = ("/admin/v1/keys", "/admin/v1/keys/{name}");
    paths.add(
        keys,
        "get",
        operation("api_key", "List API keys", "list_keys")
            .params(KeyListParams::into_params(|| Some(ParameterIn::Query)))
            .answer("200", Some(schema_ref("KeyPage")), false),
    );
    paths.add(
        keys,
        "post",
        operation("api_key", "Create an API key; the secret is shown once", "create_key")
            .body("KeySpec")
            .answer("201", Some(schema_ref("CreatedKey")), true)
            .links(
                "201",
                links_by_name(&[
                    ("read", "read_key"),
                    ("update", "update_key"),
                    ("revoke", "revoke_key"),
                    ("delete", "delete_key"),
                ]),
            ),
    );
    paths.add(
        key,
        "get",
        operation("api_key", "Read an API key", "read_key").param(name_param()).answer(
            "200",
            Some(schema_ref("KeyView")),
            true,
        ),
    );
    paths.add(
        key,
        "put",
        operation("api_key", "Replace an API key's settings (If-Match: its revision)", "update_key")
            .param(name_param())
            .param(if_match_param())
            .body(&replacement_schema(&mut schemas, "KeySpec"))
            .answer("200", Some(schema_ref("KeyView")), true),
    );
    paths.add(
        key,
        "delete",
        operation("api_key", "Delete an API key", "delete_key")
            .param(name_param())
            .param(if_match_param())
            .answer("204", None, false),
    );
    paths.add(
        "/admin/v1/keys/{name}/revoke",
        "post",
        operation("api_key", "Revoke an API key", "revoke_key").param(name_param()).answer(
            "200",
            Some(schema_ref("KeyView")),
            true,
        ),
    );

    let (principals, principal) = ("/admin/v1/principals", "/admin/v1/principals/{name}");
    paths.add(
        principals,
        "get",
        operation("principal", "List admin principals", "list_principals").answer(
            "200",
            Some(json!({"type": "array", "items": schema_ref("PrincipalView")})),
            false,
        ),
    );
    paths.add(
        principals,
        "post",
        operation("principal", "Create an admin principal; the token is shown once", "create_principal")
            .body("PrincipalSpec")
            .answer("201", Some(schema_ref("CreatedPrincipal")), false)
            .links("201", links_by_name(&[("read", "read_principal"), ("revoke", "revoke_principal")])),
    );
    paths.add(
        principal,
        "get",
        operation("principal", "Read an admin principal", "read_principal").param(name_param()).answer(
            "200",
            Some(schema_ref("PrincipalView")),
            false,
        ),
    );
    paths.add(
        principal,
        "delete",
        operation("principal", "Revoke an admin principal", "revoke_principal").param(name_param()).answer(
            "200",
            Some(schema_ref("PrincipalView")),
            false,
        ),
    );

    paths.add(
        "/admin/v1/audit",
        "get",
        operation("audit", "The audit log, newest first", "list_audit")
            .params(AuditFilter::into_params(|| Some(ParameterIn::Query)))
            .answer("200", Some(schema_ref("AuditPage")), false),
    );
    paths.add(
        "/admin/v1/audit/verify",
        "get",
        operation("audit", "Check the audit log's hash chain; the first broken link, if any", "verify_audit").answer(
            "200",
            Some(schema_ref("AuditVerification")),
            false,
        ),
    );
    paths.add(
        "/admin/v1/fleet",
        "get",
        operation("fleet", "Which version each data plane runs, who is behind, who refused what", "fleet").answer(
            "200",
            Some(schema_ref("Fleet")),
            false,
        ),
    );
    paths.add(
        "/admin/v1/backends/{name}/health",
        "get",
        operation("fleet", "One backend's health as each data plane reports it, and since when", "backend_health")
            .param(name_param())
            .answer("200", Some(schema_ref("BackendHealth")), false),
    );
    let csv = |op: Map<String, Value>, schema: &str| {
        let mut op = op.answer("200", Some(schema_ref(schema)), false);
        if let Some(response) = op.get_mut("responses").and_then(|r| r.get_mut("200")) {
            response["description"] =
                json!("JSON, or CSV with `format=csv` or `Accept: text/csv` (next page: `x-next-cursor`)");
            response["content"]["text/csv"] = json!({"schema": {"type": "string"}});
        }
        op
    };
    paths.add(
        "/admin/v1/spend",
        "get",
        csv(
            operation(
                "spend",
                "Spend totals over [from, to) grouped by any of key, team, alias, backend, model, day",
                "spend_report",
            )
            .params(ReportParams::into_params(|| Some(ParameterIn::Query))),
            "SpendReport",
        ),
    );
    paths.add(
        "/admin/v1/spend/events",
        "get",
        csv(
            operation("spend", "Spend events by (occurred_at, id), keyset-paginated", "spend_events")
                .params(EventParams::into_params(|| Some(ParameterIn::Query))),
            "SpendEventPage",
        ),
    );
    paths.add(
        "/admin/v1/evaluate",
        "post",
        operation("evaluate", "Dry-run routing for a sample request", "evaluate").body("EvaluateRequest").answer(
            "200",
            Some(schema_ref("EvaluateResponse")),
            false,
        ),
    );

    constrain(&mut schemas);
    schemas.values_mut().for_each(describe_properties);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "LLM gateway control plane: admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every error has the OpenAI shape `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. \
                No string of a body and no query parameter may hold a NUL character (U+0000): 400.",
        },
        "paths": paths.0,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// Every type's schema (and every schema it references) as JSON.
fn component_schemas() -> Map<String, Value> {
    let components = ComponentsBuilder::new();
    let components = with_schema::<BackendSpec>(components);
    let components = with_schema::<ModelSpec>(components);
    let components = with_schema::<AliasSpec>(components);
    let components = with_schema::<RoutePolicySpec>(components);
    let components = with_schema::<ToolSchemaSpec>(components);
    let components = with_schema::<ToolPolicySpec>(components);
    let components = with_schema::<GuardrailSpec>(components);
    let components = with_schema::<BudgetSpec>(components);
    let components = with_schema::<ResourceMeta>(components);
    let components = with_schema::<KeySpec>(components);
    let components = with_schema::<KeyView>(components);
    let components = with_schema::<KeyPage>(components);
    let components = with_schema::<CreatedKey>(components);
    let components = with_schema::<PrincipalSpec>(components);
    let components = with_schema::<PrincipalView>(components);
    let components = with_schema::<CreatedPrincipal>(components);
    let components = with_schema::<AuditEntry>(components);
    let components = with_schema::<AuditPage>(components);
    let components = with_schema::<AuditVerification>(components);
    let components = with_schema::<EvaluateRequest>(components);
    let components = with_schema::<EvaluateResponse>(components);
    let components = with_schema::<Decision>(components);
    let components = with_schema::<KeyFacts>(components);
    let components = with_schema::<PolicyTrace>(components);
    let components = with_schema::<ErrorBody>(components);
    let components = with_schema::<Fleet>(components);
    let components = with_schema::<BackendHealth>(components);
    let components = with_schema::<BudgetStatus>(components);
    let components = with_schema::<SpendReport>(components);
    let components = with_schema::<SpendRow>(components);
    let components = with_schema::<SpendTotals>(components);
    let components = with_schema::<SpendEventPage>(components);
    let components = with_schema::<SpendEventRow>(components);
    match serde_json::to_value(components.build()).ok().and_then(|c| c.get("schemas").cloned()) {
        Some(Value::Object(schemas)) => schemas,
        _ => Map::new(),
    }
}

/// Add `T` and every schema it references.
fn with_schema<T: ToSchema>(builder: ComponentsBuilder) -> ComponentsBuilder {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    builder.schema_from::<T>().schemas_from_iter(nested)
}

/// What the derives cannot say: the range of unsigned integers, the variants of tagged enums refusing unknown
/// fields as the types do (`deny_unknown_fields`), and the secret forms a write takes.
fn constrain(schemas: &mut Map<String, Value>) {
    for schema in schemas.values_mut() {
        bound_unsigned(schema);
    }
    for tagged in ["BackendAuth", "PolicyAction", "BudgetScope", "SecretSpec"] {
        if let Some(variants) = schemas.get_mut(tagged).and_then(|s| s.get_mut("oneOf")).and_then(Value::as_array_mut) {
            for variant in variants {
                variant["additionalProperties"] = json!(false);
            }
        }
    }
    // `sealed` is how a secret is stored, never what anyone may write (and reads never show a secret).
    if let Some(variants) = schemas.get_mut("SecretSpec").and_then(|s| s.get_mut("oneOf")).and_then(Value::as_array_mut)
    {
        variants.retain(|v| v.pointer("/properties/sealed").is_none());
        for variant in variants.iter_mut() {
            if let Some(value) = variant.pointer_mut("/properties/value") {
                value["minLength"] = json!(1);
                value["maxLength"] = json!(policy_engine::fields::MAX_SECRET_CHARS);
            }
            if let Some(reference) = variant.pointer_mut("/properties/ref") {
                reference["pattern"] = json!("^env:[A-Za-z0-9_]+$");
            }
        }
    }
}

/// Descriptions the derives leave out, on every property that has none: an optional reference's (which utoipa
/// puts inside its `oneOf`) moved up to the property, and a tagged enum's tag (`type`, `outcome`) named as such.
fn describe_properties(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                for property in properties.values_mut() {
                    if property.get("description").is_none()
                        && let Some(description) = inner_description(property)
                    {
                        property["description"] = json!(description);
                    }
                }
            }
            map.values_mut().for_each(describe_properties);
        }
        Value::Array(items) => items.iter_mut().for_each(describe_properties),
        _ => {}
    }
}

fn inner_description(property: &Value) -> Option<String> {
    if let Some([Value::String(tag)]) = property.get("enum").and_then(Value::as_array).map(Vec::as_slice) {
        return Some(format!("Always `{tag}` here: names this variant."));
    }
    ["oneOf", "anyOf", "allOf"]
        .iter()
        .filter_map(|combinator| property.get(*combinator).and_then(Value::as_array))
        .flatten()
        .find_map(|member| member.get("description").and_then(Value::as_str).map(str::to_owned))
}

/// `u32` and `u64` fields as `uint32`/`uint64` with their maximum, so out-of-range numbers are refused by the
/// document as the server refuses them. (utoipa spells these formats `u-int32` and `u-int64`.)
fn bound_unsigned(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let unsigned = match map.get("format").and_then(Value::as_str) {
                Some("uint32" | "u-int32") => Some(("uint32", json!(u32::MAX))),
                Some("uint64" | "u-int64") => Some(("uint64", json!(u64::MAX))),
                _ => None,
            };
            if let Some((format, maximum)) = unsigned {
                map.insert("format".into(), json!(format));
                map.entry("maximum").or_insert(maximum);
            }
            for value in map.values_mut() {
                bound_unsigned(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// Every error: `{"error": {"message", "type", "param", "code"}}`.
#[derive(ToSchema)]
#[schema(as = Error)]
#[expect(dead_code, reason = "a schema only: errors are rendered by ApiError")]
struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only")]
struct ErrorDetail {
    /// For humans.
    message: String,
    /// The OpenAI error type (`invalid_request_error`, ...).
    r#type: String,
    /// The field at fault, when one is.
    param: Option<String>,
    /// A fixed code per failure, for programs.
    code: String,
}
