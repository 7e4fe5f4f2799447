//! The solver step and its budget guard.
//!
//! The model runs in a loop with two tools, `code_generate` and `code_execute`. The guard
//! enforces exactly the limits the estimate assumes — at most `max_iterations` model calls, as
//! many generates and as many executes, one summary call when the limit is hit, one explain call
//! in `full` mode — so the real cost can never exceed the worst case that was held. A tool call
//! beyond its limit (or malformed) is answered to the model as a tool error: not run, not charged.

use serde_json::{json, Value};

use super::data::{Charge, CreditEntry, Node, Tokens};
use super::stream::{self, Coalesce};
use crate::events::{ErrorCode, Event, Shortfall, SolvePhase, SolveProgress, ToolResult, ToolStart};
use crate::provider::{ChatRequest, JsonSchemaFormat, Message, Provider, Purpose, ToolCall, ToolSpec};
use crate::sandbox::{CodeExecutor, ExecErrorKind, ExecStatus};
use pricing::catalog::{Action, Catalog};
use pricing::ExplanationMode;
use pricing::Tier;

/// Longest tool result handed back to the model.
const TOOL_RESULT_BYTES_MAX: usize = 8 * 1024;
/// Longest tool output a `tool_result` event shows.
const TOOL_OUTPUT_EVENT_BYTES_MAX: usize = 2048;

/// A step that failed: the turn ends with one `error` event with this code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    pub code: ErrorCode,
    pub message: String,
    /// For `credit_exhausted`: what the turn needed and what was available.
    pub shortfall: Option<Shortfall>,
}

impl StepFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> StepFailure {
        StepFailure { code, message: message.into(), shortfall: None }
    }
}

/// Which text a piece of streamed text belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The answer: every text the solver writes, and the limit summary.
    Answer,
    /// The explanation (`full` mode).
    Explanation,
}

/// Where the solver reports: metered calls and stream events.
pub trait SolverSink: Send + Sync {
    fn meter(&self, entry: CreditEntry);
    fn emit(&self, event: Event);
    /// A piece of `section`'s text as the model writes it; `is_final` on its last piece.
    fn text(&self, section: Section, delta: String, is_final: bool);
}

pub struct SolverSetup<'a> {
    pub provider: &'a dyn Provider,
    pub executor: &'a dyn CodeExecutor,
    pub catalog: &'a Catalog,
    pub tier: Tier,
    pub mode: ExplanationMode,
    pub problem: &'a str,
    pub tool_calls_per_message_max: usize,
    /// How streamed text gathers into `token` frames.
    pub coalesce: Coalesce,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Solution {
    pub answer: String,
    pub explanation: Option<String>,
}

/// Calls made so far, against the catalog's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub model_calls: u32,
    pub generates: u32,
    pub executes: u32,
}

fn system(purpose: Purpose, text: &str) -> Message {
    Message::system(format!("{} {text}", purpose.tag()))
}

pub fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "code_generate".to_owned(),
            description: "Write Python code for a task; returns the code.".to_owned(),
            parameters: json!({"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"], "additionalProperties": false}),
        },
        ToolSpec {
            name: "code_execute".to_owned(),
            description: "Run Python code in a sandbox; returns its output.".to_owned(),
            parameters: json!({"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"], "additionalProperties": false}),
        },
    ]
}

fn model_error(what: &str, error: impl std::fmt::Display) -> StepFailure {
    StepFailure::new(ErrorCode::ModelError, format!("{what}: {error}"))
}

/// The first fenced code block of a reply, or the whole reply when there is none.
pub fn first_code_block(text: &str) -> String {
    let Some(start) = text.find("```") else { return text.trim().to_owned() };
    let after_fence = &text[start + 3..];
    let body_start = after_fence.find('\n').map_or(after_fence.len(), |index| index + 1);
    let body = &after_fence[body_start..];
    match body.find("```") {
        Some(end) => body[..end].trim_end().to_owned(),
        None => body.trim_end().to_owned(),
    }
}

fn truncate(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_owned();
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated]", &text[..end])
}

fn string_argument(call: &ToolCall, name: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(&call.arguments).map_err(|_| "arguments are not a JSON object".to_owned())?;
    match value.get(name).and_then(Value::as_str) {
        Some(text) if !text.trim().is_empty() => Ok(text.to_owned()),
        _ => Err(format!("argument `{name}` must be a non-empty string")),
    }
}

