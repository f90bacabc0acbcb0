//! The collect handlers: GA4 gtag, Measurement Protocol (and its debug twin), Segment.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use platform::ApiError;

use super::edge::{self, cors_headers, is_preflight, preflight};
use super::{CompactRecord, Gateway, RecordId, loader, preview};
use crate::log::AppendError;
use crate::sites::directory::SiteConfig;
use crate::{RawRequest, ga4, mp, segment};

/// A refused request: the error to answer and, when known, the site to count it against.
struct Refusal {
    error: ApiError,
    site: Option<Arc<SiteConfig>>,
}

impl Refusal {
    fn new(error: ApiError, site: Option<&Arc<SiteConfig>>) -> Self {
        Self {
            error,
            site: site.cloned(),
        }
    }

    fn answer(self, gateway: &Gateway) -> Response {
        gateway.usage.rejected(
            self.site.as_ref().map(|s| (s.id, s.workspace_id)),
            &self.error.code,
        );
        self.error.into_response()
    }
}

fn host_of(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.host())
}

fn unknown_site() -> ApiError {
    ApiError::not_found(
        "unknown_site",
        "No site serves this host or measurement id.",
    )
}

fn parse_error(err: crate::ParseError) -> ApiError {
    let status = match err {
        crate::ParseError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        crate::ParseError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut error = ApiError::new(status, err.code(), err.to_string());
    if let Some(parameter) = err.parameter() {
        error = error.with_details(serde_json::json!({ "parameter": parameter }));
    }
    error
}

/// Counts the request against the client's and the site's rate limits.
fn check_limits(gateway: &Gateway, site: &SiteConfig, raw: &RawRequest) -> Result<(), ApiError> {
    // Only a refusal needs the clock: building one costs CPUID instructions (quanta), which a
    // VM traps, so it stays off the accepted path.
    let limited = |not_until: governor::NotUntil<governor::clock::QuantaInstant>| {
        let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
        let wait = not_until.wait_time_from(now);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many tracking requests; slow down.",
        )
        .with_details(serde_json::json!({ "retry_after_seconds": wait.as_secs().max(1) }))
    };
    if let (Some(limiter), Some(ip)) = (&gateway.per_ip, raw.client_ip) {
        limiter.check_key(&ip).map_err(limited)?;
    }
    if let Some(limiter) = &gateway.per_site {
        limiter.check_key(&site.id).map_err(limited)?;
    }
    Ok(())
}

/// Counts the request against the limits, then appends it; returns once it is durable.
async fn accept(
    gateway: &Gateway,
    site: &Arc<SiteConfig>,
    raw: RawRequest,
    hit_count: usize,
    bot: bool,
) -> Result<(), Refusal> {
    check_limits(gateway, site, &raw).map_err(|e| Refusal::new(e, Some(site)))?;
    append(gateway, site, raw, hit_count, bot)
        .await
        .map_err(|e| Refusal::new(e, Some(site)))
}

/// Appends one record of `raw`, which parses into `hit_count` hits, and returns once it is
/// durable.
async fn append(
    gateway: &Gateway,
    site: &SiteConfig,
    mut raw: RawRequest,
    hit_count: usize,
    bot: bool,
) -> Result<(), ApiError> {
    if site.truncate_ip {
        raw.client_ip = raw.client_ip.map(edge::truncate_ip);
        raw.headers.retain(|(name, _)| name != "x-forwarded-for");
    }
    // The stored record is the request (see `record`); `write` reserves its exact size.
    let mut bytes = Vec::new();
    CompactRecord {
        id: RecordId::new(),
        site_id: site.id,
        workspace_id: site.workspace_id,
        bot,
        // Parsers copy the sender's address into each hit; readers truncate those too.
        ip_truncated: site.truncate_ip,
        hit_count,
        request: &raw,
    }
    .write(&mut bytes)
    .map_err(ApiError::internal)?;
    gateway.log.append(bytes).await.map_err(|err| match err {
        AppendError::Overloaded => {
            ApiError::service_unavailable("The event log is busy; retry shortly.")
                .with_code("overloaded")
                .with_details(serde_json::json!({ "retry_after_seconds": 1 }))
        }
        AppendError::Unavailable(reason) => {
            tracing::error!(%reason, "event log append failed");
            ApiError::service_unavailable("The event log is unavailable; retry shortly.")
                .with_details(serde_json::json!({ "retry_after_seconds": 5 }))
        }
    })?;
    gateway
        .usage
        .accepted(site.id, site.workspace_id, hit_count);
    Ok(())
}

/// `GET|POST /g/collect`, as a route of [`Gateway::router`]. (`switchyard` serves this path
/// through [`collect_ga4`] before its router sees it; the route keeps the gateway's router
/// complete on its own.)
pub async fn ga4_collect(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    collect_ga4(&gateway, request, peer).await
}

/// `GET|POST /g/collect` from `peer`, without a router: the server hands its busiest path
/// here directly.
pub async fn collect_ga4(gateway: &Arc<Gateway>, request: Request, peer: SocketAddr) -> Response {
    let (parts, body) = request.into_parts();
    let site = host_of(&parts).and_then(|h| gateway.directory.by_host(h));
    ga4_with_site(gateway, parts, body, peer, site, None).await
}

