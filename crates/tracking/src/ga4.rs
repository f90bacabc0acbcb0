//! GA4 gtag.js browser hits: `/g/collect`, protocol v2 (PROTOCOLS.md §1.1).
//!
//! Request-wide parameters travel in the URL query; a `POST` body may add one event per line,
//! each line a URL-encoded `k=v&…` string whose parameters override the URL's. An empty body
//! means the URL alone is one event. Google documents none of this; the rules are those of the
//! open-source collectors (d8a): trim, split on `\n`, skip empty lines.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ParseError;
use crate::hit::{ClientHints, ConsentState, Hit, HitFields, ParamValue, Protocol};
use crate::item::Item;
use crate::raw::RawRequest;

/// Events one request may carry. gtag batches far fewer; the cap bounds the work a single
/// request can cause.
pub const MAX_EVENTS: usize = 50;
/// Longest query string or body line. gtag keeps a hit well under 8 KB; twice that leaves room.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Largest body (sendBeacon refuses more than 64 KB; this is generous).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// gtag's item parameters run from `pr1` to `pr200`.
const MAX_ITEMS: u16 = 200;

type Pairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;
/// One event's parameters: the URL's, overridden by its body line's.
type Params<'a> = BTreeMap<&'a str, &'a str>;

/// Parses one `/g/collect` request into its events (at least one).
///
/// Fails as a whole when any event is invalid: gtag produces well-formed batches, so a broken
/// line means the sender is not gtag and the request is not worth keeping half of.
pub fn parse(raw: &RawRequest) -> Result<Vec<Hit>, ParseError> {
    let request = Split::new(raw)?;
    let shared: Pairs<'_> = form_urlencoded::parse(request.query).collect();
    // Sorted once per request; each event line copies it and lays its own parameters over it.
    // Later wins: a repeated parameter overrides its earlier occurrence.
    let shared_map: Params<'_> = shared
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    if request.lines.is_empty() {
        return Ok(vec![build_hit(raw, &shared_map, None)?]);
    }
    request
        .lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let own: Pairs<'_> = form_urlencoded::parse(line).collect();
            let mut merged = shared_map.clone();
            merged.extend(own.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
            build_hit(raw, &merged, Some(index))
        })
        .collect()
}

/// What the gateway needs to know of a `/g/collect` request before it stores it: that
/// [`parse`] accepts it, how many events it carries, and the measurement ids they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub events: usize,
    /// Distinct `tid`s, in the order the events name them (gtag sends one).
    pub measurement_ids: Vec<String>,
}

/// Checks a request exactly as [`parse`] does (same limits, same per-event requirements, same
/// errors, since both go through [`Split::new`] and [`required`]) without building its hits.
/// [`parse`]'s only failures are those two, so `check(r).is_ok() == parse(r).is_ok()`, with
/// `events` its number of hits: the gateway stores the request and readers parse it again
/// (see `gateway::record`), so building hits on the request path would be wasted work.
pub fn check(raw: &RawRequest) -> Result<Checked, ParseError> {
    let request = Split::new(raw)?;
    let shared = Found::scan(request.query);
    let shared = shared.view();
    let mut measurement_ids: Vec<String> = Vec::new();
    let mut note = |tid: &str| {
        if !measurement_ids.iter().any(|m| m == tid) {
            measurement_ids.push(tid.to_owned());
        }
    };
    if request.lines.is_empty() {
        note(required(shared, None)?.0);
    }
    for (index, line) in request.lines.iter().enumerate() {
        let own = Found::scan(line);
        note(required(own.view().over(shared), Some(index))?.0);
    }
    Ok(Checked {
        events: request.lines.len().max(1),
        measurement_ids,
    })
}

/// A request cut into its URL parameters and body lines, within the limits.
struct Split<'a> {
    /// The URL's parameters, still encoded.
    query: &'a [u8],
    /// Empty: the URL alone is the one event.
    lines: Vec<&'a [u8]>,
}

impl<'a> Split<'a> {
    fn new(raw: &'a RawRequest) -> Result<Self, ParseError> {
        let is_post = match raw.method.as_str() {
            "POST" => true,
            "GET" => false,
            other => {
                return Err(ParseError::MethodNotAllowed {
                    method: other.to_owned(),
                    allowed: "GET or POST",
                });
            }
        };
        if raw.query.len() > MAX_LINE_BYTES {
            return Err(ParseError::LineTooLong {
                line: None,
                len: raw.query.len(),
                max: MAX_LINE_BYTES,
            });
        }
        if raw.body.len() > MAX_BODY_BYTES {
            return Err(ParseError::PayloadTooLarge {
                len: raw.body.len(),
                max: MAX_BODY_BYTES,
            });
        }
        // A GET has no meaningful body; ignoring one is what Google's endpoint does too.
        let lines = if is_post {
            body_lines(&raw.body)
        } else {
            Vec::new()
        };
        if lines.len() > MAX_EVENTS {
            return Err(ParseError::TooManyEvents {
                count: lines.len(),
                max: MAX_EVENTS,
            });
        }
        if let Some((index, line)) = lines
            .iter()
            .enumerate()
            .find(|(_, l)| l.len() > MAX_LINE_BYTES)
        {
            return Err(ParseError::LineTooLong {
                line: Some(index),
                len: line.len(),
                max: MAX_LINE_BYTES,
            });
        }
        Ok(Split {
            query: raw.query.as_bytes(),
            lines,
        })
    }
}

