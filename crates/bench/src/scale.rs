//! Targets 8 and 9 (first half): latency of balance reads and holds, and the server's resident
//! memory, with 10,000 accounts and with 1,000,000 accounts / 10,000,000 journal entries.
//!
//! Building ten million entries through the ledger API would take the better part of an hour
//! on two cores, so the big database is made by replication: one template account's history is
//! written by creditgraph's own SQLite store (grant, holds, captures, a debit), then copied to
//! every account in one SQL statement per table, renaming the ids. Every copy is therefore a
//! history the ledger itself produced, and `verify` checks the result.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::{AccountId, Amount, Command, GrantId, HoldId, Overage};
use serde::Serialize;
use store::{Executed, LedgerStore, Request, SystemClock};
use store_sqlite::{SqliteOptions, SqliteStore, Synchronous};

use crate::http::{self, Action, Drive, HttpResult, HttpRun, ServerProcess};
use crate::measure::LatencySummary;
use crate::stores::{Place, StoreKind};
use crate::workload::{Distribution, Mix, Workload};

/// The template's marker in every id; replaced by the account's 7-digit index.
const TEMPLATE_MARK: &str = "tmpl";
/// Journal entries per account the template aims for.
const ENTRIES_PER_ACCOUNT: u64 = 10;
/// Credits each account starts with.
const TEMPLATE_GRANT_CREDITS: u64 = 1_000;
/// Fixed arrival rates of the measurement (reads; hold+capture arrivals = two requests).
const READS_PER_SECOND: u64 = 1_000;
const HOLD_ARRIVALS_PER_SECOND: u64 = 250;

#[derive(Clone, Debug, Serialize)]
pub struct ScalePoint {
    pub accounts: u64,
    pub entries: u64,
    pub database_bytes: u64,
    pub build_seconds: f64,
    pub reads: HttpResult,
    pub holds: HttpResult,
    /// The server's resident memory after both runs, and its peak.
    pub rss_bytes: u64,
    pub rss_peak_bytes: u64,
    /// `verify` over the whole database after the runs.
    pub verify_seconds: f64,
    /// The writer's commits and the background checkpointer's passes during the hold run: do
    /// the slow commits overlap checkpoint passes? (issue 16, target 6)
    pub writer: Option<crate::stores::WriterTimings>,
    pub violations: u64,
}

impl ScalePoint {
    pub fn read_latency(&self) -> LatencySummary {
        self.reads.requests
    }
    pub fn hold_latency(&self) -> LatencySummary {
        self.holds.holds
    }
}

