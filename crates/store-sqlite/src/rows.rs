//! Rows to ledger values and back, plus the queries the writer and the readers share.
//!
//! Amounts and times live in `INTEGER` columns. Every conversion is checked, so a row that does
//! not fit the ledger's types becomes [`StoreError::Corrupt`] instead of a wrong number, and no
//! driver error ever panics.

use ledger::{
    AccountId, AccountState, Allowance, Amount, Entry, EntryKind, Grant, GrantId, GrantKind, Hold, HoldId, HoldState,
    Reference, Timestamp, Totals,
};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};
use store::events::{EventType, NewEvent, StoredEvent, EVENTS_PAGE_MAX};
use store::protocol::PendingHolds;
use store::{codec, StoreError, HOLDS_PAGE_MAX};

/// Maps a driver error: damaged data and violated constraints are `Corrupt` (a bug or tampering,
/// never worth retrying); everything else (I/O, busy, full disk) is `Unavailable`.
pub(crate) fn sql_error(error: rusqlite::Error) -> StoreError {
    let detail = format!("sqlite: {error}");
    let corrupt = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::ConstraintViolation
                | ErrorCode::TypeMismatch
        ),
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => true,
        _ => false,
    };
    let mapped = if corrupt { StoreError::corrupt(detail) } else { StoreError::unavailable(detail) };
    mapped.with_source(error)
}

/// Amounts are capped by the ledger far below `i64::MAX`; a larger one is a broken invariant.
pub(crate) fn amount_to_sql(amount: Amount) -> Result<i64, StoreError> {
    i64::try_from(amount.micros()).map_err(|_| StoreError::corrupt(format!("amount {amount} does not fit a column")))
}

fn get<T: rusqlite::types::FromSql>(row: &Row<'_>, index: usize) -> Result<T, StoreError> {
    row.get(index).map_err(sql_error)
}

fn get_amount(row: &Row<'_>, index: usize, what: &str) -> Result<Amount, StoreError> {
    let micros: i64 = get(row, index)?;
    u64::try_from(micros).map(Amount::from_micros).map_err(|_| StoreError::corrupt(format!("negative {what} {micros}")))
}

fn get_time(row: &Row<'_>, index: usize) -> Result<Timestamp, StoreError> {
    get::<i64>(row, index).map(Timestamp::from_micros)
}

fn get_reference(row: &Row<'_>, index: usize) -> Result<Option<Reference>, StoreError> {
    match get::<Option<String>>(row, index)? {
        None => Ok(None),
        Some(text) => Reference::parse(&text).map(Some).map_err(|error| StoreError::corrupt(format!("stored {error}"))),
    }
}

fn parse_account_id(text: &str) -> Result<AccountId, StoreError> {
    AccountId::parse(text).map_err(|error| StoreError::corrupt(format!("stored {error}")))
}

fn get_account_id(row: &Row<'_>, index: usize) -> Result<AccountId, StoreError> {
    parse_account_id(&get::<String>(row, index)?)
}

fn get_hold_id(row: &Row<'_>, index: usize) -> Result<HoldId, StoreError> {
    HoldId::parse(&get::<String>(row, index)?).map_err(|error| StoreError::corrupt(format!("stored {error}")))
}

fn get_grant_id(row: &Row<'_>, index: usize) -> Result<GrantId, StoreError> {
    GrantId::parse(&get::<String>(row, index)?).map_err(|error| StoreError::corrupt(format!("stored {error}")))
}

/// Runs a query and decodes every row with a decoder that may fail with a [`StoreError`].
fn query_all<T>(
    statement: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = statement.query(params).map_err(sql_error)?;
    let mut list = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        list.push(decode(row)?);
    }
    Ok(list)
}

const GRANT_COLUMNS: &str = "grant_id, account_id, kind, amount, free, priority, expires_at, created_at, reference, \
     metadata, live, pinned, voided_at";

