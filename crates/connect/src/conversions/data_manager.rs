//! Google Data Manager API `events:ingest` (PROTOCOLS.md §11): `POST {base}/v1/events:ingest`
//! with a Bearer token carrying the `datamanager` scope, one destination (the Google Ads
//! account and conversion action), `encoding: HEX`, and one `Event` per conversion with
//! `transactionId` = our event id, click ids in clear and hashed email/phone/name.
//!
//! The API is fail-fast: one bad record fails the whole request and nothing is ingested. When
//! the error's `BadRequest.fieldViolations` point at `events[i]`, those events are reported
//! (`Outcome::Rejected.per_event`) so the caller can resend the rest.

use serde_json::{Map, Value, json};

use super::google_auth::{GoogleCredential, TokenError, TokenSource};
use super::normalize::google;
use super::{
    Conversion, Endpoints, Outcome, SendReport, is_transient_status, read_response,
    transport_failure,
};

/// Events per request (the API's limit is 2 000).
pub const MAX_BATCH: usize = 2000;
/// User identifiers per event.
pub const MAX_IDENTIFIERS: usize = 10;

/// Where conversions go: a Google Ads account and a conversion action of type `UPLOAD_CLICKS`.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The Google Ads customer id, digits only.
    pub operating_account_id: String,
    /// The manager account the credential logs in as, when it is not the operating account.
    pub login_account_id: Option<String>,
    /// The numeric conversion action id.
    pub conversion_action_id: String,
}

impl Destination {
    fn reference(&self) -> String {
        format!("ca_{}", self.conversion_action_id)
    }

    fn to_json(&self) -> Value {
        let mut d = json!({
            "reference": self.reference(),
            "operatingAccount": { "accountType": "GOOGLE_ADS", "accountId": self.operating_account_id },
            "productDestinationId": self.conversion_action_id,
        });
        if let Some(login) = &self.login_account_id {
            d["loginAccount"] = json!({ "accountType": "GOOGLE_ADS", "accountId": login });
        }
        d
    }
}

/// Google Ads ids are sent as digits (`123-456-7890` → `1234567890`); a conversion action may
/// be given as its resource name (`customers/1/conversionActions/42` → `42`).
pub fn account_digits(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(|c| *c != '-' && *c != ' ').collect();
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then_some(digits)
}

pub fn conversion_action_digits(raw: &str) -> Option<String> {
    account_digits(raw.trim().rsplit('/').next().unwrap_or_default())
}

fn consent_status(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "CONSENT_GRANTED",
        Some(false) => "CONSENT_DENIED",
        None => "CONSENT_STATUS_UNSPECIFIED",
    }
}

/// One `Event`.
pub fn event(conversion: &Conversion, destination: &Destination) -> Value {
    let mut identifiers = Vec::new();
    let u = &conversion.user;
    for email in u
        .emails
        .iter()
        .filter_map(|e| google::hash(e, google::email))
    {
        identifiers.push(json!({ "emailAddress": email }));
    }
    for phone in u
        .phones
        .iter()
        .filter_map(|p| google::hash(p, google::phone))
    {
        identifiers.push(json!({ "phoneNumber": phone }));
    }
    // An address needs all four parts.
    if let (Some(given), Some(family), Some(region), Some(postal)) = (
        u.first_name
            .as_deref()
            .and_then(|n| google::hash(n, google::name)),
        u.last_name
            .as_deref()
            .and_then(|n| google::hash(n, google::name)),
        u.country.as_deref().and_then(google::region_code),
        u.zip.as_deref().and_then(google::postal_code),
    ) {
        identifiers.push(json!({ "address": {
            "givenName": given, "familyName": family, "regionCode": region, "postalCode": postal,
        }}));
    }
    identifiers.truncate(MAX_IDENTIFIERS);

    let mut ad = Map::new();
    let ids = &conversion.click_ids;
    for (key, value) in [
        ("gclid", &ids.gclid),
        ("gbraid", &ids.gbraid),
        ("wbraid", &ids.wbraid),
    ] {
        if let Some(v) = value {
            ad.insert(key.into(), json!(v));
        }
    }
    let mut event = json!({
        "destinationReferences": [destination.reference()],
        "transactionId": conversion.event_id,
        "eventTimestamp": conversion.event_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "eventSource": if conversion.source_url.is_some() { "WEB" } else { "OTHER" },
        "consent": {
            "adUserData": consent_status(conversion.consent.ad_user_data),
            "adPersonalization": consent_status(conversion.consent.ad_personalization),
        },
    });
    if !ad.is_empty() {
        event["adIdentifiers"] = Value::Object(ad);
    }
    if let Some(value) = conversion.value {
        event["conversionValue"] = json!(value);
    }
    if let Some(currency) = &conversion.currency {
        event["currency"] = json!(currency.to_uppercase());
    }
    if !identifiers.is_empty() {
        event["userData"] = json!({ "userIdentifiers": identifiers });
    }
    event
}

