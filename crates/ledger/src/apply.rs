//! The ledger's decision procedure: `execute(state, command, now) -> Applied | Rejection`.
//!
//! It is a pure function of its inputs. Stores load an [`AccountState`] under the account's lock,
//! call [`execute`], and persist what [`Changes`] names. A rejection changes nothing, so stores
//! simply drop the state they loaded — or, deciding several commands in a row on one state,
//! keep it: [`execute_in_place`] leaves it exactly as it was on a rejection, without copying it.

use crate::{
    AccountId, AccountState, Allocation, Allowance, AllowanceId, Amount, Command, Entry, EntryKind, Grant, GrantId,
    GrantKind, Hold, HoldId, HoldState, Outcome, Overage, Reference, Rejection, Rollover, Timestamp,
    ALLOWANCES_ACTIVE_MAX,
};

/// What a successful command changed. Stores write the listed grants and holds as they stand in
/// [`Applied::state`], the account row (always: totals may move) and the entries (assigning
/// `seq` in order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub account_created: bool,
    pub grants: Vec<GrantId>,
    pub holds: Vec<HoldId>,
    pub allowances: Vec<AllowanceId>,
    pub entries: Vec<Entry>,
    /// The account row's settings changed (the low-balance threshold).
    pub settings: bool,
}

impl Changes {
    fn touch_allowance(&mut self, allowance_id: &AllowanceId) {
        if !self.allowances.contains(allowance_id) {
            self.allowances.push(allowance_id.clone());
        }
    }

    fn touch_grant(&mut self, grant_id: &GrantId) {
        if !self.grants.contains(grant_id) {
            self.grants.push(grant_id.clone());
        }
    }

    fn touch_hold(&mut self, hold_id: &HoldId) {
        if !self.holds.contains(hold_id) {
            self.holds.push(hold_id.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.account_created
            && self.grants.is_empty()
            && self.holds.is_empty()
            && self.allowances.is_empty()
            && self.entries.is_empty()
            && !self.settings
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub state: AccountState,
    pub outcome: Outcome,
    pub changes: Changes,
}

/// Appends entries while tracking the running balance and held, so every entry carries the
/// figures right after it.
struct Journal<'a> {
    account_id: AccountId,
    balance: i128,
    held: i128,
    idempotency_key: Option<&'a str>,
}

impl Journal<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        changes: &mut Changes,
        kind: EntryKind,
        amount: Amount,
        hold_id: Option<&HoldId>,
        grant_id: Option<&GrantId>,
        reference: Option<&Reference>,
        at: Timestamp,
    ) {
        let (balance_delta, held_delta) = kind.deltas(amount);
        self.balance += balance_delta;
        self.held += held_delta;
        assert!(self.held >= 0, "held went negative");
        assert!(self.balance >= self.held, "balance went below held");
        changes.entries.push(Entry {
            seq: 0,
            account_id: self.account_id.clone(),
            kind,
            amount,
            hold_id: hold_id.cloned(),
            grant_id: grant_id.cloned(),
            reference: reference.cloned(),
            balance_after: to_amount(self.balance),
            held_after: to_amount(self.held),
            at,
            idempotency_key: self.idempotency_key.map(str::to_owned),
        });
    }
}

fn to_amount(value: i128) -> Amount {
    Amount::from_micros(u64::try_from(value).expect("journal running sum out of range"))
}

/// Applies `command` at `now` to `state` (None when the account does not exist yet).
pub fn execute(
    state: Option<AccountState>,
    command: &Command,
    now: Timestamp,
    idempotency_key: Option<&str>,
) -> Result<Applied, Rejection> {
    let (mut state, account_created) = match state {
        Some(state) => (state, false),
        None => (new_account(command, now)?, true),
    };
    let (outcome, changes) = decide(&mut state, account_created, command, now, idempotency_key)?;
    Ok(Applied { state, outcome, changes })
}

