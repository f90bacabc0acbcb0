use chrono::DateTime;
use platform::Timestamp;
use serde_json::{Value, json};

use super::*;

const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";

fn at(text: &str) -> Timestamp {
    Timestamp::from(DateTime::parse_from_rfc3339(text).unwrap().to_utc())
}

fn request(path: &str, body: &Value) -> RawRequest {
    raw_request(path, body.to_string().into_bytes())
}

fn raw_request(path: &str, body: Vec<u8>) -> RawRequest {
    RawRequest::new("POST", path, "", at("2024-11-11T11:29:30Z"))
        .with_header("Content-Type", "application/json")
        .with_header("User-Agent", UA)
        .with_body(body)
        .with_client_ip("192.0.2.44".parse().unwrap())
}

/// A track call shaped like analytics.js sends it (Order Completed from Segment's e-commerce
/// spec).
fn order_completed() -> Value {
    json!({
        "type": "track",
        "event": "Order Completed",
        "anonymousId": "507f191e810c19729de860ea",
        "userId": "97980cfea0067",
        "messageId": "ajs-next-1731324567890-4e5d1a2b-8c9f-4f3e-a1b2-c3d4e5f60718",
        "timestamp": "2024-11-11T11:29:27.890Z",
        "sentAt": "2024-11-11T11:29:27.900Z",
        "properties": {
            "order_id": "50314b8e9bcf000000000000",
            "total": 27.5, "revenue": 25.0, "coupon": "hasbros", "currency": "USD",
            "products": [
                {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32",
                 "name": "Monopoly: 3rd Edition", "price": 19, "quantity": 1, "category": "Games"},
                {"sku": "46493-32", "name": "Uno Card Game", "price": 3, "quantity": 2}
            ],
            "gift": {"wrapped": true, "note": "Happy birthday"}
        },
        "context": {
            "ip": "8.8.8.8",
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "locale": "en-US",
            "timezone": "Europe/Amsterdam",
            "page": {"path": "/checkout", "referrer": "https://www.google.com/", "search": "",
                     "title": "Checkout", "url": "https://Shop.Example.com/checkout"},
            "userAgent": UA,
            "campaign": {"name": "spring_sale", "source": "newsletter", "medium": "email",
                         "term": "board games", "content": "hero"},
            "screen": {"width": 1440, "height": 900, "density": 2},
            "traits": {"email": "peter@example.com"}
        },
        "integrations": {"All": true, "Mixpanel": false},
        "writeKey": "abc123"
    })
}

#[test]
fn track_call_maps_every_part() {
    let parsed = parse(&request("/v1/track", &order_completed())).unwrap();
    assert_eq!(parsed.write_key, "abc123");
    let [hit] = &parsed.hits[..] else { panic!() };
    assert_eq!(hit.protocol, Protocol::Segment);
    assert_eq!(hit.event_name, "Order Completed");
    assert_eq!(hit.client_id.as_deref(), Some("507f191e810c19729de860ea"));
    assert_eq!(hit.user_id.as_deref(), Some("97980cfea0067"));
    // received 11:29:30.000 − (sentAt 27.900 − timestamp 27.890) = 11:29:29.990.
    assert_eq!(hit.event_time, at("2024-11-11T11:29:29.990Z"));
    assert_eq!(hit.currency.as_deref(), Some("USD"));
    assert_eq!(
        hit.params["order_id"],
        ParamValue::String("50314b8e9bcf000000000000".into())
    );
    assert_eq!(
        hit.params["gift"],
        ParamValue::Json(json!({"wrapped": true, "note": "Happy birthday"}))
    );
    assert!(!hit.params.contains_key("products") && !hit.params.contains_key("currency"));
    let ids: Vec<_> = hit.items.iter().map(|i| i.item_id.as_deref()).collect();
    assert_eq!(ids, [Some("507f1f77bcf86cd799439011"), Some("46493-32")]);
    assert_eq!(hit.items[0].item_categories, ["Games"]);
    assert_eq!(
        hit.user_properties["email"],
        ParamValue::String("peter@example.com".into())
    );

    assert_eq!(
        hit.device.ip,
        Some("8.8.8.8".parse().unwrap()),
        "context.ip wins"
    );
    assert_eq!(hit.device.user_agent.as_deref(), Some(UA));
    assert_eq!(hit.device.language.as_deref(), Some("en-US"));
    assert_eq!(hit.device.timezone.as_deref(), Some("Europe/Amsterdam"));
    assert_eq!(hit.device.screen_resolution.as_deref(), Some("1440x900"));
    assert_eq!(
        hit.page.location.as_deref(),
        Some("https://Shop.Example.com/checkout")
    );
    assert_eq!(hit.page.hostname.as_deref(), Some("shop.example.com"));
    assert_eq!(hit.page.title.as_deref(), Some("Checkout"));
    let campaign = hit.campaign.as_ref().unwrap();
    assert_eq!(campaign.source.as_deref(), Some("newsletter"));
    assert_eq!(campaign.term.as_deref(), Some("board games"));

    let segment = hit.segment.as_ref().unwrap();
    assert_eq!(segment.call_type, SegmentCallType::Track);
    assert_eq!(
        segment.message_id,
        "ajs-next-1731324567890-4e5d1a2b-8c9f-4f3e-a1b2-c3d4e5f60718"
    );
    assert!(!segment.message_id_generated);
    assert_eq!(
        segment.integrations,
        Some(json!({"All": true, "Mixpanel": false}))
    );
    assert_eq!(
        segment.context.as_ref().unwrap()["library"]["name"],
        json!("analytics.js")
    );
    assert_eq!(segment.timestamp, Some(at("2024-11-11T11:29:27.890Z")));
    assert!(
        !serde_json::to_string(hit).unwrap().contains("abc123"),
        "write key not stored"
    );
}

