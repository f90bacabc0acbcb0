//! Notes: free text on a contact and/or a deal, by whoever wrote it.

use axum::extract::State;
use axum::http::StatusCode;
use platform::db::{Db, Tx};
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db, with_tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{check_text, contact_filter, contact_ref, deal_ref, excerpt, record_on_timelines};
use crate::timeline::kind;
use crate::{ContactId, DealId, NoteId};

/// Longest note body, in characters.
pub const MAX_BODY: usize = 50_000;

/// A note on a contact and/or a deal.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Note {
    pub id: NoteId,
    pub contact_id: Option<ContactId>,
    pub deal_id: Option<DealId>,
    /// 1 to 50,000 characters.
    pub body: String,
    /// Who wrote it: a user or API key id.
    pub author: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Write a note: on a contact, a deal, or both (at least one).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    /// A contact of the workspace (a merged contact's id names its survivor).
    pub contact_id: Option<ContactId>,
    /// A deal of the workspace.
    pub deal_id: Option<DealId>,
    /// 1 to 50,000 characters.
    pub body: String,
}

/// Change a note. Absent fields are kept; `null` unlinks the contact or the deal (one must stay).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteChange {
    pub body: Option<String>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<ContactId>)]
    pub contact_id: Option<Option<ContactId>>,
    #[serde(default, with = "crate::double_option")]
    #[schema(value_type = Option<DealId>)]
    pub deal_id: Option<Option<DealId>>,
}

/// Filters of the note list: all given ones must match.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NoteFilter {
    /// Notes on this contact (a merged contact's id names its survivor).
    pub contact_id: Option<ContactId>,
    /// Notes on this deal.
    pub deal_id: Option<DealId>,
}

#[derive(sqlx::FromRow)]
struct NoteRow {
    id: NoteId,
    contact_id: Option<ContactId>,
    deal_id: Option<DealId>,
    body: String,
    author: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<NoteRow> for Note {
    fn from(r: NoteRow) -> Self {
        Note {
            id: r.id,
            contact_id: r.contact_id,
            deal_id: r.deal_id,
            body: r.body,
            author: r.author,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str = "id, contact_id, deal_id, body, author, created_at, updated_at";

pub fn note_not_found() -> ApiError {
    ApiError::not_found("note_not_found", "No such note in this workspace.")
}

fn needs_a_link() -> ApiError {
    ApiError::unprocessable(
        "note_needs_contact_or_deal",
        "A note belongs to a contact, a deal or both: give `contact_id` or `deal_id`.",
    )
    .with_details(json!({ "field": "contact_id" }))
}

/// Checks the links; returns the contact id resolved through merges.
async fn links(
    tx: &mut Tx,
    scope: &Scope,
    contact_id: Option<ContactId>,
    deal_id: Option<DealId>,
) -> ApiResult<Option<ContactId>> {
    if contact_id.is_none() && deal_id.is_none() {
        return Err(needs_a_link());
    }
    let contact_id = match contact_id {
        Some(id) => Some(contact_ref(tx, scope, "contact_id", id).await?),
        None => None,
    };
    if let Some(id) = deal_id {
        deal_ref(tx, scope, "deal_id", id).await?;
    }
    Ok(contact_id)
}

pub async fn create(db: &Db, scope: &Scope, req: &NewNote) -> ApiResult<Note> {
    let mut tx = db.begin().await?;
    let note = create_in(&mut tx, scope, req).await?;
    tx.commit().await?;
    Ok(note)
}

/// [`create`] in the caller's transaction.
pub async fn create_in(tx: &mut Tx, scope: &Scope, req: &NewNote) -> ApiResult<Note> {
    let body = check_text("body", &req.body, MAX_BODY, false)?;
    let contact_id = links(tx, scope, req.contact_id, req.deal_id).await?;
    let id = NoteId::new();
    let now = Timestamp::now();
    with_tx!(&mut *tx, conn => sqlx::query(
        "INSERT INTO notes (id, workspace_id, contact_id, deal_id, body, author, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    ).bind(id).bind(scope.workspace_id).bind(contact_id).bind(req.deal_id).bind(&body)
     .bind(scope.actor.audit_name()).bind(now).execute(conn).await.map(|_| ()))?;
    let note = get_in(tx, scope, id).await?;
    let entry = json!({ "note_id": id, "deal_id": req.deal_id, "excerpt": excerpt(&body) });
    record_on_timelines(tx, scope, contact_id, req.deal_id, kind::NOTE, &entry).await?;
    platform::outbox::publish(
        tx,
        scope.workspace_id,
        "note.created",
        &json!({ "note": &note }),
    )
    .await?;
    Ok(note)
}

async fn get_in(tx: &mut Tx, scope: &Scope, id: NoteId) -> ApiResult<Note> {
    let row: Option<NoteRow> = with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notes WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    row.map(Note::from).ok_or_else(note_not_found)
}

pub async fn get(db: &Db, scope: &Scope, id: NoteId) -> ApiResult<Note> {
    let row: Option<NoteRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notes WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(Note::from).ok_or_else(note_not_found)
}

/// Notes, newest first.
pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &NoteFilter,
    page: &PageParams,
) -> ApiResult<Page<Note>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?.map(NoteId);
    let contact_id = match filter.contact_id {
        Some(id) => Some(contact_filter(db, scope, id).await?),
        None => None,
    };
    let rows: Vec<NoteRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notes WHERE workspace_id = $1
           AND ($2 IS NULL OR contact_id = $2) AND ($3 IS NULL OR deal_id = $3)
           AND ($4 IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"
    ))).bind(scope.workspace_id).bind(contact_id).bind(filter.deal_id).bind(cursor)
       .bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Note::from))
}

