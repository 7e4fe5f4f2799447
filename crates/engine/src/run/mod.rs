//! The run engine: one background task per turn, supervised so that every way a turn can end —
//! success, a step error, a provider error, a panic, a cancel, shutdown — ends with the hold
//! captured or released exactly once and exactly one of `done` or `error` on the stream.
//!
//! A turn runs as an inner task ([`turn::Turn::execute`]) under a supervisor. The supervisor
//! owns the ending: on failure, panic or cancel it releases the hold (unless the settler already
//! resolved it) and emits the one `error` event; on success it emits `done`.

pub mod credits;
pub mod data;
pub mod recovery;
pub mod solver;
pub mod stream;
mod turn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger::{AccountId, Timestamp};
use store::{
    Clock, CreateRunRefusal, HoldResolution, Idempotency, JobId, KeyedRun, LedgerStore, RunEndWritten, RunEventsWrite,
    RunId, RunRecord, RunSettle, RunState, RunStore, StoreError, ThreadId,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::writer::EventWriter;
use crate::events::{Bounds, ErrorCode, Event, EventChannel, Frame, FRAMES_MAX_DEFAULT, FRAME_BYTES_MAX_DEFAULT};
use crate::provider::Provider;
use crate::sandbox::CodeExecutor;
pub use data::Action;
use data::RunData;
use jobs::JobService;
use pricing::{Catalog, SharedCatalog};
use turn::Turn;

/// Limits and settings of the engine. Units last.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This server process; recorded on every run it executes.
    pub instance_id: String,
    pub hold_ttl_seconds: u64,
    pub runs_active_max: usize,
    pub frames_max: usize,
    /// Bound on one run's frames in bytes of their stored form (buffer and store alike).
    pub frame_bytes_max: usize,
    /// How long the event writer lets frames gather before one store write.
    pub run_events_flush_ms: u64,
    /// How long a finished run's frames stay in the store (then `410 run_events_expired`).
    pub run_events_retention_seconds: u64,
    /// How often the owner of running runs looks for cancels requested on other instances, in
    /// case a signal was missed (and how often a follower on another instance polls).
    pub run_poll_ms: u64,
    /// How long a run waits for its final frames and record to be stored before it writes the
    /// record alone.
    pub final_write_seconds_max: u64,
    pub problem_bytes_max: usize,
    pub tool_calls_per_message_max: usize,
    /// A whole turn, from the router to the settler.
    pub turn_seconds_max: u64,
    pub ledger_retries_max: u32,
    pub ledger_backoff_ms: u64,
    /// False when no LLM provider is configured: solves are refused, estimates still work.
    pub solve_enabled: bool,
    /// Cancel a run (releasing its hold) when the client of its `/v1/solve` stream leaves before
    /// the run ends. Off by default: the run goes on, settles, and the client can resume.
    pub cancel_on_disconnect: bool,
    /// How long this instance's lease lasts without a renewal; its runs are recovered by another
    /// instance once it lapses.
    pub instance_lease_seconds: u64,
    /// How often [`Engine::start_background`] renews the lease (well under the lease).
    pub instance_renew_seconds: u64,
    /// How often [`Engine::start_background`] runs [`Engine::recover_once`].
    pub recovery_interval_seconds: u64,
    /// Runs (and unresolved holds) one [`Engine::recover_once`] handles at most.
    pub recovery_runs_max: u32,
    /// A live run's pending hold expiring within this margin is extended by `hold_ttl_seconds`.
    pub hold_extend_margin_seconds: u64,
    /// The run store is the ledger's own store (as in a server): a turn's settle is written in
    /// the transaction that ends its run ([`store::RunStore::write_run_end`]), one commit instead
    /// of two. False when the ledger is another store (a benchmark's null ledger): the settle is
    /// then its own ledger command, before the end is written.
    pub settle_with_end: bool,
    /// How streamed answer text gathers into `token` frames.
    pub coalesce: stream::Coalesce,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            instance_id: format!("instance-{}", uuid::Uuid::now_v7().simple()),
            hold_ttl_seconds: 1200,
            runs_active_max: 64,
            frames_max: FRAMES_MAX_DEFAULT,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            run_events_flush_ms: 25,
            run_events_retention_seconds: 7 * 24 * 3600,
            run_poll_ms: 500,
            final_write_seconds_max: 10,
            problem_bytes_max: 16 * 1024,
            tool_calls_per_message_max: 8,
            turn_seconds_max: 900,
            ledger_retries_max: 5,
            ledger_backoff_ms: 50,
            solve_enabled: true,
            cancel_on_disconnect: false,
            instance_lease_seconds: 15,
            instance_renew_seconds: 5,
            recovery_interval_seconds: 5,
            recovery_runs_max: 64,
            hold_extend_margin_seconds: 300,
            settle_with_end: true,
            coalesce: stream::Coalesce::default(),
        }
    }
}

