//! The fan-out consumer and the delivery job (see the module docs of [`super`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use platform::config::Config;
use platform::db::{Db, Tx};
use platform::id::WorkspaceId;
use platform::jobs::{JobContext, JobError, JobHandler, JobRegistry, NewJob};
use platform::outbox::{Consumer, Consumers, OutboxEvent};
use platform::secret_box::SecretBox;
use platform::{AppState, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use super::store::{self, AttemptRecord, EndpointRow, MessageRow};
use super::{DisabledReason, EndpointId, MessageId, MessageStatus, RESPONSE_EXCERPT_BYTES};
use crate::ssrf;
use crate::standard_webhooks::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// The outbox consumer's name.
pub const CONSUMER: &str = "webhooks";
/// The delivery job's kind.
pub const JOB_KIND: &str = "webhooks.deliver";
/// The job queue deliveries run on (the worker must serve it).
pub const QUEUE: &str = "webhooks";
/// Request timeout of one attempt.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// A rate-limited delivery waits in its job up to this long; beyond, it is re-queued for later.
const MAX_IN_JOB_WAIT: Duration = Duration::from_millis(500);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Delivery settings, from the `webhooks` configuration section.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Delay before each attempt of a cycle: `[0]` before the first, `[n]` after failure `n`.
    pub schedule: Vec<Duration>,
    pub disable_after: Duration,
    pub rate_limit_per_second: u32,
    pub allow_private: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let schedule: Vec<Duration> = config
            .webhooks
            .retry_schedule_seconds
            .iter()
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 7.0 * 86400.0)))
            .collect();
        Settings {
            schedule: if schedule.is_empty() {
                vec![Duration::ZERO]
            } else {
                schedule
            },
            disable_after: Duration::from_secs(config.webhooks.disable_after_seconds.max(1)),
            rate_limit_per_second: config.webhooks.rate_limit_per_second,
            allow_private: allow_private(config),
        }
    }

    fn first_delay(&self) -> Duration {
        self.schedule.first().copied().unwrap_or_default()
    }
}

/// Whether endpoints may point at private or loopback addresses in this deployment.
pub fn allow_private(config: &Config) -> bool {
    config.webhooks.allow_private_destinations || config.tracking.allow_private_destinations
}

/// Registers the fan-out consumer and the delivery job handler.
pub fn install(
    state: &AppState,
    registry: &mut JobRegistry,
    consumers: &mut Consumers,
) -> anyhow::Result<()> {
    let settings = Settings::from_config(&state.config);
    consumers.register(FanOut {
        db: state.db.clone(),
        first_delay: settings.first_delay(),
        wakeup: Some(state.jobs_wakeup.clone()),
    });
    registry.register(
        JOB_KIND,
        Sender::new(
            state.db.clone(),
            state.secrets.clone(),
            settings,
            Some(state.jobs_wakeup.clone()),
        )?,
    );
    Ok(())
}

/// The payload of a delivery job: attempt number `attempt` (1-based, across cycles) of a
/// message in cycle `generation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AttemptJob {
    pub message_id: MessageId,
    pub generation: i32,
    pub attempt: i32,
    /// How often the rate limit pushed this attempt back (keeps job keys unique).
    #[serde(default)]
    pub deferrals: u32,
}

/// Enqueues an attempt in `tx`; unique per (message, generation, attempt, deferral).
pub(crate) async fn enqueue_attempt(
    tx: &mut Tx,
    workspace: WorkspaceId,
    job: &AttemptJob,
    run_at: Timestamp,
) -> Result<(), sqlx::Error> {
    let key = format!(
        "webhook:{}:{}:{}:{}",
        job.message_id, job.generation, job.attempt, job.deferrals
    );
    let new = NewJob::new(JOB_KIND, json!(job))
        .workspace(workspace)
        .queue(QUEUE)
        .run_at(run_at)
        .unique_key(key);
    platform::jobs::enqueue(tx, new).await.map(|_| ())
}

/// The outbox consumer: one message per matching enabled endpoint of the event's workspace.
pub struct FanOut {
    db: Db,
    first_delay: Duration,
    wakeup: Option<Arc<Notify>>,
}

