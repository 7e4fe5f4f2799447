//! Threads, runs, run events and artifacts: the queries behind [`store::RunStore`].
//!
//! Writes ([`create_run`], [`update_run`], [`write_run_events`], [`put_artifact`], …) run only on
//! the writer thread, inside its job savepoints and group commits, so "check, then insert" is
//! exact: no other write can come between. A solve's idempotency key lives in the ledger's
//! idempotency table ([`store::keys`]), written in the run's own savepoint. The schema's partial unique index (one running run per thread) and its keys
//! stay as a second line of defence, turning a bug into a failed job instead of a second running
//! turn. Reads run on the read pool.

use ledger::{AccountId, HoldId, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};
use store::keys::{self, KeyUse, KeyedRun, RecordedResponse};
use store::runs::RUN_EVENTS_PAGE_MAX;
use store::{
    Artifact, ArtifactId, CreateRunRefusal, HoldResolution, Idempotency, InstanceLease, RunEventsWrite, RunId,
    RunRecord, RunState, StoreError, StoredFrame, ThreadId,
};

use crate::rows::{idempotency_record, insert_idempotency, sql_error};

const RUN_COLUMNS: &str = "run_id, account_id, thread_id, turn_index, state, instance_id, hold_id, created_at, \
     updated_at, data, hold_resolution";
const ARTIFACT_COLUMNS: &str = "artifact_id, account_id, run_id, content_type, bytes, created_at";

fn get<T: rusqlite::types::FromSql>(row: &Row<'_>, index: usize) -> Result<T, StoreError> {
    row.get(index).map_err(sql_error)
}

fn get_account_id(row: &Row<'_>, index: usize) -> Result<AccountId, StoreError> {
    AccountId::parse(&get::<String>(row, index)?).map_err(|error| StoreError::corrupt(format!("stored {error}")))
}

/// An id column, parsed: a stored id outside the grammar is corruption.
fn get_id<T>(row: &Row<'_>, index: usize, parse: fn(&str) -> Result<T, ledger::IdError>) -> Result<T, StoreError> {
    parse(&get::<String>(row, index)?).map_err(|error| StoreError::corrupt(format!("stored {error}")))
}

fn decode_run(row: &Row<'_>) -> Result<RunRecord, StoreError> {
    let turn_index: i64 = get(row, 3)?;
    let state: String = get(row, 4)?;
    let hold_id = match get::<Option<String>>(row, 6)? {
        None => None,
        Some(text) => Some(HoldId::parse(&text).map_err(|error| StoreError::corrupt(format!("stored run {error}")))?),
    };
    Ok(RunRecord {
        run_id: get_id(row, 0, RunId::parse)?,
        account_id: get_account_id(row, 1)?,
        thread_id: get_id(row, 2, ThreadId::parse)?,
        turn_index: u32::try_from(turn_index)
            .map_err(|_| StoreError::corrupt(format!("run turn_index {turn_index}")))?,
        state: RunState::parse(&state).ok_or_else(|| StoreError::corrupt(format!("unknown run state {state:?}")))?,
        instance_id: get(row, 5)?,
        hold_id,
        created_at: Timestamp::from_micros(get(row, 7)?),
        updated_at: Timestamp::from_micros(get(row, 8)?),
        data: get(row, 9)?,
        hold_resolution: HoldResolution::parse(&get::<String>(row, 10)?)
            .ok_or_else(|| StoreError::corrupt("unknown run hold_resolution"))?,
    })
}

fn decode_artifact(row: &Row<'_>) -> Result<Artifact, StoreError> {
    Ok(Artifact {
        artifact_id: get_id(row, 0, ArtifactId::parse)?,
        account_id: get_account_id(row, 1)?,
        run_id: get_id(row, 2, RunId::parse)?,
        content_type: get(row, 3)?,
        bytes: get(row, 4)?,
        created_at: Timestamp::from_micros(get(row, 5)?),
    })
}

fn query_runs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<RunRecord>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(sql_error)?;
    let mut rows = statement.query(params).map_err(sql_error)?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        runs.push(decode_run(row)?);
    }
    Ok(runs)
}

