//! Delivery: the `forwarding` consumer enqueues one job per (destination, record); the
//! `forward.deliver` job sends it and keeps the destination's counters and last error.
//!
//! Transient failures (network, timeouts, 429, 5xx) are retried by the job queue with backoff
//! (honouring `Retry-After`); other 4xx answers are permanent and the job dies with the answer
//! kept. Destinations are user-supplied URLs, so they go through `connect::ssrf`: checked
//! before each call, and called with its guarded client (no redirects, private addresses left
//! out of every DNS answer): loopback, private, link-local and similar ranges are refused
//! unless the deployment allows them (`tracking.allow_private_destinations`, for tests and
//! on-premises setups). HTTP destinations are signed by `connect::standard_webhooks`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use connect::ssrf;
use connect::standard_webhooks::{self, Secret};
use futures::future::BoxFuture;
use platform::db::Db;
use platform::id::WorkspaceId;
use platform::jobs::{JobContext, JobError, JobHandler, JobRegistry, NewJob};
use platform::secret_box::SecretBox;
use platform::{Timestamp, with_db};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{COLUMNS, DestinationId, DestinationKind, DestinationRow};
use crate::gateway::LogRecord;
use crate::log::{BatchHandler, Delivery};
use crate::sites::SiteId;

pub const GROUP: &str = "forwarding";
pub const JOB_KIND: &str = "forward.deliver";
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Serialize, Deserialize)]
struct Payload {
    destination_id: DestinationId,
    record: LogRecord,
}

/// The consumer: records in, delivery jobs out, in one transaction per batch.
pub struct Enqueuer {
    pub db: Db,
}

#[derive(sqlx::FromRow)]
struct Target {
    id: DestinationId,
    site_id: SiteId,
    workspace_id: WorkspaceId,
}

impl BatchHandler for Enqueuer {
    fn process<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let targets: Vec<Target> = with_db!(&self.db, pool => sqlx::query_as(
                "SELECT id, site_id, workspace_id FROM destinations WHERE enabled = $1",
            ).bind(true).fetch_all(pool).await)?;
            if targets.is_empty() {
                return Ok(());
            }
            let mut by_site: HashMap<SiteId, Vec<&Target>> = HashMap::new();
            for t in &targets {
                by_site.entry(t.site_id).or_default().push(t);
            }
            let mut tx = self.db.begin().await?;
            for delivery in batch {
                let Ok(record) = LogRecord::decode(&delivery.payload) else {
                    tracing::error!(
                        sequence = delivery.sequence,
                        "unreadable event log record not forwarded"
                    );
                    continue;
                };
                for target in by_site.get(&record.site_id).into_iter().flatten() {
                    let key = format!("fwd:{}:{}", target.id, record.id);
                    let payload = serde_json::to_value(Payload {
                        destination_id: target.id,
                        record: record.clone(),
                    })?;
                    let job = NewJob::new(JOB_KIND, payload)
                        .workspace(target.workspace_id)
                        .queue("forwarding")
                        .unique_key(key);
                    platform::jobs::enqueue(&mut tx, job).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// The job handler that sends one record to one destination.
pub struct Sender {
    pub db: Db,
    pub secrets: SecretBox,
    pub http: reqwest::Client,
    pub allow_private: bool,
}

impl Sender {
    pub fn new(db: Db, secrets: SecretBox, allow_private: bool) -> anyhow::Result<Sender> {
        let http = ssrf::client(TIMEOUT, allow_private)?;
        Ok(Sender {
            db,
            secrets,
            http,
            allow_private,
        })
    }

    pub fn install(self, registry: &mut JobRegistry) {
        registry.register(JOB_KIND, self);
    }

    async fn deliver(&self, job: &JobContext) -> Result<(), JobError> {
        let payload: Payload = job.payload_as()?;
        let row: Option<DestinationRow> =
            with_db!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM destinations WHERE id = $1"
        ))).bind(payload.destination_id).fetch_optional(pool).await)
            .map_err(JobError::retry)?;
        // Deleted or disabled since it was queued: nothing to do.
        let Some(destination) = row.filter(|d| d.enabled) else {
            return Ok(());
        };
        if destination.workspace_id != payload.record.workspace_id {
            return Err(JobError::permanent(anyhow::anyhow!(
                "record and destination belong to different workspaces"
            )));
        }
        let result = self.send(&destination, &payload.record).await;
        self.record_outcome(destination.id, result.as_ref().err())
            .await;
        result
    }

    async fn send(&self, destination: &DestinationRow, record: &LogRecord) -> Result<(), JobError> {
        check_address(&destination.url, self.allow_private).await?;
        let requests = match destination.kind() {
            DestinationKind::TaggingServer => vec![replay(&self.http, &destination.url, record)?],
            DestinationKind::Ga4 => {
                let secrets = destination
                    .secrets(&self.secrets)
                    .map_err(JobError::permanent)?;
                ga4_requests(
                    &self.http,
                    destination,
                    secrets["api_secret"].as_str().unwrap_or(""),
                    record,
                )
            }
            DestinationKind::Http => {
                let secrets = destination
                    .secrets(&self.secrets)
                    .map_err(JobError::permanent)?;
                vec![signed(
                    &self.http,
                    &destination.url,
                    secrets["secret"].as_str().unwrap_or(""),
                    record,
                )?]
            }
        };
        for request in requests {
            let response = request
                .send()
                .await
                .map_err(|e| JobError::retry(anyhow::anyhow!("request failed: {e}")))?;
            let status = response.status();
            if status.is_success() {
                continue;
            }
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let excerpt: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let error = anyhow::anyhow!("destination answered {status}: {excerpt}");
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                match retry_after {
                    Some(after) => JobError::retry_after(error, after),
                    None => JobError::retry(error),
                }
            } else {
                JobError::permanent(error)
            });
        }
        Ok(())
    }

    async fn record_outcome(&self, id: DestinationId, error: Option<&JobError>) {
        let now = Timestamp::now();
        let result = match error {
            None => with_db!(&self.db, pool => sqlx::query(
                "UPDATE destinations SET delivered = delivered + 1, last_success_at = $1 WHERE id = $2",
            ).bind(now).bind(id).execute(pool).await.map(|_| ())),
            Some(err) => with_db!(&self.db, pool => sqlx::query(
                "UPDATE destinations SET failed = failed + 1, last_error = $1, last_failure_at = $2 WHERE id = $3",
            ).bind(err.message()).bind(now).bind(id).execute(pool).await.map(|_| ())),
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, destination = %id, "cannot record a delivery outcome");
        }
        let outcome = if error.is_none() {
            "delivered"
        } else {
            "failed"
        };
        metrics::counter!("forwarding_attempts_total", "destination" => id.to_string(), "outcome" => outcome).increment(1);
    }
}

