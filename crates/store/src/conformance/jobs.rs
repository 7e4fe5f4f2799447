//! Conformance checks of the [`JobStore`] contract: video jobs whose credits move in the same
//! transaction as their state.
//!
//! What matters most is money: a job write that carries a ledger command either applies both or
//! neither (a rejected capture leaves no job, a refund rides on exactly one terminal write), a
//! source job has at most one retry (even with 16 creators racing), and a job is claimed by one
//! worker at a time (16 claimers on 5 jobs). The others pin the details the job engine relies on
//! identically on every backend: every field survives a round trip, the version is a real
//! compare-and-set, leases expire into re-claims, `attempts_max` and `run_after` are respected,
//! and the stuck and thread lists filter and order the same way. Every check that moves credits
//! ends with the ledger's `verify`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use ledger::{
    Amount, Balances, Command, GrantId, HoldId, HoldState, Outcome, Overage, Reference, Rejection, Timestamp,
};

use super::{account, balances, cr, new_id, Harness};
use crate::ids::{ArtifactId, JobId, RunId, ThreadId};
use crate::jobs::{JobRecord, JobStatus, JobStore, JobWrite, JobWriteRefusal, JobWritten};
use crate::{Clock, Executed, LedgerStore, ManualClock, Request};

/// A fresh job store, the same store as a ledger (with its helpers), and the clock both read.
pub struct JobHarness {
    pub store: Arc<dyn JobStore>,
    pub ledger: Harness,
}

type Written = Result<JobWritten, JobWriteRefusal>;

impl JobHarness {
    pub fn new(store: Arc<dyn JobStore>, ledger: Arc<dyn LedgerStore>, clock: Arc<ManualClock>) -> JobHarness {
        JobHarness { store, ledger: Harness { store: ledger, clock } }
    }

    pub fn now(&self) -> Timestamp {
        self.ledger.clock.now()
    }

    /// A new queued job of account `u` in `thread_id`, created now, with only the required fields.
    pub fn record(&self, job_id: &str, thread_id: &str) -> JobRecord {
        queued_job(job_id, thread_id, self.now())
    }

    pub async fn write(&self, job: &JobRecord, expected_version: Option<u64>, ledger: Option<Request>) -> Written {
        let write = JobWrite { job: job.clone(), expected_version, ledger };
        self.store.write_job(write).await.expect("store answers")
    }

    /// Inserts a job that must be accepted, without a ledger request; returns it as stored.
    pub async fn insert(&self, job: &JobRecord) -> JobRecord {
        match self.write(job, None, None).await {
            Ok(written) => written.job,
            Err(refusal) => panic!("job {} refused: {refusal:?}", job.job_id),
        }
    }

    pub async fn read(&self, job_id: &str) -> Option<JobRecord> {
        self.store.job(&job_id_of(job_id)).await.expect("store answers")
    }

    pub async fn thread(&self, thread_id: &str, limit: u32) -> Vec<String> {
        let jobs = self.store.thread_jobs(&thread_of(thread_id), limit).await.expect("store answers");
        assert!(jobs.iter().all(|job| job.thread_id.as_str() == thread_id), "only the thread's jobs: {jobs:?}");
        jobs.into_iter().map(|job| job.job_id.to_string()).collect()
    }

    pub async fn claim(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    ) -> Option<JobRecord> {
        self.store.claim_job(worker_id, now, lease_until, attempts_max).await.expect("store answers")
    }

    /// Ids of the stuck jobs with thresholds `seconds` before now.
    pub async fn stuck(
        &self,
        heartbeat_seconds: i64,
        queued_seconds: i64,
        attempts_max: u32,
        limit: u32,
    ) -> Vec<String> {
        let now = self.now();
        let jobs = self
            .store
            .stuck_jobs(
                seconds_before(now, heartbeat_seconds),
                seconds_before(now, queued_seconds),
                now,
                attempts_max,
                limit,
            )
            .await
            .expect("store answers");
        assert!(jobs.iter().all(|job| !job.status.is_terminal()), "only live jobs: {jobs:?}");
        jobs.into_iter().map(|job| job.job_id.to_string()).collect()
    }

    /// A pending hold of `amount` on account `u` (which has `granted` credits), for jobs to pay from.
    pub async fn funded_hold(&self, granted: &str, amount: &str) -> HoldId {
        self.ledger.grant("u", granted).await;
        self.ledger.hold("u", amount, 3_600).await.expect("the hold is taken").hold_id
    }

    pub async fn entry_count(&self) -> usize {
        self.ledger.store.entries(&account("u"), 0, 10_000).await.expect("store answers").len()
    }
}

