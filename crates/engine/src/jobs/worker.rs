//! The worker side of jobs: the protocol a worker speaks, whether it runs in the server process
//! ([`JobService`] itself) or as a separate `creditgraph worker` process over HTTP.

use async_trait::async_trait;
use store::JobRecord;

use super::{Finish, JobError, JobService};

/// What a worker can ask of the job system. Implemented in-process by [`JobService`] and over
/// HTTP by the remote worker's client.
#[async_trait]
pub trait WorkerBackend: Send + Sync + 'static {
    /// The oldest claimable job, now leased to `worker_id`, or `None`.
    async fn claim(&self, worker_id: &str) -> Result<Option<JobRecord>, JobError>;
    /// Renews the lease and reports progress; returns true when a cancel was requested.
    async fn heartbeat(&self, job_id: &str, worker_id: &str, stage: &str, percent: u8) -> Result<bool, JobError>;
    /// Ends this attempt.
    async fn finish(&self, job_id: &str, worker_id: &str, finish: Finish) -> Result<JobRecord, JobError>;
}

#[async_trait]
impl WorkerBackend for JobService {
    async fn claim(&self, worker_id: &str) -> Result<Option<JobRecord>, JobError> {
        JobService::claim(self, worker_id).await
    }

    async fn heartbeat(&self, job_id: &str, worker_id: &str, stage: &str, percent: u8) -> Result<bool, JobError> {
        JobService::heartbeat(self, job_id, worker_id, stage, percent).await
    }

    async fn finish(&self, job_id: &str, worker_id: &str, finish: Finish) -> Result<JobRecord, JobError> {
        JobService::finish(self, job_id, worker_id, finish).await
    }
}