/// Runs one tool call within the budget. Returns (result text, success).
async fn run_tool(
    setup: &SolverSetup<'_>,
    sink: &dyn SolverSink,
    budget: &mut Budget,
    call: &ToolCall,
) -> Result<(String, bool), StepFailure> {
    let limits = setup.catalog.limits();
    match call.name.as_str() {
        "code_generate" => {
            let task = match string_argument(call, "task") {
                Ok(task) => task,
                Err(problem) => return Ok((format!("tool error: {problem}"), false)),
            };
            if budget.generates >= limits.max_iterations {
                return Ok(("tool error: the code_generate limit of this step is reached".to_owned(), false));
            }
            budget.generates += 1;
            let request = ChatRequest {
                purpose: Purpose::CodeGenerate,
                tier: Tier::Flash,
                messages: vec![
                    system(
                        Purpose::CodeGenerate,
                        "Write Python 3 code for the task. Answer with one fenced code block.",
                    ),
                    Message::user(task),
                ],
                tools: Vec::new(),
                response_format: None,
            };
            // Code for a tool, not text the user reads: not streamed.
            let reply = setup.provider.complete(request).await.map_err(|error| model_error("code_generate", error))?;
            sink.meter(CreditEntry::model_call(
                Node::Solver,
                Charge::CodeGenerate,
                Tier::Flash,
                setup.catalog.action(Action::CodeGenerate),
                Tokens::of(reply.usage),
            ));
            Ok((first_code_block(reply.content.as_deref().unwrap_or("")), true))
        }
        "code_execute" => {
            let code = match string_argument(call, "code") {
                Ok(code) => code,
                Err(problem) => return Ok((format!("tool error: {problem}"), false)),
            };
            if budget.executes >= limits.max_iterations {
                return Ok(("tool error: the code_execute limit of this step is reached".to_owned(), false));
            }
            match setup.executor.execute(&code).await {
                Ok(output) => {
                    budget.executes += 1;
                    sink.meter(CreditEntry::new(
                        Node::Solver,
                        Charge::CodeExecute,
                        None,
                        setup.catalog.action(Action::CodeExecute),
                    ));
                    let status = match output.status {
                        ExecStatus::Succeeded => "exit 0".to_owned(),
                        ExecStatus::Failed { exit_code, signal } => {
                            format!("failed (exit {exit_code:?}, signal {signal:?})")
                        }
                        ExecStatus::TimedOut => "timed out".to_owned(),
                    };
                    let success = output.status == ExecStatus::Succeeded;
                    let text = format!("{status}\nstdout:\n{}\nstderr:\n{}", output.stdout, output.stderr);
                    Ok((truncate(&text, TOOL_RESULT_BYTES_MAX), success))
                }
                // The code never ran: not charged, not counted.
                Err(error) => match error.kind {
                    ExecErrorKind::Failed => Ok((format!("tool error: {error}"), false)),
                    // Never run it another way: the step fails, and with it the turn (its hold
                    // released like after any failed step).
                    ExecErrorKind::Unavailable => {
                        Err(StepFailure::new(ErrorCode::SandboxUnavailable, format!("code_execute: {error}")))
                    }
                },
            }
        }
        other => Ok((format!("tool error: unknown tool `{}`", truncate(other, 64)), false)),
    }
}

/// One streamed call whose text is `section`'s: pieces go to the sink as they arrive (never
/// final: the caller ends the section). Returns the reply and the text that gathered after the
/// last piece.
async fn streamed(
    setup: &SolverSetup<'_>,
    sink: &dyn SolverSink,
    request: ChatRequest,
    section: Section,
) -> (Result<crate::provider::ChatResponse, crate::provider::ProviderError>, String) {
    let emit = |piece: String| sink.text(section, piece, false);
    let streamed = stream::call(setup.provider, request, setup.coalesce, &emit).await;
    (streamed.reply, streamed.rest)
}

/// A streamed call without tools at the solver's tier: the limit summary or the explanation.
struct TextCall {
    purpose: Purpose,
    charge: Charge,
    phase: SolvePhase,
}

/// Runs `call` streaming its text as `section`, meters it and reports its phase; returns its
/// text and what gathered after the last piece sent.
async fn text_call(
    setup: &SolverSetup<'_>,
    sink: &dyn SolverSink,
    call: &TextCall,
    messages: Vec<Message>,
    section: Section,
    iteration: u32,
) -> Result<(String, String), StepFailure> {
    let request =
        ChatRequest { purpose: call.purpose, tier: setup.tier, messages, tools: Vec::new(), response_format: None };
    let (reply, gathered) = streamed(setup, sink, request, section).await;
    let reply = reply.map_err(|error| model_error(&call.purpose.as_str().replace('_', " "), error))?;
    let price = setup.catalog.model_call(setup.tier);
    sink.meter(CreditEntry::model_call(Node::Solver, call.charge, setup.tier, price, Tokens::of(reply.usage)));
    sink.emit(Event::SolveProgress(SolveProgress { text: String::new(), iteration, phase: call.phase }));
    Ok((reply.content.unwrap_or_default(), gathered))
}

