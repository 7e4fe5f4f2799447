//! Scenario checks: the original's ledger checks (proovy-spec §8) restated against
//! creditgraph's semantics, and the contract's edge cases.

use std::sync::Arc;

use futures::future::join_all;
use ledger::{Amount, Command, EntryKind, GrantId, HoldId, HoldState, Outcome, Overage, Reference, Rejection};

use super::{account, balances, cr, grant_credits, hold_credits, Harness};
use crate::{Executed, Request, StoreError};

/// Balance 20, hold 15, capture 10 not final → remaining 5 pending, balance 10, available 5;
/// final capture 3 → captured, balance 7, available 7.
pub async fn partial_then_final_capture(h: Harness) {
    h.grant("u", "20").await;
    let hold = h.hold("u", "15", 1200).await.unwrap();
    let partial = h.capture(&hold.hold_id, "10", false).await.unwrap();
    assert_eq!((partial.state, partial.captured, partial.remaining), (HoldState::Pending, cr("10"), cr("5")));
    assert_eq!(h.balances("u").await, balances("10", "5", "5"));
    let last = h.capture(&hold.hold_id, "3", true).await.unwrap();
    assert_eq!((last.state, last.captured, last.remaining), (HoldState::Captured, cr("13"), cr("0")));
    assert_eq!(h.balances("u").await, balances("7", "0", "7"));
    let read = h.store.hold(&hold.hold_id).await.unwrap().unwrap();
    assert_eq!(read.state, HoldState::Captured);
    h.assert_verified().await;
}

/// Two concurrent holds of 7 on 10 → exactly one succeeds; balance 10, held 7, available 3.
pub async fn concurrent_holds_exactly_one_wins(h: Harness) {
    h.grant("u", "10").await;
    let h = Arc::new(h);
    let tasks = (0..2).map(|_| {
        let h = h.clone();
        tokio::spawn(async move { h.hold("u", "7", 1200).await })
    });
    let results: Vec<_> = join_all(tasks).await.into_iter().map(|joined| joined.unwrap()).collect();
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1, "{results:?}");
    let refused = results.iter().find_map(|result| result.clone().err()).unwrap();
    assert_eq!(refused, Rejection::InsufficientCredits { required: cr("7"), available: cr("3") });
    assert_eq!(h.balances("u").await, balances("10", "7", "3"));
    h.assert_verified().await;
}

/// 64 concurrent holds of 7 on 100: exactly 14 succeed and nothing is overdrawn.
pub async fn concurrent_holds_never_overdraw(h: Harness) {
    h.grant("u", "100").await;
    let h = Arc::new(h);
    let tasks = (0..64).map(|index| {
        let h = h.clone();
        tokio::spawn(async move {
            let hold = h.hold("u", "7", 1200).await?;
            // Half capture with overage allowed: the excess must also respect available.
            if index % 2 == 0 {
                let command = Command::Capture {
                    hold_id: hold.hold_id,
                    amount: cr("8"),
                    is_final: true,
                    overage: Overage::IfAvailable,
                };
                let _ = h.run(command).await;
            }
            Ok::<(), Rejection>(())
        })
    });
    let results: Vec<_> = join_all(tasks).await.into_iter().map(|joined| joined.unwrap()).collect();
    let held = results.iter().filter(|result| result.is_ok()).count();
    assert!((12..=14).contains(&held), "{held} holds succeeded");
    let figures = h.balances("u").await;
    assert_eq!(figures.balance, figures.held.plus(figures.available));
    h.assert_verified().await;
}

/// A hold past its TTL counts 0 at once (exact on read), reads as expired, and a new hold of the
/// full balance succeeds; capturing it is `hold_expired`, releasing it `hold_not_pending`.
pub async fn expired_hold_counts_zero(h: Harness) {
    h.grant("u", "10").await;
    let old = h.hold("u", "8", 60).await.unwrap();
    h.clock.advance_seconds(59);
    assert_eq!(h.balances("u").await, balances("10", "8", "2"));
    h.clock.advance_seconds(1);
    assert_eq!(h.balances("u").await, balances("10", "0", "10"));
    assert_eq!(h.store.hold(&old.hold_id).await.unwrap().unwrap().state, HoldState::Expired);
    assert!(h.store.pending_holds(&account("u")).await.unwrap().is_empty());
    h.hold("u", "10", 60).await.unwrap();
    assert_eq!(h.capture(&old.hold_id, "1", true).await, Err(Rejection::HoldExpired));
    assert_eq!(h.release(&old.hold_id).await, Err(Rejection::HoldNotPending { state: HoldState::Expired }));
    h.assert_verified().await;
}

