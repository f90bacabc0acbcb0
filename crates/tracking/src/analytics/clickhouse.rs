//! The scale-out analytics store: one flat `events` table in ClickHouse, spoken to over its HTTP
//! interface with plain `reqwest` (JSONEachRow in and out), in SQL that both Debian's 18.16 and
//! current ClickHouse accept.
//!
//! Selected by `analytics_url = "http://host:8123/?database=NAME"` (or `https://`). `database`
//! defaults to `switchyard`; the database and the table are created on open. Credentials go in the
//! URL's user info (`http://user:pass@host:8123/…`, sent as HTTP basic auth); any other query
//! parameter is passed to ClickHouse with every request (settings such as
//! `max_execution_time=30`).
//!
//! Idempotency: `insert` skips the hits already stored (looked up by site, time range and hit id,
//! which the primary index serves) and the hits repeated within its batch, and one store's
//! inserts take turns, so a redelivered batch adds no row and counts are plain `count()`s. The
//! table is also a `ReplacingMergeTree` keyed by `(site_id, toDate(ts), hit_id)`: should two
//! processes insert the same hit at the same moment (a redelivery racing the original), the
//! background merges collapse the pair eventually (`OPTIMIZE TABLE … FINAL` at once); until then
//! that hit counts twice. Raw reads take `LIMIT 1 BY hit_id`, visitors and sessions are distinct
//! counts. Until 2026-12 every count was `uniqExact(hit_id)`, exact even with unmerged duplicates,
//! but a hash set of every hit id made the dashboard 2–3× slower than a plain `count()`
//! (bench/RESULTS.md); `FINAL` was not an option (a single-threaded merge at query time on 18.16).
//!
//! Times: `time_ms` (Int64, epoch milliseconds) is what queries compare and order by, exactly as
//! the SQLite store does; `ts` (DateTime, seconds) is `MATERIALIZED` from it, for partitioning and
//! the primary index, and each range condition repeats on `ts` so the index prunes.
//!
//! Binding: 18.16 has no query parameters, so values are spliced as string literals through
//! [`quote`] (unit-tested below), numbers are formatted from integers, and dimensions and columns
//! come from the closed sets of [`super::query`]. Event parameters are stored twice: the JSON as
//! text (returned by raw reads) and as parallel `param_keys`/`param_values` arrays, each value
//! already in the text form SQLite's `CAST(json_extract(…) AS TEXT)` yields, so breakdowns and
//! filters by `param:` behave the same on both stores without JSON functions 18.16 lacks.

use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use platform::Timestamp;
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::query::{Dimension, FilterOp};
use super::{AnalyticsEvent, AnalyticsStore, BreakdownRow, Query, Summary, TimeseriesPoint};
use crate::HitId;
use crate::sites::SiteId;

/// Runs of equal-length buckets one time-series scan tells apart (see [`bucket_expression`]);
/// more make another `UNION ALL` branch, so a row never evaluates more than this many branches.
const RUNS_PER_SCAN: usize = 8;

/// Rows per insert request.
const ROWS_PER_INSERT: usize = 10_000;

/// Hit ids per lookup of those already stored: keeps the query text under `max_query_size`.
const IDS_PER_LOOKUP: usize = 2_000;

const DEFAULT_DATABASE: &str = "switchyard";

/// The inserted columns, in [`InsertRow`] order (`ts` is materialized).
const INSERT_COLUMNS: &str = "hit_id, site_id, workspace_id, time_ms, event_name, visitor, \
    session, engaged, page_host, page_path, page_title, referrer_host, source, medium, campaign, \
    term, content, channel, country, region, city, device, browser, os, value, currency, params, \
    param_keys, param_values, bot";

/// The columns raw reads select, in [`EventRow`] order.
const READ_COLUMNS: &str = "hit_id, site_id, workspace_id, time_ms, event_name, visitor, \
    session, engaged, page_host, page_path, page_title, referrer_host, source, medium, campaign, \
    term, content, channel, country, region, city, device, browser, os, value, currency, params, \
    bot";

fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            site_id       String,
            hit_id        String,
            workspace_id  String,
            time_ms       Int64,
            ts            DateTime MATERIALIZED toDateTime(intDiv(greatest(time_ms, 0), 1000)),
            event_name    String,
            visitor       String,
            session       String,
            engaged       UInt8,
            page_host Nullable(String), page_path Nullable(String), page_title Nullable(String),
            referrer_host Nullable(String), source Nullable(String), medium Nullable(String),
            campaign Nullable(String), term Nullable(String), content Nullable(String),
            channel Nullable(String), country Nullable(String), region Nullable(String),
            city Nullable(String), device Nullable(String), browser Nullable(String),
            os Nullable(String),
            value         Nullable(Float64),
            currency      Nullable(String),
            params        String,
            param_keys    Array(String),
            param_values  Array(String),
            bot           UInt8
        ) ENGINE = ReplacingMergeTree()
        PARTITION BY toYYYYMM(ts)
        ORDER BY (site_id, toDate(ts), hit_id)"
    )
}