/// A queued job of account `u` in `thread_id` (run `r1`, hold `h-none`, price 10), created at
/// `now`, with only the required fields: the one job builder of the suites and of other crates'
/// tests.
pub fn queued_job(job_id: &str, thread_id: &str, now: Timestamp) -> JobRecord {
    JobRecord {
        job_id: job_id_of(job_id),
        account_id: account("u"),
        thread_id: thread_of(thread_id),
        run_id: RunId::parse("r1").expect("valid id"),
        hold_id: hold_id("h-none"),
        price: cr("10"),
        status: JobStatus::Queued,
        stage: "enqueue".to_owned(),
        progress_percent: 0,
        input: format!(r#"{{"job":"{job_id}"}}"#),
        lease_holder: None,
        lease_expires_at: None,
        heartbeat_at: None,
        cancel_requested: false,
        retry_source_job_id: None,
        attempts: 0,
        run_after: now,
        error_stage: None,
        error_code: None,
        error_detail: None,
        refund_applied_at: None,
        artifact_id: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        version: 0,
    }
}

fn seconds_before(at: Timestamp, seconds: i64) -> Timestamp {
    at.plus_micros(seconds.saturating_mul(-1_000_000))
}

/// Job, thread and run ids in these checks are written as text; these parse it.
pub fn job_id_of(text: &str) -> JobId {
    JobId::parse(text).expect("test job ids are valid")
}

pub fn thread_of(text: &str) -> ThreadId {
    ThreadId::parse(text).expect("test thread ids are valid")
}

fn hold_id(text: &str) -> HoldId {
    HoldId::parse(text).expect("test hold ids are valid")
}

fn capture(hold_id: &HoldId, amount: &str) -> Command {
    Command::Capture { hold_id: hold_id.clone(), amount: cr(amount), is_final: false, overage: Overage::Reject }
}

fn refund(hold_id: &HoldId, amount: &str, reference: &str) -> Command {
    Command::Refund {
        account_id: account("u"),
        grant_id: GrantId::parse(&format!("r{}", new_id())).expect("valid id"),
        amount: cr(amount),
        reference: Reference::parse(reference).expect("valid reference"),
        hold_id: Some(hold_id.clone()),
        priority: 100,
        expires_at: None,
    }
}

fn written(result: Written, what: &str) -> JobWritten {
    result.unwrap_or_else(|refusal| panic!("{what}: refused with {refusal:?}"))
}

/// Every field is stored and read back as written (the version excepted: an insert stores 1),
/// whether set or empty; unknown ids read as nothing.
pub async fn jobs_insert_then_read_back(h: JobHarness) {
    let now = h.now();
    let full = JobRecord {
        job_id: job_id_of("job-e-1"),
        account_id: account("acct-7"),
        thread_id: thread_of("thread-u"),
        run_id: RunId::parse("run-42").expect("valid id"),
        hold_id: hold_id("h-9"),
        price: Amount::from_micros(10_000_001),
        status: JobStatus::Running,
        stage: "render".to_owned(),
        progress_percent: 100,
        input: r#"{"steps":["x² = 4","→ x = ±2"],"quote":"\"q\"","nl":"a\nb"}"#.to_owned(),
        lease_holder: Some("worker-1".to_owned()),
        lease_expires_at: Some(now.plus_seconds(30)),
        heartbeat_at: Some(now.plus_micros(7)),
        cancel_requested: true,
        retry_source_job_id: Some(job_id_of("job-0")),
        attempts: 3,
        run_after: now.plus_seconds(5),
        error_stage: Some("tts".to_owned()),
        error_code: Some("provider_error".to_owned()),
        error_detail: Some("voice \"ko\" missing".to_owned()),
        refund_applied_at: Some(now.plus_micros(11)),
        artifact_id: Some(ArtifactId::parse("art-1").expect("valid id")),
        created_at: now.plus_micros(-3),
        updated_at: now.plus_micros(13),
        started_at: Some(now.plus_micros(1)),
        finished_at: Some(now.plus_micros(17)),
        version: 77,
    };
    let stored = written(h.write(&full, None, None).await, "full insert");
    assert_eq!(stored.job, JobRecord { version: 1, ..full.clone() });
    assert_eq!(stored.ledger, None);
    assert_eq!(h.read("job-e-1").await, Some(stored.job.clone()));

    let empty = h.record("job-empty", "thread-u");
    let stored_empty = h.insert(&empty).await;
    assert_eq!(stored_empty, JobRecord { version: 1, ..empty });
    assert_eq!(h.read("job-empty").await, Some(stored_empty.clone()));

    // The filtered columns agree with the record: each list finds it by them.
    assert_eq!(h.store.retry_of(&job_id_of("job-0")).await.unwrap(), Some(stored.job.clone()));
    assert_eq!(h.store.thread_jobs(&thread_of("thread-u"), 10).await.unwrap(), vec![stored.job.clone(), stored_empty]);

    assert_eq!(h.read("unknown").await, None);
    assert!(h.store.thread_jobs(&thread_of("unknown"), 10).await.unwrap().is_empty());
    assert_eq!(h.store.retry_of(&job_id_of("unknown")).await.unwrap(), None);
    assert_eq!(h.store.retry_of(&job_id_of("job-e-1")).await.unwrap(), None, "a job is not its own retry");
}

/// An update applies only at the stored version and stores version + 1; a stale version is
/// refused naming the current one and changes nothing; a missing job is `current: None` and is
/// not created. What an update changes is what later queries see.
pub async fn jobs_version_compare_and_set(h: JobHarness) {
    let first = h.insert(&h.record("j", "t")).await;
    assert_eq!(first.version, 1);

    let mut update = first.clone();
    update.stage = "scriptify".to_owned();
    update.progress_percent = 20;
    update.thread_id = thread_of("t-moved");
    update.version = 999;
    let second = written(h.write(&update, Some(1), None).await, "update at version 1").job;
    assert_eq!(second, JobRecord { version: 2, ..update.clone() });
    assert_eq!(h.read("j").await, Some(second.clone()));
    assert_eq!(h.thread("t", 10).await, Vec::<String>::new());
    assert_eq!(h.thread("t-moved", 10).await, vec!["j"]);

    let stale = JobRecord { stage: "stale".to_owned(), ..first.clone() };
    assert_eq!(h.write(&stale, Some(1), None).await, Err(JobWriteRefusal::VersionMismatch { current: Some(2) }));
    assert_eq!(h.write(&stale, Some(3), None).await, Err(JobWriteRefusal::VersionMismatch { current: Some(2) }));
    assert_eq!(h.write(&stale, Some(u64::MAX), None).await, Err(JobWriteRefusal::VersionMismatch { current: Some(2) }));
    assert_eq!(h.read("j").await, Some(second.clone()), "stale writes changed nothing");

    let ghost = h.record("ghost", "t");
    for expected in [0, 1, 2] {
        assert_eq!(
            h.write(&ghost, Some(expected), None).await,
            Err(JobWriteRefusal::VersionMismatch { current: None })
        );
    }
    assert_eq!(h.read("ghost").await, None, "an update does not create");

    // Terminal: no longer claimable, whatever its run_after.
    let done = JobRecord { status: JobStatus::Succeeded, ..second.clone() };
    let third = written(h.write(&done, Some(2), None).await, "update at version 2").job;
    assert_eq!(third.version, 3);
    assert_eq!(h.claim("w", h.now().plus_seconds(60), h.now().plus_seconds(90), 10).await, None);
}

/// A job created with a (non-final) capture of its price from a real hold: both the job and the
/// capture are there, and a replay of the same key gives the first outcome without a second
/// capture; a conflicting key writes nothing.
pub async fn jobs_write_with_capture_commits_both(h: JobHarness) {
    let hold = h.funded_hold("100", "30").await;
    let job = JobRecord { hold_id: hold.clone(), ..h.record("video-1", "t") };
    let request = Request::with_key(capture(&hold, "10"), "video-1:create", "fp-1");
    let created = written(h.write(&job, None, Some(request.clone())).await, "create with capture");
    assert_eq!(created.job, JobRecord { version: 1, ..job.clone() });
    let Some(Outcome::Captured { hold: captured }) = created.ledger.clone() else {
        panic!("expected a capture outcome, got {:?}", created.ledger);
    };
    assert_eq!((captured.state, captured.captured, captured.remaining), (HoldState::Pending, cr("10"), cr("20")));
    assert_eq!(h.read("video-1").await, Some(created.job.clone()));
    assert_eq!(h.ledger.balances("u").await, balances("90", "20", "70"));

    // The same key on another job replays: the job is written, the credits do not move again.
    let replay_job = JobRecord { hold_id: hold.clone(), ..h.record("video-2", "t") };
    let replayed = written(h.write(&replay_job, None, Some(request)).await, "create with a replayed key");
    assert_eq!(replayed.ledger, created.ledger, "a replayed key gives the first outcome");
    assert_eq!(h.read("video-2").await.map(|job| job.version), Some(1));
    assert_eq!(h.ledger.balances("u").await, balances("90", "20", "70"));

    // The same key with another request: nothing is written.
    let conflict_job = JobRecord { hold_id: hold.clone(), ..h.record("video-3", "t") };
    let conflicting = Request::with_key(capture(&hold, "5"), "video-1:create", "fp-other");
    assert_eq!(h.write(&conflict_job, None, Some(conflicting)).await, Err(JobWriteRefusal::Ledger(None)));
    assert_eq!(h.read("video-3").await, None);
    assert_eq!(h.ledger.balances("u").await, balances("90", "20", "70"));

    // An update can carry a capture too.
    let progressed = JobRecord { progress_percent: 50, ..created.job.clone() };
    let updated = written(h.write(&progressed, Some(1), Some(Request::new(capture(&hold, "5")))).await, "update");
    assert_eq!(updated.job.version, 2);
    assert!(matches!(updated.ledger, Some(Outcome::Captured { .. })), "{:?}", updated.ledger);
    assert_eq!(h.ledger.balances("u").await, balances("85", "15", "70"));
    h.ledger.assert_verified().await;
}

/// A job write whose ledger command is rejected writes nothing at all: no job (or the job as it
/// was), no credits moved, no journal entry, and not even the idempotency record.
pub async fn jobs_rejected_ledger_writes_nothing(h: JobHarness) {
    let hold = h.funded_hold("100", "30").await;
    let entries = h.entry_count().await;
    let job = JobRecord { hold_id: hold.clone(), ..h.record("video-1", "t") };

    let too_much = Request::with_key(capture(&hold, "31"), "video-1:create", "fp-1");
    assert_eq!(
        h.write(&job, None, Some(too_much)).await,
        Err(JobWriteRefusal::Ledger(Some(Rejection::AmountExceedsHold { requested: cr("31"), remaining: cr("30") })))
    );
    assert_eq!(h.read("video-1").await, None);
    assert_eq!(h.store.thread_jobs(&thread_of("t"), 10).await.unwrap(), Vec::new());
    assert_eq!(h.ledger.balances("u").await, balances("100", "30", "70"));
    assert_eq!(h.entry_count().await, entries);
    // The key was not recorded either: another request under it is fresh, not a conflict.
    let fresh = h.ledger.store.execute(Request::with_key(capture(&hold, "1"), "video-1:create", "fp-2")).await.unwrap();
    assert!(matches!(fresh, Executed::Fresh(Ok(Outcome::Captured { .. }))), "{fresh:?}");
    assert_eq!(h.ledger.balances("u").await, balances("99", "29", "70"));

    let unknown = Request::new(capture(&hold_id("h-unknown"), "1"));
    assert_eq!(h.write(&job, None, Some(unknown)).await, Err(JobWriteRefusal::Ledger(Some(Rejection::HoldNotFound))));
    assert_eq!(h.read("video-1").await, None);

    // On an update: the job stays as it was, version included.
    let stored = written(h.write(&job, None, Some(Request::new(capture(&hold, "10")))).await, "create").job;
    assert_eq!(h.ledger.balances("u").await, balances("89", "19", "70"));
    let failed = JobRecord { status: JobStatus::Failed, error_code: Some("x".to_owned()), ..stored.clone() };
    let over_refund = Request::new(refund(&hold, "12", "video-1:refund"));
    assert_eq!(
        h.write(&failed, Some(1), Some(over_refund)).await,
        Err(JobWriteRefusal::Ledger(Some(Rejection::RefundExceedsCharges {
            requested: cr("12"),
            refundable: cr("11")
        })))
    );
    assert_eq!(h.read("video-1").await, Some(stored.clone()));
    assert_eq!(h.ledger.balances("u").await, balances("89", "19", "70"));

    // A refused job write never reaches the ledger: the capture it carries does not apply.
    let duplicate = Request::new(capture(&hold, "2"));
    assert_eq!(h.write(&job, None, Some(duplicate)).await, Err(JobWriteRefusal::DuplicateJobId));
    let stale = Request::new(capture(&hold, "2"));
    assert_eq!(
        h.write(&failed, Some(7), Some(stale)).await,
        Err(JobWriteRefusal::VersionMismatch { current: Some(1) })
    );
    assert_eq!(h.ledger.balances("u").await, balances("89", "19", "70"));
    assert_eq!(h.read("video-1").await, Some(stored));
    h.ledger.assert_verified().await;
}

/// The refund of a failed job rides on its terminal write and applies once: a second identical
/// write (same old version) is a version mismatch that refunds nothing, a later write with the
/// same refund reference refunds nothing either, and 16 racing terminal writes refund once.
pub async fn jobs_terminal_refund_applies_once(h: JobHarness) {
    let hold = h.funded_hold("100", "30").await;
    let h = Arc::new(h);
    for (index, racers) in [1_usize, 16].into_iter().enumerate() {
        let job_id = format!("video-{index}");
        let job = JobRecord { hold_id: hold.clone(), ..h.record(&job_id, "t") };
        let stored = written(h.write(&job, None, Some(Request::new(capture(&hold, "10")))).await, "create").job;
        let before = h.ledger.balances("u").await;
        let entries = h.entry_count().await;
        let now = h.now();
        let failed = JobRecord {
            status: JobStatus::Failed,
            error_code: Some("render_failed".to_owned()),
            refund_applied_at: Some(now),
            finished_at: Some(now),
            ..stored.clone()
        };
        let reference = format!("{job_id}:refund");
        let tasks = (0..racers).map(|_| {
            let (h, failed, hold, reference) = (h.clone(), failed.clone(), hold.clone(), reference.clone());
            tokio::spawn(
                async move { h.write(&failed, Some(1), Some(Request::new(refund(&hold, "10", &reference)))).await },
            )
        });
        let results: Vec<Written> = join_all(tasks).await.into_iter().map(|joined| joined.expect("task")).collect();
        let winners: Vec<&JobWritten> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert!(matches!(winners[0].ledger, Some(Outcome::Refunded { created: true, .. })), "{:?}", winners[0].ledger);
        assert_eq!(winners[0].job, JobRecord { version: 2, ..failed.clone() });
        let mismatch = Err(JobWriteRefusal::VersionMismatch { current: Some(2) });
        assert!(results.iter().filter(|result| result.is_err()).all(|result| *result == mismatch), "{results:?}");
        let refunded =
            Balances { balance: before.balance.plus(cr("10")), available: before.available.plus(cr("10")), ..before };
        assert_eq!(h.ledger.balances("u").await, refunded);
        assert_eq!(h.entry_count().await, entries + 1, "one refund entry");

        // The identical write again, with the version it was made from: refused, nothing refunded.
        let again = h.write(&failed, Some(1), Some(Request::new(refund(&hold, "10", &reference)))).await;
        assert_eq!(again, mismatch);
        // At the right version the reference makes the ledger answer the first refund, unchanged.
        let repeat = written(
            h.write(&failed, Some(2), Some(Request::new(refund(&hold, "10", &reference)))).await,
            "a repeated refund by reference",
        );
        assert!(matches!(repeat.ledger, Some(Outcome::Refunded { created: false, .. })), "{:?}", repeat.ledger);
        assert_eq!(repeat.job.version, 3);
        assert_eq!(h.ledger.balances("u").await, refunded);
        assert_eq!(h.entry_count().await, entries + 1);
    }
    // One job.failed per job, however many writes raced or repeated it; with the refund.
    let failed = super::events::events_of_type(&h.ledger, crate::events::EventType::JobFailed, 2).await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let data: serde_json::Value = serde_json::from_str(&failed[0].event.data).expect("JSON");
    assert_eq!((data["refunded"].as_bool(), data["error_code"].as_str()), (Some(true), Some("render_failed")));
    h.ledger.assert_verified().await;
}

/// A source job has at most one retry: a second one is refused (and its capture does not
/// apply), also when an update tries to point another job at the same source; `retry_of` finds
/// the one retry.
pub async fn jobs_retry_used_once(h: JobHarness) {
    let hold = h.funded_hold("100", "30").await;
    let source = h.insert(&JobRecord { status: JobStatus::Failed, ..h.record("source", "t") }).await;
    let retry = JobRecord {
        retry_source_job_id: Some(source.job_id.clone()),
        hold_id: hold.clone(),
        ..h.record("retry-1", "t")
    };
    let first = written(h.write(&retry, None, Some(Request::new(capture(&hold, "10")))).await, "first retry").job;
    assert_eq!(h.store.retry_of(&job_id_of("source")).await.unwrap(), Some(first.clone()));
    assert_eq!(h.ledger.balances("u").await, balances("90", "20", "70"));

    let second = JobRecord { job_id: job_id_of("retry-2"), ..retry.clone() };
    let refused = h.write(&second, None, Some(Request::new(capture(&hold, "10")))).await;
    assert_eq!(refused, Err(JobWriteRefusal::RetryAlreadyUsed));
    assert_eq!(h.read("retry-2").await, None);
    assert_eq!(h.ledger.balances("u").await, balances("90", "20", "70"), "the refused retry paid nothing");

    // The retry itself may be updated, keeping its source.
    let progressed =
        written(h.write(&JobRecord { progress_percent: 40, ..first.clone() }, Some(1), None).await, "update");
    assert_eq!(h.store.retry_of(&job_id_of("source")).await.unwrap(), Some(progressed.job));
    // Another job cannot become a second retry by an update.
    let other = h.insert(&h.record("other", "t")).await;
    let pointed = JobRecord { retry_source_job_id: Some(job_id_of("source")), ..other.clone() };
    assert_eq!(h.write(&pointed, Some(1), None).await, Err(JobWriteRefusal::RetryAlreadyUsed));
    assert_eq!(h.read("other").await, Some(other));
    // A retry of another source is fine.
    let elsewhere = JobRecord { job_id: job_id_of("retry-3"), retry_source_job_id: Some(job_id_of("other")), ..retry };
    h.insert(&elsewhere).await;
    assert_eq!(h.store.retry_of(&job_id_of("other")).await.unwrap().map(|job| job.job_id), Some(job_id_of("retry-3")));
    h.ledger.assert_verified().await;
}

/// 16 retries of one source created at once, each capturing 1: exactly one is created and
/// exactly one capture applies.
pub async fn jobs_concurrent_retries_one_wins(h: JobHarness) {
    let hold = h.funded_hold("100", "30").await;
    h.insert(&JobRecord { status: JobStatus::Canceled, ..h.record("source", "t") }).await;
    let h = Arc::new(h);
    let tasks = (0..16).map(|index| {
        let (h, hold) = (h.clone(), hold.clone());
        tokio::spawn(async move {
            let retry = JobRecord {
                retry_source_job_id: Some(job_id_of("source")),
                hold_id: hold.clone(),
                ..h.record(&format!("retry-{index}"), "t")
            };
            h.write(&retry, None, Some(Request::new(capture(&hold, "1")))).await
        })
    });
    let results: Vec<Written> = join_all(tasks).await.into_iter().map(|joined| joined.expect("task")).collect();
    let winners: Vec<&JobWritten> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let refusals = results.iter().filter_map(|result| result.as_ref().err());
    assert!(refusals.clone().all(|refusal| *refusal == JobWriteRefusal::RetryAlreadyUsed), "{results:?}");
    assert_eq!(refusals.count(), 15);
    assert_eq!(h.store.retry_of(&job_id_of("source")).await.unwrap(), Some(winners[0].job.clone()));
    assert_eq!(h.thread("t", 100).await.len(), 2, "the source and its one retry");
    assert_eq!(h.ledger.balances("u").await, balances("99", "29", "70"));
    h.ledger.assert_verified().await;
}

/// A job id is inserted once: a second insert is refused and leaves the first as it was, also
/// when 16 inserts of one id race.
pub async fn jobs_duplicate_job_id(h: JobHarness) {
    let first = h.insert(&h.record("j", "t")).await;
    let again = JobRecord { stage: "render".to_owned(), thread_id: thread_of("t2"), ..first.clone() };
    assert_eq!(h.write(&again, None, None).await, Err(JobWriteRefusal::DuplicateJobId));
    assert_eq!(h.read("j").await, Some(first));
    assert_eq!(h.thread("t2", 10).await, Vec::<String>::new());

    let h = Arc::new(h);
    let tasks = (0..16).map(|index| {
        let h = h.clone();
        tokio::spawn(async move {
            let job = JobRecord { stage: format!("stage-{index}"), ..h.record("same", "t") };
            h.write(&job, None, None).await
        })
    });
    let results: Vec<Written> = join_all(tasks).await.into_iter().map(|joined| joined.expect("task")).collect();
    let winners: Vec<&JobWritten> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|result| **result == Err(JobWriteRefusal::DuplicateJobId)).count(), 15);
    assert_eq!(h.read("same").await, Some(winners[0].job.clone()));
}