#[test]
fn write_key_from_http_basic_auth() {
    assert_eq!(
        write_key_from_basic_auth("Basic YWJjMTIzOg==").as_deref(),
        Some("abc123")
    );
    assert_eq!(
        write_key_from_basic_auth("basic  YWJjMTIzOg== ").as_deref(),
        Some("abc123")
    );
    assert_eq!(
        write_key_from_basic_auth("Basic YWJjMTIzOg").as_deref(),
        Some("abc123")
    );
    assert_eq!(
        write_key_from_basic_auth("Basic YWJjMTIz").as_deref(),
        Some("abc123")
    );
    assert_eq!(write_key_from_basic_auth("Basic Og=="), None, "empty user");
    assert_eq!(write_key_from_basic_auth("Basic ***"), None);
    assert_eq!(write_key_from_basic_auth("Bearer YWJjMTIzOg=="), None);
    assert_eq!(write_key_from_basic_auth("Basic"), None);

    let mut call = order_completed();
    call.as_object_mut().unwrap().remove("writeKey");
    let raw = request("/v1/track", &call).with_header("Authorization", "Basic YWJjMTIzOg==");
    assert_eq!(parse(&raw).unwrap().write_key, "abc123");
    let err = parse(&request("/v1/track", &call)).unwrap_err();
    assert_eq!(err, ParseError::MissingWriteKey);
    assert_eq!(err.code(), "missing_write_key");
}

#[test]
fn identify_page_screen_group_alias() {
    let identify = json!({"userId": 97980, "traits": {"name": "Peter Gibbons", "plan": "premium",
        "logins": 5, "address": {"city": "Austin"}}, "writeKey": "k"});
    let hit = &parse(&request("/v1/identify", &identify)).unwrap().hits[0];
    assert_eq!(hit.event_name, "identify");
    assert_eq!(
        hit.user_id.as_deref(),
        Some("97980"),
        "numeric ids become text"
    );
    assert_eq!(hit.client_id, None);
    assert_eq!(hit.user_properties["logins"], ParamValue::Number(5.into()));
    assert_eq!(
        hit.user_properties["address"],
        ParamValue::Json(json!({"city": "Austin"}))
    );
    assert_eq!(
        hit.event_time, hit.received_at,
        "no client time: we stamp it"
    );
    assert_eq!(
        hit.device.ip,
        Some("192.0.2.44".parse().unwrap()),
        "request ip fallback"
    );
    assert!(hit.segment.as_ref().unwrap().message_id_generated);

    let page = json!({"anonymousId": "a1", "name": "Pricing", "category": "Docs",
        "properties": {"title": "Pricing – Example", "url": "https://example.com/pricing", "path": "/pricing"},
        "context": {"page": {"url": "https://example.com/old", "referrer": "https://news.ycombinator.com/"}},
        "writeKey": "k"});
    let hit = &parse(&request("/v1/page", &page)).unwrap().hits[0];
    assert_eq!(hit.event_name, "page_view");
    assert_eq!(
        hit.page.location.as_deref(),
        Some("https://example.com/pricing")
    );
    assert_eq!(
        hit.page.referrer.as_deref(),
        Some("https://news.ycombinator.com/")
    );
    assert_eq!(hit.page.title.as_deref(), Some("Pricing – Example"));
    assert_eq!(hit.params["path"], ParamValue::String("/pricing".into()));
    let segment = hit.segment.as_ref().unwrap();
    assert_eq!(
        (segment.name.as_deref(), segment.category.as_deref()),
        (Some("Pricing"), Some("Docs"))
    );

    let screen = json!({"userId": "u1", "name": "Home", "writeKey": "k"});
    let hit = &parse(&request("/v1/s", &screen)).unwrap().hits[0];
    assert_eq!(hit.event_name, "screen_view");

    let group = json!({"userId": "u1", "groupId": "0e8c78ea9d97a7b8185e8632",
        "traits": {"name": "Initech", "employees": 329}, "writeKey": "k"});
    let hit = &parse(&request("/v1/group", &group)).unwrap().hits[0];
    let segment = hit.segment.as_ref().unwrap();
    assert_eq!(
        segment.group_id.as_deref(),
        Some("0e8c78ea9d97a7b8185e8632")
    );
    assert_eq!(
        segment.group_traits,
        Some(json!({"name": "Initech", "employees": 329}))
    );
    assert!(
        hit.user_properties.is_empty(),
        "group traits are not the user's"
    );

    let alias =
        json!({"previousId": "39239-239239-239239-23923", "userId": "507f191e81", "writeKey": "k"});
    let hit = &parse(&request("/v1/alias", &alias)).unwrap().hits[0];
    assert_eq!(hit.event_name, "alias");
    assert_eq!(
        hit.segment.as_ref().unwrap().previous_id.as_deref(),
        Some("39239-239239-239239-23923")
    );
}

