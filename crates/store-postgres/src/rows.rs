//! Mapping between table rows and ledger values.
//!
//! Every SELECT of a record names its columns through the constants here, so the decoder and the
//! query cannot drift apart. Anything that does not decode is [`StoreError::Corrupt`]: the
//! database holds something this build never writes.

use ledger::{
    AccountId, AccountState, Amount, Entry, EntryKind, Grant, GrantId, GrantKind, Hold, HoldId, HoldState, Reference,
    Timestamp, Totals,
};
use store::codec::{self, undecodable};
use store::StoreError;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

pub(crate) const GRANT_COLUMNS: &str =
    "grant_id, account_id, kind, amount, free, priority, expires_at, created_at, reference, metadata, live, pinned, \
     voided_at";
pub(crate) const HOLD_COLUMNS: &str = "hold_id, account_id, amount, captured, remaining, refunded, state, expires_at, \
     created_at, reference, metadata, allocations";
pub(crate) const ENTRY_COLUMNS: &str =
    "seq, account_id, kind, amount, hold_id, grant_id, reference, balance_after, held_after, at, idempotency_key";
pub(crate) const ACCOUNT_COLUMNS: &str = "account_id, created_at, spent, refunded, held, low_balance_threshold";

fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> Result<T, StoreError> {
    row.try_get(index).map_err(|error| undecodable(what).with_source(error))
}

fn amount(row: &Row, index: usize, what: &str) -> Result<Amount, StoreError> {
    let micros: i64 = get(row, index, what)?;
    u64::try_from(micros).map(Amount::from_micros).map_err(|_| undecodable(what))
}

fn timestamp(row: &Row, index: usize, what: &str) -> Result<Timestamp, StoreError> {
    get::<i64>(row, index, what).map(Timestamp::from_micros)
}

fn opt_timestamp(row: &Row, index: usize, what: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(get::<Option<i64>>(row, index, what)?.map(Timestamp::from_micros))
}

fn opt_reference(row: &Row, index: usize) -> Result<Option<Reference>, StoreError> {
    get::<Option<&str>>(row, index, "reference")?
        .map(|text| Reference::parse(text).map_err(|_| undecodable("reference")))
        .transpose()
}

fn account_id(row: &Row, index: usize) -> Result<AccountId, StoreError> {
    AccountId::parse(get(row, index, "account_id")?).map_err(|_| undecodable("account_id"))
}

fn hold_id(text: &str) -> Result<HoldId, StoreError> {
    HoldId::parse(text).map_err(|_| undecodable("hold_id"))
}

fn grant_id(text: &str) -> Result<GrantId, StoreError> {
    GrantId::parse(text).map_err(|_| undecodable("grant_id"))
}

/// An amount as a BIGINT. Ledger amounts stay far below `i64::MAX` (the balance maximum is
/// 10^18 micro-credits), so failing here means a broken invariant, reported rather than panicked.
pub(crate) fn sql_amount(amount: Amount) -> Result<i64, StoreError> {
    i64::try_from(amount.micros()).map_err(|_| StoreError::corrupt(format!("amount {amount} does not fit a BIGINT")))
}

/// The account row read with [`ACCOUNT_COLUMNS`] as a state with no grants, holds or allowances
/// yet: id, creation time, lifetime totals, held and the low-balance threshold.
pub(crate) fn account(row: &Row) -> Result<AccountState, StoreError> {
    let mut state = AccountState::new(account_id(row, 0)?, timestamp(row, 1, "created_at")?);
    state.totals = Totals { spent: amount(row, 2, "spent")?, refunded: amount(row, 3, "refunded")? };
    state.held = amount(row, 4, "held")?;
    let threshold: Option<i64> = get(row, 5, "low_balance_threshold")?;
    state.low_balance_threshold = threshold
        .map(|micros| u64::try_from(micros).map(Amount::from_micros).map_err(|_| undecodable("low_balance_threshold")))
        .transpose()?;
    Ok(state)
}

