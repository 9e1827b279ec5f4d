//! Tests of the token cache (`oauth.rs`) against a local token endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::*;

/// A token endpoint answering `status` with tokens valid for `expires_in` seconds, counting the requests it gets and
/// keeping the last form.
struct Endpoint {
    url: String,
    fetches: Arc<AtomicUsize>,
    forms: Arc<Mutex<Vec<String>>>,
}

async fn endpoint(status: StatusCode, expires_in: u64) -> Endpoint {
    // As `crate::run` does: reqwest is built without a default TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let (fetches, forms) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (counted, kept) = (fetches.clone(), forms.clone());
    let app = axum::Router::new().fallback(move |body: String| {
        let (counted, kept) = (counted.clone(), kept.clone());
        async move {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            kept.lock().unwrap().push(body);
            // Slow enough that concurrent callers overlap the fetch.
            tokio::time::sleep(Duration::from_millis(50)).await;
            (
                status,
                axum::Json(
                    json!({"access_token": format!("token-{n}"), "expires_in": expires_in, "token_type": "Bearer"}),
                ),
            )
                .into_response()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Endpoint { url, fetches, forms }
}

fn request(url: &str) -> impl FnOnce() -> Result<TokenRequest, TokenError> + '_ {
    move || Ok(TokenRequest { url: url.to_owned(), form: vec![("grant_type", "x y&z".to_owned())] })
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch_and_the_token_is_cached() {
    let endpoint = endpoint(StatusCode::OK, 3600).await;
    let tokens = Tokens::default();
    let gets = (0..8).map(|_| tokens.get("backend", request(&endpoint.url)));
    let got = futures_util::future::join_all(gets).await;
    assert!(got.iter().all(|t| t.as_deref() == Ok("token-1")), "{got:?}");
    assert_eq!(tokens.get("backend", request(&endpoint.url)).await.unwrap(), "token-1");
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(endpoint.forms.lock().unwrap()[0], "grant_type=x+y%26z");
    // Another key is another token.
    assert_eq!(tokens.get("other", request(&endpoint.url)).await.unwrap(), "token-2");
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    // Valid for 2 s: refreshed at half its life.
    let endpoint = endpoint(StatusCode::OK, 2).await;
    let tokens = Tokens::default();
    assert_eq!(tokens.get("b", request(&endpoint.url)).await.unwrap(), "token-1");
    assert_eq!(tokens.get("b", request(&endpoint.url)).await.unwrap(), "token-1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tokens.get("b", request(&endpoint.url)).await.unwrap(), "token-2");
}

#[tokio::test]
async fn failures_are_errors_and_cache_nothing() {
    let endpoint = endpoint(StatusCode::BAD_REQUEST, 3600).await;
    let tokens = Tokens::default();
    for _ in 0..2 {
        let error = tokens.get("b", request(&endpoint.url)).await.unwrap_err();
        assert!(matches!(&error, TokenError::Status { status: 400, .. }), "{error:?}");
    }
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 2);
    let unreachable = tokens.get("c", request("http://127.0.0.1:9/token")).await.unwrap_err();
    assert!(matches!(unreachable, TokenError::Unreachable(_)), "{unreachable:?}");
    let metadata = tokens.get("d", request("http://169.254.169.254/token")).await.unwrap_err();
    assert!(matches!(metadata, TokenError::Refused(_)), "{metadata:?}");
    let made = tokens.get("e", || Err(TokenError::Credentials("bad key".to_owned()))).await.unwrap_err();
    assert_eq!(made, TokenError::Credentials("bad key".to_owned()));
}
