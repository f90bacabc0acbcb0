//! A workspace's jobs as its people see them: read, list, retry a dead job, cancel a queued one.
//! Every query filters on the scope's workspace, so another workspace's job is a 404.

use serde::Deserialize;
use serde_json::json;

use super::{Job, JobRow, JobStatus, job_columns};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::http::{Page, PageParams};
use crate::id::JobId;
use crate::tenancy::{Role, Scope};
use crate::time::Timestamp;
use crate::with_db;

/// `?status=&kind=` on the job list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
}

fn job_not_found() -> ApiError {
    ApiError::not_found("job_not_found", "No such job.")
}

fn to_job(row: JobRow) -> ApiResult<Job> {
    Job::try_from(row).map_err(ApiError::internal)
}

#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id, job_id = %id))]
pub async fn get_job(db: &Db, scope: &Scope, id: JobId) -> ApiResult<Job> {
    let row: Option<JobRow> = with_db!(db, pool => sqlx::query_as(concat!(
        "SELECT ", job_columns!(), " FROM jobs WHERE id = $1 AND workspace_id = $2"
    ))
    .bind(id)
    .bind(scope.workspace_id)
    .fetch_optional(pool)
    .await)?;
    to_job(row.ok_or_else(job_not_found)?)
}

/// Newest first, `limit` per page.
#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id))]
pub async fn list_jobs(
    db: &Db,
    scope: &Scope,
    filter: &JobFilter,
    page: &PageParams,
) -> ApiResult<Page<Job>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<JobRow> = with_db!(db, pool => sqlx::query_as(concat!(
        "SELECT ", job_columns!(), " FROM jobs \
         WHERE workspace_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR kind = $3) \
           AND ($4 IS NULL OR id < $4) \
         ORDER BY id DESC LIMIT $5"
    ))
    .bind(scope.workspace_id)
    .bind(filter.status.map(|s| s.as_str()))
    .bind(filter.kind.as_deref())
    .bind(cursor.map(JobId))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await)?;
    let jobs = rows
        .into_iter()
        .map(to_job)
        .collect::<ApiResult<Vec<Job>>>()?;
    Ok(Page::from_rows(jobs, limit, |job| job.id.uuid()))
}

/// A dead or cancelled job goes back to `queued`, due now, with its attempts reset. Needs the
/// member role.
#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id, job_id = %id))]
pub async fn retry_job(db: &Db, scope: &Scope, id: JobId) -> ApiResult<Job> {
    scope.require(Role::Member)?;
    let now = Timestamp::now();
    let row: Option<JobRow> = with_db!(db, pool => sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'queued', attempts = 0, run_at = $3, finished_at = NULL, \
           updated_at = $3 \
         WHERE id = $1 AND workspace_id = $2 AND status IN ('dead', 'cancelled') \
         RETURNING ", job_columns!()
    ))
    .bind(id)
    .bind(scope.workspace_id)
    .bind(now)
    .fetch_optional(pool)
    .await)?;
    match row {
        Some(row) => to_job(row),
        None => Err(wrong_status(
            get_job(db, scope, id).await?.status,
            "job_not_retryable",
            "Only dead or cancelled jobs can be retried",
        )),
    }
}

/// A queued job becomes `cancelled`; a running or finished one cannot. Needs the member role.
#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id, job_id = %id))]
pub async fn cancel_job(db: &Db, scope: &Scope, id: JobId) -> ApiResult<Job> {
    scope.require(Role::Member)?;
    let now = Timestamp::now();
    let row: Option<JobRow> = with_db!(db, pool => sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'cancelled', finished_at = $3, updated_at = $3 \
         WHERE id = $1 AND workspace_id = $2 AND status = 'queued' \
         RETURNING ", job_columns!()
    ))
    .bind(id)
    .bind(scope.workspace_id)
    .bind(now)
    .fetch_optional(pool)
    .await)?;
    match row {
        Some(row) => to_job(row),
        None => Err(wrong_status(
            get_job(db, scope, id).await?.status,
            "job_not_cancellable",
            "Only queued jobs can be cancelled",
        )),
    }
}

fn wrong_status(status: JobStatus, code: &'static str, rule: &str) -> ApiError {
    ApiError::conflict(code, format!("{rule}; this job is {}.", status.as_str()))
        .with_details(json!({ "status": status }))
}