impl JobHandler for Sender {
    fn run<'a>(&'a self, job: &'a JobContext) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.deliver(job))
    }
}

/// Refuses addresses a user-supplied URL must not reach unless allowed: refusals are
/// permanent, DNS failures are retried.
async fn check_address(url: &str, allow_private: bool) -> Result<(), JobError> {
    ssrf::check_url(url, allow_private).await.map_err(|e| {
        if e.is_refusal() {
            JobError::permanent(e)
        } else {
            JobError::retry(e)
        }
    })
}

/// The original request, replayed to the tagging server: method, path, query, body, the
/// headers we kept, and the client address in `X-Forwarded-For`.
fn replay(
    http: &reqwest::Client,
    base: &str,
    record: &LogRecord,
) -> Result<reqwest::RequestBuilder, JobError> {
    let raw = &record.request;
    let mut url = format!("{base}{}", raw.path);
    if !raw.query.is_empty() {
        url.push('?');
        url.push_str(&raw.query);
    }
    let method = reqwest::Method::from_bytes(raw.method.as_bytes()).map_err(JobError::permanent)?;
    let mut request = http.request(method, url).body(raw.body.clone());
    for (name, value) in &raw.headers {
        if name != "x-forwarded-for" && name != "authorization" {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    if let Some(ip) = raw.client_ip {
        request = request.header("x-forwarded-for", ip.to_string());
    }
    Ok(request)
}

/// The record's hits as Measurement Protocol calls: one per client, at most 25 events each.
fn ga4_requests(
    http: &reqwest::Client,
    destination: &DestinationRow,
    api_secret: &str,
    record: &LogRecord,
) -> Vec<reqwest::RequestBuilder> {
    let mut by_client: Vec<(String, Option<String>, Vec<Value>)> = Vec::new();
    for hit in &record.hits {
        let Some(client) = hit.client_id.clone() else {
            continue;
        };
        let mut params = serde_json::Map::new();
        for (name, value) in &hit.params {
            params.insert(name.clone(), value.to_json());
        }
        if let Some(sid) = &hit.session.id {
            params.entry("session_id").or_insert(json!(sid));
        }
        if let Some(ms) = hit.engagement_time_ms {
            params.entry("engagement_time_msec").or_insert(json!(ms));
        }
        if let Some(location) = &hit.page.location {
            params.entry("page_location").or_insert(json!(location));
        }
        if let Some(currency) = &hit.currency {
            params.entry("currency").or_insert(json!(currency));
        }
        let event = json!({
            "name": hit.event_name,
            "params": params,
            "timestamp_micros": hit.event_time.as_datetime().timestamp_micros(),
        });
        match by_client
            .iter_mut()
            .find(|(c, u, _)| *c == client && *u == hit.user_id)
        {
            Some((_, _, events)) => events.push(event),
            None => by_client.push((client, hit.user_id.clone(), vec![event])),
        }
    }
    let measurement_id = destination.measurement_id.clone().unwrap_or_default();
    let url = format!("{}/mp/collect", destination.url);
    by_client
        .into_iter()
        .flat_map(|(client, user, events)| {
            events
                .chunks(25)
                .map(|chunk| {
                    let mut body = json!({ "client_id": client, "events": chunk });
                    if let Some(user) = &user {
                        body["user_id"] = json!(user);
                    }
                    http.post(&url)
                        .query(&[
                            ("measurement_id", measurement_id.as_str()),
                            ("api_secret", api_secret),
                        ])
                        .json(&body)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The record as JSON, signed like Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256
/// of "{id}.{timestamp}.{body}">` with the secret's bytes.
fn signed(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    record: &LogRecord,
) -> Result<reqwest::RequestBuilder, JobError> {
    let body = serde_json::to_vec(record).map_err(JobError::permanent)?;
    let id = record.id.to_string();
    let timestamp = Timestamp::now().as_datetime().timestamp();
    let secret = Secret::parse(secret).map_err(JobError::permanent)?;
    let signature = standard_webhooks::sign([&secret], &id, timestamp, &body);
    Ok(http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body))
}

/// `webhook-signature` for one secret's text and a timestamp header; kept for callers of
/// this path, the signing is `connect::standard_webhooks`.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> anyhow::Result<String> {
    let secret = Secret::parse(secret)?;
    let timestamp: i64 = timestamp.parse()?;
    Ok(standard_webhooks::sign([&secret], id, timestamp, body))
}

/// Shares the enqueuer as an `Arc` for the consumer loop.
pub fn enqueuer(db: Db) -> Arc<Enqueuer> {
    Arc::new(Enqueuer { db })
}
