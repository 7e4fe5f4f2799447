//! Crash recovery and hold upkeep on the memory store: a dead instance's running run gives its
//! hold back long before the TTL (once, however often the sweep runs), a live instance's runs
//! are left alone while it renews its lease, a release that failed earlier is retried, and a
//! live run's hold is extended before it expires so the run still settles.

mod support;

use std::time::Duration;

use engine::events::EventKind;
use engine::provider::Purpose;
use engine::run::data::{RunData, RunErrorCode};
use engine::run::recovery::RecoveryReport;
use engine::testing::{FakeReply, Gate};
use futures::StreamExt;
use ledger::{Amount, Command, EntryKind, HoldId, HoldState};
use store::{Clock, Executed, LedgerStore, Request, RunId, RunRecord, RunState, RunStore, ThreadId};
use support::{account, TestEngine};

type Setup = TestEngine;

async fn setup(change: impl FnOnce(&mut engine::run::EngineConfig)) -> Setup {
    TestEngine::start(change).await
}

fn run_id(text: &str) -> RunId {
    RunId::parse(text).expect("valid id")
}

impl Setup {
    /// A run of `instance_id` in `state` with a real pending hold (key `<run_id>:hold`), as a
    /// process that died mid-run (or failed to release) left it.
    async fn run_with_hold(&self, run_id: &str, instance_id: &str, state: RunState) -> HoldId {
        let hold_id = HoldId::parse(&format!("hold-{run_id}")).expect("valid id");
        let hold = Command::Hold {
            account_id: account(),
            hold_id: hold_id.clone(),
            amount: Amount::parse("10").expect("valid amount"),
            ttl_seconds: 1200,
            reference: None,
            metadata: "{}".to_owned(),
        };
        let executed =
            self.store.execute(Request::with_key(hold, &format!("{run_id}:hold"), "hold")).await.expect("answers");
        assert!(matches!(executed, Executed::Fresh(Ok(_))), "{executed:?}");
        let now = self.clock.now();
        let data = RunData { problem: "2+2".to_owned(), catalog_version: "v".to_owned(), ..RunData::default() };
        let record = RunRecord {
            run_id: RunId::parse(run_id).expect("valid id"),
            account_id: account(),
            thread_id: ThreadId::parse(&format!("thread-{run_id}")).expect("valid id"),
            turn_index: 0,
            state: RunState::Running,
            instance_id: instance_id.to_owned(),
            hold_id: Some(hold_id.clone()),
            hold_resolution: data.hold_resolution(Some(&hold_id)),
            created_at: now,
            updated_at: now,
            data: data.to_text(),
        };
        self.store.create_run(&record).await.expect("answers").expect("created");
        if state != RunState::Running {
            let finished = RunRecord { state, ..record };
            assert!(self.store.update_run(&finished).await.expect("answers"));
        }
        hold_id
    }

    async fn hold_state(&self, hold_id: &HoldId) -> HoldState {
        self.store.hold(hold_id).await.expect("answers").expect("the hold exists").state
    }

    async fn run(&self, run_id: &str) -> (RunRecord, RunData) {
        let record =
            self.store.run(&RunId::parse(run_id).expect("valid id")).await.expect("answers").expect("the run exists");
        let data = RunData::from_text(&record.data).expect("decodable run data");
        (record, data)
    }

    async fn entries(&self, kind: EntryKind) -> usize {
        let entries = self.store.entries(&account(), 0, 1000).await.expect("answers");
        entries.iter().filter(|entry| entry.kind == kind).count()
    }

    async fn recover(&self) -> RecoveryReport {
        self.engine.recover_once().await.expect("recovery answers")
    }
}

