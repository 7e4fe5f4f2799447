//! The worker side of jobs: the protocol a worker speaks, whether it runs in the server process
//! ([`JobService`] itself) or as a separate `creditgraph worker` process over HTTP, and the one
//! loop both kinds run.
//!
//! The loop owns nothing but a lease: it claims a job, renders it while heartbeats renew the
//! lease and carry progress, and ends the attempt through [`WorkerBackend::finish`], where the
//! job service decides the job's fate and its credits. Every way out of a render is handled
//! here: a cancel seen at a heartbeat ends the job canceled (refunded by the service); a lost
//! lease drops the render without a word (someone else owns the job now); a shutdown drops the
//! render and hands the lease back as a transient failure, so the job is queued again without a
//! refund (the service refunds it only when that was its last attempt). The loop never panics:
//! a panicking renderer is a permanent failure, and an unreachable job system is logged and
//! retried with a bounded backoff.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use store::{JobId, JobRecord};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::code::JobErrorCode;
use crate::render::{ProgressSink, RenderFailure, Renderer};
use crate::service::{Finish, JobError, JobService, JobsConfig};

/// Longest wait after failing to reach the job system (the wait doubles from `idle_poll_ms`).
pub const ERROR_BACKOFF_MS_MAX: u64 = 30_000;
/// Attempts to hand in a finished attempt before leaving the job to its lease's expiry.
pub const FINISH_ATTEMPTS_MAX: u32 = 5;
/// First wait between finish attempts (doubled each time).
const FINISH_RETRY_MS: u64 = 200;
/// Jobs the periodic stuck sweep ends per round.
pub const STUCK_SWEEP_BATCH_MAX: u32 = 100;
/// The detail of the transient failure a worker hands its lease back with at shutdown.
pub const SHUTDOWN_DETAIL: &str = "worker shutting down";

/// What a worker can ask of the job system. Implemented in-process by [`JobService`] and over
/// HTTP by the remote worker's client.
#[async_trait]
pub trait WorkerBackend: Send + Sync + 'static {
    /// The oldest claimable job, now leased to `worker_id`, or `None`.
    async fn claim(&self, worker_id: &str) -> Result<Option<JobRecord>, JobError>;
    /// Renews the lease and reports progress; returns true when a cancel was requested.
    async fn heartbeat(&self, job_id: &JobId, worker_id: &str, stage: &str, percent: u8) -> Result<bool, JobError>;
    /// Ends this attempt.
    async fn finish(&self, job_id: &JobId, worker_id: &str, finish: Finish) -> Result<JobRecord, JobError>;
    /// Waits (at most `timeout`) until a job may be claimable. In-process workers are woken as
    /// soon as a job is queued; a remote worker simply polls.
    async fn wait_for_jobs(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }
}

#[async_trait]
impl WorkerBackend for JobService {
    async fn claim(&self, worker_id: &str) -> Result<Option<JobRecord>, JobError> {
        JobService::claim(self, worker_id).await
    }

    async fn heartbeat(&self, job_id: &JobId, worker_id: &str, stage: &str, percent: u8) -> Result<bool, JobError> {
        JobService::heartbeat(self, job_id, worker_id, stage, percent).await
    }

    async fn finish(&self, job_id: &JobId, worker_id: &str, finish: Finish) -> Result<JobRecord, JobError> {
        JobService::finish(self, job_id, worker_id, finish).await
    }

    async fn wait_for_jobs(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.queued.notified()).await;
    }
}

/// The latest progress a render reported; the next heartbeat carries it.
struct LatestProgress(Mutex<(String, u8)>);

