//! Rendering what runs record and say: run documents, estimate lines and event frames, from the
//! engine's typed values to the DTOs. Amounts stay [`ledger::Amount`]s up to here and become
//! decimal text only in the DTO.

use engine::events::{Attachment, Event, Frame, RunError};
use engine::run::data::{CreditEntry, RunData, Tokens};
use pricing::Line;
use store::{RunId, RunRecord, ThreadId};

use super::format_time;
use crate::dto::{
    CreditLogEntry, CreditReservedPayload, CreditSettledPayload, DonePayload, EmptyObject, ErrorPayload, EstimateLine,
    NodeResultPayload, NodeStatus, PageStartPayload, PdfTokenMetadata, PlanDetails, Route, RunDetails, RunErrorDetails,
    RunEvent, RunEventPayload, RunResponse, SolveProgressPayload, TokenMetadata, TokenPayload, TokenUsage,
    ToolResultPayload, ToolStartPayload, VideoTokenMetadata,
};
use crate::wire::jobs::job_response;

pub fn estimate_line(line: &Line) -> EstimateLine {
    EstimateLine { label: line.label.clone(), amount: line.amount.to_string(), detail: line.detail.clone() }
}

pub fn credit_log_entry(entry: &CreditEntry) -> CreditLogEntry {
    CreditLogEntry {
        node: entry.node.into(),
        action: entry.action.into(),
        model: entry.model.map(Into::into),
        cost: entry.cost.to_string(),
        tokens: entry.tokens.map(|tokens| match tokens {
            Tokens::Unknown => TokenUsage { reported: false, prompt_tokens: None, completion_tokens: None },
            Tokens::Reported { prompt_tokens, completion_tokens } => TokenUsage {
                reported: true,
                prompt_tokens: Some(prompt_tokens),
                completion_tokens: Some(completion_tokens),
            },
        }),
    }
}

/// A run as stored; `details` is `null` when its document does not read (it is never written
/// that way; a damaged row still shows its indexed fields).
pub fn run_response(record: &RunRecord) -> RunResponse {
    let details = RunData::from_text(&record.data).map(|data| run_details(&data));
    if details.is_none() {
        tracing::warn!(run_id = %record.run_id, "a stored run document does not read; shown as null");
    }
    RunResponse {
        run_id: record.run_id.to_string(),
        thread_id: record.thread_id.to_string(),
        account_id: record.account_id.to_string(),
        turn_index: record.turn_index,
        state: record.state.into(),
        hold_id: record.hold_id.as_ref().map(ToString::to_string),
        created_at: format_time(record.created_at),
        updated_at: format_time(record.updated_at),
        details,
    }
}

pub fn run_details(data: &RunData) -> RunDetails {
    let amount = |amount: Option<ledger::Amount>| amount.map(|amount| amount.to_string());
    RunDetails {
        problem: data.problem.clone(),
        action: data.action.map(Into::into),
        retry_source_job_id: data.retry_source_job_id.as_ref().map(ToString::to_string),
        catalog_version: data.catalog_version.clone(),
        route: data.route.map(Into::into),
        plan: data.plan.as_ref().map(|plan| PlanDetails {
            steps: plan.steps.iter().copied().map(Into::into).collect(),
            difficulty: plan.difficulty.into(),
            explanation_mode: plan.explanation_mode.into(),
            use_page: plan.use_page,
            model: plan.model.into(),
        }),
        reserved: amount(data.reserved),
        breakdown: data.breakdown.iter().map(estimate_line).collect(),
        log: data.log.iter().map(credit_log_entry).collect(),
        actual: amount(data.actual),
        captured: amount(data.captured),
        refunded: amount(data.refunded),
        answer: data.answer.clone(),
        explanation: data.explanation.clone(),
        artifacts: data.artifacts.iter().map(ToString::to_string).collect(),
        jobs: data.jobs.iter().map(ToString::to_string).collect(),
        error: data
            .error
            .as_ref()
            .map(|error| RunErrorDetails { code: error.code.into(), message: error.message.clone() }),
        hold_resolved: data.hold_resolved,
    }
}

