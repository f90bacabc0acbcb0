//! Configuration types shared by every role.
//!
//! Loading happens in the binary (defaults → TOML file → `SWITCHYARD_*` env → flags); this module
//! owns the shape, the defaults and the validation, so a bad value fails at start with a message
//! naming its key. Secrets are `SecretString`s: their `Debug` prints `[REDACTED]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Threads that serve HTTP connections, each running its own event loop; accepted
    /// connections are dealt to them in turn. Unset: one per CPU. `0`: connections are served
    /// by the shared, work-stealing runtime instead (what every request except the tracking
    /// hot path runs on anyway). At most 256.
    pub http_threads: Option<usize>,
    /// Where embedded SQLite files and the generated secret key live.
    pub data_dir: PathBuf,
    /// `postgres://…` moves product state to PostgreSQL; unset means `sqlite://{data_dir}/state.db`.
    pub database_url: Option<SecretString>,
    /// Public base URL of this deployment, used in links we hand out (invites).
    pub public_url: Option<String>,
    /// Base64 of 32 bytes: the AES-256-GCM key for secrets at rest. Unset: a key file in the data
    /// directory is used, created on first start.
    pub secret_key: Option<SecretString>,
    /// Bearer token for `/internal/*` endpoints. Unset: those endpoints are disabled.
    pub internal_token: Option<SecretString>,
    pub log_format: LogFormat,
    /// Largest request body accepted by the API, in bytes.
    pub max_body_bytes: usize,
    pub auth: AuthConfig,
    pub jobs: JobsConfig,
    /// `nats://…` puts the tracking event log in NATS JetStream; unset means
    /// `sqlite://{data_dir}/events.db`.
    pub event_log_url: Option<String>,
    /// Where analytics are stored: `sqlite://PATH`, or ClickHouse's HTTP interface
    /// (`http://host:8123/?database=NAME`); unset means `sqlite://{data_dir}/analytics.db`.
    pub analytics_url: Option<SecretString>,
    /// A MaxMind-format (GeoIP2/GeoLite2 City) database for country/region/city; unset: no geo.
    pub geoip_database: Option<PathBuf>,
    pub tracking: TrackingConfig,
    pub webhooks: WebhooksConfig,
    pub conversions: ConversionsConfig,
}

/// Offline conversions (`conversions` crate, adapters in `connect::conversions`): where the
/// platforms live. Tests point these at local servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversionsConfig {
    /// Meta Graph API origin (Conversions API: `{meta_base_url}/{version}/{pixel}/events`).
    pub meta_base_url: String,
    /// Graph API version in the path, e.g. `v24.0`.
    pub meta_api_version: String,
    /// Google Data Manager API origin (`{…}/v1/events:ingest`).
    pub data_manager_base_url: String,
    /// GA4 Measurement Protocol origin (`{…}/mp/collect`, `{…}/debug/mp/collect`).
    pub ga4_base_url: String,
    /// Google OAuth token endpoint (JWT bearer and refresh-token grants).
    pub google_token_url: String,
    /// First retry delay after a transient platform error, in seconds; doubles per attempt
    /// (at most 6 h), unless the platform sent `Retry-After`.
    pub retry_base_seconds: f64,
    /// Delivery attempts of a conversion before it is failed.
    pub max_attempts: u32,
}

impl Default for ConversionsConfig {
    fn default() -> Self {
        Self {
            meta_base_url: "https://graph.facebook.com".to_owned(),
            meta_api_version: "v24.0".to_owned(),
            data_manager_base_url: "https://datamanager.googleapis.com".to_owned(),
            ga4_base_url: "https://www.google-analytics.com".to_owned(),
            google_token_url: "https://oauth2.googleapis.com/token".to_owned(),
            retry_base_seconds: 30.0,
            max_attempts: 8,
        }
    }
}

