//! The one writer: an OS thread that owns the write connection and commits jobs in groups.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So every mutation
//! goes through this thread: it takes up to `batch_max` queued jobs and runs them in ONE
//! `BEGIN IMMEDIATE … COMMIT` (group commit: one fsync for the whole batch). A job that fails
//! rolls back alone: jobs run inside their own `SAVEPOINT`, except ledger commands, which skip it
//! until one of their writes fails, and then the batch runs again with savepoints (see
//! [`Writer::run_batch`]). Replies leave only after `COMMIT`
//! succeeded, so a caller never sees a result that is not on disk; if `COMMIT` fails, every job of
//! the batch is answered `Unavailable`.
//!
//! Being the only writer (the owner lock guarantees it across processes) lets the thread keep the
//! persisted [`AccountState`] of recently used accounts in memory and skip re-reading them. It
//! also makes the run store's "check the thread, then insert the run" exact (see [`crate::runs`]),
//! and a job's compare-and-set and claim exact (see [`crate::jobs`]).
//!
//! Ledger commands follow [`store::protocol`]: this thread only reads (from the cache or the
//! file) and writes what [`Writes`] lists; the cache keeps only [`Writes::into_cached`].
//!
//! A job write that carries a ledger request applies both inside the job's savepoint; when the
//! ledger refuses, the savepoint is rolled back, so the job row and the ledger change (and the
//! idempotency record) go together or not at all, while the rest of the batch commits. The cache
//! takes an account's new state only after the savepoint that wrote it was released.
//!
//! Every kind of work carries its own typed reply channel ([`Work`], [`Job`]), so an answer can
//! only reach the caller that asked for it, in the type it expects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ledger::{AccountId, AccountState, Grant, GrantKind, Hold, HoldId, Reference, Timestamp, MICROS_PER_SECOND};
use rusqlite::Connection;
use store::protocol::{self, AccountRow, Decided, PendingHolds, Writes};
use store::{
    Artifact, Clock, CreateRunRefusal, Executed, Idempotency, JobRecord, JobWrite, JobWriteRefusal, JobWritten, KeyUse,
    RecordedResponse, Request, RunEndWritten, RunEventsWrite, RunId, RunRecord, RunSettle, StoreError,
};
use tokio::sync::{mpsc, oneshot};

use crate::lockfile::OwnerLock;
use crate::rows::{self, sql_error};
use crate::{jobs, runs};

/// Where a job's answer goes: typed by what the job answers.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
/// What a caller awaits for a job that answers `T`.
pub(crate) type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

/// One piece of work for the writer with its input and its typed reply channel. Its answer is
/// kept until the batch it ran in has committed (or failed), and only then sent.
#[derive(Debug)]
pub(crate) struct Job<I, T> {
    input: I,
    reply: Reply<T>,
    answer: Option<Result<T, StoreError>>,
}

impl<I, T> Job<I, T> {
    pub(crate) fn new(input: I) -> (Job<I, T>, Answer<T>) {
        let (reply, answer) = oneshot::channel();
        (Job { input, reply, answer: None }, answer)
    }

    /// Runs `perform` on the input and keeps its answer; the job's own failure is returned for
    /// the caller to record with [`Job::fail`] (or to rerun the batch).
    fn perform(
        &mut self,
        perform: impl FnOnce(&I) -> Result<(T, Performed), StoreError>,
    ) -> Result<Performed, StoreError> {
        let (answer, performed) = perform(&self.input)?;
        self.answer = Some(Ok(answer));
        Ok(performed)
    }

    fn fail(&mut self, error: StoreError) {
        self.answer = Some(Err(error));
    }

    /// Sends the kept answer once the batch committed.
    fn reply(self) {
        let answer = self.answer.expect("every job of a committed batch ran");
        // A caller that stopped waiting still had its job applied; nothing to tell it.
        let _ = self.reply.send(answer);
    }

