//! The ledger's bulk ingestion path: a batch goes into `spend_events` as one binary `COPY` (Postgres's bulk insert:
//! no per-row executor, speculative insertion or `RETURNING` tuple store, and no text parsing of UUIDs, times or
//! numbers), and its roll-ups are summed here and upserted as a few rows.
//!
//! `COPY` cannot skip rows that are already stored, so it is only the first try: a batch that repeats a stored event
//! (or one of its own) fails on the primary key, and `Store::ingest_spend` then ingests it with the general
//! statement, which skips duplicates. Either way the roll-ups count exactly the rows that were newly stored.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArgumentBuffer;
use sqlx::{Encode, Postgres};

use crate::spend::{MAX_COST_SCALE, SpendRecord};

/// The columns [`CopyPayload::encode`] writes, in order (`ingested_at` takes its default, the transaction's time).
pub(super) const COPY_EVENTS: &str = "COPY spend_events (id, occurred_at, node_id, key_id, key_name, team, alias,
    policy, snapshot_version, backend, backend_region, model, upstream_model, endpoint, status, outcome, streamed,
    interrupted, prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens, usage_estimated,
    cost_usd, latency_ms, ttft_ms, request_id, attempts, metadata, tool_calls, trace_id, guardrails, attempt_log,
    images) FROM STDIN (FORMAT binary)";
const COPY_FIELDS: i16 = 34;

/// Upsert statements for pre-summed roll-up rows, one per table; sorted as `INGEST` sorts its groups, so both paths
/// lock roll-up rows in the same order. Costs arrive as exact decimal text.
macro_rules! upsert_roll_ups {
    ($table:literal, $period:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " AS r (",
            $period,
            ", key_id, key_name, team, alias, backend, model, requests, errors, estimated, prompt_tokens,
                cached_prompt_tokens, completion_tokens, cache_creation_tokens, cost_usd)
            SELECT period, key_id, key_name, team, alias, backend, model, requests, errors, estimated, prompt_tokens,
                   cached_prompt_tokens, completion_tokens, cache_creation_tokens, cost_usd::NUMERIC
            FROM UNNEST($1::DATE[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
                        $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[],
                        $14::BIGINT[], $15::TEXT[])
                AS t(period, key_id, key_name, team, alias, backend, model, requests, errors, estimated,
                     prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens, cost_usd)
            ORDER BY 1, 2, 3, 4, 5, 6, 7
            ON CONFLICT (",
            $period,
            ", key_id, key_name, team, alias, backend, model) DO UPDATE SET
                requests = r.requests + EXCLUDED.requests,
                errors = r.errors + EXCLUDED.errors,
                estimated = r.estimated + EXCLUDED.estimated,
                prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens,
                cached_prompt_tokens = r.cached_prompt_tokens + EXCLUDED.cached_prompt_tokens,
                completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens,
                cache_creation_tokens = r.cache_creation_tokens + EXCLUDED.cache_creation_tokens,
                cost_usd = r.cost_usd + EXCLUDED.cost_usd"
        )
    };
}
pub(super) const UPSERT_DAILY: &str = upsert_roll_ups!("spend_daily", "day");
pub(super) const UPSERT_MONTHLY: &str = upsert_roll_ups!("spend_monthly", "month");

/// A batch ready for the bulk path: the `COPY` payload and both roll-ups.
pub(super) struct CopyPayload {
    pub rows: Vec<u8>,
    pub daily: RollUpColumns,
    pub monthly: RollUpColumns,
}

