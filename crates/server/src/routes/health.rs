//! Liveness, readiness and the OpenAPI document: no authentication, no side effects.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use utoipa::OpenApi;

use crate::dto::{Problem, StatusResponse};
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::routes::json;
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = StatusResponse)))]
pub async fn healthz() -> Response {
    json(StatusCode::OK, StatusResponse { status: "ok".to_owned() })
}

/// How long the readiness probe may take. A load balancer asks often and must get an answer
/// sooner than the store's own bounds (a connection attempt on every host in turn, a wait for a
/// free pooled connection); a store that cannot answer within this is not ready.
const READINESS_PROBE_MILLIS: u64 = 2_000;

/// The store takes writes now (on PostgreSQL: a read-write primary is reachable).
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, body = StatusResponse),
        (status = 503, description = "store_unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let probe = tokio::time::timeout(Duration::from_millis(READINESS_PROBE_MILLIS), state.store.ready()).await;
    match probe {
        Ok(Ok(())) => json(StatusCode::OK, StatusResponse { status: "ok".to_owned() }),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness probe failed");
            axum::response::IntoResponse::into_response(ApiError::store_unavailable())
        }
        Err(_) => {
            tracing::warn!(timeout_ms = READINESS_PROBE_MILLIS, "readiness probe timed out");
            axum::response::IntoResponse::into_response(ApiError::store_unavailable())
        }
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