/// `text` as a ClickHouse string literal: quoted, with backslash, quote and control characters
/// escaped, so no value can end the literal early.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

pub struct ClickHouseAnalytics {
    client: reqwest::Client,
    /// The server's HTTP endpoint, without credentials.
    endpoint: Url,
    auth: Option<(String, Option<String>)>,
    /// `` `db`.events ``
    table: String,
    /// Inserts take turns, so two batches holding the same hit cannot both find it missing.
    insert_turn: tokio::sync::Mutex<()>,
}

impl ClickHouseAnalytics {
    /// Connects to `url` (`http(s)://[user:pass@]host:port/?database=NAME[&setting=value…]`) and
    /// creates the database and table when missing.
    pub async fn open(url: &str) -> anyhow::Result<ClickHouseAnalytics> {
        let parsed = Url::parse(url).context("invalid ClickHouse analytics URL")?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "ClickHouse analytics URL must be http:// or https://"
        );
        let mut database = DEFAULT_DATABASE.to_owned();
        let mut passthrough = Vec::new();
        for (key, value) in parsed.query_pairs() {
            if key == "database" {
                database = value.into_owned();
            } else {
                passthrough.push((key.into_owned(), value.into_owned()));
            }
        }
        anyhow::ensure!(
            !database.is_empty()
                && database.len() <= 64
                && database
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !database.as_bytes()[0].is_ascii_digit(),
            "ClickHouse database name must be letters, digits and `_`"
        );
        let auth = (!parsed.username().is_empty()).then(|| {
            (
                parsed.username().to_owned(),
                parsed.password().map(str::to_owned),
            )
        });
        let mut endpoint = parsed.clone();
        endpoint.set_query(None);
        endpoint
            .set_username("")
            .and_then(|()| endpoint.set_password(None))
            .map_err(|()| anyhow::anyhow!("ClickHouse analytics URL needs a host"))?;
        if !passthrough.is_empty() {
            endpoint.query_pairs_mut().extend_pairs(passthrough);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()?;
        let store = ClickHouseAnalytics {
            client,
            endpoint,
            auth,
            table: format!("`{database}`.events"),
            insert_turn: tokio::sync::Mutex::new(()),
        };
        store
            .execute(format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
            .await
            .with_context(|| format!("cannot create ClickHouse database {database}"))?;
        store.execute(create_table(&store.table)).await?;
        Ok(store)
    }

    /// Sends `body` (a statement, or an INSERT followed by its rows) and returns the response text;
    /// ClickHouse's own message on failure.
    async fn send(&self, body: String) -> anyhow::Result<String> {
        let mut request = self.client.post(self.endpoint.clone()).body(body);
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, password.as_deref());
        }
        let response = request.send().await.context("ClickHouse unreachable")?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "ClickHouse answered {status}: {}",
            text.trim()
        );
        Ok(text)
    }

    async fn execute(&self, sql: String) -> anyhow::Result<()> {
        self.send(sql).await.map(drop)
    }

    /// Runs a SELECT and reads its rows (`FORMAT JSONEachRow` is appended).
    async fn rows<T: DeserializeOwned>(&self, sql: String) -> anyhow::Result<Vec<T>> {
        let text = self.send(format!("{sql}\nFORMAT JSONEachRow")).await?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .with_context(|| format!("unexpected ClickHouse row {line}"))
            })
            .collect()
    }

    /// The hit ids of `events` already stored (per site, within the batch's time range, so the
    /// primary index prunes to those days).
    async fn stored(
        &self,
        events: &[AnalyticsEvent],
    ) -> anyhow::Result<std::collections::HashSet<uuid::Uuid>> {
        let mut by_site: std::collections::HashMap<SiteId, Vec<&AnalyticsEvent>> =
            std::collections::HashMap::new();
        for e in events {
            by_site.entry(e.site_id).or_default().push(e);
        }
        let mut stored = std::collections::HashSet::new();
        for (site, events) in by_site {
            for chunk in events.chunks(IDS_PER_LOOKUP) {
                let times = chunk.iter().map(|e| e.time.as_millis());
                let (from, to) = (times.clone().min().unwrap_or(0), times.max().unwrap_or(0));
                let ids: Vec<String> = chunk
                    .iter()
                    .map(|e| quote(&e.hit_id.uuid().to_string()))
                    .collect();
                let rows: Vec<StoredHit> = self
                    .rows(format!(
                        "SELECT DISTINCT hit_id FROM {} WHERE site_id = {} \
                         AND ts >= toDateTime({}) AND ts <= toDateTime({}) AND hit_id IN ({})",
                        self.table,
                        quote(&site.uuid().to_string()),
                        seconds(from),
                        seconds(to),
                        ids.join(",")
                    ))
                    .await?;
                stored.extend(rows.into_iter().map(|r| r.hit_id));
            }
        }
        Ok(stored)
    }

    async fn one<T: DeserializeOwned>(&self, sql: String) -> anyhow::Result<T> {
        self.rows(sql)
            .await?
            .into_iter()
            .next()
            .context("ClickHouse returned no row")
    }
}