/// 16 workers claiming at once from 5 queued jobs: every job is claimed exactly once, and each
/// claimed job holds the lease of the worker that got it.
pub async fn jobs_concurrent_claims_each_job_once(h: JobHarness) {
    let base = h.now();
    for index in 0..5 {
        let mut job = h.record(&format!("j{index}"), "t");
        job.created_at = base.plus_micros(index);
        h.insert(&job).await;
    }
    let h = Arc::new(h);
    let lease_until = base.plus_seconds(60);
    let tasks = (0..16).map(|worker| {
        let h = h.clone();
        tokio::spawn(async move {
            let worker_id = format!("w{worker}");
            let mut claimed = Vec::new();
            while let Some(job) = h.claim(&worker_id, base, lease_until, 5).await {
                assert_eq!(job.lease_holder.as_deref(), Some(worker_id.as_str()));
                claimed.push(job);
                assert!(claimed.len() <= 5, "a worker claimed more jobs than exist");
            }
            claimed
        })
    });
    let mut by_job: HashMap<JobId, JobRecord> = HashMap::new();
    for joined in join_all(tasks).await {
        for job in joined.expect("task") {
            let job_id = job.job_id.clone();
            assert!(by_job.insert(job_id.clone(), job).is_none(), "job {job_id} was claimed twice");
        }
    }
    assert_eq!(by_job.len(), 5, "every job was claimed: {:?}", by_job.keys());
    for (job_id, claimed) in by_job {
        assert_eq!((claimed.status, claimed.attempts, claimed.version), (JobStatus::Running, 1, 2), "{job_id}");
        assert_eq!(h.read(job_id.as_str()).await, Some(claimed));
    }
}

