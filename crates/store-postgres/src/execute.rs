//! Applying commands of one account: one READ COMMITTED transaction for a whole batch of them
//! (see [`crate::batch`] for how batches form), and a lone command as a batch of one.
//!
//! The order of steps is what makes it correct with many server processes on one database:
//! 1. the batch's idempotency keys are claimed first, in ascending (byte) order, by one
//!    `INSERT … ON CONFLICT DO NOTHING` that inserts them in that order, so a concurrent request
//!    with one of those keys
//!    waits on the key's index entry until this transaction commits, then finds the recorded
//!    result and replays it; a key found already committed is read back, and its request is
//!    answered `Replayed` (or `Conflict`) without being applied;
//! 2. the account row is locked (`SELECT … FOR UPDATE`), which serialises every change of one
//!    account across processes, and so keeps the account's journal `seq` increasing;
//! 3. the state is loaded once under that lock (what [`protocol::needs`] lists for each command
//!    of the batch), then a [`protocol::Decider`] decides each command in arrival order on the
//!    state the one before produced (a rejection leaves it as it was);
//! 4. the [`protocol::Writes`] are written once (each changed grant and hold at its final state,
//!    the journal entries in order), with every claimed key's result, and committed once.
//!
//! The protocol's steps are [`store::protocol`]'s; this module is their I/O: the claims, the lock,
//! the pipelined reads and writes.
//!
//! Deadlock freedom: every transaction takes its locks in one global order, keys in ascending
//! order, then one account row, and waits for nothing after that lock but its own statements.
//! A transaction waiting for a key holds only smaller keys; one waiting for an account row holds
//! only keys; the holder of an account row waits on no lock. So no cycle can form between
//! batches of any number of processes. Steps 1–3 travel in one pipelined burst (the server runs
//! them in order; reading back keys that already existed costs one more round trip), and step 4
//! in a second one, with one statement per table whatever the batch's size. Deadlocks and unique violations can still come
//! from outside (a new account created by two transactions at once, a session locking in another
//! order) and are retried by the caller.
//!
//! [`apply`] runs these steps for one request inside a transaction it does not own, so a job
//! write (see [`crate::jobs`]) applies its ledger request in its own transaction, after its job
//! row; the job row is then the only lock taken before the key and the account, and always first.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::Transaction;
use futures::future::{maybe_done, MaybeDone};
use ledger::{AccountId, AccountState, Amount, Entry, Hold, HoldId, Target, Timestamp};
use store::codec::{self, undecodable};
use store::protocol::{self, AccountRow, Decider, Needs, PendingHolds, Writes};
use store::{Executed, Idempotency, Request, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{Failure, RetryCause};
use crate::rows::{self, sql_amount, ACCOUNT_COLUMNS, ENTRY_COLUMNS, GRANT_COLUMNS, HOLD_COLUMNS};

/// Claims every key of a batch in one statement, in the order given (ascending: the lock order),
/// and returns the keys this transaction inserted; the others existed (committed).
///
/// Set-based statements (one per table, rows passed as arrays) keep a batch's cost nearly flat in
/// its size: the server's per-statement overhead dominates a hot account's transactions.
const CLAIM_KEYS: &str = "INSERT INTO idempotency (key, fingerprint, result, created_at) \
     SELECT key, fingerprint, '', $3 FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS claim (key, fingerprint, n) \
     ORDER BY n ON CONFLICT (key) DO NOTHING RETURNING key";
const READ_KEY: &str = "SELECT fingerprint, result FROM idempotency WHERE key = $1";
const RECORD_RESULTS: &str = "UPDATE idempotency SET result = recorded.result \
     FROM unnest($1::TEXT[], $2::TEXT[]) AS recorded (key, result) WHERE idempotency.key = recorded.key";
pub(crate) const HOLD_ACCOUNT: &str = "SELECT account_id FROM holds WHERE hold_id = $1";
/// Returns the row it inserted: none when another transaction created the account first.
const INSERT_ACCOUNT: &str = "INSERT INTO accounts (account_id, created_at, spent, refunded, held) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id) DO NOTHING RETURNING account_id";
/// Returns the row it updated: exactly one, the row this transaction has locked.
const UPDATE_ACCOUNT: &str =
    "UPDATE accounts SET spent = $2, refunded = $3, held = $4 WHERE account_id = $1 RETURNING account_id";
const UPSERT_GRANT: &str = "INSERT INTO grants (grant_id, account_id, kind, amount, free, priority, expires_at, \
     created_at, reference, metadata, live, pinned) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (grant_id) DO UPDATE SET amount = EXCLUDED.amount, free = EXCLUDED.free, \
     priority = EXCLUDED.priority, expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference, \
     metadata = EXCLUDED.metadata, live = EXCLUDED.live, pinned = EXCLUDED.pinned";
const UPSERT_HOLDS: &str = "INSERT INTO holds (hold_id, account_id, amount, captured, remaining, refunded, state, \
     expires_at, created_at, reference, metadata, allocations) \
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[], \
     $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[], $12::TEXT[]) \
     ON CONFLICT (hold_id) DO UPDATE SET amount = EXCLUDED.amount, captured = EXCLUDED.captured, \
     remaining = EXCLUDED.remaining, refunded = EXCLUDED.refunded, state = EXCLUDED.state, \
     expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference, metadata = EXCLUDED.metadata, \
     allocations = EXCLUDED.allocations";
/// Inserts a batch's journal entries in journal order and returns them whole with their `seq`,
/// so the caller can check that each entry got a larger `seq` than the one before it without
/// relying on the order `RETURNING` happens to use.
fn insert_entries_sql() -> String {
    format!("{INSERT_ENTRIES} RETURNING {ENTRY_COLUMNS}")
}
const INSERT_ENTRIES: &str = "INSERT INTO entries (account_id, kind, amount, hold_id, grant_id, reference, \
     balance_after, held_after, at, idempotency_key) \
     SELECT account_id, kind, amount, hold_id, grant_id, reference, balance_after, held_after, at, idempotency_key \
     FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::BIGINT[], \
     $8::BIGINT[], $9::BIGINT[], $10::TEXT[]) WITH ORDINALITY AS entry (account_id, kind, amount, hold_id, grant_id, \
     reference, balance_after, held_after, at, idempotency_key, n) \
     ORDER BY n";

fn lock_account_sql() -> String {
    format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1 FOR UPDATE")
}
fn live_grants_sql() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = $1 AND live ORDER BY created_at, grant_id")
}
/// The account's pending holds due at $2 (through `holds_pending_by_account_expiry`): never all.
pub(crate) fn due_holds_sql() -> String {
    format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = $1 AND state = 'pending' AND expires_at <= $2 \
         ORDER BY expires_at, hold_id"
    )
}
/// The holds the batch's commands name, in any state (pending ones are loaded twice, harmlessly).
fn holds_by_id_sql() -> String {
    format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = ANY($1) ORDER BY created_at, hold_id")
}
fn grant_by_reference_sql() -> String {
    format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = $1 AND kind = $2 AND reference = $3")
}

