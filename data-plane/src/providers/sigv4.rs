//! AWS Signature Version 4 over a request as it will be sent, with `aws-sigv4` (AWS's own signer): the keys come from
//! the backend's secret ([`policy_engine::aws_secret::AwsKeys`]) or, for a backend without one, from this data
//! plane's standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). Environment
//! keys sign only requests to AWS's own hosts: a signed request can be replayed for a few minutes by whoever
//! receives it, so a backend author must not be able to send one to a host of their choosing.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::{HeaderName, HeaderValue};
use policy_engine::aws_secret::AwsKeys;

/// Headers a request carries that are not signed: hop-by-hop or set per attempt by the gateway's tracing.
const UNSIGNED_HEADERS: &[&str] = &["traceparent", "tracestate", "x-request-id"];

/// Where a backend's keys come from.
pub fn keys(secret: Option<&str>, host: &str, environment: impl Fn(&str) -> Option<String>) -> Result<AwsKeys, String> {
    if let Some(secret) = secret {
        return AwsKeys::parse(secret).map_err(|e| e.to_string());
    }
    if !is_aws_host(host) {
        return Err(format!(
            "it has no secret, and the data plane's AWS environment signs only requests to AWS hosts \
             (*.amazonaws.com), not {host}: give the backend a secret"
        ));
    }
    let variable = |name: &str| environment(name).filter(|v| !v.is_empty());
    match (variable("AWS_ACCESS_KEY_ID"), variable("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(AwsKeys { access_key_id, secret_access_key, session_token: variable("AWS_SESSION_TOKEN") })
        }
        _ => Err("it has no secret and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set here".to_owned()),
    }
}

fn is_aws_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// The headers that sign `request` (`authorization`, `x-amz-date`, and `x-amz-security-token` with a session token)
/// for `service` in `region` at `time`. Every header the request already has is signed except [`UNSIGNED_HEADERS`];
/// headers added later (`content-length`, `accept`) are not.
pub fn signature(
    request: &reqwest::Request,
    keys: &AwsKeys,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let identity = Credentials::new(
        keys.access_key_id.clone(),
        keys.secret_access_key.clone(),
        keys.session_token.clone(),
        None,
        "gateway-backend-secret",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot sign: {e}"))?
        .into();
    let headers = request
        .headers()
        .iter()
        .filter(|(name, _)| !UNSIGNED_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let body = request.body().and_then(|b| b.as_bytes()).unwrap_or_default();
    let signable =
        SignableRequest::new(request.method().as_str(), request.url().as_str(), headers, SignableBody::Bytes(body))
            .map_err(|e| format!("cannot sign: {e}"))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| format!("cannot sign: {e}"))?.into_parts();
    let (headers, _) = instructions.into_parts();
    headers
        .into_iter()
        .map(|header| {
            let name = HeaderName::from_static(header.name());
            let value = HeaderValue::from_str(header.value()).map_err(|e| format!("cannot sign: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn keys_come_from_the_secret_or_for_aws_hosts_only_from_the_environment() {
        let aws_env = [("AWS_ACCESS_KEY_ID", "AKENV"), ("AWS_SECRET_ACCESS_KEY", "envsecret")];
        let secret = r#"{"access_key_id":"AKSECRET","secret_access_key":"s"}"#;
        let from_secret = keys(Some(secret), "127.0.0.1", env(&aws_env)).unwrap();
        assert_eq!(from_secret.access_key_id, "AKSECRET");
        let from_env = keys(None, "bedrock-runtime.us-east-1.amazonaws.com", env(&aws_env)).unwrap();
        assert_eq!((from_env.access_key_id.as_str(), from_env.session_token), ("AKENV", None));
        let refused = keys(None, "evil.example", env(&aws_env)).unwrap_err();
        assert!(refused.contains("signs only requests to AWS hosts"), "{refused}");
        let refused = keys(None, "amazonaws.com.evil.example", env(&aws_env)).unwrap_err();
        assert!(refused.contains("give the backend a secret"), "{refused}");
        let unset = keys(None, "bedrock-runtime.us-east-1.amazonaws.com", env(&[])).unwrap_err();
        assert!(unset.contains("AWS_ACCESS_KEY_ID"), "{unset}");
        assert!(keys(Some("not json"), "127.0.0.1", env(&[])).unwrap_err().starts_with("a bedrock secret is JSON"));
    }

    #[test]
    fn the_signature_covers_the_request_headers_but_not_tracing() {
        let url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse".parse().unwrap();
        let mut request = reqwest::Request::new(reqwest::Method::POST, url);
        request.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
        request.headers_mut().insert("traceparent", http::HeaderValue::from_static("00-abc-def-01"));
        *request.body_mut() = Some(b"{}".to_vec().into());
        let keys = AwsKeys {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: Some("session".to_owned()),
        };
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let headers = signature(&request, &keys, "us-east-1", "bedrock", time).unwrap();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap().to_owned());
        assert_eq!(get("x-amz-date").as_deref(), Some("20231114T221320Z"));
        assert_eq!(get("x-amz-security-token").as_deref(), Some("session"));
        let authorization = get("authorization").unwrap();
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
            ),
            "{authorization}"
        );
    }
}
