//! The durable event log between the gateway and the pipeline.
//!
//! The gateway appends one record per accepted request and answers 2xx only once the append
//! returned: the record is then durable (fsync'd SQLite, or acknowledged by JetStream). Records
//! are opaque bytes here; the gateway writes a serialized [`crate::LogRecord`].
//!
//! Consumers read in named groups, at least once: a group's position advances only when it
//! acknowledges, so whatever it had not acknowledged when it died is delivered again.
//!
//! Two implementations, chosen at start from a URL:
//! - [`sqlite::SqliteLog`] (`sqlite://…`, the embedded default): group commit, many requests
//!   share one transaction and one fsync;
//! - [`nats::NatsLog`] (`nats://…`): a JetStream stream with durable pull consumers.

pub mod nats;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The log cannot keep up: the caller should answer 503 with `Retry-After`.
    #[error("the event log is overloaded")]
    Overloaded,
    /// The log is shutting down or broken.
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
}

/// One record handed to a consumer; acknowledge it (or a later one of the same batch) once its
/// effects are durable.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in the log: increasing within one log.
    pub sequence: u64,
    pub payload: bytes::Bytes,
    /// How many times this record was delivered to this group before (0 the first time), when
    /// the backend knows.
    pub redeliveries: u64,
}

pub trait EventLog: Send + Sync + 'static {
    /// Appends one record; returns once it is durable.
    fn append(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<(), AppendError>>;

    /// A reader for consumer group `group`, starting after the group's last acknowledgement.
    fn subscribe<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Subscription>>>;

    /// Stops accepting appends and flushes what was accepted.
    fn close(&self) -> BoxFuture<'_, ()>;
}

pub trait Subscription: Send {
    /// Up to `max` records, waiting at most `wait` for the first one. Records of a batch that is
    /// not acknowledged are delivered again on a later call or to the next subscriber.
    fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Delivery>>>;

    /// Acknowledges every record of `batch`.
    fn ack<'a>(&'a mut self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Opens the log named by `url`: `sqlite://PATH` (with `embedded`'s settings) or
/// `nats://HOST:PORT[?stream=NAME]`.
pub async fn open(url: &str, embedded: sqlite::Options) -> anyhow::Result<Arc<dyn EventLog>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(
            sqlite::SqliteLog::open(std::path::Path::new(path), embedded).await?,
        ));
    }
    if url.starts_with("nats://") {
        // `?stream=NAME` picks the stream (and subject), so deployments and tests can share
        // one NATS server.
        let (server, options) = match url.split_once("?stream=") {
            Some((server, name)) if !name.is_empty() => (
                server,
                nats::Options {
                    stream: name.to_owned(),
                    subject: format!("switchyard.events.{name}"),
                    ..nats::Options::default()
                },
            ),
            _ => (url, nats::Options::default()),
        };
        return Ok(Arc::new(nats::NatsLog::connect(server, options).await?));
    }
    anyhow::bail!("unsupported event log URL (expected sqlite:// or nats://)")
}

/// What a consumer group does with each batch of records.
pub trait BatchHandler: Send + Sync {
    fn process<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Records read and handed over at a time.
    fn batch_size(&self) -> usize {
        2_000
    }
}

/// Reads `group` until `shutdown`, handing each batch to `handler` and acknowledging it once
/// it succeeded. A failing batch is retried in place with backoff, never acknowledged
/// unprocessed: consumers are at least once, and make their effects idempotent.
pub async fn consume(
    log: Arc<dyn EventLog>,
    group: &str,
    shutdown: CancellationToken,
    handler: &dyn BatchHandler,
) {
    let mut subscription = loop {
        match log.subscribe(group).await {
            Ok(s) => break s,
            Err(err) => {
                tracing::error!(error = %err, group, "cannot subscribe to the event log; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    tracing::info!(group, "event log consumer started");
    while !shutdown.is_cancelled() {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = subscription.next_batch(handler.batch_size(), Duration::from_secs(1)) => batch,
        };
        let batch = match batch {
            Ok(batch) if batch.is_empty() => continue,
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, group, "reading the event log failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut backoff = Duration::from_millis(200);
        while let Err(err) = handler.process(&batch).await {
            tracing::error!(error = %err, group, records = batch.len(), "batch failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        if let Err(err) = subscription.ack(&batch).await {
            tracing::warn!(error = %err, group, "acknowledging a batch failed; it will come again");
        }
    }
    tracing::info!(group, "event log consumer stopped");
}

/// Per workspace, the tracking event names a consumer acts on, cached for a while: a consumer
/// that skips most records (automation, conversions) asks its database once per workspace and
/// interval, not once per record. Changes made in this process can [`clear`](Self::clear) it;
/// other processes' changes are seen within the interval.
pub struct WantedEvents {
    ttl: Duration,
    cache: std::sync::Mutex<WantedMap>,
}

type WantedMap = std::collections::HashMap<
    platform::id::WorkspaceId,
    (std::time::Instant, Arc<std::collections::HashSet<String>>),
>;

impl WantedEvents {
    /// Workspaces remembered at most; past it the cache starts over.
    const MAX_WORKSPACES: usize = 10_000;

    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: std::sync::Mutex::default(),
        }
    }

    /// The workspace's names: cached when fresh, else from `load` (and then cached).
    pub async fn get<F, Fut>(
        &self,
        workspace: platform::id::WorkspaceId,
        load: F,
    ) -> anyhow::Result<Arc<std::collections::HashSet<String>>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<std::collections::HashSet<String>>>,
    {
        if let Some((at, names)) = self.lock().get(&workspace)
            && at.elapsed() < self.ttl
        {
            return Ok(names.clone());
        }
        let names = Arc::new(load().await?);
        let mut cache = self.lock();
        if cache.len() >= Self::MAX_WORKSPACES {
            cache.clear();
        }
        cache.insert(workspace, (std::time::Instant::now(), names.clone()));
        Ok(names)
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WantedMap> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
