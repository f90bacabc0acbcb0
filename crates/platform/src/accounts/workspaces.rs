//! Workspaces: create, list mine, get, rename, delete.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{CurrentUser, Principal};
use crate::db::{Dialect, Tx};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::{Json, Page, PageParams, Query};
use crate::id::{UserId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::{Role, Scope};
use crate::time::Timestamp;
use crate::{with_db, with_tx};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_workspace, list_workspaces))
        .routes(routes!(get_workspace, rename_workspace, delete_workspace))
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    /// The caller's role in this workspace.
    pub role: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceRequest {
    pub name: String,
}

pub fn validate_workspace_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` must be 1 to 200 characters.",
        ));
    }
    Ok(name.to_owned())
}

/// Creates a workspace owned by `owner` inside `tx`.
pub async fn create(tx: &mut Tx, owner: UserId, name: &str) -> ApiResult<Workspace> {
    let name = validate_workspace_name(name)?;
    let now = Timestamp::now();
    let ws = Workspace {
        id: WorkspaceId::new(),
        name,
        role: Role::Owner.as_str().to_owned(),
        created_at: now,
        updated_at: now,
    };
    with_tx!(tx, conn => {
        sqlx::query("INSERT INTO workspaces (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)")
            .bind(ws.id).bind(&ws.name).bind(now).execute(&mut *conn).await?;
        sqlx::query("INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)")
            .bind(ws.id).bind(owner).bind(now).execute(&mut *conn).await.map(|_| ())
    })?;
    Ok(ws)
}

/// Takes the workspace's row lock for the rest of `tx`, so concurrent membership changes of one
/// workspace run one after the other (the "always an owner" rule depends on it). SQLite's
/// `BEGIN IMMEDIATE` already serializes writers.
pub async fn lock(tx: &mut Tx, scope: &Scope) -> ApiResult<()> {
    if tx.dialect() == Dialect::Postgres {
        with_tx!(tx, conn => sqlx::query("SELECT id FROM workspaces WHERE id = $1 FOR UPDATE")
            .bind(scope.workspace_id).execute(conn).await.map(|_| ()))?;
    }
    Ok(())
}

/// Create a workspace; the caller becomes its owner.
#[utoipa::path(post, path = "/workspaces", tag = "workspaces", request_body = WorkspaceRequest,
    responses((status = 201, body = Workspace), (status = 422, body = ErrorBody)))]
async fn create_workspace(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(req): Json<WorkspaceRequest>,
) -> ApiResult<(StatusCode, Json<Workspace>)> {
    let mut tx = state.db.begin().await?;
    let ws = create(&mut tx, user.user_id, &req.name).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(ws)))
}

/// Workspaces the caller belongs to (an API key sees its own workspace).
#[utoipa::path(get, path = "/workspaces", tag = "workspaces", params(PageParams),
    responses((status = 200, body = Page<Workspace>)))]
async fn list_workspaces(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Workspace>>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<Workspace> = match principal {
        Principal::User { user_id, .. } => with_db!(&state.db, pool => sqlx::query_as(
            "SELECT w.id, w.name, m.role, w.created_at, w.updated_at
             FROM memberships m JOIN workspaces w ON w.id = m.workspace_id
             WHERE m.user_id = $1 AND ($2 IS NULL OR w.id < $2)
             ORDER BY w.id DESC LIMIT $3",
        ).bind(user_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?,
        Principal::ApiKey {
            workspace_id, role, ..
        } => with_db!(&state.db, pool => sqlx::query_as(
            "SELECT id, name, $2 AS role, created_at, updated_at FROM workspaces
             WHERE id = $1 AND ($3 IS NULL OR id < $3)",
        ).bind(workspace_id).bind(role.as_str()).bind(cursor).fetch_all(pool).await)?,
    };
    Ok(Json(Page::from_rows(rows, limit, |w| w.id.uuid())))
}

pub async fn get(state: &AppState, scope: &Scope) -> ApiResult<Workspace> {
    let ws: Option<Workspace> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT id, name, $2 AS role, created_at, updated_at FROM workspaces WHERE id = $1",
    ).bind(scope.workspace_id).bind(scope.role.as_str()).fetch_optional(pool).await)?;
    ws.ok_or_else(crate::auth::workspace_not_found)
}

/// One workspace.
#[utoipa::path(get, path = "/workspaces/{workspace_id}", tag = "workspaces",
    params(("workspace_id" = WorkspaceId, Path)),
    responses((status = 200, body = Workspace), (status = 404, body = ErrorBody)))]
async fn get_workspace(State(state): State<AppState>, scope: Scope) -> ApiResult<Json<Workspace>> {
    Ok(Json(get(&state, &scope).await?))
}

/// Rename a workspace (admin).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}", tag = "workspaces",
    params(("workspace_id" = WorkspaceId, Path)), request_body = WorkspaceRequest,
    responses((status = 200, body = Workspace), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rename_workspace(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<WorkspaceRequest>,
) -> ApiResult<Json<Workspace>> {
    scope.require(Role::Admin)?;
    let name = validate_workspace_name(&req.name)?;
    with_db!(&state.db, pool => sqlx::query("UPDATE workspaces SET name = $1, updated_at = $2 WHERE id = $3")
        .bind(&name).bind(Timestamp::now()).bind(scope.workspace_id).execute(pool).await.map(|_| ()))?;
    Ok(Json(get(&state, &scope).await?))
}

/// Delete a workspace and everything in it (owner).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}", tag = "workspaces",
    params(("workspace_id" = WorkspaceId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_workspace(State(state): State<AppState>, scope: Scope) -> ApiResult<StatusCode> {
    scope.require(Role::Owner)?;
    with_db!(&state.db, pool => sqlx::query("DELETE FROM workspaces WHERE id = $1")
        .bind(scope.workspace_id).execute(pool).await.map(|_| ()))?;
    tracing::info!(workspace_id = %scope.workspace_id, actor = %scope.actor.audit_name(), "workspace deleted");
    Ok(StatusCode::NO_CONTENT)
}
