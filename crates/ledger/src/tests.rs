//! Scenario tests of the pure ledger: the original's ledger checks and the edge cases of expiry.

use crate::*;

const T0: Timestamp = Timestamp::from_micros(1_700_000_000_000_000);

fn cr(text: &str) -> Amount {
    Amount::parse(text).unwrap()
}

fn account() -> AccountId {
    AccountId::parse("u").unwrap()
}

struct Book {
    state: Option<AccountState>,
    journal: Vec<Entry>,
    /// Every hold ever seen, as last written (stores keep resolved holds too).
    holds: Vec<Hold>,
    next_id: u32,
}

impl Book {
    fn new() -> Book {
        Book { state: None, journal: Vec::new(), holds: Vec::new(), next_id: 0 }
    }

    fn run(&mut self, command: Command, now: Timestamp) -> Result<Outcome, Rejection> {
        // Like a store: load pending holds, plus the targeted hold whatever its state.
        let mut state = self.state.clone();
        if let (Some(state), Some(hold_id)) = (state.as_mut(), command.hold_to_load()) {
            if state.hold(hold_id).is_none() {
                if let Some(hold) = self.holds.iter().find(|hold| &hold.hold_id == hold_id) {
                    state.holds.push(hold.clone());
                }
            }
        }
        let applied = execute(state, &command, now, None)?;
        for mut entry in applied.changes.entries {
            entry.seq = self.journal.len() as u64 + 1;
            self.journal.push(entry);
        }
        for hold in &applied.state.holds {
            match self.holds.iter_mut().find(|known| known.hold_id == hold.hold_id) {
                Some(known) => *known = hold.clone(),
                None => self.holds.push(hold.clone()),
            }
        }
        let mut state = applied.state;
        state.holds.retain(|hold| hold.state == HoldState::Pending);
        self.state = Some(state);
        self.check();
        Ok(applied.outcome)
    }

