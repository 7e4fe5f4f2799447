//! Recomputes an account from its journal alone and compares it with what a store holds.
//!
//! This is what `creditgraph verify` runs for every account. The checks are the ledger's written
//! invariants (see ARCHITECTURE.md): conservation, no negative figures, held never above balance,
//! every hold resolved at most once and never charged beyond its amount plus recorded overage,
//! and the kept figures (the account's `held`, each grant's `pinned`) equal what the pending
//! holds add up to.

use std::collections::BTreeMap;
use std::fmt;

use crate::{AccountId, Amount, Entry, EntryKind, GrantId, Hold, HoldId, HoldState, Totals};

/// What a store holds for one account, as stored (no expiry applied).
#[derive(Clone, Debug)]
pub struct StoredAccount {
    pub account_id: AccountId,
    pub totals: Totals,
    /// Sum of the free part of every grant.
    pub free: Amount,
    /// The account row's kept `held`.
    pub held: Amount,
    /// Every grant of the account with a stored `pinned` above zero, and that figure.
    pub pinned: Vec<(GrantId, Amount)>,
    /// Every hold of the account, in any state.
    pub holds: Vec<Hold>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub account_id: AccountId,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account {}: {}", self.account_id, self.detail)
    }
}

#[derive(Default)]
struct HoldTally {
    opened: Option<Amount>,
    captured: Amount,
    overage: Amount,
    released: Amount,
    expired: Amount,
    refunded: Amount,
    resolutions: u32,
    touched_after_resolution: bool,
}

/// Checks one account. `entries` must be the account's whole journal in `seq` order.
pub fn verify_account(entries: &[Entry], stored: &StoredAccount) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut report = |detail: String| violations.push(Violation { account_id: stored.account_id.clone(), detail });
    let (mut balance, mut held) = (0_i128, 0_i128);
    let (mut spent, mut refunded) = (Amount::ZERO, Amount::ZERO);
    let mut holds: BTreeMap<&HoldId, HoldTally> = BTreeMap::new();
    let mut previous_seq = 0_u64;
    for entry in entries {
        if entry.account_id != stored.account_id {
            report(format!("entry {} belongs to account {}", entry.seq, entry.account_id));
        }
        if entry.seq <= previous_seq {
            report(format!("entry {} does not follow entry {previous_seq}", entry.seq));
        }
        previous_seq = entry.seq;
        let (balance_delta, held_delta) = entry.kind.deltas(entry.amount);
        balance += balance_delta;
        held += held_delta;
        if held < 0 || balance < held {
            report(format!("after entry {}: balance {balance} µcr, held {held} µcr", entry.seq));
        }
        let recorded = (i128::from(entry.balance_after.micros()), i128::from(entry.held_after.micros()));
        if recorded != (balance, held) {
            report(format!(
                "entry {} records balance {} held {}, the journal sums to {balance} µcr and {held} µcr",
                entry.seq, entry.balance_after, entry.held_after
            ));
        }
        match entry.kind {
            EntryKind::Capture | EntryKind::Debit => spent = spent.plus(entry.amount),
            EntryKind::Refund => refunded = refunded.plus(entry.amount),
            _ => {}
        }
        if entry.kind == EntryKind::Refund && refunded > spent {
            report(format!("refund entry {} brings refunds above charges", entry.seq));
        }
        let Some(hold_id) = entry.hold_id.as_ref() else { continue };
        let tally = holds.entry(hold_id).or_default();
        if tally.resolutions > 0 && entry.kind != EntryKind::Refund {
            tally.touched_after_resolution = true;
        }
        match entry.kind {
            EntryKind::Hold => {
                if tally.opened.replace(entry.amount).is_some() {
                    report(format!("hold {hold_id} opened twice"));
                }
            }
            EntryKind::Capture => tally.captured = tally.captured.plus(entry.amount),
            EntryKind::Debit => tally.overage = tally.overage.plus(entry.amount),
            EntryKind::Release => {
                tally.released = tally.released.plus(entry.amount);
                tally.resolutions += 1;
            }
            EntryKind::Expire => {
                tally.expired = tally.expired.plus(entry.amount);
                tally.resolutions += 1;
            }
            EntryKind::Refund => tally.refunded = tally.refunded.plus(entry.amount),
            EntryKind::Extend | EntryKind::Grant | EntryKind::GrantExpired | EntryKind::Void => {}
        }
    }
    let pending = || stored.holds.iter().filter(|hold| hold.state == HoldState::Pending);
    let stored_held = Amount::sum(pending().map(|hold| hold.remaining));
    if stored.held != stored_held {
        report(format!("the account's held is {}, its pending holds' remaining sum to {stored_held}", stored.held));
    }
    let mut allocated: BTreeMap<&GrantId, Amount> = BTreeMap::new();
    for allocation in pending().flat_map(|hold| &hold.allocations) {
        let sum = allocated.entry(&allocation.grant_id).or_insert(Amount::ZERO);
        *sum = sum.plus(allocation.amount);
    }
    for (grant_id, pinned) in &stored.pinned {
        let expected = allocated.remove(grant_id).unwrap_or(Amount::ZERO);
        if *pinned != expected {
            report(format!("grant {grant_id}: pinned {pinned}, pending holds' allocations on it sum to {expected}"));
        }
    }
    for (grant_id, expected) in allocated {
        report(format!("grant {grant_id}: pinned 0, pending holds' allocations on it sum to {expected}"));
    }
    let stored_balance = stored.free.plus(stored_held);
    if (balance, held) != (i128::from(stored_balance.micros()), i128::from(stored_held.micros())) {
        report(format!(
            "journal sums to balance {balance} µcr held {held} µcr, the store holds {} µcr and {} µcr",
            stored_balance.micros(),
            stored_held.micros()
        ));
    }
    if stored.totals != (Totals { spent, refunded }) {
        report(format!(
            "stored totals spent {} refunded {}, the journal says {spent} and {refunded}",
            stored.totals.spent, stored.totals.refunded
        ));
    }
    for hold in &stored.holds {
        let Some(tally) = holds.remove(&hold.hold_id) else {
            report(format!("hold {} has no journal entries", hold.hold_id));
            continue;
        };
        check_hold(hold, &tally, &mut report);
    }
    for hold_id in holds.keys() {
        report(format!("journal names hold {hold_id}, which the store does not have"));
    }
    violations
}

