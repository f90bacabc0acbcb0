//! The worker runtime: leases due jobs, runs up to `jobs.concurrency` of them at once with a
//! heartbeat each, records outcomes through the lease, and runs the janitor now and then.
//!
//! Shutdown: when the token is cancelled the worker stops leasing, lets running jobs finish for
//! a grace period, then aborts the rest and releases their leases so another process picks them
//! up at once (an aborted job may have done part of its work; handlers are idempotent).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::DEFAULT_QUEUE;
use super::handler::{JobContext, JobError, JobHandler, JobRegistry};
use super::retry::RetryPolicy;
use super::store::{self, LeasedJob};
use crate::config::JobsConfig;
use crate::db::Db;
use crate::time::Timestamp;

/// Runs jobs from some queues until cancelled. One per process is the norm.
pub struct Worker {
    runner: Arc<Runner>,
    config: JobsConfig,
    queues: Vec<String>,
    wakeup: Arc<Notify>,
    shutdown_grace: Duration,
}

/// What a running job needs, shared by the job tasks.
struct Runner {
    db: Db,
    registry: Arc<JobRegistry>,
    policy: RetryPolicy,
    lease_for: Duration,
}

impl Worker {
    /// A worker on the default queue, with its own wake-up signal and a 30 s shutdown grace.
    pub fn new(db: Db, registry: Arc<JobRegistry>, config: JobsConfig) -> Self {
        let runner = Runner {
            db,
            registry,
            policy: RetryPolicy::from_config(&config),
            lease_for: Duration::from_secs(config.lease_seconds.max(2)),
        };
        Self {
            runner: Arc::new(runner),
            config,
            queues: vec![DEFAULT_QUEUE.to_owned()],
            wakeup: Arc::new(Notify::new()),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    pub fn queues<S: Into<String>>(mut self, queues: impl IntoIterator<Item = S>) -> Self {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Wake when this is notified (pass `state.jobs_wakeup`), besides polling.
    pub fn wakeup(mut self, wakeup: Arc<Notify>) -> Self {
        self.wakeup = wakeup;
        self
    }

    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency.max(1)
    }

    async fn lease(&self, limit: usize) -> Result<Vec<LeasedJob>, sqlx::Error> {
        store::lease(
            &self.runner.db,
            &self.queues,
            limit.min(u32::MAX as usize) as u32,
            self.runner.lease_for,
            self.config.per_workspace_concurrency.max(1),
            Timestamp::now(),
        )
        .await
    }

    /// Leases one batch and runs it to the end; returns how many jobs ran. For tests and
    /// one-shot tooling; servers use [`Worker::run`].
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        let jobs = self.lease(self.concurrency()).await?;
        let ran = jobs.len();
        futures::future::join_all(jobs.into_iter().map(|job| self.runner.execute(job))).await;
        Ok(ran)
    }

    /// Polls and runs jobs until `shutdown` is cancelled, then drains (see the module docs).
    /// Database errors are logged and retried; this only returns on shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let janitor_every = self.runner.lease_for / 2;
        let mut next_janitor = Instant::now();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut leases: HashMap<tokio::task::Id, LeasedJob> = HashMap::new();
        tracing::info!(queues = ?self.queues, concurrency = self.concurrency(), "job worker started");

        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                reap(done, &mut leases);
            }
            if shutdown.is_cancelled() {
                break;
            }
            if Instant::now() >= next_janitor {
                next_janitor = Instant::now() + janitor_every;
                let db = &self.runner.db;
                let default_max = self.runner.policy.default_max_attempts;
                if let Err(err) = store::reclaim_expired(db, Timestamp::now(), default_max).await {
                    tracing::warn!(error = %err, "job janitor failed; will try again");
                }
            }
            let free = self.concurrency().saturating_sub(tasks.len());
            if free > 0 {
                match self.lease(free).await {
                    Ok(jobs) => {
                        let full = jobs.len() == free;
                        for job in jobs {
                            let runner = self.runner.clone();
                            let leased = job.clone();
                            let handle = tasks.spawn(async move { runner.execute(leased).await });
                            leases.insert(handle.id(), job);
                        }
                        // A full batch suggests more are due: lease again without waiting.
                        if full {
                            continue;
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "leasing jobs failed; will try again"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    reap(done, &mut leases);
                }
            }
        }
        self.drain(tasks, leases).await;
        tracing::info!("job worker stopped");
    }

