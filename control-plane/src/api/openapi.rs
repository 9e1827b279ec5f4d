//! `GET /admin/v1/openapi.json`, generated from the code: schemas come from the request and response types'
//! `ToSchema` derives, and one set of paths per registered resource kind, so the document cannot drift from
//! what the router serves.

use std::sync::LazyLock;

use axum::Json;
use policy_engine::config::*;
use policy_engine::routing::{Decision, KeyFacts, PolicyTrace};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, Required, ResponseBuilder,
};
use utoipa::{IntoParams, ToSchema};

use super::audit::AuditPage;
use super::budgets::BudgetStatus;
use super::evaluate::{EvaluateRequest, EvaluateResponse};
use super::keys::{KeyListParams, KeyPage};
use super::resources::{ListParams, Page};
use super::spend::{EventParams, ReportParams, SpendEventPage, SpendReport};
use crate::store::Resource;
use crate::store::audit::{AuditEntry, AuditFilter};
use crate::store::keys::{CreatedKey, KeySpec, KeyView};
use crate::store::principals::{CreatedPrincipal, PrincipalSpec, PrincipalView};
use crate::store::spend::{SpendEventRow, SpendRow, SpendTotals};

static DOCUMENT: LazyLock<OpenApi> = LazyLock::new(document);

pub async fn serve() -> Json<OpenApi> {
    Json(DOCUMENT.clone())
}

fn json_ref(name: &str) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(name))).build()
}

fn op(tag: &str, summary: &str, id: String) -> OperationBuilder {
    OperationBuilder::new()
        .tag(tag)
        .summary(Some(summary))
        .operation_id(Some(id))
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
        .response(
            "default",
            ResponseBuilder::new()
                .description("An error in the OpenAI shape")
                .content("application/json", json_ref("Error"))
                .build(),
        )
}

fn with_body(builder: OperationBuilder, schema: &str) -> OperationBuilder {
    builder.request_body(Some(
        RequestBodyBuilder::new().required(Some(Required::True)).content("application/json", json_ref(schema)).build(),
    ))
}

fn ok(builder: OperationBuilder, status: &str, schema: Option<&str>) -> Operation {
    let mut response = ResponseBuilder::new().description("Success");
    if let Some(schema) = schema {
        response = response.content("application/json", json_ref(schema));
    }
    builder.response(status, response.build()).build()
}

fn name_param() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new().name("name").parameter_in(ParameterIn::Path).required(Required::True).build()
}

fn resource_paths<T: Resource + ToSchema>(paths: &mut Paths) {
    let kind = T::KIND;
    let schema = <T as ToSchema>::name().to_string();
    let list = op(kind, &format!("List {}", T::COLLECTION), format!("list_{kind}"))
        .parameters(Some(ListParams::into_params(|| Some(ParameterIn::Query))));
    let create = with_body(op(kind, &format!("Create a {kind}"), format!("create_{kind}")), &schema);
    let collection = PathItem::new(HttpMethod::Get, ok(list, "200", Some("Page")));
    let mut collection = collection;
    collection.merge_operations(PathItem::new(HttpMethod::Post, ok(create, "201", Some(&schema))));
    paths.paths.insert(format!("/admin/v1/{}", T::COLLECTION), collection);

    let read = op(kind, &format!("Read a {kind}"), format!("read_{kind}")).parameter(name_param());
    let update = with_body(
        op(
            kind,
            &format!("Replace a {kind} (If-Match: revision for optimistic concurrency)"),
            format!("update_{kind}"),
        )
        .parameter(name_param()),
        &schema,
    );
    let delete = op(kind, &format!("Delete a {kind}"), format!("delete_{kind}")).parameter(name_param());
    let mut item = PathItem::new(HttpMethod::Get, ok(read, "200", Some(&schema)));
    item.merge_operations(PathItem::new(HttpMethod::Put, ok(update, "200", Some(&schema))));
    item.merge_operations(PathItem::new(HttpMethod::Delete, ok(delete, "204", None)));
    paths.paths.insert(format!("/admin/v1/{}/{{name}}", T::COLLECTION), item);
}

