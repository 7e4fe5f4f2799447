//! The PostgreSQL baseline: a deadpool pool and one READ COMMITTED transaction per operation.
//!
//! Each operation claims its idempotency key first (`INSERT … ON CONFLICT DO NOTHING`, which
//! waits for a concurrent holder of the key), then either locks the account row and decides
//! ([`PostgresBaselineMode::ForUpdate`]) or lets one guarded UPDATE decide
//! ([`PostgresBaselineMode::ConditionalUpdate`]), writes, records the result on the key and
//! commits. Capture and release lock the hold row first, then the account. Every check comes
//! before the first write, so a rejection commits only its idempotency record.
//!
//! Lock order is hold, then account, in every transaction, so commands cannot deadlock each other;
//! only concurrent sweeps (several holds and accounts each) can, and they skip locked holds.
//! Deadlocks and serialization failures are retried at most [`RETRIES_MAX`] times.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Transaction};
use ledger::{AccountId, Amount, Balances, Command, Entry, Hold, HoldId, Outcome, Rejection, Timestamp};
use store::{codec, AccountView, Clock, Executed, LedgerStore, Request, StoreError, SweepReport, VerifyReport};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::rules::{self, hold_columns, AccountRow, HoldRow, Moves, ReleasePlan, VerifyRow};
use super::{BaselineStats, Counters, RETRIES_MAX};

/// How an operation that takes credits decides whether the account has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostgresBaselineMode {
    /// `SELECT available … FOR UPDATE`, check in the application, then UPDATE.
    ForUpdate,
    /// One `UPDATE … WHERE available >= $amount RETURNING …`; no row means no credits (or no
    /// account, told apart by a plain read).
    ConditionalUpdate,
}

/// Bound on waiting for a pooled connection or opening one.
const POOL_WAIT_SECONDS: u64 = 30;
const CONNECT_SECONDS: u64 = 5;
/// Accounts read per statement by `verify`.
const VERIFY_PAGE_MAX: i64 = 1_000;

const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7202180001);
CREATE TABLE IF NOT EXISTS baseline_accounts (
    id TEXT PRIMARY KEY,
    available BIGINT NOT NULL CHECK (available >= 0),
    held BIGINT NOT NULL CHECK (held >= 0),
    captured BIGINT NOT NULL,
    granted BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS baseline_holds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES baseline_accounts (id),
    amount BIGINT NOT NULL,
    captured BIGINT NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
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
COMMIT;
";

const CLAIM_KEY: &str =
    "INSERT INTO baseline_idempotency (key, fingerprint, result) VALUES ($1, $2, '') ON CONFLICT DO NOTHING";
const READ_KEY: &str = "SELECT fingerprint, result FROM baseline_idempotency WHERE key = $1";
const RECORD_RESULT: &str = "UPDATE baseline_idempotency SET result = $2 WHERE key = $1";
/// Upsert: a new account, or credits added while the balance stays within [`Amount::BALANCE_MAX`].
const GRANT: &str = "INSERT INTO baseline_accounts AS a (id, available, held, captured, granted, created_at) \
     VALUES ($1, $2, 0, 0, $2, $3) ON CONFLICT (id) DO UPDATE \
     SET available = a.available + excluded.available, granted = a.granted + excluded.granted \
     WHERE a.available + a.held + excluded.available <= $4 RETURNING available";
const LOCK_ACCOUNT: &str = "SELECT available FROM baseline_accounts WHERE id = $1 FOR UPDATE";
const READ_AVAILABLE: &str = "SELECT available FROM baseline_accounts WHERE id = $1";
/// Every change of an account's columns; refuses (no row) to take `available` below zero.
const MOVE: &str = "UPDATE baseline_accounts \
     SET available = available + $2, held = held + $3, captured = captured + $4 \
     WHERE id = $1 AND available + $2 >= 0 RETURNING available, held";
const INSERT_HOLD: &str = "INSERT INTO baseline_holds \
     (id, account_id, amount, captured, state, expires_at, created_at, reference, metadata) \
     VALUES ($1, $2, $3, 0, 'pending', $4, $5, $6, $7)";
const UPDATE_HOLD: &str = "UPDATE baseline_holds SET captured = $2, state = $3 WHERE id = $1";
const READ_ACCOUNT: &str =
    "SELECT id, available, held, captured, granted, created_at FROM baseline_accounts WHERE id = $1";
/// The straightforward sweeper: expire due holds (at most `$2`, oldest expiry first, skipping
/// holds a command has locked) and return what each still reserved.
const SWEEP_HOLDS: &str = "UPDATE baseline_holds SET state = 'expired' WHERE id IN ( \
     SELECT id FROM baseline_holds WHERE state = 'pending' AND expires_at <= $1 \
     ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
     RETURNING account_id, GREATEST(amount - captured, 0)";
const VERIFY_PAGE: &str = "SELECT a.id, a.available, a.held, a.captured, a.granted, \
     COALESCE(SUM(GREATEST(h.amount - h.captured, 0)) FILTER (WHERE h.state = 'pending'), 0)::BIGINT, \
     COUNT(h.id) \
     FROM baseline_accounts a LEFT JOIN baseline_holds h ON h.account_id = a.id \
     WHERE a.id > $1 GROUP BY a.id ORDER BY a.id LIMIT $2";

const LOCK_HOLD: &str = concat!("SELECT ", hold_columns!(), " FROM baseline_holds WHERE id = $1 FOR UPDATE");
const READ_HOLD: &str = concat!("SELECT ", hold_columns!(), " FROM baseline_holds WHERE id = $1");
/// An account's holds still pending in storage, expired or not (reads apply expiry afterwards).
const PENDING_HOLDS: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM baseline_holds WHERE account_id = $1 AND state = 'pending' ORDER BY created_at, id"
);
/// An account's active holds: pending and not yet at their expiry.
const ACTIVE_HOLDS: &str = concat!(
    "SELECT ",
    hold_columns!(),
    " FROM baseline_holds WHERE account_id = $1 AND state = 'pending' AND expires_at > $2 ORDER BY created_at, id"
);

