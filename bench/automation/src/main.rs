//! `bench-automation`: how long a custom event takes from the trigger API to the first step of
//! the rule it fires, and how many signed webhook steps per second reach a local receiver. The
//! real server runs in-process with every role (API and worker: outbox relay, job workers) on a
//! SQLite state database in a fresh directory, and is called over HTTP on 127.0.0.1.
//!
//! - Phase 1, latency: `--events` requests to `POST /automations/events`, one at a time
//!   (`--gap-ms` apart), each firing a rule whose first step adds a tag. Latency = the first
//!   step's `finished_at` (from the runs API) minus the instant the request was sent: it
//!   covers the API transaction, the outbox relay's poll, the delivery job and the step.
//! - Phase 2, throughput: `--webhooks` events sent with `--concurrency` clients, each firing a
//!   rule whose only step is a webhook to a local receiver; deliveries/s = distinct
//!   `webhook-id`s received divided by the time from the first request to the last delivery.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use platform::config::Config;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "bench-automation")]
struct Args {
    /// Events timed in phase 1.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Pause between phase 1 events, in milliseconds.
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// Webhook deliveries in phase 2.
    #[arg(long, default_value_t = 2000)]
    webhooks: usize,
    /// Parallel clients sending phase 2 events.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print only; leave bench/RESULTS.md alone.
    #[arg(long)]
    no_record: bool,
}

