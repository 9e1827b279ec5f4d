//! Budget state: each budget's spend in its current period, recomputed every `GATEWAY_BUDGET_STATE_INTERVAL_MS`
//! and soon after an ingestion stored new events, published on a `watch` channel that every subscription stream
//! forwards to its data plane (see `proto/README.md`, "Spend").
//!
//! The sums are exact: every budget period is made of whole UTC days and the daily roll-ups are updated in the
//! same transaction as the events they sum.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use gateway_proto::v1;
use policy_engine::budget_period::{midnight, period_days};
use policy_engine::config::{BudgetPeriod, BudgetScope, BudgetSpec, ConfigSet};
use rust_decimal::Decimal;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::store::spend::BudgetWindow;
use crate::store::{Store, StoreError};

pub(crate) type BudgetStateRx = watch::Receiver<Option<Arc<v1::BudgetState>>>;

/// Coalesce a burst of ingestions into one recomputation.
const COALESCE: Duration = Duration::from_millis(20);

/// The window of `budget`'s period containing `now`.
pub fn window(budget: &BudgetSpec, now: DateTime<Utc>) -> BudgetWindow {
    let (start_day, end_day) = period_days(budget.period, now.date_naive());
    let (scope, value) = match &budget.scope {
        BudgetScope::Key { key } => ("key", key.clone()),
        BudgetScope::Team { team } => ("team", team.clone()),
        BudgetScope::Model { model } => ("model", model.clone()),
        BudgetScope::Global => ("global", String::new()),
    };
    BudgetWindow { name: budget.name.clone(), scope, value, start_day, end_day }
}

pub(crate) fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Week => "week",
        BudgetPeriod::Month => "month",
        BudgetPeriod::Total => "total",
    }
}

/// Every budget's spend in its current period, at `now`.
pub(crate) async fn compute(store: &Store, now: DateTime<Utc>) -> Result<v1::BudgetState, StoreError> {
    let (head, config) = store.current_config().await?;
    state(store, &config, head.version, now).await
}

async fn state(
    store: &Store,
    config: &ConfigSet,
    version: i64,
    now: DateTime<Utc>,
) -> Result<v1::BudgetState, StoreError> {
    let windows: Vec<BudgetWindow> = config.budgets.values().map(|b| window(b, now)).collect();
    let (spend, ledger_as_of_unix_us) = store.budget_spend(&windows).await?;
    let budgets = config
        .budgets
        .values()
        .zip(&windows)
        .map(|(budget, window)| {
            let total = budget.period == BudgetPeriod::Total;
            v1::BudgetSpend {
                budget: budget.name.clone(),
                period_start_unix: if total { 0 } else { midnight(window.start_day).timestamp() },
                period_end_unix: window.end_day.filter(|_| !total).map_or(0, |d| midnight(d).timestamp()),
                spent_usd: spend.get(&budget.name).copied().unwrap_or(Decimal::ZERO).to_string(),
                limit_usd: budget.limit_usd.to_string(),
                period: period_name(budget.period).to_owned(),
            }
        })
        .collect();
    let as_of_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Ok(v1::BudgetState { as_of_unix_ms, budgets, ledger_as_of_unix_us, config_version: version.max(0) as u64 })
}

/// Recompute every `interval`, and `COALESCE` after `changed` is notified; publish each result.
pub fn spawn(store: Store, interval: Duration, changed: Arc<Notify>, shutdown: CancellationToken) -> BudgetStateRx {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            match compute(&store, Utc::now()).await {
                Ok(state) => {
                    tx.send_replace(Some(Arc::new(state)));
                }
                Err(error) => tracing::warn!(error = %error.detailed(), "computing budget state failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
                () = changed.notified() => tokio::time::sleep(COALESCE).await,
            }
        }
    });
    rx
}
