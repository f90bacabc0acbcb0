//! The automations API: `/api/v1/workspaces/{workspace_id}/automations/…` — rules, versions,
//! duplicate, dry run, and runs (list, inspect, retry). Members manage rules; viewers read.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiResult, AppState, Role, Scope};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::{DryRun, DryRunRequest, Engine, Run};
use crate::store::{self, Automation, AutomationChange, NewAutomation, Version};
use crate::{AutomationId, RunId, trigger_api};

/// Routes to nest under `/api/v1`; they need the [`Engine`] as an `Extension`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_automation, list_automations))
        .routes(routes!(
            get_automation,
            update_automation,
            delete_automation
        ))
        .routes(routes!(list_versions))
        .routes(routes!(duplicate_automation))
        .routes(routes!(dry_run))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(retry_run))
        .routes(routes!(trigger_api::send_event))
}

/// Create a rule: triggers, optional conditions, steps in order.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/automations", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path)), request_body = NewAutomation,
    responses((status = 201, body = Automation), (status = 422, body = ErrorBody)))]
async fn create_automation(
    State(state): State<AppState>,
    Extension(engine): Extension<Engine>,
    scope: Scope,
    Json(req): Json<NewAutomation>,
) -> ApiResult<(StatusCode, Json<Automation>)> {
    scope.require(Role::Member)?;
    let created = store::create(&state.db, engine.plugins(), &scope, req).await?;
    engine.refresh_watched().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Rules of the workspace, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/automations", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Automation>), (status = 404, body = ErrorBody)))]
async fn list_automations(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Automation>>> {
    Ok(Json(store::list(&state.db, &scope, &page).await?))
}

/// One rule (its current version).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/automations/{automation_id}", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path)),
    responses((status = 200, body = Automation), (status = 404, body = ErrorBody)))]
async fn get_automation(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
) -> ApiResult<Json<Automation>> {
    let Path((_, id)) = path;
    Ok(Json(store::get(&state.db, &scope, id).await?))
}

/// Change a rule: rename, enable/disable, or a new definition (a new version).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/automations/{automation_id}", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path)),
    request_body = AutomationChange,
    responses((status = 200, body = Automation), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_automation(
    State(state): State<AppState>,
    Extension(engine): Extension<Engine>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
    Json(req): Json<AutomationChange>,
) -> ApiResult<Json<Automation>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    let updated = store::update(&state.db, engine.plugins(), &scope, id, req).await?;
    engine.refresh_watched().await?;
    Ok(Json(updated))
}

/// Delete a rule with its versions and runs.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/automations/{automation_id}", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_automation(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    store::delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every saved version of a rule, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/automations/{automation_id}/versions", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path)),
    responses((status = 200, body = Vec<Version>), (status = 404, body = ErrorBody)))]
async fn list_versions(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
) -> ApiResult<Json<Vec<Version>>> {
    let Path((_, id)) = path;
    Ok(Json(store::versions(&state.db, &scope, id).await?))
}

/// Copy a rule (disabled, named "… (copy)").
#[utoipa::path(post, path = "/workspaces/{workspace_id}/automations/{automation_id}/duplicate", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path)),
    responses((status = 201, body = Automation), (status = 404, body = ErrorBody)))]
async fn duplicate_automation(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
) -> ApiResult<(StatusCode, Json<Automation>)> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok((
        StatusCode::CREATED,
        Json(store::duplicate(&state.db, &scope, id).await?),
    ))
}

/// What the rule would do with a sample event; nothing is changed.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/automations/{automation_id}/dry-run", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path)),
    request_body = DryRunRequest,
    responses((status = 200, body = DryRun), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn dry_run(
    Extension(engine): Extension<Engine>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
    Json(req): Json<DryRunRequest>,
) -> ApiResult<Json<DryRun>> {
    let Path((_, id)) = path;
    Ok(Json(engine.dry_run(&scope, id, &req).await?))
}

/// Runs of a rule, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/automations/{automation_id}/runs", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path), PageParams),
    responses((status = 200, body = Page<Run>), (status = 404, body = ErrorBody)))]
async fn list_runs(
    Extension(engine): Extension<Engine>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId)>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Run>>> {
    let Path((_, id)) = path;
    Ok(Json(engine.list_runs(&scope, id, &page).await?))
}

/// One run with its steps: status, inputs, outputs, errors and timing.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/automations/{automation_id}/runs/{run_id}", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path), ("run_id" = RunId, Path)),
    responses((status = 200, body = Run), (status = 404, body = ErrorBody)))]
async fn get_run(
    Extension(engine): Extension<Engine>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId, RunId)>,
) -> ApiResult<Json<Run>> {
    let Path((_, id, run)) = path;
    Ok(Json(engine.get_run(&scope, id, run).await?))
}

/// Retry a failed run from its failed step.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/automations/{automation_id}/runs/{run_id}/retry", tag = "automations",
    params(("workspace_id" = WorkspaceId, Path), ("automation_id" = AutomationId, Path), ("run_id" = RunId, Path)),
    responses((status = 200, body = Run), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_run(
    Extension(engine): Extension<Engine>,
    scope: Scope,
    path: Path<(WorkspaceId, AutomationId, RunId)>,
) -> ApiResult<Json<Run>> {
    let Path((_, id, run)) = path;
    scope.require(Role::Member)?;
    Ok(Json(engine.retry_run(&scope, id, run).await?))
}