pub async fn insufficient_credits_changes_nothing(h: Harness) {
    h.grant("u", "5").await;
    let before = h.store.entries(&account("u"), 0, 100).await.unwrap();
    assert_eq!(
        h.hold("u", "5.000001", 60).await,
        Err(Rejection::InsufficientCredits { required: cr("5.000001"), available: cr("5") })
    );
    let debit = Command::Debit { account_id: account("u"), amount: cr("6"), reference: None };
    assert!(matches!(h.run(debit).await, Err(Rejection::InsufficientCredits { .. })));
    assert_eq!(h.store.entries(&account("u"), 0, 100).await.unwrap(), before);
    assert_eq!(h.balances("u").await, balances("5", "0", "5"));
}

/// A capture above the remaining part is refused, or charged from available with
/// `if_available`, or refused for funds when available is short.
pub async fn capture_beyond_hold(h: Harness) {
    h.grant("u", "10").await;
    let hold = h.hold("u", "4", 60).await.unwrap();
    assert_eq!(
        h.capture(&hold.hold_id, "5", true).await,
        Err(Rejection::AmountExceedsHold { requested: cr("5"), remaining: cr("4") })
    );
    let too_much = Command::Capture {
        hold_id: hold.hold_id.clone(),
        amount: cr("11"),
        is_final: true,
        overage: Overage::IfAvailable,
    };
    assert_eq!(h.run(too_much).await, Err(Rejection::InsufficientCredits { required: cr("7"), available: cr("6") }));
    let overage = Command::Capture {
        hold_id: hold.hold_id.clone(),
        amount: cr("5"),
        is_final: true,
        overage: Overage::IfAvailable,
    };
    let Ok(Outcome::Captured { hold: captured }) = h.run(overage).await else { panic!("overage capture refused") };
    assert_eq!((captured.captured, captured.state), (cr("5"), HoldState::Captured));
    assert_eq!(h.balances("u").await, balances("5", "0", "5"));
    h.assert_verified().await;
}

/// Release: pending → released; again → no-op success; a captured hold → `hold_not_pending`.
pub async fn release_semantics(h: Harness) {
    h.grant("u", "10").await;
    let hold = h.hold("u", "6", 60).await.unwrap();
    assert!(matches!(h.release(&hold.hold_id).await, Ok(Outcome::Released { changed: true, .. })));
    assert!(matches!(h.release(&hold.hold_id).await, Ok(Outcome::Released { changed: false, .. })));
    assert_eq!(h.balances("u").await, balances("10", "0", "10"));
    let captured = h.hold("u", "6", 60).await.unwrap();
    h.capture(&captured.hold_id, "6", true).await.unwrap();
    assert_eq!(h.release(&captured.hold_id).await, Err(Rejection::HoldNotPending { state: HoldState::Captured }));
    let releases = h
        .store
        .entries(&account("u"), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.kind == EntryKind::Release)
        .count();
    assert_eq!(releases, 1, "a repeated release writes nothing");
    h.assert_verified().await;
}

pub async fn extend_moves_expiry(h: Harness) {
    h.grant("u", "10").await;
    let hold = h.hold("u", "6", 60).await.unwrap();
    h.clock.advance_seconds(50);
    let extend = Command::Extend { hold_id: hold.hold_id.clone(), ttl_seconds: 60 };
    let Ok(Outcome::Extended { hold: extended }) = h.run(extend).await else { panic!("extend refused") };
    assert_eq!(extended.expires_at, h.clock_now().plus_seconds(60));
    h.clock.advance_seconds(59);
    assert_eq!(h.balances("u").await.held, cr("6"));
    h.clock.advance_seconds(1);
    assert_eq!(h.balances("u").await.held, cr("0"));
    let late = Command::Extend { hold_id: hold.hold_id, ttl_seconds: 60 };
    assert_eq!(h.run(late).await, Err(Rejection::HoldExpired));
    h.assert_verified().await;
}

fn refund(account_id: &str, amount: &str, reference: &str, hold_id: Option<&HoldId>) -> Command {
    Command::Refund {
        account_id: account(account_id),
        grant_id: GrantId::parse(&format!("r{}", uuid::Uuid::now_v7().simple())).unwrap(),
        amount: cr(amount),
        reference: Reference::parse(reference).unwrap(),
        hold_id: hold_id.cloned(),
        priority: 100,
        expires_at: None,
    }
}

/// A refund by reference applies once; with a hold, never beyond what it captured.
pub async fn refund_by_reference_applies_once(h: Harness) {
    h.grant("u", "20").await;
    let hold = h.hold("u", "10", 60).await.unwrap();
    h.capture(&hold.hold_id, "10", true).await.unwrap();
    let first = h.run(refund("u", "10", "job-1", Some(&hold.hold_id))).await;
    assert!(matches!(first, Ok(Outcome::Refunded { created: true, .. })), "{first:?}");
    let again = h.run(refund("u", "10", "job-1", Some(&hold.hold_id))).await;
    assert!(matches!(again, Ok(Outcome::Refunded { created: false, .. })), "{again:?}");
    assert_eq!(h.balances("u").await, balances("20", "0", "20"));
    assert_eq!(
        h.run(refund("u", "0.5", "job-2", Some(&hold.hold_id))).await,
        Err(Rejection::RefundExceedsCharges { requested: cr("0.5"), refundable: cr("0") })
    );
    assert!(matches!(h.run(refund("u", "1", "job-3", None)).await, Err(Rejection::RefundExceedsCharges { .. })));
    h.assert_verified().await;
}

