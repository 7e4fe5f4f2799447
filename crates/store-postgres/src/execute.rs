//! Applying commands: one READ COMMITTED transaction for a whole batch of them, of any number of
//! accounts (see [`crate::batch`] for how batches form), and a lone command as a batch of one.
//!
//! The order of steps is what makes it correct with many server processes on one database:
//! 1. the batch's idempotency keys are read (`key = ANY($1)`, no wait): a request whose key is
//!    recorded is answered `Replayed` (or `Conflict`) without being applied;
//! 2. every account row of the batch is locked, in ascending account-id order, by one
//!    `SELECT … WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE` (the rows are locked as
//!    the sort emits them), which serialises every change of one account across processes, and
//!    so keeps each account's journal `seq` increasing;
//! 3. the accounts' states are loaded once under those locks, one statement per table for the
//!    whole batch (what [`protocol::needs`] lists for each command), then one
//!    [`protocol::Decider`] per account decides that account's commands in arrival order, each
//!    on the state the one before produced (a rejection leaves it as it was; it never touches
//!    another account's commands);
//! 4. one statement ([`WRITE_BATCH`]) writes it all: the decided requests' keys with their
//!    results, in ascending key order, by `INSERT … ON CONFLICT DO NOTHING`; every account's
//!    [`protocol::Writes`] (each changed grant and hold at its final state, the journal entries
//!    in order, the events); and checks itself, raising when a check fails, so the `COMMIT` is
//!    sent in the same burst and becomes a `ROLLBACK` then. A key a concurrent transaction is
//!    recording makes the insert wait for it; when that one commits, the key is not inserted,
//!    the check raises a unique violation, the batch is retried, and then step 1 finds the
//!    record and replays it. So the same key sent twice at once applies once, and each key
//!    costs one row written once.
//!
//! The protocol's steps are [`store::protocol`]'s; this module is their I/O: the key reads, the
//! locks, the pipelined reads, the write.
//!
//! Deadlock freedom: every transaction takes its locks in one global order — account rows in
//! ascending order, then keys in ascending order, then the rows of accounts it creates in
//! ascending order — and waits for nothing else. Rank each lock: every account row below every
//! key, every key below every created account, and within each kind by that order. A transaction
//! only ever waits for a lock ranked above every lock it holds (one waiting for an account row
//! holds smaller rows; one waiting for a key holds all its rows and smaller keys; one waiting on
//! a created account's index entry holds all its rows and keys and smaller created accounts). So
//! along any chain of waits the ranks increase strictly, and no cycle can form, between batches of
//! any number of processes and whatever accounts they span. A second creator of the same account
//! finds the row after the wait and the batch is retried (a race, not a deadlock). Steps 1–3
//! travel in one pipelined burst (the server runs them in order), behind the batch's `BEGIN` when
//! it opens its own transaction ([`Opening::Begin`]), and step 4 in a second one.
//! Deadlocks and unique violations can still come from outside (a session locking in another
//! order) and are retried by the caller.
//!
//! [`apply`] runs these steps for one request inside a transaction it does not own, so a job
//! write (see [`crate::jobs`]) applies its ledger request in its own transaction, after its job
//! row; the job row is then the only lock taken before the account and the key, and always first.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Transaction};
use futures::future::{maybe_done, MaybeDone};
use ledger::{AccountId, AccountState, Allowance, Amount, Entry, Grant, Hold, HoldId, Target, Timestamp};
use store::codec::{self, undecodable};
use store::events::NewEvent;
use store::protocol::{self, AccountRow, Decider, PendingHolds, Writes};
use store::{Executed, Idempotency, Request, StoreError};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::Failure;
use crate::rows::{self, sql_amount, ACCOUNT_COLUMNS, GRANT_COLUMNS, HOLD_COLUMNS};

/// The batch's statements run on generic plans, made once per connection and statement, not
/// planned again on every execution, and those plans never scan a table sequentially.
///
/// Generic plans: PostgreSQL's default (`auto`) kept re-planning most of them (their `= ANY($1)`
/// and `unnest` arrays make a generic plan look costlier than it is): a fifth of the batch's
/// server time went to planning.
///
/// No sequential scans: every statement of a batch finds its rows through an index (keys, hold
/// ids, account ids), whatever the table's size. A plan made while a table is small (a database
/// minutes old, before autovacuum's first ANALYZE of it) costs a scan as cheaper there, and a
/// cached plan keeps it while the table grows by thousands of rows a second: a single-key read of
/// the idempotency table was measured taking 0.25 ms that way. Both settings end with the
/// transaction (`set_config(…, true)`), so other statements on the connection keep the defaults.
const PLAN_SETTINGS: &str = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), \
     set_config('enable_seqscan', 'off', true)";
/// Opens a batch's own transaction with the plan settings of [`PLAN_SETTINGS`], as one simple
/// query (one message, and no reply awaited before the batch's reads: see [`Opening::Begin`]).
const BEGIN_BATCH: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_seqscan = off";

/// How a batch's first burst starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// The connection is idle: the batch opens its transaction ([`BEGIN_BATCH`]) in the same
    /// burst as its reads, saving a round trip. Safe because nothing is written before every
    /// reply of that burst, the BEGIN's included, has come back without error: had the BEGIN
    /// failed, the reads would have run outside a transaction, and only the reads.
    Begin,
    /// The caller's transaction is open (a job's or a run's write, a lone command): the batch
    /// sets the plan settings in it ([`PLAN_SETTINGS`]).
    InTransaction,
}

/// Reads the recorded keys among a batch's (replays), without waiting: a key that a concurrent
/// transaction is recording is not seen here, and [`WRITE_BATCH`] settles that race.
const READ_KEYS: &str = "SELECT key, fingerprint, result FROM idempotency WHERE key = ANY($1)";
pub(crate) const HOLD_ACCOUNT: &str = "SELECT account_id FROM holds WHERE hold_id = $1";
/// Locks the batch's accounts in ascending order: `LockRows` sits above the sort, so rows are
/// locked in the order they are returned.
fn lock_accounts_sql() -> String {
    format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE")
}

