//! The PostgreSQL baseline, in both modes, against the shared scenarios on a fresh database each.
//! Needs `CREDITGRAPH_TEST_POSTGRES_URL` (see `store_postgres::testing`); without it these fail.

mod baseline;

use std::sync::Arc;

use bench::baseline::{BaselinePostgresStore, PostgresBaselineMode};
use store::{LedgerStore, ManualClock};
use tokio_postgres::NoTls;

const POOL_MAX: usize = 8;

async fn connect(mode: PostgresBaselineMode) -> (Arc<BaselinePostgresStore>, Arc<ManualClock>, String) {
    let url = store_postgres::testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = BaselinePostgresStore::connect(&url, mode, POOL_MAX, clock.clone()).await.expect("the store connects");
    (Arc::new(store), clock, url)
}

macro_rules! scenarios {
    ($mode:expr, $backend:literal; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, clock, _url) = super::connect($mode).await;
                assert_eq!(store::LedgerStore::backend(&*store), $backend);
                super::baseline::$name(store, clock).await;
            }
        )*
    };
}

macro_rules! all_scenarios {
    ($mode:expr, $backend:literal) => {
        scenarios!(
            $mode, $backend;
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
    };
}

mod for_update {
    all_scenarios!(bench::baseline::PostgresBaselineMode::ForUpdate, "baseline-postgres-for-update");
}

mod conditional_update {
    all_scenarios!(bench::baseline::PostgresBaselineMode::ConditionalUpdate, "baseline-postgres-conditional-update");
}

/// Both modes share the tables, and connecting again to a database that has them works.
#[tokio::test]
async fn reconnecting_keeps_the_ledger_and_counts_transactions() {
    let (store, clock, url) = connect(PostgresBaselineMode::ForUpdate).await;
    let shared: baseline::Store = store.clone();
    baseline::grant(&shared, "ivy", 10).await;
    baseline::hold(&shared, "ivy", "h1", 4, 60).await.expect("held");
    assert_eq!(store.stats().transactions, 2);
    let again: baseline::Store = Arc::new(
        BaselinePostgresStore::connect(&url, PostgresBaselineMode::ConditionalUpdate, 2, clock)
            .await
            .expect("the store connects again"),
    );
    baseline::assert_figures(&again, "ivy", 6, 4).await;
}

/// `verify` can fail: a `held` column out of step with the holds is reported.
#[tokio::test]
async fn verify_reports_tampered_columns() {
    let (store, _clock, url) = connect(PostgresBaselineMode::ConditionalUpdate).await;
    let shared: baseline::Store = store.clone();
    baseline::grant(&shared, "jack", 10).await;
    baseline::hold(&shared, "jack", "h1", 4, 60).await.expect("held");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("a side connection");
    let driver = tokio::spawn(connection);
    client.execute("UPDATE baseline_accounts SET held = held + 1 WHERE id = 'jack'", &[]).await.expect("tampered");
    drop(client);
    let _ = driver.await;
    let report = store.verify().await.expect("verify runs");
    assert_eq!(report.violations.len(), 2, "{:?}", report.violations);
    assert!(report.violations.iter().all(|violation| violation.account_id.as_str() == "jack"));
}
