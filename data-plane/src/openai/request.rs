//! Lenient request parsing: the gateway types only the fields it reads; everything else passes through untouched.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use policy_engine::cel_decls::Reads;
use policy_engine::cel_limits::MAX_COLLECTION_ENTRIES;
use policy_engine::facts::RequestFacts;
use policy_engine::tokens;
use serde_json::{Map, Value};

use crate::openai::error::GatewayError;

/// The OpenAI endpoints the gateway serves, and what each needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    ImageGenerations,
}

impl Endpoint {
    /// The name policies see as `request.endpoint`.
    pub fn cel_name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::ImageGenerations => "images.generations",
        }
    }

    /// Whether a stream of this endpoint can carry usage (`stream_options.include_usage`).
    pub fn streams_usage(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    /// The path after the provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::ImageGenerations => "/images/generations",
        }
    }
}

pub struct ParsedRequest {
    pub endpoint: Endpoint,
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidField { message: message.into(), param }
}

pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<ParsedRequest, GatewayError> {
    if bytes.is_empty() {
        return Err(GatewayError::InvalidRequest("the request body is empty; a JSON object is required".to_owned()));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::InvalidRequest(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(GatewayError::InvalidRequest("the request body must be a JSON object".to_owned()));
    };
    let model = match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(invalid("model", "you must provide a model parameter"));
        }
        Some(other) => return Err(invalid("model", format!("model must be a string, not {}", kind(other)))),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => return Err(invalid("stream", format!("stream must be a boolean, not {}", kind(other)))),
    };
    match endpoint {
        Endpoint::ChatCompletions => match body.get("messages") {
            Some(Value::Array(messages)) if !messages.is_empty() => {
                for (i, message) in messages.iter().enumerate() {
                    if !message.get("role").is_some_and(Value::is_string) {
                        return Err(invalid(
                            "messages",
                            format!("messages[{i}] must be an object with a string `role`"),
                        ));
                    }
                }
            }
            Some(Value::Array(_)) => return Err(invalid("messages", "messages must not be empty")),
            None | Some(Value::Null) => return Err(invalid("messages", "you must provide a messages parameter")),
            Some(other) => return Err(invalid("messages", format!("messages must be an array, not {}", kind(other)))),
        },
        Endpoint::Completions => {
            if body.get("prompt").is_none_or(Value::is_null) {
                return Err(invalid("prompt", "you must provide a prompt parameter"));
            }
        }
        Endpoint::Embeddings => {
            if body.get("input").is_none_or(Value::is_null) {
                return Err(invalid("input", "you must provide an input parameter"));
            }
            if stream {
                return Err(invalid("stream", "embeddings cannot be streamed"));
            }
        }
        Endpoint::ImageGenerations => check_image_request(&body, stream)?,
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null())
            && value.as_u64().is_none()
        {
            return Err(GatewayError::InvalidRequest(format!("{field} must be a non-negative integer")));
        }
    }
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let Some(tools) = tools.as_array() else {
            return Err(invalid("tools", format!("tools must be an array, not {}", kind(tools))));
        };
        // Policies iterate over the declared tools: their cost is bounded by this count (OpenAI's own limit).
        if tools.len() > MAX_COLLECTION_ENTRIES {
            return Err(invalid("tools", format!("at most {MAX_COLLECTION_ENTRIES} tools may be declared")));
        }
    }
    if let Some(metadata) = body.get("metadata").filter(|v| !v.is_null()) {
        if !metadata.is_object() {
            return Err(invalid("metadata", format!("metadata must be an object, not {}", kind(metadata))));
        }
        check_metadata_sizes(metadata)?;
    }
    Ok(ParsedRequest { endpoint, body, model, stream })
}

/// The most images one request may ask for (OpenAI's own limit).
pub const MAX_IMAGES_PER_REQUEST: u64 = 10;

/// An image request's own fields: a prompt, `n` within bounds, `size` and `quality` as short strings (they decide
/// the price), and no streaming (partial images are not metered by the gateway, so they are refused, not dropped).
fn check_image_request(body: &Map<String, Value>, stream: bool) -> Result<(), GatewayError> {
    match body.get("prompt") {
        Some(Value::String(prompt)) if !prompt.is_empty() => {}
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(invalid("prompt", "you must provide a prompt parameter"));
        }
        Some(other) => return Err(invalid("prompt", format!("prompt must be a string, not {}", kind(other)))),
    }
    if let Some(n) = body.get("n").filter(|v| !v.is_null())
        && !n.as_u64().is_some_and(|n| (1..=MAX_IMAGES_PER_REQUEST).contains(&n))
    {
        return Err(invalid("n", format!("n must be an integer from 1 to {MAX_IMAGES_PER_REQUEST}")));
    }
    for field in ["size", "quality"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) if !text.is_empty() && text.chars().count() <= 32 => {}
            Some(_) => return Err(invalid(field, format!("{field} must be a string of 1 to 32 characters"))),
        }
    }
    if stream {
        return Err(invalid("stream", "streamed image generation (partial images) is not supported by this gateway"));
    }
    Ok(())
}