impl LatestProgress {
    fn latest(&self) -> (String, u8) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ProgressSink for LatestProgress {
    fn progress(&self, stage: &str, percent: u8) {
        let mut latest = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *latest = (stage.chars().take(32).collect(), percent.min(100));
    }
}

/// How one attempt's render ended.
enum Ending {
    Rendered(Result<crate::render::Rendered, RenderFailure>),
    CancelRequested,
    LeaseLost,
    Shutdown,
}

/// `base_ms` doubled per consecutive failure, at most [`ERROR_BACKOFF_MS_MAX`].
fn backoff(base_ms: u64, failures: u32) -> Duration {
    let doubled = base_ms.max(1).saturating_mul(1_u64 << failures.saturating_sub(1).min(16));
    Duration::from_millis(doubled.min(ERROR_BACKOFF_MS_MAX))
}

/// Claims and renders jobs until `shutdown` is cancelled. Uses of `config`: `heartbeat_seconds`
/// (how often the lease is renewed) and `idle_poll_ms` (the longest idle wait).
pub async fn run_worker(
    backend: Arc<dyn WorkerBackend>,
    renderer: Arc<dyn Renderer>,
    worker_id: String,
    config: JobsConfig,
    shutdown: CancellationToken,
) {
    tracing::info!(worker_id, "worker started");
    let idle = Duration::from_millis(config.idle_poll_ms.max(1));
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        match backend.claim(&worker_id).await {
            Ok(Some(job)) => {
                failures = 0;
                run_job(backend.as_ref(), renderer.as_ref(), &worker_id, &config, job, &shutdown).await;
            }
            Ok(None) => {
                failures = 0;
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = backend.wait_for_jobs(idle) => {}
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = backoff(config.idle_poll_ms, failures);
                tracing::warn!(worker_id, %error, failures, retry_in = ?delay, "cannot claim a job");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!(worker_id, "worker stopped");
}

/// Renews the lease every `period` with the latest progress, until a heartbeat says to stop.
async fn heartbeats(
    backend: &dyn WorkerBackend,
    job_id: &JobId,
    worker_id: &str,
    progress: &LatestProgress,
    period: Duration,
) -> Ending {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (stage, percent) = progress.latest();
        match backend.heartbeat(job_id, worker_id, &stage, percent).await {
            Ok(true) => return Ending::CancelRequested,
            Ok(false) => {}
            Err(JobError::LeaseLost | JobError::NotFound) => return Ending::LeaseLost,
            // The lease may still be renewed by the next beat; if not, the job is lost, not harmed.
            Err(error) => tracing::warn!(%job_id, worker_id, %error, "heartbeat failed"),
        }
    }
}

/// One attempt at one claimed job.
async fn run_job(
    backend: &dyn WorkerBackend,
    renderer: &dyn Renderer,
    worker_id: &str,
    config: &JobsConfig,
    job: JobRecord,
    shutdown: &CancellationToken,
) {
    let job_id = &job.job_id;
    tracing::info!(%job_id, worker_id, attempt = job.attempts, "job claimed");
    if job.cancel_requested {
        finish(backend, job_id, worker_id, Finish::Canceled).await;
        return;
    }
    let progress = LatestProgress(Mutex::new(("scriptify".to_owned(), 0)));
    let period = Duration::from_secs(config.heartbeat_seconds.max(1));
    let render = AssertUnwindSafe(renderer.render(job_id.as_str(), &job.input, &progress)).catch_unwind();
    let ending = tokio::select! {
        biased;
        () = shutdown.cancelled() => Ending::Shutdown,
        ending = heartbeats(backend, job_id, worker_id, &progress, period) => ending,
        rendered = render => match rendered {
            Ok(result) => Ending::Rendered(result),
            Err(_panic) => {
                tracing::error!(%job_id, worker_id, "the renderer panicked");
                Ending::Rendered(Err(RenderFailure {
                    transient: false,
                    code: JobErrorCode::RenderUnrecoverable,
                    stage: progress.latest().0,
                    detail: "the renderer crashed".to_owned(),
                }))
            }
        },
    };
    // The render future is dropped here (for a command renderer: its process group is killed).
    let outcome = match ending {
        Ending::Rendered(Ok(rendered)) => Finish::Succeeded(rendered),
        Ending::Rendered(Err(failure)) => {
            tracing::info!(%job_id, worker_id, transient = failure.transient, code = failure.code.as_str(), detail = %failure.detail, "render failed");
            Finish::Failed(failure)
        }
        Ending::CancelRequested => Finish::Canceled,
        Ending::LeaseLost => {
            tracing::warn!(%job_id, worker_id, "lease lost; the render is dropped");
            return;
        }
        Ending::Shutdown => Finish::Failed(RenderFailure {
            transient: true,
            code: JobErrorCode::Unknown,
            stage: progress.latest().0,
            detail: SHUTDOWN_DETAIL.to_owned(),
        }),
    };
    finish(backend, job_id, worker_id, outcome).await;
}

/// Hands in the attempt's end, retrying a job system that cannot be reached (bounded). When it
/// never can, the lease expires and the job is claimed again or ended by the stuck sweep.
async fn finish(backend: &dyn WorkerBackend, job_id: &JobId, worker_id: &str, mut outcome: Finish) {
    let mut attempt = 0;
    while attempt < FINISH_ATTEMPTS_MAX {
        attempt += 1;
        match backend.finish(job_id, worker_id, outcome.clone()).await {
            Ok(job) => {
                tracing::info!(
                    %job_id,
                    worker_id,
                    status = job.status.as_str(),
                    refunded = job.refund_applied_at.is_some(),
                    "job attempt finished"
                );
                return;
            }
            Err(JobError::LeaseLost) => {
                tracing::warn!(%job_id, worker_id, "lease lost before the attempt was handed in");
                return;
            }
            Err(JobError::NotFound) => {
                tracing::error!(%job_id, worker_id, "the job vanished");
                return;
            }
            Err(JobError::ArtifactTooLarge(bytes_max)) if matches!(outcome, Finish::Succeeded(_)) => {
                outcome = Finish::Failed(RenderFailure {
                    transient: false,
                    code: JobErrorCode::RenderResourceLimit,
                    stage: "compose".to_owned(),
                    detail: format!("the artifact is larger than {bytes_max} bytes"),
                });
                attempt -= 1;
            }
            Err(error) => {
                tracing::warn!(%job_id, worker_id, %error, attempt, "cannot hand in the attempt");
                if attempt < FINISH_ATTEMPTS_MAX {
                    tokio::time::sleep(backoff(FINISH_RETRY_MS, attempt)).await;
                }
            }
        }
    }
    tracing::error!(
        %job_id,
        worker_id,
        "gave up handing in the attempt; the lease will expire and the job be claimed again"
    );
}

/// Starts `count` in-process workers on `service`, named `<instance_id>-w<N>`, woken as soon as
/// a job is queued. They stop when `shutdown` is cancelled, handing back the leases they hold:
/// await the handles before closing the store.
pub fn spawn_workers(
    service: &Arc<JobService>,
    renderer: Arc<dyn Renderer>,
    instance_id: &str,
    count: usize,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    (1..=count)
        .map(|number| {
            let backend: Arc<dyn WorkerBackend> = Arc::clone(service) as Arc<dyn WorkerBackend>;
            tokio::spawn(run_worker(
                backend,
                Arc::clone(&renderer),
                format!("{instance_id}-w{number}"),
                service.config().clone(),
                shutdown.clone(),
            ))
        })
        .collect()
}

/// Ends stuck jobs every `interval` (failed with `infrastructure_timeout` and refunded, or
/// canceled when a cancel was requested) until `shutdown` is cancelled. Reads end stuck jobs
/// too; this sweep finds the ones nobody reads.
pub fn spawn_stuck_sweeper(
    service: Arc<JobService>,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match service.sweep_stuck(STUCK_SWEEP_BATCH_MAX).await {
                Ok(0) => {}
                Ok(ended) => tracing::info!(ended, "stuck jobs ended"),
                Err(error) => tracing::warn!(%error, "stuck job sweep failed"),
            }
        }
    })
}