/// The running run of a thread other than `except`, if any.
fn running_run(conn: &Connection, thread_id: &ThreadId, except: Option<&RunId>) -> Result<Option<RunId>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id FROM runs WHERE thread_id = ?1 AND state = 'running' AND (?2 IS NULL OR run_id <> ?2) \
             LIMIT 1",
        )
        .map_err(sql_error)?;
    let running: Option<String> = statement
        .query_row(params![thread_id.as_str(), except.map(RunId::as_str)], |row| row.get(0))
        .optional()
        .map_err(sql_error)?;
    running.map(|text| RunId::parse(&text).map_err(|error| StoreError::corrupt(format!("stored {error}")))).transpose()
}

/// What a solve's key names, read on `conn`.
pub(crate) fn keyed_run(conn: &Connection, idempotency: &Idempotency) -> Result<Option<KeyedRun>, StoreError> {
    idempotency_record(conn, &idempotency.key)?
        .map(|(fingerprint, result)| keys::keyed_run(&idempotency.fingerprint, &fingerprint, &result))
        .transpose()
}

/// Checks the key (when given), then the refusals in the contract's order, then creates the
/// thread if new, inserts the run as its next turn and records the key. Writer thread only.
pub(crate) fn create_run(
    conn: &Connection,
    run: &RunRecord,
    idempotency: Option<&Idempotency>,
    now: Timestamp,
) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
    if let Some(idempotency) = idempotency {
        if let Some(used) = keyed_run(conn, idempotency)? {
            return Ok(Err(CreateRunRefusal::KeyUsed(used)));
        }
    }
    let owner: Option<String> = conn
        .prepare_cached("SELECT account_id FROM threads WHERE thread_id = ?1")
        .map_err(sql_error)?
        .query_row([run.thread_id.as_str()], |row| row.get(0))
        .optional()
        .map_err(sql_error)?;
    if owner.as_deref().is_some_and(|owner| owner != run.account_id.as_str()) {
        return Ok(Err(CreateRunRefusal::ThreadOfAnotherAccount));
    }
    if let Some(running) = running_run(conn, &run.thread_id, None)? {
        return Ok(Err(CreateRunRefusal::ThreadBusy { run_id: running }));
    }
    let exists = conn
        .prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")
        .map_err(sql_error)?
        .query_row([run.run_id.as_str()], |_| Ok(()))
        .optional()
        .map_err(sql_error)?;
    if exists.is_some() {
        return Ok(Err(CreateRunRefusal::DuplicateRunId));
    }
    if owner.is_none() {
        conn.prepare_cached("INSERT INTO threads (thread_id, account_id, created_at) VALUES (?1, ?2, ?3)")
            .map_err(sql_error)?
            .execute(params![run.thread_id.as_str(), run.account_id.as_str(), run.created_at.micros()])
            .map_err(sql_error)?;
    }
    let turns: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM runs WHERE thread_id = ?1")
        .map_err(sql_error)?
        .query_row([run.thread_id.as_str()], |row| row.get(0))
        .map_err(sql_error)?;
    let turn_index =
        u32::try_from(turns).map_err(|_| StoreError::corrupt(format!("thread {} has {turns} turns", run.thread_id)))?;
    let stored = RunRecord { turn_index, state: RunState::Running, ..run.clone() };
    let sql = format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    conn.prepare_cached(&sql)
        .map_err(sql_error)?
        .execute(params![
            stored.run_id.as_str(),
            stored.account_id.as_str(),
            stored.thread_id.as_str(),
            i64::from(stored.turn_index),
            stored.state.as_str(),
            stored.instance_id,
            stored.hold_id.as_ref().map(HoldId::as_str),
            stored.created_at.micros(),
            stored.updated_at.micros(),
            stored.data,
            stored.hold_resolution.as_str(),
        ])
        .map_err(sql_error)?;
    if let Some(idempotency) = idempotency {
        let (fingerprint, result) = keys::solve_record(&idempotency.fingerprint, &stored.run_id);
        insert_idempotency(conn, &idempotency.key, &fingerprint, &result, now)?;
    }
    Ok(Ok(stored))
}

