//! Video jobs: the SQL behind [`store::JobStore`].
//!
//! A job row is its whole record as JSON (`data`, written by [`store::codec::encode_job`], so
//! both SQL adapters store identical text) plus copies of the fields queries filter on, written
//! by the same statement from the same record.
//!
//! A job write is one READ COMMITTED transaction per attempt:
//! 1. the job row first: an insert (a concurrent insert of the same id, or of another retry of
//!    the same source, waits on the unique index entry, then fails on it: the primary key is
//!    [`JobWriteRefusal::DuplicateJobId`], the partial unique index `jobs_one_retry_per_source`
//!    is [`JobWriteRefusal::RetryAlreadyUsed`]), or an `UPDATE … WHERE version = expected`, whose
//!    row lock makes concurrent writers of one job queue, and re-check the version after the one
//!    before them committed (0 rows: [`JobWriteRefusal::VersionMismatch`]);
//! 2. then the ledger request through the ledger's own path ([`crate::execute::apply`]: key,
//!    account row lock, decide, write) in the same transaction;
//! 3. commit only if the ledger accepted (or replayed an acceptance); otherwise roll back both.
//!
//! The lock order is always job row, then idempotency key, then account row, so job writes
//! cannot wait on each other in a cycle; the caller still retries deadlocks and serialization
//! failures a bounded number of times, like the ledger's commands.
//!
//! A claim locks the oldest claimable row with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
//! (in any process) each take a different job without waiting on each other.

use deadpool_postgres::Transaction;
use ledger::Timestamp;
use store::jobs::{self, JOBS_LIST_MAX};
use store::{codec, JobId, JobRecord, JobStatus, JobWrite, JobWriteRefusal, JobWritten, StoreError};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::Failure;
use crate::execute;

/// A query selecting what [`job`] decodes: the record, and the two columns it must agree with.
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!("SELECT job_id, version, data FROM jobs ", $rest)
    };
}
const INSERT_JOB: &str = "INSERT INTO jobs (job_id, account_id, thread_id, status, retry_source_job_id, \
     lease_expires_at, heartbeat_at, run_after, attempts, created_at, updated_at, version, data) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
const UPDATE_JOB: &str = "UPDATE jobs SET account_id = $2, thread_id = $3, status = $4, retry_source_job_id = $5, \
     lease_expires_at = $6, heartbeat_at = $7, run_after = $8, attempts = $9, created_at = $10, updated_at = $11, \
     version = $12, data = $13 WHERE job_id = $1 AND version = $14";
const CURRENT_VERSION: &str = "SELECT version FROM jobs WHERE job_id = $1";
/// Oldest first; ties by the id's bytes, as SQLite orders them, whatever the locale.
const CLAIM_JOB: &str = select_jobs!(
    "WHERE ((status = 'queued' AND run_after <= $1) OR (status = 'running' AND lease_expires_at <= $1)) \
     AND attempts < $2 ORDER BY created_at, job_id COLLATE \"C\" LIMIT 1 FOR UPDATE SKIP LOCKED"
);
pub(crate) const JOB_BY_ID: &str = select_jobs!("WHERE job_id = $1");
pub(crate) const THREAD_JOBS: &str =
    select_jobs!("WHERE thread_id = $1 ORDER BY created_at, job_id COLLATE \"C\" LIMIT $2");
pub(crate) const RETRY_OF: &str = select_jobs!("WHERE retry_source_job_id = $1");
/// A running job without a heartbeat counts from its last update, and one without a lease has
/// no live lease (as the memory store decides).
pub(crate) const STUCK_JOBS: &str = select_jobs!(
    "WHERE (status = 'running' AND (COALESCE(heartbeat_at, updated_at) < $1 \
            OR ((lease_expires_at IS NULL OR lease_expires_at <= $3) AND attempts >= $4))) \
        OR (status = 'queued' AND created_at < $2) \
     ORDER BY created_at, job_id COLLATE \"C\" LIMIT $5"
);
const PRIMARY_KEY: &str = "jobs_pkey";
const RETRY_INDEX: &str = "jobs_one_retry_per_source";

/// `limit` as the bounded `LIMIT` of a list.
/// An account's jobs older than ($2, $3), newest first (`JobStore::account_jobs`).
pub(crate) const ACCOUNT_JOBS: &str = select_jobs!(
    "WHERE account_id = $1 AND (created_at < $2 OR (created_at = $2 AND job_id COLLATE \"C\" < $3)) \
     ORDER BY created_at DESC, job_id COLLATE \"C\" DESC LIMIT $4"
);