pub(crate) fn grant(row: &Row) -> Result<Grant, StoreError> {
    Ok(Grant {
        grant_id: grant_id(get(row, 0, "grant_id")?)?,
        account_id: account_id(row, 1)?,
        kind: GrantKind::parse(get(row, 2, "grant kind")?).ok_or_else(|| undecodable("grant kind"))?,
        amount: amount(row, 3, "grant amount")?,
        free: amount(row, 4, "grant free")?,
        priority: get(row, 5, "priority")?,
        expires_at: opt_timestamp(row, 6, "grant expires_at")?,
        created_at: timestamp(row, 7, "grant created_at")?,
        reference: opt_reference(row, 8)?,
        metadata: get::<String>(row, 9, "grant metadata")?,
        live: get(row, 10, "live")?,
        pinned: amount(row, 11, "grant pinned")?,
        voided_at: opt_timestamp(row, 12, "grant voided_at")?,
    })
}

/// A grant's id and pinned part (for verification).
pub(crate) fn pinned(row: &Row) -> Result<(GrantId, Amount), StoreError> {
    Ok((grant_id(get(row, 0, "grant_id")?)?, amount(row, 1, "grant pinned")?))
}

pub(crate) fn hold(row: &Row) -> Result<Hold, StoreError> {
    Ok(Hold {
        hold_id: hold_id(get(row, 0, "hold_id")?)?,
        account_id: account_id(row, 1)?,
        amount: amount(row, 2, "hold amount")?,
        captured: amount(row, 3, "captured")?,
        remaining: amount(row, 4, "remaining")?,
        refunded: amount(row, 5, "hold refunded")?,
        state: HoldState::parse(get(row, 6, "hold state")?).ok_or_else(|| undecodable("hold state"))?,
        expires_at: timestamp(row, 7, "hold expires_at")?,
        created_at: timestamp(row, 8, "hold created_at")?,
        reference: opt_reference(row, 9)?,
        metadata: get::<String>(row, 10, "hold metadata")?,
        allocations: codec::decode_allocations(get(row, 11, "allocations")?)?,
    })
}

pub(crate) fn entry(row: &Row) -> Result<Entry, StoreError> {
    let seq: i64 = get(row, 0, "seq")?;
    Ok(Entry {
        seq: u64::try_from(seq).map_err(|_| undecodable("seq"))?,
        account_id: account_id(row, 1)?,
        kind: EntryKind::parse(get(row, 2, "entry kind")?).ok_or_else(|| undecodable("entry kind"))?,
        amount: amount(row, 3, "entry amount")?,
        hold_id: get::<Option<&str>>(row, 4, "entry hold_id")?.map(hold_id).transpose()?,
        grant_id: get::<Option<&str>>(row, 5, "entry grant_id")?.map(grant_id).transpose()?,
        reference: opt_reference(row, 6)?,
        balance_after: amount(row, 7, "balance_after")?,
        held_after: amount(row, 8, "held_after")?,
        at: timestamp(row, 9, "entry at")?,
        idempotency_key: get::<Option<String>>(row, 10, "idempotency_key")?,
    })
}

/// The allowances of an account row read with [`ACCOUNT_COLUMNS`] and the allowances column
/// after them (`execute::ALLOWANCES_COLUMN`: their `data`, NULL for none).
pub(crate) fn allowances_column(row: &Row) -> Result<Vec<ledger::Allowance>, StoreError> {
    let data: Option<Vec<&str>> = get(row, 6, "allowances")?;
    data.unwrap_or_default().into_iter().map(codec::decode_allowance_text).collect()
}

/// An allowance from its `data` column (the whole record).
pub(crate) fn allowance(row: &Row) -> Result<ledger::Allowance, StoreError> {
    let data: &str = get(row, 0, "allowance")?;
    codec::decode_allowance_text(data)
}

/// A grant and a hold as the one-statement account read aggregates them
/// ([`ACCOUNT_SNAPSHOT_GRANT`], [`ACCOUNT_SNAPSHOT_HOLD`]): JSON arrays of the columns in
/// [`GRANT_COLUMNS`] and [`HOLD_COLUMNS`] order. JSON numbers parse exactly as integers, so
/// micro-credits and microseconds survive.
pub(crate) const ACCOUNT_SNAPSHOT_GRANT: &str = "json_build_array(grant_id, account_id, kind, amount, free, \
     priority, expires_at, created_at, reference, metadata, live, pinned, voided_at)";
pub(crate) const ACCOUNT_SNAPSHOT_HOLD: &str = "json_build_array(hold_id, account_id, amount, captured, remaining, \
     refunded, state, expires_at, created_at, reference, metadata, allocations)";