pub async fn refund_with_hold_of_another_account_is_not_found(h: Harness) {
    h.grant("a", "10").await;
    h.grant("b", "10").await;
    let hold = h.hold("a", "5", 60).await.unwrap();
    h.capture(&hold.hold_id, "5", true).await.unwrap();
    assert_eq!(h.run(refund("b", "1", "x", Some(&hold.hold_id))).await, Err(Rejection::HoldNotFound));
    assert_eq!(h.balances("b").await, balances("10", "0", "10"));
}

/// Grant and hold ids are unique across accounts: a command reusing another account's id is
/// refused by the store (an error, not a rejection: the service never reuses an id), and the
/// other account's grant or hold is left exactly as it was.
pub async fn ids_of_another_account_are_never_overwritten(h: Harness) {
    h.run(grant_credits("a", "g-shared", 10)).await.expect("first grant");
    h.run(grant_credits("b", "g-b", 10)).await.expect("b's grant");
    h.run(hold_credits("a", "h-shared", 4, 60)).await.expect("first hold");
    let before = (h.balances("a").await, h.store.hold(&hold_id("h-shared")).await.expect("store answers"));

    let reused_grant = h.store.execute(Request::new(grant_credits("b", "g-shared", 99))).await;
    assert!(matches!(reused_grant, Err(StoreError::Corrupt { .. })), "{reused_grant:?}");
    let reused_hold = h.store.execute(Request::new(hold_credits("b", "h-shared", 1, 60))).await;
    assert!(matches!(reused_hold, Err(StoreError::Corrupt { .. })), "{reused_hold:?}");

    let after = (h.balances("a").await, h.store.hold(&hold_id("h-shared")).await.expect("store answers"));
    assert_eq!(after, before, "a's grant and hold are untouched");
    assert_eq!(h.balances("b").await, balances("10", "0", "10"), "nothing of the refused commands was written");
    h.assert_verified().await;
}

fn hold_id(id: &str) -> HoldId {
    HoldId::parse(id).expect("test hold ids are valid")
}

pub async fn grant_reference_returns_first_grant(h: Harness) {
    let first = h.grant_with("u", "5", 100, None, Some("invoice-7")).await.unwrap();
    let again = h.grant_with("u", "9", 100, None, Some("invoice-7")).await.unwrap();
    let (Outcome::Granted { grant: a, created: true }, Outcome::Granted { grant: b, created: false }) = (first, again)
    else {
        panic!("expected a created grant then the same grant");
    };
    assert_eq!((a.grant_id, a.amount), (b.grant_id, b.amount));
    assert_eq!(h.balances("u").await, balances("5", "0", "5"));
    // The same reference on another account is a different grant.
    assert!(matches!(
        h.grant_with("v", "1", 100, None, Some("invoice-7")).await,
        Ok(Outcome::Granted { created: true, .. })
    ));
}

/// A grant's remainder leaves the balance exactly at `expires_at`; the sweeper journals it.
pub async fn grants_expire_exactly_and_sweep_records_them(h: Harness) {
    h.grant_with("u", "5", 100, Some(100), None).await.unwrap();
    h.grant("u", "1").await;
    assert_eq!(
        h.grant_with("u", "1", 100, Some(0), None).await,
        Err(Rejection::ExpiryNotInFuture),
        "a grant already expired is refused"
    );
    h.clock.advance_seconds(99);
    assert_eq!(h.balances("u").await, balances("6", "0", "6"));
    h.clock.advance_seconds(1);
    assert_eq!(h.balances("u").await, balances("1", "0", "1"));
    let report = h.store.sweep(100).await.unwrap();
    assert_eq!((report.accounts, report.entries), (1, 1));
    let entries = h.store.entries(&account("u"), 0, 100).await.unwrap();
    let last = entries.last().unwrap();
    assert_eq!((last.kind, last.amount, last.balance_after), (EntryKind::GrantExpired, cr("5"), cr("1")));
    assert_eq!(h.store.sweep(100).await.unwrap().entries, 0, "a second sweep finds nothing");
    h.assert_verified().await;
}

/// A hold pins its grant's credits: when the grant expires under a pending hold, the hold stays
/// capturable; what it does not capture expires when it ends.
pub async fn pinned_grant_expiry_waits_for_the_hold(h: Harness) {
    h.grant_with("u", "10", 100, Some(100), None).await.unwrap();
    let hold = h.hold("u", "6", 1000).await.unwrap();
    h.clock.advance_seconds(200);
    assert_eq!(h.balances("u").await, balances("6", "6", "0"));
    h.capture(&hold.hold_id, "2", true).await.unwrap();
    assert_eq!(h.balances("u").await, balances("0", "0", "0"));
    h.assert_verified().await;
}

