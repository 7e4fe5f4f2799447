//! One turn of a thread, from the stale-hold release to the settler.
//!
//! Order (the hold is taken before any paid step a plan adds; only the router and planner run
//! before it, after a check that the account can pay for them):
//! 1. release a pending hold left by an earlier turn of the thread;
//! 2. preflight (`video_retry`), fail closed;
//! 3. router → general chat (hold router + answer, answer, settle) or math task;
//! 4. planner → estimate → hold (all or nothing) → `credit_reserved`;
//! 5. solve, then pdf and video concurrently;
//! 6. settler: capture the synchronous cost with `final`, the rest goes back.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ledger::{AccountId, Amount, Command, Hold, HoldId, HoldState, Reference, Rejection};
use serde_json::{json, Value};
use store::{Artifact, ArtifactId, JobId, RunId, RunRecord, RunSettle, RunState, SettledHold, StoreError, ThreadId};
use tokio_util::sync::CancellationToken;

use super::credits::{self, Credits, Released};
use super::data::{synchronous_cost, Charge, CreditEntry, ErrorData, Node, PlanData, Route, RunData, Tokens};
use super::solver::{self, Section, Solution, SolverSetup, SolverSink, StepFailure};
use super::stream;
use super::Engine;
use crate::events::{
    Attachment, CreditReserved, CreditSettled, ErrorCode, Event, EventChannel, NodeResult, PageStart, RunError,
    Shortfall, Token,
};
use crate::provider::{ChatRequest, Message, Purpose};
use jobs::{JobError, NewJob};
use pricing::estimate;
use pricing::{Action, Catalog, Difficulty, ExplanationMode, Line, Plan, Step, Tier};

/// Earlier turns of a thread looked at for a stale hold.
const EARLIER_TURNS_MAX: u32 = 1000;

pub(crate) struct Turn {
    engine: Arc<Engine>,
    catalog: Arc<Catalog>,
    channel: Arc<EventChannel>,
    credits: Credits,
    /// Who the turn is: fixed for its whole life, so read without the lock.
    run_id: RunId,
    thread_id: ThreadId,
    account_id: AccountId,
    /// Everything that changes during the turn, behind one lock (never held across an await).
    /// Shared with the task that takes the hold, which finishes even if the turn is aborted.
    state: Arc<Mutex<TurnState>>,
    /// When the turn began, for the turn-latency histogram.
    started: Instant,
}

/// Turns ended, by `state` (succeeded, failed, canceled, interrupted).
pub const RUNS_ENDED: &str = "creditgraph_runs_ended_total";
/// A turn's time from its start to its end, by `state`.
pub const TURN_SECONDS: &str = "creditgraph_turn_seconds";

/// The changing part of a turn: its record and document, its hold and the flags around it.
struct TurnState {
    record: RunRecord,
    data: RunData,
    /// The hold once taken, as last known (the settler's capture and the extender's extensions
    /// replace it).
    hold: Option<Hold>,
    /// While a hold is being taken: cancelled when the taking task ends (its drop guard, so a
    /// panic counts). The failure path waits for it, so a hold that commits while its turn is
    /// being canceled is always seen, and released.
    hold_taking: Option<CancellationToken>,
    /// Set when the settler starts: from then on a cancel waits for it instead of interrupting.
    committed: bool,
    /// Extensions of the hold applied so far: the `n` of the next key `<run_id>:extend:<n>`.
    extensions: u32,
    /// Set by the settler when the settle is to be written with the run's end
    /// ([`Turn::finish_success`]).
    settle_with_end: bool,
}

/// The lock sections only copy and assign, so none can panic; a poisoned lock is a bug, and the
/// turn stops there rather than settle from half-written state.
fn lock(state: &Mutex<TurnState>) -> MutexGuard<'_, TurnState> {
    state.lock().expect("turn state lock poisoned")
}

fn store_failure(error: &StoreError) -> StepFailure {
    tracing::error!(%error, "store error during a run");
    StepFailure::new(ErrorCode::InternalError, "the ledger is unavailable")
}

fn credit_exhausted(required: Amount, available: Amount) -> StepFailure {
    StepFailure {
        code: ErrorCode::CreditExhausted,
        message: format!("Not enough credits: this turn needs {required} cr, {available} cr available."),
        shortfall: Some(Shortfall { required, available }),
    }
}

impl SolverSink for Turn {
    fn meter(&self, entry: CreditEntry) {
        self.state().data.log.push(entry);
    }

