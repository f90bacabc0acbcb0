//! CSV out: the contact export (streamed page by page from the contact list, so memory stays
//! flat whatever the workspace's size) and an import's error report.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use platform::db::Db;
use platform::error::ErrorBody;
use platform::http::{Page, PageParams, Query};
use platform::id::WorkspaceId;
use platform::{ApiResult, AppState, Scope};

use super::parse::{custom_cell, guard_formula};
use crate::contacts::{Contact, ContactFilter};
use crate::fields::{self, Entity};

/// Contacts per page read from the list.
const EXPORT_PAGE: u32 = 200;

/// The fixed columns of an export; one `custom.<key>` column per contact custom field follows.
pub const EXPORT_COLUMNS: [&str; 12] = [
    "id",
    "first_name",
    "last_name",
    "emails",
    "phones",
    "external_ids",
    "lifecycle_stage",
    "lead_score",
    "tags",
    "company_id",
    "created_at",
    "updated_at",
];

/// Lines of CSV as one chunk of a response body.
pub(crate) fn csv_chunk<I, R>(records: I) -> Result<Bytes, std::io::Error>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut writer = csv::Writer::from_writer(Vec::new());
    for record in records {
        writer.write_record(record).map_err(std::io::Error::other)?;
    }
    writer
        .into_inner()
        .map(Bytes::from)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A streamed `text/csv` attachment.
pub(crate) fn csv_response<S>(file_name: &str, body: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

fn contact_record(contact: &Contact, custom_keys: &[String]) -> Vec<String> {
    let list = |items: &[String]| guard_formula(&items.join(";"));
    let text = |value: &Option<String>| guard_formula(value.as_deref().unwrap_or_default());
    let mut record = vec![
        contact.id.to_string(),
        text(&contact.first_name),
        text(&contact.last_name),
        list(&contact.emails),
        // E.164: `+` and digits, which a spreadsheet reads as a number, not a formula.
        contact.phones.join(";"),
        list(&contact.external_ids),
        contact.lifecycle_stage.as_str().to_owned(),
        contact.lead_score.to_string(),
        list(&contact.tags),
        contact
            .company_id
            .map(|c| c.to_string())
            .unwrap_or_default(),
        contact.created_at.to_rfc3339(),
        contact.updated_at.to_rfc3339(),
    ];
    for key in custom_keys {
        let cell = contact.custom.get(key).map(custom_cell).unwrap_or_default();
        record.push(guard_formula(&cell));
    }
    record
}

enum Next {
    /// The first page, read before answering so a bad filter is still a JSON error.
    First(Page<Contact>),
    After(String),
    Done,
}

/// The contacts matching `filter` as CSV chunks, one per page.
async fn export_stream(
    db: Db,
    scope: Scope,
    filter: ContactFilter,
) -> ApiResult<impl Stream<Item = Result<Bytes, std::io::Error>>> {
    let custom_keys: Vec<String> = fields::list(&db, &scope)
        .await?
        .into_iter()
        .filter(|d| d.entity == Entity::Contact)
        .map(|d| d.key)
        .collect();
    let params = |cursor: Option<String>| PageParams {
        limit: Some(EXPORT_PAGE),
        cursor,
    };
    let first = crate::contacts::store::list(&db, &scope, &filter, &params(None)).await?;
    let mut header: Vec<String> = EXPORT_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    header.extend(custom_keys.iter().map(|k| format!("custom.{k}")));
    let head = stream::once(futures::future::ready(csv_chunk([header])));
    let body = stream::try_unfold(Next::First(first), move |next| {
        let (db, filter, keys) = (db.clone(), filter.clone(), custom_keys.clone());
        async move {
            let page = match next {
                Next::Done => return Ok(None),
                Next::First(page) => page,
                Next::After(cursor) => {
                    crate::contacts::store::list(&db, &scope, &filter, &params(Some(cursor)))
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))?
                }
            };
            let chunk = csv_chunk(page.data.iter().map(|c| contact_record(c, &keys)))?;
            let next = page.next_cursor.map_or(Next::Done, Next::After);
            Ok(Some((chunk, next)))
        }
    });
    Ok(futures::StreamExt::chain(head, body))
}

/// Contacts as CSV (`text/csv`), with the list's filters: the fixed columns, then one
/// `custom.<key>` column per contact custom field. Lists are joined with `;`; cells a
/// spreadsheet would run as formulas start with `'`. The file imports back as it is.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/contacts/export.csv", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), ContactFilter),
    responses((status = 200, content_type = "text/csv", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn export_contacts(
    State(state): State<AppState>,
    scope: Scope,
    Query(filter): Query<ContactFilter>,
) -> ApiResult<Response> {
    let body = export_stream(state.db.clone(), scope, filter).await?;
    Ok(csv_response("contacts.csv", body))
}