fn decode_grant(row: &Row<'_>) -> Result<Grant, StoreError> {
    let kind: String = get(row, 2)?;
    Ok(Grant {
        grant_id: get_grant_id(row, 0)?,
        account_id: get_account_id(row, 1)?,
        kind: GrantKind::parse(&kind).ok_or_else(|| StoreError::corrupt(format!("unknown grant kind {kind:?}")))?,
        amount: get_amount(row, 3, "grant amount")?,
        free: get_amount(row, 4, "grant free part")?,
        priority: get(row, 5)?,
        expires_at: get::<Option<i64>>(row, 6)?.map(Timestamp::from_micros),
        created_at: get_time(row, 7)?,
        reference: get_reference(row, 8)?,
        metadata: get(row, 9)?,
        live: get(row, 10)?,
        pinned: get_amount(row, 11, "grant pinned part")?,
        voided_at: get::<Option<i64>>(row, 12)?.map(Timestamp::from_micros),
    })
}

const HOLD_COLUMNS: &str =
    "hold_id, account_id, amount, captured, remaining, refunded, state, expires_at, created_at, \
                            reference, metadata, allocations";

fn decode_hold(row: &Row<'_>) -> Result<Hold, StoreError> {
    let state: String = get(row, 6)?;
    let allocations: String = get(row, 11)?;
    Ok(Hold {
        hold_id: get_hold_id(row, 0)?,
        account_id: get_account_id(row, 1)?,
        amount: get_amount(row, 2, "hold amount")?,
        captured: get_amount(row, 3, "hold captured")?,
        remaining: get_amount(row, 4, "hold remaining")?,
        refunded: get_amount(row, 5, "hold refunded")?,
        state: HoldState::parse(&state).ok_or_else(|| StoreError::corrupt(format!("unknown hold state {state:?}")))?,
        expires_at: get_time(row, 7)?,
        created_at: get_time(row, 8)?,
        reference: get_reference(row, 9)?,
        metadata: get(row, 10)?,
        allocations: codec::decode_allocations(&allocations)?,
    })
}

const ENTRY_COLUMNS: &str =
    "seq, account_id, kind, amount, hold_id, grant_id, reference, balance_after, held_after, at, idempotency_key";

fn decode_entry(row: &Row<'_>) -> Result<Entry, StoreError> {
    let seq: i64 = get(row, 0)?;
    let kind: String = get(row, 2)?;
    let hold_id = match get::<Option<String>>(row, 4)? {
        None => None,
        Some(_) => Some(get_hold_id(row, 4)?),
    };
    let grant_id = match get::<Option<String>>(row, 5)? {
        None => None,
        Some(_) => Some(get_grant_id(row, 5)?),
    };
    Ok(Entry {
        seq: u64::try_from(seq).map_err(|_| StoreError::corrupt(format!("entry seq {seq}")))?,
        account_id: get_account_id(row, 1)?,
        kind: EntryKind::parse(&kind).ok_or_else(|| StoreError::corrupt(format!("unknown entry kind {kind:?}")))?,
        amount: get_amount(row, 3, "entry amount")?,
        hold_id,
        grant_id,
        reference: get_reference(row, 6)?,
        balance_after: get_amount(row, 7, "entry balance_after")?,
        held_after: get_amount(row, 8, "entry held_after")?,
        at: get_time(row, 9)?,
        idempotency_key: get(row, 10)?,
    })
}

/// The account row's creation time, totals, held and low-balance threshold, or `None` when the
/// account does not exist.
#[allow(clippy::type_complexity)]
fn account_row(
    conn: &Connection,
    account_id: &AccountId,
) -> Result<Option<(Timestamp, Totals, Amount, Option<Amount>)>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT created_at, spent, refunded, held, low_balance_threshold FROM accounts WHERE account_id = ?1",
        )
        .map_err(sql_error)?;
    let mut rows = statement.query([account_id.as_str()]).map_err(sql_error)?;
    let Some(row) = rows.next().map_err(sql_error)? else { return Ok(None) };
    let totals = Totals { spent: get_amount(row, 1, "spent")?, refunded: get_amount(row, 2, "refunded")? };
    let threshold: Option<i64> = get(row, 4)?;
    let threshold = threshold
        .map(|micros| u64::try_from(micros).map(Amount::from_micros).map_err(|_| codec::undecodable("threshold")))
        .transpose()?;
    Ok(Some((get_time(row, 0)?, totals, get_amount(row, 3, "held")?, threshold)))
}