    fn emit(&self, event: Event) {
        self.channel.emit(Some(0), Some("solve"), event);
    }

    fn text(&self, section: Section, delta: String, is_final: bool) {
        let node = match section {
            Section::Answer => "solve",
            Section::Explanation => "explain",
        };
        self.channel.emit(Some(0), Some(node), Event::Token(Token::text(delta, is_final)));
    }
}

impl Turn {
    pub(crate) fn new(
        engine: Arc<Engine>,
        record: RunRecord,
        data: RunData,
        catalog: Arc<Catalog>,
        channel: Arc<EventChannel>,
    ) -> Turn {
        let credits = Credits {
            store: engine.ledger.clone(),
            retries_max: engine.config.ledger_retries_max,
            backoff_ms: engine.config.ledger_backoff_ms,
        };
        let state = TurnState {
            record,
            data,
            hold: None,
            hold_taking: None,
            committed: false,
            extensions: 0,
            settle_with_end: false,
        };
        Turn {
            engine,
            catalog,
            channel,
            credits,
            run_id: state.record.run_id.clone(),
            thread_id: state.record.thread_id.clone(),
            account_id: state.record.account_id.clone(),
            state: Arc::new(Mutex::new(state)),
            started: Instant::now(),
        }
    }

    fn state(&self) -> MutexGuard<'_, TurnState> {
        lock(&self.state)
    }

    /// `node_result` for a step that just ended.
    fn node_result(&self, step_idx: usize, node: &'static str, started: Instant, failure: Option<&StepFailure>) {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let result = NodeResult { error_code: failure.map(|failure| failure.code), duration_ms };
        self.channel.emit(Some(step_idx), Some(node), Event::NodeResult(result));
    }

    pub(crate) fn run_id(&self) -> &RunId {
        &self.run_id
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.run_id)
    }

    /// The turn's hold while it is pending.
    pub(crate) fn pending_hold(&self) -> Option<Hold> {
        self.state().hold.clone().filter(|hold| hold.state == ledger::HoldState::Pending)
    }

    /// Extends the pending hold by `ttl_seconds` from now. True when it was extended; a hold
    /// that is no longer pending (settled or released meanwhile) is left alone.
    pub(crate) async fn extend_hold(&self, ttl_seconds: u64) -> Result<bool, StoreError> {
        let (hold, n) = {
            let state = self.state();
            (state.hold.clone().filter(|hold| hold.state == ledger::HoldState::Pending), state.extensions)
        };
        let Some(hold) = hold else { return Ok(false) };
        let key = self.key(&format!("extend:{n}"));
        match self.credits.extend(&key, &hold.hold_id, ttl_seconds).await? {
            Ok(extended) => {
                let mut state = self.state();
                state.extensions += 1;
                // The settler may have resolved the hold meanwhile: its state wins.
                if state.hold.as_ref().is_some_and(|hold| hold.state == ledger::HoldState::Pending) {
                    state.hold = Some(extended);
                }
                Ok(true)
            }
            Err(rejection) => {
                tracing::info!(hold_id = %hold.hold_id, %rejection, "hold not extended");
                Ok(false)
            }
        }
    }

    pub(crate) fn is_committed(&self) -> bool {
        self.state().committed
    }

    /// Meters a call of a priced catalog action that is not a model call.
    fn meter_action(&self, node: Node, charge: Charge, action: Action) {
        self.meter(CreditEntry::new(node, charge, None, self.catalog.action(action)));
    }

    /// Meters a model call of a priced catalog action, with the tokens its provider reported.
    fn meter_model_call(&self, node: Node, charge: Charge, action: Action, tier: Tier, tokens: Tokens) {
        self.meter(CreditEntry::model_call(node, charge, tier, self.catalog.action(action), tokens));
    }

    fn spent(&self) -> Amount {
        synchronous_cost(&self.state().data.log)
    }

    /// The run record with the current data, in `state`, as of now.
    fn record_now(&self, state: RunState) -> RunRecord {
        let now = self.engine.now();
        let mut guard = self.state();
        let turn = &mut *guard;
        turn.record.state = state;
        turn.record.updated_at = now;
        turn.record.hold_id = turn.hold.as_ref().map(|hold| hold.hold_id.clone());
        turn.record.data = turn.data.to_text();
        turn.record.hold_resolution = turn.data.hold_resolution(turn.record.hold_id.as_ref());
        turn.record.clone()
    }

    /// Writes the run record with the current data (best effort mid-run; logged on failure).
    async fn persist(&self, state: RunState) -> Result<(), StoreError> {
        let record = self.record_now(state);
        self.engine.runs.update_run(&record).await.map(|_| ())
    }

    /// Ends the stream with `event` (`done` or `error`): the frame is stored together with the
    /// run's terminal record, and only then published here, so on every instance a reader that
    /// sees the final frame finds the run ended, and one that sees the run ended finds its final
    /// frame.
    async fn finish(&self, state: RunState, event: Event) {
        let record = self.record_now(state);
        let Some(frame) = self.channel.seal(event) else {
            unreachable!("only the supervisor ends a turn, once");
        };
        self.engine.write_final(record, &self.channel, &frame).await;
        self.channel.publish_final(frame);
        metrics::counter!(RUNS_ENDED, "state" => state.as_str()).increment(1);
        metrics::histogram!(TURN_SECONDS, "state" => state.as_str()).record(self.started.elapsed().as_secs_f64());
    }

    /// The whole turn. Returns when the settler has run, or with the failure that ends the turn.
    pub(crate) async fn execute(self: Arc<Self>) -> Result<(), StepFailure> {
        self.release_stale_holds().await?;
        if self.preflight().await? {
            return self.retry_turn().await;
        }
        let problem = self.state().data.problem.clone();
        // The router and planner run before the hold; refuse at once when the account cannot
        // even pay for them, so a broke account costs no LLM call.
        let routing_price = Amount::sum(estimate::routing_lines(&self.catalog).iter().map(|line| line.amount));
        let available =
            match self.engine.ledger.account(&self.account_id).await.map_err(|error| store_failure(&error))? {
                Some(view) => view.balances.available,
                None => Amount::ZERO,
            };
        if available < routing_price {
            return Err(credit_exhausted(routing_price, available));
        }
        let general = self.route(&problem).await?;
        if general {
            return self.general_chat(&problem).await;
        }
        let plan = self.plan(&problem).await?;
        self.reserve(&plan).await?;
        let solution = self.solve_step(&plan, &problem).await?;
        self.after_solve_steps(&plan, &problem, &solution).await?;
        self.settle().await
    }

    async fn release_stale_holds(&self) -> Result<(), StepFailure> {
        let earlier = self
            .engine
            .runs
            .thread_runs(&self.thread_id, None, EARLIER_TURNS_MAX)
            .await
            .map_err(|error| store_failure(&error))?;
        for run in earlier.iter().filter(|run| run.run_id != self.run_id && run.state.is_terminal()) {
            let Some(hold_id) = &run.hold_id else { continue };
            let resolved = RunData::from_text(&run.data).is_some_and(|data| data.hold_resolved);
            if resolved {
                continue;
            }
            let key = format!("{}:release", run.run_id);
            match self.credits.release(&key, hold_id).await {
                Ok(Released::Now) => tracing::info!(hold_id = %hold_id, "released the stale hold of an earlier turn"),
                Ok(Released::AlreadyDone(how)) => {
                    tracing::info!(hold_id = %hold_id, how, "earlier turn's hold needs no release")
                }
                Err(error) => {
                    tracing::error!(hold_id = %hold_id, %error, "could not release an earlier turn's hold");
                    return Err(StepFailure::new(
                        ErrorCode::InternalError,
                        "an earlier turn's hold could not be released",
                    ));
                }
            }
        }
        Ok(())
    }

    /// For a `video_retry` turn, checks the retry before any hold or paid call. Fails closed: no
    /// job system, a store that cannot answer, or any broken rule rejects the turn.
    async fn preflight(&self) -> Result<bool, StepFailure> {
        let (action, source) = {
            let state = self.state();
            (state.data.action, state.data.retry_source_job_id.clone())
        };
        if action != Some(super::data::Action::VideoRetry) {
            return Ok(false);
        }
        let refuse = |message: &str| {
            StepFailure::new(ErrorCode::InvalidInput, format!("This video cannot be retried: {message}"))
        };
        let Some(source) = source else { return Err(refuse("retry_source_job_id is missing")) };
        let Some(jobs) = self.engine.jobs.clone() else { return Err(refuse("video jobs are not available")) };
        match jobs.check_retry(&self.account_id, &self.thread_id, &source).await {
            Ok(_) => Ok(true),
            Err(JobError::RetryAlreadyUsed) => Err(refuse("it was already retried once")),
            Err(error) => Err(refuse(&error.to_string())),
        }
    }

    async fn call(
        &self,
        purpose: Purpose,
        tier: Tier,
        messages: Vec<Message>,
        format: Option<crate::provider::JsonSchemaFormat>,
    ) -> Result<(String, Tokens), StepFailure> {
        let request = ChatRequest { purpose, tier, messages, tools: Vec::new(), response_format: format };
        let reply = self
            .engine
            .provider
            .complete(request)
            .await
            .map_err(|error| StepFailure::new(ErrorCode::ModelError, format!("{}: {error}", purpose.as_str())))?;
        Ok((reply.content.unwrap_or_default(), Tokens::of(reply.usage)))
    }

    /// Returns true for a general-chat turn.
    async fn route(&self, problem: &str) -> Result<bool, StepFailure> {
        let messages = vec![
            Message::system(format!("{} Classify the message: general_chat or math_task.", Purpose::Router.tag())),
            Message::user(problem),
        ];
        let (content, tokens) = self.call(Purpose::Router, Tier::Flash, messages, Some(solver::route_format())).await?;
        self.meter_model_call(Node::Router, Charge::Router, Action::Router, Tier::Flash, tokens);
        let parsed: Value = serde_json::from_str(&content)
            .map_err(|_| StepFailure::new(ErrorCode::ModelError, "router: the answer is not JSON"))?;
        let route = match parsed.get("route").and_then(Value::as_str) {
            Some("general_chat") => Route::GeneralChat,
            Some("math_task") => Route::MathTask,
            _ => return Err(StepFailure::new(ErrorCode::ModelError, "router: unknown route")),
        };
        self.state().data.route = Some(route);
        Ok(route == Route::GeneralChat)
    }

    async fn general_chat(&self, problem: &str) -> Result<(), StepFailure> {
        let chat_price = self.catalog.action(Action::GeneralChat);
        let spent = self.spent();
        let mut lines = estimate::routing_lines(&self.catalog);
        lines.retain(|line| line.label == "router");
        lines.push(Line { label: "general_chat".to_owned(), amount: chat_price, detail: None });
        self.take_hold(spent.plus(chat_price), &lines).await?;
        let messages = vec![
            Message::system(format!("{} You are a helpful tutor.", Purpose::GeneralChat.tag())),
            Message::user(problem),
        ];
        // The answer streams as the model writes it.
        let request = ChatRequest {
            purpose: Purpose::GeneralChat,
            tier: Tier::Flash,
            messages,
            tools: Vec::new(),
            response_format: None,
        };
        let emit = |piece: String| {
            self.channel.emit(None, Some("general"), Event::Token(Token::text(piece, false)));
        };
        let streamed = stream::call(self.engine.provider.as_ref(), request, self.engine.config.coalesce, &emit).await;
        let reply = streamed
            .reply
            .map_err(|error| StepFailure::new(ErrorCode::ModelError, format!("general_chat: {error}")))?;
        self.meter_model_call(
            Node::General,
            Charge::GeneralChat,
            Action::GeneralChat,
            Tier::Flash,
            Tokens::of(reply.usage),
        );
        self.channel.emit(None, Some("general"), Event::Token(Token::text(streamed.rest, true)));
        self.state().data.answer = Some(reply.content.unwrap_or_default());
        self.settle().await
    }

    async fn plan(&self, problem: &str) -> Result<PlanData, StepFailure> {
        let messages = vec![
            Message::system(format!(
                "{} Plan the steps (solve, pdf, video), the difficulty and the explanation mode.",
                Purpose::Planner.tag()
            )),
            Message::user(problem),
        ];
        let (content, tokens) = self.call(Purpose::Planner, Tier::Flash, messages, Some(solver::plan_format())).await?;
        self.meter_model_call(Node::Planner, Charge::Planner, Action::Planner, Tier::Flash, tokens);
        let bad = |what: &str| StepFailure::new(ErrorCode::ModelError, format!("planner: {what}"));
        let parsed: Value = serde_json::from_str(&content).map_err(|_| bad("the plan is not JSON"))?;
        let raw_steps = parsed.get("steps").and_then(Value::as_array).ok_or_else(|| bad("no steps"))?;
        let listed = raw_steps
            .iter()
            .map(|raw| raw.as_str().and_then(Step::parse).ok_or_else(|| bad("unknown step")))
            .collect::<Result<Vec<Step>, StepFailure>>()?;
        let difficulty = parsed
            .get("difficulty")
            .and_then(Value::as_str)
            .and_then(Difficulty::parse)
            .ok_or_else(|| bad("unknown difficulty"))?;
        let mode = parsed
            .get("explanation_mode")
            .and_then(Value::as_str)
            .and_then(ExplanationMode::parse)
            .ok_or_else(|| bad("unknown explanation_mode"))?;
        let use_page =
            parsed.get("use_page").and_then(Value::as_bool).ok_or_else(|| bad("use_page must be a boolean"))?;
        let tier = self.catalog.tier_for(difficulty);
        // Solve first, each step once, at most PLAN_STEPS_MAX listed: as the estimate route does.
        let normalised = Plan::normalise(&listed, tier, mode).map_err(|_| bad("too many steps"))?;
        let plan = PlanData { steps: normalised.steps, difficulty, explanation_mode: mode, use_page, model: tier };
        self.state().data.plan = Some(plan.clone());
        if use_page {
            let page = PageStart { steps: plan.steps.clone(), model: plan.model, difficulty: plan.difficulty };
            self.channel.emit(None, Some("planner"), Event::PageStart(page));
        }
        Ok(plan)
    }

    async fn reserve(&self, plan: &PlanData) -> Result<(), StepFailure> {
        let spent_lines: Vec<Line> = {
            let state = self.state();
            state
                .data
                .log
                .iter()
                .map(|entry| Line { label: entry.node.as_str().to_owned(), amount: entry.cost, detail: None })
                .collect()
        };
        let estimate = plan.plan().estimate(&self.catalog, &spent_lines);
        self.take_hold(estimate.total, &estimate.breakdown).await
    }

    async fn take_hold(&self, amount: Amount, breakdown: &[Line]) -> Result<(), StepFailure> {
        let hold_id = HoldId::parse(&format!("hold-{}", self.run_id)).expect("run ids make valid hold ids");
        let metadata = json!({
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "catalog_version": self.catalog.version(),
        })
        .to_string();
        let command = Command::Hold {
            account_id: self.account_id.clone(),
            hold_id,
            amount,
            ttl_seconds: self.engine.config.hold_ttl_seconds,
            reference: Reference::parse(self.run_id.as_str()).ok(),
            metadata,
        };
        // The hold is taken in its own task: aborting the turn (cancel, shutdown) must not drop a
        // request the store may still commit, or that hold would be left pending unseen. The
        // token is registered and the task spawned with no await in between, so an abort cannot
        // come between them.
        let taken = CancellationToken::new();
        self.state().hold_taking = Some(taken.clone());
        let (credits, state, key) = (self.credits.clone(), Arc::clone(&self.state), self.key("hold"));
        let taking = tokio::spawn(async move {
            let _taken = taken.drop_guard();
            let result = credits.hold(&key, command).await;
            if let Ok(Ok(hold)) = &result {
                lock(&state).hold = Some(hold.clone());
            }
            result
        });
        let result = taking
            .await
            .map_err(|_| StepFailure::new(ErrorCode::InternalError, "taking the hold failed unexpectedly"))?
            .map_err(|error| store_failure(&error))?;
        let hold = match result {
            Ok(hold) => hold,
            Err(Rejection::InsufficientCredits { required, available }) => {
                return Err(credit_exhausted(required, available))
            }
            Err(Rejection::AccountNotFound) => return Err(credit_exhausted(amount, Amount::ZERO)),
            Err(other) => {
                return Err(StepFailure::new(ErrorCode::InternalError, format!("the hold was refused: {other}")))
            }
        };
        {
            let mut state = self.state();
            state.data.reserved = Some(hold.amount);
            state.data.breakdown = breakdown.to_vec();
            state.hold = Some(hold.clone());
        }
        if let Err(error) = self.persist(RunState::Running).await {
            tracing::warn!(%error, "could not record the hold on the run");
        }
        let reserved = CreditReserved { hold_id: hold.hold_id, amount: hold.amount, breakdown: breakdown.to_vec() };
        self.channel.emit(None, None, Event::CreditReserved(reserved));
        Ok(())
    }

    async fn solve_step(&self, plan: &PlanData, problem: &str) -> Result<Solution, StepFailure> {
        let plan = plan.plan();
        let started = Instant::now();
        let setup = SolverSetup {
            provider: self.engine.provider.as_ref(),
            executor: self.engine.executor.as_ref(),
            catalog: &self.catalog,
            tier: plan.tier,
            mode: plan.mode,
            problem,
            tool_calls_per_message_max: self.engine.config.tool_calls_per_message_max,
            coalesce: self.engine.config.coalesce,
        };
        // The answer (and the explanation) stream as `token` frames while the solver runs.
        let result = solver::solve(&setup, self).await;
        self.node_result(0, "solve", started, result.as_ref().err());
        let (solution, _) = result?;
        let mut state = self.state();
        state.data.answer = Some(solution.answer.clone());
        state.data.explanation = solution.explanation.clone();
        Ok(solution)
    }

    /// pdf and video both need the solution and nothing else: they run concurrently.
    async fn after_solve_steps(&self, plan: &PlanData, problem: &str, solution: &Solution) -> Result<(), StepFailure> {
        let steps = &plan.steps;
        let pdf = steps.iter().position(|step| *step == Step::Pdf);
        let video = steps.iter().position(|step| *step == Step::Video);
        let pdf_step = async {
            match pdf {
                Some(index) => self.pdf_step(index, problem, solution).await,
                None => Ok(()),
            }
        };
        let video_step = async {
            match video {
                Some(index) => self.video_step(index, problem, Some(solution), None).await,
                None => Ok(()),
            }
        };
        let (pdf_result, video_result) = futures::join!(pdf_step, video_step);
        pdf_result.and(video_result)
    }

    /// A `video_retry` turn: no LLM call; the hold is the video price, the job copies its
    /// source's input, the settler captures nothing more.
    async fn retry_turn(&self) -> Result<(), StepFailure> {
        let price = self.catalog.action(Action::Video);
        let (source, problem) = {
            let state = self.state();
            (state.data.retry_source_job_id.clone(), state.data.problem.clone())
        };
        let lines = [Line { label: "video".to_owned(), amount: price, detail: Some("retry".to_owned()) }];
        self.take_hold(price, &lines).await?;
        self.video_step(0, &problem, None, source).await?;
        self.settle().await
    }

    /// Creates the video job; its price is captured from this turn's hold in the same
    /// transaction, so the settler leaves it out.
    async fn video_step(
        &self,
        step_idx: usize,
        problem: &str,
        solution: Option<&Solution>,
        retry_source_job_id: Option<JobId>,
    ) -> Result<(), StepFailure> {
        let started = Instant::now();
        let result = self.create_job(problem, solution, retry_source_job_id).await;
        self.node_result(step_idx, "video", started, result.as_ref().err());
        let job = result?;
        self.meter_action(Node::Video, Charge::Video, Action::Video);
        {
            // The job's price was captured from the hold with the job: keep the hold as known in
            // step, so the settle written with the run's end expects what the ledger will say.
            let price = self.catalog.action(Action::Video);
            let mut state = self.state();
            if let Some(hold) = state.hold.as_mut() {
                hold.captured = hold.captured.plus(price);
                hold.remaining = hold.remaining.saturating_sub(price);
            }
        }
        let video = Attachment::Video { job_id: job.job_id.clone(), status: job.status };
        self.channel.emit(Some(step_idx), Some("video"), Event::Token(Token::attachment(video)));
        self.state().data.jobs.push(job.job_id.clone());
        self.channel.emit(Some(step_idx), Some("video"), Event::job(job));
        Ok(())
    }

    async fn create_job(
        &self,
        problem: &str,
        solution: Option<&Solution>,
        retry_source_job_id: Option<JobId>,
    ) -> Result<store::JobRecord, StepFailure> {
        let Some(jobs) = self.engine.jobs.clone() else {
            return Err(StepFailure::new(ErrorCode::InvalidInput, "video jobs are not available on this server"));
        };
        let hold_id = self.state().hold.as_ref().map(|hold| hold.hold_id.clone());
        let hold_id = hold_id.expect("a video step runs after the hold");
        let input = json!({
            "problem": problem,
            "answer": solution.map(|solution| solution.answer.clone()),
            "explanation": solution.and_then(|solution| solution.explanation.clone()),
        })
        .to_string();
        let new = NewJob {
            account_id: self.account_id.clone(),
            thread_id: self.thread_id.clone(),
            run_id: self.run_id.clone(),
            hold_id,
            price: self.catalog.action(Action::Video),
            input,
            retry_source_job_id,
        };
        jobs.create(new).await.map_err(|error| match error {
            JobError::RetryAlreadyUsed => {
                StepFailure::new(ErrorCode::InvalidInput, "This video cannot be retried: it was already retried once")
            }
            JobError::InvalidRetrySource(message) => {
                StepFailure::new(ErrorCode::InvalidInput, format!("This video cannot be retried: {message}"))
            }
            other => {
                tracing::error!(error = %other, "video job creation failed");
                StepFailure::new(ErrorCode::InternalError, "the video job could not be created")
            }
        })
    }

    async fn pdf_step(&self, step_idx: usize, problem: &str, solution: &Solution) -> Result<(), StepFailure> {
        let started = Instant::now();
        let mut sections = vec![("Problem", problem), ("Answer", solution.answer.as_str())];
        if let Some(explanation) = &solution.explanation {
            sections.push(("Explanation", explanation.as_str()));
        }
        let rendered = crate::pdf::render_solution_pdf("Solution", &sections);
        let result = match rendered {
            Ok(bytes) => {
                let artifact = Artifact {
                    artifact_id: ArtifactId::generate(),
                    account_id: self.account_id.clone(),
                    run_id: self.run_id.clone(),
                    content_type: "application/pdf".to_owned(),
                    bytes,
                    created_at: self.engine.now(),
                };
                match self.engine.runs.put_artifact(&artifact).await {
                    Ok(()) => Ok(artifact.artifact_id),
                    Err(error) => Err(store_failure(&error)),
                }
            }
            Err(error) => {
                Err(StepFailure::new(ErrorCode::ToolError, format!("the PDF could not be rendered: {error}")))
            }
        };
        self.node_result(step_idx, "pdf", started, result.as_ref().err());
        let artifact_id = result?;
        // Charged only once the PDF exists.
        self.meter_action(Node::Pdf, Charge::Pdf, Action::Pdf);
        let pdf = Attachment::Pdf { artifact_id: artifact_id.clone() };
        self.channel.emit(Some(step_idx), Some("pdf"), Event::Token(Token::attachment(pdf)));
        self.state().data.artifacts.push(artifact_id);
        Ok(())
    }

    /// The settler. With `settle_with_end`, the capture is written in the transaction that ends
    /// the run ([`Turn::finish_success`]); only the turn's commitment is recorded here.
    async fn settle(&self) -> Result<(), StepFailure> {
        if !self.engine.config.settle_with_end {
            return self.settle_now().await;
        }
        let mut state = self.state();
        assert!(state.hold.is_some(), "the settler runs after the hold");
        state.committed = true;
        state.settle_with_end = true;
        Ok(())
    }

    /// Captures the turn's synchronous cost with `final`; the rest of the hold goes back.
    async fn settle_now(&self) -> Result<(), StepFailure> {
        let (hold, actual, log) = {
            let mut state = self.state();
            state.committed = true;
            let hold = state.hold.clone().expect("the settler runs after the hold");
            (hold, synchronous_cost(&state.data.log), state.data.log.clone())
        };
        let captured = match self.credits.capture(&self.key("settle"), &hold.hold_id, actual, true).await {
            Ok(Ok(hold)) => hold,
            Ok(Err(rejection)) => {
                // The budget guard makes this impossible; if it happens the turn fails and the
                // hold is released rather than charging beyond it.
                tracing::error!(hold_id = %hold.hold_id, %rejection, "settle capture refused");
                return Err(StepFailure::new(
                    ErrorCode::InternalError,
                    format!("the settlement was refused: {rejection}"),
                ));
            }
            Err(error) => return Err(store_failure(&error)),
        };
        let refunded = captured.amount.minus(captured.captured);
        {
            let mut state = self.state();
            state.data.actual = Some(actual);
            state.data.captured = Some(captured.captured);
            state.data.refunded = Some(refunded);
            state.data.hold_resolved = true;
            state.hold = Some(captured.clone());
        }
        let settled = CreditSettled {
            hold_id: captured.hold_id,
            actual,
            reserved: captured.amount,
            captured: captured.captured,
            refunded,
            log,
        };
        self.channel.emit(None, Some("settler"), Event::CreditSettled(settled));
        Ok(())
    }

    pub(crate) async fn finish_success(&self) {
        let settle_with_end = std::mem::take(&mut self.state().settle_with_end);
        if settle_with_end {
            if self.finish_settled().await {
                return;
            }
            // Nothing was written: settle as a command of its own (the same key: if the refused
            // write commits late after all, this replays it), then end the run.
            if let Err(failure) = self.settle_now().await {
                self.finish_failure(failure).await;
                return;
            }
        }
        self.finish(RunState::Succeeded, Event::Done).await;
    }

    /// Ends the run settled in one write: the capture of the turn's synchronous cost with
    /// `final`, the terminal record, `credit_settled` and `done`, all built from the hold the
    /// capture is expected to leave and committed only if the ledger leaves it so. True when it
    /// committed (then the frames are published); false when nothing was written (the frames are
    /// taken back and the caller settles the old way, in the same frame order).
    async fn finish_settled(&self) -> bool {
        let now = self.engine.now();
        let (hold, actual, log) = {
            let state = self.state();
            let hold = state.hold.clone().expect("the settler runs after the hold");
            (hold, synchronous_cost(&state.data.log), state.data.log.clone())
        };
        let Some(captured) = hold.captured.checked_add(actual).filter(|captured| *captured <= hold.amount) else {
            // Beyond the hold: the capture alone is refused, and the turn fails as it always did.
            return false;
        };
        let refunded = hold.amount.minus(captured);
        let expected =
            SettledHold { hold_id: hold.hold_id.clone(), state: HoldState::Captured, amount: hold.amount, captured };
        let command = credits::capture_command(&hold.hold_id, actual, true);
        let settle = RunSettle { request: credits::keyed(command, &self.key("settle")), expected };
        let (record, data) = {
            let state = self.state();
            let mut data = state.data.clone();
            data.actual = Some(actual);
            data.captured = Some(captured);
            data.refunded = Some(refunded);
            data.hold_resolved = true;
            let mut record = state.record.clone();
            record.state = RunState::Succeeded;
            record.updated_at = now;
            record.hold_id = Some(hold.hold_id.clone());
            record.data = data.to_text();
            record.hold_resolution = data.hold_resolution(record.hold_id.as_ref());
            (record, data)
        };
        let settled =
            CreditSettled { hold_id: hold.hold_id.clone(), actual, reserved: hold.amount, captured, refunded, log };
        let Some(frames) = self.channel.seal_after(Some("settler"), Event::CreditSettled(settled), Event::Done) else {
            unreachable!("only the supervisor ends a turn, once");
        };
        if !self.engine.write_end(record.clone(), &self.channel, &frames, settle).await {
            self.channel.unseal(frames[0].seq);
            return false;
        }
        {
            let mut state = self.state();
            state.record = record;
            state.data = data;
            state.hold = Some(Hold { captured, remaining: Amount::ZERO, state: HoldState::Captured, ..hold });
        }
        self.channel.publish_sealed(frames);
        true
    }

    /// Ends a failed turn: the hold is released (nothing is charged for a failed turn), the run
    /// is recorded, and exactly one `error` event goes out.
    pub(crate) async fn finish_failure(&self, failure: StepFailure) {
        // Wait for a hold still being taken: it may commit although its turn was aborted.
        let taking = self.state().hold_taking.clone();
        if let Some(taking) = taking {
            taking.cancelled().await;
        }
        let (hold, resolved) = {
            let mut state = self.state();
            if state.hold.is_none() {
                // Nothing was ever held: nothing for recovery to do either.
                state.data.hold_resolved = true;
            }
            (state.hold.clone(), state.data.hold_resolved)
        };
        if let (Some(hold), false) = (hold, resolved) {
            match self.credits.release(&self.key("release"), &hold.hold_id).await {
                Ok(_) => self.state().data.hold_resolved = true,
                Err(error) => {
                    // `Credits::release` already retried with backoff. `hold_resolved` stays false
                    // in the stored data, so the recovery sweep (`Engine::recover_once`) retries it;
                    // the next turn of the thread does too, and the TTL is the last safety net.
                    tracing::error!(
                        hold_id = %hold.hold_id,
                        %error,
                        "could not release the hold of a failed run; left to the recovery sweep"
                    );
                }
            }
        }
        let state = if failure.code == ErrorCode::Canceled { RunState::Canceled } else { RunState::Failed };
        self.state().data.error = Some(ErrorData { code: failure.code.into(), message: failure.message.clone() });
        let error = RunError { code: failure.code, message: failure.message, shortfall: failure.shortfall };
        self.finish(state, Event::Error(error)).await;
    }
}