impl CopyPayload {
    /// `None` when a record cannot take this path (a cost with more decimal places than the ledger keeps, which
    /// validation refuses, or sums beyond 128 bits): the general statement ingests it.
    pub fn encode(node_id: &str, records: &[SpendRecord]) -> Result<Option<CopyPayload>, BoxDynError> {
        let mut daily = BTreeMap::new();
        let mut monthly = BTreeMap::new();
        for record in records {
            let day = record.occurred_at.date_naive();
            let month = day.with_day(1).unwrap_or(day);
            for (period, groups) in [(day, &mut daily), (month, &mut monthly)] {
                let totals = groups.entry(GroupKey::of(period, record)).or_insert_with(RollUpTotals::default);
                if !totals.add(record) {
                    return Ok(None);
                }
            }
        }
        let mut rows = BinaryCopy::with_capacity(records.len() * 512);
        for record in records {
            rows.tuple(COPY_FIELDS);
            rows.field(&record.id)?;
            rows.field(&record.occurred_at)?;
            rows.field(&node_id)?;
            rows.field(&record.key_id)?;
            rows.field(&record.key_name)?;
            rows.field(&record.team)?;
            rows.field(&record.alias)?;
            rows.field(&record.policy)?;
            rows.field(&record.snapshot_version)?;
            rows.field(&record.backend)?;
            rows.field(&record.backend_region)?;
            rows.field(&record.model)?;
            rows.field(&record.upstream_model)?;
            rows.field(&record.endpoint)?;
            rows.field(&record.status)?;
            rows.field(&record.outcome)?;
            rows.field(&record.streamed)?;
            rows.field(&record.interrupted)?;
            rows.field(&record.prompt_tokens)?;
            rows.field(&record.cached_prompt_tokens)?;
            rows.field(&record.completion_tokens)?;
            rows.field(&record.cache_creation_tokens)?;
            rows.field(&record.usage_estimated)?;
            rows.field(&record.cost_usd)?;
            rows.field(&record.latency_ms)?;
            rows.field(&record.ttft_ms)?;
            rows.field(&record.request_id)?;
            rows.field(&record.attempts)?;
            rows.jsonb(&record.metadata)?;
            rows.jsonb(&record.tool_calls)?;
            rows.field(&record.trace_id)?;
            rows.jsonb(&record.guardrails)?;
            rows.jsonb(&record.attempt_log)?;
            rows.field(&record.images)?;
        }
        Ok(Some(CopyPayload {
            rows: rows.finish(),
            daily: RollUpColumns::from(daily),
            monthly: RollUpColumns::from(monthly),
        }))
    }
}

/// Postgres's binary `COPY` format: a header, then per tuple its field count and each field as a length and the
/// type's binary form (the same form sqlx sends parameters in, so its `Encode` impls write the fields).
struct BinaryCopy {
    buf: PgArgumentBuffer,
}

impl BinaryCopy {
    fn with_capacity(capacity: usize) -> Self {
        let mut buf = PgArgumentBuffer::default();
        buf.reserve(capacity);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0_i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0_i32.to_be_bytes()); // no header extension
        Self { buf }
    }

    fn tuple(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn field<'q, T: Encode<'q, Postgres>>(&mut self, value: &T) -> Result<(), BoxDynError> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        match value.encode_by_ref(&mut self.buf)? {
            IsNull::Yes => {
                self.buf.truncate(at);
                self.buf.extend_from_slice(&(-1_i32).to_be_bytes());
            }
            IsNull::No => {
                let len = i32::try_from(self.buf.len() - at - 4)?;
                self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
        }
        Ok(())
    }

    /// JSON text as `jsonb`'s binary form: a version byte (1), then the text, which Postgres parses.
    fn jsonb(&mut self, json: &str) -> Result<(), BoxDynError> {
        self.buf.extend_from_slice(&i32::try_from(json.len() + 1)?.to_be_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(json.as_bytes());
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1_i16).to_be_bytes());
        std::mem::take(&mut *self.buf)
    }
}

/// A roll-up row's key; ordered as the tables' primary keys.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey<'a> {
    period: NaiveDate,
    key_id: &'a str,
    key_name: &'a str,
    team: &'a str,
    alias: &'a str,
    backend: &'a str,
    model: &'a str,
}

impl<'a> GroupKey<'a> {
    fn of(period: NaiveDate, r: &'a SpendRecord) -> Self {
        GroupKey {
            period,
            key_id: &r.key_id,
            key_name: &r.key_name,
            team: &r.team,
            alias: &r.alias,
            backend: &r.backend,
            model: &r.model,
        }
    }
}

#[derive(Default)]
struct RollUpTotals {
    requests: i64,
    errors: i64,
    estimated: i64,
    prompt_tokens: i64,
    cached_prompt_tokens: i64,
    completion_tokens: i64,
    cache_creation_tokens: i64,
    cost: ExactSum,
}

impl RollUpTotals {
    /// Count `r`; false when a sum would leave its range.
    fn add(&mut self, r: &SpendRecord) -> bool {
        let sum = |total: &mut i64, value: i64| total.checked_add(value).map(|v| *total = v).is_some();
        self.requests += 1;
        self.errors += i64::from(r.outcome != "ok");
        self.estimated += i64::from(r.usage_estimated);
        sum(&mut self.prompt_tokens, r.prompt_tokens)
            && sum(&mut self.cached_prompt_tokens, r.cached_prompt_tokens)
            && sum(&mut self.completion_tokens, r.completion_tokens)
            && sum(&mut self.cache_creation_tokens, r.cache_creation_tokens)
            && self.cost.add(r.cost_usd)
    }
}

