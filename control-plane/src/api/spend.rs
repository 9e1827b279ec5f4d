//! The auditor's view of the spend ledger: `GET /admin/v1/spend` (totals grouped by any of key, team, alias,
//! backend, model, day over a time range) and `GET /admin/v1/spend/events` (keyset-paginated events), as JSON or
//! CSV (`format=csv` or `Accept: text/csv`). Money is always a decimal string.

use axum::Json;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::extract::ApiQuery;
use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::store::spend::{Dimension, SpendEventRow, SpendFilter, SpendRow, SpendTotals};

/// The response header carrying the next page's cursor (CSV has no room for it in the body).
pub(crate) const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// `GET /admin/v1/spend`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportParams {
    /// Comma-separated subset of `key`, `team`, `alias`, `backend`, `model`, `day`; empty: one total row.
    pub group_by: Option<String>,
    /// RFC 3339, inclusive; default: the start of the current UTC month.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339, exclusive; default: now. After `from`.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Only this key (by name).
    pub key: Option<String>,
    pub team: Option<String>,
    /// Only requests for this model name as requested (`request.model`).
    pub alias: Option<String>,
    pub backend: Option<String>,
    /// Only this gateway model.
    pub model: Option<String>,
    /// `json` (default) or `csv`; without it, `Accept: text/csv` selects CSV.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

/// `GET /admin/v1/spend/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventParams {
    /// RFC 3339, inclusive; default: unbounded.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339, exclusive; default: unbounded.
    #[param(format = DateTime)]
    pub to: Option<String>,
    pub key: Option<String>,
    pub team: Option<String>,
    pub alias: Option<String>,
    pub backend: Option<String>,
    pub model: Option<String>,
    /// The previous page's `next_cursor` (opaque).
    pub cursor: Option<String>,
    /// 1 to 1000, default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SpendReport {
    /// Start of the report, inclusive.
    pub from: DateTime<Utc>,
    /// End of the report, exclusive.
    pub to: DateTime<Utc>,
    /// The dimensions rows are grouped by.
    pub group_by: Vec<Dimension>,
    /// One row per group.
    pub rows: Vec<SpendRow>,
    /// The sum of every row.
    pub total: SpendTotals,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SpendEventPage {
    /// The events of this page, oldest first.
    pub items: Vec<SpendEventRow>,
    /// Pass as `cursor` for the next page; absent on the last page. Events are ordered by (occurred_at, id).
    pub next_cursor: Option<String>,
}

pub async fn report(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ReportParams>,
) -> Result<Response, ApiError> {
    principal.require(Action::ReadSpend)?;
    let csv = wants_csv(params.format.as_deref(), &headers)?;
    let group_by = group_by(params.group_by.as_deref())?;
    let now = Utc::now();
    let from = match time("from", params.from.as_deref())? {
        Some(from) => from,
        None => Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .ok_or_else(|| ApiError::Internal("the start of this month".to_owned()))?,
    };
    let to = time("to", params.to.as_deref())?.unwrap_or(now);
    if from >= to {
        return Err(ApiError::InvalidParameter {
            param: "to".to_owned(),
            message: format!("must be after from ({from})"),
        });
    }
    let filter = SpendFilter {
        key: params.key,
        team: params.team,
        alias: params.alias,
        backend: params.backend,
        model: params.model,
    };
    let rows = state.store.spend_report(&group_by, &filter, from, to).await?;
    let mut total = SpendTotals::default();
    for row in &rows {
        total.add(&row.totals);
    }
    total.cost_usd = total.cost_usd.normalize();
    if csv {
        return csv_response(report_csv(&group_by, &rows)?, None);
    }
    Ok(Json(SpendReport { from, to, group_by, rows, total }).into_response())
}

pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    principal.require(Action::ReadSpend)?;
    let csv = wants_csv(params.format.as_deref(), &headers)?;
    let from = time("from", params.from.as_deref())?;
    let to = time("to", params.to.as_deref())?;
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(text) => match text.parse::<i64>() {
            Ok(l) if (1..=1000).contains(&l) => l,
            _ => {
                return Err(ApiError::InvalidParameter {
                    param: "limit".to_owned(),
                    message: format!("must be an integer from 1 to 1000, not {text:?}"),
                });
            }
        },
    };
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = SpendFilter {
        key: params.key,
        team: params.team,
        alias: params.alias,
        backend: params.backend,
        model: params.model,
    };
    let items = state.store.spend_events(&filter, from, to, after, limit).await?;
    let next_cursor =
        if items.len() as i64 == limit { items.last().map(|e| encode_cursor(e.occurred_at, e.id)) } else { None };
    if csv {
        return csv_response(events_csv(&items)?, next_cursor);
    }
    Ok(Json(SpendEventPage { items, next_cursor }).into_response())
}

fn wants_csv(format: Option<&str>, headers: &HeaderMap) -> Result<bool, ApiError> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::InvalidParameter {
            param: "format".to_owned(),
            message: format!("must be json or csv, not {other:?}"),
        }),
        None => Ok(headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| m.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv")))),
    }
}

fn group_by(text: Option<&str>) -> Result<Vec<Dimension>, ApiError> {
    let mut dimensions = Vec::new();
    for part in text.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let dimension =
            Dimension::ALL.into_iter().find(|d| d.as_str() == part).ok_or_else(|| ApiError::InvalidParameter {
                param: "group_by".to_owned(),
                message: format!("unknown dimension {part:?}: use key, team, alias, backend, model, day"),
            })?;
        if !dimensions.contains(&dimension) {
            dimensions.push(dimension);
        }
    }
    Ok(dimensions)
}

