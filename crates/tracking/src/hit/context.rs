//! The parts of a hit that describe its circumstances rather than the event itself: consent,
//! device and campaign. Split from `hit.rs` only to keep files readable.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One consent signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    Granted,
    Denied,
}

/// Consent mode state as the sender reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// From gtag `gcs` (`G1<ad_storage><analytics_storage>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_storage: Option<ConsentState>,
    /// From gtag `gcs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics_storage: Option<ConsentState>,
    /// MP `consent.ad_user_data`. (gtag encodes it inside `gcd`, whose format is undocumented.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_user_data: Option<ConsentState>,
    /// MP `consent.ad_personalization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_personalization: Option<ConsentState>,
    /// gtag `gcs`, raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<String>,
    /// gtag `gcd` (default and update states of every consent type), raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcd: Option<String>,
    /// gtag `dma` (EU Digital Markets Act flag), raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma: Option<String>,
    /// gtag `npa=1`, MP `non_personalized_ads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_personalized_ads: Option<bool>,
}

/// What the sender told us about the browser or device. The pipeline's UA/geo enrichment reads
/// these; nothing here is derived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Browser hits: the request's `User-Agent`; Segment: `context.userAgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Browser hits: the request's client IP; Segment: `context.ip`, else the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// gtag `ul`, MP `device.language`, Segment `context.locale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `WxH`: gtag `sr`, MP `device.screen_resolution`, Segment `context.screen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_resolution: Option<String>,
    /// Segment `context.timezone` (tzdata name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Segment `context.os.name`, MP `device.operating_system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// Segment `context.device.manufacturer`, MP `device.brand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Segment `context.device.type`, MP `device.category` (mobile, desktop…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Segment `context.device.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// gtag User-Agent client hints (`uaa`…`uaw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hints: Option<ClientHints>,
}

/// User-Agent client hints as gtag copies them into the hit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHints {
    /// `uaa`, e.g. `x86`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// `uab`, e.g. `64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitness: Option<String>,
    /// `uafvl`, `Brand;version|Brand;version` with each part still URL-encoded as gtag sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_version_list: Option<String>,
    /// `uamb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<bool>,
    /// `uam`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `uap`, e.g. `Windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `uapv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    /// `uaw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wow64: Option<bool>,
}

/// UTM campaign fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}
