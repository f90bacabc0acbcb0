//! A hit's source / medium / campaign, resolved the way GA4 does for a session's first hit.
//!
//! In order: manual UTM tagging wins; else a Google Ads click id means `google / cpc`; else the
//! referrer decides — a known search engine is `<engine> / organic`, any other known site
//! `<site> / referral`, an unknown one `<host> / referral`; a self-referral counts as none; and
//! with nothing at all the hit is `(direct) / (none)`. (GA4 itself lets Google Ads auto-tagging
//! override manual UTM tags by default; here tags win, as a site that tags wants.)

use serde::{Deserialize, Serialize};

use super::landing::{ClickIds, Utm};
use super::sites::{self, SourceCategory};

/// GA4's placeholder for a value a manually tagged URL left out.
pub const NOT_SET: &str = "(not set)";

/// Where a hit's traffic came from, in GA4's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSource {
    /// `utm_source` as sent; `google` for Google Ads clicks; the engine or site name for known
    /// referrers (`google`, `facebook`, `twitter` for t.co and x.com); the referrer host without
    /// `www.` otherwise; `(direct)` with no source at all; `(not set)` when tags left it out.
    pub source: String,
    /// `utm_medium` as sent; `cpc`, `organic`, `referral`, or `(none)` for direct traffic.
    pub medium: String,
    /// `utm_campaign` as sent; GA4's placeholders otherwise: `(organic)`, `(referral)`,
    /// `(direct)`, or `(not set)` (tagged without a campaign, or a Google Ads click, whose
    /// campaign name only Google Ads knows).
    pub campaign: String,
    /// GA4's category of `source` when it is a known search, social, video or shopping site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<SourceCategory>,
}

impl TrafficSource {
    /// No campaign, no click id, no (external) referrer.
    pub fn direct() -> Self {
        Self {
            source: "(direct)".into(),
            medium: "(none)".into(),
            campaign: "(direct)".into(),
            category: None,
        }
    }
}

/// Resolves a hit's traffic source; `referrer_host` is an external referrer's host (self-referrals
/// already dropped).
pub(super) fn resolve(
    utm: &Utm,
    click_ids: &ClickIds,
    referrer_host: Option<&str>,
) -> TrafficSource {
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| NOT_SET.to_owned());
    if utm.is_manual_campaign() {
        return TrafficSource {
            category: utm
                .source
                .as_deref()
                .and_then(sites::by_source)
                .map(|s| s.category),
            source: text(&utm.source),
            medium: text(&utm.medium),
            campaign: text(&utm.campaign),
        };
    }
    if click_ids.is_google_ads() {
        return TrafficSource {
            source: "google".into(),
            medium: "cpc".into(),
            campaign: NOT_SET.into(),
            category: Some(SourceCategory::Search),
        };
    }
    let Some(host) = referrer_host else {
        return TrafficSource::direct();
    };
    match sites::by_host(host) {
        Some(site) if site.category == SourceCategory::Search => TrafficSource {
            source: site.name.into(),
            medium: "organic".into(),
            campaign: "(organic)".into(),
            category: Some(site.category),
        },
        Some(site) => TrafficSource {
            source: site.name.into(),
            medium: "referral".into(),
            campaign: "(referral)".into(),
            category: Some(site.category),
        },
        None => TrafficSource {
            source: host.strip_prefix("www.").unwrap_or(host).into(),
            medium: "referral".into(),
            campaign: "(referral)".into(),
            category: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utm(source: Option<&str>, medium: Option<&str>, campaign: Option<&str>) -> Utm {
        Utm {
            source: source.map(Into::into),
            medium: medium.map(Into::into),
            campaign: campaign.map(Into::into),
            ..Utm::default()
        }
    }

    fn gclid() -> ClickIds {
        ClickIds {
            gclid: Some("Cj0KCQ".into()),
            ..ClickIds::default()
        }
    }

    fn triple(t: &TrafficSource) -> (&str, &str, &str) {
        (&t.source, &t.medium, &t.campaign)
    }

    #[test]
    fn utm_tags_win_over_click_ids_and_referrers() {
        let tagged = utm(Some("newsletter"), Some("email"), Some("spring"));
        let t = resolve(&tagged, &gclid(), Some("www.google.com"));
        assert_eq!(triple(&t), ("newsletter", "email", "spring"));
        assert_eq!(t.category, None);
        // Partly tagged: the missing parts are `(not set)`, not taken from elsewhere.
        let t = resolve(&utm(None, None, Some("spring")), &gclid(), None);
        assert_eq!(triple(&t), (NOT_SET, NOT_SET, "spring"));
        let t = resolve(
            &utm(Some("FB"), Some("paid"), None),
            &ClickIds::default(),
            None,
        );
        assert_eq!(t.category, Some(SourceCategory::Social));
        // Term and content alone are not a campaign.
        let only_term = Utm {
            term: Some("shoes".into()),
            ..Utm::default()
        };
        assert_eq!(
            resolve(&only_term, &ClickIds::default(), None),
            TrafficSource::direct()
        );
    }

    #[test]
    fn google_ads_click_ids_are_google_cpc() {
        for ids in [
            gclid(),
            ClickIds {
                gbraid: Some("g".into()),
                ..ClickIds::default()
            },
            ClickIds {
                wbraid: Some("w".into()),
                ..ClickIds::default()
            },
        ] {
            let t = resolve(&Utm::default(), &ids, Some("www.bing.com"));
            assert_eq!(triple(&t), ("google", "cpc", NOT_SET));
        }
        // fbclid and msclkid are not Google Ads clicks: the referrer decides.
        let meta = ClickIds {
            fbclid: Some("IwAR".into()),
            ..ClickIds::default()
        };
        let t = resolve(&Utm::default(), &meta, Some("l.facebook.com"));
        assert_eq!(triple(&t), ("facebook", "referral", "(referral)"));
    }

    #[test]
    fn referrers_are_organic_search_social_or_plain_referrals() {
        let none = ClickIds::default();
        let t = resolve(&Utm::default(), &none, Some("www.google.de"));
        assert_eq!(triple(&t), ("google", "organic", "(organic)"));
        assert_eq!(t.category, Some(SourceCategory::Search));
        let t = resolve(&Utm::default(), &none, Some("duckduckgo.com"));
        assert_eq!(triple(&t), ("duckduckgo", "organic", "(organic)"));
        let t = resolve(&Utm::default(), &none, Some("t.co"));
        assert_eq!(triple(&t), ("twitter", "referral", "(referral)"));
        assert_eq!(t.category, Some(SourceCategory::Social));
        let t = resolve(&Utm::default(), &none, Some("www.partner-blog.io"));
        assert_eq!(triple(&t), ("partner-blog.io", "referral", "(referral)"));
        assert_eq!(t.category, None);
        assert_eq!(
            resolve(&Utm::default(), &none, None),
            TrafficSource::direct()
        );
    }
}
