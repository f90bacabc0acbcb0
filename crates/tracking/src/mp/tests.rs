use platform::Timestamp;
use serde_json::{Number, json};

use super::*;
use crate::hit::ConsentState::{Denied, Granted};

const QUERY: &str = "measurement_id=G-8XK2T5PQ1M&api_secret=Zx9_secret-Value";

/// The request body of PROTOCOLS.md §1.2, verbatim.
pub(super) const EXAMPLE: &str = r#"{"client_id":"123.456","user_id":"u1","timestamp_micros":1700000000000000,
 "user_properties":{"plan":{"value":"pro"}},
 "consent":{"ad_user_data":"GRANTED","ad_personalization":"DENIED"},
 "events":[{"name":"purchase","params":{"session_id":"1700000000","engagement_time_msec":100,
   "currency":"EUR","value":12.5,"transaction_id":"T1","items":[{"item_id":"SKU1","price":12.5,"quantity":1}]}}]}"#;

fn request(query: &str, body: &str) -> RawRequest {
    RawRequest::new("POST", "/mp/collect", query, Timestamp::now())
        .with_header("Content-Type", "application/json")
        .with_header("User-Agent", "Python/3.12 aiohttp/3.9")
        .with_body(body.as_bytes().to_vec())
        .with_client_ip("198.51.100.20".parse().unwrap())
}

fn parse_body(body: &str) -> Result<MpRequest, ParseError> {
    parse(&request(QUERY, body))
}

#[test]
fn parses_the_documented_example() {
    let request = parse_body(EXAMPLE).unwrap();
    assert_eq!(
        request.stream,
        MpStream::Web {
            measurement_id: "G-8XK2T5PQ1M".into()
        }
    );
    assert_eq!(request.api_secret.as_deref(), Some("Zx9_secret-Value"));
    assert_eq!(request.hits.len(), 1);
    let hit = &request.hits[0];
    assert_eq!(hit.protocol, Protocol::MeasurementProtocol);
    assert_eq!(hit.measurement_id.as_deref(), Some("G-8XK2T5PQ1M"));
    assert_eq!(hit.event_name, "purchase");
    assert_eq!(hit.client_id.as_deref(), Some("123.456"));
    assert_eq!(hit.user_id.as_deref(), Some("u1"));
    assert_eq!(hit.event_time.to_rfc3339(), "2023-11-14T22:13:20.000000Z");
    assert_eq!(hit.session.id.as_deref(), Some("1700000000"));
    assert_eq!(hit.engagement_time_ms, Some(100));
    assert_eq!(hit.currency.as_deref(), Some("EUR"));
    assert_eq!(
        hit.user_properties["plan"],
        ParamValue::String("pro".into())
    );
    assert_eq!(hit.consent.ad_user_data, Some(Granted));
    assert_eq!(hit.consent.ad_personalization, Some(Denied));
    assert!(!hit.extra.contains_key("consent"), "fully modelled");
    assert_eq!(
        hit.params["value"],
        ParamValue::Number(Number::from_f64(12.5).unwrap())
    );
    assert_eq!(
        hit.params["transaction_id"],
        ParamValue::String("T1".into())
    );
    for moved in ["session_id", "engagement_time_msec", "currency", "items"] {
        assert!(!hit.params.contains_key(moved), "{moved} has its own field");
    }
    assert_eq!(hit.items.len(), 1);
    assert_eq!(hit.items[0].item_id.as_deref(), Some("SKU1"));
    assert_eq!(hit.items[0].quantity, Some(1.into()));
    // The sender is a server: its address and user agent say nothing about the user.
    assert_eq!(hit.device.ip, None);
    assert_eq!(hit.device.user_agent, None);
}

