//! Accounts and login sessions: signup, login, logout, `me`.

use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, CurrentUser, SESSION_COOKIE, SESSION_TOKEN_PREFIX};
use crate::db::{Db, Tx};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::Json;
use crate::id::{SessionId, UserId, WorkspaceId};
use crate::state::AppState;
use crate::tenancy::Role;
use crate::time::Timestamp;
use crate::{with_db, with_tx};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// A new session. `token` works as `Authorization: Bearer`; the same token is also set as the
/// `sy_session` cookie, and cookie-authenticated changes must send `csrf_token` in
/// `X-CSRF-Token`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    pub user: User,
    pub token: String,
    pub csrf_token: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    pub user: User,
    pub workspaces: Vec<MyWorkspace>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct MyWorkspace {
    pub id: WorkspaceId,
    pub name: String,
    pub role: String,
}

/// Lower-cases and trims an email and checks its shape (one `@`, something on each side, a dot
/// in the domain). Deliverability is not our business here.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    normalize_email_field("email", raw)
}

/// [`normalize_email`] for an address in field `field` (the error names it and the value):
/// trimmed and lower-cased, one `@`, a dotted domain, no spaces or list separators.
pub fn normalize_email_field(field: &str, raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == ';');
    if valid {
        Ok(email)
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("`{}` is not a valid email address.", raw.trim()),
        ))
    }
}

fn validate_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(8..=1024).contains(&chars) {
        return Err(ApiError::invalid_field(
            "password",
            "`password` must be between 8 and 1024 characters.",
        ));
    }
    Ok(())
}

/// A validated user with its password already hashed, ready to insert. Hashing happens here,
/// before any transaction: Argon2 takes tens of milliseconds, and on SQLite an open write
/// transaction blocks every other writer for that long.
pub struct NewUser {
    email: String,
    name: String,
    password_hash: String,
}

impl NewUser {
    pub async fn prepare(email: &str, password: &str, name: &str) -> ApiResult<NewUser> {
        let email = normalize_email(email)?;
        validate_password(password)?;
        if name.chars().count() > 200 {
            return Err(ApiError::invalid_field(
                "name",
                "`name` is at most 200 characters.",
            ));
        }
        let password = password.to_owned();
        let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(ApiError::internal)??;
        Ok(NewUser {
            email,
            name: name.trim().to_owned(),
            password_hash,
        })
    }

    /// Inserts the user inside `tx`. A taken email is a 409 `email_taken`.
    pub async fn insert(self, tx: &mut Tx) -> ApiResult<User> {
        let user = User {
            id: UserId::new(),
            email: self.email,
            name: self.name,
            created_at: Timestamp::now(),
        };
        let inserted = with_tx!(tx, conn => sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (email) DO NOTHING",
        )
        .bind(user.id).bind(&user.email).bind(&user.name).bind(&self.password_hash).bind(user.created_at)
        .execute(conn).await.map(|r| r.rows_affected()))?;
        if inserted == 0 {
            return Err(ApiError::conflict(
                "email_taken",
                "An account with this email already exists.",
            ));
        }
        Ok(user)
    }
}

pub async fn find_user_by_email(db: &Db, email: &str) -> ApiResult<Option<(User, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: User,
        password_hash: String,
    }
    let row: Option<Row> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, email, name, created_at, password_hash FROM users WHERE email = $1",
    ).bind(email).fetch_optional(pool).await)?;
    Ok(row.map(|r| (r.user, r.password_hash)))
}

async fn get_user(db: &Db, id: UserId) -> ApiResult<User> {
    let user: Option<User> = with_db!(db, pool => sqlx::query_as(
        "SELECT id, email, name, created_at FROM users WHERE id = $1",
    ).bind(id).fetch_optional(pool).await)?;
    user.ok_or_else(|| ApiError::unauthorized("The account no longer exists."))
}

struct NewSession {
    token: String,
    csrf_token: String,
    expires_at: Timestamp,
}

