//! What the crate's two SQLite files (the event log, the analytics store) share.

use std::path::Path;
use std::time::Duration;

/// A `rusqlite` connection for the one thread that writes `path`: WAL and
/// `synchronous = NORMAL` (each caller says why that is durable enough for its file), and a
/// `busy_timeout` for another process holding the file's write lock for a moment.
pub(crate) fn open_writer(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    Ok(conn)
}
