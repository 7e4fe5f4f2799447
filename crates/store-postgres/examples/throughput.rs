//! Measures hold + capture pairs per second on PostgreSQL, as the closing note of the ledger
//! milestone asks. It creates a fresh database on the cluster named by
//! `CREDITGRAPH_TEST_POSTGRES_URL` (see `scripts/test.sh` for how to get one).
//!
//! `cargo run --release -p store-postgres --example throughput -- [pairs] [concurrency] [accounts] [stores]`
//! (defaults 4000, 32, 64, 1). With one account every pair queues on the same row lock, which is
//! the worst case (each store then applies the commands that arrive together in one transaction);
//! with many accounts the pool and the server's cores are the limit. With 2 stores, the workers
//! alternate between two pools on the same database, as two server processes would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage};
use store::{Executed, LedgerStore, Request, SystemClock};
use store_postgres::{testing, PostgresOptions, PostgresStore};

fn argument(index: usize, default: u64) -> u64 {
    std::env::args().nth(index).and_then(|text| text.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let pairs_total = argument(1, 4000);
    let concurrency = argument(2, 32).max(1);
    let accounts = argument(3, 64).max(1);
    let stores_count = argument(4, 1).clamp(1, 2);
    let url = testing::fresh_database().await;
    let mut stores = Vec::new();
    for _ in 0..stores_count {
        let store = PostgresStore::connect(&url, Arc::new(SystemClock), PostgresOptions::default()).await;
        stores.push(Arc::new(store.expect("connect")));
    }
    let store = stores[0].clone();
    for index in 0..accounts {
        let grant = Command::Grant {
            account_id: AccountId::parse(&format!("bench-{index}")).expect("valid id"),
            grant_id: GrantId::parse(&format!("grant-{index}")).expect("valid id"),
            amount: Amount::from_credits(1_000_000),
            priority: 100,
            expires_at: None,
            reference: None,
            metadata: "{}".to_owned(),
        };
        store.execute(Request::new(grant)).await.expect("grant");
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let store = stores[usize::try_from(worker).expect("small") % stores.len()].clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= pairs_total {
                        break;
                    }
                    let hold_id = HoldId::parse(&format!("hold-{index}")).expect("valid id");
                    let hold = Command::Hold {
                        account_id: AccountId::parse(&format!("bench-{}", index % accounts)).expect("valid id"),
                        hold_id: hold_id.clone(),
                        amount: Amount::from_credits(2),
                        ttl_seconds: 600,
                        reference: None,
                        metadata: "{}".to_owned(),
                    };
                    let key = format!("key-hold-{index}");
                    let held = store.execute(Request::with_key(hold, &key, "f")).await.expect("hold");
                    assert!(matches!(held, Executed::Fresh(Ok(Outcome::Held { .. }))), "{held:?}");
                    let capture = Command::Capture {
                        hold_id,
                        amount: Amount::from_credits(1),
                        is_final: true,
                        overage: Overage::Reject,
                    };
                    let key = format!("key-capture-{index}");
                    let captured = store.execute(Request::with_key(capture, &key, "f")).await.expect("capture");
                    assert!(matches!(captured, Executed::Fresh(Ok(Outcome::Captured { .. }))), "{captured:?}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = store.verify().await.expect("verify");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let stats: Vec<_> = stores.iter().map(|store| store.stats()).collect();
    let batches: u64 = stats.iter().map(|stats| stats.batches).sum();
    let batched: u64 = stats.iter().map(|stats| stats.batched_commands).sum();
    println!(
        "postgres: {pairs_total} hold+capture pairs, {concurrency} concurrent, {accounts} accounts, \
         {stores_count} store(s): {seconds:.2} s, {:.0} pairs/s ({:.0} commands/s), {:.1} commands per batch; \
         stats {stats:?}",
        pairs_total as f64 / seconds,
        2.0 * pairs_total as f64 / seconds,
        batched as f64 / batches.max(1) as f64,
    );
    for store in &stores {
        store.close().await;
    }
}
