//! Budget enforcement: what this data plane knows of each budget's spend in its current period, and admission
//! with reservations (semantics and the overspend bound in `docs/spend.md`, "Enforcement").
//!
//! A budget's spend, as seen here, is the sum of four parts, each kept per budget and period:
//! - `confirmed`: the control plane's figure from the latest `BudgetState` (every data plane's ingested spend), for
//!   the period it names; zero once that period has ended and before the state of the next one arrives;
//! - `unacked`: this data plane's events the ledger has not acknowledged yet (buffered, spooled or being sent);
//! - `acked`: acknowledged events the latest state may not include yet (`committed_unix_us >= ledger_as_of`);
//! - `reserved`: the estimated cost of admitted requests still running.
//!
//! A request is admitted to a `block` budget only if that sum plus its own estimate stays within the limit, and the
//! estimate is reserved under the same lock, so concurrent requests cannot all slip under the limit. `alert`
//! budgets and soft thresholds never refuse: they raise a warning (header, log, metric) once per period.
//!
//! While no current budget state is at hand (none received, or the latest older than the [`OutagePolicy`]'s
//! `stale_after`: the control plane is unreachable), the other data planes' spend is invisible. With an outage
//! share below 1, a `block` budget then also requires this data plane's own spend beyond the last confirmed
//! figure (local and reserved, plus the estimate) to stay within that share of what was left: N data planes with
//! a share of 1/N cannot together spend more than was left (`docs/spend.md`, "A control-plane outage").

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use gateway_proto::v1;
use policy_engine::budget_period::period_bounds;
use policy_engine::config::{BudgetAction, BudgetPeriod, BudgetScope, BudgetSpec};
use rust_decimal::Decimal;

use crate::openai::error::{OutageRefusal, Refusal};

/// One budget in one period: `start` is the period's start in Unix seconds (0 for `total`), as the control plane's
/// `BudgetSpend.period_start_unix` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeriodKey {
    pub budget: String,
    pub start: i64,
}

/// What one spend event adds to which budget period.
pub type Contributions = Vec<(PeriodKey, Decimal)>;

/// Who and what a request or an event is, as budget scopes see it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub key_name: &'a str,
    /// Empty: the key has no team.
    pub team: &'a str,
    /// The model name the caller requested.
    pub alias: &'a str,
    /// The gateway model that served (empty before serving).
    pub model: &'a str,
}

/// `budget` counts what `scope` spends: a key by name, a team, a model by the alias requested or the model that
/// served (as the control plane sums them), or everything.
fn matches(budget: &BudgetSpec, scope: &Scope<'_>) -> bool {
    match &budget.scope {
        BudgetScope::Key { key } => key == scope.key_name,
        BudgetScope::Team { team } => !scope.team.is_empty() && team == scope.team,
        BudgetScope::Model { model } => model == scope.alias || (!scope.model.is_empty() && model == scope.model),
        BudgetScope::Global => true,
    }
}

/// The start of `budget`'s period containing `at`, in Unix seconds; 0 for `total`.
pub fn period_start(period: BudgetPeriod, at: DateTime<Utc>) -> i64 {
    match period {
        BudgetPeriod::Total => 0,
        _ => period_bounds(period, at).0.timestamp(),
    }
}

fn period_key(budget: &BudgetSpec, at: DateTime<Utc>) -> PeriodKey {
    PeriodKey { budget: budget.name.clone(), start: period_start(budget.period, at) }
}

/// Which budget periods an event of `scope` at `at` costing `cost` counts against.
pub fn contributions(
    budgets: &BTreeMap<String, BudgetSpec>,
    scope: &Scope<'_>,
    at: DateTime<Utc>,
    cost: Decimal,
) -> Contributions {
    if cost.is_zero() {
        return Vec::new();
    }
    budgets.values().filter(|b| matches(b, scope)).map(|b| (period_key(b, at), cost)).collect()
}

