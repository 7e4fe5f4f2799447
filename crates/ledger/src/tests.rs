//! Scenario tests of the pure ledger: the original's ledger checks and the edge cases of expiry.

use crate::*;

const T0: Timestamp = Timestamp::from_micros(1_700_000_000_000_000);

fn cr(text: &str) -> Amount {
    Amount::parse(text).unwrap()
}

fn account() -> AccountId {
    AccountId::parse("u").unwrap()
}

/// Which pending holds a [`Book`] loads into the state it decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loading {
    /// Every pending hold (the contract before issue 16: the reference for the property below).
    All,
    /// The pending holds due at `now` and the named hold only (what stores load).
    DueAndNamed,
}

/// The pending holds of `holds` a store loads for `command` at `now`, and the named hold in any
/// state.
fn loaded_holds(holds: &[Hold], loading: Loading, named: Option<&HoldId>, now: Timestamp) -> Vec<Hold> {
    holds
        .iter()
        .filter(|hold| {
            let pending = hold.state == HoldState::Pending;
            let wanted = match loading {
                Loading::All => pending,
                Loading::DueAndNamed => pending && hold.expires_at <= now,
            };
            wanted || Some(&hold.hold_id) == named
        })
        .cloned()
        .collect()
}

struct Book {
    loading: Loading,
    /// The account's row and live grants, no holds: those are in `holds`.
    state: Option<AccountState>,
    journal: Vec<Entry>,
    /// Every hold ever seen, as last written (stores keep resolved holds too).
    holds: Vec<Hold>,
    next_id: u32,
}

impl Book {
    fn new() -> Book {
        Book::loading(Loading::DueAndNamed)
    }

    fn loading(loading: Loading) -> Book {
        Book { loading, state: None, journal: Vec::new(), holds: Vec::new(), next_id: 0 }
    }

    /// The state a store assembles for `named` at `now`.
    fn loaded(&self, named: Option<&HoldId>, now: Timestamp) -> Option<AccountState> {
        let mut state = self.state.clone()?;
        state.holds = loaded_holds(&self.holds, self.loading, named, now);
        Some(state)
    }