/// (a) A run left running by a dead instance (no lease row at all) is released and interrupted
/// by one sweep, 1 second after it started — not after the 1200 s TTL — and exactly once.
#[tokio::test]
async fn a_dead_instances_run_is_released_and_interrupted_once() {
    let s = setup(|_| {}).await;
    let hold_id = s.run_with_hold("run-dead", "dead-instance", RunState::Running).await;
    s.clock.advance_seconds(1);

    let report = s.recover().await;
    assert_eq!((report.interrupted, report.released, report.release_failures), (1, 1, 0), "{report:?}");
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Released);
    let (record, data) = s.run("run-dead").await;
    assert_eq!(record.state, RunState::Interrupted);
    assert!(data.hold_resolved);
    assert_eq!(data.error.map(|error| error.code), Some(RunErrorCode::Interrupted));
    let balances = s.store.account(&account()).await.expect("answers").expect("exists").balances;
    assert_eq!(balances.held, Amount::ZERO, "nothing stays reserved");

    let again = s.recover().await;
    assert_eq!(again, RecoveryReport::default(), "a second sweep changes nothing");
    assert_eq!(s.run("run-dead").await.0, record);
    assert_eq!(s.entries(EntryKind::Release).await, 1, "one release in the journal");
}

/// (a') A restart recovers at once: the background task sweeps when it starts.
#[tokio::test]
async fn the_background_task_recovers_at_start_and_drops_its_lease_at_shutdown() {
    let s = setup(|_| {}).await;
    let hold_id = s.run_with_hold("run-dead", "dead-instance", RunState::Running).await;
    let background = s.engine.start_background();
    let dead = run_id("run-dead");
    s.wait_for_run(&dead, "recovery at start", |run| run.state == RunState::Interrupted).await;
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Released);
    let far = s.clock.now().plus_seconds(3600);
    let leases = s.store.lapsed_instances(far, 10).await.expect("answers");
    assert_eq!(leases.iter().map(|lease| lease.instance_id.as_str()).collect::<Vec<_>>(), vec!["me"], "lease taken");

    assert!(s.engine.shutdown(Duration::from_secs(5)).await);
    tokio::time::timeout(Duration::from_secs(5), background).await.expect("stops").expect("no panic");
    assert!(s.store.lapsed_instances(far, 10).await.expect("answers").is_empty(), "lease dropped");
}

/// (b) A live instance's running run is left alone while its lease is renewed, and recovered once
/// the lease lapses.
#[tokio::test]
async fn a_live_instances_run_is_recovered_only_after_its_lease_lapses() {
    let s = setup(|_| {}).await;
    let hold_id = s.run_with_hold("run-live", "other", RunState::Running).await;
    for _ in 0..3 {
        let now = s.clock.now();
        s.store.renew_instance("other", now, now.plus_seconds(15)).await.expect("answers");
        s.clock.advance_seconds(10);
        assert_eq!(s.recover().await, RecoveryReport::default(), "lease renewed: untouched");
        assert_eq!(s.run("run-live").await.0.state, RunState::Running);
        assert_eq!(s.hold_state(&hold_id).await, HoldState::Pending);
    }
    s.clock.advance_seconds(5);
    let report = s.recover().await;
    assert_eq!((report.interrupted, report.released), (1, 1), "{report:?}");
    assert_eq!(s.run("run-live").await.0.state, RunState::Interrupted);
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Released);
}

/// The engine's own running runs are never recovered by itself, even without a lease row.
#[tokio::test]
async fn own_runs_are_never_recovered() {
    let s = setup(|_| {}).await;
    let hold_id = s.run_with_hold("run-mine", "me", RunState::Running).await;
    s.clock.advance_seconds(100);
    assert_eq!(s.recover().await, RecoveryReport::default());
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Pending);
}

/// (d) A terminal run whose release failed (`hold_resolved == false`) gets its hold released by
/// the next sweep, once.
#[tokio::test]
async fn a_failed_release_is_retried_by_recovery() {
    let s = setup(|_| {}).await;
    let hold_id = s.run_with_hold("run-failed", "me", RunState::Failed).await;
    let resolved = s.run_with_hold("run-fine", "me", RunState::Canceled).await;
    {
        // run-fine's release succeeded earlier: recovery must leave it as it is.
        let (record, mut data) = s.run("run-fine").await;
        data.hold_resolved = true;
        assert!(s.store.update_run(&RunRecord { data: data.to_text(), ..record }).await.expect("answers"));
    }

    let report = s.recover().await;
    assert_eq!((report.interrupted, report.released, report.release_failures), (0, 1, 0), "{report:?}");
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Released);
    let (record, data) = s.run("run-failed").await;
    assert_eq!(record.state, RunState::Failed, "the state stays");
    assert!(data.hold_resolved);
    assert_eq!(s.hold_state(&resolved).await, HoldState::Pending, "a resolved run is not touched");
    assert_eq!(s.recover().await, RecoveryReport::default());
    assert_eq!(s.entries(EntryKind::Release).await, 1);
}