impl FanOut {
    async fn fan_out(&self, event: &OutboxEvent) -> Result<(), JobError> {
        let Some(workspace) = event.workspace_id else {
            return Ok(());
        };
        let targets: Vec<EndpointId> = store::enabled_endpoints(&self.db, workspace)
            .await?
            .into_iter()
            .filter(|(_, filters)| super::filter_matches(filters, &event.event_type))
            .map(|(id, _)| id)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let body = json!({
            "type": event.event_type,
            "timestamp": event.created_at,
            "data": event.payload,
        })
        .to_string();
        let first_attempt_at = Timestamp::now() + self.first_delay;
        let mut tx = self.db.begin().await?;
        let mut created = 0;
        for endpoint in targets {
            let id = MessageId::new();
            let new = store::insert_message(
                &mut tx,
                id,
                workspace,
                endpoint,
                (event.id, &event.event_type),
                &body,
                first_attempt_at,
            )
            .await?;
            // An existing message was created with its job in the same transaction.
            if new {
                let job = AttemptJob {
                    message_id: id,
                    generation: 0,
                    attempt: 1,
                    deferrals: 0,
                };
                enqueue_attempt(&mut tx, workspace, &job, first_attempt_at).await?;
                created += 1;
            }
        }
        tx.commit().await?;
        metrics::counter!("webhook_messages_total").increment(created);
        if let Some(wakeup) = &self.wakeup {
            wakeup.notify_one();
        }
        Ok(())
    }
}

impl Consumer for FanOut {
    fn name(&self) -> &str {
        CONSUMER
    }

    /// Every domain event type can be subscribed; which endpoints want it is a per-workspace
    /// question answered in `handle`.
    fn wants(&self, _event_type: &str) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        event: &'a OutboxEvent,
        _job: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.fan_out(event))
    }
}

/// Per-endpoint rate limit (GCRA: `rate` per second, bursts up to `rate`), per process.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    next: Mutex<HashMap<EndpointId, Instant>>,
}

/// What the limiter says about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Send now.
    Now,
    /// A slot is reserved this far ahead: wait, then send.
    After(Duration),
    /// Too far ahead to wait for in the job; nothing reserved, try again after this.
    Busy(Duration),
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second,
            next: Mutex::new(HashMap::new()),
        }
    }

    pub fn reserve(&self, endpoint: EndpointId, max_wait: Duration) -> Slot {
        if self.per_second == 0 {
            return Slot::Now;
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.per_second));
        let tolerance = Duration::from_secs(1).saturating_sub(interval);
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if next.len() > 10_000 {
            next.retain(|_, t| *t > now);
        }
        let tat = next.get(&endpoint).copied().unwrap_or(now).max(now);
        let allowed_at = tat.checked_sub(tolerance).unwrap_or(now).max(now);
        let wait = allowed_at - now;
        if wait > max_wait {
            return Slot::Busy(wait);
        }
        next.insert(endpoint, tat + interval);
        if wait.is_zero() {
            Slot::Now
        } else {
            Slot::After(wait)
        }
    }
}

/// The `webhooks.deliver` job handler: one attempt of one message.
pub struct Sender {
    db: Db,
    secrets: SecretBox,
    http: reqwest::Client,
    settings: Settings,
    limiter: RateLimiter,
    wakeup: Option<Arc<Notify>>,
}

/// What came back from one attempt.
struct Outcome {
    succeeded: bool,
    response_status: Option<u16>,
    response: Option<String>,
    error: Option<String>,
    latency_ms: i64,
    /// 410: disable the endpoint.
    gone: bool,
    /// `webhook-delivery: abort-message`: stop retrying this message.
    abort: bool,
    retry_after: Option<Duration>,
}

impl Outcome {
    fn refused(error: String) -> Outcome {
        Outcome {
            succeeded: false,
            response_status: None,
            response: None,
            error: Some(error),
            latency_ms: 0,
            gone: false,
            abort: false,
            retry_after: None,
        }
    }
}

impl Sender {
    pub fn new(
        db: Db,
        secrets: SecretBox,
        settings: Settings,
        wakeup: Option<Arc<Notify>>,
    ) -> anyhow::Result<Sender> {
        let http = ssrf::client(TIMEOUT, settings.allow_private)?;
        Ok(Sender {
            db,
            secrets,
            http,
            limiter: RateLimiter::new(settings.rate_limit_per_second),
            settings,
            wakeup,
        })
    }

