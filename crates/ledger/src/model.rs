//! The ledger's records: grants, holds, journal entries and one account's state.

use crate::{AccountId, AllowanceId, Amount, GrantId, HoldId, PlanId, Reference, Timestamp};

/// Where a grant came from: an operator's grant, a refund of an earlier charge, or one period of
/// a recurring allowance. References are unique per account *within* a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrantKind {
    Grant,
    Refund,
    /// A period's credits of an [`Allowance`]; its reference is `<allowance_id>:<period start>`.
    Allowance,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Grant => "grant",
            GrantKind::Refund => "refund",
            GrantKind::Allowance => "allowance",
        }
    }

    pub fn parse(text: &str) -> Option<GrantKind> {
        match text {
            "grant" => Some(GrantKind::Grant),
            "refund" => Some(GrantKind::Refund),
            "allowance" => Some(GrantKind::Allowance),
            _ => None,
        }
    }
}

/// Most allowances an account may have that have not ended (limits on everything: each is
/// scheduled on every decision about the account).
pub const ALLOWANCES_ACTIVE_MAX: usize = 16;

/// What happens to a period's unspent credits when the next period starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rollover {
    /// They expire at the period's end.
    None,
    /// They stay (the period grants never expire).
    Keep,
    /// They stay, but when a period starts, the allowance's earlier grants keep at most this
    /// much free in total; the excess expires then.
    Cap(Amount),
}

impl Rollover {
    pub fn kind_str(self) -> &'static str {
        match self {
            Rollover::None => "none",
            Rollover::Keep => "keep",
            Rollover::Cap(_) => "cap",
        }
    }
}

/// The period of an allowance's schedule that contains the decision's `now`, as the store's
/// calendar computed it, with the id and reference its grant gets. The ledger has no calendar:
/// it only compares and applies these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowancePeriod {
    pub start: Timestamp,
    pub end: Timestamp,
    /// How the period's grant is named; `None` when the allowance has granted this period
    /// already (nothing to name: the common case, found without the calendar).
    pub grant: Option<PeriodGrant>,
}

/// The id and reference of an allowance period's grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodGrant {
    pub grant_id: GrantId,
    /// `<allowance_id>:<period start>`: unique per account among allowance grants, so a period
    /// is granted at most once whatever wrote it.
    pub reference: Reference,
}

/// Credits granted again every period (a daily allowance, a plan's monthly credits).
///
/// Granted lazily and exactly: whoever decides about the account at `now` applies the period
/// containing `now` if it was not granted yet (see [`crate::advance`]). Only that period:
/// periods that passed while nobody looked are never granted afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub allowance_id: AllowanceId,
    pub account_id: AccountId,
    /// Credits granted each period.
    pub amount: Amount,
    /// The priority of its grants (lower is spent first).
    pub priority: i32,
    pub rollover: Rollover,
    /// The schedule (period, time zone, anchor) as the store's calendar reads it; the ledger
    /// never looks inside.
    pub schedule: String,
    /// No period is granted before this instant.
    pub starts_at: Timestamp,
    /// No period is granted at or after this instant (`None`: never ends).
    pub ends_at: Option<Timestamp>,
    pub reference: Option<Reference>,
    /// The plan this allowance came from, if any: switching plans ends these.
    pub plan_id: Option<PlanId>,
    pub created_at: Timestamp,
    /// The start of the last period granted.
    pub granted_period: Option<Timestamp>,
    /// When this allowance next needs a decision (a period to grant), for the sweeper; `None`
    /// once it has ended.
    pub next_due_at: Option<Timestamp>,
    /// The period at the decision's `now`, set by the store before each decision (never
    /// stored); `None` outside `starts_at..ends_at`.
    pub due: Option<AllowancePeriod>,
}

impl Allowance {
    /// Whether no further period will ever be granted, as of `now`.
    pub fn has_ended_at(&self, now: Timestamp) -> bool {
        self.ends_at.is_some_and(|ends_at| ends_at <= now)
    }

    /// The due period if its grant is still missing.
    pub fn ungranted_due(&self) -> Option<&AllowancePeriod> {
        self.due.as_ref().filter(|due| self.granted_period.is_none_or(|granted| granted < due.start))
    }