/// Overwrites the mutable fields of a run; `false` when there is no such run. Writer thread only.
pub(crate) fn update_run(conn: &Connection, run: &RunRecord) -> Result<bool, StoreError> {
    if run.state == RunState::Running {
        let thread_id: Option<String> = conn
            .prepare_cached("SELECT thread_id FROM runs WHERE run_id = ?1")
            .map_err(sql_error)?
            .query_row([run.run_id.as_str()], |row| row.get(0))
            .optional()
            .map_err(sql_error)?;
        let Some(thread_id) = thread_id else { return Ok(false) };
        let thread_id = ThreadId::parse(&thread_id).map_err(|error| StoreError::corrupt(format!("stored {error}")))?;
        if let Some(running) = running_run(conn, &thread_id, Some(&run.run_id))? {
            return Err(StoreError::corrupt(format!(
                "run {} cannot run while run {running} of its thread runs",
                run.run_id
            )));
        }
    }
    let updated = conn
        .prepare_cached(
            "UPDATE runs SET state = ?2, hold_id = ?3, updated_at = ?4, data = ?5, hold_resolution = ?6 \
             WHERE run_id = ?1",
        )
        .map_err(sql_error)?
        .execute(params![
            run.run_id.as_str(),
            run.state.as_str(),
            run.hold_id.as_ref().map(HoldId::as_str),
            run.updated_at.micros(),
            run.data,
            run.hold_resolution.as_str(),
        ])
        .map_err(sql_error)?;
    Ok(updated == 1)
}

/// Inserts an artifact; an existing id is refused and left as it was. Writer thread only.
pub(crate) fn put_artifact(conn: &Connection, artifact: &Artifact) -> Result<(), StoreError> {
    let sql =
        format!("INSERT INTO artifacts ({ARTIFACT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING");
    let inserted = conn
        .prepare_cached(&sql)
        .map_err(sql_error)?
        .execute(params![
            artifact.artifact_id.as_str(),
            artifact.account_id.as_str(),
            artifact.run_id.as_str(),
            artifact.content_type,
            artifact.bytes,
            artifact.created_at.micros(),
        ])
        .map_err(sql_error)?;
    if inserted != 1 {
        return Err(StoreError::corrupt(format!("artifact {} exists", artifact.artifact_id)));
    }
    Ok(())
}

pub(crate) fn run(conn: &Connection, run_id: &RunId) -> Result<Option<RunRecord>, StoreError> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1");
    Ok(query_runs(conn, &sql, [run_id.as_str()])?.pop())
}

pub(crate) fn thread_account(conn: &Connection, thread_id: &ThreadId) -> Result<Option<AccountId>, StoreError> {
    let owner: Option<String> = conn
        .prepare_cached("SELECT account_id FROM threads WHERE thread_id = ?1")
        .map_err(sql_error)?
        .query_row([thread_id.as_str()], |row| row.get(0))
        .optional()
        .map_err(sql_error)?;
    owner
        .map(|text| AccountId::parse(&text).map_err(|error| StoreError::corrupt(format!("stored thread {error}"))))
        .transpose()
}

pub(crate) fn thread_runs(
    conn: &Connection,
    thread_id: &ThreadId,
    after_turn: Option<u32>,
    limit: u32,
) -> Result<Vec<RunRecord>, StoreError> {
    let sql =
        format!("SELECT {RUN_COLUMNS} FROM runs WHERE thread_id = ?1 AND turn_index > ?2 ORDER BY turn_index LIMIT ?3");
    let after = after_turn.map_or(-1, i64::from);
    query_runs(conn, &sql, params![thread_id.as_str(), after, i64::from(limit)])
}

/// See [`store::RunStore::account_runs`]; the `runs_by_account` index serves it.
pub(crate) fn account_runs(
    conn: &Connection,
    account_id: &AccountId,
    before: Option<(Timestamp, &RunId)>,
    limit: u32,
) -> Result<Vec<RunRecord>, StoreError> {
    let limit = i64::from(limit.min(store::runs::RUNS_PAGE_MAX));
    match before {
        None => {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE account_id = ?1 ORDER BY created_at DESC, run_id DESC LIMIT ?2"
            );
            query_runs(conn, &sql, params![account_id.as_str(), limit])
        }
        Some((at, run_id)) => {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE account_id = ?1 AND (created_at, run_id) < (?2, ?3) \
                 ORDER BY created_at DESC, run_id DESC LIMIT ?4"
            );
            query_runs(conn, &sql, params![account_id.as_str(), at.micros(), run_id.as_str(), limit])
        }
    }
}

pub(crate) fn runs_in_state(
    conn: &Connection,
    state: RunState,
    instance_id: Option<&str>,
    limit: u32,
) -> Result<Vec<RunRecord>, StoreError> {
    match instance_id {
        Some(instance_id) => {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE state = ?1 AND instance_id = ?2 \
                 ORDER BY created_at, run_id LIMIT ?3"
            );
            query_runs(conn, &sql, params![state.as_str(), instance_id, i64::from(limit)])
        }
        None => {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE state = ?1 ORDER BY created_at, run_id LIMIT ?2");
            query_runs(conn, &sql, params![state.as_str(), i64::from(limit)])
        }
    }
}

