//! PostgreSQL-specific behaviour: several pools (as several server processes) on one database,
//! concurrent idempotent requests, restarts, concurrent migrations, sweeps and failures, and the
//! run and job stores across pools and schema versions (claims that skip locked jobs, one retry
//! and one refund whatever process races).

use std::sync::Arc;

use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage, Reference, Rejection};
use store::{
    Clock, CreateRunRefusal, Executed, JobRecord, JobStatus, JobStore, JobWrite, JobWriteRefusal, LedgerStore,
    ManualClock, Request, RunRecord, RunState, RunStore, StoreError,
};
use store_postgres::{testing, PostgresOptions, PostgresStore};

fn account(text: &str) -> AccountId {
    AccountId::parse(text).expect("valid account id")
}

fn credits(count: u64) -> Amount {
    Amount::from_credits(count)
}

fn grant(account_id: &str, grant_id: &str, amount: u64) -> Command {
    Command::Grant {
        account_id: account(account_id),
        grant_id: GrantId::parse(grant_id).expect("valid grant id"),
        amount: credits(amount),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

fn hold(account_id: &str, hold_id: &str, amount: u64, ttl_seconds: u64) -> Command {
    Command::Hold {
        account_id: account(account_id),
        hold_id: HoldId::parse(hold_id).expect("valid hold id"),
        amount: credits(amount),
        ttl_seconds,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

async fn connect(url: &str, clock: &Arc<ManualClock>) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect(url, clock.clone(), PostgresOptions::default()).await.expect("connect"))
}

async fn fresh(request: Request, store: &PostgresStore) -> Result<Outcome, Rejection> {
    match store.execute(request).await.expect("execute") {
        Executed::Fresh(result) => result,
        other => panic!("expected a fresh result, got {other:?}"),
    }
}

async fn assert_clean(store: &PostgresStore) {
    let report = store.verify().await.expect("verify");
    assert!(report.violations.is_empty(), "violations: {:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_never_overdraw() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    fresh(Request::new(grant("shared", "g1", 100)), &stores[0]).await.expect("grant");

    let tasks: Vec<_> = (0..64)
        .map(|index| {
            let store = stores[index % 2].clone();
            tokio::spawn(async move { store.execute(Request::new(hold("shared", &format!("h{index}"), 7, 600))).await })
        })
        .collect();
    let (mut held, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task").expect("execute") {
            Executed::Fresh(Ok(Outcome::Held { .. })) => held += 1,
            Executed::Fresh(Err(Rejection::InsufficientCredits { .. })) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((held, refused), (14, 50));

    for store in &stores {
        let view = store.account(&account("shared")).await.expect("read").expect("account exists");
        assert_eq!(view.balances.balance, credits(100));
        assert_eq!(view.balances.held, credits(98));
        assert_eq!(view.balances.available, credits(2));
        assert_clean(store).await;
    }
    let entries = stores[1].entries(&account("shared"), 0, 1000).await.expect("entries");
    assert_eq!(entries.len(), 15, "one grant and 14 holds");
    assert!(entries.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert!(entries.iter().all(|entry| entry.held_after <= entry.balance_after));
    // Only batches that applied something commit (rejections without a key write nothing), and
    // batching can only lower that count; every command was answered by a batch.
    let [first, second] = [stores[0].stats(), stores[1].stats()];
    let total = first.transactions + second.transactions;
    assert!((1..=15).contains(&total), "only applied commands commit: {first:?} {second:?}");
    assert_eq!(first.batched_commands + second.batched_commands, 65, "{first:?} {second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hold_and_capture_race_across_pools() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    fresh(Request::new(grant("busy", "g1", 50)), &stores[0]).await.expect("grant");

    let tasks: Vec<_> = (0..40)
        .map(|index| {
            let store = stores[index % 2].clone();
            let other = stores[(index + 1) % 2].clone();
            tokio::spawn(async move {
                let hold_id = format!("h{index}");
                match store.execute(Request::new(hold("busy", &hold_id, 3, 600))).await.expect("hold") {
                    Executed::Fresh(Ok(_)) => {}
                    Executed::Fresh(Err(Rejection::InsufficientCredits { .. })) => return 0,
                    other => panic!("unexpected {other:?}"),
                }
                let capture = Command::Capture {
                    hold_id: HoldId::parse(&hold_id).expect("valid"),
                    amount: credits(2),
                    is_final: true,
                    overage: ledger::Overage::Reject,
                };
                match other.execute(Request::new(capture)).await.expect("capture") {
                    Executed::Fresh(Ok(Outcome::Captured { .. })) => 2,
                    other => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    let mut spent = 0;
    for task in tasks {
        spent += task.await.expect("task");
    }
    assert!(spent > 0 && spent <= 50);
    let view = stores[0].account(&account("busy")).await.expect("read").expect("exists");
    assert_eq!(view.balances.balance, credits(50 - spent));
    assert_eq!(view.balances.held, Amount::ZERO);
    assert_eq!(view.state.totals.spent, credits(spent));
    assert_clean(&stores[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_create_one_account() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let store = stores[index % 2].clone();
            tokio::spawn(async move { fresh(Request::new(grant("newcomer", &format!("g{index}"), 5)), &store).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.expect("task"), Ok(Outcome::Granted { created: true, .. })));
    }
    let view = stores[1].account(&account("newcomer")).await.expect("read").expect("exists");
    assert_eq!(view.balances.balance, credits(80));
    assert_eq!(view.state.grants.len(), 16);
    assert_clean(&stores[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_sent_concurrently_applies_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    fresh(Request::new(grant("keyed", "g1", 100)), &stores[0]).await.expect("grant");

    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let store = stores[index % 2].clone();
            tokio::spawn(async move {
                store.execute(Request::with_key(hold("keyed", "h-keyed", 10, 600), "key-1", "fingerprint-1")).await
            })
        })
        .collect();
    let mut fresh_results = Vec::new();
    let mut replayed_results = Vec::new();
    for task in tasks {
        match task.await.expect("task").expect("execute") {
            Executed::Fresh(result) => fresh_results.push(result),
            Executed::Replayed(result) => replayed_results.push(result),
            Executed::Conflict => panic!("same fingerprint must not conflict"),
        }
    }
    assert_eq!((fresh_results.len(), replayed_results.len()), (1, 15));
    assert!(matches!(fresh_results[0], Ok(Outcome::Held { .. })));
    assert!(replayed_results.iter().all(|result| result == &fresh_results[0]));

    let view = stores[0].account(&account("keyed")).await.expect("read").expect("exists");
    assert_eq!(view.balances.held, credits(10));
    let entries = stores[0].entries(&account("keyed"), 0, 100).await.expect("entries");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].idempotency_key.as_deref(), Some("key-1"));

    let other = Request::with_key(hold("keyed", "h-other", 10, 600), "key-1", "fingerprint-2");
    assert_eq!(stores[1].execute(other).await.expect("execute"), Executed::Conflict);
    assert_clean(&stores[1]).await;
}

#[tokio::test]
async fn rejections_are_recorded_for_replay_and_change_nothing() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    let first = store.execute(Request::with_key(hold("ghost", "h1", 1, 60), "k", "f")).await.expect("execute");
    assert_eq!(first, Executed::Fresh(Err(Rejection::AccountNotFound)));
    fresh(Request::new(grant("ghost", "g1", 5)), &store).await.expect("grant");
    // The key replays the recorded rejection even though the hold would now succeed.
    let again = store.execute(Request::with_key(hold("ghost", "h1", 1, 60), "k", "f")).await.expect("execute");
    assert_eq!(again, Executed::Replayed(Err(Rejection::AccountNotFound)));
    let capture = Command::Capture {
        hold_id: HoldId::parse("missing").expect("valid"),
        amount: credits(1),
        is_final: true,
        overage: ledger::Overage::Reject,
    };
    assert_eq!(fresh(Request::new(capture), &store).await, Err(Rejection::HoldNotFound));
    // A grant whose expiry is past is rejected and must not leave an account row behind.
    let expired = Command::Grant {
        account_id: account("never"),
        grant_id: GrantId::parse("g-never").expect("valid"),
        amount: credits(1),
        priority: 100,
        expires_at: Some(ledger::Timestamp::from_micros(1)),
        reference: None,
        metadata: "{}".to_owned(),
    };
    assert_eq!(fresh(Request::with_key(expired, "k2", "f2"), &store).await, Err(Rejection::ExpiryNotInFuture));
    assert!(store.account(&account("never")).await.expect("read").is_none());
    assert_clean(&store).await;
}

#[tokio::test]
async fn restart_keeps_state() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    fresh(Request::new(grant("durable", "g1", 20)), &store).await.expect("grant");
    fresh(Request::new(hold("durable", "h1", 15, 600)), &store).await.expect("hold");
    let capture = Command::Capture {
        hold_id: HoldId::parse("h1").expect("valid"),
        amount: credits(10),
        is_final: false,
        overage: ledger::Overage::Reject,
    };
    fresh(Request::with_key(capture.clone(), "cap-1", "f"), &store).await.expect("capture");
    let before = store.account(&account("durable")).await.expect("read").expect("exists");
    assert_eq!((before.balances.balance, before.balances.available), (credits(10), credits(5)));
    let hold_before = store.hold(&HoldId::parse("h1").expect("valid")).await.expect("read");
    let entries_before = store.entries(&account("durable"), 0, 100).await.expect("entries");
    store.close().await;
    assert!(matches!(store.account(&account("durable")).await, Err(StoreError::Unavailable { .. })));

    PostgresStore::migrate_only(&url).await.expect("migrations are idempotent");
    let reopened = connect(&url, &clock).await;
    let after = reopened.account(&account("durable")).await.expect("read").expect("exists");
    assert_eq!(after, before);
    assert_eq!(reopened.hold(&HoldId::parse("h1").expect("valid")).await.expect("read"), hold_before);
    assert_eq!(reopened.entries(&account("durable"), 0, 100).await.expect("entries"), entries_before);
    let replay = reopened.execute(Request::with_key(capture, "cap-1", "f")).await.expect("execute");
    assert!(matches!(replay, Executed::Replayed(Ok(Outcome::Captured { .. }))));
    assert_clean(&reopened).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_startups_migrate_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (url, clock) = (url.clone(), clock.clone());
            tokio::spawn(
                async move { PostgresStore::connect(&url, clock, PostgresOptions::default()).await.map(|_| ()) },
            )
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("every concurrent start-up succeeds");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).await.expect("query");
    let versions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
}

/// No foreign key guards the ledger's rows (migration 13): `verify` finds a journal entry, a
/// hold or a grant whose account has no row, each once per account and table, and a ledger
/// written only through the store has none.
#[tokio::test]
async fn verify_reports_ledger_rows_whose_account_is_missing() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    fresh(Request::new(grant("orphan-a", "g-orphan-a", 10)), &store).await.expect("grant");
    fresh(Request::new(hold("orphan-a", "h-orphan-a", 4, 600)), &store).await.expect("hold");
    assert_clean(&store).await;

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO entries (account_id, kind, amount, balance_after, held_after, at) \
               VALUES ('orphan-gone', 'grant', 5, 5, 0, 1), ('orphan-gone', 'grant', 6, 11, 0, 2); \
             INSERT INTO holds (hold_id, account_id, amount, captured, remaining, refunded, state, expires_at, \
               created_at, metadata, allocations) \
               VALUES ('h-gone', 'orphan-held', 1, 0, 1, 0, 'pending', 9, 1, '{}', '[]')",
        )
        .await
        .expect("write rows without their account");
    let report = store.verify().await.expect("verify");
    let found: Vec<(String, String)> = report
        .violations
        .iter()
        .map(|violation| (violation.account_id.to_string(), violation.detail.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            ("orphan-gone".to_owned(), "2 entries row(s) name this account, which has no account row".to_owned()),
            ("orphan-held".to_owned(), "1 holds row(s) name this account, which has no account row".to_owned()),
        ]
    );
}

/// A batch opens its transaction itself (its BEGIN travels with its reads), so a batch that
/// fails after writing must end that transaction before its connection is reused: on a pool of
/// one connection, a batch refused after its writes (a hold id of another account) leaves
/// nothing behind, and the next batch on the same connection commits only its own writes.
#[tokio::test]
async fn a_failed_batch_ends_its_transaction_before_its_connection_is_reused() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let options = PostgresOptions { pool_max: 1, ..PostgresOptions::default() };
    let store = PostgresStore::connect(&url, clock.clone(), options).await.expect("connect");
    fresh(Request::new(grant("owner", "g-owner", 10)), &store).await.expect("grant");
    fresh(Request::new(grant("other", "g-other", 10)), &store).await.expect("grant");
    fresh(Request::new(hold("owner", "h-owned", 4, 600)), &store).await.expect("hold");

    // Decided and written (entries, the account row), then refused before commit.
    let reused = store.execute(Request::new(hold("other", "h-owned", 3, 600))).await;
    assert!(matches!(reused, Err(StoreError::Corrupt { .. })), "{reused:?}");
    fresh(Request::new(grant("third", "g-third", 5)), &store).await.expect("the next batch");

    let other = store.account(&account("other")).await.expect("read").expect("exists");
    assert_eq!((other.balances.balance, other.balances.held), (credits(10), Amount::ZERO));
    assert_eq!(store.entries(&account("other"), 0, 100).await.expect("entries").len(), 1, "only its grant");
    let third = store.account(&account("third")).await.expect("read").expect("exists");
    assert_eq!(third.balances.balance, credits(5));
    assert_clean(&store).await;
}

#[tokio::test]
async fn sweep_records_expiries_and_forgets_old_keys() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let options = PostgresOptions { idempotency_retention_seconds: 3600, ..PostgresOptions::default() };
    let store = PostgresStore::connect(&url, clock.clone(), options).await.expect("connect");
    fresh(Request::with_key(grant("sweepy", "g1", 10), "old-key", "f"), &store).await.expect("grant");
    fresh(Request::new(hold("sweepy", "h1", 4, 10)), &store).await.expect("hold");
    assert_eq!(store.sweep(100).await.expect("sweep"), store::SweepReport::default());

    clock.advance_seconds(11);
    assert_eq!(
        store.hold(&HoldId::parse("h1").expect("valid")).await.expect("read").expect("exists").state,
        ledger::HoldState::Expired
    );
    assert!(store.pending_holds(&account("sweepy")).await.expect("read").is_empty());
    let report = store.sweep(100).await.expect("sweep");
    assert_eq!((report.accounts, report.entries, report.idempotency_keys_deleted), (1, 1, 0));
    assert_eq!(store.sweep(100).await.expect("sweep").accounts, 0, "a second sweep finds nothing due");

    clock.advance_seconds(3600);
    assert_eq!(store.sweep(100).await.expect("sweep").idempotency_keys_deleted, 1);
    let entries = store.entries(&account("sweepy"), 0, 100).await.expect("entries");
    assert_eq!(entries.last().map(|entry| entry.kind), Some(ledger::EntryKind::Expire));
    assert_clean(&store).await;
}

#[tokio::test]
async fn unreachable_database_is_a_startup_error() {
    let clock = Arc::new(ManualClock::starting_now());
    let options = PostgresOptions { connect_timeout_seconds: 1, ..PostgresOptions::default() };
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let result = PostgresStore::connect("postgres://postgres@127.0.0.1:1/none", clock.clone(), options.clone()).await;
    assert!(matches!(result, Err(StoreError::Startup { .. })), "{:?}", result.err());
    let result = PostgresStore::connect("mysql://nope", clock, options).await;
    assert!(matches!(result, Err(StoreError::Startup { .. })), "{:?}", result.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_one_serves_many_concurrent_commands() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let options = PostgresOptions { pool_max: 1, ..PostgresOptions::default() };
    let store = Arc::new(PostgresStore::connect(&url, clock, options).await.expect("connect"));
    for index in 0..4 {
        fresh(Request::new(grant(&format!("small-{index}"), &format!("g{index}"), 10)), &store).await.expect("grant");
    }
    let tasks: Vec<_> = (0..32)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let command = hold(&format!("small-{}", index % 4), &format!("h{index}"), 1, 600);
                store.execute(Request::with_key(command, &format!("k{index}"), "f")).await
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.expect("task").expect("execute"), Executed::Fresh(Ok(Outcome::Held { .. }))));
    }
    for index in 0..4 {
        let view = store.account(&account(&format!("small-{index}"))).await.expect("read").expect("exists");
        assert_eq!(view.balances.held, credits(8));
    }
    assert_clean(&store).await;
}

/// Concurrent account reads are answered by shared statements (one read in flight at a time
/// here, so the others queue behind it), and each still gets its own account: the same account
/// read many times at once, an account that does not exist, and a write answered before the
/// reads that is seen by every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reads_share_statements_and_each_gets_its_own_account() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let options = PostgresOptions { reads_in_flight_max: 1, ..PostgresOptions::default() };
    let store = Arc::new(PostgresStore::connect(&url, clock, options).await.expect("connect"));
    for index in 1..=8_u64 {
        fresh(Request::new(grant(&format!("reader-{index}"), &format!("g{index}"), index)), &store)
            .await
            .expect("grant");
    }
    fresh(Request::new(hold("reader-3", "h-read", 2, 600)), &store).await.expect("hold");
    let before = store.stats();
    let tasks: Vec<_> = (0..400_u64)
        .map(|read| {
            let store = store.clone();
            // Accounts 1..=8 and, every ninth read, one that does not exist.
            let index = read % 9 + 1;
            tokio::spawn(async move { (index, store.account(&account(&format!("reader-{index}"))).await) })
        })
        .collect();
    for task in tasks {
        let (index, answer) = task.await.expect("task");
        let view = answer.expect("read");
        if index == 9 {
            assert!(view.is_none(), "reader-9 does not exist");
            continue;
        }
        let view = view.expect("exists");
        assert_eq!(view.state.account_id, account(&format!("reader-{index}")));
        let held = if index == 3 { 2 } else { 0 };
        assert_eq!(view.balances.held, credits(held));
        assert_eq!(view.balances.available, credits(index - held));
    }
    let after = store.stats();
    let (reads, statements) = (after.reads - before.reads, after.read_batches - before.read_batches);
    assert_eq!(reads, 400);
    assert!(statements < reads, "400 concurrent reads took {statements} statements");
    assert_clean(&store).await;
}

