//! Product-state storage on SQLite (embedded default) or PostgreSQL (scale-out).
//!
//! We keep concrete pools (`SqlitePool`, `PgPool`) rather than `sqlx::Any`, which has no uuid or
//! time types. Query texts are written once with `$1` placeholders, which both drivers accept,
//! and run on either backend through [`with_db!`] / [`with_tx!`]: the macro expands the same
//! body once per backend, so each copy is type-checked against its own driver. Where the SQL
//! itself differs (locking clauses, JSON operators, date functions) the caller branches on
//! [`Dialect`] next to the query.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

/// Runs `$body` with `$conn` bound to the backend's pool (`&SqlitePool` or `&PgPool`).
#[macro_export]
macro_rules! with_db {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite(db) => {
                let $conn = db.pool();
                $body
            }
            $crate::db::Db::Postgres($conn) => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to the transaction's connection (`&mut SqliteConnection` or
/// `&mut PgConnection`). Use `&mut *$conn` to run several statements.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(tx) => {
                let $conn = &mut ***tx;
                $body
            }
            $crate::db::Tx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

/// Runs `$body` with `$c` bound to the connection behind a [`Conn`] (`&mut SqliteConnection` or
/// `&mut PgConnection`): for reads that run both inside a transaction and on their own.
#[macro_export]
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite(inner) => {
                let $c = &mut **inner;
                $body
            }
            $crate::db::Conn::Postgres(inner) => {
                let $c = &mut **inner;
                $body
            }
        }
    };
}

/// A borrowed connection of either backend: a transaction's ([`Tx::conn`]) or a pooled one
/// ([`Pooled::conn`]). Functions that must read both inside and outside a write transaction
/// take `&mut Conn` and use [`with_conn!`].
pub enum Conn<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

/// A connection held from the pool (no transaction), see [`Db::acquire`].
pub enum Pooled {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    Postgres(sqlx::pool::PoolConnection<Postgres>),
}

impl Pooled {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            Pooled::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// Which SQL dialect a pool speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

/// A SQLite pool and the turn its writers of this process take, first come first served.
///
/// SQLite has one writer per file. Left to itself, a second `BEGIN IMMEDIATE` waits in SQLite's
/// busy handler, which polls with sleeps growing to 100 ms: under many concurrent writers the
/// lock sits idle while waiters sleep, and an unlucky waiter loses for a long time. Queueing
/// this process's writers on a fair async mutex before `BEGIN IMMEDIATE` hands the lock from one
/// to the next without sleeping. Other processes on the same file still meet the busy timeout.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    pool: SqlitePool,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteDb {
    pub fn new(pool: SqlitePool) -> Self {
        SqliteDb {
            pool,
            writer: Arc::default(),
        }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// How long a writer waits for its turn, like the busy timeout (a transaction that opens a
/// second one on the same file would otherwise wait forever).
const WRITER_TURN_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite write transaction holding this process's writer turn until it ends.
#[derive(Debug)]
pub struct SqliteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Deref for SqliteTx {
    type Target = sqlx::Transaction<'static, Sqlite>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// A write transaction on either backend. Dropping it without [`Tx::commit`] rolls back.
#[derive(Debug)]
pub enum Tx {
    Sqlite(SqliteTx),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// One crate's migrations, one set per backend (`migrations/sqlite`, `migrations/postgres`).
/// Versions are timestamps, unique across crates, because every crate shares one history table.
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

impl Db {
    /// Opens `sqlite://PATH` or `postgres://…`.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Self::open_sqlite(Path::new(path)).await;
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
            let pool = PgPoolOptions::new()
                .max_connections(20)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .context("cannot connect to PostgreSQL")?;
            return Ok(Db::Postgres(pool));
        }
        anyhow::bail!("unsupported database URL scheme (expected sqlite:// or postgres://)")
    }

    /// Opens (creating if needed) a SQLite database file tuned for a server: WAL, foreign keys,
    /// a busy timeout, and `synchronous=FULL` because a 2xx promises durability.
    pub async fn open_sqlite(path: &Path) -> anyhow::Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
        Ok(Db::Sqlite(SqliteDb::new(pool)))
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`, which takes the write
    /// lock up front: a deferred transaction that reads and then writes can fail with
    /// `SQLITE_BUSY` instead of waiting when another writer got there first.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(db) => {
                let turn =
                    tokio::time::timeout(WRITER_TURN_TIMEOUT, db.writer.clone().lock_owned())
                        .await
                        .map_err(|_| sqlx::Error::PoolTimedOut)?;
                let tx = db.pool.begin_with("BEGIN IMMEDIATE").await?;
                Tx::Sqlite(SqliteTx { tx, _turn: turn })
            }
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Applies every crate's migrations for this backend.
    pub async fn migrate(&self, sets: &[&Migrations]) -> anyhow::Result<()> {
        for set in sets {
            match self {
                Db::Sqlite(db) => {
                    let pool = db.pool();
                    let mut migrator = clone_migrator(&set.sqlite);
                    migrator.set_ignore_missing(true);
                    migrator.run(pool).await?
                }
                Db::Postgres(pool) => {
                    let mut migrator = clone_migrator(&set.postgres);
                    migrator.set_ignore_missing(true);
                    migrator.run(pool).await?
                }
            }
        }
        Ok(())
    }

    /// Refreshes the SQLite query planner's statistics where they are missing or stale
    /// (`PRAGMA optimize`, bounded by `analysis_limit` so it stays cheap on big files). Without
    /// statistics SQLite may prefer a covering index on `workspace_id` over a selective one and
    /// scan a whole workspace. Run after migrations and by the hourly maintenance job. PostgreSQL
    /// keeps its own statistics (autovacuum's ANALYZE); nothing to do there.
    pub async fn optimize(&self) -> Result<(), sqlx::Error> {
        if let Db::Sqlite(db) = self {
            let mut conn = db.pool.acquire().await?;
            sqlx::query("PRAGMA analysis_limit = 1000")
                .execute(&mut *conn)
                .await?;
            sqlx::query("PRAGMA optimize = 0x10002")
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Holds one pooled connection, for several reads through [`Conn`].
    pub async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(db) => Pooled::Sqlite(db.pool.acquire().await?),
            Db::Postgres(pool) => Pooled::Postgres(pool.acquire().await?),
        })
    }

    /// Cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await)
    }
}

fn clone_migrator(m: &Migrator) -> Migrator {
    Migrator::with_migrations(m.iter().cloned().collect())
}

impl Tx {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The transaction's connection, for functions that take a [`Conn`].
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
            Tx::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }
}
