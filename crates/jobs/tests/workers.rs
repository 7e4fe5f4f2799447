//! The worker loop over a real job service on the memory store: every way an attempt can end
//! (success, permanent and transient failures, the last attempt, a cancel seen at a heartbeat, a
//! lost lease, a shutdown) leaves the job and the ledger where the contract says, with the price
//! charged once or refunded exactly once, and racing workers render each job exactly once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobs::render::{ProgressSink, RenderFailure, Rendered, Renderer};
use jobs::worker::{run_worker, spawn_workers, WorkerBackend, SHUTDOWN_DETAIL};
use jobs::{JobErrorCode, JobService, JobsConfig, NewJob};
use ledger::{AccountId, Amount, Command, EntryKind, HoldId, Timestamp};
use store::conformance::{grant_credits, hold_credits};
use store::memory::MemoryStore;
use store::{
    Clock, Executed, JobId, JobRecord, JobStatus, JobStore, LedgerStore, ManualClock, Request, RunId, RunStore,
    ThreadId,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "alice";
/// Longest wait for anything the tests wait for; reaching it fails the test.
const WAIT_SECONDS_MAX: u64 = 20;
const PRICE: &str = "10";

/// What the scripted renderer does on one call.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Ok,
    Transient,
    Permanent,
    /// Never finishes (until dropped).
    Hang,
    Panic,
}

/// A renderer that plays a script (then succeeds), recording which jobs it rendered and how
/// many of its renders were dropped unfinished (announcing each drop).
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Reply>>,
    rendered: Mutex<Vec<String>>,
    dropped: Arc<Dropped>,
    /// Renders of a job take this long (racing workers overlap).
    delay: Duration,
}

/// Renders dropped before they finished, and a notice of each.
#[derive(Default)]
struct Dropped {
    count: AtomicUsize,
    notice: Notify,
}

impl Dropped {
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least one render was dropped.
    async fn first(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECONDS_MAX);
        loop {
            let notice = self.notice.notified();
            tokio::pin!(notice);
            notice.as_mut().enable();
            if self.count() > 0 {
                return;
            }
            tokio::time::timeout_at(deadline, notice).await.expect("a render was dropped in time");
        }
    }
}

impl Scripted {
    fn new(script: &[Reply]) -> Arc<Scripted> {
        Arc::new(Scripted { script: Mutex::new(script.iter().copied().collect()), ..Scripted::default() })
    }

    fn rendered(&self) -> Vec<String> {
        self.rendered.lock().expect("rendered lock").clone()
    }
}

/// Counts a render dropped before it finished.
struct DropCounter(Arc<Dropped>, bool);

impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.1 {
            self.0.count.fetch_add(1, Ordering::SeqCst);
            self.0.notice.notify_waiters();
        }
    }
}

#[async_trait]
impl Renderer for Scripted {
    async fn render(&self, job_id: &str, input: &str, progress: &dyn ProgressSink) -> Result<Rendered, RenderFailure> {
        let mut guard = DropCounter(Arc::clone(&self.dropped), false);
        let reply = self.script.lock().expect("script lock").pop_front().unwrap_or(Reply::Ok);
        progress.progress("render", 40);
        if !self.delay.is_zero() {
            // The render's own duration (a test double's work), so racing workers overlap.
            tokio::time::sleep(self.delay).await;
        }
        let failure = |transient| RenderFailure {
            transient,
            code: if transient { JobErrorCode::Unknown } else { JobErrorCode::RenderUnrecoverable },
            stage: "render".to_owned(),
            detail: "scripted".to_owned(),
        };
        let result = match reply {
            Reply::Ok => {
                self.rendered.lock().expect("rendered lock").push(job_id.to_owned());
                Ok(Rendered { bytes: format!("video of {input}").into_bytes(), content_type: "video/mp4".to_owned() })
            }
            Reply::Transient => Err(failure(true)),
            Reply::Permanent => Err(failure(false)),
            Reply::Hang => futures::future::pending().await,
            Reply::Panic => panic!("scripted renderer panic"),
        };
        guard.1 = true;
        result
    }
}