#[test]
fn several_events_share_request_fields_but_not_ids() {
    let body = json!({
        "client_id": "1360384851.1661821242",
        "non_personalized_ads": true,
        "validation_behavior": "ENFORCE_RECOMMENDATIONS",
        "user_location": {"city": "Mountain View", "region_id": "US-CA", "country_id": "US"},
        "device": {"category": "mobile", "language": "en", "screen_resolution": "1280x2856",
                   "operating_system": "Android", "operating_system_version": "14",
                   "model": "Pixel 9 Pro", "brand": "Google", "browser": "Chrome"},
        "events": [
            {"name": "login", "params": {"method": "Google", "session_id": 1700000123,
              "debug_mode": true, "page_location": "https://App.Example.com/login?next=%2F",
              "page_title": "Log in", "logged_in": true, "tags": ["a", "b"]}},
            {"name": "sign_up", "params": {"method": "email", "engagement_time_msec": "250"}}
        ]
    });
    let request = parse_body(&body.to_string()).unwrap();
    let [login, sign_up] = &request.hits[..] else {
        panic!("two hits expected");
    };
    assert_ne!(login.id, sign_up.id);
    for hit in [login, sign_up] {
        assert_eq!(hit.consent.non_personalized_ads, Some(true));
        assert_eq!(
            hit.extra["validation_behavior"],
            json!("ENFORCE_RECOMMENDATIONS")
        );
        assert_eq!(hit.extra["user_location"]["city"], json!("Mountain View"));
        assert_eq!(hit.extra["device"]["browser"], json!("Chrome"));
        assert_eq!(hit.device.category.as_deref(), Some("mobile"));
        assert_eq!(hit.device.screen_resolution.as_deref(), Some("1280x2856"));
        assert_eq!(hit.device.os_name.as_deref(), Some("Android"));
        assert_eq!(hit.device.manufacturer.as_deref(), Some("Google"));
        assert_eq!(hit.event_time, hit.received_at, "no timestamp_micros");
    }
    assert_eq!(login.session.id.as_deref(), Some("1700000123"));
    assert!(login.flags.debug);
    assert_eq!(login.page.hostname.as_deref(), Some("app.example.com"));
    assert_eq!(login.page.title.as_deref(), Some("Log in"));
    assert_eq!(login.params["logged_in"], ParamValue::Json(json!(true)));
    assert_eq!(login.params["tags"], ParamValue::Json(json!(["a", "b"])));
    assert_eq!(sign_up.engagement_time_ms, Some(250));
    assert_eq!(sign_up.session.id, None);
    assert!(!sign_up.flags.debug);
}

#[test]
fn app_streams_use_app_instance_id() {
    let query = "firebase_app_id=1:1234567890:android:321abc456def7890&api_secret=s";
    let body = r#"{"app_instance_id":"cbd7e6a6f2b04a1d8c6bbf2a5e1a2b3c","events":[{"name":"level_up","params":{"level":5}}]}"#;
    let parsed = parse(&request(query, body)).unwrap();
    assert!(matches!(parsed.stream, MpStream::App { .. }));
    let hit = &parsed.hits[0];
    assert_eq!(
        hit.firebase_app_id.as_deref(),
        Some("1:1234567890:android:321abc456def7890")
    );
    assert_eq!(hit.measurement_id, None);
    assert_eq!(
        hit.client_id.as_deref(),
        Some("cbd7e6a6f2b04a1d8c6bbf2a5e1a2b3c")
    );
    let err = parse(&request(
        query,
        r#"{"client_id":"1.2","events":[{"name":"e"}]}"#,
    ))
    .unwrap_err();
    assert_eq!(err, ParseError::missing("app_instance_id", None));
}

#[test]
fn timestamps_in_the_future_become_the_receive_time() {
    let future = Timestamp::now().as_datetime().timestamp_micros() + 3_600_000_000;
    let body =
        format!(r#"{{"client_id":"1.2","timestamp_micros":{future},"events":[{{"name":"e"}}]}}"#);
    let hit = &parse_body(&body).unwrap().hits[0];
    assert_eq!(hit.event_time, hit.received_at);

    let body = r#"{"client_id":"1.2","timestamp_micros":"yesterday","events":[{"name":"e"}]}"#;
    let hit = &parse_body(body).unwrap().hits[0];
    assert_eq!(hit.event_time, hit.received_at);
    assert_eq!(hit.extra["timestamp_micros"], json!("yesterday"));

    // Per-event time overrides the request's.
    let body = r#"{"client_id":"1.2","timestamp_micros":1700000000000000,
        "events":[{"name":"a"},{"name":"b","timestamp_micros":"1700000001000000"}]}"#;
    let hits = parse_body(body).unwrap().hits;
    assert_eq!(
        hits[0].event_time.to_rfc3339(),
        "2023-11-14T22:13:20.000000Z"
    );
    assert_eq!(
        hits[1].event_time.to_rfc3339(),
        "2023-11-14T22:13:21.000000Z"
    );
}