/// The allowances of the batch's accounts that have not ended at `$2`. A statement of its own,
/// after the lock: under READ COMMITTED each statement reads a new snapshot, so it sees what the
/// transaction that held the lock last committed (a subquery of the locking statement would read
/// that statement's snapshot, from before the wait, and grant a period twice).
const ALLOWANCES: &str = "SELECT data FROM allowances WHERE account_id = ANY($1) \
     AND (ends_at IS NULL OR ends_at > $2) ORDER BY account_id, allowance_id";

/// The account row's allowances that have not ended at `$2`, their `data` in id order (NULL
/// for none), as a column after [`ACCOUNT_COLUMNS`]: for the account read, which reads one
/// snapshot (REPEATABLE READ) and locks nothing.
pub(crate) const ALLOWANCES_COLUMN: &str = "(SELECT array_agg(data ORDER BY allowance_id) FROM allowances \
     WHERE allowances.account_id = accounts.account_id AND (ends_at IS NULL OR ends_at > $2))";
fn live_grants_sql() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ANY($1) AND live ORDER BY account_id, created_at, grant_id"
    )
}
const INSERT_EVENTS: &str = "INSERT INTO outbox (type, account_id, data, at, created_at) \
     SELECT type, account_id, data, at, $5 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[]) \
     WITH ORDINALITY AS event (type, account_id, data, at, n) ORDER BY n";

/// Writes `events` to the outbox in `transaction` (a run's or a job's end: one at a time).
pub(crate) async fn insert_events(
    transaction: &Transaction<'_>,
    events: &[NewEvent],
    now: Timestamp,
) -> Result<(), Failure> {
    if events.is_empty() {
        return Ok(());
    }
    let statement = transaction.prepare_cached(INSERT_EVENTS).await?;
    let kinds: Vec<&str> = events.iter().map(|event| event.event_type.as_str()).collect();
    let accounts: Vec<&str> = events.iter().map(|event| event.account_id.as_str()).collect();
    let data: Vec<&str> = events.iter().map(|event| event.data.as_str()).collect();
    let at: Vec<i64> = events.iter().map(|event| event.at.micros()).collect();
    transaction.execute(&statement, &[&kinds, &accounts, &data, &at, &now.micros()]).await?;
    Ok(())
}

/// The pending holds a base state carries ([`PendingHolds`]) of every account in `$1`: those
/// due at `$2` (through `holds_pending_by_account_expiry`), never all of them.
fn pending_holds_sql(pending_holds: PendingHolds) -> String {
    match pending_holds {
        PendingHolds::DueAt(_) => format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ANY($1) AND state = 'pending' AND expires_at <= $2 \
             ORDER BY account_id, expires_at, hold_id"
        ),
    }
}
/// The holds the batch's commands name, in any state (pending ones are loaded twice, harmlessly).
fn holds_by_id_sql() -> String {
    format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = ANY($1) ORDER BY created_at, hold_id")
}
/// The grants the batch's commands name by `(account, kind, reference)`.
fn grants_by_reference_sql() -> String {
    format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE (account_id, kind, reference) IN \
         (SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]))"
    )
}

/// What a batch did inside its caller's transaction, not yet committed.
pub(crate) struct Batch {
    /// One answer per request, in the requests' order.
    pub executed: Vec<Executed>,
    /// Whether it wrote anything (ledger changes, an idempotency record): the batch commits only
    /// then, and rolls back otherwise.
    pub wrote: bool,
    /// Whether it committed too, and how long its last burst (the write and the `COMMIT`, the
    /// durable sync included) took: a batch that opened its transaction ([`Opening::Begin`])
    /// sends its `COMMIT` with its write; in a caller's transaction, the caller commits.
    pub committed: Option<Duration>,
    /// The credits its entries move: the caller reports them once it has committed.
    pub credits: store::observe::Credits,
}

/// What [`apply`] did inside its caller's transaction, not yet committed.
pub(crate) struct Application {
    pub executed: Executed,
    /// Whether it wrote anything (ledger changes, an idempotency record): a lone command commits
    /// only then.
    pub wrote: bool,
    /// The credits its entries move: the caller reports them once it has committed.
    pub credits: store::observe::Credits,
}

/// Applies `request` inside `transaction` as a batch of one (read the key, lock the account,
/// decide, record the key, write), leaving the commit or rollback to the caller. On `Err` the caller
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
    let Batch { mut executed, wrote, credits, .. } =
        run(transaction, Opening::InTransaction, &[(account_id.as_ref(), request)], now).await?;
    Ok(Application { executed: executed.pop().expect("one answer per request"), wrote, credits })
}