pub(crate) fn list_limit(limit: u32) -> i64 {
    i64::from(limit.min(JOBS_LIST_MAX))
}

/// `attempts_max` as the INTEGER column compares it (a larger one means no limit anyway).
pub(crate) fn attempts_limit(attempts_max: u32) -> i32 {
    i32::try_from(attempts_max).unwrap_or(i32::MAX)
}

/// A job read with [`JOB_COLUMNS`]; a record that disagrees with its own row is corrupt.
pub(crate) fn job(row: &Row) -> Result<JobRecord, StoreError> {
    let undecodable = |what: &str| StoreError::corrupt(format!("undecodable stored job {what}"));
    let job_id: &str = row.try_get(0).map_err(|_| undecodable("job_id"))?;
    let version: i64 = row.try_get(1).map_err(|_| undecodable("version"))?;
    let data: &str = row.try_get(2).map_err(|_| undecodable("data"))?;
    let job = codec::decode_job(data)?;
    if job.job_id != job_id || i64::try_from(job.version).ok() != Some(version) {
        return Err(StoreError::corrupt(format!("job {job_id}: its row (version {version}) and its record disagree")));
    }
    Ok(job)
}

/// The refusal a unique index gave, if that is what `error` is.
fn refusal(error: &tokio_postgres::Error) -> Option<JobWriteRefusal> {
    if error.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return None;
    }
    match error.as_db_error()?.constraint()? {
        PRIMARY_KEY => Some(JobWriteRefusal::DuplicateJobId),
        RETRY_INDEX => Some(JobWriteRefusal::RetryAlreadyUsed),
        _ => None,
    }
}

async fn current_version(transaction: &Transaction<'_>, job_id: &JobId) -> Result<Option<u64>, Failure> {
    let statement = transaction.prepare_cached(CURRENT_VERSION).await?;
    let Some(row) = transaction.query_opt(&statement, &[&job_id.as_str()]).await? else { return Ok(None) };
    let version: i64 =
        row.try_get(0).map_err(|_| StoreError::corrupt(format!("undecodable stored job {job_id} version")))?;
    let version = u64::try_from(version).map_err(|_| StoreError::corrupt(format!("job {job_id} version {version}")))?;
    Ok(Some(version))
}

/// Inserts (`expected_version` `None`) or updates at `expected_version` the row of `job`, stored
/// with the next version. After a refusal from a unique index the transaction is aborted: the
/// caller only rolls it back.
async fn write_row(
    transaction: &Transaction<'_>,
    job: &JobRecord,
    expected_version: Option<u64>,
) -> Result<Result<JobRecord, JobWriteRefusal>, Failure> {
    let expected = match expected_version.map(i64::try_from).transpose() {
        Ok(expected) => expected,
        // No stored version is that large: it cannot match.
        Err(_) => {
            let current = current_version(transaction, &job.job_id).await?;
            return Ok(Err(JobWriteRefusal::VersionMismatch { current }));
        }
    };
    let version = match expected {
        None => 1,
        Some(expected) => expected
            .checked_add(1)
            .ok_or_else(|| StoreError::corrupt(format!("job {} version {expected} cannot grow", job.job_id)))?,
    };
    let stored = JobRecord { version: version.unsigned_abs(), ..job.clone() };
    let attempts = i32::try_from(stored.attempts).map_err(|_| {
        StoreError::corrupt(format!("job {} attempts {} do not fit a column", stored.job_id, stored.attempts))
    })?;
    let data = codec::encode_job(&stored);
    let lease_expires_at = stored.lease_expires_at.map(Timestamp::micros);
    let heartbeat_at = stored.heartbeat_at.map(Timestamp::micros);
    let (job_id, thread_id) = (stored.job_id.as_str(), stored.thread_id.as_str());
    let retry_source_job_id = stored.retry_source_job_id.as_ref().map(JobId::as_str);
    let columns: [&(dyn ToSql + Sync); 14] = [
        &job_id,
        &stored.account_id.as_str(),
        &thread_id,
        &stored.status.as_str(),
        &retry_source_job_id,
        &lease_expires_at,
        &heartbeat_at,
        &stored.run_after.micros(),
        &attempts,
        &stored.created_at.micros(),
        &stored.updated_at.micros(),
        &version,
        &data,
        &expected,
    ];
    let (sql, columns) = match expected {
        None => (INSERT_JOB, &columns[..13]),
        Some(_) => (UPDATE_JOB, &columns[..]),
    };
    let statement = transaction.prepare_cached(sql).await?;
    let written = match transaction.execute(&statement, columns).await {
        Ok(written) => written,
        Err(error) => {
            return match refusal(&error) {
                Some(refusal) => Ok(Err(refusal)),
                None => Err(error.into()),
            }
        }
    };
    if written == 1 {
        return Ok(Ok(stored));
    }
    let current = current_version(transaction, &job.job_id).await?;
    Ok(Err(JobWriteRefusal::VersionMismatch { current }))
}