/// Consecutive time-series buckets of one length: bucket `first + i` is
/// `[start + i·len, start + (i + 1)·len)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    first: usize,
    start: i64,
    len: i64,
    count: usize,
}

impl Run {
    fn end(&self) -> i64 {
        self.start + self.len * self.count as i64
    }
}

/// The caller's buckets as segments of contiguous runs (at most [`RUNS_PER_SCAN`] a segment):
/// hours, and days or weeks between DST changes, are one run each; months are a run or two a
/// year's worth. A gap between buckets starts a new segment, so rows in it are never counted.
fn bucket_segments(buckets: &[(Timestamp, Timestamp)]) -> Vec<Vec<Run>> {
    let mut segments: Vec<Vec<Run>> = Vec::new();
    for (i, (start, end)) in buckets.iter().enumerate() {
        let (start, end) = (start.as_millis(), end.as_millis());
        if end <= start {
            continue;
        }
        let len = end - start;
        let last = segments.last_mut().and_then(|segment| segment.last_mut());
        let contiguous = last.as_ref().is_some_and(|run| run.end() == start);
        match last {
            Some(run) if contiguous && run.len == len && run.first + run.count == i => {
                run.count += 1;
            }
            _ => {
                let run = Run {
                    first: i,
                    start,
                    len,
                    count: 1,
                };
                match segments.last_mut() {
                    Some(segment) if contiguous && segment.len() < RUNS_PER_SCAN => {
                        segment.push(run);
                    }
                    _ => segments.push(vec![run]),
                }
            }
        }
    }
    segments
}

/// The bucket number of a row of `runs`' range as SQL over `time_ms`: integer arithmetic per
/// run, picked by `multiIf` on the run edges (no time-zone functions, so both engines and both
/// stores agree on every edge whatever their tz databases say).
fn bucket_expression(runs: &[Run]) -> String {
    let run_sql = |run: &Run| {
        format!(
            "{} + intDiv(time_ms - {}, {})",
            run.first, run.start, run.len
        )
    };
    match runs {
        [run] => run_sql(run),
        _ => {
            let mut arms: Vec<String> = Vec::with_capacity(runs.len() * 2);
            for (i, run) in runs.iter().enumerate() {
                if i + 1 < runs.len() {
                    arms.push(format!("time_ms < {}", run.end()));
                }
                arms.push(run_sql(run));
            }
            format!("multiIf({})", arms.join(", "))
        }
    }
}

/// The whole seconds of `ms`, within DateTime's range.
fn seconds(ms: i64) -> i64 {
    ms.div_euclid(1000).clamp(0, i64::from(u32::MAX))
}

/// `site_id = … AND time in [from, to) AND bot = 0` plus the filters; `table` is the events
/// table, which session filters read again.
fn where_clause(table: &str, query: &Query, from: Timestamp, to: Timestamp) -> String {
    let (from, to) = (from.as_millis(), to.as_millis());
    let site = quote(&query.site_id.uuid().to_string());
    let mut sql = format!(
        "site_id = {site} AND ts >= toDateTime({}) AND ts <= toDateTime({}) \
         AND time_ms >= {from} AND time_ms < {to} AND bot = 0",
        seconds(from),
        seconds(to),
    );
    for filter in &query.filters {
        let value = quote(&filter.value);
        if let Dimension::Session(column) = &filter.dimension {
            // The sessions whose entry (exit) page matches; a session without page views has
            // none, so it never matches `is` or `contains` and always matches `is_not`, as a
            // NULL column does below.
            let (operator, condition) = match filter.op {
                FilterOp::Is => ("IN", format!("page = concat('p', {value})")),
                FilterOp::IsNot => ("NOT IN", format!("page = concat('p', {value})")),
                FilterOp::Contains => (
                    "IN",
                    format!("positionCaseInsensitive(substring(page, 2), {value}) > 0"),
                ),
            };
            sql.push_str(&format!(
                " AND session {operator} (SELECT session FROM ({}) WHERE page != '' AND {condition})",
                session_pages(table, &site, column, None)
            ));
            continue;
        }
        let column = column_sql(&filter.dimension);
        // `ifNull(…, 0)`: a missing value never matches `is` or `contains`, and always matches
        // `is_not` (SQLite's `IS NOT`); 18.16 has no three-valued OR to lean on.
        sql.push_str(&match filter.op {
            FilterOp::Is => format!(" AND ifNull({column} = {value}, 0) = 1"),
            FilterOp::IsNot => format!(" AND ifNull({column} = {value}, 0) = 0"),
            // SQLite's LIKE is ASCII case-insensitive; so is this, without LIKE's wildcards.
            FilterOp::Contains => {
                format!(" AND ifNull(positionCaseInsensitive({column}, {value}) > 0, 0) = 1")
            }
        });
    }
    sql
}

