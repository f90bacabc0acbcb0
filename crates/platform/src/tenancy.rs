//! Tenancy: who acts, in which workspace, with which role.
//!
//! A [`Scope`] is the first argument of every repository function that touches customer data,
//! and every such query filters on `scope.workspace_id`. The only way to get a `Scope` in a
//! handler is the extractor in `crate::auth`, which proves membership (or a key bound to that
//! workspace) first; a request for another workspace's object therefore finds nothing and
//! answers 404.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::id::{ApiKeyId, UserId, WorkspaceId};

/// Workspace roles, from most to least powerful.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "viewer" => Role::Viewer,
            "member" => Role::Member,
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            _ => return None,
        })
    }
}

/// Who is acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User(UserId),
    ApiKey(ApiKeyId),
    /// The system itself (workers, the scheduler, migrations).
    System,
}

impl Actor {
    /// Text form for audit columns (`created_by`): the typed id, or `system`.
    pub fn audit_name(&self) -> String {
        match self {
            Actor::User(id) => id.to_string(),
            Actor::ApiKey(id) => id.to_string(),
            Actor::System => "system".to_owned(),
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Actor::User(id) => Some(*id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub workspace_id: WorkspaceId,
    pub actor: Actor,
    pub role: Role,
}

impl Scope {
    /// A scope for work the system does on a workspace's behalf (job handlers, consumers).
    pub fn system(workspace_id: WorkspaceId) -> Scope {
        Scope {
            workspace_id,
            actor: Actor::System,
            role: Role::Owner,
        }
    }

    /// Refuses with 403 unless the actor holds at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "This action needs the {} role or higher in this workspace.",
                role.as_str()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(
            Role::Owner > Role::Admin && Role::Admin > Role::Member && Role::Member > Role::Viewer
        );
        let scope = Scope {
            workspace_id: WorkspaceId::new(),
            actor: Actor::System,
            role: Role::Member,
        };
        assert!(scope.require(Role::Viewer).is_ok());
        assert!(scope.require(Role::Member).is_ok());
        assert_eq!(scope.require(Role::Admin).unwrap_err().status.as_u16(), 403);
        for r in [Role::Viewer, Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
