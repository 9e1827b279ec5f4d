//! Compiling a received snapshot into what serving needs: decoded config, the compiled router, tool-schema
//! validators, the compiled tool policies, the compiled guardrails and the key index. Everything the control plane validated is validated
//! again here with the same engine, so version skew shows up as a NACK instead of a broken data plane.

use std::collections::HashMap;
use std::sync::Arc;

use gateway_proto::convert;
use gateway_proto::v1;
use policy_engine::config::ConfigSet;
use policy_engine::guardrail::GuardrailSet;
use policy_engine::routing::Router;
use policy_engine::tool_policy::ToolPolicies;
use policy_engine::{tool_schema, validate};

/// A snapshot ready to serve. Swapped in whole; requests in flight finish on the one they started with.
pub struct CompiledSnapshot {
    /// The configuration lineage (the control plane's store) `version` counts in; empty for a snapshot from a
    /// control plane that predates lineages.
    pub lineage: String,
    pub version: u64,
    pub content_hash: String,
    pub config: ConfigSet,
    pub router: Router,
    /// Registered tool schemas by tool name; shared with the requests (and streams) that validate against them.
    pub tool_validators: HashMap<String, Arc<jsonschema::Validator>>,
    pub tool_policies: ToolPolicies,
    /// The enabled guardrails, their detectors compiled once here (`docs/guardrails.md`).
    pub guardrails: GuardrailSet,
    /// API keys by the hex SHA-256 of their secret.
    pub keys: HashMap<String, v1::ApiKey>,
}