/// [`execute`] on a state the caller keeps, for stores that decide several commands of one
/// account in a row: on success `state` is the new state; on a rejection it is exactly as it was
/// (a rejection changes nothing). The state is copied only when an expiry is due at `now`: that
/// is the one change the ledger makes before it may still reject; every check of a command comes
/// before its first change.
pub fn execute_in_place(
    state: &mut Option<AccountState>,
    command: &Command,
    now: Timestamp,
    idempotency_key: Option<&str>,
) -> Result<(Outcome, Changes), Rejection> {
    let Some(existing) = state.as_mut() else {
        let mut created = new_account(command, now)?;
        let decided = decide(&mut created, true, command, now, idempotency_key)?;
        *state = Some(created);
        return Ok(decided);
    };
    let before = has_due_expiry(existing, now).then(|| existing.clone());
    // Pair assertion in debug builds (a copy per command is too dear in release): with nothing
    // due, a rejection must leave the state untouched, so no copy is needed to restore it.
    #[cfg(debug_assertions)]
    let untouched = existing.clone();
    match decide(existing, false, command, now, idempotency_key) {
        Ok(decided) => Ok(decided),
        Err(rejection) => {
            match before {
                Some(before) => *existing = before,
                None => {
                    #[cfg(debug_assertions)]
                    assert_eq!(*existing, untouched, "a rejection changed the state");
                }
            }
            Err(rejection)
        }
    }
}

/// The state of the account a command creates, or `account_not_found`.
fn new_account(command: &Command, now: Timestamp) -> Result<AccountState, Rejection> {
    if !command.creates_account() {
        return Err(Rejection::AccountNotFound);
    }
    let account_id = match command.target() {
        crate::Target::Account(account_id) => account_id,
        crate::Target::Hold(_) => unreachable!("a command that creates an account names it"),
    };
    Ok(AccountState::new(account_id.clone(), now))
}

/// Expiries due at `now`, then the command, on `state`; the outcome and what changed.
fn decide(
    state: &mut AccountState,
    account_created: bool,
    command: &Command,
    now: Timestamp,
    idempotency_key: Option<&str>,
) -> Result<(Outcome, Changes), Rejection> {
    let mut changes = Changes { account_created, ..Changes::default() };
    let before = state.materialized();
    let mut journal = Journal {
        account_id: state.account_id.clone(),
        balance: i128::from(before.balance.micros()),
        held: i128::from(before.held.micros()),
        idempotency_key,
    };
    advance_with(state, now, &mut journal, &mut changes);
    let outcome = apply_command(state, command, now, &mut journal, &mut changes)?;
    refresh_liveness(state, &mut changes);

    // Pair assertion: the journal's running figures and the state's own figures agree.
    let after = state.materialized();
    assert_loaded_holds_fit(state);
    assert_eq!(i128::from(after.balance.micros()), journal.balance, "journal balance disagrees with state");
    assert_eq!(i128::from(after.held.micros()), journal.held, "journal held disagrees with state");
    assert!(after.balance <= Amount::BALANCE_MAX, "balance above its maximum");
    Ok((outcome, changes))
}

/// The loaded pending holds are a part of all of them: their remaining parts fit in `held`, and
/// their allocations on each grant fit in its `pinned`. O(loaded holds × allocations): the due
/// and named holds only.
fn assert_loaded_holds_fit(state: &AccountState) {
    let pending = || state.holds.iter().filter(|hold| hold.state == HoldState::Pending);
    assert!(Amount::sum(pending().map(|hold| hold.remaining)) <= state.held, "loaded holds exceed held");
    for hold in pending() {
        for allocation in &hold.allocations {
            let pinned = state.grant(&allocation.grant_id).map_or(Amount::ZERO, |grant| grant.pinned);
            assert!(allocation.amount <= pinned, "a hold's allocation exceeds its grant's pinned part");
        }
    }
}

/// Records every expiry due at `now`; returns the changes (empty when nothing was due).
pub fn advance(state: &mut AccountState, now: Timestamp) -> Changes {
    let before = state.materialized();
    let mut journal = Journal {
        account_id: state.account_id.clone(),
        balance: i128::from(before.balance.micros()),
        held: i128::from(before.held.micros()),
        idempotency_key: None,
    };
    let mut changes = Changes::default();
    advance_with(state, now, &mut journal, &mut changes);
    refresh_liveness(state, &mut changes);
    changes
}

/// The account as it reads at `now`: expiries applied, nothing persisted.
pub fn view(state: &AccountState, now: Timestamp) -> AccountState {
    let mut copy = state.clone();
    let _ = advance(&mut copy, now);
    copy
}

/// The hold as it reads at `now` (a pending hold past its expiry reads as expired).
pub fn view_hold(hold: &Hold, now: Timestamp) -> Hold {
    let mut copy = hold.clone();
    if copy.state == HoldState::Pending && copy.expires_at <= now {
        copy.state = HoldState::Expired;
        copy.remaining = Amount::ZERO;
        copy.allocations.clear();
    }
    copy
}

