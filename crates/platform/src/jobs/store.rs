//! Queue operations on the state database: enqueue, lease, the lease-fenced writes and the
//! janitor. Functions that decide by the clock take `now` so tests can move time.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::{NewJob, parse_payload};
use crate::db::{Db, Dialect, Tx};
use crate::id::{JobId, WorkspaceId};
use crate::time::Timestamp;
use crate::{with_db, with_tx};

/// A job this process holds a lease on. Every write about it goes through the `lock_id`.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub id: JobId,
    pub workspace_id: Option<WorkspaceId>,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    /// This attempt's number, 1 for the first run.
    pub attempt: u32,
    /// `None` means the deployment default.
    pub max_attempts: Option<u32>,
    pub run_at: Timestamp,
    pub lock_id: Uuid,
    pub locked_until: Timestamp,
}

#[derive(sqlx::FromRow)]
struct LeasedRow {
    id: JobId,
    workspace_id: Option<WorkspaceId>,
    queue: String,
    kind: String,
    payload: String,
    priority: i32,
    attempts: i32,
    max_attempts: Option<i32>,
    run_at: Timestamp,
    lock_id: Uuid,
    locked_until: Timestamp,
}

const INSERT_JOB: &str = "INSERT INTO jobs (id, workspace_id, queue, kind, payload, status, \
     priority, attempts, max_attempts, run_at, unique_key, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, 'queued', $6, 0, $7, $8, $9, $10, $10) \
     ON CONFLICT (unique_key) DO NOTHING RETURNING id";

/// Enqueues `job` inside the caller's transaction, so it exists exactly when the change that
/// asked for it commits. With a `unique_key` already taken, nothing is inserted and the existing
/// job's id is returned.
///
/// Workers poll, so the job starts within `jobs.poll_interval_ms`; call
/// `state.jobs_wakeup.notify_one()` after the commit to start it at once.
#[tracing::instrument(skip_all, fields(kind = %job.kind, workspace_id = ?job.workspace_id))]
pub async fn enqueue(tx: &mut Tx, job: NewJob) -> Result<JobId, sqlx::Error> {
    let now = Timestamp::now();
    let payload = job.payload.to_string();
    let max_attempts = job.max_attempts.map(|n| n.min(i32::MAX as u32) as i32);
    let inserted: Option<JobId> = with_tx!(&mut *tx, conn => sqlx::query_scalar(INSERT_JOB)
        .bind(JobId::new())
        .bind(job.workspace_id)
        .bind(&job.queue)
        .bind(&job.kind)
        .bind(&payload)
        .bind(job.priority)
        .bind(max_attempts)
        .bind(job.run_at.unwrap_or(now))
        .bind(&job.unique_key)
        .bind(now)
        .fetch_optional(conn)
        .await)?;
    if let Some(id) = inserted {
        return Ok(id);
    }
    // Only a taken unique key makes the insert do nothing. On PostgreSQL a concurrent insert of
    // the same key made ours wait for its commit, so the row is visible to this statement.
    let key = job.unique_key.unwrap_or_default();
    with_tx!(&mut *tx, conn => sqlx::query_scalar("SELECT id FROM jobs WHERE unique_key = $1")
        .bind(&key)
        .fetch_one(conn)
        .await)
}

/// [`enqueue`] in a transaction of its own, for callers with nothing else to commit.
pub async fn enqueue_on(db: &Db, job: NewJob) -> Result<JobId, sqlx::Error> {
    let mut tx = db.begin().await?;
    let id = enqueue(&mut tx, job).await?;
    tx.commit().await?;
    Ok(id)
}

/// The lease statement. Due jobs are numbered within their workspace (`rn`), and a workspace
/// may take `rn` up to its free running slots; taking rows in `rn` order interleaves workspaces,
/// so a workspace with a backlog of thousands cannot starve one with a single job. System jobs
/// (no workspace) have no per-workspace limit. The window runs over every due row of the queues,
/// which is fine for the backlogs we expect (thousands) and the first thing to revisit if a
/// backlog reaches millions.
macro_rules! lease_sql {
    ($queues:literal) => {
        concat!(
            "WITH running AS ( \
                SELECT workspace_id, COUNT(*) AS n FROM jobs \
                WHERE status = 'running' AND workspace_id IS NOT NULL \
                GROUP BY workspace_id \
             ), ready AS ( \
                SELECT id, workspace_id, priority, run_at, \
                       ROW_NUMBER() OVER ( \
                           PARTITION BY workspace_id ORDER BY priority DESC, run_at, id \
                       ) AS rn \
                FROM jobs \
                WHERE status = 'queued' AND run_at <= $1 AND queue IN (",
            $queues,
            ") ), picked AS ( \
                SELECT ready.id FROM ready \
                LEFT JOIN running ON running.workspace_id = ready.workspace_id \
                WHERE ready.workspace_id IS NULL OR ready.rn + COALESCE(running.n, 0) <= $3 \
                ORDER BY ready.priority DESC, ready.rn, ready.run_at, ready.id \
                LIMIT $4 \
             ) \
             UPDATE jobs SET status = 'running', attempts = attempts + 1, lock_id = $5, \
                locked_until = $6, heartbeat_at = $1, updated_at = $1 \
             WHERE status = 'queued' AND id IN (SELECT id FROM picked) \
             RETURNING id, workspace_id, queue, kind, payload, priority, attempts, max_attempts, \
                run_at, lock_id, locked_until"
        )
    };
}
const LEASE_SQLITE: &str = lease_sql!("SELECT value FROM json_each($2)");
const LEASE_POSTGRES: &str = lease_sql!("SELECT jsonb_array_elements_text($2::jsonb)");

