//! Every failure the API reports, rendered as RFC 9457 `application/problem+json`.
//!
//! One type, [`ApiError`], carries a stable machine-readable `code`, the HTTP status and the
//! extension members a client needs to act (e.g. `required`/`available` for 402). The mapping from
//! ledger rejections and store errors lives here and nowhere else, so the contract's table of
//! codes and statuses can be checked in one place. Clients never see internal causes: a
//! corrupt store is logged with its detail and answered with an opaque 500.

use std::any::Any;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger::Rejection;
use serde_json::{Map, Value};
use store::StoreError;

use crate::dto::Problem;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem response: status, stable code, human-readable detail and extension members.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    extensions: Map<String, Value>,
    /// Sent as the `Retry-After` header (whole seconds) when set.
    retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, code, detail: detail.into(), extensions: Map::new(), retry_after_seconds: None }
    }

    /// Tells the client when to try again: a `Retry-After` header and a `retry_after_seconds`
    /// member, both in whole seconds.
    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_seconds = Some(seconds);
        self.with("retry_after_seconds", seconds)
    }

    /// Adds an extension member (RFC 9457 §3.2).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> ApiError {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn invalid_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
    }

    pub fn invalid_amount(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn account_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "account_not_found", "no such account")
    }

    pub fn hold_not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "hold_not_found", "no such hold")
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this method is not allowed on this path")
    }

    pub fn payload_too_large(bytes_max: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {bytes_max} bytes"),
        )
    }

    /// `429 rate_limited`: the token or the account spent its budget; `retry_after` is when the
    /// next request would be admitted, sent rounded up to whole seconds and at least 1 (a
    /// client that waits that long is admitted, unless others spent the budget first).
    pub fn rate_limited(limit: &str, retry_after: std::time::Duration) -> ApiError {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests for this {limit}; retry after the time in Retry-After"),
        )
        .with("limit", limit)
        .with_retry_after(seconds.max(1))
    }

    pub fn idempotency_conflict() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request",
        )
    }

    pub fn store_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the ledger store is unavailable; retry later",
        )
    }

    /// An opaque 500. Callers log the cause before building it.
    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status.as_u16(), self.detail)
    }
}

impl std::error::Error for ApiError {}

/// Human-readable summary per code: the same for every occurrence, as RFC 9457 asks of `title`.
fn title(code: &str) -> String {
    let known = match code {
        "insufficient_credits" => "Insufficient credits",
        "account_not_found" => "Account not found",
        "hold_not_found" => "Hold not found",
        "hold_not_pending" => "Hold not pending",
        "hold_expired" => "Hold expired",
        "amount_exceeds_hold" => "Amount exceeds hold",
        "refund_exceeds_charges" => "Refund exceeds charges",
        "idempotency_conflict" => "Idempotency key conflict",
        "run_events_expired" => "Run events expired",
        "invalid_amount" => "Invalid amount",
        "invalid_request" => "Invalid request",
        "unauthorized" => "Unauthorized",
        "forbidden" => "Forbidden",
        "not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        "payload_too_large" => "Payload too large",
        "rate_limited" => "Rate limited",
        "store_unavailable" => "Store unavailable",
        "internal_error" => "Internal error",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    // Every other code reads as its own title: `thread_busy` → "Thread busy".
    let mut text = code.replace('_', " ");
    if let Some(first) = text.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    text
}

impl From<&Rejection> for ApiError {
    fn from(rejection: &Rejection) -> ApiError {
        let detail = rejection.to_string();
        let code = rejection.code();
        match rejection {
            Rejection::InsufficientCredits { required, available } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, code, detail)
                    .with("required", required.to_string())
                    .with("available", available.to_string())
            }
            Rejection::AccountNotFound | Rejection::HoldNotFound => ApiError::new(StatusCode::NOT_FOUND, code, detail),
            Rejection::HoldNotPending { state } => {
                ApiError::new(StatusCode::CONFLICT, code, detail).with("state", state.as_str())
            }
            Rejection::HoldExpired => ApiError::new(StatusCode::CONFLICT, code, detail),
            Rejection::AmountExceedsHold { requested, remaining } => ApiError::new(StatusCode::CONFLICT, code, detail)
                .with("requested", requested.to_string())
                .with("remaining", remaining.to_string()),
            Rejection::RefundExceedsCharges { requested, refundable } => {
                ApiError::new(StatusCode::CONFLICT, code, detail)
                    .with("requested", requested.to_string())
                    .with("refundable", refundable.to_string())
            }
            Rejection::BalanceLimit | Rejection::ExpiryNotInFuture => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
            }
            Rejection::AllowanceLimit => ApiError::new(StatusCode::CONFLICT, code, detail)
                .with("allowances_max", serde_json::Value::from(ledger::ALLOWANCES_ACTIVE_MAX)),
            Rejection::AllowanceNotFound | Rejection::GrantNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, code, detail)
            }
            Rejection::GrantCreditsHeld { held } => {
                ApiError::new(StatusCode::CONFLICT, code, detail).with("held", held.to_string())
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError::from(&rejection)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match &error {
            StoreError::Unavailable { .. } | StoreError::Contention { .. } | StoreError::Startup { .. } => {
                tracing::warn!(error = %error, "store error answered with 503");
                ApiError::store_unavailable()
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %error, "store error answered with 500");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            problem_type: format!("urn:creditgraph:problem:{}", self.code),
            title: title(self.code),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            request_id: crate::observe::current_request_id(),
            extensions: self.extensions,
        };
        // Serialising plain strings and JSON values cannot fail; the fallback keeps the promise
        // of a problem body even so.
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| br#"{"code":"internal_error"}"#.to_vec());
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Turns a caught panic into an opaque 500 problem instead of a dropped connection.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    tracing::error!(panic = %message, "request handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The 429 a limiter answers: problem+json with the stable code, `Retry-After` in whole
    /// seconds rounded up (never 0) and the same number as `retry_after_seconds`.
    #[tokio::test]
    async fn rate_limited_is_a_429_problem_with_retry_after() {
        for (wait, seconds) in [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(999), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(3600), 3600),
        ] {
            let error = ApiError::rate_limited("account", wait);
            assert_eq!((error.status(), error.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let headers = response.headers();
            assert_eq!(headers[header::RETRY_AFTER], seconds.to_string(), "{wait:?}");
            assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            let body: Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(body["code"], "rate_limited");
            assert_eq!(body["status"], 429);
            assert_eq!(body["title"], "Rate limited");
            assert_eq!(body["limit"], "account");
            assert_eq!(body["retry_after_seconds"], seconds, "{wait:?}");
        }
    }

    #[test]
    fn other_problems_send_no_retry_after() {
        let response = ApiError::store_unavailable().into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