/// A sum of non-negative decimals kept exactly in 128 bits at the ledger's finest scale, with the largest scale
/// seen: what Postgres's `sum(numeric)` gives (its scale is the inputs' largest), for any sum `rust_decimal` could
/// not hold.
#[derive(Default)]
struct ExactSum {
    /// In units of 10^-MAX_COST_SCALE.
    units: i128,
    scale: u32,
}

const FINEST_SCALE: u32 = MAX_COST_SCALE as u32;

impl ExactSum {
    fn add(&mut self, value: rust_decimal::Decimal) -> bool {
        let scale = value.scale();
        let Some(factor) = FINEST_SCALE.checked_sub(scale).map(|shift| 10_i128.pow(shift)) else {
            return false;
        };
        match value.mantissa().checked_mul(factor).and_then(|units| self.units.checked_add(units)) {
            Some(units) => {
                self.units = units;
                self.scale = self.scale.max(scale);
                true
            }
            None => false,
        }
    }

    /// The sum as decimal text with exactly `scale` decimal places, as Postgres writes it.
    fn text(&self) -> String {
        // Exact: every summand had at most `scale` decimal places.
        let units = self.units / 10_i128.pow(FINEST_SCALE - self.scale);
        let digits = units.unsigned_abs().to_string();
        let sign = if units < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return format!("{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (integer, fraction) = padded.split_at(padded.len() - scale);
        format!("{sign}{integer}.{fraction}")
    }
}

/// Pre-summed roll-up rows as the upsert statements' parameter arrays, in key order.
#[derive(Default)]
pub(super) struct RollUpColumns {
    pub period: Vec<NaiveDate>,
    pub key_id: Vec<String>,
    pub key_name: Vec<String>,
    pub team: Vec<String>,
    pub alias: Vec<String>,
    pub backend: Vec<String>,
    pub model: Vec<String>,
    pub requests: Vec<i64>,
    pub errors: Vec<i64>,
    pub estimated: Vec<i64>,
    pub prompt_tokens: Vec<i64>,
    pub cached_prompt_tokens: Vec<i64>,
    pub completion_tokens: Vec<i64>,
    pub cache_creation_tokens: Vec<i64>,
    pub cost_usd: Vec<String>,
}

impl From<BTreeMap<GroupKey<'_>, RollUpTotals>> for RollUpColumns {
    fn from(groups: BTreeMap<GroupKey<'_>, RollUpTotals>) -> Self {
        let mut c = RollUpColumns::default();
        for (key, totals) in groups {
            c.period.push(key.period);
            c.key_id.push(key.key_id.to_owned());
            c.key_name.push(key.key_name.to_owned());
            c.team.push(key.team.to_owned());
            c.alias.push(key.alias.to_owned());
            c.backend.push(key.backend.to_owned());
            c.model.push(key.model.to_owned());
            c.requests.push(totals.requests);
            c.errors.push(totals.errors);
            c.estimated.push(totals.estimated);
            c.prompt_tokens.push(totals.prompt_tokens);
            c.cached_prompt_tokens.push(totals.cached_prompt_tokens);
            c.completion_tokens.push(totals.completion_tokens);
            c.cache_creation_tokens.push(totals.cache_creation_tokens);
            c.cost_usd.push(totals.cost.text());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::str::FromStr;

    use rust_decimal::Decimal;

    use super::*;

    fn sum(values: &[&str]) -> Option<String> {
        let mut total = ExactSum::default();
        values.iter().all(|v| total.add(Decimal::from_str(v).unwrap())).then(|| total.text())
    }

    #[test]
    fn sums_keep_the_largest_scale_as_postgres_does() {
        assert_eq!(sum(&["0.5", "0.25"]).as_deref(), Some("0.75"));
        assert_eq!(sum(&["1", "2"]).as_deref(), Some("3"));
        assert_eq!(sum(&["0.50", "0.50"]).as_deref(), Some("1.00"));
        assert_eq!(sum(&["0.000001", "3"]).as_deref(), Some("3.000001"));
        assert_eq!(sum(&["0.000000000000000001"]).as_deref(), Some("0.000000000000000001"));
        assert_eq!(sum(&["0"]).as_deref(), Some("0"));
        assert_eq!(sum(&[]).as_deref(), Some("0"));
    }

    #[test]
    fn sums_beyond_what_rust_decimal_holds_stay_exact() {
        // At 18 decimal places rust_decimal's 96-bit mantissa ends near 7.9e10; a hundred of these pass it.
        let big = "999999999.999999999999999999";
        assert_eq!(sum(&[big; 100]).as_deref(), Some("99999999999.999999999999999900"));
    }

    #[test]
    fn a_scale_finer_than_the_ledger_keeps_declines_the_bulk_path() {
        assert_eq!(sum(&["0.0000000000000000001"]), None);
    }
}
