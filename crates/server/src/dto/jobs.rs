//! The shapes of video jobs, for their owners (`/v1/jobs/…`) and for workers (`/v1/worker/…`).
//!
//! Worker request bodies ignore fields they do not know (unlike the other requests): a worker of
//! a newer version can still talk to an older server. Their text fields are checked when parsed
//! (`wire::jobs`), with the protocol's limits (`jobs::remote`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

wire_enum!(out
    /// Where a job is: `queued` and `running` until it ends `succeeded`, `failed` or `canceled`.
    JobStatusName from store::JobStatus { Queued, Running, Succeeded, Failed, Canceled }
);

wire_enum!(both
    /// Why a job failed (or `canceled`). Closed set.
    JobErrorCode with jobs::JobErrorCode {
        QueueDelay,
        LlmTimeout,
        TtsProviderDown,
        RenderResourceLimit,
        RenderUnrecoverable,
        InfrastructureEnqueueFailed,
        InfrastructureTimeout,
        InvalidInput,
        InvalidRetrySource,
        RetryAlreadyUsed,
        Canceled,
        Unknown,
    }
);

/// `?account_id=` on job routes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    /// The account that owns the job (or thread).
    pub account_id: String,
}

/// A video job as its owner sees it (also the payload of `job_progress` and `job_finished`).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResponse {
    pub job_id: String,
    pub account_id: String,
    pub thread_id: String,
    /// The turn that created the job.
    pub run_id: String,
    pub status: JobStatusName,
    /// `enqueue`, `scriptify`, `tts`, `render`, `compose`, or what a worker reported.
    pub stage: String,
    /// 0 to 100.
    pub progress: u8,
    /// What the job was charged (refunded when it fails or is canceled).
    #[schema(example = "10")]
    pub price: String,
    pub cancel_requested: bool,
    /// The failed or canceled job this one retries.
    pub retry_source_job_id: Option<String>,
    /// Whether a `video_retry` turn may retry this job (failed or canceled, not itself a retry).
    pub can_user_retry: bool,
    /// Attempts started so far.
    pub attempts: u32,
    pub error_stage: Option<String>,
    /// One of `JobErrorCode`'s values.
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    /// Whether the price was given back.
    pub refunded: bool,
    pub refund_applied_at: Option<String>,
    pub artifact_id: Option<String>,
    /// `/v1/artifacts/{artifact_id}`
    pub artifact_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// `GET /v1/threads/{thread_id}/jobs`
#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadJobsResponse {
    pub thread_id: String,
    /// Oldest first.
    pub jobs: Vec<JobResponse>,
}

/// A job as a worker sees it: the owner's view and what rendering needs.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerJobResponse {
    #[serde(flatten)]
    pub job: JobResponse,
    /// The input snapshot the renderer works from (the problem, the answer, the explanation).
    #[schema(value_type = Object)]
    pub input: Value,
    /// The turn's hold the price was captured from.
    pub hold_id: String,
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<String>,
    pub heartbeat_at: Option<String>,
    /// A queued job is not claimed before this time (retry backoff).
    pub run_after: String,
    /// Incremented by every write of the job.
    pub version: u64,
}

/// `POST /v1/worker/claim`
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClaimRequest {
    /// 1-128 visible ASCII characters; the lease holder.
    pub worker_id: String,
}

/// `POST /v1/worker/jobs/{job_id}/heartbeat`
#[derive(Debug, Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    pub worker_id: String,
    /// 1-32 lowercase letters, digits or underscores.
    pub stage: String,
    /// 0 to 100.
    pub progress: u8,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    /// The job's owner asked to cancel it: end the attempt with `canceled`.
    pub cancel_requested: bool,
}

/// How a worker ends its attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishOutcome {
    Succeeded,
    Failed,
    Canceled,
}

/// `POST /v1/worker/jobs/{job_id}/finish`
#[derive(Debug, Deserialize, ToSchema)]
pub struct FinishRequest {
    pub worker_id: String,
    pub outcome: FinishOutcome,
    /// `succeeded`: the artifact's bytes in base64 (at most the configured artifact size).
    pub artifact_base64: Option<String>,
    /// `succeeded`: the artifact's media type (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// `failed`: worth another attempt (default false).
    pub transient: Option<bool>,
    /// `failed`: why (default `unknown`).
    pub error_code: Option<JobErrorCode>,
    /// `failed`: the stage that failed (default `render`).
    pub stage: Option<String>,
    /// `failed`: what happened (cut to 2048 characters).
    pub detail: Option<String>,
}
