//! Budget periods: UTC calendar periods that reset exactly at their boundary, never rolling windows.
//!
//! Both planes use these functions: the control plane to sum a budget's spend, the data plane to know when a
//! period ends. A period is the half-open interval `[start, end)`: an event at exactly `end` belongs to the next
//! period. `week` is the ISO week (Monday 00:00 UTC to the next Monday); `month` is the calendar month; `total`
//! never resets (it starts at the Unix epoch and has no end).

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::config::BudgetPeriod;

/// The period containing `now`: `[start, end)`, `end` being `None` for `total`.
pub fn period_bounds(period: BudgetPeriod, now: DateTime<Utc>) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
    let (start, end) = period_days(period, now.date_naive());
    (midnight(start), end.map(midnight))
}

/// The period containing the UTC day `today`, as days: `[start, end)`. Every period is made of whole UTC days,
/// which is what lets the control plane sum budgets from daily roll-ups exactly.
pub fn period_days(period: BudgetPeriod, today: NaiveDate) -> (NaiveDate, Option<NaiveDate>) {
    match period {
        BudgetPeriod::Day => (today, today.checked_add_days(Days::new(1))),
        BudgetPeriod::Week => {
            let start = today - Days::new(u64::from(today.weekday().num_days_from_monday()));
            (start, start.checked_add_days(Days::new(7)))
        }
        BudgetPeriod::Month => {
            let start = today.with_day(1).unwrap_or(today);
            (start, start.checked_add_months(Months::new(1)))
        }
        BudgetPeriod::Total => (NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN), None),
    }
}

/// 00:00:00 UTC of `day`.
pub fn midnight(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(NaiveTime::MIN))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[track_caller]
    fn check(period: BudgetPeriod, now: &str, start: &str, end: Option<&str>) {
        let (s, e) = period_bounds(period, at(now));
        assert_eq!(s, at(start), "start of {period:?} at {now}");
        assert_eq!(e, end.map(at), "end of {period:?} at {now}");
        assert!(s <= at(now) && e.is_none_or(|e| at(now) < e), "{now} must lie in [{s}, {e:?})");
    }

    #[test]
    fn days() {
        use BudgetPeriod::Day;
        check(Day, "2026-11-25T13:45:00Z", "2026-11-25T00:00:00Z", Some("2026-11-26T00:00:00Z"));
        check(Day, "2026-11-25T00:00:00Z", "2026-11-25T00:00:00Z", Some("2026-11-26T00:00:00Z"));
        check(Day, "2026-11-25T23:59:59.999999Z", "2026-11-25T00:00:00Z", Some("2026-11-26T00:00:00Z"));
        check(Day, "2026-12-31T23:59:59Z", "2026-12-31T00:00:00Z", Some("2027-01-01T00:00:00Z"));
        check(Day, "2028-02-29T12:00:00Z", "2028-02-29T00:00:00Z", Some("2028-03-01T00:00:00Z"));
        // Offsets are converted to UTC first: 01:00+02:00 is still the previous UTC day.
        check(Day, "2026-11-26T01:00:00+02:00", "2026-11-25T00:00:00Z", Some("2026-11-26T00:00:00Z"));
    }

    #[test]
    fn iso_weeks_start_on_monday() {
        use BudgetPeriod::Week;
        // 2026-11-23 is a Monday.
        check(Week, "2026-11-23T00:00:00Z", "2026-11-23T00:00:00Z", Some("2026-11-30T00:00:00Z"));
        check(Week, "2026-11-25T10:00:00Z", "2026-11-23T00:00:00Z", Some("2026-11-30T00:00:00Z"));
        check(Week, "2026-11-29T23:59:59Z", "2026-11-23T00:00:00Z", Some("2026-11-30T00:00:00Z"));
        check(Week, "2026-11-30T00:00:00Z", "2026-11-30T00:00:00Z", Some("2026-12-07T00:00:00Z"));
        // Across a year: Thursday 2027-01-01 is in the week of Monday 2026-12-28.
        check(Week, "2027-01-01T12:00:00Z", "2026-12-28T00:00:00Z", Some("2027-01-04T00:00:00Z"));
        // Across a leap day.
        check(Week, "2028-03-01T00:00:00Z", "2028-02-28T00:00:00Z", Some("2028-03-06T00:00:00Z"));
    }

    #[test]
    fn calendar_months() {
        use BudgetPeriod::Month;
        check(Month, "2026-11-25T10:00:00Z", "2026-11-01T00:00:00Z", Some("2026-12-01T00:00:00Z"));
        check(Month, "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z", Some("2026-12-01T00:00:00Z"));
        check(Month, "2026-11-30T23:59:59.999Z", "2026-11-01T00:00:00Z", Some("2026-12-01T00:00:00Z"));
        check(Month, "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", Some("2027-01-01T00:00:00Z"));
        check(Month, "2027-01-01T00:00:00Z", "2027-01-01T00:00:00Z", Some("2027-02-01T00:00:00Z"));
        check(Month, "2027-01-31T08:00:00Z", "2027-01-01T00:00:00Z", Some("2027-02-01T00:00:00Z"));
        check(Month, "2027-02-28T23:00:00Z", "2027-02-01T00:00:00Z", Some("2027-03-01T00:00:00Z"));
        check(Month, "2028-02-29T23:00:00Z", "2028-02-01T00:00:00Z", Some("2028-03-01T00:00:00Z"));
        check(Month, "2100-02-28T23:00:00Z", "2100-02-01T00:00:00Z", Some("2100-03-01T00:00:00Z"));
        check(Month, "2026-04-30T12:00:00Z", "2026-04-01T00:00:00Z", Some("2026-05-01T00:00:00Z"));
    }

    #[test]
    fn month_lengths_are_calendar_not_thirty_days() {
        let lengths: Vec<i64> = (1..=12)
            .map(|m| {
                let (s, e) = period_bounds(BudgetPeriod::Month, at(&format!("2028-{m:02}-15T00:00:00Z")));
                (e.unwrap() - s).num_days()
            })
            .collect();
        assert_eq!(lengths, [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]);
    }

    #[test]
    fn total_never_resets() {
        check(BudgetPeriod::Total, "2026-11-25T10:00:00Z", "1970-01-01T00:00:00Z", None);
        check(BudgetPeriod::Total, "2099-01-01T00:00:00Z", "1970-01-01T00:00:00Z", None);
    }

    #[test]
    fn consecutive_periods_tile_time() {
        // Every period ends where the next one starts, over six years with two leap days.
        for period in [BudgetPeriod::Day, BudgetPeriod::Week, BudgetPeriod::Month] {
            let (mut start, mut end) = period_bounds(period, at("2026-01-01T00:00:00Z"));
            while start < at("2032-01-01T00:00:00Z") {
                let e = end.unwrap();
                let (next_start, next_end) = period_bounds(period, e);
                assert_eq!(next_start, e, "{period:?} after {start}");
                let (same, _) = period_bounds(period, e - chrono::Duration::microseconds(1));
                assert_eq!(same, start, "{period:?}: the last microsecond belongs to the period");
                (start, end) = (next_start, next_end);
            }
        }
    }
}
