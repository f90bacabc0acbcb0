//! The canonical `Hit`: one tracked event, whichever wire protocol brought it in.
//!
//! GA4 `/g/collect`, the Measurement Protocol and Segment all parse into this one shape so the
//! pipeline, the CRM capture and the destinations never see a raw parameter map (STYLE habit 4).
//! Anything a protocol sends that is not modelled here lands in `extra`, verbatim, so nothing a
//! later stage might forward is lost. `docs/hit.md` maps every wire field to its place here.
//!
//! A `Hit` is an `Arc` around [`HitFields`]: the pipeline fans one hit out to several consumers,
//! and cloning must not copy the maps. It serialises exactly like `HitFields` (it is stored in
//! the event log as JSON).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use platform::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

use crate::item::Item;

mod context;

pub use context::{Campaign, ClientHints, Consent, ConsentState, Device};

platform::typed_id!(
    /// One tracked event (`hit_…`), assigned by the parser when the request is received.
    HitId,
    "hit"
);

/// One tracked event; cheap to clone (one reference count), read through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit(Arc<HitFields>);

impl Hit {
    pub fn new(fields: HitFields) -> Self {
        Self(Arc::new(fields))
    }

    /// Mutable access for enrichment; copies the fields only if another clone shares them.
    pub fn fields_mut(&mut self) -> &mut HitFields {
        Arc::make_mut(&mut self.0)
    }

    pub fn into_fields(self) -> HitFields {
        Arc::unwrap_or_clone(self.0)
    }
}

impl From<HitFields> for Hit {
    fn from(fields: HitFields) -> Self {
        Self::new(fields)
    }
}

impl Deref for Hit {
    type Target = HitFields;
    fn deref(&self) -> &HitFields {
        &self.0
    }
}

impl Serialize for Hit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Hit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        HitFields::deserialize(deserializer).map(Hit::new)
    }
}

/// Which wire protocol a hit arrived by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Browser gtag.js, `/g/collect` protocol v2.
    Ga4,
    /// GA4 Measurement Protocol, `/mp/collect` (JSON, server to server).
    MeasurementProtocol,
    /// Segment HTTP Tracking API, `/v1/*`.
    Segment,
}

/// The fields of a hit. Optional fields are left out of the stored JSON when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HitFields {
    /// Our id for this hit, time-ordered.
    pub id: HitId,
    pub protocol: Protocol,
    /// GA4 measurement id `G-…` (gtag `tid`, MP `measurement_id`); the gateway maps it to a site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_id: Option<String>,
    /// MP app streams identify themselves with `firebase_app_id` instead of a measurement id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firebase_app_id: Option<String>,
    /// gtag `en`, MP `events[].name`, Segment `event` for track; for the other Segment calls the
    /// GA4 equivalent (`page_view`, `screen_view`) or the call type (`identify`, `group`, `alias`).
    pub event_name: String,
    /// When the event happened, as best we know: MP `timestamp_micros`, Segment's skew-corrected
    /// timestamp, and for gtag (which sends no event time) the time we received it.
    pub event_time: Timestamp,
    /// When the gateway received the request carrying this hit.
    pub received_at: Timestamp,
    /// The browser/device identity: gtag `cid`, MP `client_id` (or `app_instance_id`), Segment
    /// `anonymousId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The site's own user id: gtag `uid`, MP `user_id`, Segment `userId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default)]
    pub session: Session,
    #[serde(default)]
    pub page: Page,
    /// Engagement time in milliseconds: gtag `_et`, MP `params.engagement_time_msec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement_time_ms: Option<u64>,
    #[serde(default)]
    pub flags: Flags,
    /// Event parameters: gtag `ep.*` (strings) and `epn.*` (numbers), MP `params`, Segment
    /// `properties`. Parameters modelled elsewhere in the hit (session id, page fields, items,
    /// currency…) are not repeated here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamValue>,
    /// User properties: gtag `up.*`/`upn.*`, MP `user_properties`, Segment traits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_properties: BTreeMap<String, ParamValue>,
    /// ISO 4217 currency of the e-commerce values (gtag `cu`, MP/Segment `currency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// E-commerce items: gtag `pr1…pr200`, MP `params.items`, Segment `properties.products`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
    #[serde(default)]
    pub consent: Consent,
    #[serde(default)]
    pub device: Device,
    /// UTM campaign when the sender states it (Segment `context.campaign`). For gtag the UTM
    /// parameters stay inside `page.location`; enrichment reads them from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Campaign>,
    /// What only Segment calls carry; `None` for the GA4 protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentCall>,
    /// Every parameter we do not model, verbatim (gtag values as decoded strings, JSON fields as
    /// JSON), so forwarding loses nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

