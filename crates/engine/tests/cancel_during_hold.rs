//! Regression (found by the fault-injection suite): a run canceled while its hold is being taken
//! left that hold pending until its TTL — the store committed the hold after the turn was
//! aborted, so the failure path never saw it. The store here is slow on holds, and the test
//! cancels the run exactly while its hold request is in the store.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::provider::Purpose;
use engine::testing::FakeReply;
use ledger::{AccountId, Command, Entry, Hold, HoldId, HoldState};
use store::memory::MemoryStore;
use store::{AccountView, Executed, LedgerStore, Request, RunState, RunStore, StoreError, SweepReport, VerifyReport};
use support::{Options, TestEngine};
use tokio::sync::Notify;

/// How long a hold takes to commit, in the test's paused (virtual) time.
const HOLD_COMMIT_MILLIS: u64 = 300;

/// The memory store, announcing every hold command it receives and committing it only
/// [`HOLD_COMMIT_MILLIS`] later.
struct SlowHolds {
    store: Arc<MemoryStore>,
    hold_received: Arc<Notify>,
}

#[async_trait]
impl LedgerStore for SlowHolds {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        if matches!(request.command, Command::Hold { .. }) {
            self.hold_received.notify_one();
            // A slow commit, in virtual time: the test pauses the clock, so this ends only once
            // everything else has run (the cancel included).
            tokio::time::sleep(Duration::from_millis(HOLD_COMMIT_MILLIS)).await;
        }
        self.store.execute(request).await
    }
    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        self.store.account(account_id).await
    }
    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        self.store.hold(hold_id).await
    }
    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        self.store.pending_holds(account_id).await
    }
    async fn holds(
        &self,
        account_id: &AccountId,
        state: ledger::HoldState,
        after: Option<&HoldId>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        self.store.holds(account_id, state, after, limit).await
    }
    async fn entries(&self, account_id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        self.store.entries(account_id, after_seq, limit).await
    }
    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError> {
        self.store.sweep(accounts_max).await
    }
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.store.verify().await
    }
    fn backend(&self) -> &'static str {
        "slow-holds"
    }
}

/// Current-thread runtime: once the hold request is in the store, the clock is paused, so the
/// slow commit can only end after the cancel has been handled (tokio advances a paused clock
/// only when no task can run).
#[tokio::test(flavor = "current_thread")]
async fn a_run_canceled_while_its_hold_is_taken_releases_that_hold() {
    let hold_received = Arc::new(Notify::new());
    let received = hold_received.clone();
    let options = Options {
        ledger: Box::new(move |store| Arc::new(SlowHolds { store, hold_received: received }) as Arc<dyn LedgerStore>),
        ..Options::default()
    };
    let s = TestEngine::start_with(options).await;
    s.fake.on(Purpose::Router, FakeReply::route(false));
    s.fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    s.fake.on_default(Purpose::Solver, FakeReply::text("4"));
    let started = s.engine.start_solve(support::solve("p")).await.expect("started");
    // The router and planner have answered; the hold request is now in the store.
    tokio::time::timeout(Duration::from_secs(support::WAIT_SECONDS_MAX), hold_received.notified())
        .await
        .expect("the run asked for its hold");
    // From here on no provider call is made: pausing the clock is safe for real sockets too.
    tokio::time::pause();
    assert!(s.engine.cancel(&started.run_id));
    s.run_to_end(&started).await;

    assert_eq!(s.store.run(&started.run_id).await.unwrap().unwrap().state, RunState::Canceled);
    let hold = s.store.hold(&HoldId::parse(&format!("hold-{}", started.run_id)).unwrap()).await.unwrap();
    let hold = hold.expect("the hold committed although its turn was canceled");
    assert_eq!(hold.state, HoldState::Released, "the canceled run's hold must not stay pending");
    assert!(s.store.verify().await.unwrap().violations.is_empty());
}
