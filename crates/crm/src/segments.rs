//! Saved segments: a named contact filter with a live count, listed and paged like contacts.

use axum::extract::State;
use axum::http::StatusCode;
use platform::db::Db;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::contacts::{Contact, ContactFilter, store as contacts};
use crate::{from_json, to_json};

platform::typed_id!(
    /// A saved segment.
    SegmentId,
    "seg"
);

/// A segment as the API shows it, with how many contacts match it now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Segment {
    pub id: SegmentId,
    pub name: String,
    pub filter: ContactFilter,
    /// Contacts matching the filter at the time of the request.
    pub count: i64,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentInput {
    pub name: Option<String>,
    /// The contact list's filters (`tag`, `lifecycle_stage`, `q`, `visited_path`, …).
    pub filter: Option<ContactFilter>,
}

#[derive(sqlx::FromRow)]
struct SegmentRow {
    id: SegmentId,
    name: String,
    filter: String,
    created_by: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

const COLUMNS: &str = "id, name, filter, created_by, created_at, updated_at";

pub fn segment_not_found() -> ApiError {
    ApiError::not_found("segment_not_found", "No such segment in this workspace.")
}

async fn with_count(db: &Db, scope: &Scope, row: SegmentRow) -> ApiResult<Segment> {
    let filter: ContactFilter = from_json(&row.filter);
    let count = contacts::count(db, scope, &filter).await?;
    Ok(Segment {
        id: row.id,
        name: row.name,
        filter,
        count,
        created_by: row.created_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn check(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` is 1 to 200 characters.",
        ));
    }
    Ok(name.to_owned())
}

/// A filter is checked by running it once (a bad one answers the list's 400, named `filter`).
async fn check_filter(db: &Db, scope: &Scope, filter: &ContactFilter) -> ApiResult<()> {
    contacts::count(db, scope, filter)
        .await
        .map(|_| ())
        .map_err(|e| {
            if e.status.is_client_error() {
                ApiError::invalid_field("filter", e.message.clone())
            } else {
                e
            }
        })
}

pub async fn create(db: &Db, scope: &Scope, req: &SegmentInput) -> ApiResult<Segment> {
    let name = check(req.name.as_deref().unwrap_or_default())?;
    let filter = req.filter.clone().unwrap_or_default();
    check_filter(db, scope, &filter).await?;
    let id = SegmentId::new();
    let now = Timestamp::now();
    with_db!(db, pool => sqlx::query(
        "INSERT INTO segments (id, workspace_id, name, filter, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    ).bind(id).bind(scope.workspace_id).bind(&name).bind(to_json(&filter))
     .bind(scope.actor.audit_name()).bind(now).execute(pool).await.map(|_| ()))?;
    get(db, scope, id).await
}

async fn row(db: &Db, scope: &Scope, id: SegmentId) -> ApiResult<SegmentRow> {
    let row: Option<SegmentRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM segments WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(segment_not_found)
}

pub async fn get(db: &Db, scope: &Scope, id: SegmentId) -> ApiResult<Segment> {
    let row = row(db, scope, id).await?;
    with_count(db, scope, row).await
}

pub async fn list(db: &Db, scope: &Scope, page: &PageParams) -> ApiResult<Page<Segment>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<SegmentRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM segments WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    let page = Page::from_rows(rows, limit, |r| r.id.uuid());
    let mut data = Vec::with_capacity(page.data.len());
    for row in page.data {
        data.push(with_count(db, scope, row).await?);
    }
    Ok(Page {
        data,
        next_cursor: page.next_cursor,
    })
}

pub async fn update(
    db: &Db,
    scope: &Scope,
    id: SegmentId,
    req: &SegmentInput,
) -> ApiResult<Segment> {
    let current = row(db, scope, id).await?;
    let name = match &req.name {
        Some(name) => check(name)?,
        None => current.name,
    };
    let filter = match &req.filter {
        Some(filter) => {
            check_filter(db, scope, filter).await?;
            filter.clone()
        }
        None => from_json(&current.filter),
    };
    with_db!(db, pool => sqlx::query(
        "UPDATE segments SET name = $1, filter = $2, updated_at = $3 WHERE workspace_id = $4 AND id = $5",
    ).bind(&name).bind(to_json(&filter)).bind(Timestamp::now()).bind(scope.workspace_id).bind(id)
     .execute(pool).await.map(|_| ()))?;
    get(db, scope, id).await
}

pub async fn delete(db: &Db, scope: &Scope, id: SegmentId) -> ApiResult<()> {
    let n = with_db!(db, pool => sqlx::query("DELETE FROM segments WHERE workspace_id = $1 AND id = $2")
        .bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if n == 0 {
        return Err(segment_not_found());
    }
    Ok(())
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_segment, list_segments))
        .routes(routes!(get_segment, update_segment, delete_segment))
        .routes(routes!(segment_contacts))
}

/// Save a segment.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/segments", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path)), request_body = SegmentInput,
    responses((status = 201, body = Segment), (status = 422, body = ErrorBody)))]
async fn create_segment(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<SegmentInput>,
) -> ApiResult<(StatusCode, Json<Segment>)> {
    scope.require(Role::Member)?;
    Ok((
        StatusCode::CREATED,
        Json(create(&state.db, &scope, &req).await?),
    ))
}

/// Saved segments with live counts.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/segments", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Segment>), (status = 404, body = ErrorBody)))]
async fn list_segments(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Segment>>> {
    Ok(Json(list(&state.db, &scope, &page).await?))
}

/// One segment with its live count.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/segments/{segment_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("segment_id" = SegmentId, Path)),
    responses((status = 200, body = Segment), (status = 404, body = ErrorBody)))]
async fn get_segment(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SegmentId)>,
) -> ApiResult<Json<Segment>> {
    let Path((_, id)) = path;
    Ok(Json(get(&state.db, &scope, id).await?))
}

/// Rename a segment or change its filter.
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/segments/{segment_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("segment_id" = SegmentId, Path)), request_body = SegmentInput,
    responses((status = 200, body = Segment), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_segment(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SegmentId)>,
    Json(req): Json<SegmentInput>,
) -> ApiResult<Json<Segment>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(update(&state.db, &scope, id, &req).await?))
}

/// Delete a segment (its contacts stay).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/segments/{segment_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("segment_id" = SegmentId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_segment(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SegmentId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The segment's contacts, paged in the filter's sort order.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/segments/{segment_id}/contacts", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("segment_id" = SegmentId, Path), PageParams),
    responses((status = 200, body = Page<Contact>), (status = 404, body = ErrorBody)))]
async fn segment_contacts(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, SegmentId)>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Contact>>> {
    let Path((_, id)) = path;
    let row = row(&state.db, &scope, id).await?;
    let filter: ContactFilter = from_json(&row.filter);
    Ok(Json(
        contacts::list(&state.db, &scope, &filter, &page).await?,
    ))
}
