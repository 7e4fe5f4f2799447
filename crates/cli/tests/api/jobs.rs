//! Async video jobs end to end: a [solve, video] turn creates a job whose price is captured
//! from the turn's hold with it; the job keeps it on success and gives it back exactly once on
//! failure or cancel; stuck jobs are ended on read; a failed job may be retried once.

use std::sync::Arc;

use engine::provider::Purpose;
use engine::testing::{FakeProvider, FakeReply};
use jobs::render::RenderFailure;
use jobs::{Finish, JobErrorCode, JobService};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with_provider, TestApp};
use crate::sse::Frame;

async fn app(postgres: bool, workers: usize) -> (TestApp, FakeProvider) {
    spawn_app_with_provider(postgres, move |settings| settings.runs.jobs.workers_in_process = workers).await
}

fn jobs(app: &TestApp) -> Arc<JobService> {
    app.engine.jobs().expect("the app runs video jobs").clone()
}

/// A flash/brief [solve, video] turn whose solver answers at once:
/// router 1 + planner 1 + 1 verify call = 3 synchronous; video 10 with the job.
fn script_video_turn(fake: &FakeProvider) {
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve", "video"], "easy", "brief", false));
    fake.on(Purpose::Solver, FakeReply::text("x = 4"));
}

/// Runs a video turn for `account`; returns the frames and the job id.
pub(crate) async fn video_turn(
    app: &TestApp,
    fake: &FakeProvider,
    account: &str,
    thread: &str,
) -> (Vec<Frame>, String) {
    script_video_turn(fake);
    let frames =
        app.solve(json!({"account_id": account, "problem": "draw 2 + 2", "thread_id": thread})).await.collect().await;
    assert_eq!(frames.last().unwrap().event, "done", "{frames:#?}");
    let token =
        frames.iter().find(|frame| frame.event == "token" && frame.data["node"] == "video").expect("video anchor");
    let job_id = token.payload()["metadata"]["job_id"].as_str().unwrap().to_owned();
    (frames, job_id)
}

fn job_id_of(text: &str) -> store::JobId {
    store::JobId::parse(text).expect("the API answers valid job ids")
}

async fn job(app: &TestApp, job_id: &str, account: &str) -> Value {
    let reply = app.get(&format!("/v1/jobs/{job_id}?account_id={account}")).await;
    reply.assert_status(200).clone()
}

async fn refunds(app: &TestApp, account: &str) -> usize {
    let entries = app.entries(account, "?limit=1000").await;
    entries.assert_status(200)["entries"].as_array().unwrap().iter().filter(|entry| entry["kind"] == "refund").count()
}

/// Waits until the job has `status` (woken by the job service's writes); the job as the API shows it.
async fn wait_for_status(app: &TestApp, job_id: &str, account: &str, status: &str) -> Value {
    app.wait_for_job(&job_id_of(job_id), &format!("status {status}"), |job| job.status.as_str() == status).await;
    job(app, job_id, account).await
}

