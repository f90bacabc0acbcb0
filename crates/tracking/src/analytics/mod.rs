//! Analytics: enriched hits stored for dashboards, and the queries behind them.
//!
//! The pipeline turns each hit of a [`crate::gateway::LogRecord`] into one flat
//! [`AnalyticsEvent`] and inserts it into an [`AnalyticsStore`]. Inserts are idempotent on the hit
//! id, so redelivering the whole event log adds nothing twice. The embedded store is a SQLite file
//! of its own (`analytics.db`); at scale, ClickHouse ([`clickhouse`]) behind the same trait.

pub mod clickhouse;
pub mod hll;
pub mod query;
pub mod rollup;
pub mod routes;
pub mod sqlite;

use futures::future::BoxFuture;
use platform::Timestamp;
use platform::id::WorkspaceId;
use serde::{Deserialize, Serialize};

use crate::HitId;
use crate::sites::SiteId;

pub use query::{
    Breakdown, BreakdownRow, Dimension, Filter, FunnelStep, Interval, Query, Summary,
    TimeseriesPoint,
};

/// One enriched hit, flat, as dashboards read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnalyticsEvent {
    pub hit_id: HitId,
    pub site_id: SiteId,
    pub workspace_id: WorkspaceId,
    pub time: Timestamp,
    pub event_name: String,
    /// Who: the client id, else the user id, else the hit itself (one-off server events).
    pub visitor: String,
    /// The session key: `visitor` + GA4 `sid` when the hit carries one, otherwise a session
    /// opened by the pipeline after 30 minutes of inactivity.
    pub session: String,
    /// The visit counts as engaged (GA4 `seg=1`, or engagement time reported).
    pub engaged: bool,
    pub page_host: Option<String>,
    pub page_path: Option<String>,
    pub page_title: Option<String>,
    pub referrer_host: Option<String>,
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub term: Option<String>,
    pub content: Option<String>,
    pub channel: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    pub device: Option<String>,
    pub browser: Option<String>,
    pub os: Option<String>,
    /// The event's `value` parameter, when numeric.
    pub value: Option<f64>,
    pub currency: Option<String>,
    /// Event parameters as JSON, for breakdowns by parameter.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub bot: bool,
}

pub trait AnalyticsStore: Send + Sync + 'static {
    /// Inserts events; an event whose hit id is already stored is skipped.
    fn insert<'a>(&'a self, events: &'a [AnalyticsEvent]) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The session `visitor` had open at or before `time`, with its last event time, to continue
    /// sessions across batches and restarts.
    fn last_session<'a>(
        &'a self,
        site: SiteId,
        visitor: &'a str,
        before: Timestamp,
    ) -> BoxFuture<'a, anyhow::Result<Option<(String, Timestamp)>>>;

    fn summary<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, anyhow::Result<Summary>>;

    fn timeseries<'a>(
        &'a self,
        query: &'a Query,
        buckets: &'a [(Timestamp, Timestamp)],
    ) -> BoxFuture<'a, anyhow::Result<Vec<TimeseriesPoint>>>;

    fn breakdown<'a>(
        &'a self,
        query: &'a Query,
        dimension: &'a Dimension,
        limit: u32,
    ) -> BoxFuture<'a, anyhow::Result<Vec<BreakdownRow>>>;

    /// Visitors reaching each of `steps` in order within `window_seconds` of the first (see
    /// [`query::funnel_level`]).
    fn funnel<'a>(
        &'a self,
        query: &'a Query,
        steps: &'a [FunnelStep],
        window_seconds: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<i64>>>;

    /// Raw events, newest first, after `before` (exclusive) when given.
    fn events<'a>(
        &'a self,
        query: &'a Query,
        before: Option<HitId>,
        limit: u32,
    ) -> BoxFuture<'a, anyhow::Result<Vec<AnalyticsEvent>>>;
}

/// Opens the analytics store named by `url`: `sqlite://PATH`, or ClickHouse's HTTP interface as
/// `http(s)://[user:pass@]host:8123/?database=NAME` (see [`clickhouse`]).
pub async fn open(url: &str) -> anyhow::Result<std::sync::Arc<dyn AnalyticsStore>> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        // `sqlite://PATH[?exact_below=N]`: see `sqlite::DEFAULT_EXACT_BELOW`.
        let (path, exact_below) = match rest.split_once("?exact_below=") {
            Some((path, n)) => (
                path,
                n.parse().map_err(|_| {
                    anyhow::anyhow!("`exact_below` in the analytics URL must be a number")
                })?,
            ),
            None => (rest, sqlite::DEFAULT_EXACT_BELOW),
        };
        return Ok(std::sync::Arc::new(
            sqlite::SqliteAnalytics::open_with(std::path::Path::new(path), exact_below).await?,
        ));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(std::sync::Arc::new(
            clickhouse::ClickHouseAnalytics::open(url).await?,
        ));
    }
    anyhow::bail!("unsupported analytics URL (expected sqlite:// or ClickHouse's http(s)://)")
}
