//! `/api/v1/workspaces/{workspace_id}/jobs…`: a workspace's jobs, readable by any member and
//! replayable or cancellable by members and above.

use axum::extract::State;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Job, JobFilter, admin};
use crate::error::{ApiResult, ErrorBody};
use crate::http::{Json, Page, PageParams, Path, Query};
use crate::id::{JobId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::Scope;

/// `/workspaces/{workspace_id}/jobs/{job_id}`; the workspace is checked by the [`Scope`].
#[derive(Debug, Deserialize)]
struct JobPath {
    job_id: JobId,
}

/// The job routes, relative to `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
}

/// List the workspace's jobs, newest first.
#[utoipa::path(
    get,
    path = "/workspaces/{workspace_id}/jobs",
    tag = "jobs",
    params(
        ("workspace_id" = WorkspaceId, Path, description = "The workspace."),
        JobFilter,
        PageParams,
    ),
    responses(
        (status = 200, description = "A page of jobs.", body = Page<Job>),
        (status = 400, description = "Bad filter, limit or cursor.", body = ErrorBody),
        (status = 404, description = "No such workspace.", body = ErrorBody),
    )
)]
async fn list_jobs(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<JobFilter>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Job>>> {
    admin::list_jobs(&state.db, &scope, &filter, &page)
        .await
        .map(Json)
}

/// One job, with its attempts and last error.
#[utoipa::path(
    get,
    path = "/workspaces/{workspace_id}/jobs/{job_id}",
    tag = "jobs",
    params(
        ("workspace_id" = WorkspaceId, Path, description = "The workspace."),
        ("job_id" = JobId, Path, description = "The job."),
    ),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 404, description = "No such workspace or job.", body = ErrorBody),
    )
)]
async fn get_job(
    State(state): State<AppState>,
    scope: Scope,
    Path(path): Path<JobPath>,
) -> ApiResult<Json<Job>> {
    admin::get_job(&state.db, &scope, path.job_id)
        .await
        .map(Json)
}

/// Replay a dead or cancelled job: queued again now, attempts reset.
#[utoipa::path(
    post,
    path = "/workspaces/{workspace_id}/jobs/{job_id}/retry",
    tag = "jobs",
    params(
        ("workspace_id" = WorkspaceId, Path, description = "The workspace."),
        ("job_id" = JobId, Path, description = "The job."),
    ),
    responses(
        (status = 200, description = "The job, queued again.", body = Job),
        (status = 403, description = "Needs the member role.", body = ErrorBody),
        (status = 404, description = "No such workspace or job.", body = ErrorBody),
        (status = 409, description = "The job is not dead or cancelled (`job_not_retryable`).", body = ErrorBody),
    )
)]
async fn retry_job(
    State(state): State<AppState>,
    scope: Scope,
    Path(path): Path<JobPath>,
) -> ApiResult<Json<Job>> {
    let job = admin::retry_job(&state.db, &scope, path.job_id).await?;
    state.jobs_wakeup.notify_one();
    Ok(Json(job))
}

/// Cancel a job that has not started.
#[utoipa::path(
    post,
    path = "/workspaces/{workspace_id}/jobs/{job_id}/cancel",
    tag = "jobs",
    params(
        ("workspace_id" = WorkspaceId, Path, description = "The workspace."),
        ("job_id" = JobId, Path, description = "The job."),
    ),
    responses(
        (status = 200, description = "The job, cancelled.", body = Job),
        (status = 403, description = "Needs the member role.", body = ErrorBody),
        (status = 404, description = "No such workspace or job.", body = ErrorBody),
        (status = 409, description = "The job is running or finished (`job_not_cancellable`).", body = ErrorBody),
    )
)]
async fn cancel_job(
    State(state): State<AppState>,
    scope: Scope,
    Path(path): Path<JobPath>,
) -> ApiResult<Json<Job>> {
    admin::cancel_job(&state.db, &scope, path.job_id)
        .await
        .map(Json)
}
