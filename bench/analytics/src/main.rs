//! `bench-analytics`: how fast tracked hits become queryable, and how fast the dashboard reads
//! them back. Traffic comes from the `switchyard demo` generator (seeded, realistic GA4 gtag
//! requests), so both phases work on the data shape production sees.
//!
//! - Phase A, pipeline throughput: K generated records are appended to a fresh SQLite event log
//!   (not timed) in the compact form the gateway writes (the request without its hits, so
//!   reading parses it again), then the analytics pipeline consumes them — read a batch, parse, enrich,
//!   assign sessions, insert into a fresh SQLite analytics store, acknowledge — exactly as the
//!   worker role does. Timed from the first read to the last acknowledgement.
//! - Phase B, dashboard latency: M events of one site over 30 days are inserted into a fresh
//!   store with `insert` in big batches (raw rows and rollups, as the pipeline writes them; the
//!   generation overlaps the inserts), then the seven dashboard widgets are timed through the
//!   `AnalyticsStore` API (which reads the rollups) and, as the exact reference, as hand-written
//!   SQL over the raw rows of the same file. Events and pageviews must match exactly, visitors
//!   within three standard errors of the sketch; the deviations are printed.
//! - Phase B on ClickHouse (`--clickhouse URL`): the same events go into a ClickHouse store
//!   through its own batched `insert` (JSONEachRow, 10,000 rows a request) into a database of
//!   their own, and the widgets through the store are compared with hand-written ClickHouse SQL
//!   sent straight over HTTP in the same run ([`clickhouse`]). Both are exact, so every answer
//!   must be identical. `--clickhouse-database NAME` keeps the loaded database (and reuses it,
//!   skipping the load, when it already holds a run); otherwise it is dropped afterwards.

mod clickhouse;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::FutureExt;
use futures::future::BoxFuture;
use platform::Timestamp;
use platform::id::WorkspaceId;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, SqlitePool};
use switchyard::demo::{DemoSite, TrafficGenerator, append_all};
use tracking::analytics::clickhouse::ClickHouseAnalytics;
use tracking::analytics::query::{Interval, buckets};
use tracking::analytics::sqlite::SqliteAnalytics;
use tracking::analytics::{
    AnalyticsEvent, AnalyticsStore, BreakdownRow, Dimension, Query, Summary, TimeseriesPoint,
};
use tracking::enrich::Enricher;
use tracking::log::sqlite::{Options, SqliteLog};
use tracking::log::{Delivery, EventLog};
use tracking::pipeline::{GROUP, Pipeline};
use tracking::sites::SiteId;

