//! Tasks: things to do, optionally about a contact and/or a deal, with a due time and an
//! assignee who is a member of the workspace. Completing one stamps `done_at`.

use axum::extract::State;
use axum::http::StatusCode;
use platform::db::{Db, Tx};
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::{UserId, WorkspaceId};
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::QueryBuilder;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_text, contact_filter, contact_ref, deal_ref, parse_time, record_on_timelines};
use crate::refs;
use crate::timeline::kind;
use crate::{ContactId, DealId, TaskId};

/// Longest task title, in characters.
pub const MAX_TITLE: usize = 500;

/// A task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Task {
    pub id: TaskId,
    pub contact_id: Option<ContactId>,
    pub deal_id: Option<DealId>,
    /// 1 to 500 characters on one line.
    pub title: String,
    pub due_at: Option<Timestamp>,
    /// A member of the workspace.
    pub assignee_id: Option<UserId>,
    /// Whether it is done (`done_at` is set).
    pub done: bool,
    pub done_at: Option<Timestamp>,
    /// Who created it: a user or API key id.
    pub author: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Create a task.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// 1 to 500 characters on one line.
    pub title: String,
    /// A contact of the workspace (a merged contact's id names its survivor).
    pub contact_id: Option<ContactId>,
    /// A deal of the workspace.
    pub deal_id: Option<DealId>,
    /// RFC 3339, e.g. `2026-11-22T14:30:00Z`.
    pub due_at: Option<String>,
    /// A member of the workspace.
    pub assignee_id: Option<UserId>,
}

/// Change a task. Absent fields are kept; `null` clears an optional one; `done` completes or
/// reopens it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskChange {
    pub title: Option<String>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<ContactId>)]
    pub contact_id: Option<Option<ContactId>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<DealId>)]
    pub deal_id: Option<Option<DealId>>,
    /// RFC 3339.
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<String>)]
    pub due_at: Option<Option<String>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<UserId>)]
    pub assignee_id: Option<Option<UserId>>,
    /// `true` completes the task (sets `done_at`), `false` reopens it (clears `done_at`).
    pub done: Option<bool>,
}

/// Open or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Open,
    Done,
}

