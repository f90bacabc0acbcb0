//! A 2xx on ingestion means the hit is durable: while many clients send GA4 hits, the real
//! `switchyard` process is killed with SIGKILL; after a restart on the same storage, every hit
//! that was answered 204 is in the event log, once. On the embedded SQLite log, and on NATS
//! JetStream when `SWITCHYARD_TEST_NATS_URL` is set. The same with SIGTERM instead: the server
//! drains and exits cleanly, refusing nothing it read.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::nats_log_url;

const HOST: &str = "track.crash.example.com";
const SENDERS: usize = 16;
/// The kill comes once this many hits were acknowledged (at least `MIN_SENDING` after the
/// first hit, at most `MAX_SENDING`, whichever a slow machine reaches first).
const ACKS_BEFORE_KILL: usize = 3_000;
const MIN_SENDING: Duration = Duration::from_millis(300);
const MAX_SENDING: Duration = Duration::from_secs(15);

/// A running `switchyard serve` and the address it listens on.
struct Server {
    child: Child,
    base: String,
}

/// A failing test must not leave its server running.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve(dir: &Path, event_log_url: Option<&str>) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") && !key.starts_with("SWITCHYARD_TEST") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SWITCHYARD_LOG", "info")
        // Every sender comes from 127.0.0.1.
        .env("SWITCHYARD_TRACKING__PER_IP_REQUESTS_PER_SECOND", "0")
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"]);
    if let Some(url) = event_log_url {
        cmd.args(["--event-log-url", url]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchyard");
    let addr = wait_for_listen(&mut child);
    Server {
        child,
        base: format!("http://{addr}"),
    }
}

/// Reads the server's JSON log until it says where it listens, and keeps draining it after.
fn wait_for_listen(child: &mut Child) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = event["addr"].as_str()
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("server did not start")
}

