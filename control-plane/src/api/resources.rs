//! Generic handlers for the configuration resources: `/admin/v1/{collection}` and `/{collection}/{name}`.

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::IntoParams;

use super::AppState;
use super::extract::{ApiPath, ApiQuery, IfMatch, JsonBody, etag, parse};
use crate::auth::{Authorized, may};
use crate::error::ApiError;
use crate::store::Resource;

pub fn routes<T: Resource>() -> Router<AppState> {
    routes_with_read::<T>(get(read::<T>))
}

/// The generic routes with a kind's own `GET /{collection}/{name}` (budgets add their status).
pub(crate) fn routes_with_read<T: Resource>(read: MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .route(&format!("/{}", T::COLLECTION), get(list::<T>).post(create::<T>))
        .route(&format!("/{}/{{name}}", T::COLLECTION), read.put(update::<T>).delete(delete::<T>))
}

/// Keyset pagination by name.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The previous page's `next_after`.
    pub after: Option<String>,
}

/// A page of views (documented per kind as `BackendPage`, ... by `openapi.rs`).
#[derive(Debug, Serialize)]
pub(crate) struct Page {
    pub items: Vec<Value>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
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
    _: Authorized<may::ReadConfig>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page>, ApiError> {
    let limit = page_limit(params.limit)?;
    let items = state.store.list::<T>(params.after.as_deref(), limit).await?;
    let next_after = if items.len() as i64 == limit { items.last().map(|s| s.spec.name().to_owned()) } else { None };
    Ok(Json(Page { items: items.iter().map(|s| s.view()).collect(), next_after }))
}

/// A single resource's answer: its view, with its revision as the `ETag`.
type Single = ([(HeaderName, String); 1], Json<Value>);

async fn read<T: Resource>(
    State(state): State<AppState>,
    _: Authorized<may::ReadConfig>,
    ApiPath(name): ApiPath,
) -> Result<Single, ApiError> {
    let stored = state.store.get::<T>(&name).await?;
    Ok((etag(stored.revision), Json(stored.view())))
}

async fn create<T: Resource>(
    State(state): State<AppState>,
    principal: Authorized<may::WriteConfig>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, [(HeaderName, String); 1], Json<Value>), ApiError> {
    let spec: T = spec_body(body)?;
    let stored =
        state.store.create(&state.write_context, &principal.name, principal.request_id.as_deref(), spec).await?;
    Ok((StatusCode::CREATED, etag(stored.revision), Json(stored.view())))
}

async fn update<T: Resource>(
    State(state): State<AppState>,
    principal: Authorized<may::WriteConfig>,
    ApiPath(name): ApiPath,
    IfMatch(expected_revision): IfMatch,
    JsonBody(mut body): JsonBody,
) -> Result<Single, ApiError> {
    // The name is the URL's; a body may leave it out.
    if let Some(object) = body.as_object_mut() {
        object.entry("name").or_insert_with(|| Value::String(name.clone()));
    }
    let spec: T = spec_body(body)?;
    let stored = state
        .store
        .update(&state.write_context, &principal.name, principal.request_id.as_deref(), &name, expected_revision, spec)
        .await?;
    Ok((etag(stored.revision), Json(stored.view())))
}

async fn delete<T: Resource>(
    State(state): State<AppState>,
    principal: Authorized<may::WriteConfig>,
    ApiPath(name): ApiPath,
    IfMatch(expected_revision): IfMatch,
) -> Result<StatusCode, ApiError> {
    state.store.delete::<T>(&principal.name, principal.request_id.as_deref(), &name, expected_revision).await?;
    Ok(StatusCode::NO_CONTENT)
}
