//! Hit enrichment for the pipeline: from what a hit and its request carry (user agent, page URL,
//! referrer, cookies, client address) to the dimensions analytics reports on — browser, OS and
//! device type, UTM campaign and ad click ids, Meta's `fbc`/`fbp`, GA4-style source / medium /
//! campaign and default channel group, and geo location.
//!
//! Pure and synchronous: after [`Enricher::new`] reads the optional MaxMind database into
//! memory there is no I/O, and no input makes it panic. Build one `Enricher` at start and share
//! it with every pipeline worker (cloning is one reference count).
//!
//! Everything here is about one hit. Session attribution (GA4 credits the session's first hit and
//! keeps the last campaign through later direct visits) belongs to the sessions stage, which can
//! reuse [`ChannelGroup::classify`] on whatever source / medium / campaign it settles on.
//!
//! Which data describes the visitor depends on the protocol, because a server-to-server request
//! says nothing about the browser behind it:
//!
//! | | user agent | client address for geo |
//! |---|---|---|
//! | gtag `/g/collect` | the hit's (the request's `User-Agent`) | the request's (truncated if the site asks) |
//! | Segment | `context.userAgent`, else the stated `context.os` / `context.device` | `context.ip` when stated, else the request's |
//! | Measurement Protocol | the stated `device` object (the request's agent is the sender's server) | `user_location` as stated, else an `ip_override` address, else none |

mod attribution;
mod cache;
mod channel;
mod geo;
mod landing;
mod sites;
mod user_agent;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use attribution::{NOT_SET, TrafficSource};
pub use channel::ChannelGroup;
pub use geo::{Geo, GeoDatabaseError};
pub use landing::{ClickIds, PageInfo, Utm};
pub use sites::SourceCategory;
pub use user_agent::{DeviceType, UserAgent};

use crate::hit::{Hit, HitFields, Protocol, hostname_of};
use crate::raw::RawRequest;
use cache::BoundedCache;
use geo::GeoDatabase;

/// Distinct user agents remembered. Measured in a release build on the 2-core dev machine
/// (loaded): parsing an agent takes 2–5 µs, a cache hit 0.3–0.4 µs (hashing, a lock and copying
/// the result out), and a whole `enrich` of a gtag hit with a warm cache and a geo lookup about
/// 3 µs. A site's traffic comes from a few hundred agents, so a few thousand entries catch
/// nearly all of it.
const USER_AGENT_CACHE_CAPACITY: usize = 4096;

/// Longer agents are parsed every time rather than cached, so a client sending huge random
/// agents cannot inflate the cache's memory.
const MAX_CACHED_USER_AGENT_LEN: usize = 512;

/// Everything enrichment adds to one hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrichment {
    /// Browser, OS, device type and bot flag (see the module docs for whose agent it is).
    pub user_agent: UserAgent,
    /// The page's host and path, without query or fragment.
    pub page: PageInfo,
    /// UTM parameters of the page URL; for a Segment hit whose URL has none, its
    /// `context.campaign`. Empty when neither has any.
    pub utm: Utm,
    /// Ad click ids in the page URL's query.
    pub click_ids: ClickIds,
    /// Meta click id, `fb.1.<unix ms>.<fbclid>`: built from the URL's `fbclid` at the hit's
    /// event time, or the request's `_fbc` cookie as sent (kept when it already holds the same
    /// fbclid). For Meta's Conversions API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbc: Option<String>,
    /// Meta browser id: the request's `_fbp` cookie as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbp: Option<String>,
    /// Lower-case host of the page's referrer, as sent (`www.` kept); also set for a
    /// self-referral.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_host: Option<String>,
    /// The referrer is the site itself (same host, or one a subdomain of the other), so it was
    /// ignored for attribution, as GA4 ignores self-referrals.
    #[serde(default)]
    pub internal_referrer: bool,
    /// Source / medium / campaign of this hit, resolved the GA4 way.
    pub traffic: TrafficSource,
    /// GA4 default channel group of `traffic`.
    pub channel_group: ChannelGroup,
    /// Country, region and city: from the client address when a database is configured (or
    /// stated by a Measurement Protocol sender); `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<Geo>,
}

/// Enriches hits; `Send + Sync`, and cheap to clone.
#[derive(Clone)]
pub struct Enricher(Arc<Inner>);

