//! One ordered feed per contact: what happened to them and who did it. Writers call [`record`]
//! inside the transaction of the change they describe; merges move entries to the survivor.

use axum::extract::State;
use platform::db::{Db, Tx};
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiResult, AppState, Scope, Timestamp, with_db, with_tx};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::contacts::store::resolve;
use crate::{ContactId, EntryId};

/// Kinds of timeline entries, as stored and shown.
pub mod kind {
    pub const CREATED: &str = "contact.created";
    pub const UPDATED: &str = "contact.updated";
    pub const MERGED: &str = "contact.merged";
    pub const TAG_ADDED: &str = "tag.added";
    pub const TAG_REMOVED: &str = "tag.removed";
    pub const NOTE: &str = "note";
    pub const TASK: &str = "task";
    pub const TASK_DONE: &str = "task.done";
    pub const DEAL_CREATED: &str = "deal.created";
    pub const DEAL_STAGE_CHANGED: &str = "deal.stage_changed";
    pub const DEAL_WON: &str = "deal.won";
    pub const DEAL_LOST: &str = "deal.lost";
    pub const FORM_SUBMITTED: &str = "form.submitted";
    pub const WEB_SESSION: &str = "web.session";
    pub const IMPORTED: &str = "contact.imported";
}

/// One entry of a contact's timeline.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Entry {
    pub id: EntryId,
    pub contact_id: ContactId,
    /// `contact.created`, `contact.updated` (with the changed fields), `contact.merged`,
    /// `tag.added`, `tag.removed`, `note`, `task`, `task.done`, `deal.created`,
    /// `deal.stage_changed`, `deal.won`, `deal.lost`, `form.submitted`, `web.session`,
    /// `contact.imported`.
    pub kind: String,
    pub occurred_at: Timestamp,
    /// Who did it: a user or API key id, or `system`.
    pub actor: Option<String>,
    pub data: Value,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: EntryId,
    contact_id: ContactId,
    kind: String,
    occurred_at: Timestamp,
    actor: Option<String>,
    data: String,
}

/// Adds an entry in the caller's transaction. With a `dedupe_key`, a second entry with the same
/// key is silently dropped (for at-least-once writers).
pub async fn record(
    tx: &mut Tx,
    scope: &Scope,
    contact_id: ContactId,
    kind: &str,
    data: &Value,
    dedupe_key: Option<&str>,
) -> ApiResult<()> {
    record_at(
        tx,
        scope,
        contact_id,
        kind,
        Timestamp::now(),
        data,
        dedupe_key,
    )
    .await
}

/// [`record`] with the time the thing happened (e.g. a web session's start).
pub async fn record_at(
    tx: &mut Tx,
    scope: &Scope,
    contact_id: ContactId,
    kind: &str,
    occurred_at: Timestamp,
    data: &Value,
    dedupe_key: Option<&str>,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO timeline_entries (id, workspace_id, contact_id, kind, occurred_at, actor, data, dedupe_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (workspace_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
    )
    .bind(EntryId::new()).bind(scope.workspace_id).bind(contact_id).bind(kind).bind(occurred_at)
    .bind(scope.actor.audit_name()).bind(data.to_string()).bind(dedupe_key)
    .execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// The entry recorded under `dedupe_key`, with its data, for writers that grow one entry (a web
/// session's pages).
pub(crate) async fn find_keyed(
    tx: &mut Tx,
    scope: &Scope,
    dedupe_key: &str,
) -> ApiResult<Option<(EntryId, Value)>> {
    let row: Option<(EntryId, String)> = with_tx!(tx, conn => sqlx::query_as(
        "SELECT id, data FROM timeline_entries WHERE workspace_id = $1 AND dedupe_key = $2",
    ).bind(scope.workspace_id).bind(dedupe_key).fetch_optional(conn).await)?;
    Ok(row.map(|(id, data)| (id, serde_json::from_str(&data).unwrap_or(Value::Null))))
}

/// Replaces an entry's data.
pub(crate) async fn set_data(
    tx: &mut Tx,
    scope: &Scope,
    id: EntryId,
    data: &Value,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE timeline_entries SET data = $1 WHERE workspace_id = $2 AND id = $3",
    ).bind(data.to_string()).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// Moves every entry of `from` to `to` (a merge).
pub(crate) async fn reassign(
    tx: &mut Tx,
    scope: &Scope,
    from: ContactId,
    to: ContactId,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "UPDATE timeline_entries SET contact_id = $1 WHERE workspace_id = $2 AND contact_id = $3",
    ).bind(to).bind(scope.workspace_id).bind(from).execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// A contact's entries, newest first.
pub async fn list(
    db: &Db,
    scope: &Scope,
    contact_id: ContactId,
    page: &PageParams,
) -> ApiResult<Page<Entry>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let contact_id = resolve(db, scope, contact_id).await?;
    // Ids are UUIDv7 (time-ordered), but entries can be recorded with an earlier `occurred_at`
    // (a web session reported late), so the order is (occurred_at, id) and the cursor is an id
    // whose position we look up.
    let rows: Vec<EntryRow> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, contact_id, kind, occurred_at, actor, data FROM timeline_entries e
         WHERE workspace_id = $1 AND contact_id = $2
           AND ($3 IS NULL OR (occurred_at, id) < (
                SELECT occurred_at, id FROM timeline_entries WHERE workspace_id = $1 AND id = $3))
         ORDER BY occurred_at DESC, id DESC LIMIT $4",
    ).bind(scope.workspace_id).bind(contact_id).bind(cursor).bind(i64::from(limit) + 1)
     .fetch_all(pool).await)?;
    Ok(
        Page::from_rows(rows, limit, |r| r.id.uuid()).map(|r| Entry {
            id: r.id,
            contact_id: r.contact_id,
            kind: r.kind,
            occurred_at: r.occurred_at,
            actor: r.actor,
            data: serde_json::from_str(&r.data).unwrap_or(Value::Null),
        }),
    )
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(contact_timeline))
}

/// A contact's timeline, newest first: tracking sessions, forms, notes, tasks, deal changes,
/// tags, merges and field changes, each with who did it.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/contacts/{contact_id}/timeline", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path), PageParams),
    responses((status = 200, body = Page<Entry>), (status = 404, body = ErrorBody)))]
async fn contact_timeline(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId)>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Entry>>> {
    let Path((_, id)) = path;
    Ok(Json(list(&state.db, &scope, id, &page).await?))
}
