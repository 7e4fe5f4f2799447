//! SQLite-specific behaviour: the owner lock (in-process and across processes), durability across close and reopen, concurrency on
//! one account, group commit, a failing job that rolls back alone inside its batch, the run and job stores' schema
//! upgrades, and jobs across close and reopen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::{AccountId, Command, GrantId, HoldId, Outcome, Overage, Rejection};
use store::conformance::{account, cr};
use store::{
    Artifact, Clock, Executed, JobRecord, JobStatus, JobStore, JobWrite, JobWriteRefusal, LedgerStore, ManualClock,
    Request, RunRecord, RunState, RunStore, StoreError,
};
use store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

fn database() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("ledger.db");
    (dir, path)
}

async fn open(path: &Path, clock: &Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(path, clock.clone(), SqliteOptions::default()).await.expect("the store opens")
}

fn grant(account_id: &str, grant_id: &str, amount: &str) -> Command {
    Command::Grant {
        account_id: account(account_id),
        grant_id: GrantId::parse(grant_id).expect("valid id"),
        amount: cr(amount),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

fn hold(account_id: &str, hold_id: &str, amount: &str) -> Command {
    Command::Hold {
        account_id: account(account_id),
        hold_id: HoldId::parse(hold_id).expect("valid id"),
        amount: cr(amount),
        ttl_seconds: 600,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

async fn run(store: &SqliteStore, command: Command) -> Result<Outcome, Rejection> {
    match store.execute(Request::new(command)).await.expect("the store answers") {
        Executed::Fresh(result) => result,
        other => panic!("expected a fresh result, got {other:?}"),
    }
}

async fn assert_verified(store: &SqliteStore) {
    let report = store.verify().await.expect("verify answers");
    assert!(report.violations.is_empty(), "verify found: {:#?}", report.violations);
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
    let (dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let first = open(&path, &clock).await;

    // Another spelling of the same file meets the same lock.
    let other_spelling = dir.path().join(".").join("ledger.db");
    for attempt in [&path, &other_spelling] {
        match SqliteStore::open(attempt, clock.clone(), SqliteOptions::default()).await {
            Err(StoreError::Startup { detail, .. }) => {
                assert!(detail.contains("is in use by another creditgraph process"), "{detail}");
                assert!(detail.contains("ledger.db"), "{detail}");
                assert!(detail.contains(&std::process::id().to_string()), "names the holder's pid: {detail}");
            }
            Err(other) => panic!("expected a start-up refusal, got {other}"),
            Ok(_) => panic!("a second store opened {}", attempt.display()),
        }
    }
    match SqliteStore::migrate_only(&path).await {
        Err(StoreError::Startup { detail, .. }) => assert!(detail.contains("in use"), "{detail}"),
        other => panic!("migrate_only must refuse while the file is owned, got {other:?}"),
    }

    first.close().await;
    let second = open(&path, &clock).await;
    second.close().await;
    SqliteStore::migrate_only(&path).await.expect("migrate_only works on a closed file");
}

/// Set in the child process that [`a_second_process_is_refused_until_the_first_closes`] starts.
const CHILD_DATABASE: &str = "STORE_SQLITE_CHILD_DATABASE";
/// Child exit codes.
const CHILD_OPENED: i32 = 0;
const CHILD_REFUSED: i32 = 3;
const CHILD_FAILED: i32 = 1;

/// Starts this test binary again, running only this test, as the child that tries `path`.
fn run_child(path: &Path) -> i32 {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let output = std::process::Command::new(exe)
        .args(["--exact", "a_second_process_is_refused_until_the_first_closes", "--nocapture", "--test-threads=1"])
        .env(CHILD_DATABASE, path)
        .output()
        .expect("the child starts");
    println!("child: {}", String::from_utf8_lossy(&output.stdout).trim());
    output.status.code().unwrap_or(CHILD_FAILED)
}

#[tokio::test]
async fn a_second_process_is_refused_until_the_first_closes() {
    if let Some(path) = std::env::var_os(CHILD_DATABASE) {
        // The child: report how opening went through the exit status.
        let code = match SqliteStore::open(Path::new(&path), Arc::new(store::SystemClock), SqliteOptions::default())
            .await
        {
            Ok(store) => {
                store.close().await;
                CHILD_OPENED
            }
            Err(StoreError::Startup { detail, .. }) if detail.contains("is in use by another creditgraph process") => {
                println!("refused: {detail}");
                CHILD_REFUSED
            }
            Err(other) => {
                println!("failed: {other}");
                CHILD_FAILED
            }
        };
        std::process::exit(code);
    }
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    run(&store, grant("acct", "g1", "5")).await.expect("grant succeeds");
    assert_eq!(run_child(&path), CHILD_REFUSED, "a second process must be refused while the first owns the file");
    store.close().await;
    assert_eq!(run_child(&path), CHILD_OPENED, "a second process opens the file once the first closed it");
    let reopened = open(&path, &clock).await;
    assert_eq!(reopened.account(&account("acct")).await.expect("answers").expect("exists").balances.balance, cr("5"));
    reopened.close().await;
}

#[tokio::test]
async fn a_closed_store_answers_unavailable() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    run(&store, grant("acct", "g1", "5")).await.expect("grant succeeds");
    store.close().await;
    assert!(matches!(store.execute(Request::new(grant("acct", "g2", "5"))).await, Err(StoreError::Unavailable { .. })));
    assert!(matches!(store.account(&account("acct")).await, Err(StoreError::Unavailable { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_and_reopen_keeps_every_balance_hold_and_entry() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    let accounts: Vec<String> = (0..8).map(|index| format!("acct-{index}")).collect();
    for (index, account_id) in accounts.iter().enumerate() {
        run(&store, grant(account_id, &format!("g-{index}"), "50")).await.expect("grant succeeds");
        run(&store, hold(account_id, &format!("h-{index}-a"), "20")).await.expect("hold succeeds");
        run(&store, hold(account_id, &format!("h-{index}-b"), "10")).await.expect("hold succeeds");
        let capture = Command::Capture {
            hold_id: HoldId::parse(&format!("h-{index}-a")).expect("valid id"),
            amount: cr("12.5"),
            is_final: true,
            overage: Overage::Reject,
        };
        run(&store, capture).await.expect("capture succeeds");
        let debit = Command::Debit { account_id: account(account_id), amount: cr("0.000125"), reference: None };
        run(&store, debit).await.expect("debit succeeds");
    }
    let mut before = Vec::new();
    for account_id in &accounts {
        let id = account(account_id);
        let view = store.account(&id).await.expect("answers").expect("exists");
        let holds = store.pending_holds(&id).await.expect("answers");
        let entries = store.entries(&id, 0, 1_000).await.expect("answers");
        assert_eq!(view.balances.balance, cr("37.499875"));
        assert_eq!(view.balances.held, cr("10"));
        before.push((view, holds, entries));
    }
    store.close().await;

    let reopened = open(&path, &clock).await;
    for (account_id, (view, holds, entries)) in accounts.iter().zip(&before) {
        let id = account(account_id);
        assert_eq!(&reopened.account(&id).await.expect("answers").expect("exists"), view);
        assert_eq!(&reopened.pending_holds(&id).await.expect("answers"), holds);
        assert_eq!(&reopened.entries(&id, 0, 1_000).await.expect("answers"), entries);
    }
    let report = reopened.verify().await.expect("verify answers");
    assert!(report.violations.is_empty(), "verify found: {:#?}", report.violations);
    assert_eq!(report.accounts, 8);
    assert_eq!(report.holds, 16);
    // Work continues on the reopened file where it stopped.
    let release = Command::Release { hold_id: HoldId::parse("h-0-b").expect("valid id") };
    assert!(matches!(run(&reopened, release).await, Ok(Outcome::Released { changed: true, .. })));
    assert_verified(&reopened).await;
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_holds_never_overdraw() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = Arc::new(open(&path, &clock).await);
    run(&store, grant("shared", "g-shared", "100")).await.expect("grant succeeds");
    let tasks: Vec<_> = (0..64)
        .map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { run(&store, hold("shared", &format!("h-{index}"), "7")).await })
        })
        .collect();
    let mut held = 0;
    for task in tasks {
        match task.await.expect("the task finishes") {
            Ok(Outcome::Held { .. }) => held += 1,
            Err(Rejection::InsufficientCredits { required, .. }) => assert_eq!(required, cr("7")),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(held, 14, "100 credits fit exactly 14 holds of 7");
    let balances = store.account(&account("shared")).await.expect("answers").expect("exists").balances;
    assert_eq!((balances.balance, balances.held, balances.available), (cr("100"), cr("98"), cr("2")));
    assert_eq!(store.pending_holds(&account("shared")).await.expect("answers").len(), 14);
    assert_verified(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_share_commits() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = Arc::new(open(&path, &clock).await);
    let operations = 512;
    let tasks: Vec<_> = (0..operations)
        .map(|index| {
            let store = Arc::clone(&store);
            let account_id = format!("acct-{}", index % 16);
            tokio::spawn(async move { run(&store, grant(&account_id, &format!("g-{index}"), "1")).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("the task finishes").expect("grant succeeds");
    }
    let stats = store.stats();
    assert_eq!(stats.operations, operations);
    assert!(stats.commits < stats.operations, "no group commit happened: {stats:?}");
    let balances = store.account(&account("acct-3")).await.expect("answers").expect("exists").balances;
    assert_eq!(balances.balance, cr("32"));
    assert_verified(&store).await;
}

/// A job that fails inside the database (here: a trigger refuses its journal entry) rolls back
/// to its own savepoint; rejections and successes around it in the same batches stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_job_rolls_back_alone() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = Arc::new(open(&path, &clock).await);
    run(&store, grant("good", "g-good", "10")).await.expect("grant succeeds");
    {
        let conn = rusqlite::Connection::open(&path).expect("a side connection");
        conn.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");
        conn.execute_batch(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON entries WHEN NEW.account_id LIKE 'bad-%' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .expect("the trigger is created");
    }
    let tasks: Vec<_> = (0..96)
        .map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let command = match index % 3 {
                    0 => grant(&format!("bad-{index}"), &format!("g-bad-{index}"), "5"),
                    1 => hold("good", &format!("h-{index}"), "1"),
                    _ => grant(&format!("fine-{index}"), &format!("g-fine-{index}"), "5"),
                };
                (index, store.execute(Request::with_key(command, &format!("key-{index}"), "fp")).await)
            })
        })
        .collect();
    let mut held = 0;
    for task in tasks {
        let (index, answer) = task.await.expect("the task finishes");
        match (index % 3, answer) {
            (0, Err(StoreError::Corrupt { detail, .. })) => assert!(detail.contains("injected failure"), "{detail}"),
            (1, Ok(Executed::Fresh(Ok(Outcome::Held { .. })))) => held += 1,
            (1, Ok(Executed::Fresh(Err(Rejection::InsufficientCredits { .. })))) => {}
            (2, Ok(Executed::Fresh(Ok(Outcome::Granted { created: true, .. })))) => {}
            (kind, answer) => panic!("job {index} (kind {kind}) answered {answer:?}"),
        }
    }
    assert_eq!(held, 10, "32 holds of 1 on 10 credits: 10 succeed, 22 are rejected");
    for index in (0..96).filter(|index| index % 3 == 0) {
        let id = AccountId::parse(&format!("bad-{index}")).expect("valid id");
        assert_eq!(store.account(&id).await.expect("answers"), None, "the failed grant left an account");
        // Nothing was recorded for the failed key: a retry runs again (and fails again).
        let retry = grant(&format!("bad-{index}"), &format!("g-bad-{index}"), "5");
        assert!(store.execute(Request::with_key(retry, &format!("key-{index}"), "fp")).await.is_err());
    }
    for index in (0..96).filter(|index| index % 3 == 2) {
        let id = AccountId::parse(&format!("fine-{index}")).expect("valid id");
        assert_eq!(store.account(&id).await.expect("answers").expect("exists").balances.balance, cr("5"));
    }
    // Rejections were recorded for replay like outcomes.
    let replay = store.execute(Request::with_key(hold("good", "h-1", "1"), "key-1", "fp")).await.expect("answers");
    assert!(matches!(replay, Executed::Replayed(_)), "{replay:?}");
    let stats = store.stats();
    assert!(stats.commits < stats.operations, "the jobs were not batched: {stats:?}");
    assert_verified(&store).await;
}

#[tokio::test]
async fn reads_use_the_stores_clock() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    run(&store, grant("acct", "g1", "10")).await.expect("grant succeeds");
    let Ok(Outcome::Held { hold }) = run(&store, hold("acct", "h1", "4")).await else { panic!("hold fails") };
    clock.advance_seconds(600);
    assert!(clock.now() >= hold.expires_at);
    let read = store.hold(&hold.hold_id).await.expect("answers").expect("exists");
    assert_eq!(read.state, ledger::HoldState::Expired);
    let balances = store.account(&account("acct")).await.expect("answers").expect("exists").balances;
    assert_eq!((balances.held, balances.available), (cr("0"), cr("10")));
    assert!(store.pending_holds(&account("acct")).await.expect("answers").is_empty());
    let report = store.sweep(100).await.expect("sweep answers");
    assert_eq!((report.accounts, report.entries), (1, 1));
    assert_verified(&store).await;
    store.close().await;
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
        data: r#"{"plan":["solve"]}"#.to_owned(),
    }
}

fn schema_versions(path: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).expect("opens");
    let mut statement = conn.prepare("SELECT version FROM schema_migrations ORDER BY version").expect("prepares");
    statement.query_map([], |row| row.get(0)).expect("queries").collect::<Result<_, _>>().expect("reads")
}

/// A database last opened by a build without runs (schema version 1, with ledger data) gains the
/// run and job tables at open and keeps every balance and entry.
#[tokio::test]
async fn a_version_1_database_gains_the_run_and_job_tables_and_keeps_its_ledger() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    run(&store, grant("u", "g1", "10")).await.expect("grant succeeds");
    run(&store, hold("u", "h1", "4")).await.expect("hold succeeds");
    let entries_before = store.entries(&account("u"), 0, 100).await.expect("entries");
    store.close().await;
    {
        // Back to what a version-1 build wrote.
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.execute_batch(&format!(
            "{UNDO_VERSION_8} {UNDO_VERSION_7} DROP TABLE run_events; DROP TABLE instances; DROP TABLE jobs; DROP TABLE artifacts; \
             DROP TABLE runs; \
             DROP TABLE threads; \
             DELETE FROM schema_migrations WHERE version >= 2;"
        ))
        .expect("downgrades");
    }
    assert_eq!(schema_versions(&path), vec![1]);

    let store = open(&path, &clock).await;
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(store.entries(&account("u"), 0, 100).await.expect("entries"), entries_before);
    assert_eq!(store.account(&account("u")).await.expect("answers").expect("exists").balances.held, cr("4"));
    assert_verified(&store).await;
    let created = store.create_run(&run_record("r1", "t1", &clock)).await.expect("answers").expect("created");
    assert_eq!(store.run(&store::RunId::parse("r1").expect("valid id")).await.expect("answers"), Some(created));
    let job = store.write_job(job_write("j1", &clock)).await.expect("answers").expect("written").job;
    assert_eq!(store.job(&store::JobId::parse("j1").expect("valid id")).await.expect("answers"), Some(job));
    store.close().await;
}

/// A version-2 database (runs, no jobs) gains the job table at open and keeps its runs.
#[tokio::test]
async fn a_version_2_database_gains_the_job_table_and_keeps_its_runs() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    let created = store.create_run(&run_record("r1", "t1", &clock)).await.expect("answers").expect("created");
    store.close().await;
    {
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.execute_batch(&format!(
            "{UNDO_VERSION_8} {UNDO_VERSION_7} {UNDO_VERSION_6} DROP TABLE instances; DROP TABLE jobs; DELETE FROM schema_migrations WHERE version >= 3;"
        ))
        .expect("downgrades");
    }
    assert_eq!(schema_versions(&path), vec![1, 2]);

    let store = open(&path, &clock).await;
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(store.run(&store::RunId::parse("r1").expect("valid id")).await.expect("answers"), Some(created));
    let job = store.write_job(job_write("j1", &clock)).await.expect("answers").expect("written").job;
    assert_eq!(
        store.thread_jobs(&store::ThreadId::parse("t1").expect("valid id"), 10).await.expect("answers"),
        vec![job]
    );
    store.close().await;
}

/// What migration 6 added, undone: back to a version-5 database.
const UNDO_VERSION_6: &str = "DROP INDEX runs_hold_pending; DROP INDEX runs_cancel_requested; DROP TABLE run_events; \
     ALTER TABLE runs DROP COLUMN hold_resolution; ALTER TABLE runs DROP COLUMN cancel_requested_at; \
     DELETE FROM schema_migrations WHERE version >= 6;";

const UNDO_VERSION_8: &str =
    "DROP INDEX IF EXISTS runs_by_account; DROP INDEX IF EXISTS jobs_by_account; DROP INDEX IF EXISTS grants_by_account; ALTER TABLE grants DROP COLUMN voided_at; DROP TABLE gateway_calls; DROP TABLE api_keys; DROP TABLE webhook_deliveries; DROP TABLE webhook_endpoints; ALTER TABLE accounts DROP COLUMN low_balance_threshold; DROP TABLE outbox; DROP TABLE plans; DROP TABLE allowances; DELETE FROM schema_migrations WHERE version >= 8;";

const UNDO_VERSION_7: &str = "DROP INDEX holds_by_account_state; DROP INDEX holds_pending_by_account_expiry; \
     CREATE INDEX holds_pending_by_account ON holds (account_id) WHERE state = 'pending'; \
     ALTER TABLE accounts DROP COLUMN held; ALTER TABLE grants DROP COLUMN pinned; \
     DELETE FROM schema_migrations WHERE version >= 7;";

/// A version-6 database (pending holds summed on every read) gains the account's `held` and each
/// grant's `pinned` at open, backfilled from its holds: pending holds over two grants, one
/// partly captured, one released, one captured — the figures read as before and `verify` (which
/// checks both against the holds) finds nothing.
#[tokio::test]
async fn a_version_6_database_gains_held_and_pinned_backfilled_from_its_holds() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    run(&store, grant("u", "g1", "10")).await.expect("granted");
    run(&store, grant("u", "g2", "10")).await.expect("granted");
    run(&store, grant("v", "g3", "5")).await.expect("granted");
    for (account_id, hold_id, amount) in [("u", "h1", "7"), ("u", "h2", "6"), ("u", "h3", "2"), ("u", "h4", "1")] {
        run(&store, hold(account_id, hold_id, amount)).await.expect("held");
    }
    run(&store, hold("v", "h5", "5")).await.expect("held");
    let capture = |hold_id: &str, amount: &str, is_final: bool| Command::Capture {
        hold_id: HoldId::parse(hold_id).expect("valid id"),
        amount: cr(amount),
        is_final,
        overage: Overage::Reject,
    };
    run(&store, capture("h2", "4", false)).await.expect("captured");
    run(&store, capture("h3", "2", true)).await.expect("captured");
    run(&store, Command::Release { hold_id: HoldId::parse("h4").expect("valid id") }).await.expect("released");
    let before = store.account(&account("u")).await.expect("answers").expect("exists");
    store.close().await;
    {
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.execute_batch(&format!("{UNDO_VERSION_8} {UNDO_VERSION_7}")).expect("downgrades");
    }
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5, 6]);

    let store = open(&path, &clock).await;
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let after = store.account(&account("u")).await.expect("answers").expect("exists");
    assert_eq!(after, before, "held and every grant's pinned part read as before");
    assert_eq!(after.balances.held, cr("9"), "h1's 7 and what is left of h2");
    let pinned: Vec<_> = after.state.grants.iter().map(|grant| (grant.grant_id.as_str(), grant.pinned)).collect();
    assert_eq!(pinned, [("g1", cr("7")), ("g2", cr("2"))]);
    let v = store.account(&account("v")).await.expect("answers").expect("exists");
    assert_eq!(v.balances.held, cr("5"));
    assert_verified(&store).await;
    // And the ledger goes on from the backfilled figures.
    run(&store, capture("h1", "7", true)).await.expect("captured");
    assert_eq!(store.account(&account("u")).await.expect("answers").expect("exists").balances.held, cr("2"));
    assert_verified(&store).await;
    store.close().await;
}