pub async fn unknown_account_and_hold(h: Harness) {
    assert_eq!(h.hold("nobody", "1", 60).await, Err(Rejection::AccountNotFound));
    assert!(h.store.account(&account("nobody")).await.unwrap().is_none());
    let missing = HoldId::parse("missing").unwrap();
    assert_eq!(h.release(&missing).await, Err(Rejection::HoldNotFound));
    assert!(h.store.hold(&missing).await.unwrap().is_none());
}

/// The same key with the same request replays the first result and applies nothing twice.
pub async fn idempotent_replay_returns_first_result(h: Harness) {
    h.grant("u", "10").await;
    let command = h.hold_command("u", "4", 60);
    let first = h.store.execute(Request::with_key(command.clone(), "k1", "f1")).await.unwrap();
    let second = h.store.execute(Request::with_key(command, "k1", "f1")).await.unwrap();
    let Executed::Fresh(Ok(Outcome::Held { hold })) = &first else { panic!("{first:?}") };
    assert_eq!(second, Executed::Replayed(Ok(Outcome::Held { hold: hold.clone() })));
    assert_eq!(h.balances("u").await, balances("10", "4", "6"));
    let entries = h.store.entries(&account("u"), 0, 100).await.unwrap();
    assert_eq!(entries.last().unwrap().idempotency_key.as_deref(), Some("k1"));
    h.assert_verified().await;
}

pub async fn idempotency_key_with_other_request_conflicts(h: Harness) {
    h.grant("u", "10").await;
    let first = h.store.execute(Request::with_key(h.hold_command("u", "4", 60), "k", "f1")).await.unwrap();
    assert!(matches!(first, Executed::Fresh(Ok(_))));
    let other = h.store.execute(Request::with_key(h.hold_command("u", "5", 60), "k", "f2")).await.unwrap();
    assert_eq!(other, Executed::Conflict);
    assert_eq!(h.balances("u").await, balances("10", "4", "6"));
}

/// A request rejected for funds replays as the same rejection, even after credits arrive.
pub async fn rejection_replays_as_rejection(h: Harness) {
    h.grant("u", "1").await;
    let command = h.hold_command("u", "5", 60);
    let first = h.store.execute(Request::with_key(command.clone(), "k", "f")).await.unwrap();
    let rejected = Err(Rejection::InsufficientCredits { required: cr("5"), available: cr("1") });
    assert_eq!(first, Executed::Fresh(rejected.clone()));
    h.grant("u", "10").await;
    let again = h.store.execute(Request::with_key(command, "k", "f")).await.unwrap();
    assert_eq!(again, Executed::Replayed(rejected));
    assert_eq!(h.balances("u").await, balances("11", "0", "11"));
}

/// 16 concurrent requests with one key apply once: one fresh result, fifteen equal replays.
pub async fn concurrent_same_key_applies_once(h: Harness) {
    h.grant("u", "100").await;
    let command = h.hold_command("u", "3", 60);
    let store = h.store.clone();
    let tasks = (0..16).map(|_| {
        let store = store.clone();
        let command = command.clone();
        tokio::spawn(async move { store.execute(Request::with_key(command, "same", "f")).await.unwrap() })
    });
    let results: Vec<Executed> = join_all(tasks).await.into_iter().map(|joined| joined.unwrap()).collect();
    let fresh: Vec<_> = results.iter().filter(|result| matches!(result, Executed::Fresh(_))).collect();
    assert_eq!(fresh.len(), 1, "{results:?}");
    for result in &results {
        assert_eq!(result.result(), fresh[0].result());
    }
    assert_eq!(h.balances("u").await, balances("100", "3", "97"));
    h.assert_verified().await;
}

