//! Threads, runs and artifacts: the queries behind [`store::RunStore`].
//!
//! Writes ([`create_run`], [`update_run`], [`put_artifact`]) run only on the writer thread, inside
//! its job savepoints and group commits, so "check, then insert" is exact: no other write can
//! come between. The schema's partial unique index (one running run per thread) and its keys
//! stay as a second line of defence, turning a bug into a failed job instead of a second running
//! turn. Reads run on the read pool.

use ledger::{AccountId, HoldId, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};
use store::{
    Artifact, ArtifactId, CreateRunRefusal, InstanceLease, RunId, RunRecord, RunState, StoreError, ThreadId,
    HOLD_UNRESOLVED_MARKER,
};

use crate::rows::sql_error;

const RUN_COLUMNS: &str =
    "run_id, account_id, thread_id, turn_index, state, instance_id, hold_id, created_at, updated_at, data";
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

/// Checks the refusals in the contract's order, then creates the thread if new and inserts the
/// run as its next turn. Writer thread only.
pub(crate) fn create_run(
    conn: &Connection,
    run: &RunRecord,
) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
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
    let sql = format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
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
        ])
        .map_err(sql_error)?;
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
        .prepare_cached("UPDATE runs SET state = ?2, hold_id = ?3, updated_at = ?4, data = ?5 WHERE run_id = ?1")
        .map_err(sql_error)?
        .execute(params![
            run.run_id.as_str(),
            run.state.as_str(),
            run.hold_id.as_ref().map(HoldId::as_str),
            run.updated_at.micros(),
            run.data,
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

pub(crate) fn unresolved_runs(conn: &Connection, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE state <> 'running' AND hold_id IS NOT NULL AND instr(data, ?1) > 0 \
         ORDER BY updated_at, run_id LIMIT ?2"
    );
    query_runs(conn, &sql, params![HOLD_UNRESOLVED_MARKER, i64::from(limit)])
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
