//! CSV import and export of contacts.
//!
//! Import in three steps: upload the file (`POST /imports`, the CSV as the raw body): it is
//! checked, stored, and answered with its columns, the first rows and a suggested mapping; start
//! it with a mapping (`POST /imports/{id}/start`): a `crm.import` job upserts every row through
//! identity resolution, in chunks; follow it (`GET /imports/{id}`) and read the rejected rows
//! (`GET /imports/{id}/errors.csv`). Export: `GET /contacts/export.csv`.
//!
//! Uploads may be up to [`MAX_UPLOAD_BYTES`], more than the API's general body limit: the
//! upload route carries its own `DefaultBodyLimit`.

pub mod export;
pub mod job;
pub mod parse;
pub mod store;

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use futures::stream;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::jobs::NewJob;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::fields::{self, Entity};
use crate::normalize;
use parse::Target;

pub use job::Importer;

platform::typed_id!(
    /// A CSV import of contacts.
    ImportId,
    "imp"
);

/// Largest CSV upload, in bytes.
pub const MAX_UPLOAD_BYTES: usize = 20 * 1024 * 1024;

/// Is this request a CSV upload, which may be larger than the API's general body limit? For the
/// server's early refusal of oversized declared lengths.
pub fn is_upload(method: &Method, path: &str) -> bool {
    method == Method::POST
        && path
            .strip_prefix("/api/v1/workspaces/")
            .is_some_and(|rest| {
                rest.split_once('/')
                    .is_some_and(|(ws, tail)| !ws.is_empty() && tail == "imports")
            })
}

/// Where an import stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    /// Stored and checked; waiting for `start` with a mapping.
    Uploaded,
    /// Started; the job has not picked it up yet.
    Queued,
    Running,
    Completed,
    /// Stopped by an error (see `error`); rows done so far stay imported.
    Failed,
}

impl ImportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportStatus::Uploaded => "uploaded",
            ImportStatus::Queued => "queued",
            ImportStatus::Running => "running",
            ImportStatus::Completed => "completed",
            ImportStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> ImportStatus {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .unwrap_or(ImportStatus::Failed)
    }
}

/// An import: the file's shape, the mapping, and progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Import {
    pub id: ImportId,
    pub status: ImportStatus,
    pub file_name: Option<String>,
    /// The header, in file order (blank names read `Column N`).
    pub columns: Vec<String>,
    /// The first 5 data rows, one cell per column.
    pub sample_rows: Vec<Vec<String>>,
    /// Column → target guessed from the header; send it (edited) to `start`.
    pub suggested_mapping: BTreeMap<String, String>,
    /// The mapping the import was started with.
    pub mapping: Option<BTreeMap<String, String>>,
    /// Tags added to every imported contact.
    pub tags: Vec<String>,
    /// Data rows in the file (blank rows are not counted).
    pub total_rows: u64,
    /// Rows done, imported or rejected.
    pub processed_rows: u64,
    /// Rows that created a contact.
    pub created: u64,
    /// Rows that updated an existing contact (including rows that merged several).
    pub updated: u64,
    /// Contacts merged into others because a row joined them.
    pub merged: u64,
    /// Rows rejected; see `errors.csv`.
    pub failed: u64,
    pub progress_percent: u8,
    /// Why a failed import stopped.
    pub error: Option<String>,
    /// Who uploaded it.
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the job began.
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name, for people (at most 255 characters).
    pub file_name: Option<String>,
}

/// Start an import.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartImport {
    /// Column → `emails`, `phones`, `first_name`, `last_name`, `tags`, `external_ids`,
    /// `lifecycle_stage`, `lead_score`, `custom.<key>` or `ignore`. Columns left out are
    /// ignored. Lists (emails, phones, tags) split cells on `,` and `;`; several columns may feed
    /// one list. At least one column must be an identifier (emails, phones, external_ids).
    pub mapping: BTreeMap<String, String>,
    /// Tags added to every imported contact, e.g. `imported-2026-11`.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Checks a mapping against the file's columns and the contact custom fields; returns it with
