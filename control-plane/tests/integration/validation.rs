//! Every write-time validation error, with its message. One `check` per case.

use axum::http::StatusCode;
use control_plane::store::resources::WriteContext;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::secret_ref::SecretEnvPolicy;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::*;

async fn check(app: &TestApp, collection: &str, body: Value, status: StatusCode, code: &str, message: &str) {
    let reply = app.call("POST", &format!("/admin/v1/{collection}"), Some(body)).await;
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.code(), code, "{}", reply.text);
    assert_eq!(reply.error_message(), message);
}

fn policy(when: &str, action: Value) -> Value {
    json!({"name": "p", "when": when, "action": action})
}

#[sqlx::test(migrations = "../migrations")]
async fn cel_errors_name_the_problem_and_its_position(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let bad = StatusCode::BAD_REQUEST;
    let deny = json!({"type": "deny", "message": "no"});
    check(&app, "route-policies", policy("request.modle == 'x'", deny.clone()), bad, "invalid_spec",
        "route_policy \"p\" is invalid: when: CEL 'request' has no field 'modle'; its fields are model, endpoint, stream, prompt_tokens, max_tokens, tools, metadata, headers (at line 1, column 9)").await;
    check(&app, "route-policies", policy("user.team == 'x'", deny.clone()), bad, "invalid_spec",
        "route_policy \"p\" is invalid: when: CEL undeclared variable 'user'; declared variables are request, key, now (at line 1, column 1)").await;
    check(&app, "route-policies", policy("request.model == ", deny.clone()), bad, "invalid_spec",
        "route_policy \"p\" is invalid: when: CEL Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (at line 1, column 18)").await;
    check(&app, "route-policies", policy("true", json!({"type": "constrain", "require": "backend.zone == 'eu'"})), bad, "invalid_spec",
        "route_policy \"p\" is invalid: action.require: CEL 'backend' has no field 'zone'; its fields are name, kind, region, tags (at line 1, column 9)").await;
    check(&app, "route-policies", policy("backend.region == 'eu'", deny.clone()), bad, "invalid_spec",
        "route_policy \"p\" is invalid: when: CEL 'backend' is only available in a constraint's `require`, not in `when` (at line 1, column 1)").await;
    check(&app, "tool-policies", json!({"name": "t", "when": "key.group == 'x'"}), bad, "invalid_spec",
        "tool_policy \"t\" is invalid: when: CEL 'key' has no field 'group'; its fields are id, name, team, tags (at line 1, column 5)").await;
    check(&app, "tool-policies", json!({"name": "t", "when": "request.tools.exists(t, t == 'x')", "allow": ["search", "bad name"], "deny": ["*", "/etc"], "max_retries": 9}), bad, "invalid_spec",
        "tool_policy \"t\" is invalid: allow[1]: invalid name \"bad name\": use 1 to 128 characters from A-Z a-z 0-9 - _ . :, starting with a letter or digit; deny[1]: invalid name \"/etc\": use 1 to 128 characters from A-Z a-z 0-9 - _ . :, starting with a letter or digit; max_retries: at most 5 retries").await;
    check(
        &app,
        "tool-policies",
        json!({"name": "t", "on_invalid": "explode"}),
        bad,
        "invalid_body",
        "on_invalid: unknown variant `explode`, expected one of `reject`, `retry`, `annotate`",
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn json_schemas_must_pass_their_meta_schema(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let bad = StatusCode::BAD_REQUEST;
    check(&app, "tool-schemas", json!({"name": "t", "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}), bad, "invalid_spec",
        "tool_schema \"t\" is invalid: schema: does not conform to the JSON Schema meta-schema at /properties/a/type: \"strng\" is not valid under any of the schemas listed in the 'anyOf' keyword").await;
    check(&app, "tool-schemas", json!({"name": "t", "schema": {"type": "object", "required": "city"}}), bad, "invalid_spec",
        "tool_schema \"t\" is invalid: schema: does not conform to the JSON Schema meta-schema at /required: \"city\" is not of type \"array\"").await;
    check(
        &app,
        "tool-schemas",
        json!({"name": "t", "schema": "object"}),
        bad,
        "invalid_spec",
        "tool_schema \"t\" is invalid: schema: a tool schema must be a JSON object or boolean, not a string",
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn base_urls_must_be_http_and_allowed(pool: PgPool) {
    let context = WriteContext {
        base_urls: BaseUrlPolicy::from_list("api.openai.com,*.openai.azure.com,127.0.0.1").unwrap(),
        secret_env: SecretEnvPolicy::default(),
        sealer: None,
        bootstrap_from_env: true,
    };
    let app = TestApp::with(pool, context, 64 * 1024).await;
    let bad = StatusCode::BAD_REQUEST;
    let with_url = |url: &str| json!({"name": "b", "kind": "openai", "base_url": url});
    check(
        &app,
        "backends",
        with_url("file:///etc/passwd"),
        bad,
        "invalid_spec",
        "backend \"b\" is invalid: base_url: base_url \"file:///etc/passwd\" must use http or https, not \"file\"",
    )
    .await;
    check(&app, "backends", with_url("http://169.254.169.254/latest/meta-data"), bad, "invalid_spec",
        "backend \"b\" is invalid: base_url: base_url \"http://169.254.169.254/latest/meta-data\" points at 169.254.169.254, a link-local or cloud metadata address, which is always refused").await;
    check(&app, "backends", with_url("http://metadata.google.internal/"), bad, "invalid_spec",
        "backend \"b\" is invalid: base_url: base_url \"http://metadata.google.internal/\" points at metadata.google.internal, a link-local or cloud metadata address, which is always refused").await;
    // Other spellings of the same hosts (finding 5): absolute names, numeric IPv4, IPv4-mapped IPv6.
    for (url, host) in [
        ("http://metadata.google.internal./", "metadata.google.internal"),
        ("http://metadata.goog./", "metadata.goog"),
        ("http://metadata./", "metadata"),
        ("http://INSTANCE-DATA./", "instance-data"),
        ("http://0xA9FEA9FE/", "169.254.169.254"),
        ("http://[::ffff:169.254.169.254]/", "169.254.169.254"),
    ] {
        check(&app, "backends", with_url(url), bad, "invalid_spec", &format!(
            "backend \"b\" is invalid: base_url: base_url \"{url}\" points at {host}, a link-local or cloud metadata address, which is always refused")).await;
    }
    check(&app, "backends", with_url("https://evil.example/v1"), bad, "invalid_spec",
        "backend \"b\" is invalid: base_url: base_url \"https://evil.example/v1\": host evil.example is not in the backend allowlist (api.openai.com,*.openai.azure.com,127.0.0.1)").await;
    let ok = app.create("backends", with_url("https://west.openai.azure.com/")).await;
    assert_eq!(ok["base_url"], json!("https://west.openai.azure.com"), "normalised: no trailing slash");
}

#[sqlx::test(migrations = "../migrations")]
async fn duplicates_and_dangling_references_are_refused(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    check(&app, "backends", backend("b1"), StatusCode::CONFLICT, "already_exists", "backend \"b1\" already exists")
        .await;
    check(
        &app,
        "models",
        model("m1", "nope"),
        StatusCode::BAD_REQUEST,
        "dangling_reference",
        "invalid reference: model/m1: backend \"nope\" does not exist",
    )
    .await;
    app.create("models", model("m1", "b1")).await;
    check(
        &app,
        "aliases",
        alias("a1", &["m1", "ghost"]),
        StatusCode::BAD_REQUEST,
        "dangling_reference",
        "invalid reference: alias/a1: model \"ghost\" does not exist",
    )
    .await;
    check(
        &app,
        "route-policies",
        policy("true", json!({"type": "route", "alias": "ghost"})),
        StatusCode::BAD_REQUEST,
        "dangling_reference",
        "invalid reference: route_policy/p: alias \"ghost\" does not exist",
    )
    .await;
    check(
        &app,
        "budgets",
        json!({"name": "bk", "scope": {"type": "key", "key": "ghost"}, "period": "day", "limit_usd": "1"}),
        StatusCode::BAD_REQUEST,
        "dangling_reference",
        "invalid reference: budget/bk: API key \"ghost\" does not exist",
    )
    .await;
    check(
        &app,
        "keys",
        json!({"name": "k", "allowed_aliases": ["ghost"]}),
        StatusCode::BAD_REQUEST,
        "invalid_spec",
        "api_key \"k\" is invalid: allowed_aliases[0]: alias or model \"ghost\" does not exist",
    )
    .await;

    // Deleting something still referenced is a conflict naming who references it.
    app.create("aliases", alias("a1", &["m1"])).await;
    app.create("keys", json!({"name": "k1", "allowed_aliases": ["a1"]})).await;
    let reply = app.call("DELETE", "/admin/v1/models/m1", None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(
        reply.error_message(),
        "cannot delete model \"m1\": still referenced by alias/a1: model \"m1\" does not exist"
    );
    let reply = app.call("DELETE", "/admin/v1/backends/b1", None).await;
    assert_eq!(
        reply.error_message(),
        "cannot delete backend \"b1\": still referenced by model/m1: backend \"b1\" does not exist"
    );
    let reply = app.call("DELETE", "/admin/v1/aliases/a1", None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.error_message(), "cannot delete alias \"a1\": still referenced by api_key/k1: allows \"a1\"");
}

#[sqlx::test(migrations = "../migrations")]
async fn resource_rules_are_enforced(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let bad = StatusCode::BAD_REQUEST;
    app.create("backends", backend("b1")).await;
    check(&app, "backends", json!({"name": "bad name!", "kind": "openai", "base_url": "https://x.example"}), bad, "invalid_spec",
        "backend \"bad name!\" is invalid: name: invalid name \"bad name!\": use 1 to 128 characters from A-Z a-z 0-9 - _ . :, starting with a letter or digit").await;
    check(
        &app,
        "backends",
        json!({"name": "az", "kind": "azure_openai", "base_url": "https://x.openai.azure.com"}),
        bad,
        "invalid_spec",
        "backend \"az\" is invalid: azure: azure_openai backends need azure.api_version",
    )
    .await;
    check(
        &app,
        "backends",
        json!({"name": "s", "kind": "openai", "base_url": "https://x.example", "secret": {"ref": "vault:x"}}),
        bad,
        "invalid_spec",
        "backend \"s\" is invalid: secret.ref: \"vault:x\" is not a reference of the form env:NAME",
    )
    .await;
    let mut negative = model("neg", "b1");
    negative["pricing"]["input"] = json!("-1");
    check(
        &app,
        "models",
        negative,
        bad,
        "invalid_spec",
        "model \"neg\" is invalid: pricing.input: prices must not be negative",
    )
    .await;
    let mut precise = model("precise", "b1");
    precise["pricing"]["output"] = json!("0.00000000001");
    check(
        &app,
        "models",
        precise,
        bad,
        "invalid_spec",
        "model \"precise\" is invalid: pricing.output: prices carry at most 10 decimal places (USD per million tokens)",
    )
    .await;
    let mut trailing_zeros = model("trailing", "b1");
    trailing_zeros["pricing"]["output"] = json!("2.500000000000000000");
    let reply = app.call("POST", "/admin/v1/models", Some(trailing_zeros)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "only significant places count: {}", reply.body);
    let mut absurd = model("absurd", "b1");
    absurd["pricing"]["input"] = json!("1000001");
    check(
        &app,
        "models",
        absurd,
        bad,
        "invalid_spec",
        "model \"absurd\" is invalid: pricing.input: prices above 1000000 USD per million tokens are not plausible",
    )
    .await;
    let mut unpriced = model("free", "b1");
    unpriced.as_object_mut().unwrap().remove("pricing");
    check(&app, "models", unpriced, bad, "invalid_body", "missing field `pricing`").await;
    let mut embed = model("e", "b1");
    embed["capabilities"] = json!({"embeddings": true});
    check(
        &app,
        "models",
        embed,
        bad,
        "invalid_spec",
        "model \"e\" is invalid: capabilities.embedding_dimensions: embedding models must state their dimensions",
    )
    .await;
    let mut unpriced_images = model("img", "b1");
    unpriced_images["capabilities"] = json!({"images": true});
    check(
        &app,
        "models",
        unpriced_images,
        bad,
        "invalid_spec",
        "model \"img\" is invalid: pricing.per_image: image models must price their images, by size (e.g. \
         {\"1024x1024\": \"0.04\", \"default\": \"0.04\"})",
    )
    .await;
    let mut stray_prices = model("chat-priced", "b1");
    stray_prices["pricing"]["per_image"] = json!({"1024x1024": "0.04"});
    check(
        &app,
        "models",
        stray_prices,
        bad,
        "invalid_spec",
        "model \"chat-priced\" is invalid: pricing.per_image: only image models (capabilities.images) price images",
    )
    .await;
    let mut odd_size = model("img", "b1");
    odd_size["capabilities"] = json!({"images": true});
    odd_size["pricing"]["per_image"] = json!({"big": "0.04"});
    check(
        &app,
        "models",
        odd_size,
        bad,
        "invalid_spec",
        "model \"img\" is invalid: pricing.per_image: \"big\" is not a size (`1024x1024`, `auto`, `default`), \
         optionally after a quality (`hd/1024x1024`)",
    )
    .await;
    check(
        &app,
        "aliases",
        json!({"name": "empty", "candidates": []}),
        bad,
        "invalid_spec",
        "alias \"empty\" is invalid: candidates: at least one candidate is required",
    )
    .await;
    check(
        &app,
        "route-policies",
        policy("true", json!({"type": "route"})),
        bad,
        "invalid_spec",
        "route_policy \"p\" is invalid: action: a route names exactly one of `alias` or `candidates`",
    )
    .await;
    check(
        &app,
        "budgets",
        json!({"name": "b", "scope": {"type": "global"}, "period": "month", "limit_usd": "0"}),
        bad,
        "invalid_spec",
        "budget \"b\" is invalid: limit_usd: must be greater than zero",
    )
    .await;
    check(
        &app,
        "budgets",
        json!({"name": "b", "scope": {"type": "global"}, "period": "fortnight", "limit_usd": "1"}),
        bad,
        "invalid_body",
        "period: unknown variant `fortnight`, expected one of `day`, `week`, `month`, `total`",
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn pinned_embedding_dimensions_never_change(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let embedding = |name: &str, dims: u32| {
        json!({"name": name, "backend": "b1", "upstream_model": "e",
               "capabilities": {"embeddings": true, "embedding_dimensions": dims},
               "pricing": {"input": "0.02", "output": "0"}})
    };
    app.create("models", embedding("e1536", 1536)).await;
    app.create("models", embedding("e3072", 3072)).await;
    app.create("aliases", json!({"name": "corpus", "pinned_dimensions": 1536, "candidates": [{"model": "e1536"}]}))
        .await;
    let reply = app
        .call(
            "PUT",
            "/admin/v1/aliases/corpus",
            Some(json!({"pinned_dimensions": 1536, "candidates": [{"model": "e3072"}]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_message(),
        "invalid reference: alias/corpus: model \"e3072\" produces 3072 dimensions but the alias is pinned to 1536 embedding dimensions"
    );
    let reply = app
        .call(
            "PUT",
            "/admin/v1/aliases/corpus",
            Some(json!({"pinned_dimensions": 3072, "candidates": [{"model": "e3072"}]})),
        )
        .await;
    assert_eq!(
        reply.error_message(),
        "alias \"corpus\" is invalid: pinned_dimensions: is pinned to 1536 and can never change (stored vectors would stop being comparable); create a new alias instead"
    );
    // Changing the model under the alias is refused too.
    let reply = app.call("PUT", "/admin/v1/models/e1536", Some(embedding("e1536", 768))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_message(),
        "invalid reference: alias/corpus: model \"e1536\" produces 768 dimensions but the alias is pinned to 1536 embedding dimensions"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn an_embedding_alias_pinned_to_one_model_takes_no_other(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create("backends", backend("b1")).await;
    let embedding = |name: &str, upstream: &str, made_by: Option<&str>| {
        let mut model = json!({"name": name, "backend": "b1", "upstream_model": upstream,
               "capabilities": {"embeddings": true, "embedding_dimensions": 1536},
               "pricing": {"input": "0.02", "output": "0"}});
        if let Some(made_by) = made_by {
            model["embedding_model"] = json!(made_by);
        }
        model
    };
    app.create("models", embedding("openai-small", "text-embedding-3-small", None)).await;
    app.create("models", embedding("azure-small", "embed-prod", Some("text-embedding-3-small"))).await;
    app.create("models", embedding("ada", "text-embedding-ada-002", None)).await;
    app.create(
        "aliases",
        json!({"name": "corpus", "pinned_dimensions": 1536, "pinned_model": "text-embedding-3-small",
               "candidates": [{"model": "openai-small"}, {"model": "azure-small"}]}),
    )
    .await;
    // Same size, another model: refused, naming both.
    let body = json!({"pinned_dimensions": 1536, "pinned_model": "text-embedding-3-small",
                      "candidates": [{"model": "openai-small"}, {"model": "ada"}]});
    let reply = app.call("PUT", "/admin/v1/aliases/corpus", Some(body)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_message(),
        "invalid reference: alias/corpus: model \"ada\" serves the embedding model \"text-embedding-ada-002\" but the alias is pinned to the embedding model \"text-embedding-3-small\" (vectors of two models are not comparable)"
    );
    // The pin itself never changes.
    let body = json!({"pinned_dimensions": 1536, "pinned_model": "text-embedding-ada-002",
                      "candidates": [{"model": "ada"}]});
    let reply = app.call("PUT", "/admin/v1/aliases/corpus", Some(body)).await;
    assert_eq!(
        reply.error_message(),
        "alias \"corpus\" is invalid: pinned_model: is pinned to \"text-embedding-3-small\" and can never change (stored vectors would stop being comparable); create a new alias instead"
    );
    // Nor can a model under the alias start serving another.
    let reply =
        app.call("PUT", "/admin/v1/models/azure-small", Some(embedding("azure-small", "embed-prod", None))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("model \"azure-small\" serves the embedding model \"embed-prod\""));
    // An embedding model named on a model that serves no embeddings is refused.
    let chat = json!({"name": "chatty", "backend": "b1", "upstream_model": "gpt", "embedding_model": "x",
                      "capabilities": {"chat": true}, "pricing": {"input": "1", "output": "1"}});
    let reply = app.call("POST", "/admin/v1/models", Some(chat)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_message().contains("embedding_model"), "{}", reply.error_message());
}
