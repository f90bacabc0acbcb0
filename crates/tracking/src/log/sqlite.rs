//! The embedded event log: an append-only table in its own SQLite file (`events.db`), written
//! by one thread with group commit.
//!
//! Appends queue on a bounded channel; the writer thread takes everything waiting (up to a batch
//! limit), inserts it in one transaction and commits it, and the batch shares one fsync (see
//! "Pipelined fsync" below) before every waiting request is answered. Under load, batches grow and the fsync cost is shared; at rest,
//! a single append commits at once. A full channel means the disk cannot keep up, and the append
//! is refused (`Overloaded`) instead of buffering without bound. Its own file keeps this hot
//! writer away from the product-state writer (SQLite has one writer per file).
//!
//! The writer is a plain OS thread owning a `rusqlite` connection: a commit is a handful of
//! function calls, not a round trip to a driver thread per statement (bench/RESULTS.md,
//! 2026-11-22, observation 2).
//!
//! **Pipelined fsync.** The fsync is not done inside the commit (`synchronous = FULL` would):
//! the writer commits with `synchronous = NORMAL`, which writes the WAL frames and returns, and
//! fsyncs the WAL file itself before answering the batch, unless a large backlog waits behind
//! it: then it hands the batch's waiters to a syncer thread, which fsyncs and answers them,
//! while the writer already commits the next batch, so a request waits for one commit and one
//! fsync instead of queueing behind every earlier batch's commit-and-fsync. (Without a backlog
//! there is nothing to overlap, and the hand-off would cost two thread wake-ups per batch.)
//! Durability is the same as `FULL`'s: a waiter is answered only after an
//! fsync of the WAL that began after its commit had written its frames (and the WAL header,
//! when the commit restarted the WAL), which is what `FULL` does at the end of each commit;
//! checkpoints sync the WAL before they copy it, in both modes. The syncer's queue is bounded,
//! so a disk that cannot keep up still backs up into the appends queue and `Overloaded`.
//!
//! **Gathering while an fsync runs.** The writer does not commit what arrives while the syncer
//! is still busy: those appends could not be synced before it is free anyway, so they wait for
//! it and go in one larger commit (or commit at once when many have gathered, so a big commit
//! still overlaps the fsync before it). Each commit rewrites the table's partly filled last
//! pages in the WAL; small commits many times a millisecond wrote several times the records'
//! own size.
//!
//! **Paced commits.** Each commit has a fixed cost besides its records (the fsync, and in a VM
//! the exit that submits it; the wake-ups of its waiters), so under load the writer lets
//! appends gather: when the last commit was shared by a few requests (2 to 31) and began less
//! than [`Options::commit_interval`] ago (0.5 ms unless the operator sets
//! `tracking.event_log_commit_interval_us`), it waits out the rest of that interval first. A
//! lone request (the last commit was its predecessor's alone, or long ago) commits at
//! once, so a client sending one request at a time is not slowed, and so does everything after
//! a commit of 32 or more, and a batch of 32 or more itself, whose fixed cost is spread thin
//! already; under a steady load a request waits at most the interval longer.
//!
//! **Rows.** A row holds a run of consecutive records, up to 256 of them: `seq` is its last
//! record's sequence, `records` how many it holds, and `payload` the record itself when it holds
//! one, otherwise each record after its length (4 bytes, little-endian). One insert per row
//! instead of per record is most of what the writer saves; a reader that wants part of a row
//! skips the records before its position. Files written before rows held several records have
//! one per row, which is what `records`' default says. A payload of 512 bytes or more is stored
//! as an LZ4 block when that is smaller (`codec` 1, else 0): a site's records repeat most of
//! their bytes, so a commit writes several times fewer WAL pages.
//!
//! **Sequences** are the rowids, given by the writer (the last one plus one), never reused: the
//! last one is the table's highest `seq` or, when retention has emptied the table, the newest
//! note in `log_marks` (below), which retention writes before it deletes anything. The table is
//! not `AUTOINCREMENT`: that would keep the same number in `sqlite_sequence`, whose page every
//! commit would then rewrite, one more 4 KiB WAL frame a commit on top of the table's own (its
//! last leaf, and with each new leaf the parent and the header page): a quarter of what the
//! benchmark's commits wrote (bench/RESULTS.md, 2026-12-06 session 15). Files created before
//! that keep it; it does no harm.
//!
//! **Retention.** Records are kept for [`Options::max_age`] (7 days, the NATS log's horizon) and
//! then deleted, oldest first and in chunks, once every consumer group has acknowledged them; a
//! group that stopped consuming holds them back. Once a minute the writer notes the time of its
//! last sequence in `log_marks`, so the age of a record is known without reading its row.
//! Deleted pages are reused, so a steady load keeps the file at a steady size.
//!
//! WAL checkpoints stay SQLite's automatic ones, inside the writer's commits: a checkpointer thread beside the writer was tried and made the tail worse (see
//! docs/decisions.md). Readers (consumers, `count`) use an sqlx pool.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch};

use super::{AppendError, Delivery, EventLog, Subscription};

#[derive(Debug, Clone)]
pub struct Options {
    /// Appends that may wait for the writer before new ones are refused.
    pub queue_capacity: usize,
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// Most bytes committed in one transaction.
    pub max_batch_bytes: usize,
    /// How long a record is kept at least (the replay horizon, as the NATS log's `max_age`).
    /// Older records are deleted once every consumer group has acknowledged them.
    pub max_age: Duration,
    /// How often the writer looks for records to delete and notes the time of its position.
    pub prune_every: Duration,
    /// Under load, commits begin at most this often (see "Paced commits" above); zero commits
    /// whatever waits at once.
    pub commit_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch: 4_096,
            max_batch_bytes: 16 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
            prune_every: Duration::from_secs(60),
            commit_interval: COMMIT_INTERVAL,
        }
    }
}

