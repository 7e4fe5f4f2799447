//! The stores under test, all behind [`store::LedgerStore`]: creditgraph's SQLite store (durable
//! and with fsync off), creditgraph's PostgreSQL store, and the baselines of [`crate::baseline`].
//! The same drivers and the same HTTP server run against each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::baseline::{BaselinePostgresStore, BaselineSqliteStore, PostgresBaselineMode};
use anyhow::Context;
use serde::Serialize;
use store::{LedgerStore, SystemClock};
use store_postgres::{PostgresOptions, PostgresStore};
use store_sqlite::{SqliteOptions, SqliteStore, Synchronous};

/// Connections per process for every PostgreSQL store, creditgraph's and the baselines'.
pub const POSTGRES_POOL_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
pub enum StoreKind {
    /// creditgraph on SQLite, `synchronous=FULL` (the default).
    Sqlite,
    /// creditgraph on SQLite with `synchronous=NORMAL`: safe from a process crash, not from a
    /// power loss (the option `sqlite:PATH?synchronous=normal` offers operators).
    SqliteNormal,
    /// creditgraph on SQLite with `synchronous=OFF`: what durability costs.
    SqliteNoSync,
    /// creditgraph on PostgreSQL.
    Postgres,
    /// Baseline (a): one transaction per operation, `SELECT … FOR UPDATE` on the account row.
    BaselinePgForUpdate,
    /// Baseline (a'): one transaction per operation, `UPDATE … WHERE available >= amount`.
    BaselinePgConditional,
    /// Baseline (b): plain SQLite, one `BEGIN IMMEDIATE` transaction per operation.
    BaselineSqlite,
}

impl StoreKind {
    /// One of the straightforward designs the benchmark compares against.
    pub fn is_baseline(self) -> bool {
        matches!(self, StoreKind::BaselinePgForUpdate | StoreKind::BaselinePgConditional | StoreKind::BaselineSqlite)
    }
}

impl StoreKind {
    pub fn label(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "creditgraph SQLite",
            StoreKind::SqliteNormal => "creditgraph SQLite, synchronous=NORMAL",
            StoreKind::SqliteNoSync => "creditgraph SQLite, no fsync",
            StoreKind::Postgres => "creditgraph PostgreSQL",
            StoreKind::BaselinePgForUpdate => "baseline PG FOR UPDATE",
            StoreKind::BaselinePgConditional => "baseline PG conditional UPDATE",
            StoreKind::BaselineSqlite => "baseline SQLite",
        }
    }

    pub fn needs_postgres(self) -> bool {
        matches!(self, StoreKind::Postgres | StoreKind::BaselinePgForUpdate | StoreKind::BaselinePgConditional)
    }
}

/// Counters a store keeps, as one shape for every store.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StoreCounters {
    /// Write transactions committed (each one fsync when durable).
    pub commits: u64,
    /// Ledger operations inside those transactions (`None`-like 0 when the store cannot tell).
    pub operations: u64,
    pub retries: u64,
    pub deadlocks: u64,
}

impl StoreCounters {
    pub fn plus(self, other: StoreCounters) -> StoreCounters {
        StoreCounters {
            commits: self.commits + other.commits,
            operations: self.operations + other.operations,
            retries: self.retries + other.retries,
            deadlocks: self.deadlocks + other.deadlocks,
        }
    }

    /// Operations per write transaction (per fsync when durable), as table text; "—" when the
    /// store cannot tell.
    pub fn per_commit_text(&self) -> String {
        if self.commits > 0 && self.operations > 0 {
            format!("{:.1}", self.operations as f64 / self.commits as f64)
        } else {
            "—".to_owned()
        }
    }

    /// A baseline commits each operation alone.
    fn of_baseline(stats: crate::baseline::BaselineStats) -> StoreCounters {
        StoreCounters {
            commits: stats.transactions,
            operations: stats.transactions,
            retries: stats.retries,
            deadlocks: stats.deadlocks,
        }
    }

    pub fn since(self, before: StoreCounters) -> StoreCounters {
        StoreCounters {
            commits: self.commits - before.commits,
            operations: self.operations - before.operations,
            retries: self.retries - before.retries,
            deadlocks: self.deadlocks - before.deadlocks,
        }
    }
}

/// The SQLite writer's commit and checkpoint timings ([`store_sqlite::SqliteStats`]), for the
/// scale section's slow-commit question (issue 16, target 6).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct WriterTimings {
    pub commits: u64,
    pub commit_micros: u64,
    pub commit_max_micros: u64,
    pub slow_commits: u64,
    pub slow_commits_during_checkpoint: u64,
    pub checkpoints: u64,
    pub checkpoint_micros: u64,
    pub checkpoint_max_micros: u64,
    pub checkpoint_frames: u64,
}