/// What a batch did inside its caller's transaction, not yet committed.
pub(crate) struct Batch {
    /// One answer per request, in the requests' order.
    pub executed: Vec<Executed>,
    /// Whether it wrote anything (ledger changes, an idempotency record): the batch commits only
    /// then, and rolls back otherwise.
    pub wrote: bool,
}

/// What [`apply`] did inside its caller's transaction, not yet committed.
pub(crate) struct Application {
    pub executed: Executed,
    /// Whether it wrote anything (ledger changes, an idempotency record): a lone command commits
    /// only then.
    pub wrote: bool,
}

/// Applies `request` inside `transaction` as a batch of one (claim the key, lock the account,
/// decide, write, record), leaving the commit or rollback to the caller. On `Err` the caller
/// must drop the transaction.
///
/// A command naming a hold finds its account here, inside the transaction: a hold's account
/// never changes, so reading it before any lock is safe. A hold that does not exist gives
/// `hold_not_found`, recorded on the key like any rejection.
pub(crate) async fn apply(
    transaction: &Transaction<'_>,
    request: &Request,
    now: Timestamp,
) -> Result<Application, Failure> {
    let account_id = match request.command.target() {
        Target::Account(account_id) => Some(account_id.clone()),
        Target::Hold(hold_id) => hold_account(transaction, hold_id).await?,
    };
    let Batch { mut executed, wrote } = run(transaction, account_id.as_ref(), &[request], now).await?;
    Ok(Application { executed: executed.pop().expect("one answer per request"), wrote })
}