async fn success_keeps_the_price(postgres: bool) {
    let (app, fake) = app(postgres, 2).await;
    app.fund("vic", "100").await;
    let (frames, job_id) = video_turn(&app, &fake, "vic", "vic-thread").await;
    let reserved = frames.iter().find(|frame| frame.event == "credit_reserved").unwrap().payload().clone();
    assert_eq!(
        reserved["amount"], "28",
        "3 (router, planner, flash/brief solve = 16 worst case) + video 10: {reserved}"
    );
    let settled = frames.iter().find(|frame| frame.event == "credit_settled").unwrap().payload().clone();
    assert_eq!((settled["actual"].as_str(), settled["captured"].as_str()), (Some("3"), Some("13")), "{settled}");
    assert_eq!(settled["refunded"], "15");
    let done = wait_for_status(&app, &job_id, "vic", "succeeded").await;
    assert_eq!(done["refunded"], false);
    let url = done["artifact_url"].as_str().unwrap().to_owned();
    let artifact = app
        .client
        .get(format!("{}{url}", app.address))
        .bearer_auth(crate::helpers::SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(artifact.headers()["content-type"], "image/svg+xml");
    assert!(String::from_utf8_lossy(&artifact.bytes().await.unwrap()).contains("<svg"));
    assert_eq!(app.figures("vic").await, ("87".to_owned(), "0".to_owned(), "87".to_owned()));
    assert_eq!(refunds(&app, "vic").await, 0);
    let listed = app.get("/v1/threads/vic-thread/jobs?account_id=vic").await;
    assert_eq!(listed.assert_status(200)["jobs"][0]["job_id"], job_id);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_job_keeps_its_price_on_success() {
    success_keeps_the_price(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_video_job_keeps_its_price_on_success() {
    success_keeps_the_price(true).await;
}

async fn queued_cancel_refunds_once(postgres: bool) {
    let (app, fake) = app(postgres, 0).await;
    app.fund("wes", "100").await;
    let (_, job_id) = video_turn(&app, &fake, "wes", "wes-thread").await;
    assert_eq!(job(&app, &job_id, "wes").await["status"], "queued");
    assert_eq!(app.figures("wes").await.0, "87", "the video price is captured when the job is created");
    for _ in 0..2 {
        let canceled = app.post(&format!("/v1/jobs/{job_id}/cancel?account_id=wes"), json!({})).await;
        let canceled = canceled.assert_status(200);
        assert_eq!((canceled["status"].as_str(), canceled["refunded"].as_bool()), (Some("canceled"), Some(true)));
        assert_eq!(canceled["can_user_retry"], true);
    }
    assert_eq!(app.figures("wes").await.0, "97");
    assert_eq!(refunds(&app, "wes").await, 1);
    // Another account sees nothing.
    app.get(&format!("/v1/jobs/{job_id}?account_id=someone")).await.assert_problem(404, "job_not_found");
    app.post(&format!("/v1/jobs/{job_id}/cancel?account_id=someone"), json!({}))
        .await
        .assert_problem(404, "job_not_found");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_cancel_refunds_exactly_once() {
    queued_cancel_refunds_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_queued_cancel_refunds_exactly_once() {
    queued_cancel_refunds_once(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cancel_refunds_at_the_workers_terminal_update() {
    let (app, fake) = app(false, 0).await;
    app.fund("xia", "100").await;
    let (_, job_id) = video_turn(&app, &fake, "xia", "xia-thread").await;
    let service = jobs(&app);
    let claimed = service.claim("test-worker").await.unwrap().expect("a queued job");
    assert_eq!(claimed.job_id, job_id);
    let requested = app.post(&format!("/v1/jobs/{job_id}/cancel?account_id=xia"), json!({})).await;
    let requested = requested.assert_status(200);
    assert_eq!((requested["status"].as_str(), requested["cancel_requested"].as_bool()), (Some("running"), Some(true)));
    assert_eq!(app.figures("xia").await.0, "87", "no refund before the worker ends the job");
    assert!(
        service.heartbeat(&job_id_of(&job_id), "test-worker", "render", 50).await.unwrap(),
        "the worker learns of the cancel"
    );
    // Even a success report cannot end a job whose cancel was requested.
    let rendered = jobs::render::Rendered { bytes: b"<svg/>".to_vec(), content_type: "image/svg+xml".to_owned() };
    let ended = service.finish(&job_id_of(&job_id), "test-worker", Finish::Succeeded(rendered)).await.unwrap();
    assert_eq!(ended.status.as_str(), "canceled");
    assert_eq!(app.figures("xia").await.0, "97");
    assert_eq!(refunds(&app, "xia").await, 1);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_never_refunds_and_a_permanent_one_refunds_once() {
    let (app, fake) = app(false, 0).await;
    app.fund("yan", "100").await;
    let (_, job_id) = video_turn(&app, &fake, "yan", "yan-thread").await;
    let service = jobs(&app);
    service.claim("w1").await.unwrap().expect("claimed");
    let transient = RenderFailure {
        transient: true,
        code: JobErrorCode::TtsProviderDown,
        stage: "tts".to_owned(),
        detail: "503".to_owned(),
    };
    let requeued = service.finish(&job_id_of(&job_id), "w1", Finish::Failed(transient)).await.unwrap();
    assert_eq!((requeued.status.as_str(), requeued.refund_applied_at), ("queued", None));
    assert_eq!(app.figures("yan").await.0, "87");
    assert!(service.claim("w2").await.unwrap().is_none(), "backoff: not claimable yet");
    app.clock.advance_seconds(60);
    let again = service.claim("w2").await.unwrap().expect("claimable after the backoff");
    assert_eq!(again.attempts, 2);
    // The first worker's lease is gone: its late report changes nothing.
    let late = service.finish(&job_id_of(&job_id), "w1", Finish::Canceled).await;
    assert!(matches!(late, Err(jobs::JobError::LeaseLost)), "{late:?}");
    let permanent = RenderFailure {
        transient: false,
        code: JobErrorCode::RenderResourceLimit,
        stage: "render".to_owned(),
        detail: "OOM".to_owned(),
    };
    let failed = service.finish(&job_id_of(&job_id), "w2", Finish::Failed(permanent.clone())).await.unwrap();
    assert_eq!((failed.status.as_str(), failed.error_code.as_deref()), ("failed", Some("render_resource_limit")));
    let repeat = service.finish(&job_id_of(&job_id), "w2", Finish::Failed(permanent)).await.unwrap();
    assert_eq!(repeat.version, failed.version, "a second terminal report is a no-op");
    assert_eq!(app.figures("yan").await.0, "97");
    assert_eq!(refunds(&app, "yan").await, 1);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_jobs_are_failed_and_refunded_on_read_and_by_the_sweep() {
    let (app, fake) = app(false, 0).await;
    app.fund("zed", "100").await;
    let (_, silent) = video_turn(&app, &fake, "zed", "zed-thread").await;
    let (_, unclaimed) = video_turn(&app, &fake, "zed", "zed-thread").await;
    let service = jobs(&app);
    let first = service.claim("w").await.unwrap().expect("claimed");
    assert_eq!(first.job_id, silent, "oldest first");
    assert_eq!(app.figures("zed").await.0, "74");
    // Past both thresholds: the claimed job's worker went silent, the other was never claimed.
    app.clock.advance_seconds(service.config().stuck_queued_seconds as i64 + 1);
    // One is ended on read, the other by the sweep.
    let on_read = job(&app, &silent, "zed").await;
    assert_eq!(on_read["status"], "failed");
    assert_eq!(service.sweep_stuck(100).await.unwrap(), 1);
    for job_id in [&silent, &unclaimed] {
        let job = job(&app, job_id, "zed").await;
        assert_eq!(
            (job["status"].as_str(), job["error_code"].as_str(), job["refunded"].as_bool()),
            (Some("failed"), Some("infrastructure_timeout"), Some(true)),
            "{job:#}"
        );
    }
    assert_eq!(app.figures("zed").await.0, "94");
    assert_eq!(refunds(&app, "zed").await, 2);
    assert_eq!(service.sweep_stuck(100).await.unwrap(), 0);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_may_be_retried_once_checked_before_any_hold() {
    let (app, fake) = app(false, 0).await;
    app.fund("amy", "100").await;
    let (_, source) = video_turn(&app, &fake, "amy", "amy-thread").await;
    let retry_body = |thread: &str, source: &str| json!({"account_id": "amy", "problem": "again", "thread_id": thread, "action": "video_retry", "retry_source_job_id": source});

    // Not failed yet: refused, with no LLM call and nothing held.
    let calls = fake.recorded().len();
    let frames = app.solve(retry_body("amy-thread", &source)).await.collect().await;
    assert_eq!(frames.last().unwrap().payload()["code"], "invalid_input");
    assert!(frames.last().unwrap().payload()["message"].as_str().unwrap().contains("queued"));
    assert_eq!(fake.recorded().len(), calls);
    assert_eq!(app.figures("amy").await, ("87".to_owned(), "0".to_owned(), "87".to_owned()));

    app.post(&format!("/v1/jobs/{source}/cancel?account_id=amy"), json!({})).await.assert_status(200);
    assert_eq!(app.figures("amy").await.0, "97");
    // From another thread: refused.
    let frames = app.solve(retry_body("elsewhere", &source)).await.collect().await;
    assert_eq!(frames.last().unwrap().payload()["code"], "invalid_input");

    // The retry: holds the video price, copies the input, pays again.
    let frames = app.solve(retry_body("amy-thread", &source)).await.collect().await;
    assert_eq!(frames.last().unwrap().event, "done", "{frames:#?}");
    assert_eq!(frames.iter().find(|frame| frame.event == "credit_reserved").unwrap().payload()["amount"], "10");
    let retry_id = frames.iter().find(|frame| frame.event == "token").unwrap().payload()["metadata"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let retry = job(&app, &retry_id, "amy").await;
    assert_eq!(
        (retry["retry_source_job_id"].as_str(), retry["can_user_retry"].as_bool()),
        (Some(source.as_str()), Some(false))
    );
    assert_eq!(app.figures("amy").await.0, "87");
    assert_eq!(fake.recorded().len(), calls, "a retry makes no LLM call");

    // A second retry of the same source, and a retry of the retry: refused, nothing held.
    let frames = app.solve(retry_body("amy-thread", &source)).await.collect().await;
    assert!(frames.last().unwrap().payload()["message"].as_str().unwrap().contains("already retried"));
    app.post(&format!("/v1/jobs/{retry_id}/cancel?account_id=amy"), json!({})).await.assert_status(200);
    let frames = app.solve(retry_body("amy-thread", &retry_id)).await.collect().await;
    assert_eq!(frames.last().unwrap().payload()["code"], "invalid_input");
    assert_eq!(app.figures("amy").await, ("97".to_owned(), "0".to_owned(), "97".to_owned()));
    app.assert_verified().await;
}
