use platform::Timestamp;
use serde_json::{Number, json};

use super::*;
use crate::hit::ConsentState::{Denied, Granted};

/// Request-wide parameters as gtag.js puts them in the URL of a batched POST.
const QUERY: &str = "v=2&tid=G-8XK2T5PQ1M&gtm=45je4b20v9176854412za200&_p=1731324567890\
&gcs=G111&gcd=13l3l3l3l1&npa=0&dma=0&cid=1360384851.1661821242&ul=en-us&sr=1920x1080\
&uaa=x86&uab=64&uafvl=Chromium%3B130.0.6723.117%7CGoogle%2520Chrome%3B130.0.6723.117%7CNot%253FA_Brand%3B99.0.0.0\
&uamb=0&uam=&uap=Windows&uapv=15.0.0&uaw=0&are=1&frm=0&pscdl=noapi&_s=3&sid=1731324000&sct=5&seg=1\
&dl=https%3A%2F%2Fshop.example.com%2Fproducts%2Fblue-shirt%3Futm_source%3Dnewsletter%26utm_medium%3Demail\
&dr=https%3A%2F%2Fwww.google.com%2F&dt=Blue%20Shirt%20%E2%80%93%20Example%20Shop&tfd=5123";

/// Three events, one per line, as gtag batches them.
const BODY: &str = "en=view_item&_et=1200&cu=EUR&pr1=idSKU_12345~nmBlue%20Shirt~brExample~caApparel~c2Shirts~vaBlue~pr29.99~qt1~k0color~v0navy&ep.item_list_name=Related%20products&epn.value=29.99
en=scroll&_et=3400&epn.percent_scrolled=90
en=add_to_cart&_c=1&_s=4&up.plan=pro&upn.lifetime_orders=3&ep.method=button&cu=EUR&pr1=idSKU_12345~nmBlue%20Shirt~pr29.99~qt2&pr2=idSKU_777~nmSocks~pr4.5~qt3";

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36";

fn request(method: &str, query: &str, body: &[u8]) -> RawRequest {
    RawRequest::new(method, "/g/collect", query, Timestamp::now())
        .with_header("User-Agent", UA)
        .with_header("Content-Type", "text/plain;charset=UTF-8")
        .with_body(body.to_vec())
        .with_client_ip("203.0.113.7".parse().unwrap())
}

fn post(query: &str, body: &str) -> Result<Vec<Hit>, ParseError> {
    parse(&request("POST", query, body.as_bytes()))
}

fn get(query: &str) -> Result<Vec<Hit>, ParseError> {
    parse(&request("GET", query, b""))
}

fn text(value: &str) -> ParamValue {
    ParamValue::String(value.to_owned())
}

fn number(value: f64) -> ParamValue {
    ParamValue::Number(Number::from_f64(value).unwrap())
}