fn time(param: &'static str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|t| {
        crate::rfc3339::parse(t).map_err(|message| ApiError::InvalidParameter { param: param.to_owned(), message })
    })
    .transpose()
}

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let invalid = || ApiError::InvalidParameter {
        param: "cursor".to_owned(),
        message: "is not a cursor this API returned (pass next_cursor unchanged)".to_owned(),
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
    let at = micros.parse::<i64>().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(invalid)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| invalid())?))
}

fn csv_response(body: Vec<u8>, next_cursor: Option<String>) -> Result<Response, ApiError> {
    let mut response = body.into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Some(cursor) = next_cursor {
        let value = HeaderValue::from_str(&cursor).map_err(|e| ApiError::Internal(e.to_string()))?;
        response.headers_mut().insert(NEXT_CURSOR, value);
    }
    Ok(response)
}

fn csv_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("writing CSV: {error}"))
}

const TOTAL_COLUMNS: [&str; 8] = [
    "requests",
    "errors",
    "estimated",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "cache_creation_tokens",
    "cost_usd",
];

fn report_csv(group_by: &[Dimension], rows: &[SpendRow]) -> Result<Vec<u8>, ApiError> {
    // Columns in a fixed order whatever the order of group_by.
    let dims: Vec<Dimension> = Dimension::ALL.into_iter().filter(|d| group_by.contains(d)).collect();
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = Vec::new();
    for d in &dims {
        match d {
            Dimension::Key => header.extend(["key_id", "key"]),
            other => header.push(other.as_str()),
        }
    }
    header.extend(TOTAL_COLUMNS);
    writer.write_record(&header).map_err(csv_error)?;
    for row in rows {
        let mut record: Vec<String> = Vec::with_capacity(header.len());
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        for d in &dims {
            match d {
                Dimension::Key => record.extend([text(&row.key_id), text(&row.key)]),
                Dimension::Team => record.push(text(&row.team)),
                Dimension::Alias => record.push(text(&row.alias)),
                Dimension::Backend => record.push(text(&row.backend)),
                Dimension::Model => record.push(text(&row.model)),
                Dimension::Day => record.push(row.day.map(|d| d.to_string()).unwrap_or_default()),
            }
        }
        let t = &row.totals;
        record.extend([
            t.requests.to_string(),
            t.errors.to_string(),
            t.estimated.to_string(),
            t.prompt_tokens.to_string(),
            t.cached_prompt_tokens.to_string(),
            t.completion_tokens.to_string(),
            t.cache_creation_tokens.to_string(),
            t.cost_usd.to_string(),
        ]);
        writer.write_record(&record).map_err(csv_error)?;
    }
    writer.into_inner().map_err(csv_error)
}

const EVENT_COLUMNS: [&str; 35] = [
    "id",
    "occurred_at",
    "ingested_at",
    "node_id",
    "key_id",
    "key_name",
    "team",
    "alias",
    "policy",
    "snapshot_version",
    "backend",
    "backend_region",
    "model",
    "upstream_model",
    "endpoint",
    "status",
    "outcome",
    "streamed",
    "interrupted",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "cache_creation_tokens",
    "usage_estimated",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "request_id",
    "attempts",
    "metadata",
    "tool_calls",
    // Appended, so columns that readers locate by position keep their place.
    "trace_id",
    "guardrails",
    "attempt_log",
    "images",
];

fn events_csv(items: &[SpendEventRow]) -> Result<Vec<u8>, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(EVENT_COLUMNS).map_err(csv_error)?;
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for e in items {
        writer
            .write_record([
                e.id.to_string(),
                time(e.occurred_at),
                time(e.ingested_at),
                e.node_id.clone(),
                e.key_id.clone(),
                e.key_name.clone(),
                e.team.clone(),
                e.alias.clone(),
                e.policy.clone(),
                e.snapshot_version.to_string(),
                e.backend.clone(),
                e.backend_region.clone(),
                e.model.clone(),
                e.upstream_model.clone(),
                e.endpoint.clone(),
                e.status.to_string(),
                e.outcome.clone(),
                e.streamed.to_string(),
                e.interrupted.to_string(),
                e.prompt_tokens.to_string(),
                e.cached_prompt_tokens.to_string(),
                e.completion_tokens.to_string(),
                e.cache_creation_tokens.to_string(),
                e.usage_estimated.to_string(),
                e.cost_usd.to_string(),
                e.latency_ms.to_string(),
                e.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
                e.request_id.clone(),
                e.attempts.to_string(),
                e.metadata.0.to_string(),
                e.tool_calls.0.to_string(),
                e.trace_id.clone().unwrap_or_default(),
                e.guardrails.0.to_string(),
                e.attempt_log.0.to_string(),
                e.images.to_string(),
            ])
            .map_err(csv_error)?;
    }
    writer.into_inner().map_err(csv_error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_400() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        for bad in ["", "%%", "bm9wZQ", &URL_SAFE_NO_PAD.encode("12:not-a-uuid")] {
            assert_eq!(decode_cursor(bad).unwrap_err().code(), "invalid_parameter", "{bad}");
        }
    }

    #[test]
    fn group_by_parses_any_subset_once() {
        assert_eq!(group_by(None).unwrap(), vec![]);
        assert_eq!(group_by(Some("team, model,team")).unwrap(), vec![Dimension::Team, Dimension::Model]);
        assert_eq!(group_by(Some("teams")).unwrap_err().code(), "invalid_parameter");
    }
}