/// Outbound signed webhooks (`connect::webhooks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Delay before each delivery attempt of a message, in seconds (fractions allowed): the
    /// first entry is the first attempt's, then one per retry. Default: Svix's schedule,
    /// immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub retry_schedule_seconds: Vec<f64>,
    /// An endpoint whose attempts have all failed for this long is disabled (default 5 days).
    pub disable_after_seconds: u64,
    /// Deliveries per second to one endpoint, per process (0: unlimited); the excess waits.
    pub rate_limit_per_second: u32,
    /// Let endpoints resolve to loopback or private addresses (tests, on-premises). Also
    /// allowed when `tracking.allow_private_destinations` is on.
    pub allow_private_destinations: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            retry_schedule_seconds: vec![
                0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0,
            ],
            disable_after_seconds: 5 * 24 * 3600,
            rate_limit_per_second: 100,
            allow_private_destinations: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingConfig {
    /// Where first-party loader scripts (`gtm.js`, `gtag/js`) are fetched from.
    pub loader_upstream: String,
    /// How long a fetched loader script is served from memory before it is revalidated.
    pub loader_cache_seconds: u64,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy you control).
    pub trust_forwarded_for: bool,
    /// Tracking requests per second from one client address (0: unlimited).
    pub per_ip_requests_per_second: u32,
    /// Tracking requests per second to one site (0: unlimited).
    pub per_site_requests_per_second: u32,
    /// Largest tracking request body, before and after gzip decoding.
    pub max_body_bytes: usize,
    /// How often each process reloads the site directory (changes made through this process
    /// apply at once).
    pub directory_refresh_seconds: u64,
    /// Let forwarding destinations resolve to loopback or private addresses (tests, on-premises).
    pub allow_private_destinations: bool,
    /// The embedded (SQLite) event log's commit pacing, in microseconds: under load, a commit
    /// shared by a few requests makes the next one wait until this long after it began, so that
    /// more requests share each fsync. Longer: fewer fsyncs and less CPU a request under steady
    /// traffic, where the disk's flush is slow or costly (a VM); each request may wait that much
    /// longer, and a client that waits for each answer before sending the next gets less
    /// through. 0 commits at once. At most 10,000. The NATS log does not use it.
    pub event_log_commit_interval_us: u64,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            loader_upstream: "https://www.googletagmanager.com".to_owned(),
            loader_cache_seconds: 900,
            trust_forwarded_for: false,
            per_ip_requests_per_second: 100,
            per_site_requests_per_second: 0,
            max_body_bytes: 1024 * 1024,
            directory_refresh_seconds: 5,
            allow_private_destinations: false,
            event_log_commit_interval_us: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether anyone may create an account with `POST /api/v1/auth/signup`.
    pub allow_signup: bool,
    /// How long a login session lasts.
    pub session_ttl_hours: u64,
    /// Failed or attempted logins allowed per minute per client IP and per email.
    pub login_attempts_per_minute: u32,
    /// Mark the session cookie `Secure` (turn off only for plain-HTTP local use).
    pub secure_cookies: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs one process runs at once.
    pub concurrency: usize,
    /// Jobs of one workspace running at once across all processes.
    pub per_workspace_concurrency: u32,
    /// How often an idle worker looks for due jobs, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a lease lasts without a heartbeat before the janitor frees the job, in seconds.
    pub lease_seconds: u64,
    /// Attempts before a job is dead, unless the job says otherwise.
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles each attempt, with full jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay in seconds.
    pub backoff_max_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http_threads: None,
            data_dir: PathBuf::from("./data"),
            database_url: None,
            public_url: None,
            secret_key: None,
            internal_token: None,
            log_format: LogFormat::Text,
            max_body_bytes: 1024 * 1024,
            auth: AuthConfig::default(),
            jobs: JobsConfig::default(),
            event_log_url: None,
            analytics_url: None,
            geoip_database: None,
            tracking: TrackingConfig::default(),
            webhooks: WebhooksConfig::default(),
            conversions: ConversionsConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_signup: true,
            session_ttl_hours: 24 * 30,
            login_attempts_per_minute: 10,
            secure_cookies: false,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            per_workspace_concurrency: 4,
            poll_interval_ms: 500,
            lease_seconds: 60,
            max_attempts: 10,
            backoff_base_ms: 1000,
            backoff_max_seconds: 3600,
        }
    }
}

