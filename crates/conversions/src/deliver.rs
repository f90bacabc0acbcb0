//! Delivery: job `conversions.deliver` (queue `conversions`), one per credential and wake-up.
//!
//! A job claims the credential's due conversions in one statement (status `sending`, a claim
//! token and a lease), so two jobs never send the same conversion; every later write is fenced
//! on the claim. The batch goes out in one request; each conversion gets an attempt record.
//! - accepted → `sent`;
//! - transient (5xx, 429, timeouts) → back to `pending` with exponential backoff
//!   (`conversions.retry_base_seconds`, doubling, at most 6 h), `failed` after
//!   `conversions.max_attempts`;
//! - refused with blame (Meta's 7-day rule, Data Manager `fieldViolations`, GA4 per client) →
//!   the blamed conversions `failed`, the rest sent again at once;
//! - a 400 naming no one on a batch of several → split in halves until the culprit is alone;
//! - refused otherwise (auth, permissions) → every conversion of the batch `failed`.

use std::time::Duration;

use connect::conversions::{Conversion, Outcome, SendReport};
use futures::future::BoxFuture;
use platform::config::ConversionsConfig;
use platform::db::Db;
use platform::id::WorkspaceId;
use platform::jobs::{self, JobContext, JobError, JobHandler, JobRegistry, NewJob};
use platform::secret_box::SecretBox;
use platform::{AppState, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::credentials::{self, CredentialRow};
use crate::events::{EVENT_COLUMNS, EventRow};
use crate::{ConversionAttemptId, ConversionId, CredentialId};

pub const KIND: &str = "conversions.deliver";
pub const QUEUE: &str = "conversions";
/// How long a claim lasts before another job may take the conversions over.
const CLAIM: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    credential_id: CredentialId,
}

/// The delivery job for a credential, due at `at`.
pub(crate) fn job(workspace_id: WorkspaceId, credential_id: CredentialId, at: Timestamp) -> NewJob {
    NewJob::new(KIND, serde_json::json!(Payload { credential_id }))
        .workspace(workspace_id)
        .queue(QUEUE)
        .run_at(at)
        .max_attempts(5)
}

pub fn install(state: &AppState, registry: &mut JobRegistry) -> anyhow::Result<()> {
    let clients = crate::clients(&state.config.conversions)?;
    registry.register(
        KIND,
        Sender {
            secrets: state.secrets.clone(),
            config: state.config.conversions.clone(),
            clients,
        },
    );
    Ok(())
}

struct Sender {
    secrets: SecretBox,
    config: ConversionsConfig,
    clients: crate::Clients,
}

impl JobHandler for Sender {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.deliver(job))
    }
}

/// A fenced outcome for some conversions of the claim.
enum Verdict<'a> {
    Sent,
    Retry(Timestamp),
    Failed(&'a str),
}

