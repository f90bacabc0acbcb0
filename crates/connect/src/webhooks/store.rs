//! Webhook endpoints, messages and attempts in the state database. API functions take a
//! [`Scope`] and filter on its workspace; the `pub(crate)` system functions serve the fan-out
//! and the delivery job, which act for the workspace that owns the row they load.

use platform::db::{Db, Tx};
use platform::http::{Page, PageParams};
use platform::id::{EventId, WorkspaceId};
use platform::secret_box::SecretBox;
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};
use serde_json::json;

use super::deliver::{self, AttemptJob};
use super::{
    Attempt, AttemptId, AttemptStatus, DisabledReason, ENDPOINT_DISABLED_EVENT, Endpoint,
    EndpointId, Message, MessageId, MessageStatus, ROTATION_OVERLAP, endpoint_not_found,
    message_not_found, seal_context,
};
use crate::standard_webhooks::Secret;

#[derive(sqlx::FromRow)]
pub(crate) struct EndpointRow {
    pub id: EndpointId,
    pub url: String,
    pub description: String,
    pub event_types: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
    pub failing_since: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, enabled, \
     disabled_reason, secret_sealed, previous_secret_sealed, previous_secret_expires_at, \
     failing_since, last_success_at, last_failure_at, created_at, updated_at";

impl EndpointRow {
    pub(crate) fn filters(&self) -> Vec<String> {
        serde_json::from_str(&self.event_types).unwrap_or_default()
    }

    /// The secrets that sign now: the current one, and the previous one during its overlap.
    pub(crate) fn signing_secrets(
        &self,
        secrets: &SecretBox,
        now: Timestamp,
    ) -> anyhow::Result<Vec<Secret>> {
        let context = seal_context(self.id);
        let open = |sealed: &str| -> anyhow::Result<Secret> {
            let bytes = secrets
                .open(sealed, &context)
                .map_err(|e| anyhow::anyhow!("the endpoint's secret does not open: {e}"))?;
            Secret::parse(std::str::from_utf8(&bytes)?)
                .map_err(|e| anyhow::anyhow!("the endpoint's secret is unreadable: {e}"))
        };
        let mut out = vec![open(&self.secret_sealed)?];
        if let (Some(previous), Some(until)) = (
            &self.previous_secret_sealed,
            self.previous_secret_expires_at,
        ) && until > now
        {
            out.push(open(previous)?);
        }
        Ok(out)
    }