/// Builds a database of `accounts` accounts with [`ENTRIES_PER_ACCOUNT`] entries each, serves
/// it, measures reads and holds at fixed rates, then verifies it.
pub async fn measure(dir: &Path, accounts: u64, duration: Duration, seed: u64) -> anyhow::Result<ScalePoint> {
    let path = dir.join(format!("scale-{accounts}.db"));
    let started = Instant::now();
    let entries = build(&path, accounts).await.with_context(|| format!("building {}", path.display()))?;
    let build_seconds = started.elapsed().as_secs_f64();
    let database_bytes = std::fs::metadata(&path).map(|metadata| metadata.len()).unwrap_or(0);
    eprintln!("bench: scale database with {accounts} accounts, {entries} entries built in {build_seconds:.0} s");

    let place = Place { sqlite_path: path.clone(), postgres_url: None };
    let mut servers = vec![ServerProcess::start(StoreKind::Sqlite, &place).await?];
    let uniform = |mix| Workload {
        name: "scale",
        distribution: Distribution::Uniform { accounts: usize::try_from(accounts).expect("fits") },
        mix,
        replay_percent: 0,
        near_empty: false,
        allowances: 0,
    };
    let reads_workload = uniform(Mix::ReadHeavy);
    let holds_workload = uniform(Mix::HoldCapture);
    let reads = http::run(HttpRun {
        store: StoreKind::Sqlite,
        servers: &mut servers,
        workload: &reads_workload,
        action: Action::Read,
        drive: Drive::OpenLoop { arrivals_per_second: READS_PER_SECOND, in_flight_max: crate::suite::IN_FLIGHT_MAX },
        duration,
        seed,
        check_balances: false,
        warm_up: None,
    })
    .await?;
    let timings_before = servers[0].writer_timings().await?;
    let holds = http::run(HttpRun {
        store: StoreKind::Sqlite,
        servers: &mut servers,
        workload: &holds_workload,
        action: Action::HoldCapture,
        drive: Drive::OpenLoop {
            arrivals_per_second: HOLD_ARRIVALS_PER_SECOND,
            in_flight_max: crate::suite::IN_FLIGHT_MAX,
        },
        duration,
        seed: seed + 1,
        check_balances: false,
        warm_up: None,
    })
    .await?;
    let writer = match (servers[0].writer_timings().await?, timings_before) {
        (Some(after), Some(before)) => Some(after.since(before)),
        _ => None,
    };
    let (rss_bytes, rss_peak_bytes) = servers[0].memory().unwrap_or((0, 0));
    let verify_started = Instant::now();
    let violations = servers[0].check(0).await?.violations;
    let verify_seconds = verify_started.elapsed().as_secs_f64();
    for server in servers {
        server.stop().await?;
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    Ok(ScalePoint {
        accounts,
        entries,
        database_bytes,
        build_seconds,
        reads,
        holds,
        rss_bytes,
        rss_peak_bytes,
        verify_seconds,
        violations,
        writer,
    })
}

fn id<T>(parse: fn(&str) -> Result<T, ledger::IdError>, text: &str) -> anyhow::Result<T> {
    parse(text).map_err(|error| anyhow::anyhow!("{text}: {error:?}"))
}

/// Writes the template account through the store, then replicates it; returns the entries.
async fn build(path: &Path, accounts: u64) -> anyhow::Result<u64> {
    let options = SqliteOptions { synchronous: Synchronous::Off, ..SqliteOptions::default() };
    let store = SqliteStore::open(path, Arc::new(SystemClock), options).await?;
    let account_id = id(AccountId::parse, &format!("bench-{TEMPLATE_MARK}"))?;
    let mut commands = vec![Command::Grant {
        account_id: account_id.clone(),
        grant_id: id(GrantId::parse, &format!("grant-{TEMPLATE_MARK}"))?,
        amount: Amount::from_credits(TEMPLATE_GRANT_CREDITS),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    }];
    let mut pair = 0;
    let entries = loop {
        for command in commands.drain(..) {
            match store.execute(Request::new(command)).await? {
                Executed::Fresh(Ok(_)) => {}
                other => anyhow::bail!("template command answered {other:?}"),
            }
        }
        let entries = store.entries(&account_id, 0, 1_000).await?.len() as u64;
        if entries >= ENTRIES_PER_ACCOUNT {
            break entries;
        }
        pair += 1;
        let hold_id = id(HoldId::parse, &format!("hold-{TEMPLATE_MARK}-{pair}"))?;
        if entries + 2 > ENTRIES_PER_ACCOUNT {
            commands.push(Command::Debit {
                account_id: account_id.clone(),
                amount: Amount::from_credits(1),
                reference: None,
            });
            continue;
        }
        commands.push(Command::Hold {
            account_id: account_id.clone(),
            hold_id: hold_id.clone(),
            amount: Amount::from_credits(2),
            ttl_seconds: 86_400,
            reference: None,
            metadata: "{}".to_owned(),
        });
        commands.push(Command::Capture {
            hold_id,
            amount: Amount::from_credits(1),
            is_final: true,
            overage: Overage::Reject,
        });
    };
    store.close().await;

    let path = path.to_owned();
    let copies = accounts;
    tokio::task::spawn_blocking(move || replicate(&path, copies)).await??;
    Ok(entries * accounts)
}

/// Copies the template's rows `accounts` times (indexes 0..accounts) and removes the template.
/// No `ANALYZE` afterwards: a served database has none either (with it, `verify` took 2.5× longer).
fn replicate(path: &Path, accounts: u64) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let transaction = conn.transaction()?;
    let series =
        format!("WITH RECURSIVE series(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM series WHERE n + 1 < {accounts})");
    for table in ["accounts", "grants", "holds", "entries"] {
        let columns: Vec<(String, String)> = {
            let mut statement = transaction.prepare(&format!("SELECT name, type FROM pragma_table_info('{table}')"))?;
            let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        // `seq` is the journal's rowid: left out, so each copy gets the next ones in order.
        let kept: Vec<&(String, String)> = columns.iter().filter(|(name, _)| name != "seq").collect();
        let names: Vec<&str> = kept.iter().map(|(name, _)| name.as_str()).collect();
        let values: Vec<String> = kept
            .iter()
            .map(|(name, kind)| {
                if kind.eq_ignore_ascii_case("TEXT") {
                    format!("replace(t.{name}, '{TEMPLATE_MARK}', printf('%07d', series.n))")
                } else {
                    format!("t.{name}")
                }
            })
            .collect();
        let order = if table == "entries" { "ORDER BY series.n, t.seq" } else { "" };
        let sql = format!(
            "{series} INSERT INTO {table} ({}) SELECT {} FROM series, {table} AS t WHERE t.account_id = 'bench-{TEMPLATE_MARK}' {order}",
            names.join(", "),
            values.join(", ")
        );
        transaction.execute_batch(&sql).with_context(|| format!("replicating {table}"))?;
    }
    for table in ["entries", "holds", "grants", "accounts"] {
        transaction.execute(&format!("DELETE FROM {table} WHERE account_id = 'bench-{TEMPLATE_MARK}'"), [])?;
    }
    transaction.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}
