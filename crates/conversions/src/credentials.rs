//! Platform credentials: `/api/v1/workspaces/{workspace_id}/conversions/credentials`. The
//! secret part (Meta access token, Google service-account key or OAuth refresh token, GA4 API
//! secret) is sealed with the secret box under a per-credential context and never returned:
//! the API shows the non-secret settings and a fingerprint. `…/{id}/test` sends the platform's
//! validation request (Meta `test_event_code`, Data Manager `validateOnly`, GA4
//! `/debug/mp/collect`) and reports its answer.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use connect::conversions::data_manager::{Destination, account_digits, conversion_action_digits};
use connect::conversions::ga4_mp::Ga4Credential;
use connect::conversions::google_auth::GoogleCredential;
use connect::conversions::meta_capi::MetaCredential;
use connect::conversions::normalize::sha256_hex;
use connect::conversions::{ClickIds, Consent, Conversion, Outcome, SendReport, UserData};
use platform::db::Db;
use platform::error::ErrorBody;
use platform::http::{Json, Page, PageParams, Path, Query};
use platform::id::WorkspaceId;
use platform::secret_box::SecretBox;
use platform::{ApiError, ApiResult, AppState, Role, Scope, Timestamp, with_db};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{Clients, CredentialId, Platform};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_credential, list_credentials))
        .routes(routes!(get_credential, delete_credential))
        .routes(routes!(test_credential))
}

pub fn credential_not_found() -> ApiError {
    ApiError::not_found("credential_not_found", "No such conversion credential.")
}

fn seal_context(id: CredentialId) -> String {
    format!("conversion_credential:{id}")
}

/// A credential as the API shows it: never the secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Credential {
    pub id: CredentialId,
    pub platform: Platform,
    pub name: String,
    /// Non-secret settings: `pixel_id`/`test_event_code` (Meta); `operating_account_id`,
    /// `login_account_id`, `conversion_action_id`, `auth`, `client_email` (Data Manager);
    /// `measurement_id` (GA4).
    #[schema(value_type = Object)]
    pub settings: Value,
    /// `sha256:` and the first 12 hex digits of the secret's digest, to tell secrets apart.
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A new credential. Fields depend on `platform`:
/// - `meta`: `pixel_id`, `access_token`, optional `test_event_code`;
/// - `data_manager`: `operating_account_id`, `conversion_action_id`, optional
///   `login_account_id`, and either `service_account_key` (the JSON key file) or `oauth`
///   (`client_id`, `client_secret`, `refresh_token`);
/// - `ga4`: `measurement_id`, `api_secret`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    pub platform: String,
    #[serde(default)]
    pub name: Option<String>,
    pub pixel_id: Option<String>,
    pub access_token: Option<String>,
    pub test_event_code: Option<String>,
    pub operating_account_id: Option<String>,
    pub login_account_id: Option<String>,
    pub conversion_action_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub service_account_key: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub oauth: Option<Value>,
    pub measurement_id: Option<String>,
    pub api_secret: Option<String>,
}

/// Names the platform and which fields are present, never their values: every secret field
/// (`access_token`, `service_account_key`, `oauth`, `api_secret`) is one.
impl std::fmt::Debug for CredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRequest")
            .field("platform", &self.platform)
            .field("name", &self.name)
            .field("pixel_id", &self.pixel_id)
            .field("measurement_id", &self.measurement_id)
            .finish_non_exhaustive()
    }
}

/// What a credential opens to: everything needed to call its platform.
#[derive(Clone)]
pub enum Secret {
    Meta(MetaCredential),
    DataManager(GoogleCredential, Destination),
    Ga4(Ga4Credential),
}

/// The sealed part, as JSON.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SealedSecret {
    Google(GoogleCredential),
    Token { token: String },
}

fn required<'a>(value: &'a Option<String>, field: &str) -> ApiResult<&'a str> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() && v.len() <= 4096 => Ok(v),
        _ => Err(ApiError::invalid_field(
            field,
            format!("`{field}` is required for this platform."),
        )),
    }
}

