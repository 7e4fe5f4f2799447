//! Conformance checks of the [`RunStore`] contract: threads, runs (one per turn) and artifacts.
//!
//! The rule that matters most is that a thread never has two running runs, because two turns of
//! one thread must never hold credits at once; the checks drive it sequentially, after every
//! terminal state, and with 16 concurrent creators. The others pin down the details the run
//! engine relies on identically on every backend: turn numbering, which refusal wins, what
//! `update_run` may change, paging and ordering, and byte-exact artifacts.

use std::sync::Arc;

use futures::future::join_all;
use ledger::{AccountId, Amount, HoldId, HoldState, Timestamp};

use super::account;
use crate::ids::{ArtifactId, RunId, ThreadId};
use crate::keys::{KeyUse, KeyedRun, RecordedResponse};
use crate::runs::{
    Artifact, CreateRunRefusal, HoldResolution, InstanceLease, RunEndWritten, RunEventsWrite, RunRecord, RunSettle,
    RunSignal, RunState, RunStore, SettledHold, StoredFrame, RUN_EVENTS_PAGE_MAX,
};
use crate::{Clock, Idempotency, ManualClock, StoreError};

/// A fresh run store and the clock the checks take their timestamps from.
pub struct RunHarness {
    pub store: Arc<dyn RunStore>,
    pub clock: Arc<ManualClock>,
}