#[test]
fn batched_post_yields_one_hit_per_line_with_url_params_shared() {
    let raw = request("POST", QUERY, BODY.as_bytes());
    let hits = parse(&raw).unwrap();
    let names: Vec<_> = hits.iter().map(|h| h.event_name.as_str()).collect();
    assert_eq!(names, ["view_item", "scroll", "add_to_cart"]);

    for hit in &hits {
        assert_eq!(hit.protocol, Protocol::Ga4);
        assert_eq!(hit.measurement_id.as_deref(), Some("G-8XK2T5PQ1M"));
        assert_eq!(hit.client_id.as_deref(), Some("1360384851.1661821242"));
        assert_eq!(hit.event_time, raw.received_at, "gtag sends no event time");
        assert_eq!(hit.session.id.as_deref(), Some("1731324000"));
        assert_eq!(hit.session.number, Some(5));
        assert_eq!(hit.session.engaged, Some(true));
        assert_eq!(
            hit.page.location.as_deref(),
            Some(
                "https://shop.example.com/products/blue-shirt?utm_source=newsletter&utm_medium=email"
            )
        );
        assert_eq!(
            hit.page.referrer.as_deref(),
            Some("https://www.google.com/")
        );
        assert_eq!(hit.page.title.as_deref(), Some("Blue Shirt – Example Shop"));
        assert_eq!(hit.page.hostname.as_deref(), Some("shop.example.com"));
        assert_eq!(hit.consent.gcs.as_deref(), Some("G111"));
        assert_eq!(hit.consent.ad_storage, Some(Granted));
        assert_eq!(hit.consent.analytics_storage, Some(Granted));
        assert_eq!(hit.consent.gcd.as_deref(), Some("13l3l3l3l1"));
        assert_eq!(hit.consent.dma.as_deref(), Some("0"));
        assert_eq!(hit.consent.non_personalized_ads, Some(false));
        assert_eq!(hit.device.user_agent.as_deref(), Some(UA));
        assert_eq!(hit.device.ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(hit.device.language.as_deref(), Some("en-us"));
        assert_eq!(hit.device.screen_resolution.as_deref(), Some("1920x1080"));
        let hints = hit.device.client_hints.as_ref().unwrap();
        assert_eq!(hints.architecture.as_deref(), Some("x86"));
        assert_eq!(hints.platform.as_deref(), Some("Windows"));
        assert_eq!(hints.model, None, "`uam=` is empty on desktops");
        assert_eq!(hints.mobile, Some(false));
        assert_eq!(hints.wow64, Some(false));
        assert_eq!(
            hints.full_version_list.as_deref(),
            Some("Chromium;130.0.6723.117|Google%20Chrome;130.0.6723.117|Not%3FA_Brand;99.0.0.0")
        );
        for key in ["gtm", "_p", "are", "frm", "pscdl", "tfd"] {
            assert!(hit.extra.contains_key(key), "{key} kept verbatim");
        }
    }

    let view = &hits[0];
    assert_eq!(view.engagement_time_ms, Some(1200));
    assert_eq!(view.currency.as_deref(), Some("EUR"));
    assert_eq!(view.params["item_list_name"], text("Related products"));
    assert_eq!(view.params["value"], number(29.99));
    assert_eq!(view.items.len(), 1);
    assert_eq!(view.items[0].item_id.as_deref(), Some("SKU_12345"));
    assert_eq!(view.items[0].params["color"], text("navy"));
    assert_eq!(view.extra["_s"], json!("3"));
    assert!(!view.flags.conversion);

    let scroll = &hits[1];
    assert_eq!(
        scroll.params["percent_scrolled"],
        ParamValue::Number(90.into())
    );
    assert!(scroll.items.is_empty() && scroll.currency.is_none());

    let cart = &hits[2];
    assert!(cart.flags.conversion);
    assert_eq!(cart.extra["_s"], json!("4"), "the line overrides the URL");
    assert_eq!(cart.user_properties["plan"], text("pro"));
    assert_eq!(
        cart.user_properties["lifetime_orders"],
        ParamValue::Number(3.into())
    );
    let ids: Vec<_> = cart.items.iter().map(|i| i.item_id.as_deref()).collect();
    assert_eq!(ids, [Some("SKU_12345"), Some("SKU_777")]);
    assert_eq!(cart.items[0].quantity, Some(2.into()));

    let unique: std::collections::HashSet<_> = hits.iter().map(|h| h.id).collect();
    assert_eq!(unique.len(), 3);
}

#[test]
fn get_hit_is_one_event_with_flags_and_consent() {
    let hits = get(
        "v=2&tid=G-8XK2T5PQ1M&cid=98765.1731320000&uid=user-42&en=page_view&_fv=1&_ss=1&_nsi=1\
         &_dbg=1&gcs=G101&sid=1731320000&sct=1&seg=0&dl=https%3A%2F%2Fwww.example.org%2F\
         &dh=WWW.Example.org&_et=0",
    )
    .unwrap();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.event_name, "page_view");
    assert_eq!(hit.user_id.as_deref(), Some("user-42"));
    assert!(hit.flags.first_visit && hit.flags.session_start && hit.flags.debug);
    assert_eq!(hit.extra["_nsi"], json!("1"));
    assert_eq!(hit.consent.ad_storage, Some(Denied));
    assert_eq!(hit.consent.analytics_storage, Some(Granted));
    assert_eq!(hit.session.engaged, Some(false));
    assert_eq!(hit.page.hostname.as_deref(), Some("www.example.org"));
    assert_eq!(hit.engagement_time_ms, Some(0));
}

#[test]
fn empty_or_blank_body_means_the_url_is_the_event() {
    let query = "v=2&tid=G-ABC123&cid=1.2&en=page_view";
    for body in ["", "\n", "\r\n\r\n", "   \n\t\n"] {
        let hits = post(query, body).unwrap();
        assert_eq!(hits.len(), 1, "body {body:?}");
        assert_eq!(hits[0].event_name, "page_view");
    }
}

#[test]
fn trailing_newlines_crlf_and_blank_lines_are_skipped() {
    let hits = post(
        "v=2&tid=G-ABC123&cid=1.2",
        "en=first\r\n\r\nen=second&ep.k=v\r\n\n\nen=third\n",
    )
    .unwrap();
    let names: Vec<_> = hits.iter().map(|h| h.event_name.as_str()).collect();
    assert_eq!(names, ["first", "second", "third"]);
    assert_eq!(hits[1].params["k"], text("v"), "no stray \\r in values");
}