/// A pending hold at or past its expiry: [`advance`] expires it.
fn hold_due(hold: &Hold, now: Timestamp) -> bool {
    hold.state == HoldState::Pending && hold.expires_at <= now
}

/// A grant at or past its expiry with free credits: [`advance`] expires them.
fn grant_due(grant: &Grant, now: Timestamp) -> bool {
    grant.is_expired_at(now) && !grant.free.is_zero()
}

/// Whether [`advance`] at `now` would change anything.
fn has_due_expiry(state: &AccountState, now: Timestamp) -> bool {
    state.holds.iter().any(|hold| hold_due(hold, now))
        || state.grants.iter().any(|grant| grant_due(grant, now))
        || state.allowances.iter().any(|allowance| allowance.ungranted_due().is_some())
}

fn advance_with(state: &mut AccountState, now: Timestamp, journal: &mut Journal<'_>, changes: &mut Changes) {
    // Holds first, in expiry order, so credits they return to a grant that has itself expired by
    // then expire at the hold's expiry.
    let mut due: Vec<usize> = (0..state.holds.len()).filter(|&index| hold_due(&state.holds[index], now)).collect();
    due.sort_by_key(|&index| (state.holds[index].expires_at, state.holds[index].hold_id.clone()));
    for index in due {
        let hold = &mut state.holds[index];
        let at = hold.expires_at;
        let remaining = hold.remaining;
        let allocations = std::mem::take(&mut hold.allocations);
        hold.state = HoldState::Expired;
        hold.remaining = Amount::ZERO;
        let hold_id = hold.hold_id.clone();
        state.held = state.held.minus(remaining);
        changes.touch_hold(&hold_id);
        journal.push(changes, EntryKind::Expire, remaining, Some(&hold_id), None, None, at);
        return_allocations(&mut state.grants, allocations, at, journal, changes);
    }
    let mut expiring: Vec<usize> =
        (0..state.grants.len()).filter(|&index| grant_due(&state.grants[index], now)).collect();
    expiring.sort_by_key(|&index| state.grants[index].spend_order_key_owned());
    for index in expiring {
        let grant = &mut state.grants[index];
        let amount = std::mem::replace(&mut grant.free, Amount::ZERO);
        let at = grant.expires_at.expect("only grants with an expiry expire");
        let grant_id = grant.grant_id.clone();
        changes.touch_grant(&grant_id);
        journal.push(changes, EntryKind::GrantExpired, amount, None, Some(&grant_id), None, at);
    }
    // Allowances last: the period that ended expired above (rollover none) before the next
    // one's credits arrive.
    for index in 0..state.allowances.len() {
        grant_allowance_period(state, index, now, journal, changes);
    }
}

/// Grants allowance `index`'s due period if it is still missing (after trimming earlier
/// periods' credits to its rollover cap). A period whose credits would pass the balance limit
/// is left ungranted (it is tried again at the next decision).
fn grant_allowance_period(
    state: &mut AccountState,
    index: usize,
    now: Timestamp,
    journal: &mut Journal<'_>,
    changes: &mut Changes,
) {
    let allowance = &state.allowances[index];
    let Some(due) = allowance.ungranted_due().cloned() else { return };
    // Contract with the store: `due` is the period at this decision's `now`, named when ungranted.
    assert!(due.start <= now && now < due.end, "an allowance's due period does not contain now");
    let named = due.grant.clone().expect("the store names an ungranted period's grant");
    assert!(allowance.starts_at <= now && !allowance.has_ended_at(now), "an allowance due outside its life");
    let at = due.start.max(allowance.created_at);
    if let Rollover::Cap(cap) = allowance.rollover {
        let prefix = allowance.grant_reference_prefix();
        trim_to_cap(state, &prefix, cap, at, journal, changes);
    }
    let allowance = &state.allowances[index];
    if check_balance_room(state, allowance.amount).is_err() {
        return;
    }
    assert!(state.grant(&named.grant_id).is_none(), "a period's grant exists but the allowance says it is missing");
    let grant = Grant {
        grant_id: named.grant_id.clone(),
        account_id: state.account_id.clone(),
        kind: GrantKind::Allowance,
        amount: allowance.amount,
        free: allowance.amount,
        pinned: Amount::ZERO,
        priority: allowance.priority,
        expires_at: match allowance.rollover {
            Rollover::None => Some(due.end),
            Rollover::Keep | Rollover::Cap(_) => None,
        },
        created_at: at,
        reference: Some(named.reference.clone()),
        metadata: "{}".to_owned(),
        live: true,
        voided_at: None,
    };
    let amount = grant.amount;
    state.grants.push(grant);
    changes.touch_grant(&named.grant_id);
    journal.push(changes, EntryKind::Grant, amount, None, Some(&named.grant_id), Some(&named.reference), at);
    let allowance = &mut state.allowances[index];
    allowance.granted_period = Some(due.start);
    allowance.next_due_at = next_due_after(allowance, due.end);
    changes.touch_allowance(&allowance.allowance_id);
}

