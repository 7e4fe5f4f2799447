//! The worker API: how `creditgraph worker` processes claim, heartbeat and finish video jobs.
//!
//! A remote worker has no database access; these three calls are all it can do, and each is one
//! call of the job service, which keeps the job's state machine and its credits. Access needs
//! the worker token, which is not one of the API's role tokens: a worker can hand in a failure
//! (and so cause a refund) but cannot touch accounts, and a service token cannot act as a worker.
//! The token is compared as a SHA-256 digest in constant time. Without a configured worker token
//! the API is off (503 `worker_api_disabled`), so it is never open by accident — even when the
//! role tokens are off on loopback.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use jobs::{JobError, JobService};
use store::JobId;
use subtle::ConstantTimeEq;

use crate::dto::{ClaimRequest, FinishRequest, HeartbeatRequest, HeartbeatResponse, Problem, WorkerJobResponse};
use crate::error::ApiError;
use crate::extract::{ApiPath, JsonBody};
use crate::routes::json;
use crate::state::{token_digest, AppState};
use crate::wire::{self, jobs::FinishBodyError};

/// Room in a finish body beyond the base64 artifact (the other fields).
const FINISH_ENVELOPE_BYTES_MAX: usize = 64 * 1024;

/// The caller presented the worker token.
pub struct RequireWorker;

impl FromRequestParts<AppState> for RequireWorker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.worker_token_digest else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "worker_api_disabled",
                "the worker API is off: no worker token is configured (CREDITGRAPH_WORKER_TOKEN)",
            ));
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer <worker token> header is required"))?;
        if !bool::from(token_digest(token.as_bytes()).ct_eq(&expected)) {
            return Err(ApiError::unauthorized("unknown worker token"));
        }
        Ok(RequireWorker)
    }
}

fn jobs(state: &AppState) -> Result<Arc<JobService>, ApiError> {
    state.engine.as_ref().and_then(|engine| engine.jobs().cloned()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "jobs_unavailable",
            "video jobs are not configured on this server",
        )
    })
}

fn job_error(error: JobError) -> ApiError {
    match error {
        JobError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "job_not_found", "no such job"),
        JobError::LeaseLost => {
            ApiError::new(StatusCode::CONFLICT, "lease_lost", "this worker no longer holds the job's lease")
        }
        JobError::ArtifactTooLarge(bytes_max) => too_large(bytes_max),
        JobError::Store(error) => error.into(),
        JobError::Contention => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the job is busy; retry")
        }
        other => {
            tracing::error!(error = %other, "worker call failed");
            ApiError::internal()
        }
    }
}

fn too_large(bytes_max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the artifact is larger than {bytes_max} bytes"),
    )
    .with("bytes_max", bytes_max)
}

fn worker_job(job: &store::JobRecord) -> Response {
    json(StatusCode::OK, wire::jobs::worker_job_response(job))
}

/// Claim the oldest claimable job: 200 with the job (and its `input`), or 204 when none is due.
#[utoipa::path(
    post, path = "/v1/worker/claim", tag = "worker",
    request_body = ClaimRequest,
    responses(
        (status = 200, description = "the claimed job, with its input snapshot", body = WorkerJobResponse),
        (status = 204, description = "no job is due"),
        (status = 401, description = "unauthorized", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "worker_api_disabled, jobs_unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn claim(
    State(state): State<AppState>,
    _worker: RequireWorker,
    body: JsonBody<ClaimRequest>,
) -> Result<Response, ApiError> {
    let jobs = jobs(&state)?;
    let worker_id = wire::jobs::parse_worker_id(&body.value.worker_id).map_err(ApiError::invalid_request)?;
    match jobs.claim(&worker_id).await.map_err(job_error)? {
        Some(job) => Ok(worker_job(&job)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Renew the lease and report progress; the answer says whether a cancel was requested.
#[utoipa::path(
    post, path = "/v1/worker/jobs/{job_id}/heartbeat", tag = "worker",
    params(("job_id" = String, Path)),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "whether a cancel was requested", body = HeartbeatResponse),
        (status = 404, description = "job_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "lease_lost", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    _worker: RequireWorker,
    ApiPath(job_id): ApiPath<String>,
    body: JsonBody<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    let job_id = wire::parse_id("job_id", &job_id, JobId::parse)?;
    let jobs = jobs(&state)?;
    let request = &body.value;
    let worker_id = wire::jobs::parse_worker_id(&request.worker_id).map_err(ApiError::invalid_request)?;
    let stage = wire::jobs::parse_stage(&request.stage).map_err(ApiError::invalid_request)?;
    let percent = wire::jobs::parse_progress(request.progress).map_err(ApiError::invalid_request)?;
    let cancel_requested = jobs.heartbeat(&job_id, &worker_id, &stage, percent).await.map_err(job_error)?;
    Ok(json(StatusCode::OK, HeartbeatResponse { cancel_requested }))
}

/// End this attempt: `succeeded` (with the artifact), `failed` (transient goes back to the
/// queue; permanent, or the last attempt, ends refunded) or `canceled` (refunded).
#[utoipa::path(
    post, path = "/v1/worker/jobs/{job_id}/finish", tag = "worker",
    params(("job_id" = String, Path)),
    request_body = FinishRequest,
    responses(
        (status = 200, description = "the job after the attempt", body = WorkerJobResponse),
        (status = 404, description = "job_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "lease_lost", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "payload_too_large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn finish(
    State(state): State<AppState>,
    _worker: RequireWorker,
    ApiPath(job_id): ApiPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let job_id = wire::parse_id("job_id", &job_id, JobId::parse)?;
    let jobs = jobs(&state)?;
    let artifact_bytes_max = jobs.config().artifact_bytes_max;
    // The body carries the artifact in base64: 4 characters per 3 bytes, plus the other fields.
    let body_bytes_max = artifact_bytes_max.div_ceil(3).saturating_mul(4).saturating_add(FINISH_ENVELOPE_BYTES_MAX);
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| ApiError::invalid_request(format!("the body broke off: {error}")))?;
        if bytes.len() + chunk.len() > body_bytes_max {
            return Err(too_large(artifact_bytes_max));
        }
        bytes.extend_from_slice(&chunk);
    }
    let request: FinishRequest = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::invalid_request(format!("malformed body: {error}")))?;
    let (worker_id, outcome) = wire::jobs::parse_finish(request, artifact_bytes_max).map_err(|error| match error {
        FinishBodyError::Invalid(detail) => ApiError::invalid_request(detail),
        FinishBodyError::TooLarge(bytes_max) => too_large(bytes_max),
    })?;
    let job = jobs.finish(&job_id, &worker_id, outcome).await.map_err(job_error)?;
    Ok(worker_job(&job))
}
