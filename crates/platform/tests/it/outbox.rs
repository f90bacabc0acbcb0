//! The outbox: events exist only with their transaction, relays never duplicate deliveries,
//! and redelivery leaves an idempotent consumer's effect applied once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use platform::config::JobsConfig;
use platform::db::Db;
use platform::id::{EventId, WorkspaceId};
use platform::jobs::{JobContext, JobError, JobRegistry, Worker};
use platform::outbox::{self, Consumer, Consumers, OutboxEvent};
use platform::with_db;
use serde_json::json;

use crate::harness::{TestDb, backend_tests, count, jobs_config};

backend_tests!(
    outbox_relay_is_at_least_once_with_idempotent_consumer,
    outbox_relays_concurrently_without_duplicates,
);

#[derive(Clone, Default)]
struct Ledger {
    calls: Arc<Mutex<Vec<EventId>>>,
    /// The consumer's effect, keyed on the event id as consumers should be.
    effects: Arc<Mutex<HashSet<EventId>>>,
}

struct Recorder {
    name: &'static str,
    prefix: &'static str,
    ledger: Ledger,
}

impl Consumer for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn wants(&self, event_type: &str) -> bool {
        event_type.starts_with(self.prefix)
    }

    fn handle<'a>(
        &'a self,
        event: &'a OutboxEvent,
        job: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            self.ledger.calls.lock().unwrap().push(event.id);
            self.ledger.effects.lock().unwrap().insert(event.id);
            // Fails after its effect on the first try: the retry must not apply it twice.
            if event.payload["fail_once"] == json!(true) && job.attempt == 1 {
                return Err(JobError::retry_after(
                    anyhow::anyhow!("flaky"),
                    Duration::ZERO,
                ));
            }
            Ok(())
        })
    }
}

fn worker(db: &Db, consumers: &Arc<Consumers>) -> Worker {
    let mut registry = JobRegistry::new();
    consumers.install(&mut registry);
    let config = JobsConfig {
        concurrency: 16,
        ..jobs_config()
    };
    Worker::new(db.clone(), Arc::new(registry), config)
}

async fn run_until_idle(worker: &Worker) {
    while worker.run_once().await.unwrap() > 0 {}
}

async fn requeue_deliveries(db: &Db) {
    with_db!(db, pool => sqlx::query(
        "UPDATE jobs SET status = 'queued', finished_at = NULL WHERE kind = 'outbox.deliver'",
    )
    .execute(pool)
    .await
    .map(|_| ()))
    .unwrap();
}

async fn outbox_relay_is_at_least_once_with_idempotent_consumer(t: &TestDb) {
    let db = &t.db;
    let ws = WorkspaceId::new();
    let mut tx = db.begin().await.unwrap();
    let mut contact_events = Vec::new();
    for i in 0..3 {
        let payload = json!({ "contact": i, "fail_once": i == 1 });
        contact_events.push(
            outbox::publish(&mut tx, ws, "contact.created", &payload)
                .await
                .unwrap(),
        );
    }
    outbox::publish(&mut tx, None, "deal.won", &json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut rolled_back = db.begin().await.unwrap();
    outbox::publish(&mut rolled_back, ws, "contact.created", &json!({}))
        .await
        .unwrap();
    drop(rolled_back);

    let (crm, automation) = (Ledger::default(), Ledger::default());
    let mut consumers = Consumers::new();
    consumers.register(Recorder {
        name: "crm_sync",
        prefix: "contact.",
        ledger: crm.clone(),
    });
    consumers.register(Recorder {
        name: "automation",
        prefix: "",
        ledger: automation.clone(),
    });
    let consumers = Arc::new(consumers);

    // Two relays at once, then a replay of every event: one delivery per consumer and event.
    let (a, b) = tokio::join!(
        outbox::relay_once(db, &consumers, 100),
        outbox::relay_once(db, &consumers, 100)
    );
    assert_eq!(
        a.unwrap() + b.unwrap(),
        4,
        "the rolled-back event does not exist"
    );
    with_db!(db, pool => sqlx::query("UPDATE outbox_events SET relayed_at = NULL").execute(pool).await.map(|_| ()))
        .unwrap();
    assert_eq!(outbox::relay_once(db, &consumers, 100).await.unwrap(), 4);
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM jobs WHERE kind = 'outbox.deliver'"
        )
        .await,
        3 + 4
    );

    let worker = worker(db, &consumers);
    run_until_idle(&worker).await;
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM jobs WHERE status <> 'succeeded'").await,
        0
    );
    assert_eq!(
        crm.calls.lock().unwrap().len(),
        4,
        "three events, one retried"
    );
    assert_eq!(crm.effects.lock().unwrap().len(), 3);
    assert_eq!(
        automation.calls.lock().unwrap().len(),
        5,
        "four events, one retried"
    );
    assert_eq!(automation.effects.lock().unwrap().len(), 4);
    assert_eq!(count(db, "SELECT COUNT(*) FROM outbox_processed").await, 7);

    // Redelivery of processed events (a worker crashed after the consumer ran): skipped.
    requeue_deliveries(db).await;
    run_until_idle(&worker).await;
    assert_eq!(crm.calls.lock().unwrap().len(), 4);
    assert_eq!(automation.calls.lock().unwrap().len(), 5);

    // A crash between the effect and the processed record: called again, effect still once.
    let lost = contact_events[0];
    with_db!(db, pool => sqlx::query("DELETE FROM outbox_processed WHERE consumer = 'crm_sync' AND event_id = $1")
        .bind(lost)
        .execute(pool)
        .await
        .map(|_| ()))
    .unwrap();
    requeue_deliveries(db).await;
    run_until_idle(&worker).await;
    assert_eq!(crm.calls.lock().unwrap().len(), 5);
    assert_eq!(crm.effects.lock().unwrap().len(), 3);
    assert_eq!(count(db, "SELECT COUNT(*) FROM outbox_processed").await, 7);
}

async fn outbox_relays_concurrently_without_duplicates(t: &TestDb) {
    const EVENTS: usize = 250;
    let mut tx = t.db.begin().await.unwrap();
    for i in 0..EVENTS {
        outbox::publish(&mut tx, None, "contact.updated", &json!({ "i": i }))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mut consumers = Consumers::new();
    consumers.register(Recorder {
        name: "crm_sync",
        prefix: "contact.",
        ledger: Ledger::default(),
    });
    consumers.register(Recorder {
        name: "billing",
        prefix: "invoice.",
        ledger: Ledger::default(),
    });
    let consumers = Arc::new(consumers);

    // Three relay processes draining the same outbox; each event is claimed by exactly one.
    let mut relays = Vec::new();
    for _ in 0..3 {
        let db = t.open_another().await;
        let consumers = consumers.clone();
        relays.push(tokio::spawn(async move {
            let mut relayed = 0;
            loop {
                match outbox::relay_once(&db, &consumers, 40).await.unwrap() {
                    0 => break relayed,
                    n => relayed += n,
                }
            }
        }));
    }
    let mut total = 0;
    for relay in relays {
        total += relay.await.unwrap();
    }
    assert_eq!(total, EVENTS);
    assert_eq!(
        count(
            &t.db,
            "SELECT COUNT(*) FROM outbox_events WHERE relayed_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM jobs").await,
        EVENTS as i64,
        "billing wants none"
    );
}
