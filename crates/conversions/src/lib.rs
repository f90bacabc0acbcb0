//! Offline conversions (issue 7): platform credentials per workspace (sealed, shown only by
//! fingerprint), trigger configs that say which events produce which conversion for which
//! credential, the conversion events they generate (one per credential and event id, so a
//! redelivered source adds nothing), batched delivery through the job queue with every attempt
//! kept, per-event failures, and stats per trigger and platform over time ([`stats`]). The wire adapters live in `connect::conversions`.
//!
//! Sources: CRM and automation domain events through an outbox consumer ([`sources`]), and
//! automation steps through [`send_from_automation`].

pub mod credentials;
pub mod deliver;
pub mod events;
pub mod hits;
pub mod sources;
pub mod stats;
pub mod triggers;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use connect::conversions::data_manager::DataManagerClient;
use connect::conversions::ga4_mp::Ga4Client;
use connect::conversions::meta_capi::MetaClient;
use connect::conversions::{Endpoints, http_client};
use platform::AppState;
use platform::config::ConversionsConfig;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

pub use events::{AutomationConversion, send_from_automation};

platform::typed_id!(
    /// A platform credential of a workspace.
    CredentialId,
    "cred"
);
platform::typed_id!(
    /// A trigger config: which event produces which conversion for which credential.
    TriggerId,
    "ctrg"
);
platform::typed_id!(
    /// One generated conversion for one credential.
    ConversionId,
    "conv"
);
platform::typed_id!(
    /// One delivery attempt of a conversion.
    ConversionAttemptId,
    "cvat"
);

/// Migrations of the tables this crate owns.
pub static MIGRATIONS: platform::db::Migrations = platform::db::Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};

/// Every conversions route, to nest under `/api/v1`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(credentials::routes())
        .merge(triggers::routes())
        .merge(events::routes())
        .merge(stats::routes())
}

/// The ad platforms we deliver to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Meta Conversions API.
    Meta,
    /// Google Data Manager API (Google Ads offline conversions).
    DataManager,
    /// GA4 Measurement Protocol.
    Ga4,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Meta => "meta",
            Platform::DataManager => "data_manager",
            Platform::Ga4 => "ga4",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "meta" => Platform::Meta,
            "data_manager" => Platform::DataManager,
            "ga4" => Platform::Ga4,
            _ => return None,
        })
    }

    /// Events per request.
    pub fn max_batch(self) -> usize {
        match self {
            Platform::Meta => 500,
            Platform::DataManager => 1000,
            Platform::Ga4 => connect::conversions::ga4_mp::MAX_BATCH,
        }
    }
}

/// The platform clients of one configuration. They are shared process-wide per configuration
/// (not per request), so Google access tokens stay cached between deliveries; keyed by the
/// endpoints because tests run several servers with different stand-ins in one process.
#[derive(Clone)]
pub struct Clients {
    pub meta: MetaClient,
    pub data_manager: DataManagerClient,
    pub ga4: Ga4Client,
}

pub fn clients(config: &ConversionsConfig) -> anyhow::Result<Clients> {
    static ALL: OnceLock<Mutex<HashMap<String, Clients>>> = OnceLock::new();
    let key = format!("{config:?}");
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| anyhow::anyhow!("the conversions client registry is poisoned"))?;
    if let Some(clients) = all.get(&key) {
        return Ok(clients.clone());
    }
    let endpoints = Endpoints::from(config);
    let http = http_client()?;
    let clients = Clients {
        meta: MetaClient::new(http.clone(), &endpoints),
        data_manager: DataManagerClient::new(http.clone(), &endpoints),
        ga4: Ga4Client::new(http, &endpoints),
    };
    all.insert(key, clients.clone());
    Ok(clients)
}