/// Applies `requests` inside `transaction`, as one batch: see the module docs. Every command
/// must concern `account_id` (a command naming a hold: that hold's account), and no idempotency
/// key may appear twice. Leaves the commit or rollback to the caller; on `Err` the caller must
/// drop the transaction.
pub(crate) async fn apply_batch(
    transaction: &Transaction<'_>,
    account_id: &AccountId,
    requests: &[&Request],
    now: Timestamp,
) -> Result<Batch, Failure> {
    run(transaction, Some(account_id), requests, now).await
}

/// The account of a hold, read without a lock; `None` when there is no such hold.
pub(crate) async fn hold_account(
    transaction: &Transaction<'_>,
    hold_id: &HoldId,
) -> Result<Option<AccountId>, Failure> {
    let statement = transaction.prepare_cached(HOLD_ACCOUNT).await?;
    let Some(row) = transaction.query_opt(&statement, &[&hold_id.as_str()]).await? else {
        return Ok(None);
    };
    let text: &str = row.try_get(0).map_err(|_| undecodable("hold account_id"))?;
    Ok(Some(AccountId::parse(text).map_err(|_| undecodable("hold account_id"))?))
}

/// One pipelined statement: the rows it returned (a write returns rows only where they are
/// checked: `RETURNING`).
type PendingRows<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

/// The batch proper. `account_id` `None`: the hold the (single) command names does not exist, so
/// every request not answered by its key is rejected with `hold_not_found`.
async fn run(
    transaction: &Transaction<'_>,
    account_id: Option<&AccountId>,
    requests: &[&Request],
    now: Timestamp,
) -> Result<Batch, Failure> {
    let now_micros = now.micros();
    // Claims in ascending key order: the lock order that keeps batches of different processes
    // from waiting on each other's keys in a cycle.
    let mut claims: Vec<(usize, &Idempotency)> = requests
        .iter()
        .enumerate()
        .filter_map(|(index, request)| request.idempotency.as_ref().map(|idempotency| (index, idempotency)))
        .collect();
    claims.sort_by(|left, right| left.1.key.cmp(&right.1.key));

    let mut pending: Vec<PendingRows<'_>> = Vec::with_capacity(6);
    if !claims.is_empty() {
        let statement = transaction.prepare_cached(CLAIM_KEYS).await?;
        let keys: Vec<&str> = claims.iter().map(|claim| claim.1.key.as_str()).collect();
        let fingerprints: Vec<&str> = claims.iter().map(|claim| claim.1.fingerprint.as_str()).collect();
        pending.push(Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 3] = [&keys, &fingerprints, &now_micros];
            transaction.query(&statement, &params).await
        }));
    }
    let load = match account_id {
        Some(account_id) => Some(Load::push(transaction, account_id, requests, now, &mut pending).await?),
        None => None,
    };
    // One join, so every statement is sent (in this order) before any answer is awaited. The
    // first error in sending order is the real one: later statements fail only because the
    // transaction aborted.
    let mut replies = Vec::with_capacity(pending.len());
    for reply in join_in_order(pending).await {
        replies.push(reply?);
    }
    let mut replies = replies.into_iter();

    // Requests whose key was already recorded are answered from the record.
    let mut executed: Vec<Option<Executed>> = vec![None; requests.len()];
    let mut recorded = Vec::new();
    if !claims.is_empty() {
        let reply = replies.next().expect("a reply to the claims");
        let mut inserted = HashSet::with_capacity(reply.len());
        for row in &reply {
            let key: &str = row.try_get(0).map_err(|_| undecodable("idempotency key"))?;
            inserted.insert(key);
        }
        recorded.extend(claims.iter().filter(|claim| !inserted.contains(claim.1.key.as_str())).copied());
    }
    for (index, answer) in read_keys(transaction, &recorded).await? {
        executed[index] = Some(answer);
    }

    // Decide in arrival order, each command on the state the previous one left.
    let mut decider = match (account_id, load) {
        (Some(account_id), Some(load)) => Decider::new(load.state(account_id, &mut replies)?),
        _ => Decider::hold_not_found(),
    };
    for (index, request) in requests.iter().enumerate() {
        if executed[index].is_none() {
            executed[index] = Some(Executed::Fresh(decider.decide(request, now)));
        }
    }
    let writes = decider.finish();
    write(transaction, &writes).await?;
    let executed = executed.into_iter().map(|answer| answer.expect("every request answered")).collect();
    Ok(Batch { executed, wrote: !writes.is_empty() })
}

