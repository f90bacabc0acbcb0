//! `bench-crm`: how fast the CRM takes contact writes through the API, and how fast it lists
//! contacts at 1,000,000 of them. The real server runs in-process (API role, SQLite state
//! database in a fresh directory) and is called over HTTP on 127.0.0.1 with keep-alive clients.
//!
//! - Phase 1, upserts: `--upserts` `POST /contacts` with `--concurrency` parallel clients
//!   (about 20 % repeat an earlier email, so they update), against the same loop on
//!   `GET /crm/settings` (authenticated, nearly no work) measured before and after; then
//!   `POST /contacts/batch` with 1,000 contacts per request. Created/updated answers and the
//!   database's contact count are checked against what was sent.
//! - Phase 2, list latency: the server stops, the rest of `--contacts` is bulk-loaded straight into
//!   the SQLite file (see `bulk.rs`), `ANALYZE`, the server starts again on the same data (fresh
//!   connections load the statistics), and seven list queries are timed over HTTP against the
//!   same `GET /crm/settings` loop. Every answer is checked against SQL written independently
//!   on the same file; the server's own SQL for each query is captured from sqlx's statement
//!   events and its `EXPLAIN QUERY PLAN` printed.

mod bulk;
mod capture;
mod data;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use platform::config::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Row, SqlitePool};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "bench-crm")]
struct Args {
    /// Contacts in the workspace for the list queries: the API phase's, plus the rest
    /// bulk-loaded.
    #[arg(long, default_value_t = 1_000_000)]
    contacts: u64,
    /// `POST /contacts` requests in phase 1 (and as many `GET /crm/settings` for the baseline).
    #[arg(long, default_value_t = 20_000)]
    upserts: usize,
    /// Parallel HTTP clients in phase 1.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Timed runs of each list query and of the baseline (after warm-up runs).
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// `POST /contacts/batch` requests of 1,000 contacts each in phase 1.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// Target p95 of every list query, in milliseconds.
    #[arg(long, default_value_t = 30.0)]
    target_ms: f64,
    /// Seed of the data generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the data directory goes (must not hold a state.db yet; default: a temporary
    /// directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip `ANALYZE` after the bulk load (the app itself never runs it).
    #[arg(long)]
    no_analyze: bool,
    /// Print only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

const WARMUP: usize = 5;
const BATCH: usize = 1_000;
const REPEAT_SHARE: f64 = 0.2;

/// Prints and keeps the report (it is what goes into RESULTS.md).
#[derive(Default)]
struct Report(String);

impl Report {
    fn line(&mut self, text: impl AsRef<str>) {
        println!("{}", text.as_ref());
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.concurrency >= 1 && args.runs >= 1,
        "--concurrency and --runs must be at least 1"
    );
    capture::install();
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let db_path = dir.join("state.db");
    anyhow::ensure!(
        !db_path.exists(),
        "{} already exists: give an empty --dir",
        db_path.display()
    );
    let started = Instant::now();
    let load_before = loadavg();
    let command = command_line();
    let mut r = Report::default();
    let mut failures: Vec<String> = Vec::new();

    println!(
        "bench-crm: contacts={} upserts={} concurrency={} runs={} batches={} seed={} dir={}\n",
        args.contacts,
        args.upserts,
        args.concurrency,
        args.runs,
        args.batches,
        args.seed,
        dir.display()
    );