/// `session, page` for the site's sessions with a page view (only those in `sessions`, a
/// subquery, when given): `page` is the path of the session's first (`entry_page`) or last
/// (`exit_page`) non-bot page view over its whole life, not just the queried range, as the
/// embedded store's `sessions` table keeps it. Ties on the millisecond go to the smaller (larger)
/// hit id. The path is encoded as `'p' || path`, `''` when that page view had none, because
/// `argMin`/`argMax` skip NULL arguments; [`SESSION_PAGE`] decodes it. Unmerged duplicates of a
/// hit change nothing.
fn session_pages(table: &str, site: &str, column: &str, sessions: Option<&str>) -> String {
    let pick = if column == "exit_page" {
        "argMax"
    } else {
        "argMin"
    };
    let within = sessions.map_or(String::new(), |s| format!(" AND session IN ({s})"));
    format!(
        "SELECT session, {pick}(if(isNull(page_path), '', concat('p', ifNull(page_path, ''))), \
         tuple(time_ms, hit_id)) AS page FROM {table} \
         WHERE site_id = {site} AND bot = 0 AND event_name = 'page_view'{within} GROUP BY session"
    )
}

/// A [`session_pages`] `page` back as the path, NULL for none (also the join's default `''`
/// for a session without page views).
const SESSION_PAGE: &str = "if(page = '', NULL, substring(page, 2))";

/// The SQL for a dimension: a whitelisted column, or a parameter's text (NULL when absent).
fn column_sql(dimension: &Dimension) -> String {
    match dimension {
        Dimension::Column(column) => (*column).to_owned(),
        Dimension::Param(name) => {
            let name = quote(name);
            format!("if(has(param_keys, {name}), param_values[indexOf(param_keys, {name})], NULL)")
        }
        // Session dimensions are joined per session: see `where_clause` and `breakdown`.
        Dimension::Session(_) => "NULL".to_owned(),
    }
}

/// A parameter's text as SQLite's `CAST(json_extract(params, '$.name') AS TEXT)` gives it:
/// strings as-is, numbers as written, booleans as 1/0, objects and arrays as JSON; JSON null is
/// absent.
fn param_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[derive(Serialize)]
struct InsertRow<'a> {
    hit_id: String,
    site_id: String,
    workspace_id: String,
    time_ms: i64,
    event_name: &'a str,
    visitor: &'a str,
    session: &'a str,
    engaged: u8,
    page_host: &'a Option<String>,
    page_path: &'a Option<String>,
    page_title: &'a Option<String>,
    referrer_host: &'a Option<String>,
    source: &'a Option<String>,
    medium: &'a Option<String>,
    campaign: &'a Option<String>,
    term: &'a Option<String>,
    content: &'a Option<String>,
    channel: &'a Option<String>,
    country: &'a Option<String>,
    region: &'a Option<String>,
    city: &'a Option<String>,
    device: &'a Option<String>,
    browser: &'a Option<String>,
    os: &'a Option<String>,
    value: Option<f64>,
    currency: &'a Option<String>,
    params: String,
    param_keys: Vec<&'a str>,
    param_values: Vec<String>,
    bot: u8,
}

impl<'a> InsertRow<'a> {
    fn new(e: &'a AnalyticsEvent) -> Self {
        let (param_keys, param_values) = match &e.params {
            serde_json::Value::Object(map) => map
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), param_text(v)?)))
                .unzip(),
            _ => (Vec::new(), Vec::new()),
        };
        InsertRow {
            hit_id: e.hit_id.uuid().to_string(),
            site_id: e.site_id.uuid().to_string(),
            workspace_id: e.workspace_id.uuid().to_string(),
            time_ms: e.time.as_millis(),
            event_name: &e.event_name,
            visitor: &e.visitor,
            session: &e.session,
            engaged: u8::from(e.engaged),
            page_host: &e.page_host,
            page_path: &e.page_path,
            page_title: &e.page_title,
            referrer_host: &e.referrer_host,
            source: &e.source,
            medium: &e.medium,
            campaign: &e.campaign,
            term: &e.term,
            content: &e.content,
            channel: &e.channel,
            country: &e.country,
            region: &e.region,
            city: &e.city,
            device: &e.device,
            browser: &e.browser,
            os: &e.os,
            // JSON has no NaN or infinity; ClickHouse would reject them anyway.
            value: e.value.filter(|v| v.is_finite()),
            currency: &e.currency,
            params: e.params.to_string(),
            param_keys,
            param_values,
            bot: u8::from(e.bot),
        }
    }
}

