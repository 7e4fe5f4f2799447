//! Metered runs end to end: a solve over a real socket with a scripted OpenAI-compatible
//! provider on loopback, the SSE stream read by a client, and the ledger checked afterwards.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engine::provider::Purpose;
use engine::sandbox::{CodeExecutor, ExecError, ExecOutput};
use engine::testing::{FakeProvider, FakeReply};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_full, spawn_app_with_provider, TestApp};
use crate::sse::Frame;

async fn app_with_provider(postgres: bool) -> (TestApp, FakeProvider) {
    spawn_app_with_provider(postgres, |_| {}).await
}

/// A flash/full [solve, pdf] turn whose solver generates code once, runs it once, then answers:
/// router 1 + planner 1 + 3 verify calls + 1 generate + 1 execute + 1 explain + pdf 1 = 9.
fn script_math_turn(fake: &FakeProvider, steps: &[&str]) {
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(steps, "easy", "full", true));
    fake.on(Purpose::Solver, FakeReply::generate("add two and two"));
    fake.on(Purpose::Solver, FakeReply::execute("print(2 + 2)"));
    fake.on(Purpose::Solver, FakeReply::text("x = 4"));
    fake.on(Purpose::CodeGenerate, FakeReply::code_generate("print(2 + 2)"));
    fake.on(Purpose::Explain, FakeReply::text("두 수를 더하면 4가 됩니다. Two plus two is four."));
}

/// Follows the run's events to their end (`GET /v1/runs/{run_id}/events`; the run is recorded
/// before its stream closes); its state then.
async fn run_end_state(app: &TestApp, run_id: &str) -> String {
    app.resume(run_id, None).await.collect().await;
    let run = app.get(&format!("/v1/runs/{run_id}")).await;
    run.assert_status(200)["state"].as_str().unwrap().to_owned()
}

fn kinds(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|frame| frame.event.as_str()).collect()
}

fn find<'a>(frames: &'a [Frame], event: &str) -> &'a Frame {
    frames.iter().find(|frame| frame.event == event).unwrap_or_else(|| panic!("no {event} in {:#?}", kinds(frames)))
}

/// Seq from 0 without gaps; ids are `<thread_id>:<seq>`; exactly one of done / error, last.
fn assert_well_formed(frames: &[Frame], thread_id: &str) {
    for (index, frame) in frames.iter().enumerate() {
        assert_eq!(frame.data["seq"], json!(index), "{:#?}", kinds(frames));
        assert_eq!(frame.id, format!("{thread_id}:{index}"));
        assert_eq!(frame.data["type"], frame.event);
        assert_eq!(frame.data["thread_id"], thread_id);
    }
    let endings = frames.iter().filter(|frame| frame.event == "done" || frame.event == "error").count();
    assert_eq!(endings, 1, "{:#?}", kinds(frames));
    let last = frames.last().expect("frames").event.as_str();
    assert!(last == "done" || last == "error");
}