    let mut server = Server::start(&dir).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1) * 2)
        .tcp_nodelay(true)
        .build()?;
    let mut api = Api::setup(client, server.addr).await?;
    let ws = api
        .ws
        .parse::<platform::id::WorkspaceId>()
        .map_err(|e| anyhow::anyhow!("workspace id {}: {e}", api.ws))?
        .uuid();

    // -----------------------------------------------------------------------------------------
    // Phase 1.
    let book = Arc::new(Book::default());
    let next_n = phase_upserts(&args, &api, &db_path, ws, &book, &mut r, &mut failures).await?;

    // -----------------------------------------------------------------------------------------
    // Phase 2.
    server.stop().await?;
    let existing = {
        let reader = open_reader(&db_path).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts WHERE workspace_id = ?")
            .bind(ws)
            .fetch_one(&reader)
            .await?;
        reader.close().await;
        n as u64
    };
    let to_load = args.contacts.saturating_sub(existing);
    eprintln!("bulk-loading {to_load} contacts (the workspace has {existing})…");
    let loaded = bulk::load(&db_path, ws, next_n, to_load, args.seed, !args.no_analyze)
        .await
        .context("bulk load")?;
    server = Server::start(&dir).await?;
    api.base = format!("http://{}", server.addr);
    let reader = open_reader(&db_path).await?;
    phase_lists(
        &args,
        &api,
        &reader,
        ws,
        &book,
        existing,
        &loaded,
        &db_path,
        &mut r,
        &mut failures,
    )
    .await?;
    let sqlite_version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&reader)
        .await?;
    reader.close().await;
    server.stop().await?;

    // -----------------------------------------------------------------------------------------
    let wall = started.elapsed().as_secs_f64();
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let machine = format!(
        "Machine: {} cores ({}), Linux {}, load average {} before the run and {} after \
         (shared: other users' builds may run); SQLite {sqlite_version} (bundled); data directory {}. \
         Date {} UTC; wall time {:.0} s.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        load_before,
        loadavg(),
        if args.dir.is_some() {
            dir.display().to_string()
        } else {
            format!(
                "a temporary directory in {}",
                std::env::temp_dir().display()
            )
        },
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        wall
    );
    println!("\n{machine}");
    println!("Source: {}", source_version());
    if failures.is_empty() {
        println!("\nall checks passed");
    } else {
        println!("\nFAILED checks:");
        for f in &failures {
            println!("- {f}");
        }
    }
    if !args.no_record {
        let section = format!(
            "## CRM benchmark, {date}\n\n\
             Command (repository root; release build first: \
             `CARGO_TARGET_DIR=/var/tmp/switchyard-ci-target cargo build --release -p bench-crm`):\n\n\
             ```bash\n{command}\n```\n\n{machine}\nSource: {}.\n\n{}{}",
            source_version(),
            r.0,
            if failures.is_empty() {
                "\nEvery check passed (answers, counts).\n".to_owned()
            } else {
                format!("\n**Failed checks:** {}\n", failures.join("; "))
            }
        );
        record(&date, &section)?;
        println!("recorded in bench/RESULTS.md (section bench/crm {date})");
    }
    anyhow::ensure!(failures.is_empty(), "{} check(s) failed", failures.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server and the client.

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// The real server, API role only, on 127.0.0.1:0 over `dir/state.db`.
    async fn start(dir: &Path) -> anyhow::Result<Server> {
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let app = switchyard::build(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let roles: switchyard::Roles = [switchyard::ServeRole::Api].into_iter().collect();
        let task = tokio::spawn(switchyard::run(app, listener, roles, shutdown.clone()));
        Ok(Server {
            addr,
            shutdown,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
    ws: String,
}

impl Api {
    /// Signs up and creates the workspace, through the API like a user.
    async fn setup(client: reqwest::Client, addr: SocketAddr) -> anyhow::Result<Api> {
        let base = format!("http://{addr}");
        let resp = client
            .post(format!("{base}/api/v1/auth/signup"))
            .json(&json!({ "email": "bench@example.com", "password": "correct horse battery" }))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 201, "signup: {}", resp.status());
        let body: Value = resp.json().await?;
        let token = body["token"].as_str().context("signup token")?.to_owned();
        let resp = client
            .post(format!("{base}/api/v1/workspaces"))
            .bearer_auth(&token)
            .json(&json!({ "name": "CRM bench" }))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 201, "workspace: {}", resp.status());
        let body: Value = resp.json().await?;
        let ws = body["id"].as_str().context("workspace id")?.to_owned();
        Ok(Api {
            client,
            base,
            token,
            ws,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/workspaces/{}{path}", self.base, self.ws)
    }

    /// Sends and reads the whole body; returns the status and the bytes.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<(u16, bytes::Bytes)> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?))
    }

    async fn settings(&self) -> anyhow::Result<()> {
        let (status, body) = self
            .send(self.client.get(self.url("/crm/settings")))
            .await?;
        anyhow::ensure!(
            status == 200,
            "GET crm/settings: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }

    async fn list(&self, params: &[(String, String)]) -> anyhow::Result<bytes::Bytes> {
        let (status, body) = self
            .send(self.client.get(self.url("/contacts")).query(params))
            .await?;
        anyhow::ensure!(
            status == 200,
            "GET contacts?{params:?}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(body)
    }
}

/// A closed loop: `concurrency` clients each send the next request as soon as their previous
/// one is answered, until `n` were sent.
struct Loop {
    /// Seconds, sorted.
    latencies: Vec<f64>,
    secs: f64,
    errors: usize,
    first_errors: Vec<String>,
}

impl Loop {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.secs
    }
}

async fn closed_loop<F, Fut>(n: usize, concurrency: usize, f: F) -> Loop
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (f, next) = (f.clone(), next.clone());
        tasks.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let outcome = f(i).await;
                latencies.push(t.elapsed().as_secs_f64());
                if let Err(e) = outcome {
                    errors.push(format!("{e:#}"));
                }
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::with_capacity(n), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((l, e)) => {
                latencies.extend(l);
                errors.extend(e);
            }
            Err(e) => errors.push(format!("client task: {e}")),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Loop {
        latencies,
        secs,
        errors: errors.len(),
        first_errors: errors.into_iter().take(3).collect(),
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] * 1e3
}

// ---------------------------------------------------------------------------------------------
// Phase 1: upserts.

/// What phase 1 sent and got back.
#[derive(Default)]
struct Book {
    /// Contacts whose creation was acknowledged (201): repeats pick from these.
    completed: Mutex<Vec<Sent>>,
    /// Normalized emails of every new contact sent.
    new_emails: Mutex<HashSet<String>>,
    created: AtomicUsize,
    updated: AtomicUsize,
    repeats_sent: AtomicUsize,
}

#[derive(Clone)]
struct Sent {
    first: &'static str,
    last: &'static str,
    email: String,
    phone_raw: Option<String>,
}

fn rng_for(seed: u64, stream: u64, i: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream.rotate_left(32) ^ i)
}

fn some_tags(rng: &mut StdRng, max: usize) -> Vec<&'static str> {
    let mut tags: Vec<&'static str> = (0..rng.gen_range(0..=max))
        .map(|_| data::API_TAGS[rng.gen_range(0..data::API_TAGS.len())])
        .collect();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// A new contact's body: names, one email, a phone for half, 0–2 tags, a stage and a score.
fn new_body(p: &data::Person, rng: &mut StdRng) -> Value {
    let mut body = json!({
        "first_name": p.first,
        "last_name": p.last,
        "emails": [p.email_raw],
        "tags": some_tags(rng, 2),
        "lifecycle_stage": data::stage(rng),
        "lead_score": data::lead_score(rng),
    });
    if let Some(phone) = &p.phone_raw {
        body["phones"] = json!([phone]);
    }
    body
}

/// A repeat: the same person again (email in upper case now and then), with a new score, a new
/// stage and maybe a tag: an update of the contact holding the email.
fn repeat_body(s: &Sent, rng: &mut StdRng) -> Value {
    let email = if rng.gen_bool(0.3) {
        s.email.to_uppercase()
    } else {
        s.email.clone()
    };
    let mut body = json!({
        "first_name": s.first,
        "last_name": s.last,
        "emails": [email],
        "tags": some_tags(rng, 1),
        "lifecycle_stage": data::stage(rng),
        "lead_score": data::lead_score(rng),
    });
    if let Some(phone) = &s.phone_raw {
        body["phones"] = json!([phone]);
    }
    body
}

async fn phase_upserts(
    args: &Args,
    api: &Api,
    db_path: &Path,
    ws: Uuid,
    book: &Arc<Book>,
    r: &mut Report,
    failures: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let n = args.upserts;
    let baseline = |api: Api| {
        closed_loop(n, args.concurrency, move |_| {
            let api = api.clone();
            async move { api.settings().await }
        })
    };
    eprintln!("phase 1: baseline GET crm/settings ×{n}…");
    let base1 = baseline(api.clone()).await;
    eprintln!("phase 1: POST /contacts ×{n}…");
    let upserts = {
        let (api, book, seed) = (api.clone(), book.clone(), args.seed);
        closed_loop(n, args.concurrency, move |i| {
            let (api, book) = (api.clone(), book.clone());
            async move { upsert_one(&api, &book, seed, i as u64).await }
        })
        .await
    };
    eprintln!("phase 1: baseline GET crm/settings ×{n} (again)…");
    let base2 = baseline(api.clone()).await;
    let base_rate = (base1.rate() + base2.rate()) / 2.0;

    r.line(format!(
        "### 1. Upserts through the API ({n} requests, {} keep-alive clients)\n",
        args.concurrency
    ));
    r.line("| loop | requests | req/s | × baseline | p50 ms | p95 ms | p99 ms | max ms | errors |");
    r.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, l) in [
        ("`GET /crm/settings` (baseline)", &base1),
        ("`POST /contacts`", &upserts),
        ("`GET /crm/settings` (baseline, again)", &base2),
    ] {
        r.line(format!(
            "| {name} | {} | {:.0} | {:.2}× | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            l.latencies.len(),
            l.rate(),
            l.rate() / base_rate,
            pct(&l.latencies, 50.0),
            pct(&l.latencies, 95.0),
            pct(&l.latencies, 99.0),
            pct(&l.latencies, 100.0),
            l.errors
        ));
        for e in &l.first_errors {
            eprintln!("  {name}: {e}");
        }
        if l.errors > 0 {
            failures.push(format!("{name}: {} failed requests", l.errors));
        }
    }
    let created = book.created.load(Ordering::SeqCst);
    let updated = book.updated.load(Ordering::SeqCst);
    let repeats = book.repeats_sent.load(Ordering::SeqCst);
    let distinct = book
        .new_emails
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let in_db = {
        let reader = open_reader(db_path).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts WHERE workspace_id = ?")
            .bind(ws)
            .fetch_one(&reader)
            .await?;
        reader.close().await;
        n as usize
    };
    let ok =
        created == n - repeats && updated == repeats && distinct == created && in_db == distinct;
    r.line(format!(
        "\nUpserts: **{:.0}/s = {:.2}× the baseline's {:.0} req/s** (baseline = mean of the two \
         `GET /crm/settings` runs, which differ by {:.0} %: the noise level).",
        upserts.rate(),
        upserts.rate() / base_rate,
        base_rate,
        (base1.rate() - base2.rate()).abs() / base_rate * 100.0
    ));
    r.line(format!(
        "Sent {} new contacts and {repeats} repeats of an already created email ({:.1} %, some in \
         upper case); answers: {created} × 201 created, {updated} × 200 updated; distinct emails \
         sent {distinct}, contacts in the database {in_db}: {}.",
        n - repeats,
        repeats as f64 * 100.0 / n.max(1) as f64,
        if ok { "**OK**" } else { "**MISMATCH**" }
    ));
    if !ok {
        failures.push(format!(
            "upserts: sent {} new + {repeats} repeats, got {created} created + {updated} updated, \
             {distinct} distinct emails, {in_db} contacts in the database",
            n - repeats
        ));
    }

    // The batch endpoint: sequential requests of 1,000 (80 % new, 20 % repeats).
    let mut next_n = n as u64;
    let (mut lat, mut b_created, mut b_updated, mut b_failed) = (Vec::new(), 0u64, 0u64, 0u64);
    let (mut want_created, mut want_updated) = (0u64, 0u64);
    let mut batch_errors = Vec::new();
    eprintln!(
        "phase 1: POST /contacts/batch ×{} of {BATCH}…",
        args.batches
    );
    let batch_started = Instant::now();
    for b in 0..args.batches {
        let mut rng = rng_for(args.seed, 2, b as u64);
        let completed = book
            .completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut items = Vec::with_capacity(BATCH);
        let mut repeated: HashSet<String> = HashSet::new();
        for _ in 0..BATCH {
            let repeat = (!completed.is_empty() && rng.gen_bool(REPEAT_SHARE))
                .then(|| &completed[rng.gen_range(0..completed.len())])
                .filter(|s| repeated.insert(s.email.clone()));
            match repeat {
                Some(s) => {
                    want_updated += 1;
                    items.push(repeat_body(s, &mut rng));
                }
                None => {
                    let p = data::person(next_n, &mut rng, 0.5, None);
                    next_n += 1;
                    want_created += 1;
                    book.new_emails
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(p.email.clone());
                    items.push(new_body(&p, &mut rng));
                }
            }
        }
        let body = json!({ "contacts": items });
        let t = Instant::now();
        let (status, bytes) = api
            .send(api.client.post(api.url("/contacts/batch")).json(&body))
            .await?;
        lat.push(t.elapsed().as_secs_f64());
        if status != 200 {
            batch_errors.push(format!("{status} {}", String::from_utf8_lossy(&bytes)));
            continue;
        }
        let v: Value = serde_json::from_slice(&bytes)?;
        b_created += v["created"].as_u64().unwrap_or(0);
        b_updated += v["updated"].as_u64().unwrap_or(0);
        b_failed += v["failed"].as_u64().unwrap_or(0);
    }
    let batch_secs = batch_started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let total_items = (args.batches * BATCH) as f64;
    let distinct = book
        .new_emails
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    let in_db = {
        let reader = open_reader(db_path).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts WHERE workspace_id = ?")
            .bind(ws)
            .fetch_one(&reader)
            .await?;
        reader.close().await;
        n as usize
    };
    if args.batches > 0 {
        r.line(format!(
            "\n| batch loop | requests | contacts/s | × `POST /contacts` rate | p50 ms | max ms | created | updated | failed |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | `POST /contacts/batch`, {BATCH} per request, one client | {} | {:.0} | {:.2}× | {:.0} | {:.0} | {b_created} | {b_updated} | {b_failed} |",
            args.batches,
            total_items / batch_secs,
            total_items / batch_secs / upserts.rate(),
            pct(&lat, 50.0),
            pct(&lat, 100.0),
        ));
        let ok = batch_errors.is_empty()
            && b_created == want_created
            && b_updated == want_updated
            && b_failed == 0
            && in_db == distinct;
        r.line(format!(
            "\nBatches sent {want_created} new contacts and {want_updated} repeats; distinct emails \
             sent in phase 1: {distinct}, contacts in the database: {in_db}: {}.",
            if ok { "**OK**" } else { "**MISMATCH**" }
        ));
        for e in batch_errors.iter().take(3) {
            eprintln!("  batch: {e}");
        }
        if !ok {
            failures.push(format!(
                "batch: want {want_created} created + {want_updated} updated, got {b_created} + \
                 {b_updated} (+{b_failed} failed, {} request errors); {distinct} distinct emails vs \
                 {in_db} contacts",
                batch_errors.len()
            ));
        }
    }
    Ok(next_n)
}

/// Request `i` of the upsert loop: a repeat of an acknowledged contact (20 %) or a new one.
async fn upsert_one(api: &Api, book: &Book, seed: u64, i: u64) -> anyhow::Result<()> {
    let mut rng = rng_for(seed, 1, i);
    let repeat = if rng.gen_bool(REPEAT_SHARE) {
        let done = book.completed.lock().unwrap_or_else(|e| e.into_inner());
        (!done.is_empty()).then(|| done[rng.gen_range(0..done.len())].clone())
    } else {
        None
    };
    let (body, expect, sent) = match repeat {
        Some(s) => {
            book.repeats_sent.fetch_add(1, Ordering::SeqCst);
            (repeat_body(&s, &mut rng), 200, None)
        }
        None => {
            let p = data::person(i, &mut rng, 0.5, None);
            book.new_emails
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.email.clone());
            let body = new_body(&p, &mut rng);
            let sent = Sent {
                first: p.first,
                last: p.last,
                email: p.email,
                phone_raw: p.phone_raw,
            };
            (body, 201, Some(sent))
        }
    };
    let (status, bytes) = api
        .send(api.client.post(api.url("/contacts")).json(&body))
        .await?;
    match status {
        201 => book.created.fetch_add(1, Ordering::SeqCst),
        200 => book.updated.fetch_add(1, Ordering::SeqCst),
        _ => 0,
    };
    anyhow::ensure!(
        status == expect,
        "POST /contacts: expected {expect}, got {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    if let Some(sent) = sent {
        book.completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sent);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phase 2: list latency.

/// One list query: its API parameters, and what the checks and the replica SQL need.
#[derive(Clone, Default)]
struct ListQuery {
    key: &'static str,
    tag: Option<&'static str>,
    stage: Option<&'static str>,
    email: Option<String>,
    q: Option<String>,
    sort: Option<&'static str>,
    /// The API's cursor text (second page).
    cursor: Option<String>,
}

impl ListQuery {
    fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        for (k, v) in [
            ("q", self.q.clone()),
            ("tag", self.tag.map(str::to_owned)),
            ("lifecycle_stage", self.stage.map(str::to_owned)),
            ("email", self.email.clone()),
            ("sort", self.sort.map(str::to_owned)),
            ("limit", Some("50".to_owned())),
            ("cursor", self.cursor.clone()),
        ] {
            if let Some(v) = v {
                p.push((k.to_owned(), v));
            }
        }
        p
    }

    fn label(&self) -> String {
        let shown: Vec<String> = self
            .params()
            .into_iter()
            .map(|(k, v)| {
                if k == "cursor" {
                    "cursor=…".to_owned()
                } else if k == "email" {
                    "email=<existing>".to_owned()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        format!("({}) `{}`", self.key, shown.join("&"))
    }

    /// (column, descending) of the sort, as the store maps it.
    fn order(&self) -> (&'static str, bool) {
        match self.sort.unwrap_or("-created_at") {
            "created_at" => ("id", false),
            "-updated_at" => ("updated_at", true),
            "updated_at" => ("updated_at", false),
            "-lead_score" => ("lead_score", true),
            "lead_score" => ("lead_score", false),
            _ => ("id", true),
        }
    }
}

#[derive(Clone, Debug)]
enum Bind {
    Blob(Uuid),
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for b in binds {
        q = match b {
            Bind::Blob(u) => q.bind(*u),
            Bind::Text(t) => q.bind(t.clone()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

const COLUMNS: &str = "c.id, c.first_name, c.last_name, c.company_id, c.owner_id, c.lifecycle_stage, \
    c.lead_score, c.first_touch, c.last_touch, c.custom, c.created_at, c.updated_at, c.last_seen_at";

/// The list statement as `crm::contacts::store::list` builds it on SQLite (kept in step by
/// hand; the run compares it with the statement the server really executed).
fn replica(lq: &ListQuery, ws: Uuid, cursor: Option<Uuid>) -> (String, Vec<Bind>) {
    let (column, descending) = lq.order();
    let dir = if descending { "DESC" } else { "ASC" };
    let mut sql = format!("SELECT {COLUMNS} FROM contacts c WHERE c.workspace_id = ?");
    let mut binds = vec![Bind::Blob(ws)];
    if let Some(cursor) = cursor {
        let cmp = if descending { "<" } else { ">" };
        sql.push_str(&format!(
            " AND (c.{column}, c.id) {cmp} (SELECT {column}, id FROM contacts WHERE workspace_id = ? AND id = ?)"
        ));
        binds.extend([Bind::Blob(ws), Bind::Blob(cursor)]);
    }
    if let Some(tag) = lq.tag {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM contact_tags t WHERE t.contact_id = c.id AND t.tag = ?)",
        );
        binds.push(Bind::Text(tag.to_owned()));
    }
    if let Some(stage) = lq.stage {
        sql.push_str(" AND c.lifecycle_stage = ?");
        binds.push(Bind::Text(stage.to_owned()));
    }
    if let Some(email) = &lq.email {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM contact_identities i WHERE i.workspace_id = c.workspace_id \
             AND i.contact_id = c.id AND i.kind = ? AND i.value = ?)",
        );
        binds.extend([
            Bind::Text("email".to_owned()),
            Bind::Text(email.trim().to_lowercase()),
        ]);
    }
    if let Some(q) = &lq.q {
        let q = q.trim().to_lowercase();
        if q.chars().count() >= 3 {
            sql.push_str(
                " AND c.rowid IN (SELECT rowid FROM contact_search WHERE contact_search MATCH ?)",
            );
            binds.push(Bind::Text(format!("\"{}\"", q.replace('"', "\"\""))));
        } else {
            sql.push_str(" AND c.search_text LIKE ? ESCAPE '\\'");
            binds.push(Bind::Text(format!("%{q}%")));
        }
    }
    sql.push_str(&format!(" ORDER BY c.{column} {dir}, c.id {dir} LIMIT ?"));
    binds.push(Bind::Int(51));
    (sql, binds)
}

/// The right answer, from SQL written independently of the store (LIKE on `search_text`
/// instead of FTS, plain joins): the ids of the page, and how many contacts match in all.
async fn truth(
    reader: &SqlitePool,
    ws: Uuid,
    lq: &ListQuery,
    offset: i64,
) -> anyhow::Result<(Vec<Uuid>, i64)> {
    let mut filter = String::from("c.workspace_id = ?");
    let mut binds = vec![Bind::Blob(ws)];
    if let Some(tag) = lq.tag {
        filter.push_str(" AND c.id IN (SELECT contact_id FROM contact_tags WHERE tag = ?)");
        binds.push(Bind::Text(tag.to_owned()));
    }
    if let Some(stage) = lq.stage {
        filter.push_str(" AND c.lifecycle_stage = ?");
        binds.push(Bind::Text(stage.to_owned()));
    }
    if let Some(email) = &lq.email {
        filter.push_str(
            " AND c.id = (SELECT contact_id FROM contact_identities WHERE workspace_id = ? AND kind = 'email' AND value = ?)",
        );
        binds.extend([Bind::Blob(ws), Bind::Text(email.to_lowercase())]);
    }
    if let Some(q) = &lq.q {
        filter.push_str(" AND c.search_text LIKE ?");
        binds.push(Bind::Text(format!("%{}%", q.to_lowercase())));
    }
    let (column, descending) = lq.order();
    let dir = if descending { "DESC" } else { "ASC" };
    let page_sql = format!(
        "SELECT c.id FROM contacts c WHERE {filter} ORDER BY c.{column} {dir}, c.id {dir} LIMIT 50 OFFSET {offset}"
    );
    let ids: Vec<Uuid> = bind_all(sqlx::query(AssertSqlSafe(page_sql)), &binds)
        .fetch_all(reader)
        .await?
        .iter()
        .map(|row| row.get::<Uuid, _>(0))
        .collect();
    let count_sql = format!("SELECT count(*) FROM contacts c WHERE {filter}");
    let count: i64 = bind_all(sqlx::query(AssertSqlSafe(count_sql)), &binds)
        .fetch_one(reader)
        .await?
        .get(0);
    Ok((ids, count))
}

fn contact_id(row: &Value) -> anyhow::Result<Uuid> {
    let text = row["id"].as_str().context("row without id")?;
    Ok(text
        .parse::<crm::ContactId>()
        .map_err(|e| anyhow::anyhow!("{text}: {e}"))?
        .uuid())
}

/// The semantic checks of one page (besides equality with the right answer).
fn check_rows(lq: &ListQuery, rows: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    for (i, row) in rows.iter().enumerate() {
        if let Some(tag) = lq.tag {
            let has = row["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == tag));
            if !has {
                problems.push(format!("row {i} lacks tag {tag}"));
            }
        }
        if let Some(stage) = lq.stage
            && row["lifecycle_stage"] != stage
        {
            problems.push(format!("row {i} has stage {}", row["lifecycle_stage"]));
        }
        if let Some(q) = &lq.q {
            let text = format!(
                "{} {} {}",
                row["first_name"].as_str().unwrap_or(""),
                row["last_name"].as_str().unwrap_or(""),
                row["emails"]
            )
            .to_lowercase();
            if !text.contains(&q.to_lowercase()) {
                problems.push(format!("row {i} does not contain {q:?}"));
            }
        }
        if i > 0 {
            let prev = &rows[i - 1];
            let in_order = match lq.sort {
                Some("-lead_score") => prev["lead_score"].as_i64() >= row["lead_score"].as_i64(),
                Some("-updated_at") => time(&prev["updated_at"]) >= time(&row["updated_at"]),
                _ => contact_id(prev).ok() > contact_id(row).ok(),
            };
            if !in_order {
                problems.push(format!("rows {} and {i} out of order", i - 1));
            }
        }
    }
    if let Some(email) = &lq.email {
        let exact = rows.len() == 1
            && rows[0]["emails"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x == email.as_str()));
        if !exact {
            problems.push(format!(
                "{} rows, not exactly the contact holding it",
                rows.len()
            ));
        }
    }
    problems
}

struct Timing {
    label: String,
    /// Seconds, sorted.
    latencies: Vec<f64>,
    rows: usize,
    matching: i64,
    list_sql_ms: Option<f64>,
    all_sql_ms: Option<f64>,
    statements: Option<f64>,
    plan: Vec<String>,
    plan_note: String,
    server_sql: Option<String>,
}

async fn time_runs<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..WARMUP {
        f().await?;
    }
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await?;
        latencies.push(t.elapsed().as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

#[allow(clippy::too_many_arguments)]
async fn phase_lists(
    args: &Args,
    api: &Api,
    reader: &SqlitePool,
    ws: Uuid,
    book: &Book,
    existing: u64,
    loaded: &bulk::Loaded,
    db_path: &Path,
    r: &mut Report,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts WHERE workspace_id = ?")
        .bind(ws)
        .fetch_one(reader)
        .await?;
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db_path.display())).ok())
        .map(|m| m.len())
        .sum();
    r.line(format!(
        "\n### 2. List latency at {total} contacts\n\n\
         The workspace held {existing} contacts from phase 1; {} more were bulk-loaded into the \
         SQLite file with the server stopped ({} companies, {} identities, {} tag rows; one \
         transaction, FTS5 triggers on) in {:.1} s ({:.0} contacts/s), WAL checkpoint {:.1} s, {}; \
         database {:.0} MB. Then the server was started again on the same data.",
        loaded.contacts,
        loaded.companies,
        loaded.identities,
        loaded.tags,
        loaded.load_secs,
        loaded.contacts as f64 / loaded.load_secs.max(1e-9),
        loaded.checkpoint_secs,
        match loaded.analyze_secs {
            Some(s) => format!("`ANALYZE` {s:.1} s"),
            None => "**no `ANALYZE`** (`--no-analyze`)".to_owned(),
        },
        size as f64 / 1e6
    ));
    let probe_email = match &loaded.probe {
        Some((_, email)) => email.clone(),
        None => book
            .completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .map(|s| s.email.clone())
            .context("no contact to look up by email")?,
    };

    let mut queries = vec![
        ListQuery {
            key: "a",
            ..Default::default()
        },
        ListQuery {
            key: "b",
            tag: Some("vip"),
            sort: Some("-lead_score"),
            ..Default::default()
        },
        ListQuery {
            key: "c",
            stage: Some("customer"),
            sort: Some("-updated_at"),
            ..Default::default()
        },
        ListQuery {
            key: "d",
            tag: Some("churned"),
            ..Default::default()
        },
        ListQuery {
            key: "e",
            q: Some(data::RARE_FRAGMENT.to_owned()),
            ..Default::default()
        },
        ListQuery {
            key: "f",
            email: Some(probe_email),
            ..Default::default()
        },
    ];

    // Answers first: each page against the independent SQL.
    let mut rows_of = Vec::new();
    let mut matching = Vec::new();
    let mut verified = Vec::new();
    let mut b_cursor = None;
    for lq in queries.clone() {
        let body: Value = serde_json::from_slice(&api.list(&lq.params()).await?)?;
        let rows = body["data"].as_array().cloned().unwrap_or_default();
        if lq.key == "b" {
            b_cursor = body["next_cursor"].as_str().map(str::to_owned);
        }
        let (want, count) = truth(reader, ws, &lq, 0).await?;
        rows_of.push(rows.len());
        matching.push(count);
        verified.push(verify(&lq, &rows, &want));
    }
    let second = ListQuery {
        key: "g",
        tag: Some("vip"),
        sort: Some("-lead_score"),
        cursor: b_cursor.clone(),
        ..Default::default()
    };
    {
        let body: Value = match &b_cursor {
            Some(_) => serde_json::from_slice(&api.list(&second.params()).await?)?,
            None => json!({ "data": [] }),
        };
        let rows = body["data"].as_array().cloned().unwrap_or_default();
        let (want, count) = truth(reader, ws, &second, 50).await?;
        rows_of.push(rows.len());
        matching.push(count);
        let mut problems = verify(&second, &rows, &want);
        if b_cursor.is_none() {
            problems.push("(b) returned no next_cursor".to_owned());
        }
        verified.push(problems);
    }
    queries.push(second);

    eprintln!("phase 2: timing {} runs of each query…", args.runs);
    let base1 = time_runs(args.runs, || api.settings()).await?;
    let mut timings = Vec::new();
    for (i, lq) in queries.iter().enumerate() {
        let params = lq.params();
        let latencies = time_runs(args.runs, || {
            let params = &params;
            async move { api.list(params).await.map(|_| ()) }
        })
        .await?;
        timings.push(Timing {
            label: lq.label(),
            latencies,
            rows: rows_of[i],
            matching: matching[i],
            list_sql_ms: None,
            all_sql_ms: None,
            statements: None,
            plan: Vec::new(),
            plan_note: String::new(),
            server_sql: None,
        });
    }
    let base2 = time_runs(args.runs, || api.settings()).await?;
    let base_p95 = (pct(&base1, 95.0) + pct(&base2, 95.0)) / 2.0;

    // Diagnostics, untimed: the server's statements for each query, and their plans.
    for (lq, t) in queries.iter().zip(timings.iter_mut()) {
        diagnose(api, reader, ws, lq, t).await?;
    }

    r.line(format!(
        "\n{} timed runs per query after {WARMUP} warm-up runs, one client, sequential; p95 ratio \
         against the baseline's p95 ({base_p95:.2} ms, mean of the runs before and after); target \
         p95 ≤ {} ms.\n",
        args.runs, args.target_ms
    ));
    r.line("| query | p50 ms | p95 ms | p99 ms | p95 × baseline | rows | matching contacts | list SQL p50 ms | all SQL per request ms | p95 ≤ target |");
    r.line("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, l) in [
        ("`GET /crm/settings` (baseline)", &base1),
        ("`GET /crm/settings` (baseline, again)", &base2),
    ] {
        r.line(format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2}× | | | | | |",
            pct(l, 50.0),
            pct(l, 95.0),
            pct(l, 99.0),
            pct(l, 95.0) / base_p95
        ));
    }
    let mut misses = Vec::new();
    for (i, t) in timings.iter().enumerate() {
        let p95 = pct(&t.latencies, 95.0);
        let pass = p95 <= args.target_ms;
        if !pass {
            misses.push(t.label.clone());
        }
        let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
        r.line(format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.1}× | {} | {} ({:.2} %) | {} | {} | {} |",
            t.label,
            pct(&t.latencies, 50.0),
            p95,
            pct(&t.latencies, 99.0),
            p95 / base_p95,
            t.rows,
            t.matching,
            t.matching as f64 * 100.0 / total.max(1) as f64,
            opt(t.list_sql_ms),
            match (t.all_sql_ms, t.statements) {
                (Some(ms), Some(n)) => format!("{ms:.2} ({n:.0} statements)"),
                _ => "–".to_owned(),
            },
            if pass { "pass" } else { "**FAIL**" }
        ));
        if !verified[i].is_empty() {
            failures.push(format!("{}: {}", t.label, verified[i].join(", ")));
        }
    }
    r.line(format!(
        "\n\"list SQL\" is the list statement's own execution time inside the server and \"all SQL\" \
         the sum of every statement of the request (authentication, list, identities and tags of \
         the page), both from sqlx's statement events over 5 extra untimed requests; the rest of \
         the HTTP time is routing, JSON and the client. Answers: every page equals the one computed \
         by independent SQL on the same file (`LIKE` on `search_text` instead of FTS5), and each \
         row satisfies the filter and the order (b: tag vip, scores non-increasing; f: exactly the \
         contact holding the email): {}.",
        if verified.iter().all(Vec::is_empty) {
            "**OK**".to_owned()
        } else {
            format!(
                "**WRONG** — {}",
                timings
                    .iter()
                    .zip(&verified)
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(t, v)| format!("{}: {}", t.label, v.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    ));
    r.line(if misses.is_empty() {
        format!("\n**Every query meets p95 ≤ {} ms.**", args.target_ms)
    } else {
        format!(
            "\n**Missing the p95 ≤ {} ms target: {}.**",
            args.target_ms,
            misses.join(", ")
        )
    });
    r.line("\n#### Query plans (`EXPLAIN QUERY PLAN` of the statement the server ran)\n");
    for t in &timings {
        r.line(format!("{}{}:\n", t.label, t.plan_note));
        r.line("```");
        for line in &t.plan {
            r.line(line);
        }
        r.line("```");
    }
    if let Some(sql) = timings.iter().find_map(|t| t.server_sql.clone()) {
        println!("\nserver SQL of (a), for reference:\n{sql}");
    }
    Ok(())
}

fn verify(lq: &ListQuery, rows: &[Value], want: &[Uuid]) -> Vec<String> {
    let mut problems = check_rows(lq, rows);
    let got: Vec<Uuid> = rows.iter().filter_map(|r| contact_id(r).ok()).collect();
    if got != want {
        let first_diff = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        problems.push(format!(
            "page differs from the right answer ({} rows vs {}, first difference at row {first_diff})",
            got.len(),
            want.len()
        ));
    }
    problems
}

/// Captures the statements of 5 requests of `lq`, keeps the list statement's SQL and times, and
/// explains it with the query's bound values.
async fn diagnose(
    api: &Api,
    reader: &SqlitePool,
    ws: Uuid,
    lq: &ListQuery,
    t: &mut Timing,
) -> anyhow::Result<()> {
    const N: usize = 5;
    let params = lq.params();
    capture::start();
    for _ in 0..N {
        api.list(&params).await?;
    }
    let statements = capture::stop();
    let is_list = |sql: &str| {
        capture::squash(sql).starts_with(&format!(
            "SELECT {} FROM contacts c WHERE c.workspace_id",
            capture::squash(COLUMNS)
        ))
    };
    let mut list_ms: Vec<f64> = statements
        .iter()
        .filter(|s| is_list(&s.sql))
        .map(|s| s.elapsed_secs * 1e3)
        .collect();
    list_ms.sort_by(f64::total_cmp);
    if statements.is_empty() {
        t.plan_note = " (no statements captured: sqlx's statement events are off?)".to_owned();
    } else {
        t.all_sql_ms =
            Some(statements.iter().map(|s| s.elapsed_secs).sum::<f64>() * 1e3 / N as f64);
        t.statements = Some(statements.len() as f64 / N as f64);
    }
    if !list_ms.is_empty() {
        t.list_sql_ms = Some(list_ms[list_ms.len() / 2]);
    }
    let server_sql = statements
        .iter()
        .find(|s| is_list(&s.sql))
        .map(|s| s.sql.clone());
    let cursor = lq
        .cursor
        .as_deref()
        .and_then(|c| c.parse::<platform::id::Cursor>().ok())
        .map(|c| c.0);
    let (mine, binds) = replica(lq, ws, cursor);
    let (sql, note) = match &server_sql {
        Some(s) if capture::squash(s) == capture::squash(&mine) => (mine.clone(), String::new()),
        Some(s) if s.matches('?').count() == binds.len() => (
            s.clone(),
            " (the server's SQL differs from the bench's replica of store.rs; explained with the replica's values)"
                .to_owned(),
        ),
        Some(_) => {
            t.plan_note = " (the server's SQL differs from the bench's replica of store.rs and takes other parameters: plan of the replica)".to_owned();
            (mine.clone(), t.plan_note.clone())
        }
        None => (
            mine.clone(),
            " (the list statement was not captured: plan of the bench's replica of store.rs)"
                .to_owned(),
        ),
    };
    if t.plan_note.is_empty() {
        t.plan_note = note;
    }
    t.server_sql = server_sql;
    t.plan = explain(reader, &sql, &binds).await?;
    Ok(())
}

/// `EXPLAIN QUERY PLAN`, indented like the sqlite3 shell's.
async fn explain(reader: &SqlitePool, sql: &str, binds: &[Bind]) -> anyhow::Result<Vec<String>> {
    let rows = bind_all(
        sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))),
        binds,
    )
    .fetch_all(reader)
    .await?;
    let mut depth: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for row in rows {
        let (id, parent, detail): (i64, i64, String) = (row.get(0), row.get(1), row.get(3));
        let d = depth.get(&parent).map_or(0, |d| d + 1);
        depth.insert(id, d);
        out.push(format!("{}{detail}", "  ".repeat(d)));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Odds and ends.

async fn open_reader(path: &Path) -> anyhow::Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .read_only(true)
                .pragma("cache_size", "-262144"),
        )
        .await
        .with_context(|| format!("opening {}", path.display()))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// The command as typed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `HEAD`'s short hash plus the number of changed files under crates/ (built as found).
fn source_version() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => {
            let changed =
                git(&["status", "--porcelain", "--", "crates"]).map_or(0, |s| s.lines().count());
            format!(
                "`{}` plus uncommitted changes to {changed} file(s) under crates/ (built as found)",
                head.trim()
            )
        }
        None => "unknown (no git)".to_owned(),
    }
}

/// Writes `section` into bench/RESULTS.md between this date's markers, replacing an earlier
/// section of the same day or appending.
fn record(date: &str, section: &str) -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../RESULTS.md");
    let begin = format!("<!-- bench/crm {date} begin -->");
    let end = format!("<!-- bench/crm {date} end -->");
    let block = format!("{begin}\n{}\n{end}\n", section.trim_end());
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            let after = &text[e + end.len()..];
            format!("{}{}{}", &text[..b], block.trim_end(), after)
        }
        _ => format!("{}\n{block}", text.trim_end_matches('\n').to_owned() + "\n"),
    };
    let tmp = path.with_extension("md.bench-crm.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}