/// Through `runs_hold_pending`, whose condition the query repeats word for word.
pub(crate) fn unresolved_runs(conn: &Connection, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE hold_resolution = 'pending' AND state <> 'running' \
         ORDER BY updated_at, run_id LIMIT ?1"
    );
    query_runs(conn, &sql, params![i64::from(limit)])
}

pub(crate) fn orphaned_runs(
    conn: &Connection,
    except_instance_id: &str,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<RunRecord>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'running' AND instance_id <> ?1 \
         AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.instance_id = runs.instance_id \
         AND instances.lease_until > ?2) ORDER BY created_at, run_id LIMIT ?3"
    );
    query_runs(conn, &sql, params![except_instance_id, now.micros(), i64::from(limit)])
}

/// Upserts an instance's lease, keeping `started_at`. Writer thread only.
pub(crate) fn renew_instance(
    conn: &Connection,
    instance_id: &str,
    now: Timestamp,
    lease_until: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO instances (instance_id, lease_until, started_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (instance_id) DO UPDATE SET lease_until = excluded.lease_until",
    )
    .map_err(sql_error)?
    .execute(params![instance_id, lease_until.micros(), now.micros()])
    .map_err(sql_error)?;
    Ok(())
}

/// Deletes an instance's lease; whether it had one. Writer thread only.
pub(crate) fn drop_instance(conn: &Connection, instance_id: &str) -> Result<bool, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM instances WHERE instance_id = ?1")
        .map_err(sql_error)?
        .execute([instance_id])
        .map_err(sql_error)?;
    Ok(deleted == 1)
}

pub(crate) fn lapsed_instances(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<InstanceLease>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT instance_id, lease_until, started_at FROM instances WHERE lease_until <= ?1 \
             ORDER BY lease_until, instance_id LIMIT ?2",
        )
        .map_err(sql_error)?;
    let mut rows = statement.query(params![now.micros(), i64::from(limit)]).map_err(sql_error)?;
    let mut leases = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        leases.push(InstanceLease {
            instance_id: get(row, 0)?,
            lease_until: Timestamp::from_micros(get(row, 1)?),
            started_at: Timestamp::from_micros(get(row, 2)?),
        });
    }
    Ok(leases)
}

pub(crate) fn artifact(conn: &Connection, artifact_id: &ArtifactId) -> Result<Option<Artifact>, StoreError> {
    let sql = format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE artifact_id = ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = statement.query([artifact_id.as_str()]).map_err(sql_error)?;
    match rows.next().map_err(sql_error)? {
        Some(row) => decode_artifact(row).map(Some),
        None => Ok(None),
    }
}

fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::corrupt(format!("event seq {seq} beyond the column's range")))
}

/// Writes frames (a stored one stays as it is), deletes evicted ones and updates the run, all in
/// the job's savepoint; false, having written nothing, for an unknown run. Writer thread only.
pub(crate) fn write_run_events(conn: &Connection, write: &RunEventsWrite) -> Result<bool, StoreError> {
    if let Some(run) = &write.run {
        // The run's end event, if this write ends it (a retried final write finds it ended).
        let running: Option<String> = conn
            .prepare_cached("SELECT state FROM runs WHERE run_id = ?1")
            .map_err(sql_error)?
            .query_row([run.run_id.as_str()], |row| row.get(0))
            .optional()
            .map_err(sql_error)?;
        if !update_run(conn, run)? {
            return Ok(false);
        }
        if let Some(event) = store::events::run_event(run).filter(|_| running.as_deref() == Some("running")) {
            crate::rows::insert_event(conn, &event, event.at)?;
        }
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO run_events (run_id, seq, kind, at, data) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (run_id, seq) DO NOTHING",
        )
        .map_err(sql_error)?;
    for frame in &write.frames {
        insert
            .execute(params![frame.run_id.as_str(), seq_param(frame.seq)?, frame.kind, frame.at.micros(), frame.data])
            .map_err(sql_error)?;
    }
    let mut delete = conn.prepare_cached("DELETE FROM run_events WHERE run_id = ?1 AND seq = ?2").map_err(sql_error)?;
    for (run_id, seq) in &write.evicted {
        delete.execute(params![run_id.as_str(), seq_param(*seq)?]).map_err(sql_error)?;
    }
    Ok(true)
}

