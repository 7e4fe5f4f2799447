//! The credit ledger's domain, as pure functions over plain values.
//!
//! An account's credits live in grants. A hold reserves credits of specific grants; a capture
//! spends them; a release or expiry gives them back. [`execute`] decides one command against one
//! account's [`AccountState`] and returns the new state, the outcome and the journal entries, or a
//! [`Rejection`] that changes nothing. Stores (SQLite, PostgreSQL, memory) load the state under the
//! account's lock, call [`execute`], and write what it returns.
//!
//! Architecture invariant: this crate does no I/O, reads no clock and depends on nothing but
//! `std`. Every amount is an exact integer count of micro-credits.

mod amount;
mod apply;
mod command;
mod ids;
mod model;
mod time;
mod verify;

pub use amount::{Amount, AmountError, MICROS_PER_CREDIT};
pub use apply::{advance, execute, execute_in_place, view, view_hold, Applied, Changes};
pub use command::{Command, Outcome, Overage, Rejection, Target};
pub use ids::{
    check_id, AccountId, AllowanceId, GrantId, HoldId, IdError, PlanId, Reference, ID_LENGTH_MAX, REFERENCE_LENGTH_MAX,
};
pub use model::{
    AccountState, Allocation, Allowance, AllowancePeriod, Balances, Deltas, Entry, EntryKind, Grant, GrantKind, Hold,
    HoldState, PeriodGrant, Rollover, Totals, ALLOWANCES_ACTIVE_MAX,
};
pub use time::{Timestamp, MICROS_PER_SECOND};
pub use verify::{verify_account, StoredAccount, Violation};

#[cfg(test)]
mod tests;
