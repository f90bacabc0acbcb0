//! The original tracking request, kept so it can be replayed byte-faithfully later.
//!
//! The gateway builds a `RawRequest` from the HTTP request (after gzip decoding), hands it to a
//! protocol parser, and stores it beside the hits: the sGTM destination replays it as it came,
//! and a parser fix can be re-run over old traffic. Only headers that matter downstream are
//! kept; everything else (hop-by-hop headers, `Content-Encoding` of a body we already decoded,
//! bearer tokens) would make a replay wrong or leak a secret.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use platform::Timestamp;
use serde::{Deserialize, Serialize};

/// Headers worth keeping, lower-case. `sec-ch-ua*` client hints are kept by prefix.
pub const KEPT_HEADERS: &[&str] = &[
    "user-agent",
    "content-type",
    "accept-language",
    "referer",
    "origin",
    "cookie",
    "x-gtm-server-preview",
    "x-forwarded-for",
    // Privacy signals a destination may have to honour.
    "dnt",
    "sec-gpc",
    // Only the `Basic` form, which carries a Segment write key (see `keeps_header`).
    "authorization",
];

/// A tracking request as received; serialises to JSON with the body in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRequest {
    /// Upper-case HTTP method.
    pub method: String,
    /// Request path, e.g. `/g/collect`.
    pub path: String,
    /// The raw query string without `?`, still percent-encoded.
    pub query: String,
    /// Kept headers in arrival order, names lower-case; repeated headers stay repeated.
    pub headers: Vec<(String, String)>,
    /// The body after content decoding.
    #[serde(with = "body_base64")]
    pub body: Bytes,
    /// The client's address as the gateway determined it (peer or trusted proxy header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    pub received_at: Timestamp,
}

impl RawRequest {
    pub fn new(
        method: impl Into<String>,
        path: impl Into<String>,
        query: impl Into<String>,
        received_at: Timestamp,
    ) -> Self {
        Self {
            method: method.into().to_ascii_uppercase(),
            path: path.into(),
            query: query.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            client_ip: None,
            received_at,
        }
    }

    /// Adds a header if it is one worth keeping; the name is lower-cased.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.push_header(name, value);
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Adds a header if it is one worth keeping (the gateway calls this for every header).
    pub fn push_header(&mut self, name: &str, value: &str) {
        // HTTP/1 header names reach us lower-cased already (the `http` crate's `HeaderName`):
        // most headers are dropped, and they should cost no allocation for it.
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        if keeps_header(&name, value) {
            self.headers.push((name.into_owned(), value.to_owned()));
        }
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.header("user-agent")
    }
}

/// Whether a header (lower-case name) belongs in a `RawRequest`.
pub fn keeps_header(name: &str, value: &str) -> bool {
    if name == "authorization" {
        // A Basic credential here is a Segment write key, which the body may carry just as
        // well; a Bearer token is a real secret and must not be written to the event log.
        return value
            .get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("basic "));
    }
    name.starts_with("sec-ch-ua") || KEPT_HEADERS.contains(&name)
}

mod body_base64 {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(body: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_forwardable_headers() {
        let raw = RawRequest::new("post", "/g/collect", "v=2", Timestamp::now())
            .with_header("User-Agent", "Mozilla/5.0")
            .with_header("Sec-CH-UA-Platform", "\"Windows\"")
            .with_header("Content-Encoding", "gzip")
            .with_header("Connection", "keep-alive")
            .with_header("Authorization", "Bearer secret-token")
            .with_header("authorization", "Basic YWJjMTIzOg==")
            .with_header("X-Gtm-Server-Preview", "ZW52LTF8YXV0aHwx");
        assert_eq!(raw.method, "POST");
        let names: Vec<_> = raw.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "user-agent",
                "sec-ch-ua-platform",
                "authorization",
                "x-gtm-server-preview"
            ]
        );
        assert_eq!(raw.header("AUTHORIZATION"), Some("Basic YWJjMTIzOg=="));
        assert_eq!(raw.user_agent(), Some("Mozilla/5.0"));
    }

    #[test]
    fn round_trips_arbitrary_bytes_through_json() {
        let body: Vec<u8> = (0..=255).collect();
        let raw = RawRequest::new("POST", "/g/collect", "v=2&tid=G-ABC", Timestamp::now())
            .with_body(body.clone())
            .with_client_ip("2001:db8::1".parse().unwrap());
        let json = serde_json::to_value(&raw).unwrap();
        assert!(json["body"].is_string());
        let back: RawRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, raw);
        assert_eq!(&back.body[..], &body[..]);
        assert!(serde_json::from_str::<RawRequest>(
            r#"{"method":"GET","path":"/","query":"","headers":[],"body":"!!","received_at":"2026-01-01T00:00:00Z"}"#
        )
        .is_err());
    }
}
