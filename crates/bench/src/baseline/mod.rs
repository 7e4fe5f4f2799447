//! Baseline ledger stores: what a team typically writes today, kept here to measure creditgraph
//! against in BENCHMARKS.md. They live in the benchmark harness because nothing else uses them:
//! **not for production use.**
//!
//! Why they exist: a benchmark of creditgraph's stores alone says nothing about whether
//! their design (one per-account state machine, grants with spend order, a journal, group commit
//! and batching) is worth it. The honest comparison is the straightforward design most services
//! use for credits: an `accounts` row with balance columns, a `holds` table, an idempotency
//! table, and one database transaction per operation that either locks the account row
//! (`SELECT … FOR UPDATE`) or lets a guarded `UPDATE … WHERE available >= $amount` decide.
//!
//! - [`BaselinePostgresStore`]: PostgreSQL through a deadpool pool, READ COMMITTED, in one of two
//!   [`PostgresBaselineMode`]s, retrying serialization failures and deadlocks a bounded number of
//!   times.
//! - [`BaselineSqliteStore`]: SQLite in WAL mode with `synchronous=FULL`, four pooled connections,
//!   every operation one `BEGIN IMMEDIATE … COMMIT` on a blocking thread.
//!
//! Both implement [`store::LedgerStore`] so the same server, load generator and checks run on
//! them, with the ledger's meaning for every supported command and rejection. What they leave out
//! on purpose, as the typical design does:
//!
//! - Grants are balance increments: no priority, no expiry, no per-grant records, and a grant's
//!   `reference` is not deduplicated (retries are made safe by idempotency keys only). An account
//!   reads as one synthetic grant holding all its credits.
//! - No journal: [`store::LedgerStore::entries`] is always empty, and `verify` checks the balance
//!   columns against each other and against the holds instead of against a journal.
//! - Extend, refund and the per-account sweep command answer [`store::StoreError::Unavailable`].
//! - An expired hold's credits return to `available` only when `sweep` runs or someone releases
//!   it; until then a new hold cannot use them, although reads already show them as available
//!   (reads apply expiry, as the trait asks).
//! - Idempotency keys are kept forever; `sweep` deletes none.
//!
//! All amounts are integer micro-credits ([`ledger::Amount`]) stored as 64-bit integers.

mod postgres;
mod rules;
mod sqlite;

use std::sync::atomic::{AtomicU64, Ordering};

pub use postgres::{BaselinePostgresStore, PostgresBaselineMode};
pub use sqlite::BaselineSqliteStore;

/// Retries of one operation after a serialization failure, deadlock or busy database, before it
/// fails with [`store::StoreError::Contention`].
pub const RETRIES_MAX: u32 = 8;

/// Cumulative counters since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaselineStats {
    /// Write transactions committed (commands, including recorded rejections, and sweeps).
    pub transactions: u64,
    /// Transaction attempts rolled back and run again (PostgreSQL: 40001 or 40P01; SQLite: the
    /// database stayed busy past the busy timeout).
    pub retries: u64,
    /// Attempts that failed with a deadlock (40P01). Always 0 on SQLite, which has a single
    /// writer and so no deadlocks.
    pub deadlocks: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    retries: AtomicU64,
    deadlocks: AtomicU64,
}

impl Counters {
    fn stats(&self) -> BaselineStats {
        BaselineStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            deadlocks: self.deadlocks.load(Ordering::Relaxed),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
