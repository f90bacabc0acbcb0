//! One fresh, migrated database per test, on SQLite (a temp file) and on PostgreSQL (a new
//! database on `SWITCHYARD_TEST_POSTGRES_URL`), and the macro that runs a test on both.
//!
//! Without the URL the PostgreSQL variants skip, unless `SWITCHYARD_REQUIRE_POSTGRES=1` (CI)
//! makes them fail: a matrix that silently tests one backend is worse than none.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use platform::config::JobsConfig;
use platform::db::Db;
use platform::id::WorkspaceId;
use platform::time::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

pub struct TestDb {
    pub db: Db,
    target: Target,
}

enum Target {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let path =
            std::env::temp_dir().join(format!("switchyard-it-{}.db", Uuid::now_v7().simple()));
        let target = Target::Sqlite(path);
        let db = target.open().await;
        db.migrate(&[&platform::MIGRATIONS])
            .await
            .expect("migrate sqlite");
        TestDb { db, target }
    }

    /// `None` when PostgreSQL is not configured and not required.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var("SWITCHYARD_TEST_POSTGRES_URL") else {
            if std::env::var("SWITCHYARD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("SWITCHYARD_REQUIRE_POSTGRES=1 but SWITCHYARD_TEST_POSTGRES_URL is not set");
            }
            eprintln!("skipped: set SWITCHYARD_TEST_POSTGRES_URL to run the PostgreSQL variant");
            return None;
        };
        let name = format!("t_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let target = Target::Postgres { admin_url, name };
        let db = target.open().await;
        db.migrate(&[&platform::MIGRATIONS])
            .await
            .expect("migrate postgres");
        Some(TestDb { db, target })
    }

    /// Another pool on the same database, like a second process would have.
    pub async fn open_another(&self) -> Db {
        self.target.open().await
    }
}

impl Target {
    async fn open(&self) -> Db {
        match self {
            Target::Sqlite(path) => Db::open_sqlite(path).await.expect("open sqlite"),
            Target::Postgres { admin_url, name } => {
                let options = PgConnectOptions::from_str(admin_url)
                    .expect("valid PostgreSQL URL")
                    .database(name);
                let pool = PgPoolOptions::new()
                    .max_connections(10)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await
                    .expect("connect to test database");
                Db::Postgres(pool)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.target {
            Target::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    std::fs::remove_file(file).ok();
                }
            }
            // Drop runs inside the test's runtime, which cannot block on async work; a thread
            // with its own runtime can. FORCE ends the pool's connections still open.
            Target::Postgres { admin_url, name } => {
                let (admin_url, database) = (admin_url.clone(), name.clone());
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async {
                        let mut admin = PgConnection::connect(&admin_url).await?;
                        sqlx::raw_sql(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await?;
                        admin.close().await
                    })
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!("could not drop test database {name}: {dropped:?}");
                }
            }
        }
    }
}

/// Declares `mod name { sqlite, postgres }` tests running `async fn name(&TestDb)`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let test_db = $crate::harness::TestDb::sqlite().await;
                super::$name(&test_db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(test_db) = $crate::harness::TestDb::postgres().await {
                    super::$name(&test_db).await;
                }
            }
        }
    )*};
}
pub(crate) use backend_tests;

/// Job settings for tests: quick polls and short backoff.
pub fn jobs_config() -> JobsConfig {
    JobsConfig {
        concurrency: 4,
        per_workspace_concurrency: 4,
        poll_interval_ms: 20,
        lease_seconds: 30,
        max_attempts: 3,
        backoff_base_ms: 10,
        backoff_max_seconds: 1,
    }
}

/// A workspace row, for tables with a foreign key to workspaces.
pub async fn workspace(db: &Db) -> WorkspaceId {
    let id = WorkspaceId::new();
    platform::with_db!(db, pool => sqlx::query(
        "INSERT INTO workspaces (id, name, created_at, updated_at) VALUES ($1, 'test', $2, $2)",
    )
    .bind(id)
    .bind(Timestamp::now())
    .execute(pool)
    .await
    .map(|_| ()))
    .expect("insert workspace");
    id
}

/// `SELECT COUNT(*) …` with no parameters.
pub async fn count(db: &Db, sql: &'static str) -> i64 {
    platform::with_db!(db, pool => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await)
        .expect("count")
}

/// Waits until `done` holds, polling; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
