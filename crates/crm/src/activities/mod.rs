//! Activities: notes and tasks on contacts and deals.
//!
//! A note or task points at a contact and/or a deal of the workspace (a note needs at least one;
//! a task may stand alone). Contact ids are resolved through merges, so an activity written
//! against a merged id lands on the survivor. What happens to one is recorded on the timeline of
//! its contact and of every contact of its deal, and published to the outbox.

pub mod due;
pub mod notes;
pub mod tasks;

use chrono::{DateTime, Utc};
use platform::db::{Db, Tx};
use platform::{ApiError, ApiResult, AppState, Scope, Timestamp, with_tx};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;

use crate::contacts::store::{resolve, resolve_in};
use crate::timeline;
use crate::{ContactId, DealId};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(notes::routes())
        .merge(tasks::routes())
}

/// The contact a body names, followed through merges; a missing one is a 422 naming `field`.
pub(crate) async fn contact_ref(
    tx: &mut Tx,
    scope: &Scope,
    field: &str,
    id: ContactId,
) -> ApiResult<ContactId> {
    resolve_in(tx, scope, id).await.map_err(|err| {
        if err.status.is_client_error() {
            ApiError::invalid_field(
                field,
                format!("`{field}`: no contact {id} in this workspace."),
            )
        } else {
            err
        }
    })
}

/// A contact id of a list filter: a merged contact's activities moved to its survivor, and an
/// unknown id simply matches nothing.
pub(crate) async fn contact_filter(db: &Db, scope: &Scope, id: ContactId) -> ApiResult<ContactId> {
    match resolve(db, scope, id).await {
        Ok(live) => Ok(live),
        Err(err) if err.status.is_client_error() => Ok(id),
        Err(err) => Err(err),
    }
}

/// The deal exists in this workspace, else a 422 naming `field`.
pub(crate) async fn deal_ref(tx: &mut Tx, scope: &Scope, field: &str, id: DealId) -> ApiResult<()> {
    let found: Option<i32> = with_tx!(tx, conn => sqlx::query_scalar(
        "SELECT 1 FROM deals WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    if found.is_none() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}`: no deal {id} in this workspace."),
        ));
    }
    Ok(())
}

/// Records `kind` on the timeline of the activity's contact and of every contact of its deal,
/// each contact once.
pub(crate) async fn record_on_timelines(
    tx: &mut Tx,
    scope: &Scope,
    contact_id: Option<ContactId>,
    deal_id: Option<DealId>,
    kind: &str,
    data: &Value,
) -> ApiResult<()> {
    let mut contacts: Vec<ContactId> = contact_id.into_iter().collect();
    if let Some(deal_id) = deal_id {
        let linked: Vec<ContactId> = with_tx!(tx, conn => sqlx::query_scalar(
            "SELECT contact_id FROM deal_contacts WHERE workspace_id = $1 AND deal_id = $2
             ORDER BY contact_id",
        ).bind(scope.workspace_id).bind(deal_id).fetch_all(conn).await)?;
        for id in linked {
            if !contacts.contains(&id) {
                contacts.push(id);
            }
        }
    }
    for id in contacts {
        timeline::record(tx, scope, id, kind, data, None).await?;
    }
    Ok(())
}

/// Text of `min..=max` characters (after trimming, for the emptiness check), without NUL (which
/// PostgreSQL cannot store); `one_line` also refuses line breaks and other control characters.
pub(crate) fn check_text(
    field: &str,
    value: &str,
    max: usize,
    one_line: bool,
) -> ApiResult<String> {
    let count = value.chars().count();
    let bad_char = |c: char| c == '\0' || (one_line && c.is_control());
    if value.trim().is_empty() || count > max || value.chars().any(bad_char) {
        let shape = if one_line { " on one line" } else { "" };
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` is 1 to {max} characters{shape}."),
        ));
    }
    Ok(if one_line {
        value.trim().to_owned()
    } else {
        value.to_owned()
    })
}

/// An RFC 3339 date-time, to the microsecond, in UTC.
pub(crate) fn parse_time(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| Timestamp::from(t.with_timezone(&Utc)))
}

/// The first 200 characters of a text, for timeline entries.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("  short  "), "short");
        let long = "é".repeat(250);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn text_checks() {
        assert!(check_text("body", "", 10, false).is_err());
        assert!(check_text("body", "   ", 10, false).is_err());
        assert!(check_text("body", "a\0b", 10, false).is_err());
        assert_eq!(check_text("body", "a\nb", 10, false).unwrap(), "a\nb");
        assert!(check_text("title", "a\nb", 10, true).is_err());
        assert_eq!(check_text("title", " call ", 10, true).unwrap(), "call");
        assert!(check_text("title", &"x".repeat(11), 10, true).is_err());
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = parse_time("2026-11-22T15:30:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T14:30:00.000000Z");
        assert!(parse_time("2026-11-22").is_none());
        assert!(parse_time("tomorrow").is_none());
    }
}