fn decode_frame(row: &Row<'_>) -> Result<StoredFrame, StoreError> {
    let seq: i64 = get(row, 1)?;
    Ok(StoredFrame {
        run_id: get_id(row, 0, RunId::parse)?,
        seq: u64::try_from(seq).map_err(|_| StoreError::corrupt(format!("event seq {seq}")))?,
        kind: get(row, 2)?,
        at: Timestamp::from_micros(get(row, 3)?),
        data: get(row, 4)?,
    })
}

pub(crate) fn run_events(
    conn: &Connection,
    run_id: &RunId,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<StoredFrame>, StoreError> {
    let after = match after {
        Some(after) => seq_param(after)?,
        None => -1,
    };
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id, seq, kind, at, data FROM run_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(sql_error)?;
    let mut rows = statement
        .query(params![run_id.as_str(), after, i64::from(limit.min(RUN_EVENTS_PAGE_MAX))])
        .map_err(sql_error)?;
    let mut frames = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        frames.push(decode_frame(row)?);
    }
    Ok(frames)
}

pub(crate) fn last_run_event_seq(conn: &Connection, run_id: &RunId) -> Result<Option<u64>, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT MAX(seq) FROM run_events WHERE run_id = ?1")
        .map_err(sql_error)?
        .query_row([run_id.as_str()], |row| row.get(0))
        .map_err(sql_error)?;
    last.map(|seq| u64::try_from(seq).map_err(|_| StoreError::corrupt(format!("event seq {seq}")))).transpose()
}

/// Deletes at most `limit` frames of runs that ended before `ended_before`; old frames are found
/// through `run_events_by_time` (a run's frames are all older than its last update). Writer
/// thread only.
pub(crate) fn forget_run_events(conn: &Connection, ended_before: Timestamp, limit: u32) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM run_events WHERE (run_id, seq) IN (SELECT e.run_id, e.seq FROM run_events e \
             WHERE e.at < ?1 AND EXISTS (SELECT 1 FROM runs r WHERE r.run_id = e.run_id AND r.state <> 'running' \
             AND r.updated_at < ?1) LIMIT ?2)",
        )
        .map_err(sql_error)?
        .execute(params![ended_before.micros(), i64::from(limit)])
        .map_err(sql_error)?;
    Ok(deleted as u64)
}

/// Records a cancel request on a running run (the first request's time stays). Writer thread only.
pub(crate) fn request_cancel(conn: &Connection, run_id: &RunId, at: Timestamp) -> Result<bool, StoreError> {
    let updated = conn
        .prepare_cached(
            "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, ?2) \
             WHERE run_id = ?1 AND state = 'running'",
        )
        .map_err(sql_error)?
        .execute(params![run_id.as_str(), at.micros()])
        .map_err(sql_error)?;
    Ok(updated == 1)
}

/// Through `runs_cancel_requested`, whose condition the query repeats.
pub(crate) fn cancel_requests(conn: &Connection, instance_id: &str, limit: u32) -> Result<Vec<RunId>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT run_id FROM runs WHERE instance_id = ?1 AND state = 'running' \
             AND cancel_requested_at IS NOT NULL ORDER BY created_at, run_id LIMIT ?2",
        )
        .map_err(sql_error)?;
    let mut rows = statement.query(params![instance_id, i64::from(limit)]).map_err(sql_error)?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        runs.push(get_id(row, 0, RunId::parse)?);
    }
    Ok(runs)
}

pub(crate) fn recorded_response(conn: &Connection, key: &str) -> Result<Option<KeyUse>, StoreError> {
    idempotency_record(conn, key)?.map(|(fingerprint, result)| keys::key_use(&fingerprint, &result)).transpose()
}

/// Records a response under a free key; what the key holds either way. Writer thread only.
pub(crate) fn record_response(
    conn: &Connection,
    key: &str,
    response: &RecordedResponse,
    now: Timestamp,
) -> Result<KeyUse, StoreError> {
    if let Some(used) = recorded_response(conn, key)? {
        return Ok(used);
    }
    let (fingerprint, result) = keys::response_record(response);
    insert_idempotency(conn, key, &fingerprint, &result, now)?;
    Ok(KeyUse::Response(response.clone()))
}
