//! The admin REST API under `/admin/v1/`.
//!
//! Layers, outermost first: request id (set from `x-request-id` or generated) → trace span → request id echoed
//! on the response → request metrics ([`crate::metrics::track_admin`]) → routes. Admin routes sit behind
//! [`authenticate`]; only `/healthz`, `/readyz`, `/metrics` and `/admin/v1/openapi.json` are open.

mod audit;
mod backend_health;
mod budgets;
mod evaluate;
mod extract;
mod fleet;
mod keys;
pub mod openapi;
mod resources;
mod spend;
mod store_error;
mod trace;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use policy_engine::config::*;
use policy_engine::routing::Router as PolicyRouter;
use serde_json::json;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::store::resources::WriteContext;
use crate::store::{Store, VersionedCache};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub write_context: Arc<WriteContext>,
    pub max_body_bytes: usize,
    router_cache: Arc<VersionedCache<PolicyRouter>>,
}

impl AppState {
    pub fn new(store: Store, write_context: WriteContext, max_body_bytes: usize) -> AppState {
        AppState { store, write_context: Arc::new(write_context), max_body_bytes, router_cache: Arc::default() }
    }

    async fn router(&self) -> Result<(i64, Arc<PolicyRouter>), ApiError> {
        evaluate::compiled_router(self).await
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole admin application, ready to serve or to drive in tests with `oneshot`.
pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .merge(resources::routes::<BackendSpec>())
        .merge(resources::routes::<ModelSpec>())
        .merge(resources::routes::<AliasSpec>())
        .merge(resources::routes::<RoutePolicySpec>())
        .merge(resources::routes::<ToolSchemaSpec>())
        .merge(resources::routes::<ToolPolicySpec>())
        .merge(resources::routes::<GuardrailSpec>())
        .merge(resources::routes_with_read::<BudgetSpec>(get(budgets::read)))
        .merge(keys::routes())
        .route("/audit", get(audit::list))
        .route("/audit/verify", get(audit::verify))
        .route("/fleet", get(fleet::list))
        .route("/backends/{name}/health", get(backend_health::read))
        .route("/spend", get(spend::report))
        .route("/spend/events", get(spend::events))
        .route("/evaluate", post(evaluate::evaluate))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn(trace::admin_write))
        .route("/openapi.json", get(openapi::serve));

    Router::new()
        .nest("/admin/v1", admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Inside the routing, so it sees the matched route's template.
        .layer(middleware::from_fn(crate::metrics::track_admin))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Resolve the bearer token to a [`Principal`], or answer 401.
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = match header {
        None => return Err(ApiError::MissingToken("an admin token is required: send `Authorization: Bearer <token>`")),
        Some(value) => match value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            Some(token) if !token.trim().is_empty() => token.trim(),
            _ => return Err(ApiError::MissingToken("the Authorization header must be `Bearer <token>`")),
        },
    };
    let (name, role) = state.store.authenticate(token).await?.ok_or(ApiError::InvalidToken)?;
    let request_id =
        request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).map(str::to_owned);
    request.extensions_mut().insert(Principal { name, role, request_id });
    Ok(next.run(request).await)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Prometheus text (`docs/observability.md`); open like `/healthz`.
async fn metrics_text(State(state): State<AppState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], crate::metrics::render(&state.store).await).into_response()
}

/// Ready when the database answers.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(error) => {
            tracing::warn!(error = %error.detailed(), "not ready: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": error.to_string()})))
                .into_response()
        }
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute { method: method.to_string(), path: uri.path().to_owned() }
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