/// Applies `requests` inside `transaction`, as one batch: see the module docs. Each request comes
/// with the account it concerns (a command naming a hold: that hold's account; `None`: the hold
/// does not exist), and no idempotency key may appear twice. Leaves the commit or rollback to the
/// caller; on `Err` the caller must drop the transaction.
pub(crate) async fn apply_batch<C: GenericClient>(
    transaction: &C,
    opening: Opening,
    requests: &[(Option<&AccountId>, &Request)],
    now: Timestamp,
) -> Result<Batch, Failure> {
    run(transaction, opening, requests, now).await
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
pub(crate) type PendingRows<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

/// The batch proper.
async fn run<C: GenericClient>(
    transaction: &C,
    opening: Opening,
    requests: &[(Option<&AccountId>, &Request)],
    now: Timestamp,
) -> Result<Batch, Failure> {
    let keyed: Vec<(usize, &Idempotency)> = requests
        .iter()
        .enumerate()
        .filter_map(|(index, (_, request))| request.idempotency.as_ref().map(|idempotency| (index, idempotency)))
        .collect();
    debug_assert!(
        keyed.iter().map(|(_, idempotency)| &idempotency.key).collect::<HashSet<_>>().len() == keyed.len(),
        "a key twice in one batch"
    );

    let mut pending: Vec<PendingRows<'_>> = Vec::with_capacity(8);
    match opening {
        Opening::Begin => {
            pending.push(Box::pin(async move { transaction.batch_execute(BEGIN_BATCH).await.map(|()| Vec::new()) }))
        }
        Opening::InTransaction => {
            let settings = transaction.prepare_cached(PLAN_SETTINGS).await?;
            pending.push(Box::pin(async move { transaction.query(&settings, &[]).await }));
        }
    }
    if !keyed.is_empty() {
        let statement = transaction.prepare_cached(READ_KEYS).await?;
        let keys: Vec<&str> = keyed.iter().map(|(_, idempotency)| idempotency.key.as_str()).collect();
        pending.push(Box::pin(async move { transaction.query(&statement, &[&keys]).await }));
    }
    let load = Load::push(transaction, requests, now, &mut pending).await?;
    // One join, so every statement is sent (in this order) before any answer is awaited. The
    // first error in sending order is the real one: later statements fail only because the
    // transaction aborted.
    let mut replies = Vec::with_capacity(pending.len());
    for reply in join_in_order(pending).await {
        replies.push(reply?);
    }
    let mut replies = replies.into_iter();
    replies.next().expect("a reply to the opening (BEGIN or the plan settings)");

    // Requests whose key was already recorded are answered from the record.
    let mut executed: Vec<Option<Executed>> = vec![None; requests.len()];
    if !keyed.is_empty() {
        let rows = replies.next().expect("a reply to the key reads");
        for (index, answer) in replays(&keyed, &rows)? {
            executed[index] = Some(answer);
        }
    }

    // Decide each account's requests in arrival order, each on the state the previous one left.
    let mut states = load.states(&mut replies)?;
    let mut deciders: Vec<(Option<&AccountId>, Decider)> = Vec::new();
    for (index, (account_id, request)) in requests.iter().enumerate() {
        if executed[index].is_some() {
            continue;
        }
        let position = match deciders.iter().position(|(decided, _)| decided == account_id) {
            Some(position) => position,
            None => {
                let decider = match account_id {
                    Some(account_id) => Decider::new(states.remove(account_id.as_str())),
                    None => Decider::hold_not_found(),
                };
                deciders.push((*account_id, decider));
                deciders.len() - 1
            }
        };
        executed[index] = Some(Executed::Fresh(deciders[position].1.decide(request, now)));
    }
    let writes: Vec<Writes> = deciders.into_iter().map(|(_, decider)| decider.finish()).collect();
    let committed = write(transaction, &writes, now, opening == Opening::Begin).await?;
    let executed = executed.into_iter().map(|answer| answer.expect("every request answered")).collect();
    let mut credits = store::observe::Credits::default();
    writes.iter().for_each(|writes| credits.add(writes));
    Ok(Batch { executed, wrote: writes.iter().any(|writes| !writes.is_empty()), committed, credits })
}

/// The answers of the requests whose key is recorded (`rows`, from [`READ_KEYS`]): `(request
/// index, answer)` each.
fn replays(keyed: &[(usize, &Idempotency)], rows: &[Row]) -> Result<Vec<(usize, Executed)>, Failure> {
    let undecodable = |error| StoreError::corrupt("undecodable idempotency record").with_source(error);
    let mut found: HashMap<&str, (&str, &str)> = HashMap::with_capacity(rows.len());
    for row in rows {
        found.insert(
            row.try_get(0).map_err(undecodable)?,
            (row.try_get(1).map_err(undecodable)?, row.try_get(2).map_err(undecodable)?),
        );
    }
    let mut answers = Vec::with_capacity(found.len());
    for &(index, idempotency) in keyed {
        if let Some((stored_fingerprint, result)) = found.get(idempotency.key.as_str()) {
            answers.push((index, protocol::replay(idempotency, stored_fingerprint, result)?));
        }
    }
    Ok(answers)
}

/// The reads of steps 2 and 3, queued behind the key reads in the same pipeline: which replies
/// are whose.
struct Load {
    /// Whether any account was locked and loaded (not when every command names a missing hold).
    accounts: bool,
    /// Whether the named holds were queried (not when no command names one).
    named_holds: bool,
    /// Whether grants were queried by reference (not when no command names one).
    referenced_grants: bool,
}

impl Load {
    /// Queues the account locks and what every request needs ([`protocol::needs`]): the base
    /// states, the named holds and the referenced grants (also for requests that will turn out to
    /// be replays: loading more of an account than needed is harmless).
    async fn push<'a, C: GenericClient>(
        transaction: &'a C,
        requests: &[(Option<&'a AccountId>, &'a Request)],
        now: Timestamp,
        pending: &mut Vec<PendingRows<'a>>,
    ) -> Result<Load, Failure> {
        let mut accounts: Vec<&str> =
            requests.iter().filter_map(|(account_id, _)| account_id.map(AccountId::as_str)).collect();
        accounts.sort_unstable();
        accounts.dedup();
        if accounts.is_empty() {
            return Ok(Load { accounts: false, named_holds: false, referenced_grants: false });
        }
        let mut pending_holds = None;
        let mut named: Vec<&str> = Vec::new();
        let mut references: Vec<(&str, &str, &str)> = Vec::new();
        for (account_id, request) in requests {
            let Some(account_id) = account_id else { continue };
            let need = protocol::needs(&request.command, now);
            assert!(pending_holds.is_none_or(|holds| holds == need.pending_holds), "one kind of base state per batch");
            pending_holds = Some(need.pending_holds);
            named.extend(need.hold.map(HoldId::as_str));
            if let Some((kind, reference)) = need.grant {
                references.push((account_id.as_str(), kind.as_str(), reference.as_str()));
            }
        }
        named.sort_unstable();
        named.dedup();
        references.sort_unstable();
        references.dedup();
        let pending_holds = pending_holds.expect("a batch with an account has a request");

        let lock = transaction.prepare_cached(&lock_accounts_sql()).await?;
        let grants = transaction.prepare_cached(&live_grants_sql()).await?;
        let holds = transaction.prepare_cached(&pending_holds_sql(pending_holds)).await?;
        let PendingHolds::DueAt(due_at) = pending_holds;
        let due_at = due_at.micros();
        let accounts_for_grants = accounts.clone();
        let accounts_for_holds = accounts.clone();
        let accounts_for_allowances = accounts.clone();
        pending.push(Box::pin(async move { transaction.query(&lock, &[&accounts]).await }));
        pending.push(Box::pin(async move { transaction.query(&grants, &[&accounts_for_grants]).await }));
        pending.push(Box::pin(async move { transaction.query(&holds, &[&accounts_for_holds, &due_at]).await }));
        let allowances = transaction.prepare_cached(ALLOWANCES).await?;
        pending
            .push(Box::pin(async move { transaction.query(&allowances, &[&accounts_for_allowances, &due_at]).await }));
        let named_holds = !named.is_empty();
        if named_holds {
            let holds_by_id = transaction.prepare_cached(&holds_by_id_sql()).await?;
            pending.push(Box::pin(async move { transaction.query(&holds_by_id, &[&named]).await }));
        }
        let referenced_grants = !references.is_empty();
        if referenced_grants {
            let by_reference = transaction.prepare_cached(&grants_by_reference_sql()).await?;
            let account_ids: Vec<&str> = references.iter().map(|named| named.0).collect();
            let kinds: Vec<&str> = references.iter().map(|named| named.1).collect();
            let references: Vec<&str> = references.iter().map(|named| named.2).collect();
            pending.push(Box::pin(async move {
                transaction.query(&by_reference, &[&account_ids, &kinds, &references]).await
            }));
        }
        Ok(Load { accounts: true, named_holds, referenced_grants })
    }

    /// The loaded states by account id, from the replies (in the order [`Load::push`] queued
    /// them); an account that does not exist has none (a grant then creates it on write).
    fn states(self, replies: &mut impl Iterator<Item = Vec<Row>>) -> Result<HashMap<String, AccountState>, Failure> {
        let mut states = HashMap::new();
        if !self.accounts {
            return Ok(states);
        }
        let mut next = || replies.next().expect("one reply per queued read");
        let (account_rows, grant_rows, hold_rows, allowance_rows) = (next(), next(), next(), next());
        let named_holds = if self.named_holds { next() } else { Vec::new() };
        let referenced = if self.referenced_grants { next() } else { Vec::new() };
        for row in &account_rows {
            let state = rows::account(row)?;
            states.insert(state.account_id.as_str().to_owned(), state);
        }
        for grant in grant_rows.iter().map(rows::grant) {
            let grant: Grant = grant?;
            if let Some(state) = states.get_mut(grant.account_id.as_str()) {
                state.grants.push(grant);
            }
        }
        for hold in hold_rows.iter().map(rows::hold) {
            let hold: Hold = hold?;
            if let Some(state) = states.get_mut(hold.account_id.as_str()) {
                state.holds.push(hold);
            }
        }
        for allowance in allowance_rows.iter().map(rows::allowance) {
            let allowance = allowance?;
            if let Some(state) = states.get_mut(allowance.account_id.as_str()) {
                state.allowances.push(allowance);
            }
        }
        for hold in named_holds.iter().map(rows::hold) {
            let hold = hold?;
            if let Some(state) = states.get_mut(hold.account_id.as_str()) {
                protocol::include_hold(state, hold);
            }
        }
        for grant in referenced.iter().map(rows::grant) {
            let grant = grant?;
            if let Some(state) = states.get_mut(grant.account_id.as_str()) {
                protocol::include_grant(state, grant);
            }
        }
        Ok(states)
    }
}

