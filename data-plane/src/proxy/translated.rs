//! The inbound APIs served through chat ([`crate::apis`]): `/v1/messages` (Anthropic) and `/v1/responses`. The
//! caller's key is checked first (nothing is parsed for an unknown caller), the body read up to the limit and
//! translated, the chat request served by the same [`super::serve`] as `/v1/chat/completions` (routing, tool
//! policies, rate limits, budgets, metering, failover), and its answer, stream or error translated back.

use std::marker::PhantomData;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::pipeline::read_body;
use super::{Proxy, auth, now_unix, serve};
use crate::apis::InboundFormat;
use crate::apis::stream::translate;
use crate::openai::error::GatewayError;
use crate::openai::request::Endpoint;

/// The most bytes of an error body, or of a whole answer, read from the chat pipeline to translate; its answers are
/// bounded by the upstream's (OpenAI's largest are a few MiB).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Serve one request of format `F`.
pub async fn handle<F: InboundFormat>(proxy: &Proxy, request: Request) -> Response {
    Translated::<F>(PhantomData).serve(proxy, request).await
}

struct Translated<F>(PhantomData<F>);

impl<F: InboundFormat> Translated<F> {
    async fn serve(&self, proxy: &Proxy, request: Request) -> Response {
        let (mut parts, body) = request.into_parts();
        // The id `serve` will use, fixed now so that a refusal before it carries the same.
        let id = super::request_id(&parts.headers);
        if let Ok(value) = HeaderValue::from_str(&id) {
            parts.headers.insert(super::REQUEST_ID, value);
        }
        let prepared = async {
            let snapshot = proxy.snapshot()?;
            auth::authenticate(&parts.headers, &snapshot, now_unix())?;
            let bytes = read_body(body, proxy.max_body_bytes).await?;
            F::to_chat(&bytes)
        };
        let (chat, context) = match prepared.await {
            Ok(prepared) => prepared,
            Err(error) => {
                super::count_error(&error);
                let mut response = self.error(error.into_response()).await;
                if let Some(value) = parts.headers.get(super::REQUEST_ID) {
                    response.headers_mut().insert(super::REQUEST_ID, value.clone());
                }
                return response;
            }
        };
        let stream = chat.get("stream") == Some(&Value::Bool(true));
        let body = match serde_json::to_vec(&chat) {
            Ok(body) => body,
            Err(error) => {
                return self.error(GatewayError::InvalidRequest(error.to_string()).into_response()).await;
            }
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        let response = serve(proxy, Endpoint::ChatCompletions, Request::from_parts(parts, Body::from(body))).await;
        if !response.status().is_success() {
            return self.error(response).await;
        }
        if stream {
            let (parts, body) = response.into_parts();
            let translated = translate(body.into_data_stream(), F::stream(context));
            return Response::from_parts(parts, Body::from_stream(translated));
        }
        let (mut parts, body) = response.into_parts();
        let answer = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| GatewayError::UpstreamFailed(format!("the answer is not JSON: {e}")))
                .and_then(|chat| F::answer(&chat, &context)),
            Err(e) => Err(GatewayError::UpstreamFailed(format!("the answer could not be read: {e}"))),
        };
        match answer {
            Ok(answer) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, Body::from(answer.to_string()))
            }
            Err(error) => self.error(error.into_response()).await,
        }
    }

    /// An OpenAI-shaped error response in `F`'s shape, its status and headers (`retry-after`, `x-should-retry`, the
    /// rate-limit headers, the request id) kept.
    async fn error(&self, response: Response) -> Response {
        let (mut parts, body) = response.into_parts();
        let openai = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let status = if parts.status.is_success() { StatusCode::BAD_GATEWAY } else { parts.status };
        parts.status = status;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Response::from_parts(parts, Body::from(F::error(status, &openai).to_string()))
    }
}
