//! The SQLite baseline against the shared scenarios, on a real database file.

mod baseline;

use std::sync::Arc;

use bench::baseline::BaselineSqliteStore;
use store::{LedgerStore, ManualClock};
use tempfile::TempDir;

fn open() -> (Arc<BaselineSqliteStore>, Arc<ManualClock>, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = Arc::new(ManualClock::starting_now());
    let store = BaselineSqliteStore::open(&dir.path().join("baseline.db"), clock.clone()).expect("the store opens");
    (Arc::new(store), clock, dir)
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, clock, _dir) = open();
                assert_eq!(store.backend(), "baseline-sqlite");
                baseline::$name(store, clock).await;
            }
        )*
    };
}

scenarios!(
    hold_is_all_or_nothing,
    partial_then_final_capture,
    release_gives_credits_back,
    expired_holds_return_on_sweep,
    idempotent_replay_and_conflict,
    concurrent_holds_never_overdraw,
    unsupported_commands_are_unavailable,
    account_view_is_one_grant,
    concurrent_same_key_applies_once,
);

#[tokio::test]
async fn reopening_keeps_the_ledger_and_counts_transactions() {
    let (store, clock, dir) = open();
    let shared: baseline::Store = store.clone();
    baseline::grant(&shared, "ivy", 10).await;
    baseline::hold(&shared, "ivy", "h1", 4, 60).await.expect("held");
    assert_eq!(store.stats().transactions, 2);
    drop((shared, store));
    let reopened: baseline::Store =
        Arc::new(BaselineSqliteStore::open(&dir.path().join("baseline.db"), clock).expect("the store reopens"));
    baseline::assert_figures(&reopened, "ivy", 6, 4).await;
}

/// `verify` can fail: a `held` column out of step with the holds is reported.
#[tokio::test]
async fn verify_reports_tampered_columns() {
    let (store, _clock, dir) = open();
    let shared: baseline::Store = store.clone();
    baseline::grant(&shared, "jack", 10).await;
    baseline::hold(&shared, "jack", "h1", 4, 60).await.expect("held");
    let connection = rusqlite::Connection::open(dir.path().join("baseline.db")).expect("a side connection");
    connection.execute("UPDATE baseline_accounts SET held = held + 1 WHERE id = 'jack'", []).expect("tampered");
    let report = store.verify().await.expect("verify runs");
    assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
    assert!(report.violations.iter().all(|violation| violation.account_id.as_str() == "jack"));
}
