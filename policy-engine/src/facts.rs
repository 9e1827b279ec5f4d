//! What routing and CEL policies know of a request and of the caller's key.
//!
//! The data plane builds these from the body, the headers and the key it authenticated; the control plane's dry
//! run takes them from its caller. Routing, tool policies and native evaluation read them; nothing here knows how
//! they are evaluated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the router knows of the request. Built by the data plane from the body and headers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct RequestFacts {
    pub model: String,
    /// `chat.completions`, `completions`, `embeddings`, `images.generations`.
    pub endpoint: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub max_tokens: Option<u64>,
    pub tools: Vec<String>,
    /// The request carries image input (a candidate needs `capabilities.vision`).
    pub images: bool,
    /// The request asks for JSON output with `response_format` (a candidate needs `capabilities.json_mode`).
    pub json_output: bool,
    /// `images.generations`: the `size` asked for (a candidate needs a price for it, `pricing.per_image`).
    pub image_size: Option<String>,
    /// `images.generations`: the `quality` asked for (it may change the image's price).
    pub image_quality: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub headers: BTreeMap<String, String>,
}

/// What the router knows of the caller's key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct KeyFacts {
    /// The key's id.
    pub id: String,
    /// The key's name.
    pub name: String,
    /// The key's team.
    pub team: Option<String>,
    /// The key's tags.
    pub tags: Vec<String>,
}