    fn into_api(self, now: Timestamp) -> Endpoint {
        let event_types = self.filters();
        Endpoint {
            id: self.id,
            url: self.url,
            description: self.description,
            event_types,
            enabled: self.enabled,
            disabled_reason: self
                .disabled_reason
                .as_deref()
                .and_then(DisabledReason::parse),
            previous_secret_expires_at: self.previous_secret_expires_at.filter(|t| *t > now),
            failing_since: self.failing_since,
            last_success_at: self.last_success_at,
            last_failure_at: self.last_failure_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub id: MessageId,
    pub workspace_id: WorkspaceId,
    pub endpoint_id: EndpointId,
    pub event_id: EventId,
    pub event_type: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub cycle_start: i32,
    pub generation: i32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub failed_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

const MESSAGE_COLUMNS: &str = "id, workspace_id, endpoint_id, event_id, event_type, body, status, \
     attempts, cycle_start, generation, next_attempt_at, last_attempt_at, delivered_at, \
     failed_at, created_at";

impl MessageRow {
    fn into_api(self) -> Message {
        Message {
            payload: serde_json::from_str(&self.body)
                .unwrap_or(serde_json::Value::String(self.body)),
            id: self.id,
            endpoint_id: self.endpoint_id,
            event_id: self.event_id,
            event_type: self.event_type,
            status: MessageStatus::parse(&self.status),
            attempts: self.attempts.max(0) as u32,
            next_attempt_at: self.next_attempt_at,
            last_attempt_at: self.last_attempt_at,
            delivered_at: self.delivered_at,
            failed_at: self.failed_at,
            created_at: self.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: AttemptId,
    message_id: MessageId,
    attempt: i32,
    status: String,
    url: String,
    response_status: Option<i32>,
    response: Option<String>,
    error: Option<String>,
    latency_ms: i64,
    created_at: Timestamp,
}

impl From<AttemptRow> for Attempt {
    fn from(r: AttemptRow) -> Attempt {
        Attempt {
            id: r.id,
            message_id: r.message_id,
            attempt: r.attempt.max(0) as u32,
            status: if r.status == "succeeded" {
                AttemptStatus::Succeeded
            } else {
                AttemptStatus::Failed
            },
            url: r.url,
            response_status_code: r.response_status.and_then(|s| u16::try_from(s).ok()),
            response: r.response,
            error: r.error,
            latency_ms: r.latency_ms,
            created_at: r.created_at,
        }
    }
}

/// A validated endpoint definition.
pub struct NewEndpoint {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
}

fn to_json(types: &[String]) -> String {
    serde_json::to_string(types).unwrap_or_else(|_| "[]".to_owned())
}

async fn get_row(db: &Db, scope: &Scope, id: EndpointId) -> ApiResult<EndpointRow> {
    let row: Option<EndpointRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(endpoint_not_found)
}

pub async fn create(
    db: &Db,
    secrets: &SecretBox,
    scope: &Scope,
    new: &NewEndpoint,
    secret: &Secret,
) -> ApiResult<Endpoint> {
    let id = EndpointId::new();
    let sealed = secrets.seal(secret.expose().as_bytes(), &seal_context(id));
    let now = Timestamp::now();
    let disabled_reason = (!new.enabled).then_some(DisabledReason::Manual.as_str());
    with_db!(db, pool => sqlx::query(
        "INSERT INTO webhook_endpoints (id, workspace_id, url, description, event_types, enabled,
             disabled_reason, secret_sealed, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    ).bind(id).bind(scope.workspace_id).bind(&new.url).bind(&new.description)
     .bind(to_json(&new.event_types)).bind(new.enabled).bind(disabled_reason).bind(&sealed).bind(now)
     .execute(pool).await.map(|_| ()))?;
    get(db, scope, id).await
}

pub async fn get(db: &Db, scope: &Scope, id: EndpointId) -> ApiResult<Endpoint> {
    Ok(get_row(db, scope, id).await?.into_api(Timestamp::now()))
}

/// Where and how to send a signed message to an endpoint outside the fan-out (the automation
/// `webhook` step): its URL, whether it is enabled, and the secrets that sign now.
pub async fn signing_target(
    db: &Db,
    secrets: &SecretBox,
    scope: &Scope,
    id: EndpointId,
) -> ApiResult<(String, bool, Vec<crate::standard_webhooks::Secret>)> {
    let row = get_row(db, scope, id).await?;
    let signing = row.signing_secrets(secrets, Timestamp::now())?;
    Ok((row.url, row.enabled, signing))
}

pub async fn list(db: &Db, scope: &Scope, page: &PageParams) -> ApiResult<Page<Endpoint>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<EndpointRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    let now = Timestamp::now();
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(|r| r.into_api(now)))
}

/// Changes to an endpoint; `None` keeps the current value.
#[derive(Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// Applies `changes`. Disabling fails the endpoint's pending messages (recover them after
/// enabling it again); enabling clears the failure run, so the disable window starts afresh.
pub async fn update(
    db: &Db,
    scope: &Scope,
    id: EndpointId,
    changes: &EndpointChanges,
) -> ApiResult<Endpoint> {
    let mut tx = db.begin().await?;
    let current: Option<EndpointRow> = with_tx!(&mut tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    let current = current.ok_or_else(endpoint_not_found)?;
    let now = Timestamp::now();
    let enabled = changes.enabled.unwrap_or(current.enabled);
    let (disabled_reason, failing_since) = match (current.enabled, enabled) {
        (true, false) => (
            Some(DisabledReason::Manual.as_str().to_owned()),
            current.failing_since,
        ),
        (false, true) => (None, None),
        _ => (current.disabled_reason.clone(), current.failing_since),
    };
    let event_types = changes
        .event_types
        .as_deref()
        .map(to_json)
        .unwrap_or(current.event_types.clone());
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, enabled = $4,
             disabled_reason = $5, failing_since = $6, updated_at = $7
         WHERE workspace_id = $8 AND id = $9",
    ).bind(changes.url.as_deref().unwrap_or(&current.url))
     .bind(changes.description.as_deref().unwrap_or(&current.description))
     .bind(&event_types).bind(enabled).bind(&disabled_reason).bind(failing_since).bind(now)
     .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    if current.enabled && !enabled {
        fail_pending(&mut tx, id, now).await?;
    }
    tx.commit().await?;
    get(db, scope, id).await
}

pub async fn delete(db: &Db, scope: &Scope, id: EndpointId) -> ApiResult<()> {
    let deleted = with_db!(db, pool => sqlx::query(
        "DELETE FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(endpoint_not_found());
    }
    Ok(())
}

/// Makes `secret` the current secret; the current one signs too until the returned instant. A
/// rotation during an overlap drops the oldest secret at once.
pub async fn rotate_secret(
    db: &Db,
    secrets: &SecretBox,
    scope: &Scope,
    id: EndpointId,
    secret: &Secret,
) -> ApiResult<Timestamp> {
    let sealed = secrets.seal(secret.expose().as_bytes(), &seal_context(id));
    let now = Timestamp::now();
    let until = now + ROTATION_OVERLAP;
    let updated = with_db!(db, pool => sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret_sealed = secret_sealed,
             previous_secret_expires_at = $1, secret_sealed = $2, updated_at = $3
         WHERE workspace_id = $4 AND id = $5",
    ).bind(until).bind(&sealed).bind(now).bind(scope.workspace_id).bind(id)
     .execute(pool).await.map(|r| r.rows_affected()))?;
    if updated == 0 {
        return Err(endpoint_not_found());
    }
    Ok(until)
}

pub async fn list_messages(
    db: &Db,
    scope: &Scope,
    endpoint: EndpointId,
    status: Option<MessageStatus>,
    page: &PageParams,
) -> ApiResult<Page<Message>> {
    get_row(db, scope, endpoint).await?;
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<MessageRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM webhook_messages
         WHERE workspace_id = $1 AND endpoint_id = $2 AND ($3 IS NULL OR status = $3)
           AND ($4 IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    ))).bind(scope.workspace_id).bind(endpoint).bind(status.map(MessageStatus::as_str))
       .bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(MessageRow::into_api))
}

async fn get_message_row(
    db: &Db,
    scope: &Scope,
    endpoint: EndpointId,
    id: MessageId,
) -> ApiResult<MessageRow> {
    let row: Option<MessageRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM webhook_messages
         WHERE workspace_id = $1 AND endpoint_id = $2 AND id = $3"
    ))).bind(scope.workspace_id).bind(endpoint).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(message_not_found)
}

