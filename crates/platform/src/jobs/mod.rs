//! The durable job queue: jobs live in the state database, are enqueued in the caller's
//! transaction, leased in batches by workers, retried with backoff and kept when dead.
//!
//! The life of a job: `queued` → (lease) `running` → `succeeded` | `queued` again (retry, after
//! a backoff) | `dead` (out of attempts, or a permanent failure; `last_error` kept). A queued job
//! can be `cancelled`; a dead or cancelled one can be retried through the API.
//!
//! Correctness rests on a few rules (STYLE habit 7):
//! - one statement leases a batch ([`store::lease`]), fair between workspaces and within each
//!   workspace's running limit;
//! - every later write (complete, fail, heartbeat, release) is fenced by the lease's `lock_id`
//!   and reports whether the lease was still held, so a worker that lost its lease cannot
//!   overwrite the outcome of the worker that took over;
//! - a janitor ([`store::reclaim_expired`]) frees jobs whose worker stopped heartbeating.
//!
//! Delivery is at-least-once: a job can run again after a crash, so handlers make their effects
//! idempotent (see `crate::outbox` for consumers).

mod admin;
mod handler;
mod retry;
pub mod routes;
pub mod store;
mod worker;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{JobId, WorkspaceId};
use crate::time::Timestamp;

pub use admin::{JobFilter, cancel_job, get_job, list_jobs, retry_job};
pub use handler::{Failure, JobContext, JobError, JobHandler, JobRegistry};
pub use retry::RetryPolicy;
pub use routes::routes;
pub use store::{LeasedJob, enqueue, enqueue_on};
pub use worker::Worker;

/// The queue a job goes to unless it names another.
pub const DEFAULT_QUEUE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Dead,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        Some(match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "dead" => JobStatus::Dead,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A job to enqueue. Build with [`NewJob::new`] and the builder methods.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    /// `None` for system jobs; workspace jobs count against the per-workspace limit.
    pub workspace_id: Option<WorkspaceId>,
    pub queue: String,
    /// Higher runs first; fairness between workspaces applies within one priority.
    pub priority: i32,
    /// Not before this instant; `None` means now.
    pub run_at: Option<Timestamp>,
    /// `None` means the deployment default (`jobs.max_attempts`).
    pub max_attempts: Option<u32>,
    /// Enqueueing a second job with the same key returns the first job's id instead. The key
    /// stays taken after the job finishes (until it is pruned), which is what makes it a
    /// dedupe key for cron slots and outbox deliveries.
    pub unique_key: Option<String>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            workspace_id: None,
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            run_at: None,
            max_attempts: None,
            unique_key: None,
        }
    }

    pub fn workspace(mut self, workspace_id: impl Into<Option<WorkspaceId>>) -> Self {
        self.workspace_id = workspace_id.into();
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    pub fn run_at(mut self, run_at: Timestamp) -> Self {
        self.run_at = Some(run_at);
        self
    }

    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts.max(1));
        self
    }

    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
}

/// A job as the API shows it. The lease's lock id stays internal.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: JobId,
    /// Absent for system jobs.
    pub workspace_id: Option<WorkspaceId>,
    pub queue: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub status: JobStatus,
    pub priority: i32,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed; absent means the deployment default.
    pub max_attempts: Option<u32>,
    /// When the job is (or was) due.
    pub run_at: Timestamp,
    /// While running: when the lease expires unless the worker heartbeats.
    pub locked_until: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    /// The error of the latest failed attempt.
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// The columns of a [`Job`], in [`JobRow`] order, for `concat!` into query texts.
macro_rules! job_columns {
    () => {
        "id, workspace_id, queue, kind, payload, status, priority, attempts, max_attempts, \
         run_at, locked_until, heartbeat_at, last_error, unique_key, created_at, updated_at, \
         finished_at"
    };
}
pub(crate) use job_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: JobId,
    workspace_id: Option<WorkspaceId>,
    queue: String,
    kind: String,
    payload: String,
    status: String,
    priority: i32,
    attempts: i32,
    max_attempts: Option<i32>,
    run_at: Timestamp,
    locked_until: Option<Timestamp>,
    heartbeat_at: Option<Timestamp>,
    last_error: Option<String>,
    unique_key: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    finished_at: Option<Timestamp>,
}

impl TryFrom<JobRow> for Job {
    type Error = anyhow::Error;

    fn try_from(row: JobRow) -> anyhow::Result<Job> {
        let status = JobStatus::parse(&row.status)
            .ok_or_else(|| anyhow::anyhow!("unknown job status `{}`", row.status))?;
        Ok(Job {
            id: row.id,
            workspace_id: row.workspace_id,
            queue: row.queue,
            kind: row.kind,
            payload: parse_payload(&row.payload),
            status,
            priority: row.priority,
            attempts: row.attempts.max(0) as u32,
            max_attempts: row.max_attempts.map(|n| n.max(1) as u32),
            run_at: row.run_at,
            locked_until: row.locked_until,
            heartbeat_at: row.heartbeat_at,
            last_error: row.last_error,
            unique_key: row.unique_key,
            created_at: row.created_at,
            updated_at: row.updated_at,
            finished_at: row.finished_at,
        })
    }
}

/// Payloads are written from a `serde_json::Value`, so they always parse; a row edited by hand
/// into invalid JSON is shown as a string rather than failing the whole list.
pub(crate) fn parse_payload(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for s in [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Dead,
            JobStatus::Cancelled,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).expect("serializable"),
                Value::String(s.as_str().into())
            );
        }
        assert_eq!(JobStatus::parse("done"), None);
    }
}
