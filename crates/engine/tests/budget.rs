//! The budget guard: whatever the model does — any number of tool calls per message, malformed
//! arguments, unknown tools, early answers, errors — the solver's metered cost never exceeds
//! the worst case the estimate holds, and no counter passes its catalog limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use engine::events::Event;
use engine::provider::{ChatRequest, ChatResponse, Provider, ProviderError, Purpose, ToolCall};
use engine::run::data::CreditEntry;
use engine::run::solver::{solve, SolverSetup, SolverSink};
use engine::sandbox::{CodeExecutor, ExecError, ExecOutput, ExecStatus};
use ledger::Amount;
use pricing::catalog::Catalog;
use pricing::estimate::solve_worst_case;
use pricing::ExplanationMode;
use pricing::Tier;
use proptest::prelude::*;

/// What the scripted model does on one solver call.
#[derive(Clone, Debug)]
enum Move {
    Answer,
    Tools(Vec<u8>),
    Fail,
}

/// An in-process model that plays a fixed list of moves, then answers.
struct ScriptedModel {
    moves: Vec<Move>,
    next: AtomicUsize,
}

#[async_trait]
impl Provider for ScriptedModel {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        if request.purpose != Purpose::Solver {
            return Ok(ChatResponse {
                content: Some("```python\nprint(1)\n```".to_owned()),
                tool_calls: Vec::new(),
                usage: None,
            });
        }
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        match self.moves.get(index).cloned().unwrap_or(Move::Answer) {
            Move::Answer => Ok(ChatResponse { content: Some("42".to_owned()), tool_calls: Vec::new(), usage: None }),
            Move::Fail => Err(ProviderError::Status { status: 500 }),
            Move::Tools(kinds) => {
                let tool_calls = kinds
                    .iter()
                    .enumerate()
                    .map(|(position, kind)| {
                        let (name, arguments) = match kind % 5 {
                            0 => ("code_generate", r#"{"task": "add"}"#),
                            1 => ("code_execute", r#"{"code": "print(2)"}"#),
                            2 => ("code_execute", "{not json"),
                            3 => ("web_search", r#"{"q": "x"}"#),
                            _ => ("code_generate", r#"{"task": ""}"#),
                        };
                        ToolCall {
                            id: format!("call-{index}-{position}"),
                            name: name.to_owned(),
                            arguments: arguments.to_owned(),
                        }
                    })
                    .collect();
                Ok(ChatResponse { content: None, tool_calls, usage: None })
            }
        }
    }
}

struct InstantPython;

#[async_trait]
impl CodeExecutor for InstantPython {
    async fn execute(&self, _code: &str) -> Result<ExecOutput, ExecError> {
        Ok(ExecOutput {
            status: ExecStatus::Succeeded,
            stdout: "2\n".to_owned(),
            stderr: String::new(),
            truncated: false,
        })
    }
}

#[derive(Default)]
struct Meter {
    log: Mutex<Vec<CreditEntry>>,
}

impl SolverSink for Meter {
    fn meter(&self, entry: CreditEntry) {
        self.log.lock().unwrap().push(entry);
    }

    fn emit(&self, _event: Event) {}
}

fn move_strategy() -> impl Strategy<Value = Move> {
    prop_oneof![
        1 => Just(Move::Answer),
        6 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(Move::Tools),
        1 => Just(Move::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn real_cost_never_exceeds_the_hold(
        moves in proptest::collection::vec(move_strategy(), 0..12),
        tier in prop_oneof![Just(Tier::Flash), Just(Tier::Sonnet), Just(Tier::Opus)],
        full in any::<bool>(),
    ) {
        let catalog = Catalog::builtin();
        let mode = if full { ExplanationMode::Full } else { ExplanationMode::Brief };
        let provider = ScriptedModel { moves, next: AtomicUsize::new(0) };
        let meter = Arc::new(Meter::default());
        let setup = SolverSetup {
            provider: &provider,
            executor: &InstantPython,
            catalog: &catalog,
            tier,
            mode,
            problem: "1 + 1",
            tool_calls_per_message_max: 8,
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(solve(&setup, meter.as_ref()));
        let spent = Amount::sum(meter.log.lock().unwrap().iter().map(|entry| entry.cost));
        let worst = solve_worst_case(&catalog, tier, mode);
        prop_assert!(spent <= worst, "spent {spent} > worst case {worst}");
        if let Ok((_, budget)) = outcome {
            let limit = catalog.limits().max_iterations;
            prop_assert!(budget.model_calls <= limit && budget.generates <= limit && budget.executes <= limit);
        }
    }
}

/// A model that asks for every tool every time reaches exactly the worst case.
#[tokio::test]
async fn a_greedy_model_reaches_exactly_the_worst_case() {
    let catalog = Catalog::builtin();
    let provider = ScriptedModel { moves: vec![Move::Tools(vec![0, 1, 0, 1]); 10], next: AtomicUsize::new(0) };
    let meter = Meter::default();
    let setup = SolverSetup {
        provider: &provider,
        executor: &InstantPython,
        catalog: &catalog,
        tier: Tier::Flash,
        mode: ExplanationMode::Full,
        problem: "p",
        tool_calls_per_message_max: 8,
    };
    let (_, budget) = solve(&setup, &meter).await.expect("the solver ends");
    let spent = Amount::sum(meter.log.lock().unwrap().iter().map(|entry| entry.cost));
    assert_eq!(spent, solve_worst_case(&catalog, Tier::Flash, ExplanationMode::Full));
    assert_eq!(spent, Amount::from_credits(17));
    assert_eq!((budget.model_calls, budget.generates, budget.executes), (5, 5, 5));
}