/// Typed helpers, so the checks read like the contract.
impl RunHarness {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A new running run of `account_id` in `thread_id`, created now by instance `i1`.
    pub fn record(&self, run_id: &str, account_id: &str, thread_id: &str) -> RunRecord {
        let now = self.now();
        RunRecord {
            run_id: run_of(run_id),
            account_id: account(account_id),
            thread_id: thread_of(thread_id),
            turn_index: 0,
            state: RunState::Running,
            instance_id: "i1".to_owned(),
            hold_id: None,
            hold_resolution: HoldResolution::None,
            created_at: now,
            updated_at: now,
            data: format!(r#"{{"run":"{run_id}","plan":["solve"]}}"#),
        }
    }

    pub async fn create(&self, run: &RunRecord) -> Result<RunRecord, CreateRunRefusal> {
        self.store.create_run(run).await.expect("store answers")
    }

    /// Creates a run that must be accepted, and returns it as stored.
    pub async fn start(&self, run_id: &str, account_id: &str, thread_id: &str) -> RunRecord {
        let run = self.record(run_id, account_id, thread_id);
        self.create(&run).await.unwrap_or_else(|refusal| panic!("run {run_id} refused: {refusal:?}"))
    }

    /// Moves an existing run to `state`.
    pub async fn finish(&self, run_id: &str, state: RunState) {
        let mut run = self.read(run_id).await.unwrap_or_else(|| panic!("run {run_id} exists"));
        run.state = state;
        run.updated_at = self.now();
        assert!(self.store.update_run(&run).await.expect("store answers"), "run {run_id} updated");
    }

    pub async fn read(&self, run_id: &str) -> Option<RunRecord> {
        self.store.run(&run_of(run_id)).await.expect("store answers")
    }

    pub async fn turns(&self, thread_id: &str, after_turn: Option<u32>, limit: u32) -> Vec<u32> {
        let runs = self.store.thread_runs(&thread_of(thread_id), after_turn, limit).await.expect("store answers");
        assert!(runs.iter().all(|run| run.thread_id == thread_id), "only the thread's runs: {runs:?}");
        runs.iter().map(|run| run.turn_index).collect()
    }

    pub async fn in_state(&self, state: RunState, instance_id: Option<&str>, limit: u32) -> Vec<String> {
        let runs = self.store.runs_in_state(state, instance_id, limit).await.expect("store answers");
        assert!(runs.iter().all(|run| run.state == state), "only runs in {state:?}: {runs:?}");
        runs.into_iter().map(|run| run.run_id.to_string()).collect()
    }
}

/// Run, thread and artifact ids in these checks are written as text; these parse it.
pub fn run_of(text: &str) -> RunId {
    RunId::parse(text).expect("test run ids are valid")
}

pub fn thread_of(text: &str) -> ThreadId {
    ThreadId::parse(text).expect("test thread ids are valid")
}

fn artifact_of(text: &str) -> ArtifactId {
    ArtifactId::parse(text).expect("test artifact ids are valid")
}

fn hold_id(text: &str) -> HoldId {
    HoldId::parse(text).expect("test hold ids are valid")
}

/// The stored record is the request with `turn_index` assigned and the state `Running` (what the
/// request said of either is ignored), and it reads back equal, every field intact.
pub async fn runs_create_then_read_back(h: RunHarness) {
    let mut run = h.record("r1", "u", "t1");
    run.turn_index = 42;
    run.state = RunState::Succeeded;
    run.instance_id = "instance-é".to_owned();
    run.hold_id = Some(hold_id("h1"));
    run.updated_at = run.created_at.plus_micros(1);
    run.data = r#"{"answer":"x² = 4 → x = ±2","log":[{"node":"router","cost":"1"}]}"#.to_owned();
    let stored = h.create(&run).await.expect("created");
    assert_eq!(stored, RunRecord { turn_index: 0, state: RunState::Running, ..run.clone() });
    assert_eq!(h.read("r1").await, Some(stored));
    assert_eq!(h.store.thread_account(&thread_of("t1")).await.unwrap(), Some(account("u")));

    assert_eq!(h.read("unknown").await, None);
    assert_eq!(h.store.thread_account(&thread_of("unknown")).await.unwrap(), None);
    assert!(h.store.thread_runs(&thread_of("unknown"), None, 10).await.unwrap().is_empty());
}

/// Turns are numbered 0, 1, 2, … per thread, independently of other threads.
pub async fn runs_turn_index_increments_per_thread(h: RunHarness) {
    for turn in 0..3_u32 {
        let a = h.start(&format!("a{turn}"), "u", "ta").await;
        assert_eq!(a.turn_index, turn);
        h.finish(a.run_id.as_str(), RunState::Succeeded).await;
        if turn < 2 {
            let b = h.start(&format!("b{turn}"), "u", "tb").await;
            assert_eq!(b.turn_index, turn);
            h.finish(b.run_id.as_str(), RunState::Failed).await;
        }
    }
    assert_eq!(h.turns("ta", None, 10).await, vec![0, 1, 2]);
    assert_eq!(h.turns("tb", None, 10).await, vec![0, 1]);
    assert_eq!(h.read("a2").await.unwrap().turn_index, 2);
}

/// A second run in a thread with a running run is refused, naming the running one, and leaves
/// nothing behind; once the running run reaches any terminal state, the next one is accepted.
pub async fn runs_second_running_run_is_busy(h: RunHarness) {
    let first = h.start("first", "u", "t").await;
    let refused = h.create(&h.record("second", "u", "t")).await;
    assert_eq!(refused, Err(CreateRunRefusal::ThreadBusy { run_id: run_of("first") }));
    assert_eq!(h.read("second").await, None);
    assert_eq!(h.turns("t", None, 10).await, vec![0]);
    // Busy is per thread: another thread of the same account runs at the same time.
    h.start("elsewhere", "u", "t-other").await;

    let mut previous = first.run_id;
    for (index, state) in RunState::ALL.into_iter().filter(|state| state.is_terminal()).enumerate() {
        h.finish(previous.as_str(), state).await;
        let next = h.start(&format!("next{index}"), "u", "t").await;
        assert_eq!(next.turn_index as usize, index + 1, "accepted after {state:?}");
        let refused = h.create(&h.record(&format!("extra{index}"), "u", "t")).await;
        assert_eq!(refused, Err(CreateRunRefusal::ThreadBusy { run_id: next.run_id.clone() }));
        previous = next.run_id;
    }
    assert_eq!(h.turns("t", None, 10).await, vec![0, 1, 2, 3, 4]);
}

/// A thread belongs to the account of its first run: another account cannot add a turn, and
/// that refusal comes before "busy" (it must not learn whether the thread is running).
pub async fn runs_thread_of_another_account(h: RunHarness) {
    h.start("mine", "u", "t").await;
    assert_eq!(h.create(&h.record("theirs", "v", "t")).await, Err(CreateRunRefusal::ThreadOfAnotherAccount));
    h.finish("mine", RunState::Succeeded).await;
    assert_eq!(h.create(&h.record("theirs", "v", "t")).await, Err(CreateRunRefusal::ThreadOfAnotherAccount));
    assert_eq!(h.read("theirs").await, None);
    assert_eq!(h.store.thread_account(&thread_of("t")).await.unwrap(), Some(account("u")));
    assert_eq!(h.turns("t", None, 10).await, vec![0]);
    // The other account's own threads are unaffected.
    assert_eq!(h.start("theirs", "v", "t-v").await.turn_index, 0);
}

/// A run id is used once, in any thread; the refusal creates no thread. While the run with that
/// id is still running in the same thread, "busy" comes first (the enum's order).
pub async fn runs_duplicate_run_id(h: RunHarness) {
    let original = h.start("r", "u", "t1").await;
    assert_eq!(h.create(&h.record("r", "u", "t1")).await, Err(CreateRunRefusal::ThreadBusy { run_id: run_of("r") }));
    h.finish("r", RunState::Succeeded).await;
    assert_eq!(h.create(&h.record("r", "u", "t1")).await, Err(CreateRunRefusal::DuplicateRunId));
    assert_eq!(h.create(&h.record("r", "u", "t2")).await, Err(CreateRunRefusal::DuplicateRunId));
    assert_eq!(h.create(&h.record("r", "v", "t3")).await, Err(CreateRunRefusal::DuplicateRunId));
    assert_eq!(h.store.thread_account(&thread_of("t2")).await.unwrap(), None, "a refused run creates no thread");
    assert_eq!(h.store.thread_account(&thread_of("t3")).await.unwrap(), None, "a refused run creates no thread");
    let read = h.read("r").await.unwrap();
    assert_eq!((read.thread_id.as_str(), read.turn_index, read.created_at), ("t1", 0, original.created_at));
    assert_eq!(h.turns("t1", None, 10).await, vec![0]);
}

/// `update_run` overwrites state, hold (and its resolution), data and `updated_at`, and nothing
/// else; an unknown run
/// is `false` and is not created; making a second run of a thread `Running` is an error that
/// changes nothing.
pub async fn runs_update_changes_only_mutable_fields(h: RunHarness) {
    let stored = h.start("r", "u", "t").await;
    h.clock.advance_seconds(5);
    let later = h.now();
    let update = RunRecord {
        run_id: run_of("r"),
        account_id: account("other"),
        thread_id: thread_of("other-thread"),
        turn_index: 9,
        state: RunState::Succeeded,
        instance_id: "other-instance".to_owned(),
        hold_id: Some(hold_id("h-r")),
        hold_resolution: HoldResolution::Resolved,
        created_at: later,
        updated_at: later,
        data: r#"{"answer":"done"}"#.to_owned(),
    };
    assert!(h.store.update_run(&update).await.unwrap());
    let expected = RunRecord {
        state: RunState::Succeeded,
        hold_id: Some(hold_id("h-r")),
        hold_resolution: HoldResolution::Resolved,
        updated_at: later,
        data: update.data.clone(),
        ..stored.clone()
    };
    assert_eq!(h.read("r").await, Some(expected.clone()));
    assert_eq!(h.store.thread_account(&thread_of("other-thread")).await.unwrap(), None);

    // The hold can be cleared again.
    let cleared = RunRecord { hold_id: None, hold_resolution: HoldResolution::None, ..expected.clone() };
    assert!(h.store.update_run(&cleared).await.unwrap());
    assert_eq!(h.read("r").await, Some(cleared.clone()));

    let unknown = RunRecord { run_id: run_of("ghost"), ..update.clone() };
    assert!(!h.store.update_run(&unknown).await.unwrap());
    assert_eq!(h.read("ghost").await, None);

    // Only `create_run` starts runs: reviving "r" while "r2" runs would break one-running-per-thread.
    h.start("r2", "u", "t").await;
    let revived = RunRecord { state: RunState::Running, ..cleared.clone() };
    let error = h.store.update_run(&revived).await.expect_err("a second running run is refused");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert_eq!(h.read("r").await, Some(cleared.clone()));
    // Updating the running run itself, still running, is fine.
    let mut running = h.read("r2").await.unwrap();
    running.data = r#"{"step":2}"#.to_owned();
    assert!(h.store.update_run(&running).await.unwrap());
    assert_eq!(h.read("r2").await, Some(running));
}

/// `thread_runs` pages by turn: `after_turn` is exclusive, `limit` bounds each page.
pub async fn runs_thread_runs_pages(h: RunHarness) {
    for turn in 0..5 {
        let run = h.start(&format!("r{turn}"), "u", "t").await;
        h.finish(run.run_id.as_str(), RunState::Succeeded).await;
        let other = h.start(&format!("o{turn}"), "u", "t-other").await;
        h.finish(other.run_id.as_str(), RunState::Succeeded).await;
    }
    assert_eq!(h.turns("t", None, 2).await, vec![0, 1]);
    assert_eq!(h.turns("t", Some(1), 2).await, vec![2, 3]);
    assert_eq!(h.turns("t", Some(3), 2).await, vec![4]);
    assert_eq!(h.turns("t", Some(4), 2).await, Vec::<u32>::new());
    assert_eq!(h.turns("t", Some(0), 100).await, vec![1, 2, 3, 4]);
    assert_eq!(h.turns("t", None, 0).await, Vec::<u32>::new());
    assert_eq!(h.turns("t", Some(u32::MAX), 10).await, Vec::<u32>::new());
    let page = h.store.thread_runs(&thread_of("t"), Some(1), 1).await.unwrap();
    assert_eq!(page, vec![h.read("r2").await.unwrap()], "pages hold whole records");
}

/// `runs_in_state` lists oldest first (by `created_at`, not by insertion), optionally of one
/// instance only, at most `limit`.
pub async fn runs_in_state_oldest_first(h: RunHarness) {
    let base = h.now();
    // (run, thread, instance, created at +seconds, final state)
    let runs = [
        ("late", "t1", "i1", 30, RunState::Running),
        ("early", "t2", "i2", 10, RunState::Running),
        ("middle", "t3", "i1", 20, RunState::Running),
        ("first", "t4", "i1", 5, RunState::Running),
        ("done", "t5", "i1", 1, RunState::Succeeded),
        ("dead", "t6", "i2", 2, RunState::Interrupted),
    ];
    for (run_id, thread_id, instance_id, seconds, state) in runs {
        let mut run = h.record(run_id, "u", thread_id);
        run.instance_id = instance_id.to_owned();
        run.created_at = base.plus_seconds(seconds);
        run.updated_at = run.created_at;
        h.create(&run).await.expect("created");
        if state != RunState::Running {
            h.finish(run_id, state).await;
        }
    }
    assert_eq!(h.in_state(RunState::Running, None, 10).await, vec!["first", "early", "middle", "late"]);
    assert_eq!(h.in_state(RunState::Running, None, 2).await, vec!["first", "early"]);
    assert_eq!(h.in_state(RunState::Running, Some("i1"), 10).await, vec!["first", "middle", "late"]);
    assert_eq!(h.in_state(RunState::Running, Some("i1"), 1).await, vec!["first"]);
    assert_eq!(h.in_state(RunState::Running, Some("i2"), 10).await, vec!["early"]);
    assert_eq!(h.in_state(RunState::Running, Some("i3"), 10).await, Vec::<String>::new());
    assert_eq!(h.in_state(RunState::Running, None, 0).await, Vec::<String>::new());
    assert_eq!(h.in_state(RunState::Succeeded, None, 10).await, vec!["done"]);
    assert_eq!(h.in_state(RunState::Interrupted, Some("i2"), 10).await, vec!["dead"]);
    assert_eq!(h.in_state(RunState::Interrupted, Some("i1"), 10).await, Vec::<String>::new());
    assert_eq!(h.in_state(RunState::Failed, None, 10).await, Vec::<String>::new());
    let listed = h.store.runs_in_state(RunState::Succeeded, None, 10).await.unwrap();
    assert_eq!(listed, vec![h.read("done").await.unwrap()], "lists hold whole records");
}

/// Artifacts come back byte for byte (binary, empty and 1 MiB); an id is stored once, and a
/// second put of it is an error that keeps the first; an unknown id reads as `None`.
pub async fn runs_artifacts_round_trip(h: RunHarness) {
    let now = h.now();
    let artifact = |artifact_id: &str, content_type: &str, bytes: Vec<u8>| Artifact {
        artifact_id: artifact_of(artifact_id),
        account_id: account("u"),
        run_id: run_of("r"),
        content_type: content_type.to_owned(),
        bytes,
        created_at: now,
    };
    let binary = artifact("bin", "application/octet-stream", vec![0x00, 0xff, 0xfe, 0x80, 0xc3, 0x28, 0x00, 0x7f]);
    let large: Vec<u8> = (0..1_048_576_u32).map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let pdf = artifact("pdf", "application/pdf", large);
    let empty = artifact("empty", "text/plain; charset=utf-8", Vec::new());
    for stored in [&binary, &pdf, &empty] {
        h.store.put_artifact(stored).await.expect("stored");
    }
    for stored in [&binary, &pdf, &empty] {
        let read = h.store.artifact(&stored.artifact_id).await.unwrap().expect("exists");
        assert_eq!(read.bytes.len(), stored.bytes.len(), "{}", stored.artifact_id);
        assert!(read == *stored, "artifact {} reads back unchanged", stored.artifact_id);
    }

    let again = artifact("bin", "text/plain", b"replacement".to_vec());
    let error = h.store.put_artifact(&again).await.expect_err("a second put of one id is refused");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(h.store.artifact(&artifact_of("bin")).await.unwrap() == Some(binary), "the first artifact stays");
    assert_eq!(h.store.artifact(&artifact_of("unknown")).await.unwrap(), None);
}

/// 16 creators racing on one new thread: exactly one run is created, every other one is told
/// which; then the same race on the existing thread once that run finished.
pub async fn runs_concurrent_creates_one_wins(h: RunHarness) {
    let h = Arc::new(h);
    for round in 0..2_u32 {
        let tasks = (0..16).map(|index| {
            let h = h.clone();
            tokio::spawn(async move { h.create(&h.record(&format!("c{round}-{index}"), "u", "t")).await })
        });
        let results: Vec<_> = join_all(tasks).await.into_iter().map(|joined| joined.expect("task")).collect();
        let winners: Vec<&RunRecord> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0].clone();
        assert_eq!(winner.turn_index, round);
        let busy = CreateRunRefusal::ThreadBusy { run_id: winner.run_id.clone() };
        assert!(
            results.iter().filter_map(|result| result.as_ref().err()).all(|refusal| *refusal == busy),
            "{results:?}"
        );
        assert_eq!(h.turns("t", None, 100).await, (0..=round).collect::<Vec<u32>>(), "only the winner was added");
        assert_eq!(h.read(winner.run_id.as_str()).await, Some(winner.clone()));
        h.finish(winner.run_id.as_str(), RunState::Succeeded).await;
    }
}