fn json_items<'a>(
    value: &'a serde_json::Value,
    what: &str,
    count: usize,
) -> Result<&'a [serde_json::Value], StoreError> {
    value.as_array().map(Vec::as_slice).filter(|items| items.len() == count).ok_or_else(|| undecodable(what))
}

fn json_str<'a>(value: &'a serde_json::Value, what: &str) -> Result<&'a str, StoreError> {
    value.as_str().ok_or_else(|| undecodable(what))
}

fn json_i64(value: &serde_json::Value, what: &str) -> Result<i64, StoreError> {
    value.as_i64().ok_or_else(|| undecodable(what))
}

fn json_amount(value: &serde_json::Value, what: &str) -> Result<Amount, StoreError> {
    value.as_u64().map(Amount::from_micros).ok_or_else(|| undecodable(what))
}

fn json_opt_time(value: &serde_json::Value, what: &str) -> Result<Option<Timestamp>, StoreError> {
    match value {
        serde_json::Value::Null => Ok(None),
        other => json_i64(other, what).map(|micros| Some(Timestamp::from_micros(micros))),
    }
}

fn json_opt_reference(value: &serde_json::Value) -> Result<Option<Reference>, StoreError> {
    match value {
        serde_json::Value::Null => Ok(None),
        other => Reference::parse(json_str(other, "reference")?).map(Some).map_err(|_| undecodable("reference")),
    }
}

/// A grant from [`ACCOUNT_SNAPSHOT_GRANT`]'s array.
pub(crate) fn grant_from_json(value: &serde_json::Value) -> Result<Grant, StoreError> {
    let [id, account, kind, amount, free, priority, expires_at, created_at, reference, metadata, live, pinned, voided_at] =
        json_items(value, "grant", 13)?
    else {
        return Err(undecodable("grant"));
    };
    Ok(Grant {
        grant_id: grant_id(json_str(id, "grant_id")?)?,
        account_id: AccountId::parse(json_str(account, "account_id")?).map_err(|_| undecodable("account_id"))?,
        kind: GrantKind::parse(json_str(kind, "grant kind")?).ok_or_else(|| undecodable("grant kind"))?,
        amount: json_amount(amount, "grant amount")?,
        free: json_amount(free, "grant free")?,
        priority: i32::try_from(json_i64(priority, "priority")?).map_err(|_| undecodable("priority"))?,
        expires_at: json_opt_time(expires_at, "grant expires_at")?,
        created_at: Timestamp::from_micros(json_i64(created_at, "grant created_at")?),
        reference: json_opt_reference(reference)?,
        metadata: json_str(metadata, "grant metadata")?.to_owned(),
        live: live.as_bool().ok_or_else(|| undecodable("live"))?,
        pinned: json_amount(pinned, "grant pinned")?,
        voided_at: json_opt_time(voided_at, "grant voided_at")?,
    })
}

/// A hold from [`ACCOUNT_SNAPSHOT_HOLD`]'s array.
pub(crate) fn hold_from_json(value: &serde_json::Value) -> Result<Hold, StoreError> {
    let [id, account, amount, captured, remaining, refunded, state, expires_at, created_at, reference, metadata, allocations] =
        json_items(value, "hold", 12)?
    else {
        return Err(undecodable("hold"));
    };
    Ok(Hold {
        hold_id: hold_id(json_str(id, "hold_id")?)?,
        account_id: AccountId::parse(json_str(account, "account_id")?).map_err(|_| undecodable("account_id"))?,
        amount: json_amount(amount, "hold amount")?,
        captured: json_amount(captured, "captured")?,
        remaining: json_amount(remaining, "remaining")?,
        refunded: json_amount(refunded, "hold refunded")?,
        state: HoldState::parse(json_str(state, "hold state")?).ok_or_else(|| undecodable("hold state"))?,
        expires_at: Timestamp::from_micros(json_i64(expires_at, "hold expires_at")?),
        created_at: Timestamp::from_micros(json_i64(created_at, "hold created_at")?),
        reference: json_opt_reference(reference)?,
        metadata: json_str(metadata, "hold metadata")?.to_owned(),
        allocations: codec::decode_allocations(json_str(allocations, "allocations")?)?,
    })
}