/// Polls every future in `pending` in list order on each wake-up, so their first polls (which
/// send the statements) happen in that order, and returns the outputs in that order.
/// (`futures::join_all` switches to an unordered set above 30 futures.)
pub(crate) async fn join_in_order<F: Future + Unpin>(pending: Vec<F>) -> Vec<F::Output> {
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

/// Writes what the protocol lists ([`Writes`]) for every account of the batch with one
/// statement ([`WRITE_BATCH`]), and, when `commit`, sends the `COMMIT` behind it in the same
/// burst. Returns how long that burst took when it committed (nothing to write: no statement, no
/// commit, `None`).
///
/// Why one statement: a batch's cost is mostly fixed (per statement: its messages, a server
/// reply flushed at each `Sync`, executor start-up; per batch: the round trips), and with about
/// fifteen commands per batch that fixed part outweighed the rows. Why the commit rides along:
/// every check of the write is made by the statement itself (`creditgraph_check`, migration 14),
/// so a failed check aborts the transaction and the `COMMIT` that follows is answered as a
/// `ROLLBACK`; nothing is left for the client to check before committing.
async fn write<C: GenericClient>(
    transaction: &C,
    writes: &[Writes],
    now: Timestamp,
    commit: bool,
) -> Result<Option<Duration>, Failure> {
    let changed: Vec<&Writes> = writes.iter().filter(|writes| writes.state().is_some() && writes.changed()).collect();
    fn state<'w>(writes: &&'w Writes) -> &'w AccountState {
        writes.state().expect("a changed account has a state")
    }
    let mut records: Vec<&protocol::Record> = writes.iter().flat_map(|writes| writes.records()).collect();
    if records.is_empty() && changed.is_empty() {
        return Ok(None);
    }
    // Keys and created accounts in ascending order: the lock order (see the module docs).
    records.sort_unstable_by(|left, right| left.key.cmp(&right.key));
    let mut inserts: Vec<&AccountState> =
        changed.iter().filter(|writes| writes.account_row() == AccountRow::Insert).map(state).collect();
    inserts.sort_unstable_by(|left, right| left.account_id.cmp(&right.account_id));
    let updates: Vec<&AccountState> =
        changed.iter().filter(|writes| writes.account_row() == AccountRow::Update).map(state).collect();
    let grants: Vec<&Grant> = changed.iter().flat_map(|writes| writes.grants()).collect();
    let holds: Vec<&Hold> = changed.iter().flat_map(|writes| writes.holds()).collect();
    let allowances: Vec<&Allowance> = changed.iter().flat_map(|writes| writes.allowances()).collect();
    let events: Vec<NewEvent> = changed.iter().flat_map(|writes| writes.events()).collect();
    let entries: Vec<&Entry> = changed.iter().flat_map(|writes| writes.entries()).collect();

    let statement = transaction.prepare_cached(&WRITE_BATCH).await?;
    let now_micros = now.micros();
    let records = RecordColumns::new(&records);
    let (inserts, updates) = (AccountColumns::new(&inserts)?, AccountColumns::new(&updates)?);
    let grants = GrantColumns::new(&grants)?;
    let holds = HoldColumns::new(&holds)?;
    let allowances = AllowanceColumns::new(&allowances);
    let events = EventColumns::new(&events);
    let entries = EntryColumns::new(&entries)?;
    let mut params: Vec<Param<'_>> = Vec::with_capacity(WRITE_BATCH_PARAMS);
    // In WRITE_BATCH's parameter order ($1 … $59).
    records.push(&mut params, &now_micros);
    inserts.push_insert(&mut params);
    updates.push_update(&mut params);
    grants.push(&mut params);
    holds.push(&mut params);
    allowances.push(&mut params);
    events.push(&mut params);
    entries.push(&mut params);
    debug_assert_eq!(params.len(), WRITE_BATCH_PARAMS);

    let started = Instant::now();
    let mut pending: Vec<PendingRows<'_>> = Vec::with_capacity(2);
    pending.push(Box::pin(transaction.query(&statement, &params)));
    if commit {
        pending.push(Box::pin(async move { transaction.batch_execute("COMMIT").await.map(|()| Vec::new()) }));
    }
    // The first error in sending order is the real one: a COMMIT after a failed statement is
    // answered as a ROLLBACK, without error.
    for reply in join_in_order(pending).await {
        reply?;
    }
    Ok(commit.then(|| started.elapsed()))
}