/// The state the ledger decides on: the account row, its live grants and the pending holds
/// `pending_holds` names (the due ones, by the index on pending holds by account and expiry).
/// Callers that need a consistent picture call this inside a transaction.
pub(crate) fn load_account(
    conn: &Connection,
    account_id: &AccountId,
    pending_holds: PendingHolds,
) -> Result<Option<AccountState>, StoreError> {
    let Some((created_at, totals, held, low_balance_threshold)) = account_row(conn, account_id)? else {
        return Ok(None);
    };
    let grants = {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ?1 AND live = 1 ORDER BY rowid");
        let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
        query_all(&mut statement, [account_id.as_str()], decode_grant)?
    };
    let holds = pending(conn, account_id, pending_holds)?;
    let PendingHolds::DueAt(now) = pending_holds;
    let allowances = allowances(conn, account_id, now)?;
    Ok(Some(AccountState {
        account_id: account_id.clone(),
        created_at,
        totals,
        held,
        grants,
        holds,
        allowances,
        low_balance_threshold,
    }))
}

/// The account's allowances that have not ended at `now` (at most `ALLOWANCES_ACTIVE_MAX`),
/// oldest first.
pub(crate) fn allowances(
    conn: &Connection,
    account_id: &AccountId,
    now: Timestamp,
) -> Result<Vec<Allowance>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT data FROM allowances WHERE account_id = ?1 AND (ends_at IS NULL OR ends_at > ?2) ORDER BY rowid",
        )
        .map_err(sql_error)?;
    query_all(&mut statement, params![account_id.as_str(), now.micros()], |row| {
        codec::decode_allowance_text(&get::<String>(row, 0)?)
    })
}

/// Inserts a new allowance or rewrites an existing one (its end, its granted period and next
/// due time change). An id of another account is refused rather than overwritten.
pub(crate) fn upsert_allowance(conn: &Connection, allowance: &Allowance) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO allowances (allowance_id, account_id, ends_at, next_due_at, data) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (allowance_id) DO UPDATE SET ends_at = excluded.ends_at, \
                 next_due_at = excluded.next_due_at, data = excluded.data \
             WHERE allowances.account_id = excluded.account_id",
        )
        .map_err(sql_error)?;
    let written = statement
        .execute(params![
            allowance.allowance_id.as_str(),
            allowance.account_id.as_str(),
            allowance.ends_at.map(Timestamp::micros),
            allowance.next_due_at.map(Timestamp::micros),
            codec::encode_allowance(allowance).to_string(),
        ])
        .map_err(sql_error)?;
    if written != 1 {
        let id = &allowance.allowance_id;
        return Err(StoreError::corrupt(format!("allowance id {id} already belongs to another account")));
    }
    Ok(())
}

/// The account's pending holds that `pending_holds` names, in expiry order: O(due), through
/// `holds_pending_by_account_expiry`.
pub(crate) fn pending(
    conn: &Connection,
    account_id: &AccountId,
    pending_holds: PendingHolds,
) -> Result<Vec<Hold>, StoreError> {
    let PendingHolds::DueAt(at) = pending_holds;
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND state = 'pending' AND expires_at <= ?2 \
         ORDER BY expires_at, hold_id"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    query_all(&mut statement, params![account_id.as_str(), at.micros()], decode_hold)
}

/// One page of an account's holds that read as `state` at `now` (a pending hold at or past its
/// expiry reads as expired), as stored, in hold-id order after `after`.
pub(crate) fn holds_page(
    conn: &Connection,
    account_id: &AccountId,
    state: HoldState,
    after: Option<&HoldId>,
    limit: u32,
    now: Timestamp,
) -> Result<Vec<Hold>, StoreError> {
    let after = after.map_or("", HoldId::as_str);
    let limit = i64::from(limit.min(HOLDS_PAGE_MAX));
    let (sql, bind) = match state {
        HoldState::Pending => (
            format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND state = 'pending' AND hold_id > ?2 \
                 AND expires_at > ?3 ORDER BY hold_id LIMIT ?4"
            ),
            now.micros(),
        ),
        // Stored expired, or pending and at its expiry (both through the (account, state,
        // hold_id) index, merged in hold-id order).
        HoldState::Expired => (
            format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND hold_id > ?2 \
                 AND (state = 'expired' OR (state = 'pending' AND expires_at <= ?3)) ORDER BY hold_id LIMIT ?4"
            ),
            now.micros(),
        ),
        HoldState::Captured | HoldState::Released => (
            format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND hold_id > ?2 AND state = ?3 \
                 ORDER BY hold_id LIMIT ?4"
            ),
            0,
        ),
    };
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    match state {
        HoldState::Captured | HoldState::Released => {
            let _ = bind;
            query_all(&mut statement, params![account_id.as_str(), after, state.as_str(), limit], decode_hold)
        }
        HoldState::Pending | HoldState::Expired => {
            query_all(&mut statement, params![account_id.as_str(), after, bind, limit], decode_hold)
        }
    }
}

