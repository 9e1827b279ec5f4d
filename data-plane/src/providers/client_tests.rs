//! The upstream client against a local TLS server: certificates verified (a trusted CA passes, an unknown one
//! fails before anything is sent), reqwest's `accept: */*` and the `Host` header kept, the egress resolver's
//! refusals reported as refusals, the connect timeout bounding the whole connection, and HTTP/2 refusals sent again,
//! as reqwest's client did.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::secret_ref::SecretEnvPolicy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::*;
use crate::providers::egress::Egress;

struct Server {
    port: u16,
    ca: CertificateDer<'static>,
}

/// A server certificate for 127.0.0.1 signed by a throwaway CA, offering `alpn`; and the CA.
fn server_config(alpn: &[&[u8]]) -> (rustls::ServerConfig, CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (config, CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
}

/// A TLS server for 127.0.0.1 (HTTP/1.1) answering every request with the `accept` and `host` headers it received.
async fn tls_server() -> Server {
    let (config, ca) = server_config(&[b"http/1.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let header = |name: &str| {
                        request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
                    };
                    let answer = format!("accept={} host={}", header("accept"), header("host"));
                    Ok::<_, io::Error>(hyper::Response::new(Full::new(Bytes::from(answer))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Server { port, ca }
}

fn trusting(ca: Option<&CertificateDer<'static>>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca.clone()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn get(url: &str) -> reqwest::Request {
    reqwest::Request::new(reqwest::Method::GET, reqwest::Url::parse(url).unwrap())
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_trusted_roots() {
    let server = tls_server().await;
    let url = format!("https://127.0.0.1:{}/v1/models", server.port);
    let resolver = Egress::default().resolver();

    let client = UpstreamClient::new(Duration::from_secs(5), resolver.clone(), trusting(Some(&server.ca)));
    let response = client.send(get(&url)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().as_str(), url, "the request's URL, as reqwest's responses carry it");
    let expected = format!("accept=*/* host=127.0.0.1:{}", server.port);
    assert_eq!(response.text().await.unwrap(), expected);

    let untrusting = UpstreamClient::new(Duration::from_secs(5), resolver, trusting(None));
    let error = untrusting.send(get(&url)).await.unwrap_err();
    let SendError::Failed(error) = error else { panic!("expected a connection failure, got {error:?}") };
    assert!(error.is_connect(), "{error:?}");
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        chain.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    assert!(chain.contains("certificate"), "{chain}");
}

#[tokio::test]
async fn names_the_egress_rules_refuse_are_refusals_and_nothing_connects() {
    let lookup: crate::providers::egress::Lookup =
        Arc::new(|_| Box::pin(async { Ok(vec!["169.254.169.254".parse::<IpAddr>().unwrap()]) }));
    let egress = Egress::new(BaseUrlPolicy::default(), SecretEnvPolicy::default()).with_lookup(lookup);
    let client = UpstreamClient::new(Duration::from_secs(5), egress.resolver(), trusting(None));
    let error = client.send(get("http://metadata.example:80/latest")).await.unwrap_err();
    let SendError::Refused(refused) = error else { panic!("expected a refusal, got {error:?}") };
    assert!(refused.0.contains("169.254.169.254"), "{refused}");
}

#[tokio::test]
async fn the_connect_timeout_bounds_name_resolution_and_the_tls_handshake_too() {
    // A server that takes the TCP connection and never answers the TLS handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = UpstreamClient::new(Duration::from_millis(200), Egress::default().resolver(), trusting(None));
    let error = client.send(get(&format!("https://127.0.0.1:{port}/v1/models"))).await.unwrap_err();
    assert!(matches!(error, SendError::ConnectTimeout), "{error:?}");

    // A name whose lookup never ends.
    let lookup: crate::providers::egress::Lookup = Arc::new(|_| Box::pin(std::future::pending()));
    let egress = Egress::new(BaseUrlPolicy::default(), SecretEnvPolicy::default()).with_lookup(lookup);
    let client = UpstreamClient::new(Duration::from_millis(200), egress.resolver(), trusting(None));
    let error = client.send(get("http://slow-dns.example:80/v1/models")).await.unwrap_err();
    assert!(matches!(error, SendError::ConnectTimeout), "{error:?}");
}

/// An HTTP/2 server over TLS that refuses the first `refusals` streams (`REFUSED_STREAM`) and answers the rest;
/// the count of streams it received.
async fn refusing_h2_server(refusals: usize) -> (Server, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (config, ca) = server_config(&[b"h2"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let Ok(mut connection) = h2::server::handshake(stream).await else { return };
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    if count.fetch_add(1, Ordering::SeqCst) < refusals {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else if let Ok(mut body) = respond.send_response(hyper::Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"served"), true);
                    }
                }
            });
        }
    });
    (Server { port, ca }, received)
}

#[tokio::test]
async fn http2_streams_refused_unprocessed_are_sent_again_at_most_twice() {
    use std::sync::atomic::Ordering;
    let (server, received) = refusing_h2_server(2).await;
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", server.port);
    let client = UpstreamClient::new(Duration::from_secs(5), Egress::default().resolver(), trusting(Some(&server.ca)));
    let response = client.send(get(&url)).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "served");
    assert_eq!(received.load(Ordering::SeqCst), 3, "two refusals, then served");

    let (server, received) = refusing_h2_server(usize::MAX).await;
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", server.port);
    let client = UpstreamClient::new(Duration::from_secs(5), Egress::default().resolver(), trusting(Some(&server.ca)));
    let error = client.send(get(&url)).await.unwrap_err();
    assert!(matches!(error, SendError::Failed(_)), "{error:?}");
    assert_eq!(received.load(Ordering::SeqCst), 3, "the first send and two more, no further");
}