pub async fn get_message(
    db: &Db,
    scope: &Scope,
    endpoint: EndpointId,
    id: MessageId,
) -> ApiResult<Message> {
    Ok(get_message_row(db, scope, endpoint, id).await?.into_api())
}

pub async fn list_attempts(
    db: &Db,
    scope: &Scope,
    endpoint: EndpointId,
    message: MessageId,
    page: &PageParams,
) -> ApiResult<Page<Attempt>> {
    get_message_row(db, scope, endpoint, message).await?;
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<AttemptRow> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, message_id, attempt, status, url, response_status, response, error, latency_ms, created_at
         FROM webhook_attempts
         WHERE workspace_id = $1 AND endpoint_id = $2 AND message_id = $3 AND ($4 IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
    ).bind(scope.workspace_id).bind(endpoint).bind(message).bind(cursor)
     .bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Attempt::from))
}

fn endpoint_disabled() -> ApiError {
    ApiError::conflict(
        "webhook_endpoint_disabled",
        "The endpoint is disabled; enable it first.",
    )
}

/// Starts a new delivery cycle for one message in `tx`: pending, a new generation, its next
/// attempt due now. Returns whether the message was there.
async fn restart(
    tx: &mut Tx,
    workspace: WorkspaceId,
    endpoint: EndpointId,
    id: MessageId,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let row: Option<(i32, i32)> = with_tx!(tx, conn => sqlx::query_as(
        "UPDATE webhook_messages SET status = 'pending', generation = generation + 1,
             cycle_start = attempts, next_attempt_at = $1, failed_at = NULL, updated_at = $1
         WHERE workspace_id = $2 AND endpoint_id = $3 AND id = $4
         RETURNING generation, attempts",
    ).bind(now).bind(workspace).bind(endpoint).bind(id).fetch_optional(conn).await)?;
    let Some((generation, attempts)) = row else {
        return Ok(false);
    };
    let job = AttemptJob {
        message_id: id,
        generation,
        attempt: attempts + 1,
        deferrals: 0,
    };
    deliver::enqueue_attempt(tx, workspace, &job, now).await?;
    Ok(true)
}