#[test]
fn unknown_consent_signals_and_odd_items_are_kept() {
    let body = r#"{"client_id":"1.2","consent":{"ad_user_data":"granted","ad_storage":"DENIED"},
        "events":[{"name":"e","params":{"items":["SKU1"],"a":1,"a":2}}]}"#;
    let hit = &parse_body(body).unwrap().hits[0];
    assert_eq!(hit.consent.ad_user_data, Some(Granted));
    assert_eq!(hit.extra["consent"]["ad_storage"], json!("DENIED"));
    assert!(hit.items.is_empty());
    assert_eq!(hit.params["items"], ParamValue::Json(json!(["SKU1"])));
    assert_eq!(
        hit.params["a"],
        ParamValue::Number(2.into()),
        "last duplicate wins"
    );
}

#[test]
fn structural_problems_are_errors() {
    let ok_events = r#""events":[{"name":"e"}]"#;
    let cases: Vec<(String, ParseError)> = vec![
        (
            "not json".into(),
            ParseError::InvalidJson {
                reason: String::new(),
            },
        ),
        (
            "[1,2]".into(),
            ParseError::InvalidJson {
                reason: String::new(),
            },
        ),
        (
            format!("{{{ok_events}}}"),
            ParseError::missing("client_id", None),
        ),
        (
            r#"{"client_id":""}"#.into(),
            ParseError::missing("client_id", None),
        ),
        (
            r#"{"client_id":"1.2"}"#.into(),
            ParseError::missing("events", None),
        ),
        (
            r#"{"client_id":"1.2","events":[]}"#.into(),
            ParseError::invalid("events", None, ""),
        ),
        (
            r#"{"client_id":"1.2","events":{}}"#.into(),
            ParseError::invalid("events", None, ""),
        ),
        (
            r#"{"client_id":"1.2","events":[{"name":"a"},{"params":{}}]}"#.into(),
            ParseError::missing("name", Some(1)),
        ),
        (
            r#"{"client_id":"1.2","events":[{"name":""}]}"#.into(),
            ParseError::missing("name", Some(0)),
        ),
        (
            r#"{"client_id":"1.2","events":[7]}"#.into(),
            ParseError::invalid("events", Some(0), ""),
        ),
        (
            r#"{"client_id":"1.2","events":[{"name":"e","params":[]}]}"#.into(),
            ParseError::invalid("params", Some(0), ""),
        ),
    ];
    for (body, expected) in cases {
        let err = parse_body(&body).unwrap_err();
        assert_eq!(err.code(), expected.code(), "{body}: {err}");
        assert_eq!(err.parameter(), expected.parameter(), "{body}: {err}");
        if let (
            ParseError::MissingParameter { event: a, .. }
            | ParseError::InvalidParameter { event: a, .. },
            ParseError::MissingParameter { event: b, .. }
            | ParseError::InvalidParameter { event: b, .. },
        ) = (&err, &expected)
        {
            assert_eq!(a, b, "{body}");
        }
    }
}

#[test]
fn request_limits_are_errors() {
    let events: Vec<_> = (0..=MAX_EVENTS).map(|_| json!({"name": "e"})).collect();
    let body = json!({"client_id": "1.2", "events": events}).to_string();
    assert_eq!(
        parse_body(&body).unwrap_err(),
        ParseError::TooManyEvents { count: 26, max: 25 }
    );
    let padding = "x".repeat(MAX_BODY_BYTES);
    let body = format!(r#"{{"client_id":"1.2","pad":"{padding}","events":[{{"name":"e"}}]}}"#);
    assert_eq!(parse_body(&body).unwrap_err().code(), "payload_too_large");

    let err = parse(&request("api_secret=s", EXAMPLE)).unwrap_err();
    assert_eq!(err, ParseError::missing("measurement_id", None));
    let mut get = request(QUERY, EXAMPLE);
    get.method = "GET".into();
    assert_eq!(parse(&get).unwrap_err().code(), "method_not_allowed");
}

#[test]
fn arbitrary_json_never_panics() {
    let fragments = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"events\"",
        "\"name\"",
        "\"params\"",
        "\"client_id\"",
        "\"items\"",
        "\"x\"",
        "1",
        "-1e400",
        "null",
        "true",
        "\"\u{FFFD}\"",
        "\"timestamp_micros\"",
        "99999999999999999999",
        "\"user_properties\"",
        "\"value\"",
        "\"consent\"",
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3_000 {
        let len = (next() % 40) as usize;
        let body: String = (0..len)
            .map(|_| fragments[(next() % fragments.len() as u64) as usize])
            .collect();
        let raw = request(QUERY, &body);
        let _ = parse(&raw);
        let _ = validate(&raw);
    }
}
