//! Timers of inactivity and date triggers: durable delayed jobs on the platform queue, never
//! state in memory.
//!
//! **Inactivity** (`{"type": "inactivity", "minutes": N, "after": […], "unless": […]}`), per
//! rule and contact: an `after` event (re)starts the timer at the event's time + N minutes; an
//! `unless` event cancels it. The state is one row of `automation_timers` with a generation:
//! each start or cancel bumps it, and the delayed `automation.inactivity` job (unique per rule,
//! contact and generation) carries the generation it was made for, so a superseded job finds a
//! newer one and does nothing. Events older than the one the row last saw (redelivered or late)
//! change nothing. When a current job fires, the rule's conditions are evaluated as they are
//! then, and one run starts (unique per rule, contact and generation); the timer is then
//! disarmed until the next `after` event.
//!
//! **Date** (`{"type": "date", "field": "custom.appointment_at", "offset_minutes": -60}`): when
//! a contact is created with the field, or the field changes (`contact.created`,
//! `contact.updated`), an `automation.date` job is queued for the date + offset, unique per
//! (rule, contact, field, offset, value). When it fires it reads the contact again: if the
//! field holds another value now, the job does nothing (the change queued its own). A time
//! already past when the field is set is not fired.

use std::time::Duration;

use chrono::{NaiveDate, TimeZone};
use crm::ContactId;
use platform::db::{Dialect, Tx};
use platform::jobs::{self, JobContext, JobError, JobRegistry, NewJob};
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::definition::{self, Definition, Trigger};
use crate::engine::{Fired, contact_id_in};
use crate::{AutomationId, Engine, store};

