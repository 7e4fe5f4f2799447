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
//! A job write that carries a ledger request applies both inside the job's savepoint; when the
//! ledger refuses, the savepoint is rolled back, so the job row and the ledger change (and the
//! idempotency record) go together or not at all, while the rest of the batch commits. The cache
//! takes an account's new state only after the savepoint that wrote it was released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ledger::{AccountId, AccountState, Applied, Command, HoldState, Rejection, Target, Timestamp, MICROS_PER_SECOND};
use rusqlite::Connection;
use store::{
    codec, Artifact, Clock, CreateRunRefusal, Executed, JobRecord, JobWrite, JobWriteRefusal, JobWritten, Request,
    RunRecord, StoreError,
};
use tokio::sync::{mpsc, oneshot};

use crate::lockfile::OwnerLock;
use crate::rows::{self, corrupt, sql_error};
use crate::{jobs, runs};

/// What a job asks the writer to do.
#[derive(Debug)]
pub(crate) enum Work {
    Execute(Request),
    /// Forget idempotency keys older than the retention.
    ForgetKeys,
    CreateRun(RunRecord),
    UpdateRun(RunRecord),
    PutArtifact(Artifact),
    /// Boxed: a job record is large, and queued work should not all be that size.
    WriteJob(Box<JobWrite>),
    ClaimJob {
        worker_id: String,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    },
    RenewInstance {
        instance_id: String,
        now: Timestamp,
        lease_until: Timestamp,
    },
    DropInstance(String),
}

/// What the writer did, once committed.
#[derive(Debug)]
pub(crate) enum Done {
    Executed(Executed),
    Forgot(u64),
    RunCreated(Result<RunRecord, CreateRunRefusal>),
    /// Whether the run existed.
    RunUpdated(bool),
    ArtifactPut,
    JobWritten(Result<JobWritten, JobWriteRefusal>),
    JobClaimed(Option<JobRecord>),
    InstanceRenewed,
    /// Whether the instance had a lease.
    InstanceDropped(bool),
}

/// What a job did inside its savepoint: its answer, whether its writes stay, and the account
/// state the cache takes once they are released.
struct Performed {
    done: Done,
    keep: bool,
    cached: Option<AccountState>,
}

impl Performed {
    fn kept(done: Done) -> Performed {
        Performed { done, keep: true, cached: None }
    }

