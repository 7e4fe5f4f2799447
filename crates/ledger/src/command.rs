//! Commands the ledger accepts, their outcomes and the exhaustive list of rejections.

use std::fmt;

use crate::{
    AccountId, Allowance, AllowanceId, Amount, Balances, Grant, GrantId, GrantKind, Hold, HoldId, HoldState, PlanId,
    Reference, Timestamp, ALLOWANCES_ACTIVE_MAX,
};

/// What a capture does with an amount above the hold's remaining part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overage {
    /// Reject with [`Rejection::AmountExceedsHold`].
    Reject,
    /// Charge the excess from available credits in the same transaction, or reject with
    /// [`Rejection::InsufficientCredits`].
    IfAvailable,
}

/// One ledger mutation. Ids of new records are chosen by the caller so the ledger stays
/// deterministic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Grant {
        account_id: AccountId,
        grant_id: GrantId,
        amount: Amount,
        priority: i32,
        expires_at: Option<Timestamp>,
        reference: Option<Reference>,
        metadata: String,
    },
    Hold {
        account_id: AccountId,
        hold_id: HoldId,
        amount: Amount,
        ttl_seconds: u64,
        reference: Option<Reference>,
        metadata: String,
    },
    Capture {
        hold_id: HoldId,
        amount: Amount,
        is_final: bool,
        overage: Overage,
    },
    Release {
        hold_id: HoldId,
    },
    Extend {
        hold_id: HoldId,
        ttl_seconds: u64,
    },
    Debit {
        account_id: AccountId,
        amount: Amount,
        reference: Option<Reference>,
    },
    Refund {
        account_id: AccountId,
        grant_id: GrantId,
        amount: Amount,
        reference: Reference,
        hold_id: Option<HoldId>,
        priority: i32,
        expires_at: Option<Timestamp>,
    },
    /// Records every expiry due at `now` (the sweeper's command).
    Sweep {
        account_id: AccountId,
    },
    /// Adds a recurring allowance (its `granted_period` and `next_due_at` are the ledger's to
    /// set; the store sets its `due` period like every loaded allowance's). The period at `now`,
    /// if any, is granted by the same command. Creates the account.
    CreateAllowance {
        allowance: Allowance,
    },
    /// Ends allowances at the end of their current period (at once if none has started): the
    /// current period's credits stay, no later period is granted. `allowances` names them;
    /// `plan` ends every allowance that came from a plan as well.
    EndAllowances {
        account_id: AccountId,
        allowances: Vec<AllowanceId>,
        plan: bool,
    },
    /// Sets (or, with `None`, clears) the account's low-balance threshold.
    SetLowBalanceThreshold {
        account_id: AccountId,
        threshold: Option<Amount>,
    },
    /// Takes back what is left of a grant given by mistake: its free credits leave the balance
    /// (journalled as `void`) and it is marked voided. Refused while pending holds reserve any
    /// of its credits (release them first), so a void never takes credits a hold was promised.
    VoidGrant {
        account_id: AccountId,
        grant_id: GrantId,
    },
    /// Switches the account to a plan: ends the allowances of its current plan as
    /// [`Command::EndAllowances`] does, then adds the plan's (all or nothing). Creates the
    /// account.
    SubscribePlan {
        account_id: AccountId,
        plan_id: PlanId,
        allowances: Vec<Allowance>,
    },
}

/// Which account a command acts on: named directly, or through a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Account(&'a AccountId),
    Hold(&'a HoldId),
}