/// A claim takes the oldest claimable job and changes exactly what the contract says; a queued
/// job waits for its `run_after`; live leases and terminal jobs are never claimed.
pub async fn jobs_claim_order_and_run_after(h: JobHarness) {
    let base = h.now();
    let mut later = h.record("later", "t");
    later.created_at = base.plus_seconds(2);
    let mut backoff = h.record("backoff", "t");
    backoff.created_at = base.plus_seconds(1);
    backoff.run_after = base.plus_seconds(30);
    backoff.attempts = 1;
    backoff.started_at = Some(base.plus_micros(5));
    let mut done = h.record("done", "t");
    done.status = JobStatus::Failed;
    done.created_at = base;
    h.insert(&later).await;
    let backoff = h.insert(&backoff).await;
    h.insert(&done).await;

    let claimed = h.claim("w1", base.plus_seconds(10), base.plus_seconds(40), 5).await.expect("a job is claimable");
    assert_eq!(claimed.job_id, "later", "the backed-off job is not due yet");
    let expected = JobRecord {
        status: JobStatus::Running,
        lease_holder: Some("w1".to_owned()),
        lease_expires_at: Some(base.plus_seconds(40)),
        heartbeat_at: Some(base.plus_seconds(10)),
        attempts: 1,
        started_at: Some(base.plus_seconds(10)),
        updated_at: base.plus_seconds(10),
        version: 2,
        ..later.clone()
    };
    assert_eq!(claimed, expected);
    assert_eq!(h.read("later").await, Some(expected));
    assert_eq!(h.claim("w2", base.plus_seconds(29), base.plus_seconds(60), 5).await, None, "nothing due");

    let due = h.claim("w2", base.plus_seconds(30), base.plus_seconds(60), 5).await.expect("run_after reached");
    assert_eq!(due.job_id, "backoff");
    assert_eq!((due.attempts, due.started_at, due.version), (2, backoff.started_at, 2), "started_at stays");
    assert_eq!(h.claim("w3", base.plus_seconds(39), base.plus_seconds(99), 5).await, None, "leases are live");
}

