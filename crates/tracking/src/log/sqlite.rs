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
//! hands the batch's waiters to a syncer thread, which fsyncs the WAL file and only then
//! answers them. While one batch is being synced the writer already commits the next, so a
//! request waits for one commit and one fsync instead of queueing behind every earlier batch's
//! commit-and-fsync. Durability is the same as `FULL`'s: a waiter is answered only after an
//! fsync of the WAL that began after its commit had written its frames (and the WAL header,
//! when the commit restarted the WAL), which is what `FULL` does at the end of each commit;
//! checkpoints sync the WAL before they copy it, in both modes. The syncer's queue is bounded,
//! so a disk that cannot keep up still backs up into the appends queue and `Overloaded`.
//!
//! WAL checkpoints stay SQLite's automatic ones, inside the writer's commits: a checkpointer thread beside the writer was tried and made the tail worse (see
//! docs/decisions.md). Readers (consumers, `count`) use an sqlx pool.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_capacity: 16_384,
            max_batch: 4_096,
            max_batch_bytes: 16 * 1024 * 1024,
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
        // The log's schema is two tables that never change shape; it needs no migration history.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS log (
                 seq     INTEGER PRIMARY KEY AUTOINCREMENT,
                 payload BLOB NOT NULL
             )",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS log_groups (
                 name  TEXT PRIMARY KEY,
                 acked INTEGER NOT NULL
             )",
        )
        .execute(&pool)
        .await?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM log")
            .fetch_one(&pool)
            .await?;
        let (sender, receiver) = mpsc::channel(options.queue_capacity);
        let (committed_tx, committed) = watch::channel(last);
        let (ready_tx, ready) = oneshot::channel();
        let writer_path = path.to_owned();
        std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || {
                let conn = match connect_blocking(&writer_path) {
                    Ok(conn) => conn,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
                let wal = wal_path(&writer_path);
                let syncer = match std::thread::Builder::new()
                    .name("event-log-sync".into())
                    .spawn(move || sync_loop(&wal, sync_rx, &committed_tx))
                {
                    Ok(handle) => handle,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let closers = write_loop(&conn, receiver, sync_tx, &options);
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
        Ok(SqliteLog {
            sender,
            pool,
            committed,
        })
    }

    /// Number of records in the log (for tests and tools).
    pub async fn count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM log")
            .fetch_one(&self.pool)
            .await?)
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

/// The writer's connection with the log's durability settings; `busy_timeout` covers another
/// process holding the file's write lock for a moment.
fn connect_blocking(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // NORMAL: commits do not fsync; the syncer thread does, before anyone is answered.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    Ok(conn)
}

/// Committed batches that may wait for the syncer before the writer waits for it.
const SYNC_QUEUE: usize = 64;

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

/// The syncer thread's loop: takes every committed batch waiting, fsyncs the WAL once for all
/// of them, then answers their waiters and announces the new last sequence to subscribers.
fn sync_loop(
    wal: &Path,
    batches: std::sync::mpsc::Receiver<Committed>,
    committed: &watch::Sender<i64>,
) {
    // The WAL exists once the writer has committed, which it has before it sends anything.
    let mut file: Option<std::fs::File> = None;
    while let Ok(first) = batches.recv() {
        let mut ready = vec![first];
        ready.extend(batches.try_iter());
        // fdatasync: the frames and the file's new length, which is all a reader needs.
        let synced = file
            .take()
            .map_or_else(|| std::fs::File::open(wal), Ok)
            .and_then(|f| f.sync_data().map(|()| f));
        let answer = match synced {
            Ok(f) => {
                file = Some(f);
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, wal = %wal.display(), "event log fsync failed");
                Err(format!("the event log could not be synced to disk: {err}"))
            }
        };
        if answer.is_ok()
            && let Some(last) = ready.iter().filter_map(|b| b.last).max()
        {
            committed.send_replace(last);
        }
        for waiter in ready.into_iter().flat_map(|b| b.waiters) {
            let _ = waiter.send(answer.clone());
        }
    }
}