/// A 64-bit integer from ClickHouse JSON, which quotes them (`"42"`) by default.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
struct Totals {
    #[serde(deserialize_with = "int")]
    visitors: i64,
    #[serde(deserialize_with = "int")]
    sessions: i64,
    #[serde(deserialize_with = "int")]
    pageviews: i64,
    #[serde(deserialize_with = "int")]
    events: i64,
}

#[derive(Deserialize)]
struct SummaryLine {
    #[serde(flatten)]
    totals: Totals,
    #[serde(flatten)]
    sessions: SessionStats,
}

/// Averages over sessions; `null` (NaN) when there are none.
#[derive(Deserialize)]
struct SessionStats {
    bounce_rate: Option<f64>,
    avg_session_seconds: Option<f64>,
}

#[derive(Deserialize)]
struct Bucket {
    #[serde(deserialize_with = "int")]
    bucket: i64,
    #[serde(flatten)]
    totals: Totals,
}

#[derive(Deserialize)]
struct StoredHit {
    hit_id: uuid::Uuid,
}

#[derive(Deserialize)]
struct BreakdownLine {
    dim: Option<String>,
    #[serde(deserialize_with = "int")]
    visitors: i64,
    #[serde(deserialize_with = "int")]
    events: i64,
}

#[derive(Deserialize)]
struct FunnelLine {
    #[serde(deserialize_with = "int")]
    level: i64,
    #[serde(deserialize_with = "int")]
    visitors: i64,
}

#[derive(Deserialize)]
struct SessionLine {
    session: String,
    #[serde(deserialize_with = "int")]
    time_ms: i64,
}

#[derive(Deserialize)]
struct EventRow {
    hit_id: uuid::Uuid,
    site_id: uuid::Uuid,
    workspace_id: uuid::Uuid,
    #[serde(deserialize_with = "int")]
    time_ms: i64,
    event_name: String,
    visitor: String,
    session: String,
    engaged: u8,
    page_host: Option<String>,
    page_path: Option<String>,
    page_title: Option<String>,
    referrer_host: Option<String>,
    source: Option<String>,
    medium: Option<String>,
    campaign: Option<String>,
    term: Option<String>,
    content: Option<String>,
    channel: Option<String>,
    country: Option<String>,
    region: Option<String>,
    city: Option<String>,
    device: Option<String>,
    browser: Option<String>,
    os: Option<String>,
    value: Option<f64>,
    currency: Option<String>,
    params: String,
    bot: u8,
}

impl From<EventRow> for AnalyticsEvent {
    fn from(r: EventRow) -> Self {
        AnalyticsEvent {
            hit_id: HitId(r.hit_id),
            site_id: SiteId(r.site_id),
            workspace_id: platform::id::WorkspaceId(r.workspace_id),
            time: Timestamp::from_millis(r.time_ms),
            event_name: r.event_name,
            visitor: r.visitor,
            session: r.session,
            engaged: r.engaged != 0,
            page_host: r.page_host,
            page_path: r.page_path,
            page_title: r.page_title,
            referrer_host: r.referrer_host,
            source: r.source,
            medium: r.medium,
            campaign: r.campaign,
            term: r.term,
            content: r.content,
            channel: r.channel,
            country: r.country,
            region: r.region,
            city: r.city,
            device: r.device,
            browser: r.browser,
            os: r.os,
            value: r.value,
            currency: r.currency,
            params: serde_json::from_str(&r.params).unwrap_or_default(),
            bot: r.bot != 0,
        }
    }
}

/// The four headline counts (each hit is stored once: see the module's idempotency note).
const TOTALS: &str = "uniqExact(visitor) AS visitors, uniqExact(session) AS sessions, \
    countIf(event_name = 'page_view') AS pageviews, count() AS events";