/// The most entries of the body's metadata object and of every list or object inside it, and of the
/// `x-gateway-meta-*` headers: together at most [`MAX_COLLECTION_ENTRIES`], which bounds what a policy iterating
/// over them costs. OpenAI itself accepts 16 entries.
pub const MAX_METADATA_ENTRIES: usize = MAX_COLLECTION_ENTRIES / 2;

fn check_metadata_sizes(metadata: &Value) -> Result<(), GatewayError> {
    let mut pending = vec![metadata];
    while let Some(value) = pending.pop() {
        let entries = match value {
            Value::Object(fields) => {
                pending.extend(fields.values());
                fields.len()
            }
            Value::Array(items) => {
                pending.extend(items);
                items.len()
            }
            _ => continue,
        };
        if entries > MAX_METADATA_ENTRIES {
            return Err(invalid(
                "metadata",
                format!("metadata and every list or object in it may have at most {MAX_METADATA_ENTRIES} entries"),
            ));
        }
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const META_HEADER_PREFIX: &str = "x-gateway-meta-";

impl ParsedRequest {
    /// What routing sees. Tokens are counted, and headers copied, only when some policy reads them.
    pub fn facts(&self, headers: &HeaderMap, reads: Reads) -> Result<RequestFacts, GatewayError> {
        let mut metadata = self.body.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut header_map = BTreeMap::new();
        let mut meta_headers = 0;
        for (name, value) in headers {
            let Ok(value) = value.to_str() else { continue };
            let name = name.as_str();
            if let Some(key) = name.strip_prefix(META_HEADER_PREFIX) {
                meta_headers += 1;
                if meta_headers > MAX_METADATA_ENTRIES {
                    return Err(GatewayError::InvalidRequest(format!(
                        "at most {MAX_METADATA_ENTRIES} {META_HEADER_PREFIX}* headers are accepted"
                    )));
                }
                metadata.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            // The caller's key never reaches policies, in either header it may come in.
            if reads.headers && name != "authorization" && name != "x-api-key" {
                header_map.insert(name.to_owned(), value.to_owned());
            }
        }
        let tools = self
            .body
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let max_tokens = self.max_output_tokens();
        let (images, json_output) = (self.has_images(), self.wants_json());
        let (image_quality, image_size) = self.image_options();
        Ok(RequestFacts {
            model: self.model.clone(),
            endpoint: self.endpoint.cel_name().to_owned(),
            stream: self.stream,
            prompt_tokens: if reads.prompt_tokens { self.prompt_tokens() } else { 0 },
            max_tokens,
            tools,
            images,
            json_output,
            image_size: image_size.map(str::to_owned),
            image_quality: image_quality.map(str::to_owned),
            metadata,
            headers: header_map,
        })
    }

    /// Whether a chat message carries an image part (`image_url`, or `input_image` as some SDKs send it).
    fn has_images(&self) -> bool {
        let Some(messages) = self.body.get("messages").and_then(Value::as_array) else { return false };
        messages
            .iter()
            .filter_map(|m| m.get("content")?.as_array())
            .flatten()
            .any(|part| matches!(part.get("type").and_then(Value::as_str), Some("image_url" | "input_image")))
    }

    /// Whether `response_format` asks for JSON (`json_object` or `json_schema`).
    fn wants_json(&self) -> bool {
        matches!(
            self.body.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str),
            Some("json_object" | "json_schema")
        )
    }

    /// An image request's `quality` and `size` (what its price depends on); `None`s for other endpoints.
    pub fn image_options(&self) -> (Option<&str>, Option<&str>) {
        if self.endpoint != Endpoint::ImageGenerations {
            return (None, None);
        }
        let text = |field: &str| self.body.get(field).and_then(Value::as_str);
        (text("quality"), text("size"))
    }

    /// How many images an image request asks for (`n`, default 1); 0 for other endpoints.
    pub fn images_requested(&self) -> u64 {
        match self.endpoint {
            Endpoint::ImageGenerations => self.body.get("n").and_then(Value::as_u64).unwrap_or(1),
            _ => 0,
        }
    }

    /// The most output tokens the caller allows (`max_completion_tokens`, else `max_tokens`).
    pub fn max_output_tokens(&self) -> Option<u64> {
        ["max_completion_tokens", "max_tokens"].iter().find_map(|f| self.body.get(*f)?.as_u64())
    }

    /// Estimated prompt tokens, with the real tokenizer, over every text the request carries.
    pub fn prompt_tokens(&self) -> u64 {
        let mut texts: Vec<&str> = Vec::new();
        match self.endpoint {
            Endpoint::ChatCompletions => {
                for message in self.body.get("messages").and_then(Value::as_array).into_iter().flatten() {
                    match message.get("content") {
                        Some(Value::String(text)) => texts.push(text),
                        Some(Value::Array(parts)) => {
                            texts.extend(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)))
                        }
                        _ => {}
                    }
                }
                return tokens::chat_prompt(texts);
            }
            Endpoint::Completions => collect_strings(self.body.get("prompt"), &mut texts),
            Endpoint::Embeddings => collect_strings(self.body.get("input"), &mut texts),
            Endpoint::ImageGenerations => collect_strings(self.body.get("prompt"), &mut texts),
        }
        texts.iter().map(|t| tokens::count(t)).sum()
    }
}

