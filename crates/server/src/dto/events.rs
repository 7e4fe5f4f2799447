//! The frames of a run's event stream (`text/event-stream` of `POST /v1/solve` and
//! `GET /v1/runs/{run_id}/events`): each SSE `data` line is one [`RunEvent`], whose `type` names
//! its payload's shape. Described here so the OpenAPI document lists every payload.

use serde::Serialize;
use utoipa::ToSchema;

use super::jobs::JobResponse;
use super::runs::{CreditLogEntry, Difficulty, EstimateLine, ModelTier, PlanStep, Route};

wire_enum!(out
    /// The type of an event; also its SSE `event` name.
    RunEventType from engine::events::EventKind {
        PageStart,
        SolveProgress,
        Token,
        ToolStart,
        ToolResult,
        NodeResult,
        CreditReserved,
        CreditSettled,
        JobProgress,
        JobFinished,
        Error,
        Done,
    }
);

wire_enum!(out
    /// The code of an `error` event (and of a failed step's `node_result`).
    EventErrorCode from engine::events::ErrorCode {
        InternalError,
        ToolError,
        ModelError,
        CreditExhausted,
        Timeout,
        InvalidInput,
        Canceled,
        Interrupted,
        SandboxUnavailable,
    }
);

wire_enum!(out
    /// Which solver call a `solve_progress` event reports.
    SolvePhase from engine::events::SolvePhase { Verify, Summary, Explain }
);

/// One frame of a run's stream. Its SSE `id` is `<thread_id>:<seq>`, which `Last-Event-ID`
/// resumes after.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunEvent {
    #[serde(rename = "type")]
    pub event_type: RunEventType,
    pub thread_id: String,
    pub run_id: String,
    /// 0, 1, 2, … per run (frames evicted from a full buffer leave gaps).
    pub seq: u64,
    /// When the event was emitted (RFC 3339 UTC).
    pub ts: String,
    /// The planned step the event belongs to, if any.
    pub step_idx: Option<usize>,
    /// The node that emitted it: `solve`, `pdf`, `video`, `planner`, `general`, `settler`.
    pub node: Option<String>,
    pub payload: RunEventPayload,
}

/// The payload of an event; which one is named by the event's `type`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RunEventPayload {
    PageStart(PageStartPayload),
    SolveProgress(SolveProgressPayload),
    Token(TokenPayload),
    ToolStart(ToolStartPayload),
    ToolResult(ToolResultPayload),
    NodeResult(NodeResultPayload),
    CreditReserved(CreditReservedPayload),
    CreditSettled(CreditSettledPayload),
    /// `job_progress` and `job_finished`: the job as `GET /v1/jobs/{job_id}` shows it.
    Job(Box<JobResponse>),
    Error(ErrorPayload),
    Done(DonePayload),
}

/// `page_start`: the plan of a math turn that shows a page.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageStartPayload {
    pub plan: Vec<PlanStep>,
    pub selected_model: ModelTier,
    pub difficulty: Difficulty,
    /// Always `math_task`.
    pub route: Route,
    /// Always true.
    pub use_page: bool,
}

/// `solve_progress`: a solver call answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct SolveProgressPayload {
    /// The model's text (empty for the summary and explain calls).
    pub text: String,
    /// Solver model calls so far.
    pub iteration: u32,
    pub phase: SolvePhase,
}

/// `token`: a piece of text as the model writes it (node `solve`: the answer; `explain`: the
/// explanation; `general`: a general-chat answer), or an attachment (`delta` empty). The
/// deltas of a node concatenate to the text the run stores for it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPayload {
    pub delta: String,
    /// The last piece of its text (attachments are always final).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub metadata: TokenMetadata,
}

/// What a token announces besides text (`{}` for plain text).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum TokenMetadata {
    Video(VideoTokenMetadata),
    Pdf(PdfTokenMetadata),
    Text(EmptyObject),
}

/// The empty JSON object `{}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmptyObject {}

/// The solution PDF was stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct PdfTokenMetadata {
    pub artifact_id: String,
    /// `/v1/artifacts/{artifact_id}`
    pub url: String,
}

/// The video job was created.
#[derive(Debug, Serialize, ToSchema)]
pub struct VideoTokenMetadata {
    /// Always `tool`.
    pub display: String,
    /// Always `video_generate`.
    pub tool_name: String,
    pub job_id: String,
    pub status: super::jobs::JobStatusName,
    /// `/v1/jobs/{job_id}`
    pub progress_url: String,
}

/// `tool_start`: the solver model asked for a tool.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolStartPayload {
    /// `code_generate`, `code_execute`, or what the model named.
    pub name: String,
    pub label: String,
    pub tool_call_id: String,
}

/// `tool_result`: what the tool answered the model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolResultPayload {
    pub name: String,
    pub tool_call_id: String,
    /// Cut to 2 KiB.
    pub output: String,
    pub success: bool,
}

/// Whether a step succeeded.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Done,
    Error,
}

/// `node_result`: a step ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeResultPayload {
    pub status: NodeStatus,
    pub duration_ms: u64,
    /// Set when `status` is `error`.
    pub error_code: Option<EventErrorCode>,
}

/// `credit_reserved`: the turn's hold was taken, all or nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditReservedPayload {
    pub hold_id: String,
    #[schema(example = "20")]
    pub amount: String,
    pub breakdown: Vec<EstimateLine>,
}

/// `credit_settled`: the turn's cost was captured and the rest of the hold went back.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditSettledPayload {
    pub hold_id: String,
    /// The synchronous cost (video is charged by its job).
    pub actual: String,
    pub reserved: String,
    pub captured: String,
    pub refunded: String,
    pub log: Vec<CreditLogEntry>,
}

/// `error`: the run failed (its hold was released). The last event of the run.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorPayload {
    pub code: EventErrorCode,
    pub message: String,
    /// Always false.
    pub recoverable: bool,
    /// `credit_exhausted` only: what the turn needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<String>,
    /// `credit_exhausted` only: what was available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
}

/// `done`: the run succeeded. The last event of the run.
#[derive(Debug, Serialize, ToSchema)]
pub struct DonePayload {
    /// Always true.
    #[serde(rename = "final")]
    pub is_final: bool,
}