fn add(paths: &mut Paths, path: &str, method: HttpMethod, operation: Operation) {
    match paths.paths.get_mut(path) {
        Some(item) => item.merge_operations(PathItem::new(method, operation)),
        None => {
            paths.paths.insert(path.to_owned(), PathItem::new(method, operation));
        }
    }
}

pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    resource_paths::<BackendSpec>(&mut paths);
    resource_paths::<ModelSpec>(&mut paths);
    resource_paths::<AliasSpec>(&mut paths);
    resource_paths::<RoutePolicySpec>(&mut paths);
    resource_paths::<ToolSchemaSpec>(&mut paths);
    resource_paths::<ToolPolicySpec>(&mut paths);
    resource_paths::<BudgetSpec>(&mut paths);
    // A budget read also shows its current period's spend.
    if let Some(item) = paths.paths.get_mut("/admin/v1/budgets/{name}") {
        item.get = Some(ok(
            op("budget", "Read a budget and its status: period, spent, remaining", "read_budget".into())
                .parameter(name_param()),
            "200",
            Some("BudgetView"),
        ));
    }

    let keys = "/admin/v1/keys";
    let key = "/admin/v1/keys/{name}";
    add(
        &mut paths,
        keys,
        HttpMethod::Get,
        ok(
            op("api_key", "List API keys", "list_keys".into())
                .parameters(Some(KeyListParams::into_params(|| Some(ParameterIn::Query)))),
            "200",
            Some("KeyPage"),
        ),
    );
    add(
        &mut paths,
        keys,
        HttpMethod::Post,
        ok(
            with_body(op("api_key", "Create an API key; the secret is shown once", "create_key".into()), "KeySpec"),
            "201",
            Some("CreatedKey"),
        ),
    );
    add(
        &mut paths,
        key,
        HttpMethod::Get,
        ok(op("api_key", "Read an API key", "read_key".into()).parameter(name_param()), "200", Some("KeyView")),
    );
    add(
        &mut paths,
        key,
        HttpMethod::Put,
        ok(
            with_body(
                op("api_key", "Replace an API key's settings", "update_key".into()).parameter(name_param()),
                "KeySpec",
            ),
            "200",
            Some("KeyView"),
        ),
    );
    add(
        &mut paths,
        key,
        HttpMethod::Delete,
        ok(op("api_key", "Delete an API key", "delete_key".into()).parameter(name_param()), "204", None),
    );
    add(
        &mut paths,
        "/admin/v1/keys/{name}/revoke",
        HttpMethod::Post,
        ok(op("api_key", "Revoke an API key", "revoke_key".into()).parameter(name_param()), "200", Some("KeyView")),
    );

    let principals = "/admin/v1/principals";
    let principal = "/admin/v1/principals/{name}";
    add(
        &mut paths,
        principals,
        HttpMethod::Get,
        ok(op("principal", "List admin principals", "list_principals".into()), "200", Some("PrincipalView")),
    );
    add(
        &mut paths,
        principals,
        HttpMethod::Post,
        ok(
            with_body(
                op("principal", "Create an admin principal; the token is shown once", "create_principal".into()),
                "PrincipalSpec",
            ),
            "201",
            Some("CreatedPrincipal"),
        ),
    );
    add(
        &mut paths,
        principal,
        HttpMethod::Get,
        ok(
            op("principal", "Read an admin principal", "read_principal".into()).parameter(name_param()),
            "200",
            Some("PrincipalView"),
        ),
    );
    add(
        &mut paths,
        principal,
        HttpMethod::Delete,
        ok(
            op("principal", "Revoke an admin principal", "revoke_principal".into()).parameter(name_param()),
            "200",
            Some("PrincipalView"),
        ),
    );

    add(
        &mut paths,
        "/admin/v1/audit",
        HttpMethod::Get,
        ok(
            op("audit", "The audit log, newest first", "list_audit".into())
                .parameters(Some(AuditFilter::into_params(|| Some(ParameterIn::Query)))),
            "200",
            Some("AuditPage"),
        ),
    );
    let csv = |builder: OperationBuilder, schema: &str| {
        builder
            .response(
                "200",
                ResponseBuilder::new()
                    .description("JSON, or CSV with `format=csv` or `Accept: text/csv` (next page: `x-next-cursor`)")
                    .content("application/json", json_ref(schema))
                    .content("text/csv", ContentBuilder::new().build())
                    .build(),
            )
            .build()
    };
    add(
        &mut paths,
        "/admin/v1/spend",
        HttpMethod::Get,
        csv(
            op(
                "spend",
                "Spend totals over [from, to) grouped by any of key, team, alias, backend, model, day",
                "spend_report".into(),
            )
            .parameters(Some(ReportParams::into_params(|| Some(ParameterIn::Query)))),
            "SpendReport",
        ),
    );
    add(
        &mut paths,
        "/admin/v1/spend/events",
        HttpMethod::Get,
        csv(
            op("spend", "Spend events by (occurred_at, id), keyset-paginated", "spend_events".into())
                .parameters(Some(EventParams::into_params(|| Some(ParameterIn::Query)))),
            "SpendEventPage",
        ),
    );
    add(
        &mut paths,
        "/admin/v1/evaluate",
        HttpMethod::Post,
        ok(
            with_body(op("evaluate", "Dry-run routing for a sample request", "evaluate".into()), "EvaluateRequest"),
            "200",
            Some("EvaluateResponse"),
        ),
    );

    let components = ComponentsBuilder::new();
    let components = with_schema::<BackendSpec>(components);
    let components = with_schema::<ModelSpec>(components);
    let components = with_schema::<AliasSpec>(components);
    let components = with_schema::<RoutePolicySpec>(components);
    let components = with_schema::<ToolSchemaSpec>(components);
    let components = with_schema::<ToolPolicySpec>(components);
    let components = with_schema::<BudgetSpec>(components);
    let components = with_schema::<Page>(components);
    let components = with_schema::<KeySpec>(components);
    let components = with_schema::<KeyView>(components);
    let components = with_schema::<KeyPage>(components);
    let components = with_schema::<CreatedKey>(components);
    let components = with_schema::<PrincipalSpec>(components);
    let components = with_schema::<PrincipalView>(components);
    let components = with_schema::<CreatedPrincipal>(components);
    let components = with_schema::<AuditEntry>(components);
    let components = with_schema::<AuditPage>(components);
    let components = with_schema::<EvaluateRequest>(components);
    let components = with_schema::<EvaluateResponse>(components);
    let components = with_schema::<Decision>(components);
    let components = with_schema::<KeyFacts>(components);
    let components = with_schema::<PolicyTrace>(components);
    let components = with_schema::<ErrorBody>(components);
    let components = with_schema::<super::fleet::Fleet>(components);
    let components = with_schema::<BudgetView>(components);
    let components = with_schema::<BudgetStatus>(components);
    let components = with_schema::<SpendReport>(components);
    let components = with_schema::<SpendRow>(components);
    let components = with_schema::<SpendTotals>(components);
    let components = with_schema::<SpendEventPage>(components);
    let components = with_schema::<SpendEventRow>(components);
    let components = components
        .security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()))
        .build();

    OpenApiBuilder::new()
        .info(
            InfoBuilder::new().title("LLM gateway control plane: admin API").version(env!("CARGO_PKG_VERSION")).build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// Add `T` and every schema it references.
fn with_schema<T: ToSchema>(builder: ComponentsBuilder) -> ComponentsBuilder {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    builder.schema_from::<T>().schemas_from_iter(nested)
}

/// Every error: `{"error": {"message", "type", "param", "code"}}`.
#[derive(ToSchema)]
#[schema(as = Error)]
#[expect(dead_code, reason = "a schema only: errors are rendered by ApiError")]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only")]
struct ErrorDetail {
    message: String,
    r#type: String,
    param: Option<String>,
    code: String,
}

/// `GET /admin/v1/budgets/{name}`: the spec, `meta`, and the current period's `status`.
/// A schema only: the handler extends the generic view.
#[derive(serde::Serialize, ToSchema)]
struct BudgetView {
    #[serde(flatten)]
    spec: BudgetSpec,
    status: BudgetStatus,
}
