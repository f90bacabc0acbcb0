//! The webhooks API: `/api/v1/workspaces/{workspace_id}/webhooks/…`. Members read, admins
//! write. A secret is shown once, when it is created or rotated.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, EndpointChanges, NewEndpoint};
use super::{
    Attempt, Endpoint, EndpointId, Message, MessageId, MessageStatus, deliver, validate_event_types,
};
use crate::ssrf;
use crate::standard_webhooks::Secret;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_messages))
        .routes(routes!(get_message))
        .routes(routes!(list_attempts))
        .routes(routes!(resend_message))
        .routes(routes!(recover_messages))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// Where to POST: an absolute http(s) URL. Private and loopback addresses are refused
    /// unless the deployment allows them.
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Exact event types (`contact.created`), prefixes (`deal.*`) or `*` (the default).
    pub event_types: Option<Vec<String>>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Your own `whsec_…` secret (24 to 64 bytes of key); one is generated when absent.
    pub secret: Option<String>,
}

fn enabled_default() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `false` fails the pending messages; `true` starts the endpoint's health afresh.
    pub enabled: Option<bool>,
}

/// A new endpoint; its secret is shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    pub endpoint: Endpoint,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Your own `whsec_…` secret; one is generated when absent.
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new `whsec_…` secret, shown once.
    pub secret: String,
    /// Until then the previous secret keeps signing too: every message carries both
    /// signatures.
    pub previous_secret_expires_at: Timestamp,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageQuery {
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Only messages in this status.
    pub status: Option<MessageStatus>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Re-queue failed messages created at or after this instant (RFC 3339).
    pub since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recovered {
    /// How many failed messages were queued again.
    pub recovered: u64,
}

/// The URL, checked: absolute http(s), and not private unless allowed. A name that does not
/// resolve (yet) passes; every delivery checks again.
async fn checked_url(state: &AppState, raw: &str) -> ApiResult<String> {
    let invalid = || ApiError::invalid_field("url", "`url` must be an absolute http(s) URL.");
    if raw.len() > 2000 {
        return Err(ApiError::invalid_field(
            "url",
            "`url` must be at most 2000 characters.",
        ));
    }
    let url = ssrf::parse_http_url(raw).map_err(|_| invalid())?;
    if !deliver::allow_private(&state.config) {
        let check = ssrf::check_url(url.as_str(), false);
        if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(3), check).await
            && err.is_refusal()
        {
            return Err(ApiError::invalid_field(
                "url",
                format!("`url` must not point at a private or local address: {err}."),
            ));
        }
    }
    Ok(url.to_string())
}

fn checked_description(raw: &str) -> ApiResult<String> {
    let description = raw.trim();
    if description.chars().count() > 1000 {
        return Err(ApiError::invalid_field(
            "description",
            "`description` must be at most 1000 characters.",
        ));
    }
    Ok(description.to_owned())
}

fn chosen_secret(raw: Option<&str>) -> ApiResult<Secret> {
    match raw {
        None => Ok(Secret::generate()),
        Some(text) => {
            if !text
                .trim()
                .starts_with(crate::standard_webhooks::SECRET_PREFIX)
            {
                return Err(ApiError::invalid_field(
                    "secret",
                    "`secret` must start with `whsec_`.",
                ));
            }
            Secret::parse_strict(text)
                .map_err(|e| ApiError::invalid_field("secret", format!("`secret`: {e}.")))
        }
    }
}

/// Add a webhook endpoint (admin). The response carries its signing secret, once.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/webhooks", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path)), request_body = EndpointRequest,
    responses((status = 201, body = CreatedEndpoint), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_endpoint(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<EndpointRequest>,
) -> ApiResult<(StatusCode, Json<CreatedEndpoint>)> {
    scope.require(Role::Admin)?;
    let url = checked_url(&state, &req.url).await?;
    let description = checked_description(&req.description)?;
    let event_types = match &req.event_types {
        Some(types) => validate_event_types(types)?,
        None => vec!["*".to_owned()],
    };
    let secret = chosen_secret(req.secret.as_deref())?;
    let new = NewEndpoint {
        url,
        description,
        event_types,
        enabled: req.enabled,
    };
    let endpoint = store::create(&state.db, &state.secrets, &scope, &new, &secret).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEndpoint {
            endpoint,
            secret: secret.expose(),
        }),
    ))
}

/// The workspace's webhook endpoints, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/webhooks", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Endpoint>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_endpoints(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Endpoint>>> {
    scope.require(Role::Member)?;
    Ok(Json(store::list(&state.db, &scope, &page).await?))
}

/// One webhook endpoint.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path)),
    responses((status = 200, body = Endpoint), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_endpoint(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId)>,
) -> ApiResult<Json<Endpoint>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(store::get(&state.db, &scope, id).await?))
}