impl Command {
    pub fn target(&self) -> Target<'_> {
        match self {
            Command::Grant { account_id, .. }
            | Command::Hold { account_id, .. }
            | Command::Debit { account_id, .. }
            | Command::Refund { account_id, .. }
            | Command::Sweep { account_id }
            | Command::EndAllowances { account_id, .. }
            | Command::SubscribePlan { account_id, .. }
            | Command::SetLowBalanceThreshold { account_id, .. }
            | Command::VoidGrant { account_id, .. } => Target::Account(account_id),
            Command::CreateAllowance { allowance } => Target::Account(&allowance.account_id),
            Command::Capture { hold_id, .. } | Command::Release { hold_id } | Command::Extend { hold_id, .. } => {
                Target::Hold(hold_id)
            }
        }
    }

    /// The hold a store must load (in whatever state) before applying this command.
    pub fn hold_to_load(&self) -> Option<&HoldId> {
        match self {
            Command::Capture { hold_id, .. } | Command::Release { hold_id } | Command::Extend { hold_id, .. } => {
                Some(hold_id)
            }
            Command::Refund { hold_id, .. } => hold_id.as_ref(),
            _ => None,
        }
    }

    /// The grant a store must load by (kind, reference), if one exists.
    pub fn grant_reference_to_load(&self) -> Option<(GrantKind, &Reference)> {
        match self {
            Command::Grant { reference: Some(reference), .. } => Some((GrantKind::Grant, reference)),
            Command::Refund { reference, .. } => Some((GrantKind::Refund, reference)),
            _ => None,
        }
    }

    /// Whether this command may create the account.
    pub fn creates_account(&self) -> bool {
        matches!(self, Command::Grant { .. } | Command::CreateAllowance { .. } | Command::SubscribePlan { .. })
    }

    /// The allowances this command brings, whose `due` period the store sets before deciding.
    pub fn new_allowances_mut(&mut self) -> &mut [Allowance] {
        match self {
            Command::CreateAllowance { allowance } => std::slice::from_mut(allowance),
            Command::SubscribePlan { allowances, .. } => allowances,
            _ => &mut [],
        }
    }

    /// The allowances this command brings (see [`Command::new_allowances_mut`]).
    pub fn new_allowances(&self) -> &[Allowance] {
        match self {
            Command::CreateAllowance { allowance } => std::slice::from_ref(allowance),
            Command::SubscribePlan { allowances, .. } => allowances,
            _ => &[],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Grant { .. } => "grant",
            Command::Hold { .. } => "hold",
            Command::Capture { .. } => "capture",
            Command::Release { .. } => "release",
            Command::Extend { .. } => "extend",
            Command::Debit { .. } => "debit",
            Command::Refund { .. } => "refund",
            Command::Sweep { .. } => "sweep",
            Command::CreateAllowance { .. } => "create_allowance",
            Command::EndAllowances { .. } => "end_allowances",
            Command::SubscribePlan { .. } => "subscribe_plan",
            Command::SetLowBalanceThreshold { .. } => "set_low_balance_threshold",
            Command::VoidGrant { .. } => "void_grant",
        }
    }
}

/// A successful command's result. `created`/`changed` tell a first application from a repeat
/// that the ledger answers without change (same reference, release of a released hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Granted {
        grant: Grant,
        created: bool,
    },
    Held {
        hold: Hold,
    },
    Captured {
        hold: Hold,
    },
    Released {
        hold: Hold,
        changed: bool,
    },
    Extended {
        hold: Hold,
    },
    Debited {
        account_id: AccountId,
        amount: Amount,
        balances: Balances,
    },
    Refunded {
        grant: Grant,
        created: bool,
    },
    Swept {
        entries: usize,
    },
    /// The allowance as created, its current period granted if one had started.
    AllowanceCreated {
        allowance: Box<Allowance>,
    },
    /// The allowances as they now end (`changed`: whether any end moved).
    AllowancesEnded {
        allowances: Vec<Allowance>,
        changed: bool,
    },
    /// The account's low-balance threshold as now set, and its figures.
    LowBalanceThresholdSet {
        account_id: AccountId,
        threshold: Option<Amount>,
        balances: Balances,
    },
    /// The grant as voided (`voided_at` set, nothing left in it) and what the void took back.
    GrantVoided {
        grant: Grant,
        voided: Amount,
    },
    /// The plan's allowances as created, and the ended ones of the plan before.
    PlanSubscribed {
        plan_id: PlanId,
        allowances: Vec<Allowance>,
        ended: Vec<Allowance>,
    },
}

/// Typed views of an outcome, one per command that answers with a record: the variant that
/// command answers with, or the outcome back (boxed: it is large) when it is another. Callers that sent one
/// kind of command take its answer through these instead of matching on every variant.
impl Outcome {
    /// What a [`Command::Hold`] answers: the new hold.
    pub fn into_held(self) -> Result<Hold, Box<Outcome>> {
        match self {
            Outcome::Held { hold } => Ok(hold),
            other => Err(Box::new(other)),
        }
    }

    /// What a [`Command::Capture`] answers: the hold after the capture.
    pub fn into_captured(self) -> Result<Hold, Box<Outcome>> {
        match self {
            Outcome::Captured { hold } => Ok(hold),
            other => Err(Box::new(other)),
        }
    }

