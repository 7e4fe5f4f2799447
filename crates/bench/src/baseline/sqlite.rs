//! The SQLite baseline: four pooled connections, every operation one `BEGIN IMMEDIATE … COMMIT`
//! on a blocking thread.
//!
//! `BEGIN IMMEDIATE` takes the database's write lock up front (SQLite has no row locks and no
//! `FOR UPDATE`), so each operation reads, checks and writes alone, as the PostgreSQL baseline's
//! `ForUpdate` mode does per account. Writers that find the lock taken wait in SQLite's busy
//! handler (5 s); one that still finds it busy is rolled back and retried at most
//! [`RETRIES_MAX`] times. Durability is per transaction: WAL with `synchronous=FULL` fsyncs the
//! log at every commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use async_trait::async_trait;
use ledger::{AccountId, Amount, Balances, Command, Entry, Hold, HoldId, HoldState, Outcome, Rejection, Timestamp};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior};
use store::{codec, AccountView, Clock, Executed, LedgerStore, Request, StoreError, SweepReport, VerifyReport};

use super::rules::{self, hold_columns, AccountRow, HoldRow, Moves, ReleasePlan, VerifyRow};
use super::{BaselineStats, Counters, RETRIES_MAX};

const CONNECTIONS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS baseline_accounts (
    id TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    held INTEGER NOT NULL CHECK (held >= 0),
    captured INTEGER NOT NULL,
    granted INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS baseline_holds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES baseline_accounts (id),
    amount INTEGER NOT NULL,
    captured INTEGER NOT NULL,
    state TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    reference TEXT,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS baseline_holds_account ON baseline_holds (account_id);
CREATE INDEX IF NOT EXISTS baseline_holds_due ON baseline_holds (expires_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS baseline_idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL
);
";

const CLAIM_KEY: &str =
    "INSERT INTO baseline_idempotency (key, fingerprint, result) VALUES (?1, ?2, '') ON CONFLICT DO NOTHING";
const READ_KEY: &str = "SELECT fingerprint, result FROM baseline_idempotency WHERE key = ?1";
const RECORD_RESULT: &str = "UPDATE baseline_idempotency SET result = ?2 WHERE key = ?1";
/// Upsert: a new account, or credits added while the balance stays within [`Amount::BALANCE_MAX`].
const GRANT: &str = "INSERT INTO baseline_accounts AS a (id, available, held, captured, granted, created_at) \
     VALUES (?1, ?2, 0, 0, ?2, ?3) ON CONFLICT (id) DO UPDATE \
     SET available = a.available + excluded.available, granted = a.granted + excluded.granted \
     WHERE a.available + a.held + excluded.available <= ?4 RETURNING available";
const READ_AVAILABLE: &str = "SELECT available FROM baseline_accounts WHERE id = ?1";
/// Every change of an account's columns; refuses (no row) to take `available` below zero.
const MOVE: &str = "UPDATE baseline_accounts \
     SET available = available + ?2, held = held + ?3, captured = captured + ?4 \
     WHERE id = ?1 AND available + ?2 >= 0 RETURNING available, held";
const INSERT_HOLD: &str = "INSERT INTO baseline_holds \
     (id, account_id, amount, captured, state, expires_at, created_at, reference, metadata) \
     VALUES (?1, ?2, ?3, 0, 'pending', ?4, ?5, ?6, ?7)";
const UPDATE_HOLD: &str = "UPDATE baseline_holds SET captured = ?2, state = ?3 WHERE id = ?1";
const READ_ACCOUNT: &str =
    "SELECT id, available, held, captured, granted, created_at FROM baseline_accounts WHERE id = ?1";
const READ_HOLD: &str = concat!("SELECT ", hold_columns!(), " FROM baseline_holds WHERE id = ?1");
/// An account's holds still pending in storage, expired or not (reads apply expiry afterwards).
const PENDING_HOLDS: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM baseline_holds WHERE account_id = ?1 AND state = 'pending' ORDER BY created_at, id"
);
/// An account's active holds: pending and not yet at their expiry.
const ACTIVE_HOLDS: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM baseline_holds WHERE account_id = ?1 AND state = 'pending' AND expires_at > ?2 ORDER BY created_at, id"
);
/// The straightforward sweeper: expire due holds (at most `?2`, oldest expiry first) and return
/// what each still reserved.
const SWEEP_HOLDS: &str = "UPDATE baseline_holds SET state = 'expired' WHERE id IN ( \
     SELECT id FROM baseline_holds WHERE state = 'pending' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2) \
     RETURNING account_id, MAX(amount - captured, 0)";
