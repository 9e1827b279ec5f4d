//! The `openai` and `azure_openai` backend kinds: OpenAI's own wire format, so the caller's body goes as it came, with
//! `model` set to the upstream's name. They differ only in the URL (Azure names the deployment in the path and the
//! API version in the query), and Azure may sign in with Entra ID ([`super::entra`]) instead of a key.

use futures_util::future::BoxFuture;
use policy_engine::config::BackendSpec;
use serde_json::{Map, Value};

use super::upstream::AttemptError;
use super::{Credentials, Inbound, Outbound, Provider, Unsigned};

/// OpenAI and every server compatible with it.
pub struct OpenAi;

/// Azure OpenAI: `{base_url}/openai/deployments/{model}{path}?api-version=...`.
pub struct AzureOpenAi;

impl Provider for OpenAi {
    fn request(&self, request: &Inbound<'_>) -> Result<Outbound, AttemptError> {
        openai_request(format!("{}{}", request.backend.base_url, request.endpoint.path()), request)
    }
}

impl Provider for AzureOpenAi {
    fn per_request_credentials(&self, backend: &BackendSpec) -> bool {
        super::entra::settings(backend).is_some()
    }

    fn authorize<'a>(&'a self, unsigned: Unsigned<'a>) -> BoxFuture<'a, Result<Credentials, AttemptError>> {
        Box::pin(super::entra::authorize(unsigned))
    }

    fn health_check(&self, backend: &BackendSpec, path: &str) -> Outbound {
        let version = backend.azure.as_ref().map(|a| a.api_version.as_str()).unwrap_or_default();
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}api-version={version}", super::join(&backend.base_url, path));
        Outbound { url, body: Vec::new(), native_key_header: None, headers: &[] }
    }

    fn error_body(&self, body: String) -> String {
        content_filter_error(&body).unwrap_or(body)
    }

    fn request(&self, request: &Inbound<'_>) -> Result<Outbound, AttemptError> {
        let Inbound { backend, upstream_model, endpoint, .. } = *request;
        let version = backend.azure.as_ref().map(|a| a.api_version.as_str()).unwrap_or_default();
        let url = format!(
            "{}/openai/deployments/{upstream_model}{}?api-version={version}",
            backend.base_url,
            endpoint.path()
        );
        openai_request(url, request)
    }
}

/// Azure's content-filter refusal (`code` `content_filter`, the categories in `innererror.content_filter_result`) as
/// an OpenAI error that says what happened and which categories were filtered (Azure's own leaves `type` null);
/// `None` for any other error, passed on as it came.
pub fn content_filter_error(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    let error = parsed.get("error")?;
    if error.get("code").and_then(Value::as_str) != Some("content_filter") {
        return None;
    }
    let results = error.pointer("/innererror/content_filter_result").and_then(Value::as_object);
    let filtered: Vec<&str> = results
        .into_iter()
        .flatten()
        .filter(|(_, result)| result.get("filtered").and_then(Value::as_bool) == Some(true))
        .map(|(category, _)| category.as_str())
        .collect();
    let said = error.get("message").and_then(Value::as_str).unwrap_or_default();
    let categories = if filtered.is_empty() { String::new() } else { format!(" (filtered: {})", filtered.join(", ")) };
    let message = format!("Azure OpenAI's content filter refused the request{categories}: {said}");
    let param = error.get("param").filter(|p| p.is_string()).cloned().unwrap_or(Value::Null);
    Some(
        serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                     "code": "content_filter"}})
        .to_string(),
    )
}

/// The caller's body as it came, `model` set to the upstream's name, to `url`.
fn openai_request(url: String, request: &Inbound<'_>) -> Result<Outbound, AttemptError> {
    let with_model =
        WithModel { body: request.body, model: request.upstream_model, omit_usage_option: request.omit_usage_option };
    let body = serde_json::to_vec(&with_model).map_err(|e| AttemptError::Connect(e.to_string()))?;
    Ok(Outbound { url, body, native_key_header: None, headers: &[] })
}

/// The request body with `model` replaced by the upstream's name, serialised without copying the body.
struct WithModel<'a> {
    body: &'a Map<String, Value>,
    model: &'a str,
    /// Serialise `stream_options` without `include_usage` (and not at all when nothing else is left).
    omit_usage_option: bool,
}

impl serde::Serialize for WithModel<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let len = (!self.omit_usage_option).then(|| self.body.len() + usize::from(!self.body.contains_key("model")));
        let mut map = serializer.serialize_map(len)?;
        map.serialize_entry("model", self.model)?;
        for (name, value) in self.body {
            match (name.as_str(), value) {
                ("model", _) => {}
                ("stream_options", Value::Object(options)) if self.omit_usage_option => {
                    let rest: Map<String, Value> = options
                        .iter()
                        .filter(|(k, _)| *k != "include_usage")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !rest.is_empty() {
                        map.serialize_entry(name, &rest)?;
                    }
                }
                _ => map.serialize_entry(name, value)?,
            }
        }
        map.end()
    }
}
