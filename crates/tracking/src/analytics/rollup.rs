//! Rollups of the embedded store: what a batch of newly stored events adds to the per-site,
//! per-bucket, per-dimension-value counters and visitor sketches, and which buckets cover a range.
//!
//! Buckets are UTC hours and UTC days, both numbered in epoch hours (a day bucket is its first
//! hour). A range of whole hours is covered by whole UTC days where it can and hours at its
//! edges, so 30 days read about 30 day rows and up to 47 hour rows per dimension value. A site's
//! time zone is applied by the caller choosing the range: any range of whole UTC hours works,
//! which is every calendar unit of a zone whose offset is whole hours. Half-hour and
//! quarter-hour zones (India, Nepal, parts of Australia) give bucket edges inside an hour: those
//! queries, and any range not on whole hours, read the raw events instead (exact, slower).
//!
//! Session figures (sessions, bounces, duration) are attributed to the hour the session
//! started, on the "all events" row (dimension 0). A session is a row of the `sessions` table
//! whose aggregate changes as its events arrive; the rollup receives the difference between the
//! session's old and new contribution, so counters stay exact under any arrival order.

use rustc_hash::FxHashMap;

use super::AnalyticsEvent;
use super::hll::Sketch;
use crate::sites::SiteId;

pub const HOUR_MS: i64 = 3_600_000;

/// Bucket grains.
pub const HOUR: u8 = 0;
pub const DAY: u8 = 1;

/// The "all events" pseudo-dimension.
pub const ALL: u8 = 0;

/// Rolled-up dimensions: code and the event column. Others (host, title, term, content,
/// region, city, event parameters, entry/exit page) are answered from raw events.
pub const DIMENSIONS: &[(u8, &str)] = &[
    (1, "page_path"),
    (2, "referrer_host"),
    (3, "source"),
    (4, "medium"),
    (5, "campaign"),
    (6, "channel"),
    (7, "country"),
    (8, "device"),
    (9, "browser"),
    (10, "os"),
    (11, "event_name"),
];

/// The rollup code of an event column, when it is rolled up.
pub fn dimension_code(column: &str) -> Option<u8> {
    DIMENSIONS
        .iter()
        .find(|(_, c)| *c == column)
        .map(|(code, _)| *code)
}

fn column_value<'a>(e: &'a AnalyticsEvent, column: &str) -> Option<&'a str> {
    match column {
        "page_path" => e.page_path.as_deref(),
        "referrer_host" => e.referrer_host.as_deref(),
        "source" => e.source.as_deref(),
        "medium" => e.medium.as_deref(),
        "campaign" => e.campaign.as_deref(),
        "channel" => e.channel.as_deref(),
        "country" => e.country.as_deref(),
        "device" => e.device.as_deref(),
        "browser" => e.browser.as_deref(),
        "os" => e.os.as_deref(),
        "event_name" => Some(e.event_name.as_str()),
        _ => None,
    }
}

/// A dimension value as a key: `""` for "not set", `"=" + value` otherwise, so the key is never
/// NULL and sorts "not set" first, as SQLite sorts NULL.
pub fn value_key(value: Option<&str>) -> String {
    value.map_or_else(String::new, |v| format!("={v}"))
}

pub fn key_value(key: &str) -> Option<String> {
    key.strip_prefix('=').map(str::to_owned)
}

/// One rollup row's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    pub events: i64,
    pub pageviews: i64,
    pub sessions: i64,
    pub bounces: i64,
    pub duration_ms: i64,
    pub visitors: Sketch,
}

impl Cell {
    pub fn add(&mut self, other: &Cell) {
        self.events += other.events;
        self.pageviews += other.pageviews;
        self.sessions += other.sessions;
        self.bounces += other.bounces;
        self.duration_ms += other.duration_ms;
        self.visitors.merge(&other.visitors);
    }
}

/// `(site, dimension, grain, bucket in epoch hours, value)`, the value borrowed from the events
/// (`None`: not set; the "all events" row has none). Ordered as the stored [`value_key`]s are.
pub type Key<'a> = (SiteId, u8, u8, i64, Option<&'a str>);

pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

fn buckets_of(ms: i64) -> [(u8, i64); 2] {
    let hour = hour_of(ms);
    [(HOUR, hour), (DAY, hour.div_euclid(24) * 24)]
}

/// What a batch adds to the rollups; built from newly stored events and session changes.
#[derive(Default)]
pub struct Delta<'a> {
    pub cells: FxHashMap<Key<'a>, Cell>,
}

impl<'a> Delta<'a> {
    fn cell(&mut self, key: Key<'a>) -> &mut Cell {
        self.cells.entry(key).or_default()
    }

