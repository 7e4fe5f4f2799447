//! Remote video workers: the worker API's auth rules and protocol over real sockets, the same
//! worker loop driving it over HTTP in-process, and real `creditgraph worker` processes against
//! a real `creditgraph serve` on PostgreSQL — one killed with SIGKILL mid-render (its lease runs
//! out, another worker takes the job over and finishes it, the price charged once), one stopped
//! with SIGTERM (it hands the lease back: the job is queued again, nothing refunded).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jobs::remote::{self, HttpWorkerBackend};
use jobs::render::builtin::BuiltinRenderer;
use jobs::render::{ProgressSink, RenderFailure, Rendered, Renderer};
use jobs::worker::{run_worker, WorkerBackend};
use jobs::{Finish, JobService, JobsConfig, NewJob};
use ledger::{AccountId, Amount, HoldId};
use reqwest::Method;
use serde_json::{json, Value};
use store::{Clock, JobRecord, JobStatus, JobStore, RunStore, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::helpers::{spawn_app, spawn_app_with, Body, Reply, TestApp, ADMIN_TOKEN};

const WORKER_TOKEN: &str = "worker-test-token";

async fn worker_app(artifact_bytes_max: usize) -> TestApp {
    spawn_app_with(|settings| {
        settings.api.worker_token = Some(WORKER_TOKEN.to_owned());
        settings.runs.jobs.workers_in_process = 0;
        settings.runs.jobs.heartbeat_seconds = 1;
        settings.runs.jobs.artifact_bytes_max = artifact_bytes_max;
    })
    .await
}

async fn worker_call(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> Reply {
    app.request(Method::POST, path, token, None, Body::Json(body)).await
}

/// A job of price 10 for `account`'s thread `<account>-thread`, paid from `hold_id`.
fn new_job(account: &str, run: &str, hold_id: HoldId, input: Value) -> NewJob {
    NewJob {
        account_id: AccountId::parse(account).expect("valid account"),
        thread_id: store::ThreadId::parse(&format!("{account}-thread")).expect("valid thread id"),
        run_id: store::RunId::parse(run).expect("valid run id"),
        hold_id,
        price: Amount::parse("10").expect("valid price"),
        input: input.to_string(),
        retry_source_job_id: None,
    }
}

fn jobs(app: &TestApp) -> Arc<JobService> {
    app.engine.jobs().expect("the app runs video jobs").clone()
}

/// Funds `account` with 30, holds 25 through the API, and creates a job of price 10 from that
/// hold (as a video step would).
async fn queued_job(app: &TestApp, account: &str) -> JobRecord {
    app.fund(account, "30").await;
    let hold_id = app.hold_id(account, "25").await;
    let input = json!({"problem": "2 + 2 = ?", "answer": "4", "explanation": "1. 2 + 2 = 4"});
    let new = new_job(account, &format!("{account}-run"), HoldId::parse(&hold_id).expect("valid hold id"), input);
    jobs(app).create(new).await.expect("job created")
}

async fn refunds(app: &TestApp, account: &str) -> usize {
    let entries = app.entries(account, "?limit=1000").await;
    let entries = entries.assert_status(200)["entries"].as_array().expect("entries").clone();
    entries.iter().filter(|entry| entry["kind"] == "refund").count()
}

#[tokio::test]
async fn the_worker_api_is_off_without_a_worker_token() {
    let app = spawn_app().await;
    for token in [None, Some(ADMIN_TOKEN), Some("anything")] {
        worker_call(&app, "/v1/worker/claim", token, json!({"worker_id": "w1"}))
            .await
            .assert_problem(503, "worker_api_disabled");
    }
    worker_call(&app, "/v1/worker/jobs/job-1/heartbeat", Some(ADMIN_TOKEN), json!({}))
        .await
        .assert_problem(503, "worker_api_disabled");
}

#[tokio::test]
async fn the_worker_api_needs_the_worker_token() {
    let app = worker_app(1024).await;
    let body = json!({"worker_id": "w1"});
    let missing = worker_call(&app, "/v1/worker/claim", None, body.clone()).await;
    missing.assert_problem(401, "unauthorized");
    for wrong in ["worker-test-tokem", "worker-test-token-longer", "", ADMIN_TOKEN] {
        worker_call(&app, "/v1/worker/claim", Some(wrong), body.clone()).await.assert_problem(401, "unauthorized");
    }
    let basic = app
        .client
        .post(format!("{}/v1/worker/claim", app.address))
        .header("authorization", format!("Basic {WORKER_TOKEN}"))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    assert_eq!(basic.status(), 401);
    let nothing = worker_call(&app, "/v1/worker/claim", Some(WORKER_TOKEN), body).await;
    assert_eq!((nothing.status, nothing.text.as_str()), (204, ""), "{nothing:#?}");
    // The role tokens' routes do not take the worker token either.
    app.request(Method::GET, "/v1/accounts/alice", Some(WORKER_TOKEN), None, Body::None)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn the_worker_protocol_claims_heartbeats_and_finishes_over_http() {
    let app = worker_app(1024).await;
    let token = Some(WORKER_TOKEN);
    worker_call(&app, "/v1/worker/claim", token, json!({"worker_id": ""})).await.assert_problem(422, "invalid_request");
    let job = queued_job(&app, "amy").await;
    let claimed = worker_call(&app, "/v1/worker/claim", token, json!({"worker_id": "remote-1"})).await;
    let claimed = claimed.assert_status(200).clone();
    assert_eq!((claimed["job_id"].as_str(), claimed["status"].as_str()), (Some(job.job_id.as_str()), Some("running")));
    assert_eq!((claimed["lease_holder"].as_str(), claimed["attempts"].as_u64()), (Some("remote-1"), Some(1)));
    assert_eq!(claimed["input"]["problem"], "2 + 2 = ?", "{claimed:#}");

    let heartbeat = format!("/v1/worker/jobs/{}/heartbeat", job.job_id);
    let beat =
        worker_call(&app, &heartbeat, token, json!({"worker_id": "remote-1", "stage": "render", "progress": 40})).await;
    assert_eq!(beat.assert_status(200), &json!({"cancel_requested": false}));
    let stolen =
        worker_call(&app, &heartbeat, token, json!({"worker_id": "remote-2", "stage": "render", "progress": 40}));
    stolen.await.assert_problem(409, "lease_lost");
    for bad in [
        json!({"worker_id": "remote-1", "stage": "render", "progress": 101}),
        json!({"worker_id": "remote-1", "stage": "Render!", "progress": 1}),
        json!({"worker_id": "remote-1", "progress": 1}),
    ] {
        worker_call(&app, &heartbeat, token, bad).await.assert_problem(422, "invalid_request");
    }
    let unknown = json!({"worker_id": "remote-1", "stage": "render", "progress": 1});
    worker_call(&app, "/v1/worker/jobs/job-nope/heartbeat", token, unknown).await.assert_problem(404, "job_not_found");
    let stored = jobs(&app).get(&job.job_id).await.expect("store works").expect("job exists");
    assert_eq!((stored.stage.as_str(), stored.progress_percent), ("render", 40));

    let finish = format!("/v1/worker/jobs/{}/finish", job.job_id);
    let artifact = |bytes: usize| {
        let rendered = Rendered { bytes: vec![b'v'; bytes], content_type: "video/mp4".to_owned() };
        remote::finish_body("remote-1", &Finish::Succeeded(rendered))["artifact_base64"].clone()
    };
    let too_large = json!({"worker_id": "remote-1", "outcome": "succeeded", "artifact_base64": artifact(1025), "content_type": "video/mp4"});
    let refused = worker_call(&app, &finish, token, too_large).await;
    refused.assert_problem(413, "payload_too_large");
    assert_eq!(refused.body["bytes_max"], 1024);
    // Far over the body bound: refused while reading, before any decoding.
    let huge = json!({"worker_id": "remote-1", "outcome": "succeeded", "artifact_base64": artifact(200_000)});
    worker_call(&app, &finish, token, huge).await.assert_problem(413, "payload_too_large");
    worker_call(&app, &finish, token, json!({"worker_id": "remote-1", "outcome": "done"}))
        .await
        .assert_problem(422, "invalid_request");
    let other = json!({"worker_id": "remote-2", "outcome": "succeeded", "artifact_base64": artifact(10), "content_type": "video/mp4"});
    worker_call(&app, &finish, token, other).await.assert_problem(409, "lease_lost");

    let done = json!({"worker_id": "remote-1", "outcome": "succeeded", "artifact_base64": artifact(1024), "content_type": "video/mp4"});
    let finished = worker_call(&app, &finish, token, done.clone()).await;
    let finished = finished.assert_status(200).clone();
    assert_eq!((finished["status"].as_str(), finished["refunded"].as_bool()), (Some("succeeded"), Some(false)));
    let url = finished["artifact_url"].as_str().expect("artifact url").to_owned();
    let served = app.get(&url).await;
    assert_eq!((served.status, served.content_type.as_str(), served.text.len()), (200, "video/mp4", 1024));
    // A second report of an ended job changes nothing.
    let again = worker_call(&app, &finish, token, json!({"worker_id": "remote-1", "outcome": "canceled"})).await;
    assert_eq!(again.assert_status(200)["version"], finished["version"]);
    assert_eq!(app.figures("amy").await, ("20".to_owned(), "15".to_owned(), "5".to_owned()));
    assert_eq!(refunds(&app, "amy").await, 0);
    app.assert_verified().await;
}

#[tokio::test]
async fn a_failure_handed_in_over_http_refunds_once() {
    let app = worker_app(1024).await;
    let token = Some(WORKER_TOKEN);
    let job = queued_job(&app, "bea").await;
    worker_call(&app, "/v1/worker/claim", token, json!({"worker_id": "remote-1"})).await.assert_status(200);
    let finish = format!("/v1/worker/jobs/{}/finish", job.job_id);
    let failed = json!({"worker_id": "remote-1", "outcome": "failed", "transient": false, "error_code": "tts_provider_down", "stage": "tts", "detail": "TTS is down"});
    let ended = worker_call(&app, &finish, token, failed.clone()).await;
    let ended = ended.assert_status(200).clone();
    assert_eq!((ended["status"].as_str(), ended["error_code"].as_str()), (Some("failed"), Some("tts_provider_down")));
    assert_eq!((ended["error_stage"].as_str(), ended["refunded"].as_bool()), (Some("tts"), Some(true)));
    worker_call(&app, &finish, token, failed).await.assert_status(200);
    assert_eq!(refunds(&app, "bea").await, 1);
    assert_eq!(app.figures("bea").await.0, "30");
    app.assert_verified().await;
}

/// A renderer that never finishes (until its future is dropped).
struct Endless;

#[async_trait]
impl Renderer for Endless {
    async fn render(
        &self,
        _job_id: &str,
        _input: &str,
        progress: &dyn ProgressSink,
    ) -> Result<Rendered, RenderFailure> {
        progress.progress("tts", 30);
        futures::future::pending().await
    }
}

fn remote_worker(
    app: &TestApp,
    renderer: Arc<dyn Renderer>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let backend = HttpWorkerBackend::new(&app.address, WORKER_TOKEN, 10).expect("valid backend");
    let backend: Arc<dyn WorkerBackend> = Arc::new(backend);
    let config = JobsConfig { heartbeat_seconds: 1, idle_poll_ms: 25, ..JobsConfig::default() };
    tokio::spawn(run_worker(backend, renderer, "remote-loop".to_owned(), config, shutdown.clone()))
}

async fn wait_for(app: &TestApp, job_id: &store::JobId, what: &str, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
    app.wait_for_job(job_id, what, done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_loop_renders_over_http_with_the_builtin_renderer() {
    let app = worker_app(1024 * 1024).await;
    let job = queued_job(&app, "cal").await;
    let shutdown = CancellationToken::new();
    let worker = remote_worker(&app, Arc::new(BuiltinRenderer), &shutdown);
    let done = wait_for(&app, &job.job_id, "the render", |job| job.status.is_terminal()).await;
    shutdown.cancel();
    worker.await.expect("the worker stops");
    assert_eq!((done.status, done.attempts, done.refund_applied_at), (JobStatus::Succeeded, 1, None), "{done:#?}");
    let artifact = app.get(&format!("/v1/artifacts/{}", done.artifact_id.expect("artifact"))).await;
    assert_eq!((artifact.status, artifact.content_type.as_str()), (200, "image/svg+xml"));
    assert!(artifact.text.contains("2 + 2 = ?"), "{}", artifact.text);
    assert_eq!(app.figures("cal").await, ("20".to_owned(), "15".to_owned(), "5".to_owned()));
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_ends_a_canceled_job_and_hands_back_its_lease_at_shutdown() {
    let app = worker_app(1024).await;
    let canceled = queued_job(&app, "dan").await;
    let shutdown = CancellationToken::new();
    let worker = remote_worker(&app, Arc::new(Endless), &shutdown);
    wait_for(&app, &canceled.job_id, "the claim", |job| job.status == JobStatus::Running && job.progress_percent == 30)
        .await;
    jobs(&app).cancel(&canceled.job_id).await.expect("cancel requested");
    let ended = wait_for(&app, &canceled.job_id, "the cancel", |job| job.status.is_terminal()).await;
    assert_eq!(ended.status, JobStatus::Canceled, "{ended:#?}");
    assert_eq!(refunds(&app, "dan").await, 1);

    let app_job = {
        let hold_id = app.hold_id("dan", "10").await;
        let hold_id = HoldId::parse(&hold_id).expect("valid hold id");
        let new = new_job("dan", "dan-run-2", hold_id, json!({"problem": "again"}));
        jobs(&app).create(new).await.expect("job created")
    };
    wait_for(&app, &app_job.job_id, "the second claim", |job| job.status == JobStatus::Running).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker).await.expect("the worker stops").expect("no panic");
    let handed_back = jobs(&app).get(&app_job.job_id).await.expect("store works").expect("job exists");
    assert_eq!((handed_back.status, handed_back.refund_applied_at), (JobStatus::Queued, None), "{handed_back:#?}");
    assert_eq!(handed_back.error_detail.as_deref(), Some(jobs::worker::SHUTDOWN_DETAIL));
    assert_eq!(refunds(&app, "dan").await, 1);
    app.assert_verified().await;
}

/// A child process whose stderr is collected (for failure messages) and which is killed when
/// dropped.
struct Process {
    child: Child,
    name: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(name: &'static str, command: &mut Command) -> Process {
        let mut child = command
            .env_remove("CREDITGRAPH_TOKENS")
            .env_remove("CREDITGRAPH_RENDERER_URL")
            .env_remove("CREDITGRAPH_LLM_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().expect("lines lock").push(line);
            }
        });
        Process { child, name, lines }
    }

    fn log(&self) -> String {
        format!("--- {} stderr ---\n{}", self.name, self.lines.lock().expect("lines lock").join("\n"))
    }

    fn wait_for_line(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.lines.lock().expect("lines lock").iter().any(|line| line.contains(needle)) {
            assert!(Instant::now() < deadline, "no {needle:?} line\n{}", self.log());
            // Lines arrive from the child's stderr on another thread: poll what it collected.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (bounded).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop on SIGTERM\n{}", self.name, self.log());
            // std's Child has no wait with a deadline: poll its exit.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether the process runs (a zombie waiting to be reaped does not count).
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script written");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("script executable");
    path.display().to_string()
}

fn worker_process(name: &'static str, base: &str, renderer: &str) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_creditgraph"));
    command
        .args(["worker", "--server", base, "--workers", "1", "--heartbeat-seconds", "1", "--idle-poll-ms", "100"])
        .env("CREDITGRAPH_WORKER_TOKEN", WORKER_TOKEN)
        .env("CREDITGRAPH_RENDERER_COMMAND", renderer)
        .env("CREDITGRAPH_RENDERER_CONTENT_TYPE", "video/mp4")
        .env("CREDITGRAPH_RENDERER_TIMEOUT_SECONDS", "120");
    Process::start(name, &mut command)
}

/// Polls the shared database until the job satisfies `done` (bounded).
async fn wait_stored(
    store: &dyn JobStore,
    job_id: &store::JobId,
    what: &str,
    processes: &[&Process],
    done: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = store.job(job_id).await.expect("store works").expect("job exists");
        if done(&job) {
            return job;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = processes.iter().map(|process| process.log()).collect();
            panic!("timed out waiting for {what}: {job:#?}\n{}", logs.join("\n"));
        }
        // The job changes in other processes, which announce nothing to this one: poll the database.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_loses_its_job_to_another_and_the_price_is_charged_once() {
    let database = store_postgres::testing::fresh_database().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let pid_file = dir.path().join("renderer.pid");
    let slow = script(
        dir.path(),
        "slow.sh",
        &format!("echo $$ > {}\ncat >/dev/null\necho 'progress render 10' >&2\nexec sleep 30", pid_file.display()),
    );
    let fast = script(dir.path(), "fast.sh", "cat >/dev/null\necho 'progress compose 90' >&2\nprintf 'FAKE-VIDEO'");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let mut server = Process::start(
        "serve",
        Command::new(env!("CARGO_BIN_EXE_creditgraph"))
            .args(["serve", "--listen", &listen, "--database", &database])
            .args(["--workers-in-process", "0", "--job-lease-seconds", "3", "--job-heartbeat-seconds", "1"])
            .args(["--job-sweep-interval-seconds", "1"])
            .env("CREDITGRAPH_WORKER_TOKEN", WORKER_TOKEN),
    );
    server.wait_for_line("creditgraph listening");

    // Credits and the turn's hold through the server's API; the job straight into the shared
    // database, as the server's video step would write it.
    let client = reqwest::Client::new();
    let granted = client.post(format!("{base}/v1/accounts/kim/grants")).json(&json!({"amount": "30"})).send().await;
    assert_eq!(granted.expect("grant").status(), 201);
    let hold = client.post(format!("{base}/v1/holds")).json(&json!({"account_id": "kim", "amount": "25"})).send().await;
    let hold: Value = hold.expect("hold").json().await.expect("hold JSON");
    let hold_id = HoldId::parse(hold["hold_id"].as_str().expect("hold id")).expect("valid hold id");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(
        store_postgres::PostgresStore::connect(
            &database,
            Arc::clone(&clock),
            store_postgres::PostgresOptions::default(),
        )
        .await
        .expect("the test connects"),
    );
    let service = JobService::new(
        Arc::clone(&store) as Arc<dyn JobStore>,
        Arc::clone(&store) as Arc<dyn RunStore>,
        clock,
        JobsConfig::default(),
    );
    let new_job = |run: &str| new_job("kim", run, hold_id.clone(), json!({"problem": "1 + 1", "answer": "2"}));
    let job = service.create(new_job("kim-run-1")).await.expect("job created");

    // Worker A takes the job and is killed mid-render.
    let mut worker_a = worker_process("worker A", &base, &slow);
    let running = wait_stored(store.as_ref(), &job.job_id, "worker A's claim", &[&server, &worker_a], |job| {
        job.status == JobStatus::Running && job.progress_percent == 10
    })
    .await;
    assert_eq!(running.attempts, 1);
    let holder_a = running.lease_holder.clone().expect("a lease holder");
    worker_a.child.kill().expect("SIGKILL");
    worker_a.child.wait().expect("worker A reaped");
    // Its renderer was orphaned by the SIGKILL; stop it too.
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }

    // Worker B takes the job over once A's lease has run out, and finishes it.
    let worker_b = worker_process("worker B", &base, &fast);
    let done = wait_stored(store.as_ref(), &job.job_id, "worker B's finish", &[&server, &worker_b], |job| {
        job.status.is_terminal()
    })
    .await;
    assert_eq!((done.status, done.attempts, done.refund_applied_at), (JobStatus::Succeeded, 2, None), "{done:#?}");
    let artifact_id = done.artifact_id.clone().expect("an artifact");
    let artifact = client.get(format!("{base}/v1/artifacts/{artifact_id}")).send().await.expect("artifact");
    assert_eq!(artifact.headers()["content-type"], "video/mp4");
    assert_eq!(artifact.bytes().await.expect("artifact bytes").as_ref(), b"FAKE-VIDEO");
    drop(worker_b);
    assert!(holder_a.starts_with("worker-"), "{holder_a}");
    assert!(!worker_a.log().contains("job attempt finished"), "A never finished: {}", worker_a.log());

    // Worker C is stopped with SIGTERM mid-render: it hands its lease back, nothing refunded.
    let second = service.create(new_job("kim-run-2")).await.expect("second job created");
    let mut worker_c = worker_process("worker C", &base, &slow);
    wait_stored(store.as_ref(), &second.job_id, "worker C's claim", &[&server, &worker_c], |job| {
        job.status == JobStatus::Running && job.progress_percent == 10
    })
    .await;
    let status = worker_c.terminate();
    assert!(status.success(), "{status:?}\n{}", worker_c.log());
    let handed_back = store.job(&second.job_id).await.expect("store works").expect("job exists");
    assert_eq!((handed_back.status, handed_back.attempts), (JobStatus::Queued, 1), "{handed_back:#?}");
    assert_eq!(handed_back.error_detail.as_deref(), Some(jobs::worker::SHUTDOWN_DETAIL));
    assert_eq!(handed_back.refund_applied_at, None);
    let leftover = std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert!(!alive(leftover.trim()), "worker C's renderer (pid {leftover}) outlived its SIGTERM");

    // Charged twice (two jobs), refunded never; the journal agrees.
    let account: Value =
        client.get(format!("{base}/v1/accounts/kim")).send().await.expect("account").json().await.expect("JSON");
    assert_eq!((account["balance"].as_str(), account["held"].as_str()), (Some("10"), Some("5")), "{account}");
    let entries: Value = client
        .get(format!("{base}/v1/accounts/kim/entries?limit=1000"))
        .send()
        .await
        .expect("entries")
        .json()
        .await
        .expect("JSON");
    let kinds: Vec<&str> =
        entries["entries"].as_array().expect("entries").iter().filter_map(|entry| entry["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|kind| **kind == "capture").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|kind| **kind == "refund").count(), 0, "{kinds:?}");
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());
    store.close().await;
    let verify = Command::new(env!("CARGO_BIN_EXE_creditgraph"))
        .args(["verify", "--database", &database])
        .output()
        .expect("verify runs");
    assert!(verify.status.success(), "{verify:#?}");
}