/// Filters of the task list: all given ones must match.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskFilter {
    /// Tasks about this contact (a merged contact's id names its survivor).
    pub contact_id: Option<ContactId>,
    /// Tasks about this deal.
    pub deal_id: Option<DealId>,
    /// Tasks assigned to this user.
    pub assignee_id: Option<UserId>,
    /// `open` or `done`.
    pub status: Option<TaskStatus>,
    /// Tasks due before this instant (RFC 3339); tasks without a due time never match.
    pub due_before: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: TaskId,
    contact_id: Option<ContactId>,
    deal_id: Option<DealId>,
    title: String,
    due_at: Option<Timestamp>,
    assignee_id: Option<UserId>,
    done_at: Option<Timestamp>,
    author: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<TaskRow> for Task {
    fn from(r: TaskRow) -> Self {
        Task {
            id: r.id,
            contact_id: r.contact_id,
            deal_id: r.deal_id,
            title: r.title,
            due_at: r.due_at,
            assignee_id: r.assignee_id,
            done: r.done_at.is_some(),
            done_at: r.done_at,
            author: r.author,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str =
    "id, contact_id, deal_id, title, due_at, assignee_id, done_at, author, created_at, updated_at";

pub fn task_not_found() -> ApiError {
    ApiError::not_found("task_not_found", "No such task in this workspace.")
}

fn due_at(text: &str) -> ApiResult<Timestamp> {
    parse_time(text).ok_or_else(|| {
        ApiError::invalid_field(
            "due_at",
            "`due_at` must be an RFC 3339 date-time like 2026-11-22T14:30:00Z.",
        )
    })
}

/// Checks the references of a task; returns the contact id resolved through merges.
async fn check_refs(
    tx: &mut Tx,
    scope: &Scope,
    contact_id: Option<ContactId>,
    deal_id: Option<DealId>,
    assignee_id: Option<UserId>,
) -> ApiResult<Option<ContactId>> {
    let contact_id = match contact_id {
        Some(id) => Some(contact_ref(tx, scope, "contact_id", id).await?),
        None => None,
    };
    if let Some(id) = deal_id {
        deal_ref(tx, scope, "deal_id", id).await?;
    }
    if let Some(id) = assignee_id {
        refs::member(tx, scope, "assignee_id", id).await?;
    }
    Ok(contact_id)
}

pub async fn create(db: &Db, scope: &Scope, req: &NewTask) -> ApiResult<Task> {
    let mut tx = db.begin().await?;
    let task = create_in(&mut tx, scope, req).await?;
    tx.commit().await?;
    Ok(task)
}

/// [`create`] in the caller's transaction.
pub async fn create_in(tx: &mut Tx, scope: &Scope, req: &NewTask) -> ApiResult<Task> {
    let title = check_text("title", &req.title, MAX_TITLE, true)?;
    let due = req.due_at.as_deref().map(due_at).transpose()?;
    let contact_id = check_refs(tx, scope, req.contact_id, req.deal_id, req.assignee_id).await?;
    let id = TaskId::new();
    let now = Timestamp::now();
    with_tx!(&mut *tx, conn => sqlx::query(
        "INSERT INTO tasks (id, workspace_id, contact_id, deal_id, title, due_at, assignee_id, author, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    ).bind(id).bind(scope.workspace_id).bind(contact_id).bind(req.deal_id).bind(&title).bind(due)
     .bind(req.assignee_id).bind(scope.actor.audit_name()).bind(now)
     .execute(conn).await.map(|_| ()))?;
    let task = get_in(tx, scope, id).await?;
    let entry = json!({ "task_id": id, "deal_id": task.deal_id, "title": &task.title, "due_at": task.due_at });
    record_on_timelines(tx, scope, contact_id, req.deal_id, kind::TASK, &entry).await?;
    platform::outbox::publish(
        tx,
        scope.workspace_id,
        "task.created",
        &json!({ "task": &task }),
    )
    .await?;
    Ok(task)
}

async fn get_in(tx: &mut Tx, scope: &Scope, id: TaskId) -> ApiResult<Task> {
    let row: Option<TaskRow> = with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tasks WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    row.map(Task::from).ok_or_else(task_not_found)
}

pub async fn get(db: &Db, scope: &Scope, id: TaskId) -> ApiResult<Task> {
    let row: Option<TaskRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tasks WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(Task::from).ok_or_else(task_not_found)
}

/// Tasks, newest first.
pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &TaskFilter,
    page: &PageParams,
) -> ApiResult<Page<Task>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?.map(TaskId);
    let due_before = match filter.due_before.as_deref() {
        Some(text) => Some(parse_time(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "`due_before` must be an RFC 3339 date-time like 2026-11-22T14:30:00Z.",
            )
        })?),
        None => None,
    };
    let contact_id = match filter.contact_id {
        Some(id) => Some(contact_filter(db, scope, id).await?),
        None => None,
    };
    let rows: Vec<TaskRow> = with_db!(db, pool => {
        let mut b = QueryBuilder::new(format!("SELECT {COLUMNS} FROM tasks WHERE workspace_id = "));
        b.push_bind(scope.workspace_id);
        if let Some(cursor) = cursor {
            b.push(" AND id < ").push_bind(cursor);
        }
        if let Some(id) = contact_id {
            b.push(" AND contact_id = ").push_bind(id);
        }
        if let Some(id) = filter.deal_id {
            b.push(" AND deal_id = ").push_bind(id);
        }
        if let Some(id) = filter.assignee_id {
            b.push(" AND assignee_id = ").push_bind(id);
        }
        match filter.status {
            Some(TaskStatus::Open) => { b.push(" AND done_at IS NULL"); }
            Some(TaskStatus::Done) => { b.push(" AND done_at IS NOT NULL"); }
            None => {}
        }
        if let Some(before) = due_before {
            b.push(" AND due_at < ").push_bind(before);
        }
        b.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit) + 1);
        b.build_query_as().fetch_all(pool).await
    })?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Task::from))
}

