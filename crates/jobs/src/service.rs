//! Async video jobs: the state machine that keeps a job's credits exact.
//!
//! A job's price is captured from its turn's hold in the transaction that creates it, and given
//! back — exactly once — in the transaction that ends it failed or canceled: at a queued cancel,
//! a permanent failure, the last transient failure, or when the stuck sweep finds it. A success
//! keeps the charge. Every transition is a compare-and-set on the job's version
//! ([`store::JobStore::write_job`]), so two actors (a worker finishing, a user canceling, the
//! sweeper) can race and exactly one transition wins; the refund rides on that one transition,
//! and its ledger reference (`<job_id>:refund`) makes a second refund impossible even so.

use std::sync::Arc;

use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage, Reference, Rejection, Timestamp};
use store::{
    Artifact, ArtifactId, Clock, JobId, JobRecord, JobStatus, JobStore, JobWrite, JobWriteRefusal, Request, RunId,
    RunStore, StoreError, ThreadId,
};
use tokio::sync::{broadcast, Notify};

use crate::code::JobErrorCode;
use crate::render::{RenderFailure, Rendered};

/// Limits and timings of the job system. Units last.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// A worker's lease on a running job; heartbeats renew it.
    pub lease_seconds: u64,
    pub heartbeat_seconds: u64,
    /// Attempts (claims) a job may take before a transient failure becomes final.
    pub attempts_max: u32,
    /// Backoff before a transiently failed job is claimable again (doubled per attempt).
    pub retry_backoff_seconds: u64,
    /// A running job whose heartbeat is older than this is stuck.
    pub stuck_running_seconds: u64,
    /// A queued job never claimed within this is stuck.
    pub stuck_queued_seconds: u64,
    /// How often the server's periodic sweep looks for stuck jobs (reads find them too).
    pub stuck_sweep_interval_seconds: u64,
    /// In-process workers (0: jobs are rendered only by `creditgraph worker` processes).
    pub workers_in_process: usize,
    /// Longest wait between claim attempts of an idle worker.
    pub idle_poll_ms: u64,
    /// Largest artifact a worker may hand in.
    pub artifact_bytes_max: usize,
    /// Largest input snapshot.
    pub input_bytes_max: usize,
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            lease_seconds: 30,
            heartbeat_seconds: 5,
            attempts_max: 3,
            retry_backoff_seconds: 2,
            stuck_running_seconds: 300,
            stuck_queued_seconds: 900,
            stuck_sweep_interval_seconds: 10,
            workers_in_process: 2,
            idle_poll_ms: 500,
            artifact_bytes_max: 16 * 1024 * 1024,
            input_bytes_max: 64 * 1024,
        }
    }
}