/// A configuration value that is present but wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration value for `{key}`: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl Config {
    /// Top-level keys, for picking configuration out of the environment (where other
    /// `SWITCHYARD_*` variables, such as `SWITCHYARD_LOG`, also live).
    pub const KEYS: &'static [&'static str] = &[
        "listen",
        "http_threads",
        "data_dir",
        "database_url",
        "public_url",
        "secret_key",
        "internal_token",
        "log_format",
        "max_body_bytes",
        "auth",
        "jobs",
        "event_log_url",
        "analytics_url",
        "geoip_database",
        "tracking",
        "webhooks",
        "conversions",
    ];

    /// Checks what serde cannot: formats, ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, message: &str| ConfigError {
            key,
            message: message.to_owned(),
        };
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite://"))
            {
                return Err(err(
                    "database_url",
                    "expected a postgres://, postgresql:// or sqlite:// URL",
                ));
            }
        }
        if let Some(key) = &self.secret_key {
            crate::secret_box::SecretBox::from_base64(key.expose_secret())
                .map_err(|e| err("secret_key", &e.to_string()))?;
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(err("public_url", "expected an http:// or https:// URL"));
        }
        if self.http_threads.is_some_and(|n| n > 256) {
            return Err(err("http_threads", "must be at most 256"));
        }
        if self.max_body_bytes < 1024 {
            return Err(err("max_body_bytes", "must be at least 1024"));
        }
        if self.jobs.concurrency == 0 {
            return Err(err("jobs.concurrency", "must be at least 1"));
        }
        if self.jobs.per_workspace_concurrency == 0 {
            return Err(err("jobs.per_workspace_concurrency", "must be at least 1"));
        }
        if self.jobs.max_attempts == 0 {
            return Err(err("jobs.max_attempts", "must be at least 1"));
        }
        if self.jobs.lease_seconds < 2 {
            return Err(err("jobs.lease_seconds", "must be at least 2"));
        }
        if let Some(url) = &self.event_log_url
            && !(url.starts_with("nats://") || url.starts_with("sqlite://"))
        {
            return Err(err("event_log_url", "expected a nats:// or sqlite:// URL"));
        }
        if let Some(url) = self.analytics_url.as_ref().map(|u| u.expose_secret())
            && !(url.starts_with("sqlite://")
                || url.starts_with("http://")
                || url.starts_with("https://"))
        {
            return Err(err(
                "analytics_url",
                "expected a sqlite:// URL or ClickHouse's http(s)://host:8123/?database=NAME",
            ));
        }
        if let Some(path) = &self.geoip_database
            && !path.is_file()
        {
            return Err(err(
                "geoip_database",
                &format!("{} is not a readable file", path.display()),
            ));
        }
        if !(self.tracking.loader_upstream.starts_with("http://")
            || self.tracking.loader_upstream.starts_with("https://"))
        {
            return Err(err(
                "tracking.loader_upstream",
                "expected an http:// or https:// URL",
            ));
        }
        if self.tracking.max_body_bytes < 1024 {
            return Err(err("tracking.max_body_bytes", "must be at least 1024"));
        }
        if self.tracking.event_log_commit_interval_us > 10_000 {
            return Err(err(
                "tracking.event_log_commit_interval_us",
                "must be at most 10000 (10 ms): every request under load may wait this long",
            ));
        }
        if self.auth.login_attempts_per_minute == 0 {
            return Err(err("auth.login_attempts_per_minute", "must be at least 1"));
        }
        let schedule = &self.webhooks.retry_schedule_seconds;
        if schedule.is_empty()
            || schedule.len() > 50
            || schedule
                .iter()
                .any(|s| !s.is_finite() || *s < 0.0 || *s > 7.0 * 86400.0)
        {
            return Err(err(
                "webhooks.retry_schedule_seconds",
                "expected 1 to 50 delays, each between 0 and 604800 seconds",
            ));
        }
        for (key, url) in [
            ("conversions.meta_base_url", &self.conversions.meta_base_url),
            (
                "conversions.data_manager_base_url",
                &self.conversions.data_manager_base_url,
            ),
            ("conversions.ga4_base_url", &self.conversions.ga4_base_url),
            (
                "conversions.google_token_url",
                &self.conversions.google_token_url,
            ),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(key, "expected an http:// or https:// URL"));
            }
        }
        if self.conversions.meta_api_version.is_empty()
            || !self.conversions.meta_api_version.starts_with('v')
            || self.conversions.meta_api_version.contains('/')
        {
            return Err(err(
                "conversions.meta_api_version",
                "expected a version such as `v24.0`",
            ));
        }
        if !self.conversions.retry_base_seconds.is_finite()
            || self.conversions.retry_base_seconds < 0.0
            || self.conversions.retry_base_seconds > 86400.0
        {
            return Err(err(
                "conversions.retry_base_seconds",
                "expected between 0 and 86400 seconds",
            ));
        }
        if self.conversions.max_attempts == 0 {
            return Err(err("conversions.max_attempts", "must be at least 1"));
        }
        if self.webhooks.disable_after_seconds == 0 {
            return Err(err("webhooks.disable_after_seconds", "must be at least 1"));
        }
        Ok(())
    }

    /// The product-state database URL after defaults.
    pub fn state_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("state.db").display()),
        }
    }

    /// The event log URL after defaults.
    pub fn event_log_url(&self) -> String {
        match &self.event_log_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("events.db").display()),
        }
    }

    /// The analytics store URL after defaults.
    pub fn analytics_url(&self) -> String {
        match &self.analytics_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("analytics.db").display()),
        }
    }

    /// The public base URL after defaults, without a trailing slash.
    pub fn public_base_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}
