//! The embedded event log: an append-only table in its own SQLite file (`events.db`), written
//! by one task with group commit.
//!
//! Appends queue on a bounded channel; the writer takes everything waiting (up to a batch
//! limit), inserts it in one transaction with multi-row `INSERT`s and commits with one fsync
//! (`synchronous=FULL`), then answers every waiting request. Under load, batches grow and the
//! fsync cost is shared; at rest, a single append commits at once. A full channel means the disk
//! cannot keep up, and the append is refused (`Overloaded`) instead of buffering without bound.
//! Its own file keeps this hot writer away from the product-state writer (SQLite has one writer
//! per file).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch};

use super::{AppendError, Delivery, EventLog, Subscription};

/// Rows per `INSERT` statement (SQLite accepts 32,766 parameters; smaller statements keep the
/// prepared-statement cache small).
const ROWS_PER_STATEMENT: usize = 256;

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
            .busy_timeout(Duration::from_secs(10))
            .statement_cache_capacity(ROWS_PER_STATEMENT + 16);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect.clone())
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
        let writer_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect)
            .await?;
        let (sender, receiver) = mpsc::channel(options.queue_capacity);
        let (committed_tx, committed) = watch::channel(last);
        tokio::spawn(write_loop(writer_pool, receiver, committed_tx, options));
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

async fn write_loop(
    pool: SqlitePool,
    mut receiver: mpsc::Receiver<Message>,
    committed: watch::Sender<i64>,
    options: Options,
) {
    let mut statements: HashMap<usize, String> = HashMap::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    while let Some(first) = receiver.recv().await {
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Append { payload, done } => {
                    bytes += payload.len();
                    payloads.push(payload);
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
        if !payloads.is_empty() {
            let result = commit(&pool, &payloads, &mut statements).await;
            let answer = match result {
                Ok(last) => {
                    committed.send_replace(last);
                    Ok(())
                }
                Err(err) => {
                    tracing::error!(error = %err, records = payloads.len(), "event log commit failed");
                    Err(err.to_string())
                }
            };
            for waiter in waiters.drain(..) {
                let _ = waiter.send(answer.clone());
            }
            payloads.clear();
        }
        if let Some(done) = closing.take() {
            receiver.close();
            // Appends queued behind the close message are refused, not lost silently.
            while let Ok(Message::Append { done, .. }) = receiver.try_recv() {
                let _ = done.send(Err("the log is closed".into()));
            }
            pool.close().await;
            let _ = done.send(());
            return;
        }
    }
}

/// Inserts `payloads` in one transaction; returns the last sequence written.
async fn commit(
    pool: &SqlitePool,
    payloads: &[Vec<u8>],
    statements: &mut HashMap<usize, String>,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for chunk in payloads.chunks(ROWS_PER_STATEMENT) {
        let sql = statements.entry(chunk.len()).or_insert_with(|| {
            let mut sql = String::from("INSERT INTO log (payload) VALUES ($1)");
            for i in 2..=chunk.len() {
                sql.push_str(&format!(",(${i})"));
            }
            sql
        });
        let mut query = sqlx::query(AssertSqlSafe(sql.clone()));
        for payload in chunk {
            query = query.bind(payload.as_slice());
        }
        query.execute(&mut *tx).await?;
    }
    let last: i64 = sqlx::query_scalar("SELECT last_insert_rowid()")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(last)
}

struct SqliteSubscription {
    pool: SqlitePool,
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
            sqlx::query(
                "INSERT INTO log_groups (name, acked) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET acked = MAX(acked, excluded.acked)",
            )
            .bind(&self.group)
            .bind(last)
            .execute(&self.pool)
            .await?;
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
