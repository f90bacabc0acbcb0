//! Server-side GTM helpers (PROTOCOLS.md §2): the preview header, the container-config string,
//! first-party loader URLs and the `_gl` cross-domain linker ([`linker`]).
//!
//! None of these formats is documented by Google. What is decoded here is what public material
//! and observed values show; every guess is marked UNCONFIRMED where it is made, and nothing in
//! the gateway may depend on a guess to decide whether to forward something.

pub mod linker;

use std::time::Duration;

use chrono::DateTime;
use platform::Timestamp;

use crate::encoding::decode_base64_text;
use crate::error::ParseError;
use crate::ga4::{is_id_suffix, is_measurement_id};

pub use linker::{Linker, LinkerBrowser, LinkerEntry};

/// The header the tagging server looks for to route a request to its preview server.
pub const PREVIEW_HEADER: &str = "x-gtm-server-preview";

/// How long a preview token lives according to one third-party source (UNCONFIRMED).
pub const PREVIEW_TOKEN_TTL_GUESS: Duration = Duration::from_secs(60 * 60);

/// An `X-Gtm-Server-Preview` value: opaque base64, decoded as far as it can be.
///
/// **Rule for the proxy:** forward the header unchanged whenever it is present. Everything
/// below is for display and diagnostics only.
///
/// UNCONFIRMED (inferred from publicly posted tokens, not documented): the decoded text looks
/// like `env-<N>|<auth>|<hex>`, where the first 11 hex digits of the last field read as a plausible
/// creation time in Unix milliseconds and the rest looks random. When a token has that shape
/// the parts are exposed; when it does not, only `decoded` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewToken {
    raw: String,
    decoded: String,
    environment: Option<String>,
    auth: Option<String>,
    issued_at: Option<Timestamp>,
}

impl PreviewToken {
    /// Accepts any value that is base64 of non-empty UTF-8 text.
    pub fn parse(header_value: &str) -> Result<Self, ParseError> {
        let invalid = |reason: &str| ParseError::invalid("X-Gtm-Server-Preview", None, reason);
        let raw = header_value.trim();
        let decoded = decode_base64_text(raw)
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| invalid("not base64 of a text token"))?;
        let mut token = Self {
            raw: raw.to_owned(),
            decoded: decoded.clone(),
            environment: None,
            auth: None,
            issued_at: None,
        };
        let parts: Vec<&str> = decoded.split('|').collect();
        if let [environment, auth, tail] = parts[..]
            && environment.starts_with("env-")
        {
            token.environment = Some(environment.to_owned());
            token.auth = Some(auth.to_owned());
            token.issued_at = issued_at(tail);
        }
        Ok(token)
    }

    /// The header value exactly as received (trimmed): what must be forwarded.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn decoded(&self) -> &str {
        &self.decoded
    }

    /// `env-<N>`, when the token has the usual shape.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    pub fn auth(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// The creation time the token seems to carry (UNCONFIRMED reading, see the type's doc).
    pub fn issued_at(&self) -> Option<Timestamp> {
        self.issued_at
    }

    /// Whether the token is older than `ttl` at `now`; `None` when it carries no readable
    /// time. Use [`PREVIEW_TOKEN_TTL_GUESS`] for `ttl` unless you know better. Diagnostics only:
    /// never drop the header because of this.
    pub fn is_expired(&self, now: Timestamp, ttl: Duration) -> Option<bool> {
        self.issued_at.map(|issued| now > issued + ttl)
    }
}

/// 11 hex digits of Unix milliseconds cover 2004–2527; accept only 2015–2100 so that a random
/// tail is not mistaken for a time.
fn issued_at(tail: &str) -> Option<Timestamp> {
    let millis = i64::from_str_radix(tail.get(..11)?, 16).ok()?;
    const FROM: i64 = 1_420_070_400_000; // 2015-01-01
    const UNTIL: i64 = 4_102_444_800_000; // 2100-01-01
    (FROM..UNTIL)
        .contains(&millis)
        .then(|| DateTime::from_timestamp_millis(millis).map(Timestamp::from))
        .flatten()
}

/// The sGTM "container config" string: base64 of `id=GTM-XXXX&env=1&auth=<token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub container_id: String,
    pub environment: Option<String>,
    pub auth: Option<String>,
    /// Any other parameter, in order.
    pub other: Vec<(String, String)>,
}

impl ContainerConfig {
    pub fn decode(config: &str) -> Result<Self, ParseError> {
        let text = decode_base64_text(config)
            .ok_or_else(|| ParseError::invalid("container_config", None, "not base64 text"))?;
        let mut container_id = None;
        let mut environment = None;
        let mut auth = None;
        let mut other = Vec::new();
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            let value = value.into_owned();
            match key.as_ref() {
                "id" => container_id = Some(value),
                "env" => environment = Some(value),
                "auth" => auth = Some(value),
                _ => other.push((key.into_owned(), value)),
            }
        }
        let container_id = container_id.ok_or(ParseError::missing("id", None))?;
        if !is_container_id(&container_id) {
            return Err(ParseError::invalid(
                "id",
                None,
                format!("`{container_id}` is not a GTM container id"),
            ));
        }
        Ok(Self {
            container_id,
            environment,
            auth,
            other,
        })
    }
}

/// A loader request's container id and parameters (`/gtm.js?id=GTM-…`, `/gtag/js?id=G-…`, or
/// a first-party custom loader that hides `id=…` base64-encoded in a randomly named parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderQuery {
    /// `GTM-…` (web container) or `G-…` (gtag).
    pub container_id: String,
    /// The loader's real parameters (`id`, `l`, `gtm_auth`, `gtm_preview`, …): the query's own
    /// for a plain request, the decoded ones for a hidden id. Decoys are not included.
    pub params: Vec<(String, String)>,
    /// The randomly named parameter that carried the hidden id, if that is how it came.
    pub hidden_in: Option<String>,
}

/// Finds the container id in a loader query string, plain or hidden (Stape style:
/// `42poe=aWQ9R1RNLU1DS1A3Sks%3D&page=1` carries `id=GTM-MCKP7JK`; `page=1` is a decoy).
pub fn decode_loader_query(query: &str) -> Option<LoaderQuery> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some((_, id)) = pairs.iter().find(|(k, v)| k == "id" && is_container_id(v)) {
        return Some(LoaderQuery {
            container_id: id.clone(),
            params: pairs.clone(),
            hidden_in: None,
        });
    }
    pairs.iter().find_map(|(name, value)| {
        // Any parameter may be the carrier; decoys simply fail to decode to `id=<container>`.
        let inner = decode_base64_text(value)?;
        let params: Vec<(String, String)> = form_urlencoded::parse(inner.as_bytes())
            .into_owned()
            .collect();
        let container_id = params
            .iter()
            .find(|(k, v)| k == "id" && is_container_id(v))?
            .1
            .clone();
        Some(LoaderQuery {
            container_id,
            params,
            hidden_in: Some(name.clone()),
        })
    })
}

/// `GTM-` or `G-` followed by upper-case letters and digits.
pub fn is_container_id(text: &str) -> bool {
    is_measurement_id(text) || text.strip_prefix("GTM-").is_some_and(is_id_suffix)
}

#[cfg(test)]
mod tests;