struct Setup {
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    service: Arc<JobService>,
    hold_id: HoldId,
}

fn config() -> JobsConfig {
    JobsConfig { heartbeat_seconds: 1, idle_poll_ms: 20, retry_backoff_seconds: 2, ..JobsConfig::default() }
}

async fn execute(store: &MemoryStore, command: Command) {
    match store.execute(Request::new(command)).await.expect("store works") {
        Executed::Fresh(Ok(_)) => {}
        other => panic!("ledger command refused: {other:?}"),
    }
}

/// 200 granted to the account, 150 held for the turn that creates the jobs.
async fn setup(config: JobsConfig) -> Setup {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_800_000_000_000_000)));
    let store = Arc::new(MemoryStore::new(Arc::clone(&clock) as Arc<dyn Clock>, 86_400));
    execute(&store, grant_credits(ACCOUNT, "grant-1", 200)).await;
    execute(&store, hold_credits(ACCOUNT, "hold-1", 150, 3600)).await;
    let hold_id = HoldId::parse("hold-1").expect("valid hold id");
    let service = JobService::new(
        Arc::clone(&store) as Arc<dyn JobStore>,
        Arc::clone(&store) as Arc<dyn RunStore>,
        Arc::clone(&clock) as Arc<dyn Clock>,
        config,
    );
    Setup { clock, store, service, hold_id }
}

impl Setup {
    async fn create(&self, index: usize) -> JobRecord {
        let input = format!(r#"{{"problem":"p{index}","answer":"a","explanation":null}}"#);
        let new = NewJob {
            account_id: AccountId::parse(ACCOUNT).expect("valid account"),
            thread_id: ThreadId::parse("thread-1").expect("valid thread id"),
            run_id: RunId::parse(&format!("run-{index}")).expect("valid run id"),
            hold_id: self.hold_id.clone(),
            price: Amount::parse(PRICE).expect("valid price"),
            input,
            retry_source_job_id: None,
        };
        let job = self.service.create(new).await.expect("job created");
        assert_eq!(job.status, JobStatus::Queued);
        job
    }

    async fn job(&self, job_id: &JobId) -> JobRecord {
        self.store.job(job_id).await.expect("store works").expect("job exists")
    }

    /// Waits (bounded) until the stored job satisfies `done`, woken by every job write the
    /// service publishes.
    async fn wait_for(&self, job_id: &JobId, what: &str, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
        let mut updates = self.service.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECONDS_MAX);
        loop {
            let job = self.job(job_id).await;
            if done(&job) {
                return job;
            }
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Ok(Ok(_) | Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) => panic!("the job service stopped"),
                Err(_) => panic!("timed out waiting for {what}: {job:#?}"),
            }
        }
    }

    async fn wait_terminal(&self, job_id: &JobId) -> JobRecord {
        self.wait_for(job_id, "a terminal status", |job| job.status.is_terminal()).await
    }

    /// (balance, held) of the account.
    async fn figures(&self) -> (String, String) {
        let account_id = AccountId::parse(ACCOUNT).expect("valid account");
        let view = self.store.account(&account_id).await.expect("store works").expect("account exists");
        (view.balances.balance.to_string(), view.balances.held.to_string())
    }

    async fn refunds(&self) -> usize {
        let account_id = AccountId::parse(ACCOUNT).expect("valid account");
        let entries = self.store.entries(&account_id, 0, 1000).await.expect("store works");
        entries.iter().filter(|entry| entry.kind == EntryKind::Refund).count()
    }

    async fn assert_verified(&self) {
        let report = self.store.verify().await.expect("verify runs");
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    fn worker(
        &self,
        renderer: Arc<Scripted>,
        worker_id: &str,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let backend: Arc<dyn WorkerBackend> = Arc::clone(&self.service) as Arc<dyn WorkerBackend>;
        tokio::spawn(run_worker(
            backend,
            renderer,
            worker_id.to_owned(),
            self.service.config().clone(),
            shutdown.clone(),
        ))
    }
}