/// The writer thread's loop: one transaction per batch of waiting appends, each handed to the
/// syncer once committed, until `Close` (returns whoever asked to close) or until every sender
/// is gone. Returning drops `syncer`, which lets the sync loop finish.
fn write_loop(
    conn: &rusqlite::Connection,
    mut receiver: mpsc::Receiver<Message>,
    syncer: std::sync::mpsc::SyncSender<Committed>,
    options: &Options,
) -> Vec<oneshot::Sender<()>> {
    let mut insert = match conn.prepare("INSERT INTO log (payload) VALUES (?1)") {
        Ok(statement) => Some(statement),
        Err(err) => {
            // Every append is then answered with this error instead of hanging.
            tracing::error!(error = %err, "cannot prepare the event log insert");
            None
        }
    };
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut acks: Vec<(String, i64)> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    while let Some(first) = receiver.blocking_recv() {
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Append { payload, done } => {
                    bytes += payload.len();
                    payloads.push(payload);
                    waiters.push(done);
                }
                Message::Ack {
                    group,
                    sequence,
                    done,
                } => {
                    acks.push((group, sequence));
                    waiters.push(done);
                }
                Message::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if payloads.len() >= options.max_batch || bytes >= options.max_batch_bytes {
                break;
            }
            next = receiver.try_recv().ok();
        }
        if !waiters.is_empty() {
            let result = match insert.as_mut() {
                Some(insert) => commit(conn, insert, &payloads, &acks).map_err(|e| e.to_string()),
                None => Err("the event log cannot insert (see the log at start)".to_owned()),
            };
            match result {
                Ok(last) => {
                    let batch = Committed {
                        last: (!payloads.is_empty()).then_some(last),
                        waiters: std::mem::take(&mut waiters),
                    };
                    // The syncer stops only when this sender is dropped, so this cannot fail;
                    // if it did, dropping the waiters answers them "writer stopped".
                    let _ = syncer.send(batch);
                }
                Err(err) => {
                    tracing::error!(error = %err, records = payloads.len(), "event log commit failed");
                    for waiter in waiters.drain(..) {
                        let _ = waiter.send(Err(err.clone()));
                    }
                }
            }
            payloads.clear();
            acks.clear();
        }
        if let Some(done) = closing.take() {
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

/// Inserts `payloads` and records `acks` in one transaction; returns the last sequence written.
/// A failure rolls the whole batch back: either every waiter's record is durable or none is.
fn commit(
    conn: &rusqlite::Connection,
    insert: &mut rusqlite::Statement<'_>,
    payloads: &[Vec<u8>],
    acks: &[(String, i64)],
) -> rusqlite::Result<i64> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let written = payloads
        .iter()
        .try_for_each(|payload| insert.execute([payload.as_slice()]).map(drop))
        // Read before the acks: a new group's row would become the last inserted rowid.
        .map(|()| conn.last_insert_rowid())
        .and_then(|last| {
            acks.iter()
                .try_for_each(|(group, sequence)| {
                    conn.execute(
                        "INSERT INTO log_groups (name, acked) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET acked = MAX(acked, excluded.acked)",
                        rusqlite::params![group, sequence],
                    )
                    .map(drop)
                })
                .map(|()| last)
        });
    match written.and_then(|last| conn.execute_batch("COMMIT").map(|()| last)) {
        Ok(last) => Ok(last),
        Err(err) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(err)
        }
    }
}

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
            let rows =
                sqlx::query("SELECT seq, payload FROM log WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(self.acked)
                    .bind(i64::try_from(max).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let seq: i64 = row.try_get("seq")?;
                let payload: Vec<u8> = row.try_get("payload")?;
                out.push(Delivery {
                    sequence: seq as u64,
                    payload: payload.into(),
                    redeliveries: u64::from(seq <= self.delivered_up_to),
                });
            }
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

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_all_land() {
        let (_dir, log) = open_temp(Options::default()).await;
        let log = std::sync::Arc::new(log);
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(format!("{{\"n\":{i}}}").into_bytes()).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
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

    #[tokio::test]
    async fn a_batch_with_an_ack_reports_the_last_record_it_wrote() {
        let (dir, log) = open_temp(Options::default()).await;
        for _ in 0..3 {
            log.append(b"r".to_vec()).await.unwrap();
        }
        let conn = connect_blocking(&dir.path().join("events.db")).unwrap();
        let mut insert = conn
            .prepare("INSERT INTO log (payload) VALUES (?1)")
            .unwrap();
        // Records 4 and 5 and a new group's first ack commit together: the sequence reported
        // is the log's, not the group row's.
        let last = commit(
            &conn,
            &mut insert,
            &[b"a".to_vec(), b"b".to_vec()],
            &[("new-group".to_owned(), 2)],
        )
        .unwrap();
        assert_eq!(last, 5);
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