    async fn deliver(&self, context: &JobContext) -> Result<(), JobError> {
        let job: AttemptJob = context.payload_as()?;
        let Some((message, endpoint)) = store::delivery_target(&self.db, job.message_id).await?
        else {
            return Ok(()); // deleted with its endpoint
        };
        if message.status != MessageStatus::Pending.as_str()
            || message.generation != job.generation
            || message.attempts + 1 != job.attempt
        {
            return Ok(()); // recorded already, or superseded by a resend
        }
        if !endpoint.enabled {
            store::fail_without_attempt(&self.db, &job).await?;
            return Ok(());
        }
        match self.limiter.reserve(endpoint.id, MAX_IN_JOB_WAIT) {
            Slot::Now => {}
            Slot::After(wait) => tokio::time::sleep(wait).await,
            Slot::Busy(wait) => {
                let later = AttemptJob {
                    deferrals: job.deferrals + 1,
                    ..job.clone()
                };
                let mut tx = self.db.begin().await?;
                enqueue_attempt(
                    &mut tx,
                    message.workspace_id,
                    &later,
                    Timestamp::now() + wait,
                )
                .await?;
                tx.commit().await?;
                metrics::counter!("webhook_rate_limited_total").increment(1);
                return Ok(());
            }
        }
        let outcome = self.attempt(&message, &endpoint).await;
        self.record(&job, &message, &endpoint, outcome).await
    }

    /// Signs and sends the message once.
    async fn attempt(&self, message: &MessageRow, endpoint: &EndpointRow) -> Outcome {
        let now = Timestamp::now();
        let secrets = match endpoint.signing_secrets(&self.secrets, now) {
            Ok(secrets) => secrets,
            Err(err) => return Outcome::refused(format!("{err:#}")),
        };
        if let Err(err) = ssrf::check_url(&endpoint.url, self.settings.allow_private).await {
            return Outcome::refused(err.to_string());
        }
        let id = message.id.to_string();
        let timestamp = now.as_datetime().timestamp();
        let signature = standard_webhooks::sign(&secrets, &id, timestamp, message.body.as_bytes());
        let started = Instant::now();
        let sent = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("user-agent", "Switchyard-Webhooks/1")
            .header(HEADER_ID, &id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(message.body.clone())
            .send()
            .await;
        let elapsed = |started: Instant| started.elapsed().as_millis().min(i64::MAX as u128) as i64;
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                let mut outcome = Outcome::refused(describe(&err));
                outcome.latency_ms = elapsed(started);
                return outcome;
            }
        };
        let latency_ms = elapsed(started);
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .map(str::to_owned)
        };
        let retry_after = header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        let abort =
            header("webhook-delivery").is_some_and(|v| v.eq_ignore_ascii_case("abort-message"));
        let excerpt = read_excerpt(&mut response).await;
        let succeeded = status.is_success();
        let error = (!succeeded).then(|| {
            if status.is_redirection() {
                format!("endpoint answered {status} (redirects are not followed)")
            } else {
                format!("endpoint answered {status}")
            }
        });
        Outcome {
            succeeded,
            response_status: Some(status.as_u16()),
            response: Some(excerpt),
            error,
            latency_ms,
            gone: status.as_u16() == 410,
            abort: abort && !succeeded,
            retry_after,
        }
    }

    /// Records the attempt, schedules the next one or settles the message, and disables the
    /// endpoint when it is gone or has failed for too long: one transaction.
    async fn record(
        &self,
        job: &AttemptJob,
        message: &MessageRow,
        endpoint: &EndpointRow,
        outcome: Outcome,
    ) -> Result<(), JobError> {
        let now = Timestamp::now();
        // Attempts of this cycle so far, this one included.
        let in_cycle = (job.attempt - message.cycle_start).max(1) as usize;
        let (status, next_attempt_at) = if outcome.succeeded {
            (MessageStatus::Delivered, None)
        } else if outcome.gone || outcome.abort || in_cycle >= self.settings.schedule.len() {
            (MessageStatus::Failed, None)
        } else {
            let delay =
                self.settings.schedule[in_cycle].max(outcome.retry_after.unwrap_or_default());
            (MessageStatus::Pending, Some(now + delay))
        };
        let record = AttemptRecord {
            job,
            workspace: message.workspace_id,
            endpoint: endpoint.id,
            url: &endpoint.url,
            succeeded: outcome.succeeded,
            response_status: outcome.response_status,
            response: outcome.response,
            error: outcome.error,
            latency_ms: outcome.latency_ms,
            status,
            next_attempt_at,
        };
        let mut tx = self.db.begin().await?;
        if !store::record_attempt(&mut tx, &record, now).await? {
            return Ok(()); // another run of this job recorded it
        }
        if let Some(at) = next_attempt_at {
            let next = AttemptJob {
                message_id: job.message_id,
                generation: job.generation,
                attempt: job.attempt + 1,
                deferrals: 0,
            };
            enqueue_attempt(&mut tx, message.workspace_id, &next, at).await?;
        }
        if outcome.gone {
            store::disable(
                &mut tx,
                message.workspace_id,
                endpoint.id,
                DisabledReason::Gone,
                now,
            )
            .await?;
        } else if !outcome.succeeded
            && let Some(since) = store::failing_since(&mut tx, endpoint.id).await?
            && since <= now - self.settings.disable_after
        {
            store::disable(
                &mut tx,
                message.workspace_id,
                endpoint.id,
                DisabledReason::Failing,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        let label = if outcome.succeeded {
            "delivered"
        } else {
            "failed"
        };
        metrics::counter!("webhook_attempts_total", "outcome" => label).increment(1);
        if next_attempt_at.is_some_and(|at| at <= Timestamp::now() + Duration::from_secs(1))
            && let Some(wakeup) = &self.wakeup
        {
            wakeup.notify_one();
        }
        Ok(())
    }
}

impl JobHandler for Sender {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.deliver(job))
    }
}