/// A solve request, parsed at the edge.
#[derive(Clone, Debug)]
pub struct SolveRequest {
    pub account_id: AccountId,
    pub problem: String,
    /// The thread to continue; a new one when absent.
    pub thread_id: Option<ThreadId>,
    pub action: Option<Action>,
    pub retry_source_job_id: Option<JobId>,
}

/// Why a run could not start (answered as a plain HTTP error, before any stream opens).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("the thread belongs to another account")]
    ThreadOfAnotherAccount,
    #[error("the thread has a run in progress: {run_id}")]
    ThreadBusy { run_id: RunId },
    #[error("too many runs in progress; try again shortly")]
    Busy,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no LLM provider is configured (set CREDITGRAPH_LLM_BASE_URL)")]
    NotConfigured,
    #[error("the idempotency key was used by another request")]
    IdempotencyConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a solve with an idempotency key began.
pub enum Begun {
    /// A new run.
    Started(Started),
    /// The run an earlier solve with the same key and body started (on any instance, in any
    /// state): its events are followed, not a new run's.
    Existing(RunRecord),
}

/// A started run: its ids and the channel its events go to.
pub struct Started {
    pub run_id: RunId,
    pub thread_id: ThreadId,
    pub channel: Arc<EventChannel>,
}

struct LiveRun {
    channel: Arc<EventChannel>,
    cancel: CancellationToken,
    /// For the hold extender.
    turn: Arc<Turn>,
}

#[derive(Default)]
struct Registry {
    running: HashMap<RunId, LiveRun>,
}

