//! Conversion events: recording one per (credential, event id) from a trigger, with the
//! contact's identifiers and click ids, and queueing its delivery; the API to list them with
//! their attempts (stats are in [`crate::stats`]).

use axum::extract::State;
use chrono::{DateTime, Utc};
use connect::conversions::{ClickIds, Consent, Conversion, UserData};
use crm::ContactId;
use platform::db::Db;
use platform::error::ErrorBody;
use platform::http::{Json, Page, Path, Query};
use platform::id::WorkspaceId;
use platform::jobs;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::deliver;
use crate::triggers::{self, TriggerRow};
use crate::{ConversionAttemptId, ConversionId, CredentialId, Platform, TriggerId};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conversions))
        .routes(routes!(get_conversion))
}

pub fn conversion_not_found() -> ApiError {
    ApiError::not_found("conversion_not_found", "No such conversion.")
}

/// What a source knows about the event that produced a conversion.
#[derive(Debug, Clone, Default)]
pub struct SourceEvent {
    /// The dedupe key (hit id, `deal.won:{deal}`, the automation's event id).
    pub event_id: String,
    pub contact_id: Option<ContactId>,
    pub event_time: Option<DateTime<Utc>>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub source_url: Option<String>,
    /// Overrides the trigger's platform event name (automation steps).
    pub event_name: Option<String>,
    /// Click ids known from the source itself (a hit); the contact's fill the gaps.
    pub click_ids: ClickIds,
    pub consent: Consent,
    /// The browser's user agent and address, when the conversion happened in one (a hit).
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
}

/// Where a conversion stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversionStatus {
    Pending,
    Sending,
    Sent,
    Failed,
}

impl ConversionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversionStatus::Pending => "pending",
            ConversionStatus::Sending => "sending",
            ConversionStatus::Sent => "sent",
            ConversionStatus::Failed => "failed",
        }
    }
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "sending" => ConversionStatus::Sending,
            "sent" => ConversionStatus::Sent,
            "failed" => ConversionStatus::Failed,
            _ => ConversionStatus::Pending,
        }
    }
}

