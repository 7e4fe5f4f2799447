//! The storage port for async video jobs.
//!
//! A job's credits move in the same transaction as its state: creating a job captures its price
//! from the turn's hold; ending it failed or canceled refunds that price. So the one write
//! primitive, [`JobStore::write_job`], is a compare-and-set on the job's `version` combined with
//! an optional ledger request, all in one transaction: either the job row changes *and* the ledger
//! command applies, or neither happens. The job state machine itself lives in the engine; the
//! store only guarantees atomicity, the version check, and the one rule it must enforce itself:
//! a job is retried at most once (a unique index on `retry_source_job_id`).

use async_trait::async_trait;
use ledger::{AccountId, Amount, HoldId, Outcome, Rejection, Timestamp};

pub use crate::ids::JobId;
use crate::ids::{ArtifactId, RunId, ThreadId};
use crate::{Request, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled)
    }
}

/// One video job. Every field is stored; the ones queries filter on are also columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: JobId,
    pub account_id: AccountId,
    pub thread_id: ThreadId,
    /// The turn that created the job, and that turn's hold (the price was captured from it).
    pub run_id: RunId,
    pub hold_id: HoldId,
    /// What the job was charged (the catalog's video price at the run's version).
    pub price: Amount,
    pub status: JobStatus,
    /// solve, scriptify, tts, render, compose, enqueue.
    pub stage: String,
    /// 0..=100.
    pub progress_percent: u8,
    /// The input snapshot (JSON text): what the renderer needs, copied by a retry.
    pub input: String,
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub heartbeat_at: Option<Timestamp>,
    pub cancel_requested: bool,
    pub retry_source_job_id: Option<JobId>,
    /// Attempts started so far (a claim starts one).
    pub attempts: u32,
    /// A queued job is not claimed before this time (retry backoff).
    pub run_after: Timestamp,
    pub error_stage: Option<String>,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub refund_applied_at: Option<Timestamp>,
    pub artifact_id: Option<ArtifactId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Incremented by every successful write; the compare-and-set token.
    pub version: u64,
}

/// One atomic job write: the job as it must be after, the version it must have before, and an
/// optional ledger request applied in the same transaction.
#[derive(Clone, Debug)]
pub struct JobWrite {
    /// The new row. Its `version` is ignored: the store stores `expected_version + 1` (or 1 for
    /// an insert) and returns the stored record.
    pub job: JobRecord,
    /// `None`: insert a new job. `Some(v)`: update only if the stored version is `v`.
    pub expected_version: Option<u64>,
    pub ledger: Option<Request>,
}

/// Why a job write changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobWriteRefusal {
    /// The job changed since it was read (or does not exist, for an update).
    VersionMismatch { current: Option<u64> },
    /// An insert whose job id exists.
    DuplicateJobId,
    /// An insert whose `retry_source_job_id` already has a retry.
    RetryAlreadyUsed,
    /// The ledger request was rejected (or its idempotency key conflicted): nothing was written.
    Ledger(Option<Rejection>),
}

/// What a successful job write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobWritten {
    pub job: JobRecord,
    /// The ledger outcome, when the write carried a request (a replayed key gives the first one).
    pub ledger: Option<Outcome>,
}

#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Applies one [`JobWrite`] atomically.
    async fn write_job(&self, write: JobWrite) -> Result<Result<JobWritten, JobWriteRefusal>, StoreError>;

    async fn job(&self, job_id: &JobId) -> Result<Option<JobRecord>, StoreError>;

    /// The thread's jobs, oldest first, at most `limit`.
    async fn thread_jobs(&self, thread_id: &ThreadId, limit: u32) -> Result<Vec<JobRecord>, StoreError>;

    /// The retry of `source_job_id`, if one exists.
    /// An account's jobs, newest first (`created_at`, then job id, both descending), at most
    /// `limit` (≤ [`JOBS_LIST_MAX`]); only those older than `before` (a job's `created_at` and
    /// id) when given.
    async fn account_jobs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &JobId)>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;

    async fn retry_of(&self, source_job_id: &JobId) -> Result<Option<JobRecord>, StoreError>;

    /// Claims the oldest claimable job for `worker_id`: a queued job with `run_after <= now`, or
    /// a running job whose lease expired (its worker died). The claimed job becomes running with
    /// the lease (`lease_holder = worker_id`, `lease_expires_at = lease_until`), `attempts + 1`,
    /// `heartbeat_at = now`, `started_at` set if unset. Jobs with `attempts >= attempts_max` are
    /// not claimed (the stuck sweep ends them). Concurrent claimers never get the same job
    /// (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: the single writer).
    async fn claim_job(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    ) -> Result<Option<JobRecord>, StoreError>;

    /// Non-terminal jobs that may be stuck, oldest first, at most `limit`: running jobs whose
    /// heartbeat is older than `heartbeat_before` (or whose lease expired with attempts exhausted),
    /// and queued jobs created before `queued_before`.
    async fn stuck_jobs(
        &self,
        heartbeat_before: Timestamp,
        queued_before: Timestamp,
        now: Timestamp,
        attempts_max: u32,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
}

/// Most jobs one list ([`JobStore::thread_jobs`], [`JobStore::stuck_jobs`]) returns, whatever
/// `limit` asks: a list is read whole into memory.
pub const JOBS_LIST_MAX: u32 = 1_000;

/// `job` as [`JobStore::claim_job`] leaves it, version not yet incremented: every backend builds
/// the claimed record with this one function, so they cannot disagree on what a claim changes.
pub fn claimed(job: &JobRecord, worker_id: &str, now: Timestamp, lease_until: Timestamp) -> JobRecord {
    JobRecord {
        status: JobStatus::Running,
        lease_holder: Some(worker_id.to_owned()),
        lease_expires_at: Some(lease_until),
        heartbeat_at: Some(now),
        attempts: job.attempts.saturating_add(1),
        started_at: job.started_at.or(Some(now)),
        updated_at: now,
        ..job.clone()
    }
}
