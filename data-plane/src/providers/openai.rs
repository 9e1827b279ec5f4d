//! The `openai` and `azure_openai` backend kinds: OpenAI's own wire format, so the caller's body goes as it came, with
//! `model` set to the upstream's name. They differ only in the URL (Azure names the deployment in the path and the
//! API version in the query).

use policy_engine::config::BackendSpec;
use serde_json::{Map, Value};

use super::upstream::AttemptError;
use super::{Outbound, Provider};
use crate::openai::request::Endpoint;

/// OpenAI and every server compatible with it.
pub struct OpenAi;

/// Azure OpenAI: `{base_url}/openai/deployments/{model}{path}?api-version=...`.
pub struct AzureOpenAi;

impl Provider for OpenAi {
    fn request(
        &self,
        backend: &BackendSpec,
        upstream_model: &str,
        endpoint: Endpoint,
        body: &Map<String, Value>,
        omit_usage_option: bool,
    ) -> Result<Outbound, AttemptError> {
        let url = format!("{}{}", backend.base_url, endpoint.path());
        Ok(Outbound {
            url,
            body: with_model(body, upstream_model, omit_usage_option)?,
            native_key_header: None,
            headers: &[],
        })
    }
}

impl Provider for AzureOpenAi {
    fn request(
        &self,
        backend: &BackendSpec,
        upstream_model: &str,
        endpoint: Endpoint,
        body: &Map<String, Value>,
        omit_usage_option: bool,
    ) -> Result<Outbound, AttemptError> {
        let version = backend.azure.as_ref().map(|a| a.api_version.as_str()).unwrap_or_default();
        let url = format!(
            "{}/openai/deployments/{upstream_model}{}?api-version={version}",
            backend.base_url,
            endpoint.path()
        );
        Ok(Outbound {
            url,
            body: with_model(body, upstream_model, omit_usage_option)?,
            native_key_header: None,
            headers: &[],
        })
    }
}

fn with_model(body: &Map<String, Value>, model: &str, omit_usage_option: bool) -> Result<Vec<u8>, AttemptError> {
    serde_json::to_vec(&WithModel { body, model, omit_usage_option }).map_err(|e| AttemptError::Connect(e.to_string()))
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
