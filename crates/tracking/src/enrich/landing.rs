//! What the page URL and the request's cookies say about how the visitor arrived: the page's
//! host and path, UTM parameters, ad click ids, and Meta's `fbc`/`fbp` identifiers.
//!
//! URLs are taken apart by hand (the crate avoids a full URL parser; see `hit::hostname_of`);
//! query values are decoded with `form_urlencoded`, as gtag's own parameters are.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hit::{Campaign, HitFields, Protocol, hostname_of};
use crate::raw::RawRequest;

/// The page a hit happened on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    /// Lower-case host: the hit's `page.hostname` (gtag `dh`), else the host of its URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// URL path without query or fragment, still percent-encoded as sent (`/pricing`); `/` for
    /// a bare origin. Segment hits without a URL use `context.page.path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// UTM campaign parameters (`utm_*`), decoded, trimmed, empty ones dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Utm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `utm_id`: the campaign id (GA4 joins cost data on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Utm {
    /// GA4 treats a hit as manually tagged when it carries any of these four.
    pub fn is_manual_campaign(&self) -> bool {
        self.source.is_some()
            || self.medium.is_some()
            || self.campaign.is_some()
            || self.id.is_some()
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Ad platforms' click ids from the page URL's query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickIds {
    /// Google Ads click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gclid: Option<String>,
    /// Google Ads click id of app campaigns on iOS (web to app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbraid: Option<String>,
    /// Google Ads click id of iOS app-to-web clicks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wbraid: Option<String>,
    /// Display & Video 360 / Campaign Manager click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dclid: Option<String>,
    /// Meta (Facebook, Instagram) click id; Meta adds it to organic links too, so it says
    /// nothing about paid traffic by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbclid: Option<String>,
    /// Microsoft Advertising click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msclkid: Option<String>,
    /// TikTok click id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttclid: Option<String>,
}

impl ClickIds {
    /// A Google Ads click (auto-tagging): GA4 attributes it to `google / cpc`.
    pub fn is_google_ads(&self) -> bool {
        self.gclid.is_some() || self.gbraid.is_some() || self.wbraid.is_some()
    }
}

/// The parts of the landing URL that enrichment reports on.
pub(super) struct Landing {
    pub page: PageInfo,
    pub utm: Utm,
    pub click_ids: ClickIds,
}

/// Reads the hit's page URL; Segment hits fall back to `context.page` for the path and query,
/// and to `context.campaign` when the URL has no UTM parameters at all.
pub(super) fn landing(hit: &HitFields) -> Landing {
    let location = hit.page.location.as_deref();
    let context_page = |field: &str| {
        (hit.protocol == Protocol::Segment)
            .then(|| {
                hit.segment
                    .as_ref()?
                    .context
                    .as_ref()?
                    .get("page")?
                    .get(field)
            })
            .flatten()
            .and_then(Value::as_str)
    };
    let path = location
        .and_then(path_of)
        .or_else(|| context_page("path").filter(|p| p.starts_with('/')));
    let host = hit
        .page
        .hostname
        .clone()
        .or_else(|| location.and_then(hostname_of));
    let query = location
        .and_then(query_of)
        .or_else(|| context_page("search").map(|s| s.trim_start_matches('?')))
        .unwrap_or_default();

    let mut utm = Utm::default();
    let mut click_ids = ClickIds::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*name {
            "utm_source" => &mut utm.source,
            "utm_medium" => &mut utm.medium,
            "utm_campaign" => &mut utm.campaign,
            "utm_term" => &mut utm.term,
            "utm_content" => &mut utm.content,
            "utm_id" => &mut utm.id,
            "gclid" => &mut click_ids.gclid,
            "gbraid" => &mut click_ids.gbraid,
            "wbraid" => &mut click_ids.wbraid,
            "dclid" => &mut click_ids.dclid,
            "fbclid" => &mut click_ids.fbclid,
            "msclkid" => &mut click_ids.msclkid,
            "ttclid" => &mut click_ids.ttclid,
            _ => continue,
        };
        // The first non-empty occurrence wins.
        if slot.is_none() {
            *slot = non_empty(&value);
        }
    }
    if utm.is_empty()
        && let Some(campaign) = &hit.campaign
    {
        utm = from_segment_campaign(campaign);
    }
    Landing {
        page: PageInfo {
            host,
            path: path.map(str::to_owned),
        },
        utm,
        click_ids,
    }
}

