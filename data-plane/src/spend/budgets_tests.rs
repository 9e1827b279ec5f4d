//! Tests of the budget ledger (`budgets.rs`).

#![allow(clippy::unwrap_used)]

use super::*;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn budget(name: &str, scope: BudgetScope, period: BudgetPeriod, limit: &str, action: BudgetAction) -> BudgetSpec {
    BudgetSpec { name: name.to_owned(), scope, period, limit_usd: d(limit), action, soft_threshold: None }
}

fn budgets(list: Vec<BudgetSpec>) -> BTreeMap<String, BudgetSpec> {
    list.into_iter().map(|b| (b.name.clone(), b)).collect()
}

fn team_day(limit: &str) -> BTreeMap<String, BudgetSpec> {
    budgets(vec![budget(
        "search-daily",
        BudgetScope::Team { team: "search".into() },
        BudgetPeriod::Day,
        limit,
        BudgetAction::Block,
    )])
}

const SCOPE: Scope<'static> = Scope { key_name: "k1", team: "search", alias: "gpt", model: "" };
const NOW: &str = "2026-12-01T12:00:00Z";

fn request<'a>(estimate: &str, now: &str, models: &'a [&'a str]) -> AdmissionRequest<'a> {
    AdmissionRequest { scope: SCOPE, candidate_models: models, estimate: d(estimate), now: at(now) }
}

fn state(budget: &str, start: &str, spent: &str, as_of: i64) -> v1::BudgetState {
    v1::BudgetState {
        as_of_unix_ms: 0,
        budgets: vec![v1::BudgetSpend {
            budget: budget.to_owned(),
            period_start_unix: at(start).timestamp(),
            spent_usd: spent.to_owned(),
            ..v1::BudgetSpend::default()
        }],
        ledger_as_of_unix_us: as_of,
        config_version: 1,
    }
}

#[test]
fn reservations_stop_concurrent_requests_at_the_limit() {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = team_day("1.00");
    let held: Vec<Admission> = (0..4).map(|_| ledger.admit(&budgets, &request("0.25", NOW, &["m"])).unwrap()).collect();
    let refusal = ledger.admit(&budgets, &request("0.25", NOW, &["m"])).err().unwrap();
    assert_eq!(refusal.budget, "search-daily");
    assert_eq!(refusal.spent, d("1.00"));
    assert_eq!(refusal.resets_at, Some(at("2026-12-02T00:00:00Z")));
    // A finished request records its actual cost, then releases its reservation.
    drop(held);
    assert_eq!(ledger.used(&budgets["search-daily"], at(NOW)), Decimal::ZERO);
    ledger.admit(&budgets, &request("1.00", NOW, &["m"])).unwrap();
}

#[test]
fn without_a_current_state_a_data_plane_keeps_to_its_share_of_what_was_left() {
    let policy = OutagePolicy { share: d("0.5"), stale_after: Duration::from_secs(5) };
    let ledger = Arc::new(BudgetLedger::new(policy));
    let budgets = team_day("1.00");
    // No state yet: half of the whole limit.
    assert!(ledger.admit(&budgets, &request("0.6", NOW, &["m"])).is_err());
    ledger.admit(&budgets, &request("0.5", NOW, &["m"])).unwrap();
    // A current state (0.2 spent everywhere): the usual rule, up to the limit.
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0.2", 10), &budgets, at(NOW));
    ledger.admit(&budgets, &request("0.8", "2026-12-01T12:00:05Z", &["m"])).unwrap();
    // Older than 5 s: 0.8 was left, this data plane may spend 0.4 of it, reservations included.
    let later = "2026-12-01T12:00:06Z";
    let held = ledger.admit(&budgets, &request("0.3", later, &["m"])).unwrap();
    let refusal = ledger.admit(&budgets, &request("0.2", later, &["m"])).err().unwrap();
    assert_eq!(refusal.outage, Some(OutageRefusal { share: d("0.5"), left: d("0.8") }));
    assert_eq!(refusal.spent, d("0.3"), "its own spend beyond the confirmed figure");
    let last = ledger.admit(&budgets, &request("0.1", later, &["m"])).unwrap();
    // Spend recorded here counts the same way as reservations.
    drop((held, last));
    let spent = contributions(&budgets, &Scope { model: "m", ..SCOPE }, at(later), d("0.35"));
    ledger.record_local(&spent);
    assert!(ledger.admit(&budgets, &request("0.06", later, &["m"])).is_err());
    ledger.admit(&budgets, &request("0.05", later, &["m"])).unwrap();
    // The state resumes (0.9 spent everywhere, 0.35 of it from here, acknowledged): the usual rule again.
    ledger.acknowledged(15, [(&spent, true)]);
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0.9", 20), &budgets, at(later));
    ledger.admit(&budgets, &request("0.1", later, &["m"])).unwrap();
}

#[test]
fn with_the_whole_share_an_outage_changes_nothing() {
    let ledger = Arc::new(BudgetLedger::new(OutagePolicy::default()));
    let budgets = team_day("1.00");
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0.2", 10), &budgets, at(NOW));
    let refusal = ledger.admit(&budgets, &request("0.81", "2026-12-02T11:00:00Z", &["m"]));
    assert!(refusal.is_ok(), "a new period: nothing confirmed, the whole limit");
    let _held = ledger.admit(&budgets, &request("0.8", "2026-12-01T18:00:00Z", &["m"])).unwrap();
    assert_eq!(ledger.admit(&budgets, &request("0.01", "2026-12-01T18:00:00Z", &["m"])).err().unwrap().outage, None);
}

#[test]
fn spend_moves_from_local_to_confirmed_by_the_ledger_clock() {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = team_day("1.00");
    let b = &budgets["search-daily"];
    let scope = Scope { model: "m", ..SCOPE };
    let event = contributions(&budgets, &scope, at(NOW), d("0.4"));
    assert_eq!(
        event,
        vec![(PeriodKey { budget: "search-daily".into(), start: at("2026-12-01T00:00:00Z").timestamp() }, d("0.4"))]
    );
    ledger.record_local(&event);
    assert_eq!(ledger.used(b, at(NOW)), d("0.4"));
    // Acknowledged before any state: still counted here.
    ledger.acknowledged(1_000, [(&event, true)]);
    assert_eq!(ledger.used(b, at(NOW)), d("0.4"));
    // A state read before the commit does not include it: both count.
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0.1", 1_000), &budgets, at(NOW));
    assert_eq!(ledger.used(b, at(NOW)), d("0.5"));
    // One read after the commit does: only the confirmed figure counts.
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0.5", 1_001), &budgets, at(NOW));
    assert_eq!(ledger.used(b, at(NOW)), d("0.5"));
    // An ack arriving after a state that already includes the batch is not counted twice.
    let second = contributions(&budgets, &scope, at(NOW), d("0.2"));
    ledger.record_local(&second);
    ledger.acknowledged(900, [(&second, true)]);
    assert_eq!(ledger.used(b, at(NOW)), d("0.5"));
    // Rejected (quarantined) events count nowhere.
    ledger.record_local(&second);
    ledger.acknowledged(2_000, [(&second, false)]);
    assert_eq!(ledger.used(b, at(NOW)), d("0.5"));
}

#[test]
fn states_only_include_what_they_name_and_stale_ones_are_ignored() {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = team_day("1.00");
    let b = &budgets["search-daily"];
    let scope = Scope { model: "m", ..SCOPE };
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0.1", 1_000), &budgets, at(NOW));
    // Acknowledged after a state that names another period of the budget (computed before a boundary): kept.
    ledger.apply_state(&state("search-daily", "2026-11-30T00:00:00Z", "5", 2_000), &budgets, at(NOW));
    let event = contributions(&budgets, &scope, at(NOW), d("0.3"));
    ledger.record_local(&event);
    ledger.acknowledged(1_500, [(&event, true)]);
    assert_eq!(ledger.used(b, at(NOW)), d("0.3"), "the state names yesterday: today's spend stays local");
    // A replica that read the ledger earlier is behind: ignored.
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "0", 1_900), &budgets, at(NOW));
    assert_eq!(ledger.used(b, at(NOW)), d("0.3"));
}