    /// Adds a newly stored (never before counted), non-bot event.
    pub fn add_event(&mut self, e: &'a AnalyticsEvent) {
        let visitor = super::hll::hash(&e.visitor);
        let pageview = i64::from(e.event_name == "page_view");
        let ms = e.time.as_millis();
        for (grain, bucket) in buckets_of(ms) {
            let mut add = |dim: u8, value: Option<&'a str>| {
                let cell = self.cell((e.site_id, dim, grain, bucket, value));
                cell.events += 1;
                cell.pageviews += pageview;
                cell.visitors.insert_hash(visitor);
            };
            add(ALL, None);
            for (code, column) in DIMENSIONS {
                add(*code, column_value(e, column));
            }
        }
    }

    /// Adds (`sign` 1) or withdraws (`sign` −1) a session's contribution to its start buckets.
    pub fn add_session(&mut self, site: SiteId, session: &SessionStats, sign: i64) {
        for (grain, bucket) in buckets_of(session.start_ts) {
            let cell = self.cell((site, ALL, grain, bucket, None));
            cell.sessions += sign;
            cell.bounces += sign * i64::from(session.bounced());
            cell.duration_ms += sign * (session.end_ts - session.start_ts);
        }
    }
}

/// A session's aggregate over its (non-bot) events, as the `sessions` table stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStats {
    pub visitor: String,
    pub start_ts: i64,
    pub end_ts: i64,
    pub events: i64,
    pub pageviews: i64,
    pub engaged: bool,
    /// The first page view: `(time, page)`.
    pub entry: Option<(i64, Option<String>)>,
    /// The last page view.
    pub exit: Option<(i64, Option<String>)>,
}

impl SessionStats {
    pub fn of(e: &AnalyticsEvent) -> SessionStats {
        let ms = e.time.as_millis();
        let page = (e.event_name == "page_view").then(|| (ms, e.page_path.clone()));
        SessionStats {
            visitor: e.visitor.clone(),
            start_ts: ms,
            end_ts: ms,
            events: 1,
            pageviews: i64::from(page.is_some()),
            engaged: e.engaged,
            entry: page.clone(),
            exit: page,
        }
    }

    /// Folds one more event of the session in: the same as `merge(&SessionStats::of(e))`, without
    /// copying the visitor and page of every event.
    pub fn add_event(&mut self, e: &AnalyticsEvent) {
        let ms = e.time.as_millis();
        self.start_ts = self.start_ts.min(ms);
        self.end_ts = self.end_ts.max(ms);
        self.events += 1;
        self.engaged |= e.engaged;
        if e.event_name == "page_view" {
            self.pageviews += 1;
            if self.entry.as_ref().is_none_or(|entry| ms < entry.0) {
                self.entry = Some((ms, e.page_path.clone()));
            }
            if self.exit.as_ref().is_none_or(|exit| ms > exit.0) {
                self.exit = Some((ms, e.page_path.clone()));
            }
        }
    }

    /// Bounced as the raw summary defines it: at most one page view and never engaged.
    pub fn bounced(&self) -> bool {
        self.pageviews <= 1 && !self.engaged
    }

    /// Folds `other` (later or earlier events of the same session) in. Ties keep what was
    /// there first, so replays give the same answer.
    pub fn merge(&mut self, other: &SessionStats) {
        self.start_ts = self.start_ts.min(other.start_ts);
        self.end_ts = self.end_ts.max(other.end_ts);
        self.events += other.events;
        self.pageviews += other.pageviews;
        self.engaged |= other.engaged;
        if let Some(entry) = &other.entry
            && self.entry.as_ref().is_none_or(|e| entry.0 < e.0)
        {
            self.entry = Some(entry.clone());
        }
        if let Some(exit) = &other.exit
            && self.exit.as_ref().is_none_or(|e| exit.0 > e.0)
        {
            self.exit = Some(exit.clone());
        }
    }
}

