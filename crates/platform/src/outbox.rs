//! The transactional outbox: domain events are written in the transaction of the change they
//! describe, so an event exists exactly when its change committed, then relayed to consumers.
//!
//! [`publish`] (caller's transaction) → `outbox_events` → the relay claims a batch and, in one
//! transaction, enqueues one delivery job per consumer that wants each event (`unique_key =
//! outbox:{consumer}:{event}`, so a second relay of the same event adds nothing) and marks the
//! batch relayed → the delivery job skips a (consumer, event) pair already recorded as
//! processed, else calls the consumer and records the pair.
//!
//! Delivery is at-least-once and unordered: a crash between a consumer's effect and the
//! processed record delivers the event again, so consumers key their effects on the event id.
//!
//! Every event carries a causation depth ([`OutboxEvent::causation_depth`]): 0 unless it was
//! published inside [`with_causation_depth`], which automation wraps around the steps of a run
//! so that rules feeding each other can be stopped (the publishing crates need not know).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Dialect, Tx};
use crate::id::{EventId, WorkspaceId};
use crate::jobs::{self, JobContext, JobError, JobHandler, JobRegistry, NewJob};
use crate::time::Timestamp;
use crate::{with_db, with_tx};

/// The job kind of a delivery to one consumer.
pub const DELIVERY_KIND: &str = "outbox.deliver";

/// Events claimed per relay transaction.
pub const RELAY_BATCH: u32 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct OutboxEvent {
    pub id: EventId,
    pub workspace_id: Option<WorkspaceId>,
    pub event_type: String,
    pub payload: Value,
    pub created_at: Timestamp,
    /// How many automation runs led to this event (0: none).
    pub causation_depth: u32,
}

tokio::task_local! {
    static CAUSATION_DEPTH: u32;
}

/// Runs `work` so that every event it publishes has causation depth `depth`.
pub async fn with_causation_depth<F: std::future::Future>(depth: u32, work: F) -> F::Output {
    CAUSATION_DEPTH.scope(depth, work).await
}

/// Wakes this process's relay when an event is published. The event becomes visible only when
/// its transaction commits, a moment later, so a woken relay that finds nothing looks again a
/// few times soon after ([`QUICK_LOOKS`]) before it goes back to its poll. Other processes'
/// events still wait for the poll.
static PUBLISHED: Notify = Notify::const_new();

/// Looks after a wake-up, 2 ms apart and doubling (2 + 4 + … + 64 ms, about 126 ms in all).
const QUICK_LOOKS: u32 = 6;

/// Records an event in the caller's transaction: it is relayed only if that transaction commits.
#[tracing::instrument(skip_all, fields(event_type = %event_type))]
pub async fn publish(
    tx: &mut Tx,
    workspace_id: impl Into<Option<WorkspaceId>>,
    event_type: &str,
    payload: &Value,
) -> Result<EventId, sqlx::Error> {
    let id = EventId::new();
    let workspace_id: Option<WorkspaceId> = workspace_id.into();
    let depth = CAUSATION_DEPTH.try_with(|d| *d).unwrap_or(0);
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO outbox_events (id, workspace_id, event_type, payload, created_at, causation_depth) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(workspace_id)
    .bind(event_type)
    .bind(payload.to_string())
    .bind(Timestamp::now())
    .bind(i32::try_from(depth).unwrap_or(i32::MAX))
    .execute(conn)
    .await
    .map(|_| ()))?;
    PUBLISHED.notify_one();
    Ok(id)
}

/// Something that reacts to domain events, e.g. automation rules or the real-time hub.
pub trait Consumer: Send + Sync + 'static {
    /// Stable name: it keys deliveries and processed records, so renaming a consumer makes it a
    /// new one (it sees events published from then on).
    fn name(&self) -> &str;

    fn wants(&self, event_type: &str) -> bool;

    /// Handles one event. Must be idempotent (see the module docs); `job` gives the database
    /// and the attempt number.
    fn handle<'a>(
        &'a self,
        event: &'a OutboxEvent,
        job: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>>;
}

