//! What both baseline stores decide, as plain functions over the stored columns: the checks on a
//! hold, how each operation moves an account's columns, and the ledger records they answer with.
//! The SQL around these lives in `postgres` and `sqlite`, which differ only in their drivers.
//!
//! The account columns keep `granted = available + held + captured`; every operation is one
//! [`Moves`] that preserves it. A pending hold's remaining part is `max(amount − captured, 0)`:
//! captures take from the hold first, and only an overage (captured beyond the amount) charges
//! `available`, after which nothing remains on the hold.

use ledger::{
    AccountId, AccountState, Allocation, Amount, Balances, Command, Grant, GrantId, GrantKind, Hold, HoldId, HoldState,
    Overage, Reference, Rejection, Timestamp, Totals, Violation,
};
use store::{AccountView, StoreError};

/// The id of the one grant an account reads as (see [`account_view`]).
pub(crate) const SYNTHETIC_GRANT_ID: &str = "baseline";

/// Signed changes of an account's columns, applied by one UPDATE that refuses to take
/// `available` below zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Moves {
    pub available: i64,
    pub held: i64,
    pub captured: i64,
}

impl Moves {
    /// `amount` from available into held (a new hold).
    pub fn hold(amount: Amount) -> Moves {
        Moves { available: -micros(amount), held: micros(amount), captured: 0 }
    }

    /// `amount` from held back to available (a release or an expiry).
    pub fn give_back(amount: Amount) -> Moves {
        Moves { available: micros(amount), held: -micros(amount), captured: 0 }
    }

    /// `amount` from available into captured (a debit).
    pub fn debit(amount: Amount) -> Moves {
        Moves { available: -micros(amount), held: 0, captured: micros(amount) }
    }
}

/// An amount as a 64-bit column value. Amounts are at most [`Amount::MAX`] (10^18 µcr), well
/// inside `i64`.
pub(crate) fn micros(amount: Amount) -> i64 {
    i64::try_from(amount.micros()).expect("an amount is at most Amount::MAX, below i64::MAX")
}

pub(crate) fn to_amount(micros: i64, what: &str) -> Result<Amount, StoreError> {
    u64::try_from(micros)
        .map(Amount::from_micros)
        .map_err(|_| StoreError::corrupt(format!("negative {what}: {micros}")))
}

/// The answer to every command the baseline leaves out.
pub(crate) fn unsupported(command: &Command) -> Option<StoreError> {
    match command {
        Command::Extend { .. }
        | Command::Refund { .. }
        | Command::Sweep { .. }
        | Command::CreateAllowance { .. }
        | Command::EndAllowances { .. }
        | Command::SubscribePlan { .. }
        | Command::SetLowBalanceThreshold { .. }
        | Command::VoidGrant { .. } => {
            Some(StoreError::unavailable(format!("the baseline store does not support {}", command.name())))
        }
        Command::Grant { .. }
        | Command::Hold { .. }
        | Command::Capture { .. }
        | Command::Release { .. }
        | Command::Debit { .. } => None,
    }
}

/// One `baseline_holds` row as read.
pub(crate) struct HoldRow {
    pub hold_id: String,
    pub account_id: String,
    pub amount: i64,
    pub captured: i64,
    pub state: String,
    pub expires_at: i64,
    pub created_at: i64,
    pub reference: Option<String>,
    pub metadata: String,
}

/// Column list matching [`HoldRow`]'s field order (a macro so SQL constants can `concat!` it).
macro_rules! hold_columns {
    () => {
        "id, account_id, amount, captured, state, expires_at, created_at, reference, metadata"
    };
}
pub(crate) use hold_columns;

/// A pending hold's credits, all from the synthetic grant, so the ledger's view can return them.
fn allocations(state: HoldState, remaining: Amount) -> Vec<Allocation> {
    if state == HoldState::Pending && !remaining.is_zero() {
        let grant_id = GrantId::parse(SYNTHETIC_GRANT_ID).expect("a valid grant id");
        vec![Allocation { grant_id, amount: remaining }]
    } else {
        Vec::new()
    }
}

