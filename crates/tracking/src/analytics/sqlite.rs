//! The embedded analytics store: one flat `events` table in its own SQLite file
//! (`analytics.db`), keyed by hit id so inserts are idempotent, indexed by site and time.
//!
//! Times are integer milliseconds here (not the state database's RFC 3339 text): range scans and
//! bucketing over millions of rows are integer comparisons. Filters and dimensions come from the
//! closed sets in [`super::query`]; values are always bound, never spliced into SQL.
//!
//! Beside the raw rows, the same write transaction maintains rollups ([`rollups`],
//! [`super::rollup`]): unfiltered queries over whole hours read those instead of scanning raw
//! rows once the range holds more than `exact_below` events (below that the raw scan is cheap
//! and exact). Visitor counts from rollups are HyperLogLog estimates (±1.6 % standard error,
//! [`super::hll`]) and say so (`visitors_estimated`); every other figure is exact.

mod rollups;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use platform::Timestamp;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Arguments, AssertSqlSafe, Row, SqlitePool};

use super::query::{Dimension, FilterOp, FunnelStep, funnel_level, funnel_tick_ms};
use super::rollup::{ALL, Cell, dimension_code, key_value, whole_hours};
use super::{AnalyticsEvent, AnalyticsStore, BreakdownRow, Query, Summary, TimeseriesPoint};
use crate::HitId;
use crate::sites::SiteId;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events (
        hit_id        BLOB PRIMARY KEY,
        site_id       BLOB NOT NULL,
        workspace_id  BLOB NOT NULL,
        ts            INTEGER NOT NULL,
        event_name    TEXT NOT NULL,
        visitor       TEXT NOT NULL,
        session       TEXT NOT NULL,
        engaged       INTEGER NOT NULL,
        page_host     TEXT, page_path TEXT, page_title TEXT, referrer_host TEXT,
        source        TEXT, medium TEXT, campaign TEXT, term TEXT, content TEXT, channel TEXT,
        country       TEXT, region TEXT, city TEXT, device TEXT, browser TEXT, os TEXT,
        value         REAL, currency TEXT,
        params        TEXT NOT NULL DEFAULT '{}',
        bot           INTEGER NOT NULL
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS events_site_ts ON events(site_id, ts)",
    "CREATE INDEX IF NOT EXISTS events_site_visitor ON events(site_id, visitor, ts)",
];

pub(super) const COLUMNS: &str = "hit_id, site_id, workspace_id, ts, event_name, visitor, session, engaged, \
    page_host, page_path, page_title, referrer_host, source, medium, campaign, term, content, channel, \
    country, region, city, device, browser, os, value, currency, params, bot";

/// Ranges with fewer events than this are answered exactly from raw rows even when rollups
/// could answer them: the scan costs a few milliseconds there.
pub const DEFAULT_EXACT_BELOW: i64 = 20_000;

/// Every connection's settings beside WAL and `synchronous = NORMAL`. A writer's batch touches
/// tens of MiB of pages (raw rows, three indexes, sessions, rollups): SQLite's default 2 MiB
/// cache re-read and spilled them mid-transaction (a third of the writer thread's time in
/// pread/pwrite, bench/RESULTS.md). Statement journals stay in memory, and checkpoints (an
/// fsync each) come every 16 MiB of WAL.
const TUNING: [(&str, &str); 3] = [
    ("cache_size", "-65536"),
    ("temp_store", "memory"),
    ("wal_autocheckpoint", "4000"),
];

pub struct SqliteAnalytics {
    /// Readers: the dashboard's queries and the pipeline's session lookups.
    pool: SqlitePool,
    writer: Writer,
    exact_below: i64,
}

/// The one connection that writes `analytics.db` (raw rows and rollups): a `rusqlite`
/// connection used in place, on the calling thread. Through sqlx, every statement ran on the
/// connection's own worker thread with each argument first copied into an owned value, and
/// that thread was the pipeline's critical path (bench/RESULTS.md, 2026-12-03b: 31–34 µs per
/// event, a sixth of it binding). Here each statement is prepared once per insert and executed
/// a row at a time with borrowed values, as the event log's writer does.
pub(super) struct Writer(Mutex<rusqlite::Connection>);