/// A new job for a turn.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub account_id: AccountId,
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub hold_id: HoldId,
    pub price: Amount,
    /// The input snapshot (JSON text); ignored for a retry, which copies its source's.
    pub input: String,
    pub retry_source_job_id: Option<JobId>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no such job")]
    NotFound,
    #[error("this worker no longer holds the job's lease")]
    LeaseLost,
    #[error("{0}")]
    InvalidRetrySource(String),
    #[error("this job was already retried once")]
    RetryAlreadyUsed,
    #[error("the turn's hold refused the job's price: {0}")]
    Hold(String),
    #[error("the job kept changing under concurrent updates")]
    Contention,
    #[error("the artifact is larger than {0} bytes")]
    ArtifactTooLarge(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a worker ends its attempt.
#[derive(Clone, Debug)]
pub enum Finish {
    Succeeded(Rendered),
    Failed(RenderFailure),
    Canceled,
}

/// Compare-and-set attempts before giving up on a hot job.
const CAS_ATTEMPTS_MAX: u32 = 8;

/// Jobs that reached a terminal status, by `status` (succeeded, failed, canceled).
pub const JOBS_ENDED: &str = "creditgraph_jobs_ended_total";
/// Refunds of failed or canceled jobs (each applied once, by its reference).
pub const JOBS_REFUNDED: &str = "creditgraph_jobs_refunded_total";

pub struct JobService {
    store: Arc<dyn JobStore>,
    runs: Arc<dyn RunStore>,
    clock: Arc<dyn Clock>,
    config: JobsConfig,
    /// Wakes idle in-process workers when a job is queued.
    pub(crate) queued: Notify,
    updates: broadcast::Sender<JobRecord>,
}

fn is_retry_refusal(refusal: &JobWriteRefusal) -> bool {
    matches!(refusal, JobWriteRefusal::RetryAlreadyUsed)
}

impl JobService {
    pub fn new(
        store: Arc<dyn JobStore>,
        runs: Arc<dyn RunStore>,
        clock: Arc<dyn Clock>,
        config: JobsConfig,
    ) -> Arc<JobService> {
        let (updates, _) = broadcast::channel(256);
        Arc::new(JobService { store, runs, clock, config, queued: Notify::new(), updates })
    }

    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Every job write, as it happened (for forwarding to open event streams).
    pub fn subscribe(&self) -> broadcast::Receiver<JobRecord> {
        self.updates.subscribe()
    }

    fn published(&self, job: JobRecord) -> JobRecord {
        let _ = self.updates.send(job.clone());
        job
    }

    /// Checks that `source_job_id` may be retried by this account and thread. Fails closed: any
    /// doubt (including a store that cannot answer) is a refusal with a message saying why.
    pub async fn check_retry(
        &self,
        account_id: &AccountId,
        thread_id: &ThreadId,
        source_job_id: &JobId,
    ) -> Result<JobRecord, JobError> {
        let source = self
            .store
            .job(source_job_id)
            .await
            .map_err(|_| JobError::InvalidRetrySource("the job store cannot be reached to check the retry".to_owned()))?
            .ok_or_else(|| JobError::InvalidRetrySource("the video to retry does not exist".to_owned()))?;
        if &source.account_id != account_id {
            return Err(JobError::InvalidRetrySource("the video to retry does not exist".to_owned()));
        }
        if &source.thread_id != thread_id {
            return Err(JobError::InvalidRetrySource("the video belongs to another thread".to_owned()));
        }
        if !matches!(source.status, JobStatus::Failed | JobStatus::Canceled) {
            return Err(JobError::InvalidRetrySource(format!(
                "only a failed or canceled video can be retried; this one is {}",
                source.status.as_str()
            )));
        }
        if source.retry_source_job_id.is_some() {
            return Err(JobError::InvalidRetrySource("a retried video cannot be retried again".to_owned()));
        }
        let existing = self.store.retry_of(source_job_id).await.map_err(|_| {
            JobError::InvalidRetrySource("the job store cannot be reached to check the retry".to_owned())
        })?;
        if existing.is_some() {
            return Err(JobError::RetryAlreadyUsed);
        }
        Ok(source)
    }

    /// Creates a queued job and captures its price from the turn's hold, in one transaction.
    pub async fn create(&self, new: NewJob) -> Result<JobRecord, JobError> {
        let input = match &new.retry_source_job_id {
            Some(source) => self.check_retry(&new.account_id, &new.thread_id, source).await?.input,
            None => new.input.clone(),
        };
        if input.len() > self.config.input_bytes_max {
            return Err(JobError::Hold(format!("the job input is larger than {} bytes", self.config.input_bytes_max)));
        }
        let now = self.now();
        let job_id = JobId::generate();
        let job = JobRecord {
            job_id: job_id.clone(),
            account_id: new.account_id.clone(),
            thread_id: new.thread_id.clone(),
            run_id: new.run_id.clone(),
            hold_id: new.hold_id.clone(),
            price: new.price,
            status: JobStatus::Queued,
            stage: "enqueue".to_owned(),
            progress_percent: 0,
            input,
            lease_holder: None,
            lease_expires_at: None,
            heartbeat_at: None,
            cancel_requested: false,
            retry_source_job_id: new.retry_source_job_id.clone(),
            attempts: 0,
            run_after: now,
            error_stage: None,
            error_code: None,
            error_detail: None,
            refund_applied_at: None,
            artifact_id: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            version: 0,
        };
        let capture = Command::Capture {
            hold_id: new.hold_id.clone(),
            amount: new.price,
            is_final: false,
            overage: Overage::Reject,
        };
        let key = format!("{job_id}:capture");
        let request = Request::with_key(capture.clone(), &key, &format!("{capture:?}"));
        let write = JobWrite { job, expected_version: None, ledger: Some(request) };
        match self.store.write_job(write).await? {
            Ok(written) => {
                self.queued.notify_waiters();
                self.queued.notify_one();
                Ok(self.published(written.job))
            }
            Err(refusal) if is_retry_refusal(&refusal) => Err(JobError::RetryAlreadyUsed),
            Err(JobWriteRefusal::Ledger(rejection)) => Err(JobError::Hold(
                rejection.map_or_else(|| "idempotency conflict".to_owned(), |rejection| rejection.to_string()),
            )),
            Err(other) => Err(JobError::Hold(format!("{other:?}"))),
        }
    }

    /// The refund that goes with ending `job` failed or canceled.
    fn refund_request(job: &JobRecord) -> Request {
        let reference = Reference::parse(&format!("{}:refund", job.job_id)).expect("job ids make valid references");
        let grant_id = GrantId::parse(&format!("refund-{}", job.job_id)).expect("job ids make valid grant ids");
        let command = Command::Refund {
            account_id: job.account_id.clone(),
            grant_id,
            amount: job.price,
            reference,
            hold_id: Some(job.hold_id.clone()),
            priority: 100,
            expires_at: None,
        };
        let key = format!("{}:refund", job.job_id);
        Request::with_key(command.clone(), &key, &format!("{command:?}"))
    }

    /// Ends `job` in a terminal status. Failed and canceled carry the refund in the same write.
    fn terminal(
        &self,
        job: &JobRecord,
        status: JobStatus,
        code: Option<JobErrorCode>,
        detail: Option<String>,
    ) -> JobWrite {
        assert!(status.is_terminal(), "terminal() takes a terminal status");
        let now = self.now();
        let mut next = job.clone();
        next.status = status;
        next.updated_at = now;
        next.finished_at = Some(now);
        next.lease_holder = None;
        next.lease_expires_at = None;
        let refund = matches!(status, JobStatus::Failed | JobStatus::Canceled) && job.refund_applied_at.is_none();
        if status != JobStatus::Succeeded {
            next.error_stage = Some(job.stage.clone());
            next.error_code = code.map(|code| code.as_str().to_owned());
            next.error_detail = detail;
        }
        if refund {
            next.refund_applied_at = Some(now);
        }
        JobWrite {
            job: next,
            expected_version: Some(job.version),
            ledger: refund.then(|| JobService::refund_request(job)),
        }
    }

    /// Reads, decides, writes; on a version race, reads again (bounded).
    async fn transition<F>(&self, job_id: &JobId, mut decide: F) -> Result<JobRecord, JobError>
    where
        F: FnMut(&JobService, &JobRecord) -> Result<Option<JobWrite>, JobError>,
    {
        for _ in 0..CAS_ATTEMPTS_MAX {
            let job = self.store.job(job_id).await?.ok_or(JobError::NotFound)?;
            let Some(write) = decide(self, &job)? else { return Ok(job) };
            match self.store.write_job(write).await? {
                Ok(written) => {
                    if let Some(Outcome::Refunded { created: true, .. }) = written.ledger {
                        tracing::info!(%job_id, "job refunded");
                        metrics::counter!(JOBS_REFUNDED).increment(1);
                    }
                    if written.job.status.is_terminal() && written.job.status != job.status {
                        metrics::counter!(JOBS_ENDED, "status" => written.job.status.as_str()).increment(1);
                    }
                    return Ok(self.published(written.job));
                }
                Err(JobWriteRefusal::VersionMismatch { .. }) => continue,
                Err(JobWriteRefusal::Ledger(Some(Rejection::RefundExceedsCharges { .. }))) => {
                    // Only possible if the price was never captured; record the end without it.
                    tracing::error!(%job_id, "refund refused: nothing to refund");
                    return Err(JobError::Hold("nothing to refund".to_owned()));
                }
                Err(other) => return Err(JobError::Hold(format!("{other:?}"))),
            }
        }
        Err(JobError::Contention)
    }

    /// Cancel: a queued job is canceled and refunded at once; a running one gets
    /// `cancel_requested` and its worker ends it (refunded) at its next check; a terminal job is
    /// returned unchanged.
    pub async fn cancel(&self, job_id: &JobId) -> Result<JobRecord, JobError> {
        self.transition(job_id, |service, job| {
            Ok(match job.status {
                JobStatus::Queued => {
                    Some(service.terminal(job, JobStatus::Canceled, Some(JobErrorCode::Canceled), None))
                }
                JobStatus::Running if !job.cancel_requested => {
                    let mut next = job.clone();
                    next.cancel_requested = true;
                    next.updated_at = service.now();
                    Some(JobWrite { job: next, expected_version: Some(job.version), ledger: None })
                }
                _ => None,
            })
        })
        .await
    }

    /// The job as it reads now: a stuck job is ended (and refunded) on read.
    pub async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>, JobError> {
        let Some(job) = self.store.job(job_id).await? else { return Ok(None) };
        if self.stuck_reason(&job).is_some() {
            return self.end_if_stuck(job_id).await.map(Some);
        }
        Ok(Some(job))
    }

    /// An account's jobs, newest first, older than `before` when given (see
    /// `store::JobStore::account_jobs`).
    pub async fn account_jobs(
        &self,
        account_id: &ledger::AccountId,
        before: Option<(Timestamp, &JobId)>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, JobError> {
        Ok(self.store.account_jobs(account_id, before, limit).await?)
    }

    pub async fn thread_jobs(&self, thread_id: &ThreadId, limit: u32) -> Result<Vec<JobRecord>, JobError> {
        Ok(self.store.thread_jobs(thread_id, limit).await?)
    }

    fn stuck_reason(&self, job: &JobRecord) -> Option<&'static str> {
        let now = self.now();
        match job.status {
            JobStatus::Running => {
                let heartbeat = job.heartbeat_at.unwrap_or(job.updated_at);
                let lease_gone = job.lease_expires_at.is_none_or(|until| until <= now);
                if heartbeat.plus_seconds(self.config.stuck_running_seconds) <= now {
                    Some("no heartbeat within the threshold")
                } else if lease_gone && job.attempts >= self.config.attempts_max {
                    Some("its last attempt's worker stopped")
                } else {
                    None
                }
            }
            JobStatus::Queued if job.created_at.plus_seconds(self.config.stuck_queued_seconds) <= now => {
                Some("never claimed within the threshold")
            }
            _ => None,
        }
    }

    async fn end_if_stuck(&self, job_id: &JobId) -> Result<JobRecord, JobError> {
        self.transition(job_id, |service, job| {
            let Some(reason) = service.stuck_reason(job) else { return Ok(None) };
            let write = if job.cancel_requested {
                service.terminal(job, JobStatus::Canceled, Some(JobErrorCode::Canceled), None)
            } else {
                service.terminal(
                    job,
                    JobStatus::Failed,
                    Some(JobErrorCode::InfrastructureTimeout),
                    Some(reason.to_owned()),
                )
            };
            Ok(Some(write))
        })
        .await
    }

    /// Ends every stuck job (failed with `infrastructure_timeout`, or canceled when a cancel was
    /// requested), refunding each once. Returns how many ended.
    pub async fn sweep_stuck(&self, limit: u32) -> Result<u64, JobError> {
        let now = self.now();
        let heartbeat_before =
            Timestamp::from_micros(now.micros() - self.config.stuck_running_seconds as i64 * 1_000_000);
        let queued_before = Timestamp::from_micros(now.micros() - self.config.stuck_queued_seconds as i64 * 1_000_000);
        let candidates =
            self.store.stuck_jobs(heartbeat_before, queued_before, now, self.config.attempts_max, limit).await?;
        let mut ended = 0;
        for job in candidates {
            let after = self.end_if_stuck(&job.job_id).await?;
            if after.status.is_terminal() && !job.status.is_terminal() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// A worker claims the oldest claimable job.
    pub async fn claim(&self, worker_id: &str) -> Result<Option<JobRecord>, JobError> {
        let now = self.now();
        let lease_until = now.plus_seconds(self.config.lease_seconds);
        let claimed = self.store.claim_job(worker_id, now, lease_until, self.config.attempts_max).await?;
        Ok(claimed.map(|job| self.published(job)))
    }

    fn holds_lease(job: &JobRecord, worker_id: &str) -> bool {
        job.status == JobStatus::Running && job.lease_holder.as_deref() == Some(worker_id)
    }

    /// Renews the lease and records progress. Returns whether a cancel was requested.
    pub async fn heartbeat(&self, job_id: &JobId, worker_id: &str, stage: &str, percent: u8) -> Result<bool, JobError> {
        let job = self
            .transition(job_id, |service, job| {
                if !JobService::holds_lease(job, worker_id) {
                    return Err(JobError::LeaseLost);
                }
                let now = service.now();
                let mut next = job.clone();
                next.heartbeat_at = Some(now);
                next.lease_expires_at = Some(now.plus_seconds(service.config.lease_seconds));
                next.stage = stage.chars().take(32).collect();
                next.progress_percent = percent.min(100);
                next.updated_at = now;
                Ok(Some(JobWrite { job: next, expected_version: Some(job.version), ledger: None }))
            })
            .await?;
        Ok(job.cancel_requested)
    }

    /// Ends a worker's attempt. A job with `cancel_requested` never ends succeeded; a transient
    /// failure before the last attempt goes back to the queue (no refund); everything else that
    /// is not a success ends refunded. Ending a job that already ended is a no-op.
    pub async fn finish(&self, job_id: &JobId, worker_id: &str, finish: Finish) -> Result<JobRecord, JobError> {
        let artifact_id = match &finish {
            Finish::Succeeded(rendered) => {
                if rendered.bytes.len() > self.config.artifact_bytes_max {
                    return Err(JobError::ArtifactTooLarge(self.config.artifact_bytes_max));
                }
                let job = self.store.job(job_id).await?.ok_or(JobError::NotFound)?;
                if job.status.is_terminal() {
                    return Ok(job);
                }
                if !JobService::holds_lease(&job, worker_id) {
                    return Err(JobError::LeaseLost);
                }
                let artifact = Artifact {
                    artifact_id: ArtifactId::generate(),
                    account_id: job.account_id.clone(),
                    run_id: job.run_id.clone(),
                    content_type: rendered.content_type.clone(),
                    bytes: rendered.bytes.clone(),
                    created_at: self.now(),
                };
                self.runs.put_artifact(&artifact).await?;
                Some(artifact.artifact_id)
            }
            _ => None,
        };
        self.transition(job_id, |service, job| {
            if job.status.is_terminal() {
                return Ok(None);
            }
            if !JobService::holds_lease(job, worker_id) {
                return Err(JobError::LeaseLost);
            }
            if job.cancel_requested {
                return Ok(Some(service.terminal(job, JobStatus::Canceled, Some(JobErrorCode::Canceled), None)));
            }
            Ok(Some(match &finish {
                Finish::Succeeded(_) => {
                    let mut write = service.terminal(job, JobStatus::Succeeded, None, None);
                    write.job.artifact_id = artifact_id.clone();
                    write.job.stage = "compose".to_owned();
                    write.job.progress_percent = 100;
                    write
                }
                Finish::Canceled => service.terminal(job, JobStatus::Canceled, Some(JobErrorCode::Canceled), None),
                Finish::Failed(failure) if failure.transient && job.attempts < service.config.attempts_max => {
                    let now = service.now();
                    let backoff = service.config.retry_backoff_seconds << job.attempts.saturating_sub(1).min(10);
                    let mut next = job.clone();
                    next.status = JobStatus::Queued;
                    next.lease_holder = None;
                    next.lease_expires_at = None;
                    next.run_after = now.plus_seconds(backoff);
                    next.error_stage = Some(failure.stage.clone());
                    next.error_code = Some(failure.code.as_str().to_owned());
                    next.error_detail = Some(failure.detail.clone());
                    next.updated_at = now;
                    JobWrite { job: next, expected_version: Some(job.version), ledger: None }
                }
                Finish::Failed(failure) => {
                    let mut write =
                        service.terminal(job, JobStatus::Failed, Some(failure.code), Some(failure.detail.clone()));
                    write.job.error_stage = Some(failure.stage.clone());
                    write
                }
            }))
        })
        .await
        .inspect(|job| {
            if job.status == JobStatus::Queued {
                self.queued.notify_one();
            }
        })
    }
}