#[test]
fn acknowledged_spend_stays_bounded_without_states() {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = team_day("1000000");
    let b = &budgets["search-daily"];
    let event = contributions(&budgets, &Scope { model: "m", ..SCOPE }, at(NOW), d("0.001"));
    for committed in 0..(MAX_ACKED as i64 * 3) {
        ledger.record_local(&event);
        ledger.acknowledged(committed, [(&event, true)]);
    }
    assert!(ledger.lock().acked.len() <= MAX_ACKED);
    assert_eq!(ledger.used(b, at(NOW)), d("0.001") * Decimal::from(MAX_ACKED as i64 * 3), "merged, never lost");
    // A state read after every commit includes them all.
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "3.072", i64::MAX), &budgets, at(NOW));
    assert_eq!(ledger.used(b, at(NOW)), d("3.072"));
    assert!(ledger.lock().acked.is_empty());
}

#[test]
fn periods_roll_over_exactly_at_the_boundary() {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = team_day("1.00");
    let b = &budgets["search-daily"];
    ledger.apply_state(&state("search-daily", "2026-12-01T00:00:00Z", "1.00", 10), &budgets, at(NOW));
    let late = contributions(&budgets, &Scope { model: "m", ..SCOPE }, at("2026-12-01T23:59:59Z"), d("0.3"));
    ledger.record_local(&late);
    assert!(ledger.admit(&budgets, &request("0.01", "2026-12-01T23:59:59Z", &["m"])).is_err());
    // At midnight the old period's figures stop counting, before the control plane's next state arrives.
    assert_eq!(ledger.used(b, at("2026-12-02T00:00:00Z")), Decimal::ZERO);
    ledger.admit(&budgets, &request("0.99", "2026-12-02T00:00:00Z", &["m"])).unwrap();
}