/// The failure of one transaction attempt.
enum Failure {
    Retry { deadlock: bool, detail: String },
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Failure {
        let detail = describe(&error);
        match error.code() {
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE => Failure::Retry { deadlock: false, detail },
            Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED => Failure::Retry { deadlock: true, detail },
            _ => Failure::Store(StoreError::unavailable(detail).with_source(error)),
        }
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Failure {
        Failure::Store(
            StoreError::unavailable(format!("cannot get a PostgreSQL connection: {error}")).with_source(error),
        )
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({}): {}", error, db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// A driver error outside the retried write path (reads, verify).
fn store_error(error: impl Into<Failure>) -> StoreError {
    match error.into() {
        Failure::Store(error) => error,
        Failure::Retry { detail, .. } => StoreError::unavailable(detail),
    }
}

fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|error| StoreError::corrupt(format!("column {index}: {error}")).with_source(error))
}

fn hold_from(row: &Row) -> Result<Hold, StoreError> {
    HoldRow {
        hold_id: get(row, 0)?,
        account_id: get(row, 1)?,
        amount: get(row, 2)?,
        captured: get(row, 3)?,
        state: get(row, 4)?,
        expires_at: get(row, 5)?,
        created_at: get(row, 6)?,
        reference: get(row, 7)?,
        metadata: get(row, 8)?,
    }
    .into_hold()
}

/// The straightforward PostgreSQL ledger (see the module docs of this crate).
pub struct BaselinePostgresStore {
    pool: Pool,
    mode: PostgresBaselineMode,
    clock: Arc<dyn Clock>,
    counters: Counters,
}

impl BaselinePostgresStore {
    /// Opens a pool of at most `pool_max` connections on `url` and creates the `baseline_*`
    /// tables if they are absent. Fails with [`StoreError::Startup`] when the URL is invalid or
    /// the database cannot be reached.
    pub async fn connect(
        url: &str,
        mode: PostgresBaselineMode,
        pool_max: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let startup = |detail: String| StoreError::startup(detail);
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|error| startup(format!("invalid PostgreSQL URL: {error}")))?;
        config.connect_timeout(Duration::from_secs(CONNECT_SECONDS));
        config.application_name("creditgraph-baseline");
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_max.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(POOL_WAIT_SECONDS)))
            .create_timeout(Some(Duration::from_secs(CONNECT_SECONDS)))
            .build()
            .map_err(|error| startup(format!("cannot build the connection pool: {error}")))?;
        let client = pool.get().await.map_err(|error| startup(store_error(error).to_string()))?;
        client.batch_execute(SCHEMA).await.map_err(|error| startup(describe(&error)))?;
        drop(client);
        Ok(BaselinePostgresStore { pool, mode, clock, counters: Counters::default() })
    }

    pub fn stats(&self) -> BaselineStats {
        self.counters.stats()
    }

    /// Runs `attempt` until it succeeds or fails for good, retrying serialization failures and
    /// deadlocks at most [`RETRIES_MAX`] times with a short exponential backoff.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut retries = 0_u32;
        loop {
            let (deadlock, detail) = match attempt().await {
                Ok(value) => {
                    Counters::count(&self.counters.transactions);
                    return Ok(value);
                }
                Err(Failure::Store(error)) => return Err(error),
                Err(Failure::Retry { deadlock, detail }) => (deadlock, detail),
            };
            if deadlock {
                Counters::count(&self.counters.deadlocks);
            }
            if retries >= RETRIES_MAX {
                return Err(StoreError::contention(format!("{what} gave up after {retries} retries: {detail}")));
            }
            retries += 1;
            Counters::count(&self.counters.retries);
            tokio::time::sleep(Duration::from_millis(1 << retries.min(6))).await;
        }
    }

    async fn execute_once(&self, request: &Request) -> Result<Executed, Failure> {
        let mut client = self.pool.get().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let now = self.clock.now();
        if let Some(idempotency) = &request.idempotency {
            let claim = transaction.prepare_cached(CLAIM_KEY).await?;
            if transaction.execute(&claim, &[&idempotency.key, &idempotency.fingerprint]).await? == 0 {
                // The key is taken and committed: the INSERT waited for any transaction holding it.
                let read = transaction.prepare_cached(READ_KEY).await?;
                let row = transaction.query_one(&read, &[&idempotency.key]).await?;
                let fingerprint: String = get(&row, 0)?;
                let executed = if fingerprint != idempotency.fingerprint {
                    Executed::Conflict
                } else {
                    Executed::Replayed(codec::decode_result(&get::<String>(&row, 1)?)?)
                };
                transaction.commit().await?;
                return Ok(executed);
            }
        }
        let result = self.apply(&transaction, &request.command, now).await?;
        if let Some(idempotency) = &request.idempotency {
            let record = transaction.prepare_cached(RECORD_RESULT).await?;
            transaction.execute(&record, &[&idempotency.key, &codec::encode_result(&result)]).await?;
        }
        transaction.commit().await?;
        Ok(Executed::Fresh(result))
    }

    async fn apply(
        &self,
        transaction: &Transaction<'_>,
        command: &Command,
        now: Timestamp,
    ) -> Result<Result<Outcome, Rejection>, Failure> {
        match command {
            Command::Grant { account_id, amount, .. } => {
                let grant = transaction.prepare_cached(GRANT).await?;
                let balance_max = rules::micros(Amount::BALANCE_MAX);
                let params: [&(dyn ToSql + Sync); 4] =
                    [&account_id.as_str(), &rules::micros(*amount), &now.micros(), &balance_max];
                let row = transaction.query_opt(&grant, &params).await?;
                Ok(match row {
                    Some(_) => Ok(Outcome::Granted { grant: rules::new_grant(command, now), created: true }),
                    None => Err(Rejection::BalanceLimit),
                })
            }
            Command::Hold { account_id, amount, .. } => {
                if let Err(rejection) =
                    self.move_credits(transaction, account_id, Moves::hold(*amount), *amount).await?
                {
                    return Ok(Err(rejection));
                }
                let hold = rules::new_hold(command, now);
                let insert = transaction.prepare_cached(INSERT_HOLD).await?;
                let reference = hold.reference.as_ref().map(|reference| reference.as_str());
                transaction
                    .execute(
                        &insert,
                        &[
                            &hold.hold_id.as_str(),
                            &hold.account_id.as_str(),
                            &rules::micros(hold.amount),
                            &hold.expires_at.micros(),
                            &hold.created_at.micros(),
                            &reference,
                            &hold.metadata,
                        ],
                    )
                    .await?;
                Ok(Ok(Outcome::Held { hold }))
            }
            Command::Capture { hold_id, amount, is_final, overage } => {
                let Some(hold) = self.lock_hold(transaction, hold_id).await? else {
                    return Ok(Err(Rejection::HoldNotFound));
                };
                let plan = match rules::plan_capture(&hold, *amount, *is_final, *overage, now) {
                    Ok(plan) => plan,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                if let Err(rejection) =
                    self.move_credits(transaction, &hold.account_id, plan.moves, plan.excess).await?
                {
                    return Ok(Err(rejection));
                }
                self.update_hold(transaction, &plan.hold).await?;
                Ok(Ok(Outcome::Captured { hold: plan.hold }))
            }
            Command::Release { hold_id } => {
                let Some(hold) = self.lock_hold(transaction, hold_id).await? else {
                    return Ok(Err(Rejection::HoldNotFound));
                };
                match rules::plan_release(&hold, now) {
                    ReleasePlan::Release { moves, hold } => {
                        self.give_back(transaction, &hold.account_id, moves).await?;
                        self.update_hold(transaction, &hold).await?;
                        Ok(Ok(Outcome::Released { hold, changed: true }))
                    }
                    ReleasePlan::Expire { moves } => {
                        self.give_back(transaction, &hold.account_id, moves).await?;
                        let mut expired = hold;
                        expired.state = ledger::HoldState::Expired;
                        self.update_hold(transaction, &expired).await?;
                        Ok(Err(Rejection::HoldNotPending { state: ledger::HoldState::Expired }))
                    }
                    ReleasePlan::Unchanged(hold) => Ok(Ok(Outcome::Released { hold, changed: false })),
                    ReleasePlan::Refuse(rejection) => Ok(Err(rejection)),
                }
            }
            Command::Debit { account_id, amount, .. } => Ok(self
                .move_credits(transaction, account_id, Moves::debit(*amount), *amount)
                .await?
                .map(|balances| Outcome::Debited { account_id: account_id.clone(), amount: *amount, balances })),
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

    /// Applies `moves` to the account, taking `required` from `available`: checked under
    /// `FOR UPDATE` in [`PostgresBaselineMode::ForUpdate`], by the guarded UPDATE alone in
    /// [`PostgresBaselineMode::ConditionalUpdate`].
    async fn move_credits(
        &self,
        transaction: &Transaction<'_>,
        account_id: &AccountId,
        moves: Moves,
        required: Amount,
    ) -> Result<Result<Balances, Rejection>, Failure> {
        let id = account_id.as_str();
        if self.mode == PostgresBaselineMode::ForUpdate {
            let lock = transaction.prepare_cached(LOCK_ACCOUNT).await?;
            let Some(row) = transaction.query_opt(&lock, &[&id]).await? else {
                return Ok(Err(Rejection::AccountNotFound));
            };
            let available = rules::to_amount(get(&row, 0)?, "available")?;
            if available < required {
                return Ok(Err(Rejection::InsufficientCredits { required, available }));
            }
        }
        let update = transaction.prepare_cached(MOVE).await?;
        let row = transaction.query_opt(&update, &[&id, &moves.available, &moves.held, &moves.captured]).await?;
        if let Some(row) = row {
            return Ok(Ok(rules::balances(get(&row, 0)?, get(&row, 1)?)?));
        }
        // Only the conditional mode gets here: tell a missing account from missing credits.
        let read = transaction.prepare_cached(READ_AVAILABLE).await?;
        Ok(Err(match transaction.query_opt(&read, &[&id]).await? {
            None => Rejection::AccountNotFound,
            Some(row) => {
                Rejection::InsufficientCredits { required, available: rules::to_amount(get(&row, 0)?, "available")? }
            }
        }))
    }

    /// Returns credits from `held` to `available`, which cannot be refused.
    async fn give_back(
        &self,
        transaction: &Transaction<'_>,
        account_id: &AccountId,
        moves: Moves,
    ) -> Result<(), Failure> {
        match self.move_credits(transaction, account_id, moves, Amount::ZERO).await? {
            Ok(_) => Ok(()),
            Err(rejection) => {
                Err(StoreError::corrupt(format!("a hold's account refused its credits back: {rejection}")).into())
            }
        }
    }

    async fn lock_hold(&self, transaction: &Transaction<'_>, hold_id: &HoldId) -> Result<Option<Hold>, Failure> {
        let lock = transaction.prepare_cached(LOCK_HOLD).await?;
        let row = transaction.query_opt(&lock, &[&hold_id.as_str()]).await?;
        Ok(row.as_ref().map(hold_from).transpose()?)
    }

    async fn update_hold(&self, transaction: &Transaction<'_>, hold: &Hold) -> Result<(), Failure> {
        let update = transaction.prepare_cached(UPDATE_HOLD).await?;
        transaction
            .execute(&update, &[&hold.hold_id.as_str(), &rules::micros(hold.captured), &hold.state.as_str()])
            .await?;
        Ok(())
    }

    async fn sweep_once(&self, holds_max: u32) -> Result<SweepReport, Failure> {
        let mut client = self.pool.get().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let sweep = transaction.prepare_cached(SWEEP_HOLDS).await?;
        let rows = transaction.query(&sweep, &[&self.clock.now().micros(), &i64::from(holds_max)]).await?;
        let mut returned: BTreeMap<String, i64> = BTreeMap::new();
        for row in &rows {
            *returned.entry(get(row, 0)?).or_default() += get::<i64>(row, 1)?;
        }
        // Accounts in id order, so two sweeps lock them in the same order.
        let update = transaction.prepare_cached(MOVE).await?;
        for (account_id, micros) in &returned {
            let moved = transaction.execute(&update, &[account_id, micros, &-micros, &0_i64]).await?;
            if moved != 1 {
                return Err(StoreError::corrupt(format!("account {account_id} of expired holds is missing")).into());
            }
        }
        transaction.commit().await?;
        Ok(SweepReport { accounts: returned.len() as u64, entries: rows.len() as u64, idempotency_keys_deleted: 0 })
    }
}

#[async_trait]
impl LedgerStore for BaselinePostgresStore {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        if let Some(error) = rules::unsupported(&request.command) {
            return Err(error);
        }
        self.retrying(request.command.name(), || self.execute_once(&request)).await
    }

    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        let mut client = self.pool.get().await.map_err(store_error)?;
        // One snapshot for the account row and its holds.
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(store_error)?;
        let read = transaction.prepare_cached(READ_ACCOUNT).await.map_err(store_error)?;
        let Some(row) = transaction.query_opt(&read, &[&account_id.as_str()]).await.map_err(store_error)? else {
            return Ok(None);
        };
        let account = AccountRow {
            account_id: account_id.clone(),
            available: get(&row, 1)?,
            held: get(&row, 2)?,
            captured: get(&row, 3)?,
            granted: get(&row, 4)?,
            created_at: get(&row, 5)?,
        };
        let holds = transaction.prepare_cached(PENDING_HOLDS).await.map_err(store_error)?;
        let rows = transaction.query(&holds, &[&account_id.as_str()]).await.map_err(store_error)?;
        let pending = rows.iter().map(hold_from).collect::<Result<Vec<_>, _>>()?;
        transaction.commit().await.map_err(store_error)?;
        Ok(Some(rules::account_view(account, pending, self.clock.now())?))
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        let client = self.pool.get().await.map_err(store_error)?;
        let read = client.prepare_cached(READ_HOLD).await.map_err(store_error)?;
        let row = client.query_opt(&read, &[&hold_id.as_str()]).await.map_err(store_error)?;
        let now = self.clock.now();
        row.as_ref().map(|row| hold_from(row).map(|hold| ledger::view_hold(&hold, now))).transpose()
    }

    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        let client = self.pool.get().await.map_err(store_error)?;
        let read = client.prepare_cached(ACTIVE_HOLDS).await.map_err(store_error)?;
        let rows =
            client.query(&read, &[&account_id.as_str(), &self.clock.now().micros()]).await.map_err(store_error)?;
        rows.iter().map(hold_from).collect()
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
        self.retrying("sweep", || self.sweep_once(accounts_max)).await
    }

    /// Checks every account's columns against each other and against its pending holds (see the
    /// crate docs); `entries` is 0 as there is no journal.
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut client = self.pool.get().await.map_err(store_error)?;
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(store_error)?;
        let page = transaction.prepare_cached(VERIFY_PAGE).await.map_err(store_error)?;
        let mut report = VerifyReport::default();
        let mut after = String::new();
        loop {
            let rows = transaction.query(&page, &[&after, &VERIFY_PAGE_MAX]).await.map_err(store_error)?;
            for row in &rows {
                let verify_row = VerifyRow {
                    account_id: get(row, 0)?,
                    available: get(row, 1)?,
                    held: get(row, 2)?,
                    captured: get(row, 3)?,
                    granted: get(row, 4)?,
                    pending_remaining: get(row, 5)?,
                };
                report.accounts += 1;
                report.holds += u64::try_from(get::<i64>(row, 6)?).unwrap_or(0);
                report.violations.extend(rules::verify_row(&verify_row)?);
                after = verify_row.account_id;
            }
            if (rows.len() as i64) < VERIFY_PAGE_MAX {
                break;
            }
        }
        transaction.commit().await.map_err(store_error)?;
        Ok(report)
    }

    fn backend(&self) -> &'static str {
        match self.mode {
            PostgresBaselineMode::ForUpdate => "baseline-postgres-for-update",
            PostgresBaselineMode::ConditionalUpdate => "baseline-postgres-conditional-update",
        }
    }
}