impl AnalyticsStore for ClickHouseAnalytics {
    /// `windowFunnel` (present in 18.16 and current releases) per visitor on the ticks of
    /// [`super::query::funnel_tick_ms`]; duplicates of an unmerged hit repeat a (tick, step)
    /// pair, which changes nothing.
    fn funnel<'a>(
        &'a self,
        query: &'a Query,
        steps: &'a [super::FunnelStep],
        window_seconds: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<i64>>> {
        async move {
            let conditions: Vec<String> = steps
                .iter()
                .map(|step| match step {
                    super::FunnelStep::Page(path) => format!(
                        "(event_name = 'page_view' AND ifNull(page_path = {}, 0) = 1)",
                        quote(path)
                    ),
                    super::FunnelStep::Event { name, param: None } => {
                        format!("(event_name = {})", quote(name))
                    }
                    super::FunnelStep::Event {
                        name,
                        param: Some((param, value)),
                    } => {
                        let param = quote(param);
                        format!(
                            "(event_name = {} AND has(param_keys, {param}) \
                             AND param_values[indexOf(param_keys, {param})] = {})",
                            quote(name),
                            quote(value)
                        )
                    }
                })
                .collect();
            let filter = where_clause(&self.table, query, query.from, query.to);
            let tick = super::query::funnel_tick_ms(query, window_seconds);
            let window = window_seconds * 1000 / tick;
            let from = query.from.as_millis();
            let rows: Vec<FunnelLine> = self
                .rows(format!(
                    "SELECT level, count() AS visitors FROM (
                        SELECT visitor,
                               windowFunnel({window})(toUInt32(intDiv(time_ms - {from}, {tick})), {}) AS level
                        FROM {} WHERE {filter} AND ({}) GROUP BY visitor)
                     GROUP BY level",
                    conditions.join(", "),
                    self.table,
                    conditions.join(" OR ")
                ))
                .await?;
            let mut reached = vec![0i64; steps.len()];
            for row in rows {
                for count in reached.iter_mut().take(row.level as usize) {
                    *count += row.visitors;
                }
            }
            Ok(reached)
        }
        .boxed()
    }

    fn insert<'a>(&'a self, events: &'a [AnalyticsEvent]) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            let _turn = self.insert_turn.lock().await;
            let stored = self.stored(events).await?;
            let mut seen = std::collections::HashSet::new();
            let fresh: Vec<&AnalyticsEvent> = events
                .iter()
                .filter(|e| !stored.contains(&e.hit_id.uuid()) && seen.insert(e.hit_id))
                .collect();
            for chunk in fresh.chunks(ROWS_PER_INSERT) {
                let mut body = format!(
                    "INSERT INTO {} ({INSERT_COLUMNS}) FORMAT JSONEachRow\n",
                    self.table
                );
                for event in chunk {
                    body.push_str(&serde_json::to_string(&InsertRow::new(event))?);
                    body.push('\n');
                }
                self.execute(body).await?;
            }
            Ok(())
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
            let before = before.as_millis();
            let rows: Vec<SessionLine> = self
                .rows(format!(
                    "SELECT session, time_ms FROM {} WHERE site_id = {} AND visitor = {} \
                     AND ts <= toDateTime({}) AND time_ms <= {before} \
                     ORDER BY time_ms DESC LIMIT 1",
                    self.table,
                    quote(&site.uuid().to_string()),
                    quote(visitor),
                    seconds(before),
                ))
                .await?;
            Ok(rows
                .into_iter()
                .next()
                .map(|r| (r.session, Timestamp::from_millis(r.time_ms))))
        }
        .boxed()
    }

    fn summary<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, anyhow::Result<Summary>> {
        async move {
            let filter = where_clause(&self.table, query, query.from, query.to);
            // One pass: per session first (its visitor, counts, engagement and length), then
            // totals over the sessions; a session belongs to one visitor.
            let row: SummaryLine = self
                .one(format!(
                    "SELECT uniqExact(v) AS visitors, count() AS sessions, sum(pv) AS pageviews,
                            sum(n) AS events, avg(pv <= 1 AND eng = 0) AS bounce_rate,
                            avg(dur) AS avg_session_seconds
                     FROM (SELECT any(visitor) AS v, countIf(event_name = 'page_view') AS pv,
                                  count() AS n, max(engaged) AS eng,
                                  (max(time_ms) - min(time_ms)) / 1000 AS dur
                           FROM {} WHERE {filter} GROUP BY session)",
                    self.table
                ))
                .await?;
            let (totals, sessions) = (row.totals, row.sessions);
            Ok(Summary {
                visitors: totals.visitors,
                sessions: totals.sessions,
                pageviews: totals.pageviews,
                events: totals.events,
                bounce_rate: sessions
                    .bounce_rate
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0),
                avg_session_seconds: sessions
                    .avg_session_seconds
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0),
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
            // One scan grouped by the bucket number (see `bucket_runs`): each bucket is a
            // calendar unit of the site's zone computed by the caller, so the edges are the
            // caller's, DST included, and distinct counts stay exact per bucket. A range with many
            // runs (months) is several `UNION ALL` branches, each over its own part of the range.
            let mut selects = Vec::new();
            for segment in bucket_segments(buckets) {
                let (Some(first), Some(last)) = (segment.first(), segment.last()) else {
                    continue;
                };
                let from = Timestamp::from_millis(first.start).max(query.from);
                let to = Timestamp::from_millis(last.end()).min(query.to);
                if from >= to {
                    continue;
                }
                let filter = where_clause(&self.table, query, from, to);
                selects.push(format!(
                    "SELECT {} AS bucket, {TOTALS} FROM {} WHERE {filter} GROUP BY bucket",
                    bucket_expression(&segment),
                    self.table
                ));
            }
            let mut points: Vec<TimeseriesPoint> = buckets
                .iter()
                .map(|(start, _)| TimeseriesPoint {
                    start: *start,
                    visitors: 0,
                    sessions: 0,
                    pageviews: 0,
                    events: 0,
                    visitors_estimated: false,
                })
                .collect();
            if selects.is_empty() {
                return Ok(points);
            }
            let sql = if selects.len() == 1 {
                selects.remove(0)
            } else {
                format!("SELECT * FROM ({})", selects.join(" UNION ALL "))
            };
            for row in self.rows::<Bucket>(sql).await? {
                let point = usize::try_from(row.bucket)
                    .ok()
                    .and_then(|i| points.get_mut(i))
                    .context("ClickHouse answered a bucket out of range")?;
                point.visitors = row.totals.visitors;
                point.sessions = row.totals.sessions;
                point.pageviews = row.totals.pageviews;
                point.events = row.totals.events;
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
            let filter = where_clause(&self.table, query, query.from, query.to);
            // `dim`, not `value`: an alias must not shadow the `value` column. NULL sorts first,
            // as in SQLite.
            let order = format!(
                "GROUP BY dim ORDER BY visitors DESC, events DESC, isNotNull(dim), dim LIMIT {limit}"
            );
            let sql = match dimension {
                // Per session first (its visitor and its events in range: sessions share no
                // hit), then joined to its entry (exit) page and grouped. The aliases are what
                // current ClickHouse requires of joined subqueries; 18.16 accepts them.
                Dimension::Session(column) => {
                    let in_range = format!("SELECT session FROM {} WHERE {filter}", self.table);
                    let pages = session_pages(
                        &self.table,
                        &quote(&query.site_id.uuid().to_string()),
                        column,
                        Some(&in_range),
                    );
                    format!(
                        "SELECT {SESSION_PAGE} AS dim, uniqExact(v) AS visitors, sum(n) AS events
                         FROM (SELECT session, any(visitor) AS v, count() AS n
                               FROM {} WHERE {filter} GROUP BY session) AS in_range
                         ANY LEFT JOIN ({pages}) AS pages USING session
                         {order}",
                        self.table
                    )
                }
                _ => format!(
                    "SELECT {} AS dim, uniqExact(visitor) AS visitors, count() AS events
                     FROM {} WHERE {filter} {order}",
                    column_sql(dimension),
                    self.table
                ),
            };
            let rows: Vec<BreakdownLine> = self.rows(sql).await?;
            Ok(rows
                .into_iter()
                .map(|r| BreakdownRow {
                    value: r.dim,
                    visitors: r.visitors,
                    events: r.events,
                    visitors_estimated: false,
                })
                .collect())
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
            let mut filter = where_clause(&self.table, query, query.from, query.to);
            if let Some(before) = before {
                // Hyphenated lowercase hex sorts as the UUID's bytes do, like SQLite's BLOBs.
                filter.push_str(&format!(
                    " AND hit_id < {}",
                    quote(&before.uuid().to_string())
                ));
            }
            let rows: Vec<EventRow> = self
                .rows(format!(
                    "SELECT {READ_COLUMNS} FROM {} WHERE {filter}
                     ORDER BY hit_id DESC LIMIT 1 BY hit_id LIMIT {limit}",
                    self.table
                ))
                .await?;
            Ok(rows.into_iter().map(AnalyticsEvent::from).collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_everything_that_could_end_a_literal() {
        assert_eq!(quote("GB"), "'GB'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), r"'it\'s'");
        assert_eq!(quote(r"a\b"), r"'a\\b'");
        assert_eq!(quote(r"\'"), r"'\\\''");
        assert_eq!(quote("' OR 1=1 --"), r"'\' OR 1=1 --'");
        assert_eq!(quote("a\nb\r\tc\0"), r"'a\nb\r\tc\0'");
        assert_eq!(quote("\u{1b}"), r"'\x1B'");
        assert_eq!(quote("zürich ✓"), "'zürich ✓'");
    }

    #[test]
    fn parameters_are_stored_as_sqlite_would_cast_them() {
        use serde_json::json;
        assert_eq!(param_text(&json!("WINTER")).as_deref(), Some("WINTER"));
        assert_eq!(param_text(&json!(42.5)).as_deref(), Some("42.5"));
        assert_eq!(param_text(&json!(7)).as_deref(), Some("7"));
        assert_eq!(param_text(&json!(true)).as_deref(), Some("1"));
        assert_eq!(param_text(&json!([1, "a"])).as_deref(), Some(r#"[1,"a"]"#));
        assert_eq!(param_text(&json!(null)), None);
    }

    #[test]
    fn filters_become_quoted_null_aware_conditions() {
        let site = SiteId::new();
        let query = Query {
            site_id: site,
            from: Timestamp::from_millis(1_700_000_000_123),
            to: Timestamp::from_millis(1_700_000_100_000),
            filters: vec![
                super::super::Filter::parse("country:is_not:G'B").unwrap(),
                super::super::Filter::parse("param:plan:contains:pro").unwrap(),
            ],
        };
        let sql = where_clause("t", &query, query.from, query.to);
        assert!(
            sql.starts_with(&format!("site_id = '{}'", site.uuid())),
            "{sql}"
        );
        assert!(sql.contains("ts >= toDateTime(1700000000)"), "{sql}");
        assert!(
            sql.contains("time_ms >= 1700000000123 AND time_ms < 1700000100000"),
            "{sql}"
        );
        assert!(sql.contains(r"ifNull(country = 'G\'B', 0) = 0"), "{sql}");
        assert!(
            sql.contains("positionCaseInsensitive(if(has(param_keys, 'plan'), param_values[indexOf(param_keys, 'plan')], NULL), 'pro')"),
            "{sql}"
        );
    }

    /// Every bucket back from the runs, in order: the runs describe exactly the caller's edges.
    fn unrolled(segments: &[Vec<Run>]) -> Vec<(usize, i64, i64)> {
        segments
            .iter()
            .flatten()
            .flat_map(|run| {
                (0..run.count).map(move |i| {
                    let start = run.start + run.len * i as i64;
                    (run.first + i, start, start + run.len)
                })
            })
            .collect()
    }

    #[test]
    fn time_series_buckets_become_runs_of_equal_length() {
        use super::super::query::{Interval, buckets};
        let ts = |s: &str| Timestamp::from(s.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let kathmandu: chrono_tz::Tz = "Asia/Kathmandu".parse().unwrap();
        // 2026: Berlin springs forward on 29 March, falls back on 25 October.
        let (from, to) = (ts("2026-03-01T10:00:00Z"), ts("2026-11-15T00:00:00Z"));
        for (interval, zone, runs) in [
            (Interval::Hour, berlin, 1),
            (Interval::Day, berlin, 5),
            (Interval::Week, berlin, 5),
            (Interval::Month, berlin, 0),
            (Interval::Day, kathmandu, 1),
        ] {
            let (from, to) = if interval == Interval::Hour {
                (ts("2026-03-28T10:00:00Z"), ts("2026-04-02T00:00:00Z"))
            } else {
                (from, to)
            };
            let b = buckets(from, to, interval, zone).unwrap();
            let segments = bucket_segments(&b);
            let expected: Vec<(usize, i64, i64)> = b
                .iter()
                .enumerate()
                .map(|(i, (s, e))| (i, s.as_millis(), e.as_millis()))
                .collect();
            assert_eq!(unrolled(&segments), expected, "{interval:?} {zone}");
            assert!(segments.iter().all(|s| s.len() <= RUNS_PER_SCAN));
            let total: usize = segments.iter().map(Vec::len).sum();
            if runs > 0 {
                assert_eq!(total, runs, "{interval:?} {zone}: {segments:?}");
                assert_eq!(segments.len(), 1, "{interval:?} {zone}");
            }
        }
        // A day across the spring-forward change: 24 h, 23 h, then 24 h days.
        let b = buckets(
            ts("2026-03-27T12:00:00Z"),
            ts("2026-03-31T12:00:00Z"),
            Interval::Day,
            berlin,
        )
        .unwrap();
        let segments = bucket_segments(&b);
        assert_eq!(
            bucket_expression(&segments[0]),
            format!(
                "multiIf(time_ms < {}, 0 + intDiv(time_ms - {}, 86400000), \
                 time_ms < {}, 2 + intDiv(time_ms - {}, 82800000), \
                 3 + intDiv(time_ms - {}, 86400000))",
                b[2].0.as_millis(),
                b[0].0.as_millis(),
                b[3].0.as_millis(),
                b[2].0.as_millis(),
                b[3].0.as_millis()
            )
        );
        // A gap between buckets is a new segment (its rows are outside every range).
        let gapped = [
            (ts("2026-01-01T00:00:00Z"), ts("2026-01-01T01:00:00Z")),
            (ts("2026-01-01T02:00:00Z"), ts("2026-01-01T03:00:00Z")),
        ];
        assert_eq!(bucket_segments(&gapped).len(), 2);
    }

    #[test]
    fn sixty_four_bit_integers_parse_quoted_or_not() {
        let t: SessionLine = serde_json::from_str(r#"{"session":"s","time_ms":"42"}"#).unwrap();
        assert_eq!(t.time_ms, 42);
        let t: SessionLine = serde_json::from_str(r#"{"session":"s","time_ms":42}"#).unwrap();
        assert_eq!(t.time_ms, 42);
    }
}
