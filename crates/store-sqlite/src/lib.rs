//! The SQLite ledger store: the embedded default backend of creditgraph.
//!
//! Shape (see ARCHITECTURE.md for the invariants):
//! - one **writer thread** owns the only write connection and applies every mutation; it commits
//!   up to `batch_max` queued operations per transaction (group commit, one fsync per batch), each
//!   inside its own savepoint, and answers only after the commit is durable ([`writer`]);
//! - a few **read connections** serve reads from the last committed WAL snapshot without
//!   blocking the writer ([`readers`]);
//! - an OS lock on `<database>.lock` makes a second process (or a second store in this process)
//!   refuse to open the same file, so the writer's in-memory account cache is never stale
//!   ([`lockfile`]);
//! - the schema is embedded and migrated at open ([`schema`]).
//!
//! The same store implements [`RunStore`] (threads, runs, artifacts; [`runs`]) and [`JobStore`]
//! (video jobs; [`jobs`]): their writes are jobs of the same writer, so they share group commits
//! and the single-writer guarantee, and a job write carrying a ledger request is one savepoint.

mod api_keys;
mod checkpointer;
mod jobs;
mod lockfile;
mod readers;
mod rows;
mod runs;
mod schema;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use ledger::{AccountId, Entry, Hold, HoldId, HoldState, StoredAccount, Timestamp, Violation};
use store::protocol::PendingHolds;
use store::runs::RUN_SIGNALS_CAPACITY;
use store::{
    AccountView, Artifact, ArtifactId, Clock, CreateRunRefusal, Executed, Idempotency, InstanceLease, JobId, JobRecord,
    JobStore, JobWrite, JobWriteRefusal, JobWritten, KeyUse, KeyedRun, LedgerStore, RecordedResponse, Request,
    RunEndWritten, RunEventsWrite, RunId, RunRecord, RunSettle, RunSignal, RunState, RunStore, StoreError, StoredFrame,
    SweepReport, ThreadId, VerifyReport,
};
use tokio::sync::{broadcast, mpsc};

use readers::Readers;
use webhooks::{WebhookAnswer, WebhookWork};
use writer::{Answer, Claim, Counters, Job, NewResponse, NewRun, Renewal, Work, Writer};

/// When a commit is on disk: SQLite's `synchronous` setting of the writer and checkpointer.
///
/// What each level loses (the store runs in WAL mode, with the background checkpointer of
/// [`checkpointer`] passing every `CHECKPOINT_INTERVAL_MILLISECONDS`):
/// - [`Synchronous::Full`] (the default): the WAL is fsynced at every commit, before any reply
///   leaves the writer. Neither a process crash nor a power loss loses an answered change.
/// - [`Synchronous::Normal`]: commits are not fsynced; the WAL is fsynced before each checkpoint
///   copies it. A process crash (`kill -9`, a panic) loses nothing: a commit is in the OS page
///   cache before its reply. A power loss or kernel crash may lose the commits answered since the
///   last checkpoint pass — about the last 100 ms, more while a checkpoint is slow — and the
///   database stays consistent (whole transactions vanish, never part of one).
/// - [`Synchronous::Off`]: nothing is fsynced, not even at checkpoints; for benchmarks only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
    Off,
}

impl Synchronous {
    /// The `PRAGMA synchronous` value.
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }

    /// The level as `PRAGMA synchronous` reads it back (0 off, 1 normal, 2 full, 3 extra).
    pub(crate) fn from_level(level: i64) -> Synchronous {
        match level {
            0 => Synchronous::Off,
            1 => Synchronous::Normal,
            _ => Synchronous::Full,
        }
    }
}

/// Tuning of a [`SqliteStore`]. Every queue it creates is bounded by one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// When a commit is on disk, and what a crash or power loss may take (see [`Synchronous`]).
    pub synchronous: Synchronous,
    /// Most operations committed in one transaction.
    pub batch_max: usize,
    /// Most operations waiting for the writer; callers beyond it wait to enqueue.
    pub queue_max: usize,
    /// Read connections (and concurrent reads).
    pub read_connections: usize,
    /// Idempotency keys younger than this are never forgotten by `sweep`.
    pub idempotency_retention_seconds: u64,
    /// Most accounts whose state the writer keeps in memory (0 turns the cache off).
    pub cache_accounts_max: usize,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            synchronous: Synchronous::Full,
            batch_max: 256,
            queue_max: 4096,
            read_connections: 4,
            idempotency_retention_seconds: 86_400,
            cache_accounts_max: 100_000,
        }
    }
}

