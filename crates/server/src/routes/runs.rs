//! Metered runs: estimate, solve (an SSE stream), run state, replay, cancel, artifacts, threads.
//!
//! The run itself is a background task of the engine; these handlers only start it, follow its
//! event buffer, or read what it recorded.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use engine::events::follow::FollowError;
use engine::events::Frame;
use engine::run::{Begun, Engine, SolveRequest, StartError};
use futures::{Stream, StreamExt};
use pricing::estimate::routing_lines;
use pricing::{Difficulty, ExplanationMode, Plan, Step, Tier, PLAN_STEPS_MAX};
use std::sync::Arc;
use store::{ArtifactId, Idempotency, JobId, RunId, RunRecord, ThreadId};

use crate::dto::{EstimateRequest, EstimateResponse, Problem, RunEvent, RunResponse, SolveRequestDto, ThreadResponse};
use crate::error::ApiError;
use crate::extract::{ApiPath, IdempotencyKey, JsonBody, RequireService};
use crate::routes::{bodiless_fingerprint, json, respond_once};
use crate::state::AppState;
use crate::wire;

/// SSE keep-alive comment interval.
const KEEP_ALIVE_SECONDS: u64 = 15;
/// How long open streams may drain once shutdown starts.
const STREAM_DRAIN_SECONDS: u64 = 5;
/// Turns listed by `GET /v1/threads/{id}`.
const THREAD_TURNS_MAX: u32 = 200;

fn runs_unavailable() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "runs_unavailable", "metered runs are not configured on this server")
}

pub(crate) fn engine(state: &AppState) -> Result<&Arc<Engine>, ApiError> {
    state.engine.as_ref().ok_or_else(runs_unavailable)
}

fn start_error(error: StartError) -> ApiError {
    match error {
        StartError::InvalidInput(detail) => ApiError::invalid_request(detail),
        StartError::ThreadOfAnotherAccount => {
            ApiError::new(StatusCode::NOT_FOUND, "thread_not_found", "no such thread for this account")
        }
        StartError::ThreadBusy { run_id } => {
            ApiError::new(StatusCode::CONFLICT, "thread_busy", "the thread has a run in progress")
                .with("run_id", run_id.to_string())
        }
        StartError::Busy => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "runs_busy", "too many runs in progress; retry shortly")
        }
        StartError::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
        }
        StartError::NotConfigured => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "solve_unavailable",
            "no LLM provider is configured (CREDITGRAPH_LLM_BASE_URL)",
        ),
        StartError::IdempotencyConflict => ApiError::idempotency_conflict(),
        StartError::Store(error) => error.into(),
    }
}

