//! Tests of the `vertex` kind's assertions and requests (`vertex.rs`). The assertion's independent check (PyJWT
//! with `cryptography`) is the contract test's mock token endpoint (`tests/providers/google_mock.py`).

use base64::Engine;
use serde_json::{Value, json};

use super::*;

/// A throwaway RSA key made for these tests only (`openssl genpkey -algorithm RSA`), nobody's credential.
const TEST_KEY: &str = include_str!("vertex_tests_key.pem");

fn account(private_key: &str) -> ServiceAccount {
    let file = json!({"type": "service_account", "client_email": "gateway@project.iam.gserviceaccount.com",
                      "private_key": private_key, "private_key_id": "key-1", "token_uri": "https://oauth2.example/token"});
    ServiceAccount::parse(&file.to_string()).unwrap()
}

fn decoded(segment: &str) -> Value {
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

#[test]
fn the_assertion_is_an_rs256_jwt_with_googles_claims() {
    let jwt = assertion(&account(TEST_KEY), 1_700_000_000).unwrap();
    let segments: Vec<&str> = jwt.split('.').collect();
    assert_eq!(segments.len(), 3);
    assert_eq!(decoded(segments[0]), json!({"alg": "RS256", "typ": "JWT", "kid": "key-1"}));
    assert_eq!(
        decoded(segments[1]),
        json!({"iss": "gateway@project.iam.gserviceaccount.com", "scope": SCOPE, "aud": "https://oauth2.example/token",
               "iat": 1_700_000_000u64, "exp": 1_700_003_600u64})
    );
    let der = PrivatePkcs8KeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        ring::signature::KeyPair::public_key(&key).as_ref().to_vec(),
    );
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segments[2]).unwrap();
    let signed = format!("{}.{}", segments[0], segments[1]);
    public.verify(signed.as_bytes(), &signature).unwrap();
    assert!(public.verify(b"something else", &signature).is_err());
}

#[test]
fn an_unusable_key_is_a_credentials_error_that_quotes_nothing() {
    let broken = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n";
    let error = assertion(&account(broken), 0).unwrap_err();
    assert!(matches!(&error, TokenError::Credentials(m) if m.contains("private_key") && !m.contains("c2VjcmV0")));
}

#[test]
fn requests_name_the_project_location_model_and_method() {
    let backend: BackendSpec = serde_json::from_value(json!({"name": "v", "kind": "vertex",
        "base_url": "https://us-central1-aiplatform.googleapis.com",
        "vertex": {"project": "my-project", "location": "us-central1"}}))
    .unwrap();
    for (stream, method) in [(false, ":generateContent"), (true, ":streamGenerateContent?alt=sse")] {
        let body = json!({"stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let outbound = Vertex
            .request(&Inbound {
                backend: &backend,
                upstream_model: "gemini-2.5-flash",
                endpoint: crate::openai::request::Endpoint::ChatCompletions,
                body: body.as_object().unwrap(),
                omit_usage_option: false,
            })
            .unwrap();
        assert_eq!(
            outbound.url,
            format!(
                "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash{method}"
            )
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&outbound.body).unwrap(),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        );
    }
}
