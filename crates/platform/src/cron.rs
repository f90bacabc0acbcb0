//! Cron schedules on top of the job queue: a schedule row says "enqueue a job of this kind on
//! this cron expression in this time zone"; the scheduler tick fires due schedules.
//!
//! Firing a slot is one transaction: advance `next_run_at` with a compare-and-set on the slot
//! being fired, and enqueue the job with `unique_key = cron:{schedule}:{slot}`. Only the tick
//! whose compare-and-set wins enqueues, so any number of processes can tick at once without
//! firing a slot twice (and the unique key would catch it if they did). Slots missed while no
//! scheduler ran are coalesced: the overdue slot fires once and the next one is computed from
//! now. DST rules are in [`CronSpec`].

mod spec;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use spec::{CronSpec, SpecError};

use crate::db::Db;
use crate::error::{ApiError, is_unique_violation};
use crate::id::{ScheduleId, WorkspaceId};
use crate::jobs::{self, DEFAULT_QUEUE, NewJob};
use crate::time::Timestamp;
use crate::{with_db, with_tx};

/// A schedule to create. `workspace_id: None` makes a system schedule.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub workspace_id: Option<WorkspaceId>,
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    pub kind: String,
    pub queue: String,
    pub payload: Value,
    pub enabled: bool,
}

