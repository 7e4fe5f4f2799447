//! What the engine's integration tests share: an engine over the memory store with the scripted
//! provider, a run store that announces its writes (so tests wait for a run's state on that
//! event, not on a timer), and the builders every test needs.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::events::Frame;
use engine::run::{Engine, EngineConfig, NoExecutor, SolveRequest, Started};
use engine::testing::{FakeProvider, Gate};
use futures::StreamExt;
use ledger::{AccountId, Timestamp};
use pricing::Catalog;
use store::conformance::grant_credits;
use store::memory::MemoryStore;
use store::{
    Artifact, ArtifactId, CreateRunRefusal, Idempotency, InstanceLease, KeyUse, KeyedRun, LedgerStore, ManualClock,
    RecordedResponse, Request, RunEndWritten, RunEventsWrite, RunId, RunRecord, RunSettle, RunSignal, RunState,
    RunStore, StoreError, StoredFrame, ThreadId,
};
use tokio::sync::Notify;

/// The account every test funds (1000 credits).
pub const ACCOUNT: &str = "alice";
/// Longest wait for anything a test waits for; reaching it fails the test.
pub const WAIT_SECONDS_MAX: u64 = 30;

pub fn account() -> AccountId {
    AccountId::parse(ACCOUNT).expect("valid account id")
}

/// A new-thread solve request of [`ACCOUNT`].
pub fn solve(problem: &str) -> SolveRequest {
    SolveRequest {
        account_id: account(),
        problem: problem.to_owned(),
        thread_id: None,
        action: None,
        retry_source_job_id: None,
    }
}

/// The memory store as a run store, announcing every run it creates or updates, and optionally
/// holding run creation at a gate (to catch concurrent starts inside `create_run`).
pub struct WatchedRuns {
    pub inner: Arc<MemoryStore>,
    pub changed: Notify,
    /// Creation waits here when set.
    pub create_gate: Option<Gate>,
    /// Calls of `create_run` so far (counted on entry).
    pub creates: AtomicUsize,
}

#[async_trait]
impl RunStore for WatchedRuns {
    async fn create_run_once(
        &self,
        run: &RunRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        if let Some(gate) = &self.create_gate {
            gate.passed().await;
        }
        let created = self.inner.create_run_once(run, idempotency).await;
        self.changed.notify_waiters();
        created
    }
    async fn update_run(&self, run: &RunRecord) -> Result<bool, StoreError> {
        let updated = self.inner.update_run(run).await;
        self.changed.notify_waiters();
        updated
    }
    async fn run(&self, run_id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.inner.run(run_id).await
    }
    async fn thread_account(&self, thread_id: &ThreadId) -> Result<Option<AccountId>, StoreError> {
        self.inner.thread_account(thread_id).await
    }
    async fn account_runs(
        &self,
        account_id: &ledger::AccountId,
        before: Option<(ledger::Timestamp, &store::RunId)>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.account_runs(account_id, before, limit).await
    }
    async fn thread_runs(
        &self,
        thread_id: &ThreadId,
        after_turn: Option<u32>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.thread_runs(thread_id, after_turn, limit).await
    }
    async fn runs_in_state(
        &self,
        state: RunState,
        instance_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.runs_in_state(state, instance_id, limit).await
    }
    async fn unresolved_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.unresolved_runs(limit).await
    }
    async fn orphaned_runs(
        &self,
        except_instance_id: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.orphaned_runs(except_instance_id, now, limit).await
    }
    async fn renew_instance(
        &self,
        instance_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.renew_instance(instance_id, now, lease_until).await
    }
    async fn drop_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        self.inner.drop_instance(instance_id).await
    }
    async fn lapsed_instances(&self, now: Timestamp, limit: u32) -> Result<Vec<InstanceLease>, StoreError> {
        self.inner.lapsed_instances(now, limit).await
    }
    async fn put_artifact(&self, artifact: &Artifact) -> Result<(), StoreError> {
        self.inner.put_artifact(artifact).await
    }
    async fn artifact(&self, artifact_id: &ArtifactId) -> Result<Option<Artifact>, StoreError> {
        self.inner.artifact(artifact_id).await
    }
    async fn keyed_run(&self, idempotency: &Idempotency) -> Result<Option<KeyedRun>, StoreError> {
        self.inner.keyed_run(idempotency).await
    }
    async fn write_run_events(&self, write: &RunEventsWrite) -> Result<bool, StoreError> {
        let written = self.inner.write_run_events(write).await;
        self.changed.notify_waiters();
        written
    }
    async fn write_run_end(&self, write: &RunEventsWrite, settle: &RunSettle) -> Result<RunEndWritten, StoreError> {
        let written = self.inner.write_run_end(write, settle).await;
        self.changed.notify_waiters();
        written
    }
    async fn run_events(&self, run_id: &RunId, after: Option<u64>, limit: u32) -> Result<Vec<StoredFrame>, StoreError> {
        self.inner.run_events(run_id, after, limit).await
    }
    async fn last_run_event_seq(&self, run_id: &RunId) -> Result<Option<u64>, StoreError> {
        self.inner.last_run_event_seq(run_id).await
    }
    async fn forget_run_events(&self, ended_before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        self.inner.forget_run_events(ended_before, limit).await
    }
    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> Result<bool, StoreError> {
        self.inner.request_cancel(run_id, at).await
    }
    async fn cancel_requests(&self, instance_id: &str, limit: u32) -> Result<Vec<RunId>, StoreError> {
        self.inner.cancel_requests(instance_id, limit).await
    }
    async fn recorded_response(&self, key: &str) -> Result<Option<KeyUse>, StoreError> {
        self.inner.recorded_response(key).await
    }
    async fn record_response(&self, key: &str, response: &RecordedResponse) -> Result<KeyUse, StoreError> {
        self.inner.record_response(key, response).await
    }
    async fn run_signals(&self) -> tokio::sync::broadcast::Receiver<RunSignal> {
        self.inner.run_signals().await
    }
}

