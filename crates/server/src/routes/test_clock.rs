//! The admin test clock (`creditgraph serve --test-clock`, loopback only): read it, move it
//! forward. Everything that reads time — expiry, the sweeper, runs, leases — reads this clock, so
//! a month of a ledger's life can be tested or shown in seconds, as with Stripe's test clocks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::dto::{AdvanceTestClockRequest, TestClockResponse};
use crate::error::ApiError;
use crate::extract::{JsonBody, RequireAdmin};
use crate::routes::json;
use crate::state::AppState;
use crate::wire;

/// The most one call may move the clock: a year, so a typo cannot jump centuries.
pub const TEST_CLOCK_ADVANCE_SECONDS_MAX: u64 = 366 * 24 * 3600;

fn test_clock(state: &AppState) -> Result<&store::TestClock, ApiError> {
    state.config.test_clock.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "test_clock_disabled",
            "this server has no test clock (start it with --test-clock, on a loopback address)",
        )
    })
}

fn view(clock: &store::TestClock) -> TestClockResponse {
    use store::Clock;
    TestClockResponse { now: wire::format_time(clock.now()), offset_seconds: clock.offset_seconds() }
}

/// The server's test clock.
#[utoipa::path(
    get, path = "/v1/test-clock", tag = "test clock",
    responses(
        (status = 200, body = TestClockResponse),
        (status = 404, description = "test_clock_disabled", body = crate::dto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_test_clock(State(state): State<AppState>, _auth: RequireAdmin) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, view(test_clock(&state)?)))
}

/// Move the server's test clock forward.
#[utoipa::path(
    post, path = "/v1/test-clock/advance", tag = "test clock",
    request_body = AdvanceTestClockRequest,
    responses(
        (status = 200, body = TestClockResponse),
        (status = 404, description = "test_clock_disabled", body = crate::dto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = crate::dto::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn advance_test_clock(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    body: JsonBody<AdvanceTestClockRequest>,
) -> Result<Response, ApiError> {
    let clock = test_clock(&state)?;
    let seconds = body.value.seconds;
    if !(1..=TEST_CLOCK_ADVANCE_SECONDS_MAX).contains(&seconds) {
        return Err(ApiError::invalid_request(format!(
            "seconds must be between 1 and {TEST_CLOCK_ADVANCE_SECONDS_MAX} (a clock only moves forward)"
        )));
    }
    clock.advance_seconds(seconds);
    tracing::info!(seconds, offset_seconds = clock.offset_seconds(), "test clock advanced");
    Ok(json(StatusCode::OK, view(clock)))
}
