//! The trigger API: `POST /api/v1/workspaces/{workspace_id}/automations/events` (any workspace
//! credential) and the same payload at `POST /api/crm/automations/events` with `x-api-key` and
//! `x-client-code` (the workspace id) headers, for clients of the old system.
//!
//! It finds the contact (`contact_id`, else `email`/`phone`), creates it from `leadData` when
//! `createLeadIfMissing` is set, and publishes `automation.event_received` in the same
//! transaction: `{"trigger", "contact_id", "variables", "event_id"}`. Rules with a `custom`
//! trigger of that name run from the outbox, like every other trigger.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use crm::ContactId;
use crm::contacts::ContactInput;
use platform::error::ErrorBody;
use platform::http::Json;
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::EVENT_RECEIVED;
use crate::definition::valid_trigger_name;

platform::typed_id!(
    /// One request to the trigger API (the `event_id` of `automation.event_received`).
    TriggerEventId,
    "tev"
);

/// A custom event (field names as the old system sent them).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRequest {
    /// The custom trigger name, e.g. `appointment_confirmed`, `product_purchased`,
    /// `service_enrolled`, `form_submitted`, `appointment_reminder`, `deal_won`, `deal_lost`,
    /// `tag_added`, `tag_removed`.
    pub trigger: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    #[serde(alias = "contact_id")]
    pub contact_id: Option<ContactId>,
    /// Free-form parameters, seen by rules as `event.variables.*`.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Map<String, Value>>,
    /// Create the contact from `email`/`phone` and `leadData` when none matches.
    #[serde(default, alias = "create_lead_if_missing")]
    pub create_lead_if_missing: bool,
    /// `name` (or `firstName`/`lastName`), `tags`, `custom` for a created contact.
    #[serde(alias = "lead_data")]
    #[schema(value_type = Option<Object>)]
    pub lead_data: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventAccepted {
    /// The id rules see as `event.event_id` (and runs as their trigger event).
    pub event_id: TriggerEventId,
    pub contact_id: ContactId,
    /// The contact was created by this request.
    pub contact_created: bool,
}

/// The legacy route, outside `/api/v1`.
pub fn legacy_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(send_event_legacy))
}

/// Send a custom event to the automations of the workspace.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/automations/events", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path)), request_body = EventRequest,
    responses((status = 202, body = EventAccepted), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn send_event(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<EventRequest>,
) -> ApiResult<(StatusCode, Json<EventAccepted>)> {
    scope.require(Role::Member)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(accept(&state, &scope, req).await?),
    ))
}

/// The same as `POST /api/v1/workspaces/{workspace_id}/automations/events`, authenticated by a
/// workspace API key in `x-api-key` and the workspace id in `x-client-code`.
#[utoipa::path(post, path = "/api/crm/automations/events", tag = "automations",
    params(("x-api-key" = String, Header), ("x-client-code" = String, Header)),
    request_body = EventRequest,
    responses((status = 202, body = EventAccepted), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn send_event_legacy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<EventRequest>,
) -> ApiResult<(StatusCode, Json<EventAccepted>)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let refused = || ApiError::unauthorized("Missing or invalid `x-api-key` / `x-client-code`.");
    let key = header("x-api-key").ok_or_else(refused)?;
    let workspace: WorkspaceId = header("x-client-code")
        .and_then(|c| c.parse().ok())
        .ok_or_else(refused)?;
    let principal = platform::auth::verify_api_key(&state.db, key)
        .await
        .map_err(|_| refused())?;
    let scope = platform::auth::scope_for(&state, &principal, workspace)
        .await
        .map_err(|_| refused())?;
    scope.require(Role::Member)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(accept(&state, &scope, req).await?),
    ))
}

fn lead_input(req: &EventRequest) -> ApiResult<ContactInput> {
    let data = req.lead_data.clone().unwrap_or_default();
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| data.get(*k).and_then(Value::as_str))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let mut input = ContactInput::default();
    let first = text(&["firstName", "first_name"]);
    let last = text(&["lastName", "last_name"]);
    match (first, last, text(&["name"])) {
        (None, None, Some(name)) => {
            let (f, l) = name
                .split_once(' ')
                .map_or((name.as_str(), None), |(f, l)| (f, Some(l.trim())));
            input.first_name = Some(Some(f.to_owned()));
            input.last_name = l.filter(|l| !l.is_empty()).map(|l| Some(l.to_owned()));
        }
        (f, l, _) => {
            input.first_name = f.map(Some);
            input.last_name = l.map(Some);
        }
    }
    let email = req.email.clone().or_else(|| text(&["email"]));
    let phone = req.phone.clone().or_else(|| text(&["phone"]));
    input.emails = email.map(|e| vec![e]);
    input.phones = phone.map(|p| vec![p]);
    if let Some(tags) = data.get("tags") {
        let tags: Vec<String> = serde_json::from_value(tags.clone()).map_err(|_| {
            ApiError::invalid_field("leadData.tags", "`leadData.tags` is a list of texts.")
        })?;
        input.tags = Some(tags);
    }
    if let Some(custom) = data.get("custom") {
        let custom = custom.as_object().cloned().ok_or_else(|| {
            ApiError::invalid_field("leadData.custom", "`leadData.custom` is an object.")
        })?;
        input.custom = Some(custom);
    }
    Ok(input)
}

async fn accept(state: &AppState, scope: &Scope, req: EventRequest) -> ApiResult<EventAccepted> {
    let trigger = req.trigger.trim().to_owned();
    if !valid_trigger_name(&trigger) {
        return Err(ApiError::invalid_field(
            "trigger",
            "`trigger` is 1 to 100 of a-z, 0-9, `_`, `.`, `-` (e.g. `appointment_confirmed`).",
        ));
    }
    if req.contact_id.is_none() && req.email.is_none() && req.phone.is_none() {
        return Err(ApiError::invalid_field(
            "contact_id",
            "Name the contact: `contact_id`, `email` or `phone`.",
        ));
    }
    let variables = req.variables.clone().unwrap_or_default();
    if serde_json::to_string(&variables).map_or(0, |s| s.len()) > 64 * 1024 {
        return Err(ApiError::invalid_field(
            "variables",
            "`variables` is at most 64 KiB of JSON.",
        ));
    }
    let mut tx = state.db.begin().await?;
    let mut found = None;
    if let Some(id) = req.contact_id {
        found = Some(crm::contacts::store::resolve_in(&mut tx, scope, id).await?);
    }
    for (kind, value) in [("email", &req.email), ("phone", &req.phone)] {
        if found.is_some() {
            break;
        }
        if let Some(value) = value {
            found = crm::contacts::store::find_by_identifier_in(&mut tx, scope, kind, value)
                .await
                .map_err(|e| rename_field(e, kind))?;
        }
    }
    let (contact, created) = match found {
        Some(id) => (id, false),
        None if req.create_lead_if_missing && (req.email.is_some() || req.phone.is_some()) => {
            let input = lead_input(&req)?;
            let upserted = crm::contacts::store::upsert(&mut tx, scope, &input).await?;
            (upserted.contact.id, upserted.created)
        }
        None => {
            return Err(crm::contacts::store::contact_not_found());
        }
    };
    let event_id = TriggerEventId::new();
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        EVENT_RECEIVED,
        &json!({
            "trigger": trigger,
            "contact_id": contact,
            "variables": variables,
            "event_id": event_id.to_string(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(EventAccepted {
        event_id,
        contact_id: contact,
        contact_created: created,
    })
}

fn rename_field(mut err: ApiError, field: &str) -> ApiError {
    if err.details.is_some() {
        err.details = Some(json!({ "field": field }));
    }
    err
}