#[test]
fn repeated_parameters_last_one_wins() {
    let hits = post(
        "v=2&tid=G-ABC123&en=from_url&ep.a=url",
        "ep.a=1&ep.a=2&en=from_line",
    )
    .unwrap();
    assert_eq!(hits[0].event_name, "from_line");
    assert_eq!(hits[0].params["a"], text("2"));
}

#[test]
fn string_and_number_with_one_name_keeps_both() {
    let hits =
        get("v=2&tid=G-ABC123&en=e&ep.x=abc&epn.x=5&epn.bad=12abc&epn.nan=NaN&ep.=empty").unwrap();
    let hit = &hits[0];
    assert_eq!(hit.params["x"], text("abc"));
    assert_eq!(hit.extra["epn.x"], json!("5"));
    assert_eq!(hit.extra["epn.bad"], json!("12abc"));
    assert_eq!(hit.extra["epn.nan"], json!("NaN"));
    assert_eq!(hit.extra["ep."], json!("empty"));
    assert!(!hit.params.contains_key("bad"));
}

#[test]
fn items_are_ordered_by_index_and_out_of_range_ones_kept_verbatim() {
    let hits =
        get("v=2&tid=G-ABC123&en=purchase&pr3=idC&pr1=idA&pr0=idZ&pr201=idY&prx=idX&pr=1").unwrap();
    let ids: Vec<_> = hits[0]
        .items
        .iter()
        .map(|i| i.item_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["A", "C"]);
    for key in ["pr0", "pr201", "prx", "pr"] {
        assert!(hits[0].extra.contains_key(key), "{key}");
    }
}

#[test]
fn invalid_percent_sequences_and_bytes_decode_lossily() {
    let hits = post("v=2&tid=G-ABC123&dt=%FF%FEok&cid=%E2%82", "en=e").unwrap();
    assert_eq!(hits[0].page.title.as_deref(), Some("\u{FFFD}\u{FFFD}ok"));
    assert_eq!(hits[0].client_id.as_deref(), Some("\u{FFFD}"));
    let raw = request("POST", "v=2&tid=G-ABC123", b"en=e&ep.raw=\xff\xfe&ep.pct=%");
    let hits = parse(&raw).unwrap();
    assert_eq!(hits[0].params["raw"], text("\u{FFFD}\u{FFFD}"));
    assert_eq!(hits[0].params["pct"], text("%"));
}

#[test]
fn version_measurement_id_and_event_name_are_required() {
    let err = get("tid=G-ABC123&en=e").unwrap_err();
    assert_eq!(err, ParseError::missing("v", None));
    let err = get("v=1&tid=G-ABC123&en=e").unwrap_err();
    assert_eq!(err.code(), "unsupported_version");
    assert_eq!(
        err.to_string(),
        "unsupported protocol version `v=1` (only v=2 is accepted)"
    );
    let err = get("v=2&en=e").unwrap_err();
    assert_eq!(err, ParseError::missing("tid", None));
    let err = get("v=2&tid=UA-12345-1&en=e").unwrap_err();
    assert_eq!(err.code(), "invalid_parameter");
    assert_eq!(err.parameter(), Some("tid"));
    assert_eq!(
        get("v=2&tid=G-&en=e").unwrap_err().code(),
        "invalid_parameter"
    );
    assert_eq!(
        get("v=2&tid=g-abc123&en=e").unwrap_err().code(),
        "invalid_parameter"
    );
    let err = get("v=2&tid=G-ABC123&en=").unwrap_err();
    assert_eq!(err, ParseError::missing("en", None));
    // The second line has no event name: the error names its index.
    let err = post("v=2&tid=G-ABC123", "en=ok\nep.a=1\n").unwrap_err();
    assert_eq!(err, ParseError::missing("en", Some(1)));
    // A line may carry `v`, and it is checked too.
    let err = post("v=2&tid=G-ABC123", "en=ok&v=3").unwrap_err();
    assert_eq!(err.code(), "unsupported_version");
}

#[test]
fn limits_are_errors_not_panics() {
    let query = "v=2&tid=G-ABC123&cid=1.2";
    let fifty = "en=scroll\n".repeat(MAX_EVENTS);
    assert_eq!(post(query, &fifty).unwrap().len(), MAX_EVENTS);
    let err = post(query, &format!("{fifty}en=one_more")).unwrap_err();
    assert_eq!(
        err,
        ParseError::TooManyEvents {
            count: MAX_EVENTS + 1,
            max: MAX_EVENTS
        }
    );
    assert_eq!(err.code(), "too_many_events");

    let huge = format!("en=e&ep.blob={}", "x".repeat(MAX_LINE_BYTES));
    let err = post(query, &format!("en=ok\n{huge}")).unwrap_err();
    assert!(
        matches!(err, ParseError::LineTooLong { line: Some(1), .. }),
        "{err}"
    );
    let err = get(&format!(
        "{query}&en=e&ep.blob={}",
        "x".repeat(MAX_LINE_BYTES)
    ))
    .unwrap_err();
    assert!(
        matches!(err, ParseError::LineTooLong { line: None, .. }),
        "{err}"
    );
    assert_eq!(err.code(), "line_too_long");

    let big = "en=e\n".repeat(MAX_BODY_BYTES / 5 + 1);
    assert_eq!(post(query, &big).unwrap_err().code(), "payload_too_large");

    let err = parse(&request("PUT", query, b"")).unwrap_err();
    assert_eq!(err.code(), "method_not_allowed");
}