pub struct Engine {
    pub(crate) config: EngineConfig,
    pub(crate) ledger: Arc<dyn LedgerStore>,
    pub(crate) runs: Arc<dyn RunStore>,
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) executor: Arc<dyn CodeExecutor>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) jobs: Option<Arc<JobService>>,
    catalog: Arc<SharedCatalog>,
    /// One permit per run in flight (`runs_active_max`): taken when a run starts, moved into its
    /// task and given back when that task ends, so the limit holds whatever races.
    runs_active: Arc<Semaphore>,
    registry: Mutex<Registry>,
    tracker: TaskTracker,
    stopping: CancellationToken,
    /// Carries every run's frames to the store; `None` for an engine built outside a runtime
    /// (its frames stay in this process).
    writer: Option<Arc<EventWriter>>,
    /// Stops the writer, once the runs have ended ([`Engine::shutdown`]).
    writer_stop: CancellationToken,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        ledger: Arc<dyn LedgerStore>,
        runs: Arc<dyn RunStore>,
        provider: Arc<dyn Provider>,
        executor: Arc<dyn CodeExecutor>,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Engine> {
        Engine::with_jobs(config, ledger, runs, provider, executor, catalog, clock, None)
    }

    /// An engine whose plans may contain video steps, handed to `jobs`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_jobs(
        config: EngineConfig,
        ledger: Arc<dyn LedgerStore>,
        runs: Arc<dyn RunStore>,
        provider: Arc<dyn Provider>,
        executor: Arc<dyn CodeExecutor>,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
        jobs: Option<Arc<JobService>>,
    ) -> Arc<Engine> {
        let runs_active_max = config.runs_active_max;
        let writer_stop = CancellationToken::new();
        let writer = tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| EventWriter::spawn(runs.clone(), config.run_events_flush_ms, writer_stop.clone()));
        let engine = Arc::new(Engine {
            config,
            ledger,
            runs,
            provider: crate::provider::observed::Observed::wrap(provider),
            executor,
            clock,
            jobs,
            catalog: Arc::new(SharedCatalog::new(catalog)),
            runs_active: Arc::new(Semaphore::new(runs_active_max)),
            registry: Mutex::new(Registry::default()),
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            writer,
            writer_stop,
        });
        engine.forward_job_updates();
        engine
    }

    /// Job updates go to the stream of the run that created the job while that stream is open.
    fn forward_job_updates(self: &Arc<Self>) {
        let (Some(jobs), Ok(runtime)) = (self.jobs.as_ref(), tokio::runtime::Handle::try_current()) else { return };
        let mut updates = jobs.subscribe();
        let engine = Arc::downgrade(self);
        let stopping = self.stopping.clone();
        runtime.spawn(async move {
            loop {
                let update = tokio::select! {
                    () = stopping.cancelled() => return,
                    update = updates.recv() => update,
                };
                match update {
                    Ok(job) => match engine.upgrade() {
                        Some(engine) => engine.forward_job(&job),
                        None => return,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, "job updates skipped for slow forwarding");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    fn forward_job(&self, job: &store::JobRecord) {
        let channel = {
            let registry = self.registry.lock().expect("registry lock poisoned");
            registry.running.get(&job.run_id).map(|live| live.channel.clone())
        };
        if let Some(channel) = channel {
            channel.emit(None, Some("video"), Event::job(job.clone()));
        }
    }

    pub fn jobs(&self) -> Option<&Arc<JobService>> {
        self.jobs.as_ref()
    }

    pub fn run_store(&self) -> &Arc<dyn RunStore> {
        &self.runs
    }

    pub fn ledger(&self) -> &Arc<dyn LedgerStore> {
        &self.ledger
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The catalog new runs are estimated at. Runs keep the one they started with.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.current()
    }

    /// The catalog in force, shared with whatever else prices (the estimate route).
    pub fn shared_catalog(&self) -> Arc<SharedCatalog> {
        Arc::clone(&self.catalog)
    }

    /// Replaces the catalog for runs that start from now on.
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        self.catalog.replace(catalog);
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Validates the request, records the run, and starts its task. The stream of the returned
    /// channel carries everything that follows.
    pub async fn start_solve(self: &Arc<Self>, request: SolveRequest) -> Result<Started, StartError> {
        match self.start_solve_once(request, None).await? {
            Begun::Started(started) => Ok(started),
            Begun::Existing(_) => unreachable!("only a keyed solve finds an existing run"),
        }
    }

    /// [`Engine::start_solve`] under an idempotency key: the key's run when a solve with the same
    /// key and fingerprint started one (on any instance), [`StartError::IdempotencyConflict`]
    /// when another request used the key, else a new run recorded with the key.
    pub async fn start_solve_once(
        self: &Arc<Self>,
        request: SolveRequest,
        idempotency: Option<Idempotency>,
    ) -> Result<Begun, StartError> {
        if let Some(idempotency) = &idempotency {
            // Before the limits: a retry finds its run even when this instance is busy or stopping.
            if let Some(existing) = self.keyed_run(idempotency).await? {
                return Ok(Begun::Existing(existing));
            }
        }
        if self.stopping.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if !self.config.solve_enabled {
            return Err(StartError::NotConfigured);
        }
        if request.problem.trim().is_empty() {
            return Err(StartError::InvalidInput("problem must not be empty".to_owned()));
        }
        if request.problem.len() > self.config.problem_bytes_max {
            return Err(StartError::InvalidInput(format!(
                "problem is longer than {} bytes",
                self.config.problem_bytes_max
            )));
        }
        let thread_id = request.thread_id.clone().unwrap_or_else(ThreadId::generate);
        // A place among `runs_active_max`, taken before the run exists and moved into its task
        // (given back when the task ends): the limit is exact, whatever races.
        let permit = Arc::clone(&self.runs_active).try_acquire_owned().map_err(|_| StartError::Busy)?;
        let catalog = self.catalog();
        let run_id = RunId::generate();
        let now = self.now();
        let data = RunData {
            problem: request.problem.clone(),
            action: request.action,
            retry_source_job_id: request.retry_source_job_id.clone(),
            catalog_version: catalog.version().to_owned(),
            ..RunData::default()
        };
        let record = RunRecord {
            run_id: run_id.clone(),
            account_id: request.account_id.clone(),
            thread_id: thread_id.clone(),
            turn_index: 0,
            state: RunState::Running,
            instance_id: self.config.instance_id.clone(),
            hold_id: None,
            hold_resolution: HoldResolution::None,
            created_at: now,
            updated_at: now,
            data: data.to_text(),
        };
        let record = match self.runs.create_run_once(&record, idempotency.as_ref()).await? {
            Ok(record) => record,
            Err(CreateRunRefusal::KeyUsed(KeyedRun::Conflict)) => return Err(StartError::IdempotencyConflict),
            Err(CreateRunRefusal::KeyUsed(KeyedRun::Started(run_id))) => {
                // A solve with the same key won the race.
                let existing = self.runs.run(&run_id).await?;
                let existing = existing.ok_or_else(|| StoreError::corrupt("a solve key names a missing run"))?;
                return Ok(Begun::Existing(existing));
            }
            Err(CreateRunRefusal::ThreadOfAnotherAccount) => return Err(StartError::ThreadOfAnotherAccount),
            Err(CreateRunRefusal::ThreadBusy { run_id }) => return Err(StartError::ThreadBusy { run_id }),
            Err(CreateRunRefusal::DuplicateRunId) => {
                return Err(StartError::Store(StoreError::corrupt("run id collision")))
            }
        };
        let bounds = Bounds { frames_max: self.config.frames_max, bytes_max: self.config.frame_bytes_max };
        let channel = EventChannel::stored(&thread_id, &run_id, bounds, Arc::clone(&self.clock), self.writer.clone());
        let cancel = self.stopping.child_token();
        let turn = Arc::new(Turn::new(self.clone(), record, data, catalog, channel.clone()));
        self.registry
            .lock()
            .expect("registry lock poisoned")
            .running
            .insert(run_id.clone(), LiveRun { channel: channel.clone(), cancel: cancel.clone(), turn: turn.clone() });
        let engine = self.clone();
        self.tracker.spawn(async move {
            engine.supervise(turn, cancel).await;
            drop(permit);
        });
        Ok(Begun::Started(Started { run_id, thread_id, channel }))
    }

    /// The run a solve's key names, if any.
    async fn keyed_run(&self, idempotency: &Idempotency) -> Result<Option<RunRecord>, StartError> {
        match self.runs.keyed_run(idempotency).await? {
            None => Ok(None),
            Some(KeyedRun::Conflict) => Err(StartError::IdempotencyConflict),
            Some(KeyedRun::Started(run_id)) => {
                let existing = self.runs.run(&run_id).await?;
                Ok(Some(existing.ok_or_else(|| StoreError::corrupt("a solve key names a missing run"))?))
            }
        }
    }

    /// Stores a run's final frame with its terminal record in one write (through the writer, after
    /// every frame of the run still pending), waiting at most `final_write_seconds_max`; then, or
    /// without a writer, the record alone.
    pub(crate) async fn write_final(&self, record: RunRecord, channel: &EventChannel, frame: &Frame) {
        if let Some(writer) = &self.writer {
            let limit = Duration::from_secs(self.config.final_write_seconds_max);
            let written = writer.finish(record.clone(), vec![channel.stored_form(frame)]);
            match tokio::time::timeout(limit, written).await {
                Ok(Ok(_)) => return,
                Ok(Err(error)) => {
                    tracing::error!(run_id = %record.run_id, %error, "final frames not stored; recording the run alone")
                }
                Err(_) => {
                    tracing::error!(run_id = %record.run_id, "final frames not stored in time; recording the run alone")
                }
            }
        }
        if let Err(error) = self.runs.update_run(&record).await {
            tracing::error!(run_id = %record.run_id, %error, "could not record the run's end");
        }
    }

    /// Ends a run and settles its hold in one write: `frames` (sealed, not yet published) and the
    /// terminal `record` are stored with `settle` decided in the same transaction. True when it
    /// all committed; false when nothing was (the ledger answered otherwise than expected, the
    /// store failed, or the write took too long): the caller then settles the way it did before
    /// the two were one write (the settle's idempotency key makes a late commit of this write
    /// and that settle one capture).
    pub(crate) async fn write_end(
        &self,
        record: RunRecord,
        channel: &EventChannel,
        frames: &[Frame],
        settle: RunSettle,
    ) -> bool {
        let run_id = record.run_id.clone();
        let stored = frames.iter().map(|frame| channel.stored_form(frame)).collect();
        let written = match &self.writer {
            Some(writer) => {
                let limit = Duration::from_secs(self.config.final_write_seconds_max);
                match tokio::time::timeout(limit, writer.finish_settled(record, stored, settle)).await {
                    Ok(written) => written,
                    Err(_) => Err(StoreError::unavailable("the run's end was not stored in time")),
                }
            }
            None => {
                let write = RunEventsWrite { frames: stored, evicted: Vec::new(), run: Some(record) };
                self.runs.write_run_end(&write, &settle).await
            }
        };
        match written {
            Ok(RunEndWritten::Written(_)) => true,
            Ok(RunEndWritten::NoSuchRun) => {
                tracing::error!(%run_id, "the run to end is not stored; settling it alone");
                false
            }
            Ok(RunEndWritten::Refused(executed)) => {
                tracing::info!(%run_id, ?executed, "the settle was not as expected; settling it alone");
                false
            }
            Err(error) => {
                tracing::warn!(%run_id, %error, "the run's end and settle not stored; settling it alone");
                false
            }
        }
    }

    async fn supervise(self: Arc<Self>, turn: Arc<Turn>, cancel: CancellationToken) {
        let run_id = turn.run_id().clone();
        let mut inner = tokio::spawn(turn.clone().execute());
        let deadline = tokio::time::sleep(Duration::from_secs(self.config.turn_seconds_max));
        tokio::pin!(deadline);
        let outcome = tokio::select! {
            joined = &mut inner => Some(joined),
            () = cancel.cancelled() => None,
            () = &mut deadline => {
                inner.abort();
                let _ = (&mut inner).await;
                Some(Ok(Err(solver::StepFailure::new(ErrorCode::Timeout, "the turn took too long"))))
            }
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None if turn.is_committed() => {
                // The settler has started: let it finish rather than leave the hold half done.
                inner.await
            }
            None => {
                inner.abort();
                let _ = inner.await;
                let message =
                    if self.stopping.is_cancelled() { "the server is shutting down" } else { "the run was canceled" };
                Ok(Err(solver::StepFailure::new(ErrorCode::Canceled, message)))
            }
        };
        match outcome {
            Ok(Ok(())) => turn.finish_success().await,
            Ok(Err(failure)) => turn.finish_failure(failure).await,
            Err(join_error) => {
                let message = if join_error.is_panic() { "a step failed unexpectedly" } else { "the run stopped" };
                tracing::error!(%run_id, error = %join_error, "run task ended abnormally");
                turn.finish_failure(solver::StepFailure::new(ErrorCode::InternalError, message)).await;
            }
        }
        // An ended run is served from the store (its final frame was stored with its end), on
        // this instance as on any other, so its buffer goes with it.
        self.registry.lock().expect("registry lock poisoned").running.remove(&run_id);
    }

    /// The event buffer of a run live on this instance.
    pub fn channel(&self, run_id: &RunId) -> Option<Arc<EventChannel>> {
        let registry = self.registry.lock().expect("registry lock poisoned");
        registry.running.get(run_id).map(|live| live.channel.clone())
    }

    /// Asks a run to stop, wherever it runs: at once when it runs here, else through the store
    /// (its owner notices the request within `run_poll_ms`, at once on PostgreSQL). False when
    /// no such run is running.
    pub async fn request_cancel(&self, run_id: &RunId) -> Result<bool, StoreError> {
        if self.cancel(run_id) {
            return Ok(true);
        }
        self.runs.request_cancel(run_id, self.now()).await
    }

    /// Asks a live run to stop. False when it is not running on this instance.
    pub fn cancel(&self, run_id: &RunId) -> bool {
        let registry = self.registry.lock().expect("registry lock poisoned");
        match registry.running.get(run_id) {
            Some(live) => {
                live.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn running_count(&self) -> usize {
        self.registry.lock().expect("registry lock poisoned").running.len()
    }

    /// Stops accepting runs, cancels the live ones and waits for them (each releases its hold
    /// and emits `error {code: canceled}`), at most `grace`. Returns false when runs were still
    /// going at the deadline.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        // The runs' final writes are done (or abandoned with the runs): the writer writes what is
        // left once more and stops.
        self.writer_stop.cancel();
        ended
    }

    /// A token cancelled when shutdown begins (SSE streams end on it).
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }
}

/// The provider of a server without `CREDITGRAPH_LLM_BASE_URL`; never called, since solves are
/// refused before a run starts.
pub struct NoProvider;

#[async_trait::async_trait]
impl Provider for NoProvider {
    async fn complete(
        &self,
        _request: crate::provider::ChatRequest,
    ) -> Result<crate::provider::ChatResponse, crate::provider::ProviderError> {
        Err(crate::provider::ProviderError::Unreachable { detail: "no LLM provider is configured".to_owned() })
    }
}

/// The executor of a machine without Python: every `code_execute` is a tool error, not charged.
pub struct NoExecutor;

#[async_trait::async_trait]
impl CodeExecutor for NoExecutor {
    async fn execute(&self, _code: &str) -> Result<crate::sandbox::ExecOutput, crate::sandbox::ExecError> {
        Err(crate::sandbox::ExecError::failed("no Python interpreter on this server"))
    }
}
