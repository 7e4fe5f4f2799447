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

use deadpool_postgres::Transaction;
use ledger::{AccountId, HoldId, Timestamp};
use store::codec::undecodable;
use store::{Artifact, ArtifactId, CreateRunRefusal, RunId, RunRecord, RunState, StoreError, ThreadId};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::Failure;

pub(crate) const RUN_COLUMNS: &str =
    "run_id, account_id, thread_id, turn_index, state, instance_id, hold_id, created_at, updated_at, data";
pub(crate) const ARTIFACT_COLUMNS: &str = "artifact_id, account_id, run_id, content_type, bytes, created_at";

const INSERT_THREAD: &str = "INSERT INTO threads (thread_id, account_id, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT (thread_id) DO NOTHING";
const LOCK_THREAD: &str = "SELECT account_id FROM threads WHERE thread_id = $1 FOR UPDATE";
const RUNNING_RUN: &str = "SELECT run_id FROM runs WHERE thread_id = $1 AND state = 'running' LIMIT 1";
const RUN_EXISTS: &str = "SELECT run_id FROM runs WHERE run_id = $1";
const COUNT_TURNS: &str = "SELECT COUNT(*) FROM runs WHERE thread_id = $1";
const INSERT_RUN: &str = "INSERT INTO runs (run_id, account_id, thread_id, turn_index, state, instance_id, hold_id, \
     created_at, updated_at, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(crate) const UPDATE_RUN: &str =
    "UPDATE runs SET state = $2, hold_id = $3, updated_at = $4, data = $5 WHERE run_id = $1";
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
    })
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
pub(crate) async fn create_attempt(transaction: Transaction<'_>, run: &RunRecord) -> Result<Created, Failure> {
    let refused = |refusal| Created { result: Err(refusal), committed: false };
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
    let params: [&(dyn ToSql + Sync); 10] = [
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
    ];
    transaction.execute(&insert_run, &params).await?;
    transaction.commit().await?;
    Ok(Created { result: Ok(stored), committed: true })
}
