//! `task.due`: a system schedule runs every minute, claims the open tasks whose due time has
//! passed and publishes one `task.due` event for each (again only if the due time is changed),
//! so automations can remind the assignee. The same module prunes capture bookkeeping hourly.

use std::time::Duration;

use platform::cron::{self, NewSchedule, ScheduleError};
use platform::db::Db;
use platform::id::{UserId, WorkspaceId};
use platform::jobs::{JobContext, JobError, JobRegistry};
use platform::{Timestamp, with_db, with_tx};
use serde_json::json;

use crate::{ContactId, DealId, TaskId};

pub const DUE_KIND: &str = "crm.tasks_due";
pub const PRUNE_KIND: &str = "crm.prune";

/// Tasks claimed per transaction.
const BATCH: i64 = 200;
/// A hit redelivered later than this after capture would be captured again.
const KEEP_CAPTURED: Duration = Duration::from_secs(30 * 86_400);
/// Visitors not seen for this long lose their remembered touches.
const KEEP_TOUCHES: Duration = Duration::from_secs(90 * 86_400);

pub fn install(registry: &mut JobRegistry) {
    registry.register_fn(DUE_KIND, |job: JobContext| async move {
        notify_due(&job.db, Timestamp::now())
            .await
            .map_err(JobError::retry)?;
        Ok(())
    });
    registry.register_fn(PRUNE_KIND, |job: JobContext| async move {
        prune(&job.db, Timestamp::now())
            .await
            .map_err(JobError::retry)?;
        Ok(())
    });
}

/// Creates the schedules unless they exist (racing processes settle on the unique name).
pub async fn ensure_schedules(db: &Db) -> anyhow::Result<()> {
    for (name, expression, kind) in [
        (DUE_KIND, "* * * * *", DUE_KIND),
        (PRUNE_KIND, "41 * * * *", PRUNE_KIND),
    ] {
        let schedule = NewSchedule::new(name, expression, "UTC", kind, json!({}));
        match cron::create_schedule(db, schedule, Timestamp::now()).await {
            Ok(_) | Err(ScheduleError::NameTaken(_)) => {}
            Err(err) => anyhow::bail!("cannot create the {name} schedule: {err}"),
        }
    }
    Ok(())
}

type DueRow = (
    TaskId,
    WorkspaceId,
    String,
    Timestamp,
    Option<ContactId>,
    Option<DealId>,
    Option<UserId>,
);

/// Publishes `task.due` for every open task due at or before `now` not yet announced; returns
/// how many. Each task is claimed and announced in one transaction, so it is announced once.
pub async fn notify_due(db: &Db, now: Timestamp) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let mut tx = db.begin().await?;
        let rows: Vec<DueRow> = with_tx!(&mut tx, conn => sqlx::query_as(
            "SELECT id, workspace_id, title, due_at, contact_id, deal_id, assignee_id FROM tasks
             WHERE done_at IS NULL AND due_notified_at IS NULL AND due_at <= $1
             ORDER BY due_at LIMIT $2",
        ).bind(now).bind(BATCH).fetch_all(conn).await)?;
        let n = rows.len() as i64;
        for (id, workspace_id, title, due_at, contact_id, deal_id, assignee_id) in rows {
            let claimed = with_tx!(&mut tx, conn => sqlx::query(
                "UPDATE tasks SET due_notified_at = $1 WHERE id = $2 AND due_notified_at IS NULL AND done_at IS NULL",
            ).bind(now).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
            if claimed == 0 {
                continue;
            }
            let data = json!({
                "task_id": id, "title": title, "due_at": due_at, "contact_id": contact_id,
                "deal_id": deal_id, "assignee_id": assignee_id,
            });
            platform::outbox::publish(&mut tx, workspace_id, "task.due", &data).await?;
            total += 1;
        }
        tx.commit().await?;
        if n < BATCH {
            return Ok(total);
        }
    }
}

/// Forgets old capture claims and visitor touches.
pub async fn prune(db: &Db, now: Timestamp) -> anyhow::Result<u64> {
    let claims = with_db!(db, pool => sqlx::query("DELETE FROM capture_processed WHERE processed_at < $1")
        .bind(now - KEEP_CAPTURED).execute(pool).await.map(|r| r.rows_affected()))?;
    let touches = with_db!(db, pool => sqlx::query("DELETE FROM visitor_touches WHERE updated_at < $1")
        .bind(now - KEEP_TOUCHES).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(claims + touches)
}
