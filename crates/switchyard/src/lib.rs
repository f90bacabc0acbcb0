//! Switchyard as a library: configuration loading, start-up, and [`run`], the single entry
//! point that `main` and the integration tests both call.

pub mod server;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use platform::AppState;
use platform::config::Config;
use platform::cron;
use platform::db::Db;
use platform::jobs::{JobRegistry, Worker};
use platform::outbox::{self, Consumers};
use platform::secret_box::SecretBox;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What one process does. `serve` runs every role unless `--roles` picks some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ServeRole {
    /// The REST API, dashboard, health and metrics endpoints.
    Api,
    /// Background work: jobs, the outbox relay, schedules.
    Worker,
}

pub type Roles = BTreeSet<ServeRole>;

pub fn all_roles() -> Roles {
    [ServeRole::Api, ServeRole::Worker].into_iter().collect()
}

/// Loads configuration: defaults → TOML file → `SWITCHYARD_*` environment → `overrides` (flags).
/// Nested keys in the environment use `__`, e.g. `SWITCHYARD_JOBS__CONCURRENCY=4`.
pub fn load_config(file: Option<&Path>, overrides: Figment) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Serialized::defaults(serde_json::json!({})));
    if let Some(file) = file {
        if !file.exists() {
            anyhow::bail!("configuration file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    let config: Config = figment
        .merge(Env::prefixed("SWITCHYARD_").split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or("");
            Config::KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
        }))
        .merge(overrides)
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    config.validate()?;
    Ok(config)
}

/// Opens the state database and runs every migration.
pub async fn open_database(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.state_database_url()).await?;
    db.migrate(&[&platform::MIGRATIONS])
        .await
        .context("database migration failed")?;
    Ok(db)
}

/// The secret box from `secret_key`, or from the key file in the data directory (created on
/// first start, with a warning, because losing it makes stored secrets unreadable).
pub fn secret_box(config: &Config) -> anyhow::Result<SecretBox> {
    if let Some(key) = &config.secret_key {
        return SecretBox::from_base64(key.expose_secret())
            .map_err(|e| anyhow::anyhow!("invalid configuration value for `secret_key`: {e}"));
    }
    let path = config.data_dir.join("secret.key");
    let (sb, created) = SecretBox::load_or_create_key_file(&path)?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "created a new secret key file; back it up — secrets stored in the database cannot be read without it"
        );
    }
    Ok(sb)
}

/// Builds the shared state: database (migrated), secret box, limiters.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    let db = open_database(&config).await?;
    let secrets = secret_box(&config)?;
    Ok(AppState::new(db, config, secrets))
}

/// Every job handler and outbox consumer of every feature.
fn background_work() -> (JobRegistry, Arc<Consumers>) {
    let mut registry = JobRegistry::new();
    platform::maintenance::install(&mut registry);
    let consumers = Arc::new(Consumers::new());
    consumers.install(&mut registry);
    (registry, consumers)
}

/// The worker role: job workers (with their janitor), the outbox relay and the cron scheduler.
async fn start_worker_role(
    state: &AppState,
    shutdown: &CancellationToken,
    background: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    platform::maintenance::ensure_schedule(&state.db).await?;
    let (registry, consumers) = background_work();
    let worker = Worker::new(
        state.db.clone(),
        Arc::new(registry),
        state.config.jobs.clone(),
    )
    .wakeup(state.jobs_wakeup.clone());
    let token = shutdown.clone();
    background.spawn(async move {
        worker.run(token).await;
        Ok(())
    });
    let (db, wakeup, token) = (
        state.db.clone(),
        state.jobs_wakeup.clone(),
        shutdown.clone(),
    );
    background.spawn(async move {
        outbox::run_relay(db, consumers, wakeup, Duration::from_millis(500), token).await;
        Ok(())
    });
    let (db, wakeup, token) = (
        state.db.clone(),
        state.jobs_wakeup.clone(),
        shutdown.clone(),
    );
    background.spawn(async move {
        cron::run_scheduler(db, wakeup, Duration::from_secs(1), token).await;
        Ok(())
    });
    tracing::info!("worker role started");
    Ok(())
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests and background work.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    roles: Roles,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut background = JoinSet::new();
    if roles.contains(&ServeRole::Worker) {
        start_worker_role(&state, &shutdown, &mut background).await?;
    }
    if roles.contains(&ServeRole::Api) {
        let app = server::router(state.clone());
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let token = shutdown.clone();
        background.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(token.cancelled_owned())
            .await
            .context("HTTP server failed")
        });
    }
    let mut result = Ok(());
    while let Some(joined) = background.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                shutdown.cancel();
                result = Err(err);
            }
            Err(join) => {
                shutdown.cancel();
                result = Err(anyhow::anyhow!("background task panicked: {join}"));
            }
        }
    }
    state.db.close().await;
    result
}
