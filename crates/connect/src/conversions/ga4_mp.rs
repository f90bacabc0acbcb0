//! GA4 Measurement Protocol (PROTOCOLS.md §1.2): `POST {base}/mp/collect?measurement_id=…&api_secret=…`
//! with `{"client_id","timestamp_micros","consent","events":[{"name","params"}]}`.
//!
//! One request carries one `client_id`, so conversions are grouped by the visitor's GA client
//! id (25 events per request at most). A conversion without a client id cannot be sent to a web
//! stream and is refused on its own. The live endpoint always answers 2xx; validation goes to
//! `/debug/mp/collect`, whose `validationMessages` are the platform's answer.

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{Map, Value, json};

use super::{
    Conversion, Endpoints, Outcome, SendReport, is_transient_status, read_response,
    transport_failure,
};

/// Events per request.
pub const MAX_BATCH: usize = 25;
/// How far back events may be dated.
pub const MAX_AGE_HOURS: i64 = 72;

/// A GA4 web stream and its Measurement Protocol API secret.
#[derive(Clone)]
pub struct Ga4Credential {
    pub measurement_id: String,
    pub api_secret: String,
}

/// Without the secret, so a credential in a log line or an error says which one it is and no
/// more.
impl std::fmt::Debug for Ga4Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ga4Credential")
            .field("measurement_id", &self.measurement_id)
            .finish_non_exhaustive()
    }
}

fn consent_value(value: Option<bool>) -> Option<&'static str> {
    value.map(|v| if v { "GRANTED" } else { "DENIED" })
}

/// The request body for events of one client id.
pub fn request_body(client_id: &str, events: &[&Conversion]) -> Value {
    let first = events.first();
    let mut body = json!({
        "client_id": client_id,
        "timestamp_micros": first.map(|e| e.event_time.timestamp_micros()).unwrap_or_default(),
        "events": events.iter().map(|c| event(c)).collect::<Vec<_>>(),
    });
    if let Some(first) = first {
        let mut consent = Map::new();
        if let Some(v) = consent_value(first.consent.ad_user_data) {
            consent.insert("ad_user_data".into(), json!(v));
        }
        if let Some(v) = consent_value(first.consent.ad_personalization) {
            consent.insert("ad_personalization".into(), json!(v));
        }
        if !consent.is_empty() {
            body["consent"] = Value::Object(consent);
        }
    }
    body
}

fn event(conversion: &Conversion) -> Value {
    let mut params = Map::new();
    params.insert("transaction_id".into(), json!(conversion.event_id));
    if let Some(value) = conversion.value {
        params.insert("value".into(), json!(value));
    }
    if let Some(currency) = &conversion.currency {
        params.insert("currency".into(), json!(currency.to_uppercase()));
    }
    if let Some(session) = &conversion.click_ids.ga_session_id {
        params.insert("session_id".into(), json!(session));
        params.insert("engagement_time_msec".into(), json!(1));
    }
    json!({ "name": conversion.event_name, "params": Value::Object(params) })
}

/// A Measurement Protocol client.
#[derive(Clone)]
pub struct Ga4Client {
    http: reqwest::Client,
    base_url: String,
}

impl Ga4Client {
    pub fn new(http: reqwest::Client, endpoints: &Endpoints) -> Self {
        Self {
            http,
            base_url: endpoints.ga4_base_url.clone(),
        }
    }

    /// Sends `events`, one request per client id; with `validate`, to `/debug/mp/collect`.
    pub async fn send(
        &self,
        credential: &Ga4Credential,
        events: &[Conversion],
        validate: bool,
    ) -> SendReport {
        let path = if validate {
            "/debug/mp/collect"
        } else {
            "/mp/collect"
        };
        let request = json!({
            "method": "POST",
            "path": path,
            "measurement_id": credential.measurement_id,
            "event_ids": events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        });
        let oldest = Utc::now() - ChronoDuration::hours(MAX_AGE_HOURS);
        let mut per_event = Vec::new();
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(cid) = e
                .click_ids
                .ga_client_id
                .as_deref()
                .filter(|c| !c.is_empty())
            else {
                per_event.push((
                    i,
                    "no GA4 client id (the conversion did not come from a tracked visit)"
                        .to_owned(),
                ));
                continue;
            };
            if e.event_time < oldest {
                per_event.push((i, format!("older than {MAX_AGE_HOURS} hours")));
                continue;
            }
            match groups
                .iter_mut()
                .find(|(c, v)| c == cid && v.len() < MAX_BATCH)
            {
                Some((_, v)) => v.push(i),
                None => groups.push((cid.to_owned(), vec![i])),
            }
        }
        let mut last_status = None;
        let mut responses = Vec::new();
        for (cid, indices) in &groups {
            let group: Vec<&Conversion> = indices.iter().map(|i| &events[*i]).collect();
            let response = self
                .http
                .post(format!("{}{path}", self.base_url))
                .query(&[
                    ("measurement_id", credential.measurement_id.as_str()),
                    ("api_secret", credential.api_secret.as_str()),
                ])
                .json(&request_body(cid, &group))
                .send()
                .await;
            let response = match response {
                Ok(r) => r,
                Err(err) => return transport_failure(request, &err),
            };
            let (status, retry_after, text, json) = read_response(response).await;
            last_status = Some(status);
            if is_transient_status(status) {
                return SendReport {
                    request,
                    status: Some(status),
                    response: text,
                    outcome: Outcome::Transient { retry_after },
                };
            }
            if !(200..300).contains(&status) {
                for i in indices {
                    per_event.push((*i, format!("HTTP {status}")));
                }
            }
            let messages: Vec<String> = json
                .as_ref()
                .and_then(|j| j["validationMessages"].as_array())
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m["validationCode"].as_str().unwrap_or("INVALID"),
                        m["description"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            if !messages.is_empty() {
                for i in indices {
                    per_event.push((*i, messages.join("; ")));
                }
            }
            responses.push(text);
        }
        per_event.sort_by_key(|(i, _)| *i);
        let outcome = if per_event.is_empty() {
            Outcome::Accepted
        } else {
            Outcome::Rejected {
                message: "GA4 refused some events".into(),
                per_event,
            }
        };
        SendReport {
            request,
            status: last_status,
            response: super::excerpt(&responses.join("\n")),
            outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversions::{ClickIds, Consent, UserData};

    #[test]
    fn body_follows_the_measurement_protocol() {
        let c = Conversion {
            event_id: "hit_9".into(),
            event_name: "purchase".into(),
            event_time: Utc::now(),
            value: Some(12.5),
            currency: Some("eur".into()),
            source_url: None,
            user: UserData::default(),
            click_ids: ClickIds {
                ga_client_id: Some("123.456".into()),
                ga_session_id: Some("1700000000".into()),
                ..ClickIds::default()
            },
            consent: Consent {
                ad_user_data: Some(true),
                ad_personalization: Some(false),
            },
        };
        let body = request_body("123.456", &[&c]);
        assert_eq!(body["client_id"], "123.456");
        assert_eq!(body["timestamp_micros"], c.event_time.timestamp_micros());
        assert_eq!(
            body["consent"],
            json!({"ad_user_data": "GRANTED", "ad_personalization": "DENIED"})
        );
        assert_eq!(
            body["events"][0],
            json!({"name": "purchase", "params": {"transaction_id": "hit_9", "value": 12.5,
                "currency": "EUR", "session_id": "1700000000", "engagement_time_msec": 1}})
        );
    }
}