    async fn drain(&self, mut tasks: JoinSet<()>, mut leases: HashMap<tokio::task::Id, LeasedJob>) {
        if tasks.is_empty() {
            return;
        }
        tracing::info!(running = tasks.len(), grace = ?self.shutdown_grace, "waiting for running jobs");
        let deadline = tokio::time::sleep(self.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = tasks.join_next_with_id() => match done {
                    Some(done) => reap(done, &mut leases),
                    None => return,
                },
                _ = &mut deadline => break,
            }
        }
        tasks.abort_all();
        while let Some(done) = tasks.join_next_with_id().await {
            reap(done, &mut leases);
        }
        // What is left was aborted mid-run; the write is fenced, so a job that did finish
        // before the abort landed is left alone.
        for job in leases.into_values() {
            match store::release(&self.runner.db, &job).await {
                Ok(released) => {
                    tracing::info!(job_id = %job.id, released, "released unfinished job")
                }
                Err(err) => tracing::warn!(job_id = %job.id, error = %err,
                    "could not release job; the janitor requeues it when its lease expires"),
            }
        }
    }
}

/// Forgets a finished task's lease. An aborted task keeps its entry, to be released.
fn reap(
    done: Result<(tokio::task::Id, ()), JoinError>,
    leases: &mut HashMap<tokio::task::Id, LeasedJob>,
) {
    match done {
        Ok((id, ())) => {
            leases.remove(&id);
        }
        Err(err) if err.is_cancelled() => {}
        Err(err) => {
            // Handler panics are caught inside the task; this is a bug in the runner itself.
            tracing::error!(error = %err, "job task failed; the janitor requeues its job");
            leases.remove(&err.id());
        }
    }
}

impl Runner {
    async fn execute(&self, job: LeasedJob) {
        let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind,
            workspace_id = ?job.workspace_id, attempt = job.attempt);
        self.execute_inner(job).instrument(span).await
    }

    async fn execute_inner(&self, job: LeasedJob) {
        let started = Instant::now();
        let result = match self.registry.handler(&job.kind) {
            // Dead at once with a clear error rather than retried: a missing handler is a
            // deploy or typo problem; replay the job through the API once it is fixed.
            None => Err(JobError::permanent(anyhow::anyhow!(
                "unknown job kind `{}`: no handler is registered for it in this process",
                job.kind
            ))),
            Some(handler) => self.run_handler(&*handler, &job).await,
        };
        let (outcome, recorded) = match &result {
            Ok(()) => (
                "succeeded",
                with_retries(|| store::complete(&self.db, &job)).await,
            ),
            Err(err) => {
                let retry_at = self.policy.next_run(&job, err, Timestamp::now());
                let message = err.message();
                match retry_at {
                    Some(at) => {
                        tracing::warn!(error = %message, retry_at = %at.to_rfc3339(), "job failed; will retry")
                    }
                    None => tracing::error!(error = %message, "job failed for good; it is dead"),
                }
                let outcome = if retry_at.is_some() {
                    "retried"
                } else {
                    "dead"
                };
                (
                    outcome,
                    with_retries(|| store::fail(&self.db, &job, &message, retry_at)).await,
                )
            }
        };
        let outcome = match recorded {
            Ok(true) => outcome,
            Ok(false) => {
                tracing::warn!("the job's lease was lost before its outcome was recorded");
                "lease_lost"
            }
            Err(err) => {
                tracing::error!(error = %err,
                    "could not record the job's outcome; it runs again once its lease expires");
                "unrecorded"
            }
        };
        metrics::counter!("switchyard_jobs_finished_total", "kind" => job.kind.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("switchyard_job_duration_seconds", "kind" => job.kind.clone())
            .record(started.elapsed().as_secs_f64());
    }

    /// Runs the handler with a heartbeat beside it, in the same task so an abort stops both.
    async fn run_handler(&self, handler: &dyn JobHandler, job: &LeasedJob) -> Result<(), JobError> {
        let ctx = JobContext {
            id: job.id,
            workspace_id: job.workspace_id,
            kind: job.kind.clone(),
            queue: job.queue.clone(),
            payload: job.payload.clone(),
            attempt: job.attempt,
            max_attempts: self.policy.max_attempts(job),
            run_at: job.run_at,
            db: self.db.clone(),
            lease_lost: CancellationToken::new(),
        };
        let heartbeat = async {
            let every = self.lease_for / 3;
            loop {
                tokio::time::sleep(every).await;
                match store::heartbeat(&self.db, job, self.lease_for).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("lost the job's lease; telling the handler to stop");
                        ctx.lease_lost.cancel();
                        return;
                    }
                    // The lease is still good until `locked_until`; try again next beat.
                    Err(err) => tracing::warn!(error = %err, "job heartbeat failed"),
                }
            }
        };
        let run = AssertUnwindSafe(handler.run(&ctx)).catch_unwind();
        tokio::pin!(run, heartbeat);
        let mut beating = true;
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                () = &mut heartbeat, if beating => beating = false,
            }
        };
        result.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            Err(JobError::retry(anyhow::anyhow!(
                "job handler panicked: {what}"
            )))
        })
    }
}

/// Recording an outcome is worth a few quick retries: giving up means running the job again.
async fn with_retries<T, F, Fut>(mut write: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..3 {
        match write().await {
            Ok(value) => return Ok(value),
            Err(err) => {
                tracing::warn!(error = %err, "writing a job outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
    write().await
}
