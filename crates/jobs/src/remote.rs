//! Workers in other processes: the worker protocol's HTTP client.
//!
//! A `creditgraph worker` process renders jobs for a server it reaches only over HTTP (it has no
//! database access), so the three worker calls — claim, heartbeat, finish — travel as JSON to
//! `/v1/worker/…` with the worker token. The server defines the wire format with its DTOs and
//! publishes it in its OpenAPI document; this client builds finish bodies with [`finish_body`]
//! and reads jobs back with [`job_from_worker_json`], and the server's tests check that both
//! ends agree (a job and every kind of finish round-trip). The limits here
//! ([`WORKER_ID_BYTES_MAX`], …) are the protocol's, enforced by the server.
//!
//! The client retries what is safe and likely to pass (a connection that could not be made, a
//! 5xx answer) a bounded number of times; everything else is an error the worker loop logs and
//! backs off from. The state machine stays on the server: a lost answer costs at most an
//! attempt, never a credit.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ledger::{AccountId, Amount, HoldId, Timestamp};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use store::{ArtifactId, JobId, JobRecord, JobStatus, RunId, StoreError, ThreadId};

use crate::service::{Finish, JobError};
use crate::worker::WorkerBackend;

/// Longest worker id (it is stored as the lease holder).
pub const WORKER_ID_BYTES_MAX: usize = 128;
/// Longest stage name a worker may report.
pub const STAGE_BYTES_MAX: usize = 32;
/// Characters of a failure's detail kept.
pub const DETAIL_CHARS_MAX: usize = 2048;
/// Longest content type of an artifact.
pub const CONTENT_TYPE_BYTES_MAX: usize = 255;
/// Largest answer the client reads (a job with its input snapshot).
const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Retries of a call that could not connect or got a 5xx answer.
pub const RETRIES_MAX: u32 = 3;
const RETRY_BASE_MS: u64 = 250;

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> Option<Timestamp> {
    let moment = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(moment.unix_timestamp_nanos() / 1000).ok().map(Timestamp::from_micros)
}

/// Reads back a job as the worker API shows it (the public job fields, plus `input`,
/// `hold_id`, the lease, `run_after` and `version`).
pub fn job_from_worker_json(value: &Value) -> Result<JobRecord, String> {
    let object = value.as_object().ok_or("a job must be a JSON object")?;
    let text = |name: &str| -> Result<String, String> {
        object.get(name).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("job without `{name}`"))
    };
    let optional_text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    let time = |name: &str| -> Result<Timestamp, String> {
        parse_time(&text(name)?).ok_or_else(|| format!("job `{name}` is not an RFC 3339 time"))
    };
    let optional_time = |name: &str| optional_text(name).and_then(|text| parse_time(&text));

    let number = |name: &str| object.get(name).and_then(Value::as_u64).ok_or_else(|| format!("job without `{name}`"));
    let input = match object.get("input") {
        Some(Value::String(text)) => text.clone(),
        Some(value) => value.to_string(),
        None => return Err("job without `input`".to_owned()),
    };
    let status = text("status")?;
    Ok(JobRecord {
        job_id: JobId::parse(&text("job_id")?).map_err(|error| format!("job {error}"))?,
        account_id: AccountId::parse(&text("account_id")?).map_err(|error| format!("job account_id: {error}"))?,
        thread_id: ThreadId::parse(&text("thread_id")?).map_err(|error| format!("job {error}"))?,
        run_id: RunId::parse(&text("run_id")?).map_err(|error| format!("job {error}"))?,
        hold_id: HoldId::parse(&text("hold_id")?).map_err(|error| format!("job hold_id: {error}"))?,
        price: Amount::parse(&text("price")?).map_err(|error| format!("job price: {error}"))?,
        status: JobStatus::parse(&status).ok_or_else(|| format!("job status {status:?} is unknown"))?,
        stage: text("stage")?,
        progress_percent: u8::try_from(number("progress")?.min(100)).unwrap_or(100),
        input,
        lease_holder: optional_text("lease_holder"),
        lease_expires_at: optional_time("lease_expires_at"),
        heartbeat_at: optional_time("heartbeat_at"),
        cancel_requested: object.get("cancel_requested").and_then(Value::as_bool).unwrap_or(false),
        retry_source_job_id: optional_text("retry_source_job_id")
            .map(|text| JobId::parse(&text).map_err(|error| format!("job {error}")))
            .transpose()?,
        attempts: u32::try_from(number("attempts")?).map_err(|_| "job attempts out of range".to_owned())?,
        run_after: time("run_after")?,
        error_stage: optional_text("error_stage"),
        error_code: optional_text("error_code"),
        error_detail: optional_text("error_detail"),
        refund_applied_at: optional_time("refund_applied_at"),
        artifact_id: optional_text("artifact_id")
            .map(|text| ArtifactId::parse(&text).map_err(|error| format!("job {error}")))
            .transpose()?,
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
        started_at: optional_time("started_at"),
        finished_at: optional_time("finished_at"),
        version: number("version")?,
    })
}

