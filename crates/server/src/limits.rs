//! Request-level limits: a deadline on the request body, a cap on requests in flight, and a
//! deadline on the handler. Connection-level limits (headers, idle, blocked writes, how many
//! connections) live in `crate::edge`; these are router layers, so they hold however the router
//! is served.
//!
//! Each answers with a problem that tells the client what to do:
//! - `408 request_timeout`: the body did not arrive whole within the deadline (trickled). The
//!   connection is closed, since the rest of the body would be read as the next request.
//! - `503 overloaded` with `Retry-After`: the in-flight cap is reached. The request was refused
//!   before any handler ran, so nothing of it was applied; retry it as it is.
//! - `504 handler_timeout`: the handler did not answer in time. A ledger command already handed
//!   to the store still commits or not as a whole (the store's batch runs apart from the
//!   request), so the outcome is unknown, never half-applied: retry with the same
//!   `Idempotency-Key` and the first outcome is returned.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// What a shed request is told to wait before trying again.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The request-level limits, shared by every request of one router.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// From the request's headers to the last byte of its body.
    pub body_timeout: Duration,
    /// From the request reaching its handler to the response's headers (streamed bodies are
    /// not counted: the routes that stream are exempt).
    pub handler_timeout: Duration,
    /// Requests inside handlers at once; past it requests are shed.
    pub in_flight: Arc<Semaphore>,
    /// The body size the ordinary routes accept, which is also what is read ahead under the
    /// body deadline.
    pub body_bytes_max: usize,
}

impl RequestLimits {
    pub fn new(
        body_timeout: Duration,
        handler_timeout: Duration,
        requests_in_flight_max: usize,
        body_bytes_max: usize,
    ) -> RequestLimits {
        assert!(requests_in_flight_max > 0, "a router that admits no request serves nothing");
        RequestLimits {
            body_timeout,
            handler_timeout,
            in_flight: Arc::new(Semaphore::new(requests_in_flight_max)),
            body_bytes_max,
        }
    }
}

impl ApiError {
    pub fn request_timeout(timeout: Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        )
    }

    pub fn overloaded() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight on this instance; retry after the time in Retry-After",
        )
        .with_retry_after(RETRY_AFTER_SECONDS)
    }

    pub fn handler_timeout(timeout: Duration) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "handler_timeout",
            format!(
                "no answer within {} s; the outcome is unknown: retry with the same Idempotency-Key to learn it",
                timeout.as_secs_f64()
            ),
        )
    }
}

/// Reads a body that announces a size the routes accept ahead, under the body deadline, so a
/// slow body never occupies an in-flight slot; any other body (chunked, or a large upload) is
/// handed on with the deadline attached to it. Either way a late body is answered `408`.
pub async fn body_deadline(State(limits): State<Arc<RequestLimits>>, request: Request, next: Next) -> Response {
    if !has_body(&request) {
        return next.run(request).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = DeadlineBody {
        body,
        deadline: Box::pin(tokio::time::sleep(limits.body_timeout)),
        expired: Arc::clone(&expired),
        ended: false,
    };
    let read_ahead = content_length(&parts.headers).is_some_and(|length| length <= limits.body_bytes_max as u64);
    let request = if read_ahead {
        match body.collect().await {
            Ok(collected) => Request::from_parts(parts, Body::from(collected.to_bytes())),
            Err(_) if expired.load(Ordering::Relaxed) => {
                return closing(ApiError::request_timeout(limits.body_timeout))
            }
            Err(error) => {
                return closing(ApiError::invalid_request(format!("the body broke off: {error}")));
            }
        }
    } else {
        Request::from_parts(parts, Body::new(body))
    };
    let response = next.run(request).await;
    if expired.load(Ordering::Relaxed) {
        // The handler saw the body fail, whatever it answered; the client needs the reason.
        return closing(ApiError::request_timeout(limits.body_timeout));
    }
    response
}

/// Sheds a request when the in-flight cap is reached, before any handler runs. `/healthz` is
/// never shed: it touches nothing and must keep saying the process is alive.
pub async fn in_flight_cap(State(limits): State<Arc<RequestLimits>>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let Ok(_permit) = Arc::clone(&limits.in_flight).try_acquire_owned() else {
        return ApiError::overloaded().into_response();
    };
    next.run(request).await
}

/// Bounds the time until a handler answers; mounted on every route that does not stream.
pub async fn handler_deadline(State(limits): State<Arc<RequestLimits>>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.handler_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?limits.handler_timeout, "a handler did not answer in time");
            ApiError::handler_timeout(limits.handler_timeout).into_response()
        }
    }
}

fn has_body(request: &Request) -> bool {
    request.headers().contains_key(header::TRANSFER_ENCODING)
        || content_length(request.headers()).is_some_and(|length| length > 0)
}

fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A problem answer after which the connection is closed: the unread rest of the body must not
/// be taken for the next request.
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pin_project_lite::pin_project! {
    /// A request body that fails once its deadline has passed, however its bytes trickle in.
    /// (tower-http's body timeout restarts at every frame, so one byte a second would never
    /// trip it; this deadline is for the whole body.)
    struct DeadlineBody {
        #[pin]
        body: Body,
        deadline: Pin<Box<tokio::time::Sleep>>,
        expired: Arc<AtomicBool>,
        // Once the body has ended, a late poll must not read as a missed deadline.
        ended: bool,
    }
}

/// The error a [`DeadlineBody`] ends with.
#[derive(Debug)]
struct BodyDeadlinePassed;

impl std::fmt::Display for BodyDeadlinePassed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body's deadline passed")
    }
}

impl std::error::Error for BodyDeadlinePassed {}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyDeadlinePassed))));
        }
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            *this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
