//! Users, sessions, workspaces, members, invites and API keys: who can reach what.

pub mod api_keys;
pub mod members;
pub mod users;
pub mod workspaces;

use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;

use crate::db::Db;
use crate::id::{ApiKeyId, UserId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::{Actor, Role, Scope};
use crate::with_tx;

/// Every accounts route, relative to `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(users::routes())
        .merge(workspaces::routes())
        .merge(members::routes())
        .merge(api_keys::routes())
}

/// What `switchyard admin bootstrap` prints.
#[derive(Debug, Serialize)]
pub struct Bootstrap {
    pub user_id: UserId,
    pub workspace_id: WorkspaceId,
    /// The new key, or `None` when nothing new was asked for.
    pub api_key: Option<String>,
    pub api_key_id: Option<ApiKeyId>,
    pub created_user: bool,
    pub created_workspace: bool,
}

/// Creates (or finds) the user, their workspace of that name and, the first time or when
/// `new_key` is set, an admin API key. Running it twice adds nothing twice.
pub async fn bootstrap(
    db: &Db,
    email: &str,
    password: &str,
    workspace_name: &str,
    new_key: bool,
) -> anyhow::Result<Bootstrap> {
    let email = users::normalize_email(email).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let new_user = users::NewUser::prepare(&email, password, "")
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let mut tx = db.begin().await?;
    let existing: Option<UserId> = with_tx!(&mut tx, conn => sqlx::query_scalar(
        "SELECT id FROM users WHERE email = $1",
    ).bind(&email).fetch_optional(conn).await)?;
    let (user_id, created_user) = match existing {
        Some(id) => (id, false),
        None => {
            let user = new_user
                .insert(&mut tx)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            (user.id, true)
        }
    };
    let name = workspaces::validate_workspace_name(workspace_name)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let existing: Option<WorkspaceId> = with_tx!(&mut tx, conn => sqlx::query_scalar(
        "SELECT w.id FROM workspaces w JOIN memberships m ON m.workspace_id = w.id
         WHERE m.user_id = $1 AND m.role = 'owner' AND w.name = $2 ORDER BY w.id LIMIT 1",
    ).bind(user_id).bind(&name).fetch_optional(conn).await)?;
    let (workspace_id, created_workspace) = match existing {
        Some(id) => (id, false),
        None => {
            let ws = workspaces::create(&mut tx, user_id, &name)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            (ws.id, true)
        }
    };
    let (api_key, api_key_id) = if created_workspace || new_key {
        let scope = Scope {
            workspace_id,
            actor: Actor::User(user_id),
            role: Role::Owner,
        };
        let created = api_keys::create(&mut tx, &scope, "bootstrap", Role::Admin)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        (Some(created.key), Some(created.api_key.id))
    } else {
        (None, None)
    };
    tx.commit().await?;
    Ok(Bootstrap {
        user_id,
        workspace_id,
        api_key,
        api_key_id,
        created_user,
        created_workspace,
    })
}
