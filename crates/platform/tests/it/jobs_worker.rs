//! The worker runtime against a real database: the race test (several workers, every job once,
//! never concurrently, per-workspace limit kept), heartbeats, clear failures, shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::config::JobsConfig;
use platform::db::Db;
use platform::id::{JobId, WorkspaceId};
use platform::jobs::{JobError, JobRegistry, NewJob, Worker, enqueue, enqueue_on};
use platform::with_db;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestDb, backend_tests, count, eventually, jobs_config};

backend_tests!(
    race_runs_every_job_exactly_once,
    worker_heartbeats_and_fails_clearly,
    shutdown_releases_unfinished_jobs,
);

#[derive(Default)]
struct RaceLog {
    running: HashSet<JobId>,
    runs: HashMap<JobId, u32>,
    overlaps: u32,
    per_workspace: HashMap<WorkspaceId, u32>,
    max_per_workspace: u32,
}

async fn race_runs_every_job_exactly_once(t: &TestDb) {
    const JOBS: usize = 300;
    const LIMIT: u32 = 3;
    let workspaces: Vec<WorkspaceId> = (0..5).map(|_| WorkspaceId::new()).collect();
    let job = move |i: usize| {
        let workspace = (!i.is_multiple_of(10)).then(|| workspaces[i % 5]);
        // Mixed priorities, so jobs enqueued mid-race jump ahead of the backlog.
        NewJob::new("race", json!({ "i": i }))
            .workspace(workspace)
            .priority((i % 7) as i32)
    };
    let mut tx = t.db.begin().await.unwrap();
    for i in 0..JOBS / 2 {
        enqueue(&mut tx, job(i)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let log = Arc::new(Mutex::new(RaceLog::default()));
    let mut registry = JobRegistry::new();
    let handler_log = log.clone();
    registry.register_fn("race", move |job| {
        let log = handler_log.clone();
        async move {
            {
                let mut l = log.lock().unwrap();
                if !l.running.insert(job.id) {
                    l.overlaps += 1;
                }
                *l.runs.entry(job.id).or_default() += 1;
                if let Some(ws) = job.workspace_id {
                    let running = l.per_workspace.entry(ws).or_default();
                    *running += 1;
                    let running = *running;
                    l.max_per_workspace = l.max_per_workspace.max(running);
                }
            }
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 5)).await;
            let mut l = log.lock().unwrap();
            l.running.remove(&job.id);
            if let Some(ws) = job.workspace_id {
                *l.per_workspace.entry(ws).or_default() -= 1;
            }
            Ok(())
        }
    });
    let registry = Arc::new(registry);
    let config = JobsConfig {
        per_workspace_concurrency: LIMIT,
        ..jobs_config()
    };
    // Four workers on four pools: four processes sharing one database.
    let shutdown = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let worker = Worker::new(t.open_another().await, registry.clone(), config.clone());
        workers.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    // The other half arrives while the workers run, as it would in production.
    let producer_db = t.open_another().await;
    let producer = tokio::spawn(async move {
        for i in JOBS / 2..JOBS {
            enqueue_on(&producer_db, job(i)).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    producer.await.unwrap();
    eventually(
        Duration::from_secs(120),
        "every race job to succeed",
        || async {
            count(
                &t.db,
                "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
            )
            .await
                == JOBS as i64
        },
    )
    .await;
    shutdown.cancel();
    for worker in workers {
        worker.await.unwrap();
    }

    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM jobs WHERE attempts <> 1").await,
        0
    );
    let l = log.lock().unwrap();
    assert_eq!(l.overlaps, 0, "a job ran twice at the same time");
    assert_eq!(l.runs.len(), JOBS);
    let repeated: Vec<_> = l.runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "jobs ran more than once: {repeated:?}");
    assert!(
        l.max_per_workspace <= LIMIT,
        "{} > {LIMIT} running in one workspace",
        l.max_per_workspace
    );
}

/// (status, attempts, last_error) of a job.
async fn state(db: &Db, id: JobId) -> (String, i32, Option<String>) {
    with_db!(db, pool => sqlx::query_as("SELECT status, attempts, last_error FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await)
    .unwrap()
}

#[derive(serde::Deserialize)]
struct Typed {
    #[allow(dead_code)]
    contact_id: String,
}

async fn worker_heartbeats_and_fails_clearly(t: &TestDb) {
    let mut registry = JobRegistry::new();
    // Longer than the 2 s lease: only heartbeats keep it.
    registry.register_fn("slow", |job| async move {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(!job.lease_lost.is_cancelled());
        Ok(())
    });
    registry.register_fn("flaky", |job| async move {
        if job.attempt == 1 {
            panic!("first attempt blows up");
        }
        Ok(())
    });
    registry.register_fn("typed", |job| async move {
        let _typed: Typed = job.payload_as()?;
        Ok::<(), JobError>(())
    });
    let config = JobsConfig {
        lease_seconds: 2,
        ..jobs_config()
    };
    let wakeup = Arc::new(Notify::new());
    let worker = Worker::new(t.db.clone(), Arc::new(registry), config).wakeup(wakeup.clone());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let slow = enqueue_on(&t.db, NewJob::new("slow", json!({})))
        .await
        .unwrap();
    let flaky = enqueue_on(&t.db, NewJob::new("flaky", json!({})))
        .await
        .unwrap();
    let typed = enqueue_on(&t.db, NewJob::new("typed", json!({ "contact": 1 })))
        .await
        .unwrap();
    let mystery = enqueue_on(&t.db, NewJob::new("mystery", json!({})))
        .await
        .unwrap();
    wakeup.notify_one();
    eventually(Duration::from_secs(30), "jobs to finish", || async {
        count(&t.db, "SELECT COUNT(*) FROM jobs WHERE finished_at IS NULL").await == 0
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();

    assert_eq!(state(&t.db, slow).await, ("succeeded".into(), 1, None));
    let (status, attempts, error) = state(&t.db, flaky).await;
    assert_eq!((status.as_str(), attempts), ("succeeded", 2));
    assert!(
        error
            .unwrap()
            .contains("job handler panicked: first attempt blows up")
    );
    let (status, attempts, error) = state(&t.db, typed).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("dead", 1),
        "a bad payload is permanent"
    );
    assert!(error.unwrap().starts_with("invalid payload for `typed`"));
    let (status, attempts, error) = state(&t.db, mystery).await;
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    assert_eq!(
        error.as_deref(),
        Some("unknown job kind `mystery`: no handler is registered for it in this process")
    );
}

async fn shutdown_releases_unfinished_jobs(t: &TestDb) {
    let mut registry = JobRegistry::new();
    registry.register_fn("brief", |_job| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    });
    registry.register_fn("endless", |_job| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    let brief = enqueue_on(&t.db, NewJob::new("brief", json!({})))
        .await
        .unwrap();
    let endless = enqueue_on(&t.db, NewJob::new("endless", json!({})))
        .await
        .unwrap();
    let worker = Worker::new(t.db.clone(), Arc::new(registry), jobs_config())
        .shutdown_grace(Duration::from_millis(1500));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    eventually(Duration::from_secs(10), "both jobs to start", || async {
        count(&t.db, "SELECT COUNT(*) FROM jobs WHERE status = 'running'").await == 2
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();

    assert_eq!(
        state(&t.db, brief).await.0,
        "succeeded",
        "finished within the grace period"
    );
    let (status, attempts, _) = state(&t.db, endless).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("queued", 0),
        "released, attempt not counted"
    );
    assert_eq!(
        count(&t.db, "SELECT COUNT(*) FROM jobs WHERE lock_id IS NOT NULL").await,
        0
    );
}