/// 16 creators on 16 new threads of two accounts: all are accepted, each as turn 0.
pub async fn runs_concurrent_creates_on_distinct_threads(h: RunHarness) {
    let h = Arc::new(h);
    let tasks = (0..16).map(|index| {
        let h = h.clone();
        tokio::spawn(async move {
            let owner = if index % 2 == 0 { "u" } else { "v" };
            h.create(&h.record(&format!("d{index}"), owner, &format!("t{index}"))).await
        })
    });
    for (index, joined) in join_all(tasks).await.into_iter().enumerate() {
        let run = joined.expect("task").expect("accepted");
        assert_eq!((run.turn_index, run.thread_id), (0, thread_of(&format!("t{index}"))));
    }
    assert_eq!(h.in_state(RunState::Running, None, 100).await.len(), 16);
    let owner: Option<AccountId> = h.store.thread_account(&thread_of("t3")).await.unwrap();
    assert_eq!(owner, Some(account("v")));
}

/// One run id raced into 16 new threads: exactly one run is created; the others are duplicates
/// and leave no thread behind.
pub async fn runs_concurrent_same_run_id(h: RunHarness) {
    let h = Arc::new(h);
    let tasks = (0..16).map(|index| {
        let h = h.clone();
        tokio::spawn(async move { h.create(&h.record("same", "u", &format!("t{index}"))).await })
    });
    let results: Vec<_> = join_all(tasks).await.into_iter().map(|joined| joined.expect("task")).collect();
    let winners: Vec<&RunRecord> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let refusals = results.iter().filter_map(|result| result.as_ref().err());
    assert!(refusals.clone().all(|refusal| *refusal == CreateRunRefusal::DuplicateRunId), "{results:?}");
    assert_eq!(refusals.count(), 15);
    let winner = winners[0].clone();
    assert_eq!(h.read("same").await, Some(winner.clone()));
    for index in 0..16 {
        let thread_id = thread_of(&format!("t{index}"));
        let owner = h.store.thread_account(&thread_id).await.unwrap();
        assert_eq!(owner.is_some(), thread_id == winner.thread_id, "thread {thread_id}");
    }
}

