//! Authentication primitives and the extractors that turn a request into a [`Principal`] and,
//! for workspace routes, a [`Scope`].
//!
//! Credentials, all opaque random strings whose SHA-256 is what we store:
//! - `sys_…` session tokens: sent in the `sy_session` cookie (HttpOnly, SameSite=Lax) or as
//!   `Authorization: Bearer`. A cookie-authenticated mutation must also carry `X-CSRF-Token`
//!   with the session's CSRF token, so a cross-site form cannot ride on the cookie.
//! - `syk_…` workspace API keys, as `Authorization: Bearer`; each reaches one workspace only.
//! - the internal token for `/internal/*`, from configuration, never a user credential.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum_extra::extract::CookieJar;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::id::{ApiKeyId, SessionId, UserId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::{Actor, Role, Scope};
use crate::time::Timestamp;
use crate::with_db;

pub const SESSION_COOKIE: &str = "sy_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const SESSION_TOKEN_PREFIX: &str = "sys_";
pub const API_KEY_PREFIX: &str = "syk_";
pub const INVITE_TOKEN_PREFIX: &str = "syi_";

/// A new random credential: `prefix` + base64url of 32 random bytes.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What we store for a credential. SHA-256 is enough: the tokens carry 256 random bits, so there
/// is nothing for a slow hash to protect.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two short secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes), the OWASP baseline.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(anyhow::anyhow!("password hashing failed: {e}")))
}

/// Verifies a password. Pass `None` when the user does not exist: a dummy hash is checked so the
/// answer takes as long as for a real account and does not reveal whether the email exists.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default());
    let (hash, real) = match stored {
        Some(h) => (h, true),
        None => (dummy.as_str(), false),
    };
    let ok = PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false);
    ok && real
}

/// Login attempts per minute, per client IP and per email.
pub struct LoginLimiter {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_email: DefaultKeyedRateLimiter<String>,
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> Self {
        let quota =
            Quota::per_minute(NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN));
        Self {
            by_ip: RateLimiter::keyed(quota),
            by_email: RateLimiter::keyed(quota),
        }
    }

    /// Counts one attempt; refuses with 429 and `Retry-After` past the quota.
    pub fn check(&self, ip: IpAddr, email: &str) -> Result<(), ApiError> {
        if self.by_ip.len() > 100_000 {
            self.by_ip.retain_recent();
        }
        if self.by_email.len() > 100_000 {
            self.by_email.retain_recent();
        }
        let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
        let wait = [
            self.by_ip.check_key(&ip).err(),
            self.by_email.check_key(&email.to_owned()).err(),
        ]
        .into_iter()
        .flatten()
        .map(|not_until| not_until.wait_time_from(now))
        .max();
        match wait {
            None => Ok(()),
            Some(wait) => Err(too_many_attempts(wait)),
        }
    }
}

fn too_many_attempts(wait: Duration) -> ApiError {
    let seconds = wait.as_secs().max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "Too many login attempts; try again later.",
    )
    .with_details(serde_json::json!({ "retry_after_seconds": seconds }))
}

/// Who made the request.
#[derive(Debug, Clone)]
pub enum Principal {
    User {
        user_id: UserId,
        session_id: SessionId,
    },
    ApiKey {
        key_id: ApiKeyId,
        workspace_id: WorkspaceId,
        role: Role,
    },
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Principal::User { user_id, .. } => Actor::User(*user_id),
            Principal::ApiKey { key_id, .. } => Actor::ApiKey(*key_id),
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthenticated() -> ApiError {
    ApiError::unauthorized("Missing or invalid credentials.")
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: SessionId,
    user_id: UserId,
    csrf_token: String,
    expires_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: ApiKeyId,
    workspace_id: WorkspaceId,
    role: String,
    revoked_at: Option<Timestamp>,
    last_used_at: Option<Timestamp>,
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let principal = authenticate(parts, state).await?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let db = &state.db;
    let (token, via_cookie) = match bearer(parts) {
        Some(token) => (token.to_owned(), false),
        None => {
            let jar = CookieJar::from_headers(&parts.headers);
            let cookie = jar.get(SESSION_COOKIE).ok_or_else(unauthenticated)?;
            (cookie.value().to_owned(), true)
        }
    };
    let hash = token_hash(&token);
    let now = Timestamp::now();

    if token.starts_with(API_KEY_PREFIX) && !via_cookie {
        return verify_api_key(db, &token).await;
    }

    if !token.starts_with(SESSION_TOKEN_PREFIX) {
        return Err(unauthenticated());
    }
    let row: Option<SessionRow> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, user_id, csrf_token, expires_at FROM sessions WHERE token_hash = $1",
    ).bind(&hash).fetch_optional(pool).await)?;
    let row = row.ok_or_else(unauthenticated)?;
    if row.expires_at <= now {
        return Err(ApiError::unauthorized(
            "The session has expired; log in again.",
        ));
    }
    if via_cookie && !is_safe_method(&parts.method) {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !secrets_equal(sent, &row.csrf_token) {
            return Err(ApiError::forbidden(
                "Cookie-authenticated changes need the X-CSRF-Token header from login.",
            )
            .with_code("csrf_token_invalid"));
        }
    }
    Ok(Principal::User {
        user_id: row.user_id,
        session_id: row.id,
    })
}