/// One statement parameter.
type Param<'p> = &'p (dyn ToSql + Sync);

/// How many parameters [`WRITE_BATCH`] takes.
const WRITE_BATCH_PARAMS: usize = 59;

/// A batch's writes in one statement: one data-modifying CTE per table, each fed arrays (empty
/// for a table the batch does not write), and a final row of checks, each raising through
/// `creditgraph_check` (migration 14) so that the statement — and with it the transaction —
/// fails rather than answering a count for the client to check:
/// - a key recorded by a concurrent transaction first (the insert waits for it, then skips the
///   key), or an account created by one first: `23505`, retried like any unique violation, and
///   the next attempt replays the key or locks the account;
/// - a grant, hold or allowance id that belongs to another account (its upsert updates no row),
///   or a locked account row not updated: `23000`, corrupt, nothing written;
/// - journal entries not numbered in journal order: `23000`. Each entry's `seq` is taken from the
///   sequence in journal order (`numbered`: `nextval` over the entries sorted by position) and
///   the check reads the numbers back.
///
/// The checks are the select list, evaluated left to right, and each pulls its CTE to the end:
/// keys are recorded before accounts are created, the lock order the module docs rely on. (The
/// documentation leaves the order of a statement's CTEs open; an order ever changed would at
/// worst be a deadlock, which is detected and retried.)
static WRITE_BATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH recorded AS ( \
           INSERT INTO idempotency (key, fingerprint, result, created_at) \
           SELECT key, fingerprint, result, $4 FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]) WITH ORDINALITY \
             AS record (key, fingerprint, result, n) ORDER BY n \
           ON CONFLICT (key) DO NOTHING RETURNING 1), \
         created AS ( \
           INSERT INTO accounts (account_id, created_at, spent, refunded, held, low_balance_threshold) \
           SELECT account_id, created_at, spent, refunded, held, low_balance_threshold \
           FROM unnest($5::TEXT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[]) \
             WITH ORDINALITY AS account (account_id, created_at, spent, refunded, held, low_balance_threshold, n) \
           ORDER BY n ON CONFLICT (account_id) DO NOTHING RETURNING 1), \
         updated AS ( \
           UPDATE accounts SET spent = changed.spent, refunded = changed.refunded, held = changed.held, \
             low_balance_threshold = changed.low_balance_threshold \
           FROM unnest($11::TEXT[], $12::BIGINT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[]) \
             AS changed (account_id, spent, refunded, held, low_balance_threshold) \
           WHERE accounts.account_id = changed.account_id RETURNING 1), \
         granted AS ( \
           INSERT INTO grants (grant_id, account_id, kind, amount, free, priority, expires_at, created_at, reference, \
             metadata, live, pinned, voided_at) \
           SELECT * FROM unnest($16::TEXT[], $17::TEXT[], $18::TEXT[], $19::BIGINT[], $20::BIGINT[], $21::INT[], \
             $22::BIGINT[], $23::BIGINT[], $24::TEXT[], $25::TEXT[], $26::BOOL[], $27::BIGINT[], $28::BIGINT[]) \
           ON CONFLICT (grant_id) DO UPDATE SET amount = EXCLUDED.amount, free = EXCLUDED.free, \
             priority = EXCLUDED.priority, expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference, \
             metadata = EXCLUDED.metadata, live = EXCLUDED.live, pinned = EXCLUDED.pinned, \
             voided_at = EXCLUDED.voided_at \
           WHERE grants.account_id = EXCLUDED.account_id RETURNING 1), \
         held AS ( \
           INSERT INTO holds (hold_id, account_id, amount, captured, remaining, refunded, state, expires_at, \
             created_at, reference, metadata, allocations) \
           SELECT * FROM unnest($29::TEXT[], $30::TEXT[], $31::BIGINT[], $32::BIGINT[], $33::BIGINT[], \
             $34::BIGINT[], $35::TEXT[], $36::BIGINT[], $37::BIGINT[], $38::TEXT[], $39::TEXT[], $40::TEXT[]) \
           ON CONFLICT (hold_id) DO UPDATE SET amount = EXCLUDED.amount, captured = EXCLUDED.captured, \
             remaining = EXCLUDED.remaining, refunded = EXCLUDED.refunded, state = EXCLUDED.state, \
             expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference, metadata = EXCLUDED.metadata, \
             allocations = EXCLUDED.allocations \
           WHERE holds.account_id = EXCLUDED.account_id RETURNING 1), \
         scheduled AS ( \
           INSERT INTO allowances (allowance_id, account_id, ends_at, next_due_at, data) \
           SELECT * FROM unnest($41::TEXT[], $42::TEXT[], $43::BIGINT[], $44::BIGINT[], $45::TEXT[]) \
           ON CONFLICT (allowance_id) DO UPDATE SET ends_at = EXCLUDED.ends_at, \
             next_due_at = EXCLUDED.next_due_at, data = EXCLUDED.data \
           WHERE allowances.account_id = EXCLUDED.account_id RETURNING 1), \
         announced AS ( \
           INSERT INTO outbox (type, account_id, data, at, created_at) \
           SELECT type, account_id, data, at, $4 FROM unnest($46::TEXT[], $47::TEXT[], $48::TEXT[], $49::BIGINT[]) \
             WITH ORDINALITY AS event (type, account_id, data, at, n) ORDER BY n RETURNING 1), \
         numbered AS MATERIALIZED ( \
           SELECT entry.*, nextval('entries_seq_seq') AS seq FROM ( \
             SELECT * FROM unnest($50::TEXT[], $51::TEXT[], $52::BIGINT[], $53::TEXT[], $54::TEXT[], $55::TEXT[], \
               $56::BIGINT[], $57::BIGINT[], $58::BIGINT[], $59::TEXT[]) WITH ORDINALITY \
               AS entry ({entry_columns}, n) ORDER BY n) AS entry), \
         journaled AS ( \
           INSERT INTO entries (seq, {entry_columns}) SELECT seq, {entry_columns} FROM numbered RETURNING 1) \
         SELECT \
           creditgraph_check((SELECT count(*) FROM recorded) = cardinality($1::TEXT[]), '23505', \
             'an idempotency key of the batch was recorded concurrently'), \
           creditgraph_check((SELECT count(*) FROM created) = cardinality($5::TEXT[]), '23505', \
             'an account of the batch was created concurrently'), \
           creditgraph_check((SELECT count(*) FROM updated) = cardinality($11::TEXT[]), '23000', \
             'an account row locked by the batch was not updated; not committed'), \
           creditgraph_check((SELECT count(*) FROM granted) = cardinality($16::TEXT[]), '23000', \
             'a grant id of the batch already belongs to another account; not committed'), \
           creditgraph_check((SELECT count(*) FROM held) = cardinality($29::TEXT[]), '23000', \
             'a hold id of the batch already belongs to another account; not committed'), \
           creditgraph_check((SELECT count(*) FROM scheduled) = cardinality($41::TEXT[]), '23000', \
             'an allowance id of the batch already belongs to another account; not committed'), \
           (SELECT count(*) FROM announced), \
           creditgraph_check((SELECT count(*) FROM journaled) = cardinality($50::TEXT[]) \
             AND NOT EXISTS (SELECT 1 FROM numbered AS before JOIN numbered AS after ON after.n = before.n + 1 \
               WHERE after.seq <= before.seq), '23000', \
             'journal entries were not numbered in journal order; not committed')",
        entry_columns = "account_id, kind, amount, hold_id, grant_id, reference, balance_after, held_after, at, \
                         idempotency_key",
    )
});