/// Leases: renewing is an upsert that keeps `started_at`; a lease lapses exactly at
/// `lease_until` (as the clock moves, no sleep); a dropped lease is gone; the list is ordered by
/// lapse time and bounded by `limit`.
pub async fn runs_instance_leases(h: RunHarness) {
    let start = h.now();
    h.store.renew_instance("a", start, start.plus_seconds(10)).await.expect("store answers");
    h.store.renew_instance("b", start, start.plus_seconds(20)).await.expect("store answers");
    h.store.renew_instance("c", start, start.plus_seconds(30)).await.expect("store answers");
    assert!(h.store.lapsed_instances(start, 10).await.unwrap().is_empty(), "nothing lapsed yet");
    assert!(h.store.lapsed_instances(start.plus_seconds(9), 10).await.unwrap().is_empty());

    h.clock.advance_seconds(10);
    let lapsed = h.store.lapsed_instances(h.now(), 10).await.unwrap();
    let expected =
        InstanceLease { instance_id: "a".to_owned(), lease_until: start.plus_seconds(10), started_at: start };
    assert_eq!(lapsed, vec![expected], "a lease lapses at lease_until");

    // A renewal moves lease_until and keeps started_at.
    h.store.renew_instance("a", h.now(), h.now().plus_seconds(100)).await.unwrap();
    assert!(h.store.lapsed_instances(h.now(), 10).await.unwrap().is_empty(), "renewed");
    h.clock.advance_seconds(100);
    let lapsed = h.store.lapsed_instances(h.now(), 10).await.unwrap();
    let ids: Vec<&str> = lapsed.iter().map(|lease| lease.instance_id.as_str()).collect();
    assert_eq!(ids, vec!["b", "c", "a"], "earliest lapse first");
    assert_eq!(lapsed[2].started_at, start, "started_at kept by the renewal");
    assert_eq!(lapsed[2].lease_until, start.plus_seconds(110));
    let first: Vec<String> =
        h.store.lapsed_instances(h.now(), 2).await.unwrap().into_iter().map(|lease| lease.instance_id).collect();
    assert_eq!(first, vec!["b", "c"], "bounded by limit");

    assert!(h.store.drop_instance("b").await.unwrap());
    assert!(!h.store.drop_instance("b").await.unwrap(), "already dropped");
    assert!(!h.store.drop_instance("unknown").await.unwrap());
    let ids: Vec<String> =
        h.store.lapsed_instances(h.now(), 10).await.unwrap().into_iter().map(|lease| lease.instance_id).collect();
    assert_eq!(ids, vec!["c", "a"]);
}

