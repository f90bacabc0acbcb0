//! `Idempotency-Key` for POST requests: a retried request with the same key, from the same
//! credential, gets the first answer again instead of creating a second object.
//!
//! The first request with a key records it as `started`, runs, and stores its status and body;
//! a repeat replays them (with `Idempotent-Replayed: true`). A repeat while the first is still
//! running is a 409; the same key with a different body is a 422. Server errors are not stored,
//! so a retry after a 5xx runs again. Keys are scoped to the credential that sent them
//! (hashed) and kept for 24 hours. Unauthenticated requests (signup, login) ignore the header:
//! their responses carry fresh credentials that must never be handed to someone else.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use sha2::{Digest, Sha256};

use crate::auth::SESSION_COOKIE;
use crate::db::Db;
use crate::error::ApiError;
use crate::state::AppState;
use crate::time::Timestamp;
use crate::with_db;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A `started` record older than this belongs to a request that died; a retry may take it over.
const STALE_START: Duration = Duration::from_secs(60);
/// Responses larger than this are not remembered (the key is released instead).
const MAX_STORED_RESPONSE: usize = 1024 * 1024;

fn credential(req: &Request) -> Option<String> {
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        return auth.to_str().ok().map(str::to_owned);
    }
    CookieJar::from_headers(req.headers())
        .get(SESSION_COOKIE)
        .map(|c| c.value().to_owned())
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

#[derive(sqlx::FromRow)]
struct Record {
    request_hash: String,
    state: String,
    response_status: Option<i32>,
    response_body: Option<Vec<u8>>,
    created_at: Timestamp,
}

pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_owned(),
        _ => {
            return ApiError::bad_request(
                "invalid_idempotency_key",
                "`Idempotency-Key` must be 1 to 255 visible ASCII characters.",
            )
            .into_response();
        }
    };
    let Some(credential) = credential(&req) else {
        return next.run(req).await;
    };
    match run_once(&state, key, credential, req, next).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn run_once(
    state: &AppState,
    key: String,
    credential: String,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal_hash = sha256_hex(&[credential.as_bytes()]);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is larger than the limit.",
            )
        })?;
    let request_hash = sha256_hex(&[parts.uri.path().as_bytes(), &body]);
    let db = &state.db;

    if !claim(db, &principal_hash, &key, &request_hash).await? {
        let record: Option<Record> = with_db!(db, pool => sqlx::query_as(
            "SELECT request_hash, state, response_status, response_body, created_at
             FROM idempotency_keys WHERE principal_hash = $1 AND idempotency_key = $2",
        ).bind(&principal_hash).bind(&key).fetch_optional(pool).await)?;
        let Some(record) = record else {
            // Released between our insert and our read: the caller may simply retry.
            return Err(in_progress());
        };
        if record.request_hash != request_hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request.",
            ));
        }
        match (
            record.state.as_str(),
            record.response_status,
            record.response_body,
        ) {
            ("done", Some(status), Some(body)) => return Ok(replay(status, body)),
            ("started", _, _)
                if Timestamp::now().seconds_since(record.created_at)
                    > STALE_START.as_secs_f64() =>
            {
                release(db, &principal_hash, &key).await?;
                if !claim(db, &principal_hash, &key, &request_hash).await? {
                    return Err(in_progress());
                }
            }
            _ => return Err(in_progress()),
        }
    }

    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = response.status();
    if status.is_server_error() {
        release(db, &principal_hash, &key).await?;
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_STORED_RESPONSE).await else {
        release(db, &principal_hash, &key).await?;
        return Err(ApiError::internal(anyhow::anyhow!(
            "response too large to remember"
        )));
    };
    with_db!(db, pool => sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', response_status = $1, response_body = $2
         WHERE principal_hash = $3 AND idempotency_key = $4",
    ).bind(i32::from(status.as_u16())).bind(bytes.as_ref()).bind(&principal_hash).bind(&key)
     .execute(pool).await.map(|_| ()))?;
    parts
        .headers
        .insert(REPLAYED_HEADER, HeaderValue::from_static("false"));
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// Records the key as started; false when it already exists.
async fn claim(
    db: &Db,
    principal_hash: &str,
    key: &str,
    request_hash: &str,
) -> Result<bool, ApiError> {
    let inserted = with_db!(db, pool => sqlx::query(
        "INSERT INTO idempotency_keys (principal_hash, idempotency_key, request_hash, state, created_at)
         VALUES ($1, $2, $3, 'started', $4) ON CONFLICT (principal_hash, idempotency_key) DO NOTHING",
    ).bind(principal_hash).bind(key).bind(request_hash).bind(Timestamp::now())
     .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(inserted == 1)
}

async fn release(db: &Db, principal_hash: &str, key: &str) -> Result<(), ApiError> {
    with_db!(db, pool => sqlx::query(
        "DELETE FROM idempotency_keys WHERE principal_hash = $1 AND idempotency_key = $2",
    ).bind(principal_hash).bind(key).execute(pool).await.map(|_| ()))?;
    Ok(())
}

fn in_progress() -> ApiError {
    ApiError::conflict(
        "idempotency_key_in_progress",
        "A request with this Idempotency-Key is still being processed; retry shortly.",
    )
}

fn replay(status: i32, body: Vec<u8>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, Bytes::from(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Forgets keys older than [`RETENTION`]. Run periodically by the worker role.
pub async fn purge_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let cutoff = Timestamp::now() - RETENTION;
    with_db!(db, pool => sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(cutoff).execute(pool).await.map(|r| r.rows_affected()))
}
