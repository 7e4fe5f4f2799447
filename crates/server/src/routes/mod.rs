//! Handlers, one module per resource. Each parses its input into ledger types at the edge,
//! runs one store call and renders the result; none holds business logic.

pub mod accounts;
pub mod health;
pub mod holds;
pub mod jobs;
pub mod runs;
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