/// What a plan would hold at the current catalog.
#[utoipa::path(
    post, path = "/v1/estimate", tag = "runs",
    request_body = EstimateRequest,
    responses(
        (status = 200, body = EstimateResponse),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn estimate(
    State(state): State<AppState>,
    _auth: RequireService,
    body: JsonBody<EstimateRequest>,
) -> Result<Response, ApiError> {
    // Pricing alone answers an estimate: the catalog in force and the plan.
    let catalog = state.catalog.as_ref().ok_or_else(runs_unavailable)?.current();
    let request = &body.value;
    let listed = request
        .steps
        .iter()
        .map(|raw| Step::parse(raw).ok_or_else(|| ApiError::invalid_request(format!("steps: unknown step `{raw}`"))))
        .collect::<Result<Vec<Step>, ApiError>>()?;
    let tier = match (&request.model, &request.difficulty) {
        (Some(model), None) => {
            Tier::parse(model).ok_or_else(|| ApiError::invalid_request("model: flash, sonnet or opus"))?
        }
        (None, Some(difficulty)) => catalog.tier_for(
            Difficulty::parse(difficulty)
                .ok_or_else(|| ApiError::invalid_request("difficulty: easy, medium or hard"))?,
        ),
        _ => return Err(ApiError::invalid_request("give exactly one of model and difficulty")),
    };
    let mode = ExplanationMode::parse(&request.explanation_mode)
        .ok_or_else(|| ApiError::invalid_request("explanation_mode: full or brief"))?;
    let plan = Plan::normalise(&listed, tier, mode)
        .map_err(|_| ApiError::invalid_request(format!("steps: at most {PLAN_STEPS_MAX}")))?;
    let estimate = plan.estimate(&catalog, &routing_lines(&catalog));
    let response = EstimateResponse {
        total: estimate.total.to_string(),
        breakdown: estimate.breakdown.iter().map(wire::runs::estimate_line).collect(),
        catalog_version: estimate.catalog_version,
    };
    Ok(json(StatusCode::OK, response))
}

/// One SSE event: `event: <type>`, `id: <thread_id>:<seq>`, `data: <RunEvent JSON>`.
fn frame_event(thread_id: &ThreadId, run_id: &RunId, frame: &Frame) -> Result<Event, Infallible> {
    let data = wire::runs::run_event(thread_id, run_id, frame);
    let data = serde_json::to_string(&data).expect("event DTOs always serialize");
    Ok(Event::default().event(frame.kind.as_str()).id(frame.id.clone()).data(data))
}

fn stream_response(
    thread_id: ThreadId,
    run_id: RunId,
    stream: impl Stream<Item = Frame> + Send + 'static,
    stopping: tokio_util::sync::CancellationToken,
) -> Response {
    // An open stream must never block shutdown. Once the engine stops, its runs are canceled and
    // close their streams after their `error {code: canceled}`; a stream still open a few seconds
    // later (a reader of an ended run's replay, say) is cut.
    let cut = async move {
        stopping.cancelled().await;
        tokio::time::sleep(Duration::from_secs(STREAM_DRAIN_SECONDS)).await;
    };
    let ids = [("x-run-id", run_id.as_str().parse()), ("x-thread-id", thread_id.as_str().parse())];
    let stream = stream.take_until(Box::pin(cut)).map(move |frame| frame_event(&thread_id, &run_id, &frame));
    let mut response =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(KEEP_ALIVE_SECONDS))).into_response();
    for (name, value) in ids {
        if let Ok(value) = value {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Start a turn and stream its events (`text/event-stream`). The run goes on if the client
/// disconnects; `GET /v1/runs/{run_id}/events` resumes. Under an `Idempotency-Key`, a retry with
/// the same body (on any instance, while the run goes on or after it ended) streams the run the
/// first request started, from the start or after `Last-Event-ID`, instead of starting another.
#[utoipa::path(
    post, path = "/v1/solve", tag = "runs",
    request_body = SolveRequestDto,
    params(("Idempotency-Key" = Option<String>, Header), ("Last-Event-ID" = Option<String>, Header, description = "with an Idempotency-Key: resume the key's run after this event")),
    responses(
        (status = 200, description = "the run's events; each `data` line is one RunEvent", body = RunEvent, content_type = "text/event-stream",
            headers(("x-run-id" = String, description = "the run"), ("x-thread-id" = String, description = "its thread"))),
        (status = 404, description = "thread_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "thread_busy, idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "run_events_expired (a retried key whose run's events are gone)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "runs_busy, runs_unavailable, shutting_down", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited (the token's or the account's rate limit; see Retry-After)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "whole seconds until a request would be admitted"))),
    ),
    security(("bearer" = []))
)]
pub async fn solve(
    State(state): State<AppState>,
    auth: RequireService,
    key: IdempotencyKey,
    headers: HeaderMap,
    body: JsonBody<SolveRequestDto>,
) -> Result<Response, ApiError> {
    let engine = engine(&state)?.clone();
    let request = &body.value;
    let account_id = wire::parse_account_id(&request.account_id)?;
    let thread_id =
        request.thread_id.as_deref().map(|text| wire::parse_id("thread_id", text, ThreadId::parse)).transpose()?;
    let retry_source_job_id = request
        .retry_source_job_id
        .as_deref()
        .map(|text| wire::parse_id("retry_source_job_id", text, JobId::parse))
        .transpose()?;
    let idempotency = match key.as_str() {
        Some(key) => Some(Idempotency { key: key.to_owned(), fingerprint: body.fingerprint(None)? }),
        None => None,
    };
    state.rate_limiter.check(auth.caller(), Some(&account_id))?;
    let solve = SolveRequest {
        account_id,
        problem: request.problem.clone(),
        thread_id,
        action: request.action.map(Into::into),
        retry_source_job_id,
    };
    let started = match engine.start_solve_once(solve, idempotency).await.map_err(start_error)? {
        Begun::Started(started) => started,
        Begun::Existing(run) => {
            let after = last_event_seq(&headers, run.thread_id.as_str())?;
            let frames = engine.follow(&run, after).await.map_err(follow_error)?;
            return Ok(stream_response(run.thread_id, run.run_id, frames, engine.stopping()));
        }
    };
    let frames = started.channel.follow(None);
    let (thread_id, run_id) = (started.thread_id.clone(), started.run_id.clone());
    let response = if engine.config().cancel_on_disconnect {
        // The guard lives inside the stream: when the client leaves, hyper drops the stream.
        let guard = DisconnectGuard { engine: engine.clone(), channel: started.channel.clone() };
        let frames = frames.map(move |frame| {
            let _ = &guard;
            frame
        });
        stream_response(thread_id, run_id, frames, engine.stopping())
    } else {
        stream_response(thread_id, run_id, frames, engine.stopping())
    };
    Ok(response)
}

fn follow_error(error: FollowError) -> ApiError {
    match error {
        FollowError::Expired => ApiError::new(
            StatusCode::GONE,
            "run_events_expired",
            "this run's events are no longer kept; its final state is at GET /v1/runs/{run_id}",
        ),
        FollowError::BeyondEnd { .. } => ApiError::invalid_request("Last-Event-ID is beyond the run's last event"),
        FollowError::Store(error) => error.into(),
    }
}

/// Cancels its run when dropped before the run's stream closed (the client left mid-run).
struct DisconnectGuard {
    engine: Arc<Engine>,
    channel: Arc<engine::events::EventChannel>,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if !self.channel.is_closed() && self.engine.cancel(self.channel.run_id()) {
            tracing::info!(run_id = %self.channel.run_id(), "client left: run canceled");
        }
    }
}