fn error_payload(error: &RunError) -> ErrorPayload {
    ErrorPayload {
        code: error.code.into(),
        message: error.message.clone(),
        recoverable: false,
        required: error.shortfall.map(|shortfall| shortfall.required.to_string()),
        available: error.shortfall.map(|shortfall| shortfall.available.to_string()),
    }
}

/// The payload of an event.
pub fn event_payload(event: &Event) -> RunEventPayload {
    match event {
        Event::PageStart(page) => RunEventPayload::PageStart(PageStartPayload {
            plan: page.steps.iter().copied().map(Into::into).collect(),
            selected_model: page.model.into(),
            difficulty: page.difficulty.into(),
            route: Route::MathTask,
            use_page: true,
        }),
        Event::SolveProgress(progress) => RunEventPayload::SolveProgress(SolveProgressPayload {
            text: progress.text.clone(),
            iteration: progress.iteration,
            phase: progress.phase.into(),
        }),
        Event::Token(token) => {
            let metadata = match &token.attachment {
                None => TokenMetadata::Text(EmptyObject {}),
                Some(Attachment::Pdf { artifact_id }) => TokenMetadata::Pdf(PdfTokenMetadata {
                    artifact_id: artifact_id.to_string(),
                    url: format!("/v1/artifacts/{artifact_id}"),
                }),
                Some(Attachment::Video { job_id, status }) => TokenMetadata::Video(VideoTokenMetadata {
                    display: "tool".to_owned(),
                    tool_name: "video_generate".to_owned(),
                    job_id: job_id.to_string(),
                    status: (*status).into(),
                    progress_url: format!("/v1/jobs/{job_id}"),
                }),
            };
            RunEventPayload::Token(TokenPayload { delta: token.delta.clone(), is_final: token.is_final, metadata })
        }
        Event::ToolStart(tool) => RunEventPayload::ToolStart(ToolStartPayload {
            name: tool.name.clone(),
            label: tool.name.clone(),
            tool_call_id: tool.tool_call_id.clone(),
        }),
        Event::ToolResult(tool) => RunEventPayload::ToolResult(ToolResultPayload {
            name: tool.name.clone(),
            tool_call_id: tool.tool_call_id.clone(),
            output: tool.output.clone(),
            success: tool.success,
        }),
        Event::NodeResult(result) => RunEventPayload::NodeResult(NodeResultPayload {
            status: if result.error_code.is_some() { NodeStatus::Error } else { NodeStatus::Done },
            duration_ms: result.duration_ms,
            error_code: result.error_code.map(Into::into),
        }),
        Event::CreditReserved(reserved) => RunEventPayload::CreditReserved(CreditReservedPayload {
            hold_id: reserved.hold_id.to_string(),
            amount: reserved.amount.to_string(),
            breakdown: reserved.breakdown.iter().map(estimate_line).collect(),
        }),
        Event::CreditSettled(settled) => RunEventPayload::CreditSettled(CreditSettledPayload {
            hold_id: settled.hold_id.to_string(),
            actual: settled.actual.to_string(),
            reserved: settled.reserved.to_string(),
            captured: settled.captured.to_string(),
            refunded: settled.refunded.to_string(),
            log: settled.log.iter().map(credit_log_entry).collect(),
        }),
        Event::JobProgress(job) | Event::JobFinished(job) => RunEventPayload::Job(Box::new(job_response(job))),
        Event::Error(error) => RunEventPayload::Error(error_payload(error)),
        Event::Done => RunEventPayload::Done(DonePayload { is_final: true }),
    }
}

