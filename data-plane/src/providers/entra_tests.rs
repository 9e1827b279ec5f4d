//! Tests of Entra ID's token request (`entra.rs`); the exchange itself runs end to end in `tests/tests/e2e/azure.rs`.

use super::*;

fn backend(entra: serde_json::Value) -> BackendSpec {
    serde_json::from_value(serde_json::json!({
        "name": "azure", "kind": "azure_openai", "base_url": "https://contoso.openai.azure.com",
        "azure": {"api_version": "2024-10-21", "entra": entra},
    }))
    .expect("a backend")
}

#[test]
fn the_grant_names_the_client_its_secret_and_one_scope_at_the_tenants_endpoint() {
    let spec = backend(serde_json::json!({"tenant_id": "contoso.onmicrosoft.com", "client_id": "app-1"}));
    let request = token_request(settings(&spec).expect("entra settings"), "s3cret");
    assert_eq!(request.url, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
    let form: Vec<(&str, &str)> = request.form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        form,
        [
            ("grant_type", "client_credentials"),
            ("client_id", "app-1"),
            ("client_secret", "s3cret"),
            ("scope", "https://cognitiveservices.azure.com/.default"),
        ]
    );
}

#[test]
fn a_changed_client_secret_or_scope_gets_a_token_of_its_own() {
    let spec = backend(serde_json::json!({"tenant_id": "t", "client_id": "app-1"}));
    let key = |settings: &[&str], secret: &str| oauth::cache_key(&spec, settings, secret);
    let base = key(&["https://login/t", "app-1", "scope"], "s3cret");
    assert_ne!(base, key(&["https://login/t", "app-1", "scope"], "rotated"));
    assert_ne!(base, key(&["https://login/t", "app-1", "other-scope"], "s3cret"));
    // Parts are length-prefixed: moving a character between two parts is another key.
    assert_ne!(key(&["ab", "c"], "s"), key(&["a", "bc"], "s"));
    assert!(base.starts_with("azure/") && !base.contains("s3cret"));
}

#[test]
fn only_backends_with_entra_settings_compute_credentials_per_request() {
    use crate::providers::Provider;
    let with = backend(serde_json::json!({"tenant_id": "t", "client_id": "c"}));
    let mut without = with.clone();
    without.azure.as_mut().expect("azure settings").entra = None;
    let azure = crate::providers::openai::AzureOpenAi;
    assert!(azure.per_request_credentials(&with));
    assert!(!azure.per_request_credentials(&without));
}