enum Message {
    Append {
        payload: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A consumer group's acknowledgement. It goes through the writer too, so the log has one
    /// writer and an append never waits in SQLite's busy handler behind an ack.
    Ack {
        group: String,
        sequence: i64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Close(oneshot::Sender<()>),
}

pub struct SqliteLog {
    sender: mpsc::Sender<Message>,
    pool: SqlitePool,
    /// The highest committed sequence, so subscribers wake without polling.
    committed: watch::Receiver<i64>,
}

impl SqliteLog {
    pub async fn open(path: &Path, options: Options) -> anyhow::Result<SqliteLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect)
            .await
            .with_context(|| format!("cannot open event log {}", path.display()))?;
        // The log's schema is three small tables (see "Rows" and "Retention" above). `records`
        // and `codec` came later: files written before them hold one uncompressed record per
        // row, which their defaults describe. `log_marks`: now and then the writer notes the
        // last sequence at that time (unix ms), so records past `max_age` are found without
        // reading the rows.
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS log (
                 seq     INTEGER PRIMARY KEY,
                 payload BLOB NOT NULL,
                 records INTEGER NOT NULL DEFAULT 1,
                 codec   INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS log_groups (
                 name  TEXT PRIMARY KEY,
                 acked INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS log_marks (
                 at  INTEGER PRIMARY KEY,
                 seq INTEGER NOT NULL
             );",
        )
        .execute(&pool)
        .await?;
        for (column, definition) in [
            ("records", "records INTEGER NOT NULL DEFAULT 1"),
            ("codec", "codec INTEGER NOT NULL DEFAULT 0"),
        ] {
            let present: bool = sqlx::query_scalar(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('log') WHERE name = ?1",
            )
            .bind(column)
            .fetch_one(&pool)
            .await?;
            if !present {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE log ADD COLUMN {definition}"
                )))
                .execute(&pool)
                .await?;
            }
        }
        let last: i64 = sqlx::query_scalar(LAST_SEQUENCE).fetch_one(&pool).await?;
        let (sender, receiver) = mpsc::channel(options.queue_capacity);
        let (committed_tx, committed) = watch::channel(last);
        let (ready_tx, ready) = oneshot::channel::<anyhow::Result<()>>();
        let writer_path = path.to_owned();
        let commit_interval = options.commit_interval;
        std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || {
                // `synchronous = NORMAL`: commits do not fsync; the writer or the syncer thread
                // does, before anyone is answered (see "Pipelined fsync").
                let conn = match crate::sqlite::open_writer(&writer_path) {
                    Ok(conn) => conn,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return;
                    }
                };
                let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
                let durable = std::sync::Arc::new(Durable {
                    wal: wal_path(&writer_path),
                    committed: committed_tx,
                });
                let in_flight = std::sync::Arc::new(InFlight::default());
                let (syncing, syncer_durable) = (in_flight.clone(), durable.clone());
                let syncer = match std::thread::Builder::new()
                    .name("event-log-sync".into())
                    .spawn(move || sync_loop(&syncer_durable, sync_rx, &syncing))
                {
                    Ok(handle) => handle,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let closers = write_loop(&conn, receiver, sync_tx, &in_flight, &durable, &options);
                // Every batch committed before the close is synced and answered first.
                let _ = syncer.join();
                for done in closers {
                    let _ = done.send(());
                }
            })
            .context("cannot start the event log writer thread")?;
        ready
            .await
            .context("the event log writer thread stopped")?
            .with_context(|| format!("cannot open event log {} for writing", path.display()))?;
        tracing::info!(
            path = %path.display(),
            commit_interval_us = commit_interval.as_micros(),
            "event log opened"
        );
        Ok(SqliteLog {
            sender,
            pool,
            committed,
        })
    }

    /// Number of records in the log (for tests and tools).
    pub async fn count(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(SUM(records), 0) FROM log")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

impl EventLog for SqliteLog {
    fn append(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<(), AppendError>> {
        async move {
            let (done, answer) = oneshot::channel();
            self.sender
                .try_send(Message::Append { payload, done })
                .map_err(|err| match err {
                    mpsc::error::TrySendError::Full(_) => AppendError::Overloaded,
                    mpsc::error::TrySendError::Closed(_) => {
                        AppendError::Unavailable("the log is closed".into())
                    }
                })?;
            match answer.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(AppendError::Unavailable(err)),
                Err(_) => Err(AppendError::Unavailable("the log writer stopped".into())),
            }
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Subscription>>> {
        async move {
            let acked: Option<i64> =
                sqlx::query_scalar("SELECT acked FROM log_groups WHERE name = $1")
                    .bind(group)
                    .fetch_optional(&self.pool)
                    .await?;
            let subscription: Box<dyn Subscription> = Box::new(SqliteSubscription {
                pool: self.pool.clone(),
                writer: self.sender.clone(),
                group: group.to_owned(),
                acked: acked.unwrap_or(0),
                committed: self.committed.clone(),
                delivered_up_to: acked.unwrap_or(0),
            });
            Ok(subscription)
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            let (done, closed) = oneshot::channel();
            if self.sender.send(Message::Close(done)).await.is_ok() {
                let _ = closed.await;
            }
        }
        .boxed()
    }
}

/// Committed batches that may wait for the syncer before the writer waits for it.
const SYNC_QUEUE: usize = 64;

/// While the syncer is busy, the writer keeps gathering appends instead of committing them,
/// until this many records (or [`COMMIT_WHILE_SYNCING_BYTES`]) wait: then it commits anyway,
/// so a large batch's commit still overlaps the fsync before it.
const COMMIT_WHILE_SYNCING: usize = 256;
const COMMIT_WHILE_SYNCING_BYTES: usize = 1024 * 1024;

/// How long the writer waits for the syncer before it looks at the queue again.
const GATHER_WAIT: Duration = Duration::from_millis(1);

/// [`Options::commit_interval`]'s default. 0.5 ms: an open load of 40,000 requests a second
/// commits at most 2,000 times a second instead of 2,800, which took 40–50% off the writer's
/// CPU. When every shared commit paced the next, the benchmark's closed loop lost about 8%
/// (+4% to −15%), its 64 connections waiting out intervals together (see [`PACE_BELOW`]); 1 ms
/// cost it 12–15% (bench/RESULTS.md, 2026-12-04 session 10).
const COMMIT_INTERVAL: Duration = Duration::from_micros(500);

/// Only a commit shared by fewer requests than this paces the next one: a larger commit has
/// spread its fixed cost thin already (~40 µs over 32 or more), and waiting after large
/// commits is what made the closed loop's connections wait out intervals together (three
/// pairs: −3% instead of −5%, open-loop savings the same). Nor does a batch this large wait
/// ([`Batch::pacing`]).
const PACE_BELOW: usize = 32;

/// SQLite's WAL file of the database at `path`.
fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// One committed batch on its way to the syncer.
struct Committed {
    /// The batch's last sequence, when it appended anything.
    last: Option<i64>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
}

/// Committed batches the syncer has not answered yet (queued or being synced): the writer
/// gathers appends while there are any (see [`write_loop`]).
#[derive(Default)]
struct InFlight {
    batches: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self) {
        *self.lock() += 1;
    }

    fn answered(&self, batches: usize) {
        let mut n = self.lock();
        *n = n.saturating_sub(batches);
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    /// Whether the syncer has nothing left.
    fn idle(&self) -> bool {
        *self.lock() == 0
    }

    /// Waits at most `timeout` for the syncer to have nothing left; whether it has nothing.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let (n, _) = self
            .idle
            .wait_timeout_while(self.lock(), timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *n == 0
    }
}

/// Makes committed batches durable and answers them: the WAL file and the subscribers to wake.
/// Both the writer (for a batch with nothing queued behind it) and the syncer thread use it.
struct Durable {
    wal: std::path::PathBuf,
    /// The highest durable sequence, so subscribers wake without polling.
    committed: watch::Sender<i64>,
}

impl Durable {
    /// fsyncs the WAL once for all of `batches` (the caller's `file`, opened on first use), then
    /// answers their waiters and announces their last sequence.
    fn sync(&self, file: &mut Option<std::fs::File>, batches: Vec<Committed>) {
        // fdatasync: the frames and the file's new length, which is all a reader needs. The
        // WAL exists once the writer has committed, which it has before any batch is here.
        let began = std::time::Instant::now();
        let synced = file
            .take()
            .map_or_else(|| std::fs::File::open(&self.wal), Ok)
            .and_then(|f| f.sync_data().map(|()| f));
        let answer = match synced {
            Ok(f) => {
                metrics::histogram!("event_log_fsync_duration_seconds")
                    .record(began.elapsed().as_secs_f64());
                *file = Some(f);
                Ok(())
            }
            Err(err) => {
                metrics::counter!("event_log_failures_total", "operation" => "fsync").increment(1);
                tracing::error!(error = %err, wal = %self.wal.display(), "event log fsync failed");
                Err(format!("the event log could not be synced to disk: {err}"))
            }
        };
        if answer.is_ok()
            && let Some(last) = batches.iter().filter_map(|b| b.last).max()
        {
            // In order: the writer syncs a batch itself only when the syncer has answered (and
            // announced) every earlier one.
            self.committed.send_replace(last);
        }
        for waiter in batches.into_iter().flat_map(|b| b.waiters) {
            let _ = waiter.send(answer.clone());
        }
    }
}

/// The syncer thread's loop: takes every committed batch waiting, fsyncs the WAL once for all
/// of them, then answers them (see [`Durable::sync`]).
fn sync_loop(
    durable: &Durable,
    batches: std::sync::mpsc::Receiver<Committed>,
    in_flight: &InFlight,
) {
    let mut file = None;
    while let Ok(first) = batches.recv() {
        let mut ready = vec![first];
        ready.extend(batches.try_iter());
        let count = ready.len();
        durable.sync(&mut file, ready);
        in_flight.answered(count);
    }
}

/// What the writer has taken off the queue for its next transaction.
#[derive(Default)]
struct Batch {
    payloads: Vec<Vec<u8>>,
    bytes: usize,
    acks: Vec<(String, i64)>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    closing: Option<oneshot::Sender<()>>,
}

impl Batch {
    /// Takes whatever waits on the queue, until the batch is full or a close arrives.
    fn gather_waiting(&mut self, receiver: &mut mpsc::Receiver<Message>, options: &Options) {
        if let Ok(first) = receiver.try_recv() {
            self.gather(first, receiver, options);
        }
    }

    /// Takes `first` and whatever else waits on the queue, until the batch is full or a close
    /// arrives.
    fn gather(
        &mut self,
        first: Message,
        receiver: &mut mpsc::Receiver<Message>,
        options: &Options,
    ) {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Append { payload, done } => {
                    self.bytes += payload.len();
                    self.payloads.push(payload);
                    self.waiters.push(done);
                }
                Message::Ack {
                    group,
                    sequence,
                    done,
                } => {
                    self.acks.push((group, sequence));
                    self.waiters.push(done);
                }
                Message::Close(done) => {
                    self.closing = Some(done);
                    return;
                }
            }
            if self.full(options.max_batch, options.max_batch_bytes) {
                return;
            }
            next = receiver.try_recv().ok();
        }
    }

    fn full(&self, records: usize, bytes: usize) -> bool {
        self.payloads.len() >= records || self.bytes >= bytes
    }

    /// How long this batch waits before it commits (see "Paced commits"): the rest of
    /// `interval` since `last_shared_commit` began, unless that has passed, a close waits, the
    /// batch is as large as the writer commits early anyway (`early`: records and bytes, see
    /// [`COMMIT_WHILE_SYNCING`]), or it holds [`PACE_BELOW`] requests already. Such a batch
    /// spreads a commit's fixed cost thin, as a commit of that size does (which is why it does
    /// not pace the next one). In a closed loop, the requests that gather during a small
    /// commit's fsync are often such a batch; making them wait out the interval too held the
    /// benchmark's closed loop 8–11% lower on a fast VM (bench/RESULTS.md, 2026-12-06 session
    /// 16).
    fn pacing(
        &self,
        last_shared_commit: Option<std::time::Instant>,
        interval: Duration,
        (early_records, early_bytes): (usize, usize),
    ) -> Option<Duration> {
        if self.closing.is_some()
            || self.waiters.len() >= PACE_BELOW
            || self.full(early_records, early_bytes)
        {
            return None;
        }
        interval.checked_sub(last_shared_commit?.elapsed())
    }
}

/// The writer thread's loop: one transaction per batch of waiting appends, each made durable
/// once committed, until `Close` (returns whoever asked to close) or until every sender is
/// gone. Returning drops `syncer`, which lets the sync loop finish.
///
/// A committed batch is fsynced by the writer itself when nothing waits behind it: handing it
/// to the syncer would only cost two thread wake-ups, since the next commit would wait for that
/// fsync anyway (below). It goes to the syncer when the syncer still has earlier batches (they
/// are answered in order) or when a large backlog waits ([`COMMIT_WHILE_SYNCING`]), which the
/// writer then commits while the fsync runs.
///
/// While the syncer is still busy with earlier batches, the writer does not commit what it
/// has: those appends could not be synced before the syncer is free anyway, and one larger
/// commit writes far fewer WAL pages than several small ones (each commit rewrites the table's
/// last, partly filled pages). It commits when the syncer has nothing left, or once the batch
/// is large ([`COMMIT_WHILE_SYNCING`]), so a big commit still overlaps the fsync before it.
fn write_loop(
    conn: &rusqlite::Connection,
    mut receiver: mpsc::Receiver<Message>,
    syncer: std::sync::mpsc::SyncSender<Committed>,
    in_flight: &InFlight,
    durable: &Durable,
    options: &Options,
) -> Vec<oneshot::Sender<()>> {
    let mut statements = match Statements::prepare(conn) {
        Ok(statement) => Some(statement),
        Err(err) => {
            // Every append is then answered with this error instead of hanging.
            tracing::error!(error = %err, "cannot prepare the event log's statements");
            None
        }
    };
    let early_records = COMMIT_WHILE_SYNCING.min(options.max_batch);
    let early_bytes = COMMIT_WHILE_SYNCING_BYTES.min(options.max_batch_bytes);
    let mut batch = Batch::default();
    let mut buffers = Buffers::default();
    // The writer's own handle on the WAL, for the batches it syncs itself.
    let mut wal = None;
    // The first look is at the first commit: a file that was not written for a while may have
    // records to delete at once.
    let mut next_prune = std::time::Instant::now();
    // When the last commit began, if it was shared by several requests (see "Paced commits").
    let mut last_shared_commit = None;
    while let Some(first) = receiver.blocking_recv() {
        batch.gather(first, &mut receiver, options);
        if let Some(wait) = batch.pacing(
            last_shared_commit,
            options.commit_interval,
            (early_records, early_bytes),
        ) {
            std::thread::sleep(wait);
            batch.gather_waiting(&mut receiver, options);
        }
        while batch.closing.is_none()
            && !batch.full(early_records, early_bytes)
            && !in_flight.wait_idle(GATHER_WAIT)
        {
            match receiver.try_recv() {
                Ok(message) => batch.gather(message, &mut receiver, options),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        if !batch.waiters.is_empty() {
            let began = std::time::Instant::now();
            last_shared_commit = (2..PACE_BELOW)
                .contains(&batch.waiters.len())
                .then_some(began);
            let result = match statements.as_mut() {
                Some(statements) => {
                    commit(conn, statements, &batch.payloads, &batch.acks, &mut buffers)
                        .map_err(|e| e.to_string())
                }
                None => Err("the event log cannot insert (see the log at start)".to_owned()),
            };
            match result {
                Ok(last) => {
                    observe_commit(batch.payloads.len(), began.elapsed(), receiver.len());
                    let committed = Committed {
                        last: (!batch.payloads.is_empty()).then_some(last),
                        waiters: std::mem::take(&mut batch.waiters),
                    };
                    if in_flight.idle() && receiver.len() < early_records {
                        durable.sync(&mut wal, vec![committed]);
                    } else {
                        in_flight.sent();
                        // The syncer stops only when this sender is dropped, so this cannot
                        // fail; if it did, dropping the waiters answers them "writer stopped".
                        let _ = syncer.send(committed);
                    }
                }
                Err(err) => {
                    metrics::counter!("event_log_failures_total", "operation" => "commit")
                        .increment(1);
                    tracing::error!(error = %err, records = batch.payloads.len(), "event log commit failed");
                    for waiter in batch.waiters.drain(..) {
                        let _ = waiter.send(Err(err.clone()));
                    }
                }
            }
            batch.payloads.clear();
            batch.acks.clear();
            batch.bytes = 0;
        }
        if std::time::Instant::now() >= next_prune {
            let more = prune(
                conn,
                options.max_age,
                platform::Timestamp::now().as_millis(),
            )
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "event log retention failed; trying again later");
                false
            });
            // Behind (a chunk was full): the next chunk after the next commit.
            next_prune = std::time::Instant::now()
                + if more {
                    Duration::ZERO
                } else {
                    options.prune_every
                };
        }
        if let Some(done) = batch.closing.take() {
            let mut closers = Vec::new();
            receiver.close();
            // Appends queued behind the close message are refused, not lost silently.
            while let Ok(message) = receiver.try_recv() {
                match message {
                    Message::Append { done, .. } | Message::Ack { done, .. } => {
                        let _ = done.send(Err("the log is closed".into()));
                    }
                    Message::Close(other) => closers.push(other),
                }
            }
            closers.push(done);
            return closers;
        }
    }
    Vec::new()
}

