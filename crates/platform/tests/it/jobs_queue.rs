//! The queue's store operations: enqueue, dedupe, delays, fair leasing within limits, fencing,
//! backoff to dead, the janitor.

use std::collections::HashMap;
use std::time::Duration;

use platform::db::{Db, Dialect};
use platform::id::{JobId, WorkspaceId};
use platform::jobs::store::{self, LEASE_EXPIRED_ERROR};
use platform::jobs::{JobError, LeasedJob, NewJob, RetryPolicy, enqueue, enqueue_on};
use platform::time::Timestamp;
use platform::with_db;
use serde_json::json;

use crate::harness::{TestDb, backend_tests, count, eventually, jobs_config};

backend_tests!(
    enqueue_in_rolled_back_tx_leaves_nothing,
    unique_key_dedupes,
    delayed_job_is_not_leased_early,
    lease_is_fair_across_workspaces,
    per_workspace_limit_holds,
    per_workspace_limit_holds_between_concurrent_leases,
    stale_lock_cannot_write,
    backoff_then_dead_keeps_last_error,
    janitor_reclaims_expired_leases,
);

const LEASE: Duration = Duration::from_secs(30);

fn queues() -> Vec<String> {
    vec!["default".to_owned()]
}

async fn lease(db: &Db, limit: u32, per_workspace: u32, now: Timestamp) -> Vec<LeasedJob> {
    store::lease(db, &queues(), limit, LEASE, per_workspace, now)
        .await
        .unwrap()
}

