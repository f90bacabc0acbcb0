//! `switchyard`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;
use platform::config::{Config, LogFormat};
use switchyard::{Roles, ServeRole};
use tokio_util::sync::CancellationToken;

/// See the workspace manifest for why (glibc's allocator was a fifth of the gateway's CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    about = "Self-hostable multi-tenant marketing operations backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (every role unless --roles says otherwise).
    Serve {
        #[command(flatten)]
        storage: StorageArgs,
        /// Address to listen on.
        #[arg(long, env = "SWITCHYARD_LISTEN")]
        listen: Option<String>,
        /// Roles this process runs, comma separated.
        #[arg(long, value_delimiter = ',', default_values = ["api", "gateway", "worker"])]
        roles: Vec<ServeRole>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Generate realistic demo traffic (a demo user, workspace and sites) into the event log.
    Demo(DemoArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Number of demo sites (kinds rotate: shop, SaaS, publisher).
    #[arg(long, default_value_t = 3)]
    sites: u32,
    /// Days of traffic, ending now.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Visits per site and weekday (weekends are quieter; a quarter are returning visitors).
    #[arg(long, default_value_t = 200)]
    visitors_per_day: u32,
    /// Seed of the generator: the same seed gives the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "demo@switchyard.example")]
    email: String,
    #[arg(
        long,
        env = "SWITCHYARD_DEMO_PASSWORD",
        hide_env_values = true,
        default_value = "demo password, change me"
    )]
    password: String,
    #[arg(long, default_value = "Demo Agency")]
    workspace: String,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user, a workspace and an API key; print them as JSON. Safe to run again.
    Bootstrap {
        #[command(flatten)]
        storage: StorageArgs,
        #[arg(long)]
        email: String,
        #[arg(long, env = "SWITCHYARD_BOOTSTRAP_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        workspace: String,
        /// Create a new API key even if the workspace already exists.
        #[arg(long)]
        new_key: bool,
    },
}

#[derive(Args)]
struct StorageArgs {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded databases and the generated secret key.
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `postgres://…` to keep product state in PostgreSQL.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// `nats://…` puts the tracking event log in NATS JetStream (default: SQLite in the data
    /// directory).
    #[arg(long, env = "SWITCHYARD_EVENT_LOG_URL")]
    event_log_url: Option<String>,
    /// `text` or `json` logs.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: Option<String>,
}

impl StorageArgs {
    fn load(&self, listen: Option<&str>) -> anyhow::Result<Config> {
        let mut overrides = Figment::new();
        if let Some(dir) = &self.data_dir {
            overrides = overrides.merge(Serialized::default("data_dir", dir));
        }
        if let Some(url) = &self.database_url {
            overrides = overrides.merge(Serialized::default("database_url", url));
        }
        if let Some(url) = &self.event_log_url {
            overrides = overrides.merge(Serialized::default("event_log_url", url));
        }
        if let Some(format) = &self.log_format {
            overrides = overrides.merge(Serialized::default("log_format", format));
        }
        if let Some(listen) = listen {
            overrides = overrides.merge(Serialized::default("listen", listen));
        }
        switchyard::load_config(self.config.as_deref(), overrides)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; finishing in-flight work");
        token.cancel();
    });
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Migrate { storage } => {
            let config = storage.load(None)?;
            init_logging(config.log_format);
            let db = switchyard::open_database(&config).await?;
            db.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Bootstrap {
                    storage,
                    email,
                    password,
                    workspace,
                    new_key,
                },
        } => {
            let config = storage.load(None)?;
            init_logging(config.log_format);
            let db = switchyard::open_database(&config).await?;
            switchyard::secret_box(&config)?;
            let out =
                platform::accounts::bootstrap(&db, &email, &password, &workspace, new_key).await?;
            db.close().await;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Command::Demo(args) => {
            let config = args.storage.load(None)?;
            init_logging(config.log_format);
            let db = switchyard::open_database(&config).await?;
            switchyard::secret_box(&config)?;
            let log = switchyard::open_event_log(&config).await?;
            let options = switchyard::demo::DemoOptions {
                sites: args.sites,
                days: args.days,
                visitors_per_day: args.visitors_per_day,
                seed: args.seed,
                email: args.email,
                password: args.password,
                workspace: args.workspace,
            };
            let report = switchyard::demo::run(
                &db,
                log.as_ref(),
                &options,
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            )
            .await;
            log.close().await;
            db.close().await;
            print!("{}", switchyard::demo::render(&report?));
            Ok(())
        }
        Command::Serve {
            storage,
            listen,
            roles,
        } => {
            let config = storage.load(listen.as_deref())?;
            init_logging(config.log_format);
            tracing::info!(?config, "starting");
            let listener = switchyard::listen(config.listen)
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
            let app = switchyard::build(config).await?;
            let shutdown = CancellationToken::new();
            cancel_on_signal(shutdown.clone());
            let roles: Roles = roles.into_iter().collect();
            switchyard::run(app, listener, roles, shutdown).await
        }
    }
}
