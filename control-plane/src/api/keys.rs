//! API keys (`/admin/v1/keys`) and admin principals (`/admin/v1/principals`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::{ApiPath, ApiQuery, JsonBody, parse};
use super::resources::page_limit;
use crate::auth::{Action, Principal};
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
pub struct KeyListParams {
    pub team: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    pub items: Vec<KeyView>,
    pub next_after: Option<String>,
}

async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<KeyListParams>,
) -> Result<Json<KeyPage>, ApiError> {
    principal.require(Action::ReadKeys)?;
    let limit = page_limit(params.limit)?;
    let items = state.store.list_keys(params.team.as_deref(), params.after.as_deref(), limit).await?;
    let next_after = if items.len() as i64 == limit { items.last().map(|k| k.name.clone()) } else { None };
    Ok(Json(KeyPage { items, next_after }))
}

async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    principal.require(Action::WriteKeys)?;
    let spec: KeySpec = parse(body)?;
    let created = state.store.create_key(&principal.name, principal.request_id.as_deref(), spec).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn read_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<Json<KeyView>, ApiError> {
    principal.require(Action::ReadKeys)?;
    Ok(Json(state.store.get_key(&name).await?))
}

async fn update_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
    JsonBody(mut body): JsonBody,
) -> Result<Json<KeyView>, ApiError> {
    principal.require(Action::WriteKeys)?;
    if let Some(object) = body.as_object_mut() {
        object.entry("name").or_insert_with(|| serde_json::Value::String(name.clone()));
    }
    let spec: KeySpec = parse(body)?;
    Ok(Json(state.store.update_key(&principal.name, principal.request_id.as_deref(), &name, spec).await?))
}

async fn revoke_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<Json<KeyView>, ApiError> {
    principal.require(Action::WriteKeys)?;
    Ok(Json(state.store.revoke_key(&principal.name, principal.request_id.as_deref(), &name).await?))
}

async fn delete_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<StatusCode, ApiError> {
    principal.require(Action::WriteKeys)?;
    state.store.delete_key(&principal.name, principal.request_id.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_principals(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PrincipalView>>, ApiError> {
    principal.require(Action::ManagePrincipals)?;
    Ok(Json(state.store.list_principals().await?))
}

async fn create_principal(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedPrincipal>), ApiError> {
    principal.require(Action::ManagePrincipals)?;
    let spec: PrincipalSpec = parse(body)?;
    Ok((StatusCode::CREATED, Json(state.store.create_principal(&principal, spec).await?)))
}

async fn read_principal(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<Json<PrincipalView>, ApiError> {
    principal.require(Action::ManagePrincipals)?;
    Ok(Json(state.store.get_principal(&name).await?))
}

async fn revoke_principal(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath,
) -> Result<Json<PrincipalView>, ApiError> {
    principal.require(Action::ManagePrincipals)?;
    Ok(Json(state.store.revoke_principal(&principal, &name).await?))
}