/// Reads the records of keys that existed when claimed: `(request index, answer)` each.
async fn read_keys(
    transaction: &Transaction<'_>,
    recorded: &[(usize, &Idempotency)],
) -> Result<Vec<(usize, Executed)>, Failure> {
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    let statement = transaction.prepare_cached(READ_KEY).await?;
    let pending: Vec<PendingRows<'_>> = recorded
        .iter()
        .map(|&(_, idempotency)| {
            let statement = statement.clone();
            let key = idempotency.key.as_str();
            Box::pin(async move { transaction.query(&statement, &[&key]).await }) as PendingRows<'_>
        })
        .collect();
    let mut answers = Vec::with_capacity(recorded.len());
    for (&(index, idempotency), rows) in recorded.iter().zip(join_in_order(pending).await) {
        // The key exists, committed: its INSERT waited for any transaction still holding it.
        let Some(row) = rows?.into_iter().next() else {
            // Swept between the two statements (only possible past the retention period).
            return Err(Failure::retry(RetryCause::Race, "idempotency key vanished"));
        };
        let undecodable = |error| StoreError::corrupt("undecodable idempotency record").with_source(error);
        let stored_fingerprint: &str = row.try_get(0).map_err(undecodable)?;
        let result: &str = row.try_get(1).map_err(undecodable)?;
        answers.push((index, protocol::replay(idempotency, stored_fingerprint, result)?));
    }
    Ok(answers)
}

/// The reads of step 2 and 3, queued behind the key claims in the same pipeline: which replies
/// are whose.
struct Load {
    /// Whether the named holds were queried (not when no command names one).
    named_holds: bool,
    referenced_grants: usize,
}

impl Load {
    /// Queues the account lock and what every request needs ([`protocol::needs`]): its base
    /// state, the named holds and the referenced grants (also for requests that will turn out to
    /// be replays: loading more of the account than needed is harmless).
    async fn push<'a>(
        transaction: &'a Transaction<'_>,
        account_id: &'a AccountId,
        requests: &[&'a Request],
        now: Timestamp,
        pending: &mut Vec<PendingRows<'a>>,
    ) -> Result<Load, Failure> {
        let needs: Vec<Needs<'a>> = requests.iter().map(|request| protocol::needs(&request.command, now)).collect();
        let pending_holds = needs.first().map_or(PendingHolds::DueAt(now), |need| need.pending_holds);
        assert!(needs.iter().all(|need| need.pending_holds == pending_holds), "one base state per batch");
        let lock = transaction.prepare_cached(&lock_account_sql()).await?;
        let grants = transaction.prepare_cached(&live_grants_sql()).await?;
        let (holds, due_at) = match pending_holds {
            PendingHolds::DueAt(at) => (transaction.prepare_cached(&due_holds_sql()).await?, at.micros()),
        };
        let holds_by_id = transaction.prepare_cached(&holds_by_id_sql()).await?;
        let by_reference = transaction.prepare_cached(&grant_by_reference_sql()).await?;
        let id = account_id.as_str();
        pending.push(Box::pin(async move { transaction.query(&lock, &[&id]).await }));
        pending.push(Box::pin(async move { transaction.query(&grants, &[&id]).await }));
        pending.push(Box::pin(async move { transaction.query(&holds, &[&id, &due_at]).await }));
        let mut named: Vec<&str> = needs.iter().filter_map(|need| need.hold.map(HoldId::as_str)).collect();
        named.sort_unstable();
        named.dedup();
        let named_holds = !named.is_empty();
        if named_holds {
            pending.push(Box::pin(async move { transaction.query(&holds_by_id, &[&named]).await }));
        }
        let mut references = HashSet::new();
        let mut referenced_grants = 0;
        for need in &needs {
            let Some((kind, reference)) = need.grant else { continue };
            if !references.insert((kind.as_str(), reference.as_str())) {
                continue;
            }
            let statement = by_reference.clone();
            pending.push(Box::pin(async move {
                let params: [&(dyn ToSql + Sync); 3] = [&id, &kind.as_str(), &reference.as_str()];
                transaction.query(&statement, &params).await
            }));
            referenced_grants += 1;
        }
        Ok(Load { named_holds, referenced_grants })
    }