async fn stop(shutdown: CancellationToken, worker: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker).await.expect("worker stops").expect("worker did not panic");
}

#[tokio::test]
async fn a_rendered_job_succeeds_with_its_artifact_and_keeps_its_price() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    assert_eq!(setup.figures().await, ("190".to_owned(), "140".to_owned()), "the price is captured at creation");
    let renderer = Scripted::new(&[Reply::Ok]);
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Arc::clone(&renderer), "w1", &shutdown);
    let job = setup.wait_terminal(&job.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:#?}");
    assert_eq!((job.attempts, job.progress_percent, job.refund_applied_at), (1, 100, None));
    let artifact_id = job.artifact_id.clone().expect("an artifact");
    let artifact = setup.store.artifact(&artifact_id).await.expect("store works").expect("artifact stored");
    assert_eq!(artifact.content_type, "video/mp4");
    assert!(String::from_utf8_lossy(&artifact.bytes).contains(r#""problem":"p1""#));
    assert_eq!(renderer.rendered(), vec![job.job_id.to_string()]);
    stop(shutdown, worker).await;
    assert_eq!(setup.figures().await, ("190".to_owned(), "140".to_owned()));
    assert_eq!(setup.refunds().await, 0);
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_permanent_failure_ends_the_job_failed_and_refunded_once() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Scripted::new(&[Reply::Permanent]), "w1", &shutdown);
    let job = setup.wait_terminal(&job.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:#?}");
    assert_eq!(job.error_code.as_deref(), Some("render_unrecoverable"));
    assert!(job.refund_applied_at.is_some());
    // The worker has stopped before the refunds are counted: a second finish, had its loop made
    // one, is in by then.
    stop(shutdown, worker).await;
    assert_eq!(setup.refunds().await, 1);
    assert_eq!(setup.figures().await, ("200".to_owned(), "140".to_owned()));
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_panicking_renderer_is_a_permanent_failure_and_the_worker_goes_on() {
    let setup = setup(config()).await;
    let first = setup.create(1).await;
    let shutdown = CancellationToken::new();
    let renderer = Scripted::new(&[Reply::Panic, Reply::Ok]);
    let worker = setup.worker(Arc::clone(&renderer), "w1", &shutdown);
    let first = setup.wait_terminal(&first.job_id).await;
    assert_eq!((first.status, first.error_code.as_deref()), (JobStatus::Failed, Some("render_unrecoverable")));
    let second = setup.create(2).await;
    let second = setup.wait_terminal(&second.job_id).await;
    assert_eq!(second.status, JobStatus::Succeeded);
    stop(shutdown, worker).await;
    assert_eq!(setup.refunds().await, 1);
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_transient_failure_requeues_without_refund_and_the_next_attempt_succeeds() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Scripted::new(&[Reply::Transient, Reply::Ok]), "w1", &shutdown);
    let requeued =
        setup.wait_for(&job.job_id, "the re-queue", |job| job.attempts == 1 && job.status == JobStatus::Queued).await;
    assert_eq!((requeued.error_code.as_deref(), requeued.refund_applied_at), (Some("unknown"), None));
    assert_eq!(requeued.lease_holder, None);
    assert_eq!(setup.refunds().await, 0);
    assert_eq!(setup.figures().await, ("190".to_owned(), "140".to_owned()));
    // The backoff holds the job back until the clock passes it: nobody can claim it now.
    assert_eq!(setup.service.claim("probe").await.expect("store works"), None, "the backoff holds the job");
    assert_eq!(setup.job(&job.job_id).await.status, JobStatus::Queued);
    setup.clock.advance_seconds(2);
    let job = setup.wait_terminal(&job.job_id).await;
    assert_eq!((job.status, job.attempts, job.refund_applied_at), (JobStatus::Succeeded, 2, None), "{job:#?}");
    stop(shutdown, worker).await;
    assert_eq!(setup.refunds().await, 0);
    assert_eq!(setup.figures().await, ("190".to_owned(), "140".to_owned()));
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_transient_failure_on_the_last_attempt_fails_and_refunds() {
    let setup = setup(JobsConfig { attempts_max: 2, ..config() }).await;
    let job = setup.create(1).await;
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Scripted::new(&[Reply::Transient, Reply::Transient, Reply::Ok]), "w1", &shutdown);
    setup.wait_for(&job.job_id, "the re-queue", |job| job.attempts == 1 && job.status == JobStatus::Queued).await;
    assert_eq!(setup.refunds().await, 0);
    setup.clock.advance_seconds(2);
    let job = setup.wait_terminal(&job.job_id).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Failed, 2), "{job:#?}");
    assert!(job.refund_applied_at.is_some());
    stop(shutdown, worker).await;
    assert_eq!(setup.refunds().await, 1);
    assert_eq!(setup.figures().await, ("200".to_owned(), "140".to_owned()));
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_cancel_seen_at_a_heartbeat_drops_the_render_and_refunds() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    let renderer = Scripted::new(&[Reply::Hang]);
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Arc::clone(&renderer), "w1", &shutdown);
    setup.wait_for(&job.job_id, "the claim", |job| job.status == JobStatus::Running).await;
    let requested = setup.service.cancel(&job.job_id).await.expect("cancel");
    assert_eq!((requested.status, requested.cancel_requested), (JobStatus::Running, true));
    let job = setup.wait_terminal(&job.job_id).await;
    assert_eq!((job.status, job.error_code.as_deref()), (JobStatus::Canceled, Some("canceled")), "{job:#?}");
    assert!(job.refund_applied_at.is_some());
    assert_eq!(renderer.dropped.count(), 1, "the render was dropped");
    stop(shutdown, worker).await;
    assert_eq!(setup.refunds().await, 1);
    assert_eq!(setup.figures().await, ("200".to_owned(), "140".to_owned()));
    setup.assert_verified().await;
}

