//! Group commit on PostgreSQL: concurrent commands of one hot account are applied in shared
//! transactions (see `batch.rs`), by one or two pools (as two server processes), and every
//! guarantee of a lone command still holds: no overdraft, one application per idempotency key,
//! all or nothing for a caller that stops waiting, a journal that verifies.

use std::sync::Arc;
use std::time::Duration;

use ledger::{Amount, Command, HoldId, Outcome, Rejection};
use store::conformance::{self, account};
use store::{Executed, LedgerStore, ManualClock, Request};
use store_postgres::{testing, PostgresOptions, PostgresStore};

fn credits(count: u64) -> Amount {
    Amount::from_credits(count)
}

fn grant(account_id: &str, grant_id: &str, amount: u64) -> Command {
    conformance::grant_credits(account_id, grant_id, amount)
}

fn hold(account_id: &str, hold_id: &str, amount: u64) -> Command {
    conformance::hold_credits(account_id, hold_id, amount, 600)
}

fn capture(hold_id: &str, amount: u64) -> Command {
    conformance::capture_credits(hold_id, amount)
}

async fn connect(url: &str, clock: &Arc<ManualClock>) -> Arc<PostgresStore> {
    Arc::new(PostgresStore::connect(url, clock.clone(), PostgresOptions::default()).await.expect("connect"))
}

async fn assert_clean(store: &PostgresStore) {
    let report = store.verify().await.expect("verify");
    assert!(report.violations.is_empty(), "violations: {:?}", report.violations);
}