/// Forces a real deadlock: a raw session locks the account row, the store's transaction claims
/// its idempotency key and waits for that row, then the raw session inserts the same key. The
/// raw session's long `deadlock_timeout` makes PostgreSQL abort the store's transaction, which
/// must count it and retry (or give up with `Contention` when no retries are allowed).
async fn deadlock_once(store: Arc<PostgresStore>, url: &str, key: &str) -> Result<Executed, StoreError> {
    let (raw, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(connection);
    // The outside session takes the key first and the account second: the reverse of the store's
    // order (account rows, then keys), so the two wait for each other.
    raw.batch_execute("SET deadlock_timeout = '20s'; BEGIN").await.expect("begin");
    raw.execute("INSERT INTO idempotency (key, fingerprint, result, created_at) VALUES ($1, 'raw', '', 0)", &[&key])
        .await
        .expect("take the key");
    let key_owned = key.to_owned();
    let pending = tokio::spawn(async move {
        store.execute(Request::with_key(hold("locked", &format!("h-{key_owned}"), 1, 600), &key_owned, "f")).await
    });
    // Let the store lock the account row and queue on the key (nothing to wait on: the store
    // exposes no event for "waiting on a lock").
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    raw.batch_execute("SELECT 1 FROM accounts WHERE account_id = 'locked' FOR UPDATE")
        .await
        .expect("the store's transaction is the deadlock victim");
    raw.batch_execute("ROLLBACK").await.expect("rollback");
    pending.await.expect("task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlocks_are_retried_then_reported_as_contention() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let patient = connect(&url, &clock).await;
    fresh(Request::new(grant("locked", "g1", 10)), &patient).await.expect("grant");

    let result = deadlock_once(patient.clone(), &url, "k-retried").await.expect("retried to success");
    assert!(matches!(result, Executed::Fresh(Ok(Outcome::Held { .. }))), "{result:?}");
    let stats = patient.stats();
    assert_eq!((stats.deadlocks, stats.retries), (1, 1), "{stats:?}");

    let options = PostgresOptions { retries_max: 0, ..PostgresOptions::default() };
    let impatient = Arc::new(PostgresStore::connect(&url, clock, options).await.expect("connect"));
    let result = deadlock_once(impatient.clone(), &url, "k-given-up").await;
    assert!(matches!(result, Err(StoreError::Contention { .. })), "{result:?}");
    assert_eq!(impatient.stats().deadlocks, 1);
    assert_clean(&patient).await;
}

fn run_record(run_id: &str, thread_id: &str, clock: &ManualClock) -> RunRecord {
    RunRecord {
        run_id: store::RunId::parse(run_id).expect("valid id"),
        account_id: account("u"),
        thread_id: store::ThreadId::parse(thread_id).expect("valid id"),
        turn_index: 0,
        state: RunState::Running,
        instance_id: "i1".to_owned(),
        hold_id: None,
        hold_resolution: store::HoldResolution::None,
        created_at: clock.now(),
        updated_at: clock.now(),
        data: "{}".to_owned(),
    }
}

/// Two pools (as two server processes) racing new turns of one thread: each round, exactly one
/// run starts and every other creator is told which, whatever pool it came through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_start_one_run_per_thread() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    for round in 0..3_u32 {
        let tasks: Vec<_> = (0..32)
            .map(|index| {
                let store = stores[index % 2].clone();
                let run = run_record(&format!("r{round}-{index}"), "t", &clock);
                tokio::spawn(async move { store.create_run(&run).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("task").expect("create_run answers"));
        }
        let winners: Vec<RunRecord> = results.iter().filter_map(|result| result.clone().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let mut winner = winners[0].clone();
        assert_eq!(winner.turn_index, round);
        let busy = CreateRunRefusal::ThreadBusy { run_id: winner.run_id.clone() };
        assert!(results.iter().filter_map(|result| result.as_ref().err()).all(|refusal| *refusal == busy));
        winner.state = RunState::Succeeded;
        assert!(stores[(round as usize + 1) % 2].update_run(&winner).await.expect("update_run answers"));
    }
    let turns = stores[1]
        .thread_runs(&store::ThreadId::parse("t").expect("valid id"), None, 100)
        .await
        .expect("thread_runs answers");
    assert_eq!(turns.iter().map(|run| run.turn_index).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(turns.iter().all(|run| run.state == RunState::Succeeded));
}

/// A database migrated by a build without runs (schema version 1, with ledger data) gains the
/// run and job tables at the next start and keeps every balance and entry.
#[tokio::test]
async fn a_version_1_database_gains_the_run_and_job_tables_and_keeps_its_ledger() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    fresh(Request::new(grant("old", "g1", 10)), &store).await.expect("grant");
    fresh(Request::new(hold("old", "h1", 4, 600)), &store).await.expect("hold");
    let entries_before = store.entries(&account("old"), 0, 100).await.expect("entries");
    store.close().await;

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    // Back to what a version-1 build left.
    client
        .batch_execute(&format!(
            "{UNDO_VERSION_8} {UNDO_VERSION_7} DROP TABLE run_events; DROP TABLE instances; DROP TABLE jobs; DROP TABLE artifacts; \
             DROP TABLE runs; DROP TABLE threads; DELETE FROM schema_migrations WHERE version >= 2",
        ))
        .await
        .expect("downgrade");

    let store = connect(&url, &clock).await;
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).await.expect("query");
    assert_eq!(
        rows.iter().map(|row| row.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );
    assert_eq!(store.entries(&account("old"), 0, 100).await.expect("entries"), entries_before);
    let view = store.account(&account("old")).await.expect("read").expect("account exists");
    assert_eq!((view.balances.balance, view.balances.held), (credits(10), credits(4)));
    assert_clean(&store).await;
    let created = store.create_run(&run_record("r1", "t1", &clock)).await.expect("answers").expect("created");
    assert_eq!(store.run(&store::RunId::parse("r1").expect("valid id")).await.expect("answers"), Some(created));
    let job = store.write_job(insert(job_record("j1", &clock), None)).await.expect("answers").expect("written").job;
    assert_eq!(store.job(&store::JobId::parse("j1").expect("valid id")).await.expect("answers"), Some(job));
}

/// A version-2 database (runs, no jobs) gains the job table at the next start and keeps its runs.
#[tokio::test]
async fn a_version_2_database_gains_the_job_table_and_keeps_its_runs() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    let created = store.create_run(&run_record("r1", "t1", &clock)).await.expect("answers").expect("created");
    store.close().await;

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "{UNDO_VERSION_8} {UNDO_VERSION_7} {UNDO_VERSION_6} DROP TABLE instances; DROP TABLE jobs; DELETE FROM schema_migrations WHERE version >= 3"
        ))
        .await
        .expect("downgrade");

    let store = connect(&url, &clock).await;
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).await.expect("query");
    assert_eq!(
        rows.iter().map(|row| row.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );
    assert_eq!(store.run(&store::RunId::parse("r1").expect("valid id")).await.expect("answers"), Some(created));
    let job = store.write_job(insert(job_record("j1", &clock), None)).await.expect("answers").expect("written").job;
    assert_eq!(
        store.thread_jobs(&store::ThreadId::parse("t1").expect("valid id"), 10).await.expect("answers"),
        vec![job]
    );
}