/// Counts a commit in `/metrics`: its records (`event_log_commit_records`), how long it took
/// (`event_log_commit_duration_seconds`) and the appends queued behind it (`event_log_queued`;
/// at [`Options::queue_capacity`] appends are refused with 503). SQLite's automatic WAL
/// checkpoint runs inside the commit that crosses its threshold, so checkpoints are the
/// duration's tail (3–6 ms each on the benchmark's machine, bench/RESULTS.md 2026-12-06 session
/// 12); the fsync that follows is `event_log_fsync_duration_seconds`. A few registry lookups a
/// commit, not a request.
fn observe_commit(records: usize, took: Duration, queued: usize) {
    metrics::histogram!("event_log_commit_records").record(records as f64);
    metrics::gauge!("event_log_queued").set(queued as f64);
    metrics::histogram!("event_log_commit_duration_seconds").record(took.as_secs_f64());
}

/// Most records in one row, and most bytes (a row always takes at least one record): a reader
/// that wants fewer records than a row holds still reads the whole row, so rows stay small.
const ROW_RECORDS: usize = 256;
const ROW_BYTES: usize = 256 * 1024;

/// `payloads` cut into rows of at most [`ROW_RECORDS`] records and about [`ROW_BYTES`].
fn rows(payloads: &[Vec<u8>]) -> impl Iterator<Item = &[Vec<u8>]> {
    let mut rest = payloads;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut len = 0;
        while len < rest.len().min(ROW_RECORDS)
            && (len == 0 || bytes + rest[len].len() <= ROW_BYTES)
        {
            bytes += rest[len].len();
            len += 1;
        }
        let (row, tail) = rest.split_at(len);
        rest = tail;
        Some(row)
    })
}