/// The `IngestEventsRequest`.
pub fn request_body(
    events: &[Conversion],
    destination: &Destination,
    validate_only: bool,
) -> Value {
    json!({
        "destinations": [destination.to_json()],
        "encoding": "HEX",
        "validateOnly": validate_only,
        "events": events.iter().map(|c| event(c, destination)).collect::<Vec<_>>(),
    })
}

/// The events an error blames: `events[3].user_data…` in `BadRequest.fieldViolations`.
pub fn blamed_events(error: &Value) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for detail in error["error"]["details"].as_array().into_iter().flatten() {
        for violation in detail["fieldViolations"].as_array().into_iter().flatten() {
            let field = violation["field"].as_str().unwrap_or_default();
            let Some(rest) = field.strip_prefix("events[") else {
                continue;
            };
            let Some(index) = rest.split(']').next().and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let reason = [
                violation["reason"].as_str(),
                violation["description"].as_str(),
            ]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
            let reason = format!("{field}: {reason}");
            match out.iter_mut().find(|(i, _)| *i == index) {
                Some((_, existing)) => {
                    existing.push_str("; ");
                    existing.push_str(&reason);
                }
                None => out.push((index, reason)),
            }
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// A Data Manager client.
#[derive(Clone)]
pub struct DataManagerClient {
    http: reqwest::Client,
    base_url: String,
    tokens: TokenSource,
}

impl DataManagerClient {
    pub fn new(http: reqwest::Client, endpoints: &Endpoints) -> Self {
        Self {
            tokens: TokenSource::new(http.clone(), endpoints.google_token_url.clone()),
            http,
            base_url: endpoints.data_manager_base_url.clone(),
        }
    }

    /// Sends `events` (with `validate_only`, Google checks them and ingests nothing). A 401
    /// on a cached token refreshes the token once.
    pub async fn send(
        &self,
        credential: &GoogleCredential,
        destination: &Destination,
        events: &[Conversion],
        validate_only: bool,
    ) -> SendReport {
        let request = json!({
            "method": "POST",
            "path": "/v1/events:ingest",
            "event_ids": events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
            "conversion_action_id": destination.conversion_action_id,
            "validate_only": validate_only,
        });
        let body = request_body(events, destination, validate_only);
        let mut refreshed = false;
        loop {
            let token = match self.tokens.token(credential).await {
                Ok(token) => token,
                Err(err) => {
                    let outcome = match &err {
                        TokenError::Unavailable(_) => Outcome::Transient { retry_after: None },
                        TokenError::Refused(message) => Outcome::Rejected {
                            message: message.clone(),
                            per_event: Vec::new(),
                        },
                    };
                    return SendReport {
                        request,
                        status: None,
                        response: err.to_string(),
                        outcome,
                    };
                }
            };
            let response = self
                .http
                .post(format!("{}/v1/events:ingest", self.base_url))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await;
            let response = match response {
                Ok(r) => r,
                Err(err) => return transport_failure(request, &err),
            };
            let (status, retry_after, text, json) = read_response(response).await;
            if status == 401 && !refreshed {
                refreshed = true;
                self.tokens.forget(credential).await;
                continue;
            }
            let outcome = if (200..300).contains(&status) {
                Outcome::Accepted
            } else if is_transient_status(status) {
                Outcome::Transient { retry_after }
            } else {
                let message = json
                    .as_ref()
                    .map(|j| {
                        format!(
                            "{}: {}",
                            j["error"]["status"].as_str().unwrap_or("ERROR"),
                            j["error"]["message"].as_str().unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| format!("HTTP {status}"));
                let mut per_event = json.as_ref().map(blamed_events).unwrap_or_default();
                per_event.retain(|(i, _)| *i < events.len());
                Outcome::Rejected { message, per_event }
            };
            return SendReport {
                request,
                status: Some(status),
                response: text,
                outcome,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversions::{ClickIds, Consent, UserData};
    use chrono::{TimeZone, Utc};

    #[test]
    fn request_matches_the_documented_example() {
        let destination = Destination {
            operating_account_id: account_digits("220-004-3144").expect("digits"),
            login_account_id: Some("9743221780".into()),
            conversion_action_id: conversion_action_digits(
                "customers/2200043144/conversionActions/7683937191",
            )
            .expect("digits"),
        };
        let conversion = Conversion {
            event_id: "tenant42-order-1001".into(),
            event_name: "purchase".into(),
            event_time: Utc
                .with_ymd_and_hms(2026, 8, 27, 14, 3, 11)
                .single()
                .expect("time"),
            value: Some(149.9),
            currency: Some("EUR".into()),
            source_url: Some("https://shop.example.com/".into()),
            user: UserData {
                emails: vec!["dana@example.com".into()],
                phones: vec!["+18005550100".into()],
                ..UserData::default()
            },
            click_ids: ClickIds {
                gclid: Some("Cj0KCQiA...".into()),
                ..ClickIds::default()
            },
            consent: Consent {
                ad_user_data: Some(true),
                ad_personalization: Some(true),
            },
        };
        let body = request_body(&[conversion], &destination, false);
        assert_eq!(
            body,
            json!({
                "destinations": [{
                    "reference": "ca_7683937191",
                    "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "2200043144"},
                    "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "9743221780"},
                    "productDestinationId": "7683937191"
                }],
                "encoding": "HEX",
                "validateOnly": false,
                "events": [{
                    "destinationReferences": ["ca_7683937191"],
                    "transactionId": "tenant42-order-1001",
                    "eventTimestamp": "2026-08-27T14:03:11.000Z",
                    "eventSource": "WEB",
                    "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"},
                    "conversionValue": 149.9,
                    "currency": "EUR",
                    "adIdentifiers": {"gclid": "Cj0KCQiA..."},
                    "userData": {"userIdentifiers": [
                        {"emailAddress": "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"},
                        {"phoneNumber": "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"}
                    ]}
                }]
            })
        );
    }

    #[test]
    fn address_needs_all_four_parts_and_keeps_region_and_postal_clear() {
        let destination = Destination {
            operating_account_id: "1".into(),
            login_account_id: None,
            conversion_action_id: "2".into(),
        };
        let mut conversion = Conversion {
            event_id: "e".into(),
            event_name: "x".into(),
            event_time: Utc::now(),
            value: None,
            currency: None,
            source_url: None,
            user: UserData {
                first_name: Some("Jane".into()),
                last_name: Some("Doe".into()),
                country: Some("us".into()),
                ..UserData::default()
            },
            click_ids: ClickIds::default(),
            consent: Consent::default(),
        };
        assert!(event(&conversion, &destination).get("userData").is_none());
        conversion.user.zip = Some("94107".into());
        let e = event(&conversion, &destination);
        let address = &e["userData"]["userIdentifiers"][0]["address"];
        assert_eq!(address["regionCode"], "US");
        assert_eq!(address["postalCode"], "94107");
        assert_eq!(
            address["givenName"],
            crate::conversions::normalize::sha256_hex("jane")
        );
        assert_eq!(e["eventSource"], "OTHER");
        assert_eq!(e["consent"]["adUserData"], "CONSENT_STATUS_UNSPECIFIED");
    }

    #[test]
    fn blamed_events_come_from_field_violations() {
        let error = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "x",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_FORMAT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                {"field": "events[2].ad_identifiers", "description": "no click id", "reason": "REQUIRED_FIELD_MISSING"},
                {"field": "events[0].user_data.user_identifiers[0].email_address", "reason": "INVALID_SHA256_FORMAT"},
                {"field": "destinations[0]", "reason": "INVALID_DESTINATION"}
            ]}
        ]}});
        let blamed = blamed_events(&error);
        assert_eq!(blamed.len(), 2);
        assert_eq!(blamed[0].0, 0);
        assert!(blamed[0].1.contains("INVALID_SHA256_FORMAT"));
        assert_eq!(blamed[1].0, 2);
        assert!(blamed[1].1.contains("REQUIRED_FIELD_MISSING: no click id"));
    }
}
