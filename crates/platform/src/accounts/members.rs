//! Workspace members and invitations.
//!
//! Rules: admins manage members; only owners grant or take away the owner role; anyone may leave;
//! a workspace always keeps at least one owner. Invites are bound to an email: the accepting
//! user must be signed in with that email. Sending the invite email arrives with messaging; until
//! then the API returns the accept link once, at creation.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::users::{normalize_email, parse_role};
use super::workspaces::{self, Workspace};
use crate::auth::{self, CurrentUser, INVITE_TOKEN_PREFIX};
use crate::db::Tx;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::{Json, Page, PageParams, Path, Query};
use crate::id::{InviteId, UserId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::{Actor, Role, Scope};
use crate::time::Timestamp;
use crate::{with_db, with_tx};

const INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Is `user_id` a member of the workspace? For features that assign work to people (owners,
/// assignees) without reading the membership table themselves.
pub async fn is_member(
    tx: &mut Tx,
    workspace_id: WorkspaceId,
    user_id: UserId,
) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT 1 FROM memberships WHERE workspace_id = $1 AND user_id = $2",
    ).bind(workspace_id).bind(user_id).fetch_optional(conn).await)?;
    Ok(found.is_some())
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members))
        .routes(routes!(change_role, remove_member))
        .routes(routes!(create_invite, list_invites))
        .routes(routes!(revoke_invite))
        .routes(routes!(accept_invite))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: String,
    pub joined_at: Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub email: String,
    #[serde(default = "default_invite_role")]
    pub role: Role,
}

fn default_invite_role() -> Role {
    Role::Member
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Invite {
    pub id: InviteId,
    pub email: String,
    pub role: String,
    pub invited_by: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
}

/// A new invite; `token` and `accept_url` are shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedInvite {
    pub invite: Invite,
    pub token: String,
    pub accept_url: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    pub token: String,
}

fn member_not_found() -> ApiError {
    ApiError::not_found("member_not_found", "No such member in this workspace.")
}

async fn member_role(tx: &mut Tx, scope: &Scope, user_id: UserId) -> ApiResult<Role> {
    let role: Option<String> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT role FROM memberships WHERE workspace_id = $1 AND user_id = $2",
    ).bind(scope.workspace_id).bind(user_id).fetch_optional(conn).await)?;
    parse_role(&role.ok_or_else(member_not_found)?)
}

async fn owner_count(tx: &mut Tx, scope: &Scope) -> ApiResult<i64> {
    Ok(with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT COUNT(*) FROM memberships WHERE workspace_id = $1 AND role = 'owner'",
    ).bind(scope.workspace_id).fetch_one(conn).await)?)
}

fn last_owner() -> ApiError {
    ApiError::conflict("last_owner", "A workspace must keep at least one owner.")
}

/// Members of the workspace.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/members", tag = "members",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Member>), (status = 404, body = ErrorBody)))]
async fn list_members(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Member>>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<Member> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT u.id AS user_id, u.email, u.name, m.role, m.created_at AS joined_at
         FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.workspace_id = $1 AND ($2 IS NULL OR u.id < $2)
         ORDER BY u.id DESC LIMIT $3",
    ).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Json(Page::from_rows(rows, limit, |m| m.user_id.uuid())))
}

