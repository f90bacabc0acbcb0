//! End-to-end: hits as the parsers build them, through `Enricher::enrich`.

use chrono::DateTime;
use platform::Timestamp;
use serde_json::json;

use super::geo::tests::test_database;
use super::*;
use crate::hit::{Campaign, SegmentCall, SegmentCallType};

const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                              (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) \
                             AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 \
                             Mobile/15E148 Safari/604.1";

/// 2023-11-14T22:13:20.123Z
const HIT_TIME_MS: i64 = 1_700_000_000_123;

fn at() -> Timestamp {
    Timestamp::from(DateTime::from_timestamp_millis(HIT_TIME_MS).expect("valid time"))
}

fn enricher() -> Enricher {
    Enricher::new(Some(&test_database("GeoIP2-City-Test.mmdb"))).expect("geo database opens")
}

/// A gtag page view as `ga4::parse` builds it from this request.
fn gtag_hit(location: &str, referrer: Option<&str>) -> (Hit, RawRequest) {
    let request = RawRequest::new("POST", "/g/collect", "v=2&tid=G-TEST", at())
        .with_header("User-Agent", CHROME_WINDOWS)
        .with_client_ip("81.2.69.142".parse().expect("ip"));
    let mut hit = HitFields::new(Protocol::Ga4, "page_view", at());
    hit.device.user_agent = request.user_agent().map(str::to_owned);
    hit.device.ip = request.client_ip;
    hit.page.location = Some(location.into());
    hit.page.referrer = referrer.map(Into::into);
    hit.page.derive_hostname();
    (hit.into(), request)
}

fn segment_call(context: serde_json::Value) -> SegmentCall {
    SegmentCall {
        call_type: SegmentCallType::Track,
        message_id: "ajs-1".into(),
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
        context: Some(context),
    }
}

#[test]
fn enricher_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Enricher>();
    let enricher = Enricher::new(None).expect("no database needed");
    assert!(!enricher.has_geo());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                assert_eq!(
                    enricher.user_agent(CHROME_WINDOWS).device_type,
                    DeviceType::Desktop
                );
            });
        }
    });
}