/// Orphaned runs: running runs of instances without a live lease (none, or lapsed), never those
/// of the excepted instance, never terminal ones; oldest first, bounded by `limit`.
pub async fn runs_orphaned_by_lease(h: RunHarness) {
    let now = h.now();
    let run = |run_id: &str, thread_id: &str, instance_id: &str, age_seconds: i64| {
        let mut run = h.record(run_id, "u", thread_id);
        run.instance_id = instance_id.to_owned();
        run.created_at = now.plus_micros(-age_seconds * 1_000_000);
        run
    };
    let runs = [
        run("live", "t1", "alive", 50),
        run("mine", "t2", "me", 40),
        run("leaseless", "t3", "ghost", 30),
        run("lapsing", "t4", "dying", 20),
        run("lapsing2", "t5", "dying", 10),
        run("done", "t6", "ghost", 60),
    ];
    for run in &runs {
        h.create(run).await.expect("created");
    }
    h.finish("done", RunState::Failed).await;
    h.store.renew_instance("alive", now, now.plus_seconds(100)).await.unwrap();
    h.store.renew_instance("dying", now, now.plus_seconds(5)).await.unwrap();
    let store = h.store.clone();
    let orphaned = |at, limit| {
        let store = store.clone();
        async move {
            let runs = store.orphaned_runs("me", at, limit).await.expect("store answers");
            runs.into_iter().map(|run| run.run_id.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(orphaned(now, 10).await, vec!["leaseless"], "no lease row: orphaned at once");
    assert_eq!(orphaned(now.plus_seconds(5), 10).await, vec!["leaseless", "lapsing", "lapsing2"]);
    assert_eq!(orphaned(now.plus_seconds(5), 2).await, vec!["leaseless", "lapsing"], "bounded, oldest first");
    assert_eq!(orphaned(now.plus_seconds(100), 10).await, vec!["live", "leaseless", "lapsing", "lapsing2"]);
    h.finish("leaseless", RunState::Interrupted).await;
    assert_eq!(orphaned(now, 10).await, Vec::<String>::new(), "terminal runs are not orphaned");
}

/// Unresolved runs: terminal runs whose hold is still pending (a release that failed), least
/// recently updated first, bounded; running runs, resolved ones and runs without a hold never.
/// What the engine's document says is not looked at: the typed column decides.
pub async fn runs_unresolved_holds(h: RunHarness) {
    let document = r#"{"problem":"x","hold_resolved":true}"#.to_owned();
    let cases: [(&str, RunState, Option<&str>, HoldResolution); 5] = [
        ("a", RunState::Failed, Some("ha"), HoldResolution::Pending),
        ("b", RunState::Canceled, Some("hb"), HoldResolution::Resolved),
        ("c", RunState::Running, Some("hc"), HoldResolution::Pending),
        ("d", RunState::Interrupted, Some("hd"), HoldResolution::Pending),
        ("e", RunState::Failed, None, HoldResolution::None),
    ];
    for (index, (run_id, state, hold, resolution)) in cases.into_iter().enumerate() {
        let thread_id = format!("t-{run_id}");
        h.start(run_id, "u", &thread_id).await;
        let mut run = h.read(run_id).await.expect("exists");
        run.state = state;
        run.hold_id = hold.map(hold_id);
        run.hold_resolution = resolution;
        run.data = document.clone();
        run.updated_at = h.now().plus_seconds(10 - index as u64);
        assert!(h.store.update_run(&run).await.unwrap());
        assert_eq!(h.read(run_id).await.map(|run| run.hold_resolution), Some(resolution));
    }
    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|run| run.run_id).collect::<Vec<_>>();
    assert_eq!(ids(h.store.unresolved_runs(10).await.unwrap()), vec!["d", "a"], "least recently updated first");
    assert_eq!(ids(h.store.unresolved_runs(1).await.unwrap()), vec!["d"]);
    // Resolved at last: off the list.
    let mut d = h.read("d").await.unwrap();
    d.hold_resolution = HoldResolution::Resolved;
    assert!(h.store.update_run(&d).await.unwrap());
    assert_eq!(ids(h.store.unresolved_runs(10).await.unwrap()), vec!["a"]);
}

/// A stored frame of `run_id` at `seq` (its text names both, so a mix-up shows).
pub fn frame(h: &RunHarness, run_id: &str, seq: u64, kind: &str) -> StoredFrame {
    StoredFrame {
        run_id: run_of(run_id),
        seq,
        kind: kind.to_owned(),
        at: h.now(),
        data: format!(r#"{{"run":"{run_id}","seq":{seq},"text":"ü → ∑"}}"#),
    }
}

fn events_write(frames: Vec<StoredFrame>, evicted: &[(&str, u64)], run: Option<RunRecord>) -> RunEventsWrite {
    let evicted = evicted.iter().map(|(run_id, seq)| (run_of(run_id), *seq)).collect();
    RunEventsWrite { frames, evicted, run }
}

async fn seqs(h: &RunHarness, run_id: &str, after: Option<u64>, limit: u32) -> Vec<u64> {
    let frames = h.store.run_events(&run_of(run_id), after, limit).await.expect("store answers");
    assert!(frames.iter().all(|frame| frame.run_id == run_id), "only the run's frames: {frames:?}");
    frames.into_iter().map(|frame| frame.seq).collect()
}

/// Frames are stored byte-exact and read back in seq order, after a cursor, bounded; evicted
/// frames are deleted in the same write; writing a stored frame again changes nothing (a retried
/// write); runs do not see each other's frames; the highest stored seq is known.
pub async fn runs_events_append_read_and_evict(h: RunHarness) {
    h.start("r1", "u", "t1").await;
    h.start("r2", "u", "t2").await;
    let first: Vec<StoredFrame> = (0..5).map(|seq| frame(&h, "r1", seq, "token")).collect();
    let write = events_write(first.clone(), &[], None);
    assert!(h.store.write_run_events(&write).await.unwrap());
    assert_eq!(h.store.run_events(&run_of("r1"), None, 100).await.unwrap(), first, "byte-exact, in order");
    assert_eq!(seqs(&h, "r1", Some(1), 100).await, vec![2, 3, 4], "strictly after the cursor");
    assert_eq!(seqs(&h, "r1", Some(0), 2).await, vec![1, 2], "bounded by limit");
    assert_eq!(seqs(&h, "r1", Some(4), 100).await, Vec::<u64>::new());
    assert_eq!(seqs(&h, "r2", None, 100).await, Vec::<u64>::new());

    // Out of order within a write, a frame written again (changed: the first stays), another
    // run's frames, and two evictions (one of a frame never stored: nothing happens).
    let mut again = frame(&h, "r1", 4, "token");
    again.data = "changed".to_owned();
    let frames = vec![frame(&h, "r1", 7, "done"), frame(&h, "r2", 0, "token"), again, frame(&h, "r1", 5, "token")];
    let write = events_write(frames, &[("r1", 1), ("r1", 3), ("r2", 9)], None);
    assert!(h.store.write_run_events(&write).await.unwrap());
    assert_eq!(seqs(&h, "r1", None, 100).await, vec![0, 2, 4, 5, 7]);
    let stored = h.store.run_events(&run_of("r1"), Some(3), 1).await.unwrap();
    assert_eq!(stored, vec![first[4].clone()], "a stored frame is never overwritten");
    assert_eq!(seqs(&h, "r2", None, 100).await, vec![0]);
    assert_eq!(h.store.last_run_event_seq(&run_of("r1")).await.unwrap(), Some(7));
    assert_eq!(h.store.last_run_event_seq(&run_of("r2")).await.unwrap(), Some(0));
    assert_eq!(h.store.last_run_event_seq(&run_of("ghost")).await.unwrap(), None);

    // A page is capped whatever the caller asks.
    let many: Vec<StoredFrame> =
        (100..100 + u64::from(RUN_EVENTS_PAGE_MAX) + 5).map(|seq| frame(&h, "r2", seq, "token")).collect();
    assert!(h.store.write_run_events(&events_write(many, &[], None)).await.unwrap());
    assert_eq!(seqs(&h, "r2", Some(0), u32::MAX).await.len(), RUN_EVENTS_PAGE_MAX as usize);
}

/// A run's last frames and its final record are written together: both, or (an unknown run)
/// neither; a write may not make a second run of a thread running.
pub async fn runs_events_with_the_final_record(h: RunHarness) {
    let started = h.start("r", "u", "t").await;
    h.clock.advance_seconds(3);
    let finished = RunRecord {
        state: RunState::Succeeded,
        hold_resolution: HoldResolution::Resolved,
        hold_id: Some(hold_id("h")),
        updated_at: h.now(),
        data: r#"{"answer":"4"}"#.to_owned(),
        ..started.clone()
    };
    let write = events_write(vec![frame(&h, "r", 0, "token"), frame(&h, "r", 1, "done")], &[], Some(finished.clone()));
    assert!(h.store.write_run_events(&write).await.unwrap());
    assert_eq!(h.read("r").await, Some(finished.clone()));
    assert_eq!(seqs(&h, "r", None, 10).await, vec![0, 1]);

    let ghost = RunRecord { run_id: run_of("ghost"), ..finished.clone() };
    let write = events_write(vec![frame(&h, "ghost", 0, "done"), frame(&h, "r", 2, "token")], &[("r", 0)], Some(ghost));
    assert!(!h.store.write_run_events(&write).await.unwrap(), "an unknown run");
    assert_eq!(seqs(&h, "ghost", None, 10).await, Vec::<u64>::new(), "nothing was written");
    assert_eq!(seqs(&h, "r", None, 10).await, vec![0, 1], "nothing was written or deleted");

    h.start("r2", "u", "t").await;
    let revived = RunRecord { state: RunState::Running, ..finished.clone() };
    let write = events_write(vec![frame(&h, "r", 5, "token")], &[], Some(revived));
    let error = h.store.write_run_events(&write).await.expect_err("a second running run is refused");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert_eq!(seqs(&h, "r", None, 10).await, vec![0, 1], "all or nothing");
    assert_eq!(h.read("r").await, Some(finished));
}

/// A run's end and its settle are one transaction ([`RunStore::write_run_end`]): the capture,
/// the terminal record and the final frames commit together when the ledger answers as expected
/// (and a replay of the same settle is answered the same); otherwise (a rejection, another hold
/// than expected, an unknown run, a write that leaves the run running) nothing is written: the
/// hold stays as it was, the key stays unused, the run stays running without its final frames.
pub async fn runs_end_settles_with_the_record(h: RunHarness, credits: super::Harness) {
    credits.grant("u", "100").await;
    let hold = credits.hold("u", "30", 3_600).await.expect("the hold is taken");
    let started = h.start("r", "u", "t").await;
    h.clock.advance_seconds(2);
    let ended = RunRecord {
        state: RunState::Succeeded,
        hold_id: Some(hold.hold_id.clone()),
        hold_resolution: HoldResolution::Resolved,
        updated_at: h.now(),
        data: r#"{"answer":"4","captured":"12"}"#.to_owned(),
        ..started.clone()
    };
    let capture = |amount: &str| {
        let command = ledger::Command::Capture {
            hold_id: hold.hold_id.clone(),
            amount: super::cr(amount),
            is_final: true,
            overage: ledger::Overage::Reject,
        };
        crate::Request::with_key(command, "r:settle", amount)
    };
    let expected = |captured: &str| SettledHold {
        hold_id: hold.hold_id.clone(),
        state: HoldState::Captured,
        amount: super::cr("30"),
        captured: super::cr(captured),
    };
    let frames = vec![frame(&h, "r", 0, "token"), frame(&h, "r", 1, "credit_settled"), frame(&h, "r", 2, "done")];
    let write = events_write(frames.clone(), &[], Some(ended.clone()));

    // An unknown run: nothing reaches the ledger.
    let ghost = events_write(
        vec![frame(&h, "ghost", 0, "done")],
        &[],
        Some(RunRecord { run_id: run_of("ghost"), ..ended.clone() }),
    );
    let settle = RunSettle { request: capture("12"), expected: expected("12") };
    assert_eq!(h.store.write_run_end(&ghost, &settle).await.unwrap(), RunEndWritten::NoSuchRun);
    // A write that would leave the run running is a caller bug.
    let running = events_write(frames.clone(), &[], Some(started.clone()));
    let error = h.store.write_run_end(&running, &settle).await.expect_err("a settle ends its run");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    // The ledger leaves the hold otherwise than the record says: nothing is written.
    let wrong = RunSettle { request: capture("12"), expected: expected("13") };
    match h.store.write_run_end(&write, &wrong).await.unwrap() {
        RunEndWritten::Refused(crate::Executed::Fresh(Ok(_))) => {}
        other => panic!("expected a refusal of an unexpected capture, got {other:?}"),
    }
    // The ledger rejects the capture (more than the hold): reported, nothing written.
    let beyond = RunSettle { request: capture("31"), expected: expected("31") };
    match h.store.write_run_end(&write, &beyond).await.unwrap() {
        RunEndWritten::Refused(crate::Executed::Fresh(Err(ledger::Rejection::AmountExceedsHold { .. }))) => {}
        other => panic!("expected a rejected capture, got {other:?}"),
    }
    let untouched = credits.store.hold(&hold.hold_id).await.unwrap().expect("the hold exists");
    assert_eq!((untouched.state, untouched.captured), (HoldState::Pending, Amount::ZERO), "the hold is untouched");
    assert_eq!(h.read("r").await, Some(started.clone()), "the run still runs");
    assert_eq!(seqs(&h, "r", None, 10).await, Vec::<u64>::new(), "no frame was written");
    assert_eq!(credits.balances("u").await.held, super::cr("30"));

    // As expected: the capture, the record and the frames commit together.
    match h.store.write_run_end(&write, &settle).await.unwrap() {
        RunEndWritten::Written(ledger::Outcome::Captured { hold: captured }) => {
            assert_eq!((captured.state, captured.captured), (HoldState::Captured, super::cr("12")));
        }
        other => panic!("expected the settle written, got {other:?}"),
    }
    assert_eq!(h.read("r").await, Some(ended.clone()));
    assert_eq!(seqs(&h, "r", None, 10).await, vec![0, 1, 2]);
    let balances = credits.balances("u").await;
    assert_eq!((balances.held, balances.available), (Amount::ZERO, super::cr("88")));
    // Written again (a retry after an unknown outcome): the key replays, nothing moves twice.
    match h.store.write_run_end(&write, &settle).await.unwrap() {
        RunEndWritten::Written(ledger::Outcome::Captured { hold: captured }) => {
            assert_eq!(captured.captured, super::cr("12"));
        }
        other => panic!("expected the replayed settle, got {other:?}"),
    }
    assert_eq!(credits.balances("u").await.available, super::cr("88"), "captured once");
    // The same key for another capture is a conflict: nothing written.
    let conflict = RunSettle { request: capture("5"), expected: expected("5") };
    let later = RunRecord { updated_at: h.now().plus_seconds(1), ..ended.clone() };
    let write = events_write(vec![frame(&h, "r", 3, "token")], &[], Some(later));
    assert_eq!(
        h.store.write_run_end(&write, &conflict).await.unwrap(),
        RunEndWritten::Refused(crate::Executed::Conflict)
    );
    assert_eq!(h.read("r").await, Some(ended));
    assert_eq!(seqs(&h, "r", None, 10).await, vec![0, 1, 2]);
}

/// Retention: the frames of runs that ended (terminal, last updated) before the cutoff go, in
/// bounded batches; running runs keep theirs however old; the runs themselves stay.
pub async fn runs_events_forgotten_after_retention(h: RunHarness) {
    let start = h.now();
    for (run_id, thread_id) in [("old", "t1"), ("recent", "t2"), ("live", "t3")] {
        h.start(run_id, "u", thread_id).await;
        let frames: Vec<StoredFrame> = (0..3).map(|seq| frame(&h, run_id, seq, "token")).collect();
        assert!(h.store.write_run_events(&events_write(frames, &[], None)).await.unwrap());
    }
    h.finish("old", RunState::Failed).await;
    h.clock.advance_seconds(100);
    h.finish("recent", RunState::Succeeded).await;
    let cutoff = start.plus_seconds(50);
    assert_eq!(h.store.forget_run_events(cutoff, 2).await.unwrap(), 2, "bounded");
    assert_eq!(h.store.forget_run_events(cutoff, 100).await.unwrap(), 1);
    assert_eq!(h.store.forget_run_events(cutoff, 100).await.unwrap(), 0, "nothing left to forget");
    assert_eq!(seqs(&h, "old", None, 10).await, Vec::<u64>::new());
    assert_eq!(seqs(&h, "recent", None, 10).await, vec![0, 1, 2]);
    assert_eq!(seqs(&h, "live", None, 10).await, vec![0, 1, 2]);
    assert_eq!(h.store.forget_run_events(h.now().plus_seconds(1), 100).await.unwrap(), 3, "recent, later");
    assert_eq!(seqs(&h, "live", None, 10).await, vec![0, 1, 2], "a running run keeps its frames");
    assert_eq!(h.read("old").await.map(|run| run.state), Some(RunState::Failed), "the run stays");
}

/// Cancel requests: recorded for running runs only, listed for the run's instance (oldest first,
/// bounded) until the run ends; an update of the run keeps the request.
pub async fn runs_cancel_requests(h: RunHarness) {
    for (index, run_id) in ["a", "b", "c"].into_iter().enumerate() {
        let mut run = h.record(run_id, "u", &format!("t-{run_id}"));
        run.created_at = run.created_at.plus_seconds(index as u64);
        run.instance_id = if run_id == "c" { "i2".to_owned() } else { "i1".to_owned() };
        h.create(&run).await.expect("created");
    }
    h.start("done", "u", "t-done").await;
    h.finish("done", RunState::Succeeded).await;
    let listed = |instance: &'static str, limit| {
        let store = h.store.clone();
        async move { store.cancel_requests(instance, limit).await.expect("store answers") }
    };
    assert_eq!(listed("i1", 10).await, Vec::<RunId>::new());
    let at = h.now();
    for run_id in ["b", "a", "c"] {
        assert!(h.store.request_cancel(&run_of(run_id), at).await.unwrap(), "{run_id}");
    }
    assert!(h.store.request_cancel(&run_of("a"), at.plus_seconds(1)).await.unwrap(), "asked twice");
    assert!(!h.store.request_cancel(&run_of("done"), at).await.unwrap(), "an ended run");
    assert!(!h.store.request_cancel(&run_of("ghost"), at).await.unwrap(), "an unknown run");
    assert_eq!(listed("i1", 10).await, vec![run_of("a"), run_of("b")], "oldest first");
    assert_eq!(listed("i1", 1).await, vec![run_of("a")]);
    assert_eq!(listed("i2", 10).await, vec![run_of("c")]);
    let mut a = h.read("a").await.unwrap();
    a.data = r#"{"step":3}"#.to_owned();
    assert!(h.store.update_run(&a).await.unwrap());
    assert_eq!(listed("i1", 10).await, vec![run_of("a"), run_of("b")], "an update keeps the request");
    h.finish("a", RunState::Canceled).await;
    assert_eq!(listed("i1", 10).await, vec![run_of("b")], "an ended run is off the list");
}

fn key(text: &str, fingerprint: &str) -> Idempotency {
    Idempotency { key: text.to_owned(), fingerprint: fingerprint.to_owned() }
}

/// A solve's key: recorded with its run, checked before anything else (a replay finds its run
/// while that run keeps the thread busy), never recorded for a refused run, and sharing one key
/// space with recorded responses.
pub async fn runs_keyed_creates(h: RunHarness) {
    let k1 = key("k1", "f1");
    assert_eq!(h.store.keyed_run(&k1).await.unwrap(), None);
    let first = h.record("r1", "u", "t");
    let stored = h.store.create_run_once(&first, Some(&k1)).await.unwrap().expect("created");
    assert_eq!(h.store.keyed_run(&k1).await.unwrap(), Some(KeyedRun::Started(run_of("r1"))));
    assert_eq!(h.store.keyed_run(&key("k1", "f2")).await.unwrap(), Some(KeyedRun::Conflict));

    // The same key again, for another run id of the busy thread: the first run, nothing new.
    let retry = h.record("r2", "u", "t");
    let replay = h.store.create_run_once(&retry, Some(&k1)).await.unwrap();
    assert_eq!(replay, Err(CreateRunRefusal::KeyUsed(KeyedRun::Started(run_of("r1")))));
    let other = h.store.create_run_once(&h.record("r3", "u", "t9"), Some(&key("k1", "f2"))).await.unwrap();
    assert_eq!(other, Err(CreateRunRefusal::KeyUsed(KeyedRun::Conflict)));
    assert_eq!(h.read("r2").await, None);
    assert_eq!(h.read("r3").await, None);
    assert_eq!(h.store.thread_account(&thread_of("t9")).await.unwrap(), None);
    assert_eq!(h.read("r1").await, Some(stored));

    // A refused run records no key: the same key works once the thread is free.
    let k2 = key("k2", "f");
    let busy = h.store.create_run_once(&h.record("r4", "u", "t"), Some(&k2)).await.unwrap();
    assert_eq!(busy, Err(CreateRunRefusal::ThreadBusy { run_id: run_of("r1") }));
    assert_eq!(h.store.keyed_run(&k2).await.unwrap(), None);
    h.finish("r1", RunState::Succeeded).await;
    assert!(h.store.create_run_once(&h.record("r4", "u", "t"), Some(&k2)).await.unwrap().is_ok());
    assert_eq!(h.store.keyed_run(&k2).await.unwrap(), Some(KeyedRun::Started(run_of("r4"))));

    // One key space: a response key is no solve key, and a solve key is no response key.
    let response = RecordedResponse { fingerprint: "f".to_owned(), status: 202, body: "{}".to_owned() };
    assert_eq!(h.store.record_response("k3", &response).await.unwrap(), KeyUse::Response(response));
    let refused = h.store.create_run_once(&h.record("r5", "u", "t5"), Some(&key("k3", "f"))).await.unwrap();
    assert_eq!(refused, Err(CreateRunRefusal::KeyUsed(KeyedRun::Conflict)));
    assert_eq!(h.store.recorded_response("k1").await.unwrap(), Some(KeyUse::Other));
}

/// Recorded responses: the first one under a key stays, byte-exact; later ones get it back.
pub async fn runs_recorded_responses(h: RunHarness) {
    assert_eq!(h.store.recorded_response("k").await.unwrap(), None);
    let first = RecordedResponse {
        fingerprint: "f1".to_owned(),
        status: 202,
        body: r#"{"state":"running","x":"ü"}"#.to_owned(),
    };
    assert_eq!(h.store.record_response("k", &first).await.unwrap(), KeyUse::Response(first.clone()));
    let second = RecordedResponse { fingerprint: "f2".to_owned(), status: 200, body: "{}".to_owned() };
    assert_eq!(h.store.record_response("k", &second).await.unwrap(), KeyUse::Response(first.clone()));
    assert_eq!(h.store.recorded_response("k").await.unwrap(), Some(KeyUse::Response(first)));
}

/// Waits (at most 10 s) for a signal satisfying `wanted`, skipping others.
async fn signal(
    receiver: &mut tokio::sync::broadcast::Receiver<RunSignal>,
    wanted: impl Fn(&RunSignal) -> bool,
) -> RunSignal {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Ok(signal)) if wanted(&signal) => return signal,
            Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(error)) => panic!("the signals ended: {error}"),
            Err(_) => panic!("no such signal within 10 s"),
        }
    }
}