/// When an allowance next needs a decision, once its period ending at `period_end` is granted.
fn next_due_after(allowance: &Allowance, period_end: Timestamp) -> Option<Timestamp> {
    match allowance.ends_at {
        Some(ends_at) if ends_at <= period_end => None,
        _ => Some(period_end),
    }
}

/// Expires the free credits of the grants whose reference starts with `prefix` (one
/// allowance's earlier periods) above `cap` in total, oldest first.
fn trim_to_cap(
    state: &mut AccountState,
    prefix: &str,
    cap: Amount,
    at: Timestamp,
    journal: &mut Journal<'_>,
    changes: &mut Changes,
) {
    let of_allowance = |grant: &Grant| {
        grant.kind == GrantKind::Allowance
            && grant.reference.as_ref().is_some_and(|reference| reference.as_str().starts_with(prefix))
    };
    let total = Amount::sum(state.grants.iter().filter(|grant| of_allowance(grant)).map(|grant| grant.free));
    if total <= cap {
        return;
    }
    let mut excess = total.minus(cap);
    let mut order: Vec<usize> = (0..state.grants.len()).filter(|&index| of_allowance(&state.grants[index])).collect();
    order.sort_by_key(|&index| (state.grants[index].created_at, state.grants[index].grant_id.clone()));
    for index in order {
        if excess.is_zero() {
            break;
        }
        let grant = &mut state.grants[index];
        let take = grant.free.min(excess);
        if take.is_zero() {
            continue;
        }
        grant.free = grant.free.minus(take);
        excess = excess.minus(take);
        let grant_id = grant.grant_id.clone();
        changes.touch_grant(&grant_id);
        journal.push(changes, EntryKind::GrantExpired, take, None, Some(&grant_id), None, at);
    }
    assert!(excess.is_zero(), "the cap trimmed less than the excess");
}

impl Grant {
    fn spend_order_key_owned(&self) -> (i32, i64, i64, String) {
        let (priority, expiry, created, id) = self.spend_order_key();
        (priority, expiry, created, id.to_owned())
    }
}

/// Gives a hold's reserved credits back to their grants (pinned → free). A grant already expired
/// at `at` does not take them back: that part expires now (pinned → expired).
fn return_allocations(
    grants: &mut [Grant],
    allocations: Vec<Allocation>,
    at: Timestamp,
    journal: &mut Journal<'_>,
    changes: &mut Changes,
) {
    for allocation in allocations {
        let grant = grants
            .iter_mut()
            .find(|grant| grant.grant_id == allocation.grant_id)
            .expect("a pending hold's grant is always loaded");
        changes.touch_grant(&grant.grant_id);
        grant.pinned = grant.pinned.minus(allocation.amount);
        if grant.is_expired_at(at) {
            let grant_id = grant.grant_id.clone();
            journal.push(changes, EntryKind::GrantExpired, allocation.amount, None, Some(&grant_id), None, at);
        } else {
            grant.free = grant.free.plus(allocation.amount);
        }
    }
}

fn available(grants: &[Grant]) -> Amount {
    Amount::sum(grants.iter().map(|grant| grant.free))
}

/// What credits taken from free become.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Reserved by a hold: free → pinned.
    Pinned,
    /// Charged now (a debit, a capture's overage): free → spent.
    Spent,
}

/// Takes `amount` from free credits in spend order. The caller has checked availability.
fn take_free(grants: &mut [Grant], amount: Amount, taken: Taken, changes: &mut Changes) -> Vec<Allocation> {
    assert!(available(grants) >= amount, "take_free beyond available");
    let mut order: Vec<usize> = (0..grants.len()).filter(|&index| !grants[index].free.is_zero()).collect();
    order.sort_by_key(|&index| grants[index].spend_order_key_owned());
    let mut allocations = Vec::new();
    let mut left = amount;
    for index in order {
        if left.is_zero() {
            break;
        }
        let grant = &mut grants[index];
        let take = grant.free.min(left);
        grant.free = grant.free.minus(take);
        if taken == Taken::Pinned {
            grant.pinned = grant.pinned.plus(take);
        }
        left = left.minus(take);
        changes.touch_grant(&grant.grant_id);
        allocations.push(Allocation { grant_id: grant.grant_id.clone(), amount: take });
    }
    assert!(left.is_zero(), "free credits ran out while taking");
    allocations
}

