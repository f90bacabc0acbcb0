//! The analytics consumer: reads the event log as consumer group `analytics`, enriches each hit,
//! assigns sessions and writes flat events to the analytics store, then acknowledges.
//!
//! At least once, idempotent: a batch is acknowledged only after its events are stored, and the
//! store skips hit ids it already has, so a crash or a full redelivery adds nothing twice.
//! Sessions are GA4's `sid` when the hit carries one; otherwise a visitor's events belong to one
//! session until 30 minutes pass without an event. The last session of a visitor is cached, and
//! read back from the store after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use platform::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::analytics::{AnalyticsEvent, AnalyticsStore};
use crate::enrich::Enricher;
use crate::gateway::LogRecord;
use crate::log::{BatchHandler, Delivery, EventLog};
use crate::sites::SiteId;
use crate::{Hit, ParamValue};

pub const GROUP: &str = "analytics";
const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const CACHE_LIMIT: usize = 200_000;

/// Log records per insert: one transaction's worth (the rollups aggregate within it).
const RECORDS_PER_INSERT: usize = 2_000;

/// Log records per batch read: several parts, so storing one overlaps preparing the next.
pub const BATCH: usize = 10_000;

pub struct Pipeline {
    store: Arc<dyn AnalyticsStore>,
    enricher: Enricher,
    /// (site, visitor) → (session, last event time).
    sessions: Mutex<HashMap<(SiteId, String), (String, Timestamp)>>,
}

impl Pipeline {
    pub fn new(store: Arc<dyn AnalyticsStore>, enricher: Enricher) -> Self {
        Self {
            store,
            enricher,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Consumes until `shutdown` (see [`crate::log::consume`]).
    pub async fn run(self: Arc<Self>, log: Arc<dyn EventLog>, shutdown: CancellationToken) {
        crate::log::consume(log, GROUP, shutdown, self.as_ref()).await;
    }

    /// Turns a batch of log records into stored events. The batch is stored in parts of
    /// [`RECORDS_PER_INSERT`] records, each its own insert (and transaction): while one part is
    /// being written (on the store's own connection thread) the next is parsed, enriched and
    /// sessionised here, so both cores work. Every part is stored before this returns, and the
    /// caller acknowledges only then; a failure anywhere fails the batch, which comes again
    /// whole (the parts already stored are skipped by hit id).
    pub async fn process_batch(&self, batch: &[Delivery]) -> anyhow::Result<()> {
        let mut writing: Option<tokio::task::JoinHandle<anyhow::Result<usize>>> = None;
        for part in batch.chunks(RECORDS_PER_INSERT) {
            let mut events = Vec::with_capacity(part.len() * 2);
            for delivery in part {
                let record: LogRecord = match LogRecord::decode(&delivery.payload) {
                    Ok(record) => record,
                    Err(err) => {
                        // A record we cannot read will not get better by retrying; skip it loudly.
                        tracing::error!(error = %err, sequence = delivery.sequence, "unreadable event log record skipped");
                        metrics::counter!("pipeline_unreadable_records_total").increment(1);
                        continue;
                    }
                };
                for hit in &record.hits {
                    events.push(self.event(&record, hit, &mut writing).await?);
                }
            }
            finish(&mut writing).await?;
            let store = self.store.clone();
            writing = Some(tokio::spawn(async move {
                store.insert(&events).await.map(|()| events.len())
            }));
        }
        finish(&mut writing).await
    }

    /// `writing`: the part being stored, awaited before the store is asked for a session.
    async fn event(
        &self,
        record: &LogRecord,
        hit: &Hit,
        writing: &mut Option<tokio::task::JoinHandle<anyhow::Result<usize>>>,
    ) -> anyhow::Result<AnalyticsEvent> {
        let e = self.enricher.enrich(hit, &record.request);
        let geo = e.geo.unwrap_or_default();
        let device = e.user_agent.device_type.as_str().to_owned();
        let visitor = hit
            .client_id
            .clone()
            .or_else(|| hit.user_id.clone())
            .unwrap_or_else(|| hit.id.to_string());
        let session = self.session(record.site_id, &visitor, hit, writing).await?;
        let value = hit.params.get("value").and_then(ParamValue::as_f64);
        let params = serde_json::to_value(&hit.params).unwrap_or_default();
        Ok(AnalyticsEvent {
            hit_id: hit.id,
            site_id: record.site_id,
            workspace_id: record.workspace_id,
            time: hit.event_time,
            event_name: hit.event_name.clone(),
            visitor,
            session,
            engaged: hit.session.engaged == Some(true)
                || hit.engagement_time_ms.is_some_and(|ms| ms > 0),
            page_host: e.page.host,
            page_path: e.page.path,
            page_title: hit.page.title.clone(),
            referrer_host: e.referrer_host.filter(|_| !e.internal_referrer),
            source: Some(e.traffic.source),
            medium: Some(e.traffic.medium),
            campaign: Some(e.traffic.campaign),
            term: e.utm.term,
            content: e.utm.content,
            channel: Some(e.channel_group.as_str().to_owned()),
            country: geo.country,
            region: geo.region,
            city: geo.city,
            device: Some(device),
            browser: e.user_agent.browser,
            os: e.user_agent.os,
            value,
            currency: hit.currency.clone(),
            params,
            bot: record.bot || e.user_agent.bot,
        })
    }

    async fn session(
        &self,
        site: SiteId,
        visitor: &str,
        hit: &Hit,
        writing: &mut Option<tokio::task::JoinHandle<anyhow::Result<usize>>>,
    ) -> anyhow::Result<String> {
        if let Some(sid) = &hit.session.id {
            return Ok(format!("{visitor}:{sid}"));
        }
        let time = hit.event_time;
        let key = (site, visitor.to_owned());
        let cached = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let previous = match cached {
            Some(found) => Some(found),
            None => {
                // The store must hold every earlier event first (the cache may have been
                // cleared since they were sessionised).
                finish(writing).await?;
                self.store.last_session(site, visitor, time).await?
            }
        };
        let session = match previous {
            Some((session, last)) if time.seconds_since(last) <= SESSION_TIMEOUT.as_secs_f64() => {
                session
            }
            // Named after its first event, so a replay names it the same.
            _ => format!("{visitor}:t{}", time.as_datetime().timestamp()),
        };
        let mut cache = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        let last = cache.get(&key).map_or(time, |(_, t)| (*t).max(time));
        cache.insert(key, (session.clone(), last));
        Ok(session)
    }
}

/// Waits for the part being stored, if any, and counts its events.
async fn finish(
    writing: &mut Option<tokio::task::JoinHandle<anyhow::Result<usize>>>,
) -> anyhow::Result<()> {
    if let Some(task) = writing.take() {
        let stored = task.await??;
        metrics::counter!("pipeline_events_total").increment(stored as u64);
    }
    Ok(())
}

impl BatchHandler for Pipeline {
    fn process<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.process_batch(batch))
    }

    fn batch_size(&self) -> usize {
        BATCH
    }
}
