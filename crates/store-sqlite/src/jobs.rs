//! Video jobs: the queries behind [`store::JobStore`].
//!
//! A job row is its whole record as JSON (`data`, written by [`store::codec::encode_job`], so
//! both SQL adapters store identical text) plus copies of the fields queries filter on. Both are
//! written by the one statement here that writes a job, from the same record, so they agree.
//!
//! Writes ([`write`], [`claim`]) run only on the writer thread, inside the job's savepoint: the
//! version check is exact there (no other write comes between), and a ledger request that the
//! writer applies after the job row rolls back with it. The retry rule is the partial unique
//! index `jobs_one_retry_per_source`: a second retry fails on it and is mapped to
//! [`JobWriteRefusal::RetryAlreadyUsed`], the primary key to [`JobWriteRefusal::DuplicateJobId`].
//! Reads run on the read pool.

use ledger::Timestamp;
use rusqlite::{ffi, params, Connection, OptionalExtension, Row};
use store::jobs::{self, JOBS_LIST_MAX};
use store::{codec, JobId, JobRecord, JobStatus, JobWriteRefusal, StoreError, ThreadId};

use crate::rows::sql_error;

/// What every read of a job selects: the record, and the two columns it must agree with.
const JOB_COLUMNS: &str = "job_id, version, data";
const INSERT_JOB: &str = "INSERT INTO jobs (job_id, account_id, thread_id, status, retry_source_job_id, \
     lease_expires_at, heartbeat_at, run_after, attempts, created_at, updated_at, version, data) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const UPDATE_JOB: &str = "UPDATE jobs SET account_id = ?2, thread_id = ?3, status = ?4, retry_source_job_id = ?5, \
     lease_expires_at = ?6, heartbeat_at = ?7, run_after = ?8, attempts = ?9, created_at = ?10, updated_at = ?11, \
     version = ?12, data = ?13 WHERE job_id = ?1 AND version = ?14";
const RETRY_INDEX_COLUMN: &str = "jobs.retry_source_job_id";

/// A job read with [`JOB_COLUMNS`]; a record that disagrees with its own row is corrupt.
fn decode(row: &Row<'_>) -> Result<JobRecord, StoreError> {
    let job_id: String = row.get(0).map_err(sql_error)?;
    let version: i64 = row.get(1).map_err(sql_error)?;
    let data: String = row.get(2).map_err(sql_error)?;
    let job = codec::decode_job(&data)?;
    if job.job_id != *job_id || i64::try_from(job.version).ok() != Some(version) {
        return Err(StoreError::corrupt(format!("job {job_id}: its row (version {version}) and its record disagree")));
    }
    Ok(job)
}

fn query_jobs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<JobRecord>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(sql_error)?;
    let mut rows = statement.query(params).map_err(sql_error)?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        jobs.push(decode(row)?);
    }
    Ok(jobs)
}

fn current_version(conn: &Connection, job_id: &JobId) -> Result<Option<u64>, StoreError> {
    let version: Option<i64> = conn
        .prepare_cached("SELECT version FROM jobs WHERE job_id = ?1")
        .map_err(sql_error)?
        .query_row([job_id.as_str()], |row| row.get(0))
        .optional()
        .map_err(sql_error)?;
    version
        .map(|version| {
            u64::try_from(version).map_err(|_| StoreError::corrupt(format!("job {job_id} version {version}")))
        })
        .transpose()
}

/// The refusal a unique index gave, if that is what `error` is.
fn refusal(error: &rusqlite::Error) -> Option<JobWriteRefusal> {
    let rusqlite::Error::SqliteFailure(failure, message) = error else { return None };
    match failure.extended_code {
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY => Some(JobWriteRefusal::DuplicateJobId),
        ffi::SQLITE_CONSTRAINT_UNIQUE if message.as_deref().is_some_and(|text| text.contains(RETRY_INDEX_COLUMN)) => {
            Some(JobWriteRefusal::RetryAlreadyUsed)
        }
        _ => None,
    }
}

/// Inserts (`expected_version` `None`) or updates at `expected_version` the row of `job`, stored
/// with the next version. Returns the stored record, or why nothing was written. Writer thread
/// only, inside the job's savepoint.
pub(crate) fn write(
    conn: &Connection,
    job: &JobRecord,
    expected_version: Option<u64>,
) -> Result<Result<JobRecord, JobWriteRefusal>, StoreError> {
    let expected = match expected_version {
        None => None,
        Some(expected) => match i64::try_from(expected) {
            Ok(expected) => Some(expected),
            // No stored version is that large: it cannot match.
            Err(_) => {
                return Ok(Err(JobWriteRefusal::VersionMismatch { current: current_version(conn, &job.job_id)? }))
            }
        },
    };
    let version = match expected {
        None => 1,
        Some(expected) => expected
            .checked_add(1)
            .ok_or_else(|| StoreError::corrupt(format!("job {} version {expected} cannot grow", job.job_id)))?,
    };
    let stored = JobRecord { version: version.unsigned_abs(), ..job.clone() };
    let data = codec::encode_job(&stored);
    let columns = params![
        stored.job_id.as_str(),
        stored.account_id.as_str(),
        stored.thread_id.as_str(),
        stored.status.as_str(),
        stored.retry_source_job_id.as_ref().map(JobId::as_str),
        stored.lease_expires_at.map(Timestamp::micros),
        stored.heartbeat_at.map(Timestamp::micros),
        stored.run_after.micros(),
        i64::from(stored.attempts),
        stored.created_at.micros(),
        stored.updated_at.micros(),
        version,
        data,
        expected,
    ];
    let (sql, columns) = match expected {
        None => (INSERT_JOB, &columns[..13]),
        Some(_) => (UPDATE_JOB, columns),
    };
    let written = match conn.prepare_cached(sql).map_err(sql_error)?.execute(columns) {
        Ok(written) => written,
        Err(error) => return refusal(&error).map(Err).ok_or_else(|| sql_error(error)),
    };
    if written == 1 {
        return Ok(Ok(stored));
    }
    Ok(Err(JobWriteRefusal::VersionMismatch { current: current_version(conn, &job.job_id)? }))
}

