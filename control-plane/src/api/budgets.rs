//! `GET /admin/v1/budgets/{name}`: the budget's spec and `meta`, plus a read-only `status` with the spend of its
//! current period (the rest of the budget CRUD is the generic resource handlers').

use axum::Json;
use axum::extract::State;
use axum::http::HeaderName;
use chrono::{DateTime, Utc};
use policy_engine::budget_period::midnight;
use policy_engine::config::{BudgetAction, BudgetPeriod, BudgetSpec};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::extract::{ApiPath, etag};
use crate::auth::{Action, Authorized, may};
use crate::distribution::budgets::{period_name, window};
use crate::error::ApiError;

/// A budget's current period and its spend so far (every ingested event; data planes add what they have not
/// reported yet).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BudgetStatus {
    /// day | week | month | total
    pub period: &'static str,
    /// Inclusive, UTC; absent for `total`.
    pub period_start: Option<DateTime<Utc>>,
    /// Exclusive, UTC: the period resets exactly then; absent for `total`.
    pub period_end: Option<DateTime<Utc>>,
    /// The budget's limit in USD.
    #[schema(value_type = String)]
    pub limit_usd: Decimal,
    /// Spent in the current period, in USD.
    #[schema(value_type = String)]
    pub spent_usd: Decimal,
    /// `limit_usd - spent_usd`, never below zero.
    #[schema(value_type = String)]
    pub remaining_usd: Decimal,
    /// `spent_usd >= limit_usd`: a `block` budget refuses requests (429 `budget_exceeded`).
    pub exceeded: bool,
    /// `limit_usd * soft_threshold`, when the budget has one.
    #[schema(value_type = Option<String>)]
    pub soft_threshold_usd: Option<Decimal>,
    /// `spent_usd >= soft_threshold_usd`: the alert threshold is crossed.
    pub soft_threshold_reached: bool,
    /// block | alert
    pub action: &'static str,
    /// When the spend was read.
    pub as_of: DateTime<Utc>,
}

pub async fn read(
    State(state): State<AppState>,
    principal: Authorized<may::ReadConfig>,
    ApiPath(name): ApiPath,
) -> Result<([(HeaderName, String); 1], Json<Value>), ApiError> {
    principal.require(Action::ReadSpend)?;
    let stored = state.store.get::<BudgetSpec>(&name).await?;
    let now = Utc::now();
    let status = status(&state, &stored.spec, now).await?;
    let mut view = stored.view();
    if let Some(object) = view.as_object_mut() {
        object.insert("status".to_owned(), serde_json::to_value(status).unwrap_or(Value::Null));
    }
    Ok((etag(stored.revision), Json(view)))
}

async fn status(state: &AppState, spec: &BudgetSpec, now: DateTime<Utc>) -> Result<BudgetStatus, ApiError> {
    let window = window(spec, now);
    let (spend, _) = state.store.budget_spend(std::slice::from_ref(&window)).await?;
    let spent = spend.get(&spec.name).copied().unwrap_or(Decimal::ZERO);
    let total = spec.period == BudgetPeriod::Total;
    let soft = spec.soft_threshold.map(|t| (spec.limit_usd * t).normalize());
    Ok(BudgetStatus {
        period: period_name(spec.period),
        period_start: (!total).then(|| midnight(window.start_day)),
        period_end: window.end_day.filter(|_| !total).map(midnight),
        limit_usd: spec.limit_usd,
        spent_usd: spent,
        remaining_usd: (spec.limit_usd - spent).max(Decimal::ZERO).normalize(),
        exceeded: spent >= spec.limit_usd,
        soft_threshold_usd: soft,
        soft_threshold_reached: soft.is_some_and(|s| spent >= s),
        action: match spec.action {
            BudgetAction::Block => "block",
            BudgetAction::Alert => "alert",
        },
        as_of: now,
    })
}