    fn run(&mut self, command: Command, now: Timestamp) -> Result<Outcome, Rejection> {
        // Like a store: the row, live grants, pending holds due at `now` (or all of them), and the
        // targeted hold whatever its state.
        let state = self.loaded(command.hold_to_load(), now);
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
        state.grants.retain(|grant| grant.live);
        state.holds.clear();
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
            held: state.held,
            pinned: state
                .grants
                .iter()
                .filter(|grant| !grant.pinned.is_zero())
                .map(|grant| (grant.grant_id.clone(), grant.pinned))
                .collect(),
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
        view(&self.loaded(None, now).unwrap(), now).materialized()
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
        // Like a store: the pending holds due at `now`, and the named hold whatever its state.
        if let Some(state) = kept.as_mut() {
            state.holds = loaded_holds(&known_holds, Loading::DueAndNamed, command.hold_to_load(), now);
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
        // The kept state is what a store keeps between commands: the row and live grants.
        if let Some(state) = kept.as_mut() {
            state.grants.retain(|grant| grant.live);
            state.holds.clear();
        }
    }
    // The script reaches both kinds of rejection, or the test proves nothing.
    assert!(rejected > 100 && restored > 10, "{rejected} rejections, {restored} with an expiry due");
}

/// One step of [`loading_only_due_and_named_holds_decides_as_loading_all`]'s scripts.
#[derive(Clone, Debug)]
enum Step {
    Grant { credits: u64, expires_in_seconds: Option<u64> },
    Hold { hold: u8, credits: u64, ttl_seconds: u64 },
    Capture { hold: u8, credits: u64, is_final: bool },
    Release { hold: u8 },
    Extend { hold: u8, ttl_seconds: u64 },
    Debit { credits: u64 },
    Refund { hold: Option<u8>, credits: u64 },
    Sweep,
}

fn step() -> impl proptest::strategy::Strategy<Value = (u64, Step)> {
    use proptest::prelude::*;
    let step = prop_oneof![
        (1..40_u64, proptest::option::of(1..150_u64))
            .prop_map(|(credits, expires_in_seconds)| Step::Grant { credits, expires_in_seconds }),
        (0..16_u8, 1..20_u64, 0..120_u64).prop_map(|(hold, credits, ttl_seconds)| Step::Hold {
            hold,
            credits,
            ttl_seconds
        }),
        (0..16_u8, 1..20_u64, any::<bool>()).prop_map(|(hold, credits, is_final)| Step::Capture {
            hold,
            credits,
            is_final
        }),
        (0..16_u8).prop_map(|hold| Step::Release { hold }),
        (0..16_u8, 0..90_u64).prop_map(|(hold, ttl_seconds)| Step::Extend { hold, ttl_seconds }),
        (1..10_u64).prop_map(|credits| Step::Debit { credits }),
        (proptest::option::of(0..16_u8), 1..10_u64).prop_map(|(hold, credits)| Step::Refund { hold, credits }),
        Just(Step::Sweep),
    ];
    (0..30_u64, step)
}

impl Book {
    /// Runs one scripted step at `now`; the hold ids are the script's, so two books agree on them.
    fn step(&mut self, index: usize, step: &Step, now: Timestamp) -> Result<Outcome, Rejection> {
        let hold_id = |hold: u8| HoldId::parse(&format!("h{hold}")).unwrap();
        let command = match step {
            Step::Grant { credits, expires_in_seconds } => Command::Grant {
                account_id: account(),
                grant_id: GrantId::parse(&format!("s{index}")).unwrap(),
                amount: Amount::from_credits(*credits),
                priority: 100,
                expires_at: expires_in_seconds.map(|seconds| now.plus_seconds(seconds)),
                reference: None,
                metadata: "{}".into(),
            },
            Step::Hold { hold, credits, ttl_seconds } => Command::Hold {
                account_id: account(),
                hold_id: hold_id(*hold),
                amount: Amount::from_credits(*credits),
                ttl_seconds: *ttl_seconds,
                reference: None,
                metadata: "{}".into(),
            },
            Step::Capture { hold, credits, is_final } => Command::Capture {
                hold_id: hold_id(*hold),
                amount: Amount::from_credits(*credits),
                is_final: *is_final,
                overage: Overage::IfAvailable,
            },
            Step::Release { hold } => Command::Release { hold_id: hold_id(*hold) },
            Step::Extend { hold, ttl_seconds } => {
                Command::Extend { hold_id: hold_id(*hold), ttl_seconds: *ttl_seconds }
            }
            Step::Debit { credits } => {
                Command::Debit { account_id: account(), amount: Amount::from_credits(*credits), reference: None }
            }
            Step::Refund { hold, credits } => Command::Refund {
                account_id: account(),
                grant_id: GrantId::parse(&format!("r{index}")).unwrap(),
                amount: Amount::from_credits(*credits),
                reference: Reference::parse(&format!("ref{index}")).unwrap(),
                hold_id: hold.map(hold_id),
                priority: 0,
                expires_at: None,
            },
            Step::Sweep => Command::Sweep { account_id: account() },
        };
        // A hold id the script already used is left alone: ids are the caller's to keep unique.
        if let Command::Hold { hold_id, .. } = &command {
            if self.holds.iter().any(|hold| &hold.hold_id == hold_id) {
                return Err(Rejection::HoldNotFound);
            }
        }
        self.run(command, now)
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The issue-16 contract: a state carrying only the pending holds due at `now` and the named
    /// hold decides every command exactly as one carrying every pending hold — the same outcome
    /// or rejection, the same journal entries, the same holds and the same figures after — and
    /// both pass `verify_account` (with the kept `held` and `pinned`) after every step.
    #[test]
    fn loading_only_due_and_named_holds_decides_as_loading_all(
        steps in proptest::collection::vec(step(), 1..80)
    ) {
        let mut all = Book::loading(Loading::All);
        let mut due = Book::loading(Loading::DueAndNamed);
        all.grant("50", None, T0);
        due.grant("50", None, T0);
        let mut now = T0;
        for (index, (advance_seconds, step)) in steps.iter().enumerate() {
            now = now.plus_seconds(*advance_seconds);
            let expected = all.step(index, step, now);
            let actual = due.step(index, step, now);
            proptest::prop_assert_eq!(&expected, &actual, "step {}: {:?}", index, step);
            proptest::prop_assert_eq!(&all.journal, &due.journal);
            proptest::prop_assert_eq!(&all.holds, &due.holds);
            proptest::prop_assert_eq!(all.balances(now), due.balances(now));
            let (all_state, due_state) = (all.state.as_ref().unwrap(), due.state.as_ref().unwrap());
            proptest::prop_assert_eq!(all_state.held, due_state.held);
            proptest::prop_assert_eq!(&all_state.grants, &due_state.grants);
        }
    }
}

/// `verify_account` reports a kept `held` or `pinned` that disagrees with the pending holds: one
/// violation for each figure off, none when they agree.
#[test]
fn verify_reports_kept_figures_that_disagree_with_the_holds() {
    let mut book = Book::new();
    book.grant("10", None, T0);
    book.hold("4", 60, T0).unwrap();
    let state = book.state.clone().unwrap();
    let grant_id = state.grants[0].grant_id.clone();
    let stored = |held: &str, pinned: &str| StoredAccount {
        account_id: state.account_id.clone(),
        totals: state.totals,
        free: cr("6"),
        held: cr(held),
        pinned: if pinned == "0" { Vec::new() } else { vec![(grant_id.clone(), cr(pinned))] },
        holds: book.holds.clone(),
    };
    assert!(verify_account(&book.journal, &stored("4", "4")).is_empty());
    let violations = verify_account(&book.journal, &stored("5", "4"));
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].detail.contains("held"), "{violations:?}");
    let violations = verify_account(&book.journal, &stored("4", "3"));
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].detail.contains("pinned"), "{violations:?}");
    assert_eq!(verify_account(&book.journal, &stored("4", "0")).len(), 1, "a pin missing from its grant");
}