/// The principal of a workspace API key (`sy_…`), or 401: for routes that take the key in
/// another header than `Authorization` (the legacy `x-api-key` trigger API).
pub async fn verify_api_key(db: &crate::db::Db, token: &str) -> Result<Principal, ApiError> {
    if !token.starts_with(API_KEY_PREFIX) {
        return Err(unauthenticated());
    }
    let hash = token_hash(token);
    let now = Timestamp::now();
    let row: Option<KeyRow> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, workspace_id, role, revoked_at, last_used_at FROM api_keys WHERE key_hash = $1",
    ).bind(&hash).fetch_optional(pool).await)?;
    let row = row.ok_or_else(unauthenticated)?;
    if row.revoked_at.is_some() {
        return Err(unauthenticated());
    }
    let role = Role::parse(&row.role)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad role in api_keys")))?;
    // Record use at most once a minute: a write per request would serialize on SQLite.
    if row.last_used_at.is_none_or(|t| now.seconds_since(t) > 60.0) {
        with_db!(db, pool => sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now).bind(row.id).execute(pool).await.map(|_| ()))?;
    }
    Ok(Principal::ApiKey {
        key_id: row.id,
        workspace_id: row.workspace_id,
        role,
    })
}

fn is_safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A signed-in user (not an API key): account-level routes such as `/auth/me` and creating
/// workspaces.
#[derive(Debug, Clone, Copy)]
pub struct CurrentUser {
    pub user_id: UserId,
    pub session_id: SessionId,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::User {
                user_id,
                session_id,
            } => Ok(CurrentUser {
                user_id,
                session_id,
            }),
            Principal::ApiKey { .. } => Err(ApiError::forbidden(
                "This route needs a user session; API keys reach workspace routes only.",
            )),
        }
    }
}

pub fn workspace_not_found() -> ApiError {
    ApiError::not_found("workspace_not_found", "No such workspace.")
}

/// The scope of a `/workspaces/{workspace_id}/…` route: membership (or a key bound to the
/// workspace) is checked here, once, before any handler code runs. A workspace the principal
/// cannot see answers 404, exactly like one that does not exist.
impl FromRequestParts<AppState> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| workspace_not_found())?;
        let raw = params
            .iter()
            .find(|(name, _)| *name == "workspace_id")
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("Scope on a route without {{workspace_id}}"))
            })?;
        let principal = Principal::from_request_parts(parts, state).await?;
        let workspace_id: WorkspaceId = raw.parse().map_err(|_| workspace_not_found())?;
        scope_for(state, &principal, workspace_id).await
    }
}

/// Resolves what `principal` may do in `workspace_id`, or 404.
pub async fn scope_for(
    state: &AppState,
    principal: &Principal,
    workspace_id: WorkspaceId,
) -> Result<Scope, ApiError> {
    match principal {
        Principal::ApiKey {
            workspace_id: key_ws,
            role,
            ..
        } => {
            if *key_ws != workspace_id {
                return Err(workspace_not_found());
            }
            Ok(Scope {
                workspace_id,
                actor: principal.actor(),
                role: *role,
            })
        }
        Principal::User { user_id, .. } => {
            let role: Option<String> = with_db!(&state.db, pool => sqlx::query_scalar(
                "SELECT role FROM memberships WHERE workspace_id = $1 AND user_id = $2",
            ).bind(workspace_id).bind(*user_id).fetch_optional(pool).await)?;
            let role = role
                .and_then(|r| Role::parse(&r))
                .ok_or_else(workspace_not_found)?;
            Ok(Scope {
                workspace_id,
                actor: principal.actor(),
                role,
            })
        }
    }
}

/// Guards `/internal/*`: the configured internal token, and nothing else, opens them.
pub struct InternalCaller;

impl FromRequestParts<AppState> for InternalCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.config.internal_token else {
            return Err(ApiError::not_found(
                "route_not_found",
                "Internal endpoints are disabled (no internal_token configured).",
            ));
        };
        match bearer(parts) {
            Some(token) if secrets_equal(token, expected.expose_secret()) => Ok(InternalCaller),
            _ => Err(unauthenticated()),
        }
    }
}

/// Client IP from the connection (set by `serve` through `ConnectInfo`).
pub fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_unknown_users_fail() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong", Some(&hash)));
        assert!(!verify_password("not-a-real-password", None));
    }

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let a = new_token(API_KEY_PREFIX);
        let b = new_token(API_KEY_PREFIX);
        assert!(a.starts_with("syk_") && a.len() == 4 + 43);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 64);
        assert!(secrets_equal(&a, &a.clone()));
        assert!(!secrets_equal(&a, &b));
    }

    #[test]
    fn limiter_refuses_past_quota() {
        let limiter = LoginLimiter::new(3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            limiter.check(ip, "a@example.com").unwrap();
        }
        let err = limiter.check(ip, "a@example.com").unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        // Another IP is still limited by the same email.
        assert!(
            limiter
                .check(IpAddr::from([10, 0, 0, 2]), "a@example.com")
                .is_err()
        );
        assert!(
            limiter
                .check(IpAddr::from([10, 0, 0, 3]), "b@example.com")
                .is_ok()
        );
    }
}