    /// What a [`Command::Extend`] answers: the hold with its new expiry.
    pub fn into_extended(self) -> Result<Hold, Box<Outcome>> {
        match self {
            Outcome::Extended { hold } => Ok(hold),
            other => Err(Box::new(other)),
        }
    }

    /// What a [`Command::Release`] answers: the hold, and whether this release changed it.
    pub fn into_released(self) -> Result<(Hold, bool), Box<Outcome>> {
        match self {
            Outcome::Released { hold, changed } => Ok((hold, changed)),
            other => Err(Box::new(other)),
        }
    }

    /// What a [`Command::Sweep`] answers: how many journal entries it recorded.
    pub fn into_swept(self) -> Result<usize, Box<Outcome>> {
        match self {
            Outcome::Swept { entries } => Ok(entries),
            other => Err(Box::new(other)),
        }
    }
}

/// Every way the ledger can refuse a command. A rejection changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    InsufficientCredits {
        required: Amount,
        available: Amount,
    },
    AccountNotFound,
    HoldNotFound,
    HoldNotPending {
        state: HoldState,
    },
    HoldExpired,
    AmountExceedsHold {
        requested: Amount,
        remaining: Amount,
    },
    /// A refund above what the hold captured (or, without a hold, above what the account spent)
    /// minus what was already refunded.
    RefundExceedsCharges {
        requested: Amount,
        refundable: Amount,
    },
    /// The account's balance would pass [`Amount::BALANCE_MAX`].
    BalanceLimit,
    /// A grant whose `expires_at` is not in the future.
    ExpiryNotInFuture,
    /// The account would have more than [`ALLOWANCES_ACTIVE_MAX`] allowances that have not ended.
    AllowanceLimit,
    /// No allowance of the account that has not ended has this id.
    AllowanceNotFound,
    /// The account has no grant with this id that still holds credits (never given, spent,
    /// expired or voided already).
    GrantNotFound,
    /// Pending holds reserve `held` of the grant's credits: a void would take what they were
    /// promised.
    GrantCreditsHeld {
        held: Amount,
    },
}

impl Rejection {
    /// Stable machine-readable code (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InsufficientCredits { .. } => "insufficient_credits",
            Rejection::AccountNotFound => "account_not_found",
            Rejection::HoldNotFound => "hold_not_found",
            Rejection::HoldNotPending { .. } => "hold_not_pending",
            Rejection::HoldExpired => "hold_expired",
            Rejection::AmountExceedsHold { .. } => "amount_exceeds_hold",
            Rejection::RefundExceedsCharges { .. } => "refund_exceeds_charges",
            Rejection::BalanceLimit => "invalid_amount",
            Rejection::ExpiryNotInFuture => "invalid_request",
            Rejection::AllowanceLimit => "allowance_limit",
            Rejection::AllowanceNotFound => "allowance_not_found",
            Rejection::GrantNotFound => "grant_not_found",
            Rejection::GrantCreditsHeld { .. } => "grant_credits_held",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InsufficientCredits { required, available } => {
                write!(f, "{required} credits required, {available} available")
            }
            Rejection::AccountNotFound => f.write_str("no such account"),
            Rejection::HoldNotFound => f.write_str("no such hold"),
            Rejection::HoldNotPending { state } => write!(f, "the hold is {}, not pending", state.as_str()),
            Rejection::HoldExpired => f.write_str("the hold has expired"),
            Rejection::AmountExceedsHold { requested, remaining } => {
                write!(f, "{requested} credits requested, {remaining} remain on the hold")
            }
            Rejection::RefundExceedsCharges { requested, refundable } => {
                write!(f, "{requested} credits requested, at most {refundable} can be refunded")
            }
            Rejection::BalanceLimit => write!(f, "the balance would exceed {} credits", Amount::BALANCE_MAX),
            Rejection::ExpiryNotInFuture => f.write_str("expires_at must be in the future"),
            Rejection::AllowanceLimit => {
                write!(f, "an account has at most {ALLOWANCES_ACTIVE_MAX} allowances that have not ended")
            }
            Rejection::AllowanceNotFound => f.write_str("no such allowance (or it has ended)"),
            Rejection::GrantNotFound => f.write_str("no such grant with credits left (spent, expired or voided)"),
            Rejection::GrantCreditsHeld { held } => {
                write!(f, "pending holds reserve {held} credits of this grant; release them first")
            }
        }
    }
}