fn from_segment_campaign(campaign: &Campaign) -> Utm {
    let text = |v: &Option<String>| v.as_deref().and_then(non_empty);
    Utm {
        source: text(&campaign.source),
        medium: text(&campaign.medium),
        campaign: text(&campaign.name),
        term: text(&campaign.term),
        content: text(&campaign.content),
        id: None,
    }
}

fn non_empty(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The path of an absolute or root-relative URL, without query or fragment.
fn path_of(url: &str) -> Option<&str> {
    let rest = match url.split_once("://") {
        Some((_, after_scheme)) => {
            let start = after_scheme.find(['/', '?', '#']);
            match start {
                Some(i) if after_scheme[i..].starts_with('/') => &after_scheme[i..],
                _ => return Some("/"),
            }
        }
        None if url.starts_with('/') => url,
        None => return None,
    };
    rest.split(['?', '#']).next()
}

/// The query of a URL, without `?` and fragment.
fn query_of(url: &str) -> Option<&str> {
    let (_, after) = url.split_once('?')?;
    after.split('#').next()
}

/// Meta's click id cookie value for this hit.
///
/// A URL `fbclid` makes `fb.1.<hit time in unix ms>.<fbclid>`, the value Meta's pixel would set
/// (subdomain index 1: the site's registrable domain). An existing `_fbc` cookie that already
/// holds the same fbclid is kept as it is, so its original click time survives; a cookie for an
/// older click is replaced, as the pixel does. Without a URL fbclid the cookie passes through.
pub(super) fn fbc(fbclid: Option<&str>, cookie: Option<&str>, hit_time_ms: i64) -> Option<String> {
    match (fbclid, cookie) {
        (Some(id), Some(cookie)) if cookie.splitn(4, '.').nth(3) == Some(id) => {
            Some(cookie.to_owned())
        }
        (Some(id), _) => Some(format!("fb.1.{hit_time_ms}.{id}")),
        (None, cookie) => cookie.map(str::to_owned),
    }
}

/// A cookie's value from the request's `Cookie` headers (HTTP/2 clients may send several).
pub(super) fn cookie<'a>(request: &'a RawRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .filter(|(header, _)| header.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, value)| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use platform::Timestamp;

    use super::*;

    fn hit_at(location: &str) -> HitFields {
        let mut hit = HitFields::new(Protocol::Ga4, "page_view", Timestamp::now());
        hit.page.location = Some(location.into());
        hit
    }

    #[test]
    fn reads_host_path_utm_and_click_ids() {
        let landing = landing(&hit_at(
            "https://Shop.Example.com/p/shoes?utm_source=Newsletter&utm_medium=email\
             &utm_campaign=spring%20sale&utm_term=+&utm_content=hero&utm_id=42&gclid=abc\
             &gbraid=g1&wbraid=w1&dclid=d1&fbclid=IwAR1&msclkid=m1&ttclid=t1&utm_source=ignored#top",
        ));
        assert_eq!(landing.page.host.as_deref(), Some("shop.example.com"));
        assert_eq!(landing.page.path.as_deref(), Some("/p/shoes"));
        assert_eq!(
            landing.utm,
            Utm {
                source: Some("Newsletter".into()),
                medium: Some("email".into()),
                campaign: Some("spring sale".into()),
                term: None,
                content: Some("hero".into()),
                id: Some("42".into()),
            }
        );
        let ids = &landing.click_ids;
        assert_eq!(ids.gclid.as_deref(), Some("abc"));
        assert_eq!(ids.gbraid.as_deref(), Some("g1"));
        assert_eq!(ids.wbraid.as_deref(), Some("w1"));
        assert_eq!(ids.dclid.as_deref(), Some("d1"));
        assert_eq!(ids.fbclid.as_deref(), Some("IwAR1"));
        assert_eq!(ids.msclkid.as_deref(), Some("m1"));
        assert_eq!(ids.ttclid.as_deref(), Some("t1"));
        assert!(ids.is_google_ads());
    }

    #[test]
    fn paths_of_odd_urls() {
        assert_eq!(path_of("https://example.com"), Some("/"));
        assert_eq!(path_of("https://example.com?x=1"), Some("/"));
        assert_eq!(path_of("https://example.com/a/b/?x=1#y"), Some("/a/b/"));
        assert_eq!(path_of("/relative?x"), Some("/relative"));
        assert_eq!(path_of("not a url"), None);
        assert_eq!(query_of("https://e.com/?a=1#b=2"), Some("a=1"));
        assert_eq!(query_of("https://e.com/#b=2"), None);
    }

    #[test]
    fn segment_context_supplies_campaign_and_page() {
        let mut hit = HitFields::new(Protocol::Segment, "Order Completed", Timestamp::now());
        hit.campaign = Some(Campaign {
            name: Some("launch".into()),
            source: Some("linkedin".into()),
            medium: Some("paid-social".into()),
            term: None,
            content: Some(" ".into()),
        });
        hit.segment = Some(crate::hit::SegmentCall {
            call_type: crate::hit::SegmentCallType::Track,
            message_id: "m1".into(),
            message_id_generated: false,
            name: None,
            category: None,
            group_id: None,
            group_traits: None,
            previous_id: None,
            timestamp: None,
            original_timestamp: None,
            sent_at: None,
            integrations: None,
            context: Some(serde_json::json!({
                "page": {"path": "/checkout", "search": "?gclid=xyz"}
            })),
        });
        let landing = landing(&hit);
        assert_eq!(landing.page.path.as_deref(), Some("/checkout"));
        assert_eq!(landing.click_ids.gclid.as_deref(), Some("xyz"));
        assert_eq!(landing.utm.source.as_deref(), Some("linkedin"));
        assert_eq!(landing.utm.medium.as_deref(), Some("paid-social"));
        assert_eq!(landing.utm.campaign.as_deref(), Some("launch"));
        assert_eq!(landing.utm.content, None);

        // UTM parameters in the URL win over the context, as a whole.
        hit.page.location = Some("https://example.com/?utm_source=bing".into());
        let landing = super::landing(&hit);
        assert_eq!(landing.utm.source.as_deref(), Some("bing"));
        assert_eq!(landing.utm.medium, None);
    }

    #[test]
    fn fbc_is_built_from_fbclid_in_metas_format() {
        assert_eq!(
            fbc(Some("IwAR2abc"), None, 1_700_000_000_123).as_deref(),
            Some("fb.1.1700000000123.IwAR2abc")
        );
        // The cookie for the same click keeps its original time; an older click is replaced.
        let cookie = "fb.1.1600000000000.IwAR2abc";
        assert_eq!(
            fbc(Some("IwAR2abc"), Some(cookie), 1).as_deref(),
            Some(cookie)
        );
        assert_eq!(
            fbc(Some("NEW"), Some(cookie), 5).as_deref(),
            Some("fb.1.5.NEW")
        );
        assert_eq!(fbc(None, Some(cookie), 5).as_deref(), Some(cookie));
        assert_eq!(fbc(None, None, 5), None);
    }

    #[test]
    fn cookies_are_found_across_headers() {
        let request = RawRequest::new("GET", "/g/collect", "", Timestamp::now())
            .with_header("Cookie", "a=1; _fbp=fb.1.1690000000000.123456789")
            .with_header("cookie", "_fbc=\"fb.1.1.X\"; _ga=GA1.1.2");
        assert_eq!(
            cookie(&request, "_fbp"),
            Some("fb.1.1690000000000.123456789")
        );
        assert_eq!(cookie(&request, "_fbc"), Some("fb.1.1.X"));
        assert_eq!(cookie(&request, "_gcl_aw"), None);
    }
}