impl NewSchedule {
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        time_zone: impl Into<String>,
        kind: impl Into<String>,
        payload: Value,
    ) -> Self {
        Self {
            workspace_id: None,
            name: name.into(),
            cron: cron.into(),
            time_zone: time_zone.into(),
            kind: kind.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            payload,
            enabled: true,
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
}

/// Changes to a schedule; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct ScheduleUpdate {
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    pub payload: Option<Value>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    pub id: ScheduleId,
    /// Absent for system schedules.
    pub workspace_id: Option<WorkspaceId>,
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    pub kind: String,
    pub queue: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub enabled: bool,
    /// The slot the scheduler fires next.
    pub next_run_at: Timestamp,
    pub last_run_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: ScheduleId,
    workspace_id: Option<WorkspaceId>,
    name: String,
    cron: String,
    time_zone: String,
    kind: String,
    queue: String,
    payload: String,
    enabled: bool,
    next_run_at: Timestamp,
    last_run_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<ScheduleRow> for Schedule {
    fn from(row: ScheduleRow) -> Self {
        Schedule {
            id: row.id,
            workspace_id: row.workspace_id,
            name: row.name,
            cron: row.cron,
            time_zone: row.time_zone,
            kind: row.kind,
            queue: row.queue,
            payload: jobs::parse_payload(&row.payload),
            enabled: row.enabled,
            next_run_at: row.next_run_at,
            last_run_at: row.last_run_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("a schedule named `{0}` already exists here")]
    NameTaken(String),
    #[error("no such schedule")]
    NotFound,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<ScheduleError> for ApiError {
    fn from(err: ScheduleError) -> Self {
        let message = err.to_string();
        match err {
            ScheduleError::Spec(SpecError::Cron { .. }) => ApiError::invalid_field("cron", message),
            ScheduleError::Spec(SpecError::TimeZone(_)) => {
                ApiError::invalid_field("time_zone", message)
            }
            ScheduleError::InvalidField { field, .. } => ApiError::invalid_field(field, message),
            ScheduleError::NameTaken(_) => ApiError::conflict("schedule_name_taken", message),
            ScheduleError::NotFound => {
                ApiError::not_found("schedule_not_found", "No such schedule.")
            }
            ScheduleError::Db(err) => ApiError::from(err),
        }
    }
}

macro_rules! schedule_columns {
    () => {
        "id, workspace_id, name, cron, time_zone, kind, queue, payload, enabled, next_run_at, \
         last_run_at, created_at, updated_at"
    };
}

/// `workspace_id` equals the owner, NULL-safely on both backends.
macro_rules! owned_by {
    ($param:literal) => {
        concat!(
            "(workspace_id = ",
            $param,
            " OR (workspace_id IS NULL AND ",
            $param,
            " IS NULL))"
        )
    };
}

fn check_text(field: &'static str, value: &str) -> Result<(), ScheduleError> {
    if value.trim().is_empty() || value.len() > 200 {
        return Err(ScheduleError::InvalidField {
            field,
            reason: "must be 1 to 200 characters".to_owned(),
        });
    }
    Ok(())
}

/// Validates and stores a schedule; its first slot is the first fire time after `now`.
#[tracing::instrument(skip_all, fields(name = %new.name, workspace_id = ?new.workspace_id))]
pub async fn create_schedule(
    db: &Db,
    new: NewSchedule,
    now: Timestamp,
) -> Result<Schedule, ScheduleError> {
    for (field, value) in [
        ("name", &new.name),
        ("kind", &new.kind),
        ("queue", &new.queue),
    ] {
        check_text(field, value)?;
    }
    let spec = CronSpec::parse(&new.cron, &new.time_zone)?;
    let next = spec.next_after(now).ok_or_else(|| never_fires(&new.cron))?;
    let inserted = with_db!(db, pool => sqlx::query_as::<_, ScheduleRow>(concat!(
        "INSERT INTO schedules (id, workspace_id, name, cron, time_zone, kind, queue, payload, \
           enabled, next_run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING ", schedule_columns!()
    ))
    .bind(ScheduleId::new())
    .bind(new.workspace_id)
    .bind(&new.name)
    .bind(new.cron.trim())
    .bind(spec.time_zone())
    .bind(&new.kind)
    .bind(&new.queue)
    .bind(new.payload.to_string())
    .bind(new.enabled)
    .bind(next)
    .bind(now)
    .fetch_one(pool)
    .await);
    inserted
        .map(Schedule::from)
        .map_err(|err| match is_unique_violation(&err) {
            true => ScheduleError::NameTaken(new.name.clone()),
            false => err.into(),
        })
}

fn never_fires(expression: &str) -> ScheduleError {
    SpecError::Cron {
        expression: expression.to_owned(),
        reason: "it never fires".to_owned(),
    }
    .into()
}

pub async fn get_schedule(
    db: &Db,
    owner: Option<WorkspaceId>,
    id: ScheduleId,
) -> Result<Schedule, ScheduleError> {
    let row = with_db!(db, pool => sqlx::query_as::<_, ScheduleRow>(concat!(
        "SELECT ", schedule_columns!(), " FROM schedules WHERE id = $1 AND ", owned_by!("$2")
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await)?;
    row.map(Schedule::from).ok_or(ScheduleError::NotFound)
}

/// Applies `update`. A new expression or zone, or re-enabling, recomputes the next slot from
/// `now`: slots missed while disabled are not fired.
#[tracing::instrument(skip_all, fields(schedule_id = %id))]
pub async fn update_schedule(
    db: &Db,
    owner: Option<WorkspaceId>,
    id: ScheduleId,
    update: ScheduleUpdate,
    now: Timestamp,
) -> Result<Schedule, ScheduleError> {
    let current = get_schedule(db, owner, id).await?;
    let cron = update.cron.unwrap_or_else(|| current.cron.clone());
    let zone = update
        .time_zone
        .unwrap_or_else(|| current.time_zone.clone());
    let enabled = update.enabled.unwrap_or(current.enabled);
    let spec = CronSpec::parse(&cron, &zone)?;
    let reschedule = cron.trim() != current.cron
        || spec.time_zone() != current.time_zone
        || (enabled && !current.enabled);
    let next = match reschedule {
        true => spec.next_after(now).ok_or_else(|| never_fires(&cron))?,
        false => current.next_run_at,
    };
    let payload = update.payload.unwrap_or(current.payload).to_string();
    let row = with_db!(db, pool => sqlx::query_as::<_, ScheduleRow>(concat!(
        "UPDATE schedules SET cron = $3, time_zone = $4, payload = $5, enabled = $6, \
           next_run_at = $7, updated_at = $8 \
         WHERE id = $1 AND ", owned_by!("$2"), " RETURNING ", schedule_columns!()
    ))
    .bind(id)
    .bind(owner)
    .bind(cron.trim())
    .bind(spec.time_zone())
    .bind(&payload)
    .bind(enabled)
    .bind(next)
    .bind(now)
    .fetch_optional(pool)
    .await)?;
    row.map(Schedule::from).ok_or(ScheduleError::NotFound)
}

pub async fn delete_schedule(
    db: &Db,
    owner: Option<WorkspaceId>,
    id: ScheduleId,
) -> Result<(), ScheduleError> {
    let deleted = with_db!(db, pool => sqlx::query(concat!(
        "DELETE FROM schedules WHERE id = $1 AND ", owned_by!("$2")
    ))
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(ScheduleError::NotFound);
    }
    Ok(())
}

const TICK_BATCH: i64 = 100;

/// Fires every schedule due at `now`; returns how many slots this call fired. Safe to run from
/// several processes at once (see the module docs).
#[tracing::instrument(skip_all)]
pub async fn tick(db: &Db, now: Timestamp) -> Result<usize, sqlx::Error> {
    let mut fired = 0;
    // Each fired or disabled schedule stops being due, so batches shrink; the bound only guards
    // against a clock far ahead of the stored slots.
    for _ in 0..100 {
        let due: Vec<ScheduleRow> = with_db!(db, pool => sqlx::query_as(concat!(
            "SELECT ", schedule_columns!(), " FROM schedules \
             WHERE enabled AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2"
        ))
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(pool)
        .await)?;
        let batch = due.len() as i64;
        for schedule in due {
            fired += usize::from(fire(db, &Schedule::from(schedule), now).await?);
        }
        if batch < TICK_BATCH {
            break;
        }
    }
    Ok(fired)
}

/// Fires `schedule`'s slot if this caller wins the compare-and-set on it.
async fn fire(db: &Db, schedule: &Schedule, now: Timestamp) -> Result<bool, sqlx::Error> {
    let slot = schedule.next_run_at;
    // A schedule with no next slot (its expression stopped matching, or it no longer parses)
    // fires this last slot if it can and is disabled, instead of being due forever.
    let next = match CronSpec::parse(&schedule.cron, &schedule.time_zone) {
        Ok(spec) => spec.next_after(now),
        Err(err) => {
            tracing::error!(schedule_id = %schedule.id, error = %err, "disabling schedule");
            None
        }
    };
    let mut tx = db.begin().await?;
    let won = with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE schedules SET next_run_at = COALESCE($3, next_run_at), enabled = $4, \
           last_run_at = $2, updated_at = $5 \
         WHERE id = $1 AND next_run_at = $2 AND enabled",
    )
    .bind(schedule.id)
    .bind(slot)
    .bind(next)
    .bind(next.is_some())
    .bind(now)
    .execute(conn)
    .await
    .map(|r| r.rows_affected()))?;
    if won == 0 {
        return Ok(false);
    }
    let job = NewJob::new(&schedule.kind, schedule.payload.clone())
        .workspace(schedule.workspace_id)
        .queue(&schedule.queue)
        .run_at(slot)
        .unique_key(format!("cron:{}:{}", schedule.id, slot.to_rfc3339()));
    jobs::enqueue(&mut tx, job).await?;
    tx.commit().await?;
    tracing::info!(schedule_id = %schedule.id, slot = %slot.to_rfc3339(), "fired schedule");
    Ok(true)
}

/// Ticks every `every` until `shutdown`, waking the workers when something fired.
pub async fn run_scheduler(
    db: Db,
    jobs_wakeup: Arc<Notify>,
    every: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!(every = ?every, "cron scheduler started");
    loop {
        match tick(&db, Timestamp::now()).await {
            Ok(0) => {}
            Ok(_) => jobs_wakeup.notify_one(),
            Err(err) => tracing::warn!(error = %err, "cron tick failed; will try again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    tracing::info!("cron scheduler stopped");
}
