//! `/debug/mp/collect`: GA4's validation messages for a Measurement Protocol request.
//!
//! Like Google's validation server this never fails and never checks `api_secret` or
//! `measurement_id`; it reports what GA would silently drop. Which code GA uses for an
//! over-long *name* is UNCONFIRMED: we say `NAME_INVALID` (a naming rule), and keep
//! `VALUE_OUT_OF_BOUNDS` for values. Naming rules and reserved names live in `names`.

use chrono::Duration;
use serde::{Deserialize, Serialize};

use super::{MAX_EVENTS, MpStream, parse_query, read_body};
use crate::error::ParseError;
use crate::json::JsonNode;
use crate::raw::RawRequest;

mod names;

use names::{EVENT_NAME, PARAM_NAME, USER_PROPERTY_NAME, check_name};

/// Params per event and user properties per request.
pub const MAX_PARAMS: usize = 25;
pub const MAX_USER_PROPERTIES: usize = 25;
pub const MAX_NAME_CHARS: usize = 40;
pub const MAX_PARAM_VALUE_CHARS: usize = 100;
pub const MAX_USER_PROPERTY_NAME_CHARS: usize = 24;
pub const MAX_USER_PROPERTY_VALUE_CHARS: usize = 36;
pub const MAX_ITEMS: usize = 200;
/// How far back `timestamp_micros` may go.
pub const MAX_BACKDATE: Duration = Duration::hours(72);

/// Page parameters have their own, longer limits (GA's collection-limits page; not in
/// PROTOCOLS.md).
const LONG_PARAMS: &[(&str, usize)] = &[
    ("page_location", 1000),
    ("page_referrer", 420),
    ("page_title", 300),
];

/// The body of a `/debug/mp/collect` answer: `{"validationMessages":[…]}`, empty when valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResponse {
    pub validation_messages: Vec<ValidationMessage>,
}