/// Consumes `amount` of a hold's allocations, grants in spend order first (pinned → spent).
fn consume_allocations(grants: &mut [Grant], hold: &mut Hold, amount: Amount, changes: &mut Changes) {
    let key = |allocation: &Allocation| {
        grants
            .iter()
            .find(|grant| grant.grant_id == allocation.grant_id)
            .expect("a pending hold's grant is always loaded")
            .spend_order_key_owned()
    };
    hold.allocations.sort_by_key(key);
    let mut left = amount;
    for allocation in &mut hold.allocations {
        let take = allocation.amount.min(left);
        if take.is_zero() {
            continue;
        }
        allocation.amount = allocation.amount.minus(take);
        left = left.minus(take);
        let grant = grants
            .iter_mut()
            .find(|grant| grant.grant_id == allocation.grant_id)
            .expect("a pending hold's grant is always loaded");
        grant.pinned = grant.pinned.minus(take);
        changes.touch_grant(&grant.grant_id);
    }
    assert!(left.is_zero(), "hold allocations ran out while capturing");
    hold.allocations.retain(|allocation| !allocation.amount.is_zero());
}

fn check_balance_room(state: &AccountState, amount: Amount) -> Result<(), Rejection> {
    let balance = state.materialized().balance;
    match balance.checked_add(amount) {
        Some(total) if total <= Amount::BALANCE_MAX => Ok(()),
        _ => Err(Rejection::BalanceLimit),
    }
}

fn hold_index(state: &AccountState, hold_id: &HoldId) -> Result<usize, Rejection> {
    state.holds.iter().position(|hold| &hold.hold_id == hold_id).ok_or(Rejection::HoldNotFound)
}

