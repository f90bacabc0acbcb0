//! Trigger configs: `/api/v1/workspaces/{workspace_id}/conversions/triggers`. A trigger names
//! a source (`tracking`: a hit's GA4 event name such as `purchase`; `crm`: a domain event such
//! as `deal.won` or `form.submitted`, or an automation trigger name such as
//! `appointment_confirmed`; `automation`: a "send conversion" step that names the trigger), the
//! credential to deliver with, the platform's event name, and how value/currency are mapped.

use axum::extract::State;
use axum::http::StatusCode;
use platform::db::Db;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::credentials::get_row as get_credential;
use crate::{CredentialId, Platform, TriggerId};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_trigger, list_triggers))
        .routes(routes!(get_trigger, update_trigger, delete_trigger))
}

pub fn trigger_not_found() -> ApiError {
    ApiError::not_found("trigger_not_found", "No such conversion trigger.")
}

/// Where conversions of a trigger come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A tracking hit with this GA4 event name (`purchase`, `generate_lead`).
    Tracking,
    /// A CRM or automation domain event: `deal.won`, `form.submitted`, or the `trigger` of an
    /// `automation.event_received` (`appointment_confirmed`).
    Crm,
    /// An automation step "send conversion".
    Automation,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Tracking => "tracking",
            Source::Crm => "crm",
            Source::Automation => "automation",
        }
    }
    fn parse(text: &str) -> Source {
        match text {
            "tracking" => Source::Tracking,
            "crm" => Source::Crm,
            _ => Source::Automation,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Trigger {
    pub id: TriggerId,
    pub credential_id: CredentialId,
    pub platform: Platform,
    pub name: String,
    pub source: Source,
    /// The source event's name.
    pub event: String,
    /// The event name sent to the platform (`Purchase`, `Lead`, `purchase`).
    pub platform_event_name: String,
    /// Take value and currency from the source event when it has them.
    pub use_event_value: bool,
    /// Fixed value, used when the source event has none (or `use_event_value` is off).
    pub value: Option<f64>,
    /// Default currency (ISO 4217).
    pub currency: Option<String>,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub credential_id: CredentialId,
    pub name: Option<String>,
    pub source: Source,
    pub event: String,
    /// Default: the source event's name.
    pub platform_event_name: Option<String>,
    #[serde(default = "yes")]
    pub use_event_value: bool,
    pub value: Option<f64>,
    pub currency: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerUpdate {
    pub name: Option<String>,
    pub platform_event_name: Option<String>,
    pub use_event_value: Option<bool>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct TriggerRow {
    pub id: TriggerId,
    pub credential_id: CredentialId,
    pub platform: String,
    pub name: String,
    pub source: String,
    pub event: String,
    pub platform_event_name: String,
    pub use_event_value: bool,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

pub(crate) const COLUMNS: &str = "t.id, t.credential_id, c.platform, t.name, t.source, t.event, \
     t.platform_event_name, t.use_event_value, t.value, t.currency, t.enabled, t.created_at, t.updated_at";

impl TriggerRow {
    pub(crate) fn into_api(self) -> Trigger {
        Trigger {
            id: self.id,
            credential_id: self.credential_id,
            platform: Platform::parse(&self.platform).unwrap_or(Platform::Meta),
            name: self.name,
            source: Source::parse(&self.source),
            event: self.event,
            platform_event_name: self.platform_event_name,
            use_event_value: self.use_event_value,
            value: self.value,
            currency: self.currency,
            enabled: self.enabled,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

fn checked_event(raw: &str, field: &str) -> ApiResult<String> {
    let event = raw.trim();
    if event.is_empty()
        || event.len() > 100
        || !event
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be 1 to 100 letters, digits, `_`, `.` or `-`."),
        ));
    }
    Ok(event.to_owned())
}

fn checked_currency(raw: Option<&str>) -> ApiResult<Option<String>> {
    match raw.map(str::trim) {
        None => Ok(None),
        Some(c) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            Ok(Some(c.to_uppercase()))
        }
        Some(_) => Err(ApiError::invalid_field(
            "currency",
            "`currency` must be an ISO 4217 code such as `EUR`.",
        )),
    }
}

fn checked_value(value: Option<f64>) -> ApiResult<Option<f64>> {
    match value {
        Some(v) if !v.is_finite() || v < 0.0 => Err(ApiError::invalid_field(
            "value",
            "`value` must be a non-negative number.",
        )),
        other => Ok(other),
    }
}

fn checked_name(raw: Option<&str>, default: &str) -> ApiResult<String> {
    let name = raw
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(default);
    if name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` must be at most 200 characters.",
        ));
    }
    Ok(name.to_owned())
}

pub(crate) async fn get_row(db: &Db, scope: &Scope, id: TriggerId) -> ApiResult<TriggerRow> {
    let row: Option<TriggerRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversion_triggers t JOIN conversion_credentials c ON c.id = t.credential_id
         WHERE t.workspace_id = $1 AND t.id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(trigger_not_found)
}

/// The enabled triggers of a workspace for (source, event).
pub(crate) async fn matching(
    db: &Db,
    scope: &Scope,
    source: Source,
    event: &str,
) -> Result<Vec<TriggerRow>, sqlx::Error> {
    with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversion_triggers t JOIN conversion_credentials c ON c.id = t.credential_id
         WHERE t.workspace_id = $1 AND t.source = $2 AND t.event = $3 AND t.enabled = $4 ORDER BY t.id"
    ))).bind(scope.workspace_id).bind(source.as_str()).bind(event).bind(true).fetch_all(pool).await)
}

/// Add a trigger (admin).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/conversions/triggers", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path)), request_body = TriggerRequest,
    responses((status = 201, body = Trigger), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_trigger(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<TriggerRequest>,
) -> ApiResult<(StatusCode, Json<Trigger>)> {
    scope.require(Role::Admin)?;
    let event = checked_event(&req.event, "event")?;
    let platform_event_name = match &req.platform_event_name {
        Some(n) => checked_event(n, "platform_event_name")?,
        None => event.clone(),
    };
    let name = checked_name(req.name.as_deref(), &event)?;
    let value = checked_value(req.value)?;
    let currency = checked_currency(req.currency.as_deref())?;
    get_credential(&state.db, &scope, req.credential_id)
        .await
        .map_err(|_| {
            ApiError::invalid_field("credential_id", "`credential_id` names no credential.")
        })?;
    let id = TriggerId::new();
    let now = Timestamp::now();
    with_db!(&state.db, pool => sqlx::query(
        "INSERT INTO conversion_triggers (id, workspace_id, credential_id, name, source, event,
             platform_event_name, use_event_value, value, currency, enabled, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
    ).bind(id).bind(scope.workspace_id).bind(req.credential_id).bind(&name).bind(req.source.as_str())
     .bind(&event).bind(&platform_event_name).bind(req.use_event_value).bind(value).bind(&currency)
     .bind(req.enabled).bind(now).execute(pool).await.map(|_| ()))?;
    Ok((
        StatusCode::CREATED,
        Json(get_row(&state.db, &scope, id).await?.into_api()),
    ))
}

/// The workspace's triggers, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/triggers", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Trigger>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_triggers(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Trigger>>> {
    scope.require(Role::Member)?;
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<TriggerRow> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversion_triggers t JOIN conversion_credentials c ON c.id = t.credential_id
         WHERE t.workspace_id = $1 AND ($2 IS NULL OR t.id < $2) ORDER BY t.id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Json(
        Page::from_rows(rows, limit, |r| r.id.uuid()).map(TriggerRow::into_api),
    ))
}

/// One trigger.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/triggers/{trigger_id}", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("trigger_id" = TriggerId, Path)),
    responses((status = 200, body = Trigger), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_trigger(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, TriggerId)>,
) -> ApiResult<Json<Trigger>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(get_row(&state.db, &scope, id).await?.into_api()))
}

/// Change a trigger: name, platform event name, value mapping, enabled (admin).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/conversions/triggers/{trigger_id}", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("trigger_id" = TriggerId, Path)),
    request_body = TriggerUpdate,
    responses((status = 200, body = Trigger), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_trigger(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, TriggerId)>,
    Json(req): Json<TriggerUpdate>,
) -> ApiResult<Json<Trigger>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let current = get_row(&state.db, &scope, id).await?;
    let name = checked_name(req.name.as_deref(), &current.name)?;
    let platform_event_name = match &req.platform_event_name {
        Some(n) => checked_event(n, "platform_event_name")?,
        None => current.platform_event_name,
    };
    let value = checked_value(req.value)?.or(current.value);
    let currency = checked_currency(req.currency.as_deref())?.or(current.currency);
    let use_event_value = req.use_event_value.unwrap_or(current.use_event_value);
    let enabled = req.enabled.unwrap_or(current.enabled);
    with_db!(&state.db, pool => sqlx::query(
        "UPDATE conversion_triggers SET name = $3, platform_event_name = $4, use_event_value = $5,
             value = $6, currency = $7, enabled = $8, updated_at = $9
         WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).bind(&name).bind(&platform_event_name).bind(use_event_value)
     .bind(value).bind(&currency).bind(enabled).bind(Timestamp::now()).execute(pool).await.map(|_| ()))?;
    Ok(Json(get_row(&state.db, &scope, id).await?.into_api()))
}

/// Delete a trigger (admin); its conversions stay, without a trigger.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/conversions/triggers/{trigger_id}", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("trigger_id" = TriggerId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_trigger(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, TriggerId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let deleted = with_db!(&state.db, pool => sqlx::query(
        "DELETE FROM conversion_triggers WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(trigger_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
