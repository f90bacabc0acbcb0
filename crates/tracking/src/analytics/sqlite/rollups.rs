//! The embedded store's rollup tables: `sessions` (one row per session, its aggregate) and
//! `rollups` (per site × dimension × hour/day bucket × value: counters and a visitor sketch),
//! written in the same transaction as the raw events they count (see [`super::super::rollup`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rustc_hash::FxHashMap;

use rusqlite::OptionalExtension;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqlitePool};

use super::Writer;
use crate::analytics::AnalyticsEvent;
use crate::analytics::rollup::{
    ALL, Cell, DIMENSIONS, Delta, HOUR, Key, SessionStats, cover, value_key,
};
use crate::sites::SiteId;

pub const SCHEMA: &[&str] = &[
    // A rowid table (not WITHOUT ROWID): dense sketches are 4 KiB, larger than a page.
    "CREATE TABLE IF NOT EXISTS rollups (
        site_id     BLOB NOT NULL,
        dim         INTEGER NOT NULL,
        grain       INTEGER NOT NULL,
        bucket      INTEGER NOT NULL,
        value       TEXT NOT NULL,
        events      INTEGER NOT NULL,
        pageviews   INTEGER NOT NULL,
        sessions    INTEGER NOT NULL,
        bounces     INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        visitors    BLOB NOT NULL
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS rollups_key ON rollups(site_id, dim, grain, bucket, value)",
    "CREATE TABLE IF NOT EXISTS sessions (
        site_id     BLOB NOT NULL,
        session     TEXT NOT NULL,
        visitor     TEXT NOT NULL,
        start_ts    INTEGER NOT NULL,
        end_ts      INTEGER NOT NULL,
        events      INTEGER NOT NULL,
        pageviews   INTEGER NOT NULL,
        engaged     INTEGER NOT NULL,
        entry_ts    INTEGER, entry_page TEXT,
        exit_ts     INTEGER, exit_page TEXT,
        PRIMARY KEY (site_id, session)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS sessions_site_start ON sessions(site_id, start_ts)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

/// Bump to rebuild every rollup from the raw events on the next open.
const VERSION: &str = "1";

/// `(first, last)` of each run of `buckets` (ascending) whose neighbours are `step` apart.
fn adjacent_runs(buckets: &BTreeSet<i64>, step: i64) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &bucket in buckets {
        match runs.last_mut() {
            Some((_, last)) if bucket - *last <= step => *last = bucket,
            _ => runs.push((bucket, bucket)),
        }
    }
    runs
}

/// What newly stored events add by themselves, before the stored sessions and cells are read:
/// their rollup cells and their sessions' aggregates. Apart from [`apply`] so that an insert can
/// build it while its rows are being written.
#[derive(Default)]
pub struct Fold<'a> {
    delta: Delta<'a>,
    sessions: FxHashMap<(SiteId, &'a str), SessionStats>,
}

impl<'a> Fold<'a> {
    /// Adds a newly stored event (bots are stored, not counted).
    pub fn add(&mut self, e: &'a AnalyticsEvent) {
        if e.bot {
            return;
        }
        self.delta.add_event(e);
        self.sessions
            .entry((e.site_id, e.session.as_str()))
            .and_modify(|s| s.add_event(e))
            .or_insert_with(|| SessionStats::of(e));
    }
}

impl<'a> FromIterator<&'a AnalyticsEvent> for Fold<'a> {
    fn from_iter<I: IntoIterator<Item = &'a AnalyticsEvent>>(events: I) -> Self {
        let mut fold = Fold::default();
        for e in events {
            fold.add(e);
        }
        fold
    }
}