/// What migration 7 added, undone: back to a version-6 database.
const UNDO_VERSION_8: &str =
    "DROP INDEX IF EXISTS runs_by_account; DROP INDEX IF EXISTS jobs_by_account; DROP INDEX IF EXISTS grants_by_account; DROP INDEX IF EXISTS accounts_by_id_bytes; ALTER TABLE grants DROP COLUMN voided_at; DROP TABLE gateway_calls; DROP TABLE api_keys; DROP TABLE webhook_deliveries; DROP TABLE webhook_endpoints; ALTER TABLE accounts DROP COLUMN low_balance_threshold; DROP TABLE outbox; DROP TABLE plans; DROP TABLE allowances; DELETE FROM schema_migrations WHERE version >= 8;";

const UNDO_VERSION_7: &str = "DROP INDEX holds_by_account_state; DROP INDEX holds_pending_by_account_expiry; \
     CREATE INDEX holds_pending ON holds (account_id) WHERE state = 'pending'; \
     ALTER TABLE accounts DROP COLUMN held; ALTER TABLE grants DROP COLUMN pinned; \
     DELETE FROM schema_migrations WHERE version >= 7;";

/// A version-6 database (pending holds summed on every read) gains the account's `held` and each
/// grant's `pinned` at the next start, backfilled from its holds: pending holds over two grants,
/// one partly captured, one released, one captured — the figures read as before and `verify`
/// (which checks both against the holds) finds nothing.
#[tokio::test]
async fn a_version_6_database_gains_held_and_pinned_backfilled_from_its_holds() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    fresh(Request::new(grant("u", "g1", 10)), &store).await.expect("grant");
    fresh(Request::new(grant("u", "g2", 10)), &store).await.expect("grant");
    fresh(Request::new(grant("v", "g3", 5)), &store).await.expect("grant");
    for (account_id, hold_id, amount) in
        [("u", "h1", 7), ("u", "h2", 6), ("u", "h3", 2), ("u", "h4", 1), ("v", "h5", 5)]
    {
        fresh(Request::new(hold(account_id, hold_id, amount, 600)), &store).await.expect("hold");
    }
    let capture = |hold_id: &str, amount: u64, is_final: bool| Command::Capture {
        hold_id: HoldId::parse(hold_id).expect("valid id"),
        amount: credits(amount),
        is_final,
        overage: Overage::Reject,
    };
    fresh(Request::new(capture("h2", 4, false)), &store).await.expect("captured");
    fresh(Request::new(capture("h3", 2, true)), &store).await.expect("captured");
    let release = Command::Release { hold_id: HoldId::parse("h4").expect("valid id") };
    fresh(Request::new(release), &store).await.expect("released");
    let before = store.account(&account("u")).await.expect("read").expect("exists");
    store.close().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute(&format!("{UNDO_VERSION_8} {UNDO_VERSION_7}")).await.expect("downgrade");

    let store = connect(&url, &clock).await;
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).await.expect("query");
    assert_eq!(
        rows.iter().map(|row| row.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );
    let after = store.account(&account("u")).await.expect("read").expect("exists");
    assert_eq!(after, before, "held and every grant's pinned part read as before");
    assert_eq!(after.balances.held, credits(9), "h1's 7 and what is left of h2");
    let pinned: Vec<_> = after.state.grants.iter().map(|grant| (grant.grant_id.as_str(), grant.pinned)).collect();
    assert_eq!(pinned, [("g1", credits(7)), ("g2", credits(2))]);
    let v = store.account(&account("v")).await.expect("read").expect("exists");
    assert_eq!(v.balances.held, credits(5));
    assert_clean(&store).await;
    fresh(Request::new(capture("h1", 7, true)), &store).await.expect("captured");
    assert_eq!(store.account(&account("u")).await.expect("read").expect("exists").balances.held, credits(2));
    assert_clean(&store).await;
}

