//! The shared conformance suite on a real SQLite file, durable settings included.

use std::sync::Arc;

use store::ManualClock;
use store_sqlite::{SqliteOptions, SqliteStore};

/// A fresh database file in its own temporary directory. The directory is leaked on purpose: the
/// store outlives this function and the test process removes nothing it still uses.
async fn new_store(clock: Arc<ManualClock>) -> Arc<SqliteStore> {
    let dir = Box::leak(Box::new(tempfile::tempdir().expect("a temporary directory")));
    let store = SqliteStore::open(&dir.path().join("ledger.db"), clock, SqliteOptions::default())
        .await
        .expect("a fresh SQLite store opens");
    Arc::new(store)
}

store::conformance_tests!(new_store);

/// The same suite with the writer's account cache off, so every command loads its state from
/// the database: both paths must give the same answers.
mod uncached {
    use super::*;

    async fn new_uncached_store(clock: Arc<ManualClock>) -> Arc<SqliteStore> {
        let dir = Box::leak(Box::new(tempfile::tempdir().expect("a temporary directory")));
        let options = SqliteOptions { cache_accounts_max: 0, ..SqliteOptions::default() };
        let store =
            SqliteStore::open(&dir.path().join("ledger.db"), clock, options).await.expect("a fresh SQLite store opens");
        Arc::new(store)
    }

    store::conformance_tests!(new_uncached_store);
}
