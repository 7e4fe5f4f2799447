//! Workers in other processes: the worker protocol's wire format, and its HTTP client.
//!
//! A `creditgraph worker` process renders jobs for a server it reaches only over HTTP (it has no
//! database access), so the three worker calls — claim, heartbeat, finish — travel as JSON to
//! `/v1/worker/…` with the worker token. Both ends use the functions here, so the format is
//! defined once: the server renders and parses with [`worker_job_json`] and
//! [`parse_finish_body`], and [`HttpWorkerBackend`] (a [`WorkerBackend`], so the same worker loop
//! runs remotely) builds with [`finish_body`] and reads back with [`job_from_worker_json`].
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
use serde_json::{json, Map, Value};
use store::{ArtifactId, JobId, JobRecord, JobStatus, RunId, StoreError, ThreadId};

use crate::code::JobErrorCode;
use crate::render::{RenderFailure, Rendered};
use crate::service::{format_time, Finish, JobError, JobService};
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

/// The job as the worker API shows it: the public job JSON plus what a worker needs (the input
/// snapshot, the hold, the lease, the version).
pub fn worker_job_json(job: &JobRecord) -> Value {
    let mut value = JobService::job_json(job);
    if let Value::Object(object) = &mut value {
        // The input is JSON text written by the engine; a worker reads it as JSON.
        let input = serde_json::from_str::<Value>(&job.input).unwrap_or_else(|_| Value::String(job.input.clone()));
        object.insert("input".to_owned(), input);
        object.insert("hold_id".to_owned(), json!(job.hold_id.as_str()));
        object.insert("lease_holder".to_owned(), json!(job.lease_holder));
        object.insert("lease_expires_at".to_owned(), json!(job.lease_expires_at.map(format_time)));
        object.insert("heartbeat_at".to_owned(), json!(job.heartbeat_at.map(format_time)));
        object.insert("run_after".to_owned(), json!(format_time(job.run_after)));
        object.insert("version".to_owned(), json!(job.version));
    }
    value
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> Option<Timestamp> {
    let moment = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(moment.unix_timestamp_nanos() / 1000).ok().map(Timestamp::from_micros)
}

/// Reads a job back from [`worker_job_json`].
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

/// Why a finish body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishBodyError {
    /// A field is missing or malformed; the text says which.
    Invalid(String),
    /// The artifact decodes to more than this many bytes.
    TooLarge(usize),
}

/// A worker id: 1..=[`WORKER_ID_BYTES_MAX`] visible ASCII characters.
pub fn parse_worker_id(value: Option<&Value>) -> Result<String, String> {
    let text = value.and_then(Value::as_str).ok_or("worker_id: a string is required")?;
    let valid =
        (1..=WORKER_ID_BYTES_MAX).contains(&text.len()) && text.bytes().all(|byte| (0x21..=0x7e).contains(&byte));
    if !valid {
        return Err(format!("worker_id: 1-{WORKER_ID_BYTES_MAX} visible ASCII characters"));
    }
    Ok(text.to_owned())
}

/// A stage name: 1..=[`STAGE_BYTES_MAX`] lowercase letters, digits or underscores.
pub fn parse_stage(value: Option<&Value>) -> Result<String, String> {
    let text = value.and_then(Value::as_str).ok_or("stage: a string is required")?;
    let valid = (1..=STAGE_BYTES_MAX).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if !valid {
        return Err(format!("stage: 1-{STAGE_BYTES_MAX} lowercase letters, digits or underscores"));
    }
    Ok(text.to_owned())
}

/// Parses a finish body into the worker id and the attempt's end, decoding the artifact (at most
/// `artifact_bytes_max` bytes).
pub fn parse_finish_body(body: &Value, artifact_bytes_max: usize) -> Result<(String, Finish), FinishBodyError> {
    let invalid = FinishBodyError::Invalid;
    let object: &Map<String, Value> =
        body.as_object().ok_or_else(|| invalid("the body must be a JSON object".to_owned()))?;
    let worker_id = parse_worker_id(object.get("worker_id")).map_err(invalid)?;
    let outcome = object.get("outcome").and_then(Value::as_str).unwrap_or_default();
    let finish = match outcome {
        "succeeded" => {
            let encoded = object
                .get("artifact_base64")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("artifact_base64: a string is required".to_owned()))?;
            // Refuse before decoding: base64 takes 4 characters per 3 bytes.
            if encoded.len() / 4 * 3 > artifact_bytes_max.saturating_add(3) {
                return Err(FinishBodyError::TooLarge(artifact_bytes_max));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|error| invalid(format!("artifact_base64: {error}")))?;
            if bytes.len() > artifact_bytes_max {
                return Err(FinishBodyError::TooLarge(artifact_bytes_max));
            }
            if bytes.is_empty() {
                return Err(invalid("artifact_base64: the artifact is empty".to_owned()));
            }
            let content_type = object.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream");
            let valid_type = (1..=CONTENT_TYPE_BYTES_MAX).contains(&content_type.len())
                && content_type.bytes().all(|byte| (0x20..0x7f).contains(&byte))
                && content_type.contains('/');
            if !valid_type {
                return Err(invalid("content_type: a media type such as video/mp4".to_owned()));
            }
            Finish::Succeeded(Rendered { bytes, content_type: content_type.to_owned() })
        }
        "failed" => {
            let code = object.get("error_code").and_then(Value::as_str).unwrap_or("unknown");
            let code = JobErrorCode::parse(code)
                .ok_or_else(|| invalid(format!("error_code: {code:?} is not a job error code")))?;
            let transient = match object.get("transient") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(transient)) => *transient,
                Some(_) => return Err(invalid("transient: true or false".to_owned())),
            };
            let stage = match object.get("stage") {
                None | Some(Value::Null) => "render".to_owned(),
                stage => parse_stage(stage).map_err(invalid)?,
            };
            let detail = object.get("detail").and_then(Value::as_str).unwrap_or_default();
            Finish::Failed(RenderFailure {
                transient,
                code,
                stage,
                detail: detail.chars().take(DETAIL_CHARS_MAX).collect(),
            })
        }
        "canceled" => Finish::Canceled,
        _ => return Err(invalid("outcome: succeeded, failed or canceled".to_owned())),
    };
    Ok((worker_id, finish))
}

