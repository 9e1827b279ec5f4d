//! `ConfigSet` ↔ `SnapshotContent`. The control plane encodes, the data plane decodes; both with this code.

use std::str::FromStr;

use policy_engine::config::*;
use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::v1;

/// A part of a snapshot that does not decode into configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource} {field}: {message}")]
pub struct DecodeError {
    pub resource: String,
    pub field: String,
    pub message: String,
}

impl From<DecodeError> for v1::Rejection {
    fn from(e: DecodeError) -> Self {
        v1::Rejection { resource: e.resource, field: e.field, message: e.message }
    }
}

/// Hex SHA-256 of the encoded content: equal configurations hash equally because every list is sorted.
pub fn content_hash(content: &v1::SnapshotContent) -> String {
    use prost::Message;
    hex::encode(Sha256::digest(content.encode_to_vec()))
}

fn enum_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

struct Decoder<'a> {
    resource: String,
    errors: &'a mut Vec<DecodeError>,
}

impl Decoder<'_> {
    fn fail(&mut self, field: &str, message: String) {
        self.errors.push(DecodeError { resource: self.resource.clone(), field: field.to_owned(), message });
    }

    fn parse_enum<T: DeserializeOwned + Default>(&mut self, field: &str, raw: &str) -> T {
        match serde_json::from_value(serde_json::Value::String(raw.to_owned())) {
            Ok(value) => value,
            Err(_) => {
                self.fail(field, format!("unknown value {raw:?}"));
                T::default()
            }
        }
    }

    fn decimal(&mut self, field: &str, raw: &str) -> Decimal {
        Decimal::from_str(raw).unwrap_or_else(|_| {
            self.fail(field, format!("{raw:?} is not a decimal"));
            Decimal::ZERO
        })
    }

    fn optional_decimal(&mut self, field: &str, raw: &str) -> Option<Decimal> {
        (!raw.is_empty()).then(|| self.decimal(field, raw))
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn candidates_to(list: &[Candidate]) -> Vec<v1::Candidate> {
    list.iter().map(|c| v1::Candidate { model: c.model.clone(), weight: c.weight }).collect()
}

fn candidates_from(list: &[v1::Candidate]) -> Vec<Candidate> {
    list.iter().map(|c| Candidate { model: c.model.clone(), weight: c.weight }).collect()
}

/// Encode `config` and `api_keys`. `secret` turns a stored secret into what travels: sealed secrets are opened by
/// the caller (the control plane), references pass as they are.
pub fn encode(
    config: &ConfigSet,
    api_keys: Vec<v1::ApiKey>,
    mut secret: impl FnMut(&BackendSpec) -> Option<v1::backend::Secret>,
) -> v1::SnapshotContent {
    let backends = config
        .backends
        .values()
        .map(|b| v1::Backend {
            name: b.name.clone(),
            kind: enum_name(&b.kind),
            base_url: b.base_url.clone(),
            auth: Some(match &b.auth {
                BackendAuth::Bearer => v1::backend::Auth::Bearer(v1::Empty {}),
                BackendAuth::Header { header } => v1::backend::Auth::Header(header.clone()),
                BackendAuth::None => v1::backend::Auth::NoAuth(v1::Empty {}),
            }),
            secret: secret(b),
            region: b.region.clone().unwrap_or_default(),
            tags: b.tags.clone(),
            connect_timeout_ms: b.timeouts.connect_ms,
            first_byte_timeout_ms: b.timeouts.first_byte_ms,
            total_timeout_ms: b.timeouts.total_ms,
            rate_limit_rps: b.rate_limit.and_then(|r| r.rps),
            rate_limit_rpm: b.rate_limit.and_then(|r| r.rpm),
            rate_limit_tpm: b.rate_limit.and_then(|r| r.tpm),
            breaker_failure_threshold: b.circuit_breaker.map(|c| c.failure_threshold),
            breaker_open_ms: b.circuit_breaker.map(|c| c.open_ms),
            health_check_interval_ms: b.health_check.as_ref().map(|h| h.interval_ms),
            health_check_path: b.health_check.as_ref().map(|h| h.path.clone()).unwrap_or_default(),
            azure_api_version: b.azure.as_ref().map(|a| a.api_version.clone()).unwrap_or_default(),
            aws_region: b.aws.as_ref().map(|a| a.region.clone()).unwrap_or_default(),
            vertex_project: b.vertex.as_ref().map(|v| v.project.clone()).unwrap_or_default(),
            vertex_location: b.vertex.as_ref().map(|v| v.location.clone()).unwrap_or_default(),
            azure_entra: b.azure.as_ref().and_then(|a| a.entra.as_ref()).map(|e| v1::EntraSignIn {
                tenant_id: e.tenant_id.clone(),
                client_id: e.client_id.clone(),
                token_url: e.token_url.clone().unwrap_or_default(),
                scope: e.scope.clone().unwrap_or_default(),
            }),
            breaker_max_open_ms: b.circuit_breaker.and_then(|c| c.max_open_ms),
            breaker_error_rate: b.circuit_breaker.and_then(|c| c.error_rate).map(|t| v1::BreakerTrip {
                limit: u64::from(t.percent),
                window_ms: t.window_ms,
                min_requests: t.min_requests,
            }),
            breaker_latency: b.circuit_breaker.and_then(|c| c.latency).map(|t| v1::BreakerTrip {
                limit: t.p99_ms,
                window_ms: t.window_ms,
                min_requests: t.min_requests,
            }),
            breaker_per_model: b.circuit_breaker.is_some_and(|c| c.per_model),
            health_check_timeout_ms: b.health_check.as_ref().map(|h| h.timeout_ms),
            health_check_failure_threshold: b.health_check.as_ref().map(|h| h.failure_threshold),
        })
        .collect();
    let models = config
        .models
        .values()
        .map(|m| v1::Model {
            name: m.name.clone(),
            backend: m.backend.clone(),
            upstream_model: m.upstream_model.clone(),
            chat: m.capabilities.chat,
            completions: m.capabilities.completions,
            embeddings: m.capabilities.embeddings,
            tools: m.capabilities.tools,
            json_mode: m.capabilities.json_mode,
            vision: m.capabilities.vision,
            context_window: m.capabilities.context_window,
            embedding_dimensions: m.capabilities.embedding_dimensions,
            price_input: m.pricing.input.to_string(),
            price_cached_input: m.pricing.cached_input.map(|d| d.to_string()).unwrap_or_default(),
            price_output: m.pricing.output.to_string(),
            price_cache_write: m.pricing.cache_write.map(|d| d.to_string()).unwrap_or_default(),
            images: m.capabilities.images,
            price_per_image: m.pricing.per_image.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            embedding_model: m.embedding_model.clone().unwrap_or_default(),
        })
        .collect();
    let aliases = config
        .aliases
        .values()
        .map(|a| v1::Alias {
            name: a.name.clone(),
            description: a.description.clone().unwrap_or_default(),
            strategy: enum_name(&a.strategy),
            candidates: candidates_to(&a.candidates),
            pinned_dimensions: a.pinned_dimensions,
            pinned_model: a.pinned_model.clone().unwrap_or_default(),
        })
        .collect();
    let route_policies = config
        .route_policies
        .values()
        .map(|p| v1::RoutePolicy {
            name: p.name.clone(),
            description: p.description.clone().unwrap_or_default(),
            priority: p.priority,
            enabled: p.enabled,
            when: p.when.clone(),
            action: Some(match &p.action {
                PolicyAction::Route { alias, candidates, strategy, retries, timeout_ms, require } => {
                    v1::route_policy::Action::Route(v1::Route {
                        alias: alias.clone().unwrap_or_default(),
                        candidates: candidates.as_deref().map(candidates_to).unwrap_or_default(),
                        strategy: strategy.as_ref().map(enum_name).unwrap_or_default(),
                        retries: *retries,
                        timeout_ms: *timeout_ms,
                        require: require.clone().unwrap_or_default(),
                    })
                }
                PolicyAction::Deny { message } => v1::route_policy::Action::Deny(v1::Deny { message: message.clone() }),
                PolicyAction::Constrain { require } => {
                    v1::route_policy::Action::Constrain(v1::Constrain { require: require.clone() })
                }
            }),
        })
        .collect();
    let tool_schemas = config
        .tool_schemas
        .values()
        .map(|t| v1::ToolSchema {
            name: t.name.clone(),
            description: t.description.clone().unwrap_or_default(),
            schema_json: t.schema.to_string(),
            revision: 0,
        })
        .collect();
    let tool_policies = config
        .tool_policies
        .values()
        .map(|t| v1::ToolPolicy {
            name: t.name.clone(),
            priority: t.priority,
            when: t.when.clone(),
            allow: t.allow.clone(),
            deny: t.deny.clone(),
            mode: enum_name(&t.mode),
            on_invalid: enum_name(&t.on_invalid),
            max_retries: t.max_retries,
        })
        .collect();
    let budgets = config
        .budgets
        .values()
        .map(|b| v1::Budget {
            name: b.name.clone(),
            scope: Some(match &b.scope {
                BudgetScope::Key { key } => v1::budget::Scope::Key(key.clone()),
                BudgetScope::Team { team } => v1::budget::Scope::Team(team.clone()),
                BudgetScope::Model { model } => v1::budget::Scope::Model(model.clone()),
                BudgetScope::Global => v1::budget::Scope::Global(v1::Empty {}),
            }),
            period: enum_name(&b.period),
            limit_usd: b.limit_usd.to_string(),
            action: enum_name(&b.action),
            soft_threshold: b.soft_threshold.map(|d| d.to_string()).unwrap_or_default(),
        })
        .collect();
    let guardrails = config
        .guardrails
        .values()
        .map(|g| v1::Guardrail {
            name: g.name.clone(),
            description: g.description.clone().unwrap_or_default(),
            enabled: g.enabled,
            when: g.when.clone(),
            side: enum_name(&g.side),
            action: enum_name(&g.action),
            detectors_json: g.detectors.iter().map(|d| serde_json::to_string(d).unwrap_or_default()).collect(),
            stream_window_chars: g.stream_window_chars,
        })
        .collect();
    let mut api_keys = api_keys;
    api_keys.sort_by(|a, b| a.name.cmp(&b.name));
    v1::SnapshotContent {
        backends,
        models,
        aliases,
        route_policies,
        tool_schemas,
        tool_policies,
        budgets,
        api_keys,
        guardrails,
    }
}

/// Decode the configuration part of a snapshot, reporting every field that does not decode.
pub fn decode(content: &v1::SnapshotContent) -> Result<ConfigSet, Vec<DecodeError>> {
    let mut errors = Vec::new();
    let mut config = ConfigSet::default();
    for b in &content.backends {
        let mut d = Decoder { resource: format!("backend/{}", b.name), errors: &mut errors };
        let spec = BackendSpec {
            name: b.name.clone(),
            kind: match b.kind.as_str() {
                "openai" => BackendKind::Openai,
                "azure_openai" => BackendKind::AzureOpenai,
                "anthropic" => BackendKind::Anthropic,
                "bedrock" => BackendKind::Bedrock,
                "gemini" => BackendKind::Gemini,
                "vertex" => BackendKind::Vertex,
                other => {
                    d.fail("kind", format!("unknown value {other:?}"));
                    BackendKind::Openai
                }
            },
            base_url: b.base_url.clone(),
            auth: match &b.auth {
                Some(v1::backend::Auth::Header(header)) => BackendAuth::Header { header: header.clone() },
                Some(v1::backend::Auth::NoAuth(_)) => BackendAuth::None,
                Some(v1::backend::Auth::Bearer(_)) | None => BackendAuth::Bearer,
            },
            secret: match &b.secret {
                Some(v1::backend::Secret::SecretValue(value)) => Some(SecretSpec::Value(value.clone())),
                Some(v1::backend::Secret::SecretRef(reference)) => Some(SecretSpec::Ref(reference.clone())),
                None => None,
            },
            region: non_empty(&b.region),
            tags: b.tags.clone(),
            timeouts: Timeouts {
                connect_ms: b.connect_timeout_ms,
                first_byte_ms: b.first_byte_timeout_ms,
                total_ms: b.total_timeout_ms,
            },
            rate_limit: (b.rate_limit_rps.is_some() || b.rate_limit_rpm.is_some() || b.rate_limit_tpm.is_some())
                .then_some(ProviderRateLimit { rps: b.rate_limit_rps, rpm: b.rate_limit_rpm, tpm: b.rate_limit_tpm }),
            circuit_breaker: b.breaker_failure_threshold.map(|failure_threshold| CircuitBreaker {
                failure_threshold,
                open_ms: b.breaker_open_ms.unwrap_or_default(),
                max_open_ms: b.breaker_max_open_ms,
                error_rate: b.breaker_error_rate.map(|t| ErrorRateTrip {
                    percent: u32::try_from(t.limit).unwrap_or(u32::MAX),
                    window_ms: t.window_ms,
                    min_requests: t.min_requests,
                }),
                latency: b.breaker_latency.map(|t| LatencyTrip {
                    p99_ms: t.limit,
                    window_ms: t.window_ms,
                    min_requests: t.min_requests,
                }),
                per_model: b.breaker_per_model,
            }),
            health_check: b.health_check_interval_ms.map(|interval_ms| HealthCheck {
                interval_ms,
                path: b.health_check_path.clone(),
                // Absent from a control plane that predates them: their defaults.
                timeout_ms: b.health_check_timeout_ms.unwrap_or(DEFAULT_HEALTH_TIMEOUT_MS),
                failure_threshold: b.health_check_failure_threshold.unwrap_or(1),
            }),
            azure: non_empty(&b.azure_api_version).map(|api_version| AzureSettings {
                api_version,
                entra: b.azure_entra.as_ref().map(|e| EntraSettings {
                    tenant_id: e.tenant_id.clone(),
                    client_id: e.client_id.clone(),
                    token_url: non_empty(&e.token_url),
                    scope: non_empty(&e.scope),
                }),
            }),
            aws: non_empty(&b.aws_region).map(|region| AwsSettings { region }),
            vertex: non_empty(&b.vertex_project)
                .map(|project| VertexSettings { project, location: b.vertex_location.clone() }),
        };
        config.backends.insert(spec.name.clone(), spec);
    }
    for m in &content.models {
        let mut d = Decoder { resource: format!("model/{}", m.name), errors: &mut errors };
        let pricing = Pricing {
            input: d.decimal("price_input", &m.price_input),
            cached_input: d.optional_decimal("price_cached_input", &m.price_cached_input),
            output: d.decimal("price_output", &m.price_output),
            cache_write: d.optional_decimal("price_cache_write", &m.price_cache_write),
            per_image: m
                .price_per_image
                .iter()
                .map(|(key, price)| (key.clone(), d.decimal(&format!("price_per_image.{key}"), price)))
                .collect(),
        };
        let spec = ModelSpec {
            name: m.name.clone(),
            backend: m.backend.clone(),
            upstream_model: m.upstream_model.clone(),
            capabilities: Capabilities {
                chat: m.chat,
                completions: m.completions,
                embeddings: m.embeddings,
                tools: m.tools,
                json_mode: m.json_mode,
                vision: m.vision,
                images: m.images,
                context_window: m.context_window,
                embedding_dimensions: m.embedding_dimensions,
            },
            pricing,
            embedding_model: non_empty(&m.embedding_model),
        };
        config.models.insert(spec.name.clone(), spec);
    }
    for a in &content.aliases {
        let mut d = Decoder { resource: format!("alias/{}", a.name), errors: &mut errors };
        let spec = AliasSpec {
            name: a.name.clone(),
            description: non_empty(&a.description),
            strategy: d.parse_enum("strategy", &a.strategy),
            candidates: candidates_from(&a.candidates),
            pinned_dimensions: a.pinned_dimensions,
            pinned_model: non_empty(&a.pinned_model),
        };
        config.aliases.insert(spec.name.clone(), spec);
    }
    for p in &content.route_policies {
        let mut d = Decoder { resource: format!("route_policy/{}", p.name), errors: &mut errors };
        let action = match &p.action {
            Some(v1::route_policy::Action::Route(r)) => PolicyAction::Route {
                alias: non_empty(&r.alias),
                candidates: (r.alias.is_empty()).then(|| candidates_from(&r.candidates)),
                strategy: (!r.strategy.is_empty()).then(|| d.parse_enum("action.strategy", &r.strategy)),
                retries: r.retries,
                timeout_ms: r.timeout_ms,
                require: non_empty(&r.require),
            },
            Some(v1::route_policy::Action::Deny(deny)) => PolicyAction::Deny { message: deny.message.clone() },
            Some(v1::route_policy::Action::Constrain(c)) => PolicyAction::Constrain { require: c.require.clone() },
            None => {
                d.fail("action", "missing".to_owned());
                PolicyAction::Deny { message: "invalid policy".to_owned() }
            }
        };
        let spec = RoutePolicySpec {
            name: p.name.clone(),
            description: non_empty(&p.description),
            priority: p.priority,
            enabled: p.enabled,
            when: p.when.clone(),
            action,
        };
        config.route_policies.insert(spec.name.clone(), spec);
    }
    for t in &content.tool_schemas {
        let mut d = Decoder { resource: format!("tool_schema/{}", t.name), errors: &mut errors };
        let schema = serde_json::from_str(&t.schema_json).unwrap_or_else(|e| {
            d.fail("schema_json", format!("not JSON: {e}"));
            serde_json::Value::Null
        });
        let spec = ToolSchemaSpec { name: t.name.clone(), description: non_empty(&t.description), schema };
        config.tool_schemas.insert(spec.name.clone(), spec);
    }
    for t in &content.tool_policies {
        let mut d = Decoder { resource: format!("tool_policy/{}", t.name), errors: &mut errors };
        let spec = ToolPolicySpec {
            name: t.name.clone(),
            priority: t.priority,
            when: t.when.clone(),
            allow: t.allow.clone(),
            deny: t.deny.clone(),
            mode: d.parse_enum("mode", &t.mode),
            on_invalid: d.parse_enum("on_invalid", &t.on_invalid),
            max_retries: t.max_retries,
        };
        config.tool_policies.insert(spec.name.clone(), spec);
    }
    for b in &content.budgets {
        let mut d = Decoder { resource: format!("budget/{}", b.name), errors: &mut errors };
        let scope = match &b.scope {
            Some(v1::budget::Scope::Key(key)) => BudgetScope::Key { key: key.clone() },
            Some(v1::budget::Scope::Team(team)) => BudgetScope::Team { team: team.clone() },
            Some(v1::budget::Scope::Model(model)) => BudgetScope::Model { model: model.clone() },
            Some(v1::budget::Scope::Global(_)) => BudgetScope::Global,
            None => {
                d.fail("scope", "missing".to_owned());
                BudgetScope::Global
            }
        };
        let period = match b.period.as_str() {
            "day" => BudgetPeriod::Day,
            "week" => BudgetPeriod::Week,
            "month" => BudgetPeriod::Month,
            "total" => BudgetPeriod::Total,
            other => {
                d.fail("period", format!("unknown value {other:?}"));
                BudgetPeriod::Total
            }
        };
        let spec = BudgetSpec {
            name: b.name.clone(),
            scope,
            period,
            limit_usd: d.decimal("limit_usd", &b.limit_usd),
            action: d.parse_enum("action", &b.action),
            soft_threshold: d.optional_decimal("soft_threshold", &b.soft_threshold),
        };
        config.budgets.insert(spec.name.clone(), spec);
    }
    for g in &content.guardrails {
        let mut d = Decoder { resource: format!("guardrail/{}", g.name), errors: &mut errors };
        let mut detectors = Vec::with_capacity(g.detectors_json.len());
        for (i, json) in g.detectors_json.iter().enumerate() {
            match serde_json::from_str::<DetectorSpec>(json) {
                Ok(detector) => detectors.push(detector),
                Err(e) => d.fail(&format!("detectors_json[{i}]"), format!("not a detector: {e}")),
            }
        }
        let spec = GuardrailSpec {
            name: g.name.clone(),
            description: non_empty(&g.description),
            enabled: g.enabled,
            when: g.when.clone(),
            side: d.parse_enum("side", &g.side),
            action: d.parse_enum("action", &g.action),
            detectors,
            stream_window_chars: g.stream_window_chars,
        };
        config.guardrails.insert(spec.name.clone(), spec);
    }
    if errors.is_empty() { Ok(config) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> ConfigSet {
        let bundle: serde_json::Value =
            serde_json::from_str(include_str!("../../policies/seed/bundle.json")).expect("seed bundle");
        fn section<T: DeserializeOwned>(
            bundle: &serde_json::Value,
            key: &str,
            name: fn(&T) -> String,
        ) -> Vec<(String, T)> {
            bundle[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let spec: T = serde_json::from_value(v.clone()).expect("valid spec");
                    (name(&spec), spec)
                })
                .collect()
        }
        let mut config = ConfigSet {
            backends: section(&bundle, "backends", |b: &BackendSpec| b.name.clone()).into_iter().collect(),
            models: section(&bundle, "models", |m: &ModelSpec| m.name.clone()).into_iter().collect(),
            aliases: section(&bundle, "aliases", |a: &AliasSpec| a.name.clone()).into_iter().collect(),
            route_policies: section(&bundle, "route_policies", |p: &RoutePolicySpec| p.name.clone())
                .into_iter()
                .collect(),
            ..ConfigSet::default()
        };
        config.tool_schemas.insert(
            "get_weather".into(),
            ToolSchemaSpec {
                name: "get_weather".into(),
                description: Some("weather".into()),
                schema: serde_json::json!({"type": "object", "required": ["city"]}),
            },
        );
        config.tool_policies.insert(
            "support".into(),
            ToolPolicySpec {
                name: "support".into(),
                priority: 3,
                when: "key.team == 'support'".into(),
                allow: vec!["get_weather".into()],
                deny: vec![],
                mode: ToolPolicyMode::Audit,
                on_invalid: OnInvalidToolCall::Retry,
                max_retries: 2,
            },
        );
        config.budgets.insert(
            "monthly".into(),
            BudgetSpec {
                name: "monthly".into(),
                scope: BudgetScope::Team { team: "search".into() },
                period: BudgetPeriod::Month,
                limit_usd: Decimal::new(12345, 2),
                action: BudgetAction::Alert,
                soft_threshold: Some(Decimal::new(8, 1)),
            },
        );
        let guardrail: GuardrailSpec = serde_json::from_value(serde_json::json!({
            "name": "pii", "description": "no personal data upstream", "when": "key.team != 'legal'",
            "side": "prompt", "action": "redact", "stream_window_chars": 64,
            "detectors": [{"type": "email"}, {"type": "payment_card"},
                          {"type": "regex", "name": "ticket", "pattern": "PRJ-[0-9]+"},
                          {"type": "terms", "name": "codename", "terms": ["bluebird"], "case_sensitive": true}]
        }))
        .expect("guardrail");
        config.guardrails.insert(guardrail.name.clone(), guardrail);
        let entra: BackendSpec = serde_json::from_value(serde_json::json!({
            "name": "azure-entra", "kind": "azure_openai", "base_url": "https://contoso.openai.azure.com",
            "azure": {"api_version": "2024-10-21", "entra": {"tenant_id": "contoso.onmicrosoft.com",
                "client_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "scope": "https://cognitiveservices.azure.us/.default"}}
        }))
        .expect("backend");
        config.backends.insert(entra.name.clone(), entra);
        config
    }

    fn refs(backend: &BackendSpec) -> Option<v1::backend::Secret> {
        match &backend.secret {
            Some(SecretSpec::Ref(r)) => Some(v1::backend::Secret::SecretRef(r.clone())),
            _ => None,
        }
    }

    #[test]
    fn the_seed_configuration_round_trips() {
        let config = seed();
        let content = encode(&config, vec![], refs);
        let decoded = decode(&content).expect("decodes");
        assert_eq!(decoded, config);
        let again = encode(&decoded, vec![], refs);
        assert_eq!(again, content);
        assert_eq!(content_hash(&again), content_hash(&content), "equal configurations hash equally");
        let mut changed = again.clone();
        changed.models[0].price_output = "0.91".into();
        assert_ne!(content_hash(&changed), content_hash(&content));
    }

    #[test]
    fn unknown_enumerations_are_reported_by_field() {
        let mut content = encode(&seed(), vec![], |_| None);
        content.aliases[0].strategy = "round_robin".into();
        content.models[0].price_input = "cheap".into();
        let errors = decode(&content).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "model/codestral-eu price_input: \"cheap\" is not a decimal",
                "alias/cheap strategy: unknown value \"round_robin\""
            ]
        );
    }
}