#[test]
fn gtag_hit_with_utm_is_fully_enriched() {
    let (hit, request) = gtag_hit(
        "https://www.example.com/pricing?utm_source=newsletter&utm_medium=email\
         &utm_campaign=spring&fbclid=IwAR0xyz",
        Some("https://mail.google.com/"),
    );
    let request = request.with_header("Cookie", "_ga=GA1.1.1; _fbp=fb.1.1690000000000.42");
    let e = enricher().enrich(&hit, &request);
    assert_eq!(e.user_agent.browser.as_deref(), Some("Chrome"));
    assert_eq!(e.user_agent.browser_version.as_deref(), Some("120"));
    assert_eq!(e.user_agent.os.as_deref(), Some("Windows"));
    assert_eq!(e.user_agent.device_type, DeviceType::Desktop);
    assert!(!e.user_agent.bot);
    assert_eq!(e.page.host.as_deref(), Some("www.example.com"));
    assert_eq!(e.page.path.as_deref(), Some("/pricing"));
    assert_eq!(e.utm.campaign.as_deref(), Some("spring"));
    assert_eq!(e.referrer_host.as_deref(), Some("mail.google.com"));
    assert!(!e.internal_referrer);
    assert_eq!(
        (e.traffic.source.as_str(), e.traffic.medium.as_str()),
        ("newsletter", "email")
    );
    assert_eq!(e.channel_group, ChannelGroup::Email);
    assert_eq!(e.fbc.as_deref(), Some("fb.1.1700000000123.IwAR0xyz"));
    assert_eq!(e.fbp.as_deref(), Some("fb.1.1690000000000.42"));
    let geo = e.geo.as_ref().expect("81.2.69.142 is in the test database");
    assert_eq!(geo.country.as_deref(), Some("GB"));
    assert_eq!(geo.city.as_deref(), Some("London"));

    // Stored beside the hit as JSON; it must come back the same.
    let stored = serde_json::to_string(&e).expect("serialises");
    assert!(stored.contains(r#""channel_group":"Email""#), "{stored}");
    assert_eq!(
        serde_json::from_str::<Enrichment>(&stored).expect("parses"),
        e
    );
}

#[test]
fn gclid_is_paid_search() {
    let (hit, request) = gtag_hit("https://example.com/?gclid=Cj0KCQiA", None);
    let e = enricher().enrich(&hit, &request);
    assert_eq!(e.click_ids.gclid.as_deref(), Some("Cj0KCQiA"));
    assert_eq!(
        (e.traffic.source.as_str(), e.traffic.medium.as_str()),
        ("google", "cpc")
    );
    assert_eq!(e.channel_group, ChannelGroup::PaidSearch);
}

#[test]
fn utm_tags_take_precedence_over_gclid() {
    let (hit, request) = gtag_hit(
        "https://example.com/?gclid=abc&utm_source=facebook&utm_medium=paid_social",
        Some("https://www.google.com/"),
    );
    let e = enricher().enrich(&hit, &request);
    assert_eq!(e.traffic.source, "facebook");
    assert_eq!(e.channel_group, ChannelGroup::PaidSocial);
}

#[test]
fn social_and_search_referrals() {
    let enricher = enricher();
    let (hit, request) = gtag_hit(
        "https://example.com/blog",
        Some("https://l.facebook.com/l.php?u=x"),
    );
    let e = enricher.enrich(&hit, &request);
    assert_eq!(
        (e.traffic.source.as_str(), e.traffic.medium.as_str()),
        ("facebook", "referral")
    );
    assert_eq!(e.traffic.category, Some(SourceCategory::Social));
    assert_eq!(e.channel_group, ChannelGroup::OrganicSocial);

    let (hit, request) = gtag_hit("https://example.com/blog", Some("https://www.bing.com/"));
    let e = enricher.enrich(&hit, &request);
    assert_eq!(
        (e.traffic.source.as_str(), e.traffic.medium.as_str()),
        ("bing", "organic")
    );
    assert_eq!(e.channel_group, ChannelGroup::OrganicSearch);

    let (hit, request) = gtag_hit(
        "https://example.com/",
        Some("https://news.ycombinator.com/item"),
    );
    let e = enricher.enrich(&hit, &request);
    assert_eq!(e.traffic.source, "news.ycombinator.com");
    assert_eq!(e.channel_group, ChannelGroup::Referral);
}

#[test]
fn internal_referrer_counts_as_direct() {
    let (hit, request) = gtag_hit(
        "https://www.example.com/checkout",
        Some("https://shop.example.com/cart"),
    );
    let e = enricher().enrich(&hit, &request);
    assert!(e.internal_referrer);
    assert_eq!(e.referrer_host.as_deref(), Some("shop.example.com"));
    assert_eq!(e.traffic, TrafficSource::direct());
    assert_eq!(e.channel_group, ChannelGroup::Direct);
}

#[test]
fn fbc_cookie_passes_through_without_fbclid() {
    let (hit, request) = gtag_hit("https://example.com/", None);
    let request = request.with_header("cookie", "_fbc=fb.1.1600000000000.IwAROld");
    let e = enricher().enrich(&hit, &request);
    assert_eq!(e.fbc.as_deref(), Some("fb.1.1600000000000.IwAROld"));
    assert_eq!(e.fbp, None);
}

#[test]
fn browser_hit_without_user_agent_is_a_bot() {
    let (hit, _) = gtag_hit("https://example.com/", None);
    let mut fields = hit.into_fields();
    fields.device.user_agent = None;
    let request = RawRequest::new("GET", "/g/collect", "", at());
    let e = enricher().enrich(&fields.into(), &request);
    assert!(e.user_agent.bot);
    assert_eq!(e.user_agent.device_type, DeviceType::Bot);
    assert_eq!(e.geo, None, "no client address");
}

#[test]
fn segment_campaign_context_page_and_stated_ip() {
    let mut hit = HitFields::new(Protocol::Segment, "Signed Up", at());
    hit.device.user_agent = Some(SAFARI_IPHONE.into());
    hit.device.ip = Some("2001:218::1".parse().expect("ip"));
    hit.page.location = Some("https://app.example.com/welcome".into());
    hit.page.derive_hostname();
    hit.campaign = Some(Campaign {
        name: Some("launch".into()),
        source: Some("ig".into()),
        medium: Some("cpc".into()),
        term: None,
        content: None,
    });
    hit.segment = Some(segment_call(
        json!({"ip": "2001:218::1", "userAgent": SAFARI_IPHONE}),
    ));
    // Sent by the customer's server: its agent and address describe nobody.
    let request = RawRequest::new("POST", "/v1/track", "", at())
        .with_header("User-Agent", "analytics-node/1.0")
        .with_client_ip("81.2.69.142".parse().expect("ip"));
    let e = enricher().enrich(&hit.into(), &request);
    assert_eq!(e.user_agent.os.as_deref(), Some("iOS"));
    assert_eq!(e.user_agent.device_type, DeviceType::Mobile);
    assert_eq!(e.page.path.as_deref(), Some("/welcome"));
    assert_eq!(e.utm.source.as_deref(), Some("ig"));
    assert_eq!(e.utm.campaign.as_deref(), Some("launch"));
    assert_eq!(e.channel_group, ChannelGroup::PaidSocial);
    assert_eq!(e.geo.and_then(|g| g.country).as_deref(), Some("JP"));
}

#[test]
fn segment_without_stated_agent_or_ip_uses_context_device_and_request_address() {
    let mut hit = HitFields::new(Protocol::Segment, "Order Completed", at());
    hit.device.os_name = Some("Android".into());
    hit.device.category = Some("android".into());
    // The parser copies the request's address here before the gateway truncates the request's
    // copy; a different address stands in for it to tell the two apart.
    hit.device.ip = Some("2001:218::1".parse().expect("ip"));
    hit.segment = Some(segment_call(json!({"os": {"name": "Android"}})));
    let request = RawRequest::new("POST", "/v1/track", "", at())
        .with_header("User-Agent", "okhttp/4.9")
        .with_client_ip("81.2.69.142".parse().expect("ip"));
    let e = enricher().enrich(&hit.into(), &request);
    assert_eq!(e.user_agent.os.as_deref(), Some("Android"));
    assert_eq!(e.user_agent.device_type, DeviceType::Mobile);
    assert!(
        !e.user_agent.bot,
        "the request's agent is the sending library's"
    );
    assert_eq!(e.traffic, TrafficSource::direct());
    // The gateway's address (truncated when the site asks), not the parser's copy of it.
    assert_eq!(e.geo.and_then(|g| g.country).as_deref(), Some("GB"));
}

#[test]
fn measurement_protocol_uses_stated_device_and_location() {
    let mut hit = HitFields::new(Protocol::MeasurementProtocol, "purchase", at());
    hit.device.category = Some("desktop".into());
    hit.device.os_name = Some("Windows".into());
    hit.extra.insert(
        "device".into(),
        json!({"category": "desktop", "browser": "Edge", "browser_version": "120.0.1"}),
    );
    hit.extra.insert(
        "user_location".into(),
        json!({"country_id": "FR", "city": "Paris"}),
    );
    let request = RawRequest::new("POST", "/mp/collect", "", at())
        .with_header("User-Agent", "curl/8.5.0")
        .with_client_ip("81.2.69.142".parse().expect("ip"));
    let e = enricher().enrich(&hit.into(), &request);
    assert_eq!(e.user_agent.browser.as_deref(), Some("Edge"));
    assert_eq!(e.user_agent.browser_version.as_deref(), Some("120"));
    assert_eq!(e.user_agent.device_type, DeviceType::Desktop);
    assert!(!e.user_agent.bot);
    let geo = e.geo.expect("stated location");
    assert_eq!(
        (geo.country.as_deref(), geo.city.as_deref()),
        (Some("FR"), Some("Paris"))
    );

    // `ip_override` is looked up; the sender's own address never is.
    let mut hit = HitFields::new(Protocol::MeasurementProtocol, "purchase", at());
    hit.extra.insert("ip_override".into(), json!("2001:218::1"));
    let e = enricher().enrich(&hit.into(), &request);
    assert_eq!(e.geo.and_then(|g| g.country).as_deref(), Some("JP"));
    let hit = HitFields::new(Protocol::MeasurementProtocol, "purchase", at());
    assert_eq!(enricher().enrich(&hit.into(), &request).geo, None);
}

#[test]
fn geo_needs_a_database_and_a_known_address() {
    let (hit, request) = gtag_hit("https://example.com/", None);
    let without = Enricher::new(None).expect("no database needed");
    assert_eq!(without.enrich(&hit, &request).geo, None);
    assert_eq!(without.geo("81.2.69.142".parse().expect("ip")), None);

    let lite = Enricher::new(Some(&test_database("GeoLite2-City-Test.mmdb"))).expect("opens");
    assert!(lite.has_geo());
    assert_eq!(
        lite.enrich(&hit, &request)
            .geo
            .and_then(|g| g.city)
            .as_deref(),
        Some("London")
    );
    assert_eq!(
        lite.geo("2001:218::1".parse().expect("ip"))
            .and_then(|g| g.country)
            .as_deref(),
        Some("JP")
    );
    assert_eq!(lite.geo("10.0.0.1".parse().expect("ip")), None);
    assert!(Enricher::new(Some(&test_database("GeoLite2-ASN-Test.mmdb"))).is_err());
}

#[test]
fn cached_user_agents_match_fresh_parses() {
    let enricher = Enricher::new(None).expect("no database needed");
    for agent in [CHROME_WINDOWS, SAFARI_IPHONE, "curl/8.5.0", ""] {
        let first = enricher.user_agent(agent);
        assert_eq!(first, user_agent::parse(agent));
        assert_eq!(enricher.user_agent(agent), first);
    }
    let huge = format!("{CHROME_WINDOWS} {}", "x".repeat(MAX_CACHED_USER_AGENT_LEN));
    assert_eq!(
        enricher.user_agent(&huge).browser.as_deref(),
        Some("Chrome")
    );
}