#[test]
fn a_get_body_is_ignored() {
    let hits = parse(&request(
        "GET",
        "v=2&tid=G-ABC123&en=page_view",
        b"en=a\nen=b",
    ))
    .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].event_name, "page_view");
}

#[test]
fn hits_survive_the_event_log_round_trip() {
    let hits = post(QUERY, BODY).unwrap();
    for hit in hits {
        let stored = serde_json::to_string(&hit).unwrap();
        let back: Hit = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, hit);
    }
}

/// Property-style: whatever bytes arrive, the parser answers with hits or an error.
#[test]
fn arbitrary_input_never_panics() {
    const ALPHABET: &[u8] = b"=&~%.\n\r+ epnupr123vtidcsG-_\xff\xc3\xa9";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*: deterministic, so a failure reproduces.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..2_000 {
        let len = (next() % 300) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        let query_len = (next() % 80) as usize;
        let tail: String = (0..query_len)
            .map(|_| char::from(ALPHABET[(next() % 30) as usize]))
            .collect();
        let query = format!("v=2&tid=G-ABC123&{tail}");
        agrees(&request("POST", &query, &body));
        agrees(&request("GET", &tail, &body));
    }
}

/// `check` says what `parse` would: the same error, or as many events with the same ids.
#[track_caller]
fn agrees(raw: &RawRequest) {
    match (parse(raw), check(raw)) {
        (Ok(hits), Ok(checked)) => {
            assert_eq!(checked.events, hits.len(), "{raw:?}");
            let mut ids: Vec<String> = Vec::new();
            for id in hits.iter().filter_map(|h| h.measurement_id.clone()) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            assert_eq!(checked.measurement_ids, ids, "{raw:?}");
        }
        (Err(parsed), Err(checked)) => assert_eq!(checked, parsed, "{raw:?}"),
        (parsed, checked) => panic!("parse {parsed:?} but check {checked:?} for {raw:?}"),
    }
}

#[test]
fn check_agrees_with_parse() {
    let cases: &[(&str, &str, &str)] = &[
        ("POST", QUERY, BODY),
        ("GET", QUERY, ""),
        ("GET", "tid=G-ABC123&en=e", ""),
        ("GET", "v=1&tid=G-ABC123&en=e", ""),
        ("GET", "v=2&en=e", ""),
        ("GET", "v=2&tid=UA-12345-1&en=e", ""),
        ("GET", "v=2&tid=G-ABC123&en=", ""),
        ("POST", "v=2&tid=G-ABC123", "en=ok\nep.a=1\n"),
        ("POST", "v=2&tid=G-ABC123", "en=ok&v=3"),
        // A line names another measurement id; one overrides its own `tid` again.
        (
            "POST",
            "v=2&tid=G-ABC123",
            "en=a\nen=b&tid=G-OTHER1\nen=c&tid=G-X&tid=G-ABC123",
        ),
        // Encoded keys are decoded before they count.
        ("GET", "%76=2&t%69d=G-ABC123&en=e", ""),
        ("GET", "v=2&tid=G-ABC123&e+n=x&en=a+b%20c", ""),
        ("POST", "v=2&tid=G-ABC123", "%65n=x&en\nen=y&&=&tid"),
        ("POST", "v=2&tid=G-ABC123&en=url", "\r\n  \n"),
        ("PUT", "v=2&tid=G-ABC123&en=e", ""),
    ];
    for (method, query, body) in cases {
        agrees(&request(method, query, body.as_bytes()));
    }
    // Bytes that are not UTF-8 decode lossily, in keys and values alike.
    agrees(&request(
        "POST",
        "v=2&tid=G-ABC123",
        b"en=\xff&\xff=1\nen=%ff&v=2&t\xffid=G-X",
    ));
    let checked = check(&request(
        "POST",
        "v=2&tid=G-ABC123",
        b"en=a\nen=b&tid=G-OTHER1",
    ))
    .unwrap();
    assert_eq!(checked.events, 2);
    assert_eq!(checked.measurement_ids, ["G-ABC123", "G-OTHER1"]);
}
