//! One attempt at applying one command: a single READ COMMITTED transaction.
//!
//! The order of steps is what makes it correct with many server processes on one database:
//! 1. the idempotency key is claimed first (`INSERT … ON CONFLICT DO NOTHING`), so a concurrent
//!    request with the same key waits on the key's index entry until this one commits, then finds
//!    the recorded result and replays it;
//! 2. the account row is locked (`SELECT … FOR UPDATE`), which serialises every change of one
//!    account across processes, and so keeps the account's journal `seq` increasing;
//! 3. the state is loaded under that lock, decided by [`ledger::execute`], written back, and the
//!    result recorded on the idempotency row, all in the same transaction.
//!
//! A transaction locks at most one account row, after at most one idempotency key, so two of
//! them cannot wait on each other in a cycle; deadlocks and unique violations can still come
//! from outside (a new account created by two transactions at once) and are retried by the
//! caller.
//!
//! [`apply`] runs these steps inside a transaction it does not own, so a job write (see
//! [`crate::jobs`]) applies its ledger request in its own transaction, after its job row; the
//! job row is then the only lock taken before the key and the account, and always first.

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::Transaction;
use futures::future::{maybe_done, MaybeDone};
use ledger::{AccountId, AccountState, Applied, Command, Rejection, Target, Timestamp, Totals};
use store::{codec, Executed, Request, StoreError};
use tokio_postgres::types::ToSql;

use crate::error::{Failure, RetryCause};
use crate::rows::{self, sql_amount, ACCOUNT_COLUMNS, GRANT_COLUMNS, HOLD_COLUMNS};

const CLAIM_KEY: &str = "INSERT INTO idempotency (key, fingerprint, result, created_at) VALUES ($1, $2, '', $3) \
     ON CONFLICT (key) DO NOTHING";
const READ_KEY: &str = "SELECT fingerprint, result FROM idempotency WHERE key = $1";
const RECORD_RESULT: &str = "UPDATE idempotency SET result = $2 WHERE key = $1";
pub(crate) const HOLD_ACCOUNT: &str = "SELECT account_id FROM holds WHERE hold_id = $1";
const INSERT_ACCOUNT: &str = "INSERT INTO accounts (account_id, created_at, spent, refunded) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (account_id) DO NOTHING";
const UPDATE_ACCOUNT: &str = "UPDATE accounts SET spent = $2, refunded = $3 WHERE account_id = $1";
const UPSERT_GRANT: &str = "INSERT INTO grants (grant_id, account_id, kind, amount, free, priority, expires_at, \
     created_at, reference, metadata, live) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
     ON CONFLICT (grant_id) DO UPDATE SET amount = EXCLUDED.amount, free = EXCLUDED.free, \
     priority = EXCLUDED.priority, expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference, \
     metadata = EXCLUDED.metadata, live = EXCLUDED.live";
const UPSERT_HOLD: &str = "INSERT INTO holds (hold_id, account_id, amount, captured, remaining, refunded, state, \
     expires_at, created_at, reference, metadata, allocations) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (hold_id) DO UPDATE SET amount = EXCLUDED.amount, captured = EXCLUDED.captured, \
     remaining = EXCLUDED.remaining, refunded = EXCLUDED.refunded, state = EXCLUDED.state, \
     expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference, metadata = EXCLUDED.metadata, \
     allocations = EXCLUDED.allocations";
const INSERT_ENTRY: &str = "INSERT INTO entries (account_id, kind, amount, hold_id, grant_id, reference, \
     balance_after, held_after, at, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq";

fn lock_account_sql() -> String {
    format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1 FOR UPDATE")
}
fn live_grants_sql() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = $1 AND live ORDER BY created_at, grant_id")
}
fn pending_holds_sql() -> String {
    format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = $1 AND state = 'pending' ORDER BY created_at, hold_id")
}
fn hold_by_id_sql() -> String {
    format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = $1")
}
fn grant_by_reference_sql() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = $1 AND kind = $2 AND reference = $3")
}

/// What one committed (or rolled back) attempt produced.
pub(crate) struct Attempt {
    pub executed: Executed,
    /// Whether the transaction committed (ledger changes, an idempotency record, or both).
    pub committed: bool,
}

/// Runs one attempt in `transaction`, committing or rolling it back before returning `Ok`.
/// On `Err` the transaction is dropped, which rolls it back.
pub(crate) async fn attempt(
    transaction: Transaction<'_>,
    request: &Request,
    now: Timestamp,
) -> Result<Attempt, Failure> {
    let Application { executed, wrote } = apply(&transaction, request, now).await?;
    if wrote {
        transaction.commit().await?;
    } else {
        transaction.rollback().await?;
    }
    Ok(Attempt { executed, committed: wrote })
}

