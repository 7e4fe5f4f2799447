//! Conformance checks of the [`RunStore`] contract: threads, runs (one per turn) and artifacts.
//!
//! The rule that matters most is that a thread never has two running runs, because two turns of
//! one thread must never hold credits at once; the checks drive it sequentially, after every
//! terminal state, and with 16 concurrent creators. The others pin down the details the run
//! engine relies on identically on every backend: turn numbering, which refusal wins, what
//! `update_run` may change, paging and ordering, and byte-exact artifacts.

use std::sync::Arc;

use futures::future::join_all;
use ledger::{AccountId, HoldId, Timestamp};

use super::account;
use crate::ids::{ArtifactId, RunId, ThreadId};
use crate::runs::{Artifact, CreateRunRefusal, InstanceLease, RunRecord, RunState, RunStore, HOLD_UNRESOLVED_MARKER};
use crate::{Clock, ManualClock, StoreError};

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

/// `update_run` overwrites state, hold, data and `updated_at`, and nothing else; an unknown run
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
        created_at: later,
        updated_at: later,
        data: r#"{"answer":"done"}"#.to_owned(),
    };
    assert!(h.store.update_run(&update).await.unwrap());
    let expected = RunRecord {
        state: RunState::Succeeded,
        hold_id: Some(hold_id("h-r")),
        updated_at: later,
        data: update.data.clone(),
        ..stored.clone()
    };
    assert_eq!(h.read("r").await, Some(expected.clone()));
    assert_eq!(h.store.thread_account(&thread_of("other-thread")).await.unwrap(), None);

    // The hold can be cleared again.
    let cleared = RunRecord { hold_id: None, ..expected.clone() };
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

/// Unresolved runs: terminal runs with a hold whose data carries the marker, least recently
/// updated first, bounded; running runs and resolved ones never.
pub async fn runs_unresolved_holds(h: RunHarness) {
    let unresolved = format!(r#"{{"problem":"x","{}}}"#, &HOLD_UNRESOLVED_MARKER[1..]);
    let resolved = r#"{"problem":"x","hold_resolved":true}"#.to_owned();
    let cases: [(&str, RunState, Option<&str>, &String); 5] = [
        ("a", RunState::Failed, Some("ha"), &unresolved),
        ("b", RunState::Canceled, Some("hb"), &resolved),
        ("c", RunState::Running, Some("hc"), &unresolved),
        ("d", RunState::Interrupted, Some("hd"), &unresolved),
        ("e", RunState::Failed, None, &unresolved),
    ];
    for (index, (run_id, state, hold, data)) in cases.into_iter().enumerate() {
        let thread_id = format!("t-{run_id}");
        h.start(run_id, "u", &thread_id).await;
        let mut run = h.read(run_id).await.expect("exists");
        run.state = state;
        run.hold_id = hold.map(hold_id);
        run.data = data.clone();
        run.updated_at = h.now().plus_seconds(10 - index as u64);
        assert!(h.store.update_run(&run).await.unwrap());
    }
    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|run| run.run_id).collect::<Vec<_>>();
    assert_eq!(ids(h.store.unresolved_runs(10).await.unwrap()), vec!["d", "a"], "least recently updated first");
    assert_eq!(ids(h.store.unresolved_runs(1).await.unwrap()), vec!["d"]);
}
