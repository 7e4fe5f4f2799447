//! What a run records: its credit log and the document kept in `RunRecord::data`.
//!
//! The document is typed: amounts are [`Amount`]s (stored as canonical decimal text through
//! [`pricing::amount_text`], never as JSON numbers), names are closed enums (stored as their
//! snake_case names), ids are the stores' id types. Its JSON form is the one the engine has always
//! written, so documents stored before these types existed read back unchanged (a test keeps
//! one). The store only indexes what it must query on and keeps the rest as text; the run's typed
//! `hold_resolution` column is derived from `hold_resolved` ([`RunData::hold_resolution`]).

use ledger::{Amount, HoldId};
use pricing::{amount_text, Difficulty, ExplanationMode, Line, Plan, Step, Tier};
use serde::{Deserialize, Serialize};
use store::{ArtifactId, HoldResolution, JobId};

/// Which node of the graph made a metered call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    Router,
    Planner,
    General,
    Solver,
    Pdf,
    Video,
}

impl Node {
    pub const ALL: [Node; 6] = [Node::Router, Node::Planner, Node::General, Node::Solver, Node::Pdf, Node::Video];

    pub fn as_str(self) -> &'static str {
        match self {
            Node::Router => "router",
            Node::Planner => "planner",
            Node::General => "general",
            Node::Solver => "solver",
            Node::Pdf => "pdf",
            Node::Video => "video",
        }
    }
}

/// What a metered call was charged as: a priced action of the catalog, or a model call of the
/// solve step at its tier's price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charge {
    Router,
    Planner,
    GeneralChat,
    CodeGenerate,
    CodeExecute,
    Pdf,
    Video,
    /// A solver call (it answers or asks for tools).
    LlmCallVerify,
    /// The one call that summarises when the iteration limit is hit.
    LlmCallSummary,
    /// The explain call of `full` mode.
    LlmCallExplain,
}

impl Charge {
    pub const ALL: [Charge; 10] = [
        Charge::Router,
        Charge::Planner,
        Charge::GeneralChat,
        Charge::CodeGenerate,
        Charge::CodeExecute,
        Charge::Pdf,
        Charge::Video,
        Charge::LlmCallVerify,
        Charge::LlmCallSummary,
        Charge::LlmCallExplain,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Charge::Router => "router",
            Charge::Planner => "planner",
            Charge::GeneralChat => "general_chat",
            Charge::CodeGenerate => "code_generate",
            Charge::CodeExecute => "code_execute",
            Charge::Pdf => "pdf",
            Charge::Video => "video",
            Charge::LlmCallVerify => "llm_call_verify",
            Charge::LlmCallSummary => "llm_call_summary",
            Charge::LlmCallExplain => "llm_call_explain",
        }
    }
}

/// The tokens of one model call, as its provider reported them: ready for prices per token.
/// A provider that reports none is `Unknown`, never zero tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokens {
    Unknown,
    Reported { prompt_tokens: u64, completion_tokens: u64 },
}

impl Tokens {
    pub fn of(usage: Option<crate::provider::Usage>) -> Tokens {
        match usage {
            Some(usage) => {
                Tokens::Reported { prompt_tokens: usage.prompt_tokens, completion_tokens: usage.completion_tokens }
            }
            None => Tokens::Unknown,
        }
    }
}

/// One metered call: `{node, action, model?, cost, tokens?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditEntry {
    pub node: Node,
    pub action: Charge,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model: Option<Tier>,
    #[serde(with = "amount_text")]
    pub cost: Amount,
    /// A model call's tokens; absent for what is not a model call (tools, PDF, video) and in
    /// logs written before tokens were recorded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<Tokens>,
}

impl CreditEntry {
    pub fn new(node: Node, action: Charge, model: Option<Tier>, cost: Amount) -> CreditEntry {
        CreditEntry { node, action, model, cost, tokens: None }
    }

    /// The entry of a model call, with the tokens its provider reported.
    pub fn model_call(node: Node, action: Charge, model: Tier, cost: Amount, tokens: Tokens) -> CreditEntry {
        CreditEntry { node, action, model: Some(model), cost, tokens: Some(tokens) }
    }

    /// Video is charged by its job (captured when the job is created), not by the settler.
    pub fn is_synchronous(&self) -> bool {
        self.node != Node::Video
    }
}

/// The sum of the synchronous part of a log: what the settler captures.
pub fn synchronous_cost(log: &[CreditEntry]) -> Amount {
    Amount::sum(log.iter().filter(|entry| entry.is_synchronous()).map(|entry| entry.cost))
}

