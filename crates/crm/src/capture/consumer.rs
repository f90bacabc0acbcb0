//! The capture consumer: reads the event log as consumer group `crm-capture`.
//!
//! Per batch, in one state-database transaction (opened only when the batch has something to
//! write):
//! - an attributed hit (a referrer, UTMs or a click id) updates the visitor's first and last
//!   touch, so a form sent pages later still carries the landing's attribution;
//! - a hit matching a site's capture rule upserts a contact (identity resolution) with the
//!   mapped values, the visitor's client id and touches, adds a `form.submitted` timeline entry
//!   and publishes `form.submitted` with the hit id as the event id;
//! - any other hit of a visitor who is already a contact grows the contact's `web.session`
//!   timeline entry for that session (page views, pages, times).
//!
//! At least once, idempotent: a hit that changes contacts is claimed in `capture_processed` in
//! the same transaction, so a redelivered batch skips it. A rule whose mapped values are invalid
//! (a mistyped email) counts a failure with the reason on the rule and the hit is skipped; our
//! own errors fail the batch, which the log redelivers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use platform::db::{Db, Tx};
use platform::id::WorkspaceId;
use platform::{ApiError, Scope, Timestamp, with_tx};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracking::enrich::{Enricher, Enrichment};
use tracking::gateway::LogRecord;
use tracking::log::{BatchHandler, Delivery, EventLog};
use tracking::sites::SiteId;
use tracking::{Hit, ParamValue, Protocol};

use super::{Rule, as_text, lookup, store};
use crate::ContactId;
use crate::contacts::{ContactInput, Touch, store as contacts};
use crate::timeline::{self, kind};

pub const GROUP: &str = "crm-capture";

/// How long a site's rules are cached; a changed rule applies within this time.
const RULES_TTL: Duration = Duration::from_secs(5);
/// Pages remembered per web session entry.
const SESSION_PAGES: usize = 20;
/// Event parameters copied into a `form.submitted` entry and event.
const FORM_PARAMS: usize = 40;

/// A site's enabled rules and when they were read.
type CachedRules = (Instant, Arc<Vec<Rule>>);

