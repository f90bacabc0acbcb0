//! Open-loop, fixed-rate HTTP load for the tracking benchmark (what wrk, a closed-loop tool,
//! cannot do).
//!
//! Requests are due on a fixed schedule (`--rate` per second for `--duration` seconds), whatever
//! the server does: a pacer thread releases the due times as they come (in groups, at most
//! [`PACER_TICK`] late), and whichever of `--connections` keep-alive HTTP/1.1 connections is
//! free sends the next one. Latency is measured from the *due* time,
//! not from when the request went out, so a server that stalls is charged for every request
//! that waited behind the stall (no coordinated omission). `service` latency (from the actual
//! send) and `send_lag` (due → sent) are reported beside it: a large `send_lag` on the no-op
//! baseline means the generator itself, not the server, was the limit.
//!
//! The request is read from a raw HTTP file (request line, headers, blank line, body), the same
//! file `ga4.lua` gives wrk, and serialized once. The generator shares two cores with the server
//! under test, so it speaks just enough HTTP/1.1 itself (write the bytes, read status, headers
//! and a `Content-Length` or chunked body) instead of building and parsing header maps per
//! request with a general-purpose client. Prints one JSON object on stdout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The pacer's shortest sleep. Released one by one, 40,000 due times a second cost the pacer
/// and the connections' thread a context switch each, most of this generator's CPU on a
/// machine it shares with the server under test; released in groups at most this late (each
/// request's latency still counts from its own due time), a few thousand.
const PACER_TICK: Duration = Duration::from_micros(200);

struct Args {
    addr: String,
    request: PathBuf,
    rate: f64,
    duration: Duration,
    connections: usize,
    drain: Duration,
}

const USAGE: &str = "usage: bench-load --addr HOST:PORT --request FILE.http --rate PER_SECOND \
                     [--duration SECONDS (10)] [--connections N (256)] [--drain SECONDS (5)]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        addr: String::new(),
        request: PathBuf::new(),
        rate: 0.0,
        duration: Duration::from_secs(10),
        connections: 256,
        drain: Duration::from_secs(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--addr" => args.addr = value,
            "--request" => args.request = value.into(),
            "--rate" => args.rate = value.parse().context("--rate")?,
            "--duration" => args.duration = Duration::from_secs_f64(value.parse()?),
            "--connections" => args.connections = value.parse().context("--connections")?,
            "--drain" => args.drain = Duration::from_secs_f64(value.parse()?),
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if args.addr.is_empty() || args.request.as_os_str().is_empty() || args.rate <= 0.0 {
        bail!("{USAGE}");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    Ok(args)
}

/// Reads a raw HTTP request file — `METHOD TARGET HTTP/1.1`, `Name: value` lines, a blank line,
/// the body (its final newline belongs to the file, not the body) — and serializes it for the
/// wire with `Content-Length`.
fn read_request(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (head, body) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let body = body.strip_suffix('\n').unwrap_or(body);
    let mut lines = head.lines();
    let request_line = lines.next().context("empty request file")?;
    let mut wire = format!("{}\r\n", request_line.trim());
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            continue;
        }
        wire.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
    }
    wire.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    Ok(wire.into_bytes())
}

/// One keep-alive HTTP/1.1 connection with one request in flight at a time.
struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

impl Connection {
    async fn open(addr: &str) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Sends `request` and reads the whole answer; returns its status.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(invalid)?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no status code"))?;
        let mut length = 0usize;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(invalid)?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        self.buf.advance(head_end);
        if status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(status);
        }
        if chunked {
            self.skip_chunks().await?;
        } else {
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.advance(length);
        }
        Ok(status)
    }

    async fn skip_chunks(&mut self) -> std::io::Result<()> {
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end]).map_err(invalid)?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(invalid)?;
            self.buf.advance(line_end + 2);
            if size == 0 {
                // No trailers from the servers we test: the last chunk ends with one CRLF.
                while self.buf.len() < 2 {
                    self.fill().await?;
                }
                self.buf.advance(2);
                return Ok(());
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            self.buf.advance(size + 2);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(err: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string())
}