async fn math_turn_settles_exactly(postgres: bool) {
    let (app, fake) = app_with_provider(postgres).await;
    app.fund("alice", "100").await;
    script_math_turn(&fake, &["solve", "pdf"]);
    let stream = app.solve(json!({"account_id": "alice", "problem": "What is 2 + 2?"})).await;
    let (run_id, thread_id) = (stream.run_id.clone(), stream.thread_id.clone());
    let frames = stream.collect().await;
    assert_well_formed(&frames, &thread_id);
    assert_eq!(frames.last().unwrap().event, "done");
    let order: Vec<&str> = kinds(&frames)
        .into_iter()
        .filter(|kind| ["page_start", "credit_reserved", "credit_settled", "done"].contains(kind))
        .collect();
    assert_eq!(order, ["page_start", "credit_reserved", "credit_settled", "done"]);

    let reserved = find(&frames, "credit_reserved").payload();
    assert_eq!(reserved["amount"], "20", "{reserved}");
    let settled = find(&frames, "credit_settled").payload().clone();
    assert_eq!((settled["reserved"].as_str(), settled["actual"].as_str()), (Some("20"), Some("9")), "{settled}");
    assert_eq!((settled["captured"].as_str(), settled["refunded"].as_str()), (Some("9"), Some("11")));
    let log = settled["log"].as_array().unwrap();
    let cost: Vec<(&str, &str)> =
        log.iter().map(|entry| (entry["action"].as_str().unwrap(), entry["cost"].as_str().unwrap())).collect();
    assert_eq!(cost.iter().filter(|(action, _)| *action == "llm_call_verify").count(), 3);
    assert!(
        cost.contains(&("pdf", "1")) && cost.contains(&("code_execute", "1")) && cost.contains(&("code_generate", "1"))
    );

    assert_eq!(app.figures("alice").await, ("91".to_owned(), "0".to_owned(), "91".to_owned()));
    let hold_id = reserved["hold_id"].as_str().unwrap();
    let hold = app.get_hold(hold_id).await;
    assert_eq!((hold.str("state"), hold.str("captured")), ("captured", "9"));
    let run = app.get(&format!("/v1/runs/{run_id}")).await;
    let run = run.assert_status(200);
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["details"]["catalog_version"], app.engine.catalog().version());

    // The PDF is a real artifact, charged because it exists.
    let pdf_token =
        frames.iter().find(|frame| frame.event == "token" && frame.data["node"] == "pdf").expect("pdf token");
    let url = pdf_token.payload()["metadata"]["url"].as_str().unwrap().to_owned();
    let artifact = app
        .client
        .get(format!("{}{url}", app.address))
        .bearer_auth(crate::helpers::SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(artifact.headers()["content-type"], "application/pdf");
    assert!(artifact.bytes().await.unwrap().starts_with(b"%PDF-"));

    // The code the model asked to run really ran in the sandbox.
    let result =
        frames.iter().find(|frame| frame.event == "tool_result" && frame.payload()["name"] == "code_execute").unwrap();
    assert!(result.payload()["output"].as_str().unwrap().contains('4'), "{result:?}");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_math_turn_streams_and_settles_exactly() {
    math_turn_settles_exactly(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_math_turn_streams_and_settles_exactly() {
    math_turn_settles_exactly(true).await;
}

#[tokio::test]
async fn estimates_match_the_catalog_examples() {
    let (app, _fake) = app_with_provider(false).await;
    let cases = [
        (json!({"steps": ["solve", "pdf"], "model": "flash", "explanation_mode": "full"}), "20"),
        (json!({"steps": ["solve", "video"], "model": "flash", "explanation_mode": "full"}), "29"),
        (json!({"steps": ["solve"], "model": "sonnet", "explanation_mode": "full"}), "33"),
        (json!({"steps": ["solve", "pdf", "video"], "model": "opus", "explanation_mode": "brief"}), "71"),
        (json!({"steps": ["pdf"], "difficulty": "easy", "explanation_mode": "brief"}), "19"),
    ];
    for (body, total) in cases {
        let reply = app.post("/v1/estimate", body.clone()).await;
        let reply = reply.assert_status(200);
        assert_eq!(reply["total"], total, "{body}");
        let labels: Vec<&str> =
            reply["breakdown"].as_array().unwrap().iter().map(|line| line["label"].as_str().unwrap()).collect();
        assert_eq!(&labels[..2], ["router", "planner"]);
        assert_eq!(reply["catalog_version"], app.engine.catalog().version());
    }
    let bad = app.post("/v1/estimate", json!({"steps": ["dance"], "model": "flash", "explanation_mode": "full"})).await;
    bad.assert_problem(422, "invalid_request");
    let both = app
        .post("/v1/estimate", json!({"steps": [], "model": "flash", "difficulty": "easy", "explanation_mode": "full"}))
        .await;
    both.assert_problem(422, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_turns_of_a_thread_each_hold_and_pay_only_for_themselves() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("bob", "100").await;
    let mut thread_id = None;
    let mut balance = 100;
    for turn in 0..2 {
        script_math_turn(&fake, &["solve", "pdf"]);
        let mut body = json!({"account_id": "bob", "problem": format!("turn {turn}")});
        if let Some(thread_id) = &thread_id {
            body["thread_id"] = json!(thread_id);
        }
        let stream = app.solve(body).await;
        thread_id = Some(stream.thread_id.clone());
        let frames = stream.collect().await;
        assert_eq!(
            find(&frames, "credit_reserved").payload()["amount"],
            "20",
            "turn {turn} holds only its own worst case"
        );
        assert_eq!(find(&frames, "credit_settled").payload()["actual"], "9");
        balance -= 9;
        assert_eq!(app.figures("bob").await.0, balance.to_string());
    }
    let thread = app.get(&format!("/v1/threads/{}", thread_id.unwrap())).await;
    let thread = thread.assert_status(200);
    let turns = thread["turns"].as_array().unwrap();
    assert_eq!(turns.iter().map(|turn| turn["turn_index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
    assert!(turns.iter().all(|turn| turn["details"]["actual"] == "9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_general_chat_turn_is_held_and_settled_in_its_own_turn() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("carol", "10").await;
    fake.on(Purpose::Router, FakeReply::route(true));
    fake.on(Purpose::GeneralChat, FakeReply::text("안녕하세요!"));
    let frames = app.solve(json!({"account_id": "carol", "problem": "hello"})).await.collect().await;
    assert_eq!(find(&frames, "credit_reserved").payload()["amount"], "1.5");
    let settled = find(&frames, "credit_settled").payload();
    assert_eq!((settled["actual"].as_str(), settled["refunded"].as_str()), (Some("1.5"), Some("0")));
    assert_eq!(frames.last().unwrap().event, "done");
    assert_eq!(app.figures("carol").await, ("8.5".to_owned(), "0".to_owned(), "8.5".to_owned()));
    assert_eq!(fake.count(Purpose::Planner), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_of_credits_no_step_runs_and_nothing_is_held() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("dave", "5").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve", "pdf"], "easy", "full", false));
    let stream = app.solve(json!({"account_id": "dave", "problem": "integrate"})).await;
    let thread_id = stream.thread_id.clone();
    let frames = stream.collect().await;
    assert_well_formed(&frames, &thread_id);
    let error = frames.last().unwrap();
    assert_eq!(error.event, "error");
    let payload = error.payload();
    assert_eq!(
        (payload["code"].as_str(), payload["required"].as_str(), payload["available"].as_str()),
        (Some("credit_exhausted"), Some("20"), Some("5"))
    );
    let message = payload["message"].as_str().unwrap();
    assert!(message.contains("20 cr") && message.contains("5 cr"), "{message}");
    assert_eq!(fake.count(Purpose::Solver), 0, "no step ran");
    assert_eq!(app.figures("dave").await, ("5".to_owned(), "0".to_owned(), "5".to_owned()));
    let entries = app.entries("dave", "").await;
    assert_eq!(entries.assert_status(200)["entries"].as_array().unwrap().len(), 1, "only the grant: nothing was held");

    // An account that cannot even pay the router is refused before any LLM call.
    app.fund("erin", "1").await;
    let frames = app.solve(json!({"account_id": "erin", "problem": "x"})).await.collect().await;
    assert_eq!(frames.last().unwrap().payload()["code"], "credit_exhausted");
    assert_eq!(fake.count(Purpose::Router), 1, "only dave's turn reached the router");
    let unknown = app.solve(json!({"account_id": "nobody", "problem": "x"})).await.collect().await;
    assert_eq!(unknown.last().unwrap().payload()["available"], "0");
}

/// A failed turn: one error event, no done, the hold released exactly once, nothing charged.
async fn assert_failed_turn(app: &TestApp, frames: &[Frame], thread_id: &str, code: &str, account: &str, funded: &str) {
    assert_well_formed(frames, thread_id);
    assert!(!kinds(frames).contains(&"done"));
    assert_eq!(frames.last().unwrap().payload()["code"], code, "{:#?}", frames.last());
    assert_eq!(app.figures(account).await, (funded.to_owned(), "0".to_owned(), funded.to_owned()));
    let hold_id = find(frames, "credit_reserved").payload()["hold_id"].as_str().unwrap().to_owned();
    assert_eq!(app.get_hold(&hold_id).await.str("state"), "released");
    let entries = app.entries(account, "?limit=100").await;
    let releases = entries.assert_status(200)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["kind"] == "release")
        .count();
    assert_eq!(releases, 1);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_ends_the_turn_with_model_error_and_releases_the_hold() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("fay", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "medium", "brief", false));
    fake.on_default(Purpose::Solver, FakeReply::Status(500));
    let stream = app.solve(json!({"account_id": "fay", "problem": "p"})).await;
    let thread_id = stream.thread_id.clone();
    let frames = stream.collect().await;
    assert_failed_turn(&app, &frames, &thread_id, "model_error", "fay", "50").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_plan_is_a_model_error_before_any_hold() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("gus", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::Json(json!({"steps": ["solve", "teleport"], "difficulty": "easy", "explanation_mode": "full", "use_page": false})));
    let frames = app.solve(json!({"account_id": "gus", "problem": "p"})).await.collect().await;
    assert_eq!(frames.last().unwrap().payload()["code"], "model_error");
    assert!(!kinds(&frames).contains(&"credit_reserved"));
    assert_eq!(app.figures("gus").await.1, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_calls_are_answered_to_the_model_and_not_charged() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("hal", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false));
    fake.on(Purpose::Solver, FakeReply::tool_call("code_execute", "{not json"));
    fake.on(Purpose::Solver, FakeReply::tool_call("browse", "{}"));
    fake.on(Purpose::Solver, FakeReply::text("done"));
    let frames = app.solve(json!({"account_id": "hal", "problem": "p"})).await.collect().await;
    assert_eq!(frames.last().unwrap().event, "done");
    // router 1 + planner 1 + 3 verify calls; the two bad tool calls cost nothing.
    assert_eq!(find(&frames, "credit_settled").payload()["actual"], "5");
    let third = &fake.recorded_for(Purpose::Solver)[2];
    let tool_messages: Vec<&str> = third
        .messages()
        .iter()
        .filter(|message| message["role"] == "tool")
        .map(|message| message["content"].as_str().unwrap())
        .collect();
    assert_eq!(tool_messages.len(), 2);
    assert!(tool_messages.iter().all(|text| text.starts_with("tool error")), "{tool_messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_the_hold_and_ends_with_canceled() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("ivy", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on(Purpose::Solver, FakeReply::text("slow").after(Duration::from_secs(20)));
    let mut stream = app.solve(json!({"account_id": "ivy", "problem": "p"})).await;
    let mut frames = stream.until("credit_reserved").await;
    let cancel = app.post(&format!("/v1/runs/{}/cancel", stream.run_id), json!({})).await;
    assert_eq!(cancel.assert_status(202)["state"], "running");
    frames.extend(stream.collect().await);
    let thread_id = frames[0].data["thread_id"].as_str().unwrap().to_owned();
    assert_failed_turn(&app, &frames, &thread_id, "canceled", "ivy", "50").await;
    let run = app.get(&format!("/v1/runs/{}", frames[0].data["run_id"].as_str().unwrap())).await;
    assert_eq!(run.assert_status(200)["state"], "canceled");
}

/// A sandbox that panics: a bug inside a step must still end the turn cleanly.
struct PanickingSandbox;

#[async_trait]
impl CodeExecutor for PanickingSandbox {
    async fn execute(&self, _code: &str) -> Result<ExecOutput, ExecError> {
        panic!("injected fault inside code_execute");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_step_is_an_internal_error_and_releases_the_hold() {
    let fake = FakeProvider::start().await;
    let config = fake.config();
    let app =
        spawn_app_full(false, move |settings| settings.runs.llm = Some(config), Some(Arc::new(PanickingSandbox))).await;
    app.fund("jon", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on(Purpose::Solver, FakeReply::execute("print(1)"));
    let stream = app.solve(json!({"account_id": "jon", "problem": "p"})).await;
    let thread_id = stream.thread_id.clone();
    let frames = stream.collect().await;
    assert_failed_turn(&app, &frames, &thread_id, "internal_error", "jon", "50").await;
}

/// A server whose sandbox fails its start-up probe (here: no such interpreter) never runs code
/// another way: the step fails with `sandbox_unavailable` and the hold is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_working_sandbox_code_execute_fails_closed_with_sandbox_unavailable() {
    let missing = engine::sandbox::bwrap::BubblewrapSettings::with_python("/nonexistent/bin/python3");
    let (app, fake) = spawn_app_with_provider(false, move |settings| {
        settings.runs.sandbox = cli::SandboxSettings::Bubblewrap(missing)
    })
    .await;
    app.fund("joy", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on(Purpose::Solver, FakeReply::execute("print(1)"));
    fake.on(Purpose::Solver, FakeReply::text("never asked"));
    let stream = app.solve(json!({"account_id": "joy", "problem": "p"})).await;
    let thread_id = stream.thread_id.clone();
    let frames = stream.collect().await;
    assert_failed_turn(&app, &frames, &thread_id, "sandbox_unavailable", "joy", "50").await;
    let message = frames.last().unwrap().payload()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("/nonexistent/bin/python3"), "the reason found at start-up: {message}");
    assert_eq!(fake.count(Purpose::Solver), 1, "the step ended at the code_execute call");
    let run = app.get(&format!("/v1/runs/{}", frames[0].data["run_id"].as_str().unwrap())).await;
    let run = run.assert_status(200);
    let error_code = run["details"]["error"]["code"].as_str();
    assert_eq!((run["state"].as_str(), error_code), (Some("failed"), Some("sandbox_unavailable")), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_does_not_stop_the_run_and_can_resume() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("kim", "50").await;
    script_math_turn(&fake, &["solve"]);
    let mut stream = app.solve(json!({"account_id": "kim", "problem": "p"})).await;
    let first = stream.next().await.expect("a first frame");
    let run_id = stream.run_id.clone();
    drop(stream);
    // The run goes on without its client and settles.
    let state = run_end_state(&app, &run_id).await;
    assert_eq!(state, "succeeded");
    // Resuming after the first frame replays exactly the rest.
    let replay = app.resume(&run_id, Some(&first.id)).await.collect().await;
    let from_start = app.resume(&run_id, None).await.collect().await;
    assert_eq!(from_start[0], first);
    assert_eq!(replay, from_start[1..].to_vec());
    assert_eq!(replay.last().unwrap().event, "done");
    assert_eq!(
        app.figures("kim").await.0,
        "42",
        "50 − (router 1 + planner 1 + 3 verify + generate 1 + execute 1 + explain 1)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_runs_one_turn_at_a_time_and_belongs_to_one_account() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("lee", "50").await;
    app.fund("max", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false));
    fake.on(Purpose::Solver, FakeReply::text("slow").after(Duration::from_secs(2)));
    let mut stream = app.solve(json!({"account_id": "lee", "problem": "p", "thread_id": "shared-thread"})).await;
    stream.until("credit_reserved").await;
    let busy = app.solve_raw(json!({"account_id": "lee", "problem": "q", "thread_id": "shared-thread"})).await;
    assert_eq!(busy.status(), 409);
    let body: Value = busy.json().await.unwrap();
    assert_eq!((body["code"].as_str(), body["run_id"].as_str()), (Some("thread_busy"), Some(stream.run_id.as_str())));
    let other = app.solve_raw(json!({"account_id": "max", "problem": "q", "thread_id": "shared-thread"})).await;
    assert_eq!(other.status(), 404);
    let bad = app.solve_raw(json!({"account_id": "a:b", "problem": "q"})).await;
    assert_eq!(bad.status(), 422);
    let bad_thread = app.solve_raw(json!({"account_id": "lee", "problem": "q", "thread_id": "t:1"})).await;
    assert_eq!(bad_thread.status(), 422);
    // Ids in paths are checked at the edge too.
    app.get("/v1/runs/run:1").await.assert_problem(422, "invalid_request");
    app.get("/v1/threads/t:1").await.assert_problem(422, "invalid_request");
    app.get("/v1/jobs/j:1?account_id=lee").await.assert_problem(422, "invalid_request");
    assert_eq!(stream.collect().await.last().unwrap().event, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_settled_at_the_catalog_version_it_was_held_at() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("ned", "100").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false));
    fake.on(Purpose::Solver, FakeReply::text("4").after(Duration::from_millis(500)));
    let old_version = app.engine.catalog().version().to_owned();
    let mut stream = app.solve(json!({"account_id": "ned", "problem": "p"})).await;
    stream.until("credit_reserved").await;
    let pricier = pricing::catalog::Catalog::builtin_text().replace("flash = 1", "flash = 2");
    let pricier = pricing::catalog::Catalog::parse(&pricier, "test").expect("a valid catalog");
    assert_ne!(pricier.version(), old_version);
    app.engine.set_catalog(Arc::new(pricier));
    let frames = stream.collect().await;
    // router 1 + planner 1 + one verify call at the old flash price 1.
    assert_eq!(find(&frames, "credit_settled").payload()["actual"], "3");
    let run = app.get(&format!("/v1/runs/{}", frames[0].data["run_id"].as_str().unwrap())).await;
    assert_eq!(run.assert_status(200)["details"]["catalog_version"], old_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_hold_of_an_earlier_turn_is_released_first_even_when_the_turn_is_then_refused() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("oli", "30").await;
    // An earlier turn that died with its hold pending (as after a crash).
    let stale = app.hold("oli", "12").await;
    let stale_hold_id = stale.assert_status(201)["hold_id"].as_str().unwrap().to_owned();
    let now = app.engine.now();
    let earlier = store::RunRecord {
        run_id: store::RunId::parse("run-earlier").expect("valid run id"),
        account_id: ledger::AccountId::parse("oli").unwrap(),
        thread_id: store::ThreadId::parse("oli-thread").expect("valid thread id"),
        turn_index: 0,
        state: store::RunState::Running,
        instance_id: "gone".to_owned(),
        hold_id: Some(ledger::HoldId::parse(&stale_hold_id).unwrap()),
        hold_resolution: store::HoldResolution::Pending,
        created_at: now,
        updated_at: now,
        data: "{}".to_owned(),
    };
    let runs = app.engine.run_store();
    runs.create_run(&earlier).await.unwrap().unwrap();
    let interrupted = store::RunRecord { state: store::RunState::Interrupted, ..earlier };
    assert!(runs.update_run(&interrupted).await.unwrap());
    assert_eq!(app.figures("oli").await.2, "18");

    // A retry turn that fails closed in preflight: still, the stale hold went first, and no
    // LLM call was made and nothing new was held.
    let frames = app
        .solve(json!({"account_id": "oli", "problem": "again", "thread_id": "oli-thread", "action": "video_retry", "retry_source_job_id": "job-1"}))
        .await
        .collect()
        .await;
    assert_eq!(frames.last().unwrap().payload()["code"], "invalid_input");
    assert!(!kinds(&frames).contains(&"credit_reserved"));
    assert_eq!(app.get_hold(&stale_hold_id).await.str("state"), "released");
    assert_eq!(app.figures("oli").await, ("30".to_owned(), "0".to_owned(), "30".to_owned()));
    assert!(fake.recorded().is_empty(), "no LLM call before the preflight");
}

/// Graceful shutdown with an open SSE client and a live run: the server exits cleanly within
/// the grace period, the run ends with `error {code: canceled}`, and its hold is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_live_runs_releases_their_holds_and_ends_open_streams() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("ledger.db");
    let fake = FakeProvider::start().await;
    let config = fake.config();
    let database = cli::DatabaseUrl::sqlite(path.clone());
    let app = spawn_app_full(
        false,
        move |settings| {
            settings.runs.llm = Some(config);
            settings.database = database;
            settings.shutdown_grace = Duration::from_secs(10);
        },
        None,
    )
    .await;
    app.fund("pam", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on_default(Purpose::Solver, FakeReply::text("slow").after(Duration::from_secs(60)));
    let mut stream = app.solve(json!({"account_id": "pam", "problem": "p"})).await;
    let mut frames = stream.until("credit_reserved").await;
    let hold_id = find(&frames, "credit_reserved").payload()["hold_id"].as_str().unwrap().to_owned();
    let reader = tokio::spawn(stream.collect());
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("the server stops within the grace period");
    assert!(started.elapsed() < Duration::from_secs(10));
    frames.extend(tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the stream ended").unwrap());
    let last = frames.last().unwrap();
    assert_eq!((last.event.as_str(), last.payload()["code"].as_str()), ("error", Some("canceled")), "{frames:#?}");

    // Reopen the database the stopped server left: the hold went back.
    let clock: Arc<dyn store::Clock> = Arc::new(store::SystemClock);
    let ledger = store_sqlite::SqliteStore::open(&path, clock, store_sqlite::SqliteOptions::default()).await.unwrap();
    let hold = store::LedgerStore::hold(&ledger, &ledger::HoldId::parse(&hold_id).unwrap()).await.unwrap().unwrap();
    assert_eq!(hold.state, ledger::HoldState::Released);
    let report = store::LedgerStore::verify(&ledger).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cancel_on_disconnect_a_client_that_leaves_cancels_its_run() {
    let fake = FakeProvider::start().await;
    let config = fake.config();
    let app = spawn_app_full(
        false,
        move |settings| {
            settings.runs.llm = Some(config);
            settings.runs.cancel_on_disconnect = true;
        },
        None,
    )
    .await;
    app.fund("quin", "50").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on_default(Purpose::Solver, FakeReply::text("slow").after(Duration::from_secs(60)));
    let mut stream = app.solve(json!({"account_id": "quin", "problem": "p"})).await;
    let frames = stream.until("credit_reserved").await;
    let run_id = stream.run_id.clone();
    drop(stream);
    let state = run_end_state(&app, &run_id).await;
    assert_eq!(state, "canceled");
    let hold_id = find(&frames, "credit_reserved").payload()["hold_id"].as_str().unwrap().to_owned();
    assert_eq!(app.get_hold(&hold_id).await.str("state"), "released");
    assert_eq!(app.figures("quin").await, ("50".to_owned(), "0".to_owned(), "50".to_owned()));
}

/// A finished run's events are kept for the retention, then forgotten by the sweep: its stream
/// answers `410 run_events_expired` while the run itself stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_runs_events_expire_after_the_retention() {
    let (app, fake) = app_with_provider(false).await;
    app.fund("keep", "30").await;
    fake.on(Purpose::Router, FakeReply::route(true));
    fake.on(Purpose::GeneralChat, FakeReply::text("hello"));
    let stream = app.solve(json!({"account_id": "keep", "problem": "hello"})).await;
    let run_id = stream.run_id.clone();
    let frames = stream.collect().await;
    assert_eq!(frames.last().map(|frame| frame.event.as_str()), Some("done"));
    assert_eq!(app.engine.forget_run_events_once().await.expect("sweeps"), 0, "within the retention");
    let retention = app.engine.config().run_events_retention_seconds;
    let replayed = app.resume(&run_id, None).await.collect().await;
    assert_eq!(replayed, frames, "an ended run is served from the store");
    app.clock.advance_seconds(i64::try_from(retention).expect("fits") + 1);
    let forgotten = app.engine.forget_run_events_once().await.expect("sweeps");
    assert_eq!(forgotten, frames.len() as u64);
    app.get(&format!("/v1/runs/{run_id}/events")).await.assert_problem(410, "run_events_expired");
    let run = app.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run.assert_status(200)["state"], "succeeded");
}