/// The accounts' low-balance thresholds as a BIGINT[] parameter (NULL for none).
fn thresholds(states: &[&AccountState]) -> Result<Vec<Option<i64>>, StoreError> {
    states.iter().map(|state| state.low_balance_threshold.map(sql_amount).transpose()).collect()
}

/// The amounts `amount` picks from each of `items`, as a BIGINT[] parameter.
fn amounts<T>(items: &[&T], amount: fn(&T) -> Amount) -> Result<Vec<i64>, StoreError> {
    items.iter().map(|item| sql_amount(amount(item))).collect()
}

/// [`WRITE_BATCH`]'s parameters, one array per column: the idempotency records.
struct RecordColumns<'a> {
    key: Vec<&'a str>,
    fingerprint: Vec<&'a str>,
    result: Vec<&'a str>,
}

impl<'a> RecordColumns<'a> {
    fn new(records: &[&'a protocol::Record]) -> RecordColumns<'a> {
        RecordColumns {
            key: records.iter().map(|record| record.key.as_str()).collect(),
            fingerprint: records.iter().map(|record| record.fingerprint.as_str()).collect(),
            result: records.iter().map(|record| record.result.as_str()).collect(),
        }
    }

    /// Pushes `$1`–`$3` and the batch's time, `$4`.
    fn push<'p>(&'p self, params: &mut Vec<Param<'p>>, now_micros: &'p i64) {
        params.extend::<[Param<'_>; 4]>([&self.key, &self.fingerprint, &self.result, now_micros]);
    }
}

/// Account rows, inserted or updated (`created_at` is used for inserts only).
struct AccountColumns<'a> {
    account_id: Vec<&'a str>,
    created_at: Vec<i64>,
    spent: Vec<i64>,
    refunded: Vec<i64>,
    held: Vec<i64>,
    threshold: Vec<Option<i64>>,
}

impl<'a> AccountColumns<'a> {
    fn new(states: &[&'a AccountState]) -> Result<AccountColumns<'a>, StoreError> {
        Ok(AccountColumns {
            account_id: states.iter().map(|state| state.account_id.as_str()).collect(),
            created_at: states.iter().map(|state| state.created_at.micros()).collect(),
            spent: amounts(states, |state| state.totals.spent)?,
            refunded: amounts(states, |state| state.totals.refunded)?,
            held: amounts(states, |state| state.held)?,
            threshold: thresholds(states)?,
        })
    }

    /// Pushes the columns of created accounts.
    fn push_insert<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 6]>([
            &self.account_id,
            &self.created_at,
            &self.spent,
            &self.refunded,
            &self.held,
            &self.threshold,
        ]);
    }

    /// Pushes the columns of updated accounts (`created_at` never changes).
    fn push_update<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 5]>([&self.account_id, &self.spent, &self.refunded, &self.held, &self.threshold]);
    }
}

/// Grants, each as it stands in its account's final state.
struct GrantColumns<'a> {
    grant_id: Vec<&'a str>,
    account_id: Vec<&'a str>,
    kind: Vec<&'a str>,
    amount: Vec<i64>,
    free: Vec<i64>,
    priority: Vec<i32>,
    expires_at: Vec<Option<i64>>,
    created_at: Vec<i64>,
    reference: Vec<Option<&'a str>>,
    metadata: Vec<&'a str>,
    live: Vec<bool>,
    pinned: Vec<i64>,
    voided_at: Vec<Option<i64>>,
}

