//! Meta Conversions API (PROTOCOLS.md §4): `POST {base}/{version}/{pixel_id}/events?access_token=…`
//! with `{"data":[ServerEvent…],"test_event_code"?}`.
//!
//! Meta refuses a whole request when one event is older than 7 days, so such events are split
//! off before sending and reported on their own. A 4xx on a batch of several events names no
//! event; the caller isolates the culprit by sending halves ([`Outcome::Rejected`] with an empty
//! `per_event`).

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Map, Value, json};

use super::normalize::meta;
use super::{
    Conversion, Endpoints, Outcome, SendReport, is_transient_status, read_response,
    transport_failure,
};

/// Meta's limit on an event's age.
pub const MAX_AGE_DAYS: i64 = 7;
/// Events per request (Meta accepts up to 1 000).
pub const MAX_BATCH: usize = 1000;

/// A Meta dataset (pixel) and its access token.
#[derive(Clone)]
pub struct MetaCredential {
    pub pixel_id: String,
    pub access_token: String,
    /// Events Manager → Test Events; only for validation requests.
    pub test_event_code: Option<String>,
}

/// Without the access token, like [`super::google_auth::GoogleCredential`]'s.
impl std::fmt::Debug for MetaCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCredential")
            .field("pixel_id", &self.pixel_id)
            .field("test_event_code", &self.test_event_code)
            .finish_non_exhaustive()
    }
}

/// One `ServerEvent`.
pub fn server_event(conversion: &Conversion) -> Value {
    let mut user = Map::new();
    let u = &conversion.user;
    let list = |values: Vec<String>| Value::Array(values.into_iter().map(Value::String).collect());
    let emails: Vec<String> = u
        .emails
        .iter()
        .filter_map(|e| meta::hash(e, meta::email))
        .collect();
    if !emails.is_empty() {
        user.insert("em".into(), list(emails));
    }
    let phones: Vec<String> = u
        .phones
        .iter()
        .filter_map(|p| meta::hash(p, meta::phone))
        .collect();
    if !phones.is_empty() {
        user.insert("ph".into(), list(phones));
    }
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            user.insert(key.to_owned(), Value::String(v));
        }
    };
    let hash = |raw: &Option<String>, f: fn(&str) -> Option<String>| {
        raw.as_deref().and_then(|r| meta::hash(r, f))
    };
    put("fn", hash(&u.first_name, meta::name));
    put("ln", hash(&u.last_name, meta::name));
    put("ct", hash(&u.city, meta::city));
    put("st", hash(&u.state, meta::state));
    put(
        "zp",
        u.zip
            .as_deref()
            .and_then(|z| meta::hash(z, |r| meta::zip(r, u.country.as_deref()))),
    );
    put("country", hash(&u.country, meta::country));
    put("ge", hash(&u.gender, meta::gender));
    put("db", hash(&u.date_of_birth, meta::date_of_birth));
    put("external_id", hash(&u.external_id, meta::external_id));
    // Never hashed.
    put("client_ip_address", u.client_ip.clone());
    put("client_user_agent", u.user_agent.clone());
    put("fbc", conversion.click_ids.fbc.clone());
    put("fbp", conversion.click_ids.fbp.clone());

    // `website` needs the page URL and the browser's user agent; anything else happened on
    // our side (a CRM outcome).
    let website = conversion.source_url.is_some() && u.user_agent.is_some();
    let mut event = json!({
        "event_name": conversion.event_name,
        "event_time": conversion.event_time.timestamp(),
        "event_id": conversion.event_id,
        "action_source": if website { "website" } else { "system_generated" },
        "user_data": Value::Object(user),
    });
    if website {
        event["event_source_url"] = json!(conversion.source_url);
    }
    let mut custom = Map::new();
    if let Some(value) = conversion.value {
        custom.insert("value".into(), json!(value));
    }
    if let Some(currency) = &conversion.currency {
        custom.insert("currency".into(), json!(currency.to_uppercase()));
    }
    if !custom.is_empty() {
        event["custom_data"] = Value::Object(custom);
    }
    event
}

/// The request body.
pub fn request_body(events: &[Conversion], test_event_code: Option<&str>) -> Value {
    let mut body = json!({ "data": events.iter().map(server_event).collect::<Vec<_>>() });
    if let Some(code) = test_event_code {
        body["test_event_code"] = json!(code);
    }
    body
}

/// Indices of events Meta would refuse for age (with the whole request).
pub fn too_old(events: &[Conversion], now: DateTime<Utc>) -> Vec<usize> {
    let limit = now - ChronoDuration::days(MAX_AGE_DAYS);
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event_time < limit)
        .map(|(i, _)| i)
        .collect()
}

/// A Meta client.
#[derive(Clone)]
pub struct MetaClient {
    http: reqwest::Client,
    base_url: String,
    version: String,
}

impl MetaClient {
    pub fn new(http: reqwest::Client, endpoints: &Endpoints) -> Self {
        Self {
            http,
            base_url: endpoints.meta_base_url.clone(),
            version: endpoints.meta_api_version.clone(),
        }
    }