pub(crate) fn hold(conn: &Connection, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = statement.query([hold_id.as_str()]).map_err(sql_error)?;
    match rows.next().map_err(sql_error)? {
        Some(row) => decode_hold(row).map(Some),
        None => Ok(None),
    }
}

/// The account a hold belongs to, for commands that name only the hold.
pub(crate) fn hold_account(conn: &Connection, hold_id: &HoldId) -> Result<Option<AccountId>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT account_id FROM holds WHERE hold_id = ?1").map_err(sql_error)?;
    let text: Option<String> =
        statement.query_row([hold_id.as_str()], |row| row.get(0)).optional().map_err(sql_error)?;
    text.as_deref().map(parse_account_id).transpose()
}

pub(crate) fn grant_by_reference(
    conn: &Connection,
    account_id: &AccountId,
    kind: GrantKind,
    reference: &Reference,
) -> Result<Option<Grant>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ?1 AND kind = ?2 AND reference = ?3");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows =
        statement.query(params![account_id.as_str(), kind.as_str(), reference.as_str()]).map_err(sql_error)?;
    match rows.next().map_err(sql_error)? {
        Some(row) => decode_grant(row).map(Some),
        None => Ok(None),
    }
}

/// Pending holds of an account that have not reached their expiry at `now`, oldest first.
pub(crate) fn active_holds(conn: &Connection, account_id: &AccountId, now: Timestamp) -> Result<Vec<Hold>, StoreError> {
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND state = 'pending' AND expires_at > ?2 \
         ORDER BY created_at, hold_id"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    query_all(&mut statement, params![account_id.as_str(), now.micros()], decode_hold)
}

/// Every hold of an account in any state (for verification).
pub(crate) fn all_holds(conn: &Connection, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 ORDER BY created_at, hold_id");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    query_all(&mut statement, [account_id.as_str()], decode_hold)
}

/// Every grant of an account with a `pinned` part, and that part (for verification).
pub(crate) fn pinned_grants(conn: &Connection, account_id: &AccountId) -> Result<Vec<(GrantId, Amount)>, StoreError> {
    let mut statement = conn
        .prepare_cached("SELECT grant_id, pinned FROM grants WHERE account_id = ?1 AND pinned > 0")
        .map_err(sql_error)?;
    query_all(&mut statement, [account_id.as_str()], |row| {
        Ok((get_grant_id(row, 0)?, get_amount(row, 1, "grant pinned part")?))
    })
}

/// Sum of the free part of every grant of an account.
pub(crate) fn free_sum(conn: &Connection, account_id: &AccountId) -> Result<Amount, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT COALESCE(SUM(free), 0) FROM grants WHERE account_id = ?1").map_err(sql_error)?;
    let micros: i64 = statement.query_row([account_id.as_str()], |row| row.get(0)).map_err(sql_error)?;
    u64::try_from(micros)
        .map(Amount::from_micros)
        .map_err(|_| StoreError::corrupt(format!("negative free sum {micros}")))
}

pub(crate) fn entries(
    conn: &Connection,
    account_id: &AccountId,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<Entry>, StoreError> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE account_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    query_all(&mut statement, params![account_id.as_str(), after, i64::from(limit)], decode_entry)
}

/// See [`store::LedgerStore::filtered_entries`]: one statement, a condition left out by a NULL.
pub(crate) fn filtered_entries(
    conn: &Connection,
    account_id: &AccountId,
    filter: &store::EntryFilter,
    after_seq: u64,
    limit: u32,
) -> Result<Vec<Entry>, StoreError> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE account_id = ?1 AND seq > ?2 \
         AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR at >= ?4) AND (?5 IS NULL OR at < ?5) \
         AND (?6 IS NULL OR reference = ?6) ORDER BY seq LIMIT ?7"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let params = params![
        account_id.as_str(),
        after,
        filter.kind.map(EntryKind::as_str),
        filter.from.map(Timestamp::micros),
        filter.to.map(Timestamp::micros),
        filter.reference.as_ref().map(Reference::as_str),
        i64::from(limit),
    ];
    query_all(&mut statement, params, decode_entry)
}

