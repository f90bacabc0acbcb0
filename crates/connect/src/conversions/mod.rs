//! Offline-conversion adapters: the Meta Conversions API (§4), the Google Data Manager API
//! `events:ingest` (§11) and the GA4 Measurement Protocol (§1.2), each a pure request builder
//! plus a small client with a configurable base URL, and Google's OAuth token exchange.
//!
//! Callers hand over platform-neutral [`Conversion`]s with the contact's identifiers in clear;
//! each adapter normalizes and hashes them the way its platform specifies
//! ([`normalize`]) and sends one batch. The answer is a [`SendReport`]: what was sent (without
//! any secret), what came back, and an [`Outcome`] that says whether the batch was accepted,
//! should be retried, or was refused, and which events (by index) the platform blamed.

pub mod data_manager;
pub mod ga4_mp;
pub mod google_auth;
pub mod meta_capi;
pub mod normalize;
#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest response excerpt kept in a report, in bytes.
pub const RESPONSE_EXCERPT_BYTES: usize = 2048;
/// Timeout of one platform request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The contact's identifiers, in clear; adapters normalize and hash them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserData {
    pub emails: Vec<String>,
    /// E.164 (`+4930…`) as the CRM stores them.
    pub phones: Vec<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// `f` / `m` (or words starting with them).
    pub gender: Option<String>,
    /// `YYYY-MM-DD`.
    pub date_of_birth: Option<String>,
    /// Our contact id, hashed for Meta the way the pixel hashes it.
    pub external_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Click and browser ids the visitor arrived with; never hashed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClickIds {
    pub fbc: Option<String>,
    pub fbp: Option<String>,
    pub gclid: Option<String>,
    pub gbraid: Option<String>,
    pub wbraid: Option<String>,
    /// GA4 client id (`cid`), required by the Measurement Protocol for web streams.
    pub ga_client_id: Option<String>,
    /// GA4 session id (`sid`), so the event joins the visitor's session.
    pub ga_session_id: Option<String>,
}

/// Consent signals; `None` means unknown (sent as unspecified, or left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Consent {
    pub ad_user_data: Option<bool>,
    pub ad_personalization: Option<bool>,
}

/// One conversion, platform-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// The deduplication key: Meta `event_id`, Data Manager `transactionId`, GA4
    /// `transaction_id`/`event_id` param. The browser hit's id for tracked conversions.
    pub event_id: String,
    /// The platform's event name (`Purchase`, `purchase`, …); Data Manager ignores it (the
    /// conversion action is on the destination).
    pub event_name: String,
    pub event_time: DateTime<Utc>,
    pub value: Option<f64>,
    pub currency: Option<String>,
    /// The page the conversion happened on, when it happened on a website.
    pub source_url: Option<String>,
    #[serde(default)]
    pub user: UserData,
    #[serde(default)]
    pub click_ids: ClickIds,
    #[serde(default)]
    pub consent: Consent,
}

/// How a batch fared.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The platform took the batch.
    Accepted,
    /// Nothing was taken; try the same batch again later (5xx, 429, timeouts).
    Transient { retry_after: Option<Duration> },
    /// Refused for good. `per_event` names the events (index into the batch) the platform
    /// blamed, with its reason; empty means the batch as a whole was refused.
    Rejected {
        message: String,
        per_event: Vec<(usize, String)>,
    },
}

/// One request to a platform and its answer, as an attempt log keeps it.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// What was sent, without credentials: method, path, event ids, counts.
    pub request: Value,
    pub status: Option<u16>,
    /// The response body, cut to [`RESPONSE_EXCERPT_BYTES`].
    pub response: String,
    pub outcome: Outcome,
}

impl SendReport {
    fn refused_locally(request: Value, message: String, per_event: Vec<(usize, String)>) -> Self {
        SendReport {
            request,
            status: None,
            response: String::new(),
            outcome: Outcome::Rejected { message, per_event },
        }
    }
}

/// The platform endpoints (`conversions.*` configuration); tests point them at local servers.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub meta_base_url: String,
    pub meta_api_version: String,
    pub data_manager_base_url: String,
    pub ga4_base_url: String,
    pub google_token_url: String,
}

impl From<&platform::config::ConversionsConfig> for Endpoints {
    fn from(c: &platform::config::ConversionsConfig) -> Self {
        Endpoints {
            meta_base_url: c.meta_base_url.trim_end_matches('/').to_owned(),
            meta_api_version: c.meta_api_version.clone(),
            data_manager_base_url: c.data_manager_base_url.trim_end_matches('/').to_owned(),
            ga4_base_url: c.ga4_base_url.trim_end_matches('/').to_owned(),
            google_token_url: c.google_token_url.clone(),
        }
    }
}

/// The HTTP client every adapter uses. Base URLs come from configuration, not from users, so
/// the SSRF guard does not apply.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Reads a response into (status, excerpt, parsed JSON if any).
pub(crate) async fn read_response(
    response: reqwest::Response,
) -> (u16, Option<Duration>, String, Option<Value>) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).ok();
    (status, retry_after, excerpt(&text), json)
}

pub(crate) fn excerpt(text: &str) -> String {
    if text.len() <= RESPONSE_EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = RESPONSE_EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A transport failure (connect, timeout): transient, with a description that carries no URL
/// (URLs may carry credentials in their query).
pub(crate) fn transport_failure(request: Value, err: &reqwest::Error) -> SendReport {
    let what = if err.is_timeout() {
        "the request timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    SendReport {
        request,
        status: None,
        response: what.to_owned(),
        outcome: Outcome::Transient { retry_after: None },
    }
}

/// Retry on 408, 429 and 5xx; refuse the rest.
pub(crate) fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}
