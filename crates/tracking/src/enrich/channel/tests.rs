use super::*;
use ChannelGroup::*;

#[track_caller]
fn check(source: &str, medium: &str, campaign: &str, expected: ChannelGroup) {
    assert_eq!(
        ChannelGroup::classify(source, medium, campaign),
        expected,
        "{source} / {medium} / {campaign}"
    );
}

#[test]
fn direct() {
    check("(direct)", "(none)", "(direct)", Direct);
    check("(direct)", "(not set)", "(not set)", Direct);
}

#[test]
fn cross_network_wins_over_everything_but_direct() {
    check("google", "cpc", "PMax Cross-Network Spring", CrossNetwork);
}

#[test]
fn paid_shopping_by_source_or_campaign() {
    check("amazon", "cpc", "(not set)", PaidShopping);
    check("newsletter-partner", "paid", "eShop launch", PaidShopping);
    check("google shopping", "ppc", "x", PaidShopping);
    // `workshop` is not a shopping campaign: GA4's pattern excludes a letter before `shop`.
    check("partner", "paid", "workshop-2024", PaidOther);
}

#[test]
fn paid_search() {
    check("google", "cpc", "(not set)", PaidSearch);
    check("Bing", "PPC", "brand", PaidSearch);
    check("duckduckgo", "retargeting", "x", PaidSearch);
}

#[test]
fn paid_social() {
    check("facebook", "paid_social", "spring", PaidSocial);
    check("ig", "cpc", "spring", PaidSocial);
    check("linkedin", "paid-social", "b2b", PaidSocial);
    check("l.facebook.com", "cpm", "x", PaidSocial);
}

#[test]
fn paid_video() {
    check("youtube", "cpv", "trailer", PaidVideo);
}

#[test]
fn display() {
    check("dv360", "display", "x", Display);
    check("partner-network", "banner", "x", Display);
    // `cpm` is also a paid medium; Display only comes after the paid source rules.
    check("programmatic", "cpm", "x", Display);
}

#[test]
fn paid_other() {
    check("some-network", "cpc", "x", PaidOther);
    check("(not set)", "paid", "x", PaidOther);
}

#[test]
fn organic_shopping() {
    check("ebay", "referral", "(referral)", OrganicShopping);
    check("partner", "newsletter", "holiday shopping", OrganicShopping);
}

#[test]
fn organic_social() {
    check("facebook", "referral", "(referral)", OrganicSocial);
    check("twitter", "referral", "(referral)", OrganicSocial);
    check("mastodon.social", "social", "launch", OrganicSocial);
    check("hootsuite", "Social Media", "x", OrganicSocial);
}

#[test]
fn organic_video() {
    check("youtube", "referral", "(referral)", OrganicVideo);
    check("creator", "video", "x", OrganicVideo);
}

#[test]
fn organic_search() {
    check("google", "organic", "(organic)", OrganicSearch);
    check("yandex", "referral", "(referral)", OrganicSearch);
    check("some-engine", "organic", "x", OrganicSearch);
}

#[test]
fn referral() {
    check("partner-blog.io", "referral", "(referral)", Referral);
    check("my-app", "app", "x", Referral);
    check("docs", "link", "x", Referral);
}

#[test]
fn email() {
    check("newsletter", "email", "spring", Email);
    check("e-mail", "(not set)", "spring", Email);
    check("crm", "E Mail", "x", Email);
}

#[test]
fn affiliates() {
    check("awin", "affiliate", "x", Affiliates);
}

#[test]
fn audio() {
    check("spotify", "audio", "x", Audio);
}

#[test]
fn sms() {
    check("sms", "(not set)", "x", Sms);
    check("twilio", "sms", "x", Sms);
}

#[test]
fn mobile_push_notifications() {
    check("onesignal", "web-push", "x", MobilePushNotifications);
    check("braze", "mobile", "x", MobilePushNotifications);
    check("app", "notification", "x", MobilePushNotifications);
    check("firebase", "(not set)", "x", MobilePushNotifications);
}

#[test]
fn unassigned() {
    check("qr-code", "print", "x", Unassigned);
    check("(not set)", "(not set)", "spring", Unassigned);
}

#[test]
fn names_serialise_as_ga4_writes_them() {
    let json = serde_json::to_string(&[OrganicSearch, Sms, CrossNetwork, Direct]).unwrap();
    assert_eq!(json, r#"["Organic Search","SMS","Cross-network","Direct"]"#);
    for channel in [MobilePushNotifications, PaidOther, Unassigned] {
        let text = serde_json::to_value(channel).unwrap();
        assert_eq!(text.as_str(), Some(channel.as_str()));
        assert_eq!(
            serde_json::from_value::<ChannelGroup>(text).unwrap(),
            channel
        );
    }
}

#[test]
fn resolved_traffic_uses_its_category() {
    let traffic = TrafficSource {
        source: "google".into(),
        medium: "cpc".into(),
        campaign: "(not set)".into(),
        category: Some(SourceCategory::Search),
    };
    assert_eq!(ChannelGroup::of(&traffic), PaidSearch);
    assert_eq!(ChannelGroup::of(&TrafficSource::direct()), Direct);
}
