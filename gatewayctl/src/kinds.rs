//! The configuration kinds `apply` manages: their document names, API collections, dependency order, and the
//! canonical form both sides of a comparison are brought to (the engine's own types, so defaults and spellings
//! compare equal).

use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::config::*;
use policy_engine::validate::{self, SpecError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The kinds in dependency order: a kind refers only to kinds before it. Creates and updates run in this order,
/// deletes in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Kind {
    #[value(alias = "backends")]
    Backend,
    #[value(alias = "models")]
    Model,
    #[value(alias = "aliases")]
    Alias,
    #[value(alias = "tool-schemas")]
    ToolSchema,
    #[value(alias = "tool-policies")]
    ToolPolicy,
    #[value(alias = "route-policies")]
    RoutePolicy,
    #[value(alias = "budgets")]
    Budget,
    #[value(alias = "guardrails")]
    Guardrail,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Backend,
        Kind::Model,
        Kind::Alias,
        Kind::ToolSchema,
        Kind::ToolPolicy,
        Kind::RoutePolicy,
        Kind::Budget,
        Kind::Guardrail,
    ];

    /// The `kind:` of a document.
    pub fn document_name(self) -> &'static str {
        match self {
            Kind::Backend => "Backend",
            Kind::Model => "Model",
            Kind::Alias => "Alias",
            Kind::ToolSchema => "ToolSchema",
            Kind::ToolPolicy => "ToolPolicy",
            Kind::RoutePolicy => "RoutePolicy",
            Kind::Budget => "Budget",
            Kind::Guardrail => "Guardrail",
        }
    }

    pub fn from_document_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.document_name() == name)
    }

    /// The admin API's collection under `/admin/v1/`.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Backend => "backends",
            Kind::Model => "models",
            Kind::Alias => "aliases",
            Kind::ToolSchema => "tool-schemas",
            Kind::ToolPolicy => "tool-policies",
            Kind::RoutePolicy => "route-policies",
            Kind::Budget => "budgets",
            Kind::Guardrail => "guardrails",
        }
    }

    /// The spec in canonical form: parsed with the engine's type (unknown fields refused, defaults filled in) and
    /// written back. Errors name the field path.
    pub fn canonical(self, spec: Value) -> Result<Value, String> {
        match self {
            Kind::Backend => {
                let mut backend: BackendSpec = parse(spec)?;
                // The control plane stores the normalised URL; an empty allowlist normalises without judging the
                // host (the server still checks it against its own allowlist).
                if let Ok(normalized) = BaseUrlPolicy::default().normalize(&backend.base_url) {
                    backend.base_url = normalized;
                }
                to_value(&backend)
            }
            Kind::Model => round_trip::<ModelSpec>(spec),
            Kind::Alias => round_trip::<AliasSpec>(spec),
            Kind::ToolSchema => round_trip::<ToolSchemaSpec>(spec),
            Kind::ToolPolicy => round_trip::<ToolPolicySpec>(spec),
            Kind::RoutePolicy => round_trip::<RoutePolicySpec>(spec),
            Kind::Budget => round_trip::<BudgetSpec>(spec),
            Kind::Guardrail => round_trip::<GuardrailSpec>(spec),
        }
    }
}

fn parse<T: DeserializeOwned>(spec: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec).map_err(|error| {
        let path = error.path().to_string();
        if path == "." { error.inner().to_string() } else { format!("{path}: {}", error.inner()) }
    })
}

fn to_value<T: Serialize>(spec: &T) -> Result<Value, String> {
    serde_json::to_value(spec).map_err(|e| e.to_string())
}

fn round_trip<T: DeserializeOwned + Serialize>(spec: Value) -> Result<Value, String> {
    to_value(&parse::<T>(spec)?)
}

/// The engine's per-resource checks, the ones the control plane runs at write (a backend's URL excepted: that
/// depends on the server's allowlist). Each error names its field.
pub fn check(kind: Kind, spec: &Value) -> Result<(), Vec<SpecError>> {
    let invalid = |message: String| vec![SpecError { field: String::new(), message }];
    let spec = spec.clone();
    match kind {
        Kind::Backend => validate::backend_settings(&parse(spec).map_err(invalid)?),
        Kind::Model => validate::model(&parse(spec).map_err(invalid)?),
        Kind::Alias => validate::alias(&parse(spec).map_err(invalid)?),
        Kind::ToolSchema => validate::tool_schema(&parse(spec).map_err(invalid)?),
        Kind::ToolPolicy => validate::tool_policy(&parse(spec).map_err(invalid)?),
        Kind::RoutePolicy => validate::route_policy(&parse(spec).map_err(invalid)?),
        Kind::Budget => validate::budget(&parse(spec).map_err(invalid)?),
        Kind::Guardrail => validate::guardrail(&parse(spec).map_err(invalid)?),
    }
}

/// A server read (a view) made into a spec: without the read-only `meta` and a budget's `status`.
pub fn spec_of_view(mut view: Value) -> Value {
    if let Some(object) = view.as_object_mut() {
        object.remove("meta");
        object.remove("status");
    }
    view
}

/// The resource's name in a canonical spec.
pub fn name_of(spec: &Value) -> Option<&str> {
    spec.get("name").and_then(Value::as_str)
}

/// Load every document's spec into one `ConfigSet`, as the data plane would hold it.
pub fn config_set(resources: &[(Kind, Value)]) -> Result<ConfigSet, String> {
    let mut config = ConfigSet::default();
    for (kind, spec) in resources {
        let spec = spec.clone();
        match kind {
            Kind::Backend => insert(&mut config.backends, parse::<BackendSpec>(spec)?, |s| &s.name),
            Kind::Model => insert(&mut config.models, parse::<ModelSpec>(spec)?, |s| &s.name),
            Kind::Alias => insert(&mut config.aliases, parse::<AliasSpec>(spec)?, |s| &s.name),
            Kind::ToolSchema => insert(&mut config.tool_schemas, parse::<ToolSchemaSpec>(spec)?, |s| &s.name),
            Kind::ToolPolicy => insert(&mut config.tool_policies, parse::<ToolPolicySpec>(spec)?, |s| &s.name),
            Kind::RoutePolicy => insert(&mut config.route_policies, parse::<RoutePolicySpec>(spec)?, |s| &s.name),
            Kind::Budget => insert(&mut config.budgets, parse::<BudgetSpec>(spec)?, |s| &s.name),
            Kind::Guardrail => insert(&mut config.guardrails, parse::<GuardrailSpec>(spec)?, |s| &s.name),
        }
    }
    Ok(config)
}

fn insert<T>(map: &mut std::collections::BTreeMap<String, T>, spec: T, name: impl Fn(&T) -> &String) {
    map.insert(name(&spec).clone(), spec);
}
