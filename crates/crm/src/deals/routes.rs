//! The pipelines and deals API: `/api/v1/workspaces/{workspace_id}/pipelines/…` and `/deals/…`.
//!
//! Pipelines are configuration: any member reads them, admins change them. Deals are daily work:
//! members create and change them, admins delete them.

use axum::extract::State;
use axum::http::StatusCode;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiResult, AppState, Role, Scope};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store;
use super::{
    Board, BoardParams, Deal, DealChange, DealFilter, NewDeal, NewPipeline, Pipeline,
    PipelineChange, StageStay,
};
use crate::{DealId, PipelineId};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pipeline, list_pipelines))
        .routes(routes!(get_pipeline, update_pipeline, delete_pipeline))
        .routes(routes!(pipeline_board))
        .routes(routes!(create_deal, list_deals))
        .routes(routes!(get_deal, update_deal, delete_deal))
        .routes(routes!(deal_history))
}

/// Create a pipeline with its stages in order (admin). Stage names are unique in the pipeline
/// and at least one stage is `open`.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/pipelines", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path)), request_body = NewPipeline,
    responses((status = 201, body = Pipeline), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_pipeline(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<NewPipeline>,
) -> ApiResult<(StatusCode, Json<Pipeline>)> {
    scope.require(Role::Admin)?;
    Ok((
        StatusCode::CREATED,
        Json(store::create_pipeline(&state.db, &scope, &req).await?),
    ))
}

/// Pipelines of the workspace with their stages, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/pipelines", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Pipeline>), (status = 404, body = ErrorBody)))]
async fn list_pipelines(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Pipeline>>> {
    Ok(Json(store::list_pipelines(&state.db, &scope, &page).await?))
}

/// One pipeline with its stages in order.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/pipelines/{pipeline_id}", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("pipeline_id" = PipelineId, Path)),
    responses((status = 200, body = Pipeline), (status = 404, body = ErrorBody)))]
async fn get_pipeline(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, PipelineId)>,
) -> ApiResult<Json<Pipeline>> {
    let Path((_, id)) = path;
    Ok(Json(store::get_pipeline(&state.db, &scope, id).await?))
}

/// Rename a pipeline and/or replace its stage list (admin). A stage item with `id` keeps that
/// stage (renamed, moved, re-weighted); one without adds a stage; a stage left out is removed,
/// which is a 409 `stage_in_use` while deals are in it (as is changing its kind).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/pipelines/{pipeline_id}", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("pipeline_id" = PipelineId, Path)), request_body = PipelineChange,
    responses((status = 200, body = Pipeline), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_pipeline(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, PipelineId)>,
    Json(req): Json<PipelineChange>,
) -> ApiResult<Json<Pipeline>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    Ok(Json(
        store::update_pipeline(&state.db, &scope, id, &req).await?,
    ))
}

/// Delete a pipeline and its stages (admin); 409 `pipeline_in_use` while it has deals.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/pipelines/{pipeline_id}", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("pipeline_id" = PipelineId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_pipeline(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, PipelineId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete_pipeline(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The pipeline's board: stages in order, each with its deal count, totals and weighted totals
/// per currency, and its newest deals.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/pipelines/{pipeline_id}/board", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("pipeline_id" = PipelineId, Path), BoardParams),
    responses((status = 200, body = Board), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn pipeline_board(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, PipelineId)>,
    Query(params): Query<BoardParams>,
) -> ApiResult<Json<Board>> {
    let Path((_, id)) = path;
    Ok(Json(store::board(&state.db, &scope, id, &params).await?))
}

/// Create a deal in a pipeline (default: its first open stage).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/deals", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path)), request_body = NewDeal,
    responses((status = 201, body = Deal), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_deal(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<NewDeal>,
) -> ApiResult<(StatusCode, Json<Deal>)> {
    scope.require(Role::Member)?;
    Ok((
        StatusCode::CREATED,
        Json(store::create_deal(&state.db, &scope, &req).await?),
    ))
}

/// Deals, newest first, filtered by pipeline, stage, status, contact, company or owner.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/deals", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), DealFilter, PageParams),
    responses((status = 200, body = Page<Deal>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_deals(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<DealFilter>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Deal>>> {
    Ok(Json(
        store::list_deals(&state.db, &scope, &filter, &page).await?,
    ))
}

/// One deal.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/deals/{deal_id}", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("deal_id" = DealId, Path)),
    responses((status = 200, body = Deal), (status = 404, body = ErrorBody)))]
async fn get_deal(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, DealId)>,
) -> ApiResult<Json<Deal>> {
    let Path((_, id)) = path;
    Ok(Json(store::get_deal(&state.db, &scope, id).await?))
}

/// Change a deal: absent fields are kept, `null` clears. A new `stage_id` moves it (into a
/// won/lost stage closes it); `status` closes or reopens it.
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/deals/{deal_id}", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("deal_id" = DealId, Path)), request_body = DealChange,
    responses((status = 200, body = Deal), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_deal(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, DealId)>,
    Json(req): Json<DealChange>,
) -> ApiResult<Json<Deal>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(store::update_deal(&state.db, &scope, id, &req).await?))
}

/// Delete a deal with its stage history, notes and tasks (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/deals/{deal_id}", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("deal_id" = DealId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_deal(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, DealId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete_deal(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The deal's stays in stages, oldest first, with how long each lasted (the current one: so
/// far) and who moved the deal there.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/deals/{deal_id}/history", tag = "deals",
    params(("workspace_id" = WorkspaceId, Path), ("deal_id" = DealId, Path)),
    responses((status = 200, body = Vec<StageStay>), (status = 404, body = ErrorBody)))]
async fn deal_history(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, DealId)>,
) -> ApiResult<Json<Vec<StageStay>>> {
    let Path((_, id)) = path;
    Ok(Json(store::history(&state.db, &scope, id).await?))
}
