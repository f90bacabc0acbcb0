//! Delivery: the `forwarding` consumer enqueues one job per (destination, record); the
//! `forward.deliver` job sends it and keeps the destination's counters and last error.
//!
//! Transient failures (network, timeouts, 429, 5xx) are retried by the job queue with backoff
//! (honouring `Retry-After`); other 4xx answers are permanent and the job dies with the answer
//! kept. Destinations are user-supplied URLs, so addresses are checked before each call:
//! loopback, private, link-local and similar ranges are refused unless the deployment allows
//! them (`tracking.allow_private_destinations`, for tests and on-premises setups). The check
//! resolves the name itself before the request; a DNS answer that changes between the two is
//! not caught (noted for the SSRF-safe client the platform will share).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use platform::db::Db;
use platform::id::WorkspaceId;
use platform::jobs::{JobContext, JobError, JobHandler, JobRegistry, NewJob};
use platform::secret_box::SecretBox;
use platform::{Timestamp, with_db};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

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
                let Ok(record) = serde_json::from_slice::<LogRecord>(&delivery.payload) else {
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
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
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

/// Refuses addresses a user-supplied URL must not reach unless allowed.
async fn check_address(url: &str, allow_private: bool) -> Result<(), JobError> {
    if allow_private {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url).map_err(JobError::permanent)?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addresses = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| JobError::retry(anyhow::anyhow!("cannot resolve {host}: {e}")))?;
    for address in addresses {
        if is_private(address.ip()) {
            return Err(JobError::permanent(anyhow::anyhow!(
                "{host} resolves to a private or local address ({}); refused",
                address.ip()
            )));
        }
    }
    Ok(())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
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
    let timestamp = Timestamp::now().as_datetime().timestamp().to_string();
    let signature = sign(secret, &id, &timestamp, &body).map_err(JobError::permanent)?;
    Ok(http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .body(body))
}

pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> anyhow::Result<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Shares the enqueuer as an `Arc` for the consumer loop.
pub fn enqueuer(db: Db) -> Arc<Enqueuer> {
    Arc::new(Enqueuer { db })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_vector() {
        // The test vector of PROTOCOLS.md §8 (Standard Webhooks' own).
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let sig = sign(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            br#"{"email":"test@example.com","username":"test_user"}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["81.2.69.142", "2001:218::1", "8.8.8.8"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