/// The body of `POST /v1/worker/jobs/{job_id}/finish`.
pub fn finish_body(worker_id: &str, finish: &Finish) -> Value {
    match finish {
        Finish::Succeeded(rendered) => json!({
            "worker_id": worker_id,
            "outcome": "succeeded",
            "artifact_base64": base64::engine::general_purpose::STANDARD.encode(&rendered.bytes),
            "content_type": rendered.content_type,
        }),
        Finish::Failed(failure) => json!({
            "worker_id": worker_id,
            "outcome": "failed",
            "transient": failure.transient,
            "error_code": failure.code.as_str(),
            "stage": failure.stage,
            "detail": failure.detail,
        }),
        Finish::Canceled => json!({"worker_id": worker_id, "outcome": "canceled"}),
    }
}

/// A [`WorkerBackend`] that speaks to a creditgraph server's worker API.
pub struct HttpWorkerBackend {
    client: reqwest::Client,
    base: reqwest::Url,
    authorization: HeaderValue,
}

fn unavailable(detail: impl Into<String>) -> JobError {
    JobError::Store(StoreError::unavailable(detail))
}

fn malformed(detail: impl Into<String>) -> JobError {
    JobError::Store(StoreError::corrupt(detail))
}

/// The error and its sources ("connection refused" is in a source).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl HttpWorkerBackend {
    /// A client for the server at `server_url` (`http://host:port`), presenting `token`. Every
    /// call has `request_timeout_seconds` to complete.
    pub fn new(server_url: &str, token: &str, request_timeout_seconds: u64) -> Result<HttpWorkerBackend, String> {
        let mut base = reqwest::Url::parse(server_url)
            .map_err(|error| format!("the server URL {server_url:?} is invalid: {error}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("the server URL must be http or https, not {}", base.scheme()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if token.is_empty() {
            return Err("the worker token is empty".to_owned());
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the worker token must be visible ASCII".to_owned())?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10.min(request_timeout_seconds.max(1))))
            .timeout(Duration::from_secs(request_timeout_seconds.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("creditgraph-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
        Ok(HttpWorkerBackend { client, base, authorization })
    }

    /// POSTs `body` to `path` (relative to the server URL), retrying connection failures and 5xx
    /// answers at most [`RETRIES_MAX`] times. Returns the status and the JSON body (or null).
    async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), JobError> {
        let url = self.base.join(path).map_err(|error| unavailable(format!("bad worker API path {path}: {error}")))?;
        let mut retries = 0;
        loop {
            let sent =
                self.client.post(url.clone()).header(AUTHORIZATION, self.authorization.clone()).json(body).send().await;
            let retryable = match &sent {
                Ok(response) => response.status().is_server_error(),
                Err(error) => error.is_connect(),
            };
            if retryable && retries < RETRIES_MAX {
                retries += 1;
                let delay = Duration::from_millis(RETRY_BASE_MS << (retries - 1));
                tracing::debug!(path, retries, ?delay, "worker API call retried");
                tokio::time::sleep(delay).await;
                continue;
            }
            let mut response =
                sent.map_err(|error| unavailable(format!("the server cannot be reached: {}", error_chain(&error))))?;
            let status = response.status();
            let mut bytes = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) if bytes.len() + chunk.len() <= RESPONSE_BYTES_MAX => {
                        bytes.extend_from_slice(&chunk)
                    }
                    Ok(Some(_)) => {
                        return Err(malformed(format!("the server's answer is larger than {RESPONSE_BYTES_MAX} bytes")))
                    }
                    Ok(None) => break,
                    Err(error) => {
                        return Err(unavailable(format!("the server's answer broke off: {}", error_chain(&error))))
                    }
                }
            }
            let value =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
            return Ok((status, value));
        }
    }

    /// The error an answer other than the expected one stands for.
    fn refusal(status: StatusCode, body: &Value) -> JobError {
        let code = body.get("code").and_then(Value::as_str).unwrap_or_default();
        match (status, code) {
            (StatusCode::CONFLICT, "lease_lost") => JobError::LeaseLost,
            (StatusCode::NOT_FOUND, "job_not_found") => JobError::NotFound,
            (StatusCode::PAYLOAD_TOO_LARGE, _) => JobError::ArtifactTooLarge(
                body.get("bytes_max")
                    .and_then(Value::as_u64)
                    .and_then(|bytes| usize::try_from(bytes).ok())
                    .unwrap_or(0),
            ),
            (StatusCode::UNAUTHORIZED, _) => unavailable("the server refused the worker token (401 unauthorized)"),
            _ => {
                let detail = body.get("detail").and_then(Value::as_str).unwrap_or_default();
                unavailable(format!("the server answered {} {code}: {detail}", status.as_u16()))
            }
        }
    }

    fn job(body: &Value) -> Result<JobRecord, JobError> {
        job_from_worker_json(body).map_err(|error| malformed(format!("the server's job does not parse: {error}")))
    }
}