/// A conversion as the API shows it: no identifiers in clear.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConversionEvent {
    pub id: ConversionId,
    pub trigger_id: Option<TriggerId>,
    pub credential_id: CredentialId,
    pub platform: Platform,
    /// The dedupe key sent to the platform.
    pub event_id: String,
    pub event_name: String,
    pub contact_id: Option<String>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    /// Which click ids it carries (names only).
    pub click_ids: Vec<String>,
    pub status: ConversionStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub sent_at: Option<Timestamp>,
    pub failed_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// One delivery attempt of a conversion (the batch request it went out in).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConversionAttempt {
    pub id: ConversionAttemptId,
    pub attempt: u32,
    /// `accepted`, `retry` or `rejected`.
    pub outcome: String,
    /// The request, summarised without credentials.
    #[schema(value_type = Object)]
    pub request: Value,
    pub response_status: Option<u16>,
    pub response: Option<String>,
    pub error: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversionDetail {
    #[serde(flatten)]
    pub conversion: ConversionEvent,
    pub attempts_log: Vec<ConversionAttempt>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    pub id: ConversionId,
    pub trigger_id: Option<TriggerId>,
    pub credential_id: CredentialId,
    pub platform: String,
    pub event_id: String,
    pub event_name: String,
    pub contact_id: Option<String>,
    pub payload: String,
    pub value: Option<f64>,
    pub currency: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    pub sent_at: Option<Timestamp>,
    pub failed_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

pub(crate) const EVENT_COLUMNS: &str = "id, trigger_id, credential_id, platform, event_id, \
     event_name, contact_id, payload, value, currency, status, attempts, next_attempt_at, \
     last_error, sent_at, failed_at, created_at";

impl EventRow {
    fn into_api(self) -> ConversionEvent {
        let conversion: Option<Conversion> = serde_json::from_str(&self.payload).ok();
        let mut click_ids = Vec::new();
        if let Some(c) = conversion.as_ref().map(|c| &c.click_ids) {
            for (name, value) in [
                ("gclid", &c.gclid),
                ("gbraid", &c.gbraid),
                ("wbraid", &c.wbraid),
                ("fbc", &c.fbc),
                ("fbp", &c.fbp),
            ] {
                if value.is_some() {
                    click_ids.push(name.to_owned());
                }
            }
        }
        let status = ConversionStatus::parse(&self.status);
        ConversionEvent {
            id: self.id,
            trigger_id: self.trigger_id,
            credential_id: self.credential_id,
            platform: Platform::parse(&self.platform).unwrap_or(Platform::Meta),
            event_id: self.event_id,
            event_name: self.event_name,
            contact_id: self.contact_id,
            value: self.value,
            currency: self.currency,
            click_ids,
            next_attempt_at: (status == ConversionStatus::Pending).then_some(self.next_attempt_at),
            status,
            attempts: self.attempts.max(0) as u32,
            last_error: self.last_error,
            sent_at: self.sent_at,
            failed_at: self.failed_at,
            created_at: self.created_at,
        }
    }
}

fn pick(a: &Option<String>, b: Option<&String>) -> Option<String> {
    a.clone().or_else(|| b.cloned())
}

/// The contact's identifiers and the click ids of its latest touch that has them.
async fn contact_data(
    db: &Db,
    scope: &Scope,
    contact_id: ContactId,
) -> ApiResult<Option<(UserData, ClickIds)>> {
    let contact = match crm::contacts::store::get(db, scope, contact_id).await {
        Ok(contact) => contact,
        Err(err) if err.status.as_u16() == 404 => return Ok(None),
        Err(err) => return Err(err),
    };
    let user = UserData {
        emails: contact.emails.clone(),
        phones: contact.phones.clone(),
        first_name: contact.first_name.clone(),
        last_name: contact.last_name.clone(),
        external_id: Some(contact.id.to_string()),
        ..UserData::default()
    };
    let touches = [contact.last_touch.as_ref(), contact.first_touch.as_ref()];
    let from_touch = |f: fn(&crm::contacts::Touch) -> &Option<String>| {
        touches.iter().flatten().find_map(|t| f(t).clone())
    };
    let click_ids = ClickIds {
        gclid: from_touch(|t| &t.gclid),
        gbraid: from_touch(|t| &t.gbraid),
        wbraid: from_touch(|t| &t.wbraid),
        fbc: from_touch(|t| &t.fbc),
        fbp: from_touch(|t| &t.fbp),
        ga_client_id: contact.ga_client_ids.first().cloned(),
        ga_session_id: None,
    };
    Ok(Some((user, click_ids)))
}

/// Records the conversion of `trigger` for `source` (idempotent on the credential and event
/// id) and queues its delivery. Returns its id, the existing one when it was recorded before.
pub(crate) async fn record(
    db: &Db,
    scope: &Scope,
    trigger: &TriggerRow,
    source: &SourceEvent,
) -> ApiResult<ConversionId> {
    let (mut user, contact_clicks): (UserData, ClickIds) = match source.contact_id {
        Some(id) => contact_data(db, scope, id).await?.unwrap_or_default(),
        None => Default::default(),
    };
    user.user_agent = source.user_agent.clone();
    user.client_ip = source.client_ip.clone();
    let s = &source.click_ids;
    let click_ids = ClickIds {
        gclid: pick(&s.gclid, contact_clicks.gclid.as_ref()),
        gbraid: pick(&s.gbraid, contact_clicks.gbraid.as_ref()),
        wbraid: pick(&s.wbraid, contact_clicks.wbraid.as_ref()),
        fbc: pick(&s.fbc, contact_clicks.fbc.as_ref()),
        fbp: pick(&s.fbp, contact_clicks.fbp.as_ref()),
        ga_client_id: pick(&s.ga_client_id, contact_clicks.ga_client_id.as_ref()),
        ga_session_id: s.ga_session_id.clone(),
    };
    let (value, currency) = if trigger.use_event_value && source.value.is_some() {
        (
            source.value,
            source.currency.clone().or(trigger.currency.clone()),
        )
    } else {
        (trigger.value, trigger.currency.clone())
    };
    let conversion = Conversion {
        event_id: source.event_id.clone(),
        event_name: source
            .event_name
            .clone()
            .unwrap_or_else(|| trigger.platform_event_name.clone()),
        event_time: source.event_time.unwrap_or_else(Utc::now),
        value,
        currency: currency.map(|c| c.to_uppercase()),
        source_url: source.source_url.clone(),
        user,
        click_ids,
        consent: source.consent,
    };
    let payload = serde_json::to_string(&conversion).map_err(ApiError::internal)?;
    let id = ConversionId::new();
    let now = Timestamp::now();
    let contact = source.contact_id.map(|c| c.to_string());
    let mut tx = db.begin().await?;
    let inserted = with_tx!(&mut tx, conn => sqlx::query(
        "INSERT INTO conversion_events (id, workspace_id, trigger_id, credential_id, platform, event_id,
             event_name, contact_id, payload, value, currency, status, attempts, next_attempt_at,
             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0, $12, $12, $12)
         ON CONFLICT (credential_id, event_id) DO NOTHING",
    ).bind(id).bind(scope.workspace_id).bind(trigger.id).bind(trigger.credential_id)
     .bind(&trigger.platform).bind(&conversion.event_id).bind(&conversion.event_name).bind(&contact)
     .bind(&payload).bind(conversion.value).bind(&conversion.currency).bind(now)
     .execute(conn).await.map(|r| r.rows_affected()))?;
    if inserted == 0 {
        drop(tx);
        let existing: Option<ConversionId> = with_db!(db, pool => sqlx::query_scalar(
            "SELECT id FROM conversion_events WHERE workspace_id = $1 AND credential_id = $2 AND event_id = $3",
        ).bind(scope.workspace_id).bind(trigger.credential_id).bind(&conversion.event_id)
         .fetch_optional(pool).await)?;
        return existing.ok_or_else(conversion_not_found);
    }
    jobs::enqueue(
        &mut tx,
        deliver::job(scope.workspace_id, trigger.credential_id, now),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("conversions_recorded_total", "platform" => trigger.platform.clone())
        .increment(1);
    Ok(id)
}

/// A conversion an automation step asks for.
#[derive(Debug, Clone)]
pub struct AutomationConversion {
    /// The trigger config that says which credential and platform event name to use.
    pub trigger_id: TriggerId,
    pub contact_id: Option<ContactId>,
    /// Overrides the trigger's platform event name.
    pub event_name: Option<String>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    /// The idempotency key: the same key records nothing twice (e.g. the automation run id
    /// and step).
    pub event_id: String,
}

/// Records a conversion for an automation step, idempotently on `event_id`, and returns its
/// id. The trigger must be enabled.
pub async fn send_from_automation(
    db: &Db,
    scope: &Scope,
    request: &AutomationConversion,
) -> ApiResult<ConversionId> {
    let trigger = triggers::get_row(db, scope, request.trigger_id).await?;
    if !trigger.enabled {
        return Err(ApiError::unprocessable(
            "trigger_disabled",
            "The conversion trigger is disabled.",
        ));
    }
    if request.event_id.trim().is_empty() || request.event_id.len() > 200 {
        return Err(ApiError::invalid_field(
            "event_id",
            "`event_id` must be 1 to 200 characters.",
        ));
    }
    let source = SourceEvent {
        event_id: request.event_id.trim().to_owned(),
        contact_id: request.contact_id,
        value: request.value,
        currency: request.currency.clone(),
        event_name: request.event_name.clone(),
        ..SourceEvent::default()
    };
    record(db, scope, &trigger, &source).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversionQuery {
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub status: Option<ConversionStatus>,
    pub trigger_id: Option<TriggerId>,
}

/// The workspace's conversions, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/events", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ConversionQuery),
    responses((status = 200, body = Page<ConversionEvent>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_conversions(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<ConversionQuery>,
) -> ApiResult<Json<Page<ConversionEvent>>> {
    scope.require(Role::Member)?;
    let page = platform::http::PageParams {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let status = query.status.map(ConversionStatus::as_str);
    let rows: Vec<EventRow> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM conversion_events WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
           AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR trigger_id = $4)
         ORDER BY id DESC LIMIT $5"
    ))).bind(scope.workspace_id).bind(cursor).bind(status).bind(query.trigger_id)
       .bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Json(
        Page::from_rows(rows, limit, |r| r.id.uuid()).map(EventRow::into_api),
    ))
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: ConversionAttemptId,
    attempt: i32,
    outcome: String,
    request: String,
    response_status: Option<i32>,
    response: Option<String>,
    error: Option<String>,
    created_at: Timestamp,
}

/// One conversion with every delivery attempt.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/events/{conversion_id}", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("conversion_id" = ConversionId, Path)),
    responses((status = 200, body = ConversionDetail), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_conversion(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ConversionId)>,
) -> ApiResult<Json<ConversionDetail>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    let row: Option<EventRow> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM conversion_events WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    let row = row.ok_or_else(conversion_not_found)?;
    let attempts: Vec<AttemptRow> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT id, attempt, outcome, request, response_status, response, error, created_at
         FROM conversion_attempts WHERE workspace_id = $1 AND conversion_id = $2 ORDER BY id",
    ).bind(scope.workspace_id).bind(id).fetch_all(pool).await)?;
    Ok(Json(ConversionDetail {
        conversion: row.into_api(),
        attempts_log: attempts
            .into_iter()
            .map(|a| ConversionAttempt {
                id: a.id,
                attempt: a.attempt.max(0) as u32,
                outcome: a.outcome,
                request: serde_json::from_str(&a.request).unwrap_or(Value::Null),
                response_status: a.response_status.and_then(|s| u16::try_from(s).ok()),
                response: a.response,
                error: a.error,
                created_at: a.created_at,
            })
            .collect(),
    }))
}