/// What one job write attempt decided, and whether it committed.
pub(crate) struct Written {
    pub result: Result<JobWritten, JobWriteRefusal>,
    pub committed: bool,
}

/// One attempt at [`store::JobStore::write_job`] in `transaction`, which it commits (the job and
/// an accepted ledger request) or rolls back (any refusal) before returning `Ok`. On `Err` the
/// transaction is dropped, which rolls it back.
pub(crate) async fn write_attempt(
    transaction: Transaction<'_>,
    write: &JobWrite,
    now: Timestamp,
) -> Result<Written, Failure> {
    let refused = |refusal| Written { result: Err(refusal), committed: false };
    // A job's end event, if this write ends it (a job ends once; a write that finds it ended
    // adds none). Looked up (and the row locked) only for a write of a terminal status.
    let end_event = match store::events::job_event(&write.job) {
        Some(event) => {
            let status = transaction.prepare_cached("SELECT status FROM jobs WHERE job_id = $1 FOR UPDATE").await?;
            let row = transaction.query_opt(&status, &[&write.job.job_id.as_str()]).await?;
            let ended = row.is_some_and(|row| {
                row.try_get::<_, &str>(0).ok().and_then(JobStatus::parse).is_some_and(JobStatus::is_terminal)
            });
            (!ended).then_some(event)
        }
        None => None,
    };
    let job = match write_row(&transaction, &write.job, write.expected_version).await? {
        Ok(job) => job,
        Err(refusal) => {
            transaction.rollback().await?;
            return Ok(refused(refusal));
        }
    };
    if let Some(event) = end_event {
        crate::execute::insert_events(&transaction, &[event], now).await?;
    }
    let Some(request) = &write.ledger else {
        transaction.commit().await?;
        return Ok(Written { result: Ok(JobWritten { job, ledger: None }), committed: true });
    };
    let mut application = execute::apply(&transaction, request, now).await?;
    let refusal = match application.executed {
        store::Executed::Fresh(Ok(outcome)) | store::Executed::Replayed(Ok(outcome)) => {
            transaction.commit().await?;
            application.credits.committed();
            return Ok(Written { result: Ok(JobWritten { job, ledger: Some(outcome) }), committed: true });
        }
        store::Executed::Fresh(Err(rejection)) | store::Executed::Replayed(Err(rejection)) => {
            JobWriteRefusal::Ledger(Some(rejection))
        }
        store::Executed::Conflict => JobWriteRefusal::Ledger(None),
    };
    transaction.rollback().await?;
    Ok(refused(refusal))
}

/// One attempt at [`store::JobStore::claim_job`] in `transaction`, committed when a job was
/// claimed. Returns the claimed job.
pub(crate) async fn claim_attempt(
    transaction: Transaction<'_>,
    worker_id: &str,
    now: Timestamp,
    lease_until: Timestamp,
    attempts_max: u32,
) -> Result<Option<JobRecord>, Failure> {
    let statement = transaction.prepare_cached(CLAIM_JOB).await?;
    let row = transaction.query_opt(&statement, &[&now.micros(), &attempts_limit(attempts_max)]).await?;
    let Some(row) = row else {
        transaction.rollback().await?;
        return Ok(None);
    };
    let oldest = job(&row)?;
    let claimed = jobs::claimed(&oldest, worker_id, now, lease_until);
    match write_row(&transaction, &claimed, Some(oldest.version)).await? {
        Ok(stored) => {
            transaction.commit().await?;
            Ok(Some(stored))
        }
        // The row is locked by this transaction: nothing else can have changed it.
        Err(refusal) => Err(Failure::Store(StoreError::corrupt(format!(
            "job {} changed while locked for a claim: {refusal:?}",
            oldest.job_id
        )))),
    }
}