fn apply_command(
    state: &mut AccountState,
    command: &Command,
    now: Timestamp,
    journal: &mut Journal<'_>,
    changes: &mut Changes,
) -> Result<Outcome, Rejection> {
    match command {
        Command::Grant { grant_id, amount, priority, expires_at, reference, metadata, .. } => {
            if let Some(reference) = reference {
                let existing = state
                    .grants
                    .iter()
                    .find(|grant| grant.kind == GrantKind::Grant && grant.reference.as_ref() == Some(reference));
                if let Some(existing) = existing {
                    return Ok(Outcome::Granted { grant: existing.clone(), created: false });
                }
            }
            if expires_at.is_some_and(|expires_at| expires_at <= now) {
                return Err(Rejection::ExpiryNotInFuture);
            }
            check_balance_room(state, *amount)?;
            let grant = Grant {
                grant_id: grant_id.clone(),
                account_id: state.account_id.clone(),
                kind: GrantKind::Grant,
                amount: *amount,
                free: *amount,
                pinned: Amount::ZERO,
                priority: *priority,
                expires_at: *expires_at,
                created_at: now,
                reference: reference.clone(),
                metadata: metadata.clone(),
                live: true,
                voided_at: None,
            };
            state.grants.push(grant.clone());
            changes.touch_grant(grant_id);
            journal.push(changes, EntryKind::Grant, *amount, None, Some(grant_id), reference.as_ref(), now);
            Ok(Outcome::Granted { grant, created: true })
        }
        Command::Hold { hold_id, amount, ttl_seconds, reference, metadata, .. } => {
            let available = available(&state.grants);
            if available < *amount {
                return Err(Rejection::InsufficientCredits { required: *amount, available });
            }
            let allocations = take_free(&mut state.grants, *amount, Taken::Pinned, changes);
            state.held = state.held.plus(*amount);
            let hold = Hold {
                hold_id: hold_id.clone(),
                account_id: state.account_id.clone(),
                amount: *amount,
                captured: Amount::ZERO,
                remaining: *amount,
                refunded: Amount::ZERO,
                state: HoldState::Pending,
                expires_at: now.plus_seconds(*ttl_seconds),
                created_at: now,
                reference: reference.clone(),
                metadata: metadata.clone(),
                allocations,
            };
            state.holds.push(hold.clone());
            changes.touch_hold(hold_id);
            journal.push(changes, EntryKind::Hold, *amount, Some(hold_id), None, reference.as_ref(), now);
            Ok(Outcome::Held { hold })
        }
        Command::Capture { hold_id, amount, is_final, overage } => {
            let index = hold_index(state, hold_id)?;
            match state.holds[index].state {
                HoldState::Pending => {}
                HoldState::Expired => return Err(Rejection::HoldExpired),
                other => return Err(Rejection::HoldNotPending { state: other }),
            }
            let remaining = state.holds[index].remaining;
            let from_hold = (*amount).min(remaining);
            let excess = amount.minus(from_hold);
            if !excess.is_zero() {
                if *overage == Overage::Reject {
                    return Err(Rejection::AmountExceedsHold { requested: *amount, remaining });
                }
                let available = available(&state.grants);
                if available < excess {
                    return Err(Rejection::InsufficientCredits { required: excess, available });
                }
            }
            consume_allocations(&mut state.grants, &mut state.holds[index], from_hold, changes);
            state.held = state.held.minus(from_hold);
            if !from_hold.is_zero() {
                journal.push(changes, EntryKind::Capture, from_hold, Some(hold_id), None, None, now);
            }
            if !excess.is_zero() {
                let _ = take_free(&mut state.grants, excess, Taken::Spent, changes);
                journal.push(changes, EntryKind::Debit, excess, Some(hold_id), None, None, now);
            }
            let hold = &mut state.holds[index];
            hold.captured = hold.captured.plus(*amount);
            hold.remaining = hold.remaining.minus(from_hold);
            if *is_final {
                let rest = std::mem::replace(&mut hold.remaining, Amount::ZERO);
                let allocations = std::mem::take(&mut hold.allocations);
                hold.state = HoldState::Captured;
                state.held = state.held.minus(rest);
                if !rest.is_zero() {
                    journal.push(changes, EntryKind::Release, rest, Some(hold_id), None, None, now);
                }
                return_allocations(&mut state.grants, allocations, now, journal, changes);
            }
            state.totals.spent = state.totals.spent.plus(*amount);
            changes.touch_hold(hold_id);
            Ok(Outcome::Captured { hold: state.holds[index].clone() })
        }
        Command::Release { hold_id } => {
            let index = hold_index(state, hold_id)?;
            match state.holds[index].state {
                HoldState::Pending => {}
                HoldState::Released => {
                    return Ok(Outcome::Released { hold: state.holds[index].clone(), changed: false });
                }
                other => return Err(Rejection::HoldNotPending { state: other }),
            }
            let hold = &mut state.holds[index];
            let rest = std::mem::replace(&mut hold.remaining, Amount::ZERO);
            let allocations = std::mem::take(&mut hold.allocations);
            hold.state = HoldState::Released;
            state.held = state.held.minus(rest);
            changes.touch_hold(hold_id);
            journal.push(changes, EntryKind::Release, rest, Some(hold_id), None, None, now);
            return_allocations(&mut state.grants, allocations, now, journal, changes);
            Ok(Outcome::Released { hold: state.holds[index].clone(), changed: true })
        }
        Command::Extend { hold_id, ttl_seconds } => {
            let index = hold_index(state, hold_id)?;
            match state.holds[index].state {
                HoldState::Pending => {}
                HoldState::Expired => return Err(Rejection::HoldExpired),
                other => return Err(Rejection::HoldNotPending { state: other }),
            }
            state.holds[index].expires_at = now.plus_seconds(*ttl_seconds);
            changes.touch_hold(hold_id);
            journal.push(changes, EntryKind::Extend, Amount::ZERO, Some(hold_id), None, None, now);
            Ok(Outcome::Extended { hold: state.holds[index].clone() })
        }
        Command::Debit { amount, reference, .. } => {
            let available = available(&state.grants);
            if available < *amount {
                return Err(Rejection::InsufficientCredits { required: *amount, available });
            }
            let _ = take_free(&mut state.grants, *amount, Taken::Spent, changes);
            state.totals.spent = state.totals.spent.plus(*amount);
            journal.push(changes, EntryKind::Debit, *amount, None, None, reference.as_ref(), now);
            Ok(Outcome::Debited {
                account_id: state.account_id.clone(),
                amount: *amount,
                balances: state.materialized(),
            })
        }
        Command::Refund { grant_id, amount, reference, hold_id, priority, expires_at, .. } => {
            let existing = state
                .grants
                .iter()
                .find(|grant| grant.kind == GrantKind::Refund && grant.reference.as_ref() == Some(reference));
            if let Some(existing) = existing {
                return Ok(Outcome::Refunded { grant: existing.clone(), created: false });
            }
            // Never more than the account was charged overall, and with a hold never more than
            // that hold captured.
            let account_refundable = state.totals.spent.minus(state.totals.refunded);
            let refundable = match hold_id {
                Some(hold_id) => {
                    let hold = &state.holds[hold_index(state, hold_id)?];
                    hold.captured.minus(hold.refunded).min(account_refundable)
                }
                None => account_refundable,
            };
            if *amount > refundable {
                return Err(Rejection::RefundExceedsCharges { requested: *amount, refundable });
            }
            check_balance_room(state, *amount)?;
            if let Some(hold_id) = hold_id {
                let index = hold_index(state, hold_id)?;
                state.holds[index].refunded = state.holds[index].refunded.plus(*amount);
                changes.touch_hold(hold_id);
            }
            let expires_at = expires_at.filter(|expires_at| *expires_at > now);
            let grant = Grant {
                grant_id: grant_id.clone(),
                account_id: state.account_id.clone(),
                kind: GrantKind::Refund,
                amount: *amount,
                free: *amount,
                pinned: Amount::ZERO,
                priority: *priority,
                expires_at,
                created_at: now,
                reference: Some(reference.clone()),
                metadata: "{}".to_owned(),
                live: true,
                voided_at: None,
            };
            state.grants.push(grant.clone());
            state.totals.refunded = state.totals.refunded.plus(*amount);
            changes.touch_grant(grant_id);
            journal.push(changes, EntryKind::Refund, *amount, hold_id.as_ref(), Some(grant_id), Some(reference), now);
            Ok(Outcome::Refunded { grant, created: true })
        }
        Command::Sweep { .. } => Ok(Outcome::Swept { entries: changes.entries.len() }),
        Command::VoidGrant { grant_id, .. } => {
            let grant = state
                .grants
                .iter_mut()
                // Free or pinned credits, not the `live` flag: that is brought up to date at the
                // command's end, after the expiries this command just applied.
                .find(|grant| &grant.grant_id == grant_id && !(grant.free.is_zero() && grant.pinned.is_zero()))
                .ok_or(Rejection::GrantNotFound)?;
            if !grant.pinned.is_zero() {
                return Err(Rejection::GrantCreditsHeld { held: grant.pinned });
            }
            let voided = std::mem::replace(&mut grant.free, Amount::ZERO);
            grant.voided_at = Some(now);
            let grant_id = grant.grant_id.clone();
            changes.touch_grant(&grant_id);
            journal.push(changes, EntryKind::Void, voided, None, Some(&grant_id), None, now);
            let mut grant = grant.clone();
            // What the end of the command will store: nothing left, so never loaded again.
            grant.live = false;
            Ok(Outcome::GrantVoided { grant, voided })
        }
        Command::SetLowBalanceThreshold { threshold, .. } => {
            if state.low_balance_threshold != *threshold {
                state.low_balance_threshold = *threshold;
                changes.settings = true;
            }
            Ok(Outcome::LowBalanceThresholdSet {
                account_id: state.account_id.clone(),
                threshold: *threshold,
                balances: state.materialized(),
            })
        }
        Command::CreateAllowance { allowance } => {
            check_allowance_room(state, 1, now)?;
            let index = add_allowance(state, allowance, now, changes);
            grant_allowance_period(state, index, now, journal, changes);
            Ok(Outcome::AllowanceCreated { allowance: Box::new(state.allowances[index].clone()) })
        }
        Command::EndAllowances { allowances, plan, .. } => {
            let targets = allowances_to_end(state, allowances, *plan, now)?;
            let changed = end_allowances(state, &targets, now, changes);
            let allowances = targets.iter().map(|&index| state.allowances[index].clone()).collect();
            Ok(Outcome::AllowancesEnded { allowances, changed })
        }
        Command::SubscribePlan { plan_id, allowances, .. } => {
            let current: Vec<usize> = (0..state.allowances.len())
                .filter(|&index| state.allowances[index].plan_id.is_some() && state.allowances[index].ends_at.is_none())
                .collect();
            if !current.is_empty()
                && current.iter().all(|&index| state.allowances[index].plan_id.as_ref() == Some(plan_id))
            {
                // Already on this plan: nothing changes (a retry without its key lands here).
                let allowances = current.iter().map(|&index| state.allowances[index].clone()).collect();
                return Ok(Outcome::PlanSubscribed { plan_id: plan_id.clone(), allowances, ended: Vec::new() });
            }
            check_allowance_room(state, allowances.len(), now)?;
            let _ = end_allowances(state, &current, now, changes);
            let ended = current.iter().map(|&index| state.allowances[index].clone()).collect();
            let mut created = Vec::with_capacity(allowances.len());
            for allowance in allowances {
                assert_eq!(allowance.plan_id.as_ref(), Some(plan_id), "a plan's allowances name the plan");
                let index = add_allowance(state, allowance, now, changes);
                grant_allowance_period(state, index, now, journal, changes);
                created.push(state.allowances[index].clone());
            }
            Ok(Outcome::PlanSubscribed { plan_id: plan_id.clone(), allowances: created, ended })
        }
    }
}

