//! Scenarios every baseline store must pass, written against `LedgerStore` so the SQLite store and
//! both PostgreSQL modes run the same checks. Each scenario ends with `verify` finding nothing.

use std::sync::Arc;

use ledger::{AccountId, Amount, Balances, Command, HoldId, HoldState, Outcome, Overage, Rejection};
use store::{Executed, LedgerStore, ManualClock, Request, StoreError};

pub type Store = Arc<dyn LedgerStore>;

pub fn credits(credits: u64) -> Amount {
    Amount::from_credits(credits)
}

fn account(id: &str) -> AccountId {
    AccountId::parse(id).expect("a valid account id")
}

fn hold_id(id: &str) -> HoldId {
    HoldId::parse(id).expect("a valid hold id")
}

fn grant_command(account_id: &str, amount: u64) -> Command {
    Command::Grant {
        account_id: account(account_id),
        grant_id: ledger::GrantId::parse(&format!("g-{account_id}-{amount}")).expect("a valid grant id"),
        amount: credits(amount),
        priority: 0,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

fn hold_command(account_id: &str, id: &str, amount: u64, ttl_seconds: u64) -> Command {
    Command::Hold {
        account_id: account(account_id),
        hold_id: hold_id(id),
        amount: credits(amount),
        ttl_seconds,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

fn capture_command(id: &str, amount: u64, is_final: bool, overage: Overage) -> Command {
    Command::Capture { hold_id: hold_id(id), amount: credits(amount), is_final, overage }
}

pub async fn run(store: &Store, command: Command) -> Result<Outcome, Rejection> {
    match store.execute(Request::new(command)).await.expect("the store answers") {
        Executed::Fresh(result) => result,
        other => panic!("a request without a key must apply fresh, got {other:?}"),
    }
}

pub async fn grant(store: &Store, account_id: &str, amount: u64) {
    let outcome = run(store, grant_command(account_id, amount)).await.expect("a grant is accepted");
    let Outcome::Granted { grant, created } = outcome else { panic!("a grant answers Granted, got {outcome:?}") };
    assert!(created);
    assert_eq!((grant.account_id.as_str(), grant.amount, grant.free), (account_id, credits(amount), credits(amount)));
}

pub async fn hold(
    store: &Store,
    account_id: &str,
    id: &str,
    amount: u64,
    ttl_seconds: u64,
) -> Result<Outcome, Rejection> {
    run(store, hold_command(account_id, id, amount, ttl_seconds)).await
}

pub async fn capture(
    store: &Store,
    id: &str,
    amount: u64,
    is_final: bool,
    overage: Overage,
) -> Result<Outcome, Rejection> {
    run(store, capture_command(id, amount, is_final, overage)).await
}

pub async fn release(store: &Store, id: &str) -> Result<Outcome, Rejection> {
    run(store, Command::Release { hold_id: hold_id(id) }).await
}

/// (available, held, balance) in whole credits, as `account()` reads them.
pub async fn figures(store: &Store, account_id: &str) -> (Amount, Amount, Amount) {
    let view = store.account(&account(account_id)).await.expect("the store answers").expect("the account exists");
    let Balances { balance, held, available } = view.balances;
    (available, held, balance)
}

pub async fn assert_figures(store: &Store, account_id: &str, available: u64, held: u64) {
    assert_eq!(
        figures(store, account_id).await,
        (credits(available), credits(held), credits(available + held)),
        "available, held and balance of {account_id}"
    );
}

pub async fn assert_verified(store: &Store) {
    let report = store.verify().await.expect("verify runs");
    assert!(report.violations.is_empty(), "violations: {:?}", report.violations);
    assert!(report.accounts > 0);
}

/// A hold above what is available is refused and changes nothing; one within it reserves exactly
/// its amount.
pub async fn hold_is_all_or_nothing(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "alice", 100).await;
    assert_figures(&store, "alice", 100, 0).await;
    assert_eq!(
        hold(&store, "alice", "h-too-big", 150, 60).await,
        Err(Rejection::InsufficientCredits { required: credits(150), available: credits(100) })
    );
    assert_figures(&store, "alice", 100, 0).await;
    assert_eq!(store.hold(&hold_id("h-too-big")).await.unwrap(), None);

    let outcome = hold(&store, "alice", "h1", 60, 60).await.expect("60 of 100 can be held");
    let Outcome::Held { hold: held } = outcome else { panic!("a hold answers Held, got {outcome:?}") };
    assert_eq!(
        (held.amount, held.remaining, held.captured, held.state),
        (credits(60), credits(60), Amount::ZERO, HoldState::Pending)
    );
    assert_eq!(store.hold(&hold_id("h1")).await.unwrap(), Some(held.clone()));
    assert_eq!(store.pending_holds(&account("alice")).await.unwrap(), vec![held]);
    assert_figures(&store, "alice", 40, 60).await;

    assert_eq!(
        hold(&store, "alice", "h2", 41, 60).await,
        Err(Rejection::InsufficientCredits { required: credits(41), available: credits(40) })
    );
    assert_eq!(hold(&store, "nobody", "h3", 1, 60).await, Err(Rejection::AccountNotFound));
    assert_eq!(store.account(&account("nobody")).await.unwrap(), None);
    assert_figures(&store, "alice", 40, 60).await;
    assert_verified(&store).await;
}

/// A partial capture keeps the hold pending with the rest reserved; the final one charges its
/// amount and gives the rest back; overage comes from available only when asked for.
pub async fn partial_then_final_capture(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "bob", 100).await;
    hold(&store, "bob", "h1", 60, 60).await.expect("held");

    let Ok(Outcome::Captured { hold: partial }) = capture(&store, "h1", 20, false, Overage::Reject).await else {
        panic!("a partial capture within the hold succeeds")
    };
    assert_eq!((partial.captured, partial.remaining, partial.state), (credits(20), credits(40), HoldState::Pending));
    assert_figures(&store, "bob", 40, 40).await;

    assert_eq!(
        capture(&store, "h1", 50, true, Overage::Reject).await,
        Err(Rejection::AmountExceedsHold { requested: credits(50), remaining: credits(40) })
    );
    let Ok(Outcome::Captured { hold: last }) = capture(&store, "h1", 30, true, Overage::Reject).await else {
        panic!("a final capture within the hold succeeds")
    };
    assert_eq!((last.captured, last.remaining, last.state), (credits(50), Amount::ZERO, HoldState::Captured));
    assert_eq!(store.hold(&hold_id("h1")).await.unwrap(), Some(last));
    assert_figures(&store, "bob", 50, 0).await;
    assert_eq!(
        capture(&store, "h1", 1, true, Overage::Reject).await,
        Err(Rejection::HoldNotPending { state: HoldState::Captured })
    );
    assert_eq!(capture(&store, "no-such-hold", 1, true, Overage::Reject).await, Err(Rejection::HoldNotFound));

    // Overage: 15 on a hold of 10 takes 5 from available.
    hold(&store, "bob", "h2", 10, 60).await.expect("held");
    let Ok(Outcome::Captured { hold: over }) = capture(&store, "h2", 15, true, Overage::IfAvailable).await else {
        panic!("an overage within available succeeds")
    };
    assert_eq!((over.captured, over.state), (credits(15), HoldState::Captured));
    assert_figures(&store, "bob", 35, 0).await;
    // An overage beyond available is refused and changes nothing.
    hold(&store, "bob", "h3", 30, 60).await.expect("held");
    assert_eq!(
        capture(&store, "h3", 40, true, Overage::IfAvailable).await,
        Err(Rejection::InsufficientCredits { required: credits(10), available: credits(5) })
    );
    assert_figures(&store, "bob", 5, 30).await;

    let debited = run(&store, Command::Debit { account_id: account("bob"), amount: credits(5), reference: None }).await;
    let Ok(Outcome::Debited { balances, .. }) = debited else { panic!("a debit within available succeeds") };
    assert_eq!((balances.available, balances.held), (Amount::ZERO, credits(30)));
    assert_eq!(
        run(&store, Command::Debit { account_id: account("bob"), amount: credits(1), reference: None }).await,
        Err(Rejection::InsufficientCredits { required: credits(1), available: Amount::ZERO })
    );
    assert_verified(&store).await;
}

/// A release gives the hold back once; a second release answers the released hold unchanged.
pub async fn release_gives_credits_back(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "carol", 100).await;
    hold(&store, "carol", "h1", 70, 60).await.expect("held");
    assert_figures(&store, "carol", 30, 70).await;

    let Ok(Outcome::Released { hold: released, changed: true }) = release(&store, "h1").await else {
        panic!("a pending hold releases")
    };
    assert_eq!(
        (released.state, released.remaining, released.captured),
        (HoldState::Released, Amount::ZERO, Amount::ZERO)
    );
    assert_figures(&store, "carol", 100, 0).await;
    assert_eq!(release(&store, "h1").await, Ok(Outcome::Released { hold: released, changed: false }));
    assert_figures(&store, "carol", 100, 0).await;
    assert_eq!(
        capture(&store, "h1", 1, true, Overage::Reject).await,
        Err(Rejection::HoldNotPending { state: HoldState::Released })
    );
    assert_eq!(release(&store, "no-such-hold").await, Err(Rejection::HoldNotFound));
    assert!(store.pending_holds(&account("carol")).await.unwrap().is_empty());
    assert_verified(&store).await;
}

/// A hold past its expiry reads as expired and cannot be captured; its credits return when the
/// sweeper runs (or when it is released), and only then can a new hold use them.
pub async fn expired_holds_return_on_sweep(store: Store, clock: Arc<ManualClock>) {
    grant(&store, "dave", 100).await;
    hold(&store, "dave", "h1", 40, 60).await.expect("held");
    hold(&store, "dave", "h2", 20, 60).await.expect("held");
    assert_eq!(store.sweep(100).await.unwrap().entries, 0, "nothing is due yet");
    clock.advance_seconds(60);

    let read = store.hold(&hold_id("h1")).await.unwrap().expect("the hold exists");
    assert_eq!((read.state, read.remaining), (HoldState::Expired, Amount::ZERO));
    assert!(store.pending_holds(&account("dave")).await.unwrap().is_empty());
    // Reads apply expiry as the ledger does.
    assert_figures(&store, "dave", 100, 0).await;
    assert_eq!(capture(&store, "h1", 10, true, Overage::Reject).await, Err(Rejection::HoldExpired));
    // Releasing an expired hold answers as the ledger does, and returns its credits.
    assert_eq!(release(&store, "h2").await, Err(Rejection::HoldNotPending { state: HoldState::Expired }));
    // The baseline's known gap: h1's credits are not usable before the sweep.
    assert_eq!(
        hold(&store, "dave", "h3", 100, 60).await,
        Err(Rejection::InsufficientCredits { required: credits(100), available: credits(60) })
    );
    assert_verified(&store).await;

    let report = store.sweep(100).await.expect("the sweep runs");
    assert_eq!((report.accounts, report.entries), (1, 1), "only h1 was still pending");
    assert_eq!(store.sweep(100).await.unwrap().entries, 0, "a second sweep finds nothing");
    assert_figures(&store, "dave", 100, 0).await;
    hold(&store, "dave", "h3", 100, 60).await.expect("all credits are back");
    assert_eq!(capture(&store, "h1", 10, true, Overage::Reject).await, Err(Rejection::HoldExpired));
    assert_figures(&store, "dave", 0, 100).await;
    assert_verified(&store).await;
}

/// The same key and fingerprint replay the first result without applying anything; the same key
/// with another fingerprint is a conflict. Rejections are recorded and replayed too.
pub async fn idempotent_replay_and_conflict(store: Store, _clock: Arc<ManualClock>) {
    let granted = Request::with_key(grant_command("erin", 100), "key-grant", "fp-1");
    let first = store.execute(granted.clone()).await.unwrap();
    let Executed::Fresh(Ok(Outcome::Granted { .. })) = &first else { panic!("first use applies, got {first:?}") };
    assert_eq!(store.execute(granted).await.unwrap(), Executed::Replayed(first.result().unwrap().clone()));
    let other = Request::with_key(grant_command("erin", 100), "key-grant", "fp-2");
    assert_eq!(store.execute(other).await.unwrap(), Executed::Conflict);
    assert_figures(&store, "erin", 100, 0).await;

    let hold = Request::with_key(hold_command("erin", "h1", 30, 60), "key-hold", "fp-hold");
    let held = store.execute(hold.clone()).await.unwrap();
    assert!(matches!(held, Executed::Fresh(Ok(Outcome::Held { .. }))), "{held:?}");
    assert_eq!(store.execute(hold).await.unwrap(), Executed::Replayed(held.result().unwrap().clone()));
    assert_figures(&store, "erin", 70, 30).await;

    let too_big = Request::with_key(hold_command("erin", "h2", 80, 60), "key-big", "fp-big");
    let refused =
        Executed::Fresh(Err(Rejection::InsufficientCredits { required: credits(80), available: credits(70) }));
    assert_eq!(store.execute(too_big.clone()).await.unwrap(), refused);
    grant(&store, "erin", 50).await;
    assert_eq!(store.execute(too_big).await.unwrap(), Executed::Replayed(refused.result().unwrap().clone()));
    assert_figures(&store, "erin", 120, 30).await;
    assert_verified(&store).await;
}

/// 32 holds of 10 race for 100 credits: exactly 10 win and nothing is left over or overdrawn.
pub async fn concurrent_holds_never_overdraw(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "frank", 100).await;
    let tasks: Vec<_> = (0..32)
        .map(|index| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { hold(&store, "frank", &format!("race-{index}"), 10, 60).await })
        })
        .collect();
    let mut succeeded = 0;
    for task in futures::future::join_all(tasks).await {
        match task.expect("the task finishes") {
            Ok(Outcome::Held { .. }) => succeeded += 1,
            Err(Rejection::InsufficientCredits { required, .. }) => assert_eq!(required, credits(10)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(succeeded, 10);
    assert_figures(&store, "frank", 0, 100).await;
    assert_eq!(store.pending_holds(&account("frank")).await.unwrap().len(), 10);
    assert_verified(&store).await;
}

/// Commands the baseline leaves out fail loudly instead of pretending; there is no journal.
pub async fn unsupported_commands_are_unavailable(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "gina", 10).await;
    hold(&store, "gina", "h1", 5, 60).await.expect("held");
    let extend = store.execute(Request::new(Command::Extend { hold_id: hold_id("h1"), ttl_seconds: 60 })).await;
    match extend {
        Err(StoreError::Unavailable { detail, .. }) => assert_eq!(detail, "the baseline store does not support extend"),
        other => panic!("extend must be unavailable, got {other:?}"),
    }
    let sweep = store.execute(Request::new(Command::Sweep { account_id: account("gina") })).await;
    assert!(matches!(sweep, Err(StoreError::Unavailable { .. })), "{sweep:?}");
    assert!(store.entries(&account("gina"), 0, 100).await.unwrap().is_empty());
    assert_figures(&store, "gina", 5, 5).await;
    assert_verified(&store).await;
}

/// The account view reads as one synthetic grant that holds all credits, so the server's account
/// response (grants with their remaining part) adds up.
pub async fn account_view_is_one_grant(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "hank", 70).await;
    grant(&store, "hank", 30).await;
    hold(&store, "hank", "h1", 25, 60).await.expect("held");
    let view = store.account(&account("hank")).await.unwrap().expect("the account exists");
    assert_eq!(view.state.grants.len(), 1);
    let grant = &view.state.grants[0];
    assert_eq!((grant.amount, grant.free), (credits(100), credits(75)));
    assert_eq!(view.state.holds.len(), 1);
    assert_eq!(Amount::sum(view.state.holds[0].allocations.iter().map(|allocation| allocation.amount)), credits(25));
    assert_eq!(view.balances, Balances { balance: credits(100), held: credits(25), available: credits(75) });
    assert_verified(&store).await;
}

/// The same key sent 8 times at once applies once; the others replay that result.
pub async fn concurrent_same_key_applies_once(store: Store, _clock: Arc<ManualClock>) {
    grant(&store, "kate", 100).await;
    let request = Request::with_key(hold_command("kate", "h1", 10, 60), "key-race", "fp-race");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, request) = (Arc::clone(&store), request.clone());
            tokio::spawn(async move { store.execute(request).await.expect("the store answers") })
        })
        .collect();
    let answers: Vec<Executed> =
        futures::future::join_all(tasks).await.into_iter().map(|task| task.expect("the task finishes")).collect();
    let fresh: Vec<&Executed> = answers.iter().filter(|answer| matches!(answer, Executed::Fresh(_))).collect();
    assert_eq!(fresh.len(), 1, "{answers:?}");
    let result = fresh[0].result().unwrap().clone();
    assert!(matches!(result, Ok(Outcome::Held { .. })), "{result:?}");
    for answer in &answers {
        assert_eq!(answer.result(), Some(&result));
    }
    assert_figures(&store, "kate", 90, 10).await;
    assert_verified(&store).await;
}