/// Change a member's role (admin; only owners grant or remove `owner`).
#[utoipa::path(patch, path = "/workspaces/{workspace_id}/members/{user_id}", tag = "members",
    params(("workspace_id" = WorkspaceId, Path), ("user_id" = UserId, Path)), request_body = RoleRequest,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn change_role(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, UserId)>,
    Json(req): Json<RoleRequest>,
) -> ApiResult<StatusCode> {
    let Path((_, user_id)) = path;
    scope.require(Role::Admin)?;
    let mut tx = state.db.begin().await?;
    workspaces::lock(&mut tx, &scope).await?;
    let current = member_role(&mut tx, &scope, user_id).await?;
    if (current == Role::Owner || req.role == Role::Owner) && scope.role != Role::Owner {
        return Err(ApiError::forbidden(
            "Only an owner can grant or remove the owner role.",
        ));
    }
    if current == Role::Owner && req.role != Role::Owner && owner_count(&mut tx, &scope).await? <= 1
    {
        return Err(last_owner());
    }
    with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE memberships SET role = $1 WHERE workspace_id = $2 AND user_id = $3",
    ).bind(req.role.as_str()).bind(scope.workspace_id).bind(user_id).execute(conn).await.map(|_| ()))?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member (admin), or leave (any member removing themself).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/members/{user_id}", tag = "members",
    params(("workspace_id" = WorkspaceId, Path), ("user_id" = UserId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_member(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, UserId)>,
) -> ApiResult<StatusCode> {
    let Path((_, user_id)) = path;
    if scope.actor != Actor::User(user_id) {
        scope.require(Role::Admin)?;
    }
    let mut tx = state.db.begin().await?;
    workspaces::lock(&mut tx, &scope).await?;
    let current = member_role(&mut tx, &scope, user_id).await?;
    if current == Role::Owner {
        if scope.role != Role::Owner {
            return Err(ApiError::forbidden("Only an owner can remove an owner."));
        }
        if owner_count(&mut tx, &scope).await? <= 1 {
            return Err(last_owner());
        }
    }
    with_tx!(&mut tx, conn => sqlx::query("DELETE FROM memberships WHERE workspace_id = $1 AND user_id = $2")
        .bind(scope.workspace_id).bind(user_id).execute(conn).await.map(|_| ()))?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invite someone by email (admin; owner to invite an owner).
#[utoipa::path(post, path = "/workspaces/{workspace_id}/invites", tag = "members",
    params(("workspace_id" = WorkspaceId, Path)), request_body = InviteRequest,
    responses((status = 201, body = CreatedInvite), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_invite(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<InviteRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvite>)> {
    scope.require(Role::Admin)?;
    if req.role == Role::Owner {
        scope.require(Role::Owner)?;
    }
    let email = normalize_email(&req.email)?;
    let token = auth::new_token(INVITE_TOKEN_PREFIX);
    let now = Timestamp::now();
    let invite = Invite {
        id: InviteId::new(),
        email,
        role: req.role.as_str().to_owned(),
        invited_by: scope.actor.audit_name(),
        created_at: now,
        expires_at: now + INVITE_TTL,
        accepted_at: None,
    };
    with_db!(&state.db, pool => sqlx::query(
        "INSERT INTO invites (id, workspace_id, email, role, token_hash, invited_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    ).bind(invite.id).bind(scope.workspace_id).bind(&invite.email).bind(&invite.role)
     .bind(auth::token_hash(&token)).bind(&invite.invited_by).bind(invite.created_at).bind(invite.expires_at)
     .execute(pool).await.map(|_| ()))?;
    let accept_url = format!(
        "{}/invites/accept?token={token}",
        state.config.public_base_url()
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedInvite {
            invite,
            token,
            accept_url,
        }),
    ))
}

/// Invites of the workspace, pending and accepted (admin).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/invites", tag = "members",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Invite>), (status = 404, body = ErrorBody)))]
async fn list_invites(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Invite>>> {
    scope.require(Role::Admin)?;
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<Invite> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT id, email, role, invited_by, created_at, expires_at, accepted_at FROM invites
         WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    ).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Json(Page::from_rows(rows, limit, |i| i.id.uuid())))
}

/// Revoke an invite (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/invites/{invite_id}", tag = "members",
    params(("workspace_id" = WorkspaceId, Path), ("invite_id" = InviteId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_invite(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, InviteId)>,
) -> ApiResult<StatusCode> {
    let Path((_, invite_id)) = path;
    scope.require(Role::Admin)?;
    let deleted = with_db!(&state.db, pool => sqlx::query(
        "DELETE FROM invites WHERE workspace_id = $1 AND id = $2 AND accepted_at IS NULL",
    ).bind(scope.workspace_id).bind(invite_id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(ApiError::not_found(
            "invite_not_found",
            "No such pending invite.",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invite as the signed-in user (whose email must match the invite).
#[utoipa::path(post, path = "/invites/accept", tag = "members", request_body = AcceptRequest,
    responses((status = 200, body = Workspace), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn accept_invite(
    State(state): State<AppState>,
    user: CurrentUser,
    Json(req): Json<AcceptRequest>,
) -> ApiResult<Json<Workspace>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: InviteId,
        workspace_id: WorkspaceId,
        email: String,
        role: String,
        expires_at: Timestamp,
        accepted_at: Option<Timestamp>,
    }
    let not_found = || {
        ApiError::not_found(
            "invite_not_found",
            "This invite does not exist or has expired.",
        )
    };
    let mut tx = state.db.begin().await?;
    let invite: Option<Row> = with_tx!(&mut tx, conn => sqlx::query_as(
        "SELECT id, workspace_id, email, role, expires_at, accepted_at FROM invites WHERE token_hash = $1",
    ).bind(auth::token_hash(&req.token)).fetch_optional(conn).await)?;
    let invite = invite.ok_or_else(not_found)?;
    let now = Timestamp::now();
    if invite.expires_at <= now {
        return Err(not_found());
    }
    if invite.accepted_at.is_some() {
        return Err(ApiError::conflict(
            "invite_already_accepted",
            "This invite was already used.",
        ));
    }
    let email: String = with_tx!(&mut tx, conn => sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user.user_id).fetch_one(conn).await)?;
    if email != invite.email {
        return Err(
            ApiError::forbidden("This invite was sent to another email address.")
                .with_code("invite_email_mismatch"),
        );
    }
    let role = parse_role(&invite.role)?;
    with_tx!(&mut tx, conn => {
        sqlx::query(
            "INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace_id, user_id) DO NOTHING",
        ).bind(invite.workspace_id).bind(user.user_id).bind(role.as_str()).bind(now)
         .execute(&mut *conn).await?;
        sqlx::query("UPDATE invites SET accepted_at = $1, accepted_by = $2 WHERE id = $3")
            .bind(now).bind(user.user_id).bind(invite.id).execute(&mut *conn).await.map(|_| ())
    })?;
    tx.commit().await?;
    let scope = auth::scope_for(
        &state,
        &auth::Principal::User {
            user_id: user.user_id,
            session_id: user.session_id,
        },
        invite.workspace_id,
    )
    .await?;
    Ok(Json(workspaces::get(&state, &scope).await?))
}