/// What [`apply`] did inside its caller's transaction, not yet committed.
pub(crate) struct Application {
    pub executed: Executed,
    /// Whether it wrote anything (ledger changes, an idempotency record): a lone command commits
    /// only then.
    pub wrote: bool,
}

/// Applies `request` inside `transaction` (claim the key, lock the account, decide, write,
/// record), leaving the commit or rollback to the caller. On `Err` the caller must drop the
/// transaction.
pub(crate) async fn apply(
    transaction: &Transaction<'_>,
    request: &Request,
    now: Timestamp,
) -> Result<Application, Failure> {
    if let Some(idempotency) = &request.idempotency {
        let claim = transaction.prepare_cached(CLAIM_KEY).await?;
        let claimed = transaction.execute(&claim, &[&idempotency.key, &idempotency.fingerprint, &now.micros()]).await?;
        if claimed == 0 {
            // The key exists, committed: the INSERT waited for any transaction still holding it.
            let read = transaction.prepare_cached(READ_KEY).await?;
            let row = transaction.query_opt(&read, &[&idempotency.key]).await?;
            let Some(row) = row else {
                // Swept between the two statements (only possible past the retention period).
                return Err(Failure::Retry { cause: RetryCause::Race, detail: "idempotency key vanished".to_owned() });
            };
            let corrupt = |_| StoreError::Corrupt { detail: "undecodable idempotency record".to_owned() };
            let fingerprint: &str = row.try_get(0).map_err(corrupt)?;
            let recorded: &str = row.try_get(1).map_err(corrupt)?;
            let executed = if fingerprint != idempotency.fingerprint {
                Executed::Conflict
            } else {
                Executed::Replayed(codec::decode_result(recorded)?)
            };
            return Ok(Application { executed, wrote: false });
        }
    }
    let key = request.idempotency.as_ref().map(|idempotency| idempotency.key.as_str());
    let (result, changed) = match decide(transaction, &request.command, now, key).await? {
        Ok((applied, totals_before)) => {
            let result = Ok(applied.outcome.clone());
            let record = request
                .idempotency
                .as_ref()
                .map(|idempotency| (idempotency.key.as_str(), codec::encode_result(&result)));
            write(transaction, &applied, totals_before, record).await?;
            (result, !applied.changes.is_empty())
        }
        Err(rejection) => {
            let result = Err(rejection);
            if let Some(idempotency) = &request.idempotency {
                let record = transaction.prepare_cached(RECORD_RESULT).await?;
                transaction.execute(&record, &[&idempotency.key, &codec::encode_result(&result)]).await?;
            }
            (result, false)
        }
    };
    Ok(Application { executed: Executed::Fresh(result), wrote: changed || request.idempotency.is_some() })
}

/// Finds and locks the command's account, loads its state and lets the ledger decide. With the
/// decision comes the account's totals as loaded (`None`: the account did not exist).
async fn decide(
    transaction: &Transaction<'_>,
    command: &Command,
    now: Timestamp,
    key: Option<&str>,
) -> Result<Result<(Applied, Option<Totals>), Rejection>, Failure> {
    let account_id = match command.target() {
        Target::Account(account_id) => account_id.clone(),
        Target::Hold(hold_id) => {
            let statement = transaction.prepare_cached(HOLD_ACCOUNT).await?;
            let Some(row) = transaction.query_opt(&statement, &[&hold_id.as_str()]).await? else {
                return Ok(Err(Rejection::HoldNotFound));
            };
            let text: &str = row.try_get(0).map_err(|_| corrupt("hold account_id"))?;
            AccountId::parse(text).map_err(|_| corrupt("hold account_id"))?
        }
    };
    let state = load(transaction, &account_id, command).await?;
    let totals_before = state.as_ref().map(|state| state.totals);
    Ok(ledger::execute(state, command, now, key).map(|applied| (applied, totals_before)))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt { detail: format!("undecodable stored {what}") }
}