impl WriterTimings {
    /// What happened between `before` and `self` (maxima are over the store's whole life).
    pub fn since(self, before: WriterTimings) -> WriterTimings {
        WriterTimings {
            commits: self.commits - before.commits,
            commit_micros: self.commit_micros - before.commit_micros,
            commit_max_micros: self.commit_max_micros,
            slow_commits: self.slow_commits - before.slow_commits,
            slow_commits_during_checkpoint: self.slow_commits_during_checkpoint - before.slow_commits_during_checkpoint,
            checkpoints: self.checkpoints - before.checkpoints,
            checkpoint_micros: self.checkpoint_micros - before.checkpoint_micros,
            checkpoint_max_micros: self.checkpoint_max_micros,
            checkpoint_frames: self.checkpoint_frames - before.checkpoint_frames,
        }
    }
}

/// An open store of any kind.
#[derive(Clone)]
pub enum Opened {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
    BaselinePostgres(Arc<BaselinePostgresStore>),
    BaselineSqlite(Arc<BaselineSqliteStore>),
}

impl Opened {
    pub fn ledger(&self) -> Arc<dyn LedgerStore> {
        match self {
            Opened::Sqlite(store) => store.clone(),
            Opened::Postgres(store) => store.clone(),
            Opened::BaselinePostgres(store) => store.clone(),
            Opened::BaselineSqlite(store) => store.clone(),
        }
    }

    pub fn counters(&self) -> StoreCounters {
        match self {
            Opened::Sqlite(store) => {
                let stats = store.stats();
                StoreCounters { commits: stats.commits, operations: stats.operations, retries: 0, deadlocks: 0 }
            }
            Opened::Postgres(store) => {
                let stats = store.stats();
                StoreCounters {
                    commits: stats.transactions,
                    operations: stats.batched_commands,
                    retries: stats.retries,
                    deadlocks: stats.deadlocks,
                }
            }
            Opened::BaselinePostgres(store) => StoreCounters::of_baseline(store.stats()),
            Opened::BaselineSqlite(store) => StoreCounters::of_baseline(store.stats()),
        }
    }

    /// The writer's timings, for creditgraph's SQLite store; `None` for the others.
    pub fn writer_timings(&self) -> Option<WriterTimings> {
        let Opened::Sqlite(store) = self else { return None };
        let stats = store.stats();
        Some(WriterTimings {
            commits: stats.commits,
            commit_micros: stats.commit_micros,
            commit_max_micros: stats.commit_max_micros,
            slow_commits: stats.slow_commits,
            slow_commits_during_checkpoint: stats.slow_commits_during_checkpoint,
            checkpoints: stats.checkpoints,
            checkpoint_micros: stats.checkpoint_micros,
            checkpoint_max_micros: stats.checkpoint_max_micros,
            checkpoint_frames: stats.checkpoint_frames,
        })
    }

    pub async fn close(&self) {
        match self {
            Opened::Sqlite(store) => store.close().await,
            Opened::Postgres(store) => store.close().await,
            Opened::BaselinePostgres(_) | Opened::BaselineSqlite(_) => {}
        }
    }
}

/// Environment variables that override creditgraph PostgreSQL's batching, so each lever can be
/// measured on its own with one build (`CREDITGRAPH_BENCH_PG_BATCH_COMMANDS_MAX=1` is one
/// transaction per command; the server processes of the HTTP runs inherit them).
const PG_BATCH_COMMANDS_MAX_VARIABLE: &str = "CREDITGRAPH_BENCH_PG_BATCH_COMMANDS_MAX";
const PG_BATCHES_IN_FLIGHT_MAX_VARIABLE: &str = "CREDITGRAPH_BENCH_PG_BATCHES_IN_FLIGHT_MAX";
const PG_READ_ACCOUNTS_MAX_VARIABLE: &str = "CREDITGRAPH_BENCH_PG_READ_ACCOUNTS_MAX";
const PG_READS_IN_FLIGHT_MAX_VARIABLE: &str = "CREDITGRAPH_BENCH_PG_READS_IN_FLIGHT_MAX";