/// Folds newly stored events (each counted exactly once: the caller adds to `fold` only the
/// events its insert actually wrote) into `sessions` and `rollups`, on the store's writing
/// connection inside the caller's transaction. One prepared statement per kind, executed once
/// per row: primary-key lookups and single-row upserts, no SQL built per batch.
pub fn apply(conn: &rusqlite::Connection, fold: Fold<'_>) -> anyhow::Result<()> {
    let Fold {
        mut delta,
        sessions: batch_sessions,
    } = fold;
    if batch_sessions.is_empty() {
        return Ok(());
    }

    // Sessions: old aggregate out, new aggregate in.
    let mut read_session = conn.prepare(
        "SELECT visitor, start_ts, end_ts, events, pageviews, engaged,
                entry_ts, entry_page, exit_ts, exit_page
         FROM sessions WHERE site_id = ?1 AND session = ?2",
    )?;
    let mut write_session = conn.prepare(
        "INSERT OR REPLACE INTO sessions (site_id, session, visitor, start_ts, end_ts,
            events, pageviews, engaged, entry_ts, entry_page, exit_ts, exit_page)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for ((site, session), batch) in batch_sessions {
        let stored = read_session
            .query_row(
                rusqlite::params![site.0.as_bytes(), session],
                session_from_row,
            )
            .optional()?;
        let new = match stored {
            Some(old) => {
                delta.add_session(site, &old, -1);
                let mut new = old;
                new.merge(&batch);
                new
            }
            None => batch,
        };
        delta.add_session(site, &new, 1);
        let (entry, exit) = (new.entry.as_ref(), new.exit.as_ref());
        write_session.execute(rusqlite::params![
            site.0.as_bytes(),
            session,
            new.visitor,
            new.start_ts,
            new.end_ts,
            new.events,
            new.pageviews,
            new.engaged,
            entry.map(|e| e.0),
            entry.and_then(|e| e.1.as_deref()),
            exit.map(|e| e.0),
            exit.and_then(|e| e.1.as_deref()),
        ])?;
    }

    // Rollup cells: read what is stored for the touched keys, add, write back. The stored cells
    // are read per site, grain and run of adjacent touched buckets, every dimension at once (a
    // batch of events in time order touches one run: a handful of reads, not one per
    // dimension and bucket); only the touched ones are decoded.
    let mut touched: BTreeMap<(SiteId, u8), BTreeSet<i64>> = BTreeMap::new();
    for (site, _, grain, bucket, _) in delta.cells.keys() {
        touched.entry((*site, *grain)).or_default().insert(*bucket);
    }
    let dims = std::iter::once(ALL)
        .chain(DIMENSIONS.iter().map(|(code, _)| *code))
        .map(|code| code.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut read_cells = conn.prepare(&format!(
        "SELECT dim, bucket, value, events, pageviews, sessions, bounces, duration_ms, visitors
         FROM rollups WHERE site_id = ?1 AND dim IN ({dims}) AND grain = ?2
         AND bucket >= ?3 AND bucket <= ?4"
    ))?;
    // Stored cells of touched keys: (site, dim, grain, bucket) → stored value key → cell.
    let mut existing: FxHashMap<(SiteId, u8, u8, i64), FxHashMap<String, Cell>> =
        FxHashMap::default();
    for ((site, grain), buckets) in &touched {
        let step = if *grain == HOUR { 1 } else { 24 };
        for (lo, hi) in adjacent_runs(buckets, step) {
            let mut rows = read_cells.query(rusqlite::params![site.0.as_bytes(), grain, lo, hi])?;
            while let Some(r) = rows.next()? {
                let dim: u8 = r.get(0)?;
                let bucket: i64 = r.get(1)?;
                let value = r.get_ref(2)?.as_str()?;
                let key: Key<'_> = (*site, dim, *grain, bucket, value.strip_prefix('='));
                if delta.cells.contains_key(&key) {
                    let value = value.to_owned();
                    existing
                        .entry((*site, dim, *grain, bucket))
                        .or_default()
                        .insert(value, cell_from_row(r)?);
                }
            }
        }
    }
    let mut merged: Vec<(Key<'_>, String, Cell)> = Vec::with_capacity(delta.cells.len());
    for (key, cell) in delta.cells {
        let (site, dim, grain, bucket, value) = key;
        let value_key = value_key(value);
        let mut total = existing
            .get_mut(&(site, dim, grain, bucket))
            .and_then(|cells| cells.remove(value_key.as_str()))
            .unwrap_or_default();
        total.add(&cell);
        merged.push((key, value_key, total));
    }
    // In the index's order: neighbouring writes land on the same pages.
    merged.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut write_cell = conn.prepare(
        "INSERT INTO rollups (site_id, dim, grain, bucket, value, events, pageviews,
            sessions, bounces, duration_ms, visitors)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (site_id, dim, grain, bucket, value) DO UPDATE SET
            events = excluded.events, pageviews = excluded.pageviews,
            sessions = excluded.sessions, bounces = excluded.bounces,
            duration_ms = excluded.duration_ms, visitors = excluded.visitors",
    )?;
    for ((site, dim, grain, bucket, _), value, cell) in &merged {
        write_cell.execute(rusqlite::params![
            site.0.as_bytes(),
            dim,
            grain,
            bucket,
            value,
            cell.events,
            cell.pageviews,
            cell.sessions,
            cell.bounces,
            cell.duration_ms,
            cell.visitors.to_bytes(),
        ])?;
    }
    Ok(())
}

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionStats> {
    let entry_ts: Option<i64> = r.get("entry_ts")?;
    let exit_ts: Option<i64> = r.get("exit_ts")?;
    let entry_page: Option<String> = r.get("entry_page")?;
    let exit_page: Option<String> = r.get("exit_page")?;
    Ok(SessionStats {
        visitor: r.get("visitor")?,
        start_ts: r.get("start_ts")?,
        end_ts: r.get("end_ts")?,
        events: r.get("events")?,
        pageviews: r.get("pageviews")?,
        engaged: r.get("engaged")?,
        entry: entry_ts.map(|t| (t, entry_page)),
        exit: exit_ts.map(|t| (t, exit_page)),
    })
}

fn cell_from_row(r: &rusqlite::Row<'_>) -> anyhow::Result<Cell> {
    let mut cell = Cell {
        events: r.get("events")?,
        pageviews: r.get("pageviews")?,
        sessions: r.get("sessions")?,
        bounces: r.get("bounces")?,
        duration_ms: r.get("duration_ms")?,
        ..Cell::default()
    };
    cell.visitors
        .merge_bytes(r.get_ref("visitors")?.as_blob()?)?;
    Ok(cell)
}

/// The cells of `dim` over the epoch hours `[from, to)`, merged per value key.
pub async fn read(
    pool: &SqlitePool,
    site: SiteId,
    dim: u8,
    from: i64,
    to: i64,
) -> anyhow::Result<HashMap<String, Cell>> {
    let mut out: HashMap<String, Cell> = HashMap::new();
    for (grain, start, end) in cover(from, to) {
        let rows: Vec<SqliteRow> = sqlx::query(
            "SELECT value, events, pageviews, sessions, bounces, duration_ms, visitors
             FROM rollups WHERE site_id = ?1 AND dim = ?2 AND grain = ?3
             AND bucket >= ?4 AND bucket < ?5",
        )
        .bind(site)
        .bind(i64::from(dim))
        .bind(i64::from(grain))
        .bind(start)
        .bind(end)
        .fetch_all(pool)
        .await?;
        for r in &rows {
            let sketch: &[u8] = r.try_get("visitors")?;
            let value: String = r.try_get("value")?;
            let cell = out.entry(value).or_default();
            cell.events += r.try_get::<i64, _>("events")?;
            cell.pageviews += r.try_get::<i64, _>("pageviews")?;
            cell.sessions += r.try_get::<i64, _>("sessions")?;
            cell.bounces += r.try_get::<i64, _>("bounces")?;
            cell.duration_ms += r.try_get::<i64, _>("duration_ms")?;
            cell.visitors.merge_bytes(sketch)?;
        }
    }
    Ok(out)
}

/// Events counted in `[from, to)` (epoch hours): the rollups' own answer, without sketches.
pub async fn event_count(
    pool: &SqlitePool,
    site: SiteId,
    from: i64,
    to: i64,
) -> anyhow::Result<i64> {
    let mut total = 0;
    for (grain, start, end) in cover(from, to) {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(events), 0) FROM rollups WHERE site_id = ?1 AND dim = ?2
             AND grain = ?3 AND bucket >= ?4 AND bucket < ?5",
        )
        .bind(site)
        .bind(i64::from(ALL))
        .bind(i64::from(grain))
        .bind(start)
        .bind(end)
        .fetch_one(pool)
        .await?;
        total += n;
    }
    Ok(total)
}

