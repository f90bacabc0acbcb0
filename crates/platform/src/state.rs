//! What every handler can reach: the state database, configuration, the secret box and the
//! process-wide limiters. Cheap to clone (one `Arc`).

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::auth::LoginLimiter;
use crate::config::Config;
use crate::db::Db;
use crate::secret_box::SecretBox;

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub db: Db,
    pub config: Config,
    pub secrets: SecretBox,
    pub login_limiter: LoginLimiter,
    /// Woken when this process enqueues a job, so idle workers start it without waiting for
    /// their next poll.
    pub jobs_wakeup: Arc<Notify>,
}

impl AppState {
    pub fn new(db: Db, config: Config, secrets: SecretBox) -> Self {
        let login_limiter = LoginLimiter::new(config.auth.login_attempts_per_minute);
        Self(Arc::new(AppInner {
            db,
            config,
            secrets,
            login_limiter,
            jobs_wakeup: Arc::new(Notify::new()),
        }))
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}
