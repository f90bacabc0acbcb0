//! GA4 Measurement Protocol: `POST /mp/collect` JSON from servers (PROTOCOLS.md §1.2).
//!
//! `parse` turns a request into hits and fails only when no sensible hit can be made (bad
//! JSON, no events, no client identity). GA itself answers 204 to everything and drops what is
//! invalid; the naming and size rules it applies are reported by [`validate`] in the shape of
//! `/debug/mp/collect`, so the gateway can choose to drop, or to accept and flag.

mod validate;

use chrono::DateTime;
use platform::Timestamp;
use serde_json::Value;

pub use validate::{ValidationCode, ValidationMessage, ValidationResponse, validate};

use crate::error::ParseError;
use crate::hit::{ConsentState, Hit, HitFields, ParamValue, Protocol};
use crate::item::Item;
use crate::json::JsonNode;
use crate::raw::RawRequest;

/// Largest body GA accepts ("130 kB"; read as KiB so we never refuse what GA takes).
pub const MAX_BODY_BYTES: usize = 130 * 1024;
/// Events per request.
pub const MAX_EVENTS: usize = 25;

/// Which kind of GA4 stream the request addresses, from its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpStream {
    /// `measurement_id=G-…`: web; the body must carry `client_id`.
    Web { measurement_id: String },
    /// `firebase_app_id=…`: app; the body must carry `app_instance_id`.
    App { firebase_app_id: String },
}

/// What a Measurement Protocol request carried.
#[derive(Debug, Clone, PartialEq)]
pub struct MpRequest {
    pub stream: MpStream,
    /// The `api_secret` query parameter, for the gateway to check against the site's secrets.
    /// Absent is allowed here because `/debug/mp/collect` does not need it.
    pub api_secret: Option<String>,
    pub hits: Vec<Hit>,
}

/// Reads `measurement_id`/`firebase_app_id` and `api_secret` from the query string.
pub fn parse_query(query: &str) -> Result<(MpStream, Option<String>), ParseError> {
    let mut measurement_id = None;
    let mut firebase_app_id = None;
    let mut api_secret = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "measurement_id" => &mut measurement_id,
            "firebase_app_id" => &mut firebase_app_id,
            "api_secret" => &mut api_secret,
            _ => continue,
        };
        if !value.is_empty() {
            *slot = Some(value.into_owned());
        }
    }
    let stream = match (measurement_id, firebase_app_id) {
        (Some(measurement_id), _) => MpStream::Web { measurement_id },
        (None, Some(firebase_app_id)) => MpStream::App { firebase_app_id },
        (None, None) => return Err(ParseError::missing("measurement_id", None)),
    };
    Ok((stream, api_secret))
}

/// Parses a Measurement Protocol request into one hit per event.
pub fn parse(raw: &RawRequest) -> Result<MpRequest, ParseError> {
    if raw.method != "POST" {
        return Err(ParseError::MethodNotAllowed {
            method: raw.method.clone(),
            allowed: "POST",
        });
    }
    let (stream, api_secret) = parse_query(&raw.query)?;
    let body = read_body(&raw.body)?;

    let (identity_key, measurement_id, firebase_app_id) = match &stream {
        MpStream::Web { measurement_id } => ("client_id", Some(measurement_id.clone()), None),
        MpStream::App { firebase_app_id } => {
            ("app_instance_id", None, Some(firebase_app_id.clone()))
        }
    };
    let client_id = body
        .get(identity_key)
        .and_then(JsonNode::as_text)
        .filter(|id| !id.is_empty())
        .ok_or(ParseError::missing(identity_key, None))?;
    let events = match body.get("events") {
        None => return Err(ParseError::missing("events", None)),
        Some(node) => node
            .elements()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| ParseError::invalid("events", None, "must be a non-empty array"))?,
    };
    if events.len() > MAX_EVENTS {
        return Err(ParseError::TooManyEvents {
            count: events.len(),
            max: MAX_EVENTS,
        });
    }

    // Request-wide fields, applied to every event's hit.
    let mut base = HitFields::new(Protocol::MeasurementProtocol, "", raw.received_at);
    base.measurement_id = measurement_id;
    base.firebase_app_id = firebase_app_id;
    base.client_id = Some(client_id);
    let members = body.members().unwrap_or_default();
    for (key, value) in members {
        apply_top_level(&mut base, key, value);
    }

    let hits = events
        .iter()
        .enumerate()
        .map(|(index, event)| build_hit(&base, event, index, raw.received_at))
        .collect::<Result<_, _>>()?;
    Ok(MpRequest {
        stream,
        api_secret,
        hits,
    })
}

/// Size check and JSON parse, shared with the validator.
fn read_body(body: &[u8]) -> Result<JsonNode, ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::PayloadTooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let node: JsonNode = serde_json::from_slice(body).map_err(|e| ParseError::InvalidJson {
        reason: e.to_string(),
    })?;
    if node.members().is_none() {
        return Err(ParseError::InvalidJson {
            reason: format!("expected a JSON object, found {}", node.kind()),
        });
    }
    Ok(node)
}

