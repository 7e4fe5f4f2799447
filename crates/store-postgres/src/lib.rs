//! The ledger store on PostgreSQL: a connection pool, one READ COMMITTED transaction per batch
//! of concurrent commands (of any accounts), the account row lock as the unit of serialisation,
//! bounded retries.
//!
//! Why this shape: the system this replaces opened a connection per operation (about 2–2.6 ms
//! each) and kept its invariants only by luck under concurrency. Here a pool (deadpool) keeps
//! connections open with their prepared statements, and every change of an account happens
//! under `SELECT … FOR UPDATE` of its row, so any number of server processes sharing the
//! database apply one account's commands one at a time, in the same order as their journal
//! `seq`. Idempotency keys are recorded in the same transaction (see [`execute`]'s module
//! docs), so the same key sent twice at once applies once.
//!
//! A transaction's fixed cost (round trips, a WAL flush at commit) dominates one command's work,
//! so this process applies the commands that arrive together in one transaction, whatever their
//! accounts (group commit, see [`batch`]): keys read, accounts locked in ascending order and
//! loaded with one statement per table, one write statement and one commit (two round trips:
//! the `BEGIN` travels with the reads, the `COMMIT` with the write) for up to
//! [`PostgresOptions::batch_commands_max`] commands, each decided on the state the one before it
//! (of its account) left, each answered as if it had run alone. Up to
//! [`PostgresOptions::batches_in_flight_max`] such batches run at once, one connection each.
//!
//! Serialization failures and deadlocks (and the unique violation of two transactions creating
//! one account) retry the whole transaction (a whole batch) with jittered exponential backoff, at most
//! [`PostgresOptions::retries_max`] times, then [`StoreError::Contention`]. A lost connection is
//! [`StoreError::Unavailable`] and never retried: a COMMIT whose answer was lost may have applied.
//! The caller answers 503 and the client retries with its Idempotency-Key, which replays the
//! first result if it did apply.
//!
//! Failover: the URL may name a primary and its standbys; every new connection goes to the host
//! that takes writes, each host's attempt is bounded, and connections to a server that went away
//! or stopped taking writes are dropped rather than handed out again (see [`connection`]).
//!
//! An account read is one statement (the row, its live grants and due holds aggregated by
//! subqueries), so it reads one snapshot and takes no locks; the reads that arrive while others
//! run share a statement (`account_id = ANY($1)`, see `ReadRunner`), as commands share a
//! transaction. Multi-statement reads (`verify`, the lists) run in REPEATABLE READ, READ ONLY
//! transactions.
//!
//! The same store implements [`RunStore`] (threads, runs, artifacts; see [`runs`]): a new run
//! locks its thread's row as a command locks its account's, with the same bounded retries. And
//! it implements [`JobStore`] (video jobs; see [`jobs`]): a job write locks (or inserts) the job
//! row, then applies its ledger request through the ledger's own path, in one transaction with
//! the same bounded retries; claims take rows with `FOR UPDATE SKIP LOCKED`. Run signals come
//! from `LISTEN` on one dedicated connection ([`listen`]).

mod api_keys;
mod batch;
mod connection;
mod error;
mod execute;
mod jobs;
mod listen;
mod rows;
mod runs;
mod schema;
pub mod testing;
mod webhooks;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use ledger::{
    AccountId, AccountState, Amount, Command, Entry, Hold, HoldId, HoldState, Outcome, StoredAccount, Target, Timestamp,
};
use rand::Rng;
use store::codec::undecodable;
use store::keys::{self, KeyUse, KeyedRun, RecordedResponse};
use store::runs::RUN_EVENTS_PAGE_MAX;
use store::{
    AccountView, Artifact, ArtifactId, Clock, CreateRunRefusal, Executed, Idempotency, InstanceLease, JobId, JobRecord,
    JobStore, JobWrite, JobWriteRefusal, JobWritten, LedgerStore, Request, RunEndWritten, RunEventsWrite, RunId,
    RunRecord, RunSettle, RunSignal, RunState, RunStore, StoreError, StoredFrame, SweepReport, ThreadId, VerifyReport,
};
use tokio::sync::broadcast;
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

use crate::batch::{
    ApplyBatch, Batched, Batcher, BATCHES_IN_FLIGHT_MAX, BATCH_COMMANDS_MAX, READS_IN_FLIGHT_MAX, READ_ACCOUNTS_MAX,
};
use crate::connection::Connector;
use crate::error::{pool_error, store_error, Failure, RetryCause};
use crate::execute::Opening;
use crate::listen::{Listener, CANCEL_CHANNEL};
use crate::rows::{ACCOUNT_COLUMNS, ENTRY_COLUMNS, GRANT_COLUMNS, HOLD_COLUMNS};
use crate::runs::{ARTIFACT_COLUMNS, FRAME_COLUMNS, RUN_COLUMNS};

/// First retry delay; doubles per retry up to [`BACKOFF_MAX_MICROS`], then jittered.
const BACKOFF_BASE_MICROS: u64 = 1_000;
const BACKOFF_MAX_MICROS: u64 = 200_000;
/// Idempotency rows deleted per statement by the sweeper, and statements per sweep.
const IDEMPOTENCY_DELETE_BATCH_MAX: i64 = 10_000;
const IDEMPOTENCY_DELETE_BATCHES_MAX: u32 = 100;
/// Accounts read per page by `verify`.
const VERIFY_PAGE_MAX: i64 = 500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most connections this process keeps open.
    pub pool_max: usize,
    /// Most times one command's transaction is retried after a serialization failure or deadlock.
    pub retries_max: u32,
    /// Idempotency keys younger than this are kept (the contract asks for at least 24 h).
    pub idempotency_retention_seconds: u64,
    /// Bound on one connection attempt on one host, start-up and authentication included, when
    /// the URL sets no `connect_timeout` (libpq's meaning; see [`connection`]).
    pub connect_timeout_seconds: u64,
    /// Most concurrent commands (of any accounts) applied in one transaction (1: one
    /// transaction per command).
    pub batch_commands_max: usize,
    /// Most batches running at once, each on its own pooled connection (keep it below
    /// `pool_max`: reads, sweeps, runs and jobs use the rest).
    pub batches_in_flight_max: usize,
    /// Most concurrent account reads answered by one statement (1: one statement per read).
    pub read_accounts_max: usize,
    /// Most account-read statements running at once, each on its own pooled connection.
    pub reads_in_flight_max: usize,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            pool_max: 16,
            retries_max: 8,
            idempotency_retention_seconds: 86_400,
            connect_timeout_seconds: 5,
            batch_commands_max: BATCH_COMMANDS_MAX,
            batches_in_flight_max: BATCHES_IN_FLIGHT_MAX,
            read_accounts_max: READ_ACCOUNTS_MAX,
            reads_in_flight_max: READS_IN_FLIGHT_MAX,
        }
    }
}

/// Cumulative counters since the store was connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostgresStats {
    /// Write transactions committed (commands, sweeps, recorded rejections and created runs).
    pub transactions: u64,
    /// Transaction attempts rolled back and run again.
    pub retries: u64,
    /// Attempts that failed with a deadlock (40P01).
    pub deadlocks: u64,
    /// Attempts that failed with a serialization failure (40001).
    pub serialization_failures: u64,
    /// Batches of commands applied (committed, or rolled back with nothing to write);
    /// `batched_commands / batches` is the mean number of commands per transaction.
    pub batches: u64,
    /// Commands answered by those batches (replays of a recorded key included).
    pub batched_commands: u64,
    /// Account-read statements run; `reads / read_batches` is the mean number of account reads
    /// one statement answered.
    pub read_batches: u64,
    /// Account reads answered by those statements.
    pub reads: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    retries: AtomicU64,
    deadlocks: AtomicU64,
    serialization_failures: AtomicU64,
    batches: AtomicU64,
    batched_commands: AtomicU64,
    read_batches: AtomicU64,
    reads: AtomicU64,
}

/// What one batch answers each of its commands.
type Answer = Result<Executed, StoreError>;
/// What one read batch answers each of its reads: the account's stored state, if it exists.
type ReadAnswer = Result<Option<(AccountState, Timestamp)>, StoreError>;