    /// Sends `error` instead: the batch did not commit.
    fn reply_error(self, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// What a claim asks for (see `JobStore::claim_job`).
#[derive(Debug)]
pub(crate) struct Claim {
    pub worker_id: String,
    pub now: Timestamp,
    pub lease_until: Timestamp,
    pub attempts_max: u32,
}

/// A run to create, with the solve's key if it has one (see `RunStore::create_run_once`).
#[derive(Debug)]
pub(crate) struct NewRun {
    pub run: RunRecord,
    pub idempotency: Option<Idempotency>,
}

/// A response to record under a key (see `RunStore::record_response`).
#[derive(Debug)]
pub(crate) struct NewResponse {
    pub key: String,
    pub response: RecordedResponse,
}

/// What a lease renewal asks for (see `RunStore::renew_instance`).
#[derive(Debug)]
pub(crate) struct Renewal {
    pub instance_id: String,
    pub now: Timestamp,
    pub lease_until: Timestamp,
}

/// What the writer can be asked to do, each with the answer it gives.
#[derive(Debug)]
pub(crate) enum Work {
    Execute(Job<Request, Executed>),
    /// Records the expiries due in one account: answers how many entries it wrote.
    Sweep(Job<AccountId, usize>),
    /// Forgets idempotency keys older than the retention: answers how many.
    ForgetKeys(Job<(), u64>),
    CreateRun(Job<NewRun, Result<RunRecord, CreateRunRefusal>>),
    /// Answers whether the run existed.
    UpdateRun(Job<RunRecord, bool>),
    /// Answers false (nothing written) when the write's run does not exist.
    WriteRunEvents(Job<RunEventsWrite, bool>),
    /// A run's end with its settlement ([`store::RunStore::write_run_end`]); boxed: it is large.
    WriteRunEnd(Job<Box<(RunEventsWrite, RunSettle)>, RunEndWritten>),
    /// Forgets frames of runs ended before the time, at most the count: answers how many.
    ForgetRunEvents(Job<(Timestamp, u32), u64>),
    /// Answers whether the run was running.
    RequestCancel(Job<(RunId, Timestamp), bool>),
    RecordResponse(Job<NewResponse, KeyUse>),
    PutArtifact(Job<Artifact, ()>),
    /// Writes a plan unless its id exists: answers what was done.
    PutPlan(Job<Box<store::plans::Plan>, store::plans::PlanPut>),
    /// Boxed: a job record is large, and queued work should not all be that size.
    WriteJob(Job<Box<JobWrite>, Result<JobWritten, JobWriteRefusal>>),
    ClaimJob(Job<Claim, Option<JobRecord>>),
    RenewInstance(Job<Renewal, ()>),
    /// Answers whether the instance had a lease.
    DropInstance(Job<String, bool>),
    /// A webhook endpoint or delivery write (`crate::webhooks`).
    Webhook(Job<Box<crate::webhooks::WebhookWork>, crate::webhooks::WebhookAnswer>),
    /// A gateway key write (`crate::api_keys`).
    ApiKey(Job<Box<crate::api_keys::ApiKeyWork>, crate::api_keys::ApiKeyAnswer>),
}

/// `$body` on the [`Job`] inside any [`Work`], bound to `$job`.
macro_rules! each_job {
    ($work:expr, $job:ident => $body:expr) => {
        match $work {
            Work::Execute($job) => $body,
            Work::Sweep($job) => $body,
            Work::ForgetKeys($job) => $body,
            Work::CreateRun($job) => $body,
            Work::UpdateRun($job) => $body,
            Work::WriteRunEvents($job) => $body,
            Work::WriteRunEnd($job) => $body,
            Work::ForgetRunEvents($job) => $body,
            Work::RequestCancel($job) => $body,
            Work::RecordResponse($job) => $body,
            Work::PutArtifact($job) => $body,
            Work::PutPlan($job) => $body,
            Work::WriteJob($job) => $body,
            Work::ClaimJob($job) => $body,
            Work::RenewInstance($job) => $body,
            Work::DropInstance($job) => $body,
            Work::Webhook($job) => $body,
            Work::ApiKey($job) => $body,
        }
    };
}

impl Work {
    /// Ledger commands: they skip their savepoint on the fast path (see [`Writer::run_batch`]).
    fn is_ledger_command(&self) -> bool {
        matches!(self, Work::Execute(_) | Work::Sweep(_))
    }

    fn fail(&mut self, error: StoreError) {
        each_job!(self, job => job.fail(error))
    }

    fn reply(self) {
        each_job!(self, job => job.reply())
    }

    fn reply_error(self, error: StoreError) {
        each_job!(self, job => job.reply_error(error))
    }
}

/// What a job did inside its savepoint besides answering: whether its writes stay, and the
/// account state the cache takes once they are released.
#[derive(Debug)]
struct Performed {
    keep: bool,
    cached: Option<AccountState>,
}

impl Performed {
    const KEPT: Performed = Performed { keep: true, cached: None };
    /// Every write of the job is rolled back.
    const UNDONE: Performed = Performed { keep: false, cached: None };
}

/// The answer of a job that always keeps its writes and touches no account state.
fn kept<T>(result: Result<T, StoreError>) -> Result<(T, Performed), StoreError> {
    result.map(|answer| (answer, Performed::KEPT))
}

/// Cumulative figures, shared with the store for [`crate::SqliteStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub operations: AtomicU64,
    /// Time spent in `COMMIT` (its WAL sync, and SQLite's automatic checkpoint when it fires).
    pub commit_micros: AtomicU64,
    pub commit_max_micros: AtomicU64,
    /// Commits that took [`SLOW_COMMIT_MICROS`] or more, and how many of those overlapped a pass
    /// of the background checkpointer: the figures that confirm or refute that checkpoints make
    /// the slow commits (docs/benchmarks/analysis.md, target 6).
    pub slow_commits: AtomicU64,
    pub slow_commits_during_checkpoint: AtomicU64,
    /// Passes of the background checkpointer started and ended (a pass is running while they
    /// differ), their time, the longest, and the WAL frames they copied.
    pub checkpoints_started: AtomicU64,
    pub checkpoints_ended: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    pub checkpoint_max_micros: AtomicU64,
    pub checkpoint_frames: AtomicU64,
}

/// A commit at least this slow counts as slow in [`Counters`]: five times a typical durable
/// commit's sync on the machines measured.
pub(crate) const SLOW_COMMIT_MICROS: u64 = 10_000;

impl Counters {
    /// Times `commit` and files it, with whether a checkpoint pass ran at any point during it.
    fn time_commit<T>(&self, commit: impl FnOnce() -> T) -> T {
        let passes_ended_before = self.checkpoints_ended.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let result = commit();
        let elapsed = started.elapsed();
        store::observe::commit_time("sqlite", elapsed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.commit_micros.fetch_add(micros, Ordering::Relaxed);
        self.commit_max_micros.fetch_max(micros, Ordering::Relaxed);
        if micros >= SLOW_COMMIT_MICROS {
            self.slow_commits.fetch_add(1, Ordering::Relaxed);
            // A pass overlapped the commit if one was running when it ended, or one ended since
            // it began.
            let overlapped = self.checkpoints_started.load(Ordering::Acquire)
                != self.checkpoints_ended.load(Ordering::Acquire)
                || self.checkpoints_ended.load(Ordering::Acquire) != passes_ended_before;
            if overlapped {
                self.slow_commits_during_checkpoint.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Times one pass of the background checkpointer.
    pub(crate) fn time_checkpoint<T>(&self, pass: impl FnOnce() -> T) -> T {
        self.checkpoints_started.fetch_add(1, Ordering::AcqRel);
        let started = std::time::Instant::now();
        let result = pass();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.checkpoint_micros.fetch_add(micros, Ordering::Relaxed);
        self.checkpoint_max_micros.fetch_max(micros, Ordering::Relaxed);
        self.checkpoints_ended.fetch_add(1, Ordering::AcqRel);
        result
    }
}

/// Persisted state (live grants, pending holds) of recently used accounts, at most `max` of
/// them. Valid only because this thread is the database's only writer; dropped whole whenever a
/// batch does not commit.
struct StateCache {
    states: HashMap<AccountId, AccountState>,
    max: usize,
}

impl StateCache {
    #[cfg(test)]
    fn get(&self, account_id: &AccountId) -> Option<&AccountState> {
        self.states.get(account_id)
    }

    fn take(&mut self, account_id: &AccountId) -> Option<AccountState> {
        self.states.remove(account_id)
    }

    fn put(&mut self, state: AccountState) {
        if self.max == 0 {
            return;
        }
        if self.states.len() >= self.max && !self.states.contains_key(&state.account_id) {
            // Any victim will do: a miss costs three indexed reads, not correctness.
            if let Some(victim) = self.states.keys().next().cloned() {
                self.states.remove(&victim);
            }
        }
        self.states.insert(state.account_id.clone(), state);
    }

    fn remove(&mut self, account_id: &AccountId) {
        self.states.remove(account_id);
    }

    fn clear(&mut self) {
        self.states.clear();
    }
}

/// The writer's reads for [`store::protocol`], inside the batch's transaction: an account's
/// state from the cache when it is there, everything else from the file.
struct WriterReads<'a> {
    conn: &'a Connection,
    cache: &'a mut StateCache,
}

impl protocol::Reads for WriterReads<'_> {
    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        rows::idempotency_record(self.conn, key)
    }

    fn hold_account(&mut self, hold_id: &HoldId) -> Result<Option<AccountId>, StoreError> {
        rows::hold_account(self.conn, hold_id)
    }

    fn account(
        &mut self,
        account_id: &AccountId,
        pending_holds: PendingHolds,
    ) -> Result<Option<AccountState>, StoreError> {
        // Taken out of the cache, not cloned (the command's state goes back once its writes are
        // part of the batch; a failed command leaves the account uncached, and the next one reads
        // it from the file). The cache keeps no holds: the due ones are an indexed probe on the
        // writer's connection, which sees every write of the batch so far.
        match self.cache.take(account_id) {
            Some(mut state) => {
                state.holds = rows::pending(self.conn, account_id, pending_holds)?;
                Ok(Some(state))
            }
            None => rows::load_account(self.conn, account_id, pending_holds),
        }
    }

    fn hold(&mut self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        rows::hold(self.conn, hold_id)
    }

    fn grant_by_reference(
        &mut self,
        account_id: &AccountId,
        kind: GrantKind,
        reference: &Reference,
    ) -> Result<Option<Grant>, StoreError> {
        rows::grant_by_reference(self.conn, account_id, kind, reference)
    }
}

pub(crate) struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    cache: StateCache,
    batch_max: usize,
    idempotency_retention_seconds: u64,
    counters: Arc<Counters>,
    /// The credits the open batch's entries move, reported once it commits.
    credits: store::observe::Credits,
}

/// Which jobs of a batch run inside their own savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Savepoints {
    /// Every job but ledger commands (the fast path).
    WhereNeeded,
    /// Every job (after a ledger command's write failed on the fast path).
    Always,
}

