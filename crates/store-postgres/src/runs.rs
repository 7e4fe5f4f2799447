//! Threads, runs and artifacts: the SQL behind [`store::RunStore`].
//!
//! Creating a run is one READ COMMITTED transaction per attempt, shaped like the ledger's:
//! 1. the thread is inserted if new (`ON CONFLICT DO NOTHING`: a concurrent first turn waits for
//!    the other transaction, then finds its row);
//! 2. the thread row is locked (`SELECT … FOR UPDATE`), which serialises every new turn of one
//!    thread across processes; its owner is checked;
//! 3. under that lock, the running run, the run id and the turn count are read (each statement
//!    sees every earlier holder's commit), the refusals are decided in the contract's order, and
//!    the run is inserted as the next turn.
//!
//! The partial unique index (one running run per thread) and the primary key are a second line
//! of defence: a unique violation that slips past the checks (a concurrent `update_run`, the same
//! run id created in another thread at the same moment) is retried by the caller, and the next
//! attempt's checks give the answer.
//!
//! A solve's idempotency key is claimed first, in the same transaction, in the ledger's
//! idempotency table ([`store::keys`]): `INSERT … ON CONFLICT DO NOTHING` waits for a concurrent
//! claim of the same key to end, so two solves with one key on two instances start one run, and
//! the other reads which. A refused run rolls its key back with it.
//!
//! Frames of runs are written by one statement per kind of change (unnest arrays), and the
//! transaction sends `NOTIFY` per run (delivered at commit), which the listener of every process
//! turns into a signal ([`crate::listen`]).