const VERIFY: &str = "SELECT a.id, a.available, a.held, a.captured, a.granted, \
     COALESCE(SUM(MAX(h.amount - h.captured, 0)) FILTER (WHERE h.state = 'pending'), 0), \
     COUNT(h.id) \
     FROM baseline_accounts a LEFT JOIN baseline_holds h ON h.account_id = a.id \
     GROUP BY a.id ORDER BY a.id";

/// The failure of one transaction attempt.
enum Failure {
    /// The write lock stayed taken past the busy timeout.
    Busy(String),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Failure {
        match error.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Failure::Busy(error.to_string()),
            _ => Failure::Store(store_error(error)),
        }
    }
}

fn store_error(error: rusqlite::Error) -> StoreError {
    StoreError::unavailable(format!("SQLite: {error}")).with_source(error)
}

fn hold_from(row: &Row<'_>) -> rusqlite::Result<HoldRow> {
    Ok(HoldRow {
        hold_id: row.get(0)?,
        account_id: row.get(1)?,
        amount: row.get(2)?,
        captured: row.get(3)?,
        state: row.get(4)?,
        expires_at: row.get(5)?,
        created_at: row.get(6)?,
        reference: row.get(7)?,
        metadata: row.get(8)?,
    })
}

fn holds_of(transaction: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Hold>, Failure> {
    let mut statement = transaction.prepare_cached(sql)?;
    let rows = statement.query_map(params, hold_from)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().map(HoldRow::into_hold).collect::<Result<Vec<_>, _>>()?)
}

/// The straightforward SQLite ledger (see the module docs of this crate).
pub struct BaselineSqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    clock: Arc<dyn Clock>,
    counters: Counters,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let startup =
        |error: rusqlite::Error| StoreError::startup(format!("SQLite {}: {error}", path.display())).with_source(error);
    let connection = Connection::open(path).map_err(startup)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(startup)?;
    let journal_mode: String =
        connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(startup)?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::startup(format!("SQLite {} refused WAL: {journal_mode}", path.display())));
    }
    connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(startup)?;
    Ok(connection)
}

impl BaselineSqliteStore {
    /// Opens (or creates) the database file at `path`, creates the `baseline_*` tables if they
    /// are absent and opens the connection pool.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let first = open_connection(path)?;
        first.execute_batch(SCHEMA).map_err(|error| {
            StoreError::startup(format!("SQLite schema in {}: {error}", path.display())).with_source(error)
        })?;
        let mut connections = vec![Mutex::new(first)];
        for _ in 1..CONNECTIONS {
            connections.push(Mutex::new(open_connection(path)?));
        }
        let inner = Inner { connections, next: AtomicUsize::new(0), clock, counters: Counters::default() };
        Ok(BaselineSqliteStore { inner: Arc::new(inner) })
    }

    pub fn stats(&self) -> BaselineStats {
        self.inner.counters.stats()
    }

    /// Runs `work` on a blocking thread: database calls block, and must not stall the runtime.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|error| StoreError::unavailable(format!("SQLite task failed: {error}")).with_source(error))?
    }
}