async fn create_session(tx: &mut Tx, user_id: UserId, ttl: Duration) -> ApiResult<NewSession> {
    let token = auth::new_token(SESSION_TOKEN_PREFIX);
    let csrf_token = auth::new_token("");
    let now = Timestamp::now();
    let expires_at = now + ttl;
    with_tx!(tx, conn => sqlx::query(
        "INSERT INTO sessions (id, user_id, token_hash, csrf_token, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(SessionId::new()).bind(user_id).bind(auth::token_hash(&token)).bind(&csrf_token)
    .bind(now).bind(expires_at)
    .execute(conn).await.map(|_| ()))?;
    Ok(NewSession {
        token,
        csrf_token,
        expires_at,
    })
}

fn session_cookie(state: &AppState, token: String, ttl: Duration) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.config.auth.secure_cookies)
        .path("/")
        .max_age(time_duration(ttl))
        .build()
}

fn time_duration(d: Duration) -> time::Duration {
    time::Duration::seconds(d.as_secs().min(i64::MAX as u64) as i64)
}

fn session_ttl(state: &AppState) -> Duration {
    Duration::from_secs(state.config.auth.session_ttl_hours * 3600)
}

fn session_response(
    state: &AppState,
    jar: CookieJar,
    status: StatusCode,
    user: User,
    session: NewSession,
) -> Response {
    let jar = jar.add(session_cookie(
        state,
        session.token.clone(),
        session_ttl(state),
    ));
    let body = SessionResponse {
        user,
        token: session.token,
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    };
    (status, jar, Json(body)).into_response()
}

/// Create an account and sign in.
#[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = SessionResponse), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn signup(
    State(state): State<AppState>,
    jar: CookieJar,
    Json(req): Json<SignupRequest>,
) -> ApiResult<Response> {
    if !state.config.auth.allow_signup {
        return Err(
            ApiError::forbidden("Signup is disabled on this deployment.")
                .with_code("signup_disabled"),
        );
    }
    let new_user = NewUser::prepare(&req.email, &req.password, &req.name).await?;
    let mut tx = state.db.begin().await?;
    let user = new_user.insert(&mut tx).await?;
    let session = create_session(&mut tx, user.id, session_ttl(&state)).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "user signed up");
    Ok(session_response(
        &state,
        jar,
        StatusCode::CREATED,
        user,
        session,
    ))
}

/// Sign in with email and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = SessionResponse), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    jar: CookieJar,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Response> {
    let email = req.email.trim().to_lowercase();
    state.login_limiter.check(peer.ip(), &email)?;
    let found = find_user_by_email(&state.db, &email).await?;
    let password = req.password.clone();
    let stored = found.as_ref().map(|(_, hash)| hash.clone());
    // Argon2 takes tens of milliseconds of CPU: keep it off the async workers.
    let ok =
        tokio::task::spawn_blocking(move || auth::verify_password(&password, stored.as_deref()))
            .await
            .map_err(ApiError::internal)?;
    let Some((user, _)) = found.filter(|_| ok) else {
        tracing::info!("login failed");
        return Err(
            ApiError::unauthorized("Wrong email or password.").with_code("invalid_credentials")
        );
    };
    let mut tx = state.db.begin().await?;
    let session = create_session(&mut tx, user.id, session_ttl(&state)).await?;
    tx.commit().await?;
    Ok(session_response(&state, jar, StatusCode::OK, user, session))
}

/// End the current session.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn logout(
    State(state): State<AppState>,
    user: CurrentUser,
    jar: CookieJar,
) -> ApiResult<Response> {
    with_db!(&state.db, pool => sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(user.session_id).execute(pool).await.map(|_| ()))?;
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/").build());
    Ok((StatusCode::NO_CONTENT, jar).into_response())
}

/// The signed-in user and the workspaces they belong to.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
async fn me(State(state): State<AppState>, current: CurrentUser) -> ApiResult<Json<MeResponse>> {
    let user = get_user(&state.db, current.user_id).await?;
    let workspaces: Vec<MyWorkspace> = with_db!(&state.db, pool => sqlx::query_as(
        "SELECT w.id, w.name, m.role FROM memberships m JOIN workspaces w ON w.id = m.workspace_id
         WHERE m.user_id = $1 ORDER BY w.id",
    ).bind(current.user_id).fetch_all(pool).await)?;
    Ok(Json(MeResponse { user, workspaces }))
}

/// Role check on text read from the database.
pub(crate) fn parse_role(text: &str) -> ApiResult<Role> {
    Role::parse(text)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("unknown role {text:?} in database")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ana@Example.COM ").unwrap(),
            "ana@example.com"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }
}