/// A version-5 database (runs whose documents say whether their hold is resolved) gains the typed
/// hold-resolution column at open, read once from each document: recovery finds exactly the
/// terminal run whose release failed, and none of the others.
#[tokio::test]
async fn a_version_5_database_gains_the_typed_hold_resolution_of_its_runs() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
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
    {
        let conn = rusqlite::Connection::open(&path).expect("opens");
        conn.execute_batch(&format!("{UNDO_VERSION_8} {UNDO_VERSION_7} {UNDO_VERSION_6}")).expect("downgrades");
    }
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5]);

    let store = open(&path, &clock).await;
    assert_eq!(schema_versions(&path), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let resolution = |run_id: &'static str| {
        let store = &store;
        async move {
            store
                .run(&store::RunId::parse(run_id).expect("valid id"))
                .await
                .expect("answers")
                .expect("kept")
                .hold_resolution
        }
    };
    assert_eq!(resolution("failed-release").await, store::HoldResolution::Pending);
    assert_eq!(resolution("settled").await, store::HoldResolution::Resolved);
    assert_eq!(resolution("live").await, store::HoldResolution::Pending);
    assert_eq!(resolution("never-held").await, store::HoldResolution::None);
    let unresolved = store.unresolved_runs(10).await.expect("answers");
    assert_eq!(unresolved.iter().map(|run| run.run_id.as_str()).collect::<Vec<_>>(), ["failed-release"]);
    store.close().await;
}