enum BatchFailure {
    /// A ledger command's write failed outside a savepoint: run the batch again with savepoints.
    Unguarded,
    /// The batch cannot commit: every job is answered with this error.
    Fatal(StoreError),
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        clock: Arc<dyn Clock>,
        batch_max: usize,
        cache_accounts_max: usize,
        idempotency_retention_seconds: u64,
        counters: Arc<Counters>,
    ) -> Writer {
        Writer {
            conn,
            clock,
            cache: StateCache { states: HashMap::new(), max: cache_accounts_max },
            batch_max: batch_max.max(1),
            idempotency_retention_seconds,
            counters,
            credits: store::observe::Credits::default(),
        }
    }

    /// Runs until every sender is gone and the queue is drained, then closes the connection and
    /// only then releases the owner lock.
    pub(crate) fn run(mut self, mut jobs: mpsc::Receiver<Work>, lock: OwnerLock) {
        // The checkpointer lives exactly as long as this thread: joined before the connection
        // closes and the owner lock is released.
        let (stop_checkpoints, stop) = std::sync::mpsc::channel();
        // The checkpointer's connection gets the writer's `synchronous` level.
        let synchronous = self
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0))
            .map_or(crate::Synchronous::Full, crate::Synchronous::from_level);
        let checkpointer =
            self.conn.path().filter(|path| !path.is_empty()).map(std::path::PathBuf::from).and_then(|path| {
                std::thread::Builder::new()
                    .name("sqlite-checkpoint".to_owned())
                    .spawn({
                        let counters = Arc::clone(&self.counters);
                        move || crate::checkpointer::run(path, synchronous, stop, &counters)
                    })
                    .map_err(|error| tracing::warn!(%error, "cannot start the background checkpointer"))
                    .ok()
            });
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = jobs.blocking_recv() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(std::mem::take(&mut batch));
        }
        drop(stop_checkpoints);
        if let Some(checkpointer) = checkpointer {
            let _ = checkpointer.join();
        }
        if let Err((_, error)) = self.conn.close() {
            tracing::warn!(%error, "closing the SQLite write connection failed");
        }
        drop(lock);
    }

    /// One transaction for the whole batch; replies only after it commits.
    ///
    /// Ledger commands first run without savepoints: the ledger decides in memory before any
    /// write, so a command's writes fail only when the database does, and a savepoint per command
    /// (statements plus sub-journal page copies) cost about a fifth of the writer's time. If one
    /// of those writes does fail, the whole transaction is rolled back and the batch runs again
    /// with a savepoint around every job, so that job fails alone as before. Other jobs (run,
    /// artifact, job writes, claims) always run in a savepoint: a job write can ask for its own
    /// writes to be undone.
    pub(crate) fn run_batch(&mut self, mut batch: Vec<Work>) {
        let size = batch.len() as u64;
        let attempt = match self.try_batch(&mut batch, Savepoints::WhereNeeded) {
            Err(BatchFailure::Unguarded) => self.try_batch(&mut batch, Savepoints::Always),
            other => other,
        };
        match attempt {
            Ok(()) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.operations.fetch_add(size, Ordering::Relaxed);
                self.credits.committed();
                store::observe::batch_size("sqlite", batch.len());
                batch.into_iter().for_each(Work::reply);
            }
            Err(BatchFailure::Fatal(error)) => self.fail_all(batch, &error),
            Err(BatchFailure::Unguarded) => {
                unreachable!("a batch with a savepoint around every job never fails unguarded")
            }
        }
    }

    /// One attempt at the batch: `BEGIN IMMEDIATE`, every job, `COMMIT`. Each job keeps its
    /// answer (a rerun replaces it). On `Err` the transaction is rolled back and the cache
    /// dropped (it may hold uncommitted state).
    fn try_batch(&mut self, batch: &mut [Work], savepoints: Savepoints) -> Result<(), BatchFailure> {
        if !self.conn.is_autocommit() {
            // A transaction left open by an earlier failure would swallow this batch.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.credits = store::observe::Credits::default();
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|error| BatchFailure::Fatal(sql_error(error)))?;
        for work in batch.iter_mut() {
            let unguarded = savepoints == Savepoints::WhereNeeded && work.is_ledger_command();
            let result = if unguarded {
                match self.perform(work) {
                    Ok(Performed { keep, cached }) => {
                        assert!(keep, "a ledger command never asks for its writes to be undone");
                        if let Some(state) = cached {
                            self.cache.put(state);
                        }
                        Ok(())
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a ledger write failed; running the batch again with savepoints");
                        Err(BatchFailure::Unguarded)
                    }
                }
            } else {
                self.run_job(work).map_err(BatchFailure::Fatal)
            };
            if let Err(failure) = result {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.cache.clear();
                return Err(failure);
            }
        }
        let conn = &self.conn;
        if let Err(error) = self.counters.time_commit(|| conn.execute_batch("COMMIT")) {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.cache.clear();
            return Err(BatchFailure::Fatal(sql_error(error)));
        }
        Ok(())
    }

    /// Runs one job inside its own savepoint. The error is fatal for the whole batch (the
    /// savepoint itself failed; the caller then drops the whole cache); the job's own failure is
    /// its answer, and its writes are rolled back then, or when the job asked for it.
    fn run_job(&mut self, work: &mut Work) -> Result<(), StoreError> {
        self.conn.execute_batch("SAVEPOINT job").map_err(sql_error)?;
        // A ledger assertion that fails panics through here on purpose (see docs/dev/style.md):
        // the writer thread dies, its open transaction is rolled back with the connection, and
        // every later write answers `Unavailable` instead of moving credits on corrupt logic.
        let credits_before = self.credits.clone();
        let result = self.perform(work);
        let keep = matches!(&result, Ok(performed) if performed.keep);
        if !keep {
            self.credits = credits_before;
        }
        let end = if keep { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
        self.conn.execute_batch(end).map_err(sql_error)?;
        // Only now is the job's state part of the batch: the cache may take it. A state whose
        // writes were rolled back must not linger there.
        match result {
            Ok(Performed { keep, cached: Some(state) }) => {
                if keep {
                    self.cache.put(state);
                } else {
                    self.cache.remove(&state.account_id);
                }
            }
            Ok(Performed { cached: None, .. }) => {}
            Err(error) => work.fail(error),
        }
        Ok(())
    }

    /// Does the work, keeping its answer in it.
    fn perform(&mut self, work: &mut Work) -> Result<Performed, StoreError> {
        let now = self.clock.now();
        match work {
            Work::Execute(job) => job.perform(|request| self.execute(request, now)),
            Work::Sweep(job) => job.perform(|account_id| self.sweep(account_id, now)),
            Work::WriteJob(job) => job.perform(|write| self.write_job(write, now)),
            Work::ForgetKeys(job) => job.perform(|()| {
                let retention_micros = i64::try_from(self.idempotency_retention_seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(MICROS_PER_SECOND);
                let cutoff = Timestamp::from_micros(now.micros().saturating_sub(retention_micros));
                let events_retention_micros = i64::try_from(store::events::EVENTS_RETENTION_SECONDS)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(MICROS_PER_SECOND);
                let events_cutoff = Timestamp::from_micros(now.micros().saturating_sub(events_retention_micros));
                let _events = rows::delete_events_before(&self.conn, events_cutoff)?;
                let _deliveries = crate::webhooks::delete_deliveries_before(&self.conn, events_cutoff)?;
                kept(rows::delete_idempotency_before(&self.conn, cutoff))
            }),
            Work::CreateRun(job) => {
                job.perform(|new| kept(runs::create_run(&self.conn, &new.run, new.idempotency.as_ref(), now)))
            }
            Work::UpdateRun(job) => job.perform(|run| kept(runs::update_run(&self.conn, run))),
            Work::WriteRunEvents(job) => job.perform(|write| kept(runs::write_run_events(&self.conn, write))),
            Work::WriteRunEnd(job) => job.perform(|end| self.write_run_end(&end.0, &end.1, now)),
            Work::ForgetRunEvents(job) => {
                job.perform(|(ended_before, limit)| kept(runs::forget_run_events(&self.conn, *ended_before, *limit)))
            }
            Work::RequestCancel(job) => job.perform(|(run_id, at)| kept(runs::request_cancel(&self.conn, run_id, *at))),
            Work::RecordResponse(job) => {
                job.perform(|new| kept(runs::record_response(&self.conn, &new.key, &new.response, now)))
            }
            Work::PutArtifact(job) => job.perform(|artifact| kept(runs::put_artifact(&self.conn, artifact))),
            Work::PutPlan(job) => job.perform(|plan| kept(rows::put_plan(&self.conn, plan))),
            Work::ClaimJob(job) => job.perform(|claim| {
                kept(jobs::claim(&self.conn, &claim.worker_id, claim.now, claim.lease_until, claim.attempts_max))
            }),
            Work::RenewInstance(job) => job.perform(|renewal| {
                kept(runs::renew_instance(&self.conn, &renewal.instance_id, renewal.now, renewal.lease_until))
            }),
            Work::DropInstance(job) => job.perform(|instance_id| kept(runs::drop_instance(&self.conn, instance_id))),
            Work::Webhook(job) => job.perform(|work| kept(crate::webhooks::perform(&self.conn, work))),
            Work::ApiKey(job) => job.perform(|work| kept(crate::api_keys::perform(&self.conn, work))),
        }
    }

    /// The job row first, then the ledger request through the same path as [`Writer::execute`];
    /// a refused job write never reaches the ledger, and a refused ledger request undoes the job
    /// write (the caller rolls the savepoint back).
    fn write_job(
        &mut self,
        write: &JobWrite,
        now: Timestamp,
    ) -> Result<(Result<JobWritten, JobWriteRefusal>, Performed), StoreError> {
        let ended_before = jobs::is_terminal(&self.conn, &write.job.job_id)?;
        let job = match jobs::write(&self.conn, &write.job, write.expected_version)? {
            Ok(job) => job,
            Err(refusal) => return Ok((Err(refusal), Performed::UNDONE)),
        };
        if let Some(event) = store::events::job_event(&job).filter(|_| !ended_before) {
            rows::insert_event(&self.conn, &event, now)?;
        }
        let Some(request) = &write.ledger else {
            return Ok((Ok(JobWritten { job, ledger: None }), Performed::KEPT));
        };
        let (executed, performed) = self.execute(request, now)?;
        let refusal = match executed {
            Executed::Fresh(Ok(outcome)) | Executed::Replayed(Ok(outcome)) => {
                return Ok((Ok(JobWritten { job, ledger: Some(outcome) }), performed));
            }
            Executed::Fresh(Err(rejection)) | Executed::Replayed(Err(rejection)) => {
                JobWriteRefusal::Ledger(Some(rejection))
            }
            Executed::Conflict => JobWriteRefusal::Ledger(None),
        };
        Ok((Err(refusal), Performed { keep: false, ..performed }))
    }

    /// The run's end first (an unknown run never reaches the ledger), then its settlement through
    /// the same path as [`Writer::execute`]; any answer but the expected one undoes both (the
    /// caller rolls the savepoint back).
    fn write_run_end(
        &mut self,
        write: &RunEventsWrite,
        settle: &RunSettle,
        now: Timestamp,
    ) -> Result<(RunEndWritten, Performed), StoreError> {
        store::runs::ending_run(write)?;
        if !runs::write_run_events(&self.conn, write)? {
            return Ok((RunEndWritten::NoSuchRun, Performed::UNDONE));
        }
        let (executed, performed) = self.execute(&settle.request, now)?;
        match executed {
            Executed::Fresh(Ok(outcome)) | Executed::Replayed(Ok(outcome)) if settle.expected.matches(&outcome) => {
                Ok((RunEndWritten::Written(outcome), performed))
            }
            other => Ok((RunEndWritten::Refused(other), Performed { keep: false, ..performed })),
        }
    }

    /// One request through [`store::protocol`]: replay, or read, decide and write. The
    /// account's new state is for the cache once the job's savepoint is released.
    fn execute(&mut self, request: &Request, now: Timestamp) -> Result<(Executed, Performed), StoreError> {
        let mut reads = WriterReads { conn: &self.conn, cache: &mut self.cache };
        match protocol::decide(&mut reads, request, now)? {
            Decided::Answered(executed) => Ok((executed, Performed::KEPT)),
            Decided::Fresh(result, writes) => {
                self.persist(&writes, now)?;
                Ok((Executed::Fresh(result), Performed { keep: true, cached: writes.into_cached() }))
            }
        }
    }

    /// The sweeper's command for one account; answers how many entries it wrote.
    fn sweep(&mut self, account_id: &AccountId, now: Timestamp) -> Result<(usize, Performed), StoreError> {
        let mut reads = WriterReads { conn: &self.conn, cache: &mut self.cache };
        let writes = protocol::sweep(&mut reads, account_id, now)?;
        self.persist(&writes, now)?;
        let entries = writes.entries().len();
        Ok((entries, Performed { keep: true, cached: writes.into_cached() }))
    }

    /// Writes exactly what the protocol lists.
    fn persist(&mut self, writes: &Writes, now: Timestamp) -> Result<(), StoreError> {
        self.credits.add(writes);
        match (writes.account_row(), writes.state()) {
            (AccountRow::Unchanged, _) => {}
            (AccountRow::Insert | AccountRow::Update, state) => {
                rows::upsert_account(&self.conn, state.expect("a written account row has a state"))?;
            }
        }
        for grant in writes.grants() {
            rows::upsert_grant(&self.conn, grant)?;
        }
        for hold in writes.holds() {
            rows::upsert_hold(&self.conn, hold)?;
        }
        for allowance in writes.allowances() {
            rows::upsert_allowance(&self.conn, allowance)?;
        }
        for entry in writes.entries() {
            rows::insert_entry(&self.conn, entry)?;
        }
        for event in writes.events() {
            rows::insert_event(&self.conn, &event, now)?;
        }
        for record in writes.records() {
            rows::insert_idempotency(&self.conn, &record.key, &record.fingerprint, &record.result, now)?;
        }
        Ok(())
    }

    /// Answers every job `Unavailable` and forgets the cache (it may hold uncommitted state).
    fn fail_all(&mut self, batch: Vec<Work>, error: &StoreError) {
        self.cache.clear();
        tracing::error!(%error, "SQLite batch did not commit");
        let failed = StoreError::unavailable(format!("the batch did not commit: {error}")).with_source(error.clone());
        for work in batch {
            work.reply_error(failed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    //! Batches run by hand, so "the same batch" is certain rather than likely.

    use std::path::Path;

    use ledger::{Amount, Command, GrantId, HoldId, Outcome, Rejection};
    use store::ManualClock;

    use super::*;
    use crate::schema;

    fn writer(dir: &Path) -> Writer {
        writer_caching(dir, 100)
    }

    fn writer_caching(dir: &Path, cache_accounts_max: usize) -> Writer {
        let path = dir.join("writer.db");
        let mut conn = schema::open_writer(&path, crate::Synchronous::Full).expect("opens");
        schema::migrate(&mut conn, &path).expect("migrates");
        let clock = Arc::new(ManualClock::starting_now());
        Writer::new(conn, clock, 16, cache_accounts_max, 86_400, Arc::default())
    }

    /// The work `kind` makes of `input`, and its typed answer.
    fn work<I, T>(kind: fn(Job<I, T>) -> Work, input: I) -> (Work, Answer<T>) {
        let (job, answer) = Job::new(input);
        (kind(job), answer)
    }

    fn job(command: Command) -> (Work, Answer<Executed>) {
        work(Work::Execute, Request::new(command))
    }

    fn grant(account_id: &str, credits: u64) -> Command {
        Command::Grant {
            account_id: AccountId::parse(account_id).expect("valid id"),
            grant_id: GrantId::parse(&format!("g-{account_id}-{credits}")).expect("valid id"),
            amount: Amount::from_credits(credits),
            priority: 100,
            expires_at: None,
            reference: None,
            metadata: "{}".to_owned(),
        }
    }

    fn hold(account_id: &str, hold_id: &str, credits: u64) -> Command {
        Command::Hold {
            account_id: AccountId::parse(account_id).expect("valid id"),
            hold_id: HoldId::parse(hold_id).expect("valid id"),
            amount: Amount::from_credits(credits),
            ttl_seconds: 600,
            reference: None,
            metadata: "{}".to_owned(),
        }
    }

    fn answer<T>(mut answer: Answer<T>) -> Result<T, StoreError> {
        answer.try_recv().expect("answered once the batch ended")
    }

    /// The account as stored, with every pending hold (all are "due" at the end of time).
    fn account(writer: &Writer, account_id: &str) -> Option<AccountState> {
        let every_pending_hold = PendingHolds::DueAt(ledger::Timestamp::from_micros(i64::MAX));
        rows::load_account(&writer.conn, &AccountId::parse(account_id).expect("valid id"), every_pending_hold)
            .expect("reads")
    }

    #[test]
    fn a_failing_job_rolls_back_alone_within_one_batch() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        writer
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON entries WHEN NEW.account_id = 'bad' \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("trigger");
        let (jobs, answers): (Vec<Work>, Vec<Answer<Executed>>) =
            [grant("a", 10), grant("bad", 5), hold("a", "h1", 3), hold("a", "h2", 100), grant("c", 7)]
                .into_iter()
                .map(job)
                .unzip();
        writer.run_batch(jobs);
        let [granted_a, failed, held, rejected, granted_c] = answers.try_into().expect("five answers");

        assert!(matches!(answer(granted_a), Ok(Executed::Fresh(Ok(Outcome::Granted { .. })))));
        assert!(
            matches!(answer(failed), Err(StoreError::Corrupt { detail, .. }) if detail.contains("injected failure"))
        );
        assert!(matches!(answer(held), Ok(Executed::Fresh(Ok(Outcome::Held { .. })))));
        assert!(matches!(answer(rejected), Ok(Executed::Fresh(Err(Rejection::InsufficientCredits { .. })))));
        assert!(matches!(answer(granted_c), Ok(Executed::Fresh(Ok(Outcome::Granted { .. })))));
        assert_eq!(writer.counters.commits.load(Ordering::Relaxed), 1);
        assert_eq!(writer.counters.operations.load(Ordering::Relaxed), 5);

        // The failed job's account row and grant (written before its entry failed) are gone.
        assert_eq!(account(&writer, "bad"), None);
        let grants: i64 = writer
            .conn
            .query_row("SELECT COUNT(*) FROM grants WHERE account_id = 'bad'", [], |row| row.get(0))
            .expect("reads");
        assert_eq!(grants, 0);
        let a = account(&writer, "a").expect("a exists");
        assert_eq!(a.materialized().held, Amount::from_credits(3));
        assert_eq!(account(&writer, "c").expect("c exists").materialized().balance, Amount::from_credits(7));
    }

    /// A rejected command leaves the account cached exactly as stored (a rejection changes
    /// nothing), so the next command of the account does not read it from the file again.
    #[test]
    fn a_rejection_keeps_the_account_cached_as_stored() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        let (granted, granted_answer) = job(grant("a", 10));
        let (held, held_answer) = job(hold("a", "h1", 4));
        writer.run_batch(vec![granted, held]);
        assert!(answer(granted_answer).is_ok() && answer(held_answer).is_ok());

        let (too_much, too_much_answer) = job(hold("a", "h2", 7));
        writer.run_batch(vec![too_much]);
        let required = Amount::from_credits(7);
        let available = Amount::from_credits(6);
        let rejected = Executed::Fresh(Err(Rejection::InsufficientCredits { required, available }));
        assert_eq!(answer(too_much_answer).expect("answered"), rejected);
        let cached = writer.cache.get(&AccountId::parse("a").expect("valid id")).cloned();
        let stored = account(&writer, "a").map(|mut state| {
            assert_eq!(state.holds.len(), 1, "h1 is stored pending");
            state.holds.clear(); // the cache keeps no holds
            state
        });
        assert_eq!(cached, stored, "still cached, as stored");
    }

    fn run_record(run_id: &str, thread_id: &str) -> RunRecord {
        let at = Timestamp::from_micros(1_000_000);
        RunRecord {
            run_id: store::RunId::parse(run_id).expect("valid id"),
            account_id: AccountId::parse("a").expect("valid id"),
            thread_id: store::ThreadId::parse(thread_id).expect("valid id"),
            turn_index: 0,
            state: store::RunState::Running,
            instance_id: "i1".to_owned(),
            hold_id: None,
            hold_resolution: store::HoldResolution::None,
            created_at: at,
            updated_at: at,
            data: "{}".to_owned(),
        }
    }

    /// Run-store jobs are ordinary jobs: they commit in the same transaction as ledger jobs, see
    /// the batch's earlier jobs, and a failing one (a repeated artifact id) rolls back alone.
    #[test]
    fn run_jobs_share_a_batch_with_ledger_jobs_and_fail_alone() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        let artifact = Artifact {
            artifact_id: store::ArtifactId::parse("art").expect("valid id"),
            account_id: AccountId::parse("a").expect("valid id"),
            run_id: store::RunId::parse("r1").expect("valid id"),
            content_type: "application/pdf".to_owned(),
            bytes: vec![0xff, 0x00, 0x25],
            created_at: Timestamp::from_micros(1),
        };
        let finished = RunRecord { state: store::RunState::Succeeded, ..run_record("r1", "t") };
        let (create, created) = work(Work::CreateRun, NewRun { run: run_record("r1", "t"), idempotency: None });
        let (put_first, put) = work(Work::PutArtifact, artifact.clone());
        let (grant_a, granted) = job(grant("a", 10));
        let (put_again, repeated) = work(Work::PutArtifact, Artifact { bytes: b"second".to_vec(), ..artifact.clone() });
        let (create_busy, busy) = work(Work::CreateRun, NewRun { run: run_record("r2", "t"), idempotency: None });
        let (finish, updated) = work(Work::UpdateRun, finished);
        let (create_next, next) = work(Work::CreateRun, NewRun { run: run_record("r3", "t"), idempotency: None });
        writer.run_batch(vec![create, put_first, grant_a, put_again, create_busy, finish, create_next]);

        assert!(matches!(answer(created), Ok(Ok(run)) if run.turn_index == 0));
        assert!(matches!(answer(put), Ok(())));
        assert!(matches!(answer(granted), Ok(Executed::Fresh(Ok(Outcome::Granted { .. })))));
        assert!(matches!(answer(repeated), Err(StoreError::Corrupt { .. })));
        assert!(matches!(answer(busy), Ok(Err(CreateRunRefusal::ThreadBusy { run_id })) if run_id == "r1"));
        assert!(matches!(answer(updated), Ok(true)));
        assert!(matches!(answer(next), Ok(Ok(run)) if run.turn_index == 1));
        assert_eq!(writer.counters.commits.load(Ordering::Relaxed), 1);
        assert_eq!(writer.counters.operations.load(Ordering::Relaxed), 7);
        let stored = runs::artifact(&writer.conn, &store::ArtifactId::parse("art").expect("valid id"))
            .expect("reads")
            .expect("exists");
        assert_eq!(stored, artifact, "the repeated put changed nothing");
        let states: Vec<(String, String)> = writer
            .conn
            .prepare("SELECT run_id, state FROM runs ORDER BY turn_index")
            .and_then(|mut statement| {
                statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()
            })
            .expect("reads");
        let expected = [("r1", "succeeded"), ("r3", "running")].map(|(run, state)| (run.to_owned(), state.to_owned()));
        assert_eq!(states, expected);
    }

    #[test]
    fn a_failed_commit_fails_the_whole_batch_and_drops_the_cache() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        // A deferred foreign key is checked only at COMMIT: the way to make COMMIT itself fail.
        writer
            .conn
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE anchor (id TEXT PRIMARY KEY);
                 CREATE TABLE poison (ref TEXT REFERENCES anchor (id) DEFERRABLE INITIALLY DEFERRED);
                 CREATE TRIGGER poison_commit AFTER INSERT ON entries WHEN NEW.account_id = 'poison'
                 BEGIN INSERT INTO poison VALUES ('dangling'); END;",
            )
            .expect("setup");
        let (first, first_answer) = job(grant("a", 10));
        writer.run_batch(vec![first]);
        assert!(matches!(answer(first_answer), Ok(Executed::Fresh(Ok(_)))));
        assert!(writer.cache.get(&AccountId::parse("a").expect("valid id")).is_some(), "a is cached");

        let (held, held_answer) = job(hold("a", "h1", 4));
        let (poison, poison_answer) = job(grant("poison", 1));
        writer.run_batch(vec![held, poison]);
        assert!(matches!(answer(held_answer), Err(StoreError::Unavailable { .. })));
        assert!(matches!(answer(poison_answer), Err(StoreError::Unavailable { .. })));
        assert!(writer.cache.states.is_empty(), "the cache is dropped after a failed commit");
        assert_eq!(account(&writer, "poison"), None);
        assert!(account(&writer, "a").expect("a exists").holds.is_empty(), "the hold was rolled back");

        // Had the cache kept the uncommitted hold of 4, only 6 credits would look available.
        let (full, full_answer) = job(hold("a", "h2", 10));
        writer.run_batch(vec![full]);
        assert!(matches!(answer(full_answer), Ok(Executed::Fresh(Ok(Outcome::Held { .. })))));
        assert_eq!(writer.counters.commits.load(Ordering::Relaxed), 2);
        assert_eq!(writer.counters.operations.load(Ordering::Relaxed), 2);
    }

    fn capture(hold_id: &str, credits: u64) -> Command {
        Command::Capture {
            hold_id: HoldId::parse(hold_id).expect("valid id"),
            amount: Amount::from_credits(credits),
            is_final: false,
            overage: ledger::Overage::Reject,
        }
    }

    fn write_job(job_id: &str, ledger: Option<Request>) -> (Work, Answer<Result<JobWritten, JobWriteRefusal>>) {
        let at = Timestamp::from_micros(1_000_000);
        let job = JobRecord {
            job_id: store::JobId::parse(job_id).expect("valid id"),
            account_id: AccountId::parse("a").expect("valid id"),
            thread_id: store::ThreadId::parse("t").expect("valid id"),
            run_id: store::RunId::parse("r1").expect("valid id"),
            hold_id: HoldId::parse("h1").expect("valid id"),
            price: Amount::from_credits(10),
            status: store::JobStatus::Queued,
            stage: "enqueue".to_owned(),
            progress_percent: 0,
            input: "{}".to_owned(),
            lease_holder: None,
            lease_expires_at: None,
            heartbeat_at: None,
            cancel_requested: false,
            retry_source_job_id: None,
            attempts: 0,
            run_after: at,
            error_stage: None,
            error_code: None,
            error_detail: None,
            refund_applied_at: None,
            artifact_id: None,
            created_at: at,
            updated_at: at,
            started_at: None,
            finished_at: None,
            version: 0,
        };
        work(Work::WriteJob, Box::new(JobWrite { job, expected_version: None, ledger }))
    }

    fn stored_jobs(writer: &Writer) -> Vec<String> {
        writer
            .conn
            .prepare("SELECT job_id FROM jobs ORDER BY job_id")
            .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>())
            .expect("reads")
    }

    /// Job writes share a batch with ledger jobs, with and without the account cache: an accepted
    /// one's capture is what the next job of the batch sees; a rejected one leaves neither its job
    /// nor its capture and rolls back alone; a refused one never reaches the ledger.
    #[test]
    fn job_writes_share_a_batch_and_roll_back_alone() {
        for cache_accounts_max in [100, 0] {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let mut writer = writer_caching(dir.path(), cache_accounts_max);
            let (grant_a, granted) = job(grant("a", 100));
            let (hold_h1, held) = job(hold("a", "h1", 30));
            let (write_j1, created) = write_job("j1", Some(Request::new(capture("h1", 10))));
            let (write_j2, too_much) = write_job("j2", Some(Request::new(capture("h1", 25))));
            let (write_j1_again, duplicate) = write_job("j1", Some(Request::new(capture("h1", 1))));
            let (capture_rest, rest) = job(capture("h1", 20));
            let (write_j3, nothing_left) = write_job("j3", Some(Request::new(capture("h1", 1))));
            writer.run_batch(vec![grant_a, hold_h1, write_j1, write_j2, write_j1_again, capture_rest, write_j3]);

            assert!(matches!(answer(granted), Ok(Executed::Fresh(Ok(_)))));
            assert!(matches!(answer(held), Ok(Executed::Fresh(Ok(_)))));
            assert!(
                matches!(answer(created), Ok(Ok(JobWritten { ledger: Some(Outcome::Captured { .. }), .. }))),
                "cache {cache_accounts_max}"
            );
            let exceeds = |requested, remaining| {
                Err::<JobWritten, _>(JobWriteRefusal::Ledger(Some(Rejection::AmountExceedsHold {
                    requested: Amount::from_credits(requested),
                    remaining: Amount::from_credits(remaining),
                })))
            };
            assert_eq!(format!("{:?}", answer(too_much)), format!("{:?}", Ok::<_, StoreError>(exceeds(25, 20))));
            assert!(matches!(answer(duplicate), Ok(Err(JobWriteRefusal::DuplicateJobId))));
            // 20 left: j1's capture counts, the refused ones do not.
            assert!(matches!(answer(rest), Ok(Executed::Fresh(Ok(Outcome::Captured { .. })))));
            assert_eq!(format!("{:?}", answer(nothing_left)), format!("{:?}", Ok::<_, StoreError>(exceeds(1, 0))));
            assert_eq!(writer.counters.commits.load(Ordering::Relaxed), 1);
            assert_eq!(writer.counters.operations.load(Ordering::Relaxed), 7);

            assert_eq!(stored_jobs(&writer), vec!["j1"]);
            let a = account(&writer, "a").expect("a exists").materialized();
            assert_eq!((a.balance, a.held), (Amount::from_credits(70), Amount::ZERO));
        }
    }

    /// A job write whose ledger part is written and then fails (its idempotency record cannot be
    /// stored) rolls back whole, and the account cache never sees the capture it rolled back.
    #[test]
    fn a_job_write_failing_after_its_ledger_change_leaves_no_trace_in_the_cache() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        writer
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse_key BEFORE INSERT ON idempotency WHEN NEW.key = 'poison' \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .expect("trigger");
        let (setup, setup_answers): (Vec<Work>, Vec<Answer<Executed>>) =
            [grant("a", 100), hold("a", "h1", 30)].into_iter().map(job).unzip();
        writer.run_batch(setup);
        assert!(setup_answers.into_iter().all(|setup| answer(setup).is_ok()));
        assert!(writer.cache.get(&AccountId::parse("a").expect("valid id")).is_some(), "a is cached");

        let (write_j1, failed) = write_job("j1", Some(Request::with_key(capture("h1", 30), "poison", "fp")));
        let (capture_whole, whole) = job(capture("h1", 30));
        writer.run_batch(vec![write_j1, capture_whole]);
        assert!(
            matches!(answer(failed), Err(StoreError::Corrupt { detail, .. }) if detail.contains("injected failure"))
        );
        // Had the cache kept the rolled-back capture of 30, nothing would remain to capture.
        assert!(matches!(answer(whole), Ok(Executed::Fresh(Ok(Outcome::Captured { .. })))));
        assert_eq!(stored_jobs(&writer), Vec::<String>::new());
        let a = account(&writer, "a").expect("a exists").materialized();
        assert_eq!((a.balance, a.held), (Amount::from_credits(70), Amount::ZERO));
    }

    /// Claims run on the writer: two claims in one batch take two different jobs, oldest first.
    #[test]
    fn claims_in_one_batch_take_different_jobs() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        let (inserts, inserted): (Vec<Work>, Vec<_>) =
            ["j1", "j2"].into_iter().map(|job_id| write_job(job_id, None)).unzip();
        writer.run_batch(inserts);
        assert!(inserted.into_iter().all(|insert| matches!(answer(insert), Ok(Ok(_)))));
        let now = Timestamp::from_micros(2_000_000);
        let claim = |worker: &str| {
            let claim = Claim { worker_id: worker.to_owned(), now, lease_until: now.plus_seconds(30), attempts_max: 3 };
            work(Work::ClaimJob, claim)
        };
        let (claims, answers): (Vec<Work>, Vec<_>) = [claim("w1"), claim("w2"), claim("w3")].into_iter().unzip();
        writer.run_batch(claims);
        let claimed: Vec<Option<(String, String)>> = answers
            .into_iter()
            .map(|claimed| {
                let job = answer(claimed).expect("a claim answers");
                job.map(|job| (job.job_id.to_string(), job.lease_holder.unwrap_or_default()))
            })
            .collect();
        let expected = [Some(("j1", "w1")), Some(("j2", "w2")), None]
            .map(|pair| pair.map(|(job, worker)| (job.to_owned(), worker.to_owned())));
        assert_eq!(claimed, expected);
    }
}
