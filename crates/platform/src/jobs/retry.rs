//! When a failed job runs again: exponential backoff with full jitter, up to its attempts.
//!
//! Full jitter (a uniform delay between zero and the exponential cap) spreads retries of jobs
//! that failed together — a destination that was down for everyone — instead of bringing them
//! back in one burst.

use std::time::Duration;

use rand::Rng;

use super::handler::{Failure, JobError};
use super::store::LeasedJob;
use crate::config::JobsConfig;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// For jobs enqueued without their own `max_attempts`.
    pub default_max_attempts: u32,
}

impl RetryPolicy {
    pub fn from_config(config: &JobsConfig) -> Self {
        Self {
            base: Duration::from_millis(config.backoff_base_ms),
            max: Duration::from_secs(config.backoff_max_seconds),
            default_max_attempts: config.max_attempts.max(1),
        }
    }

    /// The longest delay after failed attempt number `attempt` (1-based): `base · 2^(attempt-1)`,
    /// at most `max`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A delay drawn uniformly from `0..=cap(attempt)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.cap(attempt).as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=cap))
    }

    pub fn max_attempts(&self, job: &LeasedJob) -> u32 {
        job.max_attempts.unwrap_or(self.default_max_attempts)
    }

    /// When `job` runs again after failing with `error`, or `None` if it is dead: a permanent
    /// failure, or the last allowed attempt. A delay the handler asked for wins over backoff.
    pub fn next_run(&self, job: &LeasedJob, error: &JobError, now: Timestamp) -> Option<Timestamp> {
        if job.attempt >= self.max_attempts(job) {
            return None;
        }
        match error.failure() {
            Failure::Permanent => None,
            Failure::Retry { after: Some(delay) } => Some(now + delay),
            Failure::Retry { after: None } => Some(now + self.backoff(job.attempt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::JobId;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            default_max_attempts: 3,
        }
    }

    fn job(attempt: u32) -> LeasedJob {
        LeasedJob {
            id: JobId::new(),
            workspace_id: None,
            queue: "default".into(),
            kind: "k".into(),
            payload: serde_json::Value::Null,
            priority: 0,
            attempt,
            max_attempts: None,
            run_at: Timestamp::now(),
            lock_id: uuid::Uuid::nil(),
            locked_until: Timestamp::now(),
        }
    }

    #[test]
    fn cap_doubles_then_saturates() {
        let p = policy();
        assert_eq!(p.cap(1), Duration::from_millis(100));
        assert_eq!(p.cap(2), Duration::from_millis(200));
        assert_eq!(p.cap(4), Duration::from_millis(800));
        assert_eq!(p.cap(5), Duration::from_secs(1));
        assert_eq!(p.cap(500), Duration::from_secs(1));
        for attempt in 1..10 {
            assert!(p.backoff(attempt) <= p.cap(attempt));
        }
    }

    #[test]
    fn dead_after_last_attempt_or_permanent_failure() {
        let p = policy();
        let now = Timestamp::now();
        let retry = JobError::retry(anyhow::anyhow!("flaky"));
        let at = p.next_run(&job(1), &retry, now).expect("retried");
        assert!(at >= now && at <= now + Duration::from_millis(100));
        assert!(p.next_run(&job(3), &retry, now).is_none());
        let permanent = JobError::permanent(anyhow::anyhow!("bad payload"));
        assert!(p.next_run(&job(1), &permanent, now).is_none());
        let later = JobError::retry_after(anyhow::anyhow!("429"), Duration::from_secs(30));
        assert_eq!(
            p.next_run(&job(1), &later, now),
            Some(now + Duration::from_secs(30))
        );
        let mut own = job(3);
        own.max_attempts = Some(5);
        assert!(p.next_run(&own, &retry, now).is_some());
    }
}
