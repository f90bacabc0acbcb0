//! Rules on the state database: automations, their versions and the trigger index.

use platform::db::{Db, Tx};
use platform::http::{Page, PageParams};
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AutomationId;
use crate::definition::{self, Definition, Trigger};
use crate::plugins::Plugins;

/// A rule as the API shows it: its current version's definition.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Automation {
    pub id: AutomationId,
    pub name: String,
    pub enabled: bool,
    /// The current version; every change of `triggers`, `conditions` or `steps` adds one.
    pub version: i32,
    pub triggers: Vec<Trigger>,
    #[schema(value_type = Option<Object>)]
    pub conditions: Option<Value>,
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Create a rule.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAutomation {
    /// 1 to 200 characters.
    pub name: String,
    /// Default true.
    pub enabled: Option<bool>,
    /// `{"type": "event", "event": "contact.created"}`, `{"type": "custom", "name": "deal_won"}`,
    /// `{"type": "schedule", "cron": "0 9 * * *"}`, `{"type": "tracking", "event": "purchase"}`,
    /// `{"type": "inactivity", "minutes": 5, "after": […], "unless": […]}` or
    /// `{"type": "date", "field": "custom.appointment_at", "offset_minutes": -60}` (see `Trigger`).
    #[schema(value_type = Vec<Object>)]
    pub triggers: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    pub conditions: Option<Value>,
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<Value>,
}

/// Change a rule: absent fields are kept. A new definition is a new version; runs already
/// started finish on theirs.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutomationChange {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub triggers: Option<Vec<Value>>,
    /// `null` removes the conditions.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub conditions: Option<Option<Value>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub steps: Option<Vec<Value>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Value>>, D::Error> {
    Option::<Value>::deserialize(d).map(|v| Some(v.filter(|v| !v.is_null())))
}

/// One saved version of a rule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Version {
    pub version: i32,
    pub definition: Definition,
    pub created_at: Timestamp,
}

pub fn automation_not_found() -> ApiError {
    ApiError::not_found(
        "automation_not_found",
        "No such automation in this workspace.",
    )
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "name",
            "`name` is 1 to 200 characters on one line.",
        ));
    }
    Ok(name.to_owned())
}

/// Parses and checks a definition; returns it with its triggers typed.
pub fn check_definition(
    plugins: &Plugins,
    triggers: &[Value],
    conditions: Option<Value>,
    steps: Vec<Value>,
) -> ApiResult<Definition> {
    let triggers = definition::parse_triggers(triggers)?;
    let definition = Definition {
        triggers,
        conditions: conditions.filter(|c| !c.is_null()),
        steps,
    };
    definition.compile(plugins)?;
    Ok(definition)
}