/// 200 holds of 10 credits race for 1,000 credits: exactly 100 succeed, in fewer transactions
/// than commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_holds_on_one_account_are_batched_and_never_overdraw() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    store.execute(Request::new(grant("hot", "g1", 1_000))).await.expect("grant");

    let tasks: Vec<_> = (0..200)
        .map(|index| {
            let store = store.clone();
            tokio::spawn(async move {
                let request = Request::with_key(hold("hot", &format!("h{index}"), 10), &format!("k{index}"), "f");
                store.execute(request).await
            })
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
    assert_eq!((held, refused), (100, 100));

    let view = store.account(&account("hot")).await.expect("read").expect("exists");
    assert_eq!(view.balances.balance, credits(1_000));
    assert_eq!(view.balances.held, credits(1_000));
    assert_eq!(view.balances.available, Amount::ZERO);
    let entries = store.entries(&account("hot"), 0, 1_000).await.expect("entries");
    assert_eq!(entries.len(), 101, "one grant and 100 holds");
    assert!(entries.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert_clean(&store).await;
    let stats = store.stats();
    assert_eq!(stats.batched_commands, 201, "{stats:?}");
    assert!(stats.batched_commands > stats.batches, "some commands shared a transaction: {stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");
}

/// Two pools (two server processes) on one hot account, holds and captures through both: no
/// deadlock, no overdraft, a clean journal, and batching in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_batch_holds_and_captures_on_one_hot_account_without_deadlocks() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    stores[0].execute(Request::new(grant("shared-hot", "g1", 1_000))).await.expect("grant");

    let tasks: Vec<_> = (0..300)
        .map(|index| {
            let store = stores[index % 2].clone();
            let other = stores[(index + 1) % 2].clone();
            tokio::spawn(async move {
                let hold_id = format!("h{index}");
                let request = Request::with_key(hold("shared-hot", &hold_id, 10), &format!("kh{index}"), "f");
                match store.execute(request).await.expect("hold") {
                    Executed::Fresh(Ok(Outcome::Held { .. })) => {}
                    Executed::Fresh(Err(Rejection::InsufficientCredits { .. })) => return 0,
                    other => panic!("unexpected {other:?}"),
                }
                let request = Request::with_key(capture(&hold_id, 4), &format!("kc{index}"), "f");
                match other.execute(request).await.expect("capture") {
                    Executed::Fresh(Ok(Outcome::Captured { .. })) => 4,
                    other => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    let mut spent = 0;
    for task in tasks {
        spent += task.await.expect("task");
    }
    assert!(spent >= 400, "at least the first 100 holds fit: {spent}");
    let view = stores[1].account(&account("shared-hot")).await.expect("read").expect("exists");
    assert_eq!(view.balances.balance, credits(1_000 - spent));
    assert_eq!(view.balances.held, Amount::ZERO);
    assert_eq!(view.state.totals.spent, credits(spent));
    assert_clean(&stores[0]).await;
    let stats = [stores[0].stats(), stores[1].stats()];
    assert_eq!(stats[0].deadlocks + stats[1].deadlocks, 0, "{stats:?}");
    assert_eq!(stats[0].serialization_failures + stats[1].serialization_failures, 0, "{stats:?}");
    let (commands, batches) =
        (stats[0].batched_commands + stats[1].batched_commands, stats[0].batches + stats[1].batches);
    assert!(commands > batches, "some commands shared a transaction: {stats:?}");
}

/// One key sent 40 times at once through two pools, plus 10 times with another fingerprint,
/// among other commands of the account: applied once; the same fingerprint replays, the other
/// conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_repeated_across_batches_and_pools_applies_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    stores[0].execute(Request::new(grant("keyed", "g1", 1_000))).await.expect("grant");

    // The first request is answered before the others are sent, so the fingerprint that wins is
    // known; the others race with 40 unrelated holds, so they meet in the same queues.
    let first = Request::with_key(hold("keyed", "h-same", 10), "same-key", "f");
    let applied = stores[0].execute(first.clone()).await.expect("execute");
    let Executed::Fresh(Ok(outcome @ Outcome::Held { .. })) = applied else { panic!("unexpected {applied:?}") };
    let tasks: Vec<_> = (0..90)
        .map(|index| {
            let store = stores[index % 2].clone();
            let request = match index % 9 {
                0 => Request::with_key(hold("keyed", "h-same", 10), "same-key", "other-fingerprint"),
                1..=4 => first.clone(),
                _ => Request::with_key(hold("keyed", &format!("h{index}"), 1), &format!("k{index}"), "f"),
            };
            tokio::spawn(async move { (index % 9, store.execute(request).await.expect("execute")) })
        })
        .collect();
    for task in tasks {
        match task.await.expect("task") {
            (0, executed) => assert_eq!(executed, Executed::Conflict),
            (1..=4, executed) => assert_eq!(executed, Executed::Replayed(Ok(outcome.clone()))),
            (_, executed) => assert!(matches!(executed, Executed::Fresh(Ok(Outcome::Held { .. }))), "{executed:?}"),
        }
    }
    let entries = stores[1].entries(&account("keyed"), 0, 1_000).await.expect("entries");
    assert_eq!(entries.iter().filter(|entry| entry.idempotency_key.as_deref() == Some("same-key")).count(), 1);
    assert_eq!(entries.len(), 1 + 1 + 40, "the grant, the keyed hold once, 40 other holds");
    let view = stores[1].account(&account("keyed")).await.expect("read").expect("exists");
    assert_eq!(view.balances.held, credits(10 + 40));
    assert_clean(&stores[0]).await;
}

/// Callers that stop waiting at random moments: each command is applied whole or not at all,
/// and a command sent again with its key replays exactly when it was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_that_stops_waiting_leaves_its_command_applied_whole_or_not_at_all() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    store.execute(Request::new(grant("dropped", "g1", 1_000))).await.expect("grant");
    for index in 0..40 {
        let request = Request::with_key(hold("dropped", &format!("c{index}"), 10), &format!("kc-hold{index}"), "f");
        store.execute(request).await.expect("hold");
    }

    let requests = |index: usize| match index % 2 {
        0 => Request::with_key(hold("dropped", &format!("h{index}"), 5), &format!("k{index}"), "f"),
        _ => Request::with_key(capture(&format!("c{}", index / 2), 3), &format!("k{index}"), "f"),
    };
    let tasks: Vec<_> = (0..80)
        .map(|index| {
            let store = store.clone();
            let request = requests(index);
            tokio::spawn(async move {
                // Between 0 and about 3 ms: some give up before queuing, some while queued or
                // while their batch runs, some get their answer.
                let patience = Duration::from_micros(u64::try_from(index).expect("small") * 37 % 3_000);
                let _ = tokio::time::timeout(patience, store.execute(request)).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    // Batches of one account run in arrival order: once this is answered, every command queued
    // before it has been applied (or was never queued).
    store.execute(Request::new(hold("dropped", "last", 1))).await.expect("last");
    assert_clean(&store).await;

    for index in 0..80 {
        let hold_id = HoldId::parse(&format!("h{index}")).expect("valid");
        let applied_before = match index % 2 {
            0 => store.hold(&hold_id).await.expect("read").is_some(),
            _ => {
                let captured = HoldId::parse(&format!("c{}", index / 2)).expect("valid");
                store.hold(&captured).await.expect("read").expect("exists").captured > Amount::ZERO
            }
        };
        match store.execute(requests(index)).await.expect("execute") {
            Executed::Replayed(Ok(_)) => assert!(applied_before, "request {index} replayed but was not applied"),
            Executed::Fresh(Ok(_)) => assert!(!applied_before, "request {index} applied twice"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let view = store.account(&account("dropped")).await.expect("read").expect("exists");
    assert_eq!(view.balances.held, credits(40 * 5 + 1), "the 40 new holds and the last one");
    assert_eq!(view.state.totals.spent, credits(40 * 3));
    assert_clean(&store).await;
}

/// Two pools (two server processes) hammer 12 overlapping accounts, one sending its commands in
/// ascending account order and the other in descending order, so their batches span accounts
/// in opposite arrival orders: locks are taken in account order whatever the arrival order, so
/// there is no deadlock, and every account ends exactly as its successful commands say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_spanning_overlapping_accounts_in_opposite_orders_never_deadlock() {
    const ACCOUNTS: usize = 12;
    const ROUNDS: usize = 15;
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let stores = [connect(&url, &clock).await, connect(&url, &clock).await];
    for index in 0..ACCOUNTS {
        stores[0]
            .execute(Request::new(grant(&format!("span{index}"), &format!("g{index}"), 100)))
            .await
            .expect("grant");
    }

    let tasks: Vec<_> = (0..2 * ROUNDS * ACCOUNTS)
        .map(|task| {
            let (side, round, slot) = (task % 2, task / 2 / ACCOUNTS, task / 2 % ACCOUNTS);
            let store = stores[side].clone();
            let account = if side == 0 { slot } else { ACCOUNTS - 1 - slot };
            tokio::spawn(async move {
                let hold_id = format!("h{side}-{round}-{account}");
                let key = format!("k{side}-{round}-{account}");
                let request = Request::with_key(hold(&format!("span{account}"), &hold_id, 3), &key, "f");
                match store.execute(request).await.expect("hold") {
                    Executed::Fresh(Ok(Outcome::Held { .. })) => {}
                    Executed::Fresh(Err(Rejection::InsufficientCredits { .. })) => return (account, 0),
                    other => panic!("unexpected {other:?}"),
                }
                let request = Request::with_key(capture(&hold_id, 2), &format!("{key}-capture"), "f");
                match store.execute(request).await.expect("capture") {
                    Executed::Fresh(Ok(Outcome::Captured { .. })) => (account, 2),
                    other => panic!("unexpected {other:?}"),
                }
            })
        })
        .collect();
    let mut spent = [0_u64; ACCOUNTS];
    for task in tasks {
        let (account, credits_spent) = task.await.expect("task");
        spent[account] += credits_spent;
    }
    for (index, spent) in spent.iter().enumerate() {
        let view = stores[1].account(&account(&format!("span{index}"))).await.expect("read").expect("exists");
        assert_eq!(view.balances.balance, credits(100 - spent), "account {index}");
        assert_eq!(view.balances.held, Amount::ZERO, "account {index}");
        assert_eq!(view.state.totals.spent, credits(*spent), "account {index}");
    }
    assert_clean(&stores[0]).await;
    let stats = [stores[0].stats(), stores[1].stats()];
    assert_eq!(stats[0].deadlocks + stats[1].deadlocks, 0, "{stats:?}");
    let (commands, batches) =
        (stats[0].batched_commands + stats[1].batched_commands, stats[0].batches + stats[1].batches);
    assert!(commands > batches, "some commands shared a transaction: {stats:?}");
}

/// One key sent 30 times at once (20 with the winning body, 10 with another) among holds on 8
/// other accounts: never twice in one batch, applied once, replayed or conflicting otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_queued_twice_among_other_accounts_applies_once() {
    let url = testing::fresh_database().await;
    let clock = Arc::new(ManualClock::starting_now());
    let store = connect(&url, &clock).await;
    for index in 0..9 {
        store.execute(Request::new(grant(&format!("q{index}"), &format!("g{index}"), 1_000))).await.expect("grant");
    }
    let same = Request::with_key(hold("q0", "h-same", 10), "same-key", "f");
    let tasks: Vec<_> = (0..110)
        .map(|index| {
            let store = store.clone();
            let request = match index % 11 {
                0 => Request::with_key(hold("q0", "h-same", 10), "same-key", "other-fingerprint"),
                1 | 2 => same.clone(),
                _ => Request::with_key(
                    hold(&format!("q{}", 1 + index % 8), &format!("h{index}"), 1),
                    &format!("k{index}"),
                    "f",
                ),
            };
            tokio::spawn(async move { (index % 11, store.execute(request).await.expect("execute")) })
        })
        .collect();
    let (mut fresh, mut replayed, mut conflicts) = (0, 0, 0);
    for task in tasks {
        match task.await.expect("task") {
            (0..=2, Executed::Fresh(Ok(Outcome::Held { .. }))) => fresh += 1,
            (0..=2, Executed::Replayed(Ok(Outcome::Held { .. }))) => replayed += 1,
            (0..=2, Executed::Conflict) => conflicts += 1,
            (0..=2, other) => panic!("unexpected {other:?}"),
            (_, executed) => assert!(matches!(executed, Executed::Fresh(Ok(Outcome::Held { .. }))), "{executed:?}"),
        }
    }
    // The first to be applied is fresh; the same body replays it, the other body conflicts (or,
    // when the other body came first, it is the fresh one and the 20 others conflict).
    assert_eq!(fresh, 1, "applied once");
    assert_eq!(fresh + replayed + conflicts, 30);
    assert!(conflicts == 10 || conflicts == 20, "{conflicts} conflicts");
    let entries = store.entries(&account("q0"), 0, 1_000).await.expect("entries");
    assert_eq!(entries.iter().filter(|entry| entry.idempotency_key.as_deref() == Some("same-key")).count(), 1);
    assert_clean(&store).await;
}
