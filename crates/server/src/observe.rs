//! The operator's view of requests: a request id on every request (accepted from `x-request-id`
//! or made here, echoed in the response and in problem bodies), one `info` line per request
//! (method, route template, status, latency, and the account, hold, run or job its path names),
//! and the HTTP metrics. `GET /metrics` renders the process's Prometheus registry.
//!
//! Metrics go through the `metrics` facade, so the stores, the engine and the job runner report
//! without knowing the exporter; the recorder is one per process ([`metrics_handle`]).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id accepted from a client; a longer (or non-printable) one is replaced.
const REQUEST_ID_BYTES_MAX: usize = 128;

/// Requests answered, by `method`, `route` (the template, `unmatched` for no route) and `status`.
pub const HTTP_REQUESTS: &str = "creditgraph_http_requests_total";
/// Time from a request reaching the server to its response's headers, by `method` and `route`.
pub const HTTP_DURATION_SECONDS: &str = "creditgraph_http_request_duration_seconds";

/// Histogram buckets for durations: 0.5 ms to 30 s, about three per decade.
const SECONDS_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Histogram buckets for batch sizes: 1 to the largest batch a store commits.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

tokio::task_local! {
    /// The id of the request this task is answering, for problem bodies.
    static REQUEST_ID: String;
}

/// The process's Prometheus registry, installed as the `metrics` recorder on first use. Every
/// server in one process (tests build several) shares it, as they share the process.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_size".to_owned()), &BATCH_BUCKETS))
                .expect("the bucket lists are not empty")
        };
        // Only fails when another recorder was installed first (a host embedding the server
        // with its own): then this registry stays empty rather than stealing it.
        builder().install_recorder().unwrap_or_else(|error| {
            tracing::warn!(%error, "another metrics recorder is installed; GET /metrics will be empty");
            builder().build_recorder().handle()
        })
    })
}

/// The id of the request the current task answers, if it runs inside [`observe_request`].
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The client's `x-request-id` when it is printable ASCII of a sane length, else a new UUIDv7.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers.get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok()).filter(|value| {
        !value.is_empty() && value.len() <= REQUEST_ID_BYTES_MAX && value.bytes().all(|byte| byte.is_ascii_graphic())
    });
    given.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The ids a path names, by the route template's parameter names.
#[derive(Default)]
struct PathIds<'a> {
    account_id: Option<&'a str>,
    hold_id: Option<&'a str>,
    run_id: Option<&'a str>,
    job_id: Option<&'a str>,
}

fn path_ids<'a>(template: &str, path: &'a str) -> PathIds<'a> {
    let mut ids = PathIds::default();
    for (name, value) in template.split('/').zip(path.split('/')) {
        match name {
            "{account_id}" => ids.account_id = Some(value),
            "{hold_id}" => ids.hold_id = Some(value),
            "{run_id}" => ids.run_id = Some(value),
            "{job_id}" => ids.job_id = Some(value),
            _ => {}
        }
    }
    ids
}

/// The method as a metric label: the standard ones by name, any other as `other` (a client may
/// send any token as a method; labels must stay a bounded set).
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// The outermost layer: gives the request its id, runs it inside a span carrying the id (so
/// every line logged while answering it names the request), logs the answer at `info` and
/// counts it.
pub async fn observe_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_owned());
    let span = {
        let ids = route.as_deref().map(|route| path_ids(route, request.uri().path())).unwrap_or_default();
        tracing::info_span!(
            "request",
            request_id = %id,
            account_id = ids.account_id,
            hold_id = ids.hold_id,
            run_id = ids.run_id,
            job_id = ids.job_id,
        )
    };
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request).instrument(span.clone())).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let elapsed = started.elapsed();
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            route = %route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1_000.0,
            "answered"
        );
    });
    let method = method_label(&method);
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_DURATION_SECONDS, "method" => method, "route" => route).record(elapsed.as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printable_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&"x".repeat(129)).expect("ascii"));
        assert_eq!(request_id(&headers).len(), 36, "a new UUID replaces an overlong id");
    }

    #[test]
    fn a_method_label_is_one_of_a_bounded_set() {
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
        let odd = axum::http::Method::from_bytes(b"BREW").expect("a valid token");
        assert_eq!(method_label(&odd), "other");
    }

    #[test]
    fn path_ids_come_from_the_template_names() {
        let ids = path_ids("/v1/accounts/{account_id}/holds", "/v1/accounts/alice/holds");
        assert_eq!(ids.account_id, Some("alice"));
        assert_eq!(ids.hold_id, None);
        let ids = path_ids("/v1/holds/{hold_id}/capture", "/v1/holds/h1/capture");
        assert_eq!(ids.hold_id, Some("h1"));
    }
}
