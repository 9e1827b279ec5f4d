//! Microsoft Entra ID's token endpoint, served by the mock upstream ([`crate::mock`]) beside its model endpoints, for
//! `azure_openai` backends that sign in with Entra ID. `POST /__mock/entra` sets the app registration it accepts
//! (`{"tenant_id", "client_id", "client_secret", "expires_in"}`); `POST /{tenant}/oauth2/v2.0/token` then checks a
//! client-credentials grant as Entra does (form encoding, grant type, tenant, client id and secret, one `.default`
//! scope) and answers a fresh token (`entra-token-1`, `-2`, ...) or Entra's error (`invalid_client` 401,
//! `invalid_request` / `unauthorized_client` / `invalid_scope` 400). `GET /__mock/entra/tokens` lists the token
//! requests: tenant, form fields (the secret only as whether it matched) and the answer's status.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The app registration the endpoint accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    tenant_id: String,
    client_id: String,
    client_secret: String,
    /// Lifetime of each token issued, in seconds (Entra's are about an hour).
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3599
}

#[derive(Default)]
struct Entra {
    registration: Mutex<Option<Registration>>,
    issued: Mutex<u64>,
    requests: Mutex<Vec<Value>>,
}

/// The token endpoint and its control routes.
pub fn routes() -> Router {
    Router::new()
        .route("/__mock/entra", post(register))
        .route("/__mock/entra/tokens", get(token_requests))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .with_state(Arc::new(Entra::default()))
}

async fn register(State(entra): State<Arc<Entra>>, Json(registration): Json<Registration>) -> StatusCode {
    *entra.registration.lock().await = Some(registration);
    StatusCode::NO_CONTENT
}

async fn token_requests(State(entra): State<Arc<Entra>>) -> Json<Value> {
    Json(Value::Array(entra.requests.lock().await.clone()))
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (status, Json(json!({"error": code, "error_description": description, "error_codes": [7000215]}))).into_response()
}

async fn token(
    State(entra): State<Arc<Entra>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let registration = entra.registration.lock().await.clone();
    let secret_matches = registration.as_ref().map(|r| field("client_secret").as_deref() == Some(&r.client_secret));
    let form_encoded =
        headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/x-www-form-urlencoded");
    let scope = field("scope").unwrap_or_default();
    let answer = match registration {
        None => error(StatusCode::BAD_REQUEST, "invalid_request", "AADSTS90002: no tenant is registered"),
        Some(_) if !form_encoded => error(StatusCode::BAD_REQUEST, "invalid_request", "AADSTS900144: not a form"),
        Some(r) if r.tenant_id != tenant => {
            error(StatusCode::BAD_REQUEST, "invalid_request", "AADSTS90002: tenant not found")
        }
        Some(_) if field("grant_type").as_deref() != Some("client_credentials") => {
            error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "AADSTS70003: grant type not supported")
        }
        Some(r) if field("client_id").as_deref() != Some(&r.client_id) => {
            error(StatusCode::BAD_REQUEST, "unauthorized_client", "AADSTS700016: application not found")
        }
        Some(_) if secret_matches != Some(true) => {
            error(StatusCode::UNAUTHORIZED, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
        }
        Some(_) if !scope.ends_with("/.default") || scope.contains(' ') => {
            error(StatusCode::BAD_REQUEST, "invalid_scope", "AADSTS1002012: the scope must be one resource's /.default")
        }
        Some(r) => {
            let mut issued = entra.issued.lock().await;
            *issued += 1;
            let token = format!("entra-token-{issued}");
            Json(json!({"token_type": "Bearer", "expires_in": r.expires_in, "ext_expires_in": r.expires_in,
                        "access_token": token}))
            .into_response()
        }
    };
    entra.requests.lock().await.push(json!({
        "tenant": tenant, "grant_type": field("grant_type"), "client_id": field("client_id"),
        "scope": field("scope"), "secret_matches": secret_matches, "status": answer.status().as_u16(),
    }));
    answer
}