pub async fn update(db: &Db, scope: &Scope, id: NoteId, req: &NoteChange) -> ApiResult<Note> {
    let body = req
        .body
        .as_deref()
        .map(|b| check_text("body", b, MAX_BODY, false))
        .transpose()?;
    let mut tx = db.begin().await?;
    let current = get_in(&mut tx, scope, id).await?;
    let contact_id = req.contact_id.unwrap_or(current.contact_id);
    let deal_id = req.deal_id.unwrap_or(current.deal_id);
    let contact_id = links(&mut tx, scope, contact_id, deal_id).await?;
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE notes SET body = $1, contact_id = $2, deal_id = $3, updated_at = $4
         WHERE workspace_id = $5 AND id = $6",
    ).bind(body.as_deref().unwrap_or(&current.body)).bind(contact_id).bind(deal_id)
     .bind(Timestamp::now()).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    let note = get_in(&mut tx, scope, id).await?;
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "note.updated",
        &json!({ "note": &note }),
    )
    .await?;
    tx.commit().await?;
    Ok(note)
}

pub async fn delete(db: &Db, scope: &Scope, id: NoteId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let deleted = with_tx!(&mut tx, conn => sqlx::query(
        "DELETE FROM notes WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(note_not_found());
    }
    platform::outbox::publish(
        &mut tx,
        scope.workspace_id,
        "note.deleted",
        &json!({ "note_id": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_note, list_notes))
        .routes(routes!(get_note, update_note, delete_note))
}

/// Write a note on a contact and/or a deal (member). It shows on the timeline of the contact and
/// of every contact of the deal.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/notes", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path)), request_body = NewNote,
    responses((status = 201, body = Note), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_note(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<NewNote>,
) -> ApiResult<(StatusCode, Json<Note>)> {
    scope.require(Role::Member)?;
    Ok((
        StatusCode::CREATED,
        Json(create(&state.db, &scope, &req).await?),
    ))
}

/// Notes, newest first, optionally of one contact or deal.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/notes", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), NoteFilter, PageParams),
    responses((status = 200, body = Page<Note>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_notes(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<NoteFilter>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Note>>> {
    Ok(Json(list(&state.db, &scope, &filter, &page).await?))
}

/// One note.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/notes/{note_id}", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), ("note_id" = NoteId, Path)),
    responses((status = 200, body = Note), (status = 404, body = ErrorBody)))]
async fn get_note(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, NoteId)>,
) -> ApiResult<Json<Note>> {
    let Path((_, id)) = path;
    Ok(Json(get(&state.db, &scope, id).await?))
}

/// Change a note's text or links (member).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/notes/{note_id}", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), ("note_id" = NoteId, Path)), request_body = NoteChange,
    responses((status = 200, body = Note), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_note(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, NoteId)>,
    Json(req): Json<NoteChange>,
) -> ApiResult<Json<Note>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(update(&state.db, &scope, id, &req).await?))
}

/// Delete a note (member). Its timeline entries stay.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/notes/{note_id}", tag = "activities",
    params(("workspace_id" = WorkspaceId, Path), ("note_id" = NoteId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_note(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, NoteId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
