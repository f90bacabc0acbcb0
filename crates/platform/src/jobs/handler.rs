//! What a job handler sees and returns, and the registry that maps job kinds to handlers.
//!
//! Handlers return a boxed future rather than using `async fn` in the trait, so the registry
//! can hold them as `Arc<dyn JobHandler>` without an extra macro crate.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::id::{JobId, WorkspaceId};
use crate::time::Timestamp;

/// Everything a handler gets about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: JobId,
    pub workspace_id: Option<WorkspaceId>,
    pub kind: String,
    pub queue: String,
    pub payload: Value,
    /// This attempt's number, 1 for the first run.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When the job was due (for cron jobs: the slot being fired).
    pub run_at: Timestamp,
    pub db: Db,
    /// Cancelled when this process lost the job's lease (another worker may run it now): a
    /// long handler should stop at the next safe point, its outcome will not be recorded.
    pub lease_lost: CancellationToken,
}

impl JobContext {
    /// The payload as `T`; a payload that does not fit is a permanent failure, since retrying
    /// cannot fix it.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.payload.clone()).map_err(|e| {
            JobError::permanent(anyhow::anyhow!("invalid payload for `{}`: {e}", self.kind))
        })
    }

    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// How a failed attempt should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Try again: after `after` if given, else after the policy's backoff.
    Retry { after: Option<Duration> },
    /// Retrying cannot help (bad payload, object gone, refused for good): dead at once.
    Permanent,
}

/// A failed attempt. Any error converts into a retryable one, so `?` works in handlers.
pub struct JobError {
    failure: Failure,
    error: anyhow::Error,
}

impl JobError {
    pub fn retry(error: impl Into<anyhow::Error>) -> Self {
        Self {
            failure: Failure::Retry { after: None },
            error: error.into(),
        }
    }

    /// Retry after exactly `after` (a `Retry-After` from the remote side, say).
    pub fn retry_after(error: impl Into<anyhow::Error>, after: Duration) -> Self {
        Self {
            failure: Failure::Retry { after: Some(after) },
            error: error.into(),
        }
    }

    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        Self {
            failure: Failure::Permanent,
            error: error.into(),
        }
    }

    pub fn failure(&self) -> Failure {
        self.failure
    }

    /// The error with its causes, as stored in `last_error`.
    pub fn message(&self) -> String {
        format!("{:#}", self.error)
    }
}

impl<E: Into<anyhow::Error>> From<E> for JobError {
    fn from(error: E) -> Self {
        JobError::retry(error)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("failure", &self.failure)
            .field("error", &self.message())
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Runs jobs of one kind. Effects must be idempotent: a job can run again after a crash.
pub trait JobHandler: Send + Sync + 'static {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>>;
}

/// A closure as a handler, for small jobs and tests.
struct FnHandler<F>(F);

impl<F, Fut> JobHandler for FnHandler<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin((self.0)(job.clone()))
    }
}

/// Job kind → handler. Built once at start, then shared by the workers.
#[derive(Clone, Default)]
pub struct JobRegistry {
    handlers: HashMap<String, Arc<dyn JobHandler>>,
}

impl JobRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `kind`.
    ///
    /// # Panics
    /// If `kind` already has a handler: two features claiming one kind is a wiring bug that
    /// must not reach production.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl JobHandler) -> &mut Self {
        let kind = kind.into();
        assert!(
            !self.handlers.contains_key(&kind),
            "job kind `{kind}` is registered twice"
        );
        self.handlers.insert(kind, Arc::new(handler));
        self
    }

    /// Registers a closure: `registry.register_fn("kind", |job| async move { … })`.
    pub fn register_fn<F, Fut>(&mut self, kind: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.register(kind, FnHandler(handler))
    }

    pub fn handler(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

impl fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRegistry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_error_is_retryable_and_keeps_its_causes() {
        fn parse() -> Result<u32, JobError> {
            Ok("x".parse::<u32>()?)
        }
        let err = parse().expect_err("not a number");
        assert_eq!(err.failure(), Failure::Retry { after: None });
        let wrapped = JobError::permanent(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(wrapped.message(), "outer: inner");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn duplicate_kinds_are_refused() {
        let mut registry = JobRegistry::new();
        registry.register_fn("a", |_job| async { Ok(()) });
        registry.register_fn("a", |_job| async { Ok(()) });
    }
}
