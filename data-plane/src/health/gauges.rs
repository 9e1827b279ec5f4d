//! The health board as Prometheus gauges, set on every change of the board:
//! - `gateway_backend_breaker_state{backend, model, state}`: one series per state (`closed`, `half_open`, `open`),
//!   1 for the state the breaker is in and 0 for the others, so `== 1` selects and a sum over `state` counts;
//! - `gateway_backend_latency_ms{backend, model}`: the observed latency (0: none measured).
//!
//! `model` is empty for a backend tracked as a whole. Labels stay bounded: an entry is exported only if its backend
//! (and model) is in the served snapshot. An entry that leaves the board has all its series set to 0 (the recorder
//! cannot remove a series), so no state reads 1 for a backend no longer tracked.

use std::collections::BTreeSet;
use std::sync::Arc;

use policy_engine::config::ConfigSet;
use tokio_util::sync::CancellationToken;

use super::board::{BackendHealth, BreakerState, HealthBoard};
use crate::control::state::Current;

const STATES: [BreakerState; 3] = [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open];

/// The (backend, model) pairs exported last, to zero those that leave the board.
#[derive(Default)]
pub struct Exported(BTreeSet<(String, String)>);

impl Exported {
    /// Set the gauges from `entries`, those of `config`'s backends and models only; zero the ones exported before
    /// that are gone.
    pub fn update(&mut self, entries: &[BackendHealth], config: &ConfigSet) {
        let mut now = BTreeSet::new();
        for entry in entries {
            let model = entry.model.clone().unwrap_or_default();
            let known = config.backends.contains_key(&entry.backend)
                && (model.is_empty() || config.models.contains_key(&model));
            if !known {
                continue;
            }
            let labels = (entry.backend.clone(), model);
            set(&labels, Some(entry.state), entry.latency_ms.unwrap_or(0.0));
            now.insert(labels);
        }
        for gone in self.0.difference(&now) {
            set(gone, None, 0.0);
        }
        self.0 = now;
    }
}

fn set((backend, model): &(String, String), state: Option<BreakerState>, latency_ms: f64) {
    for candidate in STATES {
        let value = if Some(candidate) == state { 1.0 } else { 0.0 };
        metrics::gauge!("gateway_backend_breaker_state", "backend" => backend.clone(), "model" => model.clone(),
            "state" => candidate.as_str())
        .set(value);
    }
    metrics::gauge!("gateway_backend_latency_ms", "backend" => backend.clone(), "model" => model.clone())
        .set(latency_ms);
}

/// Keep the gauges in step with `board` until `shutdown`.
pub async fn run(board: Arc<HealthBoard>, current: Arc<Current>, shutdown: CancellationToken) {
    let mut changes = board.subscribe();
    let mut exported = Exported::default();
    loop {
        let entries = changes.borrow_and_update().clone();
        let (served, none) = (current.load(), ConfigSet::default());
        exported.update(&entries, served.as_ref().map_or(&none, |s| &s.config));
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use metrics_exporter_prometheus::PrometheusBuilder;
    use serde_json::json;

    use super::*;

    fn entry(backend: &str, model: Option<&str>, state: BreakerState, latency_ms: Option<f64>) -> BackendHealth {
        BackendHealth {
            backend: backend.to_owned(),
            model: model.map(str::to_owned),
            state,
            since: SystemTime::now(),
            reason: None,
            last_check: None,
            latency_ms,
        }
    }

    fn config() -> ConfigSet {
        let mut config = ConfigSet::default();
        for name in ["a", "b"] {
            let backend = serde_json::from_value(json!({"name": name, "kind": "openai",
                "base_url": "https://api.openai.com/v1"}));
            config.backends.insert(name.to_owned(), backend.unwrap());
        }
        let model = serde_json::from_value(json!({"name": "m", "backend": "a", "upstream_model": "m",
            "pricing": {"input": "1", "output": "1"}}));
        config.models.insert("m".to_owned(), model.unwrap());
        config
    }

    /// The rendered exposition's value for one series, found by its exact label set.
    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn one_series_per_state_and_zero_when_gone() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let config = config();
        let mut exported = Exported::default();
        metrics::with_local_recorder(&recorder, || {
            exported.update(
                &[
                    entry("a", None, BreakerState::Open, Some(120.5)),
                    entry("a", Some("m"), BreakerState::HalfOpen, None),
                    entry("b", None, BreakerState::Closed, Some(8.0)),
                    // Not in the snapshot: never a label.
                    entry("unknown", None, BreakerState::Open, Some(1.0)),
                    entry("a", Some("unknown-model"), BreakerState::Open, Some(1.0)),
                ],
                &config,
            );
        });
        let text = handle.render();
        let state = |backend: &str, model: &str, state: &str| {
            value(
                &text,
                &format!(r#"gateway_backend_breaker_state{{backend="{backend}",model="{model}",state="{state}"}}"#),
            )
        };
        assert_eq!(state("a", "", "open").as_deref(), Some("1"));
        assert_eq!(state("a", "", "closed").as_deref(), Some("0"));
        assert_eq!(state("a", "", "half_open").as_deref(), Some("0"));
        assert_eq!(state("a", "m", "half_open").as_deref(), Some("1"));
        assert_eq!(state("b", "", "closed").as_deref(), Some("1"));
        let latency = |backend: &str, model: &str| {
            value(&text, &format!(r#"gateway_backend_latency_ms{{backend="{backend}",model="{model}"}}"#))
        };
        assert_eq!(latency("a", "").as_deref(), Some("120.5"));
        assert_eq!(latency("a", "m").as_deref(), Some("0"));
        assert!(!text.contains("unknown"), "{text}");

        // `a` leaves the board: its series all read 0; `b` moved on.
        metrics::with_local_recorder(&recorder, || {
            exported.update(&[entry("b", None, BreakerState::Open, Some(9.0))], &config);
        });
        let text = handle.render();
        let state = |backend: &str, model: &str, state: &str| {
            value(
                &text,
                &format!(r#"gateway_backend_breaker_state{{backend="{backend}",model="{model}",state="{state}"}}"#),
            )
        };
        for s in ["closed", "half_open", "open"] {
            assert_eq!(state("a", "", s).as_deref(), Some("0"), "{s}");
            assert_eq!(state("a", "m", s).as_deref(), Some("0"), "{s}");
        }
        assert_eq!(state("b", "", "open").as_deref(), Some("1"));
        assert_eq!(state("b", "", "closed").as_deref(), Some("0"));
        assert_eq!(value(&text, r#"gateway_backend_latency_ms{backend="a",model=""}"#).as_deref(), Some("0"));
    }
}