pub async fn entries_pagination_is_stable(h: Harness) {
    for _ in 0..25 {
        h.grant("u", "1").await;
    }
    let all = h.store.entries(&account("u"), 0, 1000).await.unwrap();
    assert_eq!(all.len(), 25);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = h.store.entries(&account("u"), after, 10).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert!(all.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert_eq!(all.last().unwrap().balance_after, cr("25"));
}

pub async fn sweep_forgets_old_idempotency_keys(h: Harness) {
    h.grant("u", "10").await;
    let command = h.hold_command("u", "1", 60);
    h.store.execute(Request::with_key(command.clone(), "old", "f")).await.unwrap();
    h.clock.advance_seconds(3600);
    assert!(matches!(
        h.store.execute(Request::with_key(command.clone(), "old", "f")).await.unwrap(),
        Executed::Replayed(_)
    ));
    h.clock.advance_seconds(86_400);
    let report = h.store.sweep(100).await.unwrap();
    assert_eq!(report.idempotency_keys_deleted, 1);
    // The key is forgotten; the hold id inside the command already exists, so this proves the
    // record is gone by the store no longer replaying it.
    let after = h.store.execute(Request::with_key(h.hold_command("u", "1", 60), "old", "f2")).await.unwrap();
    assert!(matches!(after, Executed::Fresh(Ok(_))), "{after:?}");
    h.assert_verified().await;
}

/// The kept figures (issue 16): the account's `held` and each grant's `pinned` follow every
/// hold, capture (partial, final, with overage), release, expiry and refund, across grants of
/// several priorities — `verify` checks both against the holds after each step, and the view's
/// grants carry what their pending holds pinned.
pub async fn kept_figures_follow_every_hold_change(h: Harness) {
    h.grant_with("u", "10", 1, None, None).await.expect("granted");
    h.grant_with("u", "10", 2, Some(600), None).await.expect("granted");
    let spanning = h.hold("u", "15", 60).await.expect("held"); // 10 of the first, 5 of the second
    let short = h.hold("u", "2", 30).await.expect("held");
    let long = h.hold("u", "1", 3600).await.expect("held");
    h.assert_verified().await;
    let view = h.store.account(&account("u")).await.expect("answers").expect("exists");
    let pinned: Vec<Amount> = view.state.grants.iter().map(|grant| grant.pinned).collect();
    assert_eq!(Amount::sum(pinned.iter().copied()), cr("18"), "{pinned:?}");
    assert_eq!(view.balances, balances("20", "18", "2"));
    assert!(view.state.holds.is_empty(), "no hold is due, so the view carries none");
    h.capture(&spanning.hold_id, "11", false).await.expect("partial capture");
    h.assert_verified().await;
    let overage = Command::Capture {
        hold_id: spanning.hold_id.clone(),
        amount: cr("5"),
        is_final: true,
        overage: Overage::IfAvailable,
    };
    h.run(overage).await.expect("final capture with 1 of overage");
    assert_eq!(h.balances("u").await, balances("4", "3", "1"));
    h.assert_verified().await;
    h.clock.advance_seconds(31);
    assert_eq!(h.balances("u").await, balances("4", "1", "3"), "the short hold expired on read");
    let report = h.store.sweep(100).await.expect("swept");
    assert_eq!(report.accounts, 1, "the short hold's expiry is journaled");
    h.assert_verified().await;
    h.release(&long.hold_id).await.expect("released");
    h.assert_verified().await;
    let short_now = h.store.hold(&short.hold_id).await.expect("answers").expect("exists");
    assert_eq!(short_now.state, HoldState::Expired);
    let refund = Command::Refund {
        account_id: account("u"),
        grant_id: GrantId::parse("kept-refund").expect("valid id"),
        amount: cr("3"),
        reference: Reference::parse("kept-refund").expect("valid reference"),
        hold_id: Some(spanning.hold_id.clone()),
        priority: 0,
        expires_at: None,
    };
    h.run(refund).await.expect("refunded");
    assert_eq!(h.balances("u").await, balances("7", "0", "7"));
    let view = h.store.account(&account("u")).await.expect("answers").expect("exists");
    assert!(view.state.grants.iter().all(|grant| grant.pinned.is_zero()), "nothing is pending");
    h.assert_verified().await;
}

/// How many pending holds [`many_pending_holds_stay_out_of_account_reads`] piles up.
const PILE_HOLDS: usize = 5_000;

/// An account with 5,000 pending holds: its read carries none of them (only due ones), holds
/// and captures still decide right, the due ones — and only they — are expired first, and the
/// paged holds read lists every pending hold once, in order, in pages of at most 1,000.
pub async fn many_pending_holds_stay_out_of_account_reads(h: Harness) {
    h.grant("u", "100000").await;
    let h = Arc::new(h);
    let mut held: Vec<HoldId> = Vec::with_capacity(PILE_HOLDS);
    for chunk in 0..PILE_HOLDS / 100 {
        // Every tenth chunk expires soon, the rest in an hour.
        let ttl_seconds = if chunk % 10 == 0 { 60 } else { 3600 };
        let tasks = (0..100).map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.hold("u", "1", ttl_seconds).await })
        });
        for joined in join_all(tasks).await {
            held.push(joined.expect("task ends").expect("held").hold_id);
        }
    }
    let view = h.store.account(&account("u")).await.expect("answers").expect("exists");
    assert!(view.state.holds.is_empty(), "{} holds in the account read", view.state.holds.len());
    let pending = cr(&PILE_HOLDS.to_string());
    assert_eq!(view.balances.held, pending);

    // A hold and a capture decide on the kept figures.
    let one = h.hold("u", "2", 3600).await.expect("held");
    h.capture(&one.hold_id, "2", true).await.expect("captured");
    assert_eq!(h.balances("u").await, balances("99998", &PILE_HOLDS.to_string(), &(99_998 - PILE_HOLDS).to_string()));

    // Past the short TTL: the 500 due holds read as expired, and only they are loaded.
    h.clock.advance_seconds(61);
    let view = h.store.account(&account("u")).await.expect("answers").expect("exists");
    let due = PILE_HOLDS / 10;
    assert_eq!(view.state.holds.len(), due, "the due holds, expired on read");
    assert!(view.state.holds.iter().all(|hold| hold.state == HoldState::Expired));
    assert_eq!(view.balances.held, cr(&(PILE_HOLDS - due).to_string()));

    // Pages of the pending holds: each once, in hold-id order, at most 1,000 a page.
    let mut listed: Vec<HoldId> = Vec::new();
    let mut after: Option<HoldId> = None;
    loop {
        let page = h.store.holds(&account("u"), HoldState::Pending, after.as_ref(), 5_000).await.expect("answers");
        assert!(page.len() <= crate::HOLDS_PAGE_MAX as usize);
        let Some(last) = page.last() else { break };
        after = Some(last.hold_id.clone());
        assert!(page.iter().all(|hold| hold.state == HoldState::Pending));
        listed.extend(page.into_iter().map(|hold| hold.hold_id));
    }
    assert_eq!(listed.len(), PILE_HOLDS - due);
    assert!(listed.windows(2).all(|pair| pair[0] < pair[1]), "in hold-id order, no repeats");
    let expired = h.store.holds(&account("u"), HoldState::Expired, None, 1_000).await.expect("answers");
    assert_eq!(expired.len(), due, "due holds read as expired before any sweep");

    // A command expires the due holds first; then none is due, and none is loaded.
    h.hold("u", "1", 3600).await.expect("held");
    let view = h.store.account(&account("u")).await.expect("answers").expect("exists");
    assert!(view.state.holds.is_empty());
    h.assert_verified().await;
}

