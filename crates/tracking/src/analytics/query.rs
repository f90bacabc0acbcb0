//! What a dashboard asks: a site, a time range, filters on dimensions; and what it gets back.
//! Dimensions and operators are closed sets, parsed at the edge, so no caller text ever becomes
//! SQL.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use platform::{ApiError, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::sites::SiteId;

/// A dimension events can be grouped or filtered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    /// A stored column (the name is one of [`COLUMNS`]).
    Column(&'static str),
    /// An event parameter, by name (`param:coupon`).
    Param(String),
    /// A property of the event's session (the name is one of [`SESSION_COLUMNS`]): every event
    /// of a session that entered at `/pricing` has `entry_page` `/pricing`.
    Session(&'static str),
}

/// Public session dimension names and the session columns they read: the path of the session's
/// first and last page view.
pub const SESSION_COLUMNS: &[(&str, &str)] =
    &[("entry_page", "entry_page"), ("exit_page", "exit_page")];

/// Public dimension names and the columns they read.
pub const COLUMNS: &[(&str, &str)] = &[
    ("page", "page_path"),
    ("host", "page_host"),
    ("title", "page_title"),
    ("referrer", "referrer_host"),
    ("source", "source"),
    ("medium", "medium"),
    ("campaign", "campaign"),
    ("term", "term"),
    ("content", "content"),
    ("channel", "channel"),
    ("country", "country"),
    ("region", "region"),
    ("city", "city"),
    ("device", "device"),
    ("browser", "browser"),
    ("os", "os"),
    ("event", "event_name"),
];

impl Dimension {
    pub fn parse(name: &str) -> Result<Dimension, ApiError> {
        if let Some(param) = name.strip_prefix("param:") {
            let ok = !param.is_empty()
                && param.len() <= 40
                && param
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return if ok {
                Ok(Dimension::Param(param.to_owned()))
            } else {
                Err(ApiError::bad_request(
                    "invalid_dimension",
                    "`param:` needs a parameter name of letters, digits and `_`.",
                ))
            };
        }
        if let Some((_, column)) = SESSION_COLUMNS.iter().find(|(public, _)| *public == name) {
            return Ok(Dimension::Session(column));
        }
        COLUMNS
            .iter()
            .find(|(public, _)| *public == name)
            .map(|(_, column)| Dimension::Column(column))
            .ok_or_else(|| {
                let names: Vec<&str> = COLUMNS
                    .iter()
                    .chain(SESSION_COLUMNS)
                    .map(|(p, _)| *p)
                    .collect();
                ApiError::bad_request(
                    "invalid_dimension",
                    format!(
                        "Unknown dimension `{name}`; use one of {} or `param:<name>`.",
                        names.join(", ")
                    ),
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    Is,
    IsNot,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub dimension: Dimension,
    pub op: FilterOp,
    pub value: String,
}

impl Filter {
    /// `dimension:op:value`, e.g. `country:is:GB`, `page:contains:/blog`, `param:plan:is_not:free`.
    pub fn parse(text: &str) -> Result<Filter, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "invalid_filter",
                format!("`{text}` is not `dimension:is|is_not|contains:value`."),
            )
        };
        let (dimension_text, rest) = match text.strip_prefix("param:") {
            Some(rest) => {
                let (name, rest) = rest.split_once(':').ok_or_else(bad)?;
                (format!("param:{name}"), rest)
            }
            None => {
                let (name, rest) = text.split_once(':').ok_or_else(bad)?;
                (name.to_owned(), rest)
            }
        };
        let (op, value) = rest.split_once(':').ok_or_else(bad)?;
        let op = match op {
            "is" => FilterOp::Is,
            "is_not" => FilterOp::IsNot,
            "contains" => FilterOp::Contains,
            _ => return Err(bad()),
        };
        Ok(Filter {
            dimension: Dimension::parse(&dimension_text)?,
            op,
            value: value.to_owned(),
        })
    }
}

/// A site, a half-open time range `[from, to)`, filters.
#[derive(Debug, Clone)]
pub struct Query {
    pub site_id: SiteId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    pub visitors: i64,
    pub sessions: i64,
    pub pageviews: i64,
    pub events: i64,
    /// Share of sessions with at most one page view and no engagement (0 to 1).
    pub bounce_rate: f64,
    /// Average time between a session's first and last event, in seconds.
    pub avg_session_seconds: f64,
    /// `visitors` is a HyperLogLog estimate (standard error 1.6 %), read from rollups; session
    /// figures then count the sessions that started in the range. Otherwise everything is exact.
    #[serde(default)]
    pub visitors_estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TimeseriesPoint {
    /// Start of the bucket.
    pub start: Timestamp,
    pub visitors: i64,
    pub sessions: i64,
    pub pageviews: i64,
    pub events: i64,
    /// As in [`Summary::visitors_estimated`]; estimated buckets count sessions where they started.
    pub visitors_estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BreakdownRow {
    /// The dimension's value (`null`: not set).
    pub value: Option<String>,
    pub visitors: i64,
    pub events: i64,
    /// `visitors` is a HyperLogLog estimate (standard error 1.6 %), read from rollups.
    pub visitors_estimated: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Breakdown {
    pub dimension: String,
    pub rows: Vec<BreakdownRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

/// The buckets covering `[from, to)` in `zone`: calendar hours, days, weeks (from Monday) or
/// months of the site's local time, as UTC instants, so DST days are 23 or 25 hours long as
/// they should be. At most 1,000 buckets.
pub fn buckets(
    from: Timestamp,
    to: Timestamp,
    interval: Interval,
    zone: Tz,
) -> Result<Vec<(Timestamp, Timestamp)>, ApiError> {
    let local = from.as_datetime().with_timezone(&zone);
    let start_date = local.date_naive();
    let mut cursor: DateTime<Utc> = match interval {
        Interval::Hour => local
            .with_minute(0)
            .and_then(|d| d.with_second(0))
            .and_then(|d| d.with_nanosecond(0))
            .map_or(from.as_datetime(), |d| d.with_timezone(&Utc)),
        Interval::Day => midnight(start_date, zone),
        Interval::Week => midnight(
            start_date - Duration::days(i64::from(start_date.weekday().num_days_from_monday())),
            zone,
        ),
        Interval::Month => midnight(start_date.with_day(1).unwrap_or(start_date), zone),
    };
    let mut out = Vec::new();
    while cursor < to.as_datetime() {
        let next = match interval {
            Interval::Hour => cursor + Duration::hours(1),
            Interval::Day => midnight(
                cursor.with_timezone(&zone).date_naive() + Duration::days(1),
                zone,
            ),
            Interval::Week => midnight(
                cursor.with_timezone(&zone).date_naive() + Duration::days(7),
                zone,
            ),
            Interval::Month => {
                let d = cursor.with_timezone(&zone).date_naive();
                let first_next = if d.month() == 12 {
                    NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)
                };
                midnight(first_next.unwrap_or(d), zone)
            }
        };
        if next <= cursor {
            break;
        }
        out.push((Timestamp::from(cursor), Timestamp::from(next)));
        if out.len() > 1000 {
            return Err(ApiError::bad_request(
                "too_many_buckets",
                "Choose a longer interval or a shorter range (at most 1,000 buckets).",
            ));
        }
        cursor = next;
    }
    Ok(out)
}

/// The first instant of `date` in `zone` (midnight, or the end of a DST gap at midnight).
fn midnight(date: NaiveDate, zone: Tz) -> DateTime<Utc> {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    zone.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

/// One step of a funnel: a page view of a path, or an event by name, optionally with one
/// parameter equal to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunnelStep {
    Page(String),
    Event {
        name: String,
        param: Option<(String, String)>,
    },
}

impl FunnelStep {
    /// `page:/pricing`, `event:purchase` or `event:purchase:coupon=WINTER`.
    pub fn parse(text: &str) -> Result<FunnelStep, ApiError> {
        let bad = || {
            ApiError::bad_request(
                "invalid_funnel",
                format!(
                    "`{text}` is not `page:<path>`, `event:<name>` or `event:<name>:<param>=<value>`."
                ),
            )
        };
        if let Some(path) = text.strip_prefix("page:") {
            return if path.is_empty() {
                Err(bad())
            } else {
                Ok(FunnelStep::Page(path.to_owned()))
            };
        }
        let rest = text.strip_prefix("event:").ok_or_else(bad)?;
        let (name, param) = match rest.split_once(':') {
            None => (rest, None),
            Some((name, condition)) => {
                let (param, value) = condition.split_once('=').ok_or_else(bad)?;
                let ok = !param.is_empty()
                    && param.len() <= 40
                    && param
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(bad());
                }
                (name, Some((param.to_owned(), value.to_owned())))
            }
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(FunnelStep::Event {
            name: name.to_owned(),
            param,
        })
    }
}

/// The clock funnels are evaluated on, in milliseconds per tick: milliseconds since the range's
/// start when the range plus the window fits in 31 bits of them (24 days; `windowFunnel` on
/// ClickHouse 18.16 takes only `DateTime` or `UInt32`), else seconds.
pub fn funnel_tick_ms(query: &Query, window_seconds: i64) -> i64 {
    // 18.16 gives wrong answers (level 0) past 2^31, so stay below it, window included.
    let span = query.to.as_millis() - query.from.as_millis() + window_seconds * 1000;
    if span < i64::from(i32::MAX) { 1 } else { 1000 }
}

/// The deepest step of a funnel one visitor reached (0: none), by ClickHouse's `windowFunnel`
/// algorithm in its default mode, so both stores answer alike: every (tick, step) an event
/// matches (ticks: [`funnel_tick_ms`]), sorted by tick then step; step 1 starts a chain at its
/// tick; step k continues the chain that reached step k − 1 if it is at most `window` ticks
/// after that chain's start. Within one tick steps count in step order, as current ClickHouse
/// sorts them; 18.16 keeps the order rows arrive in, so ties within a millisecond may differ
/// there.
pub fn funnel_level(
    events: impl IntoIterator<Item = (i64, Vec<bool>)>,
    steps: usize,
    window: i64,
) -> usize {
    let mut matches: Vec<(i64, usize)> = events
        .into_iter()
        .flat_map(|(second, matched)| {
            matched
                .into_iter()
                .enumerate()
                .take(steps)
                .filter(|(_, hit)| *hit)
                .map(move |(step, _)| (second, step))
        })
        .collect();
    matches.sort_unstable();
    // Per step reached, the start of the chain that reached it.
    let mut started: Vec<Option<i64>> = vec![None; steps];
    for (second, step) in matches {
        if step == 0 {
            started[0] = Some(second);
        } else if let Some(start) = started[step - 1]
            && second <= start + window
        {
            started[step] = Some(start);
            if step + 1 == steps {
                return steps;
            }
        }
    }
    started.iter().take_while(|s| s.is_some()).count()
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunnelStepResult {
    /// The step as given (`page:/pricing`, `event:purchase:coupon=WINTER`).
    pub step: String,
    /// Visitors who reached this step (in order, within the window).
    pub visitors: i64,
    /// Share of the first step's visitors (0 to 1).
    pub conversion: f64,
    /// Share of the previous step's visitors (0 to 1; 1 for the first step).
    pub from_previous: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Funnel {
    pub window_seconds: i64,
    pub steps: Vec<FunnelStepResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::from(DateTime::parse_from_rfc3339(text).unwrap().to_utc())
    }

    #[test]
    fn dimensions_and_filters_parse_from_a_closed_set() {
        assert_eq!(
            Dimension::parse("page").unwrap(),
            Dimension::Column("page_path")
        );
        assert_eq!(
            Dimension::parse("param:coupon").unwrap(),
            Dimension::Param("coupon".into())
        );
        assert!(Dimension::parse("page_path; DROP TABLE events").is_err());
        assert!(Dimension::parse("param:a'b").is_err());
        let f = Filter::parse("country:is:GB").unwrap();
        assert_eq!(
            (f.dimension, f.op, f.value.as_str()),
            (Dimension::Column("country"), FilterOp::Is, "GB")
        );
        let f = Filter::parse("param:plan:is_not:free:trial").unwrap();
        assert_eq!(
            (f.dimension, f.op, f.value.as_str()),
            (
                Dimension::Param("plan".into()),
                FilterOp::IsNot,
                "free:trial"
            )
        );
        assert!(Filter::parse("country:equals:GB").is_err());
        assert!(Filter::parse("nonsense").is_err());
    }

    #[test]
    fn funnel_steps_parse_and_levels_follow_window_funnel() {
        assert_eq!(
            FunnelStep::parse("page:/pricing").unwrap(),
            FunnelStep::Page("/pricing".into())
        );
        assert_eq!(
            FunnelStep::parse("event:purchase:coupon=WINTER").unwrap(),
            FunnelStep::Event {
                name: "purchase".into(),
                param: Some(("coupon".into(), "WINTER".into()))
            }
        );
        for bad in ["page:", "event:", "click:x", "event:a:b", "event:a:b'c=1"] {
            assert!(FunnelStep::parse(bad).is_err(), "{bad}");
        }
        let e = |t: i64, m: [bool; 3]| (t, m.to_vec());
        // In order within the window.
        let full = [
            e(0, [true, false, false]),
            e(5, [false, true, false]),
            e(9, [false, false, true]),
        ];
        assert_eq!(funnel_level(full.clone(), 3, 10), 3);
        assert_eq!(funnel_level(full, 3, 8), 2, "third step too late");
        // Within one second, steps count in step order (as windowFunnel sorts them).
        assert_eq!(
            funnel_level(
                [e(4, [false, true, false]), e(4, [true, false, false])],
                3,
                10
            ),
            2
        );
        // Out of order: step 2 before step 1 does not count.
        assert_eq!(
            funnel_level(
                [e(0, [false, true, false]), e(1, [true, false, false])],
                3,
                10
            ),
            1
        );
        // A later step-1 event restarts the chain without losing the earlier progress.
        assert_eq!(
            funnel_level(
                [
                    e(0, [true, false, false]),
                    e(5, [false, true, false]),
                    e(8, [true, false, false]),
                    e(12, [false, false, true])
                ],
                3,
                10
            ),
            2
        );
        assert_eq!(funnel_level(Vec::<(i64, Vec<bool>)>::new(), 3, 10), 0);
    }

    #[test]
    fn day_buckets_follow_the_site_zone_across_dst() {
        let zone: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 is the spring-forward day in Berlin: 23 hours long.
        let b = buckets(
            ts("2026-03-28T12:00:00Z"),
            ts("2026-03-30T12:00:00Z"),
            Interval::Day,
            zone,
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].0, ts("2026-03-27T23:00:00Z"));
        assert_eq!(b[1].0, ts("2026-03-28T23:00:00Z"));
        assert_eq!(b[2].0, ts("2026-03-29T22:00:00Z"));
        assert_eq!(b[1].1.seconds_since(b[1].0), 23.0 * 3600.0);
    }

    #[test]
    fn week_and_month_buckets_start_on_calendar_boundaries() {
        let utc: Tz = "UTC".parse().unwrap();
        let weeks = buckets(
            ts("2026-11-18T10:00:00Z"),
            ts("2026-11-30T00:00:00Z"),
            Interval::Week,
            utc,
        )
        .unwrap();
        assert_eq!(weeks[0].0, ts("2026-11-16T00:00:00Z"), "Monday");
        assert_eq!(weeks.len(), 2);
        let months = buckets(
            ts("2026-11-18T10:00:00Z"),
            ts("2027-01-02T00:00:00Z"),
            Interval::Month,
            utc,
        )
        .unwrap();
        assert_eq!(
            months.iter().map(|m| m.0).collect::<Vec<_>>(),
            vec![
                ts("2026-11-01T00:00:00Z"),
                ts("2026-12-01T00:00:00Z"),
                ts("2027-01-01T00:00:00Z")
            ]
        );
        assert!(
            buckets(
                ts("2020-01-01T00:00:00Z"),
                ts("2026-01-01T00:00:00Z"),
                Interval::Hour,
                utc
            )
            .is_err()
        );
    }
}
