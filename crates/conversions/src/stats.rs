//! Conversion stats per trigger and platform: `GET …/conversions/stats?from=&to=[&interval=day]`.
//! Totals count the conversions generated in the window by their current status; with
//! `interval=day` each row also carries a dense per-day series in UTC days (workspaces have no
//! time zone of their own): conversions generated that day, and from the attempt log, those sent
//! to the platform that day (whatever it answered), accepted and failed for good.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use platform::db::Dialect;
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::ConversionStatus;
use crate::{Platform, TriggerId};

/// Longest per-day series one request may ask for.
pub const MAX_DAYS: i64 = 366;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(conversion_stats))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Window start: an RFC 3339 instant, or a date (`2026-12-01`, its UTC midnight);
    /// default 30 days ago.
    pub from: Option<String>,
    /// Window end (exclusive), same forms; default now.
    pub to: Option<String>,
    /// `day`: add a per-day series (UTC days) to every row.
    pub interval: Option<String>,
}

/// One UTC day of a trigger on a platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct DayStats {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Conversions generated that day.
    pub generated: i64,
    /// Conversions that went out to the platform that day (once each, however many
    /// attempts), whatever it answered.
    pub sent: i64,
    /// Accepted (matched) by the platform that day.
    pub accepted: i64,
    /// Failed for good that day (refused, or out of attempts).
    pub failed: i64,
}

/// Counts of one trigger on one platform.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsRow {
    pub trigger_id: Option<TriggerId>,
    pub platform: Platform,
    /// Conversions generated in the window.
    pub total: i64,
    /// … of which the platform accepted.
    pub sent: i64,
    /// … of which failed for good.
    pub failed: i64,
    /// … of which wait for (or are in) delivery.
    pub pending: i64,
    /// With `interval=day`: every UTC day of the window, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<DayStats>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub from: Timestamp,
    pub to: Timestamp,
    /// `day` when the rows carry a series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    pub data: Vec<StatsRow>,
}

fn parse_bound(raw: Option<&str>, field: &str, default: Timestamp) -> ApiResult<Timestamp> {
    let Some(text) = raw else {
        return Ok(default);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp::from(t.with_timezone(&Utc)));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Timestamp::from(day.and_time(NaiveTime::MIN).and_utc()));
    }
    Err(ApiError::invalid_field(
        field,
        format!("`{field}` must be an RFC 3339 instant or a date (YYYY-MM-DD)."),
    ))
}

/// The first and last UTC day the window touches.
fn day_span(from: Timestamp, to: Timestamp) -> (NaiveDate, NaiveDate) {
    // `to` is exclusive: a window ending at midnight does not touch that day.
    let last = (to.as_datetime() - chrono::Duration::microseconds(1)).date_naive();
    (from.as_datetime().date_naive(), last)
}

/// The UTC days the window touches, as `YYYY-MM-DD`.
fn days(from: Timestamp, to: Timestamp) -> Vec<String> {
    let (first, last) = day_span(from, to);
    let mut out = Vec::new();
    let mut day = first;
    while day <= last {
        out.push(day.format("%Y-%m-%d").to_string());
        match day.checked_add_days(Days::new(1)) {
            Some(next) => day = next,
            None => break,
        }
    }
    out
}

/// The SQL for a UTC day of a timestamp column: SQLite stores fixed-width RFC 3339 text in
/// UTC (its first ten characters are the day), PostgreSQL `timestamptz`.
fn day_of(dialect: Dialect, column: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("substr({column}, 1, 10)"),
        Dialect::Postgres => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
    }
}

type Key = (Option<TriggerId>, Platform);

/// Conversions per trigger and platform in a window: generated, sent (accepted), failed,
/// pending; with `interval=day` also per UTC day: generated, sent, accepted, failed.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/stats", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), StatsQuery),
    responses((status = 200, body = Stats), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id))]