impl Writer {
    fn open(path: &Path) -> anyhow::Result<Writer> {
        // WAL and `synchronous = NORMAL`, as the pool's connections (see `open_with`).
        let conn = crate::sqlite::open_writer(path)?;
        for (name, value) in TUNING {
            conn.pragma_update(None, name, value)?;
        }
        Ok(Writer(Mutex::new(conn)))
    }

    /// Runs `work` on the connection, blocking: on a multi-threaded runtime in
    /// `block_in_place`, so the worker's other tasks move to another thread meanwhile; on a
    /// current-thread runtime (tests) in place. One writer at a time: SQLite allows no more.
    pub(super) fn with<T>(&self, work: impl FnOnce(&mut rusqlite::Connection) -> T) -> T {
        let run = || work(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }
    }
}

impl SqliteAnalytics {
    pub async fn open(path: &Path) -> anyhow::Result<SqliteAnalytics> {
        Self::open_with(path, DEFAULT_EXACT_BELOW).await
    }

    /// `exact_below`: see [`DEFAULT_EXACT_BELOW`] (0: rollups whenever they can answer).
    pub async fn open_with(path: &Path, exact_below: i64) -> anyhow::Result<SqliteAnalytics> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Analytics can be rebuilt from the event log: NORMAL is durable against a crash of
            // the process and loses at most the last commits on power loss.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let options = TUNING.iter().fold(options, |options, (name, value)| {
            options.pragma(*name, *value)
        });
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open analytics database {}", path.display()))?;
        for statement in SCHEMA.iter().chain(rollups::SCHEMA) {
            sqlx::query(*statement).execute(&pool).await?;
        }
        let writer = Writer::open(path)
            .with_context(|| format!("cannot open analytics database {}", path.display()))?;
        rollups::ensure_built(&pool, &writer)
            .await
            .context("cannot build the analytics rollups")?;
        Ok(SqliteAnalytics {
            pool,
            writer,
            exact_below,
        })
    }

    /// The epoch hours `[from, to)` when rollups should answer `query` over that range: no
    /// filters, whole hours, and at least `exact_below` events in it.
    async fn rollup_hours(
        &self,
        query: &Query,
        from: Timestamp,
        to: Timestamp,
    ) -> anyhow::Result<Option<(i64, i64)>> {
        if !query.filters.is_empty() {
            return Ok(None);
        }
        let Some((from, to)) = whole_hours(from.as_millis(), to.as_millis()) else {
            return Ok(None);
        };
        if self.exact_below > 0
            && rollups::event_count(&self.pool, query.site_id, from, to).await? < self.exact_below
        {
            return Ok(None);
        }
        Ok(Some((from, to)))
    }
}

fn summary_of(cell: &Cell) -> Summary {
    let sessions = cell.sessions.max(0);
    Summary {
        visitors: cell.visitors.count(),
        sessions,
        pageviews: cell.pageviews,
        events: cell.events,
        bounce_rate: if sessions > 0 {
            cell.bounces as f64 / sessions as f64
        } else {
            0.0
        },
        avg_session_seconds: if sessions > 0 {
            cell.duration_ms as f64 / 1000.0 / sessions as f64
        } else {
            0.0
        },
        visitors_estimated: true,
    }
}

/// `site_id = ? AND ts >= ? AND ts < ? AND bot = 0` plus the filters, with their arguments.
fn where_clause(
    query: &Query,
    from: Timestamp,
    to: Timestamp,
) -> anyhow::Result<(String, SqliteArguments)> {
    let mut args = SqliteArguments::default();
    args.add(query.site_id).map_err(anyhow::Error::msg)?;
    args.add(from.as_millis()).map_err(anyhow::Error::msg)?;
    args.add(to.as_millis()).map_err(anyhow::Error::msg)?;
    let mut sql = String::from("site_id = ?1 AND ts >= ?2 AND ts < ?3 AND bot = 0");
    let mut n = 3;
    for filter in &query.filters {
        let column = column_sql(&filter.dimension, &mut args, &mut n)?;
        n += 1;
        let (op, value) = match filter.op {
            FilterOp::Is => ("=", filter.value.clone()),
            FilterOp::IsNot => ("IS NOT", filter.value.clone()),
            FilterOp::Contains => (
                "LIKE",
                format!(
                    "%{}%",
                    filter
                        .value
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                ),
            ),
        };
        let escape = if filter.op == FilterOp::Contains {
            " ESCAPE '\\'"
        } else {
            ""
        };
        sql.push_str(&format!(" AND {column} {op} ?{n}{escape}"));
        args.add(value).map_err(anyhow::Error::msg)?;
    }
    Ok((sql, args))
}