/// A running job whose lease expired (its worker died) is claimed by another worker with one
/// more attempt; the dead worker's next write is stale.
pub async fn jobs_expired_lease_is_reclaimed(h: JobHarness) {
    let base = h.now();
    h.insert(&h.record("j", "t")).await;
    let first = h.claim("w1", base, base.plus_seconds(30), 5).await.expect("claimed");
    assert_eq!(h.claim("w2", base.plus_seconds(29), base.plus_seconds(60), 5).await, None);
    let second = h.claim("w2", base.plus_seconds(30), base.plus_seconds(60), 5).await.expect("the lease expired");
    assert_eq!(second.job_id, "j");
    assert_eq!(second.lease_holder.as_deref(), Some("w2"));
    assert_eq!(second.lease_expires_at, Some(base.plus_seconds(60)));
    assert_eq!(second.heartbeat_at, Some(base.plus_seconds(30)));
    assert_eq!((second.attempts, second.version, second.started_at), (2, 3, first.started_at));

    let late = JobRecord { status: JobStatus::Succeeded, ..first.clone() };
    assert_eq!(
        h.write(&late, Some(first.version), None).await,
        Err(JobWriteRefusal::VersionMismatch { current: Some(3) })
    );
    assert_eq!(h.read("j").await, Some(second));
}