/// (workspace, identifier kind, visitor) → the contact holding it, and since when.
type KnownVisitors = HashMap<(WorkspaceId, &'static str, String), Option<(ContactId, Timestamp)>>;

pub struct Capturer {
    db: Db,
    enricher: Enricher,
    rules: Mutex<HashMap<SiteId, CachedRules>>,
}

impl Capturer {
    pub fn new(db: Db, enricher: Enricher) -> Self {
        Self {
            db,
            enricher,
            rules: Mutex::new(HashMap::new()),
        }
    }

    /// Consumes until `shutdown` (see [`tracking::log::consume`]).
    pub async fn run(self: Arc<Self>, log: Arc<dyn EventLog>, shutdown: CancellationToken) {
        tracking::log::consume(log, GROUP, shutdown, self.as_ref()).await;
    }

    async fn rules_for(&self, site: SiteId) -> anyhow::Result<Arc<Vec<Rule>>> {
        let cached = self
            .rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&site)
            .filter(|(at, _)| at.elapsed() < RULES_TTL)
            .map(|(_, rules)| rules.clone());
        if let Some(rules) = cached {
            return Ok(rules);
        }
        let rules = Arc::new(store::enabled_for_site(&self.db, site).await?);
        let mut cache = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(site, (Instant::now(), rules.clone()));
        Ok(rules)
    }

    /// Applies capture to a batch of log records.
    pub async fn process_batch(&self, batch: &[Delivery]) -> anyhow::Result<()> {
        let mut work = Batch {
            tx: None,
            db: &self.db,
            known: HashMap::new(),
        };
        for delivery in batch {
            let record: LogRecord = match LogRecord::decode(&delivery.payload) {
                Ok(record) => record,
                Err(err) => {
                    tracing::error!(error = %err, sequence = delivery.sequence, "unreadable event log record skipped by capture");
                    continue;
                }
            };
            if record.bot {
                continue;
            }
            let rules = self.rules_for(record.site_id).await?;
            for hit in &record.hits {
                let enrichment = self.enricher.enrich(hit, &record.request);
                self.hit(&mut work, &record, &rules, hit, &enrichment)
                    .await
                    .map_err(api_to_anyhow)?;
            }
        }
        if let Some(tx) = work.tx {
            tx.commit().await?;
        }
        Ok(())
    }

    async fn hit(
        &self,
        work: &mut Batch<'_>,
        record: &LogRecord,
        rules: &[Rule],
        hit: &Hit,
        e: &Enrichment,
    ) -> Result<(), ApiError> {
        let Some(visitor) = hit.client_id.clone().filter(|v| !v.is_empty()) else {
            return Ok(());
        };
        let scope = Scope::system(record.workspace_id);
        let id_kind = if hit.protocol == Protocol::Segment {
            "anonymous_id"
        } else {
            "ga_client_id"
        };
        let touch = touch_of(e, hit);
        if let Some(touch) = &touch {
            let tx = work.tx().await?;
            remember_touch(tx, &scope, record.site_id, &visitor, touch).await?;
        }
        let matched: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.matches(hit, e.page.path.as_deref()))
            .collect();
        if matched.is_empty() {
            // Only visitors known as contacts get web sessions, from when they became known (so
            // a redelivered log adds nothing that the first delivery did not).
            let Some((contact, since)) = work.known(&scope, id_kind, &visitor).await? else {
                return Ok(());
            };
            if hit.event_time < since {
                return Ok(());
            }
            let tx = work.tx().await?;
            if claim(tx, &scope, hit).await? {
                web_session(tx, &scope, contact, record.site_id, &visitor, hit, e).await?;
            }
            return Ok(());
        }
        let tx = work.tx().await?;
        if !claim(tx, &scope, hit).await? {
            return Ok(());
        }
        let (first_touch, last_touch) =
            visitor_touches(tx, &scope, record.site_id, &visitor).await?;
        let mut captured = None;
        for rule in matched {
            let Some(mut input) = input_for(rule, hit) else {
                store::record_outcome(
                    tx,
                    &scope,
                    rule.id,
                    Some("The event had no value for any identifier mapping (emails, phones, external_ids)."),
                )
                .await?;
                continue;
            };
            match id_kind {
                "anonymous_id" => input.anonymous_ids = Some(vec![visitor.clone()]),
                _ => input.ga_client_ids = Some(vec![visitor.clone()]),
            }
            let mut last = last_touch.clone().or_else(|| touch.clone());
            if let Some(last) = &mut last {
                last.fbc = last.fbc.clone().or_else(|| e.fbc.clone());
                last.fbp = last.fbp.clone().or_else(|| e.fbp.clone());
            } else if e.fbc.is_some() || e.fbp.is_some() {
                last = Some(Touch {
                    fbc: e.fbc.clone(),
                    fbp: e.fbp.clone(),
                    at: Some(hit.event_time),
                    ..Touch::default()
                });
            }
            input.touch = last;
            input.first_touch = first_touch.clone();
            input.last_seen_at = Some(hit.event_time);
            match contacts::upsert_isolated(tx, &scope, &input).await {
                Ok(done) => {
                    let id = done.contact.id;
                    if let Some(stage) = rule.lifecycle_stage {
                        contacts::raise_lifecycle(tx, &scope, id, stage).await?;
                    }
                    let params = form_params(hit);
                    let data = json!({
                        "rule_id": rule.id, "rule_name": rule.name, "site_id": record.site_id,
                        "hit_id": hit.id, "event_name": hit.event_name,
                        "page": hit.page.location, "params": params,
                    });
                    let key = format!("capture:{}:{}", hit.id, rule.id);
                    timeline::record_at(
                        tx,
                        &scope,
                        id,
                        kind::FORM_SUBMITTED,
                        hit.event_time,
                        &data,
                        Some(&key),
                    )
                    .await?;
                    let event = json!({
                        "contact_id": id, "created": done.created, "site_id": record.site_id,
                        "rule_id": rule.id, "event_id": hit.id, "hit_id": hit.id,
                        // The page's own event id (`ep.event_id`), which a web container
                        // also gives the browser pixel; `params` may be cut before it.
                        "page_event_id": hit.params.get("event_id").map(|v| v.to_json()),
                        "event_name": hit.event_name, "event_time": hit.event_time,
                        "page": hit.page.location, "params": params,
                    });
                    platform::outbox::publish(tx, scope.workspace_id, "form.submitted", &event)
                        .await?;
                    store::record_outcome(tx, &scope, rule.id, None).await?;
                    metrics::counter!("crm_captured_total").increment(1);
                    captured = Some((id, done.contact.created_at));
                }
                Err(err) if err.status.is_server_error() => return Err(err),
                Err(err) => {
                    let field = err
                        .details
                        .as_ref()
                        .and_then(|d| d.get("field"))
                        .and_then(Value::as_str)
                        .map(|f| format!(" ({f})"))
                        .unwrap_or_default();
                    let message = format!("{}{field}", err.message);
                    store::record_outcome(tx, &scope, rule.id, Some(&message)).await?;
                    metrics::counter!("crm_capture_failures_total").increment(1);
                }
            }
        }
        if captured.is_some() {
            work.known
                .insert((scope.workspace_id, id_kind, visitor), captured);
        }
        Ok(())
    }
}

