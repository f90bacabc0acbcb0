//! GA4's default channel group: source / medium / campaign → one of 19 channels.
//!
//! The rules follow Google's published definitions ("[GA4] Default channel group"), evaluated
//! top-down, first match wins, case-insensitively:
//!
//! | channel | rule |
//! |---|---|
//! | Direct | source is `(direct)` and medium is `(not set)` or `(none)` |
//! | Cross-network | campaign contains `cross-network` |
//! | Paid Shopping | (shopping source, or campaign matches `^(.*(([^a-df-z]\|^)shop\|shopping).*)$`) and paid medium |
//! | Paid Search | search source and paid medium |
//! | Paid Social | social source and paid medium |
//! | Paid Video | video source and paid medium |
//! | Display | medium is one of `display`, `banner`, `expandable`, `interstitial`, `cpm` |
//! | Paid Other | paid medium |
//! | Organic Shopping | shopping source, or the shopping campaign pattern above |
//! | Organic Social | social source, or medium is one of `social`, `social-network`, `social-media`, `sm`, `social network`, `social media` |
//! | Organic Video | video source, or medium contains `video` |
//! | Organic Search | search source, or medium is `organic` |
//! | Referral | medium is one of `referral`, `app`, `link` |
//! | Email | source or medium is one of `email`, `e-mail`, `e_mail`, `e mail` |
//! | Affiliates | medium is `affiliate` |
//! | Audio | medium is `audio` |
//! | SMS | source or medium is `sms` |
//! | Mobile Push Notifications | medium ends with `push` or contains `mobile` or `notification`, or source is `firebase` |
//! | Unassigned | anything else |
//!
//! "Paid medium" is Google's `^(.*cp.*|ppc|retargeting|paid.*)$`. Source categories come from
//! [`super::sites`]. GA4's extra Google Ads signals (ad network type for Display and
//! Cross-network) are not available to us and are left out.

use serde::{Deserialize, Serialize};

use super::attribution::TrafficSource;
use super::sites::{self, SourceCategory};

/// GA4's default channel groups; serialised as GA4 names them (`"Organic Search"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelGroup {
    Direct,
    #[serde(rename = "Cross-network")]
    CrossNetwork,
    #[serde(rename = "Paid Shopping")]
    PaidShopping,
    #[serde(rename = "Paid Search")]
    PaidSearch,
    #[serde(rename = "Paid Social")]
    PaidSocial,
    #[serde(rename = "Paid Video")]
    PaidVideo,
    Display,
    #[serde(rename = "Paid Other")]
    PaidOther,
    #[serde(rename = "Organic Shopping")]
    OrganicShopping,
    #[serde(rename = "Organic Social")]
    OrganicSocial,
    #[serde(rename = "Organic Video")]
    OrganicVideo,
    #[serde(rename = "Organic Search")]
    OrganicSearch,
    Referral,
    Email,
    Affiliates,
    Audio,
    #[serde(rename = "SMS")]
    Sms,
    #[serde(rename = "Mobile Push Notifications")]
    MobilePushNotifications,
    Unassigned,
}

