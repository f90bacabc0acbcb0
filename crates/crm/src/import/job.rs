//! The `crm.import` job: rows in chunks, each chunk one transaction that upserts its rows (each in
//! a savepoint, so a bad row is recorded and skipped without undoing the others), records the
//! rejected rows and moves the counters. A job that crashes resumes after the last committed
//! chunk: the counters say where, and they moved with the rows they count.

use std::collections::{BTreeMap, HashMap};

use futures::future::BoxFuture;
use platform::db::{Db, Dialect};
use platform::id::{ApiKeyId, UserId, WorkspaceId};
use platform::jobs::{JobContext, JobError, JobHandler, JobRegistry};
use platform::{Actor, ApiError, Role, Scope};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ImportId;
use super::parse::{self, Plan, Target};
use super::store::{self, Counts};
use crate::contacts::store::upsert_isolated;
use crate::fields::{self, Entity};
use crate::timeline::{self, kind};
use crate::{from_json, settings};

pub const JOB_KIND: &str = "crm.import";

/// Rows per transaction on PostgreSQL.
pub const CHUNK_ROWS: usize = 500;
/// Rows per transaction on SQLite, where a transaction holds the database's one write lock:
/// small enough that other writers wait well under a second.
pub const CHUNK_ROWS_SQLITE: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    pub workspace_id: WorkspaceId,
    pub import_id: ImportId,
    /// Who started the import (`usr_…`, `key_…`): timeline entries and events name them.
    pub actor: String,
}

fn actor(name: &str) -> Actor {
    if let Ok(id) = name.parse::<UserId>() {
        Actor::User(id)
    } else if let Ok(id) = name.parse::<ApiKeyId>() {
        Actor::ApiKey(id)
    } else {
        Actor::System
    }
}

/// Why a run stopped early.
enum Stop {
    /// Another runner moved the import on (a lost lease): nothing to record.
    Superseded,
    Error(JobError),
}

impl From<ApiError> for Stop {
    fn from(err: ApiError) -> Self {
        Stop::Error(JobError::retry(anyhow::anyhow!("{err}")))
    }
}

/// The job handler.
pub struct Importer {
    pub db: Db,
}

impl Importer {
    pub fn new(db: Db) -> Importer {
        Importer { db }
    }

    pub fn install(self, registry: &mut JobRegistry) {
        registry.register(JOB_KIND, self);
    }