/// The registered consumers, by name.
#[derive(Clone, Default)]
pub struct Consumers {
    by_name: BTreeMap<String, Arc<dyn Consumer>>,
}

impl Consumers {
    pub fn new() -> Self {
        Self::default()
    }

    /// # Panics
    /// If a consumer with the same name is already registered (a wiring bug).
    pub fn register(&mut self, consumer: impl Consumer) -> &mut Self {
        let name = consumer.name().to_owned();
        assert!(
            !self.by_name.contains_key(&name),
            "outbox consumer `{name}` is registered twice"
        );
        self.by_name.insert(name, Arc::new(consumer));
        self
    }

    /// Registers the delivery job handler, which calls these consumers.
    pub fn install(self: &Arc<Self>, registry: &mut JobRegistry) {
        registry.register(
            DELIVERY_KIND,
            Delivery {
                consumers: self.clone(),
            },
        );
    }

    fn interested<'a>(&'a self, event_type: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.by_name
            .values()
            .filter(move |c| c.wants(event_type))
            .map(|c| c.name())
    }
}

#[derive(sqlx::FromRow)]
struct Unrelayed {
    id: EventId,
    workspace_id: Option<WorkspaceId>,
    event_type: String,
}

/// Relays up to `batch` unrelayed events; returns how many. Several processes may relay at
/// once: PostgreSQL hands each a disjoint batch (`SKIP LOCKED`), SQLite runs them one after
/// the other (`BEGIN IMMEDIATE`).
#[tracing::instrument(skip_all)]
pub async fn relay_once(db: &Db, consumers: &Consumers, batch: u32) -> Result<usize, sqlx::Error> {
    let mut tx = db.begin().await?;
    let claim = match tx.dialect() {
        Dialect::Sqlite => {
            "SELECT id, workspace_id, event_type FROM outbox_events \
             WHERE relayed_at IS NULL ORDER BY id LIMIT $1"
        }
        Dialect::Postgres => {
            "SELECT id, workspace_id, event_type FROM outbox_events \
             WHERE relayed_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        }
    };
    let events: Vec<Unrelayed> = with_tx!(&mut tx, conn => sqlx::query_as(claim)
        .bind(i64::from(batch))
        .fetch_all(conn)
        .await)?;
    let now = Timestamp::now();
    for event in &events {
        for consumer in consumers.interested(&event.event_type) {
            let delivery = DeliveryPayload {
                consumer: consumer.to_owned(),
                event_id: event.id,
            };
            let job = NewJob::new(DELIVERY_KIND, json!(delivery))
                .workspace(event.workspace_id)
                .unique_key(format!("outbox:{consumer}:{}", event.id));
            jobs::enqueue(&mut tx, job).await?;
        }
        with_tx!(&mut tx, conn => sqlx::query(
            "UPDATE outbox_events SET relayed_at = $2 WHERE id = $1",
        )
        .bind(event.id)
        .bind(now)
        .execute(conn)
        .await
        .map(|_| ()))?;
    }
    tx.commit().await?;
    Ok(events.len())
}

/// Whether any event waits to be relayed: a read, so an idle poll takes no write lock.
async fn pending(db: &Db) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = with_db!(db, pool => sqlx::query_scalar(
        "SELECT 1 FROM outbox_events WHERE relayed_at IS NULL LIMIT 1",
    )
    .fetch_optional(pool)
    .await)?;
    Ok(found.is_some())
}