/// creditgraph PostgreSQL's options in the benchmark: the pool the baselines get, the default
/// batching unless overridden (see [`PG_BATCH_COMMANDS_MAX_VARIABLE`]).
fn postgres_options() -> anyhow::Result<PostgresOptions> {
    let defaults = PostgresOptions::default();
    let variable = |name: &str, default: usize| -> anyhow::Result<usize> {
        match std::env::var(name) {
            Ok(text) => text.parse().with_context(|| format!("{name} must be a count, not {text:?}")),
            Err(_) => Ok(default),
        }
    };
    Ok(PostgresOptions {
        pool_max: POSTGRES_POOL_MAX,
        batch_commands_max: variable(PG_BATCH_COMMANDS_MAX_VARIABLE, defaults.batch_commands_max)?,
        batches_in_flight_max: variable(PG_BATCHES_IN_FLIGHT_MAX_VARIABLE, defaults.batches_in_flight_max)?,
        read_accounts_max: variable(PG_READ_ACCOUNTS_MAX_VARIABLE, defaults.read_accounts_max)?,
        reads_in_flight_max: variable(PG_READS_IN_FLIGHT_MAX_VARIABLE, defaults.reads_in_flight_max)?,
        ..defaults
    })
}

/// Where a store keeps its data: a SQLite file, or a PostgreSQL database URL.
#[derive(Clone, Debug)]
pub struct Place {
    pub sqlite_path: PathBuf,
    pub postgres_url: Option<String>,
}

pub async fn open(kind: StoreKind, place: &Place) -> anyhow::Result<Opened> {
    let clock = Arc::new(SystemClock);
    let postgres_url = || place.postgres_url.as_deref().context("this store needs a PostgreSQL database");
    Ok(match kind {
        StoreKind::Sqlite | StoreKind::SqliteNormal | StoreKind::SqliteNoSync => {
            let synchronous = match kind {
                StoreKind::SqliteNormal => Synchronous::Normal,
                StoreKind::SqliteNoSync => Synchronous::Off,
                _ => Synchronous::Full,
            };
            let options = SqliteOptions { synchronous, ..SqliteOptions::default() };
            Opened::Sqlite(Arc::new(SqliteStore::open(&place.sqlite_path, clock, options).await?))
        }
        StoreKind::Postgres => {
            let options = postgres_options()?;
            Opened::Postgres(Arc::new(PostgresStore::connect(postgres_url()?, clock, options).await?))
        }
        StoreKind::BaselinePgForUpdate | StoreKind::BaselinePgConditional => {
            let mode = if kind == StoreKind::BaselinePgForUpdate {
                PostgresBaselineMode::ForUpdate
            } else {
                PostgresBaselineMode::ConditionalUpdate
            };
            let store = BaselinePostgresStore::connect(postgres_url()?, mode, POSTGRES_POOL_MAX, clock).await?;
            Opened::BaselinePostgres(Arc::new(store))
        }
        StoreKind::BaselineSqlite => {
            Opened::BaselineSqlite(Arc::new(BaselineSqliteStore::open(&place.sqlite_path, clock)?))
        }
    })
}

/// Creates an empty database on the cluster of `admin_url` and returns its URL.
pub async fn create_database(admin_url: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {admin_url}"))?;
    let driver = tokio::spawn(connection);
    let name = format!("creditgraph_bench_{:016x}", rand::random::<u64>());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.context("CREATE DATABASE")?;
    drop(client);
    let _ = driver.await;
    Ok(store_postgres::testing::with_database(admin_url, &name))
}

/// A fresh place for one run: a new SQLite file under `dir`, and a new database when the kind
/// needs PostgreSQL.
pub async fn fresh_place(
    kind: StoreKind,
    dir: &Path,
    run: &str,
    postgres_admin_url: Option<&str>,
) -> anyhow::Result<Place> {
    let postgres_url = match (kind.needs_postgres(), postgres_admin_url) {
        (true, Some(admin_url)) => Some(create_database(admin_url).await?),
        (true, None) => anyhow::bail!("{} needs --postgres-url (scripts/bench.sh starts a cluster)", kind.label()),
        (false, _) => None,
    };
    Ok(Place { sqlite_path: dir.join(format!("{run}.db")), postgres_url })
}

/// Refreshes the planner's statistics of a PostgreSQL place after seeding, for every store
/// alike, so runs measure the steady state a deployment is in once autovacuum has analyzed its
/// tables (it does so within a minute of a table growing by 10%), not plans made for the empty
/// tables of a database created seconds before. Nothing for SQLite.
pub async fn analyze(place: &Place) -> anyhow::Result<()> {
    let Some(url) = &place.postgres_url else { return Ok(()) };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    client.batch_execute("ANALYZE").await.context("ANALYZE after seeding")?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// `SHOW server_version` of the cluster at `url`.
pub async fn server_version(url: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let row = client.query_one("SHOW server_version", &[]).await?;
    let version: String = row.try_get(0)?;
    drop(client);
    let _ = driver.await;
    Ok(version)
}