/// Sends a message again, whatever its status: a new delivery cycle, starting now.
pub async fn resend(
    db: &Db,
    scope: &Scope,
    endpoint: EndpointId,
    id: MessageId,
) -> ApiResult<Message> {
    if !get_row(db, scope, endpoint).await?.enabled {
        return Err(endpoint_disabled());
    }
    let mut tx = db.begin().await?;
    if !restart(&mut tx, scope.workspace_id, endpoint, id, Timestamp::now()).await? {
        return Err(message_not_found());
    }
    tx.commit().await?;
    get_message(db, scope, endpoint, id).await
}

/// Re-queues every failed message of the endpoint created at or after `since`, in batches;
/// returns how many.
pub async fn recover(
    db: &Db,
    scope: &Scope,
    endpoint: EndpointId,
    since: Timestamp,
) -> ApiResult<u64> {
    const BATCH: i64 = 500;
    if !get_row(db, scope, endpoint).await?.enabled {
        return Err(endpoint_disabled());
    }
    let mut recovered = 0u64;
    let mut after: Option<MessageId> = None;
    loop {
        let mut tx = db.begin().await?;
        let ids: Vec<MessageId> = with_tx!(&mut tx, conn => sqlx::query_scalar(
            "SELECT id FROM webhook_messages
             WHERE workspace_id = $1 AND endpoint_id = $2 AND status = 'failed' AND created_at >= $3
               AND ($4 IS NULL OR id > $4)
             ORDER BY id LIMIT $5",
        ).bind(scope.workspace_id).bind(endpoint).bind(since).bind(after).bind(BATCH)
         .fetch_all(conn).await)?;
        let now = Timestamp::now();
        for id in &ids {
            if restart(&mut tx, scope.workspace_id, endpoint, *id, now).await? {
                recovered += 1;
            }
        }
        tx.commit().await?;
        match ids.last() {
            Some(last) if ids.len() as i64 == BATCH => after = Some(*last),
            _ => return Ok(recovered),
        }
    }
}

// ---- system side: fan-out and delivery ----

/// The enabled endpoints of a workspace, with their filters: one indexed query per event.
pub(crate) async fn enabled_endpoints(
    db: &Db,
    workspace: WorkspaceId,
) -> Result<Vec<(EndpointId, Vec<String>)>, sqlx::Error> {
    let rows: Vec<(EndpointId, String)> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, event_types FROM webhook_endpoints WHERE workspace_id = $1 AND enabled = $2",
    ).bind(workspace).bind(true).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .map(|(id, types)| (id, serde_json::from_str(&types).unwrap_or_default()))
        .collect())
}