/// Locks the account row and loads what [`ledger::execute`] needs: live grants, pending holds,
/// the hold the command names (any state, same account) and the grant its reference names.
/// `Ok(None)`: no such account (a grant then creates it on write).
async fn load(
    transaction: &Transaction<'_>,
    account_id: &AccountId,
    command: &Command,
) -> Result<Option<AccountState>, Failure> {
    let lock = transaction.prepare_cached(&lock_account_sql()).await?;
    let Some(account_row) = transaction.query_opt(&lock, &[&account_id.as_str()]).await? else {
        return Ok(None);
    };
    let (_, created_at, totals) = rows::account(&account_row)?;
    let grants_statement = transaction.prepare_cached(&live_grants_sql()).await?;
    let holds_statement = transaction.prepare_cached(&pending_holds_sql()).await?;
    let hold_statement = transaction.prepare_cached(&hold_by_id_sql()).await?;
    let reference_statement = transaction.prepare_cached(&grant_by_reference_sql()).await?;
    let named_hold = async {
        match command.hold_to_load() {
            Some(hold_id) => transaction.query_opt(&hold_statement, &[&hold_id.as_str()]).await,
            None => Ok(None),
        }
    };
    let referenced_grant = async {
        match command.grant_reference_to_load() {
            Some((kind, reference)) => {
                let params: [&(dyn ToSql + Sync); 3] = [&account_id.as_str(), &kind.as_str(), &reference.as_str()];
                transaction.query_opt(&reference_statement, &params).await
            }
            None => Ok(None),
        }
    };
    // Pipelined: the four reads travel in one round trip.
    let id = account_id.as_str();
    let by_account: [&(dyn ToSql + Sync); 1] = [&id];
    let (grant_rows, hold_rows, named_hold, referenced_grant) = tokio::try_join!(
        transaction.query(&grants_statement, &by_account),
        transaction.query(&holds_statement, &by_account),
        named_hold,
        referenced_grant,
    )?;
    let mut state = AccountState::new(account_id.clone(), created_at);
    state.totals = totals;
    state.grants = grant_rows.iter().map(rows::grant).collect::<Result<_, _>>()?;
    state.holds = hold_rows.iter().map(rows::hold).collect::<Result<_, _>>()?;
    // A hold of another account is simply not loaded: the ledger then answers `hold_not_found`,
    // after checking what comes first (a refund's reference), as every store does.
    if let Some(hold) = named_hold.as_ref().map(rows::hold).transpose()? {
        if &hold.account_id == account_id && state.hold(&hold.hold_id).is_none() {
            state.holds.push(hold);
        }
    }
    if let Some(grant) = referenced_grant.as_ref().map(rows::grant).transpose()? {
        if state.grant(&grant.grant_id).is_none() {
            state.grants.push(grant);
        }
    }
    Ok(Some(state))
}

/// One pipelined statement: a row count for upserts, the assigned `seq` for entries.
type Pending<'a> = Pin<Box<dyn Future<Output = Result<i64, tokio_postgres::Error>> + Send + 'a>>;

fn count(rows: u64) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}

