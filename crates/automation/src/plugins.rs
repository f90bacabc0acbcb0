//! The extension point for external steps: a [`StepPlugin`] validates its settings when a rule
//! is saved and runs through the job queue (`automation.step`) with an idempotency key per
//! (run, step), so a retried job never sends twice to a receiver that honours the key.
//! Messaging (WhatsApp, SMS) and offline conversions register their plugins here; this crate
//! ships `webhook` and `email`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use connect::standard_webhooks::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use futures::future::BoxFuture;
use platform::db::Db;
use platform::id::WorkspaceId;
use platform::secret_box::SecretBox;
use platform::{ApiError, Scope, Timestamp};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AutomationId, RunId};

/// What a plugin gets to run one step.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub workspace_id: WorkspaceId,
    pub automation_id: AutomationId,
    pub run_id: RunId,
    /// The step's position in the compiled rule.
    pub position: u32,
    /// `{run_id}:{position}`: the same on every attempt and retry of this step.
    pub idempotency_key: String,
    /// The step's settings with every template rendered.
    pub config: Value,
    /// The run's context (`contact`, `event`, `deal`) when the step was queued.
    pub context: Value,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub db: Db,
}

/// Why a plugin step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// Worth another attempt (network, 5xx, 429): the job is retried with backoff.
    Retry(String),
    /// Retrying cannot help: the run fails at this step (it can be retried through the API).
    Permanent(String),
}

impl StepError {
    pub fn message(&self) -> &str {
        match self {
            StepError::Retry(m) | StepError::Permanent(m) => m,
        }
    }
}

/// An external step type.
pub trait StepPlugin: Send + Sync + 'static {
    /// The step `type` in rule definitions, e.g. `webhook`.
    fn kind(&self) -> &'static str;

    /// Checks the step's settings (the step object without `type`) when a rule is saved. Name
    /// fields relative to the step (`url`); they are made absolute (`steps[3].url`).
    fn validate(&self, config: &Value) -> Result<(), ApiError>;

    /// Runs the step; the output is recorded on the run.
    fn run<'a>(&'a self, ctx: &'a StepContext) -> BoxFuture<'a, Result<Value, StepError>>;
}

/// The registered plugins, by kind.
#[derive(Clone, Default)]
pub struct Plugins {
    by_kind: BTreeMap<&'static str, Arc<dyn StepPlugin>>,
}

impl Plugins {
    pub fn new() -> Self {
        Self::default()
    }

    /// The plugins this crate ships: `webhook` (Standard Webhooks signed, through a webhook
    /// endpoint of the workspace) and `email` (no channel yet: fails clearly).
    pub fn builtin(db: Db, secrets: SecretBox, allow_private: bool) -> anyhow::Result<Self> {
        let mut plugins = Self::new();
        let db_for_conversions = db.clone();
        plugins.register(WebhookStep::new(db, secrets, allow_private)?);
        plugins.register(EmailStep);
        plugins.register(ConversionStep::new(db_for_conversions));
        Ok(plugins)
    }

    /// # Panics
    /// If the kind is taken (by a built-in step or another plugin): a wiring bug.
    pub fn register(&mut self, plugin: impl StepPlugin) -> &mut Self {
        let kind = plugin.kind();
        assert!(
            !self.by_kind.contains_key(kind)
                && !matches!(
                    kind,
                    "add_tag"
                        | "remove_tag"
                        | "set_field"
                        | "move_deal_stage"
                        | "create_deal"
                        | "create_task"
                        | "create_note"
                        | "wait"
                        | "if"
                ),
            "step plugin `{kind}` is registered twice or shadows a built-in step"
        );
        self.by_kind.insert(kind, Arc::new(plugin));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn StepPlugin>> {
        self.by_kind.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.by_kind.keys().copied().collect()
    }
}

/// `{"type": "send_conversion", "trigger_id": "ctrg_…", "event_name"?, "value"?, "currency"?}`:
/// records an offline conversion for the run's contact through a conversion trigger of the
/// `conversions` crate (which says which platform credential receives it), delivered by that
/// crate's batched job. `value` is a number or a template (`"{{event.value}}"`); `event_name`
/// and `currency` may be templates too. The step's idempotency key is the conversion's event
/// id, so a retried step records nothing twice.
pub struct ConversionStep {
    db: Db,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionConfig {
    trigger_id: conversions::TriggerId,
    event_name: Option<String>,
    value: Option<Value>,
    currency: Option<String>,
}

impl ConversionStep {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    fn config(config: &Value) -> Result<ConversionConfig, String> {
        let parsed: ConversionConfig = serde_json::from_value(config.clone()).map_err(|e| {
            format!("a send_conversion step has `trigger_id` and optional `event_name`, `value`, `currency`: {e}")
        })?;
        if !matches!(
            &parsed.value,
            None | Some(Value::Number(_) | Value::String(_))
        ) {
            return Err("`value` must be a number or a template string".to_owned());
        }
        let templates = [
            ("value", parsed.value.as_ref().and_then(Value::as_str)),
            ("event_name", parsed.event_name.as_deref()),
            ("currency", parsed.currency.as_deref()),
        ];
        for (field, text) in templates {
            if let Some(text) = text {
                crate::template::validate(text).map_err(|e| format!("`{field}`: {e}"))?;
            }
        }
        Ok(parsed)
    }