    /// The loaded state from the replies (in the order [`Load::push`] queued them), `None` when
    /// the account does not exist (a grant then creates it on write).
    fn state(
        self,
        account_id: &AccountId,
        replies: &mut impl Iterator<Item = Vec<Row>>,
    ) -> Result<Option<AccountState>, Failure> {
        let mut next = || replies.next().expect("one reply per queued read");
        let (account_row, grant_rows, hold_rows) = (next(), next(), next());
        let named_holds = if self.named_holds { next() } else { Vec::new() };
        let referenced: Vec<Vec<Row>> = (0..self.referenced_grants).map(|_| next()).collect();
        let Some(account_row) = account_row.first() else { return Ok(None) };
        let (_, created_at, totals, held) = rows::account(account_row)?;
        let mut state = AccountState::new(account_id.clone(), created_at);
        state.totals = totals;
        state.held = held;
        state.grants = grant_rows.iter().map(rows::grant).collect::<Result<_, _>>()?;
        state.holds = hold_rows.iter().map(rows::hold).collect::<Result<_, _>>()?;
        for hold in named_holds.iter().map(rows::hold) {
            protocol::include_hold(&mut state, hold?);
        }
        for grant in referenced.iter().flatten().map(rows::grant) {
            protocol::include_grant(&mut state, grant?);
        }
        Ok(Some(state))
    }
}