/// Inserts the message of (endpoint, event) unless it exists; returns whether it was new.
pub(crate) async fn insert_message(
    tx: &mut Tx,
    id: MessageId,
    workspace: WorkspaceId,
    endpoint: EndpointId,
    event: (EventId, &str),
    body: &str,
    first_attempt_at: Timestamp,
) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now();
    let inserted = with_tx!(tx, conn => sqlx::query(
        "INSERT INTO webhook_messages (id, workspace_id, endpoint_id, event_id, event_type, body,
             status, next_attempt_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $8)
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    ).bind(id).bind(workspace).bind(endpoint).bind(event.0).bind(event.1).bind(body)
     .bind(first_attempt_at).bind(now).execute(conn).await.map(|r| r.rows_affected()))?;
    Ok(inserted == 1)
}

/// A message with its endpoint, for the delivery job.
pub(crate) async fn delivery_target(
    db: &Db,
    id: MessageId,
) -> Result<Option<(MessageRow, EndpointRow)>, sqlx::Error> {
    let message: Option<MessageRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM webhook_messages WHERE id = $1"
    ))).bind(id).fetch_optional(pool).await)?;
    let Some(message) = message else {
        return Ok(None);
    };
    let endpoint: Option<EndpointRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2"
    ))).bind(message.workspace_id).bind(message.endpoint_id).fetch_optional(pool).await)?;
    Ok(endpoint.map(|e| (message, e)))
}

/// Fails one pending message of the cycle `job` belongs to, without an attempt (its endpoint
/// is disabled). Returns whether it changed.
pub(crate) async fn fail_without_attempt(db: &Db, job: &AttemptJob) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now();
    with_db!(db, pool => sqlx::query(
        "UPDATE webhook_messages SET status = 'failed', next_attempt_at = NULL, failed_at = $1,
             updated_at = $1
         WHERE id = $2 AND generation = $3 AND attempts = $4 AND status = 'pending'",
    ).bind(now).bind(job.message_id).bind(job.generation).bind(job.attempt - 1)
     .execute(pool).await.map(|r| r.rows_affected() == 1))
}

/// Fails every pending message of an endpoint (it was disabled).
async fn fail_pending(
    tx: &mut Tx,
    endpoint: EndpointId,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE webhook_messages SET status = 'failed', next_attempt_at = NULL, failed_at = $1,
             updated_at = $1
         WHERE endpoint_id = $2 AND status = 'pending'",
    ).bind(now).bind(endpoint).execute(conn).await.map(|_| ()))
}

/// What one attempt produced, to record.
pub(crate) struct AttemptRecord<'a> {
    pub job: &'a AttemptJob,
    pub workspace: WorkspaceId,
    pub endpoint: EndpointId,
    pub url: &'a str,
    pub succeeded: bool,
    pub response_status: Option<u16>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub latency_ms: i64,
    /// The message's status after this attempt, and when the next attempt is due.
    pub status: MessageStatus,
    pub next_attempt_at: Option<Timestamp>,
}

