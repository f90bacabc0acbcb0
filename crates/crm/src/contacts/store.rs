//! Contacts in the state database (being written).

use platform::db::{Db, Tx};
use platform::{ApiError, ApiResult, Scope};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Contact, ContactInput};
use crate::ContactId;

pub fn contact_not_found() -> ApiError {
    ApiError::not_found("contact_not_found", "No such contact in this workspace.")
}

/// The result of an upsert.
#[derive(Debug, Serialize, ToSchema)]
pub struct Upserted {
    pub contact: Contact,
    /// A new contact was created.
    pub created: bool,
    /// Contacts merged into `contact` by this write (their ids now resolve to it).
    pub merged: Vec<ContactId>,
}

/// The live contact an id names: itself, or the survivor it was merged into. 404 otherwise.
pub async fn resolve(db: &Db, scope: &Scope, id: ContactId) -> ApiResult<ContactId> {
    let _ = (db, scope, id);
    Err(contact_not_found())
}

/// [`resolve`] inside a transaction.
pub async fn resolve_in(tx: &mut Tx, scope: &Scope, id: ContactId) -> ApiResult<ContactId> {
    let _ = (tx, scope, id);
    Err(contact_not_found())
}

/// Create-or-update by identifiers (identity resolution, merging when the input joins several
/// contacts), in the caller's transaction; publishes the domain events.
pub async fn upsert(tx: &mut Tx, scope: &Scope, input: &ContactInput) -> ApiResult<Upserted> {
    let _ = (tx, scope, input);
    Err(contact_not_found())
}

/// Contacts matching `filter`, newest first, one page.
pub async fn list(
    db: &Db,
    scope: &Scope,
    filter: &super::ContactFilter,
    page: &platform::http::PageParams,
) -> ApiResult<platform::http::Page<Contact>> {
    let _ = (db, scope, filter, page);
    Err(contact_not_found())
}