/// The whole journal of one account in `seq` order (for verification).
pub(crate) fn all_entries(conn: &Connection, account_id: &AccountId) -> Result<Vec<Entry>, StoreError> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE account_id = ?1 ORDER BY seq");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    query_all(&mut statement, [account_id.as_str()], decode_entry)
}

/// A page of accounts in id order with their totals and held, starting after `after` (for
/// verification).
pub(crate) fn accounts_page(
    conn: &Connection,
    after: Option<&AccountId>,
    limit: u32,
) -> Result<Vec<(AccountId, Totals, Amount)>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT account_id, spent, refunded, held FROM accounts WHERE account_id > ?1 \
             ORDER BY account_id LIMIT ?2",
        )
        .map_err(sql_error)?;
    let after = after.map_or("", AccountId::as_str);
    query_all(&mut statement, params![after, i64::from(limit)], |row| {
        let totals = Totals { spent: get_amount(row, 1, "spent")?, refunded: get_amount(row, 2, "refunded")? };
        Ok((get_account_id(row, 0)?, totals, get_amount(row, 3, "held")?))
    })
}

/// Accounts named by journal entries that have no account row (at most `limit`).
pub(crate) fn orphan_journal_accounts(conn: &Connection, limit: u32) -> Result<Vec<AccountId>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT DISTINCT account_id FROM entries WHERE account_id NOT IN (SELECT account_id FROM accounts) \
             LIMIT ?1",
        )
        .map_err(sql_error)?;
    query_all(&mut statement, [i64::from(limit)], |row| get_account_id(row, 0))
}

/// Accounts with an expiry due at `now`: a pending hold at or past its expiry, free credits of
/// a live grant at or past its expiry, or an allowance with a period to grant. The same test as
/// `ledger::advance` producing entries.
pub(crate) fn due_accounts(conn: &Connection, now: Timestamp, limit: u32) -> Result<Vec<AccountId>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT account_id FROM holds WHERE state = 'pending' AND expires_at <= ?1 \
             UNION \
             SELECT account_id FROM grants WHERE live = 1 AND expires_at IS NOT NULL AND expires_at <= ?1 AND free > 0 \
             UNION \
             SELECT account_id FROM allowances WHERE next_due_at <= ?1 \
             LIMIT ?2",
        )
        .map_err(sql_error)?;
    query_all(&mut statement, params![now.micros(), i64::from(limit)], |row| get_account_id(row, 0))
}

pub(crate) fn upsert_account(conn: &Connection, state: &AccountState) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO accounts (account_id, created_at, spent, refunded, held, low_balance_threshold) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (account_id) DO UPDATE SET spent = excluded.spent, refunded = excluded.refunded, \
                 held = excluded.held, low_balance_threshold = excluded.low_balance_threshold",
        )
        .map_err(sql_error)?;
    statement
        .execute(params![
            state.account_id.as_str(),
            state.created_at.micros(),
            amount_to_sql(state.totals.spent)?,
            amount_to_sql(state.totals.refunded)?,
            amount_to_sql(state.held)?,
            state.low_balance_threshold.map(amount_to_sql).transpose()?,
        ])
        .map_err(sql_error)?;
    Ok(())
}