#[test]
fn required_fields_per_call() {
    let cases = [
        (
            "/v1/track",
            json!({"anonymousId": "a", "writeKey": "k"}),
            "event",
        ),
        (
            "/v1/track",
            json!({"event": "E", "writeKey": "k"}),
            "userId or anonymousId",
        ),
        (
            "/v1/identify",
            json!({"anonymousId": "", "userId": null, "writeKey": "k"}),
            "userId or anonymousId",
        ),
        (
            "/v1/group",
            json!({"userId": "u", "writeKey": "k"}),
            "groupId",
        ),
        (
            "/v1/alias",
            json!({"userId": "u", "writeKey": "k"}),
            "previousId",
        ),
        (
            "/v1/alias",
            json!({"anonymousId": "a", "previousId": "p", "writeKey": "k"}),
            "userId",
        ),
        ("/v1/batch", json!({"writeKey": "k"}), "batch"),
    ];
    for (path, body, missing) in cases {
        let err = parse(&request(path, &body)).unwrap_err();
        assert_eq!(err.code(), "missing_parameter", "{path} {body}");
        assert_eq!(err.parameter(), Some(missing), "{path} {body}");
    }
}

#[test]
fn batch_merges_shared_context_and_needs_types() {
    // analytics-next's batching dispatcher: writeKey and sentAt once, at the top.
    let batch = json!({
        "writeKey": "abc123",
        "sentAt": "2024-11-11T11:29:31.000Z",
        "context": {"library": {"name": "analytics-node", "version": "2.1.0"}, "locale": "de-DE"},
        "integrations": {"All": false, "Amplitude": true},
        "batch": [
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"},
             "timestamp": "2024-11-11T11:29:21.000Z"},
            {"type": "track", "userId": "u1", "event": "Signed Up",
             "context": {"locale": "fr-FR"}, "integrations": {"Amplitude": false},
             "timestamp": "2024-11-11T11:29:26.000Z", "messageId": "m-2"}
        ]
    });
    let parsed = parse(&request("/v1/batch", &batch)).unwrap();
    assert_eq!(parsed.write_key, "abc123");
    let [identify, track] = &parsed.hits[..] else {
        panic!()
    };
    // sentAt is 1 s ahead of our clock: both events move back by 1 s.
    assert_eq!(identify.event_time, at("2024-11-11T11:29:20Z"));
    assert_eq!(track.event_time, at("2024-11-11T11:29:25Z"));
    assert_eq!(identify.device.language.as_deref(), Some("de-DE"));
    assert_eq!(
        track.device.language.as_deref(),
        Some("fr-FR"),
        "the call's context wins"
    );
    let context = track.segment.as_ref().unwrap().context.clone().unwrap();
    assert_eq!(context["library"]["name"], json!("analytics-node"));
    assert_eq!(
        track.segment.as_ref().unwrap().integrations,
        Some(json!({"All": false, "Amplitude": false}))
    );
    assert_eq!(
        identify.segment.as_ref().unwrap().sent_at,
        Some(at("2024-11-11T11:29:31Z"))
    );

    let mut broken = batch.clone();
    broken["batch"][1].as_object_mut().unwrap().remove("type");
    assert_eq!(
        parse(&request("/v1/b", &broken)).unwrap_err(),
        ParseError::missing("type", Some(1))
    );
    broken["batch"][1]["type"] = json!("purchase");
    let err = parse(&request("/v1/batch", &broken)).unwrap_err();
    assert_eq!(
        (err.code(), err.parameter()),
        ("invalid_parameter", Some("type"))
    );
    broken["batch"][1] = json!("not an object");
    assert_eq!(
        parse(&request("/v1/batch", &broken)).unwrap_err().code(),
        "invalid_parameter"
    );
    let empty = json!({"writeKey": "k", "batch": []});
    assert!(
        parse(&request("/v1/batch", &empty))
            .unwrap()
            .hits
            .is_empty()
    );
}

