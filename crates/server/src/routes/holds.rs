//! Hold routes: reserve, read, capture, release, extend.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger::{Command, Outcome, Overage};

use crate::dto::{CaptureRequest, ExtendRequest, HoldRequest, HoldResponse, OverageDto, Problem, ReleaseRequest};
use crate::error::ApiError;
use crate::extract::{ApiPath, IdempotencyKey, JsonBody, RequireService};
use crate::routes::{json, new_hold_id};
use crate::state::{unexpected_outcome, AppState};
use crate::wire;

/// The hold every hold command answers with, or the rejection as a problem.
fn hold_result(command: &str, result: Result<Outcome, ledger::Rejection>) -> Result<ledger::Hold, ApiError> {
    match result {
        Ok(Outcome::Held { hold } | Outcome::Captured { hold } | Outcome::Released { hold, .. })
        | Ok(Outcome::Extended { hold }) => Ok(hold),
        Ok(other) => Err(unexpected_outcome(command, &other)),
        Err(rejection) => Err(rejection.into()),
    }
}

/// Reserve credits, all or nothing, until the hold is captured, released or expires.
#[utoipa::path(
    post, path = "/v1/holds", tag = "holds",
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = HoldRequest,
    responses(
        (status = 201, body = HoldResponse),
        (status = 402, description = "insufficient_credits", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited (the token's or the account's rate limit; see Retry-After)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "whole seconds until a request would be admitted"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_hold(
    State(state): State<AppState>,
    auth: RequireService,
    key: IdempotencyKey,
    body: JsonBody<HoldRequest>,
) -> Result<Response, ApiError> {
    let request = &body.value;
    let account_id = wire::parse_account_id(&request.account_id)?;
    let amount = wire::parse_positive_amount("amount", &request.amount)?;
    let config = &state.config;
    let ttl_seconds =
        wire::parse_ttl(request.ttl_seconds, config.hold_ttl_seconds_default, config.hold_ttl_seconds_max)?;
    let reference = wire::parse_reference(request.reference.as_deref())?;
    let metadata = wire::metadata_text(request.metadata.as_ref(), config.metadata_bytes_max)?;
    state.rate_limiter.check(auth.caller(), Some(&account_id))?;
    let command = Command::Hold { account_id, hold_id: new_hold_id(), amount, ttl_seconds, reference, metadata };
    let result = state.execute(command, &key, || body.fingerprint(Some(amount))).await?;
    let hold = hold_result("hold", result)?;
    Ok(json(StatusCode::CREATED, wire::hold_response(&hold)))
}

/// A hold as it reads now (a pending hold past its expiry reads as expired).
#[utoipa::path(
    get, path = "/v1/holds/{hold_id}", tag = "holds",
    params(("hold_id" = String, Path)),
    responses(
        (status = 200, body = HoldResponse),
        (status = 404, description = "hold_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_hold(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(hold_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let hold_id = wire::parse_hold_id(&hold_id)?;
    let hold = state.store.hold(&hold_id).await?.ok_or_else(ApiError::hold_not_found)?;
    Ok(json(StatusCode::OK, wire::hold_response(&hold)))
}

/// Charge credits from a hold; final (the default) returns the rest to available.
#[utoipa::path(
    post, path = "/v1/holds/{hold_id}/capture", tag = "holds",
    params(("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = CaptureRequest,
    responses(
        (status = 200, body = HoldResponse),
        (status = 402, description = "insufficient_credits (overage if_available)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "hold_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "amount_exceeds_hold, hold_not_pending, hold_expired, idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn capture(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(hold_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<CaptureRequest>,
) -> Result<Response, ApiError> {
    let hold_id = wire::parse_hold_id(&hold_id)?;
    let request = &body.value;
    let amount = wire::parse_amount("amount", &request.amount)?;
    let is_final = request.is_final.unwrap_or(true);
    if amount.is_zero() && !is_final {
        return Err(ApiError::invalid_amount("amount: \"0\" is allowed only with final"));
    }
    let overage = match request.overage.unwrap_or(OverageDto::Reject) {
        OverageDto::Reject => Overage::Reject,
        OverageDto::IfAvailable => Overage::IfAvailable,
    };
    let command = Command::Capture { hold_id, amount, is_final, overage };
    let result = state.execute(command, &key, || body.fingerprint(Some(amount))).await?;
    let hold = hold_result("capture", result)?;
    Ok(json(StatusCode::OK, wire::hold_response(&hold)))
}

/// Return a pending hold's credits to available. Releasing a released hold changes nothing.
#[utoipa::path(
    post, path = "/v1/holds/{hold_id}/release", tag = "holds",
    params(("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Option<ReleaseRequest>, description = "optional, no fields"),
    responses(
        (status = 200, body = HoldResponse),
        (status = 404, description = "hold_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "hold_not_pending, idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn release(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(hold_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<ReleaseRequest>,
) -> Result<Response, ApiError> {
    let hold_id = wire::parse_hold_id(&hold_id)?;
    let command = Command::Release { hold_id };
    let result = state.execute(command, &key, || body.fingerprint(None)).await?;
    let hold = hold_result("release", result)?;
    Ok(json(StatusCode::OK, wire::hold_response(&hold)))
}

/// Give a pending hold a new expiry, counted from now.
#[utoipa::path(
    post, path = "/v1/holds/{hold_id}/extend", tag = "holds",
    params(("hold_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = ExtendRequest,
    responses(
        (status = 200, body = HoldResponse),
        (status = 404, description = "hold_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "hold_not_pending, hold_expired, idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn extend(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(hold_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<ExtendRequest>,
) -> Result<Response, ApiError> {
    let hold_id = wire::parse_hold_id(&hold_id)?;
    let ttl_seconds = wire::parse_ttl(Some(body.value.ttl_seconds), 0, state.config.hold_ttl_seconds_max)?;
    let command = Command::Extend { hold_id, ttl_seconds };
    let result = state.execute(command, &key, || body.fingerprint(None)).await?;
    let hold = hold_result("extend", result)?;
    Ok(json(StatusCode::OK, wire::hold_response(&hold)))
}