/// A row's payload: the record itself when it holds one, otherwise each record after its
/// length (four bytes, little-endian), written into `out`.
fn pack<'a>(records: &'a [Vec<u8>], out: &'a mut Vec<u8>) -> rusqlite::Result<&'a [u8]> {
    if let [only] = records {
        return Ok(only);
    }
    out.clear();
    for record in records {
        let len = u32::try_from(record.len())
            .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(record);
    }
    Ok(out)
}

/// The writer's scratch space for a row: its records packed, then compressed.
#[derive(Default)]
struct Buffers {
    packed: Vec<u8>,
    compressed: Vec<u8>,
}

/// `log.codec`: the payload as [`pack`] made it.
const RAW: i64 = 0;
/// `log.codec`: an LZ4 block of the packed payload, after its length (4 bytes, little-endian;
/// `lz4_flex`'s `compress_prepend_size` form). Records of one site repeat their parameter
/// names, user agents, URLs and headers: rows of demo-generator records are 5–7× smaller, so
/// a commit writes, checksums, syncs and later checkpoints that many fewer WAL pages, and the
/// retained week takes that much less disk.
const LZ4: i64 = 1;

/// Payloads shorter than this stay raw: too small to gain a page.
const COMPRESS_FROM: usize = 512;

/// A row holds at most about [`ROW_BYTES`] (or one record of up to the body limit), so a
/// larger stated length is a corrupt row, refused before anything is allocated for it.
const MAX_UNPACKED: usize = 64 * 1024 * 1024;

/// `(codec, payload)`: `packed` compressed into `out` when that makes it smaller.
fn compress<'a>(packed: &'a [u8], out: &'a mut Vec<u8>) -> (i64, &'a [u8]) {
    let Ok(len) = u32::try_from(packed.len()) else {
        return (RAW, packed);
    };
    if packed.len() < COMPRESS_FROM {
        return (RAW, packed);
    }
    out.clear();
    out.resize(
        4 + lz4_flex::block::get_maximum_output_size(packed.len()),
        0,
    );
    out[..4].copy_from_slice(&len.to_le_bytes());
    match lz4_flex::block::compress_into(packed, &mut out[4..]) {
        Ok(written) if 4 + written < packed.len() => {
            out.truncate(4 + written);
            (LZ4, out)
        }
        _ => (RAW, packed),
    }
}

/// The packed payload of row `last` as stored with `codec`.
fn decompress(last: i64, codec: i64, payload: Vec<u8>) -> anyhow::Result<bytes::Bytes> {
    match codec {
        RAW => Ok(payload.into()),
        LZ4 => {
            let stated = payload
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|&len| len <= MAX_UNPACKED)
                .ok_or_else(|| anyhow::anyhow!("event log row {last}: bad compressed length"))?;
            let mut out = vec![0; stated];
            let written = lz4_flex::block::decompress_into(&payload[4..], &mut out)
                .map_err(|err| anyhow::anyhow!("event log row {last} is corrupt: {err}"))?;
            anyhow::ensure!(
                written == stated,
                "event log row {last} is corrupt: {written} bytes instead of {stated}"
            );
            Ok(out.into())
        }
        other => anyhow::bail!("event log row {last} has an unknown codec {other}"),
    }
}

/// The records of a row whose last record is `last`: `(sequence, record)` in order. The
/// records share the row's buffer.
fn unpack(
    last: i64,
    records: i64,
    payload: bytes::Bytes,
) -> anyhow::Result<Vec<(i64, bytes::Bytes)>> {
    if records == 1 {
        return Ok(vec![(last, payload)]);
    }
    let malformed = || anyhow::anyhow!("event log row {last} is malformed ({records} records)");
    let count = usize::try_from(records).map_err(|_| malformed())?;
    let mut out = Vec::with_capacity(count);
    let mut at = 0usize;
    let first = last - records + 1;
    for i in 0..records {
        let len = payload
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(malformed)?;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or_else(malformed)?;
        out.push((first + i, payload.slice(start..end)));
        at = end;
    }
    if at != payload.len() {
        return Err(malformed());
    }
    Ok(out)
}

/// Inserts `payloads` (in rows, see [`rows`]) and records `acks` in one transaction; returns
/// the last sequence written. A failure rolls the whole batch back: either every waiter's
/// record is durable or none is.
///
/// The next sequence is read inside the transaction, not remembered: another process (a
/// `switchyard demo` run) may have appended to the file since.
fn commit(
    conn: &rusqlite::Connection,
    statements: &mut Statements<'_>,
    payloads: &[Vec<u8>],
    acks: &[(String, i64)],
    buffers: &mut Buffers,
) -> rusqlite::Result<i64> {
    transaction(conn, || {
        let mut seq = statements.last.query_row([], |row| row.get::<_, i64>(0))?;
        for row in rows(payloads) {
            seq += row.len() as i64;
            let (codec, payload) =
                compress(pack(row, &mut buffers.packed)?, &mut buffers.compressed);
            statements
                .insert
                .execute(rusqlite::params![seq, row.len() as i64, payload, codec])?;
        }
        for (group, sequence) in acks {
            statements.ack.execute(rusqlite::params![group, sequence])?;
        }
        Ok(seq)
    })
}