/// Inserts a new grant or updates the parts of an existing one that can change (`free`, `live`,
/// `pinned`).
/// A grant id that already belongs to another account is refused rather than overwritten.
pub(crate) fn upsert_grant(conn: &Connection, grant: &Grant) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO grants (grant_id, account_id, kind, amount, free, priority, expires_at, created_at, \
                                 reference, metadata, live, pinned, voided_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT (grant_id) DO UPDATE SET free = excluded.free, live = excluded.live, \
                 pinned = excluded.pinned, voided_at = excluded.voided_at \
             WHERE grants.account_id = excluded.account_id",
        )
        .map_err(sql_error)?;
    let written = statement
        .execute(params![
            grant.grant_id.as_str(),
            grant.account_id.as_str(),
            grant.kind.as_str(),
            amount_to_sql(grant.amount)?,
            amount_to_sql(grant.free)?,
            grant.priority,
            grant.expires_at.map(Timestamp::micros),
            grant.created_at.micros(),
            grant.reference.as_ref().map(Reference::as_str),
            grant.metadata,
            grant.live,
            amount_to_sql(grant.pinned)?,
            grant.voided_at.map(Timestamp::micros),
        ])
        .map_err(sql_error)?;
    if written != 1 {
        return Err(StoreError::corrupt(format!("grant id {} already belongs to another account", grant.grant_id)));
    }
    Ok(())
}

/// Inserts a new hold or updates the parts of an existing one that can change.
pub(crate) fn upsert_hold(conn: &Connection, hold: &Hold) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO holds (hold_id, account_id, amount, captured, remaining, refunded, state, expires_at, \
                                created_at, reference, metadata, allocations) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (hold_id) DO UPDATE SET captured = excluded.captured, remaining = excluded.remaining, \
                 refunded = excluded.refunded, state = excluded.state, expires_at = excluded.expires_at, \
                 allocations = excluded.allocations \
             WHERE holds.account_id = excluded.account_id",
        )
        .map_err(sql_error)?;
    let written = statement
        .execute(params![
            hold.hold_id.as_str(),
            hold.account_id.as_str(),
            amount_to_sql(hold.amount)?,
            amount_to_sql(hold.captured)?,
            amount_to_sql(hold.remaining)?,
            amount_to_sql(hold.refunded)?,
            hold.state.as_str(),
            hold.expires_at.micros(),
            hold.created_at.micros(),
            hold.reference.as_ref().map(Reference::as_str),
            hold.metadata,
            codec::encode_allocations(&hold.allocations),
        ])
        .map_err(sql_error)?;
    if written != 1 {
        return Err(StoreError::corrupt(format!("hold id {} already belongs to another account", hold.hold_id)));
    }
    Ok(())
}

/// Appends one journal entry; SQLite assigns `seq` (the rowid, always above every earlier one).
pub(crate) fn insert_entry(conn: &Connection, entry: &Entry) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO entries (account_id, kind, amount, hold_id, grant_id, reference, balance_after, \
                                  held_after, at, idempotency_key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(sql_error)?;
    statement
        .execute(params![
            entry.account_id.as_str(),
            entry.kind.as_str(),
            amount_to_sql(entry.amount)?,
            entry.hold_id.as_ref().map(HoldId::as_str),
            entry.grant_id.as_ref().map(GrantId::as_str),
            entry.reference.as_ref().map(Reference::as_str),
            amount_to_sql(entry.balance_after)?,
            amount_to_sql(entry.held_after)?,
            entry.at.micros(),
            entry.idempotency_key,
        ])
        .map_err(sql_error)?;
    Ok(())
}

/// The fingerprint and encoded result recorded for an idempotency key.
pub(crate) fn idempotency_record(conn: &Connection, key: &str) -> Result<Option<(String, String)>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT fingerprint, result FROM idempotency WHERE key = ?1").map_err(sql_error)?;
    statement.query_row([key], |row| Ok((row.get(0)?, row.get(1)?))).optional().map_err(sql_error)
}

pub(crate) fn insert_idempotency(
    conn: &Connection,
    key: &str,
    fingerprint: &str,
    result: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached("INSERT INTO idempotency (key, fingerprint, result, created_at) VALUES (?1, ?2, ?3, ?4)")
        .map_err(sql_error)?;
    statement.execute(params![key, fingerprint, result, now.micros()]).map_err(sql_error)?;
    Ok(())
}

/// Forgets idempotency keys recorded at or before `cutoff`; returns how many.
pub(crate) fn delete_idempotency_before(conn: &Connection, cutoff: Timestamp) -> Result<u64, StoreError> {
    let mut statement = conn.prepare_cached("DELETE FROM idempotency WHERE created_at <= ?1").map_err(sql_error)?;
    let deleted = statement.execute([cutoff.micros()]).map_err(sql_error)?;
    Ok(deleted as u64)
}

/// Most outbox rows one retention pass looks at (the oldest, by seq).
const EVENTS_FORGET_MAX: i64 = 10_000;

