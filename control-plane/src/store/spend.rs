//! The spend ledger: idempotent batched ingestion with daily roll-ups in the same transaction, grouped reports,
//! keyset-paginated event listings, and each budget's spend in its current period.
//!
//! Reports over whole UTC days read `spend_daily`; only the partial days at either end of a range read raw
//! `spend_events`. Both are exact: the roll-ups are updated from exactly the rows each ingestion inserted.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use policy_engine::budget_period::midnight;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::FromRow;
use tracing::Instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use super::spend_copy::{COPY_EVENTS, CopyPayload, UPSERT_DAILY, UPSERT_MONTHLY};
use super::{Store, sql};
use crate::spend::{Rejected, SpendRecord};
use crate::store::error::StoreError;

/// What one ingestion stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Newly stored events.
    pub accepted: u64,
    /// Events already stored (or repeated within the batch).
    pub duplicates: u64,
    /// The database clock after the commit, in microseconds since the epoch.
    pub committed_unix_us: i64,
}

/// A grouping dimension of `GET /admin/v1/spend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Key,
    Team,
    Alias,
    Backend,
    Model,
    Day,
}

impl Dimension {
    pub const ALL: [Dimension; 6] =
        [Dimension::Key, Dimension::Team, Dimension::Alias, Dimension::Backend, Dimension::Model, Dimension::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Key => "key",
            Dimension::Team => "team",
            Dimension::Alias => "alias",
            Dimension::Backend => "backend",
            Dimension::Model => "model",
            Dimension::Day => "day",
        }
    }
}

/// Equality filters; `None` matches everything. `key` is the key's name.
#[derive(Debug, Clone, Default)]
pub struct SpendFilter {
    pub key: Option<String>,
    pub team: Option<String>,
    pub alias: Option<String>,
    pub backend: Option<String>,
    pub model: Option<String>,
}

