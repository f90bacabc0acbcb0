//! The sites API: `/api/v1/workspaces/{workspace_id}/sites/…`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{Datelike, NaiveDate};
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::directory::SiteDirectory;
use super::store::{self, CreatedSite, UsageDay};
use super::{Site, SiteId, SiteRequest};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_site, list_sites))
        .routes(routes!(get_site, update_site, delete_site))
        .routes(routes!(rotate_write_key))
        .routes(routes!(rotate_mp_secret))
        .routes(routes!(site_usage))
}

type Directory = Extension<Arc<SiteDirectory>>;

/// Applies a change to the routing directory at once (other processes follow within seconds).
async fn refresh(directory: &SiteDirectory) {
    if let Err(err) = directory.reload().await {
        tracing::warn!(error = %err, "site directory reload failed after a change");
    }
}

/// Create a site (admin). The response carries the Measurement Protocol secret, once.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/sites", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path)), request_body = SiteRequest,
    responses((status = 201, body = CreatedSite), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_site(
    State(state): State<AppState>,
    Extension(directory): Directory,
    scope: Scope,
    Json(req): Json<SiteRequest>,
) -> ApiResult<(StatusCode, Json<CreatedSite>)> {
    scope.require(Role::Admin)?;
    let created = store::create(&state.db, &scope, &req).await?;
    refresh(&directory).await;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Sites of the workspace.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Site>), (status = 404, body = ErrorBody)))]
async fn list_sites(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Site>>> {
    Ok(Json(store::list(&state.db, &scope, &page).await?))
}

/// One site.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)),
    responses((status = 200, body = Site), (status = 404, body = ErrorBody)))]
async fn get_site(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
) -> ApiResult<Json<Site>> {
    let Path((_, id)) = path;
    Ok(Json(store::get(&state.db, &scope, id).await?))
}

/// Change a site (admin); absent fields are kept, `null` clears an optional one.
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/sites/{site_id}", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)), request_body = SiteRequest,
    responses((status = 200, body = Site), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_site(
    State(state): State<AppState>,
    Extension(directory): Directory,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    Json(req): Json<SiteRequest>,
) -> ApiResult<Json<Site>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let site = store::update(&state.db, &scope, id, &req).await?;
    refresh(&directory).await;
    Ok(Json(site))
}

/// Delete a site and its counters (admin). Its hostnames stop serving at once.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/sites/{site_id}", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_site(
    State(state): State<AppState>,
    Extension(directory): Directory,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete(&state.db, &scope, id).await?;
    refresh(&directory).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the site's write key (admin); the old one stops working at once.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/sites/{site_id}/write-key", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)),
    responses((status = 200, body = Site), (status = 404, body = ErrorBody)))]
async fn rotate_write_key(
    State(state): State<AppState>,
    Extension(directory): Directory,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
) -> ApiResult<Json<Site>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let site = store::rotate_write_key(&state.db, &scope, id).await?;
    refresh(&directory).await;
    Ok(Json(site))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MpSecret {
    /// The new `api_secret` for `/mp/collect`; shown once.
    pub mp_api_secret: String,
}

/// Replace the Measurement Protocol secret (admin).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/sites/{site_id}/mp-secret", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path)),
    responses((status = 200, body = MpSecret), (status = 404, body = ErrorBody)))]
async fn rotate_mp_secret(
    State(state): State<AppState>,
    Extension(directory): Directory,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
) -> ApiResult<Json<MpSecret>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let mp_api_secret = store::rotate_mp_secret(&state.db, &scope, id).await?;
    refresh(&directory).await;
    Ok(Json(MpSecret { mp_api_secret }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First UTC day, `YYYY-MM-DD` (default: 30 days ago).
    pub from: Option<String>,
    /// Last UTC day, `YYYY-MM-DD` (default: today).
    pub to: Option<String>,
}

fn parse_day(field: &str, value: Option<&str>, default: NaiveDate) -> ApiResult<NaiveDate> {
    match value {
        None => Ok(default),
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{field}` must be a date like 2026-11-22."),
            )
        }),
    }
}

/// Daily traffic counters of a site: accepted requests and events, rejections by reason.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/sites/{site_id}/usage", tag = "sites",
    params(("workspace_id" = WorkspaceId, Path), ("site_id" = SiteId, Path), UsageQuery),
    responses((status = 200, body = Vec<UsageDay>), (status = 404, body = ErrorBody)))]
async fn site_usage(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SiteId)>,
    Query(query): Query<UsageQuery>,
) -> ApiResult<Json<Vec<UsageDay>>> {
    let Path((_, id)) = path;
    let today = chrono::Utc::now().date_naive();
    let to = parse_day("to", query.to.as_deref(), today)?;
    let from = parse_day("from", query.from.as_deref(), to - chrono::Days::new(30))?;
    if from > to || (to - from).num_days() > 400 || from.year() < 2000 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`from` must be before `to`, at most 400 days apart.",
        ));
    }
    let days = store::usage(&state.db, &scope, id, &from.to_string(), &to.to_string()).await?;
    Ok(Json(days))
}