impl HitFields {
    /// A hit with only the required fields set; the event time defaults to `received_at`.
    pub fn new(protocol: Protocol, event_name: impl Into<String>, received_at: Timestamp) -> Self {
        Self {
            id: HitId::new(),
            protocol,
            measurement_id: None,
            firebase_app_id: None,
            event_name: event_name.into(),
            event_time: received_at,
            received_at,
            client_id: None,
            user_id: None,
            session: Session::default(),
            page: Page::default(),
            engagement_time_ms: None,
            flags: Flags::default(),
            params: BTreeMap::new(),
            user_properties: BTreeMap::new(),
            currency: None,
            items: Vec::new(),
            consent: Consent::default(),
            device: Device::default(),
            campaign: None,
            segment: None,
            extra: BTreeMap::new(),
        }
    }
}

/// GA4 session state, as the browser's `_ga_<stream>` cookie knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// gtag `sid` (unix seconds of the session start), MP `params.session_id`. Kept as text:
    /// it is an identifier, and MP senders use arbitrary strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// gtag `sct`: how many sessions this client has had, this one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// gtag `seg`: whether the session is engaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engaged: Option<bool>,
}

/// The page the event happened on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Full URL, query included (gtag `dl`, MP `page_location`, Segment `context.page.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// gtag `dr`, MP `page_referrer`, Segment `context.page.referrer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    /// gtag `dt`, MP `page_title`, Segment `context.page.title`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// gtag `dh` when sent, otherwise the lower-cased host of `location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl Page {
    /// Fills `hostname` from `location` when the sender did not state it.
    pub(crate) fn derive_hostname(&mut self) {
        if self.hostname.is_none() {
            self.hostname = self.location.as_deref().and_then(hostname_of);
        }
    }
}

/// gtag's one-character flags (MP `debug_mode` sets `debug`). `false` when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    /// `_fv`: GA synthesises `first_visit` from it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub first_visit: bool,
    /// `_ss`: GA synthesises `session_start` from it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub session_start: bool,
    /// `_dbg`: DebugView traffic, which GA keeps out of reports.
    #[serde(default, skip_serializing_if = "is_false")]
    pub debug: bool,
    /// `_c`: the event is a conversion (key event).
    #[serde(default, skip_serializing_if = "is_false")]
    pub conversion: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// An event parameter or user property value.
///
/// Numbers keep their JSON representation (integers stay exact beyond 2^53). Segment and MP
/// values that are neither text nor number (booleans, objects, arrays) stay JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    String(String),
    Number(Number),
    Json(Value),
}

impl ParamValue {
    /// Text as-is, numbers as numbers, anything else as JSON.
    pub fn from_json(value: Value) -> Self {
        match value {
            Value::String(s) => Self::String(s),
            Value::Number(n) => Self::Number(n),
            other => Self::Json(other),
        }
    }

    /// Parses the text of a gtag numeric parameter (`epn.*`, `upn.*`); `None` when it is not a
    /// finite number, so the caller can keep the text verbatim instead.
    pub fn parse_number(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(int) = text.parse::<i64>() {
            return Some(Self::Number(int.into()));
        }
        // `f64::from_str` accepts "NaN" and "inf", which JSON cannot hold: `from_f64` refuses them.
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Self::Number)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Self::String(s) => Value::String(s.clone()),
            Self::Number(n) => Value::Number(n.clone()),
            Self::Json(v) => v.clone(),
        }
    }
}