/// What migration 6 added, undone: back to a version-5 database.
const UNDO_VERSION_6: &str = "DROP TABLE run_events; ALTER TABLE runs DROP COLUMN hold_resolution; \
     ALTER TABLE runs DROP COLUMN cancel_requested_at; DELETE FROM schema_migrations WHERE version >= 6;";

/// A version-5 database (runs whose documents say whether their hold is resolved) gains the typed
/// hold-resolution column at the next start, read once from each document: recovery finds
/// exactly the terminal run whose release failed, and none of the others.
#[tokio::test]
async fn a_version_5_database_gains_the_typed_hold_resolution_of_its_runs() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    let documents = [
        ("failed-release", RunState::Failed, Some("h1"), r#"{"problem":"p","hold_resolved":false}"#),
        ("settled", RunState::Succeeded, Some("h2"), r#"{"problem":"p","hold_resolved":true}"#),
        ("live", RunState::Running, Some("h3"), r#"{"problem":"p","hold_resolved":false}"#),
        ("never-held", RunState::Failed, None, r#"{"problem":"p","hold_resolved":false}"#),
    ];
    for (run_id, state, hold, data) in documents {
        let mut run = store.create_run(&run_record(run_id, run_id, &clock)).await.expect("answers").expect("created");
        run.state = state;
        run.hold_id = hold.map(|hold| HoldId::parse(hold).expect("valid id"));
        run.data = data.to_owned();
        assert!(store.update_run(&run).await.expect("answers"));
    }
    store.close().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute(&format!("{UNDO_VERSION_8} {UNDO_VERSION_7} {UNDO_VERSION_6}")).await.expect("downgrade");

    let store = connect(&url, &clock).await;
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).await.expect("query");
    assert_eq!(
        rows.iter().map(|row| row.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    );
    for (run_id, expected) in [
        ("failed-release", store::HoldResolution::Pending),
        ("settled", store::HoldResolution::Resolved),
        ("live", store::HoldResolution::Pending),
        ("never-held", store::HoldResolution::None),
    ] {
        let run = store.run(&store::RunId::parse(run_id).expect("valid id")).await.expect("answers").expect("kept");
        assert_eq!(run.hold_resolution, expected, "{run_id}");
    }
    let unresolved = store.unresolved_runs(10).await.expect("answers");
    assert_eq!(unresolved.iter().map(|run| run.run_id.as_str()).collect::<Vec<_>>(), ["failed-release"]);
}

/// A queued job of account `u` in thread `t1`, paying from hold `h1`.
fn job_record(job_id: &str, clock: &ManualClock) -> JobRecord {
    let now = clock.now();
    JobRecord {
        job_id: store::JobId::parse(job_id).expect("valid id"),
        account_id: account("u"),
        thread_id: store::ThreadId::parse("t1").expect("valid id"),
        run_id: store::RunId::parse("r1").expect("valid id"),
        hold_id: HoldId::parse("h1").expect("valid hold id"),
        price: credits(1),
        status: JobStatus::Queued,
        stage: "enqueue".to_owned(),
        progress_percent: 0,
        input: "{}".to_owned(),
        lease_holder: None,
        lease_expires_at: None,
        heartbeat_at: None,
        cancel_requested: false,
        retry_source_job_id: None,
        attempts: 0,
        run_after: now,
        error_stage: None,
        error_code: None,
        error_detail: None,
        refund_applied_at: None,
        artifact_id: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        version: 0,
    }
}

fn insert(job: JobRecord, ledger: Option<Request>) -> JobWrite {
    JobWrite { job, expected_version: None, ledger }
}

fn capture(amount: u64) -> Command {
    Command::Capture {
        hold_id: HoldId::parse("h1").expect("valid hold id"),
        amount: credits(amount),
        is_final: false,
        overage: Overage::Reject,
    }
}

/// Two pools (as two server processes) with 16 claimers each on 10 jobs: every job is claimed
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_claim_each_job_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    for index in 0..10 {
        let mut job = job_record(&format!("j{index}"), &clock);
        job.created_at = job.created_at.plus_micros(index);
        stores[0].write_job(insert(job, None)).await.expect("answers").expect("written");
    }
    let now = clock.now();
    let tasks: Vec<_> = (0..32)
        .map(|worker| {
            let store = stores[worker % 2].clone();
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                let worker_id = format!("w{worker}");
                while let Some(job) = store.claim_job(&worker_id, now, now.plus_seconds(60), 3).await.expect("claims") {
                    assert_eq!(job.lease_holder.as_deref(), Some(worker_id.as_str()));
                    claimed.push(job.job_id);
                }
                claimed
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.expect("task"));
    }
    claimed.sort();
    let mut expected: Vec<String> = (0..10).map(|index| format!("j{index}")).collect();
    expected.sort();
    assert_eq!(claimed, expected, "each job once");
}

/// A claim skips a job another transaction holds locked instead of waiting for it, and takes the
/// next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_skips_a_locked_job() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    let mut older = job_record("older", &clock);
    older.created_at = older.created_at.plus_micros(-1);
    store.write_job(insert(older, None)).await.expect("answers").expect("written");
    store.write_job(insert(job_record("newer", &clock), None)).await.expect("answers").expect("written");

    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let locker = client.transaction().await.expect("begin");
    locker.execute("SELECT 1 FROM jobs WHERE job_id = 'older' FOR UPDATE", &[]).await.expect("lock");
    let now = clock.now();
    let claim = store.claim_job("w1", now, now.plus_seconds(60), 3);
    let claimed = tokio::time::timeout(std::time::Duration::from_secs(5), claim)
        .await
        .expect("the claim does not wait for the locked job")
        .expect("answers")
        .expect("a job is claimed");
    assert_eq!(claimed.job_id, "newer");
    locker.rollback().await.expect("rollback");
    let next = store.claim_job("w2", now, now.plus_seconds(60), 3).await.expect("answers").expect("claimed");
    assert_eq!(next.job_id, "older");
}

/// Two pools racing 16 retries of one source, each capturing 1 credit: one retry, one capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_create_one_retry_and_capture_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    fresh(Request::new(grant("u", "g1", 100)), &stores[0]).await.expect("grant");
    fresh(Request::new(hold("u", "h1", 30, 600)), &stores[0]).await.expect("hold");
    let source = JobRecord { status: JobStatus::Failed, ..job_record("source", &clock) };
    stores[0].write_job(insert(source, None)).await.expect("answers").expect("written");
    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let store = stores[index % 2].clone();
            let retry = JobRecord {
                retry_source_job_id: Some(store::JobId::parse("source").expect("valid id")),
                ..job_record(&format!("retry-{index}"), &clock)
            };
            tokio::spawn(async move { store.write_job(insert(retry, Some(Request::new(capture(1))))).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task").expect("write_job answers"));
    }
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|result| result.as_ref().err())
        .all(|refusal| *refusal == JobWriteRefusal::RetryAlreadyUsed));
    let view = stores[1].account(&account("u")).await.expect("read").expect("account exists");
    assert_eq!((view.balances.balance, view.balances.held), (credits(99), credits(29)));
    assert_clean(&stores[1]).await;
}