/// A frame of the run `run_id` of `thread_id`, as its SSE `data` carries it.
pub fn run_event(thread_id: &ThreadId, run_id: &RunId, frame: &Frame) -> RunEvent {
    RunEvent {
        event_type: frame.kind.into(),
        thread_id: thread_id.to_string(),
        run_id: run_id.to_string(),
        seq: frame.seq,
        ts: format_time(frame.ts),
        step_idx: frame.step_idx,
        node: frame.node.map(str::to_owned),
        payload: event_payload(&frame.event),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use engine::events::{
        CreditReserved, CreditSettled, ErrorCode, EventKind, NodeResult, PageStart, Shortfall, SolvePhase, Token,
    };
    use engine::run::data::{Charge, Node, RunErrorCode};
    use jobs::JobErrorCode;
    use ledger::{Amount, HoldId, Timestamp};
    use pricing::{Difficulty, ExplanationMode, Step, Tier};
    use serde::Serialize;
    use serde_json::{json, Value};
    use store::conformance::jobs::queued_job;
    use store::{JobStatus, RunState};

    use super::*;
    use crate::dto;

    fn name(value: impl Serialize) -> String {
        serde_json::to_value(value).expect("serializes").as_str().expect("a name").to_owned()
    }

    /// The wire enums' names are the engine's (the conversions make the variants match; this
    /// makes the names match).
    #[test]
    fn wire_enums_carry_the_engines_names() {
        for kind in EventKind::ALL {
            assert_eq!(name(dto::RunEventType::from(kind)), kind.as_str());
        }
        for code in ErrorCode::ALL {
            assert_eq!(name(dto::EventErrorCode::from(code)), code.as_str());
        }
        for code in RunErrorCode::ALL {
            assert_eq!(name(dto::RunErrorCode::from(code)), code.as_str());
        }
        for phase in SolvePhase::ALL {
            assert_eq!(name(dto::SolvePhase::from(phase)), phase.as_str());
        }
        for step in Step::ALL {
            assert_eq!(name(dto::PlanStep::from(step)), step.as_str());
        }
        for tier in Tier::ALL {
            assert_eq!(name(dto::ModelTier::from(tier)), tier.as_str());
        }
        for difficulty in Difficulty::ALL {
            assert_eq!(name(dto::Difficulty::from(difficulty)), difficulty.as_str());
        }
        for mode in ExplanationMode::ALL {
            assert_eq!(name(dto::ExplanationMode::from(mode)), mode.as_str());
        }
        for route in engine::run::data::Route::ALL {
            assert_eq!(name(dto::Route::from(route)), route.as_str());
        }
        for node in Node::ALL {
            assert_eq!(name(dto::CreditNode::from(node)), node.as_str());
        }
        for charge in Charge::ALL {
            assert_eq!(name(dto::CreditAction::from(charge)), charge.as_str());
        }
        for action in engine::run::Action::ALL {
            assert_eq!(name(dto::SolveAction::from(action)), action.as_str());
        }
        for state in RunState::ALL {
            assert_eq!(name(dto::RunStateName::from(state)), state.as_str());
        }
        for status in JobStatus::ALL {
            assert_eq!(name(dto::JobStatusName::from(status)), status.as_str());
        }
        for code in JobErrorCode::ALL {
            assert_eq!(name(dto::JobErrorCode::from(code)), code.as_str());
        }
    }

    fn frame(seq: u64, step_idx: Option<usize>, node: Option<&'static str>, event: Event) -> Frame {
        let ts = Timestamp::from_micros(1_800_000_000_250_000);
        Frame { seq, kind: event.kind(), id: format!("t:{seq}"), ts, step_idx, node, event: Arc::new(event) }
    }

    fn rendered(frame: &Frame) -> Value {
        let (thread_id, run_id) = (ThreadId::parse("t").expect("valid"), RunId::parse("r").expect("valid"));
        serde_json::to_value(run_event(&thread_id, &run_id, frame)).expect("serializes")
    }

    fn credits(text: &str) -> Amount {
        Amount::parse(text).expect("valid amount")
    }

    /// Frames render exactly as the stream has always carried them (the shapes clients parse).
    #[test]
    fn frames_render_in_the_streams_shapes() {
        let line = |label: &str, amount: &str, detail: Option<&str>| Line {
            label: label.to_owned(),
            amount: credits(amount),
            detail: detail.map(str::to_owned),
        };
        let hold_id = HoldId::parse("hold-r").expect("valid");
        let cases = [
            (
                frame(
                    0,
                    None,
                    Some("planner"),
                    Event::PageStart(PageStart {
                        steps: vec![Step::Solve, Step::Pdf],
                        model: Tier::Sonnet,
                        difficulty: Difficulty::Medium,
                    }),
                ),
                json!({"plan": ["solve", "pdf"], "selected_model": "sonnet", "difficulty": "medium", "route": "math_task", "use_page": true}),
            ),
            (
                frame(
                    1,
                    None,
                    None,
                    Event::CreditReserved(CreditReserved {
                        hold_id: hold_id.clone(),
                        amount: credits("20"),
                        breakdown: vec![line("router", "1", None), line("solve", "17", Some("flash/full: …"))],
                    }),
                ),
                json!({"hold_id": "hold-r", "amount": "20", "breakdown": [
                    {"label": "router", "amount": "1", "detail": null},
                    {"label": "solve", "amount": "17", "detail": "flash/full: …"},
                ]}),
            ),
            (
                frame(2, Some(0), Some("solve"), Event::NodeResult(NodeResult { error_code: None, duration_ms: 12 })),
                json!({"status": "done", "duration_ms": 12, "error_code": null}),
            ),
            (
                frame(
                    3,
                    Some(1),
                    Some("pdf"),
                    Event::NodeResult(NodeResult { error_code: Some(ErrorCode::ToolError), duration_ms: 3 }),
                ),
                json!({"status": "error", "duration_ms": 3, "error_code": "tool_error"}),
            ),
            (
                frame(4, Some(0), Some("solve"), Event::Token(Token::text("4", true))),
                json!({"delta": "4", "final": true, "metadata": {}}),
            ),
            (
                frame(4, Some(0), Some("solve"), Event::Token(Token::text("The answer", false))),
                json!({"delta": "The answer", "final": false, "metadata": {}}),
            ),
            (
                frame(
                    5,
                    Some(1),
                    Some("pdf"),
                    Event::Token(Token::attachment(Attachment::Pdf {
                        artifact_id: store::ArtifactId::parse("artifact-1").expect("valid"),
                    })),
                ),
                json!({"delta": "", "final": true, "metadata": {"artifact_id": "artifact-1", "url": "/v1/artifacts/artifact-1"}}),
            ),
            (
                frame(
                    6,
                    Some(2),
                    Some("video"),
                    Event::Token(Token::attachment(Attachment::Video {
                        job_id: store::JobId::parse("job-1").expect("valid"),
                        status: JobStatus::Queued,
                    })),
                ),
                json!({"delta": "", "final": true, "metadata": {
                    "display": "tool", "tool_name": "video_generate", "job_id": "job-1", "status": "queued",
                    "progress_url": "/v1/jobs/job-1",
                }}),
            ),
            (
                frame(
                    7,
                    None,
                    Some("settler"),
                    Event::CreditSettled(CreditSettled {
                        hold_id,
                        actual: credits("4"),
                        reserved: credits("20"),
                        captured: credits("14"),
                        refunded: credits("6"),
                        log: vec![
                            CreditEntry::new(Node::Router, Charge::Router, Some(Tier::Flash), credits("1")),
                            CreditEntry::new(Node::Video, Charge::Video, None, credits("10")),
                        ],
                    }),
                ),
                json!({"hold_id": "hold-r", "actual": "4", "reserved": "20", "captured": "14", "refunded": "6", "log": [
                    {"node": "router", "action": "router", "model": "flash", "cost": "1"},
                    {"node": "video", "action": "video", "cost": "10"},
                ]}),
            ),
            (
                frame(
                    8,
                    None,
                    None,
                    Event::Error(RunError {
                        code: ErrorCode::CreditExhausted,
                        message: "m".to_owned(),
                        shortfall: Some(Shortfall { required: credits("2"), available: credits("0.5") }),
                    }),
                ),
                json!({"code": "credit_exhausted", "message": "m", "recoverable": false, "required": "2", "available": "0.5"}),
            ),
            (frame(9, None, None, Event::Done), json!({"final": true})),
        ];
        for (frame, payload) in cases {
            let value = rendered(&frame);
            assert_eq!(value["payload"], payload, "{:?}", frame.kind);
            assert_eq!(value["type"], frame.kind.as_str());
            assert_eq!((value["thread_id"].as_str(), value["run_id"].as_str()), (Some("t"), Some("r")));
            assert_eq!(
                (value["seq"].as_u64(), value["ts"].as_str()),
                (Some(frame.seq), Some("2027-01-15T08:00:00.25Z"))
            );
            assert_eq!(value["step_idx"], json!(frame.step_idx));
            assert_eq!(value["node"], json!(frame.node));
        }
    }

    /// A run's details are its stored document, field for field.
    #[test]
    fn run_details_show_the_stored_document() {
        use engine::run::data::{ErrorData, PlanData, Route as RunRoute};
        let data = RunData {
            problem: "2+2?".to_owned(),
            action: Some(engine::run::Action::VideoRetry),
            retry_source_job_id: Some(store::JobId::parse("job-0").expect("valid")),
            catalog_version: "sha256:0123".to_owned(),
            route: Some(RunRoute::MathTask),
            plan: Some(PlanData {
                steps: vec![Step::Solve, Step::Video],
                difficulty: Difficulty::Easy,
                explanation_mode: ExplanationMode::Brief,
                use_page: false,
                model: Tier::Flash,
            }),
            reserved: Some(credits("29")),
            breakdown: vec![Line { label: "router".to_owned(), amount: credits("1"), detail: None }],
            log: vec![CreditEntry::new(Node::Solver, Charge::LlmCallVerify, Some(Tier::Flash), credits("1"))],
            actual: Some(credits("4")),
            captured: Some(credits("14")),
            refunded: Some(credits("15")),
            answer: Some("4".to_owned()),
            explanation: None,
            artifacts: vec![store::ArtifactId::parse("artifact-1").expect("valid")],
            jobs: vec![store::JobId::parse("job-1").expect("valid")],
            error: Some(ErrorData { code: RunErrorCode::Interrupted, message: "m".to_owned() }),
            hold_resolved: true,
        };
        let stored: Value = serde_json::from_str(&data.to_text()).expect("JSON");
        assert_eq!(serde_json::to_value(run_details(&data)).expect("serializes"), stored);
        let empty = RunData { problem: "p".to_owned(), catalog_version: "v".to_owned(), ..RunData::default() };
        let stored: Value = serde_json::from_str(&empty.to_text()).expect("JSON");
        assert_eq!(serde_json::to_value(run_details(&empty)).expect("serializes"), stored);
    }

    /// Every code a job or a run can end with goes over the stream and reads back as a member of
    /// its closed set (the original crashed a live stream on a code its schema did not allow).
    #[test]
    fn every_error_code_travels_over_the_stream() {
        for code in JobErrorCode::ALL {
            let job = store::JobRecord {
                status: JobStatus::Failed,
                error_code: Some(code.as_str().to_owned()),
                ..queued_job("job-1", "t", Timestamp::from_micros(0))
            };
            let value = rendered(&frame(0, None, Some("video"), Event::job(job)));
            assert_eq!(value["type"], "job_finished");
            let text = value["payload"]["error_code"].as_str().expect("a code");
            assert_eq!(JobErrorCode::parse(text), Some(code));
        }
        for code in ErrorCode::ALL {
            let error = RunError { code, message: "m".to_owned(), shortfall: None };
            let value = rendered(&frame(0, None, None, Event::Error(error)));
            let text = value["payload"]["code"].as_str().expect("a code");
            assert!(ErrorCode::ALL.iter().any(|known| known.as_str() == text), "{text}");
            assert_eq!(value["payload"].as_object().map(|payload| payload.len()), Some(3), "no shortfall members");
        }
    }
}