/// The paged holds read by state: captured, released and expired holds each in their own list,
/// a pending hold past its expiry listed as expired (exact on read), an empty page past the end
/// and for an account without holds.
pub async fn holds_are_paged_by_state(h: Harness) {
    h.grant("u", "100").await;
    let captured = h.hold("u", "1", 600).await.expect("held");
    h.capture(&captured.hold_id, "1", true).await.expect("captured");
    let released = h.hold("u", "1", 600).await.expect("held");
    h.release(&released.hold_id).await.expect("released");
    let expiring = h.hold("u", "1", 10).await.expect("held");
    let pending: Vec<HoldId> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(h.hold("u", "1", 600).await.expect("held").hold_id);
        }
        ids.sort();
        ids
    };
    let list = |state: HoldState, after: Option<HoldId>, limit: u32| {
        let h = &h;
        async move {
            let page = h.store.holds(&account("u"), state, after.as_ref(), limit).await.expect("answers");
            page.into_iter().map(|hold| hold.hold_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(HoldState::Captured, None, 10).await, vec![captured.hold_id]);
    assert_eq!(list(HoldState::Released, None, 10).await, vec![released.hold_id]);
    assert_eq!(list(HoldState::Expired, None, 10).await, Vec::<HoldId>::new());
    let mut all_pending = pending.clone();
    all_pending.push(expiring.hold_id.clone());
    all_pending.sort();
    assert_eq!(list(HoldState::Pending, None, 10).await, all_pending);
    h.clock.advance_seconds(11);
    assert_eq!(list(HoldState::Expired, None, 10).await, vec![expiring.hold_id]);
    assert_eq!(list(HoldState::Pending, None, 2).await, pending[..2]);
    assert_eq!(list(HoldState::Pending, Some(pending[1].clone()), 10).await, pending[2..]);
    assert_eq!(list(HoldState::Pending, Some(pending[4].clone()), 10).await, Vec::<HoldId>::new());
    let other = h.store.holds(&account("nobody"), HoldState::Pending, None, 10).await.expect("answers");
    assert!(other.is_empty());
    h.assert_verified().await;
}

/// The operator's gauges count every pending hold of the store and what they still hold, across
/// accounts, and drop a hold once it is captured, released or swept.
pub async fn gauges_follow_pending_holds(h: Harness) {
    let before = h.store.gauges().await.expect("gauges");
    h.grant("g1", "100").await;
    h.grant("g2", "100").await;
    let first = h.hold("g1", "10", 600).await.expect("held");
    let second = h.hold("g2", "2.5", 600).await.expect("held");
    let expiring = h.hold("g2", "1", 10).await.expect("held");
    let gauges = h.store.gauges().await.expect("gauges");
    assert_eq!(gauges.pending_holds, before.pending_holds + 3);
    assert_eq!(gauges.held, before.held.checked_add(cr("13.5")).expect("small"));
    h.capture(&first.hold_id, "4", false).await.expect("captured");
    let gauges = h.store.gauges().await.expect("gauges");
    assert_eq!(gauges.pending_holds, before.pending_holds + 3, "a partial capture leaves the hold pending");
    assert_eq!(gauges.held, before.held.checked_add(cr("9.5")).expect("small"));
    h.release(&second.hold_id).await.expect("released");
    h.clock.advance_seconds(11);
    h.store.sweep(100).await.expect("swept");
    let gauges = h.store.gauges().await.expect("gauges");
    assert_eq!(gauges.pending_holds, before.pending_holds + 1, "released and swept holds are not pending");
    assert_eq!(gauges.held, before.held.checked_add(cr("6")).expect("small"));
    assert!(h.store.hold(&expiring.hold_id).await.expect("read").is_some_and(|hold| hold.state == HoldState::Expired));
    let jobs = |gauges: crate::StoreGauges| (gauges.jobs_queued, gauges.jobs_running, gauges.oldest_queued_job_at);
    assert_eq!(jobs(gauges), jobs(before), "no job moved");
}

/// The operator's account search: ids with a prefix, in byte order, page after page.
pub async fn accounts_are_listed_by_prefix_in_pages(h: Harness) {
    for id in ["acme-2", "acme-10", "acme-1", "acmf", "ac", "zeta", "Acme-0"] {
        h.grant(id, "1").await;
    }
    let page = |prefix: &'static str, after: Option<&'static str>, limit: u32| {
        let h = &h;
        async move {
            let after = after.map(account);
            let ids = h.store.account_ids(prefix, after.as_ref(), limit).await.expect("store answers");
            ids.into_iter().map(|id| id.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(page("acme-", None, 10).await, vec!["acme-1", "acme-10", "acme-2"]);
    assert_eq!(page("acme-", None, 2).await, vec!["acme-1", "acme-10"]);
    assert_eq!(page("acme-", Some("acme-10"), 2).await, vec!["acme-2"]);
    assert_eq!(page("acme-", Some("acme-2"), 2).await, Vec::<String>::new());
    assert_eq!(page("ac", None, 10).await, vec!["ac", "acme-1", "acme-10", "acme-2", "acmf"]);
    assert_eq!(page("", None, 3).await, vec!["Acme-0", "ac", "acme-1"], "byte order: upper case first");
    assert_eq!(page("", Some("acmf"), 10).await, vec!["zeta"]);
    assert_eq!(page("nobody", None, 10).await, Vec::<String>::new());
}

/// The overview's days: the journal's credits per UTC day and kind, for a window of time.
pub async fn daily_credits_sum_the_journal_by_day_and_kind(h: Harness) {
    let start = crate::utc_day(crate::Clock::now(h.clock.as_ref()));
    h.grant("d1", "10").await;
    h.grant("d2", "2.5").await;
    let hold = h.hold("d1", "4", 3 * 86_400).await.expect("held");
    h.clock.advance_seconds(86_400);
    h.capture(&hold.hold_id, "3", true).await.expect("captured");
    h.grant("d1", "1").await;
    let from = crate::Timestamp::from_micros(start * crate::MICROS_PER_DAY);
    let to = crate::Timestamp::from_micros((start + 2) * crate::MICROS_PER_DAY);
    let days = h.store.daily_credits(from, to).await.expect("store answers");
    let got: Vec<(i64, &str, String)> =
        days.iter().map(|day| (day.day - start, day.kind.as_str(), day.amount.to_string())).collect();
    let want = vec![
        (0, "grant", "12.5".to_owned()),
        (0, "hold", "4".to_owned()),
        (1, "capture", "3".to_owned()),
        (1, "grant", "1".to_owned()),
        (1, "release", "1".to_owned()),
    ];
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want);
    let first_day_only = h.store.daily_credits(from, from.plus_seconds(86_400)).await.expect("store answers");
    assert!(first_day_only.iter().all(|day| day.day == start), "the window bounds the entries: {first_day_only:?}");
}

/// A void takes back what is left of a grant, journalled, once; never credits a pending hold
/// reserved; and grants list by state (active, expired, voided) page by page.
pub async fn grants_are_voided_once_and_listed_by_state(h: Harness) {
    let grant_id = |outcome: Result<Outcome, Rejection>| match outcome {
        Ok(Outcome::Granted { grant, .. }) => grant.grant_id,
        other => panic!("expected a grant, got {other:?}"),
    };
    // Spent first (priority 10), so the hold below pins it and nothing else.
    let pinned = grant_id(h.grant_with("v", "10", 10, None, None).await);
    let spare = grant_id(h.grant_with("v", "6", 200, None, None).await);
    let kept = grant_id(h.grant_with("v", "2", 300, None, None).await);
    let expiring = grant_id(h.grant_with("v", "3", 400, Some(10), None).await);
    let hold = h.hold("v", "4", 600).await.expect("held");
    let void = |grant_id: &ledger::GrantId| Command::VoidGrant { account_id: account("v"), grant_id: grant_id.clone() };

    match h.run(void(&spare)).await {
        Ok(Outcome::GrantVoided { grant, voided }) => {
            assert_eq!(voided, cr("6"));
            assert_eq!((grant.free, grant.pinned, grant.live), (Amount::ZERO, Amount::ZERO, false));
            assert_eq!(grant.voided_at, Some(h.clock_now()));
        }
        other => panic!("expected a void, got {other:?}"),
    }
    assert_eq!(h.balances("v").await, balances("15", "4", "11"));
    assert_eq!(h.run(void(&pinned)).await, Err(Rejection::GrantCreditsHeld { held: cr("4") }));
    assert_eq!(h.balances("v").await, balances("15", "4", "11"), "a refused void changes nothing");
    h.release(&hold.hold_id).await.expect("released");
    match h.run(void(&pinned)).await {
        Ok(Outcome::GrantVoided { voided, .. }) => assert_eq!(voided, cr("10")),
        other => panic!("expected a void, got {other:?}"),
    }
    assert_eq!(h.run(void(&pinned)).await, Err(Rejection::GrantNotFound), "a grant is voided once");
    let unknown = ledger::GrantId::parse("no-such-grant").expect("valid id");
    assert_eq!(h.run(void(&unknown)).await, Err(Rejection::GrantNotFound));
    assert_eq!(h.balances("v").await, balances("5", "0", "5"));
    let voids: Vec<Amount> = h
        .store
        .entries(&account("v"), 0, 100)
        .await
        .expect("entries")
        .into_iter()
        .filter(|entry| entry.kind == ledger::EntryKind::Void)
        .map(|entry| entry.amount)
        .collect();
    assert_eq!(voids, vec![cr("6"), cr("10")], "each void is one journal entry");

    h.clock.advance_seconds(11);
    let now = h.clock_now();
    let list = |state: crate::GrantListState, after: Option<ledger::GrantId>, limit: u32| {
        let h = &h;
        async move {
            let grants = h.store.grants(&account("v"), state, after.as_ref(), limit).await.expect("store answers");
            grants.into_iter().map(|grant| grant.grant_id).collect::<Vec<_>>()
        }
    };
    let mut voided = vec![pinned.clone(), spare.clone()];
    voided.sort();
    assert_eq!(list(crate::GrantListState::Voided, None, 10).await, voided);
    assert_eq!(list(crate::GrantListState::Voided, None, 1).await, voided[..1].to_vec());
    assert_eq!(list(crate::GrantListState::Voided, Some(voided[0].clone()), 1).await, voided[1..].to_vec());
    assert_eq!(list(crate::GrantListState::Active(now), None, 10).await, vec![kept.clone()]);
    assert_eq!(list(crate::GrantListState::Expired(now), None, 10).await, vec![expiring.clone()]);
    let read = h.store.grant(&spare).await.expect("store answers").expect("the voided grant is kept");
    assert!(read.voided_at.is_some() && read.free.is_zero(), "{read:?}");
    assert_eq!(h.store.grant(&unknown).await.expect("store answers"), None);
    h.assert_verified().await;
}

/// The journal filtered by kind, time window and reference, page after page in seq order.
pub async fn journal_is_filtered_by_kind_time_and_reference(h: Harness) {
    h.grant_with("j", "10", 100, None, Some("first")).await.expect("granted");
    let start = h.clock_now();
    h.clock.advance_seconds(60);
    let middle = h.clock_now();
    for _ in 0..3 {
        let hold = h.hold("j", "1", 600).await.expect("held");
        h.capture(&hold.hold_id, "1", true).await.expect("captured");
    }
    h.clock.advance_seconds(60);
    let end = h.clock_now();
    h.grant_with("j", "5", 100, None, Some("second")).await.expect("granted");
    let kinds = |filter: crate::EntryFilter, after: u64, limit: u32| {
        let h = &h;
        async move {
            let entries = h.store.filtered_entries(&account("j"), &filter, after, limit).await.expect("store answers");
            entries.into_iter().map(|entry| (entry.seq, entry.kind.as_str())).collect::<Vec<_>>()
        }
    };
    let captures = crate::EntryFilter { kind: Some(EntryKind::Capture), ..Default::default() };
    let all = kinds(captures.clone(), 0, 10).await;
    assert_eq!(all.iter().map(|(_, kind)| *kind).collect::<Vec<_>>(), ["capture"; 3]);
    let first_page = kinds(captures.clone(), 0, 2).await;
    assert_eq!(first_page, all[..2].to_vec());
    assert_eq!(kinds(captures, first_page[1].0, 2).await, all[2..].to_vec());
    let window = crate::EntryFilter { from: Some(middle), to: Some(end), ..Default::default() };
    assert_eq!(kinds(window, 0, 100).await.len(), 6, "three holds and three captures in the window");
    let before = crate::EntryFilter { to: Some(start.plus_seconds(1)), ..Default::default() };
    assert_eq!(kinds(before, 0, 100).await.iter().map(|(_, kind)| *kind).collect::<Vec<_>>(), ["grant"]);
    let second = crate::EntryFilter {
        reference: Some(Reference::parse("second").expect("valid")),
        kind: Some(EntryKind::Grant),
        ..Default::default()
    };
    assert_eq!(kinds(second, 0, 100).await.len(), 1);
    let none = crate::EntryFilter { kind: Some(EntryKind::Refund), ..Default::default() };
    assert!(kinds(none, 0, 100).await.is_empty());
}
