//! Rendering jobs for their owners and workers, and parsing the worker protocol's requests into
//! the job system's types, with the protocol's limits (`jobs::remote`).

use base64::Engine as _;
use jobs::remote::{CONTENT_TYPE_BYTES_MAX, DETAIL_CHARS_MAX, STAGE_BYTES_MAX, WORKER_ID_BYTES_MAX};
use jobs::render::{RenderFailure, Rendered};
use jobs::Finish;
use serde_json::Value;
use store::{JobRecord, JobStatus};

use super::format_time;
use crate::dto::{FinishOutcome, FinishRequest, JobResponse, WorkerJobResponse};

/// A job as its owner sees it.
pub fn job_response(job: &JobRecord) -> JobResponse {
    JobResponse {
        job_id: job.job_id.to_string(),
        account_id: job.account_id.to_string(),
        thread_id: job.thread_id.to_string(),
        run_id: job.run_id.to_string(),
        status: job.status.into(),
        stage: job.stage.clone(),
        progress: job.progress_percent,
        price: job.price.to_string(),
        cancel_requested: job.cancel_requested,
        retry_source_job_id: job.retry_source_job_id.as_ref().map(ToString::to_string),
        can_user_retry: matches!(job.status, JobStatus::Failed | JobStatus::Canceled)
            && job.retry_source_job_id.is_none(),
        attempts: job.attempts,
        error_stage: job.error_stage.clone(),
        error_code: job.error_code.clone(),
        error_detail: job.error_detail.clone(),
        refunded: job.refund_applied_at.is_some(),
        refund_applied_at: job.refund_applied_at.map(format_time),
        artifact_id: job.artifact_id.as_ref().map(ToString::to_string),
        artifact_url: job.artifact_id.as_ref().map(|id| format!("/v1/artifacts/{id}")),
        created_at: format_time(job.created_at),
        updated_at: format_time(job.updated_at),
        started_at: job.started_at.map(format_time),
        finished_at: job.finished_at.map(format_time),
    }
}

/// A job as a worker sees it: its input snapshot as JSON (it is JSON text the engine wrote; text
/// that is not would travel as a string).
pub fn worker_job_response(job: &JobRecord) -> WorkerJobResponse {
    let input = serde_json::from_str::<Value>(&job.input).unwrap_or_else(|_| Value::String(job.input.clone()));
    WorkerJobResponse {
        job: job_response(job),
        input,
        hold_id: job.hold_id.to_string(),
        lease_holder: job.lease_holder.clone(),
        lease_expires_at: job.lease_expires_at.map(format_time),
        heartbeat_at: job.heartbeat_at.map(format_time),
        run_after: format_time(job.run_after),
        version: job.version,
    }
}

/// A worker id: 1..=[`WORKER_ID_BYTES_MAX`] visible ASCII characters.
pub fn parse_worker_id(text: &str) -> Result<String, String> {
    let valid =
        (1..=WORKER_ID_BYTES_MAX).contains(&text.len()) && text.bytes().all(|byte| (0x21..=0x7e).contains(&byte));
    if !valid {
        return Err(format!("worker_id: 1-{WORKER_ID_BYTES_MAX} visible ASCII characters"));
    }
    Ok(text.to_owned())
}

/// A stage name: 1..=[`STAGE_BYTES_MAX`] lowercase letters, digits or underscores.
pub fn parse_stage(text: &str) -> Result<String, String> {
    let valid = (1..=STAGE_BYTES_MAX).contains(&text.len())
        && text.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if !valid {
        return Err(format!("stage: 1-{STAGE_BYTES_MAX} lowercase letters, digits or underscores"));
    }
    Ok(text.to_owned())
}

/// A heartbeat's progress: 0..=100.
pub fn parse_progress(progress: u8) -> Result<u8, String> {
    if progress > 100 {
        return Err("progress: an integer from 0 to 100".to_owned());
    }
    Ok(progress)
}