/// Refuses adding `adding` allowances when the account would then have more than
/// [`ALLOWANCES_ACTIVE_MAX`] that have not ended (one ending at its period's end still counts).
fn check_allowance_room(state: &AccountState, adding: usize, now: Timestamp) -> Result<(), Rejection> {
    let active = state.allowances.iter().filter(|allowance| !allowance.has_ended_at(now)).count();
    if active + adding > ALLOWANCES_ACTIVE_MAX {
        return Err(Rejection::AllowanceLimit);
    }
    Ok(())
}

/// Adds a new allowance as the command brings it (its `due` set by the store), nothing granted
/// yet; returns its index.
fn add_allowance(state: &mut AccountState, allowance: &Allowance, now: Timestamp, changes: &mut Changes) -> usize {
    assert!(state.allowance(&allowance.allowance_id).is_none(), "allowance ids are new");
    assert_eq!(allowance.account_id, state.account_id, "an allowance of another account");
    let mut allowance = allowance.clone();
    allowance.created_at = now;
    allowance.granted_period = None;
    let first_due = allowance.starts_at.max(now);
    allowance.next_due_at =
        allowance.ends_at.map_or(Some(first_due), |ends_at| (first_due < ends_at).then_some(first_due));
    changes.touch_allowance(&allowance.allowance_id);
    state.allowances.push(allowance);
    state.allowances.len() - 1
}