/// GA4 collection for a request whose host matched `site` (or none); `path` restores an
/// obfuscated collect path to `/g/collect`.
pub(super) async fn ga4_with_site(
    gateway: &Arc<Gateway>,
    parts: Parts,
    body: Body,
    peer: SocketAddr,
    site: Option<Arc<SiteConfig>>,
    path: Option<&str>,
) -> Response {
    if is_preflight(&parts) {
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return preflight(
            &parts.headers,
            site.as_ref().is_some_and(|s| s.allows_origin(origin)),
        );
    }
    if let Some(site) = &site
        && let Some(token) = parts.headers.get(preview::HEADER)
    {
        return preview::forward(gateway, site, &parts, token.clone(), body, peer).await;
    }
    match ga4_accept(gateway, &parts, body, peer, site, path).await {
        Ok(site) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Some(origin) = parts
                .headers
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                && site.allows_origin(origin)
            {
                cors_headers(response.headers_mut(), origin);
            }
            response
        }
        Err(refusal) => refusal.answer(gateway),
    }
}

async fn ga4_accept(
    gateway: &Gateway,
    parts: &Parts,
    body: Body,
    peer: SocketAddr,
    site: Option<Arc<SiteConfig>>,
    path: Option<&str>,
) -> Result<Arc<SiteConfig>, Refusal> {
    let raw = gateway
        .capture(parts, body, peer, path)
        .await
        .map_err(|e| Refusal::new(e, site.as_ref()))?;
    let checked = ga4::check(&raw).map_err(|e| Refusal::new(parse_error(e), site.as_ref()))?;
    let site = match site {
        Some(site) => site,
        None => checked
            .measurement_ids
            .first()
            .and_then(|id| gateway.directory.by_measurement_id(id))
            .ok_or_else(|| Refusal::new(unknown_site(), None))?,
    };
    if !site.measurement_ids.is_empty()
        && let Some(stranger) = checked
            .measurement_ids
            .iter()
            .find(|id| !site.measurement_ids.iter().any(|m| m == *id))
    {
        return Err(Refusal::new(
            ApiError::bad_request(
                "unknown_measurement_id",
                format!("This site does not accept `tid={stranger}`."),
            )
            .with_details(serde_json::json!({ "parameter": "tid" })),
            Some(&site),
        ));
    }
    let bot = edge::is_bot(raw.user_agent());
    accept(gateway, &site, raw, checked.events, bot).await?;
    Ok(site)
}

/// `POST /mp/collect?measurement_id=…&api_secret=…`
pub async fn mp_collect(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    match mp_accept(&gateway, &parts, body, peer).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.answer(&gateway),
    }
}

async fn mp_accept(
    gateway: &Gateway,
    parts: &Parts,
    body: Body,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let host_site = host_of(parts).and_then(|h| gateway.directory.by_host(h));
    let raw = gateway
        .capture(parts, body, peer, None)
        .await
        .map_err(|e| Refusal::new(e, host_site.as_ref()))?;
    let request = mp::parse(&raw).map_err(|e| Refusal::new(parse_error(e), host_site.as_ref()))?;
    let site = match (host_site, &request.stream) {
        (Some(site), _) => site,
        (None, mp::MpStream::Web { measurement_id }) => gateway
            .directory
            .by_measurement_id(measurement_id)
            .ok_or_else(|| Refusal::new(unknown_site(), None))?,
        (None, mp::MpStream::App { .. }) => return Err(Refusal::new(unknown_site(), None)),
    };
    let secret_ok = request.api_secret.as_deref().is_some_and(|secret| {
        platform::auth::secrets_equal(&platform::auth::token_hash(secret), &site.mp_secret_hash)
    });
    if !secret_ok {
        return Err(Refusal::new(
            ApiError::forbidden("`api_secret` is missing or wrong for this site.")
                .with_code("invalid_api_secret"),
            Some(&site),
        ));
    }
    accept(gateway, &site, raw, request.hits.len(), false).await
}

/// `POST /debug/mp/collect`: GA4's validation answer; nothing is stored, no secret is needed.
pub async fn mp_debug(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    match gateway.capture(&parts, body, peer, None).await {
        Ok(raw) => axum::Json(mp::validate(&raw)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /v1/{track|identify|page|screen|group|alias|batch}` (and analytics.js' one-letter
/// forms): the site is the one owning the write key.
pub async fn segment(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let origin = parts.headers.get(header::ORIGIN).cloned();
    let mut response = match segment_accept(&gateway, &parts, body, peer).await {
        Ok(()) => axum::Json(serde_json::json!({ "success": true })).into_response(),
        Err(refusal) => refusal.answer(&gateway),
    };
    // Browsers post here from any page: the write key, not the origin, authorises.
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(header::VARY, header::HeaderValue::from_static("Origin"));
    }
    response
}

async fn segment_accept(
    gateway: &Gateway,
    parts: &Parts,
    body: Body,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let raw = gateway
        .capture(parts, body, peer, None)
        .await
        .map_err(|e| Refusal::new(e, None))?;
    let request = segment::parse(&raw).map_err(|e| Refusal::new(parse_error(e), None))?;
    let site = gateway
        .directory
        .by_write_key(&request.write_key)
        .ok_or_else(|| {
            Refusal::new(
                ApiError::unauthorized("Unknown write key.").with_code("invalid_write_key"),
                None,
            )
        })?;
    accept(gateway, &site, raw, request.hits.len(), false).await
}

/// Preflight for Segment calls from browsers.
pub async fn segment_preflight(request: Request) -> Response {
    preflight(request.headers(), true)
}

/// The application's fallback: a site's obfuscated loader or collect path, else a JSON 404.
pub async fn gateway_fallback(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(site) = host_of(&parts).and_then(|h| gateway.directory.by_host(h)) {
        let path = parts.uri.path();
        if site.loader.collect_path.as_deref() == Some(path) {
            return ga4_with_site(&gateway, parts, body, peer, Some(site), Some("/g/collect"))
                .await;
        }
        if site.loader.script_path.as_deref() == Some(path) {
            return loader::custom(&gateway, &site, &parts).await;
        }
    }
    platform::http::not_found_fallback().await.into_response()
}