/// A spend event's contributions, from the event itself: what it is, when it happened, what it cost (an event
/// without a cost counts nowhere; the ledger quarantines it).
pub fn event_contributions(budgets: &BTreeMap<String, BudgetSpec>, event: &v1::SpendEvent) -> Contributions {
    let Some(at) = Utc.timestamp_millis_opt(event.occurred_at_unix_ms).single() else { return Vec::new() };
    let cost = event.cost_usd.parse::<Decimal>().unwrap_or_default();
    let scope = Scope { key_name: &event.key_name, team: &event.team, alias: &event.alias, model: &event.model };
    contributions(budgets, &scope, at, cost)
}

/// What a data plane may spend of each `block` budget while it has no current budget state.
#[derive(Debug, Clone, Copy)]
pub struct OutagePolicy {
    /// The share of what was left at the last state (1: all of it, the same rule as with a current state).
    pub share: Decimal,
    /// A state older than this is no longer current.
    pub stale_after: Duration,
}

impl Default for OutagePolicy {
    fn default() -> OutagePolicy {
        OutagePolicy { share: Decimal::ONE, stale_after: Duration::from_secs(5) }
    }
}

/// A request's claim on its budgets: the estimate stays reserved until this is dropped (after the request's
/// actual cost was recorded).
pub struct Reservation {
    ledger: Option<Arc<BudgetLedger>>,
    held: Vec<PeriodKey>,
    amount: Decimal,
}

impl Reservation {
    /// A reservation of nothing (no budget applies).
    pub fn none() -> Reservation {
        Reservation { ledger: None, held: Vec::new(), amount: Decimal::ZERO }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger.take() {
            let mut inner = ledger.lock();
            for key in &self.held {
                subtract(&mut inner.reserved, key, self.amount);
            }
        }
    }
}

/// An admitted request: its reservation, the candidates a model budget excludes, and warnings for the caller.
pub struct Admission {
    pub reservation: Reservation,
    /// Positions (in the routing plan) of candidates whose model budget is exhausted.
    pub excluded: Vec<usize>,
    /// `name: reason` of alert budgets over their limit and budgets past their soft threshold.
    pub warnings: Vec<String>,
}

impl Admission {
    /// No budget applies.
    pub fn unlimited() -> Admission {
        Admission { reservation: Reservation::none(), excluded: Vec::new(), warnings: Vec::new() }
    }
}

/// What admission needs to know of a request.
pub struct AdmissionRequest<'a> {
    pub scope: Scope<'a>,
    /// The gateway model of each candidate, in routing order.
    pub candidate_models: &'a [&'a str],
    /// The request's estimated cost (reserved against every budget it may count against).
    pub estimate: Decimal,
    pub now: DateTime<Utc>,
}

struct Confirmed {
    start: i64,
    spent: Decimal,
}

#[derive(Default)]
struct Inner {
    /// The latest `BudgetState`, by budget name.
    confirmed: HashMap<String, Confirmed>,
    /// Whether any state arrived (until then, acknowledged spend keeps counting locally).
    state_received: bool,
    /// When the latest state was applied (this data plane's clock).
    state_applied_at: Option<DateTime<Utc>>,
    ledger_as_of_us: i64,
    unacked: HashMap<PeriodKey, Decimal>,
    /// Acknowledged spend not known to be in `confirmed`, per ack (its `committed_unix_us`), and its sum.
    acked: VecDeque<(i64, HashMap<PeriodKey, Decimal>)>,
    acked_total: HashMap<PeriodKey, Decimal>,
    reserved: HashMap<PeriodKey, Decimal>,
    /// Warnings already logged and counted this period: (budget period, kind).
    warned: HashSet<(PeriodKey, &'static str)>,
}

/// Most acknowledgements kept apart while waiting for a budget state (older ones merge).
const MAX_ACKED: usize = 1024;

fn add(map: &mut HashMap<PeriodKey, Decimal>, key: &PeriodKey, amount: Decimal) {
    let value = map.entry(key.clone()).or_default();
    *value = value.saturating_add(amount);
}

fn subtract(map: &mut HashMap<PeriodKey, Decimal>, key: &PeriodKey, amount: Decimal) {
    if let Some(value) = map.get_mut(key) {
        *value = value.saturating_sub(amount);
        if *value <= Decimal::ZERO {
            map.remove(key);
        }
    }
}

impl Inner {
    /// The control plane's figure for `budget`'s period at `now` (zero when the state names another period).
    fn confirmed(&self, budget: &BudgetSpec, now: DateTime<Utc>) -> Decimal {
        let start = period_start(budget.period, now);
        self.confirmed.get(&budget.name).filter(|c| c.start == start).map_or(Decimal::ZERO, |c| c.spent)
    }