/// Key of the PostgreSQL advisory lock that serializes leasing (see [`lease`]).
const LEASE_LOCK_KEY: i64 = 0x5357_594a_4f42_5301;

/// Leases up to `limit` due jobs from `queues` for `lease_for`, in one statement.
///
/// On SQLite the statement runs under the database's single write lock. On PostgreSQL, leasers
/// take a transaction-scoped advisory lock first: two concurrent leases would otherwise both
/// count a workspace's running jobs before either commits and together exceed its limit
/// (`SKIP LOCKED` cannot help, as it is not allowed next to the window function that makes the
/// lease fair). The statement is a few milliseconds, so serializing it costs little; the
/// `status = 'queued'` re-check on the updated rows keeps a double lease impossible regardless.
#[tracing::instrument(skip_all, fields(limit))]
pub async fn lease(
    db: &Db,
    queues: &[String],
    limit: u32,
    lease_for: Duration,
    per_workspace_limit: u32,
    now: Timestamp,
) -> Result<Vec<LeasedJob>, sqlx::Error> {
    if limit == 0 || queues.is_empty() {
        return Ok(Vec::new());
    }
    let queues_json = Value::from(queues.to_vec()).to_string();
    let lock_id = Uuid::from_u128(rand::random());
    let mut tx = db.begin().await?;
    let sql = match tx.dialect() {
        Dialect::Sqlite => LEASE_SQLITE,
        Dialect::Postgres => LEASE_POSTGRES,
    };
    if let Tx::Postgres(conn) = &mut tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LEASE_LOCK_KEY)
            .execute(&mut **conn)
            .await?;
    }
    let rows: Vec<LeasedRow> = with_tx!(&mut tx, conn => sqlx::query_as(sql)
        .bind(now)
        .bind(&queues_json)
        .bind(i64::from(per_workspace_limit))
        .bind(i64::from(limit))
        .bind(lock_id)
        .bind(now + lease_for)
        .fetch_all(conn)
        .await)?;
    tx.commit().await?;
    let mut jobs: Vec<LeasedJob> = rows
        .into_iter()
        .map(|r| LeasedJob {
            id: r.id,
            workspace_id: r.workspace_id,
            queue: r.queue,
            kind: r.kind,
            payload: parse_payload(&r.payload),
            priority: r.priority,
            attempt: r.attempts.max(1) as u32,
            max_attempts: r.max_attempts.map(|n| n.max(1) as u32),
            run_at: r.run_at,
            lock_id: r.lock_id,
            locked_until: r.locked_until,
        })
        .collect();
    // RETURNING has no order; hand jobs out in dispatch order.
    jobs.sort_by(|a, b| (b.priority, a.run_at, a.id).cmp(&(a.priority, b.run_at, b.id)));
    Ok(jobs)
}

/// Marks a leased job succeeded. `false`: the lease was lost (expired and reclaimed) and the
/// outcome was not recorded.
pub async fn complete(db: &Db, job: &LeasedJob) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now();
    fenced(
        db,
        "UPDATE jobs SET status = 'succeeded', lock_id = NULL, locked_until = NULL, \
         finished_at = $3, updated_at = $3 \
         WHERE id = $1 AND lock_id = $2 AND status = 'running'",
        job,
        now,
    )
    .await
}