#[derive(sqlx::FromRow)]
struct Row {
    id: AutomationId,
    name: String,
    enabled: bool,
    current_version: i32,
    definition: String,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl Row {
    fn into_api(self) -> ApiResult<Automation> {
        let definition: Definition = serde_json::from_str(&self.definition)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("stored definition: {e}")))?;
        Ok(Automation {
            id: self.id,
            name: self.name,
            enabled: self.enabled,
            version: self.current_version,
            triggers: definition.triggers,
            conditions: definition.conditions,
            steps: definition.steps,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const SELECT: &str = "SELECT a.id, a.name, a.enabled, a.current_version, v.definition, \
     a.created_at, a.updated_at FROM automations a JOIN automation_versions v \
     ON v.automation_id = a.id AND v.version = a.current_version";

async fn insert_version(
    tx: &mut Tx,
    scope: &Scope,
    id: AutomationId,
    version: i32,
    definition: &Definition,
    now: Timestamp,
) -> ApiResult<()> {
    let text = serde_json::to_string(definition).map_err(anyhow::Error::from)?;
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO automation_versions (automation_id, version, workspace_id, definition, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    ).bind(id).bind(version).bind(scope.workspace_id).bind(&text).bind(now)
     .execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// Rewrites the rule's rows in the trigger index: its current triggers while enabled, none
/// while disabled.
async fn index_triggers(
    tx: &mut Tx,
    scope: &Scope,
    id: AutomationId,
    enabled: bool,
    triggers: &[Trigger],
) -> ApiResult<()> {
    with_tx!(&mut *tx, conn => sqlx::query(
        "DELETE FROM automation_triggers WHERE workspace_id = $1 AND automation_id = $2",
    ).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    if !enabled {
        return Ok(());
    }
    for key in triggers.iter().flat_map(Trigger::index_keys) {
        with_tx!(&mut *tx, conn => sqlx::query(
            "INSERT INTO automation_triggers (workspace_id, trigger_key, automation_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        ).bind(scope.workspace_id).bind(key).bind(id).execute(conn).await.map(|_| ()))?;
    }
    Ok(())
}

/// Checks that every `date` trigger names a contact custom field of type date or datetime.
async fn check_date_fields(db: &Db, scope: &Scope, triggers: &[Trigger]) -> ApiResult<()> {
    let mut fields = None;
    for (i, trigger) in triggers.iter().enumerate() {
        let Trigger::Date { field, .. } = trigger else {
            continue;
        };
        if fields.is_none() {
            fields = Some(crm::fields::list(db, scope).await?);
        }
        let key = field.strip_prefix("custom.").unwrap_or(field);
        let found = fields.iter().flatten().find(|f| {
            f.entity == crm::fields::Entity::Contact
                && f.key == key
                && matches!(
                    f.field_type,
                    crm::fields::FieldType::Date | crm::fields::FieldType::Datetime
                )
        });
        if found.is_none() {
            return Err(ApiError::invalid_field(
                &format!("triggers[{i}].field"),
                format!(
                    "`triggers[{i}].field`: `{field}` is not a contact custom field of type date or datetime."
                ),
            ));
        }
    }
    Ok(())
}

async fn get_in(tx: &mut Tx, scope: &Scope, id: AutomationId) -> ApiResult<Automation> {
    let row: Option<Row> = with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE a.workspace_id = $1 AND a.id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    row.ok_or_else(automation_not_found)?.into_api()
}

async fn insert(
    tx: &mut Tx,
    scope: &Scope,
    name: &str,
    enabled: bool,
    definition: &Definition,
) -> ApiResult<Automation> {
    let id = AutomationId::new();
    let now = Timestamp::now();
    with_tx!(&mut *tx, conn => sqlx::query(
        "INSERT INTO automations (id, workspace_id, name, enabled, current_version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 1, $5, $5)",
    ).bind(id).bind(scope.workspace_id).bind(name).bind(enabled).bind(now)
     .execute(conn).await.map(|_| ()))?;
    insert_version(tx, scope, id, 1, definition, now).await?;
    index_triggers(tx, scope, id, enabled, &definition.triggers).await?;
    get_in(tx, scope, id).await
}

pub async fn create(
    db: &Db,
    plugins: &Plugins,
    scope: &Scope,
    req: NewAutomation,
) -> ApiResult<Automation> {
    let name = check_name(&req.name)?;
    let definition = check_definition(plugins, &req.triggers, req.conditions, req.steps)?;
    check_date_fields(db, scope, &definition.triggers).await?;
    let mut tx = db.begin().await?;
    let created = insert(
        &mut tx,
        scope,
        &name,
        req.enabled.unwrap_or(true),
        &definition,
    )
    .await?;
    tx.commit().await?;
    sync_schedules(db, scope, created.id, created.enabled, &created.triggers).await?;
    Ok(created)
}

pub async fn get(db: &Db, scope: &Scope, id: AutomationId) -> ApiResult<Automation> {
    let row: Option<Row> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE a.workspace_id = $1 AND a.id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(automation_not_found)?.into_api()
}

/// Rules, newest first.
pub async fn list(db: &Db, scope: &Scope, page: &PageParams) -> ApiResult<Page<Automation>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?.map(AutomationId);
    let rows: Vec<Row> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE a.workspace_id = $1 AND ($2 IS NULL OR a.id < $2) ORDER BY a.id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    let page = Page::from_rows(rows, limit, |r| r.id.uuid());
    Ok(Page {
        data: page
            .data
            .into_iter()
            .map(Row::into_api)
            .collect::<ApiResult<_>>()?,
        next_cursor: page.next_cursor,
    })
}

/// Locks the rule's row for a change (PostgreSQL; SQLite's write transaction already is one).
async fn lock(tx: &mut Tx, scope: &Scope, id: AutomationId) -> ApiResult<Automation> {
    if tx.dialect() == platform::db::Dialect::Postgres {
        with_tx!(&mut *tx, conn => sqlx::query(
            "SELECT id FROM automations WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
        ).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    }
    get_in(tx, scope, id).await
}

pub async fn update(
    db: &Db,
    plugins: &Plugins,
    scope: &Scope,
    id: AutomationId,
    req: AutomationChange,
) -> ApiResult<Automation> {
    let name = req.name.as_deref().map(check_name).transpose()?;
    let mut tx = db.begin().await?;
    let before = lock(&mut tx, scope, id).await?;
    let redefined = req.triggers.is_some() || req.conditions.is_some() || req.steps.is_some();
    let enabled = req.enabled.unwrap_or(before.enabled);
    let now = Timestamp::now();
    let mut version = before.version;
    let mut triggers = before.triggers.clone();
    if redefined {
        let raw_triggers: Vec<Value> = match req.triggers {
            Some(t) => t,
            None => before
                .triggers
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .collect(),
        };
        let definition = check_definition(
            plugins,
            &raw_triggers,
            req.conditions.unwrap_or(before.conditions),
            req.steps.unwrap_or(before.steps),
        )?;
        check_date_fields(db, scope, &definition.triggers).await?;
        version += 1;
        insert_version(&mut tx, scope, id, version, &definition, now).await?;
        triggers = definition.triggers;
    }
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE automations SET name = $1, enabled = $2, current_version = $3, updated_at = $4
         WHERE workspace_id = $5 AND id = $6",
    ).bind(name.as_deref().unwrap_or(&before.name)).bind(enabled).bind(version).bind(now)
     .bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    index_triggers(&mut tx, scope, id, enabled, &triggers).await?;
    let after = get_in(&mut tx, scope, id).await?;
    tx.commit().await?;
    if redefined || enabled != before.enabled {
        sync_schedules(db, scope, id, after.enabled, &after.triggers).await?;
    }
    Ok(after)
}

/// Deletes a rule with its versions and runs.
pub async fn delete(db: &Db, scope: &Scope, id: AutomationId) -> ApiResult<()> {
    get(db, scope, id).await?;
    sync_schedules(db, scope, id, false, &[]).await?;
    let deleted = with_db!(db, pool => sqlx::query(
        "DELETE FROM automations WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(automation_not_found());
    }
    Ok(())
}

/// The job a rule's schedule enqueues on every slot.
pub const CRON_JOB: &str = "automation.cron";

/// Replaces the platform schedules of a rule's schedule triggers: none while disabled. The
/// schedules live in the platform's table and are written through its API, after the rule's
/// own commit; a failure here is reported to the caller, and the next change of the rule
/// repairs it.
async fn sync_schedules(
    db: &Db,
    scope: &Scope,
    id: AutomationId,
    enabled: bool,
    triggers: &[Trigger],
) -> ApiResult<()> {
    let existing: Vec<platform::id::ScheduleId> = with_db!(db, pool => sqlx::query_scalar(
        "SELECT schedule_id FROM automation_schedules WHERE workspace_id = $1 AND automation_id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_all(pool).await)?;
    for schedule in existing {
        match platform::cron::delete_schedule(db, Some(scope.workspace_id), schedule).await {
            Ok(()) | Err(platform::cron::ScheduleError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        with_db!(db, pool => sqlx::query("DELETE FROM automation_schedules WHERE schedule_id = $1")
            .bind(schedule).execute(pool).await.map(|_| ()))?;
    }
    if !enabled {
        return Ok(());
    }
    for (i, trigger) in triggers.iter().enumerate() {
        let Trigger::Schedule { cron, time_zone } = trigger else {
            continue;
        };
        let new = platform::cron::NewSchedule::new(
            format!("automation {id} #{i}"),
            cron.clone(),
            time_zone.clone().unwrap_or_else(|| "UTC".to_owned()),
            CRON_JOB,
            serde_json::json!({ "automation_id": id }),
        )
        .workspace(scope.workspace_id);
        let schedule = platform::cron::create_schedule(db, new, Timestamp::now()).await?;
        with_db!(db, pool => sqlx::query(
            "INSERT INTO automation_schedules (schedule_id, workspace_id, automation_id) VALUES ($1, $2, $3)",
        ).bind(schedule.id).bind(scope.workspace_id).bind(id).execute(pool).await.map(|_| ()))?;
    }
    Ok(())
}

/// A copy of the rule's current definition as a new rule, disabled, named "… (copy)".
pub async fn duplicate(db: &Db, scope: &Scope, id: AutomationId) -> ApiResult<Automation> {
    let mut tx = db.begin().await?;
    let source = get_in(&mut tx, scope, id).await?;
    let definition = Definition {
        triggers: source.triggers,
        conditions: source.conditions,
        steps: source.steps,
    };
    let mut name = format!("{} (copy)", source.name);
    if name.chars().count() > 200 {
        name = name
            .chars()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
    }
    let copy = insert(&mut tx, scope, &name, false, &definition).await?;
    tx.commit().await?;
    Ok(copy)
}

/// Every version of a rule, newest first.
pub async fn versions(db: &Db, scope: &Scope, id: AutomationId) -> ApiResult<Vec<Version>> {
    get(db, scope, id).await?;
    let rows: Vec<(i32, String, Timestamp)> = with_db!(db, pool => sqlx::query_as(
        "SELECT version, definition, created_at FROM automation_versions
         WHERE workspace_id = $1 AND automation_id = $2 ORDER BY version DESC",
    ).bind(scope.workspace_id).bind(id).fetch_all(pool).await)?;
    rows.into_iter()
        .map(|(version, text, created_at)| {
            Ok(Version {
                version,
                definition: serde_json::from_str(&text)
                    .map_err(|e| ApiError::internal(anyhow::anyhow!("stored definition: {e}")))?,
                created_at,
            })
        })
        .collect()
}

/// One version's definition (runs execute the version they started with).
pub async fn version_in(
    tx: &mut Tx,
    scope: &Scope,
    id: AutomationId,
    version: i32,
) -> ApiResult<Definition> {
    let text: Option<String> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT definition FROM automation_versions WHERE workspace_id = $1 AND automation_id = $2 AND version = $3",
    ).bind(scope.workspace_id).bind(id).bind(version).fetch_optional(conn).await)?;
    let text = text.ok_or_else(automation_not_found)?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("stored definition: {e}")))
}

/// The enabled rules of a workspace with a trigger key, with their current definitions: one
/// indexed query per event, however many rules exist.
pub async fn rules_for(
    db: &Db,
    workspace: platform::id::WorkspaceId,
    trigger_key: &str,
) -> ApiResult<Vec<(AutomationId, i32, Definition)>> {
    let rows: Vec<(AutomationId, i32, String)> = with_db!(db, pool => sqlx::query_as(
        "SELECT a.id, a.current_version, v.definition FROM automation_triggers t
         JOIN automations a ON a.id = t.automation_id AND a.workspace_id = t.workspace_id
         JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.current_version
         WHERE t.workspace_id = $1 AND t.trigger_key = $2 AND a.enabled",
    ).bind(workspace).bind(trigger_key).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, version, text)| {
            serde_json::from_str(&text)
                .ok()
                .map(|definition| (id, version, definition))
        })
        .collect())
}