/// The parameters every event must have, as one event sees them (`None`: absent).
#[derive(Clone, Copy, Default)]
struct Required<'a> {
    v: Option<&'a str>,
    tid: Option<&'a str>,
    en: Option<&'a str>,
}

/// The last `v`, `tid` and `en` of a URL-encoded string, decoded as `form_urlencoded::parse`
/// decodes them, without decoding anything else: a key can decode to one of those names only
/// if it is one literally or holds a `%` or `+`, and only such pairs are decoded.
#[derive(Default)]
struct Found<'a> {
    v: Option<Cow<'a, str>>,
    tid: Option<Cow<'a, str>>,
    en: Option<Cow<'a, str>>,
}

impl<'a> Found<'a> {
    fn scan(input: &'a [u8]) -> Self {
        let mut found = Found::default();
        for pair in input.split(|b| *b == b'&').filter(|pair| !pair.is_empty()) {
            let key = pair.split(|b| *b == b'=').next().unwrap_or(pair);
            let encoded = key.iter().any(|b| matches!(b, b'%' | b'+'));
            if !encoded && !matches!(key, b"v" | b"tid" | b"en") {
                continue;
            }
            // One pair, no `&`: the parser yields exactly its decoding.
            let Some((key, value)) = form_urlencoded::parse(pair).next() else {
                continue;
            };
            let slot = match key.as_ref() {
                "v" => &mut found.v,
                "tid" => &mut found.tid,
                "en" => &mut found.en,
                _ => continue,
            };
            *slot = Some(value);
        }
        found
    }

    fn view(&self) -> Required<'_> {
        Required {
            v: self.v.as_deref(),
            tid: self.tid.as_deref(),
            en: self.en.as_deref(),
        }
    }
}

impl<'a> Required<'a> {
    /// A body line's parameters laid over the URL's.
    fn over(self, shared: Required<'a>) -> Required<'a> {
        Required {
            v: self.v.or(shared.v),
            tid: self.tid.or(shared.tid),
            en: self.en.or(shared.en),
        }
    }
}

/// Checks the parameters every event needs: `v=2`, a GA4 `tid` and an event name; returns the
/// measurement id and the event name.
fn required<'a>(
    params: Required<'a>,
    event: Option<usize>,
) -> Result<(&'a str, &'a str), ParseError> {
    match params.v {
        None => return Err(ParseError::missing("v", event)),
        Some("2") => {}
        Some(other) => {
            return Err(ParseError::UnsupportedVersion {
                found: other.to_owned(),
            });
        }
    }
    let tid = non_empty(params.tid).ok_or(ParseError::missing("tid", event))?;
    if !is_measurement_id(tid) {
        return Err(ParseError::invalid(
            "tid",
            event,
            format!("`{tid}` is not a GA4 measurement id (G-XXXXXXXXXX)"),
        ));
    }
    let en = non_empty(params.en).ok_or(ParseError::missing("en", event))?;
    Ok((tid, en))
}

/// The body's non-empty lines, each trimmed (which also drops the `\r` of CRLF).
fn body_lines(body: &[u8]) -> Vec<&[u8]> {
    body.split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .collect()
}