impl ChannelGroup {
    /// GA4's name for the channel.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "Direct",
            Self::CrossNetwork => "Cross-network",
            Self::PaidShopping => "Paid Shopping",
            Self::PaidSearch => "Paid Search",
            Self::PaidSocial => "Paid Social",
            Self::PaidVideo => "Paid Video",
            Self::Display => "Display",
            Self::PaidOther => "Paid Other",
            Self::OrganicShopping => "Organic Shopping",
            Self::OrganicSocial => "Organic Social",
            Self::OrganicVideo => "Organic Video",
            Self::OrganicSearch => "Organic Search",
            Self::Referral => "Referral",
            Self::Email => "Email",
            Self::Affiliates => "Affiliates",
            Self::Audio => "Audio",
            Self::Sms => "SMS",
            Self::MobilePushNotifications => "Mobile Push Notifications",
            Self::Unassigned => "Unassigned",
        }
    }

    /// The channel of any source / medium / campaign, e.g. a session's once the sessions stage
    /// has settled them. The source's category is looked up from its name.
    pub fn classify(source: &str, medium: &str, campaign: &str) -> Self {
        let category = sites::by_source(source).map(|s| s.category);
        Self::rules(source, medium, campaign, category)
    }

    /// The channel of a resolved traffic source.
    pub fn of(traffic: &TrafficSource) -> Self {
        Self::rules(
            &traffic.source,
            &traffic.medium,
            &traffic.campaign,
            traffic.category,
        )
    }

    fn rules(source: &str, medium: &str, campaign: &str, category: Option<SourceCategory>) -> Self {
        use SourceCategory::{Search, Shopping, Social, Video};
        let source = source.trim().to_ascii_lowercase();
        let medium = medium.trim().to_ascii_lowercase();
        let campaign = campaign.trim().to_ascii_lowercase();
        let (source, medium, campaign) = (source.as_str(), medium.as_str(), campaign.as_str());

        let paid = is_paid_medium(medium);
        let shopping = category == Some(Shopping) || is_shopping_campaign(campaign);
        let is = |c| category == Some(c);
        let email = |v: &str| matches!(v, "email" | "e-mail" | "e_mail" | "e mail");

        if source == "(direct)" && matches!(medium, "(not set)" | "(none)") {
            Self::Direct
        } else if campaign.contains("cross-network") {
            Self::CrossNetwork
        } else if shopping && paid {
            Self::PaidShopping
        } else if is(Search) && paid {
            Self::PaidSearch
        } else if is(Social) && paid {
            Self::PaidSocial
        } else if is(Video) && paid {
            Self::PaidVideo
        } else if matches!(
            medium,
            "display" | "banner" | "expandable" | "interstitial" | "cpm"
        ) {
            Self::Display
        } else if paid {
            Self::PaidOther
        } else if shopping {
            Self::OrganicShopping
        } else if is(Social) || SOCIAL_MEDIUMS.contains(&medium) {
            Self::OrganicSocial
        } else if is(Video) || medium.contains("video") {
            Self::OrganicVideo
        } else if is(Search) || medium == "organic" {
            Self::OrganicSearch
        } else if matches!(medium, "referral" | "app" | "link") {
            Self::Referral
        } else if email(source) || email(medium) {
            Self::Email
        } else if medium == "affiliate" {
            Self::Affiliates
        } else if medium == "audio" {
            Self::Audio
        } else if source == "sms" || medium == "sms" {
            Self::Sms
        } else if medium.ends_with("push")
            || medium.contains("mobile")
            || medium.contains("notification")
            || source == "firebase"
        {
            Self::MobilePushNotifications
        } else {
            Self::Unassigned
        }
    }
}

impl std::fmt::Display for ChannelGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const SOCIAL_MEDIUMS: &[&str] = &[
    "social",
    "social-network",
    "social-media",
    "sm",
    "social network",
    "social media",
];

/// `^(.*cp.*|ppc|retargeting|paid.*)$` on a lower-case medium.
fn is_paid_medium(medium: &str) -> bool {
    medium.contains("cp")
        || medium == "ppc"
        || medium == "retargeting"
        || medium.starts_with("paid")
}

/// `^(.*(([^a-df-z]|^)shop|shopping).*)$` on a lower-case campaign: `shop` at the start or after
/// anything but a letter other than `e` (so `eshop` and `summer-shop` count, `workshop` does
/// not), or `shopping` anywhere.
fn is_shopping_campaign(campaign: &str) -> bool {
    campaign.contains("shopping")
        || campaign.match_indices("shop").any(|(at, _)| {
            campaign[..at]
                .chars()
                .next_back()
                .is_none_or(|before| !(before.is_ascii_lowercase() && before != 'e'))
        })
}

#[cfg(test)]
mod tests;
