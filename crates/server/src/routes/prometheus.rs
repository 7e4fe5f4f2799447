//! `GET /metrics`: the process's Prometheus registry in the text format, with the store's
//! gauges read at scrape time (admin only: the figures describe every account together).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dto::Problem;
use crate::error::ApiError;
use crate::extract::RequireAdmin;
use crate::observe::metrics_handle;
use crate::state::AppState;

/// Pending holds in the store (whole store, not per account), by `store`.
pub const PENDING_HOLDS: &str = "creditgraph_pending_holds";
/// What the pending holds still hold, in micro-credits, by `store`.
pub const HELD_MICROS: &str = "creditgraph_held_credits_micros";
/// Video jobs by `status` (queued, running), by `store`.
pub const JOBS: &str = "creditgraph_jobs";
/// How long the oldest queued job has waited, in seconds (0 when none waits), by `store`.
pub const OLDEST_QUEUED_JOB_AGE_SECONDS: &str = "creditgraph_oldest_queued_job_age_seconds";

/// The content type of Prometheus's text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "unauthorized", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden (a service token)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store_unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn metrics(State(state): State<AppState>, _auth: RequireAdmin) -> Result<Response, ApiError> {
    let gauges = state.store.gauges().await?;
    let store = state.store.backend();
    metrics::gauge!(PENDING_HOLDS, "store" => store).set(gauges.pending_holds as f64);
    metrics::gauge!(HELD_MICROS, "store" => store).set(gauges.held.micros() as f64);
    metrics::gauge!(JOBS, "store" => store, "status" => "queued").set(gauges.jobs_queued as f64);
    metrics::gauge!(JOBS, "store" => store, "status" => "running").set(gauges.jobs_running as f64);
    let now = state.clock.now();
    let waited_micros = gauges.oldest_queued_job_at.map_or(0, |at| now.micros().saturating_sub(at.micros()).max(0));
    metrics::gauge!(OLDEST_QUEUED_JOB_AGE_SECONDS, "store" => store).set(waited_micros as f64 / 1e6);
    let mut response = (StatusCode::OK, metrics_handle().render()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
    Ok(response)
}