    /// Whether the latest budget state is current at `now`.
    fn state_is_current(&self, now: DateTime<Utc>, stale_after: Duration) -> bool {
        let stale_after = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
        self.state_applied_at.is_some_and(|at| now.signed_duration_since(at) <= stale_after)
    }

    fn used(&self, budget: &BudgetSpec, now: DateTime<Utc>) -> Decimal {
        let key = period_key(budget, now);
        let confirmed = self.confirmed(budget, now);
        let local = |map: &HashMap<PeriodKey, Decimal>| map.get(&key).copied().unwrap_or_default();
        // Saturating: absurd reservations (a caller's max_tokens) must not overflow, only refuse.
        confirmed
            .saturating_add(local(&self.unacked))
            .saturating_add(local(&self.acked_total))
            .saturating_add(local(&self.reserved))
    }

    /// Whether the latest state includes spend of `key` acknowledged at `committed`: read after the commit, and
    /// naming that budget's figure for that very period (a state of the previous period, computed just before a
    /// boundary, does not include spend of the new one).
    fn includes(&self, committed: i64, key: &PeriodKey) -> bool {
        let as_of = self.ledger_as_of_us;
        // 0: a control plane without the ledger clock; its acknowledged batches count as included.
        self.state_received
            && (as_of == 0 || committed < as_of)
            && self.confirmed.get(&key.budget).is_some_and(|c| c.start == key.start)
    }

    /// Drop acknowledged spend the confirmed figures include, and spend of periods that are over (`current` says a
    /// budget's current period start).
    fn prune_acked(&mut self, current: impl Fn(&PeriodKey) -> Option<i64>) {
        let mut acked = std::mem::take(&mut self.acked);
        for (committed, contributions) in &mut acked {
            contributions.retain(|key, amount| {
                let over = current(key).is_none_or(|start| start != key.start);
                let keep = !over && !self.includes(*committed, key);
                if !keep {
                    subtract(&mut self.acked_total, key, *amount);
                }
                keep
            });
        }
        acked.retain(|(_, contributions)| !contributions.is_empty());
        self.acked = acked;
    }

    /// Log and count a warning once per budget period.
    fn warn_once(&mut self, key: &PeriodKey, kind: &'static str, message: &str) {
        if self.warned.insert((key.clone(), kind)) {
            tracing::warn!(budget = %key.budget, kind, "{message}");
            metrics::counter!("gateway_budget_warnings_total", "budget" => key.budget.clone(), "kind" => kind)
                .increment(1);
        }
    }
}

/// This data plane's view of every budget (see the module documentation).
#[derive(Default)]
pub struct BudgetLedger {
    inner: Mutex<Inner>,
    outage: OutagePolicy,
    /// Woken when budget states resume after none was current: the control plane is back, so spend waiting in
    /// the spool is sent at once rather than after the reporter's backoff.
    resumed: tokio::sync::Notify,
}

impl BudgetLedger {
    pub fn new(outage: OutagePolicy) -> BudgetLedger {
        BudgetLedger { outage, ..BudgetLedger::default() }
    }

