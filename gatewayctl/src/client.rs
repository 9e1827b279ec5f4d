//! The admin API client: bearer token, JSON in and out, `ETag`/`If-Match`, and the API's error shape kept whole so
//! callers can point at the field the server named.

use reqwest::header::{ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A failure talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control plane at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The API's own error answer (`{"error": {"message", "type", "param", "code"}}`).
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String, code: Option<String>, param: Option<String> },
    #[error("the control plane's answer is not what gatewayctl expects: {0}")]
    Unexpected(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A resource read: its body and its revision (`ETag`).
#[derive(Debug, Clone)]
pub struct Read {
    pub body: Value,
    pub etag: Option<String>,
}

pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        // reqwest is built without a default crypto provider (the workspace pins ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("gatewayctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Unreachable { url: url.to_owned(), source })?;
        Ok(AdminClient { http, base: format!("{}/admin/v1", url.trim_end_matches('/')), token })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(etag) = if_match {
            request = request.header(IF_MATCH, etag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| ClientError::Unreachable { url, source })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("error").cloned());
        let field = |name: &str| error.as_ref().and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
        Err(ClientError::Api {
            status,
            message: field("message").unwrap_or(text),
            code: field("code"),
            param: field("param"),
        })
    }

    async fn json(response: reqwest::Response) -> Result<Read, ClientError> {
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.json().await.map_err(|e| ClientError::Unexpected(e.to_string()))?;
        Ok(Read { body, etag })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Read, ClientError> {
        Self::json(self.send(Method::GET, path, query, None, None).await?).await
    }

    /// `GET` as text (CSV answers).
    pub async fn get_text(&self, path: &str, query: &[(&str, String)]) -> Result<String, ClientError> {
        let response = self.send(Method::GET, path, query, None, None).await?;
        response.text().await.map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    /// Every item of a paged collection (`items` + `next_after`).
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", "1000".to_owned())];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let page = self.get(path, &query).await?.body;
            match page.get("items").and_then(Value::as_array) {
                Some(page_items) => items.extend(page_items.iter().cloned()),
                None => return Err(ClientError::Unexpected(format!("GET {path} has no `items`"))),
            }
            match page.get("next_after").and_then(Value::as_str) {
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Read, ClientError> {
        Self::json(self.send(Method::POST, path, &[], None, Some(body)).await?).await
    }

    pub async fn put(&self, path: &str, etag: Option<&str>, body: &Value) -> Result<Read, ClientError> {
        Self::json(self.send(Method::PUT, path, &[], etag, Some(body)).await?).await
    }

    pub async fn delete(&self, path: &str, etag: Option<&str>) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, &[], etag, None).await.map(drop)
    }
}