pub struct PostgresStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    options: PostgresOptions,
    counters: Arc<Counters>,
    batcher: Batcher<AccountId, Request, Answer>,
    /// Account reads, batched like commands (see [`ReadRunner`]); keyed by a sequence number, as
    /// reads of one account may share a statement or run in two at once.
    reads: Batcher<u64, AccountId, ReadAnswer>,
    read_sequence: AtomicU64,
    /// Which account each recently seen hold belongs to (a hold's account never changes).
    hold_accounts: HoldAccounts,
    /// The run signals' `LISTEN` connection, opened on the first subscription.
    listener: Listener,
}

impl Batched for AccountId {
    fn conflict_key(&self) -> Option<&str> {
        None
    }
}

impl Batched for Request {
    fn conflict_key(&self) -> Option<&str> {
        self.idempotency.as_ref().map(|idempotency| idempotency.key.as_str())
    }
}

/// What a batch's leader task needs of the store: it outlives any one caller's future.
#[derive(Clone)]
struct BatchRunner {
    pool: Pool,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    retries_max: u32,
}

impl BatchRunner {
    /// Applies one batch, retrying the whole of it on contention; every request gets the
    /// batch's failure if it fails for good.
    async fn apply(&self, requests: Vec<(AccountId, Request)>) -> Vec<Answer> {
        let what = match requests.as_slice() {
            [(_, request)] => request.command.name().to_owned(),
            _ => format!("a batch of {} commands", requests.len()),
        };
        let attempt = || self.try_once(&requests);
        match retrying(&self.counters, self.retries_max, &what, attempt).await {
            Ok(executed) => executed.into_iter().map(Ok).collect(),
            Err(error) => requests.iter().map(|_| Err(error.clone())).collect(),
        }
    }

    async fn try_once(&self, requests: &[(AccountId, Request)]) -> Result<Vec<Executed>, Failure> {
        let open = OpenTransaction { client: Some(self.pool.get().await?) };
        let requests: Vec<(Option<&AccountId>, &Request)> =
            requests.iter().map(|(account_id, request)| (Some(account_id), request)).collect();
        let applied = execute::apply_batch(open.client(), Opening::Begin, &requests, self.clock.now()).await;
        let mut batch = match applied {
            Ok(batch) => batch,
            Err(failure) => {
                // The transaction may be open (aborted, or never sent its writes); a connection
                // whose ROLLBACK fails is closed instead of pooled.
                let _ = open.end("ROLLBACK").await;
                return Err(failure);
            }
        };
        if let Some(commit) = batch.committed {
            open.ended();
            store::observe::commit_time("postgres", commit);
            store::observe::batch_size("postgres", requests.len());
            batch.credits.committed();
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        } else {
            open.end("ROLLBACK").await?;
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.batched_commands.fetch_add(requests.len() as u64, Ordering::Relaxed);
        Ok(batch.executed)
    }
}

/// A pooled connection inside a transaction a batch opened itself (its `BEGIN` travels with its
/// reads, see [`execute::Opening::Begin`], so no `Transaction` guard of the driver is at hand). It
/// goes back to the pool only once the transaction has ended; dropped before (an error midway, a
/// cancelled task), the connection is taken out of the pool and closed, which ends the
/// transaction on the server, so no pooled connection is ever left inside one.
struct OpenTransaction {
    client: Option<Object>,
}

impl OpenTransaction {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("a transaction not yet ended has its connection")
    }

    /// The batch ended the transaction (its COMMIT went with its writes): the connection
    /// returns to the pool.
    fn ended(mut self) {
        drop(self.client.take());
    }

    /// Ends the transaction with `statement` (`COMMIT` or `ROLLBACK`); the connection returns
    /// to the pool only when that succeeds.
    async fn end(mut self, statement: &str) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute(statement).await?;
        drop(self.client.take());
        Ok(())
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Out of the pool, then dropped: the connection closes.
            drop(Object::take(client));
        }
    }
}

/// Runs `attempt` until it succeeds or fails for good, retrying contention (serialization
/// failures, deadlocks, unique-violation races) at most `retries_max` times with jittered
/// exponential backoff, counting each retry.
async fn retrying<T, F, Fut>(counters: &Counters, retries_max: u32, what: &str, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut retries = 0_u32;
    loop {
        let (cause, detail, source) = match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Store(error)) => return Err(error),
            Err(Failure::Retry { cause, detail, source }) => (cause, detail, source),
        };
        match cause {
            RetryCause::Deadlock => counters.deadlocks.fetch_add(1, Ordering::Relaxed),
            RetryCause::Serialization => counters.serialization_failures.fetch_add(1, Ordering::Relaxed),
            RetryCause::Race => 0,
        };
        if retries >= retries_max {
            let error = StoreError::contention(format!("{what} gave up after {retries} retries: {detail}"));
            return Err(match source {
                Some(source) => error.with_source(source),
                None => error,
            });
        }
        retries += 1;
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(what, retries, %detail, "retrying a PostgreSQL transaction");
        tokio::time::sleep(backoff(retries)).await;
    }
}