/// Signals follow committed writes: new frames of a run, a cancel request. (PostgreSQL delivers
/// them through `LISTEN`, so this also checks that the notifications reach a listener.)
pub async fn runs_signals_follow_writes(h: RunHarness) {
    let mut receiver = h.store.run_signals().await;
    h.start("r", "u", "t").await;
    let write = events_write(vec![frame(&h, "r", 0, "token"), frame(&h, "r", 1, "token")], &[], None);
    assert!(h.store.write_run_events(&write).await.unwrap());
    let events = signal(&mut receiver, |signal| matches!(signal, RunSignal::Events(_))).await;
    assert_eq!(events, RunSignal::Events(run_of("r")));
    assert!(h.store.request_cancel(&run_of("r"), h.now()).await.unwrap());
    let cancel = signal(&mut receiver, |signal| matches!(signal, RunSignal::Cancel(_))).await;
    assert_eq!(cancel, RunSignal::Cancel(run_of("r")));
}

/// A run's end writes one `run.succeeded` or `run.failed` event with the final record, and a
/// retried final write (the run already ended) writes none.
pub async fn runs_end_writes_one_event(h: RunHarness, ledger: super::Harness) {
    for (run_id, state) in [("r-ok", RunState::Succeeded), ("r-bad", RunState::Canceled)] {
        let started = h.start(run_id, "u", "t").await;
        h.clock.advance_seconds(1);
        let ended = RunRecord { state, updated_at: h.now(), ..started };
        let write = events_write(vec![frame(&h, run_id, 0, "done")], &[], Some(ended));
        assert!(h.store.write_run_events(&write).await.unwrap());
        assert!(h.store.write_run_events(&write).await.unwrap(), "a retried write");
    }
    let succeeded = super::events::events_of_type(&ledger, crate::events::EventType::RunSucceeded, 1).await;
    let failed = super::events::events_of_type(&ledger, crate::events::EventType::RunFailed, 1).await;
    assert_eq!((succeeded.len(), failed.len()), (1, 1), "{succeeded:?} {failed:?}");
    let data: serde_json::Value = serde_json::from_str(&failed[0].event.data).expect("JSON");
    assert_eq!((data["run_id"].as_str(), data["state"].as_str()), (Some("r-bad"), Some("canceled")));
}