#[derive(Default)]
struct Stats {
    sent: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    /// A free connection could not be reopened: the request was never sent.
    connect_errors: u64,
    /// Sent, but the connection failed before a whole answer came back.
    send_errors: u64,
    reconnects: u64,
    /// Microseconds from due time to the end of the response.
    latency: Vec<u32>,
    /// Microseconds from the actual send to the end of the response.
    service: Vec<u32>,
    /// Microseconds from due time to the actual send.
    send_lag: Vec<u32>,
    last_done: Option<Instant>,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type DueQueue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

/// One connection: takes the next due time from the shared queue, sends, records.
async fn worker(
    addr: Arc<str>,
    mut connection: Option<Connection>,
    request: Arc<[u8]>,
    queue: DueQueue,
    stats: Arc<Mutex<Stats>>,
) {
    loop {
        let due = {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(due) => due,
                None => return,
            }
        };
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match Connection::open(&addr).await {
                Ok(conn) => {
                    lock(&stats).reconnects += 1;
                    connection.insert(conn)
                }
                Err(_) => {
                    lock(&stats).connect_errors += 1;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        lock(&stats).sent += 1;
        let outcome = conn.exchange(&request).await;
        let done = Instant::now();
        let mut stats = lock(&stats);
        match outcome {
            Ok(status) => {
                if (200..300).contains(&status) {
                    stats.ok += 1;
                } else {
                    *stats.statuses.entry(status).or_default() += 1;
                }
                stats.latency.push(micros(done - due));
                stats.service.push(micros(done - sent));
                stats.send_lag.push(micros(sent - due));
                stats.last_done = Some(done);
            }
            Err(_) => {
                stats.send_errors += 1;
                connection = None;
            }
        }
    }
}

/// p50, p90, p99, p99.9 and max of `samples`, in milliseconds.
fn percentiles(samples: &mut [u32]) -> serde_json::Value {
    samples.sort_unstable();
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        // Nearest rank.
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        f64::from(samples[rank - 1]) / 1000.0
    };
    serde_json::json!({
        "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": at(1.0),
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let request: Arc<[u8]> = read_request(&args.request)?.into();
    // One thread drives every connection; the pacer is a second, mostly sleeping, thread. On a
    // two-core machine shared with the server under test, fewer generator threads leave more
    // of the machine to the server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args, request))?;
    println!("{report}");
    // Connections stuck on a stalled server hold tasks that would keep the runtime alive.
    std::process::exit(0)
}

async fn run(args: Args, request: Arc<[u8]>) -> anyhow::Result<serde_json::Value> {
    let addr: Arc<str> = args.addr.as_str().into();
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (due_tx, due_rx) = mpsc::unbounded_channel::<Instant>();
    let queue: DueQueue = Arc::new(tokio::sync::Mutex::new(due_rx));

    let mut workers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let connection = Connection::open(&addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        workers.push(tokio::spawn(worker(
            addr.clone(),
            Some(connection),
            request.clone(),
            queue.clone(),
            stats.clone(),
        )));
    }

    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let rate = args.rate;
    let start = Instant::now() + Duration::from_millis(20);
    // The pacer releases every due time that has come, then sleeps until the next one, but at
    // least `PACER_TICK`. Due times are absolute, so lateness never accumulates, and latency is
    // measured from them, so a late release is charged to the server's figures, never hidden.
    let pacer = std::thread::spawn(move || {
        let due = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
        let mut k = 0;
        while k < total {
            let now = Instant::now();
            while k < total && due(k) <= now {
                if due_tx.send(due(k)).is_err() {
                    return;
                }
                k += 1;
            }
            if k < total {
                std::thread::sleep((due(k) - now).max(PACER_TICK));
            }
        }
    });
    let pacer_done = tokio::task::spawn_blocking(move || pacer.join().is_ok());
    if !pacer_done.await.unwrap_or(false) {
        bail!("the pacer thread failed");
    }
    let schedule_end = Instant::now();

    // Every request is released; wait for the answers, at most `drain`.
    let deadline = tokio::time::Instant::now() + args.drain;
    let mut stuck = 0;
    for worker in workers {
        if tokio::time::timeout_at(deadline, worker).await.is_err() {
            stuck += 1;
        }
    }

    let mut stats = lock(&stats);
    let completed = stats.latency.len() as u64;
    let window = stats
        .last_done
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(start))
        .max(schedule_end.saturating_duration_since(start));
    Ok(serde_json::json!({
        "target_rate": args.rate,
        "duration_s": args.duration.as_secs_f64(),
        "connections": args.connections,
        "scheduled": total,
        "sent": stats.sent,
        "completed": completed,
        "ok": stats.ok,
        "non_2xx": stats.statuses,
        "connect_errors": stats.connect_errors,
        "send_errors": stats.send_errors,
        "reconnects": stats.reconnects,
        // Sent but not answered before the drain deadline (the server may still store them).
        "unanswered": stats.sent.saturating_sub(completed + stats.send_errors),
        "never_sent": total.saturating_sub(stats.sent + stats.connect_errors),
        "stuck_connections": stuck,
        "window_s": window.as_secs_f64(),
        "achieved_rate": stats.ok as f64 / window.as_secs_f64().max(1e-9),
        "latency_ms": percentiles(&mut stats.latency),
        "service_ms": percentiles(&mut stats.service),
        "send_lag_ms": percentiles(&mut stats.send_lag),
    }))
}