async fn conversion_stats(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<StatsQuery>,
) -> ApiResult<Json<Stats>> {
    scope.require(Role::Member)?;
    let now = Timestamp::now();
    let from = parse_bound(
        query.from.as_deref(),
        "from",
        now - std::time::Duration::from_secs(30 * 86400),
    )?;
    let to = parse_bound(query.to.as_deref(), "to", now)?;
    if to <= from {
        return Err(ApiError::invalid_field("to", "`to` must be after `from`."));
    }
    let daily = match query.interval.as_deref() {
        None => false,
        Some("day") => true,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "interval",
                "`interval` must be `day`.",
            ));
        }
    };
    // Counted before the days are listed, so a window of centuries is refused without
    // building its list first.
    let (first, last) = day_span(from, to);
    if daily && (last - first).num_days() + 1 > MAX_DAYS {
        return Err(ApiError::invalid_field(
            "from",
            format!("A daily series covers at most {MAX_DAYS} days."),
        ));
    }
    let days = if daily { days(from, to) } else { Vec::new() };

    let rows: Vec<(Option<TriggerId>, String, String, i64)> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT trigger_id, platform, status, COUNT(*) FROM conversion_events
         WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3
         GROUP BY trigger_id, platform, status ORDER BY trigger_id, platform",
    ).bind(scope.workspace_id).bind(from).bind(to).fetch_all(pool).await)?;
    let mut data: Vec<StatsRow> = Vec::new();
    let row_of = |data: &mut Vec<StatsRow>, key: Key| -> usize {
        match data
            .iter()
            .position(|r| r.trigger_id == key.0 && r.platform == key.1)
        {
            Some(i) => i,
            None => {
                data.push(StatsRow {
                    trigger_id: key.0,
                    platform: key.1,
                    total: 0,
                    sent: 0,
                    failed: 0,
                    pending: 0,
                    series: None,
                });
                data.len() - 1
            }
        }
    };
    for (trigger_id, platform, status, count) in rows {
        let platform = Platform::parse(&platform).unwrap_or(Platform::Meta);
        let i = row_of(&mut data, (trigger_id, platform));
        let row = &mut data[i];
        row.total += count;
        match ConversionStatus::parse(&status) {
            ConversionStatus::Sent => row.sent += count,
            ConversionStatus::Failed => row.failed += count,
            _ => row.pending += count,
        }
    }
    if daily {
        let series = daily_series(&state, &scope, from, to).await?;
        for key in series.keys() {
            row_of(&mut data, *key);
        }
        // Every row gets every day of the window; days without a cell are zeros.
        for row in &mut data {
            let by_day = series.get(&(row.trigger_id, row.platform));
            row.series = Some(
                days.iter()
                    .map(|d| {
                        by_day
                            .and_then(|cells| cells.get(d))
                            .cloned()
                            .unwrap_or_else(|| DayStats {
                                date: d.clone(),
                                ..DayStats::default()
                            })
                    })
                    .collect(),
            );
        }
    }
    Ok(Json(Stats {
        from,
        to,
        interval: daily.then(|| "day".to_owned()),
        data,
    }))
}

/// Per (trigger, platform) and UTC day: generated from the conversions, sent / accepted /
/// failed from their attempts (each conversion has at most one accepting or failing attempt).
async fn daily_series(
    state: &AppState,
    scope: &Scope,
    from: Timestamp,
    to: Timestamp,
) -> ApiResult<BTreeMap<Key, BTreeMap<String, DayStats>>> {
    let dialect = state.db.dialect();
    let created = day_of(dialect, "created_at");
    let generated: Vec<(Option<TriggerId>, String, String, i64)> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT trigger_id, platform, {created} AS day, COUNT(*) FROM conversion_events
         WHERE workspace_id = $1 AND created_at >= $2 AND created_at < $3
         GROUP BY trigger_id, platform, day"
    ))).bind(scope.workspace_id).bind(from).bind(to).fetch_all(pool).await)?;
    let attempted = day_of(dialect, "a.created_at");
    let delivered: Vec<(Option<TriggerId>, String, String, i64, i64, i64)> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT e.trigger_id, e.platform, {attempted} AS day, COUNT(DISTINCT a.conversion_id),
                SUM(CASE WHEN a.outcome = 'accepted' THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.outcome = 'rejected' THEN 1 ELSE 0 END)
         FROM conversion_attempts a
         JOIN conversion_events e ON e.workspace_id = a.workspace_id AND e.id = a.conversion_id
         WHERE a.workspace_id = $1 AND a.created_at >= $2 AND a.created_at < $3
         GROUP BY e.trigger_id, e.platform, day"
    ))).bind(scope.workspace_id).bind(from).bind(to).fetch_all(pool).await)?;
    let mut out: BTreeMap<Key, BTreeMap<String, DayStats>> = BTreeMap::new();
    for (trigger, platform, day, count) in generated {
        cell(&mut out, trigger, &platform, day).generated += count;
    }
    for (trigger, platform, day, sent, accepted, failed) in delivered {
        let c = cell(&mut out, trigger, &platform, day);
        c.sent += sent;
        c.accepted += accepted;
        c.failed += failed;
    }
    Ok(out)
}

fn cell<'a>(
    out: &'a mut BTreeMap<Key, BTreeMap<String, DayStats>>,
    trigger: Option<TriggerId>,
    platform: &str,
    day: String,
) -> &'a mut DayStats {
    let platform = Platform::parse(platform).unwrap_or(Platform::Meta);
    out.entry((trigger, platform))
        .or_default()
        .entry(day.clone())
        .or_insert_with(|| DayStats {
            date: day,
            ..DayStats::default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::from(
            DateTime::parse_from_rfc3339(text)
                .expect("instant")
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn a_window_touches_its_utc_days_and_not_the_day_it_ends_at_midnight() {
        assert_eq!(
            days(at("2026-11-30T23:00:00Z"), at("2026-12-02T00:00:00Z")),
            ["2026-11-30", "2026-12-01"]
        );
        assert_eq!(
            days(at("2026-12-01T10:00:00Z"), at("2026-12-01T10:00:01Z")),
            ["2026-12-01"]
        );
        // An offset is converted to UTC first.
        assert_eq!(
            days(
                at("2026-12-01T01:00:00+02:00"),
                at("2026-12-01T03:00:00+02:00")
            ),
            ["2026-11-30", "2026-12-01"]
        );
    }

    #[test]
    fn bounds_take_instants_and_dates() {
        let default = at("2026-01-01T00:00:00Z");
        assert_eq!(
            parse_bound(Some("2026-12-01"), "from", default).ok(),
            Some(at("2026-12-01T00:00:00Z"))
        );
        assert_eq!(parse_bound(None, "from", default).ok(), Some(default));
        assert!(parse_bound(Some("yesterday"), "from", default).is_err());
    }
}