impl Sender {
    async fn deliver(&self, job: &JobContext) -> Result<(), JobError> {
        let payload: Payload = job.payload_as()?;
        let Some(workspace_id) = job.workspace_id else {
            return Err(JobError::permanent(anyhow::anyhow!("no workspace")));
        };
        let scope = Scope::system(workspace_id);
        let db = &job.db;
        let credential = match credentials::get_row(db, &scope, payload.credential_id).await {
            Ok(row) => row,
            Err(err) if err.status.as_u16() == 404 => return Ok(()),
            Err(err) => return Err(JobError::retry(anyhow::anyhow!("{}", err.message))),
        };
        let platform = credential.platform().map_err(JobError::permanent)?;
        let claim = uuid::Uuid::now_v7();
        let rows = claim_due(db, &credential, claim, platform.max_batch()).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let secret = match credential.open(&self.secrets) {
            Ok(secret) => secret,
            Err(err) => {
                let ids: Vec<ConversionId> = rows.iter().map(|r| r.id).collect();
                let report = SendReport {
                    request: Value::Null,
                    status: None,
                    response: String::new(),
                    outcome: Outcome::Rejected {
                        message: err.to_string(),
                        per_event: Vec::new(),
                    },
                };
                self.settle(
                    db,
                    &credential,
                    claim,
                    &rows,
                    &ids,
                    &report,
                    &Verdict::Failed("the credential cannot be opened"),
                )
                .await?;
                return Ok(());
            }
        };
        let conversions: Vec<(EventRow, Option<Conversion>)> = rows
            .into_iter()
            .map(|r| {
                let c = serde_json::from_str(&r.payload).ok();
                (r, c)
            })
            .collect();
        let (rows, parsed): (Vec<EventRow>, Vec<Option<Conversion>>) =
            conversions.into_iter().unzip();
        let mut queue: Vec<Vec<usize>> = vec![(0..rows.len()).collect()];
        while let Some(batch) = queue.pop() {
            let (batch, unreadable): (Vec<usize>, Vec<usize>) =
                batch.into_iter().partition(|i| parsed[*i].is_some());
            if !unreadable.is_empty() {
                let ids: Vec<ConversionId> = unreadable.iter().map(|i| rows[*i].id).collect();
                let report = local_report("the stored conversion is unreadable");
                self.settle(
                    db,
                    &credential,
                    claim,
                    &rows,
                    &ids,
                    &report,
                    &Verdict::Failed("the stored conversion is unreadable"),
                )
                .await?;
            }
            if batch.is_empty() {
                continue;
            }
            let events: Vec<Conversion> = batch.iter().filter_map(|i| parsed[*i].clone()).collect();
            let report = credentials::send(&self.clients, &secret, &events, false).await;
            tracing::debug!(
                workspace_id = %workspace_id, credential_id = %credential.id,
                platform = %credential.platform, events = events.len(),
                status = ?report.status, outcome = outcome_name(&report.outcome),
                request = %report.request, response = %report.response,
                "conversion batch sent"
            );
            let ids: Vec<ConversionId> = batch.iter().map(|i| rows[*i].id).collect();
            match &report.outcome {
                Outcome::Accepted => {
                    self.settle(db, &credential, claim, &rows, &ids, &report, &Verdict::Sent)
                        .await?;
                }
                Outcome::Transient { retry_after } => {
                    // Everything still claimed goes back with the same backoff.
                    let mut ids = ids;
                    for rest in queue.drain(..) {
                        ids.extend(rest.iter().map(|i| rows[*i].id));
                    }
                    let attempts = batch
                        .iter()
                        .map(|i| rows[*i].attempts)
                        .max()
                        .unwrap_or(0)
                        .max(0) as u32
                        + 1;
                    if attempts >= self.config.max_attempts {
                        self.settle(
                            db,
                            &credential,
                            claim,
                            &rows,
                            &ids,
                            &report,
                            &Verdict::Failed("out of attempts after transient errors"),
                        )
                        .await?;
                    } else {
                        let delay = retry_after.unwrap_or_else(|| self.backoff(attempts));
                        let at = Timestamp::now() + delay;
                        self.settle(
                            db,
                            &credential,
                            claim,
                            &rows,
                            &ids,
                            &report,
                            &Verdict::Retry(at),
                        )
                        .await?;
                        jobs::enqueue_on(db, job_for(&credential, at)).await?;
                    }
                    return Ok(());
                }
                Outcome::Rejected { message, per_event } if !per_event.is_empty() => {
                    let mut blamed = Vec::new();
                    for (index, reason) in per_event {
                        if let Some(row_index) = batch.get(*index) {
                            blamed.push(*row_index);
                            let id = [rows[*row_index].id];
                            self.settle(
                                db,
                                &credential,
                                claim,
                                &rows,
                                &id,
                                &report,
                                &Verdict::Failed(reason),
                            )
                            .await?;
                        }
                    }
                    let rest: Vec<usize> = batch
                        .iter()
                        .copied()
                        .filter(|i| !blamed.contains(i))
                        .collect();
                    if !rest.is_empty() {
                        tracing::info!(rejected = blamed.len(), rest = rest.len(), %message, "conversions refused per event; sending the rest");
                        queue.push(rest);
                    }
                }
                Outcome::Rejected { message, .. } => {
                    if report.status == Some(400) && batch.len() > 1 {
                        let (a, b) = batch.split_at(batch.len() / 2);
                        queue.push(b.to_vec());
                        queue.push(a.to_vec());
                    } else {
                        let message = message.clone();
                        self.settle(
                            db,
                            &credential,
                            claim,
                            &rows,
                            &ids,
                            &report,
                            &Verdict::Failed(&message),
                        )
                        .await?;
                    }
                }
            }
        }
        // More may be due than one batch held.
        jobs::enqueue_on(db, job_for(&credential, Timestamp::now())).await?;
        Ok(())
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let base = self.config.retry_base_seconds.max(0.0);
        let seconds = base * 2f64.powi(attempts.saturating_sub(1).min(20) as i32);
        Duration::from_secs_f64(seconds).min(MAX_BACKOFF)
    }

