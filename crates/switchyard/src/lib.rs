//! Switchyard as a library: configuration loading, start-up, and [`run`], the single entry
//! point that `main` and the integration tests both call.

pub mod demo;
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
use tracking::analytics::AnalyticsStore;
use tracking::enrich::Enricher;
use tracking::forward;
use tracking::gateway::usage::Usage;
use tracking::log::EventLog;
use tracking::pipeline::Pipeline;
use tracking::sites::directory::SiteDirectory;

/// What one process does. `serve` runs every role unless `--roles` picks some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ServeRole {
    /// The REST API, dashboard, health and metrics endpoints.
    Api,
    /// The public tracking endpoints (collect, loader, preview).
    Gateway,
    /// Background work: jobs, the outbox relay, schedules.
    Worker,
}

pub type Roles = BTreeSet<ServeRole>;

pub fn all_roles() -> Roles {
    [ServeRole::Api, ServeRole::Gateway, ServeRole::Worker]
        .into_iter()
        .collect()
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
    db.migrate(&[
        &platform::MIGRATIONS,
        &tracking::MIGRATIONS,
        &crm::MIGRATIONS,
        &connect::MIGRATIONS,
        &automation::MIGRATIONS,
        &conversions::MIGRATIONS,
    ])
    .await
    .context("database migration failed")?;
    db.optimize()
        .await
        .context("cannot refresh the database's planner statistics")?;
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

/// Everything the roles share: product state, the event log, the site directory.
#[derive(Clone)]
pub struct App {
    pub state: AppState,
    pub log: Arc<dyn EventLog>,
    pub directory: Arc<SiteDirectory>,
    pub usage: Arc<Usage>,
    pub analytics: Arc<dyn AnalyticsStore>,
    pub enricher: Enricher,
    /// Automation rules and runs (its step plugins are fixed here, at start).
    pub automation: automation::Engine,
}

/// Opens the event log `config` names, with its settings.
pub async fn open_event_log(config: &Config) -> anyhow::Result<Arc<dyn tracking::log::EventLog>> {
    let embedded = tracking::log::sqlite::Options {
        commit_interval: Duration::from_micros(config.tracking.event_log_commit_interval_us),
        ..tracking::log::sqlite::Options::default()
    };
    tracking::log::open(&config.event_log_url(), embedded)
        .await
        .context("cannot open the event log")
}

/// Opens every store (migrated), the secret box and the event log.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let db = open_database(&config).await?;
    let secrets = secret_box(&config)?;
    let log = open_event_log(&config).await?;
    let directory = SiteDirectory::load(db.clone()).await?;
    let analytics = tracking::analytics::open(&config.analytics_url())
        .await
        .context("cannot open the analytics store")?;
    let enricher = Enricher::new(config.geoip_database.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration value for `geoip_database`: {e}"))?;
    let state = AppState::new(db, config, secrets);
    let plugins = automation::Plugins::builtin(
        state.db.clone(),
        state.secrets.clone(),
        connect::webhooks::deliver::allow_private(&state.config),
    )?;
    let automation =
        automation::Engine::new(state.db.clone(), plugins, Some(state.jobs_wakeup.clone()));
    Ok(App {
        state,
        log,
        directory,
        usage: Arc::new(Usage::default()),
        analytics,
        enricher,
        automation,
    })
}

/// Every job handler and outbox consumer of every feature.
fn background_work(
    state: &AppState,
    automation: &automation::Engine,
) -> anyhow::Result<(JobRegistry, Arc<Consumers>)> {
    let mut registry = JobRegistry::new();
    platform::maintenance::install(&mut registry);
    crm::import::Importer::new(state.db.clone()).install(&mut registry);
    crm::activities::due::install(&mut registry);
    forward::deliver::Sender::new(
        state.db.clone(),
        state.secrets.clone(),
        state.config.tracking.allow_private_destinations,
    )?
    .install(&mut registry);
    let mut consumers = Consumers::new();
    connect::webhooks::deliver::install(state, &mut registry, &mut consumers)?;
    automation.install(&mut registry, &mut consumers);
    conversions::deliver::install(state, &mut registry)?;
    conversions::hits::install(&mut registry);
    consumers.register(conversions::sources::Conversions);
    let consumers = Arc::new(consumers);
    consumers.install(&mut registry);
    Ok((registry, consumers))
}

/// The worker role: job workers (with their janitor), the outbox relay and the cron scheduler.
async fn start_worker_role(
    state: &AppState,
    automation: &automation::Engine,
    shutdown: &CancellationToken,
    background: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    platform::maintenance::ensure_schedule(&state.db).await?;
    crm::activities::due::ensure_schedules(&state.db).await?;
    let (registry, consumers) = background_work(state, automation)?;
    let worker = Worker::new(
        state.db.clone(),
        Arc::new(registry),
        state.config.jobs.clone(),
    )
    .queues([
        platform::jobs::DEFAULT_QUEUE,
        "forwarding",
        connect::webhooks::deliver::QUEUE,
        automation::engine::QUEUE,
        conversions::deliver::QUEUE,
    ])
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
    let (engine, token) = (automation.clone(), shutdown.clone());
    background.spawn(async move {
        engine.watch(token).await;
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

/// Connections the kernel completes and queues for the server before it accepts them
/// ([`listen`]); Linux caps it at `net.core.somaxconn` (4096 by default since 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// The listening socket for [`run`], with a deep accept queue. `TcpListener::bind` asks for
/// 128 here, and a burst of new connections beyond that (a load balancer opening its pool, many
/// browsers at once, a tool connecting a thousand sockets) overflows it: the kernel drops the
/// new connections' handshake packets and each client tries again only after a second, then
/// three. A benchmark's generator took ~5 s to open 1,024 connections that way
/// (bench/RESULTS.md, 2026-12-06 session 16).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server can listen again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests and background work.
pub async fn run(
    app: App,
    listener: TcpListener,
    roles: Roles,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = app.state.clone();
    let mut background = JoinSet::new();
    if roles.contains(&ServeRole::Worker) {
        start_worker_role(&state, &app.automation, &shutdown, &mut background).await?;
        let pipeline = Arc::new(Pipeline::new(app.analytics.clone(), app.enricher.clone()));
        let (log, token) = (app.log.clone(), shutdown.clone());
        background.spawn(async move {
            pipeline.run(log, token).await;
            Ok(())
        });
        let enqueuer = forward::deliver::enqueuer(state.db.clone());
        let (log, token) = (app.log.clone(), shutdown.clone());
        background.spawn(async move {
            tracking::log::consume(log, forward::deliver::GROUP, token, enqueuer.as_ref()).await;
            Ok(())
        });
        let capturer = Arc::new(crm::capture::consumer::Capturer::new(
            state.db.clone(),
            app.enricher.clone(),
        ));
        let (log, token) = (app.log.clone(), shutdown.clone());
        background.spawn(async move {
            capturer.run(log, token).await;
            Ok(())
        });
        let hits = Arc::new(conversions::hits::HitConsumer::new(
            state.db.clone(),
            app.enricher.clone(),
        ));
        let (log, token) = (app.log.clone(), shutdown.clone());
        background.spawn(async move {
            hits.run(log, token).await;
            Ok(())
        });
        let rule_hits = Arc::new(automation::hits::HitConsumer::new(app.automation.clone()));
        let (log, token) = (app.log.clone(), shutdown.clone());
        background.spawn(async move {
            rule_hits.run(log, token).await;
            Ok(())
        });
    }
    let refresh = Duration::from_secs(state.config.tracking.directory_refresh_seconds.max(1));
    let (directory, token) = (app.directory.clone(), shutdown.clone());
    background.spawn(async move {
        directory.refresh_loop(refresh, token).await;
        Ok(())
    });
    if roles.contains(&ServeRole::Gateway) {
        let (usage, db, token) = (app.usage.clone(), state.db.clone(), shutdown.clone());
        background.spawn(async move {
            usage.flush_loop(db, Duration::from_secs(5), token).await;
            Ok(())
        });
    }
    if roles.contains(&ServeRole::Api) || roles.contains(&ServeRole::Gateway) {
        let server = server::Server::new(&app, &roles)?;
        let addr = listener.local_addr()?;
        let threads = state.config.http_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        tracing::info!(%addr, http_threads = threads, "listening");
        background.spawn(server::serve(listener, server, threads, shutdown.clone()));
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
    // Everything that appends has stopped: flush the log, then close the database.
    app.log.close().await;
    state.db.close().await;
    result
}