impl BatchHandler for Capturer {
    fn process<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.process_batch(batch))
    }
}

fn api_to_anyhow(err: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", err.code, err.message)
}

/// One batch's transaction (begun on first write) and the visitors looked up so far.
struct Batch<'a> {
    tx: Option<Tx>,
    db: &'a Db,
    known: KnownVisitors,
}

impl Batch<'_> {
    async fn tx(&mut self) -> Result<&mut Tx, ApiError> {
        if self.tx.is_none() {
            self.tx = Some(self.db.begin().await?);
        }
        self.tx
            .as_mut()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no transaction")))
    }

    async fn known(
        &mut self,
        scope: &Scope,
        kind: &'static str,
        visitor: &str,
    ) -> Result<Option<(ContactId, Timestamp)>, ApiError> {
        let key = (scope.workspace_id, kind, visitor.to_owned());
        if let Some(found) = self.known.get(&key) {
            return Ok(*found);
        }
        let tx = self.tx().await?;
        let found = contacts::holder(tx, scope, kind, visitor).await?;
        self.known.insert(key, found);
        Ok(found)
    }
}

/// The hit's marketing touch, when it has one: a campaign, referrer or click id (direct visits
/// and internal navigation have none).
fn touch_of(e: &Enrichment, hit: &Hit) -> Option<Touch> {
    let clicks = &e.click_ids;
    let clicked = clicks.gclid.is_some() || clicks.gbraid.is_some() || clicks.wbraid.is_some();
    let direct = e.traffic.source == "(direct)" || e.internal_referrer;
    if direct && !clicked && e.utm.source.is_none() {
        return None;
    }
    let keep = |s: &str| (!s.starts_with('(')).then(|| s.to_owned());
    Some(Touch {
        source: keep(&e.traffic.source),
        medium: keep(&e.traffic.medium),
        campaign: keep(&e.traffic.campaign),
        term: e.utm.term.clone(),
        content: e.utm.content.clone(),
        referrer: hit.page.referrer.clone().filter(|_| !e.internal_referrer),
        landing_page: hit.page.location.clone(),
        gclid: clicks.gclid.clone(),
        gbraid: clicks.gbraid.clone(),
        wbraid: clicks.wbraid.clone(),
        fbc: e.fbc.clone(),
        fbp: e.fbp.clone(),
        at: Some(hit.event_time),
    })
}

async fn remember_touch(
    tx: &mut Tx,
    scope: &Scope,
    site: SiteId,
    visitor: &str,
    touch: &Touch,
) -> Result<(), ApiError> {
    let text = crate::to_json(touch);
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO visitor_touches (site_id, visitor, workspace_id, first_touch, last_touch, updated_at)
         VALUES ($1, $2, $3, $4, $4, $5)
         ON CONFLICT (site_id, visitor) DO UPDATE SET last_touch = excluded.last_touch, updated_at = excluded.updated_at",
    ).bind(site).bind(visitor).bind(scope.workspace_id).bind(&text).bind(Timestamp::now())
     .execute(conn).await.map(|_| ()))?;
    Ok(())
}

async fn visitor_touches(
    tx: &mut Tx,
    scope: &Scope,
    site: SiteId,
    visitor: &str,
) -> Result<(Option<Touch>, Option<Touch>), ApiError> {
    let row: Option<(String, String)> = with_tx!(tx, conn => sqlx::query_as(
        "SELECT first_touch, last_touch FROM visitor_touches WHERE site_id = $1 AND visitor = $2 AND workspace_id = $3",
    ).bind(site).bind(visitor).bind(scope.workspace_id).fetch_optional(conn).await)?;
    Ok(match row {
        Some((first, last)) => (
            serde_json::from_str(&first).ok(),
            serde_json::from_str(&last).ok(),
        ),
        None => (None, None),
    })
}

/// Claims a hit for capture; false when an earlier delivery already applied it.
async fn claim(tx: &mut Tx, scope: &Scope, hit: &Hit) -> Result<bool, ApiError> {
    let inserted = with_tx!(tx, conn => sqlx::query(
        "INSERT INTO capture_processed (hit_id, workspace_id, processed_at) VALUES ($1, $2, $3)
         ON CONFLICT (hit_id) DO NOTHING",
    ).bind(hit.id.uuid()).bind(scope.workspace_id).bind(Timestamp::now())
     .execute(conn).await.map(|r| r.rows_affected()))?;
    Ok(inserted > 0)
}

