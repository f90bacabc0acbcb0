//! Workspace API keys: shown once at creation, stored as a SHA-256 hash, listed by prefix,
//! revocable. A key acts in its own workspace only, with the role it was given (never owner).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, API_KEY_PREFIX};
use crate::db::Tx;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::{Json, Page, PageParams, Path, Query};
use crate::id::{ApiKeyId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::{Role, Scope};
use crate::time::Timestamp;
use crate::{with_db, with_tx};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub role: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRequest {
    pub name: String,
    /// `admin`, `member` (default) or `viewer`.
    #[serde(default = "default_key_role")]
    pub role: Role,
}

fn default_key_role() -> Role {
    Role::Member
}

/// A new key; `key` is shown only now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    pub key: String,
}

/// Creates a key inside `tx` and returns it with its secret.
pub async fn create(
    tx: &mut Tx,
    scope: &Scope,
    name: &str,
    role: Role,
) -> ApiResult<CreatedApiKey> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` must be 1 to 200 characters.",
        ));
    }
    if role == Role::Owner {
        return Err(ApiError::invalid_field(
            "role",
            "An API key cannot have the owner role.",
        ));
    }
    if role > scope.role {
        return Err(ApiError::forbidden(
            "A key cannot have more power than its creator.",
        ));
    }
    let key = auth::new_token(API_KEY_PREFIX);
    let api_key = ApiKey {
        id: ApiKeyId::new(),
        name: name.to_owned(),
        prefix: key[..12].to_owned(),
        role: role.as_str().to_owned(),
        created_by: scope.actor.audit_name(),
        created_at: Timestamp::now(),
        last_used_at: None,
        revoked_at: None,
    };
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO api_keys (id, workspace_id, name, prefix, key_hash, role, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    ).bind(api_key.id).bind(scope.workspace_id).bind(&api_key.name).bind(&api_key.prefix)
     .bind(auth::token_hash(&key)).bind(&api_key.role).bind(&api_key.created_by).bind(api_key.created_at)
     .execute(conn).await.map(|_| ()))?;
    Ok(CreatedApiKey { api_key, key })
}

/// Create an API key (admin). The key is in the response once and never again.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/api-keys", tag = "api-keys",
    params(("workspace_id" = WorkspaceId, Path)), request_body = ApiKeyRequest,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_key(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<ApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    scope.require(Role::Admin)?;
    let mut tx = state.db.begin().await?;
    let created = create(&mut tx, &scope, &req.name, req.role).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The workspace's API keys, by prefix (admin).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/api-keys", tag = "api-keys",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<ApiKey>), (status = 404, body = ErrorBody)))]
async fn list_keys(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ApiKey>>> {
    scope.require(Role::Admin)?;
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<ApiKey> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT id, name, prefix, role, created_by, created_at, last_used_at, revoked_at FROM api_keys
         WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    ).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Json(Page::from_rows(rows, limit, |k| k.id.uuid())))
}

/// Revoke an API key (admin); it stops working at once.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/api-keys/{key_id}", tag = "api-keys",
    params(("workspace_id" = WorkspaceId, Path), ("key_id" = ApiKeyId, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_key(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ApiKeyId)>,
) -> ApiResult<StatusCode> {
    let Path((_, key_id)) = path;
    scope.require(Role::Admin)?;
    let changed = with_db!(&state.db, pool => sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE workspace_id = $2 AND id = $3 AND revoked_at IS NULL",
    ).bind(Timestamp::now()).bind(scope.workspace_id).bind(key_id).execute(pool).await.map(|r| r.rows_affected()))?;
    if changed == 0 {
        return Err(ApiError::not_found(
            "api_key_not_found",
            "No such active API key.",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