#[derive(Parser)]
#[command(name = "bench-analytics")]
struct Args {
    /// Log records (gtag requests) for phase A; 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Events for phase B; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Timed runs of each widget (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs of the hand-written raw-row SQL per widget (its answers are the exact reference).
    #[arg(long, default_value_t = 1)]
    baseline_runs: usize,
    /// Log records per batch read in phase A (default: what the worker role reads).
    #[arg(long, default_value_t = tracking::pipeline::BATCH)]
    batch: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the databases go (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// MaxMind City database for geo enrichment (default: the test database in
    /// ../shared/testdata/geoip when present).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// Run phase B on this ClickHouse server (its HTTP interface, e.g. `http://127.0.0.1:8123/`)
    /// instead of the embedded store.
    #[arg(long)]
    clickhouse: Option<String>,
    /// With `--clickhouse`: the database to load and keep, or to reuse when it already holds a
    /// loaded run (default: a fresh one, dropped afterwards).
    #[arg(long, requires = "clickhouse")]
    clickhouse_database: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let geoip = args.geoip.clone().or_else(|| {
        let default = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/testdata/geoip/GeoIP2-City-Test.mmdb");
        default.is_file().then_some(default)
    });
    let enricher = Enricher::new(geoip.as_deref())?;
    println!(
        "bench-analytics: records={} events={} runs={} seed={} geo={} dir={} store={}",
        args.records,
        args.events,
        args.runs,
        args.seed,
        geoip
            .as_deref()
            .map_or("none".into(), |p| p.display().to_string()),
        dir.display(),
        args.clickhouse.as_deref().unwrap_or("sqlite")
    );
    if args.records > 0 {
        pipeline_throughput(
            &dir.join("a"),
            (args.records, args.batch),
            args.seed,
            enricher.clone(),
        )
        .await?;
    }
    if args.events > 0 {
        let clickhouse = match &args.clickhouse {
            Some(server) => {
                let keep = args.clickhouse_database.is_some();
                let database = args.clickhouse_database.clone().unwrap_or_else(|| {
                    format!(
                        "bench_{}",
                        uuid_suffix(&SiteId::new().uuid().simple().to_string())
                    )
                });
                Some((clickhouse::Reference::new(server, &database)?, keep))
            }
            None => None,
        };
        dashboard_latency(
            &dir.join("b"),
            args.events,
            (args.runs, args.baseline_runs),
            args.seed,
            enricher,
            clickhouse,
        )
        .await?;
    }
    Ok(())
}

/// The random tail of a UUIDv7 (its head is the clock), for a unique name.
fn uuid_suffix(simple: &str) -> &str {
    &simple[simple.len() - 12..]
}

fn demo_sites(count: u32) -> Vec<DemoSite> {
    let workspace = WorkspaceId::new();
    (0..count)
        .map(|i| DemoSite::nth(i, SiteId::new(), workspace))
        .collect()
}

/// Visits per site and day so that `days` days give about `target` of `per_visit`.
fn visits_for(target: u64, sites: u64, days: u64, per_visit: f64) -> u32 {
    ((target as f64 / (sites * days) as f64 / per_visit).ceil() as u32).max(1)
}

// ---------------------------------------------------------------------------------------------
// Phase A.

async fn pipeline_throughput(
    dir: &Path,
    (records, batch_size): (u64, usize),
    seed: u64,
    enricher: Enricher,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let log = SqliteLog::open(&dir.join("events.db"), Options::default()).await?;
    let store = Arc::new(SqliteAnalytics::open(&dir.join("analytics.db")).await?);
    let sites = demo_sites(3);
    let mut generator = TrafficGenerator::new(
        sites,
        30,
        visits_for(records, 3, 30, 3.0),
        seed,
        Timestamp::now(),
    );
    let (mut appended, mut events) = (0u64, 0u64);
    let started = Instant::now();
    while appended < records {
        let Some(mut day) = generator.next_day() else {
            break;
        };
        day.truncate((records - appended) as usize);
        events += day.iter().map(|r| r.hits.len() as u64).sum::<u64>();
        append_all(&log, &day).await?;
        appended += day.len() as u64;
    }
    let append_secs = started.elapsed().as_secs_f64();
    println!(
        "\n## A. pipeline throughput\n\nappended {appended} records ({events} events) to a fresh \
         SQLite log in {append_secs:.1}s ({:.0} records/s, generation and serialization included; not the measured figure)",
        appended as f64 / append_secs
    );

    let pipeline = Pipeline::new(store.clone(), enricher);
    let mut subscription = log.subscribe(GROUP).await?;
    let started = Instant::now();
    let mut consumed = 0u64;
    let mut batches = 0u64;
    // Where the time goes: the log's read and acknowledgement, and the pipeline's own work.
    let (mut read_secs, mut ack_secs) = (0.0f64, 0.0f64);
    while consumed < appended {
        let t = Instant::now();
        let batch = subscription
            .next_batch(batch_size, Duration::from_secs(5))
            .await?;
        read_secs += t.elapsed().as_secs_f64();
        anyhow::ensure!(
            !batch.is_empty(),
            "the log ran dry at {consumed} of {appended}"
        );
        pipeline.process_batch(&batch).await?;
        let t = Instant::now();
        subscription.ack(&batch).await?;
        ack_secs += t.elapsed().as_secs_f64();
        consumed += batch.len() as u64;
        batches += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let site_events = count_events(store.as_ref(), &generator_sites(generator)).await?;
    anyhow::ensure!(
        site_events == events,
        "the store holds {site_events} events, {events} were generated"
    );
    println!(
        "pipeline: {consumed} records, {events} events in {batches} batches in {secs:.2}s: \
         **{:.0} events/s** ({:.0} records/s) from log to queryable; target ≥ 25,000 events/s: {}",
        events as f64 / secs,
        consumed as f64 / secs,
        if events as f64 / secs >= 25_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "of which reading the log {read_secs:.2}s, acknowledging {ack_secs:.2}s, processing \
         (parse, enrich, sessions, store) {:.2}s",
        secs - read_secs - ack_secs
    );
    log.close().await;
    Ok(())
}

fn generator_sites(generator: TrafficGenerator) -> Vec<SiteId> {
    generator
        .into_totals()
        .into_iter()
        .map(|(site, _)| site.site_id)
        .collect()
}

/// Events stored for `sites` over all time, through the store's own summary.
async fn count_events(store: &dyn AnalyticsStore, sites: &[SiteId]) -> anyhow::Result<u64> {
    let mut total = 0;
    for site in sites {
        let query = Query {
            site_id: *site,
            from: Timestamp::now() - Duration::from_secs(400 * 86_400),
            to: Timestamp::now() + Duration::from_secs(86_400),
            filters: Vec::new(),
        };
        total += store.summary(&query).await?.events as u64;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Phase B.

/// An analytics store that only collects what the pipeline inserts, so phase B can turn
/// generated records into events with the real enrichment and then time plain big-batch inserts.
#[derive(Default)]
struct Collect(Mutex<Vec<AnalyticsEvent>>);

impl AnalyticsStore for Collect {
    fn insert<'a>(&'a self, events: &'a [AnalyticsEvent]) -> BoxFuture<'a, anyhow::Result<()>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(events);
        futures::future::ready(Ok(())).boxed()
    }
    fn last_session<'a>(
        &'a self,
        _: SiteId,
        _: &'a str,
        _: Timestamp,
    ) -> BoxFuture<'a, anyhow::Result<Option<(String, Timestamp)>>> {
        futures::future::ready(Ok(None)).boxed()
    }
    fn summary<'a>(&'a self, _: &'a Query) -> BoxFuture<'a, anyhow::Result<Summary>> {
        futures::future::ready(Err(anyhow::anyhow!("not a query store"))).boxed()
    }
    fn timeseries<'a>(
        &'a self,
        _: &'a Query,
        _: &'a [(Timestamp, Timestamp)],
    ) -> BoxFuture<'a, anyhow::Result<Vec<TimeseriesPoint>>> {
        futures::future::ready(Err(anyhow::anyhow!("not a query store"))).boxed()
    }
    fn breakdown<'a>(
        &'a self,
        _: &'a Query,
        _: &'a Dimension,
        _: u32,
    ) -> BoxFuture<'a, anyhow::Result<Vec<BreakdownRow>>> {
        futures::future::ready(Err(anyhow::anyhow!("not a query store"))).boxed()
    }
    fn funnel<'a>(
        &'a self,
        _: &'a Query,
        _: &'a [tracking::analytics::FunnelStep],
        _: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<i64>>> {
        futures::future::ready(Err(anyhow::anyhow!("not a query store"))).boxed()
    }
    fn events<'a>(
        &'a self,
        _: &'a Query,
        _: Option<tracking::HitId>,
        _: u32,
    ) -> BoxFuture<'a, anyhow::Result<Vec<AnalyticsEvent>>> {
        futures::future::ready(Err(anyhow::anyhow!("not a query store"))).boxed()
    }
}