async fn post_json(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// A user, a workspace and a site serving `HOST` with measurement id `G-TEST123`, over the API.
async fn create_site(client: &reqwest::Client, base: &str) {
    let signup = post_json(
        client,
        format!("{base}/api/v1/auth/signup"),
        None,
        json!({ "email": "crash@example.com", "password": "correct horse battery" }),
    )
    .await;
    let token = signup["token"].as_str().unwrap();
    let ws = post_json(
        client,
        format!("{base}/api/v1/workspaces"),
        Some(token),
        json!({ "name": "Crash" }),
    )
    .await;
    let ws = ws["id"].as_str().unwrap();
    post_json(
        client,
        format!("{base}/api/v1/workspaces/{ws}/sites"),
        Some(token),
        json!({ "name": "Shop", "hostnames": [HOST], "measurement_ids": ["G-TEST123"] }),
    )
    .await;
}

/// One gtag hit whose client id is `cid`; true when the server answered 204.
async fn send_hit(client: &reqwest::Client, base: &str, cid: &str) -> Result<bool, reqwest::Error> {
    let response = client
        .post(format!("{base}/g/collect?v=2&tid=G-TEST123&cid={cid}"))
        .header("host", HOST)
        .header("content-type", "text/plain;charset=UTF-8")
        .body("en=page_view")
        .send()
        .await?;
    Ok(response.status() == reqwest::StatusCode::NO_CONTENT)
}

#[derive(Default)]
struct Sent {
    /// Client ids answered 204.
    acknowledged: Vec<String>,
    /// Client ids whose request got no answer: in flight at the kill, or sent just after it.
    unanswered: Vec<String>,
    /// Answers other than 204 (e.g. 503 when the log is overloaded).
    refused: usize,
}

/// Sends hits one after another until the server is gone.
async fn sender(
    client: reqwest::Client,
    base: String,
    id: usize,
    acks: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
) -> Sent {
    let mut sent = Sent::default();
    for n in 0.. {
        let cid = format!("{id}.{n}");
        match send_hit(&client, &base, &cid).await {
            Ok(true) => {
                sent.acknowledged.push(cid);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => sent.refused += 1,
            Err(_) => sent.unanswered.push(cid),
        }
        if killed.load(Ordering::Relaxed) {
            break;
        }
    }
    sent
}

/// Every hit's client id in the log, with how many times it is there (reads as a fresh group).
async fn stored_client_ids(log_url: &str) -> HashMap<String, usize> {
    let log = tracking::log::open(log_url, Default::default())
        .await
        .unwrap();
    let group = format!("crash-check-{}", uuid::Uuid::now_v7().simple());
    let mut sub = log.subscribe(&group).await.unwrap();
    let mut stored = HashMap::new();
    loop {
        let batch = sub
            .next_batch(1_000, Duration::from_millis(500))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for delivery in &batch {
            let record: tracking::gateway::LogRecord =
                tracking::gateway::LogRecord::decode(&delivery.payload).expect("a LogRecord");
            for hit in &record.hits {
                *stored
                    .entry(hit.client_id.clone().expect("a client id"))
                    .or_insert(0) += 1;
            }
        }
        sub.ack(&batch).await.unwrap();
    }
    log.close().await;
    stored
}

/// SIGTERM, and the process must exit cleanly on its own.
async fn stop(mut server: Server) {
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..200 {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "exit after SIGTERM: {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.child.kill().ok();
    panic!("server did not stop within 20 s of SIGTERM");
}

/// How the server is stopped while the hits come.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// SIGKILL: no shutdown hook runs, nothing is flushed.
    Kill,
    /// SIGTERM: the server stops accepting, answers what it has read (from every HTTP thread)
    /// and exits 0; nothing it answered may be refused or lost.
    Term,
}

/// Sends, stops the server as `how` says, restarts, and checks the log named by `log_url`
/// (`None`: the SQLite default).
async fn acknowledged_hits_survive(backend: &str, log_url: Option<String>, how: Stop) {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut server = serve(dir.path(), log_url.as_deref());
    create_site(&client, &server.base).await;

    let acks = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for id in 0..SENDERS {
        senders.spawn(sender(
            client.clone(),
            server.base.clone(),
            id,
            acks.clone(),
            killed.clone(),
        ));
    }
    let started = Instant::now();
    while started.elapsed() < MIN_SENDING
        || (acks.load(Ordering::Relaxed) < ACKS_BEFORE_KILL && started.elapsed() < MAX_SENDING)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_after = started.elapsed();
    match how {
        Stop::Kill => {
            // `Child::kill` is SIGKILL.
            server.child.kill().unwrap();
            let status = server.child.wait().unwrap();
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        }
        Stop::Term => stop(server).await,
    }
    killed.store(true, Ordering::Relaxed);

    let mut acknowledged = Vec::new();
    let mut unanswered = Vec::new();
    let mut refused = 0;
    while let Some(sent) = senders.join_next().await {
        let sent = sent.unwrap();
        acknowledged.extend(sent.acknowledged);
        unanswered.extend(sent.unanswered);
        refused += sent.refused;
    }

    // The restarted server opens the same storage and takes hits again.
    let server = serve(dir.path(), log_url.as_deref());
    assert!(
        send_hit(&client, &server.base, "after.restart")
            .await
            .unwrap(),
        "a hit after the restart is accepted"
    );
    acknowledged.push("after.restart".to_owned());
    stop(server).await;

    let read_url = log_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("events.db").display()));
    let stored = stored_client_ids(&read_url).await;
    let acknowledged: HashSet<String> = acknowledged.into_iter().collect();
    let unanswered: HashSet<String> = unanswered.into_iter().collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|cid| !stored.contains_key(*cid))
        .collect();
    let twice: Vec<(&String, &usize)> = stored.iter().filter(|(_, n)| **n > 1).collect();
    let unanswered_stored = unanswered
        .iter()
        .filter(|cid| stored.contains_key(*cid))
        .count();
    println!(
        "{backend}: {how:?} after {killed_after:?}; acknowledged {} (incl. 1 after the restart), \
         unanswered {} ({unanswered_stored} of them stored anyway), refused {refused}; \
         stored {} hits: {} acknowledged missing, {} stored more than once",
        acknowledged.len(),
        unanswered.len(),
        stored.values().sum::<usize>(),
        missing.len(),
        twice.len(),
    );
    assert!(
        acknowledged.len() > 100,
        "too few hits acknowledged before the kill for the test to mean anything"
    );
    if how == Stop::Term {
        assert_eq!(refused, 0, "a draining server refused hits it had read");
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged hits are not in the log, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "hits stored more than once: {:?}",
        &twice[..twice.len().min(10)]
    );
    assert!(
        stored
            .keys()
            .all(|cid| acknowledged.contains(cid) || unanswered.contains(cid)),
        "a stored hit was never sent"
    );

    if let Some(url) = log_url {
        delete_stream(&url).await;
    }
}

/// Removes the test's JetStream stream.
async fn delete_stream(url: &str) {
    let (server, name) = url.split_once("?stream=").expect("a stream of its own");
    let options = tracking::log::nats::Options {
        stream: name.to_owned(),
        subject: format!("switchyard.events.{name}"),
        ..Default::default()
    };
    let log = tracking::log::nats::NatsLog::connect(server, options)
        .await
        .unwrap();
    log.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_hits_survive_sigkill_sqlite() {
    acknowledged_hits_survive("sqlite", None, Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_hits_survive_sigkill_nats() {
    let Some(url) = nats_log_url() else { return };
    acknowledged_hits_survive("nats", Some(url), Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_under_load_drains_without_loss_sqlite() {
    acknowledged_hits_survive("sqlite", None, Stop::Term).await;
}