/// Change an endpoint's URL, description, filter, or enable/disable it (admin).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path)),
    request_body = EndpointUpdate,
    responses((status = 200, body = Endpoint), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_endpoint(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId)>,
    Json(req): Json<EndpointUpdate>,
) -> ApiResult<Json<Endpoint>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    // 404 before validating, so another workspace's id says nothing about the body.
    store::get(&state.db, &scope, id).await?;
    let url = match &req.url {
        Some(url) => Some(checked_url(&state, url).await?),
        None => None,
    };
    let changes = EndpointChanges {
        url,
        description: req
            .description
            .as_deref()
            .map(checked_description)
            .transpose()?,
        event_types: req
            .event_types
            .as_deref()
            .map(validate_event_types)
            .transpose()?,
        enabled: req.enabled,
    };
    Ok(Json(store::update(&state.db, &scope, id, &changes).await?))
}

/// Remove an endpoint with its messages and attempts (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_endpoint(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the signing secret (admin). The new one is shown once; the previous one keeps
/// signing for 24 hours, so messages carry both signatures meanwhile.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}/rotate-secret", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path)),
    request_body(content = Option<RotateRequest>),
    responses((status = 200, body = RotatedSecret), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn rotate_secret(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RotatedSecret>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::get(&state.db, &scope, id).await?;
    // The body is optional: no body (or `{}`) generates the secret.
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?
    };
    let secret = chosen_secret(req.secret.as_deref())?;
    let until = store::rotate_secret(&state.db, &state.secrets, &scope, id, &secret).await?;
    Ok(Json(RotatedSecret {
        secret: secret.expose(),
        previous_secret_expires_at: until,
    }))
}

/// The endpoint's messages (one per delivered event), newest first, with their status,
/// attempts and next attempt.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}/messages", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path), MessageQuery),
    responses((status = 200, body = Page<Message>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_messages(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId)>,
    Query(query): Query<MessageQuery>,
) -> ApiResult<Json<Page<Message>>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    };
    Ok(Json(
        store::list_messages(&state.db, &scope, id, query.status, &page).await?,
    ))
}

/// One message, with the body it sends.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}/messages/{message_id}", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path), ("message_id" = MessageId, Path)),
    responses((status = 200, body = Message), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_message(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId, MessageId)>,
) -> ApiResult<Json<Message>> {
    let Path((_, endpoint, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(
        store::get_message(&state.db, &scope, endpoint, id).await?,
    ))
}

/// A message's delivery attempts, newest first: status code, latency, response excerpt, error.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}/messages/{message_id}/attempts", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path), ("message_id" = MessageId, Path), PageParams),
    responses((status = 200, body = Page<Attempt>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_attempts(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId, MessageId)>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Attempt>>> {
    let Path((_, endpoint, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(
        store::list_attempts(&state.db, &scope, endpoint, id, &page).await?,
    ))
}

/// Send a message again now (admin), whatever its status; it goes through the retry schedule
/// again if it fails.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}/messages/{message_id}/resend", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path), ("message_id" = MessageId, Path)),
    responses((status = 202, body = Message), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resend_message(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId, MessageId)>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    let Path((_, endpoint, id)) = path;
    scope.require(Role::Admin)?;
    let message = store::resend(&state.db, &scope, endpoint, id).await?;
    state.jobs_wakeup.notify_one();
    Ok((StatusCode::ACCEPTED, Json(message)))
}

/// Queue every failed message created since a time again (admin), e.g. after the receiver
/// was down.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/webhooks/{endpoint_id}/recover", tag = "webhooks",
    params(("workspace_id" = WorkspaceId, Path), ("endpoint_id" = EndpointId, Path)),
    request_body = RecoverRequest,
    responses((status = 202, body = Recovered), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn recover_messages(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, EndpointId)>,
    Json(req): Json<RecoverRequest>,
) -> ApiResult<(StatusCode, Json<Recovered>)> {
    let Path((_, endpoint)) = path;
    scope.require(Role::Admin)?;
    store::get(&state.db, &scope, endpoint).await?;
    let since = chrono::DateTime::parse_from_rfc3339(req.since.trim())
        .map_err(|_| {
            ApiError::invalid_field(
                "since",
                "`since` must be an RFC 3339 time like 2026-11-22T10:00:00Z.",
            )
        })?
        .with_timezone(&chrono::Utc);
    let recovered = store::recover(&state.db, &scope, endpoint, Timestamp::from(since)).await?;
    state.jobs_wakeup.notify_one();
    Ok((StatusCode::ACCEPTED, Json(Recovered { recovered })))
}