/// An allowance as the store hands it to the ledger: `due` is the period `[start, end)`.
fn allowance_due(amount: &str, rollover: Rollover, start: Timestamp, end: Timestamp) -> Allowance {
    Allowance {
        allowance_id: AllowanceId::parse("al1").unwrap(),
        account_id: account(),
        amount: cr(amount),
        priority: 0,
        rollover,
        schedule: "{}".to_owned(),
        starts_at: start,
        ends_at: None,
        reference: None,
        plan_id: None,
        created_at: start,
        granted_period: None,
        next_due_at: Some(start),
        due: Some(AllowancePeriod {
            start,
            end,
            grant: Some(PeriodGrant {
                grant_id: GrantId::parse(&format!("al1.{}", start.micros())).unwrap(),
                reference: Reference::parse(&format!("al1:{}", start.micros())).unwrap(),
            }),
        }),
    }
}

/// A due allowance period is granted by the decision that sees it, at the period's start, once;
/// a rejected command leaves it ungranted (the state exactly as before), and a view shows it.
#[test]
fn a_due_allowance_is_granted_once_and_a_rejection_leaves_it_due() {
    let day = 86_400_000_000;
    let mut state = Some(AccountState::new(account(), T0));
    state.as_mut().unwrap().allowances.push(allowance_due("10", Rollover::None, T0, T0.plus_micros(day)));
    let before = state.clone();
    let now = T0.plus_seconds(60);
    let debit = |credits: &str| Command::Debit { account_id: account(), amount: cr(credits), reference: None };
    let rejected = execute_in_place(&mut state, &debit("11"), now, None);
    assert_eq!(rejected, Err(Rejection::InsufficientCredits { required: cr("11"), available: cr("10") }));
    assert_eq!(state, before, "a rejection changes nothing, the due grant included");
    assert_eq!(view(state.as_ref().unwrap(), now).materialized().available, cr("10"));

    let (_, changes) = execute_in_place(&mut state, &debit("4"), now, None).unwrap();
    let kinds: Vec<_> = changes.entries.iter().map(|entry| (entry.kind, entry.at)).collect();
    assert_eq!(kinds, [(EntryKind::Grant, T0), (EntryKind::Debit, now)]);
    assert_eq!(changes.allowances.len(), 1);
    let granted = state.as_ref().unwrap().allowances[0].clone();
    assert_eq!((granted.granted_period, granted.next_due_at), (Some(T0), Some(T0.plus_micros(day))));
    let (_, changes) = execute_in_place(&mut state, &debit("1"), now, None).unwrap();
    assert_eq!(changes.entries.len(), 1, "the period is not granted twice");
    assert_eq!(state.unwrap().materialized().available, cr("5"));
}

/// Rollover `cap`: when a period starts, the allowance's earlier grants keep at most the cap
/// (oldest expire first), then the new period's credits arrive.
#[test]
fn a_capped_rollover_trims_earlier_periods_first() {
    let day = 86_400_000_000;
    let mut state = Some(AccountState::new(account(), T0));
    let first = allowance_due("10", Rollover::Cap(cr("3")), T0, T0.plus_micros(day));
    state.as_mut().unwrap().allowances.push(first);
    let sweep = Command::Sweep { account_id: account() };
    execute_in_place(&mut state, &sweep, T0, None).unwrap();
    let next = T0.plus_micros(day);
    let mut second = allowance_due("10", Rollover::Cap(cr("3")), next, next.plus_micros(day));
    second.granted_period = Some(T0);
    second.created_at = T0;
    state.as_mut().unwrap().allowances[0].due = second.due;
    let (_, changes) = execute_in_place(&mut state, &sweep, next, None).unwrap();
    let kinds: Vec<_> = changes.entries.iter().map(|entry| (entry.kind, entry.amount)).collect();
    assert_eq!(kinds, [(EntryKind::GrantExpired, cr("7")), (EntryKind::Grant, cr("10"))]);
    assert_eq!(state.unwrap().materialized().available, cr("13"));
}