/// (status, attempts, last_error) of a job.
async fn state(db: &Db, id: JobId) -> (String, i32, Option<String>) {
    with_db!(db, pool => sqlx::query_as("SELECT status, attempts, last_error FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await)
    .unwrap()
}

async fn enqueue_in_rolled_back_tx_leaves_nothing(t: &TestDb) {
    let mut tx = t.db.begin().await.unwrap();
    enqueue(
        &mut tx,
        NewJob::new("email.send", json!({"to": "a@example.com"})),
    )
    .await
    .unwrap();
    drop(tx);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM jobs").await, 0);
    assert!(lease(&t.db, 10, 10, Timestamp::now()).await.is_empty());

    let mut tx = t.db.begin().await.unwrap();
    let id = enqueue(&mut tx, NewJob::new("email.send", json!({})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let leased = lease(&t.db, 10, 10, Timestamp::now()).await;
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    assert_eq!(leased[0].payload, json!({}));
    assert_eq!(leased[0].attempt, 1);
}

async fn unique_key_dedupes(t: &TestDb) {
    let job = || NewJob::new("report.build", json!({"n": 1})).unique_key("report:2026-11");
    let first = enqueue_on(&t.db, job()).await.unwrap();
    let mut tx = t.db.begin().await.unwrap();
    assert_eq!(
        enqueue(&mut tx, job()).await.unwrap(),
        first,
        "same key, same job"
    );
    assert_eq!(enqueue(&mut tx, job()).await.unwrap(), first);
    tx.commit().await.unwrap();
    // Finished jobs keep their key: a cron slot or outbox delivery never runs twice.
    let leased = lease(&t.db, 10, 10, Timestamp::now()).await;
    assert!(store::complete(&t.db, &leased[0]).await.unwrap());
    assert_eq!(enqueue_on(&t.db, job()).await.unwrap(), first);
    let other = enqueue_on(
        &t.db,
        NewJob::new("report.build", json!({})).unique_key("report:2026-12"),
    )
    .await
    .unwrap();
    assert_ne!(other, first);
    assert_eq!(count(&t.db, "SELECT COUNT(*) FROM jobs").await, 2);
}

async fn delayed_job_is_not_leased_early(t: &TestDb) {
    let now = Timestamp::now();
    let due = now + Duration::from_secs(3600);
    let id = enqueue_on(&t.db, NewJob::new("reminder", json!({})).run_at(due))
        .await
        .unwrap();
    assert!(lease(&t.db, 10, 10, now).await.is_empty());
    assert!(
        lease(&t.db, 10, 10, due - Duration::from_millis(1))
            .await
            .is_empty()
    );
    let leased = lease(&t.db, 10, 10, due).await;
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].id, leased[0].run_at), (id, due));
}

async fn lease_is_fair_across_workspaces(t: &TestDb) {
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    // A's backlog is older than B's jobs; plain FIFO would starve B.
    for i in 0..10 {
        enqueue_on(&t.db, NewJob::new("sync", json!({"i": i})).workspace(a))
            .await
            .unwrap();
    }
    for i in 0..2 {
        enqueue_on(&t.db, NewJob::new("sync", json!({"i": i})).workspace(b))
            .await
            .unwrap();
    }
    let leased = lease(&t.db, 4, 10, Timestamp::now()).await;
    let per: HashMap<Option<WorkspaceId>, usize> =
        leased.iter().fold(HashMap::new(), |mut m, j| {
            *m.entry(j.workspace_id).or_default() += 1;
            m
        });
    assert_eq!(per.get(&Some(a)), Some(&2), "{per:?}");
    assert_eq!(per.get(&Some(b)), Some(&2), "{per:?}");
    // Priority comes before fairness.
    let urgent = enqueue_on(
        &t.db,
        NewJob::new("sync", json!({})).workspace(a).priority(10),
    )
    .await
    .unwrap();
    assert_eq!(lease(&t.db, 1, 10, Timestamp::now()).await[0].id, urgent);
    // Other queues are left alone.
    enqueue_on(&t.db, NewJob::new("bulk", json!({})).queue("bulk"))
        .await
        .unwrap();
    let rest = lease(&t.db, 100, 100, Timestamp::now()).await;
    assert_eq!(rest.len(), 8);
    assert!(rest.iter().all(|j| j.queue == "default"));
}

async fn per_workspace_limit_holds(t: &TestDb) {
    let a = WorkspaceId::new();
    for _ in 0..10 {
        enqueue_on(&t.db, NewJob::new("sync", json!({})).workspace(a))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        enqueue_on(&t.db, NewJob::new("system.cleanup", json!({})))
            .await
            .unwrap();
    }
    let first = lease(&t.db, 100, 3, Timestamp::now()).await;
    let mine = first.iter().filter(|j| j.workspace_id == Some(a)).count();
    assert_eq!(mine, 3, "workspace limit");
    assert_eq!(first.len(), 5, "system jobs have no workspace limit");
    assert!(
        lease(&t.db, 100, 3, Timestamp::now()).await.is_empty(),
        "limit reached"
    );
    let done = first.iter().find(|j| j.workspace_id == Some(a)).unwrap();
    assert!(store::complete(&t.db, done).await.unwrap());
    let next = lease(&t.db, 100, 3, Timestamp::now()).await;
    assert_eq!(next.len(), 1, "one slot freed");
}

/// Two leases overlap while a job of higher priority arrives between their snapshots; without
/// serializing leases on PostgreSQL both would see a free slot and together exceed the limit.
/// (SQLite serializes writers itself; there the same steps simply run one after the other.)
async fn per_workspace_limit_holds_between_concurrent_leases(t: &TestDb) {
    let ws = WorkspaceId::new();
    for _ in 0..2 {
        enqueue_on(&t.db, NewJob::new("sync", json!({})).workspace(ws))
            .await
            .unwrap();
    }
    assert_eq!(
        lease(&t.db, 10, 3, Timestamp::now()).await.len(),
        2,
        "one slot left"
    );
    let older = enqueue_on(&t.db, NewJob::new("sync", json!({})).workspace(ws))
        .await
        .unwrap();

    let Db::Postgres(pool) = &t.db else {
        let first = lease(&t.db, 10, 3, Timestamp::now()).await;
        enqueue_on(
            &t.db,
            NewJob::new("sync", json!({})).workspace(ws).priority(5),
        )
        .await
        .unwrap();
        let second = lease(&t.db, 10, 3, Timestamp::now()).await;
        assert_eq!((first.len(), second.len()), (1, 0));
        assert_eq!(t.db.dialect(), Dialect::Sqlite);
        return;
    };
    // Hold a row lock on the queued job so the first lease stops mid-statement, after its
    // snapshot chose that job.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(older)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let waiting = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        n
    };
    let (db_x, db_y) = (t.open_another().await, t.open_another().await);
    let x = tokio::spawn(async move { lease(&db_x, 10, 3, Timestamp::now()).await });
    eventually(
        Duration::from_secs(10),
        "the first lease to block",
        || async { waiting().await == 1 },
    )
    .await;
    enqueue_on(
        &t.db,
        NewJob::new("sync", json!({})).workspace(ws).priority(5),
    )
    .await
    .unwrap();
    let y = tokio::spawn(async move { lease(&db_y, 10, 3, Timestamp::now()).await });
    // The second lease either waits for the first (serialized) or finishes on its own.
    eventually(
        Duration::from_secs(10),
        "the second lease to wait or finish",
        || async { waiting().await == 2 || y.is_finished() },
    )
    .await;
    blocker.rollback().await.unwrap();
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    assert_eq!(x.iter().map(|j| j.id).collect::<Vec<_>>(), [older]);
    assert!(
        y.is_empty(),
        "the second lease saw the first one's job and no free slot"
    );
    let running = count(&t.db, "SELECT COUNT(*) FROM jobs WHERE status = 'running'").await;
    assert_eq!(running, 3);
}