/// The contact fields a rule maps from the hit; `None` when no identifier has a value.
fn input_for(rule: &Rule, hit: &Hit) -> Option<ContactInput> {
    let mut input = ContactInput::default();
    let (mut emails, mut phones, mut external, mut tags) =
        (Vec::new(), Vec::new(), Vec::new(), rule.tags.clone());
    let mut custom = Map::new();
    for m in &rule.mappings {
        let Some(value) = lookup(hit, &m.source) else {
            continue;
        };
        let text = as_text(&value)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        match (m.target.as_str(), text) {
            ("emails", Some(t)) => emails.push(t),
            ("phones", Some(t)) => phones.push(t),
            ("external_ids", Some(t)) => external.push(t),
            ("tags", Some(t)) => tags.push(t),
            ("first_name", Some(t)) => input.first_name = Some(Some(t)),
            ("last_name", Some(t)) => input.last_name = Some(Some(t)),
            ("name", Some(t)) => {
                let (first, last) = t.split_once(' ').unwrap_or((&t, ""));
                input.first_name = Some(Some(first.trim().to_owned()));
                if !last.trim().is_empty() {
                    input.last_name = Some(Some(last.trim().to_owned()));
                }
            }
            (target, _) => {
                if let Some(key) = target.strip_prefix("custom.") {
                    custom.insert(key.to_owned(), value.to_json());
                }
            }
        }
    }
    if emails.is_empty() && phones.is_empty() && external.is_empty() {
        return None;
    }
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    input.emails = some(emails);
    input.phones = some(phones);
    input.external_ids = some(external);
    input.tags = some(tags);
    input.custom = (!custom.is_empty()).then_some(custom);
    Some(input)
}

/// The hit's text and number parameters, for the timeline and the event.
fn form_params(hit: &Hit) -> Map<String, Value> {
    hit.params
        .iter()
        .filter(|(_, v)| !matches!(v, ParamValue::Json(_)))
        .take(FORM_PARAMS)
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect()
}

/// Grows the contact's entry for this web session: one entry per session, however many hits.
async fn web_session(
    tx: &mut Tx,
    scope: &Scope,
    contact: ContactId,
    site: SiteId,
    visitor: &str,
    hit: &Hit,
    e: &Enrichment,
) -> Result<(), ApiError> {
    let session = hit
        .session
        .id
        .clone()
        .unwrap_or_else(|| hit.event_time.as_datetime().format("%Y-%m-%d").to_string());
    let key = format!("web:{site}:{visitor}:{session}");
    let page_view = hit.event_name == "page_view" || hit.event_name == "page";
    let path = e.page.path.clone();
    match timeline::find_keyed(tx, scope, &key).await? {
        Some((id, mut data)) => {
            if let Value::Object(map) = &mut data {
                let bump = |map: &mut Map<String, Value>, field: &str| {
                    let n = map.get(field).and_then(Value::as_i64).unwrap_or(0);
                    map.insert(field.to_owned(), json!(n + 1));
                };
                bump(map, "events");
                if page_view {
                    bump(map, "page_views");
                }
                if let (Some(path), Some(Value::Array(pages))) = (&path, map.get_mut("pages"))
                    && pages.len() < SESSION_PAGES
                    && !pages.iter().any(|p| p == path)
                {
                    pages.push(json!(path));
                }
                let later = map
                    .get("last_at")
                    .and_then(|t| serde_json::from_value::<Timestamp>(t.clone()).ok())
                    .is_none_or(|t| t < hit.event_time);
                if later {
                    map.insert("last_at".to_owned(), json!(hit.event_time));
                }
            }
            timeline::set_data(tx, scope, id, &data).await?;
        }
        None => {
            let data = json!({
                "site_id": site, "session": session, "events": 1,
                "page_views": i64::from(page_view), "pages": path.into_iter().collect::<Vec<_>>(),
                "source": e.traffic.source, "medium": e.traffic.medium, "campaign": e.traffic.campaign,
                "first_at": hit.event_time, "last_at": hit.event_time,
            });
            timeline::record_at(
                tx,
                scope,
                contact,
                kind::WEB_SESSION,
                hit.event_time,
                &data,
                Some(&key),
            )
            .await?;
        }
    }
    contacts::seen(tx, scope, contact, hit.event_time).await
}