#[async_trait]
impl WorkerBackend for HttpWorkerBackend {
    async fn claim(&self, worker_id: &str) -> Result<Option<JobRecord>, JobError> {
        let (status, body) = self.post("v1/worker/claim", &json!({"worker_id": worker_id})).await?;
        match status {
            StatusCode::OK => HttpWorkerBackend::job(&body).map(Some),
            StatusCode::NO_CONTENT => Ok(None),
            _ => Err(HttpWorkerBackend::refusal(status, &body)),
        }
    }

    async fn heartbeat(&self, job_id: &JobId, worker_id: &str, stage: &str, percent: u8) -> Result<bool, JobError> {
        let body = json!({"worker_id": worker_id, "stage": stage, "progress": percent});
        let (status, body) = self.post(&format!("v1/worker/jobs/{job_id}/heartbeat"), &body).await?;
        match status {
            StatusCode::OK => body
                .get("cancel_requested")
                .and_then(Value::as_bool)
                .ok_or_else(|| malformed("the heartbeat answer has no cancel_requested")),
            _ => Err(HttpWorkerBackend::refusal(status, &body)),
        }
    }

    async fn finish(&self, job_id: &JobId, worker_id: &str, finish: Finish) -> Result<JobRecord, JobError> {
        let body = finish_body(worker_id, &finish);
        let (status, body) = self.post(&format!("v1/worker/jobs/{job_id}/finish"), &body).await?;
        match status {
            StatusCode::OK => HttpWorkerBackend::job(&body),
            _ => Err(HttpWorkerBackend::refusal(status, &body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker API that answers each call from a script (then 204), counting calls and
    /// recording the Authorization headers.
    async fn scripted_server(script: Vec<(u16, Value)>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::HeaderMap;
        use axum::response::IntoResponse;
        let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(script)));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (script_, seen_) = (script.clone(), seen.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let (script, seen) = (script_.clone(), seen_.clone());
            async move {
                let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                seen.lock().expect("seen lock").push(authorization.to_owned());
                let next = script.lock().expect("script lock").pop_front();
                match next {
                    Some((status, body)) => {
                        (axum::http::StatusCode::from_u16(status).expect("status"), axum::Json(body)).into_response()
                    }
                    None => axum::http::StatusCode::NO_CONTENT.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{address}"), seen)
    }

    #[tokio::test]
    async fn server_errors_are_retried_a_bounded_number_of_times() {
        let problem = json!({"code": "store_unavailable"});
        let (url, seen) = scripted_server(vec![(503, problem.clone()), (502, problem.clone())]).await;
        let backend = HttpWorkerBackend::new(&url, "s3cret", 5).expect("valid");
        assert!(matches!(backend.claim("w").await, Ok(None)));
        assert_eq!(seen.lock().expect("seen").as_slice(), ["Bearer s3cret"; 3]);

        let always = vec![(500, problem.clone()); 10];
        let (url, seen) = scripted_server(always).await;
        let backend = HttpWorkerBackend::new(&url, "s3cret", 5).expect("valid");
        let error = backend.claim("w").await.expect_err("keeps failing");
        assert!(matches!(error, JobError::Store(StoreError::Unavailable { .. })), "{error:?}");
        assert_eq!(seen.lock().expect("seen").len(), 1 + RETRIES_MAX as usize);
    }

    #[tokio::test]
    async fn refusals_map_to_job_errors() {
        let (url, seen) = scripted_server(vec![
            (409, json!({"code": "lease_lost"})),
            (404, json!({"code": "job_not_found"})),
            (413, json!({"code": "payload_too_large", "bytes_max": 99})),
            (401, json!({"code": "unauthorized"})),
            (200, json!({"no": "flag"})),
        ])
        .await;
        let backend = HttpWorkerBackend::new(&url, "t", 5).expect("valid");
        assert!(matches!(
            backend.heartbeat(&JobId::parse("j").expect("valid"), "w", "render", 1).await,
            Err(JobError::LeaseLost)
        ));
        assert!(matches!(
            backend.finish(&JobId::parse("j").expect("valid"), "w", Finish::Canceled).await,
            Err(JobError::NotFound)
        ));
        assert!(matches!(
            backend.finish(&JobId::parse("j").expect("valid"), "w", Finish::Canceled).await,
            Err(JobError::ArtifactTooLarge(99))
        ));
        assert!(matches!(backend.claim("w").await, Err(JobError::Store(StoreError::Unavailable { .. }))));
        assert!(matches!(
            backend.heartbeat(&JobId::parse("j").expect("valid"), "w", "render", 1).await,
            Err(JobError::Store(StoreError::Corrupt { .. }))
        ));
        assert_eq!(seen.lock().expect("seen").len(), 5, "4xx answers are not retried");
    }

    #[test]
    fn the_client_needs_an_http_url_and_a_token() {
        assert!(HttpWorkerBackend::new("ftp://h", "t", 5).is_err());
        assert!(HttpWorkerBackend::new("http://h", "", 5).is_err());
        assert!(HttpWorkerBackend::new("http://h", "bad\ntoken", 5).is_err());
        let backend = HttpWorkerBackend::new("http://h:1/prefix", "t", 5).expect("valid");
        assert_eq!(backend.base.as_str(), "http://h:1/prefix/");
    }
}