async fn stale_lock_cannot_write(t: &TestDb) {
    let id = enqueue_on(&t.db, NewJob::new("sync", json!({})))
        .await
        .unwrap();
    let now = Timestamp::now();
    let stale = store::lease(&t.db, &queues(), 1, Duration::from_secs(1), 10, now)
        .await
        .unwrap()
        .remove(0);
    let later = now + Duration::from_secs(5);
    let reclaimed = store::reclaim_expired(&t.db, later, 5).await.unwrap();
    assert_eq!((reclaimed.requeued, reclaimed.dead), (1, 0));
    let fresh = lease(&t.db, 1, 10, later).await.remove(0);
    assert_eq!((fresh.id, fresh.attempt), (id, 2));
    assert_ne!(fresh.lock_id, stale.lock_id);

    assert!(!store::heartbeat(&t.db, &stale, LEASE).await.unwrap());
    assert!(!store::complete(&t.db, &stale).await.unwrap());
    assert!(!store::fail(&t.db, &stale, "late", None).await.unwrap());
    assert!(!store::release(&t.db, &stale).await.unwrap());
    assert_eq!(
        state(&t.db, id).await.0,
        "running",
        "the stale worker changed nothing"
    );

    assert!(store::heartbeat(&t.db, &fresh, LEASE).await.unwrap());
    assert!(store::complete(&t.db, &fresh).await.unwrap());
    assert_eq!(state(&t.db, id).await.0, "succeeded");
    assert!(
        !store::complete(&t.db, &fresh).await.unwrap(),
        "a lease is used once"
    );
}

async fn backoff_then_dead_keeps_last_error(t: &TestDb) {
    let policy = RetryPolicy::from_config(&jobs_config());
    let id = enqueue_on(&t.db, NewJob::new("webhook.deliver", json!({})))
        .await
        .unwrap();
    let mut now = Timestamp::now();
    for attempt in 1..=3u32 {
        let job = lease(&t.db, 1, 10, now).await.remove(0);
        assert_eq!(job.attempt, attempt);
        let error = JobError::retry(anyhow::anyhow!("503 from destination (attempt {attempt})"));
        let retry_at = policy.next_run(&job, &error, now);
        if attempt < 3 {
            let at = retry_at.expect("retried");
            assert!(
                at >= now && at <= now + policy.cap(attempt),
                "full jitter within the cap"
            );
        } else {
            assert!(retry_at.is_none(), "out of attempts");
        }
        assert!(
            store::fail(&t.db, &job, &error.message(), retry_at)
                .await
                .unwrap()
        );
        now = now + Duration::from_secs(3600);
    }
    let (status, attempts, last_error) = state(&t.db, id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 3));
    assert_eq!(
        last_error.as_deref(),
        Some("503 from destination (attempt 3)")
    );
    assert!(
        lease(&t.db, 10, 10, now).await.is_empty(),
        "dead jobs stay dead"
    );

    // A permanent failure is dead at once; an asked-for delay wins over backoff.
    let bad = enqueue_on(&t.db, NewJob::new("import", json!({})))
        .await
        .unwrap();
    let slow = enqueue_on(&t.db, NewJob::new("import", json!({})).max_attempts(5))
        .await
        .unwrap();
    for job in lease(&t.db, 10, 10, now).await {
        let error = if job.id == bad {
            JobError::permanent(anyhow::anyhow!("payload is not a CSV"))
        } else {
            JobError::retry_after(anyhow::anyhow!("429"), Duration::from_secs(90))
        };
        let retry_at = policy.next_run(&job, &error, now);
        assert!(
            store::fail(&t.db, &job, &error.message(), retry_at)
                .await
                .unwrap()
        );
    }
    assert_eq!(state(&t.db, bad).await.0, "dead");
    assert!(
        lease(&t.db, 10, 10, now + Duration::from_secs(89))
            .await
            .is_empty()
    );
    assert_eq!(
        lease(&t.db, 10, 10, now + Duration::from_secs(90)).await[0].id,
        slow
    );
}

async fn janitor_reclaims_expired_leases(t: &TestDb) {
    let retryable = enqueue_on(&t.db, NewJob::new("sync", json!({})))
        .await
        .unwrap();
    let last_try = enqueue_on(&t.db, NewJob::new("sync", json!({})).max_attempts(1))
        .await
        .unwrap();
    let now = Timestamp::now();
    store::lease(&t.db, &queues(), 2, Duration::from_secs(10), 10, now)
        .await
        .unwrap();
    let healthy = enqueue_on(&t.db, NewJob::new("sync", json!({})))
        .await
        .unwrap();
    let leased_now = Timestamp::now();
    store::lease(&t.db, &queues(), 1, Duration::from_secs(60), 10, leased_now)
        .await
        .unwrap();

    let before_expiry = store::reclaim_expired(&t.db, now + Duration::from_secs(9), 3)
        .await
        .unwrap();
    assert_eq!((before_expiry.requeued, before_expiry.dead), (0, 0));
    let later = now + Duration::from_secs(11);
    let reclaimed = store::reclaim_expired(&t.db, later, 3).await.unwrap();
    assert_eq!((reclaimed.requeued, reclaimed.dead), (1, 1));

    let (status, attempts, error) = state(&t.db, retryable).await;
    assert_eq!((status.as_str(), attempts), ("queued", 1));
    assert_eq!(error.as_deref(), Some(LEASE_EXPIRED_ERROR));
    let (status, _, error) = state(&t.db, last_try).await;
    assert_eq!(status, "dead");
    assert_eq!(error.as_deref(), Some(LEASE_EXPIRED_ERROR));
    assert_eq!(
        state(&t.db, healthy).await.0,
        "running",
        "a live lease is left alone"
    );
    assert_eq!(lease(&t.db, 10, 10, later).await[0].id, retryable);
}
