//! Forwarding: per-site destinations that receive the traffic the gateway accepted — the
//! customer's own sGTM tagging server (the original request, replayed byte for byte), GA4 through
//! the Measurement Protocol, or any HTTP endpoint (JSON, signed the Standard Webhooks way).
//!
//! The `forwarding` consumer group turns each log record into one delivery job per enabled
//! destination (unique per destination and record, so redelivery enqueues nothing twice); the job
//! queue retries transient failures with backoff. A failing destination only grows its own
//! queue: analytics and the gateway never wait for it.

pub mod deliver;
pub mod routes;

use platform::db::Db;
use platform::secret_box::SecretBox;
use platform::{ApiError, ApiResult, Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::sites::SiteId;

platform::typed_id!(
    /// A forwarding destination of a site.
    DestinationId,
    "dst"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// The customer's sGTM tagging server: the original request, replayed.
    TaggingServer,
    /// GA4 via the Measurement Protocol (`/mp/collect`).
    Ga4,
    /// Any HTTP endpoint: the record as JSON, signed (Standard Webhooks).
    Http,
}

impl DestinationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::TaggingServer => "tagging_server",
            Self::Ga4 => "ga4",
            Self::Http => "http",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "tagging_server" => Self::TaggingServer,
            "ga4" => Self::Ga4,
            "http" => Self::Http,
            _ => return None,
        })
    }
}

/// A destination as the API shows it, with its delivery counters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Destination {
    pub id: DestinationId,
    pub site_id: SiteId,
    pub kind: DestinationKind,
    pub name: String,
    pub url: String,
    pub measurement_id: Option<String>,
    pub enabled: bool,
    pub delivered: i64,
    pub failed: i64,
    pub last_error: Option<String>,
    pub last_success_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
pub(crate) struct DestinationRow {
    pub id: DestinationId,
    pub workspace_id: platform::id::WorkspaceId,
    pub site_id: SiteId,
    pub kind: String,
    pub name: String,
    pub url: String,
    pub measurement_id: Option<String>,
    pub config_sealed: Option<String>,
    pub enabled: bool,
    pub delivered: i64,
    pub failed: i64,
    pub last_error: Option<String>,
    pub last_success_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

pub(crate) const COLUMNS: &str = "id, workspace_id, site_id, kind, name, url, measurement_id, config_sealed, \
     enabled, delivered, failed, last_error, last_success_at, last_failure_at, created_at, updated_at";

impl DestinationRow {
    pub(crate) fn kind(&self) -> DestinationKind {
        DestinationKind::parse(&self.kind).unwrap_or(DestinationKind::Http)
    }

    /// The sealed secrets (`api_secret` for GA4, `secret` for HTTP), opened.
    pub(crate) fn secrets(&self, secrets: &SecretBox) -> anyhow::Result<serde_json::Value> {
        match &self.config_sealed {
            None => Ok(serde_json::json!({})),
            Some(sealed) => {
                let bytes = secrets
                    .open(sealed, &seal_context(self.id))
                    .map_err(|e| anyhow::anyhow!("destination secrets do not open: {e}"))?;
                Ok(serde_json::from_slice(&bytes)?)
            }
        }
    }

    pub(crate) fn into_api(self) -> Destination {
        Destination {
            kind: self.kind(),
            id: self.id,
            site_id: self.site_id,
            name: self.name,
            url: self.url,
            measurement_id: self.measurement_id,
            enabled: self.enabled,
            delivered: self.delivered,
            failed: self.failed,
            last_error: self.last_error,
            last_success_at: self.last_success_at,
            last_failure_at: self.last_failure_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

fn seal_context(id: DestinationId) -> String {
    format!("destination:{id}")
}

pub fn destination_not_found() -> ApiError {
    ApiError::not_found(
        "destination_not_found",
        "No such destination for this site.",
    )
}

/// Reads one destination of a site, scoped.
pub(crate) async fn get_row(
    db: &Db,
    scope: &Scope,
    site: SiteId,
    id: DestinationId,
) -> ApiResult<DestinationRow> {
    let row: Option<DestinationRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM destinations WHERE workspace_id = $1 AND site_id = $2 AND id = $3"
    ))).bind(scope.workspace_id).bind(site).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(destination_not_found)
}
