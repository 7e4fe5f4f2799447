//! Opening, migrating and closing whichever store the database URL names.
//!
//! This is the only place that names concrete backends; everything above it sees
//! `Arc<dyn LedgerStore>`.

use std::sync::Arc;

use anyhow::Context;
use store::memory::MemoryStore;
use store::{Clock, JobStore, LedgerStore, RunStore};
use store_postgres::{PostgresOptions, PostgresStore};
use store_sqlite::{SqliteOptions, SqliteStore};

use crate::config::DatabaseUrl;

/// How long the in-memory store keeps idempotency keys (the contract asks for at least 24 h).
const MEMORY_IDEMPOTENCY_RETENTION_SECONDS: u64 = 86_400;

/// An open store, kept concrete so it can be closed cleanly at shutdown.
pub enum OpenStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
    Memory(Arc<MemoryStore>),
}

impl OpenStore {
    /// Opens (and migrates) the store.
    pub async fn open(url: &DatabaseUrl, clock: Arc<dyn Clock>) -> anyhow::Result<OpenStore> {
        let store = match url {
            DatabaseUrl::Sqlite { path, synchronous } => OpenStore::Sqlite(Arc::new(
                SqliteStore::open(path, clock, SqliteOptions { synchronous: *synchronous, ..SqliteOptions::default() })
                    .await
                    .with_context(|| format!("cannot open SQLite database {}", path.display()))?,
            )),
            DatabaseUrl::Postgres(url) => OpenStore::Postgres(Arc::new(
                PostgresStore::connect(url, clock, PostgresOptions::default())
                    .await
                    .context("cannot connect to PostgreSQL")?,
            )),
            DatabaseUrl::Memory => {
                OpenStore::Memory(Arc::new(MemoryStore::new(clock, MEMORY_IDEMPOTENCY_RETENTION_SECONDS)))
            }
        };
        Ok(store)
    }

    pub fn ledger(&self) -> Arc<dyn LedgerStore> {
        match self {
            OpenStore::Sqlite(store) => Arc::clone(store) as Arc<dyn LedgerStore>,
            OpenStore::Postgres(store) => Arc::clone(store) as Arc<dyn LedgerStore>,
            OpenStore::Memory(store) => Arc::clone(store) as Arc<dyn LedgerStore>,
        }
    }

    pub fn runs(&self) -> Arc<dyn RunStore> {
        match self {
            OpenStore::Sqlite(store) => Arc::clone(store) as Arc<dyn RunStore>,
            OpenStore::Postgres(store) => Arc::clone(store) as Arc<dyn RunStore>,
            OpenStore::Memory(store) => Arc::clone(store) as Arc<dyn RunStore>,
        }
    }

    pub fn jobs(&self) -> Arc<dyn JobStore> {
        match self {
            OpenStore::Sqlite(store) => Arc::clone(store) as Arc<dyn JobStore>,
            OpenStore::Postgres(store) => Arc::clone(store) as Arc<dyn JobStore>,
            OpenStore::Memory(store) => Arc::clone(store) as Arc<dyn JobStore>,
        }
    }

    /// Lets queued writes finish and releases the database.
    pub async fn close(&self) {
        match self {
            OpenStore::Sqlite(store) => store.close().await,
            OpenStore::Postgres(store) => store.close().await,
            OpenStore::Memory(_) => {}
        }
    }
}

/// Applies the embedded migrations without starting a store.
pub async fn migrate(url: &DatabaseUrl) -> anyhow::Result<()> {
    match url {
        DatabaseUrl::Sqlite { path, .. } => SqliteStore::migrate_only(path)
            .await
            .with_context(|| format!("cannot migrate SQLite database {}", path.display())),
        DatabaseUrl::Postgres(url) => PostgresStore::migrate_only(url).await.context("cannot migrate PostgreSQL"),
        DatabaseUrl::Memory => Ok(()),
    }
}
