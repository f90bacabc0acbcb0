//! The tracking gateway: the public collect endpoints (`/g/collect`, `/mp/collect`,
//! `/debug/mp/collect`, Segment's `/v1/*`), the first-party loader and the sGTM preview
//! passthrough.
//!
//! A hit's path: the request is captured as a [`RawRequest`] (body gzip-decoded, client address
//! resolved), its site found from the `Host` header, write key or measurement id (in memory, no
//! database), parsed by the protocol's parser into canonical hits, and appended to the event log
//! as one [`LogRecord`]. Only when the append returns — the record is durable — does the client
//! get its 2xx. A log that cannot keep up answers 503 with `Retry-After`.

mod collect;
pub(crate) mod edge;
pub mod loader;
pub mod preview;
mod record;
pub mod usage;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use platform::config::TrackingConfig;

use crate::RawRequest;
use crate::log::EventLog;
use crate::sites::SiteId;
use crate::sites::directory::SiteDirectory;

pub use collect::{collect_ga4, gateway_fallback};
pub use record::{CompactRecord, LogRecord, RecordError, RecordHeader, hit_id};

platform::typed_id!(
    /// One accepted tracking request in the event log.
    RecordId,
    "rec"
);

/// Everything the gateway's handlers share.
pub struct Gateway {
    pub directory: Arc<SiteDirectory>,
    pub log: Arc<dyn EventLog>,
    pub config: TrackingConfig,
    pub http: reqwest::Client,
    pub usage: Arc<usage::Usage>,
    pub loader_cache: loader::LoaderCache,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_site: Option<DefaultKeyedRateLimiter<SiteId>>,
}

impl Gateway {
    pub fn new(
        directory: Arc<SiteDirectory>,
        log: Arc<dyn EventLog>,
        config: TrackingConfig,
        usage: Arc<usage::Usage>,
    ) -> anyhow::Result<Arc<Gateway>> {
        fn limiter<K: Clone + Eq + std::hash::Hash>(
            per_second: u32,
        ) -> Option<DefaultKeyedRateLimiter<K>> {
            NonZeroU32::new(per_second).map(|n| RateLimiter::keyed(Quota::per_second(n)))
        }
        // Outbound calls (loader upstream, preview server) must never hang a request.
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(Arc::new(Gateway {
            directory,
            log,
            per_ip: limiter(config.per_ip_requests_per_second),
            per_site: limiter(config.per_site_requests_per_second),
            loader_cache: loader::LoaderCache::new(),
            config,
            http,
            usage,
        }))
    }

    /// Reads a tracking request within this gateway's limits (see [`edge::capture`]).
    pub(crate) async fn capture(
        &self,
        parts: &axum::http::request::Parts,
        body: axum::body::Body,
        peer: std::net::SocketAddr,
        path: Option<&str>,
    ) -> Result<RawRequest, platform::ApiError> {
        edge::capture(
            parts,
            body,
            peer,
            self.config.trust_forwarded_for,
            self.config.max_body_bytes,
            path,
        )
        .await
    }

    /// The public tracking routes (mounted at the root, outside `/api`).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/g/collect", any(collect::ga4_collect))
            .route("/mp/collect", any(collect::mp_collect))
            .route("/debug/mp/collect", any(collect::mp_debug))
            .route(
                "/v1/{call}",
                post(collect::segment).options(collect::segment_preflight),
            )
            .route("/gtm.js", get(loader::gtm_js))
            .route("/gtag/js", get(loader::gtag_js))
            .with_state(self.clone())
    }
}
