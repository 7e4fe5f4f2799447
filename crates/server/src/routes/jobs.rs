//! Video jobs as their owners see them: progress, cancel, a thread's jobs.
//!
//! Jobs are addressed by id plus the owning `account_id` (a query parameter): a job of another
//! account answers 404, exactly like a job that does not exist, so ids leak nothing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use jobs::{JobError, JobService};
use store::{JobId, JobRecord, ThreadId};

use crate::dto::{JobResponse, OwnerQuery, Problem, ThreadJobsResponse};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, IdempotencyKey, RequireService};
use crate::routes::{bodiless_fingerprint, json, respond_once};
use crate::state::AppState;
use crate::wire;

/// Jobs listed by `GET /v1/threads/{thread_id}/jobs`.
const THREAD_JOBS_MAX: u32 = 100;

fn job_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "job_not_found", "no such job for this account")
}

pub(crate) fn jobs(state: &AppState) -> Result<Arc<JobService>, ApiError> {
    state.engine.as_ref().and_then(|engine| engine.jobs().cloned()).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "jobs_unavailable",
            "video jobs are not configured on this server",
        )
    })
}

pub(crate) fn job_error(error: JobError) -> ApiError {
    match error {
        JobError::NotFound => job_not_found(),
        JobError::Store(error) => error.into(),
        JobError::Contention => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the job is busy; retry")
        }
        other => {
            tracing::error!(error = %other, "job operation failed");
            ApiError::internal()
        }
    }
}

fn owned(job: Option<JobRecord>, account_id: &ledger::AccountId) -> Result<JobRecord, ApiError> {
    job.filter(|job| &job.account_id == account_id).ok_or_else(job_not_found)
}

/// The job named in the path, if the query's account owns it (read as it reads now).
async fn owned_job(
    state: &AppState,
    job_id: &JobId,
    query: &OwnerQuery,
) -> Result<(Arc<JobService>, JobRecord), ApiError> {
    let account_id = wire::parse_account_id(&query.account_id)?;
    let jobs = jobs(state)?;
    let job = owned(jobs.get(job_id).await.map_err(job_error)?, &account_id)?;
    Ok((jobs, job))
}

/// A job's status, stage and progress (a stuck job is ended, and refunded, on read).
#[utoipa::path(
    get, path = "/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path), OwnerQuery),
    responses((status = 200, description = "the job", body = JobResponse), (status = 404, description = "job_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(job_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<OwnerQuery>,
) -> Result<Response, ApiError> {
    let job_id = wire::parse_id("job_id", &job_id, JobId::parse)?;
    let (_, job) = owned_job(&state, &job_id, &query).await?;
    Ok(json(StatusCode::OK, wire::jobs::job_response(&job)))
}

/// Cancel a job: a queued job is canceled and refunded at once; a running one is canceled (and
/// refunded) by its worker at its next check; an ended job is returned unchanged.
#[utoipa::path(
    post, path = "/v1/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = String, Path), OwnerQuery, ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, description = "the job after the request", body = JobResponse),
        (status = 404, description = "job_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (a malformed job id, account or Idempotency-Key)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    _auth: RequireService,
    key: IdempotencyKey,
    ApiPath(job_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<OwnerQuery>,
) -> Result<Response, ApiError> {
    let job_id = wire::parse_id("job_id", &job_id, JobId::parse)?;
    jobs(&state)?;
    let engine = state.engine.as_ref().expect("jobs imply an engine");
    let path = format!("/v1/jobs/{job_id}/cancel");
    let fingerprint = bodiless_fingerprint("POST", &path, &format!("account_id={}", query.account_id));
    respond_once(engine.run_store().as_ref(), &key, fingerprint, || async {
        let (jobs, _) = owned_job(&state, &job_id, &query).await?;
        let job = jobs.cancel(&job_id).await.map_err(job_error)?;
        let body = serde_json::to_string(&wire::jobs::job_response(&job)).expect("DTOs always serialize");
        Ok((StatusCode::OK, body))
    })
    .await
}

/// A thread's jobs, oldest first.
#[utoipa::path(
    get, path = "/v1/threads/{thread_id}/jobs", tag = "jobs",
    params(("thread_id" = String, Path), OwnerQuery),
    responses((status = 200, description = "the thread's jobs, oldest first", body = ThreadJobsResponse), (status = 404, description = "thread_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn thread_jobs(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(thread_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<OwnerQuery>,
) -> Result<Response, ApiError> {
    let thread_id = wire::parse_id("thread_id", &thread_id, ThreadId::parse)?;
    let account_id = wire::parse_account_id(&query.account_id)?;
    let jobs = jobs(&state)?;
    let engine = state.engine.as_ref().expect("jobs imply an engine");
    let owner = engine.run_store().thread_account(&thread_id).await?;
    if owner.as_ref() != Some(&account_id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "thread_not_found", "no such thread for this account"));
    }
    let list = jobs.thread_jobs(&thread_id, THREAD_JOBS_MAX).await.map_err(job_error)?;
    let response = ThreadJobsResponse {
        thread_id: thread_id.to_string(),
        jobs: list.iter().map(wire::jobs::job_response).collect(),
    };
    Ok(json(StatusCode::OK, response))
}