/// The highest `?N` [`where_clause`] binds.
fn placeholders_used(query: &Query) -> usize {
    3 + query.filters.len()
        + query
            .filters
            .iter()
            .filter(|f| matches!(f.dimension, Dimension::Param(_)))
            .count()
}

/// The SQL for a dimension: a whitelisted column, or a bound JSON path into `params`.
fn column_sql(
    dimension: &Dimension,
    args: &mut SqliteArguments,
    n: &mut usize,
) -> anyhow::Result<String> {
    Ok(match dimension {
        Dimension::Column(column) => (*column).to_owned(),
        Dimension::Param(name) => {
            *n += 1;
            args.add(format!("$.\"{name}\""))
                .map_err(anyhow::Error::msg)?;
            format!("CAST(json_extract(params, ?{n}) AS TEXT)")
        }
        // The session's row (primary-key lookup), exact whatever the range.
        Dimension::Session(column) => format!(
            "(SELECT s.{column} FROM sessions s WHERE s.site_id = events.site_id AND s.session = events.session)"
        ),
    })
}

/// Inserts `events` one row each, skipping hit ids already stored; says which were written.
fn insert_rows(
    conn: &rusqlite::Connection,
    events: &[AnalyticsEvent],
) -> anyhow::Result<Vec<bool>> {
    let placeholders = (1..=28)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut insert = conn.prepare(&format!(
        "INSERT INTO events ({COLUMNS}) VALUES ({placeholders}) ON CONFLICT (hit_id) DO NOTHING"
    ))?;
    let mut params = Vec::new();
    events
        .iter()
        .map(|e| {
            params.clear();
            serde_json::to_writer(&mut params, &e.params)?;
            let written = insert.execute(rusqlite::params![
                e.hit_id.0.as_bytes(),
                e.site_id.0.as_bytes(),
                e.workspace_id.0.as_bytes(),
                e.time.as_millis(),
                e.event_name,
                e.visitor,
                e.session,
                e.engaged,
                e.page_host,
                e.page_path,
                e.page_title,
                e.referrer_host,
                e.source,
                e.medium,
                e.campaign,
                e.term,
                e.content,
                e.channel,
                e.country,
                e.region,
                e.city,
                e.device,
                e.browser,
                e.os,
                e.value,
                e.currency,
                // serde_json writes UTF-8.
                std::str::from_utf8(&params)?,
                e.bot,
            ])?;
            Ok(written == 1)
        })
        .collect()
}

