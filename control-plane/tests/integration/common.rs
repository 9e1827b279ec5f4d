//! The test harness: an in-process app, a bootstrap admin, JSON calls.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use control_plane::api::{AppState, app};
use control_plane::secrets::Sealer;
use control_plane::store::Store;
use control_plane::store::resources::WriteContext;
use http_body_util::BodyExt;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::secret_ref::SecretEnvPolicy;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

pub const ADMIN: &str = "test-bootstrap-admin-token";
pub const SECRET_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub struct TestApp {
    pub router: axum::Router,
    pub store: Store,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The `error.message` of an OpenAI-shaped error, asserting the shape.
    pub fn error_message(&self) -> &str {
        let error = &self.body["error"];
        assert!(error["type"].is_string() && error["code"].is_string(), "not an OpenAI error: {}", self.text);
        error["message"].as_str().unwrap_or_default()
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl TestApp {
    pub async fn new(pool: PgPool) -> TestApp {
        let context = WriteContext {
            base_urls: BaseUrlPolicy::from_list("").unwrap(),
            secret_env: SecretEnvPolicy::default(),
            sealer: Some(Sealer::from_config(SECRET_KEY).unwrap()),
            bootstrap_from_env: true,
        };
        TestApp::with(pool, context, 64 * 1024).await
    }

    pub async fn with(pool: PgPool, context: WriteContext, max_body_bytes: usize) -> TestApp {
        let store = Store::new(pool);
        store.ensure_bootstrap_admin(ADMIN).await.unwrap();
        let router = app(AppState::new(store.clone(), context, max_body_bytes));
        TestApp { router, store }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    pub async fn call_as(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut builder =
            Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call_as(ADMIN, method, path, body).await
    }

    /// Create, asserting 201.
    pub async fn create(&self, collection: &str, body: Value) -> Value {
        let reply = self.call("POST", &format!("/admin/v1/{collection}"), Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body
    }

    /// A token for a new principal of `role`.
    pub async fn token(&self, role: &str) -> String {
        let name = format!("{role}-{}", uuid::Uuid::new_v4().simple());
        let reply = self.call("POST", "/admin/v1/principals", Some(json!({"name": name, "role": role}))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["token"].as_str().unwrap().to_owned()
    }

    pub async fn version(&self) -> i64 {
        self.store.config_version().await.unwrap()
    }

    pub async fn audit_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM audit_log").fetch_one(self.store.pool()).await.unwrap()
    }

    /// Apply `policies/seed/bundle.json` through the API, in dependency order.
    pub async fn apply_seed(&self) {
        let bundle: Value =
            serde_json::from_str(include_str!("../../../policies/seed/bundle.json")).expect("seed bundle is JSON");
        for (section, collection) in [
            ("backends", "backends"),
            ("models", "models"),
            ("aliases", "aliases"),
            ("route_policies", "route-policies"),
        ] {
            for item in bundle[section].as_array().unwrap() {
                self.create(collection, item.clone()).await;
            }
        }
    }
}

pub fn backend(name: &str) -> Value {
    json!({"name": name, "kind": "openai", "base_url": "https://api.example.com/v1", "region": "us"})
}

pub fn model(name: &str, backend: &str) -> Value {
    json!({"name": name, "backend": backend, "upstream_model": "m", "capabilities": {"chat": true},
           "pricing": {"input": "1.00", "output": "2.00"}})
}

pub fn alias(name: &str, models: &[&str]) -> Value {
    json!({"name": name, "candidates": models.iter().map(|m| json!({"model": m})).collect::<Vec<_>>()})
}
