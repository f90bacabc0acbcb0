//! Google OAuth access tokens for the Data Manager API (PROTOCOLS.md §12 "Token basics", §11.9):
//! a service-account key is exchanged through the JWT bearer grant (RS256 assertion signed with
//! the key), a user's refresh token through the refresh-token grant. Tokens are cached per
//! credential until 60 s before they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::normalize::sha256_hex;

/// The scope the Data Manager API needs.
pub const DATAMANAGER_SCOPE: &str = "https://www.googleapis.com/auth/datamanager";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const EARLY_REFRESH: Duration = Duration::from_secs(60);

/// How we authenticate to Google.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GoogleCredential {
    /// The fields of a service-account JSON key that matter.
    ServiceAccount {
        client_email: String,
        private_key: String,
        #[serde(default)]
        private_key_id: Option<String>,
    },
    /// A user's OAuth client and refresh token.
    OAuth {
        client_id: String,
        client_secret: String,
        refresh_token: String,
    },
}

impl std::fmt::Debug for GoogleCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoogleCredential::ServiceAccount { client_email, .. } => f
                .debug_struct("ServiceAccount")
                .field("client_email", client_email)
                .finish_non_exhaustive(),
            GoogleCredential::OAuth { client_id, .. } => f
                .debug_struct("OAuth")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

impl GoogleCredential {
    /// Checks what can be checked offline: a service-account key must parse as an RSA PEM.
    pub fn check(&self) -> Result<(), String> {
        match self {
            GoogleCredential::ServiceAccount {
                client_email,
                private_key,
                ..
            } => {
                if !client_email.contains('@') {
                    return Err("`client_email` must be the service account's email".into());
                }
                jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
                    .map(|_| ())
                    .map_err(|_| "`private_key` must be the key's PKCS#8 PEM".into())
            }
            GoogleCredential::OAuth {
                client_id,
                client_secret,
                refresh_token,
            } => {
                if client_id.trim().is_empty()
                    || client_secret.trim().is_empty()
                    || refresh_token.trim().is_empty()
                {
                    return Err(
                        "`client_id`, `client_secret` and `refresh_token` are required".into(),
                    );
                }
                Ok(())
            }
        }
    }

    fn cache_key(&self) -> String {
        match self {
            GoogleCredential::ServiceAccount {
                client_email,
                private_key,
                ..
            } => sha256_hex(&format!("sa\n{client_email}\n{private_key}")),
            GoogleCredential::OAuth {
                client_id,
                refresh_token,
                ..
            } => sha256_hex(&format!("oauth\n{client_id}\n{refresh_token}")),
        }
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the credential (`invalid_grant`, bad key): fix the credential.
    #[error("Google refused the credential: {0}")]
    Refused(String),
    /// Network trouble or a 5xx: try again later.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3600
}

/// Exchanges credentials for access tokens and caches them. Cheap to clone.
#[derive(Clone)]
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    cache: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl TokenSource {
    pub fn new(http: reqwest::Client, token_url: impl Into<String>) -> Self {
        Self {
            http,
            token_url: token_url.into(),
            cache: Arc::default(),
        }
    }

    /// A valid access token for `credential`, from the cache when it has one.
    pub async fn token(&self, credential: &GoogleCredential) -> Result<String, TokenError> {
        let key = credential.cache_key();
        if let Some((token, until)) = self.cache.lock().await.get(&key)
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let fresh = self.exchange(credential).await?;
        let until =
            Instant::now() + Duration::from_secs(fresh.expires_in).saturating_sub(EARLY_REFRESH);
        self.cache
            .lock()
            .await
            .insert(key, (fresh.access_token.clone(), until));
        Ok(fresh.access_token)
    }

    /// Drops the cached token (after a 401, so the next call exchanges again).
    pub async fn forget(&self, credential: &GoogleCredential) {
        self.cache.lock().await.remove(&credential.cache_key());
    }

    async fn exchange(&self, credential: &GoogleCredential) -> Result<TokenResponse, TokenError> {
        let form: Vec<(&str, String)> = match credential {
            GoogleCredential::ServiceAccount {
                client_email,
                private_key,
                private_key_id,
            } => vec![
                ("grant_type", JWT_BEARER.to_owned()),
                (
                    "assertion",
                    self.assertion(client_email, private_key, private_key_id.as_deref())?,
                ),
            ],
            GoogleCredential::OAuth {
                client_id,
                client_secret,
                refresh_token,
            } => vec![
                ("grant_type", "refresh_token".to_owned()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.clone()),
                ("refresh_token", refresh_token.clone()),
            ],
        };
        let response = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                TokenError::Unavailable(if e.is_timeout() {
                    "timeout".into()
                } else {
                    "could not connect".into()
                })
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|_| TokenError::Unavailable("the token response is not a token".into()));
        }
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|j| {
                let error = j["error"].as_str()?.to_owned();
                Some(match j["error_description"].as_str() {
                    Some(d) => format!("{error}: {d}"),
                    None => error,
                })
            })
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        if status.is_server_error() || status.as_u16() == 429 {
            Err(TokenError::Unavailable(reason))
        } else {
            Err(TokenError::Refused(reason))
        }
    }

    fn assertion(
        &self,
        client_email: &str,
        private_key: &str,
        key_id: Option<&str>,
    ) -> Result<String, TokenError> {
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes()).map_err(|_| {
                TokenError::Refused("the service-account private key is not an RSA PEM".into())
            })?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = key_id.map(str::to_owned);
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: client_email,
            scope: DATAMANAGER_SCOPE,
            aud: &self.token_url,
            iat: now,
            exp: now + 3600,
        };
        jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| TokenError::Refused(format!("cannot sign the assertion: {e}")))
    }
}
