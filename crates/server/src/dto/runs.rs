//! The shapes of metered runs: estimates, solve requests, runs and their documents.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/estimate`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateRequest {
    /// Planned steps: `solve`, `pdf`, `video` (a plan without solve gets solve first; at most 8).
    pub steps: Vec<String>,
    /// The price tier (`flash`, `sonnet`, `opus`); or give `difficulty` instead.
    pub model: Option<String>,
    /// `easy`, `medium` or `hard`, mapped to a tier by the catalog.
    pub difficulty: Option<String>,
    /// `full` (one explain call) or `brief`.
    pub explanation_mode: String,
}

/// One line of a breakdown: a call already made, or the worst case of a planned step.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateLine {
    /// `router`, `planner`, `general_chat`, or a step (`solve`, `pdf`, `video`).
    pub label: String,
    #[schema(example = "17")]
    pub amount: String,
    /// How the amount was formed, e.g. `sonnet/full: 3 × (5 + 1 + 1) + 1 × 5 + 1 × 5`.
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateResponse {
    #[schema(example = "20")]
    pub total: String,
    pub breakdown: Vec<EstimateLine>,
    pub catalog_version: String,
}

wire_enum!(both
    /// What a turn does besides answering a problem.
    SolveAction with engine::run::Action { VideoRetry }
);

/// `POST /v1/solve`: answered with `text/event-stream` (see `RunEvent`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SolveRequestDto {
    pub account_id: String,
    pub problem: String,
    /// The thread to continue; a new one when absent.
    pub thread_id: Option<String>,
    /// `video_retry` retries a failed or canceled video job (give `retry_source_job_id`).
    pub action: Option<SolveAction>,
    pub retry_source_job_id: Option<String>,
}

wire_enum!(out
    /// Where a run is: `running` until it ends in one of the others.
    RunStateName from store::RunState { Running, Succeeded, Failed, Canceled, Interrupted }
);

/// A run (one turn of a thread) as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunResponse {
    pub run_id: String,
    pub thread_id: String,
    pub account_id: String,
    pub turn_index: u32,
    pub state: RunStateName,
    pub hold_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Plan, costs, credit log, answer, error; `null` when the stored document does not read.
    pub details: Option<RunDetails>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ThreadResponse {
    pub thread_id: String,
    pub account_id: String,
    pub turns: Vec<RunResponse>,
}

wire_enum!(out
    /// A planned step of a math turn.
    PlanStep from pricing::Step { Solve, Pdf, Video }
);

wire_enum!(out
    /// A price tier of the catalog (the provider maps each to a model).
    ModelTier from pricing::Tier { Flash, Sonnet, Opus }
);

wire_enum!(out
    /// How hard the planner judged a problem.
    Difficulty from pricing::Difficulty { Easy, Medium, Hard }
);

wire_enum!(out
    /// Whether the solver ends with an explain call (`full`) or not (`brief`).
    ExplanationMode from pricing::ExplanationMode { Full, Brief }
);

wire_enum!(out
    /// The router's decision.
    Route from engine::run::data::Route { GeneralChat, MathTask }
);

wire_enum!(out
    /// Which node of the graph made a metered call.
    CreditNode from engine::run::data::Node { Router, Planner, General, Solver, Pdf, Video }
);

wire_enum!(out
    /// What a metered call was charged as: a priced action, or a solver model call.
    CreditAction from engine::run::data::Charge {
        Router,
        Planner,
        GeneralChat,
        CodeGenerate,
        CodeExecute,
        Pdf,
        Video,
        LlmCallVerify,
        LlmCallSummary,
        LlmCallExplain,
    }
);

wire_enum!(out
    /// How a run ended when it did not succeed: the code of its `error` event, or `interrupted`
    /// (its server stopped; recovery released its hold).
    RunErrorCode from engine::run::data::RunErrorCode {
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

/// The planner's plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanDetails {
    /// Solve first, each step once.
    pub steps: Vec<PlanStep>,
    pub difficulty: Difficulty,
    pub explanation_mode: ExplanationMode,
    pub use_page: bool,
    /// The tier the catalog maps the difficulty to.
    pub model: ModelTier,
}

/// One metered call.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditLogEntry {
    pub node: CreditNode,
    pub action: CreditAction,
    /// The tier of a model call; absent for tools, PDF and video.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelTier>,
    #[schema(example = "1")]
    pub cost: String,
    /// A model call's tokens as its provider reported them; absent for tools, PDF and video
    /// (and for calls logged before tokens were recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenUsage>,
}

/// The tokens of one model call: ready for prices per token. A provider that reports no usage
/// is `{"reported": false}`, never zero tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenUsage {
    pub reported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunErrorDetails {
    pub code: RunErrorCode,
    pub message: String,
}

/// What a run recorded (its stored document).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetails {
    pub problem: String,
    pub action: Option<SolveAction>,
    pub retry_source_job_id: Option<String>,
    /// The catalog the run was estimated, metered and settled at.
    pub catalog_version: String,
    pub route: Option<Route>,
    pub plan: Option<PlanDetails>,
    /// What the hold reserved.
    pub reserved: Option<String>,
    pub breakdown: Vec<EstimateLine>,
    pub log: Vec<CreditLogEntry>,
    /// The synchronous cost the settler captured (video is charged by its job).
    pub actual: Option<String>,
    /// Everything the hold captured (video included).
    pub captured: Option<String>,
    /// What went back to available at the settle.
    pub refunded: Option<String>,
    pub answer: Option<String>,
    pub explanation: Option<String>,
    /// The run's artifacts (`GET /v1/artifacts/{artifact_id}`).
    pub artifacts: Vec<String>,
    /// The run's video jobs.
    pub jobs: Vec<String>,
    pub error: Option<RunErrorDetails>,
    /// False only while a failed run's hold still waits for its release (recovery retries it).
    pub hold_resolved: bool,
}