impl HoldRow {
    /// The hold as stored (no expiry applied).
    pub fn into_hold(self) -> Result<Hold, StoreError> {
        let amount = to_amount(self.amount, "hold amount")?;
        let captured = to_amount(self.captured, "hold captured")?;
        let state =
            HoldState::parse(&self.state).ok_or_else(|| StoreError::corrupt(format!("hold state {:?}", self.state)))?;
        let remaining = if state == HoldState::Pending { amount.saturating_sub(captured) } else { Amount::ZERO };
        Ok(Hold {
            hold_id: HoldId::parse(&self.hold_id).map_err(|_| StoreError::corrupt("hold id"))?,
            account_id: AccountId::parse(&self.account_id).map_err(|_| StoreError::corrupt("hold account id"))?,
            amount,
            captured,
            remaining,
            refunded: Amount::ZERO,
            state,
            expires_at: Timestamp::from_micros(self.expires_at),
            created_at: Timestamp::from_micros(self.created_at),
            reference: self
                .reference
                .as_deref()
                .map(Reference::parse)
                .transpose()
                .map_err(|_| StoreError::corrupt("reference"))?,
            metadata: self.metadata,
            allocations: allocations(state, remaining),
        })
    }
}

/// One `baseline_accounts` row as read.
pub(crate) struct AccountRow {
    pub account_id: AccountId,
    pub available: i64,
    pub held: i64,
    pub captured: i64,
    pub granted: i64,
    pub created_at: i64,
}

pub(crate) fn balances(available: i64, held: i64) -> Result<Balances, StoreError> {
    let available = to_amount(available, "available")?;
    let held = to_amount(held, "held")?;
    Ok(Balances { balance: available.plus(held), held, available })
}

/// The account as it reads at `now`. The baseline keeps no grants, so the account reads as one
/// synthetic grant (id `baseline`, never expiring) whose free part is `available` and from which
/// every pending hold reserved its remaining part (its `pinned`, and the account's `held`). The
/// baseline loads every pending hold, the naive way; [`AccountView::at`] then applies expiry as
/// the ledger does: a pending hold past its expiry reads as expired and its credits as available.
pub(crate) fn account_view(row: AccountRow, pending: Vec<Hold>, now: Timestamp) -> Result<AccountView, StoreError> {
    let created_at = Timestamp::from_micros(row.created_at);
    let stored_held = Amount::sum(pending.iter().map(|hold| hold.remaining));
    let grant = Grant {
        grant_id: GrantId::parse(SYNTHETIC_GRANT_ID).expect("a valid grant id"),
        account_id: row.account_id.clone(),
        kind: GrantKind::Grant,
        amount: to_amount(row.granted, "granted")?,
        free: to_amount(row.available, "available")?,
        pinned: stored_held,
        priority: 0,
        expires_at: None,
        created_at,
        reference: None,
        metadata: "{}".to_owned(),
        live: true,
        voided_at: None,
    };
    if stored_held != to_amount(row.held, "held")? {
        return Err(StoreError::corrupt(format!(
            "account {}: held {} µcr, its holds {stored_held}",
            row.account_id, row.held
        )));
    }
    let state = AccountState {
        account_id: row.account_id,
        created_at,
        totals: Totals { spent: to_amount(row.captured, "captured")?, refunded: Amount::ZERO },
        held: stored_held,
        grants: vec![grant],
        holds: pending,
        allowances: Vec::new(),
        low_balance_threshold: None,
    };
    Ok(AccountView::at(&state, now))
}

/// The record a grant answers with. Priority and reference are echoed but have no effect; the
/// expiry is dropped (baseline grants never expire), so the record says `expires_at: None`.
pub(crate) fn new_grant(command: &Command, now: Timestamp) -> Grant {
    let Command::Grant { account_id, grant_id, amount, priority, reference, metadata, .. } = command else {
        unreachable!("new_grant is called for grants only")
    };
    Grant {
        grant_id: grant_id.clone(),
        account_id: account_id.clone(),
        kind: GrantKind::Grant,
        amount: *amount,
        free: *amount,
        pinned: Amount::ZERO,
        priority: *priority,
        expires_at: None,
        created_at: now,
        reference: reference.clone(),
        metadata: metadata.clone(),
        live: true,
        voided_at: None,
    }
}

/// The hold a hold command creates.
pub(crate) fn new_hold(command: &Command, now: Timestamp) -> Hold {
    let Command::Hold { account_id, hold_id, amount, ttl_seconds, reference, metadata } = command else {
        unreachable!("new_hold is called for holds only")
    };
    Hold {
        hold_id: hold_id.clone(),
        account_id: account_id.clone(),
        amount: *amount,
        captured: Amount::ZERO,
        remaining: *amount,
        refunded: Amount::ZERO,
        state: HoldState::Pending,
        expires_at: now.plus_seconds(*ttl_seconds),
        created_at: now,
        reference: reference.clone(),
        metadata: metadata.clone(),
        allocations: allocations(HoldState::Pending, *amount),
    }
}