/// Builds the rollups from the raw events when they were built by an older version (or not at
/// all: databases from before rollups existed). Runs once, on open, in one transaction of the
/// writing connection; the raw events are read through `pool` (a WAL reader sees them as they
/// were before the transaction, which does not change them).
pub async fn ensure_built(pool: &SqlitePool, writer: &Writer) -> anyhow::Result<()> {
    let version: Option<String> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'rollups'")
            .fetch_optional(pool)
            .await?;
    if version.as_deref() == Some(VERSION) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    writer.with(|conn| {
        conn.execute_batch("BEGIN IMMEDIATE; DELETE FROM rollups; DELETE FROM sessions;")
    })?;
    let rebuilt = async {
        let mut after: Option<uuid::Uuid> = None;
        let mut total = 0usize;
        loop {
            let rows: Vec<SqliteRow> = sqlx::query(AssertSqlSafe(format!(
                "SELECT {} FROM events WHERE ?1 IS NULL OR hit_id > ?1 ORDER BY hit_id LIMIT 50000",
                super::COLUMNS
            )))
            .bind(after)
            .fetch_all(pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.try_get("hit_id")?);
            let events = rows
                .iter()
                .map(super::row_to_event)
                .collect::<anyhow::Result<Vec<_>>>()?;
            total += events.len();
            writer.with(|conn| apply(conn, events.iter().collect()))?;
        }
        writer.with(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('rollups', ?1)",
                [VERSION],
            )?;
            conn.execute_batch("COMMIT")
        })?;
        anyhow::Ok(total)
    }
    .await;
    let total = rebuilt.inspect_err(|_| {
        writer.with(|conn| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        })
    })?;
    if total > 0 {
        tracing::info!(
            events = total,
            seconds = started.elapsed().as_secs_f64(),
            "analytics rollups rebuilt from raw events"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_buckets_are_read_in_runs_of_neighbours() {
        let hours: BTreeSet<i64> = [3, 4, 5, 9, 10, 20].into_iter().collect();
        assert_eq!(adjacent_runs(&hours, 1), vec![(3, 5), (9, 10), (20, 20)]);
        let days: BTreeSet<i64> = [24, 48, 96].into_iter().collect();
        assert_eq!(adjacent_runs(&days, 24), vec![(24, 48), (96, 96)]);
        assert!(adjacent_runs(&BTreeSet::new(), 1).is_empty());
    }
}
