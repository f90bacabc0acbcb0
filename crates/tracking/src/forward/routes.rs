//! The destinations API: `/api/v1/workspaces/{workspace_id}/sites/{site_id}/destinations/…`.

use axum::extract::State;
use axum::http::StatusCode;
use platform::error::ErrorBody;
use platform::http::{Json, Path};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    COLUMNS, Destination, DestinationId, DestinationKind, DestinationRow, get_row, seal_context,
};
use crate::sites::{SiteId, store as sites};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_destination, list_destinations))
        .routes(routes!(
            get_destination,
            update_destination,
            delete_destination
        ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationRequest {
    pub kind: DestinationKind,
    pub name: String,
    /// Where to send: the tagging server's or endpoint's base URL; for GA4 the collection
    /// origin (default `https://www.google-analytics.com`).
    pub url: Option<String>,
    /// GA4 only.
    pub measurement_id: Option<String>,
    /// GA4 only: the Measurement Protocol secret from the GA4 property.
    pub api_secret: Option<String>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationUpdate {
    pub name: Option<String>,
    pub url: Option<String>,
    pub enabled: Option<bool>,
}

/// A new destination; an HTTP destination's signing secret is shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedDestination {
    pub destination: Destination,
    /// `whsec_…` for `http` destinations: verify `webhook-signature` with it.
    pub signing_secret: Option<String>,
}

fn validate_url(raw: &str) -> ApiResult<String> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|_| ApiError::invalid_field("url", "`url` must be an absolute http(s) URL."))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::invalid_field(
            "url",
            "`url` must be an http(s) URL.",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn validate_name(raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` must be 1 to 200 characters.",
        ));
    }
    Ok(name.to_owned())
}

/// Add a destination to a site (admin).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/sites/{site_id}/destinations", tag = "destinations",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)), request_body = DestinationRequest,
    responses((status = 201, body = CreatedDestination), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_destination(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    Json(req): Json<DestinationRequest>,
) -> ApiResult<(StatusCode, Json<CreatedDestination>)> {
    let Path((_, site_id)) = path;
    scope.require(Role::Admin)?;
    sites::get(&state.db, &scope, site_id).await?;
    let name = validate_name(&req.name)?;
    let (url, measurement_id, secrets, signing_secret) = match req.kind {
        DestinationKind::TaggingServer => {
            let url = req
                .url
                .as_deref()
                .ok_or_else(|| ApiError::invalid_field("url", "`url` is required."))?;
            (validate_url(url)?, None, None, None)
        }
        DestinationKind::Ga4 => {
            let id = req
                .measurement_id
                .as_deref()
                .map(|m| m.trim().to_ascii_uppercase())
                .unwrap_or_default();
            if !crate::ga4::is_measurement_id(&id) {
                return Err(ApiError::invalid_field(
                    "measurement_id",
                    "`measurement_id` must be a GA4 id (G-XXXXXXX).",
                ));
            }
            let secret = req
                .api_secret
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid_field("api_secret", "`api_secret` is required for GA4.")
                })?;
            let url = validate_url(
                req.url
                    .as_deref()
                    .unwrap_or("https://www.google-analytics.com"),
            )?;
            (
                url,
                Some(id),
                Some(serde_json::json!({ "api_secret": secret })),
                None,
            )
        }
        DestinationKind::Http => {
            let url = req
                .url
                .as_deref()
                .ok_or_else(|| ApiError::invalid_field("url", "`url` is required."))?;
            let secret = format!(
                "whsec_{}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand_bytes())
            );
            (
                validate_url(url)?,
                None,
                Some(serde_json::json!({ "secret": secret })),
                Some(secret),
            )
        }
    };
    let id = DestinationId::new();
    let sealed = secrets.map(|s| {
        state
            .secrets
            .seal(s.to_string().as_bytes(), &seal_context(id))
    });
    let now = Timestamp::now();
    with_db!(&state.db, pool => sqlx::query(
        "INSERT INTO destinations (id, workspace_id, site_id, kind, name, url, measurement_id, config_sealed,
             enabled, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    ).bind(id).bind(scope.workspace_id).bind(site_id).bind(req.kind.as_str()).bind(&name).bind(&url)
     .bind(&measurement_id).bind(&sealed).bind(req.enabled).bind(now)
     .execute(pool).await.map(|_| ()))?;
    let destination = get_row(&state.db, &scope, site_id, id).await?.into_api();
    Ok((
        StatusCode::CREATED,
        Json(CreatedDestination {
            destination,
            signing_secret,
        }),
    ))
}

fn rand_bytes() -> [u8; 24] {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes
}

/// A site's destinations with their delivery counters and last errors.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/destinations", tag = "destinations",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)),
    responses((status = 200, body = Vec<Destination>), (status = 404, body = ErrorBody)))]
async fn list_destinations(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
) -> ApiResult<Json<Vec<Destination>>> {
    let Path((_, site_id)) = path;
    sites::get(&state.db, &scope, site_id).await?;
    let rows: Vec<DestinationRow> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM destinations WHERE workspace_id = $1 AND site_id = $2 ORDER BY id"
    ))).bind(scope.workspace_id).bind(site_id).fetch_all(pool).await)?;
    Ok(Json(
        rows.into_iter().map(DestinationRow::into_api).collect(),
    ))
}

/// One destination.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/destinations/{destination_id}", tag = "destinations",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("destination_id" = DestinationId, Path)),
    responses((status = 200, body = Destination), (status = 404, body = ErrorBody)))]
async fn get_destination(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId, DestinationId)>,
) -> ApiResult<Json<Destination>> {
    let Path((_, site_id, id)) = path;
    Ok(Json(
        get_row(&state.db, &scope, site_id, id).await?.into_api(),
    ))
}

/// Rename, re-point, enable or disable a destination (admin).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/sites/{site_id}/destinations/{destination_id}", tag = "destinations",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("destination_id" = DestinationId, Path)),
    request_body = DestinationUpdate,
    responses((status = 200, body = Destination), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_destination(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId, DestinationId)>,
    Json(req): Json<DestinationUpdate>,
) -> ApiResult<Json<Destination>> {
    let Path((_, site_id, id)) = path;
    scope.require(Role::Admin)?;
    let current = get_row(&state.db, &scope, site_id, id).await?;
    let name = match &req.name {
        Some(n) => validate_name(n)?,
        None => current.name.clone(),
    };
    let url = match &req.url {
        Some(u) => validate_url(u)?,
        None => current.url.clone(),
    };
    with_db!(&state.db, pool => sqlx::query(
        "UPDATE destinations SET name = $1, url = $2, enabled = $3, updated_at = $4
         WHERE workspace_id = $5 AND site_id = $6 AND id = $7",
    ).bind(&name).bind(&url).bind(req.enabled.unwrap_or(current.enabled)).bind(Timestamp::now())
     .bind(scope.workspace_id).bind(site_id).bind(id).execute(pool).await.map(|_| ()))?;
    Ok(Json(
        get_row(&state.db, &scope, site_id, id).await?.into_api(),
    ))
}

/// Remove a destination (admin); deliveries still queued for it are dropped.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/sites/{site_id}/destinations/{destination_id}", tag = "destinations",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), ("destination_id" = DestinationId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_destination(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId, DestinationId)>,
) -> ApiResult<StatusCode> {
    let Path((_, site_id, id)) = path;
    scope.require(Role::Admin)?;
    let deleted = with_db!(&state.db, pool => sqlx::query(
        "DELETE FROM destinations WHERE workspace_id = $1 AND site_id = $2 AND id = $3",
    ).bind(scope.workspace_id).bind(site_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(super::destination_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
