//! Imports in the state database, always scoped to a workspace.

use std::collections::BTreeMap;

use platform::db::{Db, Tx};
use platform::http::{Page, PageParams};
use platform::id::JobId;
use platform::jobs::NewJob;
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db, with_tx};

use super::parse::Upload;
use super::{Import, ImportId, ImportStatus};
use crate::{from_json, to_json};

#[derive(sqlx::FromRow)]
struct ImportRow {
    id: ImportId,
    status: String,
    file_name: Option<String>,
    column_names: String,
    sample_rows: String,
    suggested_mapping: String,
    mapping: Option<String>,
    tags: String,
    total_rows: i64,
    processed_rows: i64,
    created_count: i64,
    updated_count: i64,
    merged_count: i64,
    failed_count: i64,
    error: Option<String>,
    created_by: Option<String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl From<ImportRow> for Import {
    fn from(r: ImportRow) -> Self {
        let status = ImportStatus::parse(&r.status);
        let (total, processed) = (count(r.total_rows), count(r.processed_rows));
        let progress_percent = match status {
            ImportStatus::Completed => 100,
            _ if total == 0 => 0,
            _ => u8::try_from((processed.min(total) * 100) / total).unwrap_or(100),
        };
        Import {
            id: r.id,
            status,
            file_name: r.file_name,
            columns: from_json(&r.column_names),
            sample_rows: from_json(&r.sample_rows),
            suggested_mapping: from_json(&r.suggested_mapping),
            mapping: r.mapping.as_deref().map(from_json),
            tags: from_json(&r.tags),
            total_rows: total,
            processed_rows: processed,
            created: count(r.created_count),
            updated: count(r.updated_count),
            merged: count(r.merged_count),
            failed: count(r.failed_count),
            progress_percent,
            error: r.error,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// Every column but the file itself.
const COLUMNS: &str = "id, status, file_name, column_names, sample_rows, suggested_mapping, \
    mapping, tags, total_rows, processed_rows, created_count, updated_count, merged_count, \
    failed_count, error, created_by, created_at, updated_at, started_at, finished_at";

pub fn import_not_found() -> ApiError {
    ApiError::not_found("import_not_found", "No such import in this workspace.")
}

pub async fn create(
    db: &Db,
    scope: &Scope,
    file_name: Option<&str>,
    upload: &Upload,
    suggested: &BTreeMap<String, String>,
) -> ApiResult<Import> {
    let id = ImportId::new();
    let now = Timestamp::now();
    let separator = char::from(upload.separator).to_string();
    with_db!(db, pool => sqlx::query(
        "INSERT INTO contact_imports (id, workspace_id, status, file_name, csv_text, separator,
            column_names, sample_rows, suggested_mapping, total_rows, created_by, created_at, updated_at)
         VALUES ($1, $2, 'uploaded', $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
    ).bind(id).bind(scope.workspace_id).bind(file_name).bind(&upload.text).bind(&separator)
     .bind(to_json(&upload.columns)).bind(to_json(&upload.sample)).bind(to_json(suggested))
     .bind(i64::try_from(upload.total_rows).unwrap_or(i64::MAX)).bind(scope.actor.audit_name())
     .bind(now).execute(pool).await.map(|_| ()))?;
    get(db, scope, id).await
}

pub async fn get(db: &Db, scope: &Scope, id: ImportId) -> ApiResult<Import> {
    let row: Option<ImportRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contact_imports WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.map(Import::from).ok_or_else(import_not_found)
}

async fn get_in(tx: &mut Tx, scope: &Scope, id: ImportId) -> ApiResult<Import> {
    let row: Option<ImportRow> = with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contact_imports WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(conn).await)?;
    row.map(Import::from).ok_or_else(import_not_found)
}

/// Imports, newest first.
pub async fn list(db: &Db, scope: &Scope, page: &PageParams) -> ApiResult<Page<Import>> {
    let limit = page.limit()?;
    let cursor = page.cursor()?.map(ImportId);
    let rows: Vec<ImportRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM contact_imports WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Page::from_rows(rows, limit, |r| r.id.uuid()).map(Import::from))
}

/// Queues an uploaded import with its (checked) mapping; 409 if it was started already.
pub async fn start(
    db: &Db,
    scope: &Scope,
    id: ImportId,
    mapping: &BTreeMap<String, String>,
    tags: &[String],
    job: NewJob,
) -> ApiResult<Import> {
    let mut tx = db.begin().await?;
    let current = get_in(&mut tx, scope, id).await?;
    if current.status != ImportStatus::Uploaded {
        return Err(ApiError::conflict(
            "import_already_started",
            format!(
                "This import is {} already; upload the file again to import it again.",
                current.status.as_str()
            ),
        ));
    }
    let job_id: JobId = platform::jobs::enqueue(&mut tx, job).await?;
    let now = Timestamp::now();
    // The status check in the WHERE clause fences a concurrent start on PostgreSQL.
    let updated = with_tx!(&mut tx, conn => sqlx::query(
        "UPDATE contact_imports SET status = 'queued', mapping = $1, tags = $2, job_id = $3,
            started_by = $4, updated_at = $5
         WHERE workspace_id = $6 AND id = $7 AND status = 'uploaded'",
    ).bind(to_json(mapping)).bind(to_json(&tags)).bind(job_id.uuid()).bind(scope.actor.audit_name())
     .bind(now).bind(scope.workspace_id).bind(id).execute(conn).await.map(|r| r.rows_affected()))?;
    if updated == 0 {
        return Err(ApiError::conflict(
            "import_already_started",
            "This import was started already.",
        ));
    }
    let import = get_in(&mut tx, scope, id).await?;
    tx.commit().await?;
    Ok(import)
}

/// Deletes an import with its file and error report; 409 while it is queued or running.
pub async fn delete(db: &Db, scope: &Scope, id: ImportId) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let current = get_in(&mut tx, scope, id).await?;
    if matches!(current.status, ImportStatus::Queued | ImportStatus::Running) {
        return Err(ApiError::conflict(
            "import_in_progress",
            "This import is still running; delete it once it has finished.",
        ));
    }
    with_tx!(&mut tx, conn => sqlx::query(
        "DELETE FROM contact_imports WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(conn).await.map(|_| ()))?;
    tx.commit().await?;
    Ok(())
}

/// One line of an error report.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ErrorRow {
    pub row_no: i64,
    pub column_name: Option<String>,
    pub message: String,
}

/// Error report lines after row `after`, in row order, at most `limit`.
pub async fn errors_after(
    db: &Db,
    scope: &Scope,
    id: ImportId,
    after: i64,
    limit: i64,
) -> ApiResult<Vec<ErrorRow>> {
    Ok(with_db!(db, pool => sqlx::query_as(
        "SELECT row_no, column_name, message FROM contact_import_errors
         WHERE workspace_id = $1 AND import_id = $2 AND row_no > $3 ORDER BY row_no LIMIT $4",
    ).bind(scope.workspace_id).bind(id).bind(after).bind(limit).fetch_all(pool).await)?)
}

// ---------------------------------------------------------------------------------------------
// For the job

/// What the job reads to (re)start.
#[derive(Debug, sqlx::FromRow)]
pub struct Work {
    pub status: String,
    pub csv_text: String,
    pub separator: String,
    pub column_names: String,
    pub mapping: Option<String>,
    pub tags: String,
    pub total_rows: i64,
    pub processed_rows: i64,
}

pub async fn work(db: &Db, scope: &Scope, id: ImportId) -> ApiResult<Option<Work>> {
    Ok(with_db!(db, pool => sqlx::query_as(
        "SELECT status, csv_text, separator, column_names, mapping, tags, total_rows, processed_rows
         FROM contact_imports WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?)
}

/// Claims the next chunk in the chunk's transaction: true when the import is still queued or
/// running with `processed` rows done. On PostgreSQL the row stays locked until the chunk
/// commits, so a second runner of the same import waits, then finds the count moved and stops.
pub async fn claim(tx: &mut Tx, scope: &Scope, id: ImportId, processed: i64) -> ApiResult<bool> {
    let now = Timestamp::now();
    let claimed = with_tx!(tx, conn => sqlx::query(
        "UPDATE contact_imports SET status = 'running', started_at = COALESCE(started_at, $1), updated_at = $1
         WHERE workspace_id = $2 AND id = $3 AND processed_rows = $4 AND status IN ('queued', 'running')",
    ).bind(now).bind(scope.workspace_id).bind(id).bind(processed)
     .execute(conn).await.map(|r| r.rows_affected()))?;
    Ok(claimed == 1)
}

pub async fn record_error(
    tx: &mut Tx,
    scope: &Scope,
    id: ImportId,
    row: i64,
    column: Option<&str>,
    message: &str,
) -> ApiResult<()> {
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO contact_import_errors (import_id, workspace_id, row_no, column_name, message)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (import_id, row_no) DO NOTHING",
    ).bind(id).bind(scope.workspace_id).bind(row).bind(column).bind(message)
     .execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// What one chunk did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub processed: i64,
    pub created: i64,
    pub updated: i64,
    pub merged: i64,
    pub failed: i64,
}

/// Adds a chunk's counts, in the chunk's transaction; `finished` completes the import.
pub async fn advance(
    tx: &mut Tx,
    scope: &Scope,
    id: ImportId,
    counts: Counts,
    finished: bool,
) -> ApiResult<()> {
    let now = Timestamp::now();
    with_tx!(tx, conn => sqlx::query(
        "UPDATE contact_imports SET processed_rows = processed_rows + $1, created_count = created_count + $2,
            updated_count = updated_count + $3, merged_count = merged_count + $4,
            failed_count = failed_count + $5, updated_at = $6,
            status = CASE WHEN $7 THEN 'completed' ELSE status END,
            finished_at = CASE WHEN $7 THEN $6 ELSE finished_at END
         WHERE workspace_id = $8 AND id = $9",
    ).bind(counts.processed).bind(counts.created).bind(counts.updated).bind(counts.merged)
     .bind(counts.failed).bind(now).bind(finished).bind(scope.workspace_id).bind(id)
     .execute(conn).await.map(|_| ()))?;
    Ok(())
}

/// Gives up on an import: `failed`, with the reason.
pub async fn fail(db: &Db, scope: &Scope, id: ImportId, error: &str) -> ApiResult<()> {
    let now = Timestamp::now();
    with_db!(db, pool => sqlx::query(
        "UPDATE contact_imports SET status = 'failed', error = $1, updated_at = $2, finished_at = $2
         WHERE workspace_id = $3 AND id = $4 AND status IN ('queued', 'running')",
    ).bind(error).bind(now).bind(scope.workspace_id).bind(id).execute(pool).await.map(|_| ()))?;
    Ok(())
}