fn collect_strings<'a>(value: Option<&'a Value>, out: &mut Vec<&'a str>) {
    match value {
        Some(Value::String(s)) => out.push(s),
        Some(Value::Array(items)) => items.iter().for_each(|item| collect_strings(Some(item), out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const ALL: Reads = Reads { prompt_tokens: true, headers: true, metadata: true };

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn collections_policies_iterate_over_are_bounded() {
        let chat = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(Endpoint::ChatCompletions, &serde_json::to_vec(&body).unwrap())
        };
        let tools = |n: usize| {
            let tool = json!({"type": "function", "function": {"name": "f"}});
            json!({"tools": vec![tool; n]})
        };
        assert!(chat(tools(MAX_COLLECTION_ENTRIES)).is_ok());
        let error = chat(tools(MAX_COLLECTION_ENTRIES + 1)).err().unwrap();
        assert_eq!(error.to_string(), "at most 128 tools may be declared");
        let entries = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect());
        assert!(chat(json!({"metadata": entries(MAX_METADATA_ENTRIES)})).is_ok());
        let nested = json!({"metadata": {"list": vec![1; MAX_METADATA_ENTRIES + 1]}});
        let error = chat(nested).err().unwrap();
        assert_eq!(error.to_string(), "metadata and every list or object in it may have at most 64 entries");
        assert!(chat(json!({"metadata": entries(MAX_METADATA_ENTRIES + 1)})).is_err());

        let parsed = chat(json!({"metadata": entries(1)})).unwrap();
        let mut headers = HeaderMap::new();
        for i in 0..=MAX_METADATA_ENTRIES {
            headers.insert(
                axum::http::HeaderName::try_from(format!("x-gateway-meta-h{i}")).unwrap(),
                axum::http::HeaderValue::from_static("v"),
            );
        }
        assert_eq!(
            parsed.facts(&headers, ALL).err().unwrap().to_string(),
            "at most 64 x-gateway-meta-* headers are accepted"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Nothing from the network panics the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings, Endpoint::ImageGenerations] {
                let _ = parse(endpoint, &bytes);
            }
        }

        /// Arbitrary JSON either parses or is refused with a 400, and a parsed body keeps every field as sent.
        #[test]
        fn arbitrary_json_is_kept_or_refused(mut extra in prop::collection::btree_map("[a-z_]{1,12}", json_value(), 0..6),
                                             model in json_value(), messages in json_value(), stream in json_value()) {
            extra.insert("model".into(), model);
            extra.insert("messages".into(), messages);
            extra.insert("stream".into(), stream);
            let body = Value::Object(extra.into_iter().collect());
            let bytes = serde_json::to_vec(&body).unwrap();
            match parse(Endpoint::ChatCompletions, &bytes) {
                Ok(parsed) => {
                    prop_assert_eq!(Value::Object(parsed.body.clone()), body);
                    let facts = parsed.facts(&HeaderMap::new(), ALL).unwrap();
                    prop_assert_eq!(facts.model, parsed.model);
                }
                Err(error) => prop_assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST),
            }
        }
    }

    #[test]
    fn metadata_headers_join_the_body_metadata() {
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "metadata": {"team": "a"}});
        let parsed = parse(Endpoint::ChatCompletions, body.to_string().as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-gateway-meta-task", "code_generation".parse().unwrap());
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        let facts = parsed.facts(&headers, ALL).unwrap();
        assert_eq!(facts.metadata["team"], json!("a"));
        assert_eq!(facts.metadata["task"], json!("code_generation"));
        assert!(!facts.headers.contains_key("authorization"), "the caller's key never reaches policies");
        assert_eq!(facts.prompt_tokens, tokens::chat_prompt(["hello there"]));
    }
}
