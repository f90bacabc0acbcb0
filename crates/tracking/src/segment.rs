//! Segment HTTP Tracking API: `POST /v1/{track|identify|page|screen|group|alias|batch}`
//! (PROTOCOLS.md §3).
//!
//! Segment answers 200 to almost everything and drops bad events later; it answers 400 only for
//! invalid JSON and for calls over 32 KB or batches over 500 KB. The size and JSON errors here
//! are therefore distinct variants, and the gateway can decide how strict to be about the rest.
//! analytics.js posts to one-letter paths (`/v1/t`, `/v1/p`, `/v1/i`, `/v1/s`, `/v1/g`, `/v1/a`,
//! `/v1/b`), as its public source shows; those are accepted as aliases.

use chrono::DateTime;
use platform::Timestamp;
use serde_json::{Map, Value};

use crate::encoding::decode_base64_text;
use crate::error::ParseError;
use crate::hit::{Campaign, Hit, HitFields, ParamValue, Protocol, SegmentCall, SegmentCallType};
use crate::item::Item;
use crate::raw::RawRequest;

/// One call, alone or inside a batch.
pub const MAX_CALL_BYTES: usize = 32 * 1024;
/// One batch request.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// Which Segment endpoint a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEndpoint {
    Call(SegmentCallType),
    Batch,
}

impl SegmentEndpoint {
    /// From the request path's last segment: `/v1/track`, `/v1/t`, `/v1/batch`, `/v1/b`…
    pub fn from_path(path: &str) -> Option<Self> {
        let last = path.trim_end_matches('/').rsplit('/').next()?;
        use SegmentCallType::*;
        Some(match last {
            "batch" | "b" => Self::Batch,
            "t" => Self::Call(Track),
            "i" => Self::Call(Identify),
            "p" => Self::Call(Page),
            "s" => Self::Call(Screen),
            "g" => Self::Call(Group),
            "a" => Self::Call(Alias),
            other => Self::Call(SegmentCallType::parse(other)?),
        })
    }
}

/// What a Segment request carried.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRequest {
    /// The source's write key, for the gateway to map to a site. Not stored in the hits.
    pub write_key: String,
    pub hits: Vec<Hit>,
}

/// The write key from `Authorization: Basic base64("<writeKey>:")`; `None` for other schemes
/// or an undecodable value. A missing colon is tolerated (the key is then the whole text).
pub fn write_key_from_basic_auth(header_value: &str) -> Option<String> {
    let (scheme, encoded) = header_value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let text = decode_base64_text(encoded)?;
    let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    (!user.is_empty()).then(|| user.to_owned())
}

/// Parses a Segment request (single call or batch) into hits.
///
/// The write key comes from HTTP Basic auth, else the body's `writeKey` (for a batch: the top
/// level's, else the first call that has one). Every call needs `userId` or `anonymousId`;
/// track needs `event`, group `groupId`, alias `previousId` and `userId`.
pub fn parse(raw: &RawRequest) -> Result<SegmentRequest, ParseError> {
    if raw.method != "POST" {
        return Err(ParseError::MethodNotAllowed {
            method: raw.method.clone(),
            allowed: "POST",
        });
    }
    let endpoint =
        SegmentEndpoint::from_path(&raw.path).ok_or_else(|| ParseError::UnknownEndpoint {
            path: raw.path.clone(),
        })?;
    let len = raw.body.len();
    match endpoint {
        SegmentEndpoint::Call(_) if len > MAX_CALL_BYTES => {
            return Err(ParseError::CallTooLarge {
                event: None,
                len,
                max: MAX_CALL_BYTES,
            });
        }
        SegmentEndpoint::Batch if len > MAX_BATCH_BYTES => {
            return Err(ParseError::BatchTooLarge {
                len,
                max: MAX_BATCH_BYTES,
            });
        }
        _ => {}
    }
    let body = match serde_json::from_slice::<Value>(&raw.body) {
        Ok(Value::Object(body)) => body,
        Ok(other) => {
            return Err(ParseError::InvalidJson {
                reason: format!("expected a JSON object, found {}", kind(&other)),
            });
        }
        Err(e) => {
            return Err(ParseError::InvalidJson {
                reason: e.to_string(),
            });
        }
    };

    let (hits, write_key) = match endpoint {
        SegmentEndpoint::Call(call_type) => {
            let hit = build_hit(raw, call_type, &body, None, &Map::new())?;
            (vec![hit], text(&body, "writeKey"))
        }
        SegmentEndpoint::Batch => parse_batch(raw, &body)?,
    };
    let write_key = raw
        .header("authorization")
        .and_then(write_key_from_basic_auth)
        .or(write_key)
        .ok_or(ParseError::MissingWriteKey)?;
    Ok(SegmentRequest { write_key, hits })
}

