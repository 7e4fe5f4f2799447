//! The shared conformance suite (`store::conformance`) on PostgreSQL: every check gets a fresh
//! database on the throw-away cluster that `scripts/test.sh` starts.

use std::sync::Arc;

use store::{LedgerStore, ManualClock};
use store_postgres::{testing, PostgresOptions, PostgresStore};

async fn new_store(clock: Arc<ManualClock>) -> Arc<PostgresStore> {
    let url = testing::fresh_database().await;
    let store = PostgresStore::connect(&url, clock, PostgresOptions::default())
        .await
        .expect("a fresh test database accepts the migrations");
    Arc::new(store)
}

store::conformance_tests!(new_store);

/// A fresh store is empty and verifies clean (and keeps `new_store` exercised while the shared
/// suite is still being written).
#[tokio::test]
async fn fresh_store_is_empty_and_clean() {
    let store = new_store(Arc::new(ManualClock::starting_now())).await;
    let account_id = ledger::AccountId::parse("nobody").expect("valid id");
    assert!(store.account(&account_id).await.expect("account read").is_none());
    let report = store.verify().await.expect("verify");
    assert_eq!((report.accounts, report.entries), (0, 0));
    assert!(report.violations.is_empty());
    assert_eq!(store.backend(), "postgres");
}
