use platform::Timestamp;
use serde_json::{Value, json};

use super::*;
use ValidationCode::*;

fn check_with_query(query: &str, body: &str) -> ValidationResponse {
    let raw = RawRequest::new("POST", "/debug/mp/collect", query, Timestamp::now())
        .with_body(body.as_bytes().to_vec());
    validate(&raw)
}

fn check(body: Value) -> ValidationResponse {
    check_with_query("measurement_id=G-8XK2T5PQ1M", &body.to_string())
}

/// The codes of the messages, in order.
fn codes(response: &ValidationResponse) -> Vec<(String, ValidationCode)> {
    response
        .validation_messages
        .iter()
        .map(|m| (m.field_path.clone(), m.validation_code))
        .collect()
}

fn event(name: &str, params: Value) -> Value {
    json!({"client_id": "123.456", "events": [{"name": name, "params": params}]})
}

#[test]
fn a_valid_request_has_no_messages_in_ga4_json_shape() {
    // PROTOCOLS.md's example, moved into the 72 h window (as written it is from 2023).
    let recent = Timestamp::now().as_datetime().timestamp_micros() - 3_600_000_000;
    let body = super::super::tests::EXAMPLE.replace("1700000000000000", &recent.to_string());
    // The debug endpoint checks neither measurement_id nor api_secret.
    let response = check_with_query("", &body);
    assert!(response.is_valid(), "{response:?}");
    let stale = check_with_query("", super::super::tests::EXAMPLE);
    assert_eq!(
        codes(&stale),
        [("timestamp_micros".to_owned(), ValueOutOfBounds)]
    );
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({"validationMessages": []})
    );
}

#[test]
fn bad_event_name_matches_googles_message() {
    let response = check(event("_badEventName", json!({})));
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({"validationMessages": [{
            "fieldPath": "events",
            "description": "Event at index: [0] has invalid name [_badEventName]. Names must start with an alphabetic character.",
            "validationCode": "NAME_INVALID"
        }]})
    );
    let back: ValidationResponse =
        serde_json::from_value(serde_json::to_value(&response).unwrap()).unwrap();
    assert_eq!(back, response);
}

#[test]
fn event_name_rules() {
    let cases = [
        ("add-to-cart", Some(NameInvalid)),
        ("1st_event", Some(NameInvalid)),
        ("événement", Some(NameInvalid)),
        (&*"a".repeat(41), Some(NameInvalid)),
        (&*"a".repeat(40), None),
        ("session_start", Some(NameReserved)),
        ("first_visit", Some(NameReserved)),
        ("app_remove", Some(NameReserved)),
        ("google_thing", Some(NameReserved)),
        ("ga_custom", Some(NameReserved)),
        ("firebase_x", Some(NameReserved)),
        ("purchase", None),
        ("Custom_Event_2", None),
    ];
    for (name, expected) in cases {
        let response = check(event(name, json!({})));
        let got = response
            .validation_messages
            .first()
            .map(|m| m.validation_code);
        assert_eq!(got, expected, "{name}: {response:?}");
    }
}

#[test]
fn parameter_rules() {
    let long = "v".repeat(101);
    let response = check(event(
        "e",
        json!({"ok": "v".repeat(100), "too_long": long, "ga_id": "x", "firebase_conversion": 1,
               "bad-name": 1, "page_location": format!("https://example.com/{}", "p".repeat(500)),
               "page_title": "t".repeat(301)}),
    ));
    let got = codes(&response);
    let path = "events.params".to_owned();
    // `json!` objects iterate in key order.
    assert_eq!(
        got,
        [
            (path.clone(), NameInvalid),      // bad-name
            (path.clone(), NameReserved),     // firebase_conversion
            (path.clone(), NameReserved),     // ga_id
            (path.clone(), ValueOutOfBounds), // page_title over 300
            (path, ValueOutOfBounds),         // too_long
        ],
        "{response:#?}"
    );
    assert!(
        response.validation_messages[4]
            .description
            .contains("[too_long]")
    );
}

#[test]
fn duplicated_parameters_are_reported_once() {
    let body = r#"{"client_id":"1.2","events":[{"name":"e","params":{"a":1,"b":2,"a":3,"a":4}}]}"#;
    let response = check_with_query("measurement_id=G-1", body);
    assert_eq!(
        codes(&response),
        [("events.params".to_owned(), NameDuplicated)]
    );
    assert!(response.validation_messages[0].description.contains("[a]"));
}