/// A [`WorkerBackend`] that speaks to a creditgraph server's worker API.
pub struct HttpWorkerBackend {
    client: reqwest::Client,
    base: reqwest::Url,
    authorization: HeaderValue,
}

fn unavailable(detail: impl Into<String>) -> JobError {
    JobError::Store(StoreError::Unavailable { detail: detail.into() })
}

fn malformed(detail: impl Into<String>) -> JobError {
    JobError::Store(StoreError::Corrupt { detail: detail.into() })
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

    fn job() -> JobRecord {
        let at = Timestamp::from_micros(1_800_000_000_123_456);
        JobRecord {
            job_id: JobId::parse("job-1").expect("valid"),
            account_id: AccountId::parse("alice").expect("valid"),
            thread_id: ThreadId::parse("thread-1").expect("valid"),
            run_id: RunId::parse("run-1").expect("valid"),
            hold_id: HoldId::parse("hold-1").expect("valid"),
            price: Amount::parse("10").expect("valid"),
            status: JobStatus::Running,
            stage: "render".to_owned(),
            progress_percent: 40,
            input: r#"{"answer":"42","problem":"6 × 7 = ?"}"#.to_owned(),
            lease_holder: Some("w1".to_owned()),
            lease_expires_at: Some(at.plus_seconds(30)),
            heartbeat_at: Some(at),
            cancel_requested: true,
            retry_source_job_id: Some(JobId::parse("job-0").expect("valid")),
            attempts: 2,
            run_after: at,
            error_stage: Some("render".to_owned()),
            error_code: Some("unknown".to_owned()),
            error_detail: Some("earlier try".to_owned()),
            refund_applied_at: None,
            artifact_id: None,
            created_at: at,
            updated_at: at,
            started_at: Some(at),
            finished_at: None,
            version: 7,
        }
    }

    #[test]
    fn a_job_round_trips_through_the_worker_json() {
        let job = job();
        let value = worker_job_json(&job);
        assert_eq!(value["input"]["problem"], "6 × 7 = ?");
        assert_eq!(job_from_worker_json(&value), Ok(job));
    }

    #[test]
    fn finish_bodies_round_trip() {
        let outcomes = [
            Finish::Succeeded(Rendered { bytes: vec![0, 1, 2, 255], content_type: "video/mp4".to_owned() }),
            Finish::Failed(RenderFailure {
                transient: true,
                code: JobErrorCode::TtsProviderDown,
                stage: "tts".to_owned(),
                detail: "down".to_owned(),
            }),
            Finish::Canceled,
        ];
        for finish in outcomes {
            let (worker_id, parsed) = parse_finish_body(&finish_body("w-1", &finish), 16).expect("parses");
            assert_eq!(worker_id, "w-1");
            assert_eq!(format!("{parsed:?}"), format!("{finish:?}"));
        }
    }

    #[test]
    fn finish_bodies_are_checked() {
        let too_large =
            finish_body("w", &Finish::Succeeded(Rendered { bytes: vec![7; 64], content_type: "a/b".to_owned() }));
        assert_eq!(parse_finish_body(&too_large, 63).map(|_| ()), Err(FinishBodyError::TooLarge(63)));
        assert!(parse_finish_body(&too_large, 64).is_ok());
        let huge = json!({"worker_id": "w", "outcome": "succeeded", "artifact_base64": "A".repeat(4000)});
        assert_eq!(parse_finish_body(&huge, 64).map(|_| ()), Err(FinishBodyError::TooLarge(64)));
        for bad in [
            json!({"outcome": "canceled"}),
            json!({"worker_id": "", "outcome": "canceled"}),
            json!({"worker_id": "w", "outcome": "done"}),
            json!({"worker_id": "w", "outcome": "failed", "error_code": "oops"}),
            json!({"worker_id": "w", "outcome": "failed", "stage": "Render Now"}),
            json!({"worker_id": "w", "outcome": "failed", "transient": "yes"}),
            json!({"worker_id": "w", "outcome": "succeeded", "artifact_base64": "!!"}),
            json!({"worker_id": "w", "outcome": "succeeded", "artifact_base64": "AAAA", "content_type": "mp4"}),
        ] {
            assert!(matches!(parse_finish_body(&bad, 64), Err(FinishBodyError::Invalid(_))), "{bad}");
        }
        let (_, failed) = parse_finish_body(&json!({"worker_id": "w", "outcome": "failed"}), 64).expect("defaults");
        let Finish::Failed(failure) = failed else { panic!("a failure") };
        assert_eq!((failure.transient, failure.code, failure.stage.as_str()), (false, JobErrorCode::Unknown, "render"));
    }

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