impl<'a> GrantColumns<'a> {
    fn new(grants: &[&'a Grant]) -> Result<GrantColumns<'a>, StoreError> {
        Ok(GrantColumns {
            grant_id: grants.iter().map(|grant| grant.grant_id.as_str()).collect(),
            account_id: grants.iter().map(|grant| grant.account_id.as_str()).collect(),
            kind: grants.iter().map(|grant| grant.kind.as_str()).collect(),
            amount: amounts(grants, |grant| grant.amount)?,
            free: amounts(grants, |grant| grant.free)?,
            priority: grants.iter().map(|grant| grant.priority).collect(),
            expires_at: grants.iter().map(|grant| grant.expires_at.map(Timestamp::micros)).collect(),
            created_at: grants.iter().map(|grant| grant.created_at.micros()).collect(),
            reference: grants
                .iter()
                .map(|grant| grant.reference.as_ref().map(|reference| reference.as_str()))
                .collect(),
            metadata: grants.iter().map(|grant| grant.metadata.as_str()).collect(),
            live: grants.iter().map(|grant| grant.live).collect(),
            pinned: amounts(grants, |grant| grant.pinned)?,
            voided_at: grants.iter().map(|grant| grant.voided_at.map(Timestamp::micros)).collect(),
        })
    }

    fn push<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 13]>([
            &self.grant_id,
            &self.account_id,
            &self.kind,
            &self.amount,
            &self.free,
            &self.priority,
            &self.expires_at,
            &self.created_at,
            &self.reference,
            &self.metadata,
            &self.live,
            &self.pinned,
            &self.voided_at,
        ]);
    }
}

/// Holds, each as it stands in its account's final state.
struct HoldColumns<'a> {
    hold_id: Vec<&'a str>,
    account_id: Vec<&'a str>,
    amount: Vec<i64>,
    captured: Vec<i64>,
    remaining: Vec<i64>,
    refunded: Vec<i64>,
    state: Vec<&'a str>,
    expires_at: Vec<i64>,
    created_at: Vec<i64>,
    reference: Vec<Option<&'a str>>,
    metadata: Vec<&'a str>,
    allocations: Vec<String>,
}

impl<'a> HoldColumns<'a> {
    fn new(holds: &[&'a Hold]) -> Result<HoldColumns<'a>, StoreError> {
        Ok(HoldColumns {
            hold_id: holds.iter().map(|hold| hold.hold_id.as_str()).collect(),
            account_id: holds.iter().map(|hold| hold.account_id.as_str()).collect(),
            amount: amounts(holds, |hold| hold.amount)?,
            captured: amounts(holds, |hold| hold.captured)?,
            remaining: amounts(holds, |hold| hold.remaining)?,
            refunded: amounts(holds, |hold| hold.refunded)?,
            state: holds.iter().map(|hold| hold.state.as_str()).collect(),
            expires_at: holds.iter().map(|hold| hold.expires_at.micros()).collect(),
            created_at: holds.iter().map(|hold| hold.created_at.micros()).collect(),
            reference: holds.iter().map(|hold| hold.reference.as_ref().map(|reference| reference.as_str())).collect(),
            metadata: holds.iter().map(|hold| hold.metadata.as_str()).collect(),
            allocations: holds.iter().map(|hold| codec::encode_allocations(&hold.allocations)).collect(),
        })
    }

    fn push<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 12]>([
            &self.hold_id,
            &self.account_id,
            &self.amount,
            &self.captured,
            &self.remaining,
            &self.refunded,
            &self.state,
            &self.expires_at,
            &self.created_at,
            &self.reference,
            &self.metadata,
            &self.allocations,
        ]);
    }
}

/// Allowances, each as it stands in its account's final state.
struct AllowanceColumns<'a> {
    allowance_id: Vec<&'a str>,
    account_id: Vec<&'a str>,
    ends_at: Vec<Option<i64>>,
    next_due_at: Vec<Option<i64>>,
    data: Vec<String>,
}

impl<'a> AllowanceColumns<'a> {
    fn new(allowances: &[&'a Allowance]) -> AllowanceColumns<'a> {
        AllowanceColumns {
            allowance_id: allowances.iter().map(|allowance| allowance.allowance_id.as_str()).collect(),
            account_id: allowances.iter().map(|allowance| allowance.account_id.as_str()).collect(),
            ends_at: allowances.iter().map(|allowance| allowance.ends_at.map(Timestamp::micros)).collect(),
            next_due_at: allowances.iter().map(|allowance| allowance.next_due_at.map(Timestamp::micros)).collect(),
            data: allowances.iter().map(|allowance| codec::encode_allowance(allowance).to_string()).collect(),
        }
    }

    fn push<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 5]>([
            &self.allowance_id,
            &self.account_id,
            &self.ends_at,
            &self.next_due_at,
            &self.data,
        ]);
    }
}

/// Outbox events, in order.
struct EventColumns<'a> {
    kind: Vec<&'a str>,
    account_id: Vec<String>,
    data: Vec<&'a str>,
    at: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    fn new(events: &'a [NewEvent]) -> EventColumns<'a> {
        EventColumns {
            kind: events.iter().map(|event| event.event_type.as_str()).collect(),
            account_id: events.iter().map(|event| event.account_id.to_string()).collect(),
            data: events.iter().map(|event| event.data.as_str()).collect(),
            at: events.iter().map(|event| event.at.micros()).collect(),
        }
    }

    fn push<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 4]>([&self.kind, &self.account_id, &self.data, &self.at]);
    }
}

/// Journal entries, in journal order.
struct EntryColumns<'a> {
    account_id: Vec<&'a str>,
    kind: Vec<&'a str>,
    amount: Vec<i64>,
    hold_id: Vec<Option<&'a str>>,
    grant_id: Vec<Option<&'a str>>,
    reference: Vec<Option<&'a str>>,
    balance_after: Vec<i64>,
    held_after: Vec<i64>,
    at: Vec<i64>,
    idempotency_key: Vec<Option<&'a str>>,
}

