//! Outbound signed webhooks: a workspace registers endpoints (URL, description, event-type
//! filter), and every domain event of the workspace that an enabled endpoint subscribes to is
//! delivered to it as a Standard Webhooks message.
//!
//! - **Fan-out** ([`deliver::FanOut`], outbox consumer `webhooks`): one query reads the
//!   workspace's enabled endpoints, the filters are matched in memory, and one message per
//!   matching endpoint is inserted with its first delivery job, in one transaction. The message
//!   is unique per (endpoint, event), so a redelivered event adds nothing.
//! - **Delivery** ([`deliver::Sender`], job `webhooks.deliver` on queue `webhooks`): one job per
//!   attempt. It POSTs `{"type","timestamp","data"}` with `webhook-id` (the message id, the same
//!   on every attempt), `webhook-timestamp` and `webhook-signature` (one signature per valid
//!   secret). 2xx delivers; 410 disables the endpoint; anything else (and timeouts, 15 s) is
//!   retried on `webhooks.retry_schedule_seconds`, and after the last attempt the message is
//!   failed. Recording the attempt, updating the message and the endpoint and enqueueing the
//!   next attempt is one transaction, fenced on the message's attempt count and generation, so
//!   a job that runs twice records nothing twice.
//! - **Health**: an endpoint whose attempts have failed without a success for
//!   `webhooks.disable_after_seconds` is disabled and `webhook.endpoint_disabled` is published
//!   (as it is after a 410). Disabling an endpoint, by hand or not, fails its pending messages;
//!   `recover` re-queues them once it is enabled again.
//! - **Resend / recover** start a new delivery cycle (the schedule again) under a new
//!   generation: jobs of the earlier cycle find a generation that is not theirs and do nothing.

pub mod deliver;
pub mod routes;
pub mod store;

use platform::{ApiError, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

platform::typed_id!(
    /// A webhook endpoint of a workspace.
    EndpointId,
    "ep"
);
platform::typed_id!(
    /// One domain event for one endpoint; its text form is the `webhook-id` header.
    MessageId,
    "msg"
);
platform::typed_id!(
    /// One delivery attempt of a message.
    AttemptId,
    "atmpt"
);

/// The domain event published when an endpoint is disabled automatically.
pub const ENDPOINT_DISABLED_EVENT: &str = "webhook.endpoint_disabled";
/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Largest response excerpt kept per attempt, in bytes.
pub const RESPONSE_EXCERPT_BYTES: usize = 1024;

/// Why an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    /// Turned off through the API.
    Manual,
    /// The endpoint answered 410 Gone.
    Gone,
    /// Every attempt failed for `webhooks.disable_after_seconds`.
    Failing,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Manual => "manual",
            DisabledReason::Gone => "gone",
            DisabledReason::Failing => "failing",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "manual" => DisabledReason::Manual,
            "gone" => DisabledReason::Gone,
            "failing" => DisabledReason::Failing,
            _ => return None,
        })
    }
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt got a 2xx.
    Delivered,
    /// Out of attempts, refused for good, or its endpoint was disabled.
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "delivered" => MessageStatus::Delivered,
            "failed" => MessageStatus::Failed,
            _ => MessageStatus::Pending,
        }
    }
}

/// Outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    Succeeded,
    Failed,
}