#[tokio::test]
async fn heartbeats_report_the_renders_progress() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Scripted::new(&[Reply::Hang]), "w1", &shutdown);
    let job = setup
        .wait_for(&job.job_id, "a heartbeat", |job| job.status == JobStatus::Running && job.progress_percent == 40)
        .await;
    assert_eq!(job.stage, "render");
    stop(shutdown, worker).await;
}

#[tokio::test]
async fn a_lost_lease_drops_the_render_without_finishing() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    let slow = Scripted::new(&[Reply::Hang]);
    let shutdown = CancellationToken::new();
    let first = setup.worker(Arc::clone(&slow), "w1", &shutdown);
    setup.wait_for(&job.job_id, "the first claim", |job| job.lease_holder.as_deref() == Some("w1")).await;
    // The first worker looks dead: its lease runs out and the second worker takes the job over.
    setup.clock.advance_seconds(31);
    let second_renderer = Scripted::new(&[Reply::Hang]);
    let second_shutdown = CancellationToken::new();
    let second = setup.worker(Arc::clone(&second_renderer), "w2", &second_shutdown);
    setup.wait_for(&job.job_id, "the second claim", |job| job.lease_holder.as_deref() == Some("w2")).await;
    // The first worker notices at its next heartbeat, and drops its render.
    slow.dropped.first().await;
    let job = setup.job(&job.job_id).await;
    assert_eq!(
        (job.status, job.attempts, job.lease_holder.as_deref()),
        (JobStatus::Running, 2, Some("w2")),
        "{job:#?}"
    );
    stop(shutdown, first).await;
    // Only now the second one is told to stop: it hands its lease back.
    stop(second_shutdown, second).await;
    let job = setup.job(&job.job_id).await;
    assert_eq!((job.status, job.error_detail.as_deref()), (JobStatus::Queued, Some(SHUTDOWN_DETAIL)), "{job:#?}");
    assert_eq!(setup.refunds().await, 0);
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_shutdown_hands_the_lease_back_without_refund() {
    let setup = setup(config()).await;
    let job = setup.create(1).await;
    let renderer = Scripted::new(&[Reply::Hang]);
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Arc::clone(&renderer), "w1", &shutdown);
    setup.wait_for(&job.job_id, "the claim", |job| job.status == JobStatus::Running).await;
    stop(shutdown, worker).await;
    assert_eq!(renderer.dropped.count(), 1);
    let job = setup.job(&job.job_id).await;
    assert_eq!((job.status, job.attempts, job.lease_holder.as_deref()), (JobStatus::Queued, 1, None), "{job:#?}");
    assert_eq!((job.error_code.as_deref(), job.error_detail.as_deref()), (Some("unknown"), Some(SHUTDOWN_DETAIL)));
    assert_eq!(job.refund_applied_at, None);
    assert_eq!(setup.refunds().await, 0);
    assert_eq!(setup.figures().await, ("190".to_owned(), "140".to_owned()));
    setup.assert_verified().await;
}