pub async fn update(db: &Db, scope: &Scope, id: TaskId, req: &TaskChange) -> ApiResult<Task> {
    let title = req
        .title
        .as_deref()
        .map(|t| check_text("title", t, MAX_TITLE, true))
        .transpose()?;
    let due = match &req.due_at {
        Some(Some(text)) => Some(Some(due_at(text)?)),
        Some(None) => Some(None),
        None => None,
    };
    let mut tx = db.begin().await?;
    let current = get_in(&mut tx, scope, id).await?;
    let deal_id = req.deal_id.unwrap_or(current.deal_id);
    // Only what the request names is checked again: a contact merged since, or an assignee who
    // left the workspace, does not block other changes.
    let contact_id = match req.contact_id {
        Some(Some(c)) => Some(contact_ref(&mut tx, scope, "contact_id", c).await?),
        Some(None) => None,
        None => current.contact_id,
    };
    check_refs(
        &mut tx,
        scope,
        None,
        req.deal_id.flatten(),
        req.assignee_id.flatten(),
    )
    .await?;
    let now = Timestamp::now();
    let done_at = match req.done {
        Some(true) => current.done_at.or(Some(now)),
        Some(false) => None,
        None => current.done_at,
    };
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE tasks SET title = $1, contact_id = $2, deal_id = $3, due_at = $4, assignee_id = $5,
            done_at = $6, updated_at = $7,
            due_notified_at = CASE WHEN due_at IS NOT DISTINCT FROM $4 THEN due_notified_at ELSE NULL END
         WHERE workspace_id = $8 AND id = $9",
    ).bind(title.as_deref().unwrap_or(&current.title)).bind(contact_id).bind(deal_id)
     .bind(due.unwrap_or(current.due_at)).bind(req.assignee_id.unwrap_or(current.assignee_id))
     .bind(done_at).bind(now).bind(scope.workspace_id).bind(id)
     .execute(conn).await.map(|_| ()))?;
    let task = get_in(&mut tx, scope, id).await?;
    let data = json!({ "task": &task });
    if !current.done && task.done {
        let entry = json!({ "task_id": id, "deal_id": task.deal_id, "title": &task.title });
        record_on_timelines(&mut tx, scope, contact_id, deal_id, kind::TASK_DONE, &entry).await?;
        platform::outbox::publish(&mut tx, scope.workspace_id, "task.completed", &data).await?;
    } else {
        platform::outbox::publish(&mut tx, scope.workspace_id, "task.updated", &data).await?;
    }
    tx.commit().await?;
    Ok(task)
}

pub async fn delete(db: &Db, scope: &Scope, id: TaskId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let deleted = with_tx!(&mut tx, conn => sqlx::query(
        "DELETE FROM tasks WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(task_not_found());
    }
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "task.deleted",
        &json!({ "task_id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, update_task, delete_task))
}

/// Create a task (member), optionally about a contact and/or a deal. It shows on the timeline of
/// the contact and of every contact of the deal.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/tasks", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path)), request_body = NewTask,
    responses((status = 201, body = Task), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_task(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<NewTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    scope.require(Role::Member)?;
    Ok((
        StatusCode::CREATED,
        Json(create(&state.db, &scope, &req).await?),
    ))
}

/// Tasks, newest first, filtered by contact, deal, assignee, status or due time.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/tasks", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), TaskFilter, PageParams),
    responses((status = 200, body = Page<Task>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_tasks(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<TaskFilter>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Task>>> {
    Ok(Json(list(&state.db, &scope, &filter, &page).await?))
}

/// One task.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/tasks/{task_id}", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), ("task_id" = TaskId, Path)),
    responses((status = 200, body = Task), (status = 404, body = ErrorBody)))]
async fn get_task(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, TaskId)>,
) -> ApiResult<Json<Task>> {
    let Path((_, id)) = path;
    Ok(Json(get(&state.db, &scope, id).await?))
}

/// Change, complete (`"done": true`) or reopen (`"done": false`) a task (member).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/tasks/{task_id}", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), ("task_id" = TaskId, Path)), request_body = TaskChange,
    responses((status = 200, body = Task), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_task(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, TaskId)>,
    Json(req): Json<TaskChange>,
) -> ApiResult<Json<Task>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(update(&state.db, &scope, id, &req).await?))
}

/// Delete a task (member). Its timeline entries stay.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/tasks/{task_id}", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), ("task_id" = TaskId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_task(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, TaskId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