/// (c) A live run whose provider answers after (hold TTL − margin) keeps its hold: the extender
/// moves the expiry, so the settler still captures after the original expiry has passed.
#[tokio::test]
async fn a_long_runs_hold_is_extended_and_settles() {
    let s = setup(|config| {
        config.hold_ttl_seconds = 60;
        config.hold_extend_margin_seconds = 30;
    })
    .await;
    // The answer waits at a gate: the run stays live, its hold pending, until the test is done.
    let answer = Gate::new();
    s.fake.on(Purpose::Router, FakeReply::route(true));
    s.fake.on(Purpose::GeneralChat, FakeReply::text("hello").gated(&answer));
    let started = s.engine.start_solve(support::solve("hi")).await.expect("started");
    let hold_id = HoldId::parse(&format!("hold-{}", started.run_id)).expect("valid id");
    let frames = started.channel.follow(None);
    tokio::pin!(frames);
    while let Some(frame) = frames.next().await {
        if frame.kind == EventKind::CreditReserved {
            break;
        }
    }
    let first_expiry = s.store.hold(&hold_id).await.expect("answers").expect("the hold was taken").expires_at;
    assert_eq!(s.engine.extend_holds_once().await, 0, "not due yet: expires in 60 s, margin 30 s");

    s.clock.advance_seconds(40);
    assert_eq!(s.engine.extend_holds_once().await, 1, "due: expires in 20 s");
    let extended = s.store.hold(&hold_id).await.expect("answers").expect("exists");
    assert_eq!(extended.state, HoldState::Pending);
    assert_eq!(extended.expires_at, s.clock.now().plus_seconds(60));
    assert_eq!(s.entries(EntryKind::Extend).await, 1);

    s.clock.advance_seconds(30);
    assert!(s.clock.now() > first_expiry, "the original expiry has passed");
    answer.open();
    let last = s.run_to_end(&started).await.pop().expect("frames after the hold");
    assert_eq!(last.kind, EventKind::Done);
    let state = s.store.run(&started.run_id).await.expect("answers").expect("exists").state;
    assert_eq!(state, RunState::Succeeded);
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Captured);
    assert_eq!(s.entries(EntryKind::Expire).await, 0);
}

/// A process that died after its settler's final capture committed, but before it recorded the
/// run as succeeded, completed the turn: recovery records it as settled, not interrupted, and
/// releases nothing (found by the fault-injection suite's long form on PostgreSQL).
#[tokio::test]
async fn a_run_settled_just_before_its_server_died_is_recorded_as_settled() {
    let s = setup(|_| {}).await;
    let hold_id = s.run_with_hold("run-settled", "dead-instance", RunState::Running).await;
    let capture = Command::Capture {
        hold_id: hold_id.clone(),
        amount: Amount::parse("4").expect("valid amount"),
        is_final: true,
        overage: ledger::Overage::Reject,
    };
    let executed = s.store.execute(Request::with_key(capture, "run-settled:settle", "settle")).await.expect("answers");
    assert!(matches!(executed, Executed::Fresh(Ok(_))), "{executed:?}");
    s.clock.advance_seconds(1);

    let report = s.recover().await;
    assert_eq!((report.interrupted, report.released), (1, 0), "{report:?}");
    let (record, data) = s.run("run-settled").await;
    assert_eq!(record.state, RunState::Succeeded);
    let credits = |text: &str| Some(Amount::parse(text).expect("valid amount"));
    assert_eq!((data.captured, data.refunded), (credits("4"), credits("6")));
    assert_eq!(data.actual, credits("4"));
    assert!(data.error.is_none() && data.hold_resolved);
    assert_eq!(s.hold_state(&hold_id).await, HoldState::Captured);
    assert_eq!(s.entries(EntryKind::Release).await, 1, "only the settler's release of the rest");
}
