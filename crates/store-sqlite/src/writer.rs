//! The one writer: an OS thread that owns the write connection and commits jobs in groups.
//!
//! SQLite allows one writer at a time, and a durable commit costs an fsync. So every mutation
//! goes through this thread: it takes up to `batch_max` queued jobs and runs them in ONE
//! `BEGIN IMMEDIATE … COMMIT` (group commit: one fsync for the whole batch). Each job runs inside
//! its own `SAVEPOINT`, so a job that fails rolls back alone. Replies leave only after `COMMIT`
//! succeeded, so a caller never sees a result that is not on disk; if `COMMIT` fails, every job of
//! the batch is answered `Unavailable`.
//!
//! Being the only writer (the owner lock guarantees it across processes) lets the thread keep the
//! persisted [`AccountState`] of recently used accounts in memory and skip re-reading them. It
//! also makes the run store's "check the thread, then insert the run" exact (see [`crate::runs`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ledger::{AccountId, AccountState, Applied, Command, HoldState, Rejection, Target, Timestamp, MICROS_PER_SECOND};
use rusqlite::Connection;
use store::{codec, Artifact, Clock, CreateRunRefusal, Executed, Request, RunRecord, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::lockfile::OwnerLock;
use crate::rows::{self, corrupt, sql_error};
use crate::runs;

/// What a job asks the writer to do.
#[derive(Debug)]
pub(crate) enum Work {
    Execute(Request),
    /// Forget idempotency keys older than the retention.
    ForgetKeys,
    CreateRun(RunRecord),
    UpdateRun(RunRecord),
    PutArtifact(Artifact),
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
    fn get(&self, account_id: &AccountId) -> Option<&AccountState> {
        self.states.get(account_id)
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

/// A job's result, kept until the batch commits.
type Pending = (Reply, Result<Done, StoreError>);

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
        if let Err((_, error)) = self.conn.close() {
            tracing::warn!(%error, "closing the SQLite write connection failed");
        }
        drop(lock);
    }

    /// One transaction for the whole batch; replies only after it commits.
    pub(crate) fn run_batch(&mut self, batch: Vec<Job>) {
        let size = batch.len() as u64;
        if !self.conn.is_autocommit() {
            // A transaction left open by an earlier failure would swallow this batch.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if let Err(error) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            self.fail_all(batch.into_iter().map(|job| job.reply), &sql_error(error));
            return;
        }
        let mut done: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut fatal = None;
        let mut jobs = batch.into_iter();
        for job in jobs.by_ref() {
            match self.run_job(&job.work) {
                Ok(result) => done.push((job.reply, result)),
                Err(error) => {
                    fatal = Some((job.reply, error));
                    break;
                }
            }
        }
        if let Some((reply, error)) = fatal {
            let _ = self.conn.execute_batch("ROLLBACK");
            let replies = done.into_iter().map(|(reply, _)| reply).chain(std::iter::once(reply));
            self.fail_all(replies.chain(jobs.map(|job| job.reply)), &error);
            return;
        }
        if let Err(error) = self.conn.execute_batch("COMMIT") {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.fail_all(done.into_iter().map(|(reply, _)| reply), &sql_error(error));
            return;
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.operations.fetch_add(size, Ordering::Relaxed);
        for (reply, result) in done {
            // A caller that stopped waiting still had its job applied; nothing to tell it.
            let _ = reply.send(result);
        }
    }

    /// Runs one job inside its own savepoint. The outer error is fatal for the whole batch (the
    /// savepoint itself failed); the inner result is the job's own, rolled back when an error.
    fn run_job(&mut self, work: &Work) -> Result<Result<Done, StoreError>, StoreError> {
        self.conn.execute_batch("SAVEPOINT job").map_err(sql_error)?;
        // A ledger assertion that fails panics through here on purpose (see docs/dev/style.md):
        // the writer thread dies, its open transaction is rolled back with the connection, and
        // every later write answers `Unavailable` instead of moving credits on corrupt logic.
        let result = self.perform(work);
        let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
        self.conn.execute_batch(end).map_err(sql_error)?;
        Ok(result)
    }

    fn perform(&mut self, work: &Work) -> Result<Done, StoreError> {
        let now = self.clock.now();
        match work {
            Work::Execute(request) => self.execute(request, now).map(Done::Executed),
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
        }
    }

    /// Idempotency first, then load, decide, write, and record the result for replay.
    fn execute(&mut self, request: &Request, now: Timestamp) -> Result<Executed, StoreError> {
        if let Some(idempotency) = &request.idempotency {
            if let Some((fingerprint, recorded)) = rows::idempotency_record(&self.conn, &idempotency.key)? {
                if fingerprint != idempotency.fingerprint {
                    return Ok(Executed::Conflict);
                }
                return Ok(Executed::Replayed(codec::decode_result(&recorded)?));
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
        // Last step: the cache changes only once every write of the job succeeded.
        if let Some(state) = persisted {
            self.cache.put(state);
        }
        Ok(Executed::Fresh(result))
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
        let mut state = match self.cache.get(&account_id) {
            Some(state) => state.clone(),
            None => match rows::load_account(&self.conn, &account_id)? {
                Some(state) => {
                    // What is persisted right now; a rollback of this job keeps it true.
                    self.cache.put(state.clone());
                    state
                }
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
        let path = dir.join("writer.db");
        let mut conn = schema::open_writer(&path, true).expect("opens");
        schema::migrate(&mut conn, &path).expect("migrates");
        let clock = Arc::new(ManualClock::starting_now());
        Writer::new(conn, clock, 16, 100, 86_400, Arc::default())
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
            run_id: run_id.to_owned(),
            account_id: AccountId::parse("a").expect("valid id"),
            thread_id: thread_id.to_owned(),
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
            artifact_id: "art".to_owned(),
            account_id: AccountId::parse("a").expect("valid id"),
            run_id: "r1".to_owned(),
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
        let stored = runs::artifact(&writer.conn, "art").expect("reads").expect("exists");
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
}