impl AnalyticsStore for SqliteAnalytics {
    fn insert<'a>(&'a self, events: &'a [AnalyticsEvent]) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            self.writer.with(|conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                // Meanwhile, on a second thread: what the events add to the rollups if all of
                // them are new, the common case. (Without a thread to be had, afterwards.)
                let (written, fold) = std::thread::scope(|scope| {
                    let folding = std::thread::Builder::new()
                        .name("analytics-fold".into())
                        .spawn_scoped(scope, || events.iter().collect::<rollups::Fold>())
                        .ok();
                    let written = insert_rows(&tx, events);
                    let fold = match folding {
                        Some(thread) => thread
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                        None => events.iter().collect(),
                    };
                    (written, fold)
                });
                let written = written?;
                let fold = if written.iter().all(|w| *w) {
                    fold
                } else {
                    // A redelivery: count only the rows this insert wrote (a hit twice in one
                    // batch is written, and counted, once).
                    drop(fold);
                    events
                        .iter()
                        .zip(&written)
                        .filter_map(|(e, written)| written.then_some(e))
                        .collect()
                };
                rollups::apply(&tx, fold)?;
                tx.commit()?;
                Ok(())
            })
        }
        .boxed()
    }

    fn last_session<'a>(
        &'a self,
        site: SiteId,
        visitor: &'a str,
        before: Timestamp,
    ) -> BoxFuture<'a, anyhow::Result<Option<(String, Timestamp)>>> {
        async move {
            let row: Option<(String, i64)> = sqlx::query_as(
                "SELECT session, ts FROM events WHERE site_id = ?1 AND visitor = ?2 AND ts <= ?3
                 ORDER BY ts DESC LIMIT 1",
            )
            .bind(site)
            .bind(visitor)
            .bind(before.as_millis())
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|(session, ts)| (session, Timestamp::from_millis(ts))))
        }
        .boxed()
    }

    fn summary<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, anyhow::Result<Summary>> {
        async move {
            if let Some((from, to)) = self.rollup_hours(query, query.from, query.to).await? {
                let cells = rollups::read(&self.pool, query.site_id, ALL, from, to).await?;
                return Ok(summary_of(&cells.into_values().next().unwrap_or_default()));
            }
            let (filter, args) = where_clause(query, query.from, query.to)?;
            let sessions_sql = format!(
                "SELECT COALESCE(AVG(pv <= 1 AND eng = 0), 0.0), COALESCE(AVG(dur), 0.0) FROM (
                    SELECT SUM(event_name = 'page_view') AS pv, MAX(engaged) AS eng,
                           (MAX(ts) - MIN(ts)) / 1000.0 AS dur
                    FROM events WHERE {filter} GROUP BY session)"
            );
            let totals: SqliteRow = sqlx::query_with(
                AssertSqlSafe(format!(
                    "SELECT COUNT(DISTINCT visitor), COUNT(DISTINCT session),
                            COALESCE(SUM(event_name = 'page_view'), 0), COUNT(*)
                     FROM events WHERE {filter}"
                )),
                args.clone(),
            )
            .fetch_one(&self.pool)
            .await?;
            let sessions: SqliteRow = sqlx::query_with(AssertSqlSafe(sessions_sql), args)
                .fetch_one(&self.pool)
                .await?;
            Ok(Summary {
                visitors: totals.try_get(0)?,
                sessions: totals.try_get(1)?,
                pageviews: totals.try_get(2)?,
                events: totals.try_get(3)?,
                bounce_rate: sessions.try_get(0)?,
                avg_session_seconds: sessions.try_get(1)?,
                visitors_estimated: false,
            })
        }
        .boxed()
    }

    fn timeseries<'a>(
        &'a self,
        query: &'a Query,
        buckets: &'a [(Timestamp, Timestamp)],
    ) -> BoxFuture<'a, anyhow::Result<Vec<TimeseriesPoint>>> {
        async move {
            let mut points = Vec::with_capacity(buckets.len());
            let clipped: Vec<(Timestamp, Timestamp)> = buckets
                .iter()
                .map(|(start, end)| ((*start).max(query.from), (*end).min(query.to)))
                .collect();
            // Rollups when the whole range qualifies and every bucket is whole hours (always, in
            // whole-hour zones); sessions are then counted in the bucket where they started.
            if self
                .rollup_hours(query, query.from, query.to)
                .await?
                .is_some()
                && let Some(hours) = clipped
                    .iter()
                    .map(|(s, e)| whole_hours(s.as_millis(), e.as_millis()))
                    .collect::<Option<Vec<_>>>()
            {
                for ((start, _), (from, to)) in buckets.iter().zip(hours) {
                    let cells = rollups::read(&self.pool, query.site_id, ALL, from, to).await?;
                    let s = summary_of(&cells.into_values().next().unwrap_or_default());
                    points.push(TimeseriesPoint {
                        start: *start,
                        visitors: s.visitors,
                        sessions: s.sessions,
                        pageviews: s.pageviews,
                        events: s.events,
                        visitors_estimated: true,
                    });
                }
                return Ok(points);
            }
            // One indexed range scan per bucket: exact distinct counts, and each bucket is a
            // calendar unit of the site's zone computed by the caller (DST-correct).
            for (start, end) in buckets {
                let (filter, args) =
                    where_clause(query, (*start).max(query.from), (*end).min(query.to))?;
                let row: SqliteRow = sqlx::query_with(
                    AssertSqlSafe(format!(
                        "SELECT COUNT(DISTINCT visitor), COUNT(DISTINCT session),
                                COALESCE(SUM(event_name = 'page_view'), 0), COUNT(*)
                         FROM events WHERE {filter}"
                    )),
                    args,
                )
                .fetch_one(&self.pool)
                .await?;
                points.push(TimeseriesPoint {
                    start: *start,
                    visitors: row.try_get(0)?,
                    sessions: row.try_get(1)?,
                    pageviews: row.try_get(2)?,
                    events: row.try_get(3)?,
                    visitors_estimated: false,
                });
            }
            Ok(points)
        }
        .boxed()
    }

    fn breakdown<'a>(
        &'a self,
        query: &'a Query,
        dimension: &'a Dimension,
        limit: u32,
    ) -> BoxFuture<'a, anyhow::Result<Vec<BreakdownRow>>> {
        async move {
            if let Dimension::Column(column) = dimension
                && let Some(code) = dimension_code(column)
                && let Some((from, to)) = self.rollup_hours(query, query.from, query.to).await?
            {
                let cells = rollups::read(&self.pool, query.site_id, code, from, to).await?;
                let mut rows: Vec<(String, BreakdownRow)> = cells
                    .into_iter()
                    .map(|(key, cell)| {
                        let row = BreakdownRow {
                            value: key_value(&key),
                            visitors: cell.visitors.count(),
                            events: cell.events,
                            visitors_estimated: true,
                        };
                        (key, row)
                    })
                    .collect();
                // The raw query's order: visitors, events, then the value with "not set" first.
                rows.sort_by(|(ka, a), (kb, b)| {
                    b.visitors.cmp(&a.visitors).then(b.events.cmp(&a.events)).then(ka.cmp(kb))
                });
                return Ok(rows.into_iter().take(limit as usize).map(|(_, r)| r).collect());
            }
            let (filter, mut args) = where_clause(query, query.from, query.to)?;
            let mut n = 3 + query.filters.len() + query.filters.iter().filter(|f| matches!(f.dimension, Dimension::Param(_))).count();
            let column = column_sql(dimension, &mut args, &mut n)?;
            n += 1;
            args.add(i64::from(limit)).map_err(anyhow::Error::msg)?;
            let rows: Vec<SqliteRow> = sqlx::query_with(
                AssertSqlSafe(format!(
                    "SELECT {column} AS value, COUNT(DISTINCT visitor) AS visitors, COUNT(*) AS events
                     FROM events WHERE {filter} GROUP BY 1 ORDER BY visitors DESC, events DESC, value LIMIT ?{n}"
                )),
                args,
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok(BreakdownRow { value: r.try_get(0)?, visitors: r.try_get(1)?, events: r.try_get(2)?, visitors_estimated: false }))
                .collect()
        }
        .boxed()
    }

    fn funnel<'a>(
        &'a self,
        query: &'a Query,
        steps: &'a [FunnelStep],
        window_seconds: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<i64>>> {
        async move {
            use futures::TryStreamExt;
            let (filter, mut args) = where_clause(query, query.from, query.to)?;
            let mut n = placeholders_used(query);
            let mut conditions = Vec::with_capacity(steps.len());
            for step in steps {
                conditions.push(match step {
                    FunnelStep::Page(path) => {
                        n += 1;
                        args.add(path.clone()).map_err(anyhow::Error::msg)?;
                        format!("(event_name = 'page_view' AND page_path = ?{n})")
                    }
                    FunnelStep::Event { name, param } => {
                        n += 1;
                        args.add(name.clone()).map_err(anyhow::Error::msg)?;
                        let mut condition = format!("(event_name = ?{n}");
                        if let Some((param, value)) = param {
                            args.add(format!("$.\"{param}\""))
                                .map_err(anyhow::Error::msg)?;
                            args.add(value.clone()).map_err(anyhow::Error::msg)?;
                            condition.push_str(&format!(
                                " AND CAST(json_extract(params, ?{}) AS TEXT) = ?{}",
                                n + 1,
                                n + 2
                            ));
                            n += 2;
                        }
                        condition.push(')');
                        condition
                    }
                });
            }
            // One pass over the matching events of the range, visitor by visitor, in time order.
            let tick = funnel_tick_ms(query, window_seconds);
            let window = window_seconds * 1000 / tick;
            let sql = format!(
                "SELECT visitor, (ts - {}) / {tick}, {} FROM events WHERE {filter} AND ({})
                 ORDER BY visitor, ts, hit_id",
                query.from.as_millis(),
                conditions.join(", "),
                conditions.join(" OR ")
            );
            let mut rows = sqlx::query_with(AssertSqlSafe(sql), args).fetch(&self.pool);
            let mut reached = vec![0i64; steps.len()];
            let mut current: Option<String> = None;
            let mut events: Vec<(i64, Vec<bool>)> = Vec::new();
            let mut finish = |events: &mut Vec<(i64, Vec<bool>)>| {
                let level = funnel_level(events.drain(..), steps.len(), window);
                for count in reached.iter_mut().take(level) {
                    *count += 1;
                }
            };
            while let Some(row) = rows.try_next().await? {
                let visitor: String = row.try_get(0)?;
                if current.as_deref() != Some(visitor.as_str()) {
                    finish(&mut events);
                    current = Some(visitor);
                }
                let matched = (0..steps.len())
                    .map(|i| row.try_get::<bool, _>(i + 2))
                    .collect::<Result<Vec<_>, _>>()?;
                events.push((row.try_get(1)?, matched));
            }
            finish(&mut events);
            Ok(reached)
        }
        .boxed()
    }

    fn events<'a>(
        &'a self,
        query: &'a Query,
        before: Option<HitId>,
        limit: u32,
    ) -> BoxFuture<'a, anyhow::Result<Vec<AnalyticsEvent>>> {
        async move {
            let (filter, mut args) = where_clause(query, query.from, query.to)?;
            let n = 4
                + query.filters.len()
                + query
                    .filters
                    .iter()
                    .filter(|f| matches!(f.dimension, Dimension::Param(_)))
                    .count();
            args.add(before.map(|b| b.uuid()))
                .map_err(anyhow::Error::msg)?;
            args.add(i64::from(limit)).map_err(anyhow::Error::msg)?;
            let rows: Vec<SqliteRow> = sqlx::query_with(
                AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM events WHERE {filter} AND (?{n} IS NULL OR hit_id < ?{n})
                     ORDER BY hit_id DESC LIMIT ?{}",
                    n + 1
                )),
                args,
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(row_to_event).collect()
        }
        .boxed()
    }
}