/// Relays until `shutdown`, polling every `poll` (and at once when this process publishes),
/// waking the workers after each batch.
pub async fn run_relay(
    db: Db,
    consumers: Arc<Consumers>,
    jobs_wakeup: Arc<Notify>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!(consumers = ?consumers.by_name.keys().collect::<Vec<_>>(), "outbox relay started");
    let mut looks_left = 0;
    loop {
        let relayed = match pending(&db).await {
            Ok(false) => Ok(0),
            Ok(true) | Err(_) => relay_once(&db, &consumers, RELAY_BATCH).await,
        };
        match relayed {
            Ok(0) => {}
            Ok(relayed) => {
                jobs_wakeup.notify_one();
                if relayed == RELAY_BATCH as usize && !shutdown.is_cancelled() {
                    continue;
                }
            }
            Err(err) => tracing::warn!(error = %err, "outbox relay failed; will try again"),
        }
        let wait = if looks_left > 0 {
            looks_left -= 1;
            Duration::from_millis(2 << (QUICK_LOOKS - 1 - looks_left))
        } else {
            poll
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = PUBLISHED.notified() => looks_left = QUICK_LOOKS,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("outbox relay stopped");
}

/// Deletes events relayed before `before`, with their processed records. Deliveries still
/// pending for them then fail for good, so keep this far behind the retry horizon (days).
pub async fn prune_relayed(db: &Db, before: Timestamp) -> Result<u64, sqlx::Error> {
    with_db!(db, pool => sqlx::query("DELETE FROM outbox_events WHERE relayed_at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
}

#[derive(Debug, Serialize, Deserialize)]
struct DeliveryPayload {
    consumer: String,
    event_id: EventId,
}

/// The `outbox.deliver` job handler.
struct Delivery {
    consumers: Arc<Consumers>,
}

impl JobHandler for Delivery {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let delivery: DeliveryPayload = job.payload_as()?;
            let consumer = self
                .consumers
                .by_name
                .get(&delivery.consumer)
                .ok_or_else(|| {
                    JobError::permanent(anyhow::anyhow!(
                        "no outbox consumer named `{}` is registered in this process",
                        delivery.consumer
                    ))
                })?;
            if is_processed(&job.db, &delivery).await? {
                tracing::debug!(event_id = %delivery.event_id, "already processed; skipping");
                return Ok(());
            }
            let event = load_event(&job.db, delivery.event_id)
                .await?
                .ok_or_else(|| {
                    JobError::permanent(anyhow::anyhow!(
                        "outbox event {} no longer exists",
                        delivery.event_id
                    ))
                })?;
            consumer.handle(&event, job).await?;
            mark_processed(&job.db, &delivery).await?;
            Ok(())
        })
    }
}

async fn is_processed(db: &Db, delivery: &DeliveryPayload) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = with_db!(db, pool => sqlx::query_scalar(
        "SELECT 1 FROM outbox_processed WHERE consumer = $1 AND event_id = $2",
    )
    .bind(&delivery.consumer)
    .bind(delivery.event_id)
    .fetch_optional(pool)
    .await)?;
    Ok(found.is_some())
}

async fn mark_processed(db: &Db, delivery: &DeliveryPayload) -> Result<(), sqlx::Error> {
    with_db!(db, pool => sqlx::query(
        "INSERT INTO outbox_processed (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(&delivery.consumer)
    .bind(delivery.event_id)
    .bind(Timestamp::now())
    .execute(pool)
    .await
    .map(|_| ()))
}

async fn load_event(db: &Db, id: EventId) -> Result<Option<OutboxEvent>, sqlx::Error> {
    let row: Option<(EventId, Option<WorkspaceId>, String, String, Timestamp, i32)> = with_db!(db, pool => sqlx::query_as(
            "SELECT id, workspace_id, event_type, payload, created_at, causation_depth FROM outbox_events \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await)?;
    Ok(row.map(
        |(id, workspace_id, event_type, payload, created_at, depth)| OutboxEvent {
            id,
            workspace_id,
            event_type,
            payload: jobs::parse_payload(&payload),
            created_at,
            causation_depth: u32::try_from(depth).unwrap_or(0),
        },
    ))
}
