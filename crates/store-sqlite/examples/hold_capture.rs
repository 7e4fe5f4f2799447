//! Measures hold+capture pairs per second on a fresh SQLite file, with the group-commit figures.
//!
//! `cargo run --release -p store-sqlite --example hold_capture -- [workers] [pairs_per_worker] [fast]`
//! Each worker loops: hold 1 credit on its own account, capture it (final). `fast` turns durable
//! commits off (synchronous=OFF), which shows what the fsyncs cost.

use std::sync::Arc;
use std::time::Instant;

use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage};
use store::{Executed, LedgerStore, Request, SystemClock};
use store_sqlite::{SqliteOptions, SqliteStore, Synchronous};

async fn run(store: &SqliteStore, command: Command) -> Outcome {
    match store.execute(Request::new(command)).await {
        Ok(Executed::Fresh(Ok(outcome))) => outcome,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workers: usize = args.first().and_then(|text| text.parse().ok()).unwrap_or(64);
    let pairs_per_worker: usize = args.get(1).and_then(|text| text.parse().ok()).unwrap_or(200);
    let synchronous = if args.iter().any(|arg| arg == "fast") { Synchronous::Off } else { Synchronous::Full };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = SqliteOptions { synchronous, ..SqliteOptions::default() };
    let store =
        Arc::new(SqliteStore::open(&dir.path().join("bench.db"), Arc::new(SystemClock), options).await.expect("opens"));
    for worker in 0..workers {
        let grant = Command::Grant {
            account_id: AccountId::parse(&format!("acct-{worker}")).expect("valid id"),
            grant_id: GrantId::parse(&format!("g-{worker}")).expect("valid id"),
            amount: Amount::from_credits(1_000_000),
            priority: 100,
            expires_at: None,
            reference: None,
            metadata: "{}".to_owned(),
        };
        run(&store, grant).await;
    }
    let before = store.stats();
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for pair in 0..pairs_per_worker {
                    let hold_id = HoldId::parse(&format!("h-{worker}-{pair}")).expect("valid id");
                    let hold = Command::Hold {
                        account_id: AccountId::parse(&format!("acct-{worker}")).expect("valid id"),
                        hold_id: hold_id.clone(),
                        amount: Amount::from_credits(1),
                        ttl_seconds: 1_200,
                        reference: None,
                        metadata: "{}".to_owned(),
                    };
                    run(&store, hold).await;
                    let capture = Command::Capture {
                        hold_id,
                        amount: Amount::from_credits(1),
                        is_final: true,
                        overage: Overage::Reject,
                    };
                    run(&store, capture).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("worker finishes");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = store.stats();
    let pairs = workers * pairs_per_worker;
    let commits = after.commits - before.commits;
    let operations = after.operations - before.operations;
    println!(
        "synchronous={} workers={workers} pairs={pairs} seconds={elapsed:.2} pairs/s={:.0} operations/s={:.0} \
         commits={commits} operations/commit={:.1}",
        synchronous.pragma(),
        pairs as f64 / elapsed,
        operations as f64 / elapsed,
        operations as f64 / commits.max(1) as f64,
    );
    let report = store.verify().await.expect("verify answers");
    assert!(report.violations.is_empty(), "verify found: {:#?}", report.violations);
    store.close().await;
}
