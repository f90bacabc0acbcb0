//! The analytics API: `/api/v1/workspaces/{workspace_id}/sites/{site_id}/analytics/…`.
//!
//! Common query parameters: `from`, `to` (RFC 3339 instants or `YYYY-MM-DD` days in the site's
//! zone; default the 30 days up to the next whole hour) and any number of
//! `filter=dimension:is|is_not|contains:value`. Unfiltered figures over long ranges come from
//! rollups in the embedded store; a response says when its visitor counts are estimates
//! (`visitors_estimated`).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use platform::error::ErrorBody;
use platform::http::{Json, Page, Path};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Scope, Timestamp};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::query::{
    self, Breakdown, Dimension, Filter, Funnel, FunnelStep, FunnelStepResult, Interval, Query,
    Summary, TimeseriesPoint,
};
use super::{AnalyticsEvent, AnalyticsStore};
use crate::HitId;
use crate::sites::{SiteId, store as sites};

pub type Store = Extension<Arc<dyn AnalyticsStore>>;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(summary))
        .routes(routes!(timeseries))
        .routes(routes!(breakdown))
        .routes(routes!(realtime))
        .routes(routes!(funnel))
        .routes(routes!(events))
}

/// The raw query's parameters, keeping repeated keys (`filter=…&filter=…`).
fn params(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn instant(name: &str, text: &str, zone: Tz, end_of_day: bool) -> ApiResult<Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp::from(t.to_utc()));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ApiError::bad_request(
            "invalid_query",
            format!("`{name}` must be an RFC 3339 time or a date like 2026-11-22."),
        )
    })?;
    let day = if end_of_day {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    let local = zone
        .from_local_datetime(&midnight)
        .earliest()
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{name}` does not exist in the site's time zone."),
            )
        })?;
    Ok(Timestamp::from(local.to_utc()))
}

/// Resolves the site (scoped: another workspace's site is a 404) and the query.
async fn prepare(
    state: &AppState,
    scope: &Scope,
    site_id: SiteId,
    raw: &Option<String>,
) -> ApiResult<(Query, Tz)> {
    let site = sites::get(&state.db, scope, site_id).await?;
    let zone: Tz = site.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let params = params(raw);
    let now = Timestamp::now();
    let to = match param(&params, "to") {
        Some(text) => instant("to", text, zone, true)?,
        // The next whole hour: nothing is stored after now, and a range of whole hours is one
        // the rollups can answer (see `super::rollup`).
        None => {
            let hour = super::rollup::HOUR_MS;
            Timestamp::from_millis((now.as_millis().div_euclid(hour) + 1) * hour)
        }
    };
    let from = match param(&params, "from") {
        Some(text) => instant("from", text, zone, false)?,
        None => to - std::time::Duration::from_secs(30 * 86_400),
    };
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`from` must be before `to`.",
        ));
    }
    let filters = params
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| Filter::parse(v))
        .collect::<ApiResult<Vec<_>>>()?;
    if filters.len() > 20 {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "At most 20 filters.",
        ));
    }
    Ok((
        Query {
            site_id,
            from,
            to,
            filters,
        },
        zone,
    ))
}

fn store_error(err: anyhow::Error) -> ApiError {
    ApiError::internal(err)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryResponse {
    pub from: Timestamp,
    pub to: Timestamp,
    pub current: Summary,
    /// The same length of time just before `from`, for comparison.
    pub previous: Summary,
}

/// Visitors, sessions, pageviews, events, bounce rate and session duration, with the previous
/// period.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/analytics/summary", tag = "analytics",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("filter" = Option<Vec<String>>, Query)),
    responses((status = 200, body = SummaryResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn summary(
    State(state): State<AppState>,
    Extension(store): Store,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<SummaryResponse>> {
    let Path((_, site_id)) = path;
    let (query, _) = prepare(&state, &scope, site_id, &raw).await?;
    let current = store.summary(&query).await.map_err(store_error)?;
    let length =
        std::time::Duration::from_micros((query.to.seconds_since(query.from) * 1e6) as u64);
    let previous_query = Query {
        from: query.from - length,
        to: query.from,
        ..query.clone()
    };
    let previous = store.summary(&previous_query).await.map_err(store_error)?;
    Ok(Json(SummaryResponse {
        from: query.from,
        to: query.to,
        current,
        previous,
    }))
}

/// Counts per hour, day, week or month of the site's time zone (`interval`, default `day`).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/analytics/timeseries", tag = "analytics",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("interval" = Option<Interval>, Query),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query), ("filter" = Option<Vec<String>>, Query)),
    responses((status = 200, body = Vec<TimeseriesPoint>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn timeseries(
    State(state): State<AppState>,
    Extension(store): Store,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Vec<TimeseriesPoint>>> {
    let Path((_, site_id)) = path;
    let (query, zone) = prepare(&state, &scope, site_id, &raw).await?;
    let interval = match param(&params(&raw), "interval") {
        None | Some("day") => Interval::Day,
        Some("hour") => Interval::Hour,
        Some("week") => Interval::Week,
        Some("month") => Interval::Month,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`interval` is hour, day, week or month.",
            ));
        }
    };
    let buckets = query::buckets(query.from, query.to, interval, zone)?;
    Ok(Json(
        store
            .timeseries(&query, &buckets)
            .await
            .map_err(store_error)?,
    ))
}

/// Top values of a dimension (`dimension=page|source|country|param:<name>|…`, default `page`;
/// `limit` ≤ 100, default 10).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/analytics/breakdown", tag = "analytics",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("dimension" = Option<String>, Query),
        ("limit" = Option<u32>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("filter" = Option<Vec<String>>, Query)),
    responses((status = 200, body = Breakdown), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn breakdown(
    State(state): State<AppState>,
    Extension(store): Store,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Breakdown>> {
    let Path((_, site_id)) = path;
    let (query, _) = prepare(&state, &scope, site_id, &raw).await?;
    let params = params(&raw);
    let name = param(&params, "dimension").unwrap_or("page");
    let dimension = Dimension::parse(name)?;
    let limit = match param(&params, "limit") {
        None => 10,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "`limit` must be between 1 and 100.")
            })?,
    };
    let rows = store
        .breakdown(&query, &dimension, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(Breakdown {
        dimension: name.to_owned(),
        rows,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Realtime {
    /// Distinct visitors with an event in the last five minutes.
    pub visitors: i64,
    pub events: i64,
}

/// Visitors in the last five minutes.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/analytics/realtime", tag = "analytics",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)),
    responses((status = 200, body = Realtime), (status = 404, body = ErrorBody)))]
async fn realtime(
    State(state): State<AppState>,
    Extension(store): Store,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
) -> ApiResult<Json<Realtime>> {
    let Path((_, site_id)) = path;
    sites::get(&state.db, &scope, site_id).await?;
    let to = Timestamp::now() + std::time::Duration::from_secs(60);
    let query = Query {
        site_id,
        from: Timestamp::now() - std::time::Duration::from_secs(300),
        to,
        filters: Vec::new(),
    };
    let summary = store.summary(&query).await.map_err(store_error)?;
    Ok(Json(Realtime {
        visitors: summary.visitors,
        events: summary.events,
    }))
}

/// The raw event log, newest first, with filters and cursor paging (`limit`, `cursor`).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/analytics/events", tag = "analytics",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("limit" = Option<u32>, Query),
        ("cursor" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("filter" = Option<Vec<String>>, Query)),
    responses((status = 200, body = Page<AnalyticsEvent>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    Extension(store): Store,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Page<AnalyticsEvent>>> {
    let Path((_, site_id)) = path;
    let (query, _) = prepare(&state, &scope, site_id, &raw).await?;
    let params = params(&raw);
    let page = platform::http::PageParams {
        limit: param(&params, "limit").map(|l| l.parse().unwrap_or(0)),
        cursor: param(&params, "cursor").map(str::to_owned),
    };
    let limit = page.limit()?;
    let before = page.cursor()?.map(HitId);
    let rows = store
        .events(&query, before, limit + 1)
        .await
        .map_err(store_error)?;
    Ok(Json(Page::from_rows(rows, limit, |e| e.hit_id.uuid())))
}

/// Visitors who went through `step`s in order (up to 10 `step=` parameters: `page:<path>`,
/// `event:<name>` or `event:<name>:<param>=<value>`; none: an empty funnel) with every step within `window` seconds of
/// the first (default 86400, at most 90 days); counted per visitor, over the events of the range
/// that pass the filters. Exact (raw events). Events are ordered by millisecond when the range
/// plus the window is under 24 days, else by second (ClickHouse 18.16's `windowFunnel` limit);
/// within one tick, steps count in step order.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/analytics/funnel", tag = "analytics",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("step" = Vec<String>, Query),
        ("window" = Option<i64>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("filter" = Option<Vec<String>>, Query)),
    responses((status = 200, body = Funnel), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn funnel(
    State(state): State<AppState>,
    Extension(store): Store,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Funnel>> {
    let Path((_, site_id)) = path;
    let (query, _) = prepare(&state, &scope, site_id, &raw).await?;
    let params = params(&raw);
    let texts: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "step")
        .map(|(_, v)| v.as_str())
        .collect();
    if texts.len() > 10 {
        return Err(ApiError::bad_request(
            "invalid_funnel",
            "A funnel has at most 10 `step` parameters.",
        ));
    }
    let steps = texts
        .iter()
        .map(|t| FunnelStep::parse(t))
        .collect::<ApiResult<Vec<_>>>()?;
    let window = match param(&params, "window") {
        None => 86_400,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|w| (1..=90 * 86_400).contains(w))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_funnel",
                    "`window` is a number of seconds from 1 to 7776000 (90 days).",
                )
            })?,
    };
    let reached = if steps.is_empty() {
        Vec::new()
    } else {
        store
            .funnel(&query, &steps, window)
            .await
            .map_err(store_error)?
    };
    let first = reached.first().copied().unwrap_or(0);
    let steps = texts
        .iter()
        .zip(&reached)
        .enumerate()
        .map(|(i, (text, visitors))| {
            let share = |of: i64| {
                if of > 0 {
                    *visitors as f64 / of as f64
                } else {
                    0.0
                }
            };
            FunnelStepResult {
                step: (*text).to_owned(),
                visitors: *visitors,
                conversion: share(first),
                from_previous: if i == 0 { 1.0 } else { share(reached[i - 1]) },
            }
        })
        .collect();
    Ok(Json(Funnel {
        window_seconds: window,
        steps,
    }))
}