/// `{"batch":[…], "context":{…}, "integrations":{…}, "sentAt":…, "writeKey":…}`.
fn parse_batch(
    raw: &RawRequest,
    body: &Map<String, Value>,
) -> Result<(Vec<Hit>, Option<String>), ParseError> {
    let items = match body.get("batch") {
        None => return Err(ParseError::missing("batch", None)),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ParseError::invalid("batch", None, "must be an array")),
    };
    // What the batch says once for all its calls (analytics.js sends `sentAt` only here).
    let shared: Map<String, Value> = ["context", "integrations", "sentAt"]
        .into_iter()
        .filter_map(|k| body.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect();
    let mut write_key = text(body, "writeKey");
    let mut hits = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Value::Object(call) = item else {
            return Err(ParseError::invalid(
                "batch",
                Some(index),
                "a call must be an object",
            ));
        };
        // Re-serialised size: compact, so never more than the bytes the sender used.
        let len = serde_json::to_vec(item).map_or(0, |bytes| bytes.len());
        if len > MAX_CALL_BYTES {
            return Err(ParseError::CallTooLarge {
                event: Some(index),
                len,
                max: MAX_CALL_BYTES,
            });
        }
        let call_type = match call.get("type") {
            None => return Err(ParseError::missing("type", Some(index))),
            Some(value) => value
                .as_str()
                .and_then(SegmentCallType::parse)
                .ok_or_else(|| {
                    ParseError::invalid("type", Some(index), format!("unknown call type {value}"))
                })?,
        };
        write_key = write_key.or_else(|| text(call, "writeKey"));
        hits.push(build_hit(raw, call_type, call, Some(index), &shared)?);
    }
    Ok((hits, write_key))
}

fn build_hit(
    raw: &RawRequest,
    call_type: SegmentCallType,
    call: &Map<String, Value>,
    index: Option<usize>,
    shared: &Map<String, Value>,
) -> Result<Hit, ParseError> {
    let anonymous_id = text(call, "anonymousId");
    let user_id = text(call, "userId");
    if anonymous_id.is_none() && user_id.is_none() {
        return Err(ParseError::missing("userId or anonymousId", index));
    }
    let required = |name: &str| text(call, name).ok_or(ParseError::missing(name, index));
    let event_name = match call_type {
        SegmentCallType::Track => required("event")?,
        SegmentCallType::Page => "page_view".to_owned(),
        SegmentCallType::Screen => "screen_view".to_owned(),
        other => other.as_str().to_owned(),
    };
    let mut hit = HitFields::new(Protocol::Segment, event_name, raw.received_at);
    let mut segment = SegmentCall {
        call_type,
        message_id: String::new(),
        message_id_generated: false,
        name: text(call, "name"),
        category: text(call, "category"),
        group_id: None,
        group_traits: None,
        previous_id: None,
        timestamp: None,
        original_timestamp: None,
        sent_at: None,
        integrations: merged(shared.get("integrations"), call.get("integrations")),
        context: merged(shared.get("context"), call.get("context")),
    };
    match call_type {
        SegmentCallType::Group => segment.group_id = Some(required("groupId")?),
        SegmentCallType::Alias => {
            segment.previous_id = Some(required("previousId")?);
            required("userId")?;
        }
        _ => {}
    }
    segment.message_id = match text(call, "messageId") {
        Some(id) => id,
        None => {
            segment.message_id_generated = true;
            hit.id.uuid().to_string()
        }
    };
    hit.client_id = anonymous_id;
    hit.user_id = user_id;

    for (key, value) in call {
        match key.as_str() {
            "type" | "anonymousId" | "userId" | "messageId" | "event" | "name" | "category"
            | "groupId" | "previousId" | "context" | "integrations" => {}
            // A credential: the gateway has it from `SegmentRequest`; never stored in a hit.
            "writeKey" => {}
            "timestamp" | "originalTimestamp" | "sentAt" => {
                let slot = match key.as_str() {
                    "timestamp" => &mut segment.timestamp,
                    "originalTimestamp" => &mut segment.original_timestamp,
                    _ => &mut segment.sent_at,
                };
                match value.as_str().and_then(parse_time) {
                    Some(time) => *slot = Some(time),
                    None => keep(&mut hit, key, value),
                }
            }
            "properties" => match value {
                Value::Object(properties) => apply_properties(&mut hit, call_type, properties),
                _ => keep(&mut hit, key, value),
            },
            "traits" => match (call_type, value) {
                (SegmentCallType::Group, _) => segment.group_traits = Some(value.clone()),
                (_, Value::Object(traits)) => add_traits(&mut hit, traits),
                _ => keep(&mut hit, key, value),
            },
            _ => keep(&mut hit, key, value),
        }
    }
    if segment.sent_at.is_none() {
        segment.sent_at = shared
            .get("sentAt")
            .and_then(Value::as_str)
            .and_then(parse_time);
    }
    hit.event_time = corrected_time(
        raw.received_at,
        segment.original_timestamp.or(segment.timestamp),
        segment.sent_at,
    );
    if let Some(Value::Object(context)) = &segment.context {
        apply_context(&mut hit, context);
    }
    if hit.device.ip.is_none() {
        hit.device.ip = raw.client_ip;
    }
    hit.page.derive_hostname();
    hit.segment = Some(segment);
    Ok(hit.into())
}