/// Polls every future in `pending` in list order on each wake-up, so their first polls (which
/// send the statements) happen in that order, and returns the outputs in that order.
/// (`futures::join_all` switches to an unordered set above 30 futures.)
async fn join_in_order<F: Future + Unpin>(pending: Vec<F>) -> Vec<F::Output> {
    let mut slots: Vec<MaybeDone<F>> = pending.into_iter().map(maybe_done).collect();
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

/// Writes what the protocol lists ([`Writes`]): the account row (inserted when new; updated
/// only when its totals moved), the changed grants and holds (upserted as they stand in the final
/// state, once each), the journal entries in order; then each claimed key's result.
///
/// The statements are pipelined: sent together, executed by the server in the order sent. The
/// entries' `seq` values are read back and checked to increase in journal order before commit.
async fn write(transaction: &Transaction<'_>, writes: &Writes) -> Result<(), Failure> {
    let mut pending: Vec<PendingRows<'_>> = Vec::new();
    let mut entries_at = None;
    let account_row = writes.account_row();
    if let Some(state) = writes.state().filter(|_| writes.changed()) {
        let account_id = state.account_id.as_str();
        let spent = sql_amount(state.totals.spent)?;
        let refunded = sql_amount(state.totals.refunded)?;
        let held = sql_amount(state.held)?;
        let created_at = state.created_at.micros();
        match account_row {
            AccountRow::Unchanged => {}
            AccountRow::Insert => {
                let statement = transaction.prepare_cached(INSERT_ACCOUNT).await?;
                pending.push(Box::pin(async move {
                    let params: [&(dyn ToSql + Sync); 5] = [&account_id, &created_at, &spent, &refunded, &held];
                    transaction.query(&statement, &params).await
                }));
            }
            AccountRow::Update => {
                let statement = transaction.prepare_cached(UPDATE_ACCOUNT).await?;
                pending.push(Box::pin(async move {
                    transaction.query(&statement, &[&account_id, &spent, &refunded, &held]).await
                }));
            }
        }
        push_grants(transaction, writes, &mut pending).await?;
        push_holds(transaction, writes, &mut pending).await?;
        if !writes.entries().is_empty() {
            entries_at = Some(pending.len());
            push_entries(transaction, writes.entries(), &mut pending).await?;
        }
    }
    if !writes.records().is_empty() {
        let statement = transaction.prepare_cached(RECORD_RESULTS).await?;
        let keys: Vec<&str> = writes.records().iter().map(|record| record.key.as_str()).collect();
        let results: Vec<&str> = writes.records().iter().map(|record| record.result.as_str()).collect();
        pending.push(Box::pin(async move { transaction.query(&statement, &[&keys, &results]).await }));
    }
    if pending.is_empty() {
        return Ok(());
    }

    // One join, so every statement is sent (in this order) before any answer is awaited. The
    // first error in sending order is the real one: later statements fail only because the
    // transaction aborted.
    let mut replies = Vec::with_capacity(pending.len());
    for reply in join_in_order(pending).await {
        replies.push(reply?);
    }
    if let Some(index) = entries_at {
        check_entries(writes.entries(), &replies[index])?;
    }
    // The account row's statement, when there is one, went first.
    match (account_row, &replies[0]) {
        // Another transaction created the account first; its row is now committed, so the next
        // attempt locks it and decides against its real state.
        (AccountRow::Insert, rows) if rows.is_empty() => {
            let account_id = writes.state().map(|state| state.account_id.as_str()).unwrap_or_default();
            Err(Failure::retry(RetryCause::Race, format!("account {account_id} created concurrently")))
        }
        (AccountRow::Update, rows) if rows.len() != 1 => {
            Err(Failure::Store(undecodable("account row (vanished while locked)")))
        }
        _ => Ok(()),
    }
}

/// Checks that the batch's entries were inserted exactly as decided, each with a larger `seq`
/// than the entry before it in journal order: `rows` (the inserted entries, in any order) sorted
/// by `seq` must equal `entries`. (Two entries equal in every column are interchangeable.)
fn check_entries(entries: &[Entry], rows: &[Row]) -> Result<(), Failure> {
    let mut inserted: Vec<Entry> = rows.iter().map(rows::entry).collect::<Result<_, _>>()?;
    inserted.sort_unstable_by_key(|entry| entry.seq);
    let in_order = inserted.len() == entries.len()
        && inserted.iter().zip(entries).all(|(stored, entry)| &Entry { seq: entry.seq, ..stored.clone() } == entry);
    if !in_order {
        let seqs: Vec<u64> = inserted.iter().map(|entry| entry.seq).collect();
        return Err(Failure::Store(StoreError::corrupt(format!(
            "journal entries were not assigned seq in journal order (got {seqs:?}); not committed"
        ))));
    }
    Ok(())
}

async fn push_grants<'a>(
    transaction: &'a Transaction<'_>,
    writes: &'a Writes,
    pending: &mut Vec<PendingRows<'a>>,
) -> Result<(), Failure> {
    if writes.grants().next().is_none() {
        return Ok(());
    }
    let statement = transaction.prepare_cached(UPSERT_GRANT).await?;
    for grant in writes.grants() {
        let amount = sql_amount(grant.amount)?;
        let free = sql_amount(grant.free)?;
        let pinned = sql_amount(grant.pinned)?;
        let expires_at = grant.expires_at.map(Timestamp::micros);
        let created_at = grant.created_at.micros();
        let reference = grant.reference.as_ref().map(|reference| reference.as_str());
        let statement = statement.clone();
        pending.push(Box::pin(async move {
            let params: [&(dyn ToSql + Sync); 12] = [
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
                &pinned,
            ];
            transaction.query(&statement, &params).await
        }));
    }
    Ok(())
}