/// Claims the oldest claimable job (see [`store::JobStore::claim_job`]). Writer thread only: no
/// other claim can come between the choice and the update.
pub(crate) fn claim(
    conn: &Connection,
    worker_id: &str,
    now: Timestamp,
    lease_until: Timestamp,
    attempts_max: u32,
) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs \
         WHERE ((status = 'queued' AND run_after <= ?1) OR (status = 'running' AND lease_expires_at <= ?1)) \
         AND attempts < ?2 ORDER BY created_at, job_id LIMIT 1"
    );
    let Some(oldest) = query_jobs(conn, &sql, params![now.micros(), i64::from(attempts_max)])?.pop() else {
        return Ok(None);
    };
    let claimed = jobs::claimed(&oldest, worker_id, now, lease_until);
    match write(conn, &claimed, Some(oldest.version))? {
        Ok(stored) => Ok(Some(stored)),
        Err(refusal) => Err(StoreError::corrupt(format!(
            "job {} changed under the writer while claimed: {refusal:?}",
            oldest.job_id
        ))),
    }
}

pub(crate) fn job(conn: &Connection, job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1");
    Ok(query_jobs(conn, &sql, [job_id.as_str()])?.pop())
}

pub(crate) fn thread_jobs(conn: &Connection, thread_id: &ThreadId, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE thread_id = ?1 ORDER BY created_at, job_id LIMIT ?2");
    query_jobs(conn, &sql, params![thread_id.as_str(), i64::from(limit.min(JOBS_LIST_MAX))])
}

/// See [`store::JobStore::account_jobs`]; the `jobs_by_account` index serves it.
pub(crate) fn account_jobs(
    conn: &Connection,
    account_id: &ledger::AccountId,
    before: Option<(Timestamp, &JobId)>,
    limit: u32,
) -> Result<Vec<JobRecord>, StoreError> {
    let limit = i64::from(limit.min(JOBS_LIST_MAX));
    match before {
        None => {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE account_id = ?1 ORDER BY created_at DESC, job_id DESC LIMIT ?2"
            );
            query_jobs(conn, &sql, params![account_id.as_str(), limit])
        }
        Some((at, job_id)) => {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE account_id = ?1 AND (created_at, job_id) < (?2, ?3) \
                 ORDER BY created_at DESC, job_id DESC LIMIT ?4"
            );
            query_jobs(conn, &sql, params![account_id.as_str(), at.micros(), job_id.as_str(), limit])
        }
    }
}

pub(crate) fn retry_of(conn: &Connection, source_job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE retry_source_job_id = ?1");
    Ok(query_jobs(conn, &sql, [source_job_id.as_str()])?.pop())
}

/// See [`store::JobStore::stuck_jobs`]; a running job without a heartbeat counts from its last
/// update, and one without a lease has no live lease (as the memory store decides).
pub(crate) fn stuck_jobs(
    conn: &Connection,
    heartbeat_before: Timestamp,
    queued_before: Timestamp,
    now: Timestamp,
    attempts_max: u32,
    limit: u32,
) -> Result<Vec<JobRecord>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs \
         WHERE (status = 'running' AND (COALESCE(heartbeat_at, updated_at) < ?1 \
                OR ((lease_expires_at IS NULL OR lease_expires_at <= ?3) AND attempts >= ?4))) \
            OR (status = 'queued' AND created_at < ?2) \
         ORDER BY created_at, job_id LIMIT ?5"
    );
    let params = params![
        heartbeat_before.micros(),
        queued_before.micros(),
        now.micros(),
        i64::from(attempts_max),
        i64::from(limit.min(JOBS_LIST_MAX)),
    ];
    query_jobs(conn, &sql, params)
}

/// Whether the job is stored in a terminal status (it then never changes status again).
pub(crate) fn is_terminal(conn: &Connection, job_id: &JobId) -> Result<bool, StoreError> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM jobs WHERE job_id = ?1")
        .map_err(sql_error)?
        .query_row([job_id.as_str()], |row| row.get(0))
        .optional()
        .map_err(sql_error)?;
    Ok(status.as_deref().and_then(JobStatus::parse).is_some_and(JobStatus::is_terminal))
}