/// An account's runs come newest first (by `created_at`, then id byte-wise, both descending),
/// across its threads, in pages that continue after a run's `(created_at, id)`.
pub async fn runs_account_runs_newest_first_in_pages(h: RunHarness) {
    let base = h.now();
    // (run, account, thread, created +s): two created at the same time.
    let runs = [
        ("r-a", "u", "t1", 10),
        ("r-c", "u", "t2", 30),
        ("o", "other", "t3", 40),
        ("r-b", "u", "t4", 20),
        ("r-2", "u", "t5", 20),
    ];
    for (run_id, account_id, thread_id, created) in runs {
        let mut run = h.record(run_id, account_id, thread_id);
        run.created_at = base.plus_seconds(created);
        run.updated_at = run.created_at;
        h.create(&run).await.unwrap_or_else(|refusal| panic!("run {run_id} refused: {refusal:?}"));
    }
    let page = |before: Option<&'static str>, limit: u32| {
        let h = &h;
        async move {
            let cursor = match before {
                Some(run_id) => Some(h.read(run_id).await.expect("the cursor's run")),
                None => None,
            };
            let before = cursor.as_ref().map(|run| (run.created_at, &run.run_id));
            let runs = h.store.account_runs(&account("u"), before, limit).await.expect("store answers");
            assert!(runs.iter().all(|run| run.account_id.as_str() == "u"), "only the account's runs: {runs:?}");
            runs.into_iter().map(|run| run.run_id.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 10).await, vec!["r-c", "r-b", "r-2", "r-a"]);
    assert_eq!(page(None, 2).await, vec!["r-c", "r-b"]);
    assert_eq!(page(Some("r-b"), 2).await, vec!["r-2", "r-a"]);
    assert_eq!(page(Some("r-a"), 2).await, Vec::<String>::new());
    let listed = h.store.account_runs(&account("u"), None, 1).await.expect("store answers");
    assert_eq!(listed, vec![h.read("r-c").await.expect("stored")], "lists hold whole records");
}