/// Two pools racing 16 terminal writes of one job, each carrying its refund: one write, one
/// refund; the version check is the database's, not a process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_refund_a_job_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    fresh(Request::new(grant("u", "g1", 100)), &stores[0]).await.expect("grant");
    fresh(Request::new(hold("u", "h1", 30, 600)), &stores[0]).await.expect("hold");
    let created = stores[0]
        .write_job(insert(job_record("j1", &clock), Some(Request::new(capture(10)))))
        .await
        .expect("answers")
        .expect("written")
        .job;
    let failed = JobRecord { status: JobStatus::Failed, refund_applied_at: Some(clock.now()), ..created.clone() };
    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let store = stores[index % 2].clone();
            let refund = Command::Refund {
                account_id: account("u"),
                grant_id: GrantId::parse(&format!("refund-{index}")).expect("valid grant id"),
                amount: credits(10),
                reference: Reference::parse("j1:refund").expect("valid reference"),
                hold_id: Some(HoldId::parse("h1").expect("valid hold id")),
                priority: 100,
                expires_at: None,
            };
            let write = JobWrite {
                job: failed.clone(),
                expected_version: Some(created.version),
                ledger: Some(Request::new(refund)),
            };
            tokio::spawn(async move { store.write_job(write).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task").expect("write_job answers"));
    }
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1, "{results:?}");
    let mismatch = JobWriteRefusal::VersionMismatch { current: Some(created.version + 1) };
    assert!(results.iter().filter_map(|result| result.as_ref().err()).all(|refusal| *refusal == mismatch));
    let view = stores[1].account(&account("u")).await.expect("read").expect("account exists");
    assert_eq!((view.balances.balance, view.balances.held), (credits(100), credits(20)));
    assert_clean(&stores[1]).await;
}