/// Runs `work` in an immediate transaction and commits it; a failure anywhere rolls it back.
fn transaction<T>(
    conn: &rusqlite::Connection,
    work: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match work().and_then(|value| conn.execute_batch("COMMIT").map(|()| value)) {
        Ok(value) => Ok(value),
        Err(err) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(err)
        }
    }
}

/// Records deleted in one go at most (see [`prune`]), so the appends waiting behind a prune
/// wait for a few milliseconds, not for a week of records.
const PRUNE_RECORDS: i64 = 16_384;

/// Retention, in its own transaction: notes the log's last sequence at `now` (unix ms), then
/// deletes the oldest records that are both older than `max_age` (by the newest note at least
/// that old) and acknowledged by every consumer group, at most [`PRUNE_RECORDS`] of them.
/// Returns whether more are due. A row goes only as a whole, once its last record may go.
/// The sequences never restart: the note written first holds the last one, and the newest note
/// is never deleted, so it outlives the rows (see [`LAST_SEQUENCE`]).
fn prune(conn: &rusqlite::Connection, max_age: Duration, now: i64) -> rusqlite::Result<bool> {
    let cutoff = now.saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
    transaction(conn, || {
        conn.execute(
            &format!("INSERT OR REPLACE INTO log_marks (at, seq) SELECT ?1, ({LAST_SEQUENCE})"),
            [now],
        )?;
        // The newest position at least `max_age` old, capped by the slowest group.
        let bound: Option<i64> = conn.query_row(
            "SELECT MIN((SELECT MAX(seq) FROM log_marks WHERE at <= ?1),
                        COALESCE((SELECT MIN(acked) FROM log_groups), 9223372036854775807))",
            [cutoff],
            |row| row.get(0),
        )?;
        let oldest: Option<i64> =
            conn.query_row("SELECT MIN(seq) FROM log", [], |row| row.get(0))?;
        let (Some(bound), Some(oldest)) = (bound, oldest) else {
            return Ok(false);
        };
        let up_to = bound.min(oldest.saturating_add(PRUNE_RECORDS));
        conn.execute("DELETE FROM log WHERE seq <= ?1", [up_to])?;
        // Notes at or below what is gone are no use any more; the newest old one stays.
        conn.execute(
            "DELETE FROM log_marks WHERE seq <= ?1 AND at < (SELECT MAX(at) FROM log_marks WHERE at <= ?2)",
            [up_to, cutoff],
        )?;
        Ok(up_to < bound)
    })
}

/// The writer's statements, prepared once.
struct Statements<'c> {
    last: rusqlite::Statement<'c>,
    insert: rusqlite::Statement<'c>,
    ack: rusqlite::Statement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(conn: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            last: conn.prepare(LAST_SEQUENCE)?,
            insert: conn.prepare(
                "INSERT INTO log (seq, records, payload, codec) VALUES (?1, ?2, ?3, ?4)",
            )?,
            ack: conn.prepare(
                "INSERT INTO log_groups (name, acked) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET acked = MAX(acked, excluded.acked)",
            )?,
        })
    }
}

/// The last sequence given out: the table's highest, or when retention has emptied the table,
/// the highest noted in `log_marks` (retention notes the last sequence before it deletes, and
/// keeps the newest note). Retention deletes only from the oldest end, so a table that holds
/// rows holds the last one. The writer reads it in every commit: while the table holds rows it
/// is one look at the rowid B-tree's last page.
const LAST_SEQUENCE: &str = "SELECT COALESCE((SELECT MAX(seq) FROM log),
    (SELECT MAX(seq) FROM log_marks), 0)";

struct SqliteSubscription {
    pool: SqlitePool,
    writer: mpsc::Sender<Message>,
    group: String,
    acked: i64,
    /// Highest sequence handed out since the last ack, to count redeliveries.
    delivered_up_to: i64,
    committed: watch::Receiver<i64>,
}