async fn push_holds<'a>(
    transaction: &'a Transaction<'_>,
    writes: &'a Writes,
    pending: &mut Vec<PendingRows<'a>>,
) -> Result<(), Failure> {
    let holds: Vec<&Hold> = writes.holds().collect();
    if holds.is_empty() {
        return Ok(());
    }
    let statement = transaction.prepare_cached(UPSERT_HOLDS).await?;
    let amounts =
        |amount: fn(&Hold) -> Amount| holds.iter().map(|hold| sql_amount(amount(hold))).collect::<Result<Vec<_>, _>>();
    let (amount, captured) = (amounts(|hold| hold.amount)?, amounts(|hold| hold.captured)?);
    let (remaining, refunded) = (amounts(|hold| hold.remaining)?, amounts(|hold| hold.refunded)?);
    let hold_id: Vec<&str> = holds.iter().map(|hold| hold.hold_id.as_str()).collect();
    let account_id: Vec<&str> = holds.iter().map(|hold| hold.account_id.as_str()).collect();
    let hold_state: Vec<&str> = holds.iter().map(|hold| hold.state.as_str()).collect();
    let expires_at: Vec<i64> = holds.iter().map(|hold| hold.expires_at.micros()).collect();
    let created_at: Vec<i64> = holds.iter().map(|hold| hold.created_at.micros()).collect();
    let reference: Vec<Option<&str>> =
        holds.iter().map(|hold| hold.reference.as_ref().map(|reference| reference.as_str())).collect();
    let metadata: Vec<&str> = holds.iter().map(|hold| hold.metadata.as_str()).collect();
    let allocations: Vec<String> = holds.iter().map(|hold| codec::encode_allocations(&hold.allocations)).collect();
    pending.push(Box::pin(async move {
        let params: [&(dyn ToSql + Sync); 12] = [
            &hold_id,
            &account_id,
            &amount,
            &captured,
            &remaining,
            &refunded,
            &hold_state,
            &expires_at,
            &created_at,
            &reference,
            &metadata,
            &allocations,
        ];
        transaction.query(&statement, &params).await
    }));
    Ok(())
}

async fn push_entries<'a>(
    transaction: &'a Transaction<'_>,
    entries: &'a [Entry],
    pending: &mut Vec<PendingRows<'a>>,
) -> Result<(), Failure> {
    let statement = transaction.prepare_cached(&insert_entries_sql()).await?;
    let amounts = |amount: fn(&Entry) -> Amount| {
        entries.iter().map(|entry| sql_amount(amount(entry))).collect::<Result<Vec<_>, _>>()
    };
    let amount = amounts(|entry| entry.amount)?;
    let balance_after = amounts(|entry| entry.balance_after)?;
    let held_after = amounts(|entry| entry.held_after)?;
    let account_id: Vec<&str> = entries.iter().map(|entry| entry.account_id.as_str()).collect();
    let kind: Vec<&str> = entries.iter().map(|entry| entry.kind.as_str()).collect();
    let hold_id: Vec<Option<&str>> = entries.iter().map(|entry| entry.hold_id.as_ref().map(HoldId::as_str)).collect();
    let grant_id: Vec<Option<&str>> =
        entries.iter().map(|entry| entry.grant_id.as_ref().map(|id| id.as_str())).collect();
    let reference: Vec<Option<&str>> =
        entries.iter().map(|entry| entry.reference.as_ref().map(|reference| reference.as_str())).collect();
    let at: Vec<i64> = entries.iter().map(|entry| entry.at.micros()).collect();
    let idempotency_key: Vec<Option<&str>> = entries.iter().map(|entry| entry.idempotency_key.as_deref()).collect();
    pending.push(Box::pin(async move {
        let params: [&(dyn ToSql + Sync); 10] = [
            &account_id,
            &kind,
            &amount,
            &hold_id,
            &grant_id,
            &reference,
            &balance_after,
            &held_after,
            &at,
            &idempotency_key,
        ];
        transaction.query(&statement, &params).await
    }));
    Ok(())
}