/// Jobs that used up `attempts_max` are not claimed, queued or with an expired lease; they are
/// what `stuck_jobs` reports (a running job without a lease counts as one whose lease expired).
pub async fn jobs_attempts_max_respected(h: JobHarness) {
    let base = h.now();
    let queued = JobRecord { attempts: 3, ..h.record("queued", "t") };
    h.insert(&queued).await;
    assert_eq!(h.claim("w", base, base.plus_seconds(30), 3).await, None);
    let claimed = h.claim("w", base, base.plus_seconds(30), 4).await.expect("one attempt left");
    assert_eq!(claimed.attempts, 4);
    // Its lease expires with the attempts used up: not claimable, but stuck.
    h.ledger.clock.advance_seconds(31);
    assert_eq!(h.claim("w2", h.now(), h.now().plus_seconds(30), 4).await, None);
    assert_eq!(h.stuck(3_600, 3_600, 4, 10).await, vec!["queued"], "lease expired, attempts exhausted");
    assert_eq!(h.stuck(3_600, 3_600, 5, 10).await, Vec::<String>::new(), "one attempt left: not stuck yet");
    let again = h.claim("w2", h.now(), h.now().plus_seconds(30), 5).await.expect("claimable with a higher max");
    assert_eq!(again.attempts, 5);

    // A running job without any lease has none left either; a fresh heartbeat does not save it.
    let leaseless = JobRecord {
        status: JobStatus::Running,
        attempts: 2,
        heartbeat_at: Some(h.now()),
        created_at: h.now().plus_seconds(1),
        ..h.record("leaseless", "t")
    };
    h.insert(&leaseless).await;
    assert_eq!(h.stuck(3_600, 3_600, 2, 10).await, vec!["leaseless"], "the claimed job holds a live lease");
    assert_eq!(h.stuck(3_600, 3_600, 3, 10).await, Vec::<String>::new());
    assert_eq!(h.claim("w3", h.now(), h.now().plus_seconds(30), 9).await, None, "no lease is not an expired lease");
}