    fn check(&self) {
        let state = self.state.as_ref().unwrap();
        let stored = StoredAccount {
            account_id: state.account_id.clone(),
            totals: state.totals,
            free: Amount::sum(state.grants.iter().map(|grant| grant.free)),
            holds: self.holds.clone(),
        };
        let violations = verify_account(&self.journal, &stored);
        assert!(violations.is_empty(), "{violations:?}");
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn grant(&mut self, amount: &str, expires_at: Option<Timestamp>, now: Timestamp) {
        let grant_id = GrantId::parse(&self.id("g")).unwrap();
        let command = Command::Grant {
            account_id: account(),
            grant_id,
            amount: cr(amount),
            priority: 100,
            expires_at,
            reference: None,
            metadata: "{}".into(),
        };
        self.run(command, now).unwrap();
    }

    fn hold(&mut self, amount: &str, ttl_seconds: u64, now: Timestamp) -> Result<HoldId, Rejection> {
        let hold_id = HoldId::parse(&self.id("h")).unwrap();
        let command = Command::Hold {
            account_id: account(),
            hold_id: hold_id.clone(),
            amount: cr(amount),
            ttl_seconds,
            reference: None,
            metadata: "{}".into(),
        };
        self.run(command, now).map(|_| hold_id)
    }

    fn capture(&mut self, hold_id: &HoldId, amount: &str, is_final: bool, now: Timestamp) -> Result<Hold, Rejection> {
        let command =
            Command::Capture { hold_id: hold_id.clone(), amount: cr(amount), is_final, overage: Overage::Reject };
        match self.run(command, now)? {
            Outcome::Captured { hold } => Ok(hold),
            other => panic!("{other:?}"),
        }
    }

    fn balances(&self, now: Timestamp) -> Balances {
        view(self.state.as_ref().unwrap(), now).materialized()
    }
}

fn balances(balance: &str, held: &str, available: &str) -> Balances {
    Balances { balance: cr(balance), held: cr(held), available: cr(available) }
}

#[test]
fn partial_then_final_capture() {
    // Balance 20, hold 15, capture 10 not final → remaining 5 pending, balance 10, available 5;
    // final capture 3 → captured, balance 7, available 7.
    let mut book = Book::new();
    book.grant("20", None, T0);
    let hold_id = book.hold("15", 1200, T0).unwrap();
    let hold = book.capture(&hold_id, "10", false, T0).unwrap();
    assert_eq!((hold.state, hold.remaining, hold.captured), (HoldState::Pending, cr("5"), cr("10")));
    assert_eq!(book.balances(T0), balances("10", "5", "5"));
    let hold = book.capture(&hold_id, "3", true, T0).unwrap();
    assert_eq!((hold.state, hold.remaining, hold.captured), (HoldState::Captured, cr("0"), cr("13")));
    assert_eq!(book.balances(T0), balances("7", "0", "7"));
}

#[test]
fn capture_beyond_hold_is_refused_or_charged_from_available() {
    let mut book = Book::new();
    book.grant("10", None, T0);
    let hold_id = book.hold("4", 1200, T0).unwrap();
    let refused = book.capture(&hold_id, "5", true, T0);
    assert_eq!(refused, Err(Rejection::AmountExceedsHold { requested: cr("5"), remaining: cr("4") }));
    let overage =
        Command::Capture { hold_id: hold_id.clone(), amount: cr("11"), is_final: true, overage: Overage::IfAvailable };
    assert_eq!(book.run(overage, T0), Err(Rejection::InsufficientCredits { required: cr("7"), available: cr("6") }));
    let overage = Command::Capture { hold_id, amount: cr("5"), is_final: true, overage: Overage::IfAvailable };
    book.run(overage, T0).unwrap();
    assert_eq!(book.balances(T0), balances("5", "0", "5"));
}

#[test]
fn expired_hold_counts_zero_and_frees_its_credits() {
    let mut book = Book::new();
    book.grant("10", None, T0);
    let old = book.hold("8", 60, T0).unwrap();
    let later = T0.plus_seconds(60);
    assert_eq!(book.balances(later), balances("10", "0", "10"));
    assert_eq!(book.capture(&old, "1", true, later), Err(Rejection::HoldExpired));
    book.hold("10", 60, later).unwrap();
    let release = book.run(Command::Release { hold_id: old }, later);
    assert_eq!(release, Err(Rejection::HoldNotPending { state: HoldState::Expired }));
}

#[test]
fn release_is_idempotent_and_refuses_captured_holds() {
    let mut book = Book::new();
    book.grant("10", None, T0);
    let hold_id = book.hold("5", 60, T0).unwrap();
    let first = book.run(Command::Release { hold_id: hold_id.clone() }, T0).unwrap();
    assert!(matches!(first, Outcome::Released { changed: true, .. }));
    let second = book.run(Command::Release { hold_id: hold_id.clone() }, T0).unwrap();
    assert!(matches!(second, Outcome::Released { changed: false, .. }));
    let captured = book.hold("5", 60, T0).unwrap();
    book.capture(&captured, "5", true, T0).unwrap();
    let release = book.run(Command::Release { hold_id: captured }, T0);
    assert_eq!(release, Err(Rejection::HoldNotPending { state: HoldState::Captured }));
}

#[test]
fn grants_are_spent_by_priority_then_expiry() {
    let mut book = Book::new();
    let soon = T0.plus_seconds(100);
    book.grant("5", None, T0);
    book.grant("5", Some(soon), T0);
    // The expiring grant is spent first, so after its expiry nothing is lost.
    let hold_id = book.hold("5", 1000, T0).unwrap();
    book.capture(&hold_id, "5", true, T0).unwrap();
    assert_eq!(book.balances(soon), balances("5", "0", "5"));
}

#[test]
fn a_pinned_grant_expiring_under_a_hold_stays_capturable() {
    let mut book = Book::new();
    let grant_expiry = T0.plus_seconds(100);
    book.grant("10", Some(grant_expiry), T0);
    let hold_id = book.hold("6", 1000, T0).unwrap();
    let after_grant = T0.plus_seconds(200);
    // The free 4 expired; the pinned 6 is still there.
    assert_eq!(book.balances(after_grant), balances("6", "6", "0"));
    let hold = book.capture(&hold_id, "2", true, after_grant).unwrap();
    assert_eq!(hold.state, HoldState::Captured);
    // The 4 the hold did not capture expire when it ends.
    assert_eq!(book.balances(after_grant), balances("0", "0", "0"));
    let expired: Vec<_> = book.journal.iter().filter(|entry| entry.kind == EntryKind::GrantExpired).collect();
    assert_eq!(expired.iter().map(|entry| entry.amount).collect::<Vec<_>>(), [cr("4"), cr("4")]);
}

#[test]
fn refund_applies_once_and_never_beyond_the_capture() {
    let mut book = Book::new();
    book.grant("10", None, T0);
    let hold_id = book.hold("5", 60, T0).unwrap();
    book.capture(&hold_id, "3", true, T0).unwrap();
    let refund = |amount: &str, reference: &str| Command::Refund {
        account_id: account(),
        grant_id: GrantId::parse(&format!("r-{reference}-{amount}")).unwrap(),
        amount: cr(amount),
        reference: Reference::parse(reference).unwrap(),
        hold_id: Some(hold_id.clone()),
        priority: 100,
        expires_at: None,
    };
    assert_eq!(
        book.run(refund("4", "a"), T0),
        Err(Rejection::RefundExceedsCharges { requested: cr("4"), refundable: cr("3") })
    );
    assert!(matches!(book.run(refund("2", "a"), T0), Ok(Outcome::Refunded { created: true, .. })));
    assert!(matches!(book.run(refund("2", "a"), T0), Ok(Outcome::Refunded { created: false, .. })));
    assert_eq!(book.balances(T0), balances("9", "0", "9"));
    assert_eq!(
        book.run(refund("2", "b"), T0),
        Err(Rejection::RefundExceedsCharges { requested: cr("2"), refundable: cr("1") })
    );
}

#[test]
fn unknown_accounts_and_holds_are_rejected() {
    let command = Command::Debit { account_id: account(), amount: cr("1"), reference: None };
    assert_eq!(execute(None, &command, T0, None), Err(Rejection::AccountNotFound));
    let mut book = Book::new();
    book.grant("1", None, T0);
    let missing = HoldId::parse("nope").unwrap();
    assert_eq!(book.run(Command::Release { hold_id: missing }, T0), Err(Rejection::HoldNotFound));
}

#[test]
fn balance_cannot_pass_its_maximum() {
    let mut book = Book::new();
    book.grant("1000000000000", None, T0);
    let command = Command::Grant {
        account_id: account(),
        grant_id: GrantId::parse("over").unwrap(),
        amount: cr("0.000001"),
        priority: 0,
        expires_at: None,
        reference: None,
        metadata: "{}".into(),
    };
    assert_eq!(book.run(command, T0), Err(Rejection::BalanceLimit));
}

/// `execute_in_place` is `execute` on a kept state: the same answer and, on success, the same
/// state and changes; on a rejection the state is exactly as it was, also when an expiry was due
/// (the one change the ledger makes before it may still reject). Commands come from a fixed
/// pseudo-random script over a few holds and grants, some expiring, at advancing times.
#[test]
fn execute_in_place_agrees_with_execute_and_keeps_the_state_on_a_rejection() {
    let mut seed: u64 = 0x5EED_1A9E;
    let mut next = |bound: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    let mut kept: Option<AccountState> = None;
    let mut known_holds: Vec<Hold> = Vec::new();
    let (mut now, mut rejected, mut restored) = (T0, 0, 0);
    for step in 0..4_000_u64 {
        now = now.plus_seconds(next(20));
        let hold_id = HoldId::parse(&format!("h{}", next(12))).unwrap();
        let amount = cr(&(1 + next(30)).to_string());
        let command = match next(8) {
            0 => Command::Grant {
                account_id: account(),
                grant_id: GrantId::parse(&format!("g{step}")).unwrap(),
                amount,
                priority: i32::try_from(next(3)).unwrap(),
                expires_at: (next(2) == 0).then(|| now.plus_seconds(next(120))),
                reference: None,
                metadata: "{}".into(),
            },
            1 | 2 => Command::Hold {
                account_id: account(),
                hold_id: hold_id.clone(),
                amount,
                ttl_seconds: next(90),
                reference: None,
                metadata: "{}".into(),
            },
            3 => {
                Command::Capture { hold_id: hold_id.clone(), amount, is_final: next(2) == 0, overage: Overage::Reject }
            }
            4 => Command::Release { hold_id: hold_id.clone() },
            5 => Command::Extend { hold_id: hold_id.clone(), ttl_seconds: next(60) },
            6 => Command::Debit { account_id: account(), amount, reference: None },
            _ => Command::Refund {
                account_id: account(),
                grant_id: GrantId::parse(&format!("r{step}")).unwrap(),
                amount,
                reference: Reference::parse(&format!("ref{}", next(5))).unwrap(),
                hold_id: None,
                priority: 0,
                expires_at: None,
            },
        };
        // Like a store: the named hold is loaded whatever its state.
        if let (Some(state), Some(named)) = (kept.as_mut(), command.hold_to_load()) {
            if state.hold(named).is_none() {
                if let Some(hold) = known_holds.iter().find(|hold| &hold.hold_id == named) {
                    state.holds.push(hold.clone());
                }
            }
        }
        let before = kept.clone();
        let expected = execute(before.clone(), &command, now, Some("key"));
        let actual = execute_in_place(&mut kept, &command, now, Some("key"));
        match (expected, actual) {
            (Ok(applied), Ok((outcome, changes))) => {
                assert_eq!((&applied.outcome, &applied.changes), (&outcome, &changes), "step {step}: {command:?}");
                assert_eq!(kept.as_ref(), Some(&applied.state), "step {step}: {command:?}");
                for hold in &applied.state.holds {
                    known_holds.retain(|known| known.hold_id != hold.hold_id);
                    known_holds.push(hold.clone());
                }
            }
            (Err(expected), Err(actual)) => {
                assert_eq!(expected, actual, "step {step}: {command:?}");
                assert_eq!(kept, before, "step {step}: a rejection changed the kept state");
                rejected += 1;
                if before.as_ref().is_some_and(|state| !advance(&mut state.clone(), now).is_empty()) {
                    restored += 1;
                }
            }
            (expected, actual) => panic!("step {step}: {command:?}: execute {expected:?}, in place {actual:?}"),
        }
        // The kept state is what a store keeps between commands: pending holds only.
        if let Some(state) = kept.as_mut() {
            state.holds.retain(|hold| hold.state == HoldState::Pending);
        }
    }
    // The script reaches both kinds of rejection, or the test proves nothing.
    assert!(rejected > 100 && restored > 10, "{rejected} rejections, {restored} with an expiry due");
}