    /// The reference prefix of this allowance's period grants.
    pub fn grant_reference_prefix(&self) -> String {
        format!("{}:", self.allowance_id)
    }
}

/// Credits added to an account.
///
/// `amount = free + pinned + spent + expired`. `free` and `pinned` are stored; the rest is
/// recoverable from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub grant_id: GrantId,
    pub account_id: AccountId,
    pub kind: GrantKind,
    pub amount: Amount,
    /// Unspent and not reserved by any pending hold.
    pub free: Amount,
    /// Reserved by pending holds: the sum of their allocations on this grant. The ledger keeps it
    /// (a hold pins free credits; a capture spends pinned ones; a release or an expiry frees or
    /// expires them), so liveness needs no scan of the holds.
    pub pinned: Amount,
    /// Lower is spent first.
    pub priority: i32,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub reference: Option<Reference>,
    /// A small JSON object, kept as text: the ledger never looks inside.
    pub metadata: String,
    /// False once the grant can never again hold credits (`free` and `pinned` both zero): stores
    /// skip loading it.
    pub live: bool,
    /// When an operator voided it ([`crate::Command::VoidGrant`]); a voided grant holds nothing.
    pub voided_at: Option<Timestamp>,
}

impl Grant {
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }

    /// Spend order: priority, then soonest expiry (none last), then oldest, then id.
    pub fn spend_order_key(&self) -> (i32, i64, i64, &str) {
        let expiry = self.expires_at.map_or(i64::MAX, Timestamp::micros);
        (self.priority, expiry, self.created_at.micros(), self.grant_id.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldState {
    Pending,
    Captured,
    Released,
    Expired,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Pending => "pending",
            HoldState::Captured => "captured",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<HoldState> {
        match text {
            "pending" => Some(HoldState::Pending),
            "captured" => Some(HoldState::Captured),
            "released" => Some(HoldState::Released),
            "expired" => Some(HoldState::Expired),
            _ => None,
        }
    }
}

/// Credits of one grant that a pending hold reserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub grant_id: GrantId,
    pub amount: Amount,
}

/// A reservation of credits.
///
/// While pending, `remaining = sum(allocations)`; `captured` counts everything charged through the
/// hold, overage included. A resolved hold has `remaining = 0` and no allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: HoldId,
    pub account_id: AccountId,
    pub amount: Amount,
    pub captured: Amount,
    pub remaining: Amount,
    /// Credits refunded against this hold's captures; never above `captured`.
    pub refunded: Amount,
    pub state: HoldState,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub reference: Option<Reference>,
    pub metadata: String,
    pub allocations: Vec<Allocation>,
}

impl Hold {
    /// True when the hold counts in `held`: pending and not yet at its expiry.
    pub fn is_active_at(&self, now: Timestamp) -> bool {
        self.state == HoldState::Pending && now < self.expires_at
    }
}

/// What a journal entry records. Each kind moves balance and held in one fixed way, so the
/// journal alone is enough to recompute an account (see [`EntryKind::deltas`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// balance +amount
    Grant,
    /// balance +amount (credits back for an earlier charge)
    Refund,
    /// held +amount
    Hold,
    /// balance −amount, held −amount (charged from a hold)
    Capture,
    /// held −amount (returned to available)
    Release,
    /// held −amount (the hold reached its expiry)
    Expire,
    /// nothing moves (a hold got a new expiry)
    Extend,
    /// balance −amount (charged from available: a debit or a capture's overage)
    Debit,
    /// balance −amount (a grant's free part reached its expiry)
    GrantExpired,
    /// balance −amount (an operator voided what was left of a grant)
    Void,
}

/// Signed change of (balance, held) in micro-credits.
pub type Deltas = (i128, i128);