async fn load_run(state: &AppState, run_id: &RunId) -> Result<RunRecord, ApiError> {
    let engine = engine(state)?;
    engine
        .run_store()
        .run(run_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "run_not_found", "no such run"))
}

/// A run's state, hold and costs.
#[utoipa::path(
    get, path = "/v1/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path)),
    responses((status = 200, body = RunResponse), (status = 404, description = "run_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_run(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let run_id = wire::parse_id("run_id", &run_id, RunId::parse)?;
    let record = load_run(&state, &run_id).await?;
    Ok(json(StatusCode::OK, wire::runs::run_response(&record)))
}

/// Parses `Last-Event-ID: <thread_id>:<seq>` into the seq to resume after.
fn last_event_seq(headers: &HeaderMap, thread_id: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::invalid_request("Last-Event-ID must be text"))?;
    let (thread, seq) =
        text.rsplit_once(':').ok_or_else(|| ApiError::invalid_request("Last-Event-ID is <thread_id>:<seq>"))?;
    if thread != thread_id {
        return Err(ApiError::invalid_request("Last-Event-ID names another thread"));
    }
    seq.parse().map(Some).map_err(|_| ApiError::invalid_request("Last-Event-ID seq must be a number"))
}

/// Resume a run's stream after `Last-Event-ID` (or from the start), on any instance: live while
/// the run goes on, complete after it ended (within the event retention).
#[utoipa::path(
    get, path = "/v1/runs/{run_id}/events", tag = "runs",
    params(("run_id" = String, Path), ("Last-Event-ID" = Option<String>, Header)),
    responses(
        (status = 200, description = "the run's events after `Last-Event-ID`; each `data` line is one RunEvent", body = RunEvent, content_type = "text/event-stream",
            headers(("x-run-id" = String, description = "the run"), ("x-thread-id" = String, description = "its thread"))),
        (status = 404, description = "run_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "run_events_expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (a malformed Last-Event-ID, one of another run, or one beyond its end)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn run_events(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(run_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run_id = wire::parse_id("run_id", &run_id, RunId::parse)?;
    let engine = engine(&state)?.clone();
    let run = load_run(&state, &run_id).await?;
    let after = last_event_seq(&headers, run.thread_id.as_str())?;
    let frames = engine.follow(&run, after).await.map_err(follow_error)?;
    Ok(stream_response(run.thread_id, run.run_id, frames, engine.stopping()))
}

/// Cancel a run, on whichever instance runs it: it releases its hold and ends with
/// `error {code: canceled}` (within a second when it runs on another instance).
#[utoipa::path(
    post, path = "/v1/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 202, description = "cancel requested", body = RunResponse),
        (status = 200, description = "the run had already ended", body = RunResponse),
        (status = 404, description = "run_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (a malformed run id or Idempotency-Key)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    _auth: RequireService,
    key: IdempotencyKey,
    ApiPath(run_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let run_id = wire::parse_id("run_id", &run_id, RunId::parse)?;
    let engine = engine(&state)?.clone();
    let fingerprint = bodiless_fingerprint("POST", &format!("/v1/runs/{run_id}/cancel"), "");
    respond_once(engine.run_store().as_ref(), &key, fingerprint, || async {
        let record = load_run(&state, &run_id).await?;
        if !record.state.is_terminal() && engine.request_cancel(&run_id).await? {
            return Ok((StatusCode::ACCEPTED, body_text(&wire::runs::run_response(&record))));
        }
        // Ended, perhaps just now: the record as it ended.
        let record = load_run(&state, &run_id).await?;
        Ok((StatusCode::OK, body_text(&wire::runs::run_response(&record))))
    })
    .await
}

fn body_text<T: serde::Serialize>(body: &T) -> String {
    serde_json::to_string(body).expect("DTOs always serialize")
}

/// A stored artifact (a solution PDF).
#[utoipa::path(
    get, path = "/v1/artifacts/{artifact_id}", tag = "runs",
    params(("artifact_id" = String, Path)),
    responses((status = 200, description = "the artifact's bytes"), (status = 404, description = "artifact_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_artifact(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(artifact_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let artifact_id = wire::parse_id("artifact_id", &artifact_id, ArtifactId::parse)?;
    let engine = engine(&state)?;
    let artifact = engine
        .run_store()
        .artifact(&artifact_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "artifact_not_found", "no such artifact"))?;
    Ok(([(header::CONTENT_TYPE, artifact.content_type)], Body::from(artifact.bytes)).into_response())
}

/// A thread's turns, oldest first.
#[utoipa::path(
    get, path = "/v1/threads/{thread_id}", tag = "runs",
    params(("thread_id" = String, Path)),
    responses((status = 200, body = ThreadResponse), (status = 404, description = "thread_not_found", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get_thread(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(thread_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let thread_id = wire::parse_id("thread_id", &thread_id, ThreadId::parse)?;
    let engine = engine(&state)?;
    let runs = engine.run_store();
    let account_id = runs
        .thread_account(&thread_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "thread_not_found", "no such thread"))?;
    let turns = runs.thread_runs(&thread_id, None, THREAD_TURNS_MAX).await?;
    let response = ThreadResponse {
        thread_id: thread_id.to_string(),
        account_id: account_id.to_string(),
        turns: turns.iter().map(wire::runs::run_response).collect(),
    };
    Ok(json(StatusCode::OK, response))
}