/// An endpoint as the API shows it; its secrets never appear.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Endpoint {
    pub id: EndpointId,
    pub url: String,
    pub description: String,
    /// Exact event types (`contact.created`), prefixes (`deal.*`) or `*` for every event.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why it is disabled, when it is.
    pub disabled_reason: Option<DisabledReason>,
    /// During a rotation: until when the previous secret still signs too.
    pub previous_secret_expires_at: Option<Timestamp>,
    /// Start of the current run of failed attempts (no success since).
    pub failing_since: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A message: one domain event for one endpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    /// Also the `webhook-id` header, the same on every attempt.
    pub id: MessageId,
    pub endpoint_id: EndpointId,
    /// The domain event this message carries.
    pub event_id: platform::id::EventId,
    pub event_type: String,
    pub status: MessageStatus,
    /// Attempts made so far, across resends.
    pub attempts: u32,
    /// When the next attempt is due (pending messages).
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub failed_at: Option<Timestamp>,
    /// The body sent: `{"type", "timestamp", "data"}`.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub created_at: Timestamp,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attempt {
    pub id: AttemptId,
    pub message_id: MessageId,
    /// 1 for the message's first attempt.
    pub attempt: u32,
    pub status: AttemptStatus,
    /// The URL called.
    pub url: String,
    /// The HTTP status answered; absent when no answer came (refused, timeout, network).
    pub response_status_code: Option<u16>,
    /// At most 1 KB of the response body.
    pub response: Option<String>,
    /// What went wrong, for failed attempts.
    pub error: Option<String>,
    pub latency_ms: i64,
    pub created_at: Timestamp,
}

/// Whether an endpoint with `filters` receives events of `event_type`.
pub fn filter_matches(filters: &[String], event_type: &str) -> bool {
    filters.iter().any(|f| {
        f == "*"
            || f == event_type
            || f.strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with('.') && event_type.starts_with(prefix))
    })
}

/// Checks and normalises an event-type filter (trimmed, lower-case, deduplicated, in order).
pub fn validate_event_types(types: &[String]) -> Result<Vec<String>, ApiError> {
    let invalid = |message: String| ApiError::invalid_field("event_types", message);
    if types.is_empty() {
        return Err(invalid(
            "`event_types` must not be empty; use [\"*\"] for every event.".to_owned(),
        ));
    }
    if types.len() > 100 {
        return Err(invalid("`event_types` has at most 100 entries.".to_owned()));
    }
    let mut out: Vec<String> = Vec::new();
    for raw in types {
        let t = raw.trim().to_ascii_lowercase();
        let body = t.strip_suffix(".*").unwrap_or(&t);
        let well_formed = t == "*"
            || (t.len() <= 100
                && !body.is_empty()
                && body.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                }));
        if !well_formed {
            return Err(invalid(format!(
                "`{raw}` is not an event type: use `contact.created`, a prefix like `deal.*`, or `*`."
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// The secret box context of an endpoint's secrets (current and previous).
fn seal_context(id: EndpointId) -> String {
    format!("webhook_endpoint:{id}")
}

pub fn endpoint_not_found() -> ApiError {
    ApiError::not_found(
        "webhook_endpoint_not_found",
        "No such webhook endpoint in this workspace.",
    )
}

pub fn message_not_found() -> ApiError {
    ApiError::not_found(
        "webhook_message_not_found",
        "No such message for this webhook endpoint.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn filters_match_exact_prefix_and_everything() {
        assert!(filter_matches(&v(&["*"]), "contact.created"));
        assert!(filter_matches(&v(&["deal.*"]), "deal.stage_changed"));
        assert!(!filter_matches(&v(&["deal.*"]), "contact.created"));
        assert!(!filter_matches(&v(&["deal.*"]), "dealer.created"));
        assert!(filter_matches(
            &v(&["note.created", "contact.created"]),
            "contact.created"
        ));
        assert!(!filter_matches(&v(&["contact.created"]), "contact.updated"));
        assert!(filter_matches(
            &v(&["webhook.*"]),
            "webhook.endpoint_disabled"
        ));
    }

    #[test]
    fn event_type_filters_are_validated() {
        assert_eq!(
            validate_event_types(&v(&[" Deal.* ", "contact.created", "deal.*"])).unwrap(),
            v(&["deal.*", "contact.created"])
        );
        assert_eq!(validate_event_types(&v(&["*"])).unwrap(), v(&["*"]));
        for bad in [
            &[][..],
            &["deal."],
            &["deal*"],
            &[".*"],
            &["a b"],
            &["*.created"],
        ] {
            let err = validate_event_types(&v(bad)).unwrap_err();
            assert_eq!(err.status.as_u16(), 422, "{bad:?}");
        }
    }
}