/// A transport error with its causes ("error sending request: … : connection refused").
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("timed out after {} s", TIMEOUT.as_secs());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Up to [`RESPONSE_EXCERPT_BYTES`] of the response body, as text.
async fn read_excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes: Vec<u8> = Vec::new();
    while bytes.len() < RESPONSE_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(RESPONSE_EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&bytes);
    let mut end = text.len().min(RESPONSE_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_spaces_deliveries() {
        let limiter = RateLimiter::new(10);
        let endpoint = EndpointId::new();
        for _ in 0..10 {
            assert_eq!(limiter.reserve(endpoint, Duration::ZERO), Slot::Now);
        }
        // The 11th would wait ~100 ms: refused without waiting, reserved when waiting is fine.
        assert!(matches!(
            limiter.reserve(endpoint, Duration::ZERO),
            Slot::Busy(d) if d > Duration::from_millis(50) && d <= Duration::from_millis(100)
        ));
        assert!(matches!(
            limiter.reserve(endpoint, Duration::from_secs(1)),
            Slot::After(d) if d <= Duration::from_millis(100)
        ));
        assert!(matches!(
            limiter.reserve(endpoint, Duration::from_secs(1)),
            Slot::After(d) if d > Duration::from_millis(150)
        ));
        // Other endpoints have their own budget; zero means unlimited.
        assert_eq!(
            limiter.reserve(EndpointId::new(), Duration::ZERO),
            Slot::Now
        );
        let unlimited = RateLimiter::new(0);
        for _ in 0..1000 {
            assert_eq!(unlimited.reserve(endpoint, Duration::ZERO), Slot::Now);
        }
    }

    #[test]
    fn settings_follow_the_configuration() {
        let mut config = Config::default();
        let settings = Settings::from_config(&config);
        assert_eq!(settings.schedule.len(), 8);
        assert_eq!(settings.schedule[0], Duration::ZERO);
        assert_eq!(settings.schedule[2], Duration::from_secs(300));
        assert_eq!(settings.disable_after, Duration::from_secs(5 * 86400));
        assert!(!settings.allow_private);
        config.tracking.allow_private_destinations = true;
        assert!(Settings::from_config(&config).allow_private);
        config.webhooks.retry_schedule_seconds = vec![0.0, 0.25];
        assert_eq!(
            Settings::from_config(&config).schedule,
            [Duration::ZERO, Duration::from_millis(250)]
        );
    }
}