impl EntryKind {
    pub const ALL: [EntryKind; 10] = [
        EntryKind::Grant,
        EntryKind::Refund,
        EntryKind::Hold,
        EntryKind::Capture,
        EntryKind::Release,
        EntryKind::Expire,
        EntryKind::Extend,
        EntryKind::Debit,
        EntryKind::GrantExpired,
        EntryKind::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Refund => "refund",
            EntryKind::Hold => "hold",
            EntryKind::Capture => "capture",
            EntryKind::Release => "release",
            EntryKind::Expire => "expire",
            EntryKind::Extend => "extend",
            EntryKind::Debit => "debit",
            EntryKind::GrantExpired => "grant_expired",
            EntryKind::Void => "void",
        }
    }

    pub fn parse(text: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    pub fn deltas(self, amount: Amount) -> Deltas {
        let a = i128::from(amount.micros());
        match self {
            EntryKind::Grant | EntryKind::Refund => (a, 0),
            EntryKind::Hold => (0, a),
            EntryKind::Capture => (-a, -a),
            EntryKind::Release | EntryKind::Expire => (0, -a),
            EntryKind::Extend => (0, 0),
            EntryKind::Debit | EntryKind::GrantExpired | EntryKind::Void => (-a, 0),
        }
    }
}

/// One immutable journal line. Stores assign `seq` (strictly increasing) when they append it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub account_id: AccountId,
    pub kind: EntryKind,
    pub amount: Amount,
    pub hold_id: Option<HoldId>,
    pub grant_id: Option<GrantId>,
    pub reference: Option<Reference>,
    /// The account's materialised balance and held right after this entry.
    pub balance_after: Amount,
    pub held_after: Amount,
    /// When the change took effect (for expiries, the expiry time).
    pub at: Timestamp,
    pub idempotency_key: Option<String>,
}

/// Lifetime counters kept on the account row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Captured plus debited.
    pub spent: Amount,
    /// Refunded (every refund ≤ what was spent before it).
    pub refunded: Amount,
}

/// Everything the ledger needs to decide one operation on one account.
///
/// Stores load it under the account's lock: every live grant, the pending holds due at the
/// command's `now` (`expires_at <= now`), plus the records a command names (the hold it targets,
/// the grant or refund with its reference). Pending holds that are neither due nor named stay
/// in the store: what they reserve is in `held` and in each grant's `pinned`, so no command's
/// cost grows with how many there are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub account_id: AccountId,
    pub created_at: Timestamp,
    pub totals: Totals,
    /// The sum of `remaining` over ALL the account's pending holds (loaded or not), kept by the
    /// ledger on every hold, capture, release, expiry.
    pub held: Amount,
    pub grants: Vec<Grant>,
    /// Only the due and the named holds (see above), never a complete list.
    pub holds: Vec<Hold>,
    /// The allowances that have not ended (at most [`ALLOWANCES_ACTIVE_MAX`]), each with its
    /// `due` period set by the store for the decision's `now`.
    pub allowances: Vec<Allowance>,
    /// Below this many available credits the account is low (a `balance.low` event each time
    /// available falls from at or above it to below it). Kept on the account row.
    pub low_balance_threshold: Option<Amount>,
}

/// Balance figures of an account at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    /// Free credits of unexpired grants plus credits reserved by active holds.
    pub balance: Amount,
    /// Remaining amount of active holds.
    pub held: Amount,
    /// `balance − held`: free credits of unexpired grants. Never negative by construction.
    pub available: Amount,
}

impl AccountState {
    pub fn new(account_id: AccountId, created_at: Timestamp) -> AccountState {
        AccountState {
            account_id,
            created_at,
            totals: Totals::default(),
            held: Amount::ZERO,
            grants: Vec::new(),
            holds: Vec::new(),
            allowances: Vec::new(),
            low_balance_threshold: None,
        }
    }

    /// The figures as stored (no expiry applied). After [`crate::advance`] they are exact at `now`.
    /// O(grants): `held` is kept, not summed over holds.
    pub fn materialized(&self) -> Balances {
        let available = Amount::sum(self.grants.iter().map(|grant| grant.free));
        Balances { balance: available.plus(self.held), held: self.held, available }
    }

    pub fn hold(&self, hold_id: &HoldId) -> Option<&Hold> {
        self.holds.iter().find(|hold| &hold.hold_id == hold_id)
    }

    pub fn grant(&self, grant_id: &GrantId) -> Option<&Grant> {
        self.grants.iter().find(|grant| &grant.grant_id == grant_id)
    }

    pub fn allowance(&self, allowance_id: &AllowanceId) -> Option<&Allowance> {
        self.allowances.iter().find(|allowance| &allowance.allowance_id == allowance_id)
    }
}