impl<'a> EntryColumns<'a> {
    fn new(entries: &[&'a Entry]) -> Result<EntryColumns<'a>, StoreError> {
        Ok(EntryColumns {
            account_id: entries.iter().map(|entry| entry.account_id.as_str()).collect(),
            kind: entries.iter().map(|entry| entry.kind.as_str()).collect(),
            amount: amounts(entries, |entry| entry.amount)?,
            hold_id: entries.iter().map(|entry| entry.hold_id.as_ref().map(HoldId::as_str)).collect(),
            grant_id: entries.iter().map(|entry| entry.grant_id.as_ref().map(|id| id.as_str())).collect(),
            reference: entries
                .iter()
                .map(|entry| entry.reference.as_ref().map(|reference| reference.as_str()))
                .collect(),
            balance_after: amounts(entries, |entry| entry.balance_after)?,
            held_after: amounts(entries, |entry| entry.held_after)?,
            at: entries.iter().map(|entry| entry.at.micros()).collect(),
            idempotency_key: entries.iter().map(|entry| entry.idempotency_key.as_deref()).collect(),
        })
    }

    fn push<'p>(&'p self, params: &mut Vec<Param<'p>>) {
        params.extend::<[Param<'_>; 10]>([
            &self.account_id,
            &self.kind,
            &self.amount,
            &self.hold_id,
            &self.grant_id,
            &self.reference,
            &self.balance_after,
            &self.held_after,
            &self.at,
            &self.idempotency_key,
        ]);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deadpool_postgres::Transaction;
    use ledger::{AccountId, Amount, Outcome, Rejection, Timestamp};
    use store::conformance::{account, capture_credits, grant_credits, hold_credits};
    use store::{Clock, Executed, LedgerStore, ManualClock, Request};
    use tokio_postgres::IsolationLevel;

    use super::{apply_batch, Batch};
    use crate::{testing, PostgresOptions, PostgresStore};

    async fn batch(
        transaction: &Transaction<'_>,
        requests: &[(Option<&AccountId>, &Request)],
        now: Timestamp,
    ) -> Batch {
        apply_batch(transaction, super::Opening::InTransaction, requests, now).await.expect("batch")
    }

    /// One transaction for commands of three accounts (one new), with a rejection in the middle:
    /// the rejected command changes nothing and costs its neighbours nothing, each account's
    /// commands are decided in arrival order, and the result verifies.
    #[tokio::test]
    async fn a_batch_spanning_accounts_with_a_rejection_in_the_middle() {
        let url = testing::fresh_database().await;
        let clock = Arc::new(ManualClock::starting_now());
        let store = PostgresStore::connect(&url, clock.clone(), PostgresOptions::default()).await.expect("connect");
        for (account_id, amount) in [("x-a", 10), ("x-b", 5)] {
            store
                .execute(Request::new(grant_credits(account_id, &format!("g-{account_id}"), amount)))
                .await
                .expect("grant");
        }
        let (a, b, c) = (account("x-a"), account("x-b"), account("x-c"));
        let requests = [
            (Some(&b), Request::with_key(hold_credits("x-b", "hb1", 4, 600), "kb1", "f")),
            (Some(&a), Request::with_key(hold_credits("x-a", "ha1", 6, 600), "ka1", "f")),
            // Only 1 credit left on x-b: rejected, and recorded on its key.
            (Some(&b), Request::with_key(hold_credits("x-b", "hb2", 2, 600), "kb2", "f")),
            (Some(&c), Request::new(grant_credits("x-c", "g-x-c", 7))),
            (Some(&a), Request::with_key(capture_credits("ha1", 5), "ka2", "f")),
            // Still 1 credit on x-b: the rejection above left the state as it was.
            (Some(&b), Request::with_key(hold_credits("x-b", "hb3", 1, 600), "kb3", "f")),
        ];
        let requests: Vec<(Option<&AccountId>, &Request)> =
            requests.iter().map(|(account_id, request)| (*account_id, request)).collect();
        let mut client = store.pool.get().await.expect("client");
        let transaction =
            client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await.expect("begin");
        let Batch { executed, wrote, .. } = batch(&transaction, &requests, clock.now()).await;
        transaction.commit().await.expect("commit");
        assert!(wrote);
        assert!(matches!(executed[0], Executed::Fresh(Ok(Outcome::Held { .. }))), "{executed:?}");
        assert!(matches!(executed[1], Executed::Fresh(Ok(Outcome::Held { .. }))), "{executed:?}");
        assert!(matches!(executed[2], Executed::Fresh(Err(Rejection::InsufficientCredits { .. }))), "{executed:?}");
        assert!(matches!(executed[3], Executed::Fresh(Ok(Outcome::Granted { .. }))), "{executed:?}");
        assert!(matches!(executed[4], Executed::Fresh(Ok(Outcome::Captured { .. }))), "{executed:?}");
        assert!(matches!(executed[5], Executed::Fresh(Ok(Outcome::Held { .. }))), "{executed:?}");

        let balances = |id: &'static str| {
            let store = &store;
            async move { store.account(&account(id)).await.expect("read").expect("exists").balances }
        };
        let (a_now, b_now, c_now) = (balances("x-a").await, balances("x-b").await, balances("x-c").await);
        assert_eq!((a_now.balance, a_now.held), (Amount::from_credits(5), Amount::ZERO));
        assert_eq!((b_now.balance, b_now.held), (Amount::from_credits(5), Amount::from_credits(5)));
        assert_eq!((c_now.balance, c_now.held), (Amount::from_credits(7), Amount::ZERO));
        // The rejection was recorded on its key: sent again, it replays.
        let again = store.execute(Request::with_key(hold_credits("x-b", "hb2", 2, 600), "kb2", "f")).await;
        assert!(matches!(again, Ok(Executed::Replayed(Err(Rejection::InsufficientCredits { .. })))), "{again:?}");
        let entries = store.entries(&account("x-b"), 0, 100).await.expect("entries");
        assert_eq!(entries.len(), 3, "the grant and two holds: {entries:?}");
        let report = store.verify().await.expect("verify");
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }
}
