//! Tests of the bounded body reader (`body.rs`) against a local server, with and without a content length.

use super::*;

/// A server answering `size` bytes, chunked (no content length) when `chunked`; its URL.
async fn server(size: usize, chunked: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || async move {
        if chunked {
            let pieces = (0..size.div_ceil(1024))
                .map(move |i| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024.min(size - i * 1024)])));
            axum::body::Body::from_stream(futures_util::stream::iter(pieces))
        } else {
            axum::body::Body::from(vec![b'x'; size])
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn bodies_within_the_bound_are_read_and_larger_ones_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for chunked in [false, true] {
        let url = server(4096, chunked).await;
        let read = read_at_most(client.get(&url).send().await.unwrap(), 4096).await.unwrap();
        assert_eq!(read.len(), 4096, "chunked: {chunked}");
        let refused = read_at_most(client.get(&url).send().await.unwrap(), 4095).await;
        assert!(matches!(refused, Err(BodyError::TooLarge { limit: 4095 })), "chunked: {chunked}: {refused:?}");
    }
}