impl Subscription for SqliteSubscription {
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Delivery>>> {
        async move {
            if *self.committed.borrow() <= self.acked {
                let acked = self.acked;
                let _ =
                    tokio::time::timeout(wait, self.committed.wait_for(|seq| *seq > acked)).await;
            }
            // Every row past the last ack holds at least one wanted record, so `max` rows are
            // enough; the rows are streamed and the query dropped once `max` records are in.
            let mut rows = sqlx::query(
                "SELECT seq, records, payload, codec FROM log WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(self.acked)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch(&self.pool);
            let mut out = Vec::with_capacity(max.min(4_096));
            while out.len() < max {
                let Some(row) = rows.try_next().await? else {
                    break;
                };
                let last: i64 = row.try_get("seq")?;
                let records: i64 = row.try_get("records")?;
                let payload = decompress(last, row.try_get("codec")?, row.try_get("payload")?)?;
                let wanted = unpack(last, records, payload)?
                    .into_iter()
                    .filter(|(seq, _)| *seq > self.acked)
                    .take(max - out.len());
                for (seq, payload) in wanted {
                    out.push(Delivery {
                        sequence: seq as u64,
                        payload,
                        redeliveries: u64::from(seq <= self.delivered_up_to),
                    });
                }
            }
            drop(rows);
            if let Some(last) = out.last() {
                self.delivered_up_to = self.delivered_up_to.max(last.sequence as i64);
            }
            Ok(out)
        }
        .boxed()
    }

    fn ack<'a>(&'a mut self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            let Some(last) = batch.iter().map(|d| d.sequence as i64).max() else {
                return Ok(());
            };
            let (done, answer) = oneshot::channel();
            self.writer
                .send(Message::Ack {
                    group: self.group.clone(),
                    sequence: last,
                    done,
                })
                .await
                .map_err(|_| anyhow::anyhow!("the event log is closed"))?;
            answer
                .await
                .map_err(|_| anyhow::anyhow!("the event log writer stopped"))?
                .map_err(|err| anyhow::anyhow!("recording the acknowledgement failed: {err}"))?;
            self.acked = self.acked.max(last);
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_temp(options: Options) -> (tempfile::TempDir, SqliteLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(&dir.path().join("events.db"), options)
            .await
            .unwrap();
        (dir, log)
    }

    /// Appends `payload(i)` for every `i` of `range` at once, a task each; every append succeeds.
    async fn append_concurrently(
        log: &std::sync::Arc<SqliteLog>,
        range: std::ops::Range<u32>,
        payload: impl Fn(u32) -> String,
    ) {
        let tasks: Vec<_> = range
            .map(|i| {
                let (log, bytes) = (log.clone(), payload(i).into_bytes());
                tokio::spawn(async move { log.append(bytes).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_all_land() {
        let (_dir, log) = open_temp(Options::default()).await;
        let log = std::sync::Arc::new(log);
        append_concurrently(&log, 0..1000, |i| format!("{{\"n\":{i}}}")).await;
        assert_eq!(log.count().await.unwrap(), 1000);

        let mut sub = log.subscribe("analytics").await.unwrap();
        let mut seen = Vec::new();
        loop {
            let batch = sub
                .next_batch(300, Duration::from_millis(50))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            seen.extend(batch.iter().map(|d| d.sequence));
            sub.ack(&batch).await.unwrap();
        }
        assert_eq!(seen.len(), 1000);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    }

    async fn row_count(log: &SqliteLog) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM log")
            .fetch_one(&log.pool)
            .await
            .unwrap()
    }

    /// A burst right after a shared commit waits out the commit interval and then goes in one
    /// commit (one row), instead of committing as it arrives.
    #[tokio::test]
    async fn appends_after_a_shared_commit_wait_for_the_interval_and_commit_together() {
        let interval = Duration::from_millis(300);
        let (_dir, log) = open_temp(Options {
            commit_interval: interval,
            ..Options::default()
        })
        .await;
        let log = std::sync::Arc::new(log);
        // Twenty at once: at most the first commits alone, the rest share a commit.
        append_concurrently(&log, 0..20, |i| format!("{{\"a\":{i}}}")).await;
        let (rows_before, started) = (row_count(&log).await, std::time::Instant::now());
        append_concurrently(&log, 0..20, |i| format!("{{\"b\":{i}}}")).await;
        let waited = started.elapsed();
        assert_eq!(log.count().await.unwrap(), 40);
        assert_eq!(
            row_count(&log).await - rows_before,
            1,
            "the second burst: one commit"
        );
        // The shared commit began before the first burst was answered, so the wait can be a
        // little shorter than the interval, but not much.
        assert!(waited >= interval / 2, "waited only {waited:?}");
    }

    /// A client that sends one request at a time never shares a commit, so it is never paced:
    /// with an interval of 10 s, ten appends in a row still take well under a second each.
    #[tokio::test]
    async fn one_append_at_a_time_is_not_paced() {
        let (_dir, log) = open_temp(Options {
            commit_interval: Duration::from_secs(10),
            ..Options::default()
        })
        .await;
        let started = std::time::Instant::now();
        for i in 0..10u8 {
            log.append(vec![b'0' + i]).await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(row_count(&log).await, 10, "a commit each");
    }

    fn waiting(appends: usize) -> Batch {
        let mut batch = Batch::default();
        for _ in 0..appends {
            batch.waiters.push(oneshot::channel().0);
        }
        batch
    }

    /// A small batch waits out the rest of the interval after a shared commit; a batch of
    /// `PACE_BELOW` or more, a batch with a close behind it, or any batch once the interval has
    /// passed or when the last commit was not shared, commits at once.
    #[test]
    fn only_small_batches_soon_after_a_shared_commit_wait() {
        let interval = Duration::from_secs(60);
        let just_now = Some(std::time::Instant::now());
        let early = (COMMIT_WHILE_SYNCING, COMMIT_WHILE_SYNCING_BYTES);
        let wait = waiting(PACE_BELOW - 1).pacing(just_now, interval, early);
        assert!(
            wait.is_some_and(|w| w > interval / 2 && w <= interval),
            "{wait:?}"
        );
        assert_eq!(waiting(PACE_BELOW).pacing(just_now, interval, early), None);
        assert_eq!(waiting(1).pacing(None, interval, early), None, "not shared");
        assert_eq!(
            waiting(1).pacing(just_now, Duration::ZERO, early),
            None,
            "interval over"
        );
        let mut closing = waiting(1);
        closing.closing = Some(oneshot::channel().0);
        assert_eq!(closing.pacing(just_now, interval, early), None);
    }

    /// With batches of at most 4 records, 1,000 concurrent appends leave a backlog behind most
    /// commits, so the syncer thread takes their fsyncs while the writer commits on, and the
    /// writer syncs the last ones itself: every record lands, in order, and a subscriber is
    /// woken for all of them.
    #[tokio::test]
    async fn fsyncs_handed_to_the_syncer_and_done_by_the_writer_all_land() {
        let options = Options {
            max_batch: 4,
            ..Options::default()
        };
        let (_dir, log) = open_temp(options).await;
        let log = std::sync::Arc::new(log);
        let mut sub = log.subscribe("analytics").await.unwrap();
        append_concurrently(&log, 0..1000, |i| format!("{{\"n\":{i}}}")).await;
        assert_eq!(log.count().await.unwrap(), 1000);
        assert_eq!(
            *log.committed.borrow(),
            1000,
            "subscribers know every record"
        );
        let mut seen = Vec::new();
        while seen.len() < 1000 {
            let batch = sub.next_batch(1000, Duration::from_secs(5)).await.unwrap();
            assert!(!batch.is_empty(), "woken for every record");
            seen.extend(batch.iter().map(|d| d.sequence));
            sub.ack(&batch).await.unwrap();
        }
        assert!(seen.iter().copied().eq(1..=1000), "in order, once each");
    }

    #[tokio::test]
    async fn unacknowledged_records_are_delivered_again() {
        let (_dir, log) = open_temp(Options::default()).await;
        for i in 0..5 {
            log.append(vec![b'0' + i]).await.unwrap();
        }
        let mut sub = log.subscribe("g").await.unwrap();
        let first = sub.next_batch(3, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 3);
        sub.ack(&first[..2]).await.unwrap();
        drop(sub);

        // A new subscriber of the group resumes after the last ack: record 3 comes again.
        let mut sub = log.subscribe("g").await.unwrap();
        let again = sub.next_batch(10, Duration::ZERO).await.unwrap();
        assert_eq!(
            again.iter().map(|d| d.sequence).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        // Another group starts from the beginning.
        let mut other = log.subscribe("other").await.unwrap();
        assert_eq!(other.next_batch(10, Duration::ZERO).await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_buffering() {
        let (_dir, log) = open_temp(Options {
            queue_capacity: 1,
            max_batch: 1,
            ..Options::default()
        })
        .await;
        let log = std::sync::Arc::new(log);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.append(vec![b'x'; 10]).await },
            ));
        }
        let mut overloaded = 0;
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(AppendError::Overloaded) => overloaded += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(overloaded > 0, "some appends must be refused");
        assert_eq!(
            log.count().await.unwrap(),
            ok,
            "every accepted append is stored"
        );
    }

    #[tokio::test]
    async fn close_flushes_and_then_refuses() {
        let (_dir, log) = open_temp(Options::default()).await;
        log.append(b"before".to_vec()).await.unwrap();
        log.close().await;
        assert!(matches!(
            log.append(b"after".to_vec()).await,
            Err(AppendError::Unavailable(_))
        ));
    }

    /// Every record of `log` from the start, as group `group` reads them `max` at a time.
    /// Commits `payloads` with the writer's own `commit`, on `conn` (another connection than
    /// the log's writer, as another process would).
    fn commit_payloads(conn: &rusqlite::Connection, payloads: &[Vec<u8>]) {
        let mut statements = Statements::prepare(conn).unwrap();
        commit(
            conn,
            &mut statements,
            payloads,
            &[],
            &mut Buffers::default(),
        )
        .unwrap();
    }

    async fn read_all(log: &SqliteLog, group: &str, max: usize) -> Vec<(u64, Vec<u8>)> {
        let mut sub = log.subscribe(group).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let batch = sub.next_batch(max, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                return seen;
            }
            assert!(batch.len() <= max);
            seen.extend(batch.iter().map(|d| (d.sequence, d.payload.to_vec())));
            sub.ack(&batch).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_batch_with_an_ack_reports_the_last_record_it_wrote() {
        let (dir, log) = open_temp(Options::default()).await;
        for _ in 0..3 {
            log.append(b"r".to_vec()).await.unwrap();
        }
        // Another connection (another process, say) commits records 4 and 5 and a new group's
        // first ack together: the sequence reported is the log's, not the group row's.
        let conn = crate::sqlite::open_writer(&dir.path().join("events.db")).unwrap();
        let mut statements = Statements::prepare(&conn).unwrap();
        let last = commit(
            &conn,
            &mut statements,
            &[b"a".to_vec(), b"b".to_vec()],
            &[("new-group".to_owned(), 2)],
            &mut Buffers::default(),
        )
        .unwrap();
        assert_eq!(last, 5);
        // The log's own writer carries on after them instead of reusing their sequences.
        log.append(b"c".to_vec()).await.unwrap();
        let seen = read_all(&log, "reader", 10).await;
        let expected: Vec<(u64, Vec<u8>)> = [&b"r"[..], b"r", b"r", b"a", b"b", b"c"]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p.to_vec()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn rows_are_cut_by_records_and_by_bytes() {
        let small = vec![vec![b's'; 10]; 600];
        let sizes: Vec<usize> = rows(&small).map(<[_]>::len).collect();
        assert_eq!(sizes, vec![256, 256, 88]);
        let big = vec![vec![b'b'; 100 * 1024]; 5];
        let sizes: Vec<usize> = rows(&big).map(<[_]>::len).collect();
        assert_eq!(sizes, vec![2, 2, 1], "about ROW_BYTES a row");
        let huge = vec![vec![b'h'; 2 * ROW_BYTES], vec![b'h'; 10]];
        let sizes: Vec<usize> = rows(&huge).map(<[_]>::len).collect();
        assert_eq!(
            sizes,
            vec![1, 1],
            "a record larger than a row still gets one"
        );
        assert_eq!(rows(&[]).count(), 0);
    }

    #[test]
    fn a_row_unpacks_into_its_records() {
        let records = vec![b"first".to_vec(), Vec::new(), b"third record".to_vec()];
        let mut buffer = Vec::new();
        let packed = bytes::Bytes::copy_from_slice(pack(&records, &mut buffer).unwrap());
        let unpacked = unpack(12, 3, packed.clone()).unwrap();
        assert_eq!(
            unpacked,
            vec![
                (10, bytes::Bytes::from_static(b"first")),
                (11, bytes::Bytes::new()),
                (12, bytes::Bytes::from_static(b"third record")),
            ]
        );
        // A row of one record is the record itself.
        assert_eq!(pack(&records[..1], &mut buffer).unwrap(), b"first");
        assert_eq!(
            unpack(7, 1, packed.clone()).unwrap(),
            vec![(7, packed.clone())]
        );
        // A row that does not hold what it claims is an error, not a guess.
        assert!(unpack(12, 4, packed.clone()).is_err(), "too few records");
        assert!(unpack(12, 2, packed.clone()).is_err(), "trailing bytes");
        assert!(
            unpack(12, 3, packed.slice(..packed.len() - 1)).is_err(),
            "cut short"
        );
        assert!(unpack(12, -3, packed).is_err());
    }

    #[tokio::test]
    async fn readers_take_part_of_a_row_and_the_rest_later() {
        let (dir, log) = open_temp(Options::default()).await;
        let conn = crate::sqlite::open_writer(&dir.path().join("events.db")).unwrap();
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("r{i}").into_bytes()).collect();
        commit_payloads(&conn, &payloads);
        assert_eq!(log.count().await.unwrap(), 10);

        let mut sub = log.subscribe("g").await.unwrap();
        let first = sub.next_batch(3, Duration::ZERO).await.unwrap();
        assert_eq!(
            first.iter().map(|d| d.sequence).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(&first[2].payload[..], b"r2");
        // Not acknowledged: the same records come again, counted as redeliveries.
        let again = sub.next_batch(4, Duration::ZERO).await.unwrap();
        assert_eq!(
            again
                .iter()
                .map(|d| (d.sequence, d.redeliveries))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 1), (4, 0)]
        );
        sub.ack(&again).await.unwrap();
        let rest = sub.next_batch(100, Duration::ZERO).await.unwrap();
        assert_eq!(
            rest.iter().map(|d| d.sequence).collect::<Vec<_>>(),
            (5..=10).collect::<Vec<u64>>()
        );
        assert_eq!(&rest[5].payload[..], b"r9");
    }

    /// A row of similar records (a site's hits) is stored as an LZ4 block, a row that would
    /// not shrink (random bytes) or is tiny stays raw, and all read back as they were appended.
    #[tokio::test]
    async fn rows_are_compressed_when_that_makes_them_smaller() {
        let (dir, log) = open_temp(Options::default()).await;
        let conn = crate::sqlite::open_writer(&dir.path().join("events.db")).unwrap();
        let hits: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                format!(
                    r#"{{"query":"v=2&tid=G-BENCH01&cid={i}.1700000000&en=page_view&dl=https%3A%2F%2Fshop.example.com%2Fp%2F{i}","user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"}}"#
                )
                .into_bytes()
            })
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..2048)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for payloads in [hits.clone(), vec![noise.clone()], vec![b"tiny".to_vec()]] {
            commit_payloads(&conn, &payloads);
        }
        let stored: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT codec, records, length(payload) FROM log ORDER BY seq")
                .fetch_all(&log.pool)
                .await
                .unwrap();
        let packed_hits: usize = hits.iter().map(|h| 4 + h.len()).sum();
        assert_eq!((stored[0].0, stored[0].1), (LZ4, 50), "{stored:?}");
        assert!(
            stored[0].2 * 4 < packed_hits as i64,
            "{} bytes stored for {packed_hits}",
            stored[0].2
        );
        assert_eq!(stored[1], (RAW, 1, 2048));
        assert_eq!(stored[2], (RAW, 1, 4));
        let seen: Vec<Vec<u8>> = read_all(&log, "g", 7)
            .await
            .into_iter()
            .map(|(_, payload)| payload)
            .collect();
        let mut expected = hits;
        expected.extend([noise, b"tiny".to_vec()]);
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_corrupt_compressed_row_is_an_error_not_a_panic() {
        let stated = |len: u32, rest: &[u8]| [&len.to_le_bytes()[..], rest].concat();
        assert!(decompress(1, LZ4, vec![1, 2]).is_err());
        assert!(decompress(1, LZ4, stated(u32::MAX, &[0; 10])).is_err());
        assert!(decompress(1, LZ4, stated(100, &[0xff; 20])).is_err());
        // A valid block that yields fewer bytes than it states.
        let mut out = Vec::new();
        let (codec, block) = compress(&[b'a'; 600], &mut out);
        assert_eq!(codec, LZ4);
        let mut short = block.to_vec();
        short[..4].copy_from_slice(&700u32.to_le_bytes());
        assert!(decompress(1, LZ4, short).is_err());
        assert_eq!(
            &decompress(1, LZ4, block.to_vec()).unwrap()[..],
            &[b'a'; 600][..]
        );
        assert!(decompress(1, 7, Vec::new()).is_err());
    }

    #[tokio::test]
    async fn a_file_of_one_record_rows_is_read_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            // The layout before rows held several records.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL);
                 CREATE TABLE log_groups (name TEXT PRIMARY KEY, acked INTEGER NOT NULL);
                 INSERT INTO log (payload) VALUES (x'6f31'), (x'6f32'), (x'6f33');
                 INSERT INTO log_groups VALUES ('g', 1);",
            )
            .unwrap();
        }
        let log = std::sync::Arc::new(SqliteLog::open(&path, Options::default()).await.unwrap());
        append_concurrently(&log, 0..300, |i| format!("n{i}")).await;
        assert_eq!(log.count().await.unwrap(), 303);
        let seen = read_all(&log, "fresh", 7).await;
        assert_eq!(
            seen.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (1..=303).collect::<Vec<u64>>()
        );
        assert_eq!(
            seen[..3].iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
            [b"o1".to_vec(), b"o2".to_vec(), b"o3".to_vec()]
        );
        let mut new: Vec<String> = seen[3..]
            .iter()
            .map(|(_, p)| String::from_utf8(p.clone()).unwrap())
            .collect();
        new.sort();
        let mut expected: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
        expected.sort();
        assert_eq!(new, expected);
        // The old group resumes after its acknowledgement.
        let resumed = read_all(&log, "g", 1000).await;
        assert_eq!(resumed.first().map(|(seq, _)| *seq), Some(2));
        assert_eq!(resumed.len(), 302);
        // Several records share rows now (the appends were concurrent).
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log")
            .fetch_one(&log.pool)
            .await
            .unwrap();
        assert!(rows < 303, "{rows} rows for 303 records");
    }

