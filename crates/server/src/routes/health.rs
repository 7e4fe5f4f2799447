//! Liveness, readiness and the OpenAPI document: no authentication, no side effects.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use ledger::AccountId;
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

/// The store answers a read.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, body = StatusResponse),
        (status = 503, description = "store_unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let probe = AccountId::parse("readyz-probe").expect("a constant valid id");
    match state.store.account(&probe).await {
        Ok(_) => json(StatusCode::OK, StatusResponse { status: "ok".to_owned() }),
        Err(error) => {
            tracing::warn!(%error, "readiness probe failed");
            axum::response::IntoResponse::into_response(ApiError::store_unavailable())
        }
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