    /// Records one attempt per conversion in `ids` and applies `verdict`, fenced on the claim.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        db: &Db,
        credential: &CredentialRow,
        claim: uuid::Uuid,
        rows: &[EventRow],
        ids: &[ConversionId],
        report: &SendReport,
        verdict: &Verdict<'_>,
    ) -> Result<(), JobError> {
        let now = Timestamp::now();
        let (outcome, error) = match verdict {
            Verdict::Sent => ("accepted", None),
            Verdict::Retry(_) => (
                "retry",
                Some("the platform is unavailable; retrying".to_owned()),
            ),
            Verdict::Failed(reason) => ("rejected", Some((*reason).to_owned())),
        };
        let request = report.request.to_string();
        let status = report.status.map(i32::from);
        let mut tx = db.begin().await?;
        for id in ids {
            let attempt = rows
                .iter()
                .find(|r| r.id == *id)
                .map(|r| r.attempts + 1)
                .unwrap_or(1);
            let (new_status, next, sent_at, failed_at) = match verdict {
                Verdict::Sent => ("sent", now, Some(now), None),
                Verdict::Retry(at) => ("pending", *at, None, None),
                Verdict::Failed(_) => ("failed", now, None, Some(now)),
            };
            let updated = with_tx!(&mut tx, conn => sqlx::query(
                "UPDATE conversion_events SET status = $3, attempts = attempts + 1, next_attempt_at = $4,
                     sent_at = $5, failed_at = $6, last_error = $7, claim = NULL, claimed_until = NULL,
                     updated_at = $8
                 WHERE workspace_id = $1 AND id = $2 AND claim = $9",
            ).bind(credential.workspace_id).bind(*id).bind(new_status).bind(next).bind(sent_at)
             .bind(failed_at).bind(&error).bind(now).bind(claim)
             .execute(conn).await.map(|r| r.rows_affected()))?;
            if updated == 0 {
                // Another job took the conversion over after our claim expired.
                continue;
            }
            with_tx!(&mut tx, conn => sqlx::query(
                "INSERT INTO conversion_attempts (id, workspace_id, conversion_id, attempt, outcome,
                     request, response_status, response, error, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            ).bind(ConversionAttemptId::new()).bind(credential.workspace_id).bind(*id).bind(attempt)
             .bind(outcome).bind(&request).bind(status).bind(&report.response).bind(&error).bind(now)
             .execute(conn).await.map(|_| ()))?;
        }
        tx.commit().await?;
        let platform = credential.platform.clone();
        metrics::counter!("conversions_delivered_total", "platform" => platform, "outcome" => outcome)
            .increment(ids.len() as u64);
        Ok(())
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accepted => "accepted",
        Outcome::Transient { .. } => "retry",
        Outcome::Rejected { .. } => "rejected",
    }
}

fn job_for(credential: &CredentialRow, at: Timestamp) -> NewJob {
    job(credential.workspace_id, credential.id, at)
}

fn local_report(message: &str) -> SendReport {
    SendReport {
        request: Value::Null,
        status: None,
        response: String::new(),
        outcome: Outcome::Rejected {
            message: message.to_owned(),
            per_event: Vec::new(),
        },
    }
}

/// Claims up to `limit` due conversions of the credential for `claim`, and reads them.
async fn claim_due(
    db: &Db,
    credential: &CredentialRow,
    claim: uuid::Uuid,
    limit: usize,
) -> Result<Vec<EventRow>, JobError> {
    let now = Timestamp::now();
    let until = now + CLAIM;
    // The outer condition repeats the inner one: on PostgreSQL a row another job claimed
    // meanwhile is re-checked after its lock and skipped.
    let due = "((status = 'pending' AND next_attempt_at <= $4) OR (status = 'sending' AND claimed_until < $4))";
    with_db!(db, pool => sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE conversion_events SET status = 'sending', claim = $5, claimed_until = $6, updated_at = $4
         WHERE id IN (SELECT id FROM conversion_events WHERE workspace_id = $1 AND credential_id = $2
                        AND {due} ORDER BY id LIMIT $3)
           AND workspace_id = $1 AND credential_id = $2 AND {due}"
    ))).bind(credential.workspace_id).bind(credential.id).bind(limit as i64).bind(now).bind(claim)
       .bind(until).execute(pool).await.map(|_| ()))?;
    let rows: Vec<EventRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM conversion_events WHERE workspace_id = $1 AND claim = $2 ORDER BY id"
    ))).bind(credential.workspace_id).bind(claim).fetch_all(pool).await)?;
    Ok(rows)
}