/// Polls every future in `pending` in list order on each wake-up, so their first polls (which
/// send the statements) happen in that order, and returns the outputs in that order.
/// (`futures::join_all` switches to an unordered set above 30 futures.)
async fn join_in_order(pending: Vec<Pending<'_>>) -> Vec<Result<i64, tokio_postgres::Error>> {
    let mut slots: Vec<MaybeDone<Pending<'_>>> = pending.into_iter().map(maybe_done).collect();
    std::future::poll_fn(|context| {
        let mut done = true;
        for slot in &mut slots {
            done &= Pin::new(slot).poll(context).is_ready();
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    slots.iter_mut().map(|slot| Pin::new(slot).take_output().expect("every joined future completed")).collect()
}

/// Writes what the ledger changed: the account row (inserted when new; updated only when its
/// totals moved, so a hold does not rewrite the row every waiter is queued on), touched grants
/// and holds (upserted as they stand in the new state), the journal entries in order, and the
/// idempotency record's result.
///
/// The statements are pipelined: sent together, executed by the server in the order sent. The
/// entries' `seq` values are read back and checked to increase in journal order before commit.
async fn write(
    transaction: &Transaction<'_>,
    applied: &Applied,
    totals_before: Option<Totals>,
    record: Option<(&str, String)>,
) -> Result<(), Failure> {
    let Applied { state, changes, .. } = applied;
    let account_id = state.account_id.as_str();
    let spent = sql_amount(state.totals.spent)?;
    let refunded = sql_amount(state.totals.refunded)?;
    let created_at = state.created_at.micros();
    let mut pending: Vec<Pending<'_>> =
        Vec::with_capacity(2 + changes.grants.len() + changes.holds.len() + changes.entries.len());

    let write_account = changes.account_created || totals_before.is_some_and(|totals| totals != state.totals);
    if write_account {
        let sql = if changes.account_created { INSERT_ACCOUNT } else { UPDATE_ACCOUNT };
        let statement = transaction.prepare_cached(sql).await?;
        let created = changes.account_created;
        pending.push(Box::pin(async move {
            if created {
                transaction.execute(&statement, &[&account_id, &created_at, &spent, &refunded]).await.map(count)
            } else {
                transaction.execute(&statement, &[&account_id, &spent, &refunded]).await.map(count)
            }
        }));
    }
    if !changes.grants.is_empty() {
        let statement = transaction.prepare_cached(UPSERT_GRANT).await?;
        for grant_id in &changes.grants {
            let grant = state.grant(grant_id).expect("a touched grant is in the applied state");
            let amount = sql_amount(grant.amount)?;
            let free = sql_amount(grant.free)?;
            let expires_at = grant.expires_at.map(Timestamp::micros);
            let created_at = grant.created_at.micros();
            let reference = grant.reference.as_ref().map(|reference| reference.as_str());
            let statement = statement.clone();
            pending.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 11] = [
                    &grant.grant_id.as_str(),
                    &grant.account_id.as_str(),
                    &grant.kind.as_str(),
                    &amount,
                    &free,
                    &grant.priority,
                    &expires_at,
                    &created_at,
                    &reference,
                    &grant.metadata,
                    &grant.live,
                ];
                transaction.execute(&statement, &params).await.map(count)
            }));
        }
    }
    if !changes.holds.is_empty() {
        let statement = transaction.prepare_cached(UPSERT_HOLD).await?;
        for hold_id in &changes.holds {
            let hold = state.hold(hold_id).expect("a touched hold is in the applied state");
            let amount = sql_amount(hold.amount)?;
            let captured = sql_amount(hold.captured)?;
            let remaining = sql_amount(hold.remaining)?;
            let refunded = sql_amount(hold.refunded)?;
            let expires_at = hold.expires_at.micros();
            let created_at = hold.created_at.micros();
            let reference = hold.reference.as_ref().map(|reference| reference.as_str());
            let allocations = codec::encode_allocations(&hold.allocations);
            let statement = statement.clone();
            pending.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 12] = [
                    &hold.hold_id.as_str(),
                    &hold.account_id.as_str(),
                    &amount,
                    &captured,
                    &remaining,
                    &refunded,
                    &hold.state.as_str(),
                    &expires_at,
                    &created_at,
                    &reference,
                    &hold.metadata,
                    &allocations,
                ];
                transaction.execute(&statement, &params).await.map(count)
            }));
        }
    }
    let entries_start = pending.len();
    if !changes.entries.is_empty() {
        let statement = transaction.prepare_cached(INSERT_ENTRY).await?;
        for entry in &changes.entries {
            let amount = sql_amount(entry.amount)?;
            let balance_after = sql_amount(entry.balance_after)?;
            let held_after = sql_amount(entry.held_after)?;
            let at = entry.at.micros();
            let statement = statement.clone();
            pending.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 10] = [
                    &entry.account_id.as_str(),
                    &entry.kind.as_str(),
                    &amount,
                    &entry.hold_id.as_ref().map(|id| id.as_str()),
                    &entry.grant_id.as_ref().map(|id| id.as_str()),
                    &entry.reference.as_ref().map(|reference| reference.as_str()),
                    &balance_after,
                    &held_after,
                    &at,
                    &entry.idempotency_key.as_deref(),
                ];
                transaction.query_one(&statement, &params).await?.try_get(0)
            }));
        }
    }
    let entries_end = pending.len();
    if let Some((key, result)) = record {
        let statement = transaction.prepare_cached(RECORD_RESULT).await?;
        pending.push(Box::pin(async move { transaction.execute(&statement, &[&key, &result]).await.map(count) }));
    }

    // One join, so every statement is sent (in this order) before any answer is awaited. The
    // first error in sending order is the real one: later statements fail only because the
    // transaction aborted.
    let mut results = Vec::with_capacity(pending.len());
    for result in join_in_order(pending).await {
        results.push(result?);
    }
    let mut previous_seq = 0_i64;
    for &seq in &results[entries_start..entries_end] {
        if seq <= previous_seq {
            return Err(Failure::Store(StoreError::Corrupt {
                detail: format!("journal entries were assigned seq {seq} after {previous_seq}; not committed"),
            }));
        }
        previous_seq = seq;
    }
    if write_account {
        match (changes.account_created, results[0]) {
            // Another transaction created the account first; its row is now committed, so the
            // next attempt locks it and decides against its real state.
            (true, 0) => {
                return Err(Failure::Retry {
                    cause: RetryCause::Race,
                    detail: format!("account {account_id} created concurrently"),
                })
            }
            (false, rows) if rows != 1 => return Err(Failure::Store(corrupt("account row (vanished while locked)"))),
            _ => {}
        }
    }
    Ok(())
}
