//! Per-workspace CRM settings: the default region for phone numbers written without a country
//! code.

use axum::extract::State;
use platform::db::{Db, Tx};
use platform::error::ErrorBody;
use platform::http::Json;
use platform::id::WorkspaceId;
use platform::{ApiResult, AppState, Role, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::normalize;

pub const DEFAULT_REGION: &str = "US";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CrmSettings {
    /// ISO 3166-1 alpha-2 region used to read phone numbers without a country code (default US).
    pub default_region: String,
}

/// The workspace's default phone region, inside a transaction.
pub async fn default_region(tx: &mut Tx, scope: &Scope) -> ApiResult<String> {
    let region: Option<String> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT default_region FROM crm_settings WHERE workspace_id = $1",
    ).bind(scope.workspace_id).fetch_optional(conn).await)?;
    Ok(region.unwrap_or_else(|| DEFAULT_REGION.to_owned()))
}

pub async fn get(db: &Db, scope: &Scope) -> ApiResult<CrmSettings> {
    let region: Option<String> = with_db!(db, pool => sqlx::query_scalar(
        "SELECT default_region FROM crm_settings WHERE workspace_id = $1",
    ).bind(scope.workspace_id).fetch_optional(pool).await)?;
    Ok(CrmSettings {
        default_region: region.unwrap_or_else(|| DEFAULT_REGION.to_owned()),
    })
}

pub async fn put(db: &Db, scope: &Scope, settings: &CrmSettings) -> ApiResult<CrmSettings> {
    let region = normalize::region("default_region", &settings.default_region)?;
    with_db!(db, pool => sqlx::query(
        "INSERT INTO crm_settings (workspace_id, default_region, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id) DO UPDATE SET default_region = $2, updated_at = $3",
    ).bind(scope.workspace_id).bind(&region).bind(Timestamp::now()).execute(pool).await.map(|_| ()))?;
    Ok(CrmSettings {
        default_region: region,
    })
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_settings, put_settings))
}

/// The workspace's CRM settings.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/crm/settings", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path)),
    responses((status = 200, body = CrmSettings), (status = 404, body = ErrorBody)))]
async fn get_settings(State(state): State<AppState>, scope: Scope) -> ApiResult<Json<CrmSettings>> {
    Ok(Json(get(&state.db, &scope).await?))
}

/// Change the workspace's CRM settings (admin).
#[utoipa::path(put, path = "/workspaces/{workspace_id}/crm/settings", tag = "crm",
    params(("workspace_id" = WorkspaceId, Path)), request_body = CrmSettings,
    responses((status = 200, body = CrmSettings), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_settings(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<CrmSettings>,
) -> ApiResult<Json<CrmSettings>> {
    scope.require(Role::Admin)?;
    Ok(Json(put(&state.db, &scope, &req).await?))
}