/// The Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentCallType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl SegmentCallType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Track => "track",
            Self::Identify => "identify",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "track" => Self::Track,
            "identify" => Self::Identify,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }
}

/// What only a Segment call carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentCall {
    pub call_type: SegmentCallType,
    /// Segment deduplicates on it; destinations and our own consumers should too.
    pub message_id: String,
    /// True when the sender sent none and the parser made one up (so it dedups nothing).
    #[serde(default, skip_serializing_if = "is_false")]
    pub message_id_generated: bool,
    /// page/screen `name`, page `category`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// group `groupId` and the group's `traits` (company traits, not the user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_traits: Option<Value>,
    /// alias `previousId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    /// The timestamps as the sender stated them; `HitFields::event_time` is the corrected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Timestamp>,
    /// `integrations`, verbatim (`{"All":true,"Mixpanel":false}`), batch-level merged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrations: Option<Value>,
    /// The whole `context`, verbatim, batch-level merged in (the modelled parts are also copied
    /// into `device`, `page` and `campaign`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

/// The lower-cased host of an absolute URL, without port or user info. Hand-rolled because we
/// only need the host, and a full URL parser would be the heaviest dependency of this crate.
pub(crate) fn hostname_of(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if host_port.starts_with('[') {
        // IPv6 literal: keep the brackets' content, drop any port after them.
        host_port
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
    } else {
        host_port.split(':').next()
    }?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_derived_from_the_url() {
        assert_eq!(
            hostname_of("https://Shop.Example.com:8443/p?q=1#x").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            hostname_of("https://user:pw@example.org").as_deref(),
            Some("example.org")
        );
        assert_eq!(hostname_of("http://[::1]:8080/").as_deref(), Some("::1"));
        assert_eq!(hostname_of("/relative/path"), None);
        assert_eq!(hostname_of("https:///nohost"), None);
    }

    #[test]
    fn numbers_parse_exactly_and_reject_non_finite() {
        assert_eq!(
            ParamValue::parse_number("9007199254740993"),
            Some(ParamValue::Number(9_007_199_254_740_993_i64.into()))
        );
        assert_eq!(
            ParamValue::parse_number("29.99").and_then(|v| v.as_f64()),
            Some(29.99)
        );
        assert_eq!(ParamValue::parse_number("NaN"), None);
        assert_eq!(ParamValue::parse_number("inf"), None);
        assert_eq!(ParamValue::parse_number("12abc"), None);
    }

    #[test]
    fn hit_round_trips_through_json_and_clones_cheaply() {
        let now = Timestamp::now();
        let mut fields = HitFields::new(Protocol::Ga4, "page_view", now);
        fields.client_id = Some("1360384851.1661821242".into());
        fields
            .params
            .insert("value".into(), ParamValue::parse_number("1.5").unwrap());
        fields.params.insert(
            "tags".into(),
            ParamValue::from_json(serde_json::json!(["a"])),
        );
        fields
            .params
            .insert("label".into(), ParamValue::String("12".into()));
        let hit = Hit::new(fields);
        let copy = hit.clone();
        assert!(Arc::ptr_eq(&hit.0, &copy.0));

        let json = serde_json::to_string(&hit).unwrap();
        assert!(json.contains("\"protocol\":\"ga4\""));
        assert!(
            !json.contains("user_id"),
            "absent fields are not stored: {json}"
        );
        let back: Hit = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hit);
        // A numeric-looking string parameter stays a string.
        assert_eq!(back.params["label"], ParamValue::String("12".into()));
    }

    #[test]
    fn fields_mut_copies_on_write() {
        let hit = Hit::new(HitFields::new(
            Protocol::Segment,
            "identify",
            Timestamp::now(),
        ));
        let mut changed = hit.clone();
        changed.fields_mut().user_id = Some("u1".into());
        assert_eq!(hit.user_id, None);
        assert_eq!(changed.user_id.as_deref(), Some("u1"));
    }
}