/// Records an attempt and its consequences in `tx`: the attempt row, the message (fenced on
/// its generation and attempt count: `false` means another run recorded it already, and
/// nothing was written), the endpoint's success or failure run.
pub(crate) async fn record_attempt(
    tx: &mut Tx,
    record: &AttemptRecord<'_>,
    now: Timestamp,
) -> Result<bool, sqlx::Error> {
    let job = record.job;
    let delivered_at = (record.status == MessageStatus::Delivered).then_some(now);
    let failed_at = (record.status == MessageStatus::Failed).then_some(now);
    if tx.dialect() == platform::db::Dialect::Postgres {
        // Endpoint before message, the order `update` (disabling fails pending messages) takes
        // them in; the other order deadlocked against a PATCH on PostgreSQL.
        with_tx!(&mut *tx, conn => sqlx::query(
            "SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR UPDATE",
        ).bind(record.endpoint).execute(conn).await.map(|_| ()))?;
    }
    let updated = with_tx!(&mut *tx, conn => sqlx::query(
        "UPDATE webhook_messages SET attempts = $1, status = $2, next_attempt_at = $3,
             last_attempt_at = $4, delivered_at = COALESCE($5, delivered_at), failed_at = $6,
             updated_at = $4
         WHERE id = $7 AND generation = $8 AND attempts = $9 AND status = 'pending'",
    ).bind(job.attempt).bind(record.status.as_str()).bind(record.next_attempt_at).bind(now)
     .bind(delivered_at).bind(failed_at).bind(job.message_id).bind(job.generation)
     .bind(job.attempt - 1).execute(conn).await.map(|r| r.rows_affected()))?;
    if updated != 1 {
        return Ok(false);
    }
    let status = if record.succeeded {
        "succeeded"
    } else {
        "failed"
    };
    with_tx!(&mut *tx, conn => sqlx::query(
        "INSERT INTO webhook_attempts (id, workspace_id, endpoint_id, message_id, attempt, status,
             url, response_status, response, error, latency_ms, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    ).bind(AttemptId::new()).bind(record.workspace).bind(record.endpoint).bind(job.message_id)
     .bind(job.attempt).bind(status).bind(record.url).bind(record.response_status.map(i32::from))
     .bind(&record.response).bind(&record.error).bind(record.latency_ms).bind(now)
     .execute(conn).await.map(|_| ()))?;
    if record.succeeded {
        with_tx!(&mut *tx, conn => sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL, last_success_at = $1 WHERE id = $2",
        ).bind(now).bind(record.endpoint).execute(conn).await.map(|_| ()))?;
    } else {
        with_tx!(&mut *tx, conn => sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1),
                 last_failure_at = $1 WHERE id = $2",
        ).bind(now).bind(record.endpoint).execute(conn).await.map(|_| ()))?;
    }
    Ok(true)
}

/// When the endpoint's current run of failures started, if it is enabled and failing.
pub(crate) async fn failing_since(
    tx: &mut Tx,
    endpoint: EndpointId,
) -> Result<Option<Timestamp>, sqlx::Error> {
    let row: Option<(bool, Option<Timestamp>)> = with_tx!(tx, conn => sqlx::query_as(
        "SELECT enabled, failing_since FROM webhook_endpoints WHERE id = $1",
    ).bind(endpoint).fetch_optional(conn).await)?;
    Ok(row.and_then(|(enabled, since)| since.filter(|_| enabled)))
}

/// Disables an endpoint automatically in `tx`: its pending messages fail and
/// `webhook.endpoint_disabled` is published. Nothing happens if it is already disabled.
pub(crate) async fn disable(
    tx: &mut Tx,
    workspace: WorkspaceId,
    endpoint: EndpointId,
    reason: DisabledReason,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    let row: Option<(String, Option<Timestamp>)> = with_tx!(&mut *tx, conn => sqlx::query_as(
        "UPDATE webhook_endpoints SET enabled = $1, disabled_reason = $2, updated_at = $3
         WHERE id = $4 AND enabled = $5
         RETURNING url, failing_since",
    ).bind(false).bind(reason.as_str()).bind(now).bind(endpoint).bind(true)
     .fetch_optional(conn).await)?;
    let Some((url, failing_since)) = row else {
        return Ok(());
    };
    fail_pending(tx, endpoint, now).await?;
    platform::outbox::publish(
        tx,
        workspace,
        ENDPOINT_DISABLED_EVENT,
        &json!({
            "endpoint_id": endpoint,
            "url": url,
            "reason": reason,
            "failing_since": failing_since,
            "disabled_at": now,
        }),
    )
    .await?;
    tracing::warn!(endpoint = %endpoint, reason = reason.as_str(), "webhook endpoint disabled");
    Ok(())
}
