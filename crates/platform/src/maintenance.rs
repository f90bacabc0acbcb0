//! Housekeeping the platform needs to stay small: an hourly system job that forgets finished
//! jobs, relayed outbox events, idempotency records, expired sessions and stale invites, then
//! refreshes SQLite's planner statistics.

use std::time::Duration;

use serde_json::json;

use crate::cron::{self, NewSchedule, ScheduleError};
use crate::db::Db;
use crate::jobs::{JobContext, JobError, JobRegistry};
use crate::time::Timestamp;
use crate::{idempotency, jobs, outbox, with_db};

pub const PRUNE_KIND: &str = "platform.prune";
const SCHEDULE_NAME: &str = "platform.prune";

/// Finished jobs and relayed events are kept this long for inspection.
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Expired and accepted invites are kept this long.
const KEEP_INVITES: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn install(registry: &mut JobRegistry) {
    registry.register_fn(PRUNE_KIND, |job: JobContext| async move {
        prune(&job.db).await.map_err(JobError::retry)?;
        Ok(())
    });
}

/// Creates the hourly schedule unless it exists (several processes may race here; the unique
/// name settles it).
pub async fn ensure_schedule(db: &Db) -> anyhow::Result<()> {
    let schedule = NewSchedule::new(SCHEDULE_NAME, "17 * * * *", "UTC", PRUNE_KIND, json!({}));
    match cron::create_schedule(db, schedule, Timestamp::now()).await {
        Ok(_) | Err(ScheduleError::NameTaken(_)) => Ok(()),
        Err(err) => Err(anyhow::anyhow!(
            "cannot create the maintenance schedule: {err}"
        )),
    }
}

/// Deletes what is no longer needed; returns how many rows went.
pub async fn prune(db: &Db) -> Result<u64, sqlx::Error> {
    let now = Timestamp::now();
    let mut total = jobs::store::prune_finished(db, now - KEEP_FINISHED).await?;
    total += outbox::prune_relayed(db, now - KEEP_FINISHED).await?;
    total += idempotency::purge_expired(db).await?;
    total += with_db!(db, pool => sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(now).execute(pool).await.map(|r| r.rows_affected()))?;
    total += with_db!(db, pool => sqlx::query("DELETE FROM invites WHERE expires_at < $1")
        .bind(now - KEEP_INVITES).execute(pool).await.map(|r| r.rows_affected()))?;
    db.optimize().await?;
    tracing::info!(rows = total, "maintenance prune done");
    Ok(total)
}