#[tokio::test]
async fn a_shutdown_on_the_last_attempt_ends_the_job_refunded() {
    let setup = setup(JobsConfig { attempts_max: 1, ..config() }).await;
    let job = setup.create(1).await;
    let shutdown = CancellationToken::new();
    let worker = setup.worker(Scripted::new(&[Reply::Hang]), "w1", &shutdown);
    setup.wait_for(&job.job_id, "the claim", |job| job.status == JobStatus::Running).await;
    stop(shutdown, worker).await;
    let job = setup.job(&job.job_id).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:#?}");
    assert!(job.refund_applied_at.is_some());
    assert_eq!(setup.refunds().await, 1);
    assert_eq!(setup.figures().await, ("200".to_owned(), "140".to_owned()));
    setup.assert_verified().await;
}

#[tokio::test]
async fn an_idle_in_process_worker_is_woken_when_a_job_is_queued() {
    // An idle wait far longer than the test: only the wake-up can start the render in time.
    let setup = setup(JobsConfig { idle_poll_ms: 120_000, ..config() }).await;
    let shutdown = CancellationToken::new();
    let workers = spawn_workers(&setup.service, Scripted::new(&[]), "instance", 1, shutdown.clone());
    // On this current-thread runtime, one yield runs the new worker to its idle wait (its first
    // claim finds nothing): the job below is created while it waits.
    tokio::task::yield_now().await;
    let job = setup.create(1).await;
    let job = setup.wait_terminal(&job.job_id).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    for worker in workers {
        stop(shutdown.clone(), worker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_for_ten_jobs_render_each_exactly_once() {
    let setup = setup(config()).await;
    let renderer = Arc::new(Scripted { delay: Duration::from_millis(15), ..Scripted::default() });
    let shutdown = CancellationToken::new();
    let workers =
        spawn_workers(&setup.service, Arc::clone(&renderer) as Arc<dyn Renderer>, "instance", 2, shutdown.clone());
    let mut job_ids = Vec::new();
    for index in 0..10 {
        job_ids.push(setup.create(index).await.job_id);
    }
    let mut holders = Vec::new();
    for job_id in &job_ids {
        let job = setup.wait_terminal(job_id).await;
        assert_eq!((job.status, job.attempts), (JobStatus::Succeeded, 1), "{job:#?}");
        holders.push(job);
    }
    for worker in workers {
        stop(shutdown.clone(), worker).await;
    }
    let mut rendered = renderer.rendered();
    rendered.sort();
    let mut expected: Vec<String> = job_ids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(rendered, expected, "each job rendered exactly once");
    assert_eq!(setup.refunds().await, 0);
    assert_eq!(setup.figures().await, ("100".to_owned(), "50".to_owned()));
    setup.assert_verified().await;
}