/// every column present (unmapped ones as `ignore`).
fn check_mapping(
    columns: &[String],
    mapping: &BTreeMap<String, String>,
    custom_keys: &HashSet<String>,
) -> ApiResult<BTreeMap<String, String>> {
    let field_error = |code: &'static str, column: &str, message: String| {
        ApiError::unprocessable(code, message)
            .with_details(json!({ "field": format!("mapping.{column}"), "column": column }))
    };
    let mut seen: Vec<Target> = Vec::new();
    for (column, target_name) in mapping {
        if !columns.contains(column) {
            return Err(field_error(
                "unknown_column",
                column,
                format!("`{column}` is not a column of the file."),
            ));
        }
        let target = Target::parse(target_name).ok_or_else(|| {
            field_error(
                "unknown_target",
                column,
                format!(
                    "`{target_name}` is not a target: use emails, phones, first_name, last_name, tags, \
                     external_ids, lifecycle_stage, lead_score, custom.<key> or ignore."
                ),
            )
        })?;
        if let Target::Custom(key) = &target
            && !custom_keys.contains(key)
        {
            return Err(field_error(
                "unknown_custom_field",
                column,
                format!(
                    "`{key}` is not a custom field of contacts; define it under /fields first."
                ),
            ));
        }
        if !target.takes_many() && seen.contains(&target) {
            return Err(field_error(
                "duplicate_target",
                column,
                format!("Only one column can go to `{target_name}`."),
            ));
        }
        seen.push(target);
    }
    if !seen.iter().any(Target::is_identifier) {
        return Err(ApiError::unprocessable(
            "mapping_needs_identifier",
            "Map at least one column to emails, phones or external_ids: rows are matched to contacts by them.",
        )
        .with_details(json!({ "field": "mapping" })));
    }
    Ok(columns
        .iter()
        .map(|c| {
            let target = mapping
                .get(c)
                .cloned()
                .unwrap_or_else(|| "ignore".to_owned());
            (c.clone(), target)
        })
        .collect())
}

fn check_file_name(name: Option<&str>) -> ApiResult<Option<String>> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`file_name` is at most 255 characters on one line.",
        ));
    }
    Ok(Some(name.to_owned()))
}

async fn contact_field_keys(state: &AppState, scope: &Scope) -> ApiResult<Vec<String>> {
    Ok(fields::list(&state.db, scope)
        .await?
        .into_iter()
        .filter(|d| d.entity == Entity::Contact)
        .map(|d| d.key)
        .collect())
}

pub fn routes() -> OpenApiRouter<AppState> {
    let upload = OpenApiRouter::new()
        .routes(routes!(upload_import, list_imports))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES));
    OpenApiRouter::new()
        .merge(upload)
        .routes(routes!(get_import, delete_import))
        .routes(routes!(start_import))
        .routes(routes!(import_errors))
        .routes(routes!(export::export_contacts))
}

/// Upload a CSV file of contacts (admin): the raw file as the body, `Content-Type: text/csv`,
/// UTF-8, with a header row; `,`, `;` or tab separated; up to 20 MiB. It is checked (empty,
/// no header, duplicate column names, rows of the wrong width are 422s with their own codes),
/// stored, and answered with its columns, first rows and a suggested mapping. Nothing is
/// imported until `start`.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/imports", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), UploadQuery),
    request_body(content = String, content_type = "text/csv", description = "The CSV file."),
    responses((status = 201, body = Import), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn upload_import(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Import>)> {
    scope.require(Role::Admin)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let csv_types = [
        "text/csv",
        "application/csv",
        "text/plain",
        "application/vnd.ms-excel",
    ];
    if !content_type.is_some_and(|t| csv_types.contains(&t.as_str())) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the CSV file itself as the body, with `Content-Type: text/csv`.",
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("The file is larger than the limit of {MAX_UPLOAD_BYTES} bytes."),
            )
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    let file_name = check_file_name(query.file_name.as_deref())?;
    // Parsing megabytes is CPU work: off the async threads.
    let upload = tokio::task::spawn_blocking(move || parse::check_upload(&body))
        .await
        .map_err(ApiError::internal)??;
    let keys = contact_field_keys(&state, &scope).await?;
    let suggested = parse::suggest_mapping(&upload.columns, &keys);
    let import =
        store::create(&state.db, &scope, file_name.as_deref(), &upload, &suggested).await?;
    Ok((StatusCode::CREATED, Json(import)))
}

/// Imports of the workspace, newest first.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/imports", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Import>), (status = 404, body = ErrorBody)))]
async fn list_imports(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Import>>> {
    Ok(Json(store::list(&state.db, &scope, &page).await?))
}

/// One import: status (`uploaded`, `queued`, `running`, `completed`, `failed`), counters and
/// progress.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/imports/{import_id}", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), ("import_id" = ImportId, Path)),
    responses((status = 200, body = Import), (status = 404, body = ErrorBody)))]
async fn get_import(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ImportId)>,
) -> ApiResult<Json<Import>> {
    let Path((_, id)) = path;
    Ok(Json(store::get(&state.db, &scope, id).await?))
}