/// Forgets outbox events written at or before `cutoff` (their retention ended): of the oldest
/// [`EVENTS_FORGET_MAX`] by seq (the primary key: no index on time to keep up on every write),
/// those old enough. Rows are written in seq order by one writer, so the old ones come first.
pub(crate) fn delete_events_before(conn: &Connection, cutoff: Timestamp) -> Result<u64, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?2) AND created_at <= ?1",
        )
        .map_err(sql_error)?;
    let deleted = statement.execute(params![cutoff.micros(), EVENTS_FORGET_MAX]).map_err(sql_error)?;
    Ok(deleted as u64)
}

/// Appends an event to the outbox. Writer thread only, in the transaction of its change.
pub(crate) fn insert_event(conn: &Connection, event: &NewEvent, now: Timestamp) -> Result<(), StoreError> {
    let mut statement = conn
        .prepare_cached("INSERT INTO outbox (type, account_id, data, at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(sql_error)?;
    statement
        .execute(params![
            event.event_type.as_str(),
            event.account_id.as_str(),
            event.data,
            event.at.micros(),
            now.micros()
        ])
        .map_err(sql_error)?;
    Ok(())
}

/// The outbox's events after seq `after`, in seq order (one writer commits them in that order).
pub(crate) fn events(conn: &Connection, after: u128, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut statement = conn
        .prepare_cached(
            "SELECT seq, type, account_id, data, at, created_at FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(sql_error)?;
    query_all(&mut statement, params![after, i64::from(limit.min(EVENTS_PAGE_MAX))], |row| {
        let seq = u64::try_from(get::<i64>(row, 0)?).map_err(|_| codec::undecodable("event seq"))?;
        let event_type = EventType::parse(&get::<String>(row, 1)?).ok_or_else(|| codec::undecodable("event type"))?;
        let event =
            NewEvent { event_type, account_id: get_account_id(row, 2)?, data: get(row, 3)?, at: get_time(row, 4)? };
        Ok(StoredEvent { seq, position: u128::from(seq), event, created_at: get_time(row, 5)? })
    })
}

/// Inserts a plan unless its id exists (plans never change). Writer thread only.
pub(crate) fn put_plan(conn: &Connection, plan: &store::plans::Plan) -> Result<store::plans::PlanPut, StoreError> {
    if let Some(existing) = plan_by_id(conn, &plan.plan_id)? {
        return Ok(store::plans::PlanPut::Exists(existing));
    }
    let mut statement = conn.prepare_cached("INSERT INTO plans (plan_id, data) VALUES (?1, ?2)").map_err(sql_error)?;
    statement.execute(params![plan.plan_id.as_str(), store::plans::encode_plan(plan)]).map_err(sql_error)?;
    Ok(store::plans::PlanPut::Created(plan.clone()))
}

pub(crate) fn plan_by_id(
    conn: &Connection,
    plan_id: &ledger::PlanId,
) -> Result<Option<store::plans::Plan>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT data FROM plans WHERE plan_id = ?1").map_err(sql_error)?;
    let data: Option<String> =
        statement.query_row([plan_id.as_str()], |row| row.get(0)).optional().map_err(sql_error)?;
    data.map(|text| store::plans::decode_plan(&text)).transpose()
}

pub(crate) fn plans(conn: &Connection, plans_max: u32) -> Result<Vec<store::plans::Plan>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT data FROM plans ORDER BY plan_id LIMIT ?1").map_err(sql_error)?;
    query_all(&mut statement, [i64::from(plans_max)], |row| store::plans::decode_plan(&get::<String>(row, 0)?))
}

