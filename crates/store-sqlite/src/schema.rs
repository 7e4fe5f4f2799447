//! Embedded migrations and the connection settings every connection gets.
//!
//! Migrations are compiled into the binary, so a deployed `creditgraph` needs no SQL files. They
//! run in one `BEGIN IMMEDIATE` transaction at open: either the database reaches the newest
//! version or nothing changes. `schema_migrations` records each applied version.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use store::StoreError;

use crate::Synchronous;

/// How long a connection waits for a lock held by another connection before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection (the adapter uses about sixty distinct ones).
const STATEMENT_CACHE_MAX: usize = 96;

/// Versions in ascending order; a version's SQL never changes once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_ledger.sql")),
    (2, include_str!("../migrations/0002_runs.sql")),
    (3, include_str!("../migrations/0003_jobs.sql")),
    (4, include_str!("../migrations/0004_instances.sql")),
    (5, include_str!("../migrations/0005_holds_by_account.sql")),
    (6, include_str!("../migrations/0006_run_events.sql")),
    (7, include_str!("../migrations/0007_kept_holds.sql")),
    (8, include_str!("../migrations/0008_allowances.sql")),
    (9, include_str!("../migrations/0009_webhooks.sql")),
    (10, include_str!("../migrations/0010_api_keys.sql")),
    (11, include_str!("../migrations/0011_operator_lists.sql")),
];

fn refused(path: &Path, what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::startup(format!("database {}: {what}: {detail}", path.display()))
}

fn startup(path: &Path, what: &str, error: rusqlite::Error) -> StoreError {
    refused(path, what, &error).with_source(error)
}

/// Opens the write connection: creates the file if missing, switches to WAL, sets durability.
pub(crate) fn open_writer(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|error| startup(path, "cannot open", error))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|error| startup(path, "cannot set busy_timeout", error))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|error| startup(path, "cannot switch to WAL (is it a SQLite database?)", error))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(refused(path, "journal mode", format!("WAL refused, got {mode}")));
    }
    // FULL (the default): a commit is on disk (the WAL is fsynced) before any reply leaves the
    // writer; what the other levels lose is on `Synchronous`.
    conn.pragma_update(None, "synchronous", synchronous.pragma())
        .map_err(|error| startup(path, "cannot set synchronous", error))?;
    // Enforce `runs.thread_id REFERENCES threads` (SQLite only declares foreign keys by default).
    conn.pragma_update(None, "foreign_keys", "ON").map_err(|error| startup(path, "cannot set foreign_keys", error))?;
    // A batch of commands on many accounts dirties hundreds of pages: a page cache far above
    // SQLite's 2 MB default keeps them (and the hot part of the indexes) in memory instead of
    // spilling mid-transaction and re-reading.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIBIBYTES)
        .map_err(|error| startup(path, "cannot set cache_size", error))?;
    // The writer's own checkpoint is the backstop of the background checkpointer (see
    // `crate::checkpointer`), which copies pages concurrently: when this fires, few are left.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(|error| startup(path, "cannot set wal_autocheckpoint", error))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
    Ok(conn)
}

/// Page cache of the write connection, KiB.
const WRITER_CACHE_KIBIBYTES: i64 = 64 * 1024;
/// WAL pages (4 KiB each) written before the writer checkpoints.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// Opens the background checkpointer's connection (see [`crate::checkpointer`]): same
/// `synchronous` as the writer, so a checkpoint fsyncs the WAL and the database file unless off.
pub(crate) fn open_checkpointer(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|error| startup(path, "cannot open checkpointer", error))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|error| startup(path, "cannot set busy_timeout", error))?;
    conn.pragma_update(None, "synchronous", synchronous.pragma())
        .map_err(|error| startup(path, "cannot set synchronous", error))?;
    Ok(conn)
}

/// Opens a read connection. `query_only` makes an accidental write fail instead of racing the
/// writer; WAL lets it read a committed snapshot while the writer commits.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|error| startup(path, "cannot open reader", error))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|error| startup(path, "cannot set busy_timeout", error))?;
    conn.pragma_update(None, "query_only", "ON").map_err(|error| startup(path, "cannot set query_only", error))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_MAX);
    Ok(conn)
}

/// Applies every migration newer than the database's version, all in one transaction.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let fail = |error: rusqlite::Error| startup(path, "migration failed", error);
    let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    transaction
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER PRIMARY KEY,
                 applied_at INTEGER NOT NULL
             )",
        )
        .map_err(fail)?;
    let current: i64 = transaction
        .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| row.get(0))
        .map_err(fail)?;
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if current > latest {
        return Err(refused(
            path,
            "schema too new",
            format!("version {current}, this creditgraph knows versions up to {latest}; upgrade creditgraph"),
        ));
    }
    let applied_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX));
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        transaction.execute_batch(sql).map_err(fail)?;
        transaction
            .execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)", (version, applied_at))
            .map_err(fail)?;
        tracing::info!(version, database = %path.display(), "applied migration");
    }
    transaction.commit().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each level reaches both connections that sync (writer and checkpointer), and reads back
    /// as itself: the writer hands the checkpointer its level through that read.
    #[test]
    fn every_synchronous_level_reaches_the_connections_that_sync() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("levels.db");
        for synchronous in [Synchronous::Full, Synchronous::Normal, Synchronous::Off] {
            let writer = open_writer(&path, synchronous).expect("opens");
            let checkpointer = open_checkpointer(&path, synchronous).expect("opens");
            for conn in [&writer, &checkpointer] {
                let level: i64 = conn.pragma_query_value(None, "synchronous", |row| row.get(0)).expect("reads");
                assert_eq!(Synchronous::from_level(level), synchronous);
            }
        }
    }
}
