//! Conversions straight from the tracking event log (consumer group `conversions`): a hit whose
//! event name has an enabled `tracking` trigger (`purchase`) becomes a `conversions.from_hit`
//! job, due a few seconds later, carrying what only the hit knows (its id, click ids from the
//! landing, `_fbc`/`_fbp`, the page, user agent and address, value and currency).
//!
//! The race with CRM capture: the capture consumer may create the contact (from this very hit)
//! after we read the hit. The job therefore looks the contact up by the hit's GA client id
//! when it runs, and while it finds none it retries (every [`LOOKUP_RETRY`], up to
//! [`LOOKUP_ATTEMPTS`] runs) before recording the conversion without one. The event id is the
//! page's own event id (`ep.event_id`) when the hit has one, else the hit's id: the same choice
//! as on the `form.submitted` path, so whichever comes first records the conversion and the
//! other adds nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connect::conversions::ClickIds;
use futures::future::BoxFuture;
use platform::db::Db;
use platform::id::WorkspaceId;
use platform::jobs::{self, JobContext, JobError, JobRegistry, NewJob};
use platform::{Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use tracking::enrich::Enricher;
use tracking::gateway::LogRecord;
use tracking::log::{BatchHandler, Delivery, WantedEvents};

use crate::events::{self, SourceEvent};
use crate::triggers::{self, Source};

/// The event-log consumer group.
pub const GROUP: &str = "conversions";
pub const KIND: &str = "conversions.from_hit";
/// How long after the hit the conversion is first built.
pub const FIRST_DELAY: Duration = Duration::from_secs(2);
/// Between contact lookups while the contact is not known yet.
pub const LOOKUP_RETRY: Duration = Duration::from_secs(2);
/// Runs that wait for the contact before the conversion is recorded without one.
pub const LOOKUP_ATTEMPTS: u32 = 3;
const TRIGGERS_TTL: Duration = Duration::from_secs(5);

/// What the job needs from the hit.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HitConversion {
    hit_id: String,
    /// The page's own id for the event (`ep.event_id`), which a web container sends to the
    /// browser pixel as well: preferred as the conversion's event id so the platform
    /// deduplicates the pixel's event against ours.
    #[serde(default)]
    page_event_id: Option<String>,
    event_name: String,
    event_time: DateTime<Utc>,
    client_id: Option<String>,
    session_id: Option<String>,
    page: Option<String>,
    user_agent: Option<String>,
    client_ip: Option<String>,
    value: Option<f64>,
    currency: Option<String>,
    click_ids: ClickIds,
}

/// Reads the log and queues a job per hit that a tracking trigger wants.
pub struct HitConsumer {
    db: Db,
    enricher: Enricher,
    /// Workspace → event names with an enabled tracking trigger, briefly cached.
    wanted: WantedEvents,
}

impl HitConsumer {
    pub fn new(db: Db, enricher: Enricher) -> Self {
        Self {
            db,
            enricher,
            wanted: WantedEvents::new(TRIGGERS_TTL),
        }
    }

    async fn wanted_events(&self, workspace: WorkspaceId) -> anyhow::Result<Arc<HashSet<String>>> {
        self.wanted
            .get(workspace, || async {
                let names: Vec<String> = with_db!(&self.db, pool => sqlx::query_scalar(
                    "SELECT DISTINCT event FROM conversion_triggers WHERE workspace_id = $1 AND source = 'tracking' AND enabled = $2",
                ).bind(workspace).bind(true).fetch_all(pool).await)?;
                Ok(names.into_iter().collect())
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
            let wanted = self.wanted_events(header.workspace_id).await?;
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
                let e = self.enricher.enrich(hit, &record.request);
                let param = |name: &str| hit.params.get(name).map(|v| v.to_json());
                let conversion = HitConversion {
                    hit_id: hit.id.to_string(),
                    page_event_id: param("event_id").and_then(|v| page_event_id(&v)),
                    event_name: hit.event_name.clone(),
                    event_time: hit.event_time.as_datetime(),
                    client_id: hit.client_id.clone().filter(|c| !c.is_empty()),
                    session_id: hit.session.id.clone(),
                    page: hit.page.location.clone(),
                    user_agent: record.request.user_agent().map(str::to_owned),
                    client_ip: record.request.client_ip.map(|ip| ip.to_string()),
                    value: param("value").and_then(|v| match v {
                        serde_json::Value::Number(n) => n.as_f64(),
                        serde_json::Value::String(s) => s.trim().parse().ok(),
                        _ => None,
                    }),
                    currency: hit
                        .currency
                        .clone()
                        .or_else(|| param("currency").and_then(|v| v.as_str().map(str::to_owned))),
                    click_ids: ClickIds {
                        gclid: e.click_ids.gclid.clone(),
                        gbraid: e.click_ids.gbraid.clone(),
                        wbraid: e.click_ids.wbraid.clone(),
                        fbc: e.fbc.clone(),
                        fbp: e.fbp.clone(),
                        ga_client_id: hit.client_id.clone().filter(|c| !c.is_empty()),
                        ga_session_id: hit.session.id.clone(),
                    },
                };
                let key = format!("conversions:hit:{}", conversion.hit_id);
                new_jobs.push(
                    NewJob::new(KIND, serde_json::json!(conversion))
                        .workspace(record.workspace_id)
                        .queue(crate::deliver::QUEUE)
                        .run_at(Timestamp::now() + FIRST_DELAY)
                        .max_attempts(LOOKUP_ATTEMPTS + 5)
                        .unique_key(key),
                );
            }
        }
        if new_jobs.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        for job in new_jobs {
            jobs::enqueue(&mut tx, job).await?;
        }
        tx.commit().await?;
        Ok(())
    }

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

/// A usable page event id: a non-empty string or number of at most 100 characters (Meta's
/// `event_id` and Data Manager's `transactionId` are free text; longer is not an id).
pub(crate) fn page_event_id(value: &serde_json::Value) -> Option<String> {
    let text = match value {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty() && text.chars().count() <= 100).then_some(text)
}

/// Registers the `conversions.from_hit` handler.
pub fn install(registry: &mut JobRegistry) {
    registry.register_fn(KIND, |job| async move { from_hit(&job).await });
}

async fn from_hit(job: &JobContext) -> Result<(), JobError> {
    let hit: HitConversion = job.payload_as()?;
    let Some(workspace) = job.workspace_id else {
        return Err(JobError::permanent(anyhow::anyhow!("no workspace")));
    };
    let scope = Scope::system(workspace);
    let contact = match &hit.client_id {
        Some(cid) => crm::contacts::store::find_by_ga_client_id(&job.db, &scope, cid)
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
    let source = SourceEvent {
        event_id: hit
            .page_event_id
            .clone()
            .unwrap_or_else(|| hit.hit_id.clone()),
        contact_id: contact,
        event_time: Some(hit.event_time),
        value: hit.value,
        currency: hit.currency.clone(),
        source_url: hit.page.clone(),
        event_name: None,
        click_ids: hit.click_ids.clone(),
        consent: Default::default(),
        user_agent: hit.user_agent.clone(),
        client_ip: hit.client_ip.clone(),
    };
    let matched = triggers::matching(&job.db, &scope, Source::Tracking, &hit.event_name).await?;
    for trigger in matched {
        events::record(&job.db, &scope, &trigger, &source)
            .await
            .map_err(|e| JobError::retry(anyhow::anyhow!("{}: {}", e.code, e.message)))?;
    }
    Ok(())
}