    /// Sends `events`; with `validate`, as test events (the credential's `test_event_code`,
    /// else `TEST0000`), which Meta checks and shows in Test Events without counting them.
    pub async fn send(
        &self,
        credential: &MetaCredential,
        events: &[Conversion],
        validate: bool,
    ) -> SendReport {
        let path = format!("/{}/{}/events", self.version, credential.pixel_id);
        let old = too_old(events, Utc::now());
        let summary = |ids: Vec<&str>| json!({ "method": "POST", "path": path, "event_ids": ids, "test": validate });
        if !old.is_empty() {
            let ids = events.iter().map(|e| e.event_id.as_str()).collect();
            let per_event = old
                .into_iter()
                .map(|i| {
                    (
                        i,
                        format!("event_time is more than {MAX_AGE_DAYS} days old"),
                    )
                })
                .collect();
            return SendReport::refused_locally(
                summary(ids),
                "events older than 7 days are refused by Meta (with their whole request)".into(),
                per_event,
            );
        }
        let test_code = validate.then(|| {
            credential
                .test_event_code
                .clone()
                .unwrap_or_else(|| "TEST0000".to_owned())
        });
        let body = request_body(events, test_code.as_deref());
        let request = summary(events.iter().map(|e| e.event_id.as_str()).collect());
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .query(&[("access_token", credential.access_token.as_str())])
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(err) => return transport_failure(request, &err),
        };
        let (status, retry_after, text, json) = read_response(response).await;
        let outcome = if (200..300).contains(&status) {
            Outcome::Accepted
        } else if is_transient_status(status) || is_transient_error(json.as_ref()) {
            Outcome::Transient { retry_after }
        } else {
            let message = json
                .as_ref()
                .and_then(|j| j["error"]["message"].as_str())
                .unwrap_or("Meta refused the request")
                .to_owned();
            // A single event refused is that event's fault; a batch names no one.
            let per_event = if events.len() == 1 && !is_auth_error(status, json.as_ref()) {
                vec![(0, message.clone())]
            } else {
                Vec::new()
            };
            Outcome::Rejected { message, per_event }
        };
        SendReport {
            request,
            status: Some(status),
            response: text,
            outcome,
        }
    }
}

/// Graph errors flagged `is_transient`, or the throttling codes (4, 17, 32, 613).
fn is_transient_error(json: Option<&Value>) -> bool {
    let Some(error) = json.map(|j| &j["error"]) else {
        return false;
    };
    error["is_transient"].as_bool() == Some(true)
        || matches!(error["code"].as_i64(), Some(1 | 2 | 4 | 17 | 32 | 613))
}

/// Token or permission problems: the credential's fault, never one event's.
pub fn is_auth_error(status: u16, json: Option<&Value>) -> bool {
    status == 401
        || status == 403
        || json.is_some_and(|j| matches!(j["error"]["code"].as_i64(), Some(10 | 102 | 190 | 200)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversions::{ClickIds, UserData};
    use chrono::TimeZone;

    fn conversion() -> Conversion {
        Conversion {
            event_id: "hit_1".into(),
            event_name: "Purchase".into(),
            event_time: Utc
                .with_ymd_and_hms(2026, 11, 20, 10, 0, 0)
                .single()
                .expect("time"),
            value: Some(49.5),
            currency: Some("eur".into()),
            source_url: Some("https://shop.example.com/thanks".into()),
            user: UserData {
                emails: vec![" Person@Example.com".into()],
                phones: vec!["+44 844 412 4653".into()],
                first_name: Some("John".into()),
                country: Some("US".into()),
                zip: Some("94107-1234".into()),
                external_id: Some("ct_1".into()),
                client_ip: Some("203.0.113.9".into()),
                user_agent: Some("Mozilla/5.0".into()),
                ..UserData::default()
            },
            click_ids: ClickIds {
                fbc: Some("fb.1.1700000000000.AbC".into()),
                fbp: Some("fb.1.1700000000000.123".into()),
                ..ClickIds::default()
            },
            consent: Default::default(),
        }
    }

    #[test]
    fn server_event_hashes_what_meta_hashes_and_nothing_else() {
        let event = server_event(&conversion());
        assert_eq!(event["event_name"], "Purchase");
        assert_eq!(event["event_time"], 1_795_168_800);
        assert_eq!(event["event_id"], "hit_1");
        assert_eq!(event["action_source"], "website");
        assert_eq!(event["event_source_url"], "https://shop.example.com/thanks");
        let user = &event["user_data"];
        assert_eq!(
            user["em"][0],
            "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345"
        );
        assert_eq!(
            user["ph"][0],
            "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383"
        );
        assert_eq!(
            user["fn"],
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
        );
        assert_eq!(
            user["country"],
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
        assert_eq!(
            user["zp"],
            crate::conversions::normalize::sha256_hex("94107")
        );
        assert_eq!(
            user["external_id"],
            crate::conversions::normalize::sha256_hex("ct_1")
        );
        assert_eq!(user["client_ip_address"], "203.0.113.9");
        assert_eq!(user["client_user_agent"], "Mozilla/5.0");
        assert_eq!(user["fbc"], "fb.1.1700000000000.AbC");
        assert_eq!(user["fbp"], "fb.1.1700000000000.123");
        assert_eq!(
            event["custom_data"],
            json!({ "value": 49.5, "currency": "EUR" })
        );
    }

    #[test]
    fn crm_events_are_system_generated() {
        let mut c = conversion();
        c.source_url = None;
        let event = server_event(&c);
        assert_eq!(event["action_source"], "system_generated");
        assert!(event.get("event_source_url").is_none());
        let body = request_body(&[c], Some("TEST123"));
        assert_eq!(body["test_event_code"], "TEST123");
    }

    #[test]
    fn old_events_are_found() {
        let mut old = conversion();
        old.event_time = Utc::now() - ChronoDuration::days(8);
        let mut fresh = conversion();
        fresh.event_time = Utc::now();
        assert_eq!(too_old(&[fresh, old], Utc::now()), vec![1]);
    }
}
