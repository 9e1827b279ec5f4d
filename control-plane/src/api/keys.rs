//! API keys (`/admin/v1/keys`) and admin principals (`/admin/v1/principals`).

use axum::extract::State;
use axum::http::{HeaderName, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::{ApiPath, ApiQuery, IfMatch, JsonBody, etag, parse};
use super::resources::page_limit;
use crate::auth::{Authorized, may};
use crate::error::ApiError;
use crate::store::keys::{CreatedKey, KeySpec, KeyView};
use crate::store::principals::{CreatedPrincipal, PrincipalSpec, PrincipalView};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/keys", get(list_keys).post(create_key))
        .route("/keys/{name}", get(read_key).put(update_key).delete(delete_key))
        .route("/keys/{name}/revoke", post(revoke_key))
        .route("/principals", get(list_principals).post(create_principal))
        .route("/principals/{name}", get(read_principal).delete(revoke_principal))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyListParams {
    /// Only keys of this team.
    pub team: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The previous page's `next_after`.
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyPage {
    /// Keys, by name.
    pub items: Vec<KeyView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// A key's answer, with its revision as the `ETag`.
type SingleKey = ([(HeaderName, String); 1], Json<KeyView>);

async fn list_keys(
    State(state): State<AppState>,
    _: Authorized<may::ReadKeys>,
    ApiQuery(params): ApiQuery<KeyListParams>,
) -> Result<Json<KeyPage>, ApiError> {
    let limit = page_limit(params.limit)?;
    let items = state.store.list_keys(params.team.as_deref(), params.after.as_deref(), limit).await?;
    let next_after = if items.len() as i64 == limit { items.last().map(|k| k.name.clone()) } else { None };
    Ok(Json(KeyPage { items, next_after }))
}

async fn create_key(
    State(state): State<AppState>,
    principal: Authorized<may::WriteKeys>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, [(HeaderName, String); 1], Json<CreatedKey>), ApiError> {
    let spec: KeySpec = parse(body)?;
    let created = state.store.create_key(&principal.name, principal.request_id.as_deref(), spec).await?;
    Ok((StatusCode::CREATED, etag(created.key.revision), Json(created)))
}

async fn read_key(
    State(state): State<AppState>,
    _: Authorized<may::ReadKeys>,
    ApiPath(name): ApiPath,
) -> Result<SingleKey, ApiError> {
    let key = state.store.get_key(&name).await?;
    Ok((etag(key.revision), Json(key)))
}

async fn update_key(
    State(state): State<AppState>,
    principal: Authorized<may::WriteKeys>,
    ApiPath(name): ApiPath,
    IfMatch(expected_revision): IfMatch,
    JsonBody(mut body): JsonBody,
) -> Result<SingleKey, ApiError> {
    if let Some(object) = body.as_object_mut() {
        object.entry("name").or_insert_with(|| serde_json::Value::String(name.clone()));
    }
    let spec: KeySpec = parse(body)?;
    let key = state
        .store
        .update_key(&principal.name, principal.request_id.as_deref(), &name, expected_revision, spec)
        .await?;
    Ok((etag(key.revision), Json(key)))
}

async fn revoke_key(
    State(state): State<AppState>,
    principal: Authorized<may::WriteKeys>,
    ApiPath(name): ApiPath,
) -> Result<SingleKey, ApiError> {
    let key = state.store.revoke_key(&principal.name, principal.request_id.as_deref(), &name).await?;
    Ok((etag(key.revision), Json(key)))
}

async fn delete_key(
    State(state): State<AppState>,
    principal: Authorized<may::WriteKeys>,
    ApiPath(name): ApiPath,
    IfMatch(expected_revision): IfMatch,
) -> Result<StatusCode, ApiError> {
    state.store.delete_key(&principal.name, principal.request_id.as_deref(), &name, expected_revision).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_principals(
    State(state): State<AppState>,
    _: Authorized<may::ManagePrincipals>,
) -> Result<Json<Vec<PrincipalView>>, ApiError> {
    Ok(Json(state.store.list_principals().await?))
}

async fn create_principal(
    State(state): State<AppState>,
    principal: Authorized<may::ManagePrincipals>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedPrincipal>), ApiError> {
    let spec: PrincipalSpec = parse(body)?;
    Ok((StatusCode::CREATED, Json(state.store.create_principal(&principal, spec).await?)))
}

async fn read_principal(
    State(state): State<AppState>,
    _: Authorized<may::ManagePrincipals>,
    ApiPath(name): ApiPath,
) -> Result<Json<PrincipalView>, ApiError> {
    Ok(Json(state.store.get_principal(&name).await?))
}

async fn revoke_principal(
    State(state): State<AppState>,
    principal: Authorized<may::ManagePrincipals>,
    ApiPath(name): ApiPath,
) -> Result<Json<PrincipalView>, ApiError> {
    Ok(Json(state.store.revoke_principal(&principal, &name, state.write_context.bootstrap_from_env).await?))
}