impl PostgresStore {
    /// Opens a pool on `url` (`postgres://…` or `postgresql://…`; several hosts for a primary
    /// and its standbys, see [`connection`]) and applies the embedded migrations. Fails with
    /// [`StoreError::Startup`] when the URL is invalid, no host takes a read-write connection,
    /// or the schema is newer than this build.
    pub async fn connect(
        url: &str,
        clock: Arc<dyn Clock>,
        options: PostgresOptions,
    ) -> Result<PostgresStore, StoreError> {
        let connector = Connector::parse(url, options.connect_timeout_seconds)?;
        // The listener connects like the pool (same hosts, read-write only), bounded by the same
        // time as one pooled connection.
        let listener = Listener::new(connector.config().clone(), connector.create_timeout());
        let pool = connector.pool(options.pool_max)?;
        {
            let mut client = pool.get().await.map_err(|error| {
                let unavailable = pool_error(error);
                StoreError::startup(unavailable.to_string()).with_source(unavailable)
            })?;
            let applied = schema::migrate(&mut client).await?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, "applied PostgreSQL migrations");
            }
        }
        let counters = Arc::new(Counters::default());
        let runner = BatchRunner {
            pool: pool.clone(),
            clock: clock.clone(),
            counters: counters.clone(),
            retries_max: options.retries_max,
        };
        let apply: ApplyBatch<AccountId, Request, Answer> = Arc::new(move |requests| {
            let runner = runner.clone();
            Box::pin(async move { runner.apply(requests).await }) as Pin<Box<_>>
        });
        let batcher = Batcher::new(options.batch_commands_max, options.batches_in_flight_max, apply);
        let reader = ReadRunner { pool: pool.clone(), clock: clock.clone(), counters: counters.clone() };
        let read: ApplyBatch<u64, AccountId, ReadAnswer> = Arc::new(move |requests| {
            let reader = reader.clone();
            Box::pin(async move { reader.read(requests).await }) as Pin<Box<_>>
        });
        let reads = Batcher::new(options.read_accounts_max, options.reads_in_flight_max, read);
        let hold_accounts = HoldAccounts::default();
        Ok(PostgresStore {
            pool,
            clock,
            options,
            counters,
            batcher,
            reads,
            read_sequence: AtomicU64::new(0),
            hold_accounts,
            listener,
        })
    }

    /// Applies the embedded migrations on one short-lived connection (to the primary, when the
    /// URL names several hosts) and returns.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let connector = Connector::parse(url, PostgresOptions::default().connect_timeout_seconds)?;
        let connected = tokio::time::timeout(connector.create_timeout(), connector.connect()).await;
        let (mut client, driver) = match connected {
            Ok(Ok(connected)) => connected,
            Ok(Err(error)) => {
                return Err(StoreError::startup(format!("cannot connect to PostgreSQL: {}", error::describe(&error)))
                    .with_source(error))
            }
            Err(_) => {
                return Err(StoreError::startup(format!(
                    "cannot connect to PostgreSQL: no host answered within {} s",
                    connector.create_timeout().as_secs()
                )))
            }
        };
        let result = schema::migrate(&mut client).await;
        drop(client);
        // The connection task ends once the client is gone; its error, if any, was logged.
        let _ = driver.await;
        result.map(|_| ())
    }

    pub fn stats(&self) -> PostgresStats {
        PostgresStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            deadlocks: self.counters.deadlocks.load(Ordering::Relaxed),
            serialization_failures: self.counters.serialization_failures.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            batched_commands: self.counters.batched_commands.load(Ordering::Relaxed),
            read_batches: self.counters.read_batches.load(Ordering::Relaxed),
            reads: self.counters.reads.load(Ordering::Relaxed),
        }
    }

    /// Closes the pool: idle connections are dropped at once, busy ones when returned, and every
    /// later operation fails with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.listener.stop();
        self.pool.close();
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// The account a command will lock, as far as can be told before its transaction. A hold's
    /// account never changes, so looking it up outside the transaction (or remembering it) is
    /// safe; an unknown hold gives `None` (the command then runs alone, and its transaction
    /// decides).
    async fn queue_key(&self, command: &Command) -> Result<Option<AccountId>, StoreError> {
        match command.target() {
            Target::Account(account_id) => Ok(Some(account_id.clone())),
            Target::Hold(hold_id) => {
                if let Some(account_id) = self.hold_accounts.get(hold_id) {
                    return Ok(Some(account_id));
                }
                let client = self.client().await?;
                let statement = client.prepare_cached(execute::HOLD_ACCOUNT).await.map_err(store_error)?;
                let row = client.query_opt(&statement, &[&hold_id.as_str()]).await.map_err(store_error)?;
                let Some(row) = row else { return Ok(None) };
                let text: &str = row.try_get(0).map_err(|_| undecodable("hold account_id"))?;
                let account_id = AccountId::parse(text).map_err(|_| undecodable("hold account_id"))?;
                self.hold_accounts.insert(hold_id, &account_id);
                Ok(Some(account_id))
            }
        }
    }

    /// Applies `request`: in its account's next batch (see [`batch`]), or alone, in its own
    /// transaction, when its account is unknown before it (a hold that cannot be found).
    async fn run(&self, request: Request) -> Result<Executed, StoreError> {
        let Some(account_id) = self.queue_key(&request.command).await? else {
            return self.retrying(request.command.name(), || self.try_once(&request)).await;
        };
        let new_hold = match &request.command {
            Command::Hold { hold_id, .. } => Some(hold_id.clone()),
            _ => None,
        };
        let executed = self.batcher.submit(account_id.clone(), request).await.unwrap_or_else(|| {
            Err(StoreError::corrupt(
                "the batch applying this command ended without an answer (a broken invariant; see the log)".to_owned(),
            ))
        });
        if let (Some(hold_id), Ok(Executed::Fresh(Ok(_)) | Executed::Replayed(Ok(_)))) = (&new_hold, &executed) {
            self.hold_accounts.insert(hold_id, &account_id);
        }
        executed
    }

    async fn try_once(&self, request: &Request) -> Result<Executed, Failure> {
        let mut client = self.client().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let mut application = execute::apply(&transaction, request, self.clock.now()).await?;
        if application.wrote {
            let started = std::time::Instant::now();
            transaction.commit().await?;
            store::observe::commit_time("postgres", started.elapsed());
            store::observe::batch_size("postgres", 1);
            application.credits.committed();
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        } else {
            transaction.rollback().await?;
        }
        Ok(application.executed)
    }

    /// Runs `attempt` until it succeeds or fails for good, retrying contention (serialization
    /// failures, deadlocks, unique-violation races) at most `retries_max` times with the same
    /// counters and backoff as the ledger's commands.
    async fn retrying<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        retrying(&self.counters, self.options.retries_max, what, attempt).await
    }

    async fn try_create_run(
        &self,
        run: &RunRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Result<RunRecord, CreateRunRefusal>, Failure> {
        let mut client = self.client().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let created = runs::create_attempt(transaction, run, idempotency, self.clock.now()).await?;
        if created.committed {
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(created.result)
    }

    async fn try_write_run_events(&self, write: &RunEventsWrite) -> Result<bool, Failure> {
        let mut client = self.client().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let written = runs::write_events_attempt(transaction, write).await?;
        if written {
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written)
    }

    /// One attempt at recording a response: the key is claimed, or read as it is.
    async fn try_record_response(&self, key: &str, response: &RecordedResponse) -> Result<KeyUse, Failure> {
        let client = self.client().await?;
        let claim = client.prepare_cached(runs::CLAIM_KEY).await?;
        let (fingerprint, result) = keys::response_record(response);
        if client.execute(&claim, &[&key, &fingerprint, &result, &self.clock.now().micros()]).await? == 1 {
            return Ok(KeyUse::Response(response.clone()));
        }
        match self.key_record(key).await? {
            Some((fingerprint, result)) => Ok(keys::key_use(&fingerprint, &result)?),
            // Forgotten by the sweep between the claim and the read: claim again.
            None => Err(Failure::retry(RetryCause::Race, "an idempotency key vanished while claimed")),
        }
    }

    /// The `(fingerprint, result)` recorded for a key.
    async fn key_record(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(runs::READ_KEY).await.map_err(store_error)?;
        let Some(row) = client.query_opt(&statement, &[&key]).await.map_err(store_error)? else { return Ok(None) };
        let fingerprint = row.try_get(0).map_err(|_| undecodable("idempotency fingerprint"))?;
        let result = row.try_get(1).map_err(|_| undecodable("idempotency result"))?;
        Ok(Some((fingerprint, result)))
    }

    async fn try_write_job(&self, write: &JobWrite) -> Result<Result<JobWritten, JobWriteRefusal>, Failure> {
        let mut client = self.client().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let written = jobs::write_attempt(transaction, write, self.clock.now()).await?;
        if written.committed {
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written.result)
    }

    async fn try_claim_job(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    ) -> Result<Option<JobRecord>, Failure> {
        let mut client = self.client().await?;
        let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
        let claimed = jobs::claim_attempt(transaction, worker_id, now, lease_until, attempts_max).await?;
        if claimed.is_some() {
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(claimed)
    }

    async fn query_jobs(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<JobRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(store_error)?;
        let rows = client.query(&statement, params).await.map_err(store_error)?;
        rows.iter().map(jobs::job).collect()
    }

    /// Accounts with an expiry due at `now` (a pending hold or a live grant's free part) or an
    /// allowance period to grant.
    async fn due_accounts(&self, now: Timestamp, accounts_max: u32) -> Result<Vec<AccountId>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT account_id FROM holds WHERE state = 'pending' AND expires_at <= $1 \
                 UNION \
                 SELECT account_id FROM grants WHERE live AND free > 0 AND expires_at <= $1 \
                 UNION \
                 SELECT account_id FROM allowances WHERE next_due_at <= $1 \
                 ORDER BY account_id LIMIT $2",
            )
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&now.micros(), &i64::from(accounts_max)]).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let text: &str = row.try_get(0).map_err(|_| undecodable("account_id"))?;
                AccountId::parse(text).map_err(|_| undecodable("account_id"))
            })
            .collect()
    }

    async fn forget_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        let retention_micros =
            i64::try_from(self.options.idempotency_retention_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let cutoff = now.micros().saturating_sub(retention_micros);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM idempotency WHERE key IN \
                 (SELECT key FROM idempotency WHERE created_at <= $1 LIMIT $2)",
            )
            .await
            .map_err(store_error)?;
        // Events past their retention go the same way, in bounded batches.
        let events_cutoff = now.micros().saturating_sub(
            i64::try_from(store::events::EVENTS_RETENTION_SECONDS).unwrap_or(i64::MAX).saturating_mul(1_000_000),
        );
        let forget_events = client
            .prepare_cached(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT $2) AND created_at <= $1",
            )
            .await
            .map_err(store_error)?;
        for _ in 0..IDEMPOTENCY_DELETE_BATCHES_MAX {
            let batch = client
                .execute(&forget_events, &[&events_cutoff, &IDEMPOTENCY_DELETE_BATCH_MAX])
                .await
                .map_err(store_error)?;
            if batch < IDEMPOTENCY_DELETE_BATCH_MAX.unsigned_abs() {
                break;
            }
        }
        // Deliveries go with their events (a claim joins the outbox: one without its event is
        // never sent).
        let forget_deliveries = client
            .prepare_cached(
                "DELETE FROM webhook_deliveries WHERE (endpoint_id, event_seq) IN \
                 (SELECT endpoint_id, event_seq FROM webhook_deliveries WHERE created_at <= $1 LIMIT $2)",
            )
            .await
            .map_err(store_error)?;
        for _ in 0..IDEMPOTENCY_DELETE_BATCHES_MAX {
            let batch = client
                .execute(&forget_deliveries, &[&events_cutoff, &IDEMPOTENCY_DELETE_BATCH_MAX])
                .await
                .map_err(store_error)?;
            if batch < IDEMPOTENCY_DELETE_BATCH_MAX.unsigned_abs() {
                break;
            }
        }
        let mut deleted = 0_u64;
        for _ in 0..IDEMPOTENCY_DELETE_BATCHES_MAX {
            let batch =
                client.execute(&statement, &[&cutoff, &IDEMPOTENCY_DELETE_BATCH_MAX]).await.map_err(store_error)?;
            deleted += batch;
            if batch < IDEMPOTENCY_DELETE_BATCH_MAX.unsigned_abs() {
                break;
            }
        }
        Ok(deleted)
    }

    /// Verifies one account in one snapshot. Returns (entries, holds, violations).
    async fn verify_one(
        &self,
        client: &mut Object,
        account_id: &str,
    ) -> Result<(u64, u64, Vec<ledger::Violation>), StoreError> {
        let transaction = read_transaction(client).await?;
        let account_sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1");
        let free_sql = "SELECT COALESCE(SUM(free), 0)::BIGINT FROM grants WHERE account_id = $1";
        let pinned_sql = "SELECT grant_id, pinned FROM grants WHERE account_id = $1 AND pinned > 0";
        let holds_sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = $1 ORDER BY created_at, hold_id");
        let entries_sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE account_id = $1 ORDER BY seq");
        let account_statement = transaction.prepare_cached(&account_sql).await.map_err(store_error)?;
        let free_statement = transaction.prepare_cached(free_sql).await.map_err(store_error)?;
        let pinned_statement = transaction.prepare_cached(pinned_sql).await.map_err(store_error)?;
        let holds_statement = transaction.prepare_cached(&holds_sql).await.map_err(store_error)?;
        let entries_statement = transaction.prepare_cached(&entries_sql).await.map_err(store_error)?;
        let by_account: [&(dyn ToSql + Sync); 1] = [&account_id];
        let (account_row, free_row, pinned_rows, hold_rows, entry_rows) = tokio::try_join!(
            transaction.query_opt(&account_statement, &by_account),
            transaction.query_one(&free_statement, &by_account),
            transaction.query(&pinned_statement, &by_account),
            transaction.query(&holds_statement, &by_account),
            transaction.query(&entries_statement, &by_account),
        )
        .map_err(store_error)?;
        transaction.commit().await.map_err(store_error)?;
        let Some(account_row) = account_row else { return Ok((0, 0, Vec::new())) };
        let AccountState { account_id, totals, held, .. } = rows::account(&account_row)?;
        let free: i64 = free_row.try_get(0).map_err(|_| undecodable("free sum"))?;
        let stored = StoredAccount {
            account_id,
            totals,
            free: Amount::from_micros(u64::try_from(free).map_err(|_| undecodable("free sum"))?),
            held,
            pinned: pinned_rows.iter().map(rows::pinned).collect::<Result<_, _>>()?,
            holds: hold_rows.iter().map(rows::hold).collect::<Result<_, _>>()?,
        };
        let entries: Vec<Entry> = entry_rows.iter().map(rows::entry).collect::<Result<_, _>>()?;
        let violations = ledger::verify_account(&entries, &stored);
        Ok((entries.len() as u64, stored.holds.len() as u64, violations))
    }
}