#[tokio::test]
async fn a_multi_host_url_takes_the_host_that_takes_writes() {
    let url = testing::fresh_database().await;
    let name = url.rsplit('/').next().expect("a database name").to_owned();
    // Port 1 on loopback first: refused at once, so the store must go on to the next host.
    let multi_host = url.replacen("@127.0.0.1:", "@127.0.0.1:1,127.0.0.1:", 1);
    assert_ne!(multi_host, url, "the test cluster listens on 127.0.0.1");
    let clock = Arc::new(ManualClock::starting_now());
    let options = PostgresOptions { connect_timeout_seconds: 1, ..PostgresOptions::default() };
    let store = PostgresStore::connect(&multi_host, clock.clone(), options.clone()).await.expect("connect");
    store.ready().await.expect("the second host takes writes");
    fresh(Request::new(grant("multi-host", "g1", 10)), &store).await.expect("grant");

    // A server whose new sessions are read-only (a standby, or a primary fenced) is not used.
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on"))
        .await
        .expect("fence the database");
    let refused = PostgresStore::connect(&multi_host, clock, options).await;
    assert!(matches!(refused, Err(StoreError::Startup { .. })), "{:?}", refused.err());
    admin
        .batch_execute(&format!("ALTER DATABASE {name} SET default_transaction_read_only = off"))
        .await
        .expect("unfence the database");
    assert_clean(&store).await;
}