    async fn send(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let config = Self::config(&ctx.config).map_err(StepError::Permanent)?;
        let value = match &config.value {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(text)) => match rendered(Some(text), &ctx.context) {
                Some(text) => Some(text.parse::<f64>().map_err(|_| {
                    StepError::Permanent(format!("`value` rendered to `{text}`, not a number"))
                })?),
                None => None,
            },
            _ => None,
        };
        let contact_id = ctx
            .context
            .get("contact")
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .and_then(|id| id.parse().ok());
        let request = conversions::AutomationConversion {
            trigger_id: config.trigger_id,
            contact_id,
            event_name: rendered(config.event_name.as_deref(), &ctx.context),
            value,
            currency: rendered(config.currency.as_deref(), &ctx.context),
            event_id: ctx.idempotency_key.clone(),
        };
        let scope = Scope::system(ctx.workspace_id);
        match conversions::send_from_automation(&self.db, &scope, &request).await {
            Ok(id) => {
                Ok(json!({ "conversion_id": id.to_string(), "event_id": ctx.idempotency_key }))
            }
            Err(e) if e.status.is_client_error() => {
                Err(StepError::Permanent(e.message.into_owned()))
            }
            Err(e) => Err(StepError::Retry(e.message.into_owned())),
        }
    }
}

/// A template rendered against the run's context; blank is absent.
fn rendered(text: Option<&str>, context: &Value) -> Option<String> {
    let text = crate::template::render(text?, context);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

impl StepPlugin for ConversionStep {
    fn kind(&self) -> &'static str {
        "send_conversion"
    }

    fn validate(&self, config: &Value) -> Result<(), ApiError> {
        Self::config(config)
            .map(|_| ())
            .map_err(|message| ApiError::invalid_field("trigger_id", message))
    }

    fn run<'a>(&'a self, ctx: &'a StepContext) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.send(ctx))
    }
}

/// `{"type": "email", "to", "subject", "body"}`: stored and validated now; delivery arrives
/// with messaging (SMTP), until then the step fails with "no email channel configured".
pub struct EmailStep;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct EmailConfig {
    to: String,
    subject: String,
    body: String,
}

impl StepPlugin for EmailStep {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn validate(&self, config: &Value) -> Result<(), ApiError> {
        serde_json::from_value::<EmailConfig>(config.clone())
            .map(|_| ())
            .map_err(|e| {
                ApiError::invalid_field(
                    "to",
                    format!("an email step has `to`, `subject` and `body`: {e}"),
                )
            })
    }

    fn run<'a>(&'a self, _ctx: &'a StepContext) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async {
            Err(StepError::Permanent(
                "no email channel configured".to_owned(),
            ))
        })
    }
}

/// `{"type": "webhook", "endpoint_id": "ep_…", "event_type"?, "data"?}`: POSTs a Standard
/// Webhooks message `{"type", "timestamp", "data"}` to a webhook endpoint of the workspace,
/// signed with its secrets, through the SSRF-safe client. `webhook-id` is the step's
/// idempotency key, the same on every attempt. `data` (templates allowed) defaults to the run's
/// contact and event.
pub struct WebhookStep {
    db: Db,
    secrets: SecretBox,
    http: reqwest::Client,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    endpoint_id: connect::webhooks::EndpointId,
    event_type: Option<String>,
    data: Option<Value>,
}

/// Request timeout of one webhook step attempt.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);

impl WebhookStep {
    pub fn new(db: Db, secrets: SecretBox, allow_private: bool) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            secrets,
            http: connect::ssrf::client(WEBHOOK_TIMEOUT, allow_private)?,
        })
    }

    async fn send(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let config: WebhookConfig = serde_json::from_value(ctx.config.clone())
            .map_err(|e| StepError::Permanent(format!("invalid webhook step: {e}")))?;
        let scope = Scope::system(ctx.workspace_id);
        let (url, enabled, secrets) = connect::webhooks::store::signing_target(
            &self.db,
            &self.secrets,
            &scope,
            config.endpoint_id,
        )
        .await
        .map_err(|e| {
            if e.status.is_client_error() {
                StepError::Permanent(format!("webhook endpoint: {}", e.message))
            } else {
                StepError::Retry(format!("webhook endpoint: {e}"))
            }
        })?;
        if !enabled {
            return Err(StepError::Permanent(
                "the webhook endpoint is disabled".to_owned(),
            ));
        }
        let data = config.data.unwrap_or_else(|| {
            json!({ "contact": ctx.context.get("contact"), "event": ctx.context.get("event"),
                    "automation_id": ctx.automation_id, "run_id": ctx.run_id })
        });
        let body = json!({
            "type": config.event_type.as_deref().unwrap_or("automation.webhook"),
            "timestamp": Timestamp::now(),
            "data": data,
        })
        .to_string();
        let msg_id = format!("msg_{}", ctx.idempotency_key.replace(':', "_"));
        let timestamp = Timestamp::now().as_millis() / 1000;
        let signature = standard_webhooks::sign(&secrets, &msg_id, timestamp, body.as_bytes());
        let response = self
            .http
            .post(&url)
            .header(HEADER_ID, &msg_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| StepError::Retry(format!("webhook request failed: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(json!({ "status": status.as_u16(), "webhook_id": msg_id }));
        }
        let message = format!("the endpoint answered {}", status.as_u16());
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(StepError::Retry(message))
        } else {
            Err(StepError::Permanent(message))
        }
    }
}

impl StepPlugin for WebhookStep {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn validate(&self, config: &Value) -> Result<(), ApiError> {
        serde_json::from_value::<WebhookConfig>(config.clone())
            .map(|_| ())
            .map_err(|e| {
                ApiError::invalid_field(
                    "endpoint_id",
                    format!("a webhook step has `endpoint_id` (a webhook endpoint), and optionally `event_type` and `data`: {e}"),
                )
            })
    }

    fn run<'a>(&'a self, ctx: &'a StepContext) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.send(ctx))
    }
}