fn check_hold(hold: &Hold, tally: &HoldTally, report: &mut impl FnMut(String)) {
    let id = &hold.hold_id;
    if tally.opened != Some(hold.amount) {
        report(format!("hold {id}: opened with {:?}, stored amount {}", tally.opened, hold.amount));
        return;
    }
    if tally.resolutions > 1 || tally.touched_after_resolution {
        report(format!("hold {id} resolved more than once or changed after it resolved"));
    }
    let pending_part = if hold.state == HoldState::Pending { hold.remaining } else { Amount::ZERO };
    let accounted = tally.captured.plus(tally.released).plus(tally.expired).plus(pending_part);
    if accounted != hold.amount {
        report(format!("hold {id}: captured+released+expired+remaining = {accounted}, amount {}", hold.amount));
    }
    if hold.captured != tally.captured.plus(tally.overage) {
        report(format!("hold {id}: stored captured {} disagrees with the journal", hold.captured));
    }
    if hold.refunded != tally.refunded || hold.refunded > hold.captured {
        report(format!("hold {id}: refunded {} of captured {}", hold.refunded, hold.captured));
    }
    let state_fits = match hold.state {
        HoldState::Pending => tally.resolutions == 0,
        HoldState::Released => tally.resolutions == 1 && tally.expired.is_zero(),
        HoldState::Expired => tally.resolutions == 1 && tally.released.is_zero(),
        HoldState::Captured => tally.expired.is_zero(),
    };
    if !state_fits {
        report(format!("hold {id}: state {} does not fit its journal", hold.state.as_str()));
    }
    let allocated = Amount::sum(hold.allocations.iter().map(|allocation| allocation.amount));
    if allocated != pending_part {
        report(format!("hold {id}: allocations {allocated} disagree with remaining {pending_part}"));
    }
}