/// The accounts named by journal entries, holds or grants that have no account row: each
/// such account is a violation. No foreign key checks this on write (see migration 13): every
/// such row is written in the transaction that locked or inserted its account's row, and account
/// rows are never deleted, so this finds none unless something else wrote to these tables.
async fn orphans(client: &Object) -> Result<Vec<ledger::Violation>, StoreError> {
    let rows = client.query(ORPHANS, &[]).await.map_err(store_error)?;
    rows.iter()
        .map(|row| {
            let (account_id, table, count): (&str, &str, i64) = (
                row.try_get(0).map_err(|_| undecodable("orphan account_id"))?,
                row.try_get(1).map_err(|_| undecodable("orphan table"))?,
                row.try_get(2).map_err(|_| undecodable("orphan count"))?,
            );
            Ok(ledger::Violation {
                account_id: AccountId::parse(account_id).map_err(|_| undecodable("orphan account_id"))?,
                detail: format!("{count} {table} row(s) name this account, which has no account row"),
            })
        })
        .collect()
}

/// Rows of `entries`, `holds` and `grants` whose account has no row, counted per account and
/// table (an anti-join per table: one pass over each, as `verify` already reads them all).
const ORPHANS: &str = "SELECT account_id, 'entries', count(*) FROM entries \
     WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE accounts.account_id = entries.account_id) GROUP BY account_id \
     UNION ALL SELECT account_id, 'holds', count(*) FROM holds \
     WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE accounts.account_id = holds.account_id) GROUP BY account_id \
     UNION ALL SELECT account_id, 'grants', count(*) FROM grants \
     WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE accounts.account_id = grants.account_id) GROUP BY account_id \
     ORDER BY 1, 2";

/// Most holds whose account [`HoldAccounts`] remembers.
const HOLD_ACCOUNTS_MAX: usize = 65_536;

/// Which account recently created or looked-up holds belong to, so that a capture or release
/// of a hold this process knows is queued without a round trip. A hold's account never changes,
/// so an entry is never stale; at [`HOLD_ACCOUNTS_MAX`] entries the map starts over (a miss costs
/// one indexed lookup).
#[derive(Default)]
struct HoldAccounts {
    accounts: std::sync::Mutex<std::collections::HashMap<HoldId, AccountId>>,
}

impl HoldAccounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<HoldId, AccountId>> {
        // No code under the lock can panic midway: the map is always consistent.
        self.accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, hold_id: &HoldId) -> Option<AccountId> {
        self.lock().get(hold_id).cloned()
    }

    fn insert(&self, hold_id: &HoldId, account_id: &AccountId) {
        let mut accounts = self.lock();
        if accounts.len() >= HOLD_ACCOUNTS_MAX {
            accounts.clear();
        }
        accounts.insert(hold_id.clone(), account_id.clone());
    }
}

/// Account reads, batched: the reads queued while others run are answered together by one
/// statement (`account_id = ANY($1)`), as commands are by one transaction (see [`batch`]).
///
/// Why: a read's own work is a few index lookups; what it costs is the statement around them
/// (a round trip, the server's parse, bind and executor start-up, the wake-ups of the reply), so
/// under load one statement for many reads costs little more than one for one. With a free place
/// among `reads_in_flight_max` a read runs at once, alone, as before.
///
/// Freshness: a read is queued before the statement that answers it starts, and a statement
/// reads the snapshot of its start (READ COMMITTED), so it sees every write committed before the
/// read was asked, as a statement of its own would.
#[derive(Clone)]
struct ReadRunner {
    pool: Pool,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
}

impl ReadRunner {
    /// Answers each `(sequence, account)` read in order; a failure is every read's.
    async fn read(&self, requests: Vec<(u64, AccountId)>) -> Vec<ReadAnswer> {
        let now = self.clock.now();
        let accounts: Vec<&str> = requests.iter().map(|(_, account_id)| account_id.as_str()).collect();
        let states = self.states(&accounts, now).await;
        self.counters.read_batches.fetch_add(1, Ordering::Relaxed);
        self.counters.reads.fetch_add(requests.len() as u64, Ordering::Relaxed);
        match states {
            Ok(states) => requests
                .iter()
                .map(|(_, account_id)| {
                    // An account read twice in one batch is answered twice from one row.
                    Ok(states.get(account_id.as_str()).cloned().map(|state| (state, now)))
                })
                .collect(),
            Err(error) => requests.iter().map(|_| Err(error.clone())).collect(),
        }
    }

    /// Loads the stored state of each of `accounts` that exists (row, live grants, the pending
    /// holds due at `now`, never all of them) with one statement ([`ACCOUNT_READS`]). One
    /// statement reads one snapshot (READ COMMITTED takes it per statement), so the parts agree
    /// without a transaction.
    async fn states(&self, accounts: &[&str], now: Timestamp) -> Result<HashMap<String, AccountState>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(&ACCOUNT_READS).await.map_err(store_error)?;
        let now_micros = now.micros();
        let params: [&(dyn ToSql + Sync); 2] = [&accounts, &now_micros];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        let mut states = HashMap::with_capacity(rows.len());
        for row in &rows {
            let mut state = rows::account(row)?;
            state.allowances = rows::allowances_column(row)?;
            state.grants = json_array(row, 7, "grants", rows::grant_from_json)?;
            state.holds = json_array(row, 8, "due holds", rows::hold_from_json)?;
            states.insert(state.account_id.as_str().to_owned(), state);
        }
        Ok(states)
    }
}