struct Inner {
    geo: Option<GeoDatabase>,
    user_agents: BoundedCache<UserAgent>,
}

impl Enricher {
    /// An enricher, with geo location when `geo_database` names a MaxMind-format City (or
    /// Country) database. A database that cannot be read, or is of another kind, is an error
    /// here rather than a silent lack of geo data on every hit.
    pub fn new(geo_database: Option<&Path>) -> Result<Self, GeoDatabaseError> {
        let geo = geo_database.map(GeoDatabase::open).transpose()?;
        Ok(Self(Arc::new(Inner {
            geo,
            user_agents: BoundedCache::new(USER_AGENT_CACHE_CAPACITY),
        })))
    }

    /// Whether a geo database is configured.
    pub fn has_geo(&self) -> bool {
        self.0.geo.is_some()
    }

    /// Everything enrichment says about `hit`, which arrived in `request`.
    pub fn enrich(&self, hit: &Hit, request: &RawRequest) -> Enrichment {
        let hit: &HitFields = hit;
        let landing = landing::landing(hit);
        let referrer_host = hit.page.referrer.as_deref().and_then(hostname_of);
        let internal_referrer = match (&referrer_host, &landing.page.host) {
            (Some(referrer), Some(page)) => sites::same_site(referrer, page),
            _ => false,
        };
        let external_referrer = referrer_host.as_deref().filter(|_| !internal_referrer);
        let traffic = attribution::resolve(&landing.utm, &landing.click_ids, external_referrer);
        let hit_time_ms = hit.event_time.as_datetime().timestamp_millis();
        Enrichment {
            user_agent: self.user_agent_of(hit, request),
            fbc: landing::fbc(
                landing.click_ids.fbclid.as_deref(),
                landing::cookie(request, "_fbc"),
                hit_time_ms,
            ),
            fbp: landing::cookie(request, "_fbp").map(str::to_owned),
            page: landing.page,
            utm: landing.utm,
            click_ids: landing.click_ids,
            referrer_host,
            internal_referrer,
            channel_group: ChannelGroup::of(&traffic),
            traffic,
            geo: self.geo_of(hit, request),
        }
    }

    /// A user agent string parsed, through the cache.
    pub fn user_agent(&self, agent: &str) -> UserAgent {
        if agent.len() > MAX_CACHED_USER_AGENT_LEN {
            return user_agent::parse(agent);
        }
        self.0
            .user_agents
            .get_or_insert_with(agent, || user_agent::parse(agent))
    }

    /// The location of an address; `None` without a database or when the address is unknown.
    pub fn geo(&self, ip: IpAddr) -> Option<Geo> {
        self.0.geo.as_ref()?.lookup(ip)
    }

    fn user_agent_of(&self, hit: &HitFields, request: &RawRequest) -> UserAgent {
        let stated = hit.device.user_agent.as_deref();
        let agent = match hit.protocol {
            // A browser hit without any agent is parsed as the empty agent: a bot.
            Protocol::Ga4 => Some(stated.or(request.user_agent()).unwrap_or_default()),
            Protocol::Segment | Protocol::MeasurementProtocol => stated,
        };
        match agent {
            Some(agent) => self.user_agent(agent),
            None => user_agent::from_device(&hit.device, hit.extra.get("device")),
        }
    }

    fn geo_of(&self, hit: &HitFields, request: &RawRequest) -> Option<Geo> {
        let ip = match hit.protocol {
            Protocol::Ga4 => request.client_ip,
            Protocol::Segment => {
                let context = hit.segment.as_ref().and_then(|s| s.context.as_ref());
                let stated = context.and_then(|c| c.get("ip")).is_some();
                if stated {
                    hit.device.ip
                } else {
                    request.client_ip
                }
            }
            Protocol::MeasurementProtocol => {
                if let Some(geo) = hit
                    .extra
                    .get("user_location")
                    .and_then(Geo::from_user_location)
                {
                    return Some(geo);
                }
                hit.extra
                    .get("ip_override")
                    .and_then(Value::as_str)
                    .and_then(|ip| ip.trim().parse().ok())
            }
        };
        self.geo(ip?)
    }
}

impl fmt::Debug for Enricher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enricher")
            .field("geo", &self.has_geo())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