/// One group of a report: the grouped dimensions are set, the others `None`.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, Serialize, ToSchema)]
pub struct SpendRow {
    /// The key's id (grouped by `key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[sqlx(rename = "key_name")]
    pub key: Option<String>,
    /// The team (grouped by `team`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The alias requested (grouped by `alias`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The backend (grouped by `backend`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The model served (grouped by `model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The UTC day (grouped by `day`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub day: Option<NaiveDate>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub totals: SpendTotals,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, FromRow, Serialize, ToSchema)]
pub struct SpendTotals {
    /// Metered requests.
    pub requests: i64,
    /// Requests whose outcome was not `ok`.
    pub errors: i64,
    /// Requests whose token counts were estimated by the gateway.
    pub estimated: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Prompt tokens served from a provider cache.
    pub cached_prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Prompt tokens written to a provider cache.
    pub cache_creation_tokens: i64,
    /// USD, exact.
    #[schema(value_type = String, example = "12.345678")]
    pub cost_usd: Decimal,
}

impl SpendTotals {
    pub fn add(&mut self, other: &SpendTotals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.estimated += other.estimated;
        self.prompt_tokens += other.prompt_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cache_creation_tokens += other.cache_creation_tokens;
        self.cost_usd += other.cost_usd;
    }
}

/// A stored spend event, as auditors read it.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize, ToSchema)]
pub struct SpendEventRow {
    /// The event's id, unique (a resent event is stored once).
    pub id: Uuid,
    /// When the request ended, by the data plane's clock.
    pub occurred_at: DateTime<Utc>,
    /// When the ledger stored it.
    pub ingested_at: DateTime<Utc>,
    /// The data plane that served it.
    pub node_id: String,
    /// The caller's key id.
    pub key_id: String,
    /// The caller's key name.
    pub key_name: String,
    /// The key's team (empty: none).
    pub team: String,
    /// The `model` the caller asked for.
    pub alias: String,
    /// The route policy that routed it (empty: none).
    pub policy: String,
    /// The config version it was served with.
    pub snapshot_version: i64,
    /// The backend that answered last.
    pub backend: String,
    /// That backend's region (empty: none).
    pub backend_region: String,
    /// The gateway model that answered.
    pub model: String,
    /// The model name the backend was sent.
    pub upstream_model: String,
    /// `chat.completions`, `completions` or `embeddings`.
    pub endpoint: String,
    /// The HTTP status served (0: none).
    pub status: i32,
    /// `ok`, `upstream_error`, `interrupted`, `rejected`, `timeout`, `client_closed`, `client_stalled` or `shutdown`
    /// (docs/spend.md).
    pub outcome: String,
    /// A streamed response.
    pub streamed: bool,
    /// A stream that ended early (metered for what went by).
    pub interrupted: bool,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Prompt tokens served from a provider cache.
    pub cached_prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Prompt tokens written to a provider cache.
    pub cache_creation_tokens: i64,
    /// Token counts come from the gateway's tokenizer (the upstream gave none).
    pub usage_estimated: bool,
    /// The cost in USD, exact, as a decimal string.
    #[schema(value_type = String, example = "0.000125")]
    pub cost_usd: Decimal,
    /// From arrival to the last byte, in ms.
    pub latency_ms: i64,
    /// From arrival to the first byte, in ms (streams).
    pub ttft_ms: Option<i64>,
    /// The request's `x-request-id`.
    pub request_id: String,
    /// Upstream attempts, failover included.
    pub attempts: i32,
    /// Images generated (`images.generations`, priced per image); 0 for other endpoints.
    pub images: i32,
    /// The request's W3C trace id (32 lowercase hex digits), to find its trace: the data plane's span when it
    /// exports traces, else the caller's `traceparent`; null when there was none.
    #[schema(example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub trace_id: Option<String>,
    /// The request's metadata (body `metadata` and `x-gateway-meta-*` headers).
    #[schema(value_type = Object)]
    pub metadata: sqlx::types::Json<serde_json::Value>,
    /// Tool-call validation outcomes: `{tool, outcome, violations}`.
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: sqlx::types::Json<serde_json::Value>,
    /// What the request's guardrails found: `{guardrail, detector, action, side, count}`, never content.
    #[schema(value_type = Vec<Object>)]
    pub guardrails: sqlx::types::Json<serde_json::Value>,
    /// The upstream attempts in order: `{backend, model, outcome, status}`, `outcome` `answered` or the failure's class.
    #[schema(value_type = Vec<Object>)]
    pub attempt_log: sqlx::types::Json<serde_json::Value>,
}

/// A budget's scope and period as days, for [`Store::budget_spend`].
#[derive(Debug, Clone)]
pub struct BudgetWindow {
    pub name: String,
    /// `key` (by key name), `team`, `model` (alias or model name) or `global`.
    pub scope: &'static str,
    pub value: String,
    pub start_day: NaiveDate,
    /// Exclusive; `None`: no end.
    pub end_day: Option<NaiveDate>,
}

const FILTERS_DAILY: &str = "($3::TEXT IS NULL OR key_name = $3) AND ($4::TEXT IS NULL OR team = $4)
    AND ($5::TEXT IS NULL OR alias = $5) AND ($6::TEXT IS NULL OR backend = $6) AND ($7::TEXT IS NULL OR model = $7)";

const EVENT_COLUMNS: &str = "id, occurred_at, ingested_at, node_id, key_id, key_name, team, alias, policy,
    snapshot_version, backend, backend_region, model, upstream_model, endpoint, status, outcome, streamed, interrupted,
    prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens, usage_estimated, cost_usd,
    latency_ms, ttft_ms, request_id, attempts, images, trace_id, metadata, tool_calls, guardrails, attempt_log";

const INGEST: &str = "
WITH input AS (
    SELECT * FROM UNNEST($2::UUID[], $3::TIMESTAMPTZ[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[],
                         $9::BIGINT[], $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::INT[],
                         $16::TEXT[], $17::BOOL[], $18::BOOL[], $19::BIGINT[], $20::BIGINT[], $21::BIGINT[],
                         $22::BIGINT[], $23::BOOL[], $24::NUMERIC[], $25::BIGINT[], $26::BIGINT[], $27::TEXT[],
                         $28::INT[], $29::TEXT[], $30::TEXT[], $31::TEXT[], $32::TEXT[], $33::TEXT[], $34::INT[])
        AS t(id, occurred_at, key_id, key_name, team, alias, policy, snapshot_version, backend, backend_region, model,
             upstream_model, endpoint, status, outcome, streamed, interrupted, prompt_tokens, cached_prompt_tokens,
             completion_tokens, cache_creation_tokens, usage_estimated, cost_usd, latency_ms, ttft_ms, request_id,
             attempts, metadata, tool_calls, trace_id, guardrails, attempt_log, images)
), inserted AS (
    INSERT INTO spend_events (id, occurred_at, node_id, key_id, key_name, team, alias, policy, snapshot_version,
                              backend, backend_region, model, upstream_model, endpoint, status, outcome, streamed,
                              interrupted, prompt_tokens, cached_prompt_tokens, completion_tokens,
                              cache_creation_tokens, usage_estimated, cost_usd, latency_ms, ttft_ms, request_id,
                              attempts, metadata, tool_calls, trace_id, guardrails, attempt_log, images)
    SELECT id, occurred_at, $1, key_id, key_name, team, alias, policy, snapshot_version, backend, backend_region,
           model, upstream_model, endpoint, status, outcome, streamed, interrupted, prompt_tokens,
           cached_prompt_tokens, completion_tokens, cache_creation_tokens, usage_estimated, cost_usd, latency_ms,
           ttft_ms, request_id, attempts, metadata::JSONB, tool_calls::JSONB, trace_id, guardrails::JSONB,
           attempt_log::JSONB, images
    FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING occurred_at, key_id, key_name, team, alias, backend, model, outcome, usage_estimated, prompt_tokens,
              cached_prompt_tokens, completion_tokens, cache_creation_tokens, cost_usd
), rolled AS (
    -- Sorted, so concurrent ingestions lock roll-up rows in the same order.
    INSERT INTO spend_daily AS d (day, key_id, key_name, team, alias, backend, model, requests, errors, estimated,
                                  prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens,
                                  cost_usd)
    SELECT (occurred_at AT TIME ZONE 'UTC')::DATE, key_id, key_name, team, alias, backend, model, count(*),
           count(*) FILTER (WHERE outcome <> 'ok'), count(*) FILTER (WHERE usage_estimated),
           sum(prompt_tokens)::BIGINT, sum(cached_prompt_tokens)::BIGINT, sum(completion_tokens)::BIGINT,
           sum(cache_creation_tokens)::BIGINT, sum(cost_usd)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (day, key_id, key_name, team, alias, backend, model) DO UPDATE SET
        requests = d.requests + EXCLUDED.requests,
        errors = d.errors + EXCLUDED.errors,
        estimated = d.estimated + EXCLUDED.estimated,
        prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
        cached_prompt_tokens = d.cached_prompt_tokens + EXCLUDED.cached_prompt_tokens,
        completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
        cache_creation_tokens = d.cache_creation_tokens + EXCLUDED.cache_creation_tokens,
        cost_usd = d.cost_usd + EXCLUDED.cost_usd
    RETURNING 1
), rolled_monthly AS (
    INSERT INTO spend_monthly AS m (month, key_id, key_name, team, alias, backend, model, requests, errors, estimated,
                                    prompt_tokens, cached_prompt_tokens, completion_tokens, cache_creation_tokens,
                                    cost_usd)
    SELECT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::DATE, key_id, key_name, team, alias, backend, model,
           count(*), count(*) FILTER (WHERE outcome <> 'ok'), count(*) FILTER (WHERE usage_estimated),
           sum(prompt_tokens)::BIGINT, sum(cached_prompt_tokens)::BIGINT, sum(completion_tokens)::BIGINT,
           sum(cache_creation_tokens)::BIGINT, sum(cost_usd)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (month, key_id, key_name, team, alias, backend, model) DO UPDATE SET
        requests = m.requests + EXCLUDED.requests,
        errors = m.errors + EXCLUDED.errors,
        estimated = m.estimated + EXCLUDED.estimated,
        prompt_tokens = m.prompt_tokens + EXCLUDED.prompt_tokens,
        cached_prompt_tokens = m.cached_prompt_tokens + EXCLUDED.cached_prompt_tokens,
        completion_tokens = m.completion_tokens + EXCLUDED.completion_tokens,
        cache_creation_tokens = m.cache_creation_tokens + EXCLUDED.cache_creation_tokens,
        cost_usd = m.cost_usd + EXCLUDED.cost_usd
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM rolled) + (SELECT count(*) FROM rolled_monthly)";

/// Deadlock or serialization failure: the transaction can simply run again.
fn retryable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// A batch that repeats a stored event (or one of its own) fails the bulk `COPY` on the primary key.
fn repeats_an_event(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

impl Store {
    /// Store `records` (each id once) and update the roll-ups from exactly the newly stored rows, and quarantine
    /// `rejected`, all in one transaction. Returns after the commit.
    ///
    /// First as one bulk `COPY` with roll-ups summed in the control plane (`spend_copy`); a batch that repeats a
    /// stored event fails that on the primary key and goes through `INGEST`, which skips duplicates.
    pub async fn ingest_spend(
        &self,
        node_id: &str,
        batch_id: &str,
        records: &[SpendRecord],
        rejected: &[Rejected],
    ) -> Result<IngestOutcome, StoreError> {
        let mut bulk = match records.is_empty() {
            true => None,
            false => CopyPayload::encode(node_id, records).map_err(sqlx::Error::Encode)?.map(Arc::new),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match &bulk {
                Some(payload) => {
                    // On a task of its own, which runs to its end even if this caller is dropped (a data plane
                    // hanging up mid-call): a `COPY` abandoned half-way leaves its pooled connection out of step
                    // with the protocol (sqlx writes a `CopyFail` whose answers nothing reads), and the next query
                    // on that connection would read the previous statement's results.
                    let (store, payload) = (self.clone(), payload.clone());
                    let (node_id, batch_id, rejected) = (node_id.to_owned(), batch_id.to_owned(), rejected.to_vec());
                    let records = records.len();
                    let task =
                        async move { store.try_ingest_bulk(&node_id, &batch_id, records, &payload, &rejected).await };
                    tokio::spawn(task.instrument(tracing::Span::current()))
                        .await
                        .unwrap_or_else(|panicked| Err(sqlx::Error::Protocol(format!("spend ingestion: {panicked}"))))
                }
                None => self.try_ingest(node_id, batch_id, records, rejected).await,
            };
            match result {
                Err(error) if bulk.is_some() && repeats_an_event(&error) => {
                    tracing::debug!("spend batch repeats stored events; ingesting it with duplicates skipped");
                    bulk = None;
                }
                Err(error) if attempt < 5 && retryable(&error) => {
                    tracing::debug!(%error, attempt, "spend ingestion conflicted; retrying");
                }
                Err(error) => return Err(error.into()),
                Ok(outcome) => return Ok(outcome),
            }
        }
    }

    /// The bulk path: all `records` are new, or the `COPY` fails and nothing is stored.
    async fn try_ingest_bulk(
        &self,
        node_id: &str,
        batch_id: &str,
        records: usize,
        payload: &CopyPayload,
        rejected: &[Rejected],
    ) -> Result<IngestOutcome, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        let mut copy = tx.copy_in_raw(COPY_EVENTS).await?;
        copy.send(payload.rows.as_slice()).await?;
        let copied = copy.finish().await?;
        for (statement, rows) in [(UPSERT_DAILY, &payload.daily), (UPSERT_MONTHLY, &payload.monthly)] {
            sqlx::query(statement)
                .bind(&rows.period)
                .bind(&rows.key_id)
                .bind(&rows.key_name)
                .bind(&rows.team)
                .bind(&rows.alias)
                .bind(&rows.backend)
                .bind(&rows.model)
                .bind(&rows.requests)
                .bind(&rows.errors)
                .bind(&rows.estimated)
                .bind(&rows.prompt_tokens)
                .bind(&rows.cached_prompt_tokens)
                .bind(&rows.completion_tokens)
                .bind(&rows.cache_creation_tokens)
                .bind(&rows.cost_usd)
                .execute(&mut *tx)
                .await?;
        }
        quarantine(&mut tx, node_id, batch_id, rejected).await?;
        tx.commit().await?;
        self.ingest_outcome(records, copied).await
    }

    /// The general path: `INGEST` skips stored and repeated events and rolls up the rows it inserted.
    async fn try_ingest(
        &self,
        node_id: &str,
        batch_id: &str,
        records: &[SpendRecord],
        rejected: &[Rejected],
    ) -> Result<IngestOutcome, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        let mut accepted = 0_i64;
        if !records.is_empty() {
            macro_rules! column {
                ($field:ident) => {
                    records.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
                };
            }
            let (inserted, _rolled): (i64, i64) = sqlx::query_as(INGEST)
                .bind(node_id)
                .bind(column!(id))
                .bind(column!(occurred_at))
                .bind(column!(key_id))
                .bind(column!(key_name))
                .bind(column!(team))
                .bind(column!(alias))
                .bind(column!(policy))
                .bind(column!(snapshot_version))
                .bind(column!(backend))
                .bind(column!(backend_region))
                .bind(column!(model))
                .bind(column!(upstream_model))
                .bind(column!(endpoint))
                .bind(column!(status))
                .bind(column!(outcome))
                .bind(column!(streamed))
                .bind(column!(interrupted))
                .bind(column!(prompt_tokens))
                .bind(column!(cached_prompt_tokens))
                .bind(column!(completion_tokens))
                .bind(column!(cache_creation_tokens))
                .bind(column!(usage_estimated))
                .bind(column!(cost_usd))
                .bind(column!(latency_ms))
                .bind(column!(ttft_ms))
                .bind(column!(request_id))
                .bind(column!(attempts))
                .bind(column!(metadata))
                .bind(column!(tool_calls))
                .bind(column!(trace_id))
                .bind(column!(guardrails))
                .bind(column!(attempt_log))
                .bind(column!(images))
                .fetch_one(&mut *tx)
                .await?;
            accepted = inserted;
        }
        quarantine(&mut tx, node_id, batch_id, rejected).await?;
        tx.commit().await?;
        self.ingest_outcome(records.len(), u64::try_from(accepted).unwrap_or(0)).await
    }

    /// What a committed ingestion stored, with the database's clock read after the commit returned: any budget
    /// state read later (by the same clock) includes this batch.
    async fn ingest_outcome(&self, records: usize, accepted: u64) -> Result<IngestOutcome, sqlx::Error> {
        let committed_unix_us: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT")
                .fetch_one(self.pool())
                .await?;
        Ok(IngestOutcome { accepted, duplicates: (records as u64).saturating_sub(accepted), committed_unix_us })
    }

    /// Totals over `[from, to)` grouped by `group_by` (any subset; none: one row, or none without events), sorted
    /// by the groups.
    pub async fn spend_report(
        &self,
        group_by: &[Dimension],
        filter: &SpendFilter,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SpendRow>, StoreError> {
        let shape = ReportShape::new(group_by);
        // Whole months from the monthly roll-ups (unless grouped by day), the other whole days from the daily ones,
        // the partial first and last days from raw events.
        let first_full = ceil_day(from);
        let last_full = floor_day(to);
        let (days, head, tail) = if first_full < last_full {
            ((first_full, last_full), (from, midnight(first_full)), (midnight(last_full), to))
        } else {
            ((first_full, first_full), (from, to), (to, to))
        };
        let split = DayRanges::split(days.0, days.1, !group_by.contains(&Dimension::Day));
        let query = format!(
            "SELECT {outer}, sum(requests)::BIGINT AS requests, sum(errors)::BIGINT AS errors,
                    sum(estimated)::BIGINT AS estimated, sum(prompt_tokens)::BIGINT AS prompt_tokens,
                    sum(cached_prompt_tokens)::BIGINT AS cached_prompt_tokens,
                    sum(completion_tokens)::BIGINT AS completion_tokens,
                    sum(cache_creation_tokens)::BIGINT AS cache_creation_tokens, sum(cost_usd) AS cost_usd
             FROM (
                SELECT {daily}requests, errors, estimated, prompt_tokens, cached_prompt_tokens, completion_tokens,
                       cache_creation_tokens, cost_usd
                FROM spend_daily
                WHERE ((day >= $1 AND day < $2) OR (day >= $12 AND day < $13)) AND {FILTERS_DAILY}
                UNION ALL
                SELECT {monthly}requests, errors, estimated, prompt_tokens, cached_prompt_tokens, completion_tokens,
                       cache_creation_tokens, cost_usd
                FROM spend_monthly WHERE month >= $14 AND month < $15 AND {FILTERS_DAILY}
                UNION ALL
                SELECT {raw}1, (outcome <> 'ok')::INT, usage_estimated::INT, prompt_tokens, cached_prompt_tokens,
                       completion_tokens, cache_creation_tokens, cost_usd
                FROM spend_events
                WHERE ((occurred_at >= $8 AND occurred_at < $9) OR (occurred_at >= $10 AND occurred_at < $11))
                  AND {FILTERS_DAILY}
             ) AS spend ({names}requests, errors, estimated, prompt_tokens, cached_prompt_tokens,
                         completion_tokens, cache_creation_tokens, cost_usd)
             {group} HAVING count(*) > 0 {order}",
            outer = shape.outer,
            daily = shape.inner("day"),
            monthly = shape.inner("month"),
            raw = shape.inner("(occurred_at AT TIME ZONE 'UTC')::DATE"),
            names = shape.names,
            group = shape.group,
            order = shape.order,
        );
        let rows: Vec<SpendRow> = sqlx::query_as(sql(query))
            .bind(split.daily[0].0)
            .bind(split.daily[0].1)
            .bind(&filter.key)
            .bind(&filter.team)
            .bind(&filter.alias)
            .bind(&filter.backend)
            .bind(&filter.model)
            .bind(head.0)
            .bind(head.1)
            .bind(tail.0)
            .bind(tail.1)
            .bind(split.daily[1].0)
            .bind(split.daily[1].1)
            .bind(split.monthly.0)
            .bind(split.monthly.1)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(normalise_row).collect())
    }

    /// The same report computed from raw events only (the benchmark's baseline, and a cross-check in tests).
    pub async fn spend_report_from_events(
        &self,
        group_by: &[Dimension],
        filter: &SpendFilter,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<SpendRow>, StoreError> {
        let shape = ReportShape::new(group_by);
        let query = format!(
            "SELECT {outer}, count(*) AS requests, count(*) FILTER (WHERE outcome <> 'ok') AS errors,
                    count(*) FILTER (WHERE usage_estimated) AS estimated,
                    sum(prompt_tokens)::BIGINT AS prompt_tokens,
                    sum(cached_prompt_tokens)::BIGINT AS cached_prompt_tokens,
                    sum(completion_tokens)::BIGINT AS completion_tokens,
                    sum(cache_creation_tokens)::BIGINT AS cache_creation_tokens, sum(cost_usd) AS cost_usd
             FROM (SELECT {inner}outcome, usage_estimated, prompt_tokens, cached_prompt_tokens, completion_tokens,
                          cache_creation_tokens, cost_usd
                   FROM spend_events
                   WHERE occurred_at >= $1 AND occurred_at < $2 AND {FILTERS_DAILY})
                AS e ({names}outcome, usage_estimated, prompt_tokens, cached_prompt_tokens, completion_tokens,
                      cache_creation_tokens, cost_usd)
             {group} HAVING count(*) > 0 {order}",
            outer = shape.outer,
            inner = shape.inner("(occurred_at AT TIME ZONE 'UTC')::DATE"),
            names = shape.names,
            group = shape.group,
            order = shape.order,
        );
        let rows: Vec<SpendRow> = sqlx::query_as(sql(query))
            .bind(from)
            .bind(to)
            .bind(&filter.key)
            .bind(&filter.team)
            .bind(&filter.alias)
            .bind(&filter.backend)
            .bind(&filter.model)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(normalise_row).collect())
    }

    /// Events in `[from, to)` (either open) after the keyset position `after`, oldest first.
    pub async fn spend_events(
        &self,
        filter: &SpendFilter,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<SpendEventRow>, StoreError> {
        let query = format!(
            "SELECT {EVENT_COLUMNS} FROM spend_events
             WHERE ($1::TIMESTAMPTZ IS NULL OR occurred_at >= $1) AND ($2::TIMESTAMPTZ IS NULL OR occurred_at < $2)
               AND {FILTERS_DAILY}
               AND ($8::TIMESTAMPTZ IS NULL OR (occurred_at, id) > ($8, $9::UUID))
             ORDER BY occurred_at, id
             LIMIT $10"
        );
        let mut rows: Vec<SpendEventRow> = sqlx::query_as(sql(query))
            .bind(from)
            .bind(to)
            .bind(&filter.key)
            .bind(&filter.team)
            .bind(&filter.alias)
            .bind(&filter.backend)
            .bind(&filter.model)
            .bind(after.map(|a| a.0))
            .bind(after.map(|a| a.1))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        for row in &mut rows {
            row.cost_usd = row.cost_usd.normalize();
        }
        Ok(rows)
    }

    /// Each budget's spend over its window, and the database clock (microseconds) of the read: every ingestion
    /// whose `committed_unix_us` is smaller is included. Whole months of a window read the monthly roll-ups.
    pub async fn budget_spend(&self, windows: &[BudgetWindow]) -> Result<(HashMap<String, Decimal>, i64), StoreError> {
        let mut spend: HashMap<String, Decimal> = windows.iter().map(|w| (w.name.clone(), Decimal::ZERO)).collect();
        let splits: Vec<DayRanges> =
            windows.iter().map(|w| DayRanges::split(w.start_day, w.end_day.unwrap_or(FAR_FUTURE), true)).collect();
        let column = |f: fn(&DayRanges) -> NaiveDate| splits.iter().map(f).collect::<Vec<_>>();
        let rows: Vec<(Option<String>, Option<Decimal>, i64)> = sqlx::query_as(
            "SELECT b.name,
                    COALESCE((SELECT sum(m.cost_usd) FROM spend_monthly m
                              WHERE m.month >= b.m_start AND m.month < b.m_end
                                AND CASE b.scope WHEN 'key' THEN m.key_name = b.value
                                                 WHEN 'team' THEN m.team = b.value
                                                 WHEN 'model' THEN m.alias = b.value OR m.model = b.value
                                                 ELSE TRUE END), 0)
                  + COALESCE((SELECT sum(d.cost_usd) FROM spend_daily d
                              WHERE ((d.day >= b.d1_start AND d.day < b.d1_end)
                                     OR (d.day >= b.d2_start AND d.day < b.d2_end))
                                AND CASE b.scope WHEN 'key' THEN d.key_name = b.value
                                                 WHEN 'team' THEN d.team = b.value
                                                 WHEN 'model' THEN d.alias = b.value OR d.model = b.value
                                                 ELSE TRUE END), 0),
                    (extract(epoch FROM statement_timestamp()) * 1000000)::BIGINT
             FROM (SELECT NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::DATE, NULL::DATE, NULL::DATE, NULL::DATE,
                          NULL::DATE, NULL::DATE
                   UNION ALL
                   SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::DATE[], $5::DATE[], $6::DATE[],
                                        $7::DATE[], $8::DATE[], $9::DATE[]))
                  AS b (name, scope, value, m_start, m_end, d1_start, d1_end, d2_start, d2_end)",
        )
        .bind(windows.iter().map(|w| w.name.clone()).collect::<Vec<_>>())
        .bind(windows.iter().map(|w| w.scope.to_owned()).collect::<Vec<_>>())
        .bind(windows.iter().map(|w| w.value.clone()).collect::<Vec<_>>())
        .bind(column(|s| s.monthly.0))
        .bind(column(|s| s.monthly.1))
        .bind(column(|s| s.daily[0].0))
        .bind(column(|s| s.daily[0].1))
        .bind(column(|s| s.daily[1].0))
        .bind(column(|s| s.daily[1].1))
        .fetch_all(self.pool())
        .await?;
        let mut as_of = 0;
        for (name, sum, at) in rows {
            as_of = at;
            if let (Some(name), Some(sum)) = (name, sum) {
                spend.insert(name, sum.normalize());
            }
        }
        Ok((spend, as_of))
    }

    /// How many events are quarantined (for tests and operators).
    pub async fn quarantined_spend(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM spend_quarantine").fetch_one(self.pool()).await?)
    }
}

/// Keep `rejected` events (each once per node) for an operator to look at.
async fn quarantine(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    node_id: &str,
    batch_id: &str,
    rejected: &[Rejected],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO spend_quarantine (node_id, event_id, batch_id, field, reason, event)
         SELECT $1, * FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[])
         ON CONFLICT (node_id, event_id) DO NOTHING",
    )
    .bind(node_id)
    .bind(rejected.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|_| batch_id.to_owned()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|r| r.field.clone()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
    .bind(rejected.iter().map(|r| r.event.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The SQL fragments of a report grouped by some dimensions, built from constant column names only. Only the
/// grouped columns are carried through and grouped (so Postgres estimates the groups well and hashes them); the
/// others are selected as typed NULLs.
struct ReportShape {
    chosen: Vec<(&'static str, bool)>,
    /// The outer SELECT list of the seven row columns.
    outer: String,
    /// `name, ...` of the grouped columns, each followed by a comma (empty when nothing is grouped).
    names: String,
    group: String,
    order: String,
}

impl ReportShape {
    /// (row column, source column, type); `day` is computed per source.
    const COLUMNS: [(Dimension, &'static str, &'static str); 7] = [
        (Dimension::Key, "key_id", "TEXT"),
        (Dimension::Key, "key_name", "TEXT"),
        (Dimension::Team, "team", "TEXT"),
        (Dimension::Alias, "alias", "TEXT"),
        (Dimension::Backend, "backend", "TEXT"),
        (Dimension::Model, "model", "TEXT"),
        (Dimension::Day, "day", "DATE"),
    ];

    fn new(group_by: &[Dimension]) -> ReportShape {
        let chosen: Vec<(&'static str, bool)> =
            Self::COLUMNS.iter().map(|(d, column, _)| (*column, group_by.contains(d))).collect();
        let outer = Self::COLUMNS
            .iter()
            .zip(&chosen)
            .map(
                |((_, column, ty), (_, on))| if *on { (*column).to_owned() } else { format!("NULL::{ty} AS {column}") },
            )
            .collect::<Vec<_>>()
            .join(", ");
        let grouped: Vec<&str> = chosen.iter().filter(|(_, on)| *on).map(|(c, _)| *c).collect();
        let names = grouped.iter().map(|c| format!("{c}, ")).collect::<String>();
        let (group, order) = if grouped.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("GROUP BY {}", grouped.join(", ")), format!("ORDER BY {}", order_columns(&grouped)))
        };
        ReportShape { chosen, outer, names, group, order }
    }

    /// The grouped source columns, each followed by a comma; `day` is `day_expression`.
    fn inner(&self, day_expression: &'static str) -> String {
        self.chosen
            .iter()
            .filter(|(_, on)| *on)
            .map(|(column, _)| format!("{}, ", if *column == "day" { day_expression } else { column }))
            .collect()
    }
}

/// Rows sort by key name before key id.
fn order_columns(grouped: &[&str]) -> String {
    let mut order: Vec<&str> = grouped.to_vec();
    if let (Some(id), Some(name)) =
        (order.iter().position(|c| *c == "key_id"), order.iter().position(|c| *c == "key_name"))
    {
        order.swap(id, name);
    }
    order.join(", ")
}

fn normalise_row(mut row: SpendRow) -> SpendRow {
    row.totals.cost_usd = row.totals.cost_usd.normalize();
    row
}

/// The end of a window that has none (`total`): far beyond any event the ledger accepts.
const FAR_FUTURE: NaiveDate = match NaiveDate::from_ymd_opt(9999, 1, 1) {
    Some(d) => d,
    None => NaiveDate::MAX,
};

/// Whole days `[start, end)` split into whole calendar months (read from `spend_monthly`) and the days before and
/// after them (read from `spend_daily`). Empty ranges are `(d, d)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DayRanges {
    monthly: (NaiveDate, NaiveDate),
    daily: [(NaiveDate, NaiveDate); 2],
}

impl DayRanges {
    fn split(start: NaiveDate, end: NaiveDate, months: bool) -> DayRanges {
        let first_month = ceil_month(start);
        let last_month = end.with_day(1).unwrap_or(end);
        if months && start < end && first_month < last_month {
            DayRanges { monthly: (first_month, last_month), daily: [(start, first_month), (last_month, end)] }
        } else {
            DayRanges { monthly: (start, start), daily: [(start, end.max(start)), (start, start)] }
        }
    }
}

/// The first day of a month at or after `day`.
fn ceil_month(day: NaiveDate) -> NaiveDate {
    if day.day() == 1 {
        day
    } else {
        day.with_day(1).and_then(|d| d.checked_add_months(chrono::Months::new(1))).unwrap_or(day)
    }
}

/// The first midnight at or after `t`.
fn ceil_day(t: DateTime<Utc>) -> NaiveDate {
    let day = t.date_naive();
    if midnight(day) == t { day } else { day.checked_add_days(Days::new(1)).unwrap_or(day) }
}

/// The last midnight at or before `t`.
fn floor_day(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn d(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[track_caller]
    fn check(start: &str, end: &str, months: bool, monthly: (&str, &str), first: (&str, &str), second: (&str, &str)) {
        let want = DayRanges {
            monthly: (d(monthly.0), d(monthly.1)),
            daily: [(d(first.0), d(first.1)), (d(second.0), d(second.1))],
        };
        assert_eq!(DayRanges::split(d(start), d(end), months), want, "{start}..{end}");
    }

    #[test]
    fn whole_months_come_from_the_monthly_roll_ups() {
        let e = "2026-11-01";
        // Exactly one month.
        check("2026-11-01", "2026-12-01", true, ("2026-11-01", "2026-12-01"), (e, e), ("2026-12-01", "2026-12-01"));
        // Days on both sides of two whole months.
        check(
            "2026-10-15",
            "2027-01-03",
            true,
            ("2026-11-01", "2027-01-01"),
            ("2026-10-15", "2026-11-01"),
            ("2027-01-01", "2027-01-03"),
        );
        // Within one month, or grouped by day: days only.
        check(
            "2026-11-03",
            "2026-11-20",
            true,
            ("2026-11-03", "2026-11-03"),
            ("2026-11-03", "2026-11-20"),
            ("2026-11-03", "2026-11-03"),
        );
        check("2026-11-01", "2026-12-01", false, (e, e), ("2026-11-01", "2026-12-01"), (e, e));
        // A day-aligned range touching no month start.
        check(
            "2026-11-30",
            "2026-12-02",
            true,
            ("2026-11-30", "2026-11-30"),
            ("2026-11-30", "2026-12-02"),
            ("2026-11-30", "2026-11-30"),
        );
        // Empty.
        check(e, e, true, (e, e), (e, e), (e, e));
    }
}