/// Why a finish body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishBodyError {
    /// A field is missing or malformed; the text says which.
    Invalid(String),
    /// The artifact decodes to more than this many bytes.
    TooLarge(usize),
}

/// The worker id and the attempt's end of a finish body, the artifact decoded (at most
/// `artifact_bytes_max` bytes).
pub fn parse_finish(request: FinishRequest, artifact_bytes_max: usize) -> Result<(String, Finish), FinishBodyError> {
    let invalid = FinishBodyError::Invalid;
    let worker_id = parse_worker_id(&request.worker_id).map_err(invalid)?;
    let finish = match request.outcome {
        FinishOutcome::Succeeded => {
            let encoded =
                request.artifact_base64.ok_or_else(|| invalid("artifact_base64: a string is required".to_owned()))?;
            // Refuse before decoding: base64 takes 4 characters per 3 bytes.
            if encoded.len() / 4 * 3 > artifact_bytes_max.saturating_add(3) {
                return Err(FinishBodyError::TooLarge(artifact_bytes_max));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&encoded)
                .map_err(|error| invalid(format!("artifact_base64: {error}")))?;
            if bytes.len() > artifact_bytes_max {
                return Err(FinishBodyError::TooLarge(artifact_bytes_max));
            }
            if bytes.is_empty() {
                return Err(invalid("artifact_base64: the artifact is empty".to_owned()));
            }
            let content_type = request.content_type.unwrap_or_else(|| "application/octet-stream".to_owned());
            let valid_type = (1..=CONTENT_TYPE_BYTES_MAX).contains(&content_type.len())
                && content_type.bytes().all(|byte| (0x20..0x7f).contains(&byte))
                && content_type.contains('/');
            if !valid_type {
                return Err(invalid("content_type: a media type such as video/mp4".to_owned()));
            }
            Finish::Succeeded(Rendered { bytes, content_type })
        }
        FinishOutcome::Failed => {
            let stage = match request.stage {
                None => "render".to_owned(),
                Some(stage) => parse_stage(&stage).map_err(invalid)?,
            };
            Finish::Failed(RenderFailure {
                transient: request.transient.unwrap_or(false),
                code: request.error_code.map_or(jobs::JobErrorCode::Unknown, Into::into),
                stage,
                detail: request.detail.unwrap_or_default().chars().take(DETAIL_CHARS_MAX).collect(),
            })
        }
        FinishOutcome::Canceled => Finish::Canceled,
    };
    Ok((worker_id, finish))
}

#[cfg(test)]
mod tests {
    use jobs::remote::{finish_body, job_from_worker_json};
    use jobs::JobErrorCode;
    use ledger::{Amount, Timestamp};
    use serde_json::json;
    use store::conformance::jobs::{job_id_of, queued_job};

    use super::*;

    /// A job with every optional field set.
    fn full_job() -> JobRecord {
        let at = Timestamp::from_micros(1_800_000_000_123_456);
        JobRecord {
            status: JobStatus::Running,
            price: Amount::parse("10.5").expect("valid"),
            stage: "render".to_owned(),
            progress_percent: 40,
            input: r#"{"answer":"42","problem":"6 × 7 = ?"}"#.to_owned(),
            lease_holder: Some("w1".to_owned()),
            lease_expires_at: Some(at.plus_seconds(30)),
            heartbeat_at: Some(at),
            cancel_requested: true,
            retry_source_job_id: Some(job_id_of("job-0")),
            attempts: 2,
            error_stage: Some("render".to_owned()),
            error_code: Some("unknown".to_owned()),
            error_detail: Some("earlier try".to_owned()),
            started_at: Some(at),
            version: 7,
            ..queued_job("job-1", "thread-1", at)
        }
    }

    fn body(value: Value) -> FinishRequest {
        serde_json::from_value(value).expect("a finish request")
    }

