//! Capture rules in the state database.

use platform::db::{Db, Tx};
use platform::http::{Page, PageParams};
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};
use tracking::sites::SiteId;

use super::{Rule, RuleId, RuleInput, validate};
use crate::contacts::LifecycleStage;
use crate::{from_json, to_json};

#[derive(sqlx::FromRow)]
struct RuleRow {
    id: RuleId,
    site_id: SiteId,
    name: String,
    enabled: bool,
    event_name: String,
    url_pattern: Option<String>,
    conditions: String,
    mappings: String,
    tags: String,
    lifecycle_stage: Option<String>,
    matched_count: i64,
    failed_count: i64,
    last_matched_at: Option<Timestamp>,
    last_error: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<RuleRow> for Rule {
    fn from(r: RuleRow) -> Self {
        Rule {
            id: r.id,
            site_id: r.site_id,
            name: r.name,
            enabled: r.enabled,
            event_name: r.event_name,
            url_pattern: r.url_pattern,
            conditions: from_json(&r.conditions),
            mappings: from_json(&r.mappings),
            tags: from_json(&r.tags),
            lifecycle_stage: r.lifecycle_stage.as_deref().and_then(LifecycleStage::parse),
            matched_count: r.matched_count,
            failed_count: r.failed_count,
            last_matched_at: r.last_matched_at,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str = "id, site_id, name, enabled, event_name, url_pattern, conditions, mappings, tags, \
    lifecycle_stage, matched_count, failed_count, last_matched_at, last_error, created_at, updated_at";

pub fn rule_not_found() -> ApiError {
    ApiError::not_found(
        "capture_rule_not_found",
        "No such capture rule in this workspace.",
    )
}

fn apply(rule: &mut Rule, req: &RuleInput) {
    if let Some(v) = &req.name {
        rule.name = v.trim().to_owned();
    }
    if let Some(v) = req.enabled {
        rule.enabled = v;
    }
    if let Some(v) = &req.event_name {
        rule.event_name = v.trim().to_owned();
    }
    if let Some(v) = &req.url_pattern {
        rule.url_pattern = v.clone();
    }
    if let Some(v) = &req.conditions {
        rule.conditions = v.clone();
    }
    if let Some(v) = &req.mappings {
        rule.mappings = v.clone();
    }
    if let Some(v) = &req.tags {
        rule.tags = v.iter().map(|t| t.trim().to_owned()).collect();
    }
    if let Some(v) = req.lifecycle_stage {
        rule.lifecycle_stage = v;
    }
}

pub async fn create(db: &Db, scope: &Scope, req: &RuleInput) -> ApiResult<Rule> {
    let site_id = req
        .site_id
        .ok_or_else(|| ApiError::invalid_field("site_id", "`site_id` is required."))?;
    tracking::sites::store::get(db, scope, site_id)
        .await
        .map_err(|_| {
            ApiError::invalid_field("site_id", format!("No site {site_id} in this workspace."))
        })?;
    let now = Timestamp::now();
    let mut rule = Rule {
        id: RuleId::new(),
        site_id,
        name: String::new(),
        enabled: true,
        event_name: String::new(),
        url_pattern: None,
        conditions: Vec::new(),
        mappings: Vec::new(),
        tags: Vec::new(),
        lifecycle_stage: None,
        matched_count: 0,
        failed_count: 0,
        last_matched_at: None,
        last_error: None,
        created_at: now,
        updated_at: now,
    };
    apply(&mut rule, req);
    validate(&rule)?;
    with_db!(db, pool => sqlx::query(
        "INSERT INTO capture_rules (id, workspace_id, site_id, name, enabled, event_name, url_pattern,
            conditions, mappings, tags, lifecycle_stage, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
    ).bind(rule.id).bind(scope.workspace_id).bind(site_id).bind(&rule.name).bind(rule.enabled)
     .bind(&rule.event_name).bind(&rule.url_pattern).bind(to_json(&rule.conditions))
     .bind(to_json(&rule.mappings)).bind(to_json(&rule.tags))
     .bind(rule.lifecycle_stage.map(LifecycleStage::as_str)).bind(now)
     .execute(pool).await.map(|_| ()))?;
    get(db, scope, rule.id).await
}

pub async fn get(db: &Db, scope: &Scope, id: RuleId) -> ApiResult<Rule> {
    let row: Option<RuleRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM capture_rules WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(Rule::from).ok_or_else(rule_not_found)
}

pub async fn list(
    db: &Db,
    scope: &Scope,
    site_id: Option<SiteId>,
    page: &PageParams,
) -> ApiResult<Page<Rule>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<RuleRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM capture_rules WHERE workspace_id = $1 AND ($2 IS NULL OR site_id = $2)
           AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    ))).bind(scope.workspace_id).bind(site_id).bind(cursor).bind(i64::from(limit) + 1)
     .fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Rule::from))
}

pub async fn update(db: &Db, scope: &Scope, id: RuleId, req: &RuleInput) -> ApiResult<Rule> {
    let mut rule = get(db, scope, id).await?;
    if req.site_id.is_some_and(|s| s != rule.site_id) {
        return Err(ApiError::invalid_field(
            "site_id",
            "A rule stays on its site; create a new rule for another site.",
        ));
    }
    apply(&mut rule, req);
    validate(&rule)?;
    with_db!(db, pool => sqlx::query(
        "UPDATE capture_rules SET name = $1, enabled = $2, event_name = $3, url_pattern = $4,
            conditions = $5, mappings = $6, tags = $7, lifecycle_stage = $8, updated_at = $9
         WHERE workspace_id = $10 AND id = $11",
    ).bind(&rule.name).bind(rule.enabled).bind(&rule.event_name).bind(&rule.url_pattern)
     .bind(to_json(&rule.conditions)).bind(to_json(&rule.mappings)).bind(to_json(&rule.tags))
     .bind(rule.lifecycle_stage.map(LifecycleStage::as_str)).bind(Timestamp::now())
     .bind(scope.workspace_id).bind(id).execute(pool).await.map(|_| ()))?;
    get(db, scope, id).await
}

pub async fn delete(db: &Db, scope: &Scope, id: RuleId) -> ApiResult<()> {
    let deleted = with_db!(db, pool => sqlx::query("DELETE FROM capture_rules WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(rule_not_found());
    }
    Ok(())
}

/// The enabled rules of a site, for the consumer (the record's site and workspace come from the
/// gateway, which resolved them).
pub(crate) async fn enabled_for_site(db: &Db, site_id: SiteId) -> anyhow::Result<Vec<Rule>> {
    let rows: Vec<RuleRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM capture_rules WHERE site_id = $1 AND enabled = $2 ORDER BY id"
    ))).bind(site_id).bind(true).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(Rule::from).collect())
}

/// Counts a capture (or a failure with its reason) on the rule.
pub(crate) async fn record_outcome(
    tx: &mut Tx,
    scope: &Scope,
    id: RuleId,
    error: Option<&str>,
) -> ApiResult<()> {
    match error {
        None => with_tx!(tx, conn => sqlx::query(
            "UPDATE capture_rules SET matched_count = matched_count + 1, last_matched_at = $1
             WHERE workspace_id = $2 AND id = $3",
        ).bind(Timestamp::now()).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?,
        Some(message) => with_tx!(tx, conn => sqlx::query(
            "UPDATE capture_rules SET failed_count = failed_count + 1, last_error = $1
             WHERE workspace_id = $2 AND id = $3",
        ).bind(message).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?,
    }
    Ok(())
}
