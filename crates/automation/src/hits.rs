//! Tracking-event triggers, straight from the tracking event log (consumer group
//! [`GROUP`], owned by automation): a hit whose event name some enabled rule of its workspace
//! wants (`tracking:<event>` in `automation_triggers`, as a trigger or as an inactivity
//! timer's event) becomes an `automation.hit` job, unique per hit, so a redelivered record
//! adds nothing; runs are unique per (rule, hit) besides.
//!
//! The contact is resolved like `conversions::hits` does: by the hit's GA client id, through
//! crm's public lookup. CRM capture may create that contact from this very hit a moment later
//! (another consumer group), so while a hit with a client id finds nobody the job looks again
//! every [`LOOKUP_RETRY`], [`LOOKUP_ATTEMPTS`] times in all; then the run starts without a
//! contact, like a schedule run (steps that need one fail with `automation_no_contact`), and
//! moves no inactivity timer (timers are per contact).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use platform::id::WorkspaceId;
use platform::jobs::{self, JobContext, JobError, JobRegistry, NewJob};
use platform::{Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracking::gateway::LogRecord;
use tracking::log::{BatchHandler, Delivery, WantedEvents};
use tracking::sites::SiteId;

use crate::Engine;
use crate::definition;
use crate::engine::Fired;

/// The event-log consumer group.
pub const GROUP: &str = "automation";
/// Job: the runs and timers of one tracked hit.
pub const HIT_JOB: &str = "automation.hit";
/// Between contact lookups while the hit's client id names nobody yet.
pub const LOOKUP_RETRY: Duration = Duration::from_secs(2);
/// Runs of the job that look for the contact before the run starts without one.
pub const LOOKUP_ATTEMPTS: u32 = 3;
/// How long a workspace's wanted event names are cached (rule changes in this process clear
/// the cache at once; other processes' changes are seen within this).
const WANTED_TTL: Duration = Duration::from_secs(5);

/// Workspace → tracking event names its enabled rules want, briefly cached.
pub(crate) fn wanted_cache() -> WantedEvents {
    WantedEvents::new(WANTED_TTL)
}

/// What the job needs from the hit: the event as rules see it (`event.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrackedHit {
    hit_id: String,
    site_id: SiteId,
    event_name: String,
    event_time: Timestamp,
    client_id: Option<String>,
    /// `{"type": "tracking", "event", "hit_id", "site_id", "params", …}`.
    event: Value,
}

/// Reads the log and queues a job per hit that some rule wants.
pub struct HitConsumer {
    engine: Engine,
}

impl HitConsumer {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    async fn wanted(&self, workspace: WorkspaceId) -> anyhow::Result<Arc<HashSet<String>>> {
        self.engine
            .tracking_wanted
            .get(workspace, || async {
                let keys: Vec<String> = with_db!(self.engine.db(), pool => sqlx::query_scalar(
                    "SELECT DISTINCT trigger_key FROM automation_triggers WHERE workspace_id = $1 AND trigger_key LIKE 'tracking:%'",
                ).bind(workspace).fetch_all(pool).await)?;
                Ok(keys
                    .into_iter()
                    .filter_map(|k| k.strip_prefix("tracking:").map(str::to_owned))
                    .collect())
            })
            .await
    }

    async fn process_batch(&self, batch: &[Delivery]) -> anyhow::Result<()> {
        let mut new_jobs = Vec::new();
        for delivery in batch {
            // The workspace's wanted events first: most records match no trigger, and reading
            // a whole record parses its request again.
            let Some(header) = LogRecord::peek(&delivery.payload) else {
                continue;
            };
            if header.bot {
                continue;
            }
            let wanted = self.wanted(header.workspace_id).await?;
            if wanted.is_empty() {
                continue;
            }
            let Ok(record) = LogRecord::decode(&delivery.payload) else {
                continue;
            };
            for hit in record
                .hits
                .iter()
                .filter(|h| wanted.contains(&h.event_name))
            {
                let params: Map<String, Value> = hit
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect();
                let client_id = hit.client_id.clone().filter(|c| !c.is_empty());
                let event = json!({
                    "type": "tracking",
                    "id": hit.id,
                    "event": hit.event_name,
                    "hit_id": hit.id,
                    "site_id": record.site_id,
                    "event_time": hit.event_time,
                    "client_id": client_id,
                    "user_id": hit.user_id,
                    "session_id": hit.session.id,
                    "page": {"location": hit.page.location, "title": hit.page.title,
                             "referrer": hit.page.referrer},
                    "currency": hit.currency,
                    "params": params,
                });
                let tracked = TrackedHit {
                    hit_id: hit.id.to_string(),
                    site_id: record.site_id,
                    event_name: hit.event_name.clone(),
                    event_time: hit.event_time,
                    client_id,
                    event,
                };
                let key = format!("automation:hit:{}", tracked.hit_id);
                new_jobs.push(
                    NewJob::new(HIT_JOB, json!(tracked))
                        .workspace(record.workspace_id)
                        .max_attempts(LOOKUP_ATTEMPTS + 5)
                        .unique_key(key),
                );
            }
        }
        if new_jobs.is_empty() {
            return Ok(());
        }
        let mut tx = self.engine.db().begin().await?;
        for job in new_jobs {
            jobs::enqueue(&mut tx, job).await?;
        }
        tx.commit().await?;
        self.engine.wake();
        Ok(())
    }

    /// Consumes the log until `shutdown` (the worker role runs this).
    pub async fn run(
        self: std::sync::Arc<Self>,
        log: std::sync::Arc<dyn tracking::log::EventLog>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        tracking::log::consume(log, GROUP, shutdown, self.as_ref()).await;
    }
}

impl BatchHandler for HitConsumer {
    fn process<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.process_batch(batch))
    }
}

/// Registers the `automation.hit` handler.
pub(crate) fn install(engine: &Engine, registry: &mut JobRegistry) {
    let engine = engine.clone();
    registry.register_fn(HIT_JOB, move |job| {
        let engine = engine.clone();
        async move { on_hit(&engine, &job).await }
    });
}

async fn on_hit(engine: &Engine, job: &JobContext) -> Result<(), JobError> {
    let hit: TrackedHit = job.payload_as()?;
    let Some(workspace) = job.workspace_id else {
        return Err(JobError::permanent(anyhow::anyhow!(
            "a hit without a workspace"
        )));
    };
    let scope = Scope::system(workspace);
    let contact = match &hit.client_id {
        Some(cid) => crm::contacts::store::find_by_ga_client_id(engine.db(), &scope, cid)
            .await
            .map_err(|e| JobError::retry(anyhow::anyhow!("{}", e.message)))?,
        None => None,
    };
    if contact.is_none() && hit.client_id.is_some() && job.attempt < LOOKUP_ATTEMPTS {
        return Err(JobError::retry_after(
            anyhow::anyhow!("no contact known by this client id yet; looking again"),
            LOOKUP_RETRY,
        ));
    }
    engine
        .fire(&Fired {
            workspace,
            key: definition::tracking_key(&hit.event_name),
            trigger_event_id: hit.hit_id.clone(),
            payload: hit.event.clone(),
            event: hit.event,
            contact,
            site: Some(hit.site_id),
            at: hit.event_time,
            depth: 0,
        })
        .await
        .map_err(|e| JobError::retry(anyhow::anyhow!("{}: {}", e.code, e.message)))
}