    async fn run_import(&self, job: &JobContext, scope: &Scope, id: ImportId) -> Result<(), Stop> {
        let Some(work) = store::work(&self.db, scope, id).await? else {
            return Ok(()); // deleted since
        };
        if !matches!(work.status.as_str(), "queued" | "running") {
            return Ok(());
        }
        let plan = self.plan(scope, &work).await?;
        let separator = work.separator.bytes().next().unwrap_or(b',');
        let skip = usize::try_from(work.processed_rows).unwrap_or(usize::MAX);
        let mut rows = parse::rows(&work.csv_text, separator).skip(skip);
        let mut processed = work.processed_rows;
        let chunk_rows = match self.db.dialect() {
            Dialect::Sqlite => CHUNK_ROWS_SQLITE,
            Dialect::Postgres => CHUNK_ROWS,
        };
        loop {
            if job.lease_lost.is_cancelled() {
                return Err(Stop::Superseded);
            }
            let mut chunk = Vec::with_capacity(chunk_rows);
            for row in rows.by_ref().take(chunk_rows) {
                // The file was checked at upload; a parse error now is corruption, not a row.
                let row = row.map_err(|e| {
                    Stop::Error(JobError::permanent(anyhow::anyhow!(
                        "the stored file cannot be read: {e}"
                    )))
                })?;
                chunk.push(row);
            }
            let finished =
                chunk.len() < chunk_rows || processed + chunk.len() as i64 >= work.total_rows;
            let mut tx = self.db.begin().await.map_err(ApiError::from)?;
            if !store::claim(&mut tx, scope, id, processed).await? {
                return Err(Stop::Superseded);
            }
            let mut counts = Counts::default();
            for (row_no, record) in &chunk {
                let row = i64::try_from(*row_no).unwrap_or(i64::MAX);
                counts.processed += 1;
                let input = match plan.input(record) {
                    Ok(input) => input,
                    Err(bad) => {
                        store::record_error(
                            &mut tx,
                            scope,
                            id,
                            row,
                            bad.column.as_deref(),
                            &bad.message,
                        )
                        .await?;
                        counts.failed += 1;
                        continue;
                    }
                };
                match upsert_isolated(&mut tx, scope, &input).await {
                    Ok(done) => {
                        if done.created {
                            counts.created += 1;
                        } else {
                            counts.updated += 1;
                        }
                        counts.merged += done.merged.len() as i64;
                        let key = format!("import:{id}:{row}");
                        let data = json!({ "import_id": id, "row": row });
                        timeline::record(
                            &mut tx,
                            scope,
                            done.contact.id,
                            kind::IMPORTED,
                            &data,
                            Some(&key),
                        )
                        .await?;
                    }
                    Err(err) if err.status.is_client_error() => {
                        let column = err
                            .details
                            .as_ref()
                            .and_then(|d| d.get("field"))
                            .and_then(|f| f.as_str())
                            .and_then(|f| plan.column_of(f));
                        store::record_error(
                            &mut tx,
                            scope,
                            id,
                            row,
                            column.as_deref(),
                            &err.message,
                        )
                        .await?;
                        counts.failed += 1;
                    }
                    // The database, not the row: undo the chunk and let the queue retry.
                    Err(err) => return Err(err.into()),
                }
            }
            store::advance(&mut tx, scope, id, counts, finished).await?;
            if finished {
                let import =
                    json!({ "import_id": id, "processed_rows": processed + counts.processed });
                platform::outbox::publish(&mut tx, scope.workspace_id, "import.completed", &import)
                    .await
                    .map_err(ApiError::from)?;
            }
            tx.commit().await.map_err(ApiError::from)?;
            processed += counts.processed;
            if finished {
                tracing::info!(import_id = %id, rows = processed, "contact import completed");
                return Ok(());
            }
        }
    }

    /// The mapping as a plan: targets by cell index, custom field definitions, the phone region.
    async fn plan(&self, scope: &Scope, work: &store::Work) -> Result<Plan, Stop> {
        let columns: Vec<String> = from_json(&work.column_names);
        let mapping: BTreeMap<String, String> =
            work.mapping.as_deref().map(from_json).unwrap_or_default();
        let mut planned = Vec::new();
        for (index, column) in columns.iter().enumerate() {
            let target = mapping
                .get(column)
                .and_then(|t| Target::parse(t))
                .unwrap_or(Target::Ignore);
            if target != Target::Ignore {
                planned.push((index, column.clone(), target));
            }
        }
        let fields: HashMap<String, fields::FieldDefinition> = fields::list(&self.db, scope)
            .await?
            .into_iter()
            .filter(|d| d.entity == Entity::Contact)
            .map(|d| (d.key.clone(), d))
            .collect();
        Ok(Plan {
            columns: planned,
            tags: from_json(&work.tags),
            region: settings::get(&self.db, scope).await?.default_region,
            fields,
        })
    }
}

impl JobHandler for Importer {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let payload: Payload = job.payload_as()?;
            if job.workspace_id != Some(payload.workspace_id) {
                return Err(JobError::permanent(anyhow::anyhow!(
                    "the job and the import belong to different workspaces"
                )));
            }
            let scope = Scope {
                workspace_id: payload.workspace_id,
                actor: actor(&payload.actor),
                role: Role::Admin,
            };
            match self.run_import(job, &scope, payload.import_id).await {
                Ok(()) | Err(Stop::Superseded) => Ok(()),
                Err(Stop::Error(err)) => {
                    let last = job.is_last_attempt()
                        || err.failure() == platform::jobs::Failure::Permanent;
                    if last {
                        let message = format!("The import stopped: {}", err.message());
                        if let Err(e) =
                            store::fail(&self.db, &scope, payload.import_id, &message).await
                        {
                            tracing::warn!(error = %e, "could not mark the import failed");
                        }
                    }
                    Err(err)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_parse_back() {
        let user = UserId::new();
        assert_eq!(actor(&user.to_string()), Actor::User(user));
        let key = ApiKeyId::new();
        assert_eq!(actor(&key.to_string()), Actor::ApiKey(key));
        assert_eq!(actor("system"), Actor::System);
    }
}