type Received = Arc<Mutex<Vec<(String, Instant)>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.webhooks.allow_private_destinations = true;
    let jobs_poll_ms = config.jobs.poll_interval_ms;
    let jobs_concurrency = config.jobs.concurrency;
    let app = switchyard::build(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(switchyard::run(
        app,
        listener,
        switchyard::all_roles(),
        shutdown.clone(),
    ));

    let (hook_url, received) = receiver().await?;
    let client = reqwest::Client::new();
    let api = Api::setup(client, &base).await?;

    // Phase 1: latency.
    let contact = api.contact("latency@example.com").await?;
    let rule = api
        .post(
            "/automations",
            json!({
                "name": "latency",
                "triggers": [{"type": "custom", "name": "bench_latency"}],
                "steps": [{"type": "add_tag", "tag": "bench"}],
            }),
        )
        .await?["id"]
        .as_str()
        .context("rule id")?
        .to_owned();
    let mut sent: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for _ in 0..args.events {
        let at = chrono::Utc::now();
        let accepted = api
            .post(
                "/automations/events",
                json!({"trigger": "bench_latency", "contact_id": contact}),
            )
            .await?;
        sent.insert(
            accepted["event_id"]
                .as_str()
                .context("event id")?
                .to_owned(),
            at,
        );
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let runs = api.finished_runs(&rule, args.events).await?;
    let mut latencies: Vec<f64> = Vec::new();
    for run in &runs {
        let run = api
            .get(&format!(
                "/automations/{rule}/runs/{}",
                run["id"].as_str().unwrap_or_default()
            ))
            .await?;
        let event_id = run["event"]["event_id"].as_str().unwrap_or_default();
        let finished = run["steps"][0]["finished_at"].as_str().unwrap_or_default();
        if let (Some(at), Ok(done)) = (
            sent.get(event_id),
            chrono::DateTime::parse_from_rfc3339(finished),
        ) {
            latencies.push(
                (done.with_timezone(&chrono::Utc) - *at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0,
            );
        }
    }
    anyhow::ensure!(
        latencies.len() == args.events,
        "{} of {} runs timed",
        latencies.len(),
        args.events
    );
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let (p50, p99, max) = (pct(0.5), pct(0.99), latencies[latencies.len() - 1]);

    // Phase 2: webhook deliveries per second.
    let endpoint = api
        .post(
            "/webhooks",
            json!({"url": hook_url, "event_types": ["bench.automation"]}),
        )
        .await?["endpoint"]["id"]
        .as_str()
        .context("endpoint id")?
        .to_owned();
    api.post("/automations", json!({
        "name": "webhooks",
        "triggers": [{"type": "custom", "name": "bench_webhook"}],
        "steps": [{"type": "webhook", "endpoint_id": endpoint, "event_type": "bench.automation"}],
    }))
    .await?;
    let contact = api.contact("webhooks@example.com").await?;
    let begin = Instant::now();
    let per_client = args.webhooks.div_ceil(args.concurrency);
    let mut clients = Vec::new();
    for c in 0..args.concurrency {
        let (api, contact) = (api.clone(), contact.clone());
        let n = per_client.min(args.webhooks.saturating_sub(c * per_client));
        clients.push(tokio::spawn(async move {
            for _ in 0..n {
                api.post(
                    "/automations/events",
                    json!({"trigger": "bench_webhook", "contact_id": contact}),
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    let sent_in = begin.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let last = loop {
        let hooks = received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let ids: HashSet<&String> = hooks.iter().map(|(id, _)| id).collect();
        if ids.len() >= args.webhooks {
            break hooks
                .iter()
                .map(|(_, at)| *at)
                .max()
                .unwrap_or_else(Instant::now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} webhooks arrived",
            ids.len(),
            args.webhooks
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let total = received
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .len();
    let elapsed = last - begin;
    let per_second = args.webhooks as f64 / elapsed.as_secs_f64();

    shutdown.cancel();
    server.await??;

    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let command = format!(
        "target/{profile}/bench-automation --events {} --gap-ms {} --webhooks {} --concurrency {}",
        args.events, args.gap_ms, args.webhooks, args.concurrency
    );
    let report = format!(
        "| measure | value |\n|---|---:|\n\
         | trigger API → first step finished, p50 | {p50:.1} ms |\n\
         | trigger API → first step finished, p99 | {p99:.1} ms |\n\
         | trigger API → first step finished, max | {max:.1} ms |\n\
         | webhook step deliveries/s ({} events, {} clients) | **{per_second:.0}/s** |\n\n\
         Phase 1: {} events one at a time, {} ms apart. Phase 2: {} events sent in {:.2} s, \
         {} deliveries received (distinct `webhook-id`s: {}; a delivery repeated by a retry \
         would show as a difference), last one {:.2} s after the first request. Job workers: \
         concurrency {jobs_concurrency}, poll {jobs_poll_ms} ms; outbox relay poll 500 ms. \
         Whole run {:.1} s.\n",
        args.webhooks,
        args.concurrency,
        args.events,
        args.gap_ms,
        args.webhooks,
        sent_in.as_secs_f64(),
        total,
        args.webhooks,
        elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    println!("{report}");
    if !args.no_record {
        let section = format!(
            "## Automation benchmark, {date}\n\n\
             Command (repository root, after `cargo build {}-p bench-automation` (a {profile} \
             build); SQLite state database in a temporary directory, every role in-process, 2 \
             shared cores, load average {}):\n\n\
             ```bash\n{command}\n```\n\n{report}",
            if profile == "release" {
                "--release "
            } else {
                ""
            },
            load_average(),
        );
        record(&date, &section)?;
        println!("recorded in bench/RESULTS.md (section bench/automation {date})");
    }
    Ok(())
}

/// The 1-minute load average (Linux), to read the numbers against.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A local receiver recording each request's `webhook-id` and arrival time; answers 200.
async fn receiver() -> anyhow::Result<(String, Received)> {
    let received: Received = Arc::default();
    async fn record_hook(
        axum::extract::State(r): axum::extract::State<Received>,
        headers: axum::http::HeaderMap,
    ) -> &'static str {
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let Ok(mut r) = r.lock() {
            r.push((id, Instant::now()));
        }
        "ok"
    }
    let router = axum::Router::new()
        .fallback(record_hook)
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((format!("http://{addr}/hook"), received))
}

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn setup(client: reqwest::Client, base: &str) -> anyhow::Result<Api> {
        let body: Value = client
            .post(format!("{base}/api/v1/auth/signup"))
            .json(&json!({"email": "bench@example.com", "password": "correct horse battery"}))
            .send()
            .await?
            .json()
            .await?;
        let token = body["token"].as_str().context("signup token")?.to_owned();
        let body: Value = client
            .post(format!("{base}/api/v1/workspaces"))
            .bearer_auth(&token)
            .json(&json!({"name": "Automation bench"}))
            .send()
            .await?
            .json()
            .await?;
        let ws = body["id"].as_str().context("workspace id")?;
        Ok(Api {
            base: format!("{base}/api/v1/workspaces/{ws}"),
            client,
            token,
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    async fn contact(&self, email: &str) -> anyhow::Result<String> {
        let body = self.post("/contacts", json!({"emails": [email]})).await?;
        Ok(body["contact"]["id"]
            .as_str()
            .or(body["id"].as_str())
            .context("contact id")?
            .to_owned())
    }

    /// Waits until the rule has `n` finished runs; returns them all.
    async fn finished_runs(&self, rule: &str, n: usize) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut runs = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/automations/{rule}/runs?limit=200&cursor={c}"),
                    None => format!("/automations/{rule}/runs?limit=200"),
                };
                let page = self.get(&path).await?;
                runs.extend(page["data"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            if runs.len() >= n && runs.iter().all(|r| r["status"] == "succeeded") {
                return Ok(runs);
            }
            anyhow::ensure!(Instant::now() < deadline, "runs did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes `section` into bench/RESULTS.md between this date's markers, replacing an earlier
/// section of the same day or appending.
fn record(date: &str, section: &str) -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../RESULTS.md");
    let begin = format!("<!-- bench/automation {date} begin -->");
    let end = format!("<!-- bench/automation {date} end -->");
    let block = format!("{begin}\n{}\n{end}\n", section.trim_end());
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{}{}",
                &text[..b],
                block.trim_end(),
                &text[e + end.len()..]
            )
        }
        _ => format!("{}\n\n{block}", text.trim_end_matches('\n')),
    };
    std::fs::write(&path, new)?;
    Ok(())
}