/// The whole store's open figures ([`store::StoreGauges`]): the pending holds through their
/// partial index, the queued and running jobs through the claim index.
pub(crate) fn gauges(conn: &Connection) -> Result<store::StoreGauges, StoreError> {
    let (pending_holds, held): (i64, i64) = conn
        .prepare_cached("SELECT COUNT(*), COALESCE(SUM(remaining), 0) FROM holds WHERE state = 'pending'")
        .and_then(|mut statement| statement.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
        .map_err(sql_error)?;
    let (jobs_queued, oldest): (i64, Option<i64>) = conn
        .prepare_cached("SELECT COUNT(*), MIN(created_at) FROM jobs WHERE status = 'queued'")
        .and_then(|mut statement| statement.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
        .map_err(sql_error)?;
    let jobs_running: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .map_err(sql_error)?;
    let count = |value: i64| u64::try_from(value).map_err(|_| StoreError::corrupt("a negative count"));
    Ok(store::StoreGauges {
        pending_holds: count(pending_holds)?,
        held: Amount::from_micros(count(held)?),
        jobs_queued: count(jobs_queued)?,
        jobs_running: count(jobs_running)?,
        oldest_queued_job_at: oldest.map(Timestamp::from_micros),
    })
}

/// See [`store::LedgerStore::account_ids`]: a range of the primary key. Ids are
/// `[A-Za-z0-9._-]`, so every id starting with `prefix` sorts below `prefix` + `~`.
pub(crate) fn account_ids(
    conn: &Connection,
    prefix: &str,
    after: Option<&AccountId>,
    limit: u32,
) -> Result<Vec<AccountId>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT account_id FROM accounts WHERE account_id > ?1 AND account_id >= ?2 AND account_id < ?3 \
             ORDER BY account_id LIMIT ?4",
        )
        .map_err(sql_error)?;
    let after = after.map_or("", AccountId::as_str);
    let below = format!("{prefix}~");
    let limit = i64::from(limit.min(store::ACCOUNTS_PAGE_MAX));
    query_all(&mut statement, params![after, prefix, below, limit], |row| row.get::<_, String>(0).map_err(sql_error))?
        .into_iter()
        .map(|id| AccountId::parse(&id).map_err(|_| StoreError::corrupt(format!("stored account id {id:?}"))))
        .collect()
}

/// See [`store::LedgerStore::daily_credits`].
pub(crate) fn daily_credits(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<store::DayCredits>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT at / ?3 AS day, kind, SUM(amount) FROM entries WHERE at >= ?1 AND at < ?2 \
             GROUP BY day, kind ORDER BY day, kind",
        )
        .map_err(sql_error)?;
    let rows = query_all(&mut statement, params![from.micros(), to.micros(), store::MICROS_PER_DAY], |row| {
        let day: i64 = row.get(0).map_err(sql_error)?;
        let kind: String = row.get(1).map_err(sql_error)?;
        let micros: i64 = row.get(2).map_err(sql_error)?;
        Ok((day, kind, micros))
    })?;
    rows.into_iter()
        .map(|(day, kind, micros)| {
            let kind = EntryKind::parse(&kind).ok_or_else(|| StoreError::corrupt(format!("entry kind {kind:?}")))?;
            let micros = u64::try_from(micros).map_err(|_| StoreError::corrupt("a negative sum of amounts"))?;
            Ok(store::DayCredits { day, kind, amount: Amount::from_micros(micros) })
        })
        .collect()
}

/// See [`store::LedgerStore::grant`].
pub(crate) fn grant_by_id(conn: &Connection, grant_id: &GrantId) -> Result<Option<Grant>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    Ok(query_all(&mut statement, [grant_id.as_str()], decode_grant)?.pop())
}

/// See [`store::LedgerStore::grants`]; the `grants_by_account` index serves it.
pub(crate) fn grants_page(
    conn: &Connection,
    account_id: &AccountId,
    state: store::GrantListState,
    after: Option<&GrantId>,
    limit: u32,
) -> Result<Vec<Grant>, StoreError> {
    // ?3 is the moment the state is judged at (unused for voided grants).
    let (filter, now) = match state {
        store::GrantListState::Active(now) => ("voided_at IS NULL AND (expires_at IS NULL OR expires_at > ?3)", now),
        store::GrantListState::Expired(now) => ("voided_at IS NULL AND expires_at <= ?3", now),
        store::GrantListState::Voided => ("voided_at IS NOT NULL AND ?3 IS NOT NULL", Timestamp::from_micros(0)),
    };
    let sql = format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ?1 AND grant_id > ?2 AND {filter} \
         ORDER BY grant_id LIMIT ?4"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let after = after.map_or("", GrantId::as_str);
    let limit = i64::from(limit.min(store::GRANTS_PAGE_MAX));
    query_all(&mut statement, params![account_id.as_str(), after, now.micros(), limit], decode_grant)
}