/// `stuck_jobs` lists running jobs with an old heartbeat and queued jobs created long ago, oldest
/// first and at most `limit`, but not fresh ones nor terminal ones.
pub async fn jobs_stuck_jobs(h: JobHarness) {
    let base = h.now();
    // (id, status, created +s, heartbeat +s)
    let jobs = [
        ("old-heartbeat", JobStatus::Running, 3, Some(0)),
        ("fresh-heartbeat", JobStatus::Running, 1, Some(250)),
        ("old-queued", JobStatus::Queued, 2, None),
        ("fresh-queued", JobStatus::Queued, 200, None),
        ("old-done", JobStatus::Succeeded, 0, Some(0)),
        ("old-failed", JobStatus::Failed, 0, None),
        ("old-canceled", JobStatus::Canceled, 0, None),
        ("old-heartbeat-2", JobStatus::Running, 4, Some(10)),
    ];
    for (job_id, status, created, heartbeat) in jobs {
        let mut job = h.record(job_id, "t");
        job.status = status;
        job.created_at = base.plus_seconds(created);
        job.updated_at = job.created_at;
        job.heartbeat_at = heartbeat.map(|seconds| base.plus_seconds(seconds));
        job.lease_expires_at = heartbeat.map(|seconds| base.plus_seconds(seconds + 10_000));
        h.insert(&job).await;
    }
    h.ledger.clock.set(base.plus_seconds(300));
    // Heartbeats before +200 are old; queued jobs created before +100 are old.
    assert_eq!(h.stuck(100, 200, 5, 10).await, vec!["old-queued", "old-heartbeat", "old-heartbeat-2"]);
    assert_eq!(h.stuck(100, 200, 5, 2).await, vec!["old-queued", "old-heartbeat"]);
    assert_eq!(h.stuck(100, 200, 5, 0).await, Vec::<String>::new());
    // Tighter thresholds catch the fresh ones too; looser ones catch nothing.
    assert_eq!(h.stuck(0, 0, 5, 10).await.len(), 5);
    assert_eq!(h.stuck(10_000, 10_000, 5, 10).await, Vec::<String>::new());
    // A heartbeat exactly at the threshold is not older than it.
    assert_eq!(h.stuck(300, 300, 5, 10).await, Vec::<String>::new());
    assert_eq!(h.stuck(290, 300, 5, 10).await, vec!["old-heartbeat"]);
}

