//! Edge hygiene for tracking requests: reading bodies within limits (gzip included), the client
//! address, CORS, bot detection and IP truncation.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use platform::{ApiError, Timestamp};

use crate::RawRequest;

/// Reads the body (at most `limit` bytes, before and after gzip decoding) and builds the
/// `RawRequest` the parsers and the event log see. `path` overrides the request path, so a hit
/// sent to an obfuscated collect path is stored in its GA4 form.
pub async fn capture(
    parts: &Parts,
    body: Body,
    peer: SocketAddr,
    trust_forwarded_for: bool,
    limit: usize,
    path: Option<&str>,
) -> Result<RawRequest, ApiError> {
    let body = platform::http::within_declared_limit(&parts.headers, body, limit)
        .ok_or_else(|| too_large(limit))?;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;
    let bytes = match parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => bytes,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => gunzip(&bytes, limit)?.into(),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_encoding",
                format!("Content-Encoding `{other}` is not supported (use gzip or none)."),
            ));
        }
    };
    let mut raw = RawRequest::new(
        parts.method.as_str(),
        path.unwrap_or(parts.uri.path()),
        parts.uri.query().unwrap_or(""),
        Timestamp::now(),
    )
    .with_body(bytes)
    .with_client_ip(client_ip(&parts.headers, peer, trust_forwarded_for));
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            raw.push_header(name.as_str(), value);
        }
    }
    Ok(raw)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("The request body is larger than {limit} bytes."),
    )
}

/// Decodes gzip, refusing output past `limit` (a small bomb must not become a big allocation).
fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(bytes).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|_| ApiError::bad_request("invalid_gzip", "The body is not valid gzip."))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}

/// The client address: the peer, or the first `X-Forwarded-For` entry behind a trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for
        && let Some(first) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
        && let Ok(ip) = first.trim().parse::<IpAddr>()
    {
        return ip;
    }
    peer.ip()
}

/// Drops the host part an address needs least for geolocation: the last octet of IPv4, the last
/// 80 bits of IPv6 (what GA4 and most analytics tools do).
pub fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Tokens that mark crawlers, monitors and headless tools in a user agent (lower case).
const BOT_TOKENS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "headless",
    "lighthouse",
    "pingdom",
    "uptime",
    "monitor",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "java/",
    "okhttp",
    "facebookexternalhit",
    "preview",
    "phantomjs",
    "selenium",
    "puppeteer",
    "playwright",
];

/// [`BOT_TOKENS`] as one automaton, ASCII case ignored: the gateway asks about every hit, and a
/// single pass over the agent replaced a lower-cased copy searched once per token.
fn bot_tokens() -> &'static aho_corasick::AhoCorasick {
    static TOKENS: std::sync::OnceLock<aho_corasick::AhoCorasick> = std::sync::OnceLock::new();
    TOKENS.get_or_init(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(BOT_TOKENS)
            .expect("a short list of literal tokens always builds")
    })
}

/// Whether a browser hit's user agent belongs to a bot. A missing agent counts as one: every
/// browser sends it.
pub fn is_bot(user_agent: Option<&str>) -> bool {
    match user_agent {
        None => true,
        Some(ua) if ua.trim().is_empty() => true,
        Some(ua) => bot_tokens().is_match(ua),
    }
}

/// CORS answer headers for an allowed origin (credentials allowed: gtag may send cookies).
pub fn cors_headers(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The preflight answer: allowed origins get the methods and headers they ask for.
pub fn preflight(request_headers: &HeaderMap, allowed: bool) -> axum::response::Response {
    let mut response = axum::response::Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let origin = request_headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if let (true, Some(origin)) = (allowed, origin) {
        let headers = response.headers_mut();
        cors_headers(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(asked) = request_headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
    }
    response
}

pub fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_are_recognised() {
        assert!(!is_bot(Some(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
        )));
        assert!(is_bot(Some(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        )));
        assert!(is_bot(Some("Mozilla/5.0 HeadlessChrome/120.0")));
        assert!(is_bot(Some("curl/8.5.0")));
        // Tokens match whatever the case.
        assert!(is_bot(Some("Mozilla/5.0 (compatible; AhrefsBot/7.0)")));
        assert!(is_bot(Some("Python-Requests/2.31")));
        assert!(is_bot(None));
    }

    #[test]
    fn ips_are_truncated() {
        assert_eq!(
            truncate_ip("81.2.69.142".parse().unwrap()).to_string(),
            "81.2.69.0"
        );
        assert_eq!(
            truncate_ip("2001:218:1:2:3:4:5:6".parse().unwrap()).to_string(),
            "2001:218:1::"
        );
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("81.2.69.142, 10.0.0.1"),
        );
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(client_ip(&headers, peer, false).to_string(), "127.0.0.1");
        assert_eq!(client_ip(&headers, peer, true).to_string(), "81.2.69.142");
    }

    #[test]
    fn gzip_bombs_are_refused() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b'a'; 5 * 1024 * 1024]).unwrap();
        let small = encoder.finish().unwrap();
        assert!(small.len() < 64 * 1024);
        assert_eq!(
            gunzip(&small, 1024 * 1024).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(gunzip(b"not gzip", 1024).unwrap_err().code, "invalid_gzip");
    }
}