/// The account read of [`ReadRunner`]: the rows of the accounts in `$1`, each with its
/// allowances (`execute::ALLOWANCES_COLUMN`), then its live grants and its pending holds due at
/// `$2` as JSON arrays (columns 7 and 8). Built once: the statement cache looks it up by its text.
static ACCOUNT_READS: LazyLock<String> = LazyLock::new(|| {
    use crate::rows::{ACCOUNT_SNAPSHOT_GRANT, ACCOUNT_SNAPSHOT_HOLD};
    format!(
        "SELECT {ACCOUNT_COLUMNS}, {allowances}, \
           (SELECT COALESCE(json_agg({ACCOUNT_SNAPSHOT_GRANT} ORDER BY created_at, grant_id), '[]')::TEXT \
              FROM grants WHERE grants.account_id = accounts.account_id AND live), \
           (SELECT COALESCE(json_agg({ACCOUNT_SNAPSHOT_HOLD} ORDER BY expires_at, hold_id), '[]')::TEXT \
              FROM holds WHERE holds.account_id = accounts.account_id AND state = 'pending' AND expires_at <= $2) \
         FROM accounts WHERE account_id = ANY($1)",
        allowances = execute::ALLOWANCES_COLUMN,
    )
});

/// Column `index` of `row`: a JSON array as text, each element decoded by `decode`.
fn json_array<T>(
    row: &tokio_postgres::Row,
    index: usize,
    what: &str,
    decode: fn(&serde_json::Value) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let text: &str = row.try_get(index).map_err(|_| undecodable(what))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| undecodable(what).with_source(error))?;
    value.as_array().ok_or_else(|| undecodable(what))?.iter().map(decode).collect()
}

/// Delay before retry number `retry` (1-based): exponential, capped, with full jitter in its
/// upper half so that colliding transactions spread out instead of colliding again.
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE_MICROS.saturating_mul(1_u64 << retry.min(20)).min(BACKOFF_MAX_MICROS);
    let micros = rand::rng().random_range(ceiling / 2..=ceiling);
    Duration::from_micros(micros)
}

async fn read_transaction(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(store_error)
}

