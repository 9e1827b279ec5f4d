//! Generic handlers for the configuration resources: `/admin/v1/{collection}` and `/{collection}/{name}`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::{ApiPath, ApiQuery, JsonBody, parse};
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::store::Resource;

pub fn routes<T: Resource>() -> Router<AppState> {
    routes_with_read::<T>(get(read::<T>))
}

/// The generic routes with a kind's own `GET /{collection}/{name}` (budgets add their status).
pub fn routes_with_read<T: Resource>(read: MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .route(&format!("/{}", T::COLLECTION), get(list::<T>).post(create::<T>))
        .route(&format!("/{}/{{name}}", T::COLLECTION), read.put(update::<T>).delete(delete::<T>))
}

/// Keyset pagination by name.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
    /// The previous page's `next_after`.
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(l) if (1..=1000).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::InvalidQuery(format!("limit must be between 1 and 1000, not {l}"))),
    }
}

/// The body without the read-only `meta` (and a budget's `status`) a GET returned, so a read can be edited and
/// written back. No spec has a field of either name.
fn spec_body<T: Resource>(mut body: Value) -> Result<T, ApiError> {
    if let Some(object) = body.as_object_mut() {
        object.remove("meta");
        object.remove("status");
    }
    parse(body)
}

async fn list<T: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page>, ApiError> {
    principal.require(Action::ReadConfig)?;
    let limit = page_limit(params.limit)?;
    let items = state.store.list::<T>(params.after.as_deref(), limit).await?;
    let next_after = if items.len() as i64 == limit { items.last().map(|s| s.spec.name().to_owned()) } else { None };
    Ok(Json(Page { items: items.iter().map(|s| s.view()).collect(), next_after }))
}

async fn read<T: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::ReadConfig)?;
    Ok(Json(state.store.get::<T>(&name).await?.view()))
}

async fn create<T: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Action::WriteConfig)?;
    let spec: T = spec_body(body)?;
    let stored =
        state.store.create(&state.write_context, &principal.name, principal.request_id.as_deref(), spec).await?;
    Ok((StatusCode::CREATED, Json(stored.view())))
}

async fn update<T: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::WriteConfig)?;
    let expected_revision = match headers.get("if-match") {
        None => None,
        Some(value) => {
            let raw = value.to_str().unwrap_or("").trim().trim_matches('"');
            Some(raw.parse::<i64>().map_err(|_| ApiError::InvalidBody {
                message: format!("If-Match must be a revision number, not {raw:?}"),
                param: Some("If-Match".to_owned()),
            })?)
        }
    };
    // The name is the URL's; a body may leave it out.
    if let Some(object) = body.as_object_mut() {
        object.entry("name").or_insert_with(|| Value::String(name.clone()));
    }
    let spec: T = spec_body(body)?;
    let stored = state
        .store
        .update(&state.write_context, &principal.name, principal.request_id.as_deref(), &name, expected_revision, spec)
        .await?;
    Ok(Json(stored.view()))
}

async fn delete<T: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<StatusCode, ApiError> {
    principal.require(Action::WriteConfig)?;
    state.store.delete::<T>(&principal.name, principal.request_id.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