    /// Answered, but every write of the job is rolled back.
    fn undone(done: Done) -> Performed {
        Performed { done, keep: false, cached: None }
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Done, StoreError>>;

#[derive(Debug)]
pub(crate) struct Job {
    pub work: Work,
    pub reply: Reply,
}

/// Cumulative figures, shared with the store for [`crate::SqliteStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub operations: AtomicU64,
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

pub(crate) struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    cache: StateCache,
    batch_max: usize,
    idempotency_retention_seconds: u64,
    counters: Arc<Counters>,
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
        }
    }

    /// Runs until every sender is gone and the queue is drained, then closes the connection and
    /// only then releases the owner lock.
    pub(crate) fn run(mut self, mut jobs: mpsc::Receiver<Job>, lock: OwnerLock) {
        // The checkpointer lives exactly as long as this thread: joined before the connection
        // closes and the owner lock is released.
        let (stop_checkpoints, stop) = std::sync::mpsc::channel();
        // The checkpointer's connection gets the writer's durability (2 = FULL, 3 = EXTRA).
        let durable = self
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0))
            .map_or(true, |level| level >= 2);
        let checkpointer =
            self.conn.path().filter(|path| !path.is_empty()).map(std::path::PathBuf::from).and_then(|path| {
                std::thread::Builder::new()
                    .name("sqlite-checkpoint".to_owned())
                    .spawn(move || crate::checkpointer::run(path, durable, stop))
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
    pub(crate) fn run_batch(&mut self, batch: Vec<Job>) {
        let size = batch.len() as u64;
        let (works, replies): (Vec<Work>, Vec<Reply>) = batch.into_iter().map(|job| (job.work, job.reply)).unzip();
        let attempt = match self.try_batch(&works, Savepoints::WhereNeeded) {
            Err(BatchFailure::Unguarded) => self.try_batch(&works, Savepoints::Always),
            other => other,
        };
        match attempt {
            Ok(results) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.operations.fetch_add(size, Ordering::Relaxed);
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that stopped waiting still had its job applied; nothing to tell it.
                    let _ = reply.send(result);
                }
            }
            Err(BatchFailure::Fatal(error)) => self.fail_all(replies.into_iter(), &error),
            Err(BatchFailure::Unguarded) => {
                unreachable!("a batch with a savepoint around every job never fails unguarded")
            }
        }
    }

    /// One attempt at the batch: `BEGIN IMMEDIATE`, every job, `COMMIT`. On `Err` the
    /// transaction is rolled back and the cache dropped (it may hold uncommitted state).
    fn try_batch(
        &mut self,
        works: &[Work],
        savepoints: Savepoints,
    ) -> Result<Vec<Result<Done, StoreError>>, BatchFailure> {
        if !self.conn.is_autocommit() {
            // A transaction left open by an earlier failure would swallow this batch.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|error| BatchFailure::Fatal(sql_error(error)))?;
        let mut results = Vec::with_capacity(works.len());
        for work in works {
            let unguarded = savepoints == Savepoints::WhereNeeded && matches!(work, Work::Execute(_));
            let result = if unguarded {
                match self.perform(work) {
                    Ok(Performed { done, keep, cached }) => {
                        assert!(keep, "a ledger command never asks for its writes to be undone");
                        if let Some(state) = cached {
                            self.cache.put(state);
                        }
                        Ok(Ok(done))
                    }
                    Err(error) => {
                        tracing::warn!(%error, "a ledger write failed; running the batch again with savepoints");
                        Err(BatchFailure::Unguarded)
                    }
                }
            } else {
                self.run_job(work).map_err(BatchFailure::Fatal)
            };
            match result {
                Ok(result) => results.push(result),
                Err(failure) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    self.cache.clear();
                    return Err(failure);
                }
            }
        }
        if let Err(error) = self.conn.execute_batch("COMMIT") {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.cache.clear();
            return Err(BatchFailure::Fatal(sql_error(error)));
        }
        Ok(results)
    }

    /// Runs one job inside its own savepoint. The outer error is fatal for the whole batch (the
    /// savepoint itself failed; the caller then drops the whole cache); the inner result is the
    /// job's own, rolled back when an error or when the job asked for it.
    fn run_job(&mut self, work: &Work) -> Result<Result<Done, StoreError>, StoreError> {
        self.conn.execute_batch("SAVEPOINT job").map_err(sql_error)?;
        // A ledger assertion that fails panics through here on purpose (see docs/dev/style.md):
        // the writer thread dies, its open transaction is rolled back with the connection, and
        // every later write answers `Unavailable` instead of moving credits on corrupt logic.
        let result = self.perform(work);
        let keep = matches!(&result, Ok(performed) if performed.keep);
        let end = if keep { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
        self.conn.execute_batch(end).map_err(sql_error)?;
        // Only now is the job's state part of the batch: the cache may take it. A state whose
        // writes were rolled back must not linger there.
        Ok(result.map(|Performed { done, keep, cached }| {
            if let Some(state) = cached {
                if keep {
                    self.cache.put(state);
                } else {
                    self.cache.remove(&state.account_id);
                }
            }
            done
        }))
    }

    fn perform(&mut self, work: &Work) -> Result<Performed, StoreError> {
        let now = self.clock.now();
        let done = match work {
            Work::Execute(request) => {
                let (executed, persisted) = self.execute(request, now)?;
                return Ok(Performed { done: Done::Executed(executed), keep: true, cached: persisted });
            }
            Work::WriteJob(write) => return self.write_job(write, now),
            Work::ForgetKeys => {
                let retention_micros = i64::try_from(self.idempotency_retention_seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(MICROS_PER_SECOND);
                let cutoff = Timestamp::from_micros(now.micros().saturating_sub(retention_micros));
                rows::delete_idempotency_before(&self.conn, cutoff).map(Done::Forgot)
            }
            Work::CreateRun(run) => runs::create_run(&self.conn, run).map(Done::RunCreated),
            Work::UpdateRun(run) => runs::update_run(&self.conn, run).map(Done::RunUpdated),
            Work::PutArtifact(artifact) => runs::put_artifact(&self.conn, artifact).map(|()| Done::ArtifactPut),
            Work::ClaimJob { worker_id, now, lease_until, attempts_max } => {
                jobs::claim(&self.conn, worker_id, *now, *lease_until, *attempts_max).map(Done::JobClaimed)
            }
            Work::RenewInstance { instance_id, now, lease_until } => {
                runs::renew_instance(&self.conn, instance_id, *now, *lease_until).map(|()| Done::InstanceRenewed)
            }
            Work::DropInstance(instance_id) => runs::drop_instance(&self.conn, instance_id).map(Done::InstanceDropped),
        };
        done.map(Performed::kept)
    }

    /// The job row first, then the ledger request through the same path as [`Writer::execute`];
    /// a refused job write never reaches the ledger, and a refused ledger request undoes the job
    /// write (the caller rolls the savepoint back).
    fn write_job(&mut self, write: &JobWrite, now: Timestamp) -> Result<Performed, StoreError> {
        let job = match jobs::write(&self.conn, &write.job, write.expected_version)? {
            Ok(job) => job,
            Err(refusal) => return Ok(Performed::undone(Done::JobWritten(Err(refusal)))),
        };
        let Some(request) = &write.ledger else {
            return Ok(Performed::kept(Done::JobWritten(Ok(JobWritten { job, ledger: None }))));
        };
        let (executed, persisted) = self.execute(request, now)?;
        let refusal = match executed {
            Executed::Fresh(Ok(outcome)) | Executed::Replayed(Ok(outcome)) => {
                let done = Done::JobWritten(Ok(JobWritten { job, ledger: Some(outcome) }));
                return Ok(Performed { done, keep: true, cached: persisted });
            }
            Executed::Fresh(Err(rejection)) | Executed::Replayed(Err(rejection)) => {
                JobWriteRefusal::Ledger(Some(rejection))
            }
            Executed::Conflict => JobWriteRefusal::Ledger(None),
        };
        Ok(Performed { done: Done::JobWritten(Err(refusal)), keep: false, cached: persisted })
    }

    /// Idempotency first, then load, decide, write, and record the result for replay. Returns
    /// what happened and, when the account changed, its state as now written; the caller hands
    /// that to the cache once the job's savepoint is released.
    fn execute(&mut self, request: &Request, now: Timestamp) -> Result<(Executed, Option<AccountState>), StoreError> {
        if let Some(idempotency) = &request.idempotency {
            if let Some((fingerprint, recorded)) = rows::idempotency_record(&self.conn, &idempotency.key)? {
                if fingerprint != idempotency.fingerprint {
                    return Ok((Executed::Conflict, None));
                }
                return Ok((Executed::Replayed(codec::decode_result(&recorded)?), None));
            }
        }
        let key = request.idempotency.as_ref().map(|idempotency| idempotency.key.as_str());
        let (result, persisted) = match self.load(&request.command)? {
            Err(rejection) => (Err(rejection), None),
            Ok(state) => match ledger::execute(state, &request.command, now, key) {
                Err(rejection) => (Err(rejection), None),
                Ok(applied) => {
                    let outcome = applied.outcome.clone();
                    (Ok(outcome), Some(self.persist(applied)?))
                }
            },
        };
        if let Some(idempotency) = &request.idempotency {
            let encoded = codec::encode_result(&result);
            rows::insert_idempotency(&self.conn, &idempotency.key, &idempotency.fingerprint, &encoded, now)?;
        }
        Ok((Executed::Fresh(result), persisted))
    }

    /// The account's state plus the records the command names, or `hold_not_found` when the
    /// command's target hold does not exist. `Ok(None)`: the account does not exist.
    fn load(&mut self, command: &Command) -> Result<Result<Option<AccountState>, Rejection>, StoreError> {
        let account_id = match command.target() {
            Target::Account(account_id) => account_id.clone(),
            Target::Hold(hold_id) => match rows::hold_account(&self.conn, hold_id)? {
                Some(account_id) => account_id,
                None => return Ok(Err(Rejection::HoldNotFound)),
            },
        };
        // Taken out of the cache, not cloned: on a hot account the state holds every pending
        // hold, and copying it for each command was a large share of the writer's time. The
        // command's new state goes back once its writes are part of the batch; a rejected or
        // failed command leaves the account uncached, and the next one reads it from the file.
        let mut state = match self.cache.take(&account_id) {
            Some(state) => state,
            None => match rows::load_account(&self.conn, &account_id)? {
                Some(state) => state,
                None => return Ok(Ok(None)),
            },
        };
        if let Some(hold_id) = command.hold_to_load() {
            // A missing hold, or one of another account, is simply not loaded: the ledger then
            // answers `hold_not_found` after checking what comes first (a refund's reference).
            if state.hold(hold_id).is_none() {
                if let Some(hold) = rows::hold(&self.conn, hold_id)?.filter(|hold| hold.account_id == account_id) {
                    state.holds.push(hold);
                }
            }
        }
        if let Some((kind, reference)) = command.grant_reference_to_load() {
            let loaded =
                state.grants.iter().any(|grant| grant.kind == kind && grant.reference.as_ref() == Some(reference));
            if !loaded {
                if let Some(grant) = rows::grant_by_reference(&self.conn, &account_id, kind, reference)? {
                    if state.grant(&grant.grant_id).is_none() {
                        state.grants.push(grant);
                    }
                }
            }
        }
        Ok(Ok(Some(state)))
    }

    /// Writes what the ledger changed; returns the state as it is now persisted (live grants,
    /// pending holds), ready for the cache.
    fn persist(&self, applied: Applied) -> Result<AccountState, StoreError> {
        let Applied { mut state, changes, .. } = applied;
        if !changes.is_empty() {
            rows::upsert_account(&self.conn, &state)?;
            for grant_id in &changes.grants {
                let grant = state
                    .grant(grant_id)
                    .ok_or_else(|| corrupt(format!("the ledger changed grant {grant_id}, which it did not return")))?;
                rows::upsert_grant(&self.conn, grant)?;
            }
            for hold_id in &changes.holds {
                let hold = state
                    .hold(hold_id)
                    .ok_or_else(|| corrupt(format!("the ledger changed hold {hold_id}, which it did not return")))?;
                rows::upsert_hold(&self.conn, hold)?;
            }
            for entry in &changes.entries {
                rows::insert_entry(&self.conn, entry)?;
            }
        }
        state.grants.retain(|grant| grant.live);
        state.holds.retain(|hold| hold.state == HoldState::Pending);
        Ok(state)
    }

    /// Answers every job `Unavailable` and forgets the cache (it may hold uncommitted state).
    fn fail_all(&mut self, replies: impl Iterator<Item = Reply>, error: &StoreError) {
        self.cache.clear();
        tracing::error!(%error, "SQLite batch did not commit");
        for reply in replies {
            let _ = reply.send(Err(StoreError::Unavailable { detail: format!("the batch did not commit: {error}") }));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Batches run by hand, so "the same batch" is certain rather than likely.

    use std::path::Path;

    use ledger::{Amount, GrantId, HoldId, Outcome};
    use store::ManualClock;

    use super::*;
    use crate::schema;

    type Answer = oneshot::Receiver<Result<Done, StoreError>>;

    fn writer(dir: &Path) -> Writer {
        writer_caching(dir, 100)
    }

    fn writer_caching(dir: &Path, cache_accounts_max: usize) -> Writer {
        let path = dir.join("writer.db");
        let mut conn = schema::open_writer(&path, true).expect("opens");
        schema::migrate(&mut conn, &path).expect("migrates");
        let clock = Arc::new(ManualClock::starting_now());
        Writer::new(conn, clock, 16, cache_accounts_max, 86_400, Arc::default())
    }

    fn job(command: Command) -> (Job, Answer) {
        let (reply, answer) = oneshot::channel();
        (Job { work: Work::Execute(Request::new(command)), reply }, answer)
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

    fn answer(mut answer: Answer) -> Result<Executed, StoreError> {
        match answer.try_recv().expect("answered once the batch ended")? {
            Done::Executed(executed) => Ok(executed),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn account(writer: &Writer, account_id: &str) -> Option<AccountState> {
        rows::load_account(&writer.conn, &AccountId::parse(account_id).expect("valid id")).expect("reads")
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
        let (jobs, answers): (Vec<Job>, Vec<Answer>) =
            [grant("a", 10), grant("bad", 5), hold("a", "h1", 3), hold("a", "h2", 100), grant("c", 7)]
                .into_iter()
                .map(job)
                .unzip();
        writer.run_batch(jobs);
        let [granted_a, failed, held, rejected, granted_c] = answers.try_into().expect("five answers");

        assert!(matches!(answer(granted_a), Ok(Executed::Fresh(Ok(Outcome::Granted { .. })))));
        assert!(matches!(answer(failed), Err(StoreError::Corrupt { detail }) if detail.contains("injected failure")));
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

    fn done(mut answer: Answer) -> Result<Done, StoreError> {
        answer.try_recv().expect("answered once the batch ended")
    }

    fn work(work: Work) -> (Job, Answer) {
        let (reply, answer) = oneshot::channel();
        (Job { work, reply }, answer)
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
        let (jobs, answers): (Vec<Job>, Vec<Answer>) = [
            Work::CreateRun(run_record("r1", "t")),
            Work::PutArtifact(artifact.clone()),
            Work::Execute(Request::new(grant("a", 10))),
            Work::PutArtifact(Artifact { bytes: b"second".to_vec(), ..artifact.clone() }),
            Work::CreateRun(run_record("r2", "t")),
            Work::UpdateRun(finished),
            Work::CreateRun(run_record("r3", "t")),
        ]
        .into_iter()
        .map(work)
        .unzip();
        writer.run_batch(jobs);
        let [created, put, granted, repeated, busy, updated, next] = answers.try_into().expect("seven answers");

        assert!(matches!(done(created), Ok(Done::RunCreated(Ok(run))) if run.turn_index == 0));
        assert!(matches!(done(put), Ok(Done::ArtifactPut)));
        assert!(matches!(done(granted), Ok(Done::Executed(Executed::Fresh(Ok(Outcome::Granted { .. }))))));
        assert!(matches!(done(repeated), Err(StoreError::Corrupt { .. })));
        assert!(
            matches!(done(busy), Ok(Done::RunCreated(Err(CreateRunRefusal::ThreadBusy { run_id }))) if run_id == "r1")
        );
        assert!(matches!(done(updated), Ok(Done::RunUpdated(true))));
        assert!(matches!(done(next), Ok(Done::RunCreated(Ok(run))) if run.turn_index == 1));
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

    fn write_job(job_id: &str, ledger: Option<Request>) -> Work {
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
        Work::WriteJob(Box::new(JobWrite { job, expected_version: None, ledger }))
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
            let (jobs, answers): (Vec<Job>, Vec<Answer>) = [
                Work::Execute(Request::new(grant("a", 100))),
                Work::Execute(Request::new(hold("a", "h1", 30))),
                write_job("j1", Some(Request::new(capture("h1", 10)))),
                write_job("j2", Some(Request::new(capture("h1", 25)))),
                write_job("j1", Some(Request::new(capture("h1", 1)))),
                Work::Execute(Request::new(capture("h1", 20))),
                write_job("j3", Some(Request::new(capture("h1", 1)))),
            ]
            .into_iter()
            .map(work)
            .unzip();
            writer.run_batch(jobs);
            let [granted, held, created, too_much, duplicate, rest, nothing_left] =
                answers.try_into().expect("seven answers");

            assert!(matches!(done(granted), Ok(Done::Executed(Executed::Fresh(Ok(_))))));
            assert!(matches!(done(held), Ok(Done::Executed(Executed::Fresh(Ok(_))))));
            assert!(
                matches!(
                    done(created),
                    Ok(Done::JobWritten(Ok(JobWritten { ledger: Some(Outcome::Captured { .. }), .. })))
                ),
                "cache {cache_accounts_max}"
            );
            let exceeds = |requested, remaining| {
                Done::JobWritten(Err(JobWriteRefusal::Ledger(Some(Rejection::AmountExceedsHold {
                    requested: Amount::from_credits(requested),
                    remaining: Amount::from_credits(remaining),
                }))))
            };
            assert_eq!(format!("{:?}", done(too_much)), format!("{:?}", Ok::<_, StoreError>(exceeds(25, 20))));
            assert!(matches!(done(duplicate), Ok(Done::JobWritten(Err(JobWriteRefusal::DuplicateJobId)))));
            // 20 left: j1's capture counts, the refused ones do not.
            assert!(matches!(done(rest), Ok(Done::Executed(Executed::Fresh(Ok(Outcome::Captured { .. }))))));
            assert_eq!(format!("{:?}", done(nothing_left)), format!("{:?}", Ok::<_, StoreError>(exceeds(1, 0))));
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
        let (setup, setup_answers): (Vec<Job>, Vec<Answer>) =
            [grant("a", 100), hold("a", "h1", 30)].into_iter().map(job).unzip();
        writer.run_batch(setup);
        assert!(setup_answers.into_iter().all(|answer| matches!(done(answer), Ok(Done::Executed(_)))));
        assert!(writer.cache.get(&AccountId::parse("a").expect("valid id")).is_some(), "a is cached");

        let (jobs, answers): (Vec<Job>, Vec<Answer>) = [
            write_job("j1", Some(Request::with_key(capture("h1", 30), "poison", "fp"))),
            Work::Execute(Request::new(capture("h1", 30))),
        ]
        .into_iter()
        .map(work)
        .unzip();
        writer.run_batch(jobs);
        let [failed, whole] = answers.try_into().expect("two answers");
        assert!(matches!(done(failed), Err(StoreError::Corrupt { detail }) if detail.contains("injected failure")));
        // Had the cache kept the rolled-back capture of 30, nothing would remain to capture.
        assert!(matches!(done(whole), Ok(Done::Executed(Executed::Fresh(Ok(Outcome::Captured { .. }))))));
        assert_eq!(stored_jobs(&writer), Vec::<String>::new());
        let a = account(&writer, "a").expect("a exists").materialized();
        assert_eq!((a.balance, a.held), (Amount::from_credits(70), Amount::ZERO));
    }

    /// Claims run on the writer: two claims in one batch take two different jobs, oldest first.
    #[test]
    fn claims_in_one_batch_take_different_jobs() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut writer = writer(dir.path());
        let (inserts, inserted): (Vec<Job>, Vec<Answer>) =
            ["j1", "j2"].into_iter().map(|job_id| work(write_job(job_id, None))).unzip();
        writer.run_batch(inserts);
        assert!(inserted.into_iter().all(|answer| matches!(done(answer), Ok(Done::JobWritten(Ok(_))))));
        let now = Timestamp::from_micros(2_000_000);
        let claim = |worker: &str| Work::ClaimJob {
            worker_id: worker.to_owned(),
            now,
            lease_until: now.plus_seconds(30),
            attempts_max: 3,
        };
        let (claims, answers): (Vec<Job>, Vec<Answer>) =
            [claim("w1"), claim("w2"), claim("w3")].into_iter().map(work).unzip();
        writer.run_batch(claims);
        let claimed: Vec<Option<(String, String)>> = answers
            .into_iter()
            .map(|answer| match done(answer) {
                Ok(Done::JobClaimed(job)) => {
                    job.map(|job| (job.job_id.to_string(), job.lease_holder.unwrap_or_default()))
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let expected = [Some(("j1", "w1")), Some(("j2", "w2")), None]
            .map(|pair| pair.map(|(job, worker)| (job.to_owned(), worker.to_owned())));
        assert_eq!(claimed, expected);
    }
}