/// A new queued job of account `u` in thread `t1`, as an insert without a ledger request.
fn job_write(job_id: &str, clock: &ManualClock) -> JobWrite {
    let now = clock.now();
    let job = JobRecord {
        job_id: store::JobId::parse(job_id).expect("valid id"),
        account_id: account("u"),
        thread_id: store::ThreadId::parse("t1").expect("valid id"),
        run_id: store::RunId::parse("r1").expect("valid id"),
        hold_id: HoldId::parse("h1").expect("valid id"),
        price: cr("10"),
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
    };
    JobWrite { job, expected_version: None, ledger: None }
}

/// A job created with its capture, then claimed, reads back whole after close and reopen, with
/// the capture in the ledger; its version check still holds on the reopened file.
#[tokio::test]
async fn jobs_survive_close_and_reopen() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    run(&store, grant("u", "g1", "100")).await.expect("grant succeeds");
    run(&store, hold("u", "h1", "30")).await.expect("hold succeeds");
    let capture = Command::Capture {
        hold_id: HoldId::parse("h1").expect("valid id"),
        amount: cr("10"),
        is_final: false,
        overage: Overage::Reject,
    };
    let write = JobWrite { ledger: Some(Request::with_key(capture, "j1:create", "fp")), ..job_write("j1", &clock) };
    let created = store.write_job(write).await.expect("answers").expect("written");
    assert!(matches!(created.ledger, Some(Outcome::Captured { .. })), "{:?}", created.ledger);
    let now = clock.now();
    let claimed = store.claim_job("w1", now, now.plus_seconds(30), 3).await.expect("answers").expect("claimed");
    store.close().await;

    let store = open(&path, &clock).await;
    assert_eq!(store.job(&store::JobId::parse("j1").expect("valid id")).await.expect("answers"), Some(claimed.clone()));
    assert_eq!(store.account(&account("u")).await.expect("answers").expect("exists").balances.balance, cr("90"));
    let stale = JobWrite { expected_version: Some(created.job.version), ..job_write("j1", &clock) };
    let refused = store.write_job(stale).await.expect("answers");
    assert_eq!(refused, Err(JobWriteRefusal::VersionMismatch { current: Some(claimed.version) }));
    assert_eq!(store.claim_job("w2", now, now.plus_seconds(30), 3).await.expect("answers"), None, "the lease holds");
    assert_verified(&store).await;
    store.close().await;
}