fn rejection(resource: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> v1::Rejection {
    v1::Rejection { resource: resource.into(), field: field.into(), message: message.into() }
}

/// Compile `snapshot`, or say everything that is wrong with it.
pub fn compile(snapshot: &v1::Snapshot) -> Result<CompiledSnapshot, Vec<v1::Rejection>> {
    let Some(content) = &snapshot.content else {
        return Err(vec![rejection("snapshot", "content", "missing")]);
    };
    if !snapshot.lineage.is_empty() && uuid::Uuid::try_parse(&snapshot.lineage).is_err() {
        return Err(vec![rejection("snapshot", "lineage", format!("{:?} is not a UUID", snapshot.lineage))]);
    }
    let hash = convert::content_hash(content);
    if hash != snapshot.content_hash {
        return Err(vec![rejection(
            "snapshot",
            "content_hash",
            format!("content hashes to {hash}, not {}", snapshot.content_hash),
        )]);
    }
    let config = convert::decode(content).map_err(|errors| errors.into_iter().map(Into::into).collect::<Vec<_>>())?;
    let mut rejections = Vec::new();
    let spec_errors = |kind: &str, name: &str, errors: Vec<validate::SpecError>, out: &mut Vec<v1::Rejection>| {
        out.extend(errors.into_iter().map(|e| rejection(format!("{kind}/{name}"), e.field, e.message)));
    };
    for spec in config.backends.values() {
        if let Err(errors) = validate::backend_settings(spec) {
            spec_errors("backend", &spec.name, errors, &mut rejections);
        }
    }
    for spec in config.route_policies.values() {
        if let Err(errors) = validate::route_limits(spec) {
            spec_errors("route_policy", &spec.name, errors, &mut rejections);
        }
    }
    for spec in config.models.values() {
        if let Err(errors) = validate::model(spec) {
            spec_errors("model", &spec.name, errors, &mut rejections);
        }
    }
    for spec in config.aliases.values() {
        if let Err(errors) = validate::alias(spec) {
            spec_errors("alias", &spec.name, errors, &mut rejections);
        }
    }
    for spec in config.tool_policies.values() {
        if let Err(errors) = validate::tool_policy(spec) {
            spec_errors("tool_policy", &spec.name, errors, &mut rejections);
        }
    }
    for spec in config.guardrails.values() {
        if let Err(errors) = validate::guardrail(spec) {
            spec_errors("guardrail", &spec.name, errors, &mut rejections);
        }
    }
    for spec in config.budgets.values() {
        if let Err(errors) = validate::budget(spec) {
            spec_errors("budget", &spec.name, errors, &mut rejections);
        }
    }
    for error in config.check_integrity() {
        rejections.push(rejection(error.resource, "", error.message));
    }
    let mut tool_validators = HashMap::new();
    for spec in config.tool_schemas.values() {
        match tool_schema::compile(&spec.schema) {
            Ok(validator) => {
                tool_validators.insert(spec.name.clone(), Arc::new(validator));
            }
            Err(error) => rejections.push(rejection(format!("tool_schema/{}", spec.name), "schema", error.to_string())),
        }
    }
    // Route policies are checked by compiling them: the router reports every CEL error with its position.
    let router = match Router::compile(&config) {
        Ok(router) => Some(router),
        Err(errors) => {
            rejections.extend(errors.into_iter().map(|e| rejection(e.resource, e.field, e.error.to_string())));
            None
        }
    };
    let tool_policies = match ToolPolicies::compile(&config) {
        Ok(policies) => Some(policies),
        Err(errors) => {
            rejections.extend(errors.into_iter().map(|e| rejection(e.resource, e.field, e.error.to_string())));
            None
        }
    };
    let guardrails = match GuardrailSet::compile(&config) {
        Ok(guardrails) => Some(guardrails),
        Err(errors) => {
            rejections.extend(errors.into_iter().map(|e| rejection(e.resource, e.field, e.error.to_string())));
            None
        }
    };
    let keys: HashMap<String, v1::ApiKey> =
        content.api_keys.iter().map(|k| (k.secret_sha256.clone(), k.clone())).collect();
    match (router, tool_policies, guardrails) {
        (Some(router), Some(tool_policies), Some(guardrails)) if rejections.is_empty() => Ok(CompiledSnapshot {
            lineage: snapshot.lineage.clone(),
            version: snapshot.version,
            content_hash: snapshot.content_hash.clone(),
            config,
            router,
            tool_validators,
            tool_policies,
            guardrails,
            keys,
        }),
        _ => Err(rejections),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(lineage: &str) -> v1::Snapshot {
        snapshot_of(&ConfigSet::default(), lineage)
    }

    fn snapshot_of(config: &ConfigSet, lineage: &str) -> v1::Snapshot {
        let content = convert::encode(config, vec![], |_| None);
        v1::Snapshot {
            version: 3,
            content_hash: convert::content_hash(&content),
            content: Some(content),
            lineage: lineage.into(),
        }
    }

    #[test]
    fn the_lineage_is_kept_and_must_be_a_uuid_or_empty() {
        let lineage = "0193a7a4-0000-7000-8000-00000000000a";
        let compiled = compile(&snapshot(lineage)).map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!((compiled.lineage.as_str(), compiled.version), (lineage, 3));
        assert!(compile(&snapshot("")).is_ok(), "a control plane that predates lineages");
        let errors = compile(&snapshot("not-a-uuid")).err().unwrap();
        assert_eq!((errors[0].resource.as_str(), errors[0].field.as_str()), ("snapshot", "lineage"));
    }

    /// Settings the admin API refuses are refused again here: a snapshot written behind its back (or by a buggy
    /// control plane) cannot serve zero timeouts, a breaker that never closes, or fifty retries.
    #[test]
    fn out_of_bounds_settings_are_refused_whoever_wrote_them() {
        let mut config = ConfigSet::default();
        let backend = serde_json::json!({"name": "b", "kind": "openai", "base_url": "https://x.example",
            "timeouts": {"connect_ms": 0, "first_byte_ms": 10, "total_ms": 10},
            "circuit_breaker": {"failure_threshold": 0, "open_ms": 1000},
            "health_check": {"interval_ms": 1000, "path": "models"}});
        let backend: policy_engine::config::BackendSpec = serde_json::from_value(backend).unwrap();
        config.backends.insert(backend.name.clone(), backend);
        let policy = serde_json::json!({"name": "p", "when": "true",
            "action": {"type": "route", "alias": "a", "retries": 50}});
        let policy: policy_engine::config::RoutePolicySpec = serde_json::from_value(policy).unwrap();
        config.route_policies.insert(policy.name.clone(), policy);
        let errors = compile(&snapshot_of(&config, "")).err().unwrap();
        let found: Vec<(&str, &str)> = errors.iter().map(|e| (e.resource.as_str(), e.field.as_str())).collect();
        for expected in [
            ("backend/b", "timeouts"),
            ("backend/b", "circuit_breaker.failure_threshold"),
            ("backend/b", "health_check.path"),
            ("route_policy/p", "action.retries"),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
    }
}