/// Cumulative writer figures: `operations / commits` is the mean group-commit size, i.e. the
/// operations per fsync when durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Transactions committed.
    pub commits: u64,
    /// Jobs (ledger commands, key clean-ups) in those transactions.
    pub operations: u64,
    /// Time in `COMMIT` statements (the WAL sync, and SQLite's automatic checkpoint when it
    /// fires inside one), summed, and the longest.
    pub commit_micros: u64,
    pub commit_max_micros: u64,
    /// Commits of 10 ms or more, and how many of those overlapped a background checkpoint pass.
    pub slow_commits: u64,
    pub slow_commits_during_checkpoint: u64,
    /// Background checkpoint passes, their summed and longest time, the WAL frames they copied.
    pub checkpoints: u64,
    pub checkpoint_micros: u64,
    pub checkpoint_max_micros: u64,
    pub checkpoint_frames: u64,
}

/// Accounts verified per read of the account list, so verification memory stays bounded by the
/// largest single account rather than the database.
const VERIFY_PAGE_ACCOUNTS: u32 = 1_000;
/// Most journal-only accounts reported by one verification.
const ORPHAN_ACCOUNTS_REPORTED_MAX: u32 = 100;

/// A [`LedgerStore`] on one SQLite database file.
pub struct SqliteStore {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    /// `None` once closed; cloned per request so closing waits only for requests in flight.
    jobs: Mutex<Option<mpsc::Sender<Work>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    /// One process owns the file (the owner lock): its own committed writes are every signal.
    signals: broadcast::Sender<RunSignal>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn writer_gone() -> StoreError {
    StoreError::unavailable("the SQLite writer has stopped (a failed ledger invariant is logged)")
}

/// Takes the owner lock, opens the write connection and migrates.
fn open_locked(
    path: &Path,
    synchronous: Synchronous,
) -> Result<(PathBuf, lockfile::OwnerLock, rusqlite::Connection), StoreError> {
    let path = lockfile::resolve(path)?;
    let owner = lockfile::acquire(&path)?;
    let mut conn = schema::open_writer(&path, synchronous)?;
    schema::migrate(&mut conn, &path)?;
    Ok((path, owner, conn))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::startup(format!("SQLite start-up task failed: {error}")).with_source(error))?
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `path`, then starts the writer.
    /// Fails with [`StoreError::Startup`] when another store owns the file.
    pub async fn open(path: &Path, clock: Arc<dyn Clock>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let requested = path.to_owned();
        let synchronous = options.synchronous;
        let read_connections = options.read_connections;
        let (path, owner, conn, readers) = blocking(move || {
            let (path, owner, conn) = open_locked(&requested, synchronous)?;
            let readers = Readers::open(path.clone(), read_connections)?;
            Ok((path, owner, conn, readers))
        })
        .await?;
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(
            conn,
            Arc::clone(&clock),
            options.batch_max,
            options.cache_accounts_max,
            options.idempotency_retention_seconds,
            Arc::clone(&counters),
        );
        let (sender, receiver) = mpsc::channel(options.queue_max.max(1));
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || writer.run(receiver, owner))
            .map_err(|error| {
                StoreError::startup(format!("cannot start the SQLite writer: {error}")).with_source(error)
            })?;
        tracing::info!(database = %path.display(), synchronous = synchronous.pragma(), batch_max = options.batch_max, "SQLite store open");
        let (signals, _) = broadcast::channel(RUN_SIGNALS_CAPACITY);
        Ok(SqliteStore {
            path,
            clock,
            jobs: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            readers: Arc::new(readers),
            counters,
            signals,
        })
    }

    /// Opens, migrates and closes: what `creditgraph migrate` runs. Takes the owner lock too, so
    /// it refuses while a server owns the file.
    pub async fn migrate_only(path: &Path) -> Result<(), StoreError> {
        let requested = path.to_owned();
        blocking(move || {
            let (path, owner, conn) = open_locked(&requested, Synchronous::Full)?;
            conn.close().map_err(|(_, error)| {
                StoreError::startup(format!("database {}: closing after migration failed: {error}", path.display()))
                    .with_source(error)
            })?;
            drop(owner);
            Ok(())
        })
        .await
    }

    /// The resolved path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> SqliteStats {
        let counters = &self.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        SqliteStats {
            commits: load(&counters.commits),
            operations: load(&counters.operations),
            commit_micros: load(&counters.commit_micros),
            commit_max_micros: load(&counters.commit_max_micros),
            slow_commits: load(&counters.slow_commits),
            slow_commits_during_checkpoint: load(&counters.slow_commits_during_checkpoint),
            checkpoints: load(&counters.checkpoints_ended),
            checkpoint_micros: load(&counters.checkpoint_micros),
            checkpoint_max_micros: load(&counters.checkpoint_max_micros),
            checkpoint_frames: load(&counters.checkpoint_frames),
        }
    }

    /// Stops accepting work, lets the writer drain and commit what is queued, joins it (which
    /// closes the write connection and releases the owner lock) and closes the readers. Later
    /// calls answer `Unavailable`. Dropping the store without closing also stops the writer, but
    /// the lock is then released in the background.
    pub async fn close(&self) {
        drop(lock(&self.jobs).take());
        self.readers.close();
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle {
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!(database = %self.path.display(), "the SQLite writer ended abnormally"),
            }
        }
        // The commit and checkpoint timings of the store's life, for an operator chasing slow
        // commits (docs/benchmarks/analysis.md, target 6, reads them from the benchmark's log).
        let stats = self.stats();
        tracing::info!(
            database = %self.path.display(),
            commits = stats.commits,
            commit_mean_micros = stats.commit_micros.checked_div(stats.commits).unwrap_or(0),
            commit_max_micros = stats.commit_max_micros,
            slow_commits = stats.slow_commits,
            slow_commits_during_checkpoint = stats.slow_commits_during_checkpoint,
            checkpoints = stats.checkpoints,
            checkpoint_mean_micros = stats.checkpoint_micros.checked_div(stats.checkpoints).unwrap_or(0),
            checkpoint_max_micros = stats.checkpoint_max_micros,
            checkpoint_frames = stats.checkpoint_frames,
            "SQLite store closed"
        );
    }

    /// Queues `input` for the writer as the work `kind` makes of it; the answer arrives once its
    /// batch has committed.
    async fn submit<I, T>(&self, kind: fn(Job<I, T>) -> Work, input: I) -> Result<Answer<T>, StoreError> {
        let sender = lock(&self.jobs).clone().ok_or_else(|| StoreError::unavailable("the SQLite store is closed"))?;
        let (job, answer) = Job::new(input);
        sender.send(kind(job)).await.map_err(|_| writer_gone())?;
        Ok(answer)
    }

    async fn answer<T>(answer: Answer<T>) -> Result<T, StoreError> {
        answer.await.map_err(|_| writer_gone())?
    }

    /// [`SqliteStore::submit`], then waits for the answer.
    async fn call<I, T>(&self, kind: fn(Job<I, T>) -> Work, input: I) -> Result<T, StoreError> {
        Self::answer(self.submit(kind, input).await?).await
    }

    async fn webhook(&self, work: WebhookWork) -> Result<WebhookAnswer, StoreError> {
        self.call(Work::Webhook, Box::new(work)).await
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        let command = request.command.name();
        let executed = self.call(Work::Execute, request).await?;
        store::observe::command(command, &executed);
        Ok(executed)
    }

    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        let account_id = account_id.clone();
        let clock = Arc::clone(&self.clock);
        self.readers
            .run(move |conn| {
                let snapshot = conn.unchecked_transaction().map_err(rows::sql_error)?;
                // Read after the snapshot began: never earlier than any write it contains.
                let now = clock.now();
                // The row, live grants and the holds due now: never every pending hold.
                let state = rows::load_account(&snapshot, &account_id, PendingHolds::DueAt(now))?;
                Ok(state.map(|state| AccountView::at(&state, now)))
            })
            .await
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        let hold_id = hold_id.clone();
        let clock = Arc::clone(&self.clock);
        self.readers
            .run(move |conn| {
                let hold = rows::hold(conn, &hold_id)?;
                let now = clock.now();
                Ok(hold.map(|hold| ledger::view_hold(&hold, now)))
            })
            .await
    }

    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        let account_id = account_id.clone();
        let clock = Arc::clone(&self.clock);
        self.readers.run(move |conn| rows::active_holds(conn, &account_id, clock.now())).await
    }

    async fn holds(
        &self,
        account_id: &AccountId,
        state: HoldState,
        after: Option<&HoldId>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        let account_id = account_id.clone();
        let after = after.cloned();
        let clock = Arc::clone(&self.clock);
        self.readers
            .run(move |conn| {
                let now = clock.now();
                let page = rows::holds_page(conn, &account_id, state, after.as_ref(), limit, now)?;
                Ok(page.iter().map(|hold| ledger::view_hold(hold, now)).collect())
            })
            .await
    }

    async fn entries(&self, account_id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        let account_id = account_id.clone();
        self.readers.run(move |conn| rows::entries(conn, &account_id, after_seq, limit)).await
    }

    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError> {
        let now = self.clock.now();
        let due = self.readers.run(move |conn| rows::due_accounts(conn, now, accounts_max)).await?;
        // Enqueue every sweep before awaiting any, so they share group commits.
        let mut answers = Vec::with_capacity(due.len());
        for account_id in due {
            answers.push(self.submit(Work::Sweep, account_id).await?);
        }
        let mut report = SweepReport::default();
        for answer in answers {
            let entries = Self::answer(answer).await?;
            // Zero when a command on the account recorded the expiry in the meantime.
            if entries > 0 {
                report.accounts += 1;
                report.entries += entries as u64;
            }
        }
        report.idempotency_keys_deleted = self.call(Work::ForgetKeys, ()).await?;
        Ok(report)
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.readers
            .run(|conn| {
                // One snapshot for the whole check, so concurrent commits cannot look like damage.
                let snapshot = conn.unchecked_transaction().map_err(rows::sql_error)?;
                let mut report = VerifyReport::default();
                let mut after: Option<AccountId> = None;
                loop {
                    let page = rows::accounts_page(&snapshot, after.as_ref(), VERIFY_PAGE_ACCOUNTS)?;
                    let Some((last, _, _)) = page.last() else { break };
                    after = Some(last.clone());
                    for (account_id, totals, held) in page {
                        let entries = rows::all_entries(&snapshot, &account_id)?;
                        let stored = StoredAccount {
                            free: rows::free_sum(&snapshot, &account_id)?,
                            held,
                            pinned: rows::pinned_grants(&snapshot, &account_id)?,
                            holds: rows::all_holds(&snapshot, &account_id)?,
                            account_id,
                            totals,
                        };
                        report.accounts += 1;
                        report.entries += entries.len() as u64;
                        report.holds += stored.holds.len() as u64;
                        report.violations.extend(ledger::verify_account(&entries, &stored));
                    }
                }
                for account_id in rows::orphan_journal_accounts(&snapshot, ORPHAN_ACCOUNTS_REPORTED_MAX)? {
                    let detail = "journal entries for an account the store does not have".to_owned();
                    report.violations.push(Violation { account_id, detail });
                }
                Ok(report)
            })
            .await
    }

    async fn events(&self, after: u128, limit: u32) -> Result<Vec<store::events::StoredEvent>, StoreError> {
        self.readers.run(move |conn| rows::events(conn, after, limit)).await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: &store::webhooks::Endpoint,
    ) -> Result<store::webhooks::Endpoint, StoreError> {
        match self.webhook(WebhookWork::Create(Box::new(endpoint.clone()))).await? {
            WebhookAnswer::Endpoint(endpoint) => Ok(*endpoint),
            _ => Err(WebhookAnswer::mismatch()),
        }
    }

    async fn webhook_endpoints(&self) -> Result<Vec<store::webhooks::Endpoint>, StoreError> {
        self.readers.run(webhooks::endpoints).await
    }

    async fn change_webhook_endpoint(
        &self,
        endpoint_id: &store::EndpointId,
        change: &store::webhooks::EndpointChange,
        now: Timestamp,
    ) -> Result<Option<store::webhooks::Endpoint>, StoreError> {
        match self.webhook(WebhookWork::Change(endpoint_id.clone(), change.clone(), now)).await? {
            WebhookAnswer::MaybeEndpoint(endpoint) => Ok(endpoint.map(|endpoint| *endpoint)),
            _ => Err(WebhookAnswer::mismatch()),
        }
    }

    async fn fan_out_webhook_events(&self, fan_out: &store::webhooks::FanOut) -> Result<bool, StoreError> {
        match self.webhook(WebhookWork::FanOut(fan_out.clone())).await? {
            WebhookAnswer::FannedOut(won) => Ok(won),
            _ => Err(WebhookAnswer::mismatch()),
        }
    }

    async fn claim_webhook_deliveries(
        &self,
        claim: &store::webhooks::DeliveryClaim,
    ) -> Result<Vec<store::webhooks::ClaimedDelivery>, StoreError> {
        match self.webhook(WebhookWork::Claim(claim.clone())).await? {
            WebhookAnswer::Claimed(claimed) => Ok(claimed),
            _ => Err(WebhookAnswer::mismatch()),
        }
    }

    async fn finish_webhook_deliveries(
        &self,
        finishes: &[store::webhooks::DeliveryFinish],
    ) -> Result<Vec<store::webhooks::Finished>, StoreError> {
        match self.webhook(WebhookWork::Finish(finishes.to_vec())).await? {
            WebhookAnswer::Finished(finished) => Ok(finished),
            _ => Err(WebhookAnswer::mismatch()),
        }
    }

    async fn replay_webhook_events(
        &self,
        endpoint_id: &store::EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let work = WebhookWork::Replay { endpoint_id: endpoint_id.clone(), since, now };
        match self.webhook(work).await? {
            WebhookAnswer::Replayed(count) => Ok(count),
            _ => Err(WebhookAnswer::mismatch()),
        }
    }

    async fn create_api_key(
        &self,
        key: &store::api_keys::ApiKey,
    ) -> Result<store::api_keys::ApiKeyCreated, StoreError> {
        match self.call(Work::ApiKey, Box::new(api_keys::ApiKeyWork::Create(key.clone()))).await? {
            api_keys::ApiKeyAnswer::Created(created) => Ok(created),
            _ => Err(api_keys::ApiKeyAnswer::mismatch()),
        }
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<store::api_keys::ApiKey>, StoreError> {
        let hash = hash.to_owned();
        self.readers.run(move |conn| api_keys::by_hash(conn, &hash)).await
    }

    async fn api_keys(&self, account_id: &AccountId) -> Result<Vec<store::api_keys::ApiKey>, StoreError> {
        let account_id = account_id.clone();
        self.readers.run(move |conn| api_keys::of_account(conn, &account_id)).await
    }

    async fn revoke_api_key(
        &self,
        account_id: &AccountId,
        key_id: &store::ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<store::api_keys::ApiKey>, StoreError> {
        let work = api_keys::ApiKeyWork::Revoke { account_id: account_id.clone(), key_id: key_id.clone(), now };
        match self.call(Work::ApiKey, Box::new(work)).await? {
            api_keys::ApiKeyAnswer::Revoked(key) => Ok(key),
            _ => Err(api_keys::ApiKeyAnswer::mismatch()),
        }
    }

    async fn record_gateway_call(&self, call: &store::api_keys::GatewayCall) -> Result<(), StoreError> {
        match self.call(Work::ApiKey, Box::new(api_keys::ApiKeyWork::Record(Box::new(call.clone())))).await? {
            api_keys::ApiKeyAnswer::Recorded => Ok(()),
            _ => Err(api_keys::ApiKeyAnswer::mismatch()),
        }
    }

    async fn gateway_usage(
        &self,
        account_id: &AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<store::api_keys::UsageRow>, StoreError> {
        let account_id = account_id.clone();
        self.readers.run(move |conn| api_keys::usage(conn, &account_id, from, to)).await
    }

    async fn key_spent_since(&self, key_id: &store::ApiKeyId, since: Timestamp) -> Result<ledger::Amount, StoreError> {
        let key_id = key_id.clone();
        self.readers.run(move |conn| api_keys::spent_since(conn, &key_id, since)).await
    }

    async fn put_plan(&self, plan: &store::plans::Plan) -> Result<store::plans::PlanPut, StoreError> {
        self.call(Work::PutPlan, Box::new(plan.clone())).await
    }

    async fn plan(&self, plan_id: &ledger::PlanId) -> Result<Option<store::plans::Plan>, StoreError> {
        let plan_id = plan_id.clone();
        self.readers.run(move |conn| rows::plan_by_id(conn, &plan_id)).await
    }

    async fn plans(&self, plans_max: u32) -> Result<Vec<store::plans::Plan>, StoreError> {
        self.readers.run(move |conn| rows::plans(conn, plans_max)).await
    }

    async fn filtered_entries(
        &self,
        account_id: &AccountId,
        filter: &store::EntryFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let (account_id, filter) = (account_id.clone(), filter.clone());
        self.readers.run(move |conn| rows::filtered_entries(conn, &account_id, &filter, after_seq, limit)).await
    }

    async fn grant(&self, grant_id: &ledger::GrantId) -> Result<Option<ledger::Grant>, StoreError> {
        let grant_id = grant_id.clone();
        self.readers.run(move |conn| rows::grant_by_id(conn, &grant_id)).await
    }

    async fn grants(
        &self,
        account_id: &AccountId,
        state: store::GrantListState,
        after: Option<&ledger::GrantId>,
        limit: u32,
    ) -> Result<Vec<ledger::Grant>, StoreError> {
        let (account_id, after) = (account_id.clone(), after.cloned());
        self.readers.run(move |conn| rows::grants_page(conn, &account_id, state, after.as_ref(), limit)).await
    }

    async fn account_ids(
        &self,
        prefix: &str,
        after: Option<&AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let (prefix, after) = (prefix.to_owned(), after.cloned());
        self.readers.run(move |conn| rows::account_ids(conn, &prefix, after.as_ref(), limit)).await
    }

    async fn daily_credits(&self, from: Timestamp, to: Timestamp) -> Result<Vec<store::DayCredits>, StoreError> {
        self.readers.run(move |conn| rows::daily_credits(conn, from, to)).await
    }

    async fn gauges(&self) -> Result<store::StoreGauges, StoreError> {
        self.readers.run(rows::gauges).await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run_once(
        &self,
        run: &RunRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
        self.call(Work::CreateRun, NewRun { run: run.clone(), idempotency: idempotency.cloned() }).await
    }

    async fn keyed_run(&self, idempotency: &Idempotency) -> Result<Option<KeyedRun>, StoreError> {
        let idempotency = idempotency.clone();
        self.readers.run(move |conn| runs::keyed_run(conn, &idempotency)).await
    }

    async fn update_run(&self, run: &RunRecord) -> Result<bool, StoreError> {
        self.call(Work::UpdateRun, run.clone()).await
    }

    async fn run(&self, run_id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let run_id = run_id.to_owned();
        self.readers.run(move |conn| runs::run(conn, &run_id)).await
    }

    async fn thread_account(&self, thread_id: &ThreadId) -> Result<Option<AccountId>, StoreError> {
        let thread_id = thread_id.to_owned();
        self.readers.run(move |conn| runs::thread_account(conn, &thread_id)).await
    }

    async fn account_runs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &RunId)>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let account_id = account_id.clone();
        let before = before.map(|(at, run_id)| (at, run_id.clone()));
        self.readers
            .run(move |conn| runs::account_runs(conn, &account_id, before.as_ref().map(|(at, id)| (*at, id)), limit))
            .await
    }

    async fn thread_runs(
        &self,
        thread_id: &ThreadId,
        after_turn: Option<u32>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let thread_id = thread_id.to_owned();
        self.readers.run(move |conn| runs::thread_runs(conn, &thread_id, after_turn, limit)).await
    }

    async fn runs_in_state(
        &self,
        state: RunState,
        instance_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let instance_id = instance_id.map(str::to_owned);
        self.readers.run(move |conn| runs::runs_in_state(conn, state, instance_id.as_deref(), limit)).await
    }

    async fn unresolved_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        self.readers.run(move |conn| runs::unresolved_runs(conn, limit)).await
    }

    async fn orphaned_runs(
        &self,
        except_instance_id: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let except_instance_id = except_instance_id.to_owned();
        self.readers.run(move |conn| runs::orphaned_runs(conn, &except_instance_id, now, limit)).await
    }

    async fn renew_instance(
        &self,
        instance_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(), StoreError> {
        let renewal = Renewal { instance_id: instance_id.to_owned(), now, lease_until };
        self.call(Work::RenewInstance, renewal).await
    }

    async fn drop_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        self.call(Work::DropInstance, instance_id.to_owned()).await
    }

    async fn lapsed_instances(&self, now: Timestamp, limit: u32) -> Result<Vec<InstanceLease>, StoreError> {
        self.readers.run(move |conn| runs::lapsed_instances(conn, now, limit)).await
    }

    async fn put_artifact(&self, artifact: &Artifact) -> Result<(), StoreError> {
        self.call(Work::PutArtifact, artifact.clone()).await
    }

    async fn artifact(&self, artifact_id: &ArtifactId) -> Result<Option<Artifact>, StoreError> {
        let artifact_id = artifact_id.to_owned();
        self.readers.run(move |conn| runs::artifact(conn, &artifact_id)).await
    }

    async fn write_run_end(&self, write: &RunEventsWrite, settle: &RunSettle) -> Result<RunEndWritten, StoreError> {
        let runs = write.runs_with_frames();
        let written = self.call(Work::WriteRunEnd, Box::new((write.clone(), settle.clone()))).await?;
        if matches!(written, RunEndWritten::Written(_)) {
            for run_id in runs {
                // No receiver is not an error: nobody follows.
                let _ = self.signals.send(RunSignal::Events(run_id));
            }
        }
        Ok(written)
    }

    async fn write_run_events(&self, write: &RunEventsWrite) -> Result<bool, StoreError> {
        let runs = write.runs_with_frames();
        let written = self.call(Work::WriteRunEvents, write.clone()).await?;
        if written {
            for run_id in runs {
                // No receiver is not an error: nobody follows.
                let _ = self.signals.send(RunSignal::Events(run_id));
            }
        }
        Ok(written)
    }

    async fn run_events(&self, run_id: &RunId, after: Option<u64>, limit: u32) -> Result<Vec<StoredFrame>, StoreError> {
        let run_id = run_id.to_owned();
        self.readers.run(move |conn| runs::run_events(conn, &run_id, after, limit)).await
    }

    async fn last_run_event_seq(&self, run_id: &RunId) -> Result<Option<u64>, StoreError> {
        let run_id = run_id.to_owned();
        self.readers.run(move |conn| runs::last_run_event_seq(conn, &run_id)).await
    }

    async fn forget_run_events(&self, ended_before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.call(Work::ForgetRunEvents, (ended_before, limit)).await
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> Result<bool, StoreError> {
        let requested = self.call(Work::RequestCancel, (run_id.clone(), at)).await?;
        if requested {
            let _ = self.signals.send(RunSignal::Cancel(run_id.clone()));
        }
        Ok(requested)
    }

    async fn cancel_requests(&self, instance_id: &str, limit: u32) -> Result<Vec<RunId>, StoreError> {
        let instance_id = instance_id.to_owned();
        self.readers.run(move |conn| runs::cancel_requests(conn, &instance_id, limit)).await
    }

    async fn recorded_response(&self, key: &str) -> Result<Option<KeyUse>, StoreError> {
        let key = key.to_owned();
        self.readers.run(move |conn| runs::recorded_response(conn, &key)).await
    }

    async fn record_response(&self, key: &str, response: &RecordedResponse) -> Result<KeyUse, StoreError> {
        self.call(Work::RecordResponse, NewResponse { key: key.to_owned(), response: response.clone() }).await
    }

    async fn run_signals(&self) -> broadcast::Receiver<RunSignal> {
        self.signals.subscribe()
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn write_job(&self, write: JobWrite) -> Result<Result<JobWritten, JobWriteRefusal>, StoreError> {
        self.call(Work::WriteJob, Box::new(write)).await
    }

    async fn job(&self, job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.readers.run(move |conn| jobs::job(conn, &job_id)).await
    }

    async fn account_jobs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &JobId)>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let account_id = account_id.clone();
        let before = before.map(|(at, job_id)| (at, job_id.clone()));
        self.readers
            .run(move |conn| jobs::account_jobs(conn, &account_id, before.as_ref().map(|(at, id)| (*at, id)), limit))
            .await
    }

    async fn thread_jobs(&self, thread_id: &ThreadId, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let thread_id = thread_id.to_owned();
        self.readers.run(move |conn| jobs::thread_jobs(conn, &thread_id, limit)).await
    }

    async fn retry_of(&self, source_job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let source_job_id = source_job_id.to_owned();
        self.readers.run(move |conn| jobs::retry_of(conn, &source_job_id)).await
    }

    async fn claim_job(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    ) -> Result<Option<JobRecord>, StoreError> {
        let claim = Claim { worker_id: worker_id.to_owned(), now, lease_until, attempts_max };
        self.call(Work::ClaimJob, claim).await
    }

    async fn stuck_jobs(
        &self,
        heartbeat_before: Timestamp,
        queued_before: Timestamp,
        now: Timestamp,
        attempts_max: u32,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.readers
            .run(move |conn| jobs::stuck_jobs(conn, heartbeat_before, queued_before, now, attempts_max, limit))
            .await
    }
}