impl ValidationResponse {
    pub fn is_valid(&self) -> bool {
        self.validation_messages.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationMessage {
    /// Where the problem is, e.g. `events`, `events.params`, `user_properties`, `client_id`.
    pub field_path: String,
    pub description: String,
    pub validation_code: ValidationCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationCode {
    ValueInvalid,
    ValueRequired,
    NameInvalid,
    NameReserved,
    ValueOutOfBounds,
    ExceededMaxEntities,
    NameDuplicated,
    InternalError,
}

#[derive(Default)]
struct Messages(Vec<ValidationMessage>);

impl Messages {
    fn push(&mut self, field_path: &str, code: ValidationCode, description: String) {
        self.0.push(ValidationMessage {
            field_path: field_path.to_owned(),
            description,
            validation_code: code,
        });
    }
}

/// Validates a Measurement Protocol request the way `/debug/mp/collect` does.
pub fn validate(raw: &RawRequest) -> ValidationResponse {
    let mut out = Messages::default();
    let body = match read_body(&raw.body) {
        Ok(body) => body,
        Err(ParseError::PayloadTooLarge { len, max }) => {
            out.push(
                "",
                ValidationCode::ValueOutOfBounds,
                format!("Request body is {len} bytes, exceeding the maximum of {max} bytes."),
            );
            return ValidationResponse {
                validation_messages: out.0,
            };
        }
        Err(err) => {
            out.push(
                "",
                ValidationCode::ValueInvalid,
                format!("Unable to parse Measurement Protocol JSON payload: {err}."),
            );
            return ValidationResponse {
                validation_messages: out.0,
            };
        }
    };
    // The stream kind decides which identity is required; no query means web, as GA assumes.
    let identity = match parse_query(&raw.query) {
        Ok((MpStream::App { .. }, _)) => "app_instance_id",
        _ => "client_id",
    };
    match body.get(identity) {
        None => out.push(
            identity,
            ValidationCode::ValueRequired,
            format!("Measurement requires a {identity}."),
        ),
        Some(id) if id.as_str().is_none_or(str::is_empty) => out.push(
            identity,
            ValidationCode::ValueInvalid,
            format!(
                "{identity} must be a non-empty string, found {}.",
                id.kind()
            ),
        ),
        Some(_) => {}
    }
    if let Some(user_id) = body.get("user_id")
        && user_id.as_str().is_none()
    {
        out.push(
            "user_id",
            ValidationCode::ValueInvalid,
            format!("user_id must be a string, found {}.", user_id.kind()),
        );
    }
    if let Some(timestamp) = body.get("timestamp_micros") {
        check_timestamp(&mut out, timestamp, raw);
    }
    if let Some(properties) = body.get("user_properties") {
        check_user_properties(&mut out, properties);
    }
    if let Some(consent) = body.get("consent") {
        check_consent(&mut out, consent);
    }
    check_events(&mut out, body.get("events"));
    ValidationResponse {
        validation_messages: out.0,
    }
}

fn check_timestamp(out: &mut Messages, timestamp: &JsonNode, raw: &RawRequest) {
    let Some(micros) = timestamp.as_i64() else {
        out.push(
            "timestamp_micros",
            ValidationCode::ValueInvalid,
            "timestamp_micros must be an integer number of microseconds.".into(),
        );
        return;
    };
    let now = raw.received_at.as_datetime();
    let oldest = now - MAX_BACKDATE;
    if micros < oldest.timestamp_micros() {
        out.push(
            "timestamp_micros",
            ValidationCode::ValueOutOfBounds,
            format!(
                "timestamp_micros [{micros}] is more than {} hours in the past.",
                MAX_BACKDATE.num_hours()
            ),
        );
    }
}

fn check_events(out: &mut Messages, events: Option<&JsonNode>) {
    let Some(events) = events else {
        out.push(
            "events",
            ValidationCode::ValueRequired,
            "Measurement requires events.".into(),
        );
        return;
    };
    let Some(events) = events.elements().filter(|e| !e.is_empty()) else {
        out.push(
            "events",
            ValidationCode::ValueRequired,
            "events must be a non-empty array of events.".into(),
        );
        return;
    };
    if events.len() > MAX_EVENTS {
        out.push(
            "events",
            ValidationCode::ExceededMaxEntities,
            format!(
                "Request has [{}] events, exceeding the maximum of [{MAX_EVENTS}].",
                events.len()
            ),
        );
    }
    for (index, event) in events.iter().enumerate() {
        let at = format!("Event at index: [{index}]");
        if event.members().is_none() {
            out.push(
                "events",
                ValidationCode::ValueInvalid,
                format!("{at} must be an object."),
            );
            continue;
        }
        match event.get("name") {
            None => out.push(
                "events",
                ValidationCode::ValueRequired,
                format!("{at} is missing a name."),
            ),
            Some(name) => match name.as_str() {
                Some(name) => check_name(out, "events", &at, name, &EVENT_NAME),
                None => out.push(
                    "events",
                    ValidationCode::ValueInvalid,
                    format!("{at} has a name that is {}, not a string.", name.kind()),
                ),
            },
        }
        if let Some(params) = event.get("params") {
            check_params(out, &at, params);
        }
    }
}

fn check_params(out: &mut Messages, at: &str, params: &JsonNode) {
    const PATH: &str = "events.params";
    let Some(members) = params.members() else {
        out.push(
            PATH,
            ValidationCode::ValueInvalid,
            format!("{at} has params that are {}, not an object.", params.kind()),
        );
        return;
    };
    if members.len() > MAX_PARAMS {
        out.push(
            PATH,
            ValidationCode::ExceededMaxEntities,
            format!(
                "{at} has [{}] parameters, exceeding the maximum of [{MAX_PARAMS}].",
                members.len()
            ),
        );
    }
    check_duplicates(out, PATH, at, "parameter", members);
    for (name, value) in members {
        check_name(out, PATH, at, name, &PARAM_NAME);
        if name == "items" {
            check_items(out, at, value);
            continue;
        }
        let max = LONG_PARAMS
            .iter()
            .find(|(long, _)| long == name)
            .map_or(MAX_PARAM_VALUE_CHARS, |(_, max)| *max);
        if let Some(text) = value.as_str()
            && text.chars().count() > max
        {
            out.push(
                PATH,
                ValidationCode::ValueOutOfBounds,
                format!(
                    "{at} has parameter [{name}] with a value of [{}] characters, exceeding the maximum of [{max}].",
                    text.chars().count()
                ),
            );
        }
    }
}

fn check_items(out: &mut Messages, at: &str, items: &JsonNode) {
    const PATH: &str = "events.params.items";
    let Some(items) = items.elements() else {
        out.push(
            PATH,
            ValidationCode::ValueInvalid,
            format!("{at} has items that are {}, not an array.", items.kind()),
        );
        return;
    };
    if items.len() > MAX_ITEMS {
        out.push(
            PATH,
            ValidationCode::ExceededMaxEntities,
            format!(
                "{at} has [{}] items, exceeding the maximum of [{MAX_ITEMS}].",
                items.len()
            ),
        );
    }
    for (index, item) in items.iter().enumerate() {
        if item.members().is_none() {
            out.push(
                PATH,
                ValidationCode::ValueInvalid,
                format!("{at} has an item at index [{index}] that is not an object."),
            );
        } else if item.get("item_id").is_none() && item.get("item_name").is_none() {
            out.push(
                PATH,
                ValidationCode::ValueRequired,
                format!("{at} has an item at index [{index}] with neither item_id nor item_name."),
            );
        }
    }
}

fn check_user_properties(out: &mut Messages, properties: &JsonNode) {
    const PATH: &str = "user_properties";
    let Some(members) = properties.members() else {
        out.push(
            PATH,
            ValidationCode::ValueInvalid,
            format!(
                "user_properties must be an object, found {}.",
                properties.kind()
            ),
        );
        return;
    };
    if members.len() > MAX_USER_PROPERTIES {
        out.push(
            PATH,
            ValidationCode::ExceededMaxEntities,
            format!(
                "Request has [{}] user properties, exceeding the maximum of [{MAX_USER_PROPERTIES}].",
                members.len()
            ),
        );
    }
    let at = "Request";
    check_duplicates(out, PATH, at, "user property", members);
    for (name, property) in members {
        check_name(out, PATH, at, name, &USER_PROPERTY_NAME);
        match property.get("value") {
            None => out.push(
                PATH,
                ValidationCode::ValueRequired,
                format!("User property [{name}] must be an object with a value."),
            ),
            Some(value) => {
                let length = value.as_text().map_or(0, |t| t.chars().count());
                if length > MAX_USER_PROPERTY_VALUE_CHARS {
                    out.push(
                        PATH,
                        ValidationCode::ValueOutOfBounds,
                        format!(
                            "User property [{name}] has a value of [{length}] characters, exceeding the maximum of [{MAX_USER_PROPERTY_VALUE_CHARS}]."
                        ),
                    );
                }
            }
        }
    }
}

fn check_consent(out: &mut Messages, consent: &JsonNode) {
    if consent.members().is_none() {
        out.push(
            "consent",
            ValidationCode::ValueInvalid,
            format!("consent must be an object, found {}.", consent.kind()),
        );
        return;
    }
    for signal in ["ad_user_data", "ad_personalization"] {
        if let Some(value) = consent.get(signal)
            && !value
                .as_str()
                .is_some_and(|v| matches!(v, "GRANTED" | "DENIED"))
        {
            out.push(
                &format!("consent.{signal}"),
                ValidationCode::ValueInvalid,
                format!("consent.{signal} must be GRANTED or DENIED."),
            );
        }
    }
}

fn check_duplicates(
    out: &mut Messages,
    path: &str,
    at: &str,
    what: &str,
    members: &[(String, JsonNode)],
) {
    for (position, (name, _)) in members.iter().enumerate() {
        // Report each repeated name once, at its second occurrence.
        let earlier = members[..position]
            .iter()
            .filter(|(n, _)| n == name)
            .count();
        if earlier == 1 {
            out.push(
                path,
                ValidationCode::NameDuplicated,
                format!("{at} has duplicated {what} name [{name}]."),
            );
        }
    }
}

#[cfg(test)]
mod tests;