/// The numbers a widget shows, to compare the store's answer with the baseline's.
type Answer = Vec<(Option<String>, i64, i64, i64, i64)>;

const WIDGETS: &[&str] = &[
    "summary",
    "timeseries (day)",
    "top pages",
    "top sources",
    "devices",
    "countries",
    "realtime",
];

/// The exact reference a widget's answers are timed and checked against.
enum Reference {
    /// Hand-written SQL over the raw rows of the embedded store's file.
    Sqlite(SqlitePool),
    /// Hand-written ClickHouse SQL over HTTP.
    ClickHouse(clickhouse::Reference),
}

async fn dashboard_latency(
    dir: &Path,
    target: u64,
    (runs, baseline_runs): (usize, usize),
    seed: u64,
    enricher: Enricher,
    clickhouse: Option<(clickhouse::Reference, bool)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("analytics.db");
    let store: Arc<dyn AnalyticsStore> = match &clickhouse {
        Some((reference, _)) => Arc::new(ClickHouseAnalytics::open(&reference.store_url()).await?),
        None => Arc::new(SqliteAnalytics::open(&path).await?),
    };
    // The dashboard's default range: the 30 days up to the next whole hour (as the API does).
    let hour = 3_600_000;
    let now = Timestamp::now();
    let range_end = Timestamp::from_millis((now.as_millis() / hour + 1) * hour);
    let reused = match &clickhouse {
        Some((reference, _)) => reference.loaded().await?,
        None => None,
    };
    let site_id = match reused {
        Some((site_id, events)) => {
            println!(
                "\n## B. dashboard latency\n\nreusing the {events} events already loaded in the \
                 ClickHouse database (no load; the range below moves with the clock)"
            );
            site_id
        }
        None => load(store.clone(), target, seed, enricher, now).await?,
    };
    match &clickhouse {
        Some((reference, _)) => {
            let (bytes, parts) = reference.size().await?;
            println!(
                "ClickHouse table: {:.0} MB on disk in {parts} active parts",
                bytes as f64 / 1e6
            );
        }
        None => {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                + std::fs::metadata(dir.join("analytics.db-wal"))
                    .map(|m| m.len())
                    .unwrap_or(0);
            println!("database {:.0} MB", size as f64 / 1e6);
        }
    }

    let (reference, keep) = match clickhouse {
        Some((reference, keep)) => (Reference::ClickHouse(reference), keep),
        None => (
            Reference::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(SqliteConnectOptions::new().filename(&path).read_only(true))
                    .await
                    .context("opening the baseline connection")?,
            ),
            false,
        ),
    };
    let exact = matches!(reference, Reference::ClickHouse(_));
    // ClickHouse's hand-written queries take milliseconds: they get the store's warm-up and runs.
    let baseline_runs = if exact { runs } else { baseline_runs.max(1) };
    let query = Query {
        site_id,
        from: range_end - Duration::from_secs(30 * 86_400),
        to: range_end,
        filters: Vec::new(),
    };
    let realtime = Query {
        site_id,
        from: now - Duration::from_secs(300),
        to: now + Duration::from_secs(60),
        filters: Vec::new(),
    };
    let mut table = Vec::new();
    let mut deviations = Vec::new();
    for (index, name) in WIDGETS.iter().enumerate() {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let (mut a, mut b) = (Answer::new(), Answer::new());
        for run in 0..=runs {
            let t = Instant::now();
            a = widget(store.as_ref(), index, &query, &realtime).await?;
            let store_secs = t.elapsed().as_secs_f64();
            if run > 0 {
                ours.push(store_secs);
            }
        }
        // The raw-row SQLite baseline scans every event of the range: seconds per widget at
        // millions of events, so it runs `baseline_runs` times (no warm-up).
        for run in 0..baseline_runs + usize::from(exact) {
            let t = Instant::now();
            b = match &reference {
                Reference::Sqlite(pool) => hand_written(pool, index, &query, &realtime).await?,
                Reference::ClickHouse(reference) => {
                    reference.widget(index, &query, &realtime).await?
                }
            };
            if !exact || run > 0 {
                theirs.push(t.elapsed().as_secs_f64());
            }
        }
        if exact {
            anyhow::ensure!(
                a == b,
                "{name}: the store and the hand-written SQL disagree:\n{a:?}\n{b:?}"
            );
            deviations.push(format!("{name}: identical ({} rows)", a.len()));
        } else {
            deviations.push(compare(name, &a, &b)?);
        }
        table.push((*name, median(&mut ours), median(&mut theirs), a.len()));
    }
    let (store_name, reference_name) = if exact {
        (
            "`ClickHouseAnalytics`",
            "hand-written ClickHouse SQL over HTTP",
        )
    } else {
        ("`AnalyticsStore` (rollups)", "hand-written SQL (raw rows)")
    };
    println!(
        "\nwidget p50 over {runs} runs (after a warm-up run) through the {store_name}, \
         {reference_name} p50 over {baseline_runs} run(s){}; range = the 30 days up to the next whole hour:\n\n\
         | widget | rows | {store_name} p50 | {reference_name} p50 | ratio |\n|---|---:|---:|---:|---:|",
        if exact { " (after a warm-up run)" } else { "" }
    );
    let (mut total_store, mut total_sql) = (0.0, 0.0);
    for (name, store_p50, sql_p50, rows) in &table {
        total_store += store_p50;
        total_sql += sql_p50;
        println!(
            "| {name} | {rows} | {:.1} ms | {:.1} ms | {:.2}× |",
            store_p50 * 1e3,
            sql_p50 * 1e3,
            store_p50 / sql_p50.max(1e-9)
        );
    }
    println!(
        "| **all seven (sequential)** | | **{:.0} ms** | **{:.0} ms** | {:.2}× |",
        total_store * 1e3,
        total_sql * 1e3,
        total_store / total_sql.max(1e-9)
    );
    if exact {
        println!(
            "\nthe store against the hand-written answers (both exact, so they must be equal):\n"
        );
    } else {
        println!(
            "\nthe store against the exact raw-row answers (visitors: HyperLogLog, stated standard \
             error 1.6 %; sessions: rollups count a session in the bucket where it started, raw rows in \
             every bucket it touched):\n"
        );
    }
    for line in deviations {
        println!("- {line}");
    }
    if let Reference::ClickHouse(reference) = &reference
        && !keep
    {
        reference.drop_database().await?;
    }
    Ok(())
}