/// The allowances an [`Command::EndAllowances`] ends: those named (each must be one that has
/// not ended) and, with `plan`, every one that came from a plan.
fn allowances_to_end(
    state: &AccountState,
    named: &[AllowanceId],
    plan: bool,
    now: Timestamp,
) -> Result<Vec<usize>, Rejection> {
    let mut targets = Vec::new();
    for allowance_id in named {
        let index = state
            .allowances
            .iter()
            .position(|allowance| &allowance.allowance_id == allowance_id && !allowance.has_ended_at(now))
            .ok_or(Rejection::AllowanceNotFound)?;
        if !targets.contains(&index) {
            targets.push(index);
        }
    }
    if plan {
        for (index, allowance) in state.allowances.iter().enumerate() {
            if allowance.plan_id.is_some() && !allowance.has_ended_at(now) && !targets.contains(&index) {
                targets.push(index);
            }
        }
    }
    Ok(targets)
}

/// Ends each allowance at the end of its current period (at `now` when none is current): it
/// grants nothing after. Returns whether any end moved.
fn end_allowances(state: &mut AccountState, targets: &[usize], now: Timestamp, changes: &mut Changes) -> bool {
    let mut changed = false;
    for &index in targets {
        let allowance = &mut state.allowances[index];
        let end = allowance.due.as_ref().map_or(now, |due| due.end);
        let end = allowance.ends_at.map_or(end, |ends_at| ends_at.min(end));
        if allowance.ends_at == Some(end) {
            continue;
        }
        allowance.ends_at = Some(end);
        allowance.next_due_at = allowance.next_due_at.filter(|next| *next < end);
        changed = true;
        changes.touch_allowance(&allowance.allowance_id);
    }
    changed
}

/// Recomputes each grant's `live` flag: live while it has free credits or a pending hold pins
/// some (O(grants): `pinned` is kept, no hold is looked at).
fn refresh_liveness(state: &mut AccountState, changes: &mut Changes) {
    for grant in &mut state.grants {
        let live = !grant.free.is_zero() || !grant.pinned.is_zero();
        if live != grant.live {
            grant.live = live;
            changes.touch_grant(&grant.grant_id);
        }
    }
}
