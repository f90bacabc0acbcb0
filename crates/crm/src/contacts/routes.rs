//! The contacts API: `/api/v1/workspaces/{workspace_id}/contacts/…`.

use axum::extract::State;
use axum::http::StatusCode;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::{ApiError, ApiResult, AppState, Role, Scope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Upserted};
use super::{Contact, ContactFilter, ContactInput};
use crate::ContactId;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upsert_contact, list_contacts))
        .routes(routes!(upsert_batch))
        .routes(routes!(get_contact, update_contact, delete_contact))
        .routes(routes!(merge_contacts))
        .routes(routes!(add_tags))
        .routes(routes!(remove_tag))
}

/// Create or update a contact by its identifiers (identity resolution). No contact holds any of
/// the given emails, phones, external ids, GA client ids or anonymous ids → 201 with a new
/// contact. One does → 200, updated (identifiers and tags are added). Several do → they merge
/// into the oldest (200, `merged` lists the others, whose ids keep resolving).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/contacts", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path)), request_body = ContactInput,
    responses((status = 201, body = Upserted), (status = 200, body = Upserted), (status = 422, body = ErrorBody)))]
async fn upsert_contact(
    State(state): State<AppState>,
    scope: Scope,
    Json(input): Json<ContactInput>,
) -> ApiResult<(StatusCode, Json<Upserted>)> {
    scope.require(Role::Member)?;
    let mut tx = state.db.begin().await?;
    let done = store::upsert(&mut tx, &scope, &input).await?;
    tx.commit().await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(done)))
}

/// Contacts, newest first, filtered by text, tag, lifecycle stage, owner, company, email or phone.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/contacts", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ContactFilter, PageParams),
    responses((status = 200, body = Page<Contact>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_contacts(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<ContactFilter>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Contact>>> {
    Ok(Json(store::list(&state.db, &scope, &filter, &page).await?))
}

/// Up to 1,000 contacts to upsert at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub contacts: Vec<Value>,
}

/// The outcome of one item of a batch, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    /// `created`, `updated` or `failed`.
    pub status: &'static str,
    pub contact_id: Option<ContactId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<ContactId>,
    /// Why the item failed: `{code, message, details}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub created: usize,
    pub updated: usize,
    pub failed: usize,
    pub items: Vec<BatchItem>,
}

pub const MAX_BATCH: usize = 1_000;

/// Upsert many contacts in one transaction (capture, integrations). Each item is resolved like
/// `POST /contacts`; a bad item is reported in its place and does not stop the others.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/contacts/batch", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path)), request_body = BatchRequest,
    responses((status = 200, body = BatchResult), (status = 422, body = ErrorBody)))]
async fn upsert_batch(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<BatchRequest>,
) -> ApiResult<Json<BatchResult>> {
    scope.require(Role::Member)?;
    if req.contacts.is_empty() || req.contacts.len() > MAX_BATCH {
        return Err(ApiError::invalid_field(
            "contacts",
            format!("Give 1 to {MAX_BATCH} contacts."),
        ));
    }
    let mut tx = state.db.begin().await?;
    let mut result = BatchResult {
        created: 0,
        updated: 0,
        failed: 0,
        items: Vec::with_capacity(req.contacts.len()),
    };
    for (index, raw) in req.contacts.into_iter().enumerate() {
        let outcome = match serde_json::from_value::<ContactInput>(raw) {
            Ok(input) => store::upsert_isolated(&mut tx, &scope, &input).await,
            Err(err) => Err(ApiError::unprocessable("invalid_body", err.to_string())),
        };
        let item = match outcome {
            Ok(done) => {
                if done.created {
                    result.created += 1;
                } else {
                    result.updated += 1;
                }
                BatchItem {
                    index,
                    status: if done.created { "created" } else { "updated" },
                    contact_id: Some(done.contact.id),
                    merged: done.merged,
                    error: None,
                }
            }
            // Our own faults abort the batch (nothing is written); bad items are reported.
            Err(err) if err.status.is_server_error() => return Err(err),
            Err(err) => {
                result.failed += 1;
                BatchItem {
                    index,
                    status: "failed",
                    contact_id: None,
                    merged: Vec::new(),
                    error: serde_json::to_value(err.body().error).ok(),
                }
            }
        };
        result.items.push(item);
    }
    tx.commit().await?;
    Ok(Json(result))
}

/// One contact. The id of a contact merged into another answers the survivor.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/contacts/{contact_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path)),
    responses((status = 200, body = Contact), (status = 404, body = ErrorBody)))]
async fn get_contact(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId)>,
) -> ApiResult<Json<Contact>> {
    let Path((_, id)) = path;
    Ok(Json(store::get(&state.db, &scope, id).await?))
}

/// Change a contact. Identifier and tag lists replace the contact's; an identifier another
/// contact holds is a 409 `identifier_taken` (merge them instead).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/contacts/{contact_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path)), request_body = ContactInput,
    responses((status = 200, body = Contact), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_contact(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId)>,
    Json(input): Json<ContactInput>,
) -> ApiResult<Json<Contact>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(store::update(&state.db, &scope, id, &input).await?))
}

/// Delete a contact with its identifiers, tags, notes, tasks and timeline (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/contacts/{contact_id}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_contact(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// Contacts to fold into the one in the path.
    pub contact_ids: Vec<ContactId>,
}

/// Merge other contacts into this one (it survives, whatever the ages).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/contacts/{contact_id}/merge", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path)), request_body = MergeRequest,
    responses((status = 200, body = Upserted), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn merge_contacts(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId)>,
    Json(req): Json<MergeRequest>,
) -> ApiResult<Json<Upserted>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(
        store::merge(&state.db, &scope, id, &req.contact_ids).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    pub tags: Vec<String>,
}

/// Add tags to a contact.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/contacts/{contact_id}/tags", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path)), request_body = TagsRequest,
    responses((status = 200, body = Contact), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_tags(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId)>,
    Json(req): Json<TagsRequest>,
) -> ApiResult<Json<Contact>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(store::tag(&state.db, &scope, id, &req.tags).await?))
}

/// Remove a tag from a contact.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/contacts/{contact_id}/tags/{tag}", tag = "contacts",
    params(("workspace_id" = WorkspaceId, Path), ("contact_id" = ContactId, Path), ("tag" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove_tag(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ContactId, String)>,
) -> ApiResult<StatusCode> {
    let Path((_, id, tag)) = path;
    scope.require(Role::Member)?;
    store::untag(&state.db, &scope, id, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}