/// Runs, their updates and artifacts are committed like ledger changes: all of them read back
/// after close and reopen, and the one-running-run rule still holds on the reopened file.
#[tokio::test]
async fn runs_and_artifacts_survive_close_and_reopen() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    let mut first = store.create_run(&run_record("r1", "t1", &clock)).await.expect("answers").expect("created");
    first.state = RunState::Succeeded;
    first.hold_id = Some(HoldId::parse("h-r1").expect("valid id"));
    first.data = r#"{"answer":"42"}"#.to_owned();
    assert!(store.update_run(&first).await.expect("answers"));
    let second = store.create_run(&run_record("r2", "t1", &clock)).await.expect("answers").expect("created");
    let artifact = Artifact {
        artifact_id: store::ArtifactId::parse("a1").expect("valid id"),
        account_id: account("u"),
        run_id: store::RunId::parse("r1").expect("valid id"),
        content_type: "application/pdf".to_owned(),
        bytes: (0..=255).collect(),
        created_at: clock.now(),
    };
    store.put_artifact(&artifact).await.expect("stored");
    store.close().await;

    let store = open(&path, &clock).await;
    assert_eq!(store.run(&store::RunId::parse("r1").expect("valid id")).await.expect("answers"), Some(first.clone()));
    assert_eq!(
        store.thread_runs(&store::ThreadId::parse("t1").expect("valid id"), None, 10).await.expect("answers"),
        vec![first, second]
    );
    assert_eq!(
        store.artifact(&store::ArtifactId::parse("a1").expect("valid id")).await.expect("answers"),
        Some(artifact)
    );
    let busy = store.create_run(&run_record("r3", "t1", &clock)).await.expect("answers");
    assert_eq!(busy, Err(store::CreateRunRefusal::ThreadBusy { run_id: store::RunId::parse("r2").expect("valid id") }));
    store.close().await;
}

/// Committed pages reach the database file in the background, long before the writer's own
/// automatic checkpoint (thousands of pages away) would copy them: the checkpointer thread runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_checkpoint_copies_committed_pages_into_the_database_file() {
    let (_dir, path) = database();
    let clock = Arc::new(ManualClock::starting_now());
    let store = open(&path, &clock).await;
    // Let the checkpointer's first pass over the fresh file finish, so the size below is settled.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let size_before = std::fs::metadata(&path).expect("the database file").len();
    for index in 0..300 {
        let account_id = format!("acct-{index}");
        run(&store, grant(&account_id, &format!("g-{index}"), "5")).await.expect("granted");
    }
    let wal = path.with_extension("db-wal");
    assert!(std::fs::metadata(&wal).expect("the WAL").len() > 0, "the grants went through the WAL");
    let mut size_after = size_before;
    for _ in 0..50 {
        // The checkpointer runs on its own schedule; nothing signals its passes: poll (bounded).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        size_after = std::fs::metadata(&path).expect("the database file").len();
        if size_after > size_before {
            break;
        }
    }
    assert!(size_after > size_before, "the database file stayed at {size_before} bytes: nothing was checkpointed");
    store.close().await;
}