    /// The server's rendering and the worker client's parsing agree: a job survives the trip.
    #[test]
    fn a_job_round_trips_through_the_worker_api() {
        for job in [full_job(), queued_job("job-2", "thread-2", Timestamp::from_micros(0))] {
            let value = serde_json::to_value(worker_job_response(&job)).expect("serializes");
            assert_eq!(job_from_worker_json(&value), Ok(job.clone()));
        }
        let value = serde_json::to_value(worker_job_response(&full_job())).expect("serializes");
        assert_eq!(value["input"]["problem"], "6 × 7 = ?", "the input travels as JSON");
        assert_eq!((value["price"].as_str(), value["progress"].as_u64()), (Some("10.5"), Some(40)));
    }

    /// The worker client's finish bodies and the server's parsing agree, for every outcome.
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
            let (worker_id, parsed) = parse_finish(body(finish_body("w-1", &finish)), 16).expect("parses");
            assert_eq!(worker_id, "w-1");
            assert_eq!(format!("{parsed:?}"), format!("{finish:?}"));
        }
        for code in JobErrorCode::ALL {
            let failure = RenderFailure { transient: false, code, stage: "render".to_owned(), detail: String::new() };
            let (_, parsed) = parse_finish(body(finish_body("w", &Finish::Failed(failure))), 16).expect("parses");
            assert!(matches!(parsed, Finish::Failed(RenderFailure { code: parsed, .. }) if parsed == code), "{code:?}");
        }
    }

    #[test]
    fn finish_bodies_are_checked() {
        let too_large =
            finish_body("w", &Finish::Succeeded(Rendered { bytes: vec![7; 64], content_type: "a/b".to_owned() }));
        assert_eq!(parse_finish(body(too_large.clone()), 63).map(|_| ()), Err(FinishBodyError::TooLarge(63)));
        assert!(parse_finish(body(too_large), 64).is_ok());
        let huge = json!({"worker_id": "w", "outcome": "succeeded", "artifact_base64": "A".repeat(4000)});
        assert_eq!(parse_finish(body(huge), 64).map(|_| ()), Err(FinishBodyError::TooLarge(64)));
        for bad in [
            json!({"worker_id": "", "outcome": "canceled"}),
            json!({"worker_id": "w", "outcome": "failed", "stage": "Render Now"}),
            json!({"worker_id": "w", "outcome": "succeeded", "artifact_base64": "!!"}),
            json!({"worker_id": "w", "outcome": "succeeded", "artifact_base64": "AAAA", "content_type": "mp4"}),
            json!({"worker_id": "w", "outcome": "succeeded"}),
        ] {
            assert!(matches!(parse_finish(body(bad.clone()), 64), Err(FinishBodyError::Invalid(_))), "{bad}");
        }
        // Refused before they can be parsed: the route answers these with invalid_request too.
        for malformed in [
            json!({"outcome": "canceled"}),
            json!({"worker_id": "w", "outcome": "done"}),
            json!({"worker_id": "w", "outcome": "failed", "error_code": "oops"}),
            json!({"worker_id": "w", "outcome": "failed", "transient": "yes"}),
        ] {
            assert!(serde_json::from_value::<FinishRequest>(malformed.clone()).is_err(), "{malformed}");
        }
        let (_, failed) = parse_finish(body(json!({"worker_id": "w", "outcome": "failed"})), 64).expect("defaults");
        let Finish::Failed(failure) = failed else { panic!("a failure") };
        assert_eq!((failure.transient, failure.code, failure.stage.as_str()), (false, JobErrorCode::Unknown, "render"));
    }

    #[test]
    fn worker_ids_stages_and_progress_are_bounded() {
        assert!(parse_worker_id("w-1").is_ok());
        assert!(parse_worker_id(&"w".repeat(WORKER_ID_BYTES_MAX + 1)).is_err());
        assert!(parse_worker_id("w 1").is_err());
        assert!(parse_stage("tts_2").is_ok());
        assert!(parse_stage(&"s".repeat(STAGE_BYTES_MAX + 1)).is_err());
        assert_eq!(parse_progress(100), Ok(100));
        assert!(parse_progress(101).is_err());
    }
}