    #[tokio::test]
    async fn old_records_go_once_every_group_has_acknowledged_them() {
        let (dir, log) = open_temp(Options::default()).await;
        for i in 0..10u8 {
            log.append(vec![b'0' + i]).await.unwrap();
        }
        let mut a = log.subscribe("a").await.unwrap();
        let batch = a.next_batch(10, Duration::ZERO).await.unwrap();
        a.ack(&batch[..6]).await.unwrap();
        let mut b = log.subscribe("b").await.unwrap();
        let batch = b.next_batch(10, Duration::ZERO).await.unwrap();
        b.ack(&batch).await.unwrap();

        let conn = crate::sqlite::open_writer(&dir.path().join("events.db")).unwrap();
        let hour = Duration::from_secs(3600);
        let now = platform::Timestamp::now().as_millis();
        // Nothing is an hour old yet.
        assert!(!prune(&conn, hour, now).unwrap());
        assert_eq!(log.count().await.unwrap(), 10);
        // Two hours later all ten are old, but group `a` has acknowledged only six.
        assert!(!prune(&conn, hour, now + 2 * 3_600_000).unwrap());
        assert_eq!(log.count().await.unwrap(), 4);
        let rest = |batch: Vec<Delivery>| batch.iter().map(|d| d.sequence).collect::<Vec<_>>();
        drop(a);
        let mut a = log.subscribe("a").await.unwrap();
        assert_eq!(
            rest(a.next_batch(10, Duration::ZERO).await.unwrap()),
            vec![7, 8, 9, 10]
        );
        let mut late = log.subscribe("late").await.unwrap();
        assert_eq!(
            rest(late.next_batch(10, Duration::ZERO).await.unwrap()),
            vec![7, 8, 9, 10]
        );
        // Sequences are not given out again.
        log.append(b"new".to_vec()).await.unwrap();
        assert_eq!(
            rest(a.next_batch(10, Duration::ZERO).await.unwrap()),
            vec![7, 8, 9, 10, 11]
        );
    }