/// `[from, to)` in epoch hours as `(grain, start, end)` segments: whole UTC days in the middle,
/// hours at the edges.
pub fn cover(from: i64, to: i64) -> Vec<(u8, i64, i64)> {
    let first_day = from.div_euclid(24) * 24 + if from.rem_euclid(24) == 0 { 0 } else { 24 };
    let last_day = to.div_euclid(24) * 24;
    if first_day >= last_day {
        return if from < to {
            vec![(HOUR, from, to)]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    if from < first_day {
        out.push((HOUR, from, first_day));
    }
    out.push((DAY, first_day, last_day));
    if last_day < to {
        out.push((HOUR, last_day, to));
    }
    out
}

/// The epoch hours of `[from, to)` in ms, when both ends are whole hours.
pub fn whole_hours(from: i64, to: i64) -> Option<(i64, i64)> {
    (from.rem_euclid(HOUR_MS) == 0 && to.rem_euclid(HOUR_MS) == 0)
        .then_some((from / HOUR_MS, to / HOUR_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_covered_by_days_and_edge_hours() {
        assert_eq!(cover(5, 5), vec![]);
        assert_eq!(cover(5, 20), vec![(HOUR, 5, 20)]);
        assert_eq!(cover(24, 48), vec![(DAY, 24, 48)]);
        assert_eq!(
            cover(23, 24 * 31 + 2),
            vec![
                (HOUR, 23, 24),
                (DAY, 24, 24 * 31),
                (HOUR, 24 * 31, 24 * 31 + 2)
            ]
        );
        assert_eq!(cover(-3, 2), vec![(HOUR, -3, 2)]);
        assert_eq!(cover(10, 30), vec![(HOUR, 10, 30)]);
        assert_eq!(whole_hours(HOUR_MS * 3, HOUR_MS * 5), Some((3, 5)));
        assert_eq!(whole_hours(HOUR_MS * 3 + 1, HOUR_MS * 5), None);
    }

    #[test]
    fn value_keys_keep_not_set_apart_and_first() {
        assert_eq!(key_value(&value_key(None)), None);
        assert_eq!(key_value(&value_key(Some(""))), Some(String::new()));
        assert_eq!(key_value(&value_key(Some("/a"))), Some("/a".into()));
        assert!(value_key(None) < value_key(Some("")));
    }

    fn event(ms: i64, name: &str, page: Option<&str>, engaged: bool) -> AnalyticsEvent {
        AnalyticsEvent {
            hit_id: crate::HitId(uuid::Uuid::now_v7()),
            site_id: SiteId(uuid::Uuid::from_u128(1)),
            workspace_id: platform::id::WorkspaceId(uuid::Uuid::from_u128(2)),
            time: platform::Timestamp::from_millis(ms),
            event_name: name.into(),
            visitor: "v".into(),
            session: "v:1".into(),
            engaged,
            page_host: None,
            page_path: page.map(str::to_owned),
            page_title: None,
            referrer_host: None,
            source: None,
            medium: None,
            campaign: None,
            term: None,
            content: None,
            channel: None,
            country: None,
            region: None,
            city: None,
            device: None,
            browser: None,
            os: None,
            value: None,
            currency: None,
            params: serde_json::Value::Null,
            bot: false,
        }
    }

    #[test]
    fn adding_an_event_is_merging_its_stats() {
        let events = [
            event(50, "page_view", Some("/b"), false),
            event(10, "page_view", Some("/a"), false),
            event(10, "page_view", Some("/tie"), false),
            event(70, "scroll", Some("/c"), true),
            event(90, "page_view", None, false),
            event(90, "page_view", Some("/tie"), false),
        ];
        for first in 0..events.len() {
            let mut merged = SessionStats::of(&events[first]);
            let mut added = merged.clone();
            for (i, e) in events.iter().enumerate().filter(|(i, _)| *i != first) {
                merged.merge(&SessionStats::of(e));
                added.add_event(e);
                assert_eq!(added, merged, "first {first}, then {i}");
            }
        }
    }

    #[test]
    fn sessions_merge_in_any_order() {
        let stats = |ms: i64, page: Option<&str>, engaged: bool| SessionStats {
            visitor: "v".into(),
            start_ts: ms,
            end_ts: ms,
            events: 1,
            pageviews: i64::from(page.is_some()),
            engaged,
            entry: page.map(|p| (ms, Some(p.to_owned()))),
            exit: page.map(|p| (ms, Some(p.to_owned()))),
        };
        let parts = [
            stats(10, Some("/a"), false),
            stats(30, None, true),
            stats(20, Some("/b"), false),
        ];
        let mut forward = parts[0].clone();
        forward.merge(&parts[1]);
        forward.merge(&parts[2]);
        let mut backward = parts[2].clone();
        backward.merge(&parts[1]);
        backward.merge(&parts[0]);
        assert_eq!(forward, backward);
        assert_eq!(
            (forward.start_ts, forward.end_ts, forward.events),
            (10, 30, 3)
        );
        assert_eq!(forward.entry, Some((10, Some("/a".into()))));
        assert_eq!(forward.exit, Some((20, Some("/b".into()))));
        assert!(!forward.bounced());
        assert!(parts[0].bounced());
    }
}