impl Inner {
    /// A free connection if there is one, else the next one in turn (waiting for it).
    fn connection(&self) -> MutexGuard<'_, Connection> {
        for connection in &self.connections {
            match connection.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction and commits, retrying a busy database
    /// at most [`RETRIES_MAX`] times. `work` gets the time read once the write lock is held.
    fn write<T>(
        &self,
        what: &str,
        mut work: impl FnMut(&Transaction<'_>, Timestamp) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut retries = 0_u32;
        loop {
            let attempt = (|| {
                let mut connection = self.connection();
                let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = work(&transaction, self.clock.now())?;
                transaction.commit()?;
                Ok(value)
            })();
            let detail = match attempt {
                Ok(value) => {
                    Counters::count(&self.counters.transactions);
                    return Ok(value);
                }
                Err(Failure::Store(error)) => return Err(error),
                Err(Failure::Busy(detail)) => detail,
            };
            if retries >= RETRIES_MAX {
                return Err(StoreError::contention(format!("{what} gave up after {retries} retries: {detail}")));
            }
            retries += 1;
            Counters::count(&self.counters.retries);
        }
    }

    /// Runs `work` in one read transaction, so its statements see one snapshot.
    fn read<T>(&self, work: impl FnOnce(&Transaction<'_>, Timestamp) -> Result<T, Failure>) -> Result<T, StoreError> {
        let attempt = (|| {
            let mut connection = self.connection();
            let transaction = connection.transaction()?;
            let value = work(&transaction, self.clock.now())?;
            transaction.commit()?;
            Ok(value)
        })();
        attempt.map_err(|failure| match failure {
            Failure::Store(error) => error,
            Failure::Busy(detail) => StoreError::unavailable(detail),
        })
    }
}

fn execute_in(transaction: &Transaction<'_>, request: &Request, now: Timestamp) -> Result<Executed, Failure> {
    if let Some(idempotency) = &request.idempotency {
        let claimed =
            transaction.prepare_cached(CLAIM_KEY)?.execute(params![idempotency.key, idempotency.fingerprint])?;
        if claimed == 0 {
            let (fingerprint, recorded): (String, String) = transaction
                .prepare_cached(READ_KEY)?
                .query_row(params![idempotency.key], |row| Ok((row.get(0)?, row.get(1)?)))?;
            if fingerprint != idempotency.fingerprint {
                return Ok(Executed::Conflict);
            }
            return Ok(Executed::Replayed(codec::decode_result(&recorded)?));
        }
    }
    let result = apply(transaction, &request.command, now)?;
    if let Some(idempotency) = &request.idempotency {
        transaction.prepare_cached(RECORD_RESULT)?.execute(params![idempotency.key, codec::encode_result(&result)])?;
    }
    Ok(Executed::Fresh(result))
}

fn apply(
    transaction: &Transaction<'_>,
    command: &Command,
    now: Timestamp,
) -> Result<Result<Outcome, Rejection>, Failure> {
    match command {
        Command::Grant { account_id, amount, .. } => {
            let balance_max = rules::micros(Amount::BALANCE_MAX);
            let row = transaction
                .prepare_cached(GRANT)?
                .query_row(params![account_id.as_str(), rules::micros(*amount), now.micros(), balance_max], |row| {
                    row.get::<_, i64>(0)
                })
                .optional()?;
            Ok(match row {
                Some(_) => Ok(Outcome::Granted { grant: rules::new_grant(command, now), created: true }),
                None => Err(Rejection::BalanceLimit),
            })
        }
        Command::Hold { account_id, amount, .. } => {
            if let Err(rejection) = move_credits(transaction, account_id, Moves::hold(*amount), *amount)? {
                return Ok(Err(rejection));
            }
            let hold = rules::new_hold(command, now);
            transaction.prepare_cached(INSERT_HOLD)?.execute(params![
                hold.hold_id.as_str(),
                hold.account_id.as_str(),
                rules::micros(hold.amount),
                hold.expires_at.micros(),
                hold.created_at.micros(),
                hold.reference.as_ref().map(|reference| reference.as_str()),
                hold.metadata,
            ])?;
            Ok(Ok(Outcome::Held { hold }))
        }
        Command::Capture { hold_id, amount, is_final, overage } => {
            let Some(hold) = read_hold(transaction, hold_id)? else {
                return Ok(Err(Rejection::HoldNotFound));
            };
            let plan = match rules::plan_capture(&hold, *amount, *is_final, *overage, now) {
                Ok(plan) => plan,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if let Err(rejection) = move_credits(transaction, &hold.account_id, plan.moves, plan.excess)? {
                return Ok(Err(rejection));
            }
            update_hold(transaction, &plan.hold)?;
            Ok(Ok(Outcome::Captured { hold: plan.hold }))
        }
        Command::Release { hold_id } => {
            let Some(hold) = read_hold(transaction, hold_id)? else {
                return Ok(Err(Rejection::HoldNotFound));
            };
            match rules::plan_release(&hold, now) {
                ReleasePlan::Release { moves, hold } => {
                    give_back(transaction, &hold.account_id, moves)?;
                    update_hold(transaction, &hold)?;
                    Ok(Ok(Outcome::Released { hold, changed: true }))
                }
                ReleasePlan::Expire { moves } => {
                    give_back(transaction, &hold.account_id, moves)?;
                    let mut expired = hold;
                    expired.state = HoldState::Expired;
                    update_hold(transaction, &expired)?;
                    Ok(Err(Rejection::HoldNotPending { state: HoldState::Expired }))
                }
                ReleasePlan::Unchanged(hold) => Ok(Ok(Outcome::Released { hold, changed: false })),
                ReleasePlan::Refuse(rejection) => Ok(Err(rejection)),
            }
        }
        Command::Debit { account_id, amount, .. } => {
            Ok(move_credits(transaction, account_id, Moves::debit(*amount), *amount)?
                .map(|balances| Outcome::Debited { account_id: account_id.clone(), amount: *amount, balances }))
        }
        Command::Extend { .. }
        | Command::Refund { .. }
        | Command::Sweep { .. }
        | Command::CreateAllowance { .. }
        | Command::EndAllowances { .. }
        | Command::SubscribePlan { .. }
        | Command::SetLowBalanceThreshold { .. }
        | Command::VoidGrant { .. } => Err(rules::unsupported(command).expect("an unsupported command").into()),
    }
}

/// Applies `moves` to the account after checking that it has `required` available; the
/// transaction holds the write lock, so the check stays true until the UPDATE.
fn move_credits(
    transaction: &Transaction<'_>,
    account_id: &AccountId,
    moves: Moves,
    required: Amount,
) -> Result<Result<Balances, Rejection>, Failure> {
    let id = account_id.as_str();
    let available: Option<i64> =
        transaction.prepare_cached(READ_AVAILABLE)?.query_row(params![id], |row| row.get(0)).optional()?;
    let Some(available) = available else {
        return Ok(Err(Rejection::AccountNotFound));
    };
    let available = rules::to_amount(available, "available")?;
    if available < required {
        return Ok(Err(Rejection::InsufficientCredits { required, available }));
    }
    let (available, held): (i64, i64) = transaction
        .prepare_cached(MOVE)?
        .query_row(params![id, moves.available, moves.held, moves.captured], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(Ok(rules::balances(available, held)?))
}

/// Returns credits from `held` to `available`, which cannot be refused.
fn give_back(transaction: &Transaction<'_>, account_id: &AccountId, moves: Moves) -> Result<(), Failure> {
    match move_credits(transaction, account_id, moves, Amount::ZERO)? {
        Ok(_) => Ok(()),
        Err(rejection) => {
            Err(StoreError::corrupt(format!("a hold's account refused its credits back: {rejection}")).into())
        }
    }
}

fn read_hold(transaction: &Transaction<'_>, hold_id: &HoldId) -> Result<Option<Hold>, Failure> {
    let row = transaction.prepare_cached(READ_HOLD)?.query_row(params![hold_id.as_str()], hold_from).optional()?;
    Ok(row.map(HoldRow::into_hold).transpose()?)
}

fn update_hold(transaction: &Transaction<'_>, hold: &Hold) -> Result<(), Failure> {
    transaction.prepare_cached(UPDATE_HOLD)?.execute(params![
        hold.hold_id.as_str(),
        rules::micros(hold.captured),
        hold.state.as_str()
    ])?;
    Ok(())
}

fn sweep_in(transaction: &Transaction<'_>, now: Timestamp, holds_max: u32) -> Result<SweepReport, Failure> {
    let expired: Vec<(String, i64)> = transaction
        .prepare_cached(SWEEP_HOLDS)?
        .query_map(params![now.micros(), holds_max], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut returned: BTreeMap<String, i64> = BTreeMap::new();
    for (account_id, micros) in &expired {
        *returned.entry(account_id.clone()).or_default() += micros;
    }
    let mut update = transaction.prepare_cached(MOVE)?;
    for (account_id, micros) in &returned {
        let moved = update.query_row(params![account_id, micros, -micros, 0_i64], |_| Ok(())).optional()?;
        if moved.is_none() {
            return Err(StoreError::corrupt(format!("account {account_id} of expired holds is missing")).into());
        }
    }
    Ok(SweepReport { accounts: returned.len() as u64, entries: expired.len() as u64, idempotency_keys_deleted: 0 })
}

fn verify_in(transaction: &Transaction<'_>) -> Result<VerifyReport, Failure> {
    let mut report = VerifyReport::default();
    let mut statement = transaction.prepare_cached(VERIFY)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let verify_row = VerifyRow {
            account_id: row.get(0)?,
            available: row.get(1)?,
            held: row.get(2)?,
            captured: row.get(3)?,
            granted: row.get(4)?,
            pending_remaining: row.get(5)?,
        };
        report.accounts += 1;
        report.holds += row.get::<_, u64>(6)?;
        report.violations.extend(rules::verify_row(&verify_row)?);
    }
    Ok(report)
}

#[async_trait]
impl LedgerStore for BaselineSqliteStore {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        if let Some(error) = rules::unsupported(&request.command) {
            return Err(error);
        }
        self.blocking(move |inner| {
            inner.write(request.command.name(), |transaction, now| execute_in(transaction, &request, now))
        })
        .await
    }

    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        let account_id = account_id.clone();
        self.blocking(move |inner| {
            inner.read(|transaction, now| {
                let row = transaction
                    .prepare_cached(READ_ACCOUNT)?
                    .query_row(params![account_id.as_str()], |row| {
                        Ok((row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
                    })
                    .optional()?;
                let Some((available, held, captured, granted, created_at)) = row else {
                    return Ok(None);
                };
                let pending = holds_of(transaction, PENDING_HOLDS, params![account_id.as_str()])?;
                let account = AccountRow { account_id, available, held, captured, granted, created_at };
                Ok(Some(rules::account_view(account, pending, now)?))
            })
        })
        .await
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        let hold_id = hold_id.clone();
        self.blocking(move |inner| {
            inner.read(|transaction, now| {
                Ok(read_hold(transaction, &hold_id)?.map(|hold| ledger::view_hold(&hold, now)))
            })
        })
        .await
    }

    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        let account_id = account_id.clone();
        self.blocking(move |inner| {
            inner.read(|transaction, now| {
                holds_of(transaction, ACTIVE_HOLDS, params![account_id.as_str(), now.micros()])
            })
        })
        .await
    }

    /// Pending holds only (from [`LedgerStore::pending_holds`], paged by hold id): the baseline
    /// is measured, not browsed.
    async fn holds(
        &self,
        account_id: &AccountId,
        state: ledger::HoldState,
        after: Option<&HoldId>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        if state != ledger::HoldState::Pending {
            return Err(StoreError::unavailable("the baseline lists pending holds only"));
        }
        let mut holds = self.pending_holds(account_id).await?;
        holds.retain(|hold| after.is_none_or(|after| &hold.hold_id > after));
        holds.sort_by(|a, b| a.hold_id.cmp(&b.hold_id));
        holds.truncate(limit.min(store::HOLDS_PAGE_MAX) as usize);
        Ok(holds)
    }

    /// Always empty: the baseline keeps no journal.
    async fn entries(&self, _account_id: &AccountId, _after_seq: u64, _limit: u32) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }

    /// Expires due holds, at most `accounts_max` of them (the baseline sweeps holds, not
    /// accounts), and returns their credits to `available`. `entries` counts expired holds;
    /// no idempotency key is ever deleted.
    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError> {
        self.blocking(move |inner| inner.write("sweep", |transaction, now| sweep_in(transaction, now, accounts_max)))
            .await
    }

    /// Checks every account's columns against each other and against its pending holds (see the
    /// crate docs); `entries` is 0 as there is no journal.
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.blocking(|inner| inner.read(|transaction, _now| verify_in(transaction))).await
    }

    fn backend(&self) -> &'static str {
        "baseline-sqlite"
    }
}