/// Delete an import with its stored file and error report (admin); contacts it imported stay.
/// 409 while it is queued or running.
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/imports/{import_id}", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), ("import_id" = ImportId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_import(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ImportId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    store::delete(&state.db, &scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start an uploaded import with a mapping (admin): 202, and a background job imports the rows
/// (follow it with `GET /imports/{import_id}`). Each row is a create-or-update by its
/// identifiers; rows that fail are skipped and listed in `errors.csv`.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/imports/{import_id}/start", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), ("import_id" = ImportId, Path)), request_body = StartImport,
    responses((status = 202, body = Import), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn start_import(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ImportId)>,
    Json(req): Json<StartImport>,
) -> ApiResult<(StatusCode, Json<Import>)> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let import = store::get(&state.db, &scope, id).await?;
    let keys: HashSet<String> = contact_field_keys(&state, &scope)
        .await?
        .into_iter()
        .collect();
    let mapping = check_mapping(&import.columns, &req.mapping, &keys)?;
    if req.tags.len() > 20 {
        return Err(ApiError::invalid_field("tags", "At most 20 tags."));
    }
    let mut tags: Vec<String> = Vec::with_capacity(req.tags.len());
    for tag in &req.tags {
        let tag = normalize::tag("tags", tag)?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let payload = serde_json::to_value(job::Payload {
        workspace_id: scope.workspace_id,
        import_id: id,
        actor: scope.actor.audit_name(),
    })
    .map_err(ApiError::internal)?;
    let job = NewJob::new(job::JOB_KIND, payload)
        .workspace(scope.workspace_id)
        .unique_key(format!("{}:{id}", job::JOB_KIND));
    let import = store::start(&state.db, &scope, id, &mapping, &tags, job).await?;
    state.jobs_wakeup.notify_one();
    Ok((StatusCode::ACCEPTED, Json(import)))
}

/// The rejected rows of an import as CSV (`row`, `column`, `message`), in row order. `row` is the
/// row's line in the file: the header is row 1, as a spreadsheet shows it.
#[utoipa::path(get, path = "/workspaces/{workspace_id}/imports/{import_id}/errors.csv", tag = "imports",
    params(("workspace_id" = WorkspaceId, Path), ("import_id" = ImportId, Path)),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = ErrorBody)))]
async fn import_errors(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, ImportId)>,
) -> ApiResult<Response> {
    const PAGE: i64 = 2_000;
    let Path((_, id)) = path;
    store::get(&state.db, &scope, id).await?;
    let db = state.db.clone();
    let head = stream::once(futures::future::ready(export::csv_chunk([[
        "row", "column", "message",
    ]])));
    let body = stream::try_unfold(Some(0i64), move |after| {
        let db = db.clone();
        async move {
            let Some(after) = after else { return Ok(None) };
            let rows = store::errors_after(&db, &scope, id, after, PAGE)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if rows.is_empty() {
                return Ok(None);
            }
            let next = (rows.len() as i64 == PAGE).then(|| rows[rows.len() - 1].row_no);
            let chunk = export::csv_chunk(rows.iter().map(|r| {
                [
                    r.row_no.to_string(),
                    parse::guard_formula(r.column_name.as_deref().unwrap_or_default()),
                    parse::guard_formula(&r.message),
                ]
            }))?;
            Ok(Some((chunk, next)))
        }
    });
    Ok(export::csv_response(
        &format!("import-{id}-errors.csv"),
        futures::StreamExt::chain(head, body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_paths() {
        let ws = WorkspaceId::new();
        assert!(is_upload(
            &Method::POST,
            &format!("/api/v1/workspaces/{ws}/imports")
        ));
        assert!(!is_upload(
            &Method::GET,
            &format!("/api/v1/workspaces/{ws}/imports")
        ));
        assert!(!is_upload(
            &Method::POST,
            &format!("/api/v1/workspaces/{ws}/imports/x/start")
        ));
        assert!(!is_upload(
            &Method::POST,
            &format!("/api/v1/workspaces/{ws}/contacts")
        ));
        assert!(!is_upload(&Method::POST, "/api/v1/workspaces//imports"));
    }

    #[test]
    fn mappings_are_checked() {
        let columns: Vec<String> = ["Email", "Name", "Plan", "Phone"]
            .map(String::from)
            .to_vec();
        let keys: HashSet<String> = ["plan".to_owned()].into_iter().collect();
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        let code = |pairs: &[(&str, &str)]| {
            check_mapping(&columns, &map(pairs), &keys)
                .unwrap_err()
                .code
                .to_string()
        };
        let ok = check_mapping(
            &columns,
            &map(&[("Email", "emails"), ("Plan", "custom.plan")]),
            &keys,
        )
        .unwrap();
        assert_eq!(ok["Name"], "ignore");
        assert_eq!(ok["Plan"], "custom.plan");
        assert_eq!(
            code(&[("Email", "emails"), ("Nope", "phones")]),
            "unknown_column"
        );
        assert_eq!(code(&[("Email", "email")]), "unknown_target");
        assert_eq!(
            code(&[("Email", "emails"), ("Plan", "custom.tier")]),
            "unknown_custom_field"
        );
        assert_eq!(
            code(&[
                ("Email", "emails"),
                ("Name", "first_name"),
                ("Plan", "first_name")
            ]),
            "duplicate_target"
        );
        assert_eq!(code(&[("Name", "first_name")]), "mapping_needs_identifier");
        assert!(
            check_mapping(
                &columns,
                &map(&[("Email", "emails"), ("Phone", "emails")]),
                &keys
            )
            .is_ok()
        );
    }
}