/// Segment's clock-skew rule: `timestamp = receivedAt − (sentAt − originalTimestamp)`. Without
/// `sentAt` the client's time is trusted as is; without any client time, we stamp it.
fn corrected_time(
    received_at: Timestamp,
    client_time: Option<Timestamp>,
    sent_at: Option<Timestamp>,
) -> Timestamp {
    match (client_time, sent_at) {
        (Some(client), Some(sent)) => {
            let in_flight = sent.as_datetime() - client.as_datetime();
            received_at
                .as_datetime()
                .checked_sub_signed(in_flight)
                .map_or(received_at, Timestamp::from)
        }
        (Some(client), None) => client,
        (None, _) => received_at,
    }
}

fn apply_properties(hit: &mut HitFields, call_type: SegmentCallType, props: &Map<String, Value>) {
    let is_page = matches!(call_type, SegmentCallType::Page | SegmentCallType::Screen);
    for (key, value) in props {
        match (key.as_str(), value) {
            ("currency", Value::String(currency)) => hit.currency = Some(currency.clone()),
            ("products", Value::Array(products)) if products.iter().all(Value::is_object) => {
                hit.items = products
                    .iter()
                    .filter_map(Value::as_object)
                    .map(Item::from_json)
                    .collect();
            }
            // On page calls these describe the page itself (they override `context.page`).
            ("url", Value::String(url)) if is_page => hit.page.location = Some(url.clone()),
            ("referrer", Value::String(r)) if is_page => hit.page.referrer = Some(r.clone()),
            ("title", Value::String(title)) if is_page => hit.page.title = Some(title.clone()),
            _ => {
                hit.params
                    .insert(key.clone(), ParamValue::from_json(value.clone()));
            }
        }
    }
}

/// User traits; the call's own traits win over `context.traits` (added later, only if absent).
fn add_traits(hit: &mut HitFields, traits: &Map<String, Value>) {
    for (key, value) in traits {
        hit.user_properties
            .entry(key.clone())
            .or_insert_with(|| ParamValue::from_json(value.clone()));
    }
}

fn apply_context(hit: &mut HitFields, context: &Map<String, Value>) {
    let nested = |outer: &str, inner: &str| {
        context
            .get(outer)
            .and_then(|o| o.get(inner))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let device = &mut hit.device;
    device.ip = text(context, "ip").and_then(|ip| ip.parse().ok());
    device.user_agent = text(context, "userAgent");
    device.language = text(context, "locale");
    device.timezone = text(context, "timezone");
    device.os_name = nested("os", "name");
    device.os_version = nested("os", "version");
    device.manufacturer = nested("device", "manufacturer");
    device.model = nested("device", "model");
    device.category = nested("device", "type");
    device.device_id = nested("device", "id");
    if let Some(screen) = context.get("screen") {
        let side = |name| screen.get(name).and_then(Value::as_u64);
        if let (Some(width), Some(height)) = (side("width"), side("height")) {
            device.screen_resolution = Some(format!("{width}x{height}"));
        }
    }
    let page = &mut hit.page;
    page.location = page.location.take().or_else(|| nested("page", "url"));
    page.referrer = page.referrer.take().or_else(|| nested("page", "referrer"));
    page.title = page.title.take().or_else(|| nested("page", "title"));
    if let Some(Value::Object(campaign)) = context.get("campaign") {
        hit.campaign = Some(Campaign {
            name: text(campaign, "name"),
            source: text(campaign, "source"),
            medium: text(campaign, "medium"),
            term: text(campaign, "term"),
            content: text(campaign, "content"),
        });
    }
    if let Some(Value::Object(traits)) = context.get("traits") {
        add_traits(hit, traits);
    }
}

/// The batch's object merged under the call's own (the call's keys win), or whichever exists.
fn merged(shared: Option<&Value>, own: Option<&Value>) -> Option<Value> {
    match (shared, own) {
        (Some(Value::Object(shared)), Some(Value::Object(own))) => {
            let mut out = shared.clone();
            out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
            Some(Value::Object(out))
        }
        (_, Some(own)) => Some(own.clone()),
        (shared, None) => shared.cloned(),
    }
}

/// A non-empty string, or a number as text (Segment accepts numeric user ids).
fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_time(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| Timestamp::from(t.to_utc()))
}

fn keep(hit: &mut HitFields, key: &str, value: &Value) {
    hit.extra.insert(key.to_owned(), value.clone());
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