fn refuse_extra(req: &CredentialRequest, allowed: &[&str]) -> ApiResult<()> {
    let present = [
        ("pixel_id", req.pixel_id.is_some()),
        ("access_token", req.access_token.is_some()),
        ("test_event_code", req.test_event_code.is_some()),
        ("operating_account_id", req.operating_account_id.is_some()),
        ("login_account_id", req.login_account_id.is_some()),
        ("conversion_action_id", req.conversion_action_id.is_some()),
        ("service_account_key", req.service_account_key.is_some()),
        ("oauth", req.oauth.is_some()),
        ("measurement_id", req.measurement_id.is_some()),
        ("api_secret", req.api_secret.is_some()),
    ];
    for (field, set) in present {
        if set && !allowed.contains(&field) {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` does not apply to this platform."),
            ));
        }
    }
    Ok(())
}

/// Parses a request into (platform, settings, sealed secret JSON).
fn parse_request(req: &CredentialRequest) -> ApiResult<(Platform, Value, String)> {
    let platform = Platform::parse(req.platform.trim()).ok_or_else(|| {
        ApiError::invalid_field(
            "platform",
            "`platform` must be `meta`, `data_manager` or `ga4`.",
        )
    })?;
    let secret_json = |s: &SealedSecret| serde_json::to_string(s).map_err(ApiError::internal);
    match platform {
        Platform::Meta => {
            refuse_extra(req, &["pixel_id", "access_token", "test_event_code"])?;
            let pixel = required(&req.pixel_id, "pixel_id")?;
            if !pixel.chars().all(|c| c.is_ascii_digit()) {
                return Err(ApiError::invalid_field(
                    "pixel_id",
                    "`pixel_id` must be the dataset's numeric id.",
                ));
            }
            let token = required(&req.access_token, "access_token")?;
            let mut settings = json!({ "pixel_id": pixel });
            if let Some(code) = req.test_event_code.as_deref().map(str::trim) {
                settings["test_event_code"] = json!(code);
            }
            Ok((
                platform,
                settings,
                secret_json(&SealedSecret::Token {
                    token: token.to_owned(),
                })?,
            ))
        }
        Platform::Ga4 => {
            refuse_extra(req, &["measurement_id", "api_secret"])?;
            let id = required(&req.measurement_id, "measurement_id")?;
            if !id.starts_with("G-") {
                return Err(ApiError::invalid_field(
                    "measurement_id",
                    "`measurement_id` must look like `G-XXXXXXX`.",
                ));
            }
            let secret = required(&req.api_secret, "api_secret")?;
            Ok((
                platform,
                json!({ "measurement_id": id }),
                secret_json(&SealedSecret::Token {
                    token: secret.to_owned(),
                })?,
            ))
        }
        Platform::DataManager => {
            refuse_extra(
                req,
                &[
                    "operating_account_id",
                    "login_account_id",
                    "conversion_action_id",
                    "service_account_key",
                    "oauth",
                ],
            )?;
            let operating =
                account_digits(required(&req.operating_account_id, "operating_account_id")?)
                    .ok_or_else(|| {
                        ApiError::invalid_field(
                            "operating_account_id",
                            "`operating_account_id` must be a Google Ads customer id.",
                        )
                    })?;
            let login = match &req.login_account_id {
                None => None,
                Some(raw) => Some(account_digits(raw).ok_or_else(|| {
                    ApiError::invalid_field(
                        "login_account_id",
                        "`login_account_id` must be a Google Ads customer id.",
                    )
                })?),
            };
            let action = conversion_action_digits(required(
                &req.conversion_action_id,
                "conversion_action_id",
            )?)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "conversion_action_id",
                    "`conversion_action_id` must be the numeric conversion action id.",
                )
            })?;
            let google = match (&req.service_account_key, &req.oauth) {
                (Some(key), None) => {
                    let text = |k: &str| key[k].as_str().map(str::to_owned);
                    GoogleCredential::ServiceAccount {
                        client_email: text("client_email").unwrap_or_default(),
                        private_key: text("private_key").unwrap_or_default(),
                        private_key_id: text("private_key_id"),
                    }
                }
                (None, Some(oauth)) => {
                    let text = |k: &str| oauth[k].as_str().unwrap_or_default().to_owned();
                    GoogleCredential::OAuth {
                        client_id: text("client_id"),
                        client_secret: text("client_secret"),
                        refresh_token: text("refresh_token"),
                    }
                }
                _ => {
                    return Err(ApiError::invalid_field(
                        "service_account_key",
                        "Give exactly one of `service_account_key` and `oauth`.",
                    ));
                }
            };
            let field = match google {
                GoogleCredential::ServiceAccount { .. } => "service_account_key",
                GoogleCredential::OAuth { .. } => "oauth",
            };
            google
                .check()
                .map_err(|m| ApiError::invalid_field(field, m))?;
            let mut settings = json!({
                "operating_account_id": operating,
                "conversion_action_id": action,
                "login_account_id": login,
            });
            match &google {
                GoogleCredential::ServiceAccount { client_email, .. } => {
                    settings["auth"] = json!("service_account");
                    settings["client_email"] = json!(client_email);
                }
                GoogleCredential::OAuth { client_id, .. } => {
                    settings["auth"] = json!("oauth");
                    settings["client_id"] = json!(client_id);
                }
            }
            Ok((
                platform,
                settings,
                secret_json(&SealedSecret::Google(google))?,
            ))
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CredentialRow {
    pub id: CredentialId,
    pub workspace_id: WorkspaceId,
    pub platform: String,
    pub name: String,
    pub settings: String,
    pub secret_sealed: String,
    pub fingerprint: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "id, workspace_id, platform, name, settings, secret_sealed, fingerprint, created_at, updated_at";

impl CredentialRow {
    pub(crate) fn platform(&self) -> anyhow::Result<Platform> {
        Platform::parse(&self.platform)
            .ok_or_else(|| anyhow::anyhow!("unknown platform `{}`", self.platform))
    }

    fn settings(&self) -> Value {
        serde_json::from_str(&self.settings).unwrap_or(Value::Null)
    }

    fn into_api(self) -> Credential {
        Credential {
            settings: self.settings(),
            platform: Platform::parse(&self.platform).unwrap_or(Platform::Meta),
            id: self.id,
            name: self.name,
            fingerprint: self.fingerprint,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// Opens the sealed secret into what the platform client needs.
    pub(crate) fn open(&self, secrets: &SecretBox) -> anyhow::Result<Secret> {
        let bytes = secrets
            .open(&self.secret_sealed, &seal_context(self.id))
            .map_err(|e| anyhow::anyhow!("the credential's secret does not open: {e}"))?;
        let sealed: SealedSecret = serde_json::from_slice(&bytes)?;
        let settings = self.settings();
        let text = |k: &str| settings[k].as_str().map(str::to_owned);
        Ok(match (self.platform()?, sealed) {
            (Platform::Meta, SealedSecret::Token { token }) => Secret::Meta(MetaCredential {
                pixel_id: text("pixel_id").unwrap_or_default(),
                access_token: token,
                test_event_code: text("test_event_code"),
            }),
            (Platform::Ga4, SealedSecret::Token { token }) => Secret::Ga4(Ga4Credential {
                measurement_id: text("measurement_id").unwrap_or_default(),
                api_secret: token,
            }),
            (Platform::DataManager, SealedSecret::Google(google)) => Secret::DataManager(
                google,
                Destination {
                    operating_account_id: text("operating_account_id").unwrap_or_default(),
                    login_account_id: text("login_account_id"),
                    conversion_action_id: text("conversion_action_id").unwrap_or_default(),
                },
            ),
            _ => anyhow::bail!("the credential's secret does not match its platform"),
        })
    }
}

/// Sends `events` with an opened credential.
pub(crate) async fn send(
    clients: &Clients,
    secret: &Secret,
    events: &[Conversion],
    validate: bool,
) -> SendReport {
    match secret {
        Secret::Meta(c) => clients.meta.send(c, events, validate).await,
        Secret::DataManager(c, d) => clients.data_manager.send(c, d, events, validate).await,
        Secret::Ga4(c) => clients.ga4.send(c, events, validate).await,
    }
}

pub(crate) async fn get_row(db: &Db, scope: &Scope, id: CredentialId) -> ApiResult<CredentialRow> {
    let row: Option<CredentialRow> = with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversion_credentials WHERE workspace_id = $1 AND id = $2"
    ))).bind(scope.workspace_id).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(credential_not_found)
}

/// Add a platform credential (admin). The secret is sealed and never shown again.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/conversions/credentials", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path)), request_body = CredentialRequest,
    responses((status = 201, body = Credential), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id))]
async fn create_credential(
    State(state): State<AppState>,
    scope: Scope,
    Json(req): Json<CredentialRequest>,
) -> ApiResult<(StatusCode, Json<Credential>)> {
    scope.require(Role::Admin)?;
    let (platform, settings, secret) = parse_request(&req)?;
    let name = req
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(platform.as_str())
        .to_owned();
    if name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "`name` must be at most 200 characters.",
        ));
    }
    let id = CredentialId::new();
    let sealed = state.secrets.seal(secret.as_bytes(), &seal_context(id));
    let fingerprint = format!("sha256:{}", &sha256_hex(&secret)[..12]);
    let now = Timestamp::now();
    with_db!(&state.db, pool => sqlx::query(
        "INSERT INTO conversion_credentials (id, workspace_id, platform, name, settings, secret_sealed,
             fingerprint, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    ).bind(id).bind(scope.workspace_id).bind(platform.as_str()).bind(&name).bind(settings.to_string())
     .bind(&sealed).bind(&fingerprint).bind(now).execute(pool).await.map(|_| ()))?;
    let row = get_row(&state.db, &scope, id).await?;
    Ok((StatusCode::CREATED, Json(row.into_api())))
}

/// The workspace's platform credentials, newest first (never their secrets).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/credentials", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), PageParams),
    responses((status = 200, body = Page<Credential>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_credentials(
    State(state): State<AppState>,
    scope: Scope,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Credential>>> {
    scope.require(Role::Member)?;
    let limit = page.limit()?;
    let cursor = page.cursor()?;
    let rows: Vec<CredentialRow> = with_db!(&state.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM conversion_credentials WHERE workspace_id = $1 AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))).bind(scope.workspace_id).bind(cursor).bind(i64::from(limit) + 1).fetch_all(pool).await)?;
    Ok(Json(
        Page::from_rows(rows, limit, |r| r.id.uuid()).map(CredentialRow::into_api),
    ))
}

/// One platform credential (never its secret).
#[utoipa::path(get, path = "/workspaces/{workspace_id}/conversions/credentials/{credential_id}", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("credential_id" = CredentialId, Path)),
    responses((status = 200, body = Credential), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_credential(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, CredentialId)>,
) -> ApiResult<Json<Credential>> {
    let Path((_, id)) = path;
    scope.require(Role::Member)?;
    Ok(Json(get_row(&state.db, &scope, id).await?.into_api()))
}

/// Delete a credential with its triggers and conversions (admin).
#[utoipa::path(delete, path = "/workspaces/{workspace_id}/conversions/credentials/{credential_id}", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("credential_id" = CredentialId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_credential(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, CredentialId)>,
) -> ApiResult<StatusCode> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let deleted = with_db!(&state.db, pool => sqlx::query(
        "DELETE FROM conversion_credentials WHERE workspace_id = $1 AND id = $2",
    ).bind(scope.workspace_id).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    if deleted == 0 {
        return Err(credential_not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The platform's answer to a validation request.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialTest {
    /// The platform accepted the request (its checks passed).
    pub ok: bool,
    /// The platform's HTTP status; absent when it could not be reached.
    pub status: Option<u16>,
    /// What went wrong, in the platform's words.
    pub message: Option<String>,
    /// The platform's response body (JSON when it answered JSON).
    #[schema(value_type = Object)]
    pub response: Value,
}

/// Send a validation request with this credential (admin): Meta with a `test_event_code`
/// (the credential's, else `TEST0000`), Data Manager with `validateOnly`, GA4 to
/// `/debug/mp/collect`. Nothing is counted as a conversion.
#[utoipa::path(post, path = "/workspaces/{workspace_id}/conversions/credentials/{credential_id}/test", tag = "conversions",
    params(("workspace_id" = WorkspaceId, Path), ("credential_id" = CredentialId, Path)),
    responses((status = 200, body = CredentialTest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(workspace_id = %scope.workspace_id))]
async fn test_credential(
    State(state): State<AppState>,
    scope: Scope,
    path: Path<(WorkspaceId, CredentialId)>,
) -> ApiResult<Json<CredentialTest>> {
    let Path((_, id)) = path;
    scope.require(Role::Admin)?;
    let row = get_row(&state.db, &scope, id).await?;
    let secret = row.open(&state.secrets)?;
    let clients = crate::clients(&state.config.conversions)?;
    let platform = row.platform()?;
    let event = Conversion {
        event_id: format!("switchyard_test_{}", uuid::Uuid::now_v7().simple()),
        event_name: match platform {
            Platform::Meta => "Lead".to_owned(),
            _ => "generate_lead".to_owned(),
        },
        event_time: Utc::now(),
        value: Some(1.0),
        currency: Some("EUR".to_owned()),
        source_url: None,
        user: UserData {
            emails: vec!["test@example.com".to_owned()],
            ..UserData::default()
        },
        click_ids: ClickIds {
            ga_client_id: Some("1234567890.1700000000".to_owned()),
            ..ClickIds::default()
        },
        consent: Consent::default(),
    };
    let report = send(&clients, &secret, &[event], true).await;
    tracing::debug!(
        credential_id = %id, platform = platform.as_str(), status = ?report.status,
        request = %report.request, response = %report.response, "credential tested"
    );
    let response =
        serde_json::from_str(&report.response).unwrap_or(Value::String(report.response.clone()));
    let (ok, message) = match report.outcome {
        Outcome::Accepted => (true, None),
        Outcome::Transient { .. } => (
            false,
            Some("the platform is unavailable; try again later".to_owned()),
        ),
        Outcome::Rejected { message, per_event } => {
            let detail = per_event.into_iter().map(|(_, m)| m).collect::<Vec<_>>();
            (
                false,
                Some(if detail.is_empty() {
                    message
                } else {
                    detail.join("; ")
                }),
            )
        }
    };
    Ok(Json(CredentialTest {
        ok,
        status: report.status,
        message,
        response,
    }))
}