pub(super) fn row_to_event(r: &SqliteRow) -> anyhow::Result<AnalyticsEvent> {
    let params: String = r.try_get("params")?;
    Ok(AnalyticsEvent {
        hit_id: r.try_get("hit_id")?,
        site_id: r.try_get("site_id")?,
        workspace_id: r.try_get("workspace_id")?,
        time: Timestamp::from_millis(r.try_get("ts")?),
        event_name: r.try_get("event_name")?,
        visitor: r.try_get("visitor")?,
        session: r.try_get("session")?,
        engaged: r.try_get("engaged")?,
        page_host: r.try_get("page_host")?,
        page_path: r.try_get("page_path")?,
        page_title: r.try_get("page_title")?,
        referrer_host: r.try_get("referrer_host")?,
        source: r.try_get("source")?,
        medium: r.try_get("medium")?,
        campaign: r.try_get("campaign")?,
        term: r.try_get("term")?,
        content: r.try_get("content")?,
        channel: r.try_get("channel")?,
        country: r.try_get("country")?,
        region: r.try_get("region")?,
        city: r.try_get("city")?,
        device: r.try_get("device")?,
        browser: r.try_get("browser")?,
        os: r.try_get("os")?,
        value: r.try_get("value")?,
        currency: r.try_get("currency")?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        bot: r.try_get("bot")?,
    })
}
