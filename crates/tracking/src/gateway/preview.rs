//! sGTM preview passthrough: a request carrying `X-Gtm-Server-Preview` is debug traffic. It is
//! not logged; it is proxied synchronously to the site's preview server and that server's answer
//! is returned as it is, so the tag manager's preview pane shows the request as it happened.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use platform::{ApiError, Timestamp};

use super::Gateway;
use crate::sgtm::PreviewToken;
use crate::sites::directory::SiteConfig;

pub const HEADER: &str = crate::sgtm::PREVIEW_HEADER;

/// A token whose embedded creation time (an UNCONFIRMED reading, see `PreviewToken`) is older
/// than this is refused. Far longer than the one-hour lifetime reported by a third party, so a
/// misreading can only let a stale token through, never block a live one.
const MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);

/// Request headers that describe one hop, not the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
];

pub async fn forward(
    gateway: &Gateway,
    site: &SiteConfig,
    parts: &Parts,
    token: HeaderValue,
    body: Body,
    peer: SocketAddr,
) -> Response {
    match try_forward(gateway, site, parts, token, body, peer).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn try_forward(
    gateway: &Gateway,
    site: &SiteConfig,
    parts: &Parts,
    token: HeaderValue,
    body: Body,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let invalid =
        |message: &str| ApiError::bad_request("invalid_preview_token", message.to_owned());
    let token_text = token
        .to_str()
        .map_err(|_| invalid("The preview header is not text."))?;
    let parsed = PreviewToken::parse(token_text).map_err(|e| invalid(&e.to_string()))?;
    if parsed.is_expired(Timestamp::now(), MAX_TOKEN_AGE) == Some(true) {
        return Err(ApiError::bad_request(
            "preview_token_expired",
            "The preview token has expired; copy a fresh one from the tag manager's preview.",
        ));
    }
    let Some(server) = &site.preview_server_url else {
        return Err(ApiError::unprocessable(
            "preview_not_configured",
            "This site has no preview server; set `preview_server_url`.",
        ));
    };
    let raw = gateway.capture(parts, body, peer, None).await?;
    let mut url = format!("{server}{}", parts.uri.path());
    if let Some(query) = parts.uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|_| ApiError::bad_request("invalid_method", "Unsupported method."))?;
    let mut request = gateway.http.request(method, &url).body(raw.body.clone());
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != "x-forwarded-for" {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let client = raw.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    request = request.header("x-forwarded-for", client);
    let upstream = request.send().await.map_err(|err| {
        tracing::warn!(error = %err, site_id = %site.id, "preview server unreachable");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "preview_unreachable",
            "The site's preview server did not answer.",
        )
    })?;
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    let bytes = upstream.bytes().await.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "preview_unreachable",
            "The preview server's answer broke off.",
        )
    })?;
    response
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(Body::from(bytes))
        .map_err(ApiError::internal)
}