/// Job: an inactivity timer is due.
pub const INACTIVITY_JOB: &str = "automation.inactivity";
/// Job: the time relative to a contact's date field has come.
pub const DATE_JOB: &str = "automation.date";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InactivityJob {
    automation_id: AutomationId,
    contact_id: ContactId,
    generation: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DateJob {
    automation_id: AutomationId,
    contact_id: ContactId,
    field: String,
    offset_minutes: i64,
    /// The field's value the job was made for.
    value: String,
    at: Timestamp,
    depth: u32,
}

pub(crate) fn install(engine: &Engine, registry: &mut JobRegistry) {
    let e = engine.clone();
    registry.register_fn(INACTIVITY_JOB, move |job| {
        let engine = e.clone();
        async move { fire_inactivity(&engine, &job).await.map_err(retry) }
    });
    let e = engine.clone();
    registry.register_fn(DATE_JOB, move |job| {
        let engine = e.clone();
        async move { fire_date(&engine, &job).await.map_err(retry) }
    });
}

fn retry(err: ApiError) -> JobError {
    JobError::retry(anyhow::anyhow!("{}: {}", err.code, err.message))
}

/// Moves the rule's timers for an event about `contact` (called for every rule the event's key
/// lists, before its direct triggers are looked at).
pub(crate) async fn on_event(
    engine: &Engine,
    scope: &Scope,
    automation: AutomationId,
    triggers: &[Trigger],
    fired: &Fired,
    contact: ContactId,
) -> ApiResult<()> {
    for trigger in triggers {
        match trigger {
            Trigger::Inactivity {
                minutes,
                after,
                unless,
            } => {
                let is =
                    |list: &[String]| list.iter().any(|e| definition::timer_key(e) == fired.key);
                if is(after) {
                    let due = fired.at + Duration::from_secs(minutes * 60);
                    set_timer(engine, scope, automation, contact, fired, Some(due)).await?;
                } else if is(unless) {
                    set_timer(engine, scope, automation, contact, fired, None).await?;
                }
            }
            Trigger::Date {
                field,
                offset_minutes,
                time_zone,
            } => {
                if let Some(value) = date_value_set(fired, field) {
                    schedule_date(
                        engine,
                        scope,
                        automation,
                        contact,
                        field,
                        *offset_minutes,
                        time_zone.as_deref(),
                        &value,
                        fired.depth,
                    )
                    .await?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct TimerRow {
    generation: i64,
    due_at: Option<Timestamp>,
    since: Timestamp,
    event_id: String,
    depth: i32,
}

async fn lock_timer(
    tx: &mut Tx,
    automation: AutomationId,
    contact: ContactId,
) -> ApiResult<Option<TimerRow>> {
    let lock = match tx.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    Ok(
        with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT generation, due_at, since, event_id, depth
         FROM automation_timers WHERE automation_id = $1 AND contact_id = $2{lock}"
    ))).bind(automation).bind(contact).fetch_optional(conn).await)?,
    )
}

/// Starts (`due` given) or cancels the rule's timer for the contact, unless the row already
/// saw this event or a newer one.
async fn set_timer(
    engine: &Engine,
    scope: &Scope,
    automation: AutomationId,
    contact: ContactId,
    fired: &Fired,
    due: Option<Timestamp>,
) -> ApiResult<()> {
    let mut tx = engine.db().begin().await?;
    // A row to lock even for the first event (two first events wait for each other here).
    with_tx!(&mut tx, conn => sqlx::query(
        "INSERT INTO automation_timers (automation_id, contact_id, workspace_id, generation, due_at,
            since, event_id, depth, updated_at)
         VALUES ($1, $2, $3, 0, NULL, $4, '', 0, $5) ON CONFLICT (automation_id, contact_id) DO NOTHING",
    ).bind(automation).bind(contact).bind(scope.workspace_id).bind(fired.at).bind(Timestamp::now())
     .execute(conn).await.map(|_| ()))?;
    let Some(row) = lock_timer(&mut tx, automation, contact).await? else {
        return Ok(());
    };
    let seen =
        row.generation > 0 && (row.event_id == fired.trigger_event_id || fired.at < row.since);
    if seen {
        return Ok(());
    }
    let generation = row.generation + 1;
    let depth = i32::try_from(fired.depth).unwrap_or(i32::MAX);
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE automation_timers SET generation = $1, due_at = $2, since = $3, event_id = $4,
            depth = $5, updated_at = $6 WHERE automation_id = $7 AND contact_id = $8",
    ).bind(generation).bind(due).bind(fired.at).bind(&fired.trigger_event_id).bind(depth)
     .bind(Timestamp::now()).bind(automation).bind(contact)
     .execute(conn).await.map(|_| ()))?;
    if let Some(due) = due {
        let job = NewJob::new(
            INACTIVITY_JOB,
            json!(InactivityJob {
                automation_id: automation,
                contact_id: contact,
                generation,
            }),
        )
        .workspace(scope.workspace_id)
        .run_at(due)
        .unique_key(format!(
            "automation:inactivity:{automation}:{contact}:{generation}"
        ));
        jobs::enqueue(&mut tx, job).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The rule as it is now, if it is enabled (a deleted or disabled rule's timers do nothing).
async fn live_rule(
    engine: &Engine,
    scope: &Scope,
    automation: AutomationId,
) -> ApiResult<Option<(i32, Definition)>> {
    let rule = match store::get(engine.db(), scope, automation).await {
        Ok(rule) => rule,
        Err(e) if e.status.is_client_error() => return Ok(None),
        Err(e) => return Err(e),
    };
    if !rule.enabled {
        return Ok(None);
    }
    Ok(Some((
        rule.version,
        Definition {
            triggers: rule.triggers,
            conditions: rule.conditions,
            steps: rule.steps,
        },
    )))
}

/// Starts the run of a due timer, if its rule still wants it and the conditions hold now.
#[allow(clippy::too_many_arguments)]
async fn start(
    engine: &Engine,
    scope: &Scope,
    automation: AutomationId,
    version: i32,
    definition: &Definition,
    contact: ContactId,
    key: &str,
    trigger_event_id: &str,
    event: &Value,
    depth: u32,
) -> ApiResult<()> {
    let Ok(compiled) = definition.compile(engine.plugins()) else {
        return Ok(());
    };
    let context = engine.context(scope, Some(contact), event).await?;
    let Some(live) = contact_id_in(&context) else {
        return Ok(()); // the contact is gone
    };
    if let Some(conditions) = &compiled.conditions
        && !conditions.evaluate(&context)
    {
        return Ok(());
    }
    let run = engine
        .start_run(
            scope,
            automation,
            version,
            Some(live),
            key,
            trigger_event_id,
            event,
            depth,
        )
        .await?;
    engine.advance(scope, run).await
}

async fn fire_inactivity(engine: &Engine, job: &JobContext) -> ApiResult<()> {
    let payload: InactivityJob = job
        .payload_as()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{}", e.message())))?;
    let Some(workspace) = job.workspace_id else {
        return Ok(());
    };
    let scope = Scope::system(workspace);
    let row: Option<TimerRow> = with_db!(engine.db(), pool => sqlx::query_as(
        "SELECT generation, due_at, since, event_id, depth
         FROM automation_timers WHERE workspace_id = $1 AND automation_id = $2 AND contact_id = $3",
    ).bind(workspace).bind(payload.automation_id).bind(payload.contact_id).fetch_optional(pool).await)?;
    let Some(row) = row.filter(|r| r.generation == payload.generation && r.due_at.is_some()) else {
        return Ok(()); // superseded, cancelled or already fired
    };
    if let Some((version, definition)) = live_rule(engine, &scope, payload.automation_id).await?
        && let Some(minutes) = definition.triggers.iter().find_map(|t| match t {
            Trigger::Inactivity { minutes, .. } => Some(*minutes),
            _ => None,
        })
    {
        let trigger_event_id = format!("inactivity:{}:{}", payload.contact_id, row.generation);
        let event = json!({
            "type": "inactivity",
            "id": trigger_event_id,
            "minutes": minutes,
            "since": row.since,
            "after_event_id": row.event_id,
        });
        start(
            engine,
            &scope,
            payload.automation_id,
            version,
            &definition,
            payload.contact_id,
            definition::INACTIVITY_KEY,
            &trigger_event_id,
            &event,
            u32::try_from(row.depth).unwrap_or(0),
        )
        .await?;
    }
    // Disarmed only now: a crash before this fires the job again, and the run is unique.
    with_db!(engine.db(), pool => sqlx::query(
        "UPDATE automation_timers SET due_at = NULL, updated_at = $1
         WHERE automation_id = $2 AND contact_id = $3 AND generation = $4",
    ).bind(Timestamp::now()).bind(payload.automation_id).bind(payload.contact_id).bind(row.generation)
     .execute(pool).await.map(|_| ()))?;
    Ok(())
}

/// The date field's new value if this event sets or changes it: `contact.created` with the
/// field, or `contact.updated` whose changes name it.
fn date_value_set(fired: &Fired, field: &str) -> Option<String> {
    let key = field.strip_prefix("custom.")?;
    let value = if fired.key == definition::event_key("contact.created") {
        fired.payload.get("contact")?.get("custom")?.get(key)?
    } else if fired.key == definition::event_key("contact.updated") {
        fired.payload.get("changes")?.get(field)?.get("to")?
    } else {
        return None;
    };
    value.as_str().map(str::to_owned)
}

/// The instant a date field's value means: RFC 3339 as is, a plain date at midnight in
/// `time_zone` (default UTC).
pub fn field_instant(value: &str, time_zone: Option<&str>) -> Option<Timestamp> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(value.trim()) {
        return Some(Timestamp::from(at.with_timezone(&chrono::Utc)));
    }
    let date = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d").ok()?;
    let midnight = date.and_hms_opt(0, 0, 0)?;
    let zone: chrono_tz::Tz = time_zone.unwrap_or("UTC").parse().ok()?;
    let local = zone.from_local_datetime(&midnight).earliest()?;
    Some(Timestamp::from(local.with_timezone(&chrono::Utc)))
}

fn offset_time(at: Timestamp, offset_minutes: i64) -> Timestamp {
    let offset = Duration::from_secs(offset_minutes.unsigned_abs() * 60);
    if offset_minutes < 0 {
        at - offset
    } else {
        at + offset
    }
}

#[allow(clippy::too_many_arguments)]
async fn schedule_date(
    engine: &Engine,
    scope: &Scope,
    automation: AutomationId,
    contact: ContactId,
    field: &str,
    offset_minutes: i64,
    time_zone: Option<&str>,
    value: &str,
    depth: u32,
) -> ApiResult<()> {
    let Some(instant) = field_instant(value, time_zone) else {
        return Ok(());
    };
    let at = offset_time(instant, offset_minutes);
    if at <= Timestamp::now() {
        tracing::debug!(%automation, %contact, field, "the date trigger's time is past; not scheduled");
        return Ok(());
    }
    let job = NewJob::new(
        DATE_JOB,
        json!(DateJob {
            automation_id: automation,
            contact_id: contact,
            field: field.to_owned(),
            offset_minutes,
            value: value.to_owned(),
            at,
            depth,
        }),
    )
    .workspace(scope.workspace_id)
    .run_at(at)
    .unique_key(format!(
        "automation:date:{automation}:{contact}:{field}:{offset_minutes}:{value}"
    ));
    let mut tx = engine.db().begin().await?;
    jobs::enqueue(&mut tx, job).await?;
    tx.commit().await?;
    Ok(())
}

async fn fire_date(engine: &Engine, job: &JobContext) -> ApiResult<()> {
    let payload: DateJob = job
        .payload_as()
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{}", e.message())))?;
    let Some(workspace) = job.workspace_id else {
        return Ok(());
    };
    let scope = Scope::system(workspace);
    let Some((version, definition)) = live_rule(engine, &scope, payload.automation_id).await?
    else {
        return Ok(());
    };
    let still_wanted = definition.triggers.iter().any(|t| {
        matches!(t, Trigger::Date { field, offset_minutes, .. }
            if *field == payload.field && *offset_minutes == payload.offset_minutes)
    });
    if !still_wanted {
        return Ok(());
    }
    let contact = match crm::contacts::store::get(engine.db(), &scope, payload.contact_id).await {
        Ok(c) => c,
        Err(e) if e.status.is_client_error() => return Ok(()),
        Err(e) => return Err(e),
    };
    let key = payload
        .field
        .strip_prefix("custom.")
        .unwrap_or(&payload.field);
    if contact.custom.get(key).and_then(Value::as_str) != Some(payload.value.as_str()) {
        tracing::debug!(automation = %payload.automation_id, contact = %contact.id,
            "the date field changed since the job was queued; skipped");
        return Ok(());
    }
    let trigger_event_id = format!(
        "date:{}:{}:{}:{}",
        payload.contact_id, payload.field, payload.offset_minutes, payload.value
    );
    let event = json!({
        "type": "date",
        "id": trigger_event_id,
        "field": payload.field,
        "value": payload.value,
        "offset_minutes": payload.offset_minutes,
        "at": payload.at,
    });
    start(
        engine,
        &scope,
        payload.automation_id,
        version,
        &definition,
        contact.id,
        &format!("date:{}", payload.field),
        &trigger_event_id,
        &event,
        payload.depth,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_datetimes_become_instants() {
        let at = field_instant("2026-12-01T15:00:00Z", None).unwrap();
        assert_eq!(at.to_rfc3339(), "2026-12-01T15:00:00.000000Z");
        let midnight = field_instant("2026-12-01", Some("America/Sao_Paulo")).unwrap();
        assert_eq!(midnight.to_rfc3339(), "2026-12-01T03:00:00.000000Z");
        assert!(field_instant("tomorrow", None).is_none());
        assert_eq!(
            offset_time(at, -60).to_rfc3339(),
            "2026-12-01T14:00:00.000000Z"
        );
    }
}