#[test]
fn alert_budgets_and_soft_thresholds_warn_without_refusing() {
    let ledger = Arc::new(BudgetLedger::default());
    let mut soft = budget("global-month", BudgetScope::Global, BudgetPeriod::Month, "10", BudgetAction::Block);
    soft.soft_threshold = Some(d("0.8"));
    let budgets = budgets(vec![
        budget("key-alert", BudgetScope::Key { key: "k1".into() }, BudgetPeriod::Total, "1", BudgetAction::Alert),
        soft,
    ]);
    let admission = ledger.admit(&budgets, &request("8.5", NOW, &["m"])).unwrap();
    assert_eq!(admission.warnings.len(), 2, "{:?}", admission.warnings);
    assert!(admission.warnings[0].starts_with("global-month: past its soft threshold"), "{:?}", admission.warnings);
    assert!(admission.warnings[1].starts_with("key-alert: over its limit"), "{:?}", admission.warnings);
    // The block budget still refuses past its limit; the alert one never does.
    assert_eq!(ledger.admit(&budgets, &request("2", NOW, &["m"])).err().unwrap().budget, "global-month");
}

#[test]
fn an_exhausted_model_budget_removes_its_candidate_only() {
    let ledger = Arc::new(BudgetLedger::default());
    let budgets = budgets(vec![budget(
        "expensive",
        BudgetScope::Model { model: "m-expensive".into() },
        BudgetPeriod::Week,
        "1",
        BudgetAction::Block,
    )]);
    let admission = ledger.admit(&budgets, &request("2", NOW, &["m-expensive", "m-cheap"])).unwrap();
    assert_eq!(admission.excluded, vec![0]);
    let refusal = ledger.admit(&budgets, &request("2", NOW, &["m-expensive"])).err().unwrap();
    assert_eq!(refusal.budget, "expensive");
    assert_eq!(refusal.resets_at, Some(at("2026-12-07T00:00:00Z")), "ISO weeks start on Monday");
}

#[test]
fn scopes_match_as_the_ledger_sums() {
    let all = budgets(vec![
        budget("k", BudgetScope::Key { key: "k1".into() }, BudgetPeriod::Total, "1", BudgetAction::Block),
        budget("t", BudgetScope::Team { team: "search".into() }, BudgetPeriod::Total, "1", BudgetAction::Block),
        budget("alias", BudgetScope::Model { model: "gpt".into() }, BudgetPeriod::Total, "1", BudgetAction::Block),
        budget("served", BudgetScope::Model { model: "m".into() }, BudgetPeriod::Total, "1", BudgetAction::Block),
        budget("other", BudgetScope::Key { key: "k2".into() }, BudgetPeriod::Total, "1", BudgetAction::Block),
        budget("g", BudgetScope::Global, BudgetPeriod::Total, "1", BudgetAction::Block),
    ]);
    let names = |scope: Scope<'_>| -> Vec<String> {
        contributions(&all, &scope, at(NOW), d("1")).into_iter().map(|(k, _)| k.budget).collect()
    };
    assert_eq!(names(Scope { model: "m", ..SCOPE }), ["alias", "g", "k", "served", "t"]);
    assert_eq!(names(Scope { team: "", model: "m", ..SCOPE }), ["alias", "g", "k", "served"]);
    assert!(contributions(&all, &SCOPE, at(NOW), Decimal::ZERO).is_empty());
}