    /// Notified when budget states resume after an outage (see the field).
    pub fn resumed(&self) -> &tokio::sync::Notify {
        &self.resumed
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the sums half-updated in a way worse than losing them.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admit a request under every budget it may count against, reserving its estimate; or refuse it.
    pub fn admit(
        self: &Arc<Self>,
        budgets: &BTreeMap<String, BudgetSpec>,
        request: &AdmissionRequest<'_>,
    ) -> Result<Admission, Refusal> {
        let mut inner = self.lock();
        let now = request.now;
        let mut warnings = Vec::new();
        let outage = self.outage;
        let cut_off = outage.share < Decimal::ONE && !inner.state_is_current(now, outage.stale_after);
        let mut check = |inner: &mut Inner, budget: &BudgetSpec| -> Result<(), Refusal> {
            let used = inner.used(budget, now);
            let key = period_key(budget, now);
            tracing::trace!(budget = %budget.name, %used, estimate = %request.estimate, limit = %budget.limit_usd, "budget check");
            let after = used.saturating_add(request.estimate);
            let over = used >= budget.limit_usd || after > budget.limit_usd;
            let refusal = |spent, why| Refusal {
                budget: budget.name.clone(),
                period: budget.period,
                limit: budget.limit_usd,
                spent,
                resets_at: period_bounds(budget.period, now).1.filter(|_| budget.period != BudgetPeriod::Total),
                outage: why,
            };
            if over && budget.action == BudgetAction::Block {
                metrics::counter!("gateway_budget_refusals_total", "budget" => budget.name.clone()).increment(1);
                return Err(refusal(used, None));
            }
            if cut_off && budget.action == BudgetAction::Block {
                // What was left at the last state, and this data plane's part of it.
                let confirmed = inner.confirmed(budget, now);
                let left = budget.limit_usd.saturating_sub(confirmed).max(Decimal::ZERO);
                let allowance = left.checked_mul(outage.share).unwrap_or(left);
                let own = used.saturating_sub(confirmed);
                if own.saturating_add(request.estimate) > allowance {
                    metrics::counter!("gateway_budget_refusals_total", "budget" => budget.name.clone()).increment(1);
                    return Err(refusal(own, Some(OutageRefusal { share: outage.share, left })));
                }
            }
            if over {
                warnings.push(format!("{}: over its limit of {} USD (alert)", budget.name, budget.limit_usd));
                inner.warn_once(&key, "over_limit", "an alert budget is over its limit");
            } else if let Some(threshold) = budget.soft_threshold
                && threshold.checked_mul(budget.limit_usd).is_some_and(|soft| after >= soft)
            {
                warnings.push(format!(
                    "{}: past its soft threshold ({threshold} of {} USD)",
                    budget.name, budget.limit_usd
                ));
                inner.warn_once(&key, "soft_threshold", "a budget passed its soft threshold");
            }
            Ok(())
        };
        let scope = request.scope;
        // Budgets the whole request counts against: its key, team, everything, and the model it asked for.
        let mut held = Vec::new();
        for budget in budgets.values() {
            // Not yet served: a model budget applies to the whole request only when it names the alias asked for.
            if matches(budget, &Scope { model: "", ..scope }) {
                check(&mut inner, budget)?;
                held.push(period_key(budget, now));
            }
        }
        // Budgets of the models that may serve it: an exhausted one removes that candidate only.
        let mut excluded = Vec::new();
        let mut first_refusal = None;
        for (position, model) in request.candidate_models.iter().enumerate() {
            let own = budgets
                .values()
                .filter(|b| matches!(&b.scope, BudgetScope::Model { model: m } if m == model && m != scope.alias));
            for budget in own {
                match check(&mut inner, budget) {
                    Ok(()) => {
                        let key = period_key(budget, now);
                        if !held.contains(&key) {
                            held.push(key);
                        }
                    }
                    Err(refusal) => {
                        excluded.push(position);
                        first_refusal.get_or_insert(refusal);
                        break;
                    }
                }
            }
        }
        if let Some(refusal) = first_refusal.filter(|_| excluded.len() == request.candidate_models.len()) {
            return Err(refusal);
        }
        for key in &held {
            add(&mut inner.reserved, key, request.estimate);
        }
        drop(inner);
        let reservation = Reservation { ledger: Some(self.clone()), held, amount: request.estimate };
        Ok(Admission { reservation, excluded, warnings })
    }

    /// This data plane spent `contributions` (an event not yet acknowledged).
    pub fn record_local(&self, contributions: &Contributions) {
        if contributions.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (key, amount) in contributions {
            add(&mut inner.unacked, key, *amount);
        }
    }

    /// The ledger acknowledged a batch at `committed_unix_us`: each event's contributions, and whether it is stored
    /// (accepted or a duplicate) or was rejected (quarantined, so it counts nowhere).
    pub fn acknowledged<'a>(
        &self,
        committed_unix_us: i64,
        events: impl IntoIterator<Item = (&'a Contributions, bool)>,
    ) {
        let mut inner = self.lock();
        let mut stored: HashMap<PeriodKey, Decimal> = HashMap::new();
        for (contributions, is_stored) in events {
            for (key, amount) in contributions {
                subtract(&mut inner.unacked, key, *amount);
                if is_stored && !inner.includes(committed_unix_us, key) {
                    let sum = stored.entry(key.clone()).or_default();
                    *sum = sum.saturating_add(*amount);
                }
            }
        }
        if stored.is_empty() {
            return;
        }
        for (key, amount) in &stored {
            add(&mut inner.acked_total, key, *amount);
        }
        inner.acked.push_back((committed_unix_us, stored));
        // Bounded even when budget states stop arriving: the two oldest acks merge, kept until a state includes both.
        while inner.acked.len() > MAX_ACKED {
            let (Some((first, mut merged)), Some((second, later))) = (inner.acked.pop_front(), inner.acked.pop_front())
            else {
                break;
            };
            for (key, amount) in later {
                let sum = merged.entry(key).or_default();
                *sum = sum.saturating_add(amount);
            }
            inner.acked.push_front((first.max(second), merged));
        }
    }

    /// A `BudgetState` from the control plane replaces the confirmed figures, at `now`; `budgets` (the snapshot's)
    /// say which periods are current, and are used for the metrics.
    pub fn apply_state(&self, state: &v1::BudgetState, budgets: &BTreeMap<String, BudgetSpec>, now: DateTime<Utc>) {
        let mut inner = self.lock();
        // A replica that read the ledger earlier than the state already applied (after a reconnect) is behind.
        if state.ledger_as_of_unix_us != 0 && state.ledger_as_of_unix_us < inner.ledger_as_of_us {
            tracing::debug!(as_of = state.ledger_as_of_unix_us, "ignoring a budget state older than the one applied");
            return;
        }
        inner.confirmed.clear();
        for spend in &state.budgets {
            match spend.spent_usd.parse::<Decimal>() {
                Ok(spent) => {
                    inner.confirmed.insert(spend.budget.clone(), Confirmed { start: spend.period_start_unix, spent });
                }
                Err(error) => tracing::warn!(budget = %spend.budget, %error, "unreadable spend in the budget state"),
            }
        }
        let was_current = inner.state_is_current(now, self.outage.stale_after);
        inner.state_received = true;
        inner.state_applied_at = Some(now);
        inner.ledger_as_of_us = state.ledger_as_of_unix_us;
        tracing::trace!(budgets = state.budgets.len(), as_of = state.ledger_as_of_unix_us, "budget state");
        inner.prune_acked(|key| budgets.get(&key.budget).map(|b| period_start(b.period, now)));
        // Warnings of past periods will not repeat.
        inner
            .warned
            .retain(|(key, _)| budgets.get(&key.budget).is_some_and(|b| period_start(b.period, now) == key.start));
        for budget in budgets.values() {
            let used = inner.used(budget, now);
            let as_f64 = |d: Decimal| d.try_into().unwrap_or(f64::NAN);
            metrics::gauge!("gateway_budget_spend_usd", "budget" => budget.name.clone()).set(as_f64(used));
            metrics::gauge!("gateway_budget_limit_usd", "budget" => budget.name.clone()).set(as_f64(budget.limit_usd));
        }
        drop(inner);
        if !was_current {
            tracing::info!("budget state is current again");
            self.resumed.notify_waiters();
        }
    }

    /// Spend known here for `budget` in its period at `now` (confirmed + local + reserved).
    pub fn used(&self, budget: &BudgetSpec, now: DateTime<Utc>) -> Decimal {
        self.lock().used(budget, now)
    }
}

#[cfg(test)]
#[path = "budgets_tests.rs"]
mod tests;