/// Generates `target` events of one new site over the 30 days up to `now` with the real
/// enrichment and inserts them through `store`'s own `insert`; returns the site.
async fn load(
    store: Arc<dyn AnalyticsStore>,
    target: u64,
    seed: u64,
    enricher: Enricher,
    now: Timestamp,
) -> anyhow::Result<SiteId> {
    let sites = demo_sites(1);
    let site_id = sites[0].site_id;
    let mut generator = TrafficGenerator::new(sites, 30, visits_for(target, 1, 30, 4.5), seed, now);
    let collect = Arc::new(Collect::default());
    let pipeline = Pipeline::new(collect.clone(), enricher);
    let started = Instant::now();
    // Generation (the real enrichment, one day at a time) and the store's inserts overlap: the
    // inserts run on their own task, fed through a short queue, so the load takes about as long
    // as the slower of the two instead of their sum.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<AnalyticsEvent>>(2);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let (mut loaded, mut insert_secs) = (0u64, 0.0f64);
            while let Some(events) = receiver.recv().await {
                let t = Instant::now();
                for chunk in events.chunks(50_000) {
                    store.insert(chunk).await?;
                }
                insert_secs += t.elapsed().as_secs_f64();
                loaded += events.len() as u64;
            }
            anyhow::Ok((loaded, insert_secs))
        })
    };
    let mut generated = 0u64;
    while generated < target {
        let Some(day) = generator.next_day() else {
            break;
        };
        let deliveries: Vec<Delivery> = day
            .iter()
            .enumerate()
            .map(|(i, record)| {
                Ok(Delivery {
                    sequence: i as u64,
                    payload: bytes::Bytes::from(switchyard::demo::stored_form(record)?),
                    redeliveries: 0,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        pipeline.process_batch(&deliveries).await?;
        let mut events = std::mem::take(&mut *collect.0.lock().unwrap_or_else(|e| e.into_inner()));
        events.truncate((target - generated) as usize);
        generated += events.len() as u64;
        sender.send(events).await?;
    }
    drop(sender);
    let (loaded, insert_secs) = writer.await??;
    println!(
        "\n## B. dashboard latency\n\nloaded {loaded} events (one site, 30 days) in {:.1}s (generation \
         overlapping the inserts); the store's `insert` in batches of 50,000: \
         {insert_secs:.1}s ({:.0} events/s)",
        started.elapsed().as_secs_f64(),
        loaded as f64 / insert_secs,
    );
    Ok(site_id)
}

/// Compares a widget's answers row by row (matched on the label): events and pageviews must be
/// equal; visitors within 3 standard errors (4.9 %); the largest deviations are reported.
fn compare(name: &str, ours: &Answer, exact: &Answer) -> anyhow::Result<String> {
    let (mut visitors, mut sessions, mut missing) = (0.0f64, 0.0f64, 0usize);
    let relative = |a: i64, b: i64| (a - b).abs() as f64 / b.max(1) as f64;
    let mut extra = String::new();
    for row in exact {
        let label = if name.contains("summary") || name == "realtime" {
            None
        } else {
            Some(&row.0)
        };
        let Some(mine) = ours.iter().find(|r| label.is_none() || Some(&r.0) == label) else {
            missing += 1;
            continue;
        };
        if name == "timeseries (day)" || name.contains("summary") || name == "realtime" {
            anyhow::ensure!(
                (mine.3, mine.4) == (row.3, row.4),
                "{name}: pageviews/events differ: {mine:?} vs {row:?}"
            );
            sessions = sessions.max(relative(mine.2, row.2));
            if name != "timeseries (day)" {
                extra = format!(
                    "; bounce rate and seconds per session: {} vs exact {}",
                    mine.0.clone().unwrap_or_default(),
                    row.0.clone().unwrap_or_default()
                );
            }
        } else {
            anyhow::ensure!(
                mine.2 == row.2,
                "{name}: events differ: {mine:?} vs {row:?}"
            );
        }
        visitors = visitors.max(relative(mine.1, row.1));
    }
    anyhow::ensure!(
        visitors < 0.049,
        "{name}: visitors off by {:.2}%",
        visitors * 100.0
    );
    Ok(format!(
        "{name}: largest visitor deviation {:.2}%{}{}{}",
        visitors * 100.0,
        if name.contains("summary") || name.starts_with("timeseries") {
            format!(", sessions {:.2}%", sessions * 100.0)
        } else {
            String::new()
        },
        if missing > 0 {
            format!(", {missing} of the exact top rows not in the store's (ranked by estimates)")
        } else {
            String::new()
        },
        extra
    ))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn summary_answer(s: &Summary) -> Answer {
    // Rates compared to 1e-6: two summation orders may differ in the last bits.
    vec![(
        Some(format!("{:.6} {:.6}", s.bounce_rate, s.avg_session_seconds)),
        s.visitors,
        s.sessions,
        s.pageviews,
        s.events,
    )]
}

fn breakdown_answer(rows: Vec<BreakdownRow>) -> Answer {
    rows.into_iter()
        .map(|r| (r.value, r.visitors, r.events, 0, 0))
        .collect()
}

const BREAKDOWNS: [&str; 4] = ["page_path", "source", "device", "country"];

/// Widget `index` through the `AnalyticsStore` API, as the HTTP handlers call it.
async fn widget(
    store: &dyn AnalyticsStore,
    index: usize,
    query: &Query,
    realtime: &Query,
) -> anyhow::Result<Answer> {
    Ok(match index {
        0 => summary_answer(&store.summary(query).await?),
        1 => {
            let buckets = buckets(query.from, query.to, Interval::Day, chrono_tz::UTC)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            store
                .timeseries(query, &buckets)
                .await?
                .into_iter()
                .filter(|p| p.events > 0)
                .map(|p| {
                    (
                        Some(p.start.as_datetime().timestamp_millis().to_string()),
                        p.visitors,
                        p.sessions,
                        p.pageviews,
                        p.events,
                    )
                })
                .collect()
        }
        2..=5 => breakdown_answer(
            store
                .breakdown(query, &Dimension::Column(BREAKDOWNS[index - 2]), 10)
                .await?,
        ),
        _ => summary_answer(&store.summary(realtime).await?),
    })
}

fn millis(t: Timestamp) -> i64 {
    t.as_datetime().timestamp_millis()
}

/// Widget `index` as someone would write it by hand against the `events` table: one statement
/// per widget (the summary's per-session figures and totals in one pass, the time series as one
/// `GROUP BY` over UTC days instead of one range scan per bucket).
async fn hand_written(
    pool: &SqlitePool,
    index: usize,
    query: &Query,
    realtime: &Query,
) -> anyhow::Result<Answer> {
    const SUMMARY: &str = "WITH s AS (
            SELECT visitor, SUM(event_name = 'page_view') AS pv, COUNT(*) AS n,
                   MAX(engaged) AS eng, (MAX(ts) - MIN(ts)) / 1000.0 AS dur
            FROM events WHERE site_id = ?1 AND ts >= ?2 AND ts < ?3 AND bot = 0
            GROUP BY session)
        SELECT COUNT(DISTINCT visitor), COUNT(*), COALESCE(SUM(pv), 0), COALESCE(SUM(n), 0),
               COALESCE(AVG(pv <= 1 AND eng = 0), 0.0), COALESCE(AVG(dur), 0.0) FROM s";
    let summary = |q: &Query| {
        let (site, from, to) = (q.site_id, millis(q.from), millis(q.to));
        async move {
            let (visitors, sessions, pageviews, events, bounce_rate, avg_session_seconds): (
                i64,
                i64,
                i64,
                i64,
                f64,
                f64,
            ) = sqlx::query_as(SUMMARY)
                .bind(site)
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await?;
            anyhow::Ok(summary_answer(&Summary {
                visitors,
                sessions,
                pageviews,
                events,
                bounce_rate,
                avg_session_seconds,
                visitors_estimated: false,
            }))
        }
    };
    let (site, from, to) = (query.site_id, millis(query.from), millis(query.to));
    Ok(match index {
        0 => summary(query).await?,
        1 => {
            let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
                "SELECT ts / 86400000 * 86400000 AS day, COUNT(DISTINCT visitor),
                        COUNT(DISTINCT session), SUM(event_name = 'page_view'), COUNT(*)
                 FROM events WHERE site_id = ?1 AND ts >= ?2 AND ts < ?3 AND bot = 0
                 GROUP BY day ORDER BY day",
            )
            .bind(site)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|(day, v, s, p, e)| (Some(day.to_string()), v, s, p, e))
                .collect()
        }
        2..=5 => {
            let column = BREAKDOWNS[index - 2];
            let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT {column}, COUNT(DISTINCT visitor) AS visitors, COUNT(*) AS events
                 FROM events WHERE site_id = ?1 AND ts >= ?2 AND ts < ?3 AND bot = 0
                 GROUP BY 1 ORDER BY visitors DESC, events DESC, 1 LIMIT 10"
            )))
            .bind(site)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(|(v, a, b)| (v, a, b, 0, 0)).collect()
        }
        _ => summary(realtime).await?,
    })
}