/// Builds one event from its parameters (the URL's overridden by one body line's).
fn build_hit(
    raw: &RawRequest,
    merged: &Params<'_>,
    event: Option<usize>,
) -> Result<Hit, ParseError> {
    let (tid, en) = required(
        Required {
            v: merged.get("v").copied(),
            tid: merged.get("tid").copied(),
            en: merged.get("en").copied(),
        },
        event,
    )?;

    let mut hit = HitFields::new(Protocol::Ga4, en, raw.received_at);
    hit.measurement_id = Some(tid.to_owned());
    hit.device.user_agent = raw.user_agent().map(str::to_owned);
    hit.device.ip = raw.client_ip;
    let mut hints = ClientHints::default();
    let mut items: BTreeMap<u16, Item> = BTreeMap::new();

    for (&key, &value) in merged {
        let text = || non_empty(Some(value)).map(str::to_owned);
        match key {
            "v" | "tid" | "en" => {}
            "cid" => hit.client_id = text(),
            "uid" => hit.user_id = text(),
            "sid" => hit.session.id = text(),
            "sct" => match value.parse() {
                Ok(n) => hit.session.number = Some(n),
                Err(_) => keep(&mut hit, key, value),
            },
            "seg" => match bit(value) {
                Some(b) => hit.session.engaged = Some(b),
                None => keep(&mut hit, key, value),
            },
            "dl" => hit.page.location = text(),
            "dr" => hit.page.referrer = text(),
            "dt" => hit.page.title = text(),
            "dh" => hit.page.hostname = text().map(|h| h.to_ascii_lowercase()),
            "_et" => match value.parse() {
                Ok(ms) => hit.engagement_time_ms = Some(ms),
                Err(_) => keep(&mut hit, key, value),
            },
            "_fv" => hit.flags.first_visit = flag(value),
            "_ss" => hit.flags.session_start = flag(value),
            "_dbg" => hit.flags.debug = flag(value),
            "_c" => hit.flags.conversion = flag(value),
            "cu" => hit.currency = text(),
            "gcs" => {
                hit.consent.gcs = text();
                if let Some((ad, analytics)) = decode_gcs(value) {
                    hit.consent.ad_storage = ad;
                    hit.consent.analytics_storage = analytics;
                }
            }
            "gcd" => hit.consent.gcd = text(),
            "dma" => hit.consent.dma = text(),
            "npa" => match bit(value) {
                Some(b) => hit.consent.non_personalized_ads = Some(b),
                None => keep(&mut hit, key, value),
            },
            "ul" => hit.device.language = text(),
            "sr" => hit.device.screen_resolution = text(),
            "uaa" => hints.architecture = text(),
            "uab" => hints.bitness = text(),
            "uafvl" => hints.full_version_list = text(),
            "uam" => hints.model = text(),
            "uap" => hints.platform = text(),
            "uapv" => hints.platform_version = text(),
            "uamb" | "uaw" => match bit(value) {
                Some(b) if key == "uamb" => hints.mobile = Some(b),
                Some(b) => hints.wow64 = Some(b),
                None => keep(&mut hit, key, value),
            },
            _ => apply_prefixed(&mut hit, &mut items, key, value),
        }
    }
    if hints != ClientHints::default() {
        hit.device.client_hints = Some(hints);
    }
    hit.items = items.into_values().collect();
    hit.page.derive_hostname();
    Ok(hit.into())
}

/// `ep.*`, `epn.*`, `up.*`, `upn.*` and `pr<N>`; anything else is kept verbatim in `extra`.
fn apply_prefixed(hit: &mut HitFields, items: &mut BTreeMap<u16, Item>, key: &str, value: &str) {
    let typed = |prefix: &str| key.strip_prefix(prefix).filter(|name| !name.is_empty());
    let (target, name, param) = if let Some(name) = typed("ep.") {
        (
            &mut hit.params,
            name,
            Some(ParamValue::String(value.to_owned())),
        )
    } else if let Some(name) = typed("epn.") {
        (&mut hit.params, name, ParamValue::parse_number(value))
    } else if let Some(name) = typed("up.") {
        (
            &mut hit.user_properties,
            name,
            Some(ParamValue::String(value.to_owned())),
        )
    } else if let Some(name) = typed("upn.") {
        (
            &mut hit.user_properties,
            name,
            ParamValue::parse_number(value),
        )
    } else {
        match item_index(key) {
            Some(index) => {
                items.insert(index, Item::from_gtag(value));
            }
            None => keep(hit, key, value),
        }
        return;
    };
    match param {
        // `ep.x` and `epn.x` both present: the second one stays, verbatim, in `extra`.
        Some(param) if !target.contains_key(name) => {
            target.insert(name.to_owned(), param);
        }
        _ => keep(hit, key, value),
    }
}

/// `pr1`…`pr200` → 1…200.
fn item_index(key: &str) -> Option<u16> {
    let digits = key.strip_prefix("pr")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| (1..=MAX_ITEMS).contains(n))
}

fn keep(hit: &mut HitFields, key: &str, value: &str) {
    hit.extra
        .insert(key.to_owned(), Value::String(value.to_owned()));
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

/// gtag flags are `1` when set (one source mentions `_fv=2`); absent, empty or `0` is unset.
fn flag(value: &str) -> bool {
    !value.is_empty() && value != "0"
}

fn bit(value: &str) -> Option<bool> {
    match value {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `G-` followed by upper-case letters and digits.
pub fn is_measurement_id(text: &str) -> bool {
    text.strip_prefix("G-").is_some_and(is_id_suffix)
}

/// The part of a Google tag id after its prefix: upper-case letters and digits.
pub(crate) fn is_id_suffix(rest: &str) -> bool {
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// `gcs=G1<ad_storage><analytics_storage>`, each `1` granted or `0` denied (`-`: not set).
fn decode_gcs(gcs: &str) -> Option<(Option<ConsentState>, Option<ConsentState>)> {
    let state = |b: u8| match b {
        b'1' => Some(ConsentState::Granted),
        b'0' => Some(ConsentState::Denied),
        _ => None,
    };
    match gcs.as_bytes() {
        [b'G', b'1', ad, analytics] => Some((state(*ad), state(*analytics))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