fn apply_top_level(hit: &mut HitFields, key: &str, value: &JsonNode) {
    match key {
        // Identity and events were read by the caller.
        "client_id" | "app_instance_id" | "events" => {}
        "user_id" => hit.user_id = value.as_text().filter(|id| !id.is_empty()),
        "timestamp_micros" => match event_time(value, hit.received_at) {
            Some(time) => hit.event_time = time,
            None => keep(hit, key, value),
        },
        "user_properties" => match value.members() {
            Some(properties) => {
                for (name, property) in properties {
                    // `{"plan":{"value":"pro"}}`; anything else is kept as sent.
                    let value = property.get("value").unwrap_or(property);
                    hit.user_properties
                        .insert(name.clone(), ParamValue::from_json(value.to_value()));
                }
            }
            None => keep(hit, key, value),
        },
        "consent" => {
            let state = |name| {
                value
                    .get(name)
                    .and_then(JsonNode::as_str)
                    .and_then(consent_state)
            };
            hit.consent.ad_user_data = state("ad_user_data");
            hit.consent.ad_personalization = state("ad_personalization");
            // Anything beyond the two documented signals stays verbatim.
            let known = |k: &str| matches!(k, "ad_user_data" | "ad_personalization");
            if value
                .members()
                .is_none_or(|m| !m.iter().all(|(k, _)| known(k)))
            {
                keep(hit, key, value);
            }
        }
        "non_personalized_ads" => match value.to_value() {
            Value::Bool(b) => hit.consent.non_personalized_ads = Some(b),
            _ => keep(hit, key, value),
        },
        "device" => {
            // Copied into `device` for enrichment, and kept whole: not every field is modelled.
            let text = |name| value.get(name).and_then(JsonNode::as_text);
            hit.device.category = text("category");
            hit.device.language = text("language");
            hit.device.screen_resolution = text("screen_resolution");
            hit.device.os_name = text("operating_system");
            hit.device.os_version = text("operating_system_version");
            hit.device.model = text("model");
            hit.device.manufacturer = text("brand");
            keep(hit, key, value);
        }
        _ => keep(hit, key, value),
    }
}

fn build_hit(
    base: &HitFields,
    event: &JsonNode,
    index: usize,
    received_at: Timestamp,
) -> Result<Hit, ParseError> {
    let members = event
        .members()
        .ok_or_else(|| ParseError::invalid("events", Some(index), "an event must be an object"))?;
    let name = event
        .get("name")
        .and_then(JsonNode::as_str)
        .filter(|n| !n.is_empty())
        .ok_or(ParseError::missing("name", Some(index)))?;
    let mut hit = base.clone();
    hit.id = crate::hit::HitId::new();
    hit.event_name = name.to_owned();
    for (key, value) in members {
        match key.as_str() {
            "name" => {}
            "params" => {
                let params = value.members().ok_or_else(|| {
                    ParseError::invalid("params", Some(index), "must be an object")
                })?;
                for (name, param) in params {
                    apply_param(&mut hit, name, param);
                }
            }
            // Event-level override of the request's time (UNCONFIRMED: newer MP versions
            // accept it per event; older ones ignore it).
            "timestamp_micros" => match event_time(value, received_at) {
                Some(time) => hit.event_time = time,
                None => keep(&mut hit, key, value),
            },
            _ => keep(&mut hit, key, value),
        }
    }
    hit.page.derive_hostname();
    Ok(hit.into())
}

/// Event parameters that GA gives a meaning are moved to their place in the hit.
fn apply_param(hit: &mut HitFields, name: &str, value: &JsonNode) {
    match name {
        "session_id" if value.as_text().is_some() => hit.session.id = value.as_text(),
        "engagement_time_msec" if value.as_i64().is_some_and(|ms| ms >= 0) => {
            hit.engagement_time_ms = value.as_i64().and_then(|ms| u64::try_from(ms).ok());
        }
        "debug_mode" => hit.flags.debug = is_truthy(value),
        "page_location" if value.as_str().is_some() => hit.page.location = value.as_text(),
        "page_referrer" if value.as_str().is_some() => hit.page.referrer = value.as_text(),
        "page_title" if value.as_str().is_some() => hit.page.title = value.as_text(),
        "currency" if value.as_str().is_some() => hit.currency = value.as_text(),
        "items" if value.elements().is_some() => {
            for item in value.elements().unwrap_or_default() {
                match item.to_value() {
                    Value::Object(object) => hit.items.push(Item::from_json(&object)),
                    // A non-object item cannot be modelled: keep the whole list as sent.
                    _ => {
                        hit.items.clear();
                        hit.params
                            .insert(name.to_owned(), ParamValue::Json(value.to_value()));
                        return;
                    }
                }
            }
        }
        _ => {
            hit.params
                .insert(name.to_owned(), ParamValue::from_json(value.to_value()));
        }
    }
}

/// `timestamp_micros` as a time; a time in the future (sender clock ahead) becomes now.
fn event_time(value: &JsonNode, received_at: Timestamp) -> Option<Timestamp> {
    let time = Timestamp::from(DateTime::from_timestamp_micros(value.as_i64()?)?);
    Some(time.min(received_at))
}

fn consent_state(text: &str) -> Option<ConsentState> {
    match text.to_ascii_uppercase().as_str() {
        "GRANTED" => Some(ConsentState::Granted),
        "DENIED" => Some(ConsentState::Denied),
        _ => None,
    }
}

/// GA documents `debug_mode` as `true` or `1`.
fn is_truthy(value: &JsonNode) -> bool {
    match value.to_value() {
        Value::Bool(b) => b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => s == "1" || s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn keep(hit: &mut HitFields, key: &str, value: &JsonNode) {
    hit.extra.insert(key.to_owned(), value.to_value());
}

#[cfg(test)]
mod tests;