#[test]
fn size_limits_are_distinct_errors() {
    let mut call = order_completed();
    call["properties"]["blob"] = json!("x".repeat(MAX_CALL_BYTES));
    let err = parse(&request("/v1/track", &call)).unwrap_err();
    assert!(
        matches!(err, ParseError::CallTooLarge { event: None, .. }),
        "{err}"
    );
    assert_eq!(err.code(), "call_too_large");

    // The same call inside a batch is refused by index.
    let batch = json!({"writeKey": "k", "batch": [order_completed(), call]});
    let err = parse(&request("/v1/batch", &batch)).unwrap_err();
    assert!(
        matches!(err, ParseError::CallTooLarge { event: Some(1), .. }),
        "{err}"
    );

    // Many calls under 32 KB each, over 500 KB together.
    let mut small = order_completed();
    small["properties"]["blob"] = json!("x".repeat(20 * 1024));
    let batch = json!({"writeKey": "k", "batch": vec![small; 26]});
    let err = parse(&request("/v1/batch", &batch)).unwrap_err();
    assert_eq!(err.code(), "batch_too_large");
    assert!(err.to_string().contains("at most 512000"), "{err}");
}

#[test]
fn bad_requests() {
    let err = parse(&raw_request("/v1/track", b"{\"type\":".to_vec())).unwrap_err();
    assert_eq!(err.code(), "invalid_json");
    let err = parse(&raw_request("/v1/track", b"[]".to_vec())).unwrap_err();
    assert_eq!(err.code(), "invalid_json");
    let err = parse(&request("/v1/purchase", &order_completed())).unwrap_err();
    assert_eq!(err.code(), "unknown_endpoint");
    let mut get = request("/v1/track", &order_completed());
    get.method = "GET".into();
    assert_eq!(parse(&get).unwrap_err().code(), "method_not_allowed");
}

#[test]
fn endpoints_by_path() {
    use SegmentCallType::*;
    let cases = [
        ("/v1/track", Some(SegmentEndpoint::Call(Track))),
        ("/v1/t", Some(SegmentEndpoint::Call(Track))),
        ("/v1/p/", Some(SegmentEndpoint::Call(Page))),
        ("/v1/i", Some(SegmentEndpoint::Call(Identify))),
        ("/v1/g", Some(SegmentEndpoint::Call(Group))),
        ("/v1/a", Some(SegmentEndpoint::Call(Alias))),
        ("/v1/batch", Some(SegmentEndpoint::Batch)),
        ("/v1/b", Some(SegmentEndpoint::Batch)),
        ("/v1/x", None),
        ("", None),
    ];
    for (path, expected) in cases {
        assert_eq!(SegmentEndpoint::from_path(path), expected, "{path}");
    }
}

#[test]
fn bad_timestamps_are_kept_verbatim_and_ignored() {
    let call = json!({"anonymousId": "a", "event": "E", "timestamp": "yesterday",
        "sentAt": 12, "version": 2, "writeKey": "k"});
    let hit = &parse(&request("/v1/track", &call)).unwrap().hits[0];
    assert_eq!(hit.event_time, hit.received_at);
    assert_eq!(hit.extra["timestamp"], json!("yesterday"));
    assert_eq!(hit.extra["sentAt"], json!(12));
    assert_eq!(hit.extra["version"], json!(2));
}

#[test]
fn arbitrary_input_never_panics() {
    let fragments = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"batch\"",
        "\"type\"",
        "\"track\"",
        "\"userId\"",
        "\"u\"",
        "\"context\"",
        "\"properties\"",
        "\"products\"",
        "\"timestamp\"",
        "\"sentAt\"",
        "\"2024-11-11T11:29:31Z\"",
        "\"+999999-01-01T00:00:00Z\"",
        "1e308",
        "null",
        "\"writeKey\"",
    ];
    let mut state: u64 = 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for path in ["/v1/track", "/v1/batch", "/v1/alias"] {
        for _ in 0..1_500 {
            let len = (next() % 40) as usize;
            let body: String = (0..len)
                .map(|_| fragments[(next() % fragments.len() as u64) as usize])
                .collect();
            let _ = parse(&raw_request(path, body.into_bytes()));
        }
    }
    // The widest times RFC 3339 can express must not overflow the skew arithmetic.
    let call = json!({"anonymousId": "a", "event": "E", "writeKey": "k",
        "originalTimestamp": "0000-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"});
    assert!(parse(&request("/v1/track", &call)).is_ok());
}
