//! The first-party loader: a site's `gtm.js` / `gtag/js` served from its own tracking domain,
//! fetched from the upstream (Google's by default) and cached in memory.
//!
//! A cached script is served for `loader_cache_seconds`, then revalidated upstream with its
//! `ETag` / `Last-Modified`; if the upstream fails, the stale copy keeps being served. A site
//! serves only its own container and measurement ids, so the gateway is never an open proxy.
//! Under a custom `script_path` the container id may come hidden in a randomly named base64
//! query parameter (or from the site itself), which defeats block lists matching
//! `/gtm.js?id=GTM-`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use platform::ApiError;
use sha2::{Digest, Sha256};

use super::Gateway;
use crate::sgtm::decode_loader_query;
use crate::sites::directory::SiteConfig;

#[derive(Debug)]
struct Cached {
    body: Bytes,
    content_type: String,
    /// Validators from the upstream, for revalidation.
    upstream_etag: Option<String>,
    upstream_last_modified: Option<String>,
    /// Our own validator for browsers.
    etag: String,
    fetched_at: Instant,
}

#[derive(Default)]
pub struct LoaderCache {
    entries: Mutex<HashMap<String, Arc<Cached>>>,
}

impl LoaderCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: String, value: Arc<Cached>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Keys are bounded by the sites' own container ids, but a misbehaving client can vary
        // the other parameters; keep the map from growing without limit.
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(key, value);
    }
}

fn site_for(gateway: &Gateway, parts: &Parts) -> Result<Arc<SiteConfig>, ApiError> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| gateway.directory.by_host(h))
        .ok_or_else(|| ApiError::not_found("unknown_site", "No site serves this host."))
}

/// Whether `site` may serve the loader of `container_id`.
fn owns(site: &SiteConfig, container_id: &str) -> bool {
    site.web_container_id.as_deref() == Some(container_id)
        || site.measurement_ids.iter().any(|m| m == container_id)
}

fn not_allowed(container_id: &str) -> ApiError {
    ApiError::forbidden(format!(
        "This site does not serve the loader of `{container_id}`."
    ))
    .with_code("container_not_allowed")
}

/// `GET /gtm.js?id=GTM-…`
pub async fn gtm_js(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    plain(&gateway, &parts, "/gtm.js")
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /gtag/js?id=G-…`
pub async fn gtag_js(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    plain(&gateway, &parts, "/gtag/js")
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn plain(
    gateway: &Gateway,
    parts: &Parts,
    upstream_path: &str,
) -> Result<Response, ApiError> {
    let site = site_for(gateway, parts)?;
    let query = parts.uri.query().unwrap_or("");
    let id = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ApiError::bad_request("missing_parameter", "`id` is required."))?;
    if !owns(&site, &id) {
        return Err(not_allowed(&id));
    }
    serve(gateway, parts, upstream_path, query).await
}

/// A site's custom `script_path`: the id comes hidden in the query, plainly, or from the site.
pub async fn custom(gateway: &Gateway, site: &SiteConfig, parts: &Parts) -> Response {
    let query = parts.uri.query().unwrap_or("");
    let result = match decode_loader_query(query) {
        Some(decoded) if owns(site, &decoded.container_id) => {
            let upstream_query: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(decoded.params.iter())
                .finish();
            let path = if decoded.container_id.starts_with("GTM-") {
                "/gtm.js"
            } else {
                "/gtag/js"
            };
            serve(gateway, parts, path, &upstream_query).await
        }
        Some(decoded) => Err(not_allowed(&decoded.container_id)),
        None => match &site.web_container_id {
            Some(id) => {
                let upstream_query = format!("id={id}");
                serve(gateway, parts, "/gtm.js", &upstream_query).await
            }
            None => Err(ApiError::bad_request(
                "missing_parameter",
                "No container id in the query and none configured for the site.",
            )),
        },
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn serve(
    gateway: &Gateway,
    parts: &Parts,
    upstream_path: &str,
    query: &str,
) -> Result<Response, ApiError> {
    let key = format!("{upstream_path}?{query}");
    let ttl = Duration::from_secs(gateway.config.loader_cache_seconds);
    let cached = gateway.loader_cache.get(&key);
    let script = match cached {
        Some(c) if c.fetched_at.elapsed() < ttl => c,
        stale => match fetch(gateway, upstream_path, query, stale.as_deref()).await {
            Ok(fresh) => {
                gateway.loader_cache.put(key, fresh.clone());
                fresh
            }
            Err(err) => match stale {
                Some(stale) => {
                    tracing::warn!(error = %err, path = upstream_path, "loader upstream failed; serving the cached copy");
                    stale
                }
                None => {
                    tracing::warn!(error = %err, path = upstream_path, "loader upstream failed");
                    return Err(err);
                }
            },
        },
    };
    let not_modified = parts
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == script.etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(script.body.clone()));
        if let Ok(v) = HeaderValue::from_str(&script.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&script.etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", ttl.as_secs())) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    Ok(response)
}

/// Fetches (or revalidates `stale`) from the upstream.
async fn fetch(
    gateway: &Gateway,
    path: &str,
    query: &str,
    stale: Option<&Cached>,
) -> Result<Arc<Cached>, ApiError> {
    let url = format!(
        "{}{path}?{query}",
        gateway.config.loader_upstream.trim_end_matches('/')
    );
    let mut request = gateway.http.get(&url);
    if let Some(stale) = stale {
        if let Some(etag) = &stale.upstream_etag {
            request = request.header(header::IF_NONE_MATCH.as_str(), etag);
        }
        if let Some(modified) = &stale.upstream_last_modified {
            request = request.header(header::IF_MODIFIED_SINCE.as_str(), modified);
        }
    }
    let bad_gateway =
        |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "loader_unavailable", message);
    let response = request
        .send()
        .await
        .map_err(|e| bad_gateway(format!("The loader upstream did not answer: {e}")))?;
    let status = response.status();
    let text_header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if status == reqwest::StatusCode::NOT_MODIFIED
        && let Some(stale) = stale
    {
        return Ok(Arc::new(Cached {
            body: stale.body.clone(),
            content_type: stale.content_type.clone(),
            upstream_etag: text_header("etag").or_else(|| stale.upstream_etag.clone()),
            upstream_last_modified: text_header("last-modified")
                .or_else(|| stale.upstream_last_modified.clone()),
            etag: stale.etag.clone(),
            fetched_at: Instant::now(),
        }));
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(
            "container_not_found",
            "The upstream does not know this container.",
        ));
    }
    if !status.is_success() {
        return Err(bad_gateway(format!(
            "The loader upstream answered {status}."
        )));
    }
    let content_type = text_header("content-type")
        .unwrap_or_else(|| "application/javascript; charset=utf-8".to_owned());
    let upstream_etag = text_header("etag");
    let upstream_last_modified = text_header("last-modified");
    let body = response
        .bytes()
        .await
        .map_err(|e| bad_gateway(format!("The loader download broke off: {e}")))?;
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    Ok(Arc::new(Cached {
        body,
        content_type,
        upstream_etag,
        upstream_last_modified,
        etag,
        fetched_at: Instant::now(),
    }))
}
