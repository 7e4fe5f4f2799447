//! Handlers, one module per resource. Each parses its input into ledger types at the edge,
//! runs one store call and renders the result; none holds business logic.

pub mod accounts;
pub mod allowances;
pub mod api_keys;
pub mod gateway;
pub mod health;
pub mod holds;
pub mod jobs;
pub mod ledger_events;
pub mod operator;
pub mod prometheus;
pub mod runs;
pub mod test_clock;
pub mod webhooks;
pub mod worker;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger::{GrantId, HoldId};
use serde::Serialize;

use crate::error::ApiError;

/// A new record id: a UUID v7, so ids sort roughly by creation time.
pub(crate) fn new_grant_id() -> GrantId {
    GrantId::parse(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id")
}

pub(crate) fn new_hold_id() -> HoldId {
    HoldId::parse(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id")
}

/// 201 for a record created now, 200 for one that already existed.
pub(crate) fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

pub(crate) fn json<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

/// Fallback for paths no route matches.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// Fallback for a known path with another method (axum keeps the `Allow` header).
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Hex SHA-256 of a request without a body (a cancel): its method, path and the query that
/// matters, for the fingerprint of its `Idempotency-Key`.
pub(crate) fn bodiless_fingerprint(method: &str, path: &str, query: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [method, path, query] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Answers a request under an `Idempotency-Key` once: a key seen before with the same
/// fingerprint replays the first response (status and body as sent), with another request it is
/// `409 idempotency_conflict`; else `respond` answers and a 2xx answer is recorded (a concurrent
/// duplicate that recorded first wins, and its response is the one sent). Without a key,
/// `respond` alone.
pub(crate) async fn respond_once<F, Fut>(
    runs: &dyn store::RunStore,
    key: &crate::extract::IdempotencyKey,
    fingerprint: String,
    respond: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, String), ApiError>>,
{
    use store::{KeyUse, RecordedResponse};
    let replay = |recorded: RecordedResponse| -> Result<Response, ApiError> {
        if recorded.fingerprint != fingerprint {
            return Err(ApiError::idempotency_conflict());
        }
        let status = StatusCode::from_u16(recorded.status)
            .map_err(|_| ApiError::from(store::StoreError::corrupt("a recorded response has no valid status")))?;
        Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], recorded.body).into_response())
    };
    let Some(key) = key.as_str() else {
        let (status, body) = respond().await?;
        return Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response());
    };
    match runs.recorded_response(key).await? {
        Some(KeyUse::Response(recorded)) => return replay(recorded),
        Some(KeyUse::Other) => return Err(ApiError::idempotency_conflict()),
        None => {}
    }
    let (status, body) = respond().await?;
    if !status.is_success() {
        return Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let response = RecordedResponse { fingerprint: fingerprint.clone(), status: status.as_u16(), body };
    match runs.record_response(key, &response).await? {
        KeyUse::Response(recorded) => replay(recorded),
        KeyUse::Other => Err(ApiError::idempotency_conflict()),
    }
}