/// An engine and what a test looks behind it with.
pub struct TestEngine {
    pub engine: Arc<Engine>,
    /// The memory store: the ledger (unless replaced) and, behind `runs`, the run store.
    pub store: Arc<MemoryStore>,
    pub runs: Arc<WatchedRuns>,
    pub clock: Arc<ManualClock>,
    pub fake: FakeProvider,
}

/// How a test wants its engine built.
pub struct Options {
    pub config: EngineConfig,
    /// The ledger the engine calls, given the memory store (the memory store itself by default).
    pub ledger: Box<dyn FnOnce(Arc<MemoryStore>) -> Arc<dyn LedgerStore>>,
    pub create_gate: Option<Gate>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: EngineConfig { instance_id: "me".to_owned(), ledger_backoff_ms: 1, ..EngineConfig::default() },
            ledger: Box::new(|store| store as Arc<dyn LedgerStore>),
            create_gate: None,
        }
    }
}

impl TestEngine {
    /// An engine (instance `me`, ledger backoff 1 ms, then `change`d) over a fresh memory store in
    /// which [`ACCOUNT`] holds 1000 credits, with a scripted provider and no Python.
    pub async fn start(change: impl FnOnce(&mut EngineConfig)) -> TestEngine {
        let mut options = Options::default();
        change(&mut options.config);
        TestEngine::start_with(options).await
    }

    pub async fn start_with(options: Options) -> TestEngine {
        let clock = Arc::new(ManualClock::starting_now());
        let store = Arc::new(MemoryStore::new(clock.clone(), 86_400));
        let runs = Arc::new(WatchedRuns {
            inner: store.clone(),
            changed: Notify::new(),
            create_gate: options.create_gate,
            creates: AtomicUsize::new(0),
        });
        let fake = FakeProvider::start().await;
        let engine = Engine::new(
            options.config,
            (options.ledger)(store.clone()),
            runs.clone(),
            Arc::new(fake.provider()),
            Arc::new(NoExecutor),
            Arc::new(Catalog::builtin()),
            clock.clone(),
        );
        let executed = store.execute(Request::new(grant_credits(ACCOUNT, "g1", 1000))).await.expect("store answers");
        assert!(matches!(executed, store::Executed::Fresh(Ok(_))), "{executed:?}");
        TestEngine { engine, store, runs, clock, fake }
    }

    /// Every frame of a started run, read until its stream closes (the run is recorded by then).
    pub async fn run_to_end(&self, started: &Started) -> Vec<Frame> {
        let frames = started.channel.follow(None).collect::<Vec<_>>();
        tokio::time::timeout(Duration::from_secs(WAIT_SECONDS_MAX), frames).await.expect("the run ended in time")
    }

    /// Waits until the stored run satisfies `done`, woken by every run write; the run then.
    pub async fn wait_for_run(&self, run_id: &RunId, what: &str, done: impl Fn(&RunRecord) -> bool) -> RunRecord {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECONDS_MAX);
        loop {
            let changed = self.runs.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let run = self.store.run(run_id).await.expect("store answers");
            if let Some(run) = run.filter(|run| done(run)) {
                return run;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }
}
