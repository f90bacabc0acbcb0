//! Sources of conversions from domain events (outbox consumer `conversions`):
//! - `deal.won` → `crm` triggers on `deal.won`, for the deal's first contact, value and
//!   currency from the deal, event id `deal.won:{deal_id}`;
//! - `form.submitted` (the CRM capture consumer, after it created or updated the contact) →
//!   `crm` triggers on `form.submitted`, and `tracking` triggers on the hit's event name
//!   (`purchase`, `generate_lead`). The event id is the page's own event id (`ep.event_id`,
//!   the id a web container also gives the browser pixel as `eventID`, so the platform
//!   deduplicates the pixel against this server event) when the hit carried one, else the
//!   hit's id — the same choice as [`crate::hits`] makes.
//!   Deriving tracked conversions here rather than straight from the event log settles the
//!   race with the capture consumer: the contact (its email, phone and click ids) exists by
//!   the time the event is published, in the same transaction;
//! - `automation.event_received` (the automation trigger API) → `crm` triggers on its
//!   `trigger` name (`appointment_confirmed`), event id from its `event_id`.
//!
//! Recording is idempotent on (credential, event id), so a redelivered event adds nothing.

use chrono::{DateTime, Utc};
use connect::conversions::ClickIds;
use crm::ContactId;
use futures::future::BoxFuture;
use platform::Scope;
use platform::jobs::{JobContext, JobError};
use platform::outbox::{Consumer, OutboxEvent};
use serde_json::Value;

use crate::events::{self, SourceEvent};
use crate::triggers::{self, Source};

pub const CONSUMER: &str = "conversions";

/// The outbox consumer.
pub struct Conversions;

impl Consumer for Conversions {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn wants(&self, event_type: &str) -> bool {
        matches!(
            event_type,
            "deal.won" | "form.submitted" | "automation.event_received"
        )
    }

    fn handle<'a>(
        &'a self,
        event: &'a OutboxEvent,
        job: &'a JobContext,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(handle(event, job))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite() && *v >= 0.0)
}

fn contact(value: &Value) -> Option<ContactId> {
    value.as_str().and_then(|s| s.parse().ok())
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

async fn handle(event: &OutboxEvent, job: &JobContext) -> Result<(), JobError> {
    let Some(workspace_id) = event.workspace_id else {
        return Ok(());
    };
    let scope = Scope::system(workspace_id);
    let data = &event.payload;
    let mut wanted: Vec<(Source, String, SourceEvent)> = Vec::new();
    let published = Some(event.created_at.as_datetime());
    match event.event_type.as_str() {
        "deal.won" => {
            let Some(deal) = text(&data["deal_id"]) else {
                return Ok(());
            };
            let source = SourceEvent {
                event_id: format!("deal.won:{deal}"),
                contact_id: data["contact_ids"].get(0).and_then(contact),
                event_time: published,
                value: number(&data["value"]),
                currency: text(&data["currency"]),
                ..SourceEvent::default()
            };
            wanted.push((Source::Crm, "deal.won".to_owned(), source));
        }
        "form.submitted" => {
            let Some(hit) = text(&data["hit_id"]).or_else(|| text(&data["event_id"])) else {
                return Ok(());
            };
            // The page's event id first, as for conversions read from the log (`hits`), so
            // both paths name the conversion alike and the second adds nothing.
            let event_id = crate::hits::page_event_id(&data["page_event_id"]).unwrap_or(hit);
            let params = &data["params"];
            let source = SourceEvent {
                event_id,
                contact_id: contact(&data["contact_id"]),
                event_time: time(&data["event_time"]).or(published),
                value: number(&params["value"]),
                currency: text(&params["currency"]),
                source_url: text(&data["page"]),
                click_ids: ClickIds::default(),
                ..SourceEvent::default()
            };
            wanted.push((Source::Crm, "form.submitted".to_owned(), source.clone()));
            if let Some(name) = text(&data["event_name"]) {
                wanted.push((Source::Tracking, name, source));
            }
        }
        "automation.event_received" => {
            let Some(trigger) = text(&data["trigger"]) else {
                return Ok(());
            };
            let variables = &data["variables"];
            let source = SourceEvent {
                event_id: text(&data["event_id"]).unwrap_or_else(|| event.id.to_string()),
                contact_id: contact(&data["contact_id"]),
                event_time: published,
                value: number(&variables["value"]),
                currency: text(&variables["currency"]),
                ..SourceEvent::default()
            };
            wanted.push((Source::Crm, trigger, source));
        }
        _ => return Ok(()),
    }
    for (source_kind, name, source) in wanted {
        let matched = triggers::matching(&job.db, &scope, source_kind, &name).await?;
        for trigger in matched {
            events::record(&job.db, &scope, &trigger, &source)
                .await
                .map_err(|e| JobError::retry(anyhow::anyhow!("{}: {}", e.code, e.message)))?;
        }
    }
    Ok(())
}
