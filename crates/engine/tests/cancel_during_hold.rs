//! Regression (found by the fault-injection suite): a run canceled while its hold is being taken
//! left that hold pending until its TTL — the store committed the hold after the turn was
//! aborted, so the failure path never saw it. The store here is slow on holds, so the cancel
//! lands exactly in that window.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::provider::Purpose;
use engine::run::{Engine, EngineConfig, NoExecutor, SolveRequest};
use engine::testing::{FakeProvider, FakeReply};
use ledger::{AccountId, Amount, Command, Entry, GrantId, Hold, HoldId, HoldState};
use pricing::catalog::Catalog;
use store::memory::MemoryStore;
use store::{
    AccountView, Executed, LedgerStore, ManualClock, Request, RunState, RunStore, StoreError, SweepReport, VerifyReport,
};

/// The memory store, with every hold command taking 300 ms to commit.
struct SlowHolds(Arc<MemoryStore>);

#[async_trait]
impl LedgerStore for SlowHolds {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        if matches!(request.command, Command::Hold { .. }) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.0.execute(request).await
    }
    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        self.0.account(account_id).await
    }
    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        self.0.hold(hold_id).await
    }
    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        self.0.pending_holds(account_id).await
    }
    async fn entries(&self, account_id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        self.0.entries(account_id, after_seq, limit).await
    }
    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError> {
        self.0.sweep(accounts_max).await
    }
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.0.verify().await
    }
    fn backend(&self) -> &'static str {
        "slow-holds"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_canceled_while_its_hold_is_taken_releases_that_hold() {
    let clock = Arc::new(ManualClock::starting_now());
    let memory = Arc::new(MemoryStore::new(clock.clone(), 86_400));
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on_default(Purpose::Solver, FakeReply::text("4"));
    let engine = Engine::new(
        EngineConfig { ledger_backoff_ms: 1, ..EngineConfig::default() },
        Arc::new(SlowHolds(memory.clone())),
        memory.clone(),
        Arc::new(fake.provider()),
        Arc::new(NoExecutor),
        Arc::new(Catalog::builtin()),
        clock.clone(),
    );
    let account = AccountId::parse("alice").unwrap();
    let grant = Command::Grant {
        account_id: account.clone(),
        grant_id: GrantId::parse("g1").unwrap(),
        amount: Amount::from_credits(100),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    };
    memory.execute(Request::new(grant)).await.unwrap();
    let request = SolveRequest {
        account_id: account,
        problem: "p".to_owned(),
        thread_id: None,
        action: None,
        retry_source_job_id: None,
    };
    let started = engine.start_solve(request).await.expect("started");
    // The planner answers within milliseconds; the hold then takes 300 ms: cancel inside it.
    while fake.count(Purpose::Planner) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(engine.cancel(&started.run_id));
    let mut state = RunState::Running;
    for _ in 0..400 {
        state = memory.run(&started.run_id).await.unwrap().unwrap().state;
        if state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, RunState::Canceled);
    let hold = memory.hold(&HoldId::parse(&format!("hold-{}", started.run_id)).unwrap()).await.unwrap();
    let hold = hold.expect("the hold committed although its turn was canceled");
    assert_eq!(hold.state, HoldState::Released, "the canceled run's hold must not stay pending");
    assert!(memory.verify().await.unwrap().violations.is_empty());
}