    #[tokio::test]
    async fn the_writer_prunes_as_it_goes() {
        // A group's first acknowledgement makes it known (without groups, age alone decides):
        // group `g` acknowledges record 1 before the log reopens with no retention horizon.
        let (dir, log) = open_temp(Options::default()).await;
        log.append(b"first".to_vec()).await.unwrap();
        let mut sub = log.subscribe("g").await.unwrap();
        let batch = sub.next_batch(10, Duration::ZERO).await.unwrap();
        sub.ack(&batch).await.unwrap();
        drop(sub);
        log.close().await;
        let log = SqliteLog::open(
            &dir.path().join("events.db"),
            Options {
                max_age: Duration::ZERO,
                prune_every: Duration::ZERO,
                ..Options::default()
            },
        )
        .await
        .unwrap();
        let mut sub = log.subscribe("g").await.unwrap();
        for i in 0..5u8 {
            log.append(vec![i]).await.unwrap();
        }
        let batch = sub.next_batch(10, Duration::ZERO).await.unwrap();
        assert_eq!(batch.len(), 5);
        assert_eq!(log.count().await.unwrap(), 5, "unacknowledged records stay");
        sub.ack(&batch).await.unwrap();
        // The ack's own commit, or this append's, is followed by a prune.
        log.append(b"next".to_vec()).await.unwrap();
        log.append(b"last".to_vec()).await.unwrap();
        let left = log.count().await.unwrap();
        assert!(left <= 2, "{left} records left");
        let next = sub.next_batch(10, Duration::ZERO).await.unwrap();
        assert_eq!(
            next.iter().map(|d| d.sequence).collect::<Vec<_>>(),
            vec![7, 8]
        );
    }

    #[tokio::test]
    async fn a_long_backlog_is_pruned_in_chunks() {
        let (dir, log) = open_temp(Options::default()).await;
        let conn = crate::sqlite::open_writer(&dir.path().join("events.db")).unwrap();
        let total = 40_000i64;
        let payloads: Vec<Vec<u8>> = (0..total).map(|i| i.to_le_bytes().to_vec()).collect();
        commit_payloads(&conn, &payloads);
        let now = platform::Timestamp::now().as_millis();
        let hour = Duration::from_secs(3600);
        assert!(!prune(&conn, hour, now).unwrap(), "nothing is old yet");
        // No group has ever acknowledged anything: age alone decides.
        let later = now + 2 * 3_600_000;
        let mut rounds = 0;
        while prune(&conn, hour, later).unwrap() {
            rounds += 1;
            let left = log.count().await.unwrap();
            assert!(left > 0 && left < total, "{left} left after round {rounds}");
        }
        assert_eq!(rounds, 2, "40,000 records in chunks of {PRUNE_RECORDS}");
        assert_eq!(log.count().await.unwrap(), 0);
        log.append(b"after".to_vec()).await.unwrap();
        let mut sub = log.subscribe("g").await.unwrap();
        let batch = sub.next_batch(10, Duration::ZERO).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].sequence, total as u64 + 1);
    }

    /// WAL frames in the file at `path` (its header is 32 bytes, a frame 24 and a page).
    fn wal_frames(path: &Path) -> u64 {
        let len = std::fs::metadata(wal_path(path)).map_or(0, |m| m.len());
        len.saturating_sub(32) / (24 + 4096)
    }

    #[tokio::test]
    async fn a_small_commit_writes_one_page() {
        // A commit of a few bytes rewrites the table's last leaf page and nothing else (now and
        // then a new leaf, which also changes its parent and the header page). With
        // AUTOINCREMENT every commit would also rewrite `sqlite_sequence`'s page.
        let (dir, log) = open_temp(Options::default()).await;
        let path = dir.path().join("events.db");
        log.append(b"first".to_vec()).await.unwrap();
        let before = wal_frames(&path);
        for i in 0..200u32 {
            log.append(i.to_le_bytes().to_vec()).await.unwrap();
        }
        let frames = wal_frames(&path) - before;
        assert!(
            (200..=220).contains(&frames),
            "{frames} WAL frames for 200 one-record commits"
        );
    }

    #[tokio::test]
    async fn waits_for_new_records() {
        let (_dir, log) = open_temp(Options::default()).await;
        let log = std::sync::Arc::new(log);
        let mut sub = log.subscribe("g").await.unwrap();
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.append(b"late".to_vec()).await.unwrap();
        });
        let batch = sub.next_batch(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(&batch[0].payload[..], b"late");
    }
}