/// Solves the problem within the catalog's limits.
///
/// Every call whose text the user reads streams: the solver's calls and the limit summary (the
/// answer), the explanation. The solver's calls stream although they may end in tool calls:
/// whether a reply is the answer is known only at its end, and OpenAI-compatible models send a
/// tool-call reply without text. When one does write text before its tool calls, that text was
/// shown, so it is part of the answer: the answer stored is exactly what the stream carried.
pub async fn solve(setup: &SolverSetup<'_>, sink: &dyn SolverSink) -> Result<(Solution, Budget), StepFailure> {
    let limits = setup.catalog.limits().clone();
    let model_price = setup.catalog.model_call(setup.tier);
    let mut messages = vec![
        system(Purpose::Solver, "Solve the problem. Use code_generate and code_execute to check your work; answer without tool calls when done."),
        Message::user(setup.problem),
    ];
    let mut budget = Budget::default();
    let mut answer = String::new();
    let mut answered = false;
    // Text gathered after the last piece sent: it goes out with the next piece or as the final one.
    let mut rest = String::new();
    while budget.model_calls < limits.max_iterations {
        let request = ChatRequest {
            purpose: Purpose::Solver,
            tier: setup.tier,
            messages: messages.clone(),
            tools: tools(),
            response_format: None,
        };
        let (reply, gathered) = streamed(setup, sink, request, Section::Answer).await;
        let reply = reply.map_err(|error| model_error("solver", error))?;
        budget.model_calls += 1;
        sink.meter(CreditEntry::model_call(
            Node::Solver,
            Charge::LlmCallVerify,
            setup.tier,
            model_price,
            Tokens::of(reply.usage),
        ));
        sink.emit(Event::SolveProgress(SolveProgress {
            text: reply.content.clone().unwrap_or_default(),
            iteration: budget.model_calls,
            phase: SolvePhase::Verify,
        }));
        answer.push_str(reply.content.as_deref().unwrap_or(""));
        rest.push_str(&gathered);
        if reply.tool_calls.is_empty() {
            answered = true;
            break;
        }
        if !rest.is_empty() {
            sink.text(Section::Answer, std::mem::take(&mut rest), false);
        }
        messages.push(Message::assistant(reply.content.clone(), reply.tool_calls.clone()));
        for (index, call) in reply.tool_calls.iter().enumerate() {
            sink.emit(Event::ToolStart(ToolStart { name: call.name.clone(), tool_call_id: call.id.clone() }));
            let (output, success) = if index >= setup.tool_calls_per_message_max {
                ("tool error: too many tool calls in one message".to_owned(), false)
            } else {
                run_tool(setup, sink, &mut budget, call).await?
            };
            sink.emit(Event::ToolResult(ToolResult {
                name: call.name.clone(),
                tool_call_id: call.id.clone(),
                output: truncate(&output, TOOL_OUTPUT_EVENT_BYTES_MAX),
                success,
            }));
            messages.push(Message::tool(call.id.clone(), output));
        }
    }
    if !answered {
        // The limit was hit without a final answer: one summary call, the rest of the answer.
        messages.push(Message::user("The step limit is reached. Give your best final answer now, without tools."));
        messages[0] = system(Purpose::LimitSummary, "Summarise the work so far into a final answer.");
        let call =
            TextCall { purpose: Purpose::LimitSummary, charge: Charge::LlmCallSummary, phase: SolvePhase::Summary };
        let (text, gathered) =
            text_call(setup, sink, &call, messages.clone(), Section::Answer, budget.model_calls).await?;
        answer.push_str(&text);
        rest.push_str(&gathered);
    }
    sink.text(Section::Answer, rest, true);
    let explanation = if setup.mode == ExplanationMode::Full && limits.explain_calls > 0 {
        let messages = vec![
            system(Purpose::Explain, "Explain the solution step by step for a student."),
            Message::user(format!("Problem:\n{}\n\nSolution:\n{answer}", setup.problem)),
        ];
        let call = TextCall { purpose: Purpose::Explain, charge: Charge::LlmCallExplain, phase: SolvePhase::Explain };
        let (text, gathered) =
            text_call(setup, sink, &call, messages, Section::Explanation, budget.model_calls).await?;
        sink.text(Section::Explanation, gathered, true);
        Some(text)
    } else {
        None
    };
    Ok((Solution { answer, explanation }, budget))
}

/// The JSON schema of the router's structured output.
pub fn route_format() -> JsonSchemaFormat {
    JsonSchemaFormat {
        name: "route".to_owned(),
        schema: json!({"type": "object", "properties": {"route": {"type": "string", "enum": ["general_chat", "math_task"]}}, "required": ["route"], "additionalProperties": false}),
    }
}

/// The JSON schema of the planner's structured output.
pub fn plan_format() -> JsonSchemaFormat {
    JsonSchemaFormat {
        name: "plan".to_owned(),
        schema: json!({
            "type": "object",
            "properties": {
                "steps": {"type": "array", "items": {"type": "string", "enum": ["solve", "pdf", "video"]}},
                "difficulty": {"type": "string", "enum": ["easy", "medium", "hard"]},
                "explanation_mode": {"type": "string", "enum": ["full", "brief"]},
                "use_page": {"type": "boolean"}
            },
            "required": ["steps", "difficulty", "explanation_mode", "use_page"],
            "additionalProperties": false
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_blocks_are_extracted() {
        assert_eq!(first_code_block("Here:\n```python\nprint(1)\n```\nok"), "print(1)");
        assert_eq!(first_code_block("```\nx = 2\n"), "x = 2");
        assert_eq!(first_code_block("  print(3)  "), "print(3)");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("가나다", 4), "가… [truncated]");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