/// A capture that passed the hold's checks: the account change, what it takes from `available`
/// (an overage, still to be checked against the account) and the hold afterwards.
pub(crate) struct CapturePlan {
    pub moves: Moves,
    pub excess: Amount,
    pub hold: Hold,
}

/// Checks a capture against the stored hold (expiry applied) and works out what it moves: the
/// part within the hold leaves `held`, an overage leaves `available`, and a final capture gives
/// the rest of the hold back to `available`.
pub(crate) fn plan_capture(
    hold: &Hold,
    amount: Amount,
    is_final: bool,
    overage: Overage,
    now: Timestamp,
) -> Result<CapturePlan, Rejection> {
    match hold.state {
        HoldState::Pending if hold.expires_at <= now => return Err(Rejection::HoldExpired),
        HoldState::Pending => {}
        HoldState::Expired => return Err(Rejection::HoldExpired),
        other => return Err(Rejection::HoldNotPending { state: other }),
    }
    let remaining = hold.remaining;
    let from_hold = amount.min(remaining);
    let excess = amount.minus(from_hold);
    if !excess.is_zero() && overage == Overage::Reject {
        return Err(Rejection::AmountExceedsHold { requested: amount, remaining });
    }
    let rest = if is_final { remaining.minus(from_hold) } else { Amount::ZERO };
    let moves = Moves {
        available: micros(rest) - micros(excess),
        held: -(micros(from_hold) + micros(rest)),
        captured: micros(amount),
    };
    let mut after = hold.clone();
    after.captured = hold.captured.plus(amount);
    after.remaining = remaining.minus(from_hold).minus(rest);
    if is_final {
        after.state = HoldState::Captured;
    }
    after.allocations = allocations(after.state, after.remaining);
    Ok(CapturePlan { moves, excess, hold: after })
}

/// What a release does to the stored hold.
pub(crate) enum ReleasePlan {
    /// Pending: give its remaining part back and mark it released.
    Release {
        moves: Moves,
        hold: Hold,
    },
    /// Pending but past its expiry: do the sweeper's work for this hold (mark it expired, give
    /// its remaining part back) and answer as the ledger does, `HoldNotPending { Expired }`. The
    /// change is invisible to reads, which already show the hold as expired.
    Expire {
        moves: Moves,
    },
    /// Already released: answer with it, unchanged.
    Unchanged(Hold),
    Refuse(Rejection),
}

pub(crate) fn plan_release(hold: &Hold, now: Timestamp) -> ReleasePlan {
    match hold.state {
        HoldState::Pending if hold.expires_at <= now => ReleasePlan::Expire { moves: Moves::give_back(hold.remaining) },
        HoldState::Pending => {
            let mut after = hold.clone();
            after.state = HoldState::Released;
            after.remaining = Amount::ZERO;
            after.allocations.clear();
            ReleasePlan::Release { moves: Moves::give_back(hold.remaining), hold: after }
        }
        HoldState::Released => ReleasePlan::Unchanged(hold.clone()),
        other => ReleasePlan::Refuse(Rejection::HoldNotPending { state: other }),
    }
}

/// The stored figures of one account and of its pending holds, as `verify` reads them.
pub(crate) struct VerifyRow {
    pub account_id: String,
    pub available: i64,
    pub held: i64,
    pub captured: i64,
    pub granted: i64,
    /// Sum of the remaining parts of the account's pending holds.
    pub pending_remaining: i64,
}

/// The baseline's invariants for one account. With no journal these are all that can be
/// checked: no negative column, conservation (`granted = available + held + captured`) and
/// `held` equal to what the pending holds still reserve.
pub(crate) fn verify_row(row: &VerifyRow) -> Result<Vec<Violation>, StoreError> {
    let account_id = AccountId::parse(&row.account_id).map_err(|_| StoreError::corrupt("account id"))?;
    let mut violations = Vec::new();
    let mut report = |detail: String| violations.push(Violation { account_id: account_id.clone(), detail });
    for (name, value) in [("available", row.available), ("held", row.held), ("captured", row.captured)] {
        if value < 0 {
            report(format!("{name} is negative: {value} µcr"));
        }
    }
    let parts = i128::from(row.available) + i128::from(row.held) + i128::from(row.captured);
    if i128::from(row.granted) != parts {
        report(format!(
            "granted {} µcr, but available {} + held {} + captured {} = {parts} µcr",
            row.granted, row.available, row.held, row.captured
        ));
    }
    if row.held != row.pending_remaining {
        report(format!("held {} µcr, but pending holds reserve {} µcr", row.held, row.pending_remaining));
    }
    Ok(violations)
}