#[async_trait]
impl LedgerStore for PostgresStore {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        let command = request.command.name();
        let executed = self.run(request).await?;
        store::observe::command(command, &executed);
        Ok(executed)
    }

    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        let sequence = self.read_sequence.fetch_add(1, Ordering::Relaxed);
        let state = self.reads.submit(sequence, account_id.clone()).await.unwrap_or_else(|| {
            Err(StoreError::corrupt(
                "the batch reading this account ended without an answer (a broken invariant; see the log)".to_owned(),
            ))
        })?;
        // Viewed at the time the read's statement ran, the time its due holds were picked by.
        Ok(state.map(|(state, now)| AccountView::at(&state, now)))
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE hold_id = $1"))
            .await
            .map_err(store_error)?;
        let row = client.query_opt(&statement, &[&hold_id.as_str()]).await.map_err(store_error)?;
        let hold = row.as_ref().map(rows::hold).transpose()?;
        Ok(hold.map(|hold| ledger::view_hold(&hold, self.clock.now())))
    }

    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        let now = self.clock.now();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = $1 AND state = 'pending' AND expires_at > $2 \
                 ORDER BY created_at, hold_id"
            ))
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&account_id.as_str(), &now.micros()]).await.map_err(store_error)?;
        rows.iter().map(rows::hold).collect()
    }

    async fn holds(
        &self,
        account_id: &AccountId,
        state: HoldState,
        after: Option<&HoldId>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        let now = self.clock.now();
        // Hold ids compare byte-wise (COLLATE "C"), as the ledger's ids do, whatever the
        // database's collation; the (account_id, state, hold_id COLLATE "C") index serves it.
        let filter = match state {
            HoldState::Pending => "state = 'pending' AND expires_at > $3",
            HoldState::Expired => "(state = 'expired' OR (state = 'pending' AND expires_at <= $3))",
            HoldState::Captured => "state = 'captured' AND $3::BIGINT IS NOT NULL",
            HoldState::Released => "state = 'released' AND $3::BIGINT IS NOT NULL",
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = $1 AND hold_id COLLATE \"C\" > $2 AND {filter} \
                 ORDER BY hold_id COLLATE \"C\" LIMIT $4"
            ))
            .await
            .map_err(store_error)?;
        let after = after.map_or("", HoldId::as_str);
        let limit = i64::from(limit.min(store::HOLDS_PAGE_MAX));
        let params: [&(dyn ToSql + Sync); 4] = [&account_id.as_str(), &after, &now.micros(), &limit];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        rows.iter().map(|row| rows::hold(row).map(|hold| ledger::view_hold(&hold, now))).collect()
    }

    async fn entries(&self, account_id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .await
            .map_err(store_error)?;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let rows =
            client.query(&statement, &[&account_id.as_str(), &after, &i64::from(limit)]).await.map_err(store_error)?;
        rows.iter().map(rows::entry).collect()
    }

    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        for account_id in self.due_accounts(now, accounts_max).await? {
            let executed = self.run(Request::new(Command::Sweep { account_id })).await?;
            // Another process may have swept the account first: then nothing was due any more.
            if let Executed::Fresh(Ok(Outcome::Swept { entries })) = executed {
                if entries > 0 {
                    report.accounts += 1;
                    report.entries += entries as u64;
                }
            }
        }
        report.idempotency_keys_deleted = self.forget_idempotency_keys(now).await?;
        Ok(report)
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut client = self.client().await?;
        let page_statement = client
            .prepare_cached("SELECT account_id FROM accounts WHERE account_id > $1 ORDER BY account_id LIMIT $2")
            .await
            .map_err(store_error)?;
        let mut after = String::new();
        loop {
            let page = client.query(&page_statement, &[&after, &VERIFY_PAGE_MAX]).await.map_err(store_error)?;
            for row in &page {
                let account_id: String = row.try_get(0).map_err(|_| undecodable("account_id"))?;
                let (entries, holds, violations) = self.verify_one(&mut client, &account_id).await?;
                report.accounts += 1;
                report.entries += entries;
                report.holds += holds;
                report.violations.extend(violations);
                after = account_id;
            }
            if page.len() < VERIFY_PAGE_MAX.unsigned_abs() as usize {
                break;
            }
        }
        report.violations.extend(orphans(&client).await?);
        Ok(report)
    }

    async fn events(&self, after: u128, limit: u32) -> Result<Vec<store::events::StoredEvent>, StoreError> {
        use store::events::{EventType, NewEvent, StoredEvent, EVENTS_PAGE_MAX};
        // A position is (txid << 64) | seq: see the outbox table.
        let after_txid = i64::try_from(after >> 64).unwrap_or(i64::MAX);
        let after_seq = i64::try_from(after & u128::from(u64::MAX)).unwrap_or(i64::MAX);
        let limit = i64::from(limit.min(EVENTS_PAGE_MAX));
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT seq, txid, type, account_id, data, at, created_at FROM outbox \
                 WHERE (txid, seq) > ($1, $2) \
                   AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY txid, seq LIMIT $3",
            )
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&after_txid, &after_seq, &limit]).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let number = |index: usize, what: &str| -> Result<u64, StoreError> {
                    let value: i64 = row.try_get(index).map_err(|_| undecodable(what))?;
                    u64::try_from(value).map_err(|_| undecodable(what))
                };
                let text = |index: usize, what: &str| -> Result<String, StoreError> {
                    row.try_get::<_, String>(index).map_err(|_| undecodable(what))
                };
                let micros = |index: usize, what: &str| -> Result<Timestamp, StoreError> {
                    row.try_get::<_, i64>(index).map(Timestamp::from_micros).map_err(|_| undecodable(what))
                };
                let (seq, txid) = (number(0, "event seq")?, number(1, "event txid")?);
                let event_type = EventType::parse(&text(2, "event type")?).ok_or_else(|| undecodable("event type"))?;
                let account_id =
                    AccountId::parse(&text(3, "event account")?).map_err(|_| undecodable("event account"))?;
                let event =
                    NewEvent { event_type, account_id, data: text(4, "event data")?, at: micros(5, "event at")? };
                let position = (u128::from(txid) << 64) | u128::from(seq);
                Ok(StoredEvent { seq, position, event, created_at: micros(6, "event created_at")? })
            })
            .collect()
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: &store::webhooks::Endpoint,
    ) -> Result<store::webhooks::Endpoint, StoreError> {
        self.retrying("creating a webhook endpoint", || async {
            webhooks::create(&self.client().await?, endpoint).await
        })
        .await
    }

    async fn webhook_endpoints(&self) -> Result<Vec<store::webhooks::Endpoint>, StoreError> {
        self.retrying("reading webhook endpoints", || async { webhooks::endpoints(&self.client().await?).await }).await
    }

    async fn change_webhook_endpoint(
        &self,
        endpoint_id: &store::EndpointId,
        change: &store::webhooks::EndpointChange,
        now: Timestamp,
    ) -> Result<Option<store::webhooks::Endpoint>, StoreError> {
        self.retrying("changing a webhook endpoint", || async {
            webhooks::change(&mut self.client().await?, endpoint_id, change, now).await
        })
        .await
    }

    async fn fan_out_webhook_events(&self, fan_out: &store::webhooks::FanOut) -> Result<bool, StoreError> {
        self.retrying("fanning out webhook events", || async {
            webhooks::fan_out(&mut self.client().await?, fan_out).await
        })
        .await
    }

    async fn claim_webhook_deliveries(
        &self,
        claim: &store::webhooks::DeliveryClaim,
    ) -> Result<Vec<store::webhooks::ClaimedDelivery>, StoreError> {
        self.retrying("claiming webhook deliveries", || async { webhooks::claim(&self.client().await?, claim).await })
            .await
    }

    async fn finish_webhook_deliveries(
        &self,
        finishes: &[store::webhooks::DeliveryFinish],
    ) -> Result<Vec<store::webhooks::Finished>, StoreError> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying("finishing webhook deliveries", || async {
            webhooks::finish(&mut self.client().await?, finishes).await
        })
        .await
    }

    async fn replay_webhook_events(
        &self,
        endpoint_id: &store::EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        self.retrying("replaying webhook events", || async {
            webhooks::replay(&mut self.client().await?, endpoint_id, since, now).await
        })
        .await
    }

    async fn create_api_key(
        &self,
        key: &store::api_keys::ApiKey,
    ) -> Result<store::api_keys::ApiKeyCreated, StoreError> {
        self.retrying("creating a gateway key", || async { api_keys::create(&mut self.client().await?, key).await })
            .await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<store::api_keys::ApiKey>, StoreError> {
        self.retrying("reading a gateway key", || async { api_keys::by_hash(&self.client().await?, hash).await }).await
    }

    async fn api_keys(&self, account_id: &AccountId) -> Result<Vec<store::api_keys::ApiKey>, StoreError> {
        self.retrying("reading gateway keys", || async {
            api_keys::of_account(&self.client().await?, account_id).await
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        account_id: &AccountId,
        key_id: &store::ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<store::api_keys::ApiKey>, StoreError> {
        self.retrying("revoking a gateway key", || async {
            api_keys::revoke(&self.client().await?, account_id, key_id, now).await
        })
        .await
    }

    async fn record_gateway_call(&self, call: &store::api_keys::GatewayCall) -> Result<(), StoreError> {
        self.retrying("recording a gateway call", || async { api_keys::record(&self.client().await?, call).await })
            .await
    }

    async fn gateway_usage(
        &self,
        account_id: &AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<store::api_keys::UsageRow>, StoreError> {
        self.retrying("reading gateway usage", || async {
            api_keys::usage(&self.client().await?, account_id, from, to).await
        })
        .await
    }

    async fn key_spent_since(&self, key_id: &store::ApiKeyId, since: Timestamp) -> Result<ledger::Amount, StoreError> {
        self.retrying("reading a key's spending", || async {
            api_keys::spent_since(&self.client().await?, key_id, since).await
        })
        .await
    }

    async fn put_plan(&self, plan: &store::plans::Plan) -> Result<store::plans::PlanPut, StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached("INSERT INTO plans (plan_id, data) VALUES ($1, $2) ON CONFLICT (plan_id) DO NOTHING")
            .await
            .map_err(store_error)?;
        let data = store::plans::encode_plan(plan);
        let inserted = client.execute(&insert, &[&plan.plan_id.as_str(), &data]).await.map_err(store_error)?;
        if inserted == 1 {
            return Ok(store::plans::PlanPut::Created(plan.clone()));
        }
        drop(client);
        let existing = self.plan(&plan.plan_id).await?;
        existing.map(store::plans::PlanPut::Exists).ok_or_else(|| undecodable("plan (vanished after a conflict)"))
    }

    async fn plan(&self, plan_id: &ledger::PlanId) -> Result<Option<store::plans::Plan>, StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT data FROM plans WHERE plan_id = $1").await.map_err(store_error)?;
        let row = client.query_opt(&statement, &[&plan_id.as_str()]).await.map_err(store_error)?;
        row.map(|row| {
            let data: &str = row.try_get(0).map_err(|_| undecodable("plan"))?;
            store::plans::decode_plan(data)
        })
        .transpose()
    }

    async fn plans(&self, plans_max: u32) -> Result<Vec<store::plans::Plan>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT data FROM plans ORDER BY plan_id COLLATE \"C\" LIMIT $1")
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&i64::from(plans_max)]).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let data: &str = row.try_get(0).map_err(|_| undecodable("plan"))?;
                store::plans::decode_plan(data)
            })
            .collect()
    }

    async fn filtered_entries(
        &self,
        account_id: &AccountId,
        filter: &store::EntryFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let client = self.client().await?;
        // One statement; a condition is left out by a NULL.
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE account_id = $1 AND seq > $2 \
                 AND ($3::TEXT IS NULL OR kind = $3) AND ($4::BIGINT IS NULL OR at >= $4) \
                 AND ($5::BIGINT IS NULL OR at < $5) AND ($6::TEXT IS NULL OR reference = $6) ORDER BY seq LIMIT $7"
            ))
            .await
            .map_err(store_error)?;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let kind = filter.kind.map(ledger::EntryKind::as_str);
        let (from, to) = (filter.from.map(Timestamp::micros), filter.to.map(Timestamp::micros));
        let reference = filter.reference.as_ref().map(ledger::Reference::as_str);
        let limit = i64::from(limit);
        let params: [&(dyn ToSql + Sync); 7] = [&account_id.as_str(), &after, &kind, &from, &to, &reference, &limit];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        rows.iter().map(rows::entry).collect()
    }

    async fn grant(&self, grant_id: &ledger::GrantId) -> Result<Option<ledger::Grant>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1"))
            .await
            .map_err(store_error)?;
        let row = client.query_opt(&statement, &[&grant_id.as_str()]).await.map_err(store_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    async fn grants(
        &self,
        account_id: &AccountId,
        state: store::GrantListState,
        after: Option<&ledger::GrantId>,
        limit: u32,
    ) -> Result<Vec<ledger::Grant>, StoreError> {
        // $3 is the moment the state is judged at (unused for voided grants). Ids compare
        // byte-wise, as the ledger's do; the (account_id, grant_id COLLATE "C") index serves it.
        let (filter, now) = match state {
            store::GrantListState::Active(now) => {
                ("voided_at IS NULL AND (expires_at IS NULL OR expires_at > $3)", now)
            }
            store::GrantListState::Expired(now) => ("voided_at IS NULL AND expires_at <= $3", now),
            store::GrantListState::Voided => {
                ("voided_at IS NOT NULL AND $3::BIGINT IS NOT NULL", Timestamp::from_micros(0))
            }
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = $1 AND grant_id COLLATE \"C\" > $2 AND {filter} \
                 ORDER BY grant_id COLLATE \"C\" LIMIT $4"
            ))
            .await
            .map_err(store_error)?;
        let after = after.map_or("", ledger::GrantId::as_str);
        let limit = i64::from(limit.min(store::GRANTS_PAGE_MAX));
        let params: [&(dyn ToSql + Sync); 4] = [&account_id.as_str(), &after, &now.micros(), &limit];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        rows.iter().map(rows::grant).collect()
    }

    async fn account_ids(
        &self,
        prefix: &str,
        after: Option<&AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let client = self.client().await?;
        // Ids compare byte-wise (COLLATE "C") whatever the database's collation. They are
        // `[A-Za-z0-9._-]`, so every id starting with `prefix` sorts below `prefix` + `~`.
        let statement = client
            .prepare_cached(
                "SELECT account_id FROM accounts WHERE account_id COLLATE \"C\" > $1 \
                 AND account_id COLLATE \"C\" >= $2 AND account_id COLLATE \"C\" < $3 \
                 ORDER BY account_id COLLATE \"C\" LIMIT $4",
            )
            .await
            .map_err(store_error)?;
        let after = after.map_or("", AccountId::as_str);
        let below = format!("{prefix}~");
        let limit = i64::from(limit.min(store::ACCOUNTS_PAGE_MAX));
        let params: [&(dyn ToSql + Sync); 4] = [&after, &prefix, &below, &limit];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(|_| undecodable("account id"))?;
                AccountId::parse(&id).map_err(|_| undecodable("account id"))
            })
            .collect()
    }

    async fn daily_credits(&self, from: Timestamp, to: Timestamp) -> Result<Vec<store::DayCredits>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT at / $3 AS day, kind, SUM(amount)::BIGINT FROM entries WHERE at >= $1 AND at < $2 \
                 GROUP BY day, kind ORDER BY day, kind",
            )
            .await
            .map_err(store_error)?;
        let params: [&(dyn ToSql + Sync); 3] = [&from.micros(), &to.micros(), &store::MICROS_PER_DAY];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let day: i64 = row.try_get(0).map_err(|_| undecodable("day"))?;
                let kind: String = row.try_get(1).map_err(|_| undecodable("entry kind"))?;
                let micros: i64 = row.try_get(2).map_err(|_| undecodable("sum of amounts"))?;
                Ok(store::DayCredits {
                    day,
                    kind: ledger::EntryKind::parse(&kind).ok_or_else(|| undecodable("entry kind"))?,
                    amount: Amount::from_micros(u64::try_from(micros).map_err(|_| undecodable("sum of amounts"))?),
                })
            })
            .collect()
    }

    async fn gauges(&self) -> Result<store::StoreGauges, StoreError> {
        let client = self.client().await?;
        // One statement, one snapshot: the pending holds through their partial index, the
        // queued and running jobs through the claim index.
        let row = client
            .query_one(
                "SELECT (SELECT COUNT(*) FROM holds WHERE state = 'pending'), \
                        (SELECT COALESCE(SUM(remaining), 0)::BIGINT FROM holds WHERE state = 'pending'), \
                        (SELECT COUNT(*) FROM jobs WHERE status = 'queued'), \
                        (SELECT COUNT(*) FROM jobs WHERE status = 'running'), \
                        (SELECT MIN(created_at) FROM jobs WHERE status = 'queued')",
                &[],
            )
            .await
            .map_err(store_error)?;
        let count = |index: usize| -> Result<u64, StoreError> {
            let value: i64 = row.try_get(index).map_err(|_| undecodable("a gauge"))?;
            u64::try_from(value).map_err(|_| undecodable("a gauge"))
        };
        let oldest: Option<i64> = row.try_get(4).map_err(|_| undecodable("the oldest queued job"))?;
        Ok(store::StoreGauges {
            pending_holds: count(0)?,
            held: Amount::from_micros(count(1)?),
            jobs_queued: count(2)?,
            jobs_running: count(3)?,
            oldest_queued_job_at: oldest.map(Timestamp::from_micros),
        })
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    /// A pooled connection (a new one goes only to a server that takes writes) asks its server
    /// whether it takes writes now: a primary fenced read-only keeps its open connections, and
    /// this is where that shows. Then every older connection is dropped at its next checkout.
    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT current_setting('transaction_read_only')").await.map_err(store_error)?;
        let row = client.query_one(&statement, &[]).await.map_err(store_error)?;
        let read_only: &str = row.try_get(0).map_err(|_| undecodable("transaction_read_only"))?;
        if read_only != "off" {
            connection::mark_stale();
            return Err(StoreError::unavailable(format!(
                "the PostgreSQL server takes no writes (transaction_read_only = {read_only}): a standby, or a \
                 primary fenced read-only"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn create_run_once(
        &self,
        run: &RunRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
        self.retrying("create_run", || self.try_create_run(run, idempotency)).await
    }

    async fn keyed_run(&self, idempotency: &Idempotency) -> Result<Option<KeyedRun>, StoreError> {
        self.key_record(&idempotency.key)
            .await?
            .map(|(fingerprint, result)| keys::keyed_run(&idempotency.fingerprint, &fingerprint, &result))
            .transpose()
    }

    async fn update_run(&self, run: &RunRecord) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(runs::UPDATE_RUN).await.map_err(store_error)?;
        let params: [&(dyn ToSql + Sync); 6] = [
            &run.run_id.as_str(),
            &run.state.as_str(),
            &run.hold_id.as_ref().map(HoldId::as_str),
            &run.updated_at.micros(),
            &run.data,
            &run.hold_resolution.as_str(),
        ];
        match client.execute(&statement, &params).await {
            Ok(updated) => Ok(updated == 1),
            Err(error) if runs::is_running_conflict(&error) => Err(runs::running_conflict(run, &error)),
            Err(error) => Err(store_error(error)),
        }
    }

    async fn run(&self, run_id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let run_id = run_id.as_str();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"))
            .await
            .map_err(store_error)?;
        let row = client.query_opt(&statement, &[&run_id]).await.map_err(store_error)?;
        row.as_ref().map(runs::run).transpose()
    }

    async fn thread_account(&self, thread_id: &ThreadId) -> Result<Option<AccountId>, StoreError> {
        let thread_id = thread_id.as_str();
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT account_id FROM threads WHERE thread_id = $1").await.map_err(store_error)?;
        let row = client.query_opt(&statement, &[&thread_id]).await.map_err(store_error)?;
        row.map(|row| runs::account_id(row.try_get(0).map_err(|_| undecodable("thread account_id"))?)).transpose()
    }

    async fn account_runs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &RunId)>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        // With no cursor, one past every run: the largest time, and `~` above every id byte.
        let (at, run_id) = before.map_or((i64::MAX, "~"), |(at, run_id)| (at.micros(), run_id.as_str()));
        let statement = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE account_id = $1 \
                 AND (created_at < $2 OR (created_at = $2 AND run_id COLLATE \"C\" < $3)) \
                 ORDER BY created_at DESC, run_id COLLATE \"C\" DESC LIMIT $4"
            ))
            .await
            .map_err(store_error)?;
        let limit = i64::from(limit.min(store::runs::RUNS_PAGE_MAX));
        let params: [&(dyn ToSql + Sync); 4] = [&account_id.as_str(), &at, &run_id, &limit];
        let rows = client.query(&statement, &params).await.map_err(store_error)?;
        rows.iter().map(runs::run).collect()
    }

    async fn thread_runs(
        &self,
        thread_id: &ThreadId,
        after_turn: Option<u32>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let thread_id = thread_id.as_str();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE thread_id = $1 AND turn_index > $2 ORDER BY turn_index LIMIT $3"
            ))
            .await
            .map_err(store_error)?;
        let after = after_turn.map_or(-1, i64::from);
        let rows = client.query(&statement, &[&thread_id, &after, &i64::from(limit)]).await.map_err(store_error)?;
        rows.iter().map(runs::run).collect()
    }

    async fn runs_in_state(
        &self,
        state: RunState,
        instance_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        // Ties in time are ordered by the id's bytes, as SQLite orders them, whatever the locale.
        let statement = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE state = $1 AND ($2::TEXT IS NULL OR instance_id = $2) \
                 ORDER BY created_at, run_id COLLATE \"C\" LIMIT $3"
            ))
            .await
            .map_err(store_error)?;
        let rows =
            client.query(&statement, &[&state.as_str(), &instance_id, &i64::from(limit)]).await.map_err(store_error)?;
        rows.iter().map(runs::run).collect()
    }

    async fn unresolved_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        // Through `runs_hold_pending`, whose condition the query repeats word for word.
        let statement = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE hold_resolution = 'pending' AND state <> 'running' \
                 ORDER BY updated_at, run_id COLLATE \"C\" LIMIT $1"
            ))
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&i64::from(limit)]).await.map_err(store_error)?;
        rows.iter().map(runs::run).collect()
    }

    async fn orphaned_runs(
        &self,
        except_instance_id: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'running' AND instance_id <> $1 \
                 AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.instance_id = runs.instance_id \
                 AND instances.lease_until > $2) ORDER BY created_at, run_id COLLATE \"C\" LIMIT $3"
            ))
            .await
            .map_err(store_error)?;
        let rows = client
            .query(&statement, &[&except_instance_id, &now.micros(), &i64::from(limit)])
            .await
            .map_err(store_error)?;
        rows.iter().map(runs::run).collect()
    }

    async fn renew_instance(
        &self,
        instance_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO instances (instance_id, lease_until, started_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (instance_id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            )
            .await
            .map_err(store_error)?;
        client.execute(&statement, &[&instance_id, &lease_until.micros(), &now.micros()]).await.map_err(store_error)?;
        Ok(())
    }

    async fn drop_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("DELETE FROM instances WHERE instance_id = $1").await.map_err(store_error)?;
        Ok(client.execute(&statement, &[&instance_id]).await.map_err(store_error)? == 1)
    }

    async fn lapsed_instances(&self, now: Timestamp, limit: u32) -> Result<Vec<InstanceLease>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT instance_id, lease_until, started_at FROM instances WHERE lease_until <= $1 \
                 ORDER BY lease_until, instance_id COLLATE \"C\" LIMIT $2",
            )
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&now.micros(), &i64::from(limit)]).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(InstanceLease {
                    instance_id: row.try_get(0).map_err(|_| undecodable("instance_id"))?,
                    lease_until: Timestamp::from_micros(
                        row.try_get(1).map_err(|_| undecodable("instance lease_until"))?,
                    ),
                    started_at: Timestamp::from_micros(row.try_get(2).map_err(|_| undecodable("instance started_at"))?),
                })
            })
            .collect()
    }

    async fn put_artifact(&self, artifact: &Artifact) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(runs::INSERT_ARTIFACT).await.map_err(store_error)?;
        let params: [&(dyn ToSql + Sync); 6] = [
            &artifact.artifact_id.as_str(),
            &artifact.account_id.as_str(),
            &artifact.run_id.as_str(),
            &artifact.content_type,
            &artifact.bytes,
            &artifact.created_at.micros(),
        ];
        let inserted = client.execute(&statement, &params).await.map_err(store_error)?;
        if inserted != 1 {
            return Err(StoreError::corrupt(format!("artifact {} exists", artifact.artifact_id)));
        }
        Ok(())
    }

    async fn artifact(&self, artifact_id: &ArtifactId) -> Result<Option<Artifact>, StoreError> {
        let artifact_id = artifact_id.as_str();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE artifact_id = $1"))
            .await
            .map_err(store_error)?;
        let row = client.query_opt(&statement, &[&artifact_id]).await.map_err(store_error)?;
        row.as_ref().map(runs::artifact).transpose()
    }

    async fn write_run_events(&self, write: &RunEventsWrite) -> Result<bool, StoreError> {
        self.retrying("write_run_events", || self.try_write_run_events(write)).await
    }

    async fn write_run_end(&self, write: &RunEventsWrite, settle: &RunSettle) -> Result<RunEndWritten, StoreError> {
        self.retrying("write_run_end", || async {
            let mut client = self.client().await?;
            let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
            let ended = runs::write_end_attempt(transaction, write, settle, self.clock.now()).await?;
            if ended.committed {
                self.counters.transactions.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ended.result)
        })
        .await
    }

    async fn run_events(&self, run_id: &RunId, after: Option<u64>, limit: u32) -> Result<Vec<StoredFrame>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {FRAME_COLUMNS} FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .await
            .map_err(store_error)?;
        let after = after.map_or(-1, |after| i64::try_from(after).unwrap_or(i64::MAX));
        let limit = i64::from(limit.min(RUN_EVENTS_PAGE_MAX));
        let rows = client.query(&statement, &[&run_id.as_str(), &after, &limit]).await.map_err(store_error)?;
        rows.iter().map(runs::frame).collect()
    }

    async fn last_run_event_seq(&self, run_id: &RunId) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT MAX(seq) FROM run_events WHERE run_id = $1").await.map_err(store_error)?;
        let row = client.query_one(&statement, &[&run_id.as_str()]).await.map_err(store_error)?;
        let last: Option<i64> = row.try_get(0).map_err(|_| undecodable("event seq"))?;
        last.map(|seq| u64::try_from(seq).map_err(|_| undecodable("event seq"))).transpose()
    }

    async fn forget_run_events(&self, ended_before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // Old frames through `run_events_by_time`: a run's frames are all older than its last update.
        let statement = client
            .prepare_cached(
                "DELETE FROM run_events WHERE (run_id, seq) IN (SELECT e.run_id, e.seq FROM run_events e \
                 JOIN runs r ON r.run_id = e.run_id WHERE e.at < $1 AND r.state <> 'running' \
                 AND r.updated_at < $1 LIMIT $2)",
            )
            .await
            .map_err(store_error)?;
        client.execute(&statement, &[&ended_before.micros(), &i64::from(limit)]).await.map_err(store_error)
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // One statement, so the notification goes out exactly when the request commits.
        let statement = client
            .prepare_cached(&format!(
                "WITH requested AS (UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
                 WHERE run_id = $1 AND state = 'running' RETURNING run_id) \
                 SELECT pg_notify('{CANCEL_CHANNEL}', run_id) FROM requested"
            ))
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&run_id.as_str(), &at.micros()]).await.map_err(store_error)?;
        Ok(rows.len() == 1)
    }

    async fn cancel_requests(&self, instance_id: &str, limit: u32) -> Result<Vec<RunId>, StoreError> {
        let client = self.client().await?;
        // Through `runs_cancel_requested`, whose condition the query repeats.
        let statement = client
            .prepare_cached(
                "SELECT run_id FROM runs WHERE instance_id = $1 AND state = 'running' \
                 AND cancel_requested_at IS NOT NULL ORDER BY created_at, run_id COLLATE \"C\" LIMIT $2",
            )
            .await
            .map_err(store_error)?;
        let rows = client.query(&statement, &[&instance_id, &i64::from(limit)]).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let text: &str = row.try_get(0).map_err(|_| undecodable("run_id"))?;
                RunId::parse(text).map_err(|_| undecodable("run_id"))
            })
            .collect()
    }

    async fn recorded_response(&self, key: &str) -> Result<Option<KeyUse>, StoreError> {
        self.key_record(key).await?.map(|(fingerprint, result)| keys::key_use(&fingerprint, &result)).transpose()
    }

    async fn record_response(&self, key: &str, response: &RecordedResponse) -> Result<KeyUse, StoreError> {
        self.retrying("record_response", || self.try_record_response(key, response)).await
    }

    async fn run_signals(&self) -> broadcast::Receiver<RunSignal> {
        self.listener.subscribe().await
    }
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn write_job(&self, write: JobWrite) -> Result<Result<JobWritten, JobWriteRefusal>, StoreError> {
        // Its ledger request runs in the job's own transaction, not in a batch: it queues on the
        // account row lock in the database, between two batches.
        self.retrying("write_job", || self.try_write_job(&write)).await
    }

    async fn job(&self, job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.query_jobs(jobs::JOB_BY_ID, &[&job_id.as_str()]).await?.pop())
    }

    async fn account_jobs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &JobId)>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        // With no cursor, one past every job: the largest time, and `~` above every id byte.
        let (at, job_id) = before.map_or((i64::MAX, "~"), |(at, job_id)| (at.micros(), job_id.as_str()));
        let params: [&(dyn ToSql + Sync); 4] = [&account_id.as_str(), &at, &job_id, &jobs::list_limit(limit)];
        self.query_jobs(jobs::ACCOUNT_JOBS, &params).await
    }

    async fn thread_jobs(&self, thread_id: &ThreadId, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs(jobs::THREAD_JOBS, &[&thread_id.as_str(), &jobs::list_limit(limit)]).await
    }

    async fn retry_of(&self, source_job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.query_jobs(jobs::RETRY_OF, &[&source_job_id.as_str()]).await?.pop())
    }

    async fn claim_job(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    ) -> Result<Option<JobRecord>, StoreError> {
        self.retrying("claim_job", || self.try_claim_job(worker_id, now, lease_until, attempts_max)).await
    }

    async fn stuck_jobs(
        &self,
        heartbeat_before: Timestamp,
        queued_before: Timestamp,
        now: Timestamp,
        attempts_max: u32,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let params: [&(dyn ToSql + Sync); 5] = [
            &heartbeat_before.micros(),
            &queued_before.micros(),
            &now.micros(),
            &jobs::attempts_limit(attempts_max),
            &jobs::list_limit(limit),
        ];
        self.query_jobs(jobs::STUCK_JOBS, &params).await
    }
}