/// What a turn does besides answering a problem (`POST /v1/solve`'s `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Retry a failed or canceled video job (`retry_source_job_id`), once.
    VideoRetry,
}

impl Action {
    pub const ALL: [Action; 1] = [Action::VideoRetry];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::VideoRetry => "video_retry",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.as_str() == text)
    }
}

/// The router's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    GeneralChat,
    MathTask,
}

impl Route {
    pub const ALL: [Route; 2] = [Route::GeneralChat, Route::MathTask];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::GeneralChat => "general_chat",
            Route::MathTask => "math_task",
        }
    }
}

/// The planner's plan, as the run records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanData {
    /// Normalised: `solve` first, each step once.
    pub steps: Vec<Step>,
    pub difficulty: Difficulty,
    pub explanation_mode: ExplanationMode,
    pub use_page: bool,
    /// The tier the catalog maps the difficulty to.
    pub model: Tier,
}

impl PlanData {
    /// What the estimate and the solver work from.
    pub fn plan(&self) -> Plan {
        Plan { steps: self.steps.clone(), tier: self.model, mode: self.explanation_mode }
    }
}

/// How a run ended when it did not succeed: a code of its `error` event (`From<ErrorCode>`), or
/// `interrupted` (written by crash recovery: its server died, so no event was ever sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunErrorCode {
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

impl RunErrorCode {
    pub const ALL: [RunErrorCode; 9] = [
        RunErrorCode::InternalError,
        RunErrorCode::ToolError,
        RunErrorCode::ModelError,
        RunErrorCode::CreditExhausted,
        RunErrorCode::Timeout,
        RunErrorCode::InvalidInput,
        RunErrorCode::Canceled,
        RunErrorCode::Interrupted,
        RunErrorCode::SandboxUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunErrorCode::InternalError => "internal_error",
            RunErrorCode::ToolError => "tool_error",
            RunErrorCode::ModelError => "model_error",
            RunErrorCode::CreditExhausted => "credit_exhausted",
            RunErrorCode::Timeout => "timeout",
            RunErrorCode::InvalidInput => "invalid_input",
            RunErrorCode::Canceled => "canceled",
            RunErrorCode::Interrupted => "interrupted",
            RunErrorCode::SandboxUnavailable => "sandbox_unavailable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    pub code: RunErrorCode,
    pub message: String,
}

/// The run document stored with each run (`RunRecord::data`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunData {
    pub problem: String,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub retry_source_job_id: Option<JobId>,
    pub catalog_version: String,
    #[serde(default)]
    pub route: Option<Route>,
    #[serde(default)]
    pub plan: Option<PlanData>,
    /// What the hold reserved.
    #[serde(default, with = "amount_text::option")]
    pub reserved: Option<Amount>,
    /// How `reserved` was formed: one line per call already made and per planned step.
    #[serde(default)]
    pub breakdown: Vec<Line>,
    #[serde(default)]
    pub log: Vec<CreditEntry>,
    /// The synchronous cost the settler captured (video excluded: its job was charged).
    #[serde(default, with = "amount_text::option")]
    pub actual: Option<Amount>,
    /// Everything the hold captured (video included).
    #[serde(default, with = "amount_text::option")]
    pub captured: Option<Amount>,
    /// What went back to available at the settle.
    #[serde(default, with = "amount_text::option")]
    pub refunded: Option<Amount>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub explanation: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactId>,
    #[serde(default)]
    pub jobs: Vec<JobId>,
    #[serde(default)]
    pub error: Option<ErrorData>,
    /// True once the hold is captured or released (the hold needs no more care).
    #[serde(default)]
    pub hold_resolved: bool,
}

