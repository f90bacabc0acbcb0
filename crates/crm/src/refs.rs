//! Checks for ids a request body points at (a contact's company, a deal's owner): they must
//! exist in the same workspace, else the write is a 422 naming the field.

use platform::db::Tx;
use platform::id::UserId;
use platform::{ApiError, ApiResult, Scope, with_tx};

use crate::CompanyId;

/// The company exists in this workspace.
pub async fn company(tx: &mut Tx, scope: &Scope, field: &str, id: CompanyId) -> ApiResult<()> {
    let found: Option<i32> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT 1 FROM companies WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    if found.is_none() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}`: no company {id} in this workspace."),
        ));
    }
    Ok(())
}

/// The user is a member of this workspace (owners and assignees must be).
pub async fn member(tx: &mut Tx, scope: &Scope, field: &str, id: UserId) -> ApiResult<()> {
    if !platform::accounts::members::is_member(tx, scope.workspace_id, id).await? {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}`: user {id} is not a member of this workspace."),
        ));
    }
    Ok(())
}