/// `thread_jobs` lists one thread's jobs oldest first (ties by id, byte order), at most `limit`.
pub async fn jobs_thread_jobs_order_and_limit(h: JobHarness) {
    let base = h.now();
    // (id, thread, created +s): inserted out of order.
    let jobs =
        [("j-c", "t", 30), ("j-a", "t", 10), ("x", "other", 0), ("j-b", "t", 20), ("j-10", "t", 10), ("j-2", "t", 10)];
    for (job_id, thread_id, created) in jobs {
        let mut job = h.record(job_id, thread_id);
        job.created_at = base.plus_seconds(created);
        h.insert(&job).await;
    }
    assert_eq!(h.thread("t", 10).await, vec!["j-10", "j-2", "j-a", "j-b", "j-c"]);
    assert_eq!(h.thread("t", 2).await, vec!["j-10", "j-2"]);
    assert_eq!(h.thread("t", 0).await, Vec::<String>::new());
    assert_eq!(h.thread("t", u32::MAX).await.len(), 5);
    assert_eq!(h.thread("other", 10).await, vec!["x"]);
    let listed = h.store.thread_jobs(&thread_of("t"), 1).await.unwrap();
    assert_eq!(listed, vec![h.read("j-10").await.unwrap()], "lists hold whole records");
}

/// An account's jobs come newest first (by `created_at`, then id byte-wise, both descending),
/// in pages that continue after a job's `(created_at, id)`, never another account's.
pub async fn jobs_account_jobs_newest_first_in_pages(h: JobHarness) {
    let base = h.now();
    // (id, account, created +s): inserted out of order; three created at the same time.
    let jobs =
        [("j-c", "u", 30), ("j-a", "u", 10), ("x", "other", 40), ("j-b", "u", 20), ("j-10", "u", 10), ("j-2", "u", 10)];
    for (job_id, account_id, created) in jobs {
        let mut job = h.record(job_id, "t");
        job.account_id = account(account_id);
        job.created_at = base.plus_seconds(created);
        h.insert(&job).await;
    }
    let page = |before: Option<&'static str>, limit: u32| {
        let h = &h;
        async move {
            let cursor = match before {
                Some(job_id) => Some(h.read(job_id).await.expect("the cursor's job")),
                None => None,
            };
            let before = cursor.as_ref().map(|job| (job.created_at, &job.job_id));
            let jobs = h.store.account_jobs(&account("u"), before, limit).await.expect("store answers");
            assert!(jobs.iter().all(|job| job.account_id.as_str() == "u"), "only the account's jobs: {jobs:?}");
            jobs.into_iter().map(|job| job.job_id.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 10).await, vec!["j-c", "j-b", "j-a", "j-2", "j-10"]);
    assert_eq!(page(None, 2).await, vec!["j-c", "j-b"]);
    assert_eq!(page(Some("j-b"), 2).await, vec!["j-a", "j-2"]);
    assert_eq!(page(Some("j-2"), 2).await, vec!["j-10"]);
    assert_eq!(page(Some("j-10"), 2).await, Vec::<String>::new());
    assert_eq!(page(None, 0).await, Vec::<String>::new());
    let listed = h.store.account_jobs(&account("u"), None, 1).await.expect("store answers");
    assert_eq!(listed, vec![h.read("j-c").await.expect("stored")], "lists hold whole records");
}