/// Records a failed attempt: back to `queued` at `retry_at`, or `dead` when `retry_at` is `None`
/// ([`super::RetryPolicy`] decides). `false`: the lease was lost.
pub async fn fail(
    db: &Db,
    job: &LeasedJob,
    error: &str,
    retry_at: Option<Timestamp>,
) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now();
    let error = truncate_error(error);
    let done = with_db!(db, pool => match retry_at {
        Some(at) => sqlx::query(
            "UPDATE jobs SET status = 'queued', run_at = $4, last_error = $3, lock_id = NULL, \
             locked_until = NULL, updated_at = $5 \
             WHERE id = $1 AND lock_id = $2 AND status = 'running'",
        )
        .bind(job.id).bind(job.lock_id).bind(error).bind(at).bind(now)
        .execute(pool).await,
        None => sqlx::query(
            "UPDATE jobs SET status = 'dead', last_error = $3, lock_id = NULL, \
             locked_until = NULL, finished_at = $4, updated_at = $4 \
             WHERE id = $1 AND lock_id = $2 AND status = 'running'",
        )
        .bind(job.id).bind(job.lock_id).bind(error).bind(now)
        .execute(pool).await,
    }
    .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Extends the lease to `now + lease_for`. `false`: the lease was lost; stop working on the job.
pub async fn heartbeat(db: &Db, job: &LeasedJob, lease_for: Duration) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now();
    let done = with_db!(db, pool => sqlx::query(
        "UPDATE jobs SET heartbeat_at = $3, locked_until = $4 \
         WHERE id = $1 AND lock_id = $2 AND status = 'running'",
    )
    .bind(job.id).bind(job.lock_id).bind(now).bind(now + lease_for)
    .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Gives a job back unfinished (shutdown): queued again at once, and the attempt not counted.
pub async fn release(db: &Db, job: &LeasedJob) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now();
    fenced(
        db,
        "UPDATE jobs SET status = 'queued', attempts = attempts - 1, run_at = $3, lock_id = NULL, \
         locked_until = NULL, updated_at = $3 \
         WHERE id = $1 AND lock_id = $2 AND status = 'running'",
        job,
        now,
    )
    .await
}

async fn fenced(
    db: &Db,
    sql: &'static str,
    job: &LeasedJob,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let done = with_db!(db, pool => sqlx::query(sql)
        .bind(job.id).bind(job.lock_id).bind(now)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// What one janitor pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub requeued: u64,
    pub dead: u64,
}

pub const LEASE_EXPIRED_ERROR: &str =
    "lease expired: the worker stopped heartbeating (crashed, stalled or lost the database)";

/// The janitor: jobs whose lease expired before `now` go back to `queued` (due at once), or to
/// `dead` when they have used their attempts. Their old lock id is cleared, so the lost worker's
/// later writes are refused. Safe to run from every process at once.
#[tracing::instrument(skip_all)]
pub async fn reclaim_expired(
    db: &Db,
    now: Timestamp,
    default_max_attempts: u32,
) -> Result<Reclaimed, sqlx::Error> {
    let statuses: Vec<String> = with_db!(db, pool => sqlx::query_scalar(
        "UPDATE jobs SET \
           status = CASE WHEN attempts >= COALESCE(max_attempts, $2) THEN 'dead' ELSE 'queued' END, \
           finished_at = CASE WHEN attempts >= COALESCE(max_attempts, $2) THEN $1 END, \
           last_error = $3, lock_id = NULL, locked_until = NULL, run_at = $1, updated_at = $1 \
         WHERE status = 'running' AND locked_until < $1 \
         RETURNING status",
    )
    .bind(now)
    .bind(default_max_attempts.min(i32::MAX as u32) as i32)
    .bind(LEASE_EXPIRED_ERROR)
    .fetch_all(pool)
    .await)?;
    let dead = statuses.iter().filter(|s| *s == "dead").count() as u64;
    let reclaimed = Reclaimed {
        requeued: statuses.len() as u64 - dead,
        dead,
    };
    if statuses.is_empty() {
        tracing::debug!("no expired leases");
    } else {
        tracing::warn!(
            requeued = reclaimed.requeued,
            dead = reclaimed.dead,
            "reclaimed expired job leases"
        );
    }
    Ok(reclaimed)
}

/// Deletes succeeded and cancelled jobs finished before `before`; dead jobs stay for people to
/// inspect and replay. Pruning also frees their unique keys, so keep it well behind any window
/// in which the same key could be enqueued again (cron slots and outbox deliveries never are).
pub async fn prune_finished(db: &Db, before: Timestamp) -> Result<u64, sqlx::Error> {
    with_db!(db, pool => sqlx::query(
        "DELETE FROM jobs WHERE status IN ('succeeded', 'cancelled') AND finished_at < $1",
    )
    .bind(before)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
}

/// Errors can be whole response bodies; keep the row small.
fn truncate_error(error: &str) -> &str {
    const MAX: usize = 4000;
    if error.len() <= MAX {
        return error;
    }
    let mut end = MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_sql_differs_only_in_the_queue_list() {
        assert!(LEASE_SQLITE.contains("json_each($2)"));
        assert!(LEASE_POSTGRES.contains("jsonb_array_elements_text($2::jsonb)"));
        assert_eq!(
            LEASE_SQLITE.replace("SELECT value FROM json_each($2)", "Q"),
            LEASE_POSTGRES.replace("SELECT jsonb_array_elements_text($2::jsonb)", "Q"),
        );
    }

    #[test]
    fn errors_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(3000);
        let cut = truncate_error(&long);
        assert!(cut.len() <= 4000 && cut.len() >= 3998);
        assert_eq!(truncate_error("short"), "short");
    }
}