#[test]
fn entity_limits() {
    let events: Vec<_> = (0..26).map(|i| json!({"name": format!("e{i}")})).collect();
    let response = check(json!({"client_id": "1.2", "events": events}));
    assert_eq!(
        codes(&response),
        [("events".to_owned(), ExceededMaxEntities)]
    );

    let params: serde_json::Map<_, _> = (0..26).map(|i| (format!("p{i}"), json!(i))).collect();
    let response = check(event("e", Value::Object(params)));
    assert_eq!(
        codes(&response),
        [("events.params".to_owned(), ExceededMaxEntities)]
    );

    let properties: serde_json::Map<_, _> = (0..26)
        .map(|i| (format!("up{i}"), json!({"value": i})))
        .collect();
    let response = check(json!({"client_id": "1.2", "user_properties": properties,
        "events": [{"name": "e"}]}));
    assert_eq!(
        codes(&response),
        [("user_properties".to_owned(), ExceededMaxEntities)]
    );

    let items: Vec<_> = (0..201)
        .map(|i| json!({"item_id": format!("SKU{i}")}))
        .collect();
    let response = check(event("purchase", json!({"items": items})));
    assert_eq!(
        codes(&response),
        [("events.params.items".to_owned(), ExceededMaxEntities)]
    );
}

#[test]
fn user_property_rules() {
    let response = check(json!({"client_id": "1.2", "events": [{"name": "e"}],
    "user_properties": {
        "plan": {"value": "pro"},
        "a_very_long_property_name": {"value": "x"},
        "tier": {"value": "x".repeat(37)},
        "user_id": {"value": "u"},
        "no_value": {"set_timestamp_micros": 1},
        "numeric": {"value": 123456}
    }}));
    let path = "user_properties".to_owned();
    assert_eq!(
        codes(&response),
        [
            (path.clone(), NameInvalid),   // a_very_long_property_name: 25 characters
            (path.clone(), ValueRequired), // no_value
            (path.clone(), ValueOutOfBounds), // tier: 37 characters
            (path, NameReserved),          // user_id
        ],
        "{response:#?}"
    );
}

#[test]
fn identity_is_required_per_stream_kind() {
    let response = check(json!({"events": [{"name": "e"}]}));
    assert_eq!(codes(&response), [("client_id".to_owned(), ValueRequired)]);
    assert_eq!(
        response.validation_messages[0].description,
        "Measurement requires a client_id."
    );
    let response = check(json!({"client_id": 123, "events": [{"name": "e"}]}));
    assert_eq!(codes(&response), [("client_id".to_owned(), ValueInvalid)]);
    let response = check_with_query(
        "firebase_app_id=1:1:android:abc",
        r#"{"client_id":"1.2","events":[{"name":"e"}]}"#,
    );
    assert_eq!(
        codes(&response),
        [("app_instance_id".to_owned(), ValueRequired)]
    );
}

#[test]
fn request_level_problems() {
    let response = check_with_query("", "{not json");
    assert_eq!(codes(&response), [(String::new(), ValueInvalid)]);
    let big = format!(
        r#"{{"client_id":"1.2","x":"{}"}}"#,
        "x".repeat(crate::mp::MAX_BODY_BYTES)
    );
    let response = check_with_query("", &big);
    assert_eq!(codes(&response), [(String::new(), ValueOutOfBounds)]);

    let response = check(json!({"client_id": "1.2"}));
    assert_eq!(codes(&response), [("events".to_owned(), ValueRequired)]);
    let response = check(json!({"client_id": "1.2", "events": [{"params": {}}, 5,
        {"name": 7}, {"name": "e", "params": "x"}]}));
    assert_eq!(
        codes(&response),
        [
            ("events".to_owned(), ValueRequired),
            ("events".to_owned(), ValueInvalid),
            ("events".to_owned(), ValueInvalid),
            ("events.params".to_owned(), ValueInvalid),
        ]
    );
}

#[test]
fn timestamp_consent_user_id_and_items() {
    let old = Timestamp::now().as_datetime().timestamp_micros() - 73 * 3_600_000_000;
    let recent = Timestamp::now().as_datetime().timestamp_micros() - 71 * 3_600_000_000;
    let response =
        check(json!({"client_id": "1.2", "timestamp_micros": old, "events": [{"name": "e"}]}));
    assert_eq!(
        codes(&response),
        [("timestamp_micros".to_owned(), ValueOutOfBounds)]
    );
    let response =
        check(json!({"client_id": "1.2", "timestamp_micros": recent, "events": [{"name": "e"}]}));
    assert!(response.is_valid());
    let response =
        check(json!({"client_id": "1.2", "timestamp_micros": 1.5, "events": [{"name": "e"}]}));
    assert_eq!(
        codes(&response),
        [("timestamp_micros".to_owned(), ValueInvalid)]
    );

    let response = check(json!({"client_id": "1.2", "user_id": 42,
        "consent": {"ad_user_data": "YES", "ad_personalization": "DENIED"},
        "events": [{"name": "purchase", "params": {"items": [{"price": 1}, "SKU", {"item_name": "n"}]}}]}));
    assert_eq!(
        codes(&response),
        [
            ("user_id".to_owned(), ValueInvalid),
            ("consent.ad_user_data".to_owned(), ValueInvalid),
            ("events.params.items".to_owned(), ValueRequired),
            ("events.params.items".to_owned(), ValueInvalid),
        ]
    );
}