use deadpool_postgres::Transaction;
use ledger::{AccountId, HoldId, Timestamp};
use store::codec::undecodable;
use store::keys::{self, KeyedRun};
use store::{
    Artifact, ArtifactId, CreateRunRefusal, Executed, HoldResolution, Idempotency, RunEndWritten, RunEventsWrite,
    RunId, RunRecord, RunSettle, RunState, StoreError, StoredFrame, ThreadId,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{describe, Failure, RetryCause};
use crate::execute;
use crate::listen::EVENTS_CHANNEL;

pub(crate) const RUN_COLUMNS: &str = "run_id, account_id, thread_id, turn_index, state, instance_id, hold_id, \
     created_at, updated_at, data, hold_resolution";
pub(crate) const ARTIFACT_COLUMNS: &str = "artifact_id, account_id, run_id, content_type, bytes, created_at";

const INSERT_THREAD: &str = "INSERT INTO threads (thread_id, account_id, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT (thread_id) DO NOTHING";
const LOCK_THREAD: &str = "SELECT account_id FROM threads WHERE thread_id = $1 FOR UPDATE";
const RUNNING_RUN: &str = "SELECT run_id FROM runs WHERE thread_id = $1 AND state = 'running' LIMIT 1";
const RUN_EXISTS: &str = "SELECT run_id FROM runs WHERE run_id = $1";
const COUNT_TURNS: &str = "SELECT COUNT(*) FROM runs WHERE thread_id = $1";
const INSERT_RUN: &str = "INSERT INTO runs (run_id, account_id, thread_id, turn_index, state, instance_id, hold_id, \
     created_at, updated_at, data, hold_resolution) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub(crate) const UPDATE_RUN: &str = "UPDATE runs SET state = $2, hold_id = $3, updated_at = $4, data = $5, \
     hold_resolution = $6 WHERE run_id = $1";
/// Claims a key; no row when it is taken (after a concurrent claim of it ended).
pub(crate) const CLAIM_KEY: &str = "INSERT INTO idempotency (key, fingerprint, result, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING";
pub(crate) const READ_KEY: &str = "SELECT fingerprint, result FROM idempotency WHERE key = $1";
const INSERT_FRAMES: &str = "INSERT INTO run_events (run_id, seq, kind, at, data) \
     SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[]) \
     ON CONFLICT (run_id, seq) DO NOTHING";
const DELETE_FRAMES: &str = "DELETE FROM run_events WHERE (run_id, seq) IN \
     (SELECT * FROM unnest($1::TEXT[], $2::BIGINT[]))";
pub(crate) const FRAME_COLUMNS: &str = "run_id, seq, kind, at, data";
pub(crate) const INSERT_ARTIFACT: &str = "INSERT INTO artifacts (artifact_id, account_id, run_id, content_type, \
     bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (artifact_id) DO NOTHING";

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> Result<T, StoreError> {
    row.try_get(index).map_err(|_| undecodable(what))
}

pub(crate) fn account_id(text: &str) -> Result<AccountId, StoreError> {
    AccountId::parse(text).map_err(|_| undecodable("account_id"))
}

/// An id column, parsed: a stored id outside the grammar is corruption.
fn id<T>(text: &str, what: &str, parse: fn(&str) -> Result<T, ledger::IdError>) -> Result<T, StoreError> {
    parse(text).map_err(|_| undecodable(what))
}

/// A run read with [`RUN_COLUMNS`].
pub(crate) fn run(row: &Row) -> Result<RunRecord, StoreError> {
    let turn_index: i64 = get(row, 3, "run turn_index")?;
    Ok(RunRecord {
        run_id: id(get(row, 0, "run_id")?, "run_id", RunId::parse)?,
        account_id: account_id(get(row, 1, "run account_id")?)?,
        thread_id: id(get(row, 2, "run thread_id")?, "run thread_id", ThreadId::parse)?,
        turn_index: u32::try_from(turn_index).map_err(|_| undecodable("run turn_index"))?,
        state: RunState::parse(get(row, 4, "run state")?).ok_or_else(|| undecodable("run state"))?,
        instance_id: get(row, 5, "run instance_id")?,
        hold_id: get::<Option<&str>>(row, 6, "run hold_id")?
            .map(|text| HoldId::parse(text).map_err(|_| undecodable("run hold_id")))
            .transpose()?,
        created_at: Timestamp::from_micros(get(row, 7, "run created_at")?),
        updated_at: Timestamp::from_micros(get(row, 8, "run updated_at")?),
        data: get(row, 9, "run data")?,
        hold_resolution: HoldResolution::parse(get(row, 10, "run hold_resolution")?)
            .ok_or_else(|| undecodable("run hold_resolution"))?,
    })
}

/// Whether an update was refused by `runs_one_running_per_thread`, the only unique index it can
/// break: a caller bug (only `create_run` starts runs), never a race to retry.
pub(crate) fn is_running_conflict(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

pub(crate) fn running_conflict(run: &RunRecord, error: &tokio_postgres::Error) -> StoreError {
    StoreError::corrupt(format!(
        "run {} cannot run while another run of its thread runs: {}",
        run.run_id,
        describe(error)
    ))
}

/// A frame read with [`FRAME_COLUMNS`].
pub(crate) fn frame(row: &Row) -> Result<StoredFrame, StoreError> {
    let seq: i64 = get(row, 1, "event seq")?;
    Ok(StoredFrame {
        run_id: id(get(row, 0, "event run_id")?, "event run_id", RunId::parse)?,
        seq: u64::try_from(seq).map_err(|_| undecodable("event seq"))?,
        kind: get(row, 2, "event kind")?,
        at: Timestamp::from_micros(get(row, 3, "event at")?),
        data: get(row, 4, "event data")?,
    })
}

fn seq_param(seq: u64) -> Result<i64, Failure> {
    i64::try_from(seq)
        .map_err(|_| Failure::Store(StoreError::corrupt(format!("event seq {seq} beyond the column's range"))))
}

/// One attempt at [`store::RunStore::write_run_events`] in `transaction`: commits, or rolls back
/// and answers false for an unknown run.
pub(crate) async fn write_events_attempt(
    transaction: Transaction<'_>,
    write: &RunEventsWrite,
) -> Result<bool, Failure> {
    if !write_events(&transaction, write).await? {
        transaction.rollback().await?;
        return Ok(false);
    }
    transaction.commit().await?;
    Ok(true)
}

/// What one attempt at [`store::RunStore::write_run_end`] decided, and whether it committed.
pub(crate) struct Ended {
    pub result: RunEndWritten,
    pub committed: bool,
}

/// One attempt at [`store::RunStore::write_run_end`] in `transaction`: the run's end first (an
/// unknown run never reaches the ledger), then its settlement through the ledger's own path,
/// committed together when the ledger answers as expected, else rolled back. On `Err` the
/// transaction is dropped, which rolls it back.
pub(crate) async fn write_end_attempt(
    transaction: Transaction<'_>,
    write: &RunEventsWrite,
    settle: &RunSettle,
    now: Timestamp,
) -> Result<Ended, Failure> {
    store::runs::ending_run(write).map_err(Failure::Store)?;
    if !write_events(&transaction, write).await? {
        transaction.rollback().await?;
        return Ok(Ended { result: RunEndWritten::NoSuchRun, committed: false });
    }
    let mut application = execute::apply(&transaction, &settle.request, now).await?;
    match application.executed {
        Executed::Fresh(Ok(outcome)) | Executed::Replayed(Ok(outcome)) if settle.expected.matches(&outcome) => {
            transaction.commit().await?;
            application.credits.committed();
            Ok(Ended { result: RunEndWritten::Written(outcome), committed: true })
        }
        other => {
            transaction.rollback().await?;
            Ok(Ended { result: RunEndWritten::Refused(other), committed: false })
        }
    }
}

/// The writes of [`store::RunStore::write_run_events`] in `transaction`, neither committed nor
/// rolled back; false, having written nothing, for an unknown run.
async fn write_events(transaction: &Transaction<'_>, write: &RunEventsWrite) -> Result<bool, Failure> {
    if let Some(run) = &write.run {
        // The run's end event, if this write ends it (a retried final write finds it ended).
        let end_event = match store::events::run_event(run) {
            Some(event) => {
                let state = transaction.prepare_cached("SELECT state FROM runs WHERE run_id = $1 FOR UPDATE").await?;
                let row = transaction.query_opt(&state, &[&run.run_id.as_str()]).await?;
                let running = row.is_some_and(|row| row.try_get::<_, &str>(0).is_ok_and(|state| state == "running"));
                running.then_some(event)
            }
            None => None,
        };
        let update = transaction.prepare_cached(UPDATE_RUN).await?;
        let params: [&(dyn ToSql + Sync); 6] = [
            &run.run_id.as_str(),
            &run.state.as_str(),
            &run.hold_id.as_ref().map(HoldId::as_str),
            &run.updated_at.micros(),
            &run.data,
            &run.hold_resolution.as_str(),
        ];
        let updated = match transaction.execute(&update, &params).await {
            Ok(updated) => updated,
            Err(error) if is_running_conflict(&error) => return Err(Failure::Store(running_conflict(run, &error))),
            Err(error) => return Err(error.into()),
        };
        if updated == 0 {
            return Ok(false);
        }
        if let Some(event) = end_event {
            let at = event.at;
            crate::execute::insert_events(transaction, &[event], at).await?;
        }
    }
    if !write.frames.is_empty() {
        let run_ids: Vec<&str> = write.frames.iter().map(|frame| frame.run_id.as_str()).collect();
        let seqs = write.frames.iter().map(|frame| seq_param(frame.seq)).collect::<Result<Vec<i64>, _>>()?;
        let kinds: Vec<&str> = write.frames.iter().map(|frame| frame.kind.as_str()).collect();
        let ats: Vec<i64> = write.frames.iter().map(|frame| frame.at.micros()).collect();
        let data: Vec<&str> = write.frames.iter().map(|frame| frame.data.as_str()).collect();
        let insert = transaction.prepare_cached(INSERT_FRAMES).await?;
        transaction.execute(&insert, &[&run_ids, &seqs, &kinds, &ats, &data]).await?;
    }
    if !write.evicted.is_empty() {
        let run_ids: Vec<&str> = write.evicted.iter().map(|(run_id, _)| run_id.as_str()).collect();
        let seqs = write.evicted.iter().map(|(_, seq)| seq_param(*seq)).collect::<Result<Vec<i64>, _>>()?;
        let delete = transaction.prepare_cached(DELETE_FRAMES).await?;
        transaction.execute(&delete, &[&run_ids, &seqs]).await?;
    }
    let notified: Vec<String> = write.runs_with_frames().iter().map(ToString::to_string).collect();
    if !notified.is_empty() {
        // Delivered at commit, to every listening process (this one included).
        let notify = transaction
            .prepare_cached(&format!("SELECT pg_notify('{EVENTS_CHANNEL}', run_id) FROM unnest($1::TEXT[]) AS run_id"))
            .await?;
        transaction.execute(&notify, &[&notified]).await?;
    }
    Ok(true)
}

/// What a key's row says to a solve, or `None` when the row vanished (the sweep forgot it after
/// the claim found it taken): the caller retries.
async fn read_keyed_run(transaction: &Transaction<'_>, idempotency: &Idempotency) -> Result<Option<KeyedRun>, Failure> {
    let read = transaction.prepare_cached(READ_KEY).await?;
    let Some(row) = transaction.query_opt(&read, &[&idempotency.key]).await? else { return Ok(None) };
    let fingerprint: &str = get(&row, 0, "idempotency fingerprint")?;
    let result: &str = get(&row, 1, "idempotency result")?;
    Ok(Some(keys::keyed_run(&idempotency.fingerprint, fingerprint, result)?))
}

/// An artifact read with [`ARTIFACT_COLUMNS`].
pub(crate) fn artifact(row: &Row) -> Result<Artifact, StoreError> {
    Ok(Artifact {
        artifact_id: id(get(row, 0, "artifact_id")?, "artifact_id", ArtifactId::parse)?,
        account_id: account_id(get(row, 1, "artifact account_id")?)?,
        run_id: id(get(row, 2, "artifact run_id")?, "artifact run_id", RunId::parse)?,
        content_type: get(row, 3, "artifact content_type")?,
        bytes: get(row, 4, "artifact bytes")?,
        created_at: Timestamp::from_micros(get(row, 5, "artifact created_at")?),
    })
}

/// What one create attempt decided, and whether it committed (only a created run does).
pub(crate) struct Created {
    pub result: Result<RunRecord, CreateRunRefusal>,
    pub committed: bool,
}

/// One attempt at [`store::RunStore::create_run`] in `transaction`, which it commits (a created
/// run) or rolls back (a refusal) before returning `Ok`. On `Err` the transaction is dropped,
/// which rolls it back.
pub(crate) async fn create_attempt(
    transaction: Transaction<'_>,
    run: &RunRecord,
    idempotency: Option<&Idempotency>,
    now: Timestamp,
) -> Result<Created, Failure> {
    let refused = |refusal| Created { result: Err(refusal), committed: false };
    if let Some(idempotency) = idempotency {
        let claim = transaction.prepare_cached(CLAIM_KEY).await?;
        let (fingerprint, result) = keys::solve_record(&idempotency.fingerprint, &run.run_id);
        let claimed = transaction.execute(&claim, &[&idempotency.key, &fingerprint, &result, &now.micros()]).await?;
        if claimed == 0 {
            let used = read_keyed_run(&transaction, idempotency).await?;
            let Some(used) = used else {
                return Err(Failure::retry(RetryCause::Race, "an idempotency key vanished while claimed"));
            };
            transaction.rollback().await?;
            return Ok(refused(CreateRunRefusal::KeyUsed(used)));
        }
    }
    let insert_thread = transaction.prepare_cached(INSERT_THREAD).await?;
    let lock_thread = transaction.prepare_cached(LOCK_THREAD).await?;
    let running_run = transaction.prepare_cached(RUNNING_RUN).await?;
    let run_exists = transaction.prepare_cached(RUN_EXISTS).await?;
    let count_turns = transaction.prepare_cached(COUNT_TURNS).await?;
    let insert_run = transaction.prepare_cached(INSERT_RUN).await?;

    let thread_id = run.thread_id.as_str();
    let created_at = run.created_at.micros();
    transaction.execute(&insert_thread, &[&thread_id, &run.account_id.as_str(), &created_at]).await?;
    let Some(owner_row) = transaction.query_opt(&lock_thread, &[&thread_id]).await? else {
        // Inserted or found by the statement before, in this transaction: it cannot be missing.
        return Err(Failure::Store(StoreError::corrupt(format!("thread {thread_id} vanished while locked"))));
    };
    let owner: &str = get(&owner_row, 0, "thread account_id")?;
    if owner != run.account_id.as_str() {
        transaction.rollback().await?;
        return Ok(refused(CreateRunRefusal::ThreadOfAnotherAccount));
    }
    // Pipelined: the three reads travel in one round trip, after the lock is held.
    let by_thread: [&(dyn ToSql + Sync); 1] = [&thread_id];
    let run_id = run.run_id.as_str();
    let by_run: [&(dyn ToSql + Sync); 1] = [&run_id];
    let (running, existing, turns) = tokio::try_join!(
        transaction.query_opt(&running_run, &by_thread),
        transaction.query_opt(&run_exists, &by_run),
        transaction.query_one(&count_turns, &by_thread),
    )?;
    if let Some(running) = running {
        let run_id = id(get(&running, 0, "run_id")?, "run_id", RunId::parse)?;
        transaction.rollback().await?;
        return Ok(refused(CreateRunRefusal::ThreadBusy { run_id }));
    }
    if existing.is_some() {
        transaction.rollback().await?;
        return Ok(refused(CreateRunRefusal::DuplicateRunId));
    }
    let turns: i64 = get(&turns, 0, "turn count")?;
    let turn_index =
        u32::try_from(turns).map_err(|_| StoreError::corrupt(format!("thread {thread_id} has {turns} turns")))?;
    let stored = RunRecord { turn_index, state: RunState::Running, ..run.clone() };
    let params: [&(dyn ToSql + Sync); 11] = [
        &run_id,
        &stored.account_id.as_str(),
        &thread_id,
        &i64::from(turn_index),
        &stored.state.as_str(),
        &stored.instance_id,
        &stored.hold_id.as_ref().map(HoldId::as_str),
        &created_at,
        &stored.updated_at.micros(),
        &stored.data,
        &stored.hold_resolution.as_str(),
    ];
    transaction.execute(&insert_run, &params).await?;
    transaction.commit().await?;
    Ok(Created { result: Ok(stored), committed: true })
}