impl RunData {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("run data always serializes")
    }

    pub fn from_text(text: &str) -> Option<RunData> {
        serde_json::from_str(text).ok()
    }

    /// The run's typed hold column, derived from this document and the run's `hold_id`: what
    /// recovery queries, so it is always written together with the document.
    pub fn hold_resolution(&self, hold_id: Option<&HoldId>) -> HoldResolution {
        match (hold_id, self.hold_resolved) {
            (None, _) => HoldResolution::None,
            (Some(_), false) => HoldResolution::Pending,
            (Some(_), true) => HoldResolution::Resolved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ErrorCode;

    /// A succeeded video turn's document exactly as the engine wrote it before the document was
    /// typed (amounts, names and ids as JSON strings).
    const STORED_BEFORE_TYPES: &str = r#"{"problem":"2+2?","action":null,"retry_source_job_id":null,"catalog_version":"sha256:0123456789abcdef","route":"math_task","plan":{"steps":["solve","video"],"difficulty":"easy","explanation_mode":"full","use_page":true,"model":"flash"},"reserved":"29","breakdown":[{"label":"router","amount":"1","detail":null},{"label":"planner","amount":"1","detail":null},{"label":"solve","amount":"17","detail":"flash/full: 1 × (5 + 1 + 1) + 1 × 5 + 1 × 5"},{"label":"video","amount":"10","detail":null}],"log":[{"node":"router","action":"router","model":"flash","cost":"1"},{"node":"planner","action":"planner","model":"flash","cost":"1"},{"node":"solver","action":"llm_call_verify","model":"flash","cost":"1"},{"node":"solver","action":"code_execute","cost":"1"},{"node":"video","action":"video","cost":"10"}],"actual":"4","captured":"14","refunded":"15","answer":"4","explanation":null,"artifacts":[],"jobs":["job-0190f8a5c1d37b2e9f4a6b8c0d1e2f3a"],"error":null,"hold_resolved":true}"#;

    #[test]
    fn a_document_stored_before_the_types_reads_back_and_writes_the_same_text() {
        let data = RunData::from_text(STORED_BEFORE_TYPES).expect("an old document reads");
        assert_eq!(data.reserved, Some(Amount::from_credits(29)));
        assert_eq!(data.route, Some(Route::MathTask));
        let plan = data.plan.as_ref().expect("a plan");
        assert_eq!(
            plan.plan(),
            Plan { steps: vec![Step::Solve, Step::Video], tier: Tier::Flash, mode: ExplanationMode::Full }
        );
        assert_eq!(data.log[3], CreditEntry::new(Node::Solver, Charge::CodeExecute, None, Amount::from_credits(1)));
        assert_eq!(synchronous_cost(&data.log), Amount::from_credits(4), "video is charged by its job");
        assert_eq!(data.breakdown[2].amount, Amount::from_credits(17));
        // The same document (key order inside a breakdown line aside: `json!` wrote those).
        let value = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("JSON");
        assert_eq!(value(&data.to_text()), value(STORED_BEFORE_TYPES));
    }

    #[test]
    fn a_failed_runs_document_round_trips() {
        let data = RunData {
            problem: "p".to_owned(),
            action: Some(Action::VideoRetry),
            retry_source_job_id: Some(JobId::parse("job-1").expect("valid id")),
            catalog_version: "v".to_owned(),
            error: Some(ErrorData { code: RunErrorCode::Interrupted, message: "m".to_owned() }),
            ..RunData::default()
        };
        let text = data.to_text();
        assert!(text.contains(r#""action":"video_retry""#) && text.contains(r#""code":"interrupted""#), "{text}");
        let hold_id = HoldId::parse("hold-1").expect("valid id");
        assert_eq!(data.hold_resolution(Some(&hold_id)), HoldResolution::Pending, "recovery finds it");
        assert_eq!(data.hold_resolution(None), HoldResolution::None, "nothing was held");
        let resolved = RunData { hold_resolved: true, ..data.clone() };
        assert_eq!(resolved.hold_resolution(Some(&hold_id)), HoldResolution::Resolved);
        assert_eq!(RunData::from_text(&text), Some(data));
    }

    #[test]
    fn names_and_codes_are_their_stored_text() {
        for code in ErrorCode::ALL {
            assert_eq!(RunErrorCode::from(code).as_str(), code.as_str());
            let text = serde_json::to_string(&RunErrorCode::from(code)).expect("serializes");
            assert_eq!(text, format!("\"{}\"", code.as_str()));
        }
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        for route in Route::ALL {
            assert_eq!(serde_json::to_string(&route).expect("serializes"), format!("\"{}\"", route.as_str()));
        }
        for code in RunErrorCode::ALL {
            assert_eq!(serde_json::to_string(&code).expect("serializes"), format!("\"{}\"", code.as_str()));
        }
        assert_eq!(Action::parse("video"), None);
        for node in Node::ALL {
            assert_eq!(serde_json::to_string(&node).expect("serializes"), format!("\"{}\"", node.as_str()));
        }
        for charge in Charge::ALL {
            assert_eq!(serde_json::to_string(&charge).expect("serializes"), format!("\"{}\"", charge.as_str()));
        }
    }
}
