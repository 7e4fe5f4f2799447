//! Webhooks end to end, against a real receiver process (`support/webhook_receiver.py`) that
//! verifies every delivery with the `standardwebhooks` package from PyPI: every event kind is
//! delivered, signed, once per change, after the receiver first fails and then recovers;
//! nothing is sent for a rejected command; the endpoints' admin routes; and a `kill -9` between
//! commit and delivery still delivers after the restart.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use engine::provider::Purpose;
use engine::testing::{FakeProvider, FakeReply};
use jobs::render::RenderFailure;
use jobs::{Finish, JobErrorCode};
use serde_json::{json, Value};
use store::Clock;
use tokio::io::AsyncBufReadExt;

use crate::helpers::{spawn_app, spawn_app_with_provider, ServerProcess, TestApp};

/// Every event type, as an endpoint subscribes to them.
const EVENT_TYPES: [&str; 16] = [
    "grant.created",
    "grant.expired",
    "grant.voided",
    "allowance.granted",
    "hold.created",
    "hold.captured",
    "hold.released",
    "hold.expired",
    "refund.created",
    "balance.low",
    "balance.depleted",
    "run.succeeded",
    "run.failed",
    "job.succeeded",
    "job.failed",
    "job.canceled",
];

/// The receiver process, killed when dropped.
struct Receiver {
    _child: tokio::process::Child,
    base: String,
    client: reqwest::Client,
}

impl Receiver {
    /// Starts it with the Python that has `standardwebhooks` (`CREDITGRAPH_TEST_PYTHON`, which
    /// scripts/test.sh sets to its venv's; else `python3`).
    async fn start() -> Receiver {
        let python = std::env::var("CREDITGRAPH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/support/webhook_receiver.py");
        let mut child = tokio::process::Command::new(&python)
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{python} starts: {error}"));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the receiver prints its port")
            .expect("reads")
            .unwrap_or_else(|| panic!("the receiver exited: is standardwebhooks installed for {python}?"));
        Receiver { _child: child, base: format!("http://127.0.0.1:{}", port.trim()), client: reqwest::Client::new() }
    }

    fn url(&self) -> String {
        format!("{}/hook", self.base)
    }

    async fn control(&self, body: Value) {
        let response = self.client.post(format!("{}/control", self.base)).json(&body).send().await.expect("control");
        assert!(response.status().is_success());
    }

    async fn received(&self) -> Vec<Value> {
        let response = self.client.get(format!("{}/received", self.base)).send().await.expect("received");
        let body: Value = response.json().await.expect("JSON");
        body["deliveries"].as_array().expect("deliveries").clone()
    }

    /// The deliveries once `done` holds for them (at most 60 s).
    async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let received = self.received().await;
            if done(&received) {
                return received;
            }
            assert!(Instant::now() < deadline, "the receiver never saw {what}: {received:#?}");
            // The receiver is another process: its state is polled.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ids_with_status(received: &[Value], status: u64) -> Vec<String> {
    received
        .iter()
        .filter(|delivery| delivery["status"] == status)
        .map(|delivery| delivery["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Every event after `after` from `GET /v1/events`, by id.
async fn events_since(app: &TestApp, after: &str) -> BTreeMap<String, Value> {
    let page = app.get(&format!("/v1/events?limit=1000&after={after}")).await;
    let page = page.assert_status(200);
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| (event["id"].as_str().expect("an id").to_owned(), event.clone()))
        .collect()
}

/// The events after `after` once every type in `types` is among them (on PostgreSQL an event is
/// readable once every older transaction of the cluster ended).
async fn events_with_types(app: &TestApp, after: &str, types: &[&str]) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = events_since(app, after).await;
        let seen: BTreeSet<&str> = events.values().filter_map(|event| event["type"].as_str()).collect();
        if types.iter().all(|wanted| seen.contains(wanted)) {
            return events;
        }
        assert!(Instant::now() < deadline, "missing types; events: {events:#?}");
        tokio::task::yield_now().await;
    }
}

async fn create_endpoint(app: &TestApp, receiver: &Receiver, events: &[&str]) -> (String, String) {
    let created = app.post("/v1/webhook-endpoints", json!({"url": receiver.url(), "events": events})).await;
    let created = created.assert_status(201);
    let secret = created["secret"].as_str().expect("the secret, once").to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    (created["endpoint_id"].as_str().expect("an id").to_owned(), secret)
}

/// A [solve, video] turn whose solver answers at once; the job id.
async fn video_turn(app: &TestApp, fake: &FakeProvider, account: &str, thread: &str) -> String {
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve", "video"], "easy", "brief", false));
    fake.on(Purpose::Solver, FakeReply::text("x = 4"));
    let frames =
        app.solve(json!({"account_id": account, "problem": "draw 2 + 2", "thread_id": thread})).await.collect().await;
    assert_eq!(frames.last().expect("frames").event, "done", "{frames:#?}");
    let token = frames.iter().find(|frame| frame.event == "token" && frame.data["node"] == "video").expect("video");
    token.payload()["metadata"]["job_id"].as_str().expect("a job id").to_owned()
}

fn job_id(text: &str) -> store::JobId {
    store::JobId::parse(text).expect("a valid job id")
}

/// Makes one change of every kind: ledger changes on `led`, runs and video jobs on `vid`.
async fn one_change_of_every_kind(app: &TestApp, fake: &FakeProvider) {
    // Runs and jobs first, while `vid` has credits.
    app.fund("vid", "100").await;
    let jobs = app.engine.jobs().expect("the app runs video jobs").clone();
    let succeeded = video_turn(app, fake, "vid", "vid-1").await;
    jobs.claim("w").await.expect("claims").expect("a queued job");
    let rendered = jobs::render::Rendered { bytes: b"<svg/>".to_vec(), content_type: "image/svg+xml".to_owned() };
    jobs.finish(&job_id(&succeeded), "w", Finish::Succeeded(rendered)).await.expect("finishes");
    let failed = video_turn(app, fake, "vid", "vid-2").await;
    jobs.claim("w").await.expect("claims").expect("a queued job");
    let permanent = RenderFailure {
        transient: false,
        code: JobErrorCode::RenderResourceLimit,
        stage: "render".to_owned(),
        detail: "OOM".to_owned(),
    };
    jobs.finish(&job_id(&failed), "w", Finish::Failed(permanent)).await.expect("finishes");
    let canceled = video_turn(app, fake, "vid", "vid-3").await;
    app.post(&format!("/v1/jobs/{canceled}/cancel?account_id=vid"), json!({})).await.assert_status(200);
    // A run whose model provider refuses it fails (and releases its hold).
    fake.on(Purpose::Router, FakeReply::status_retry_after(400, 0));
    let frames = app.solve(json!({"account_id": "vid", "problem": "p"})).await.collect().await;
    assert!(frames.iter().all(|frame| frame.event != "done"), "{frames:#?}");

    // The ledger's own kinds on `led`.
    app.fund("led", "20").await;
    let mistaken = app.grant("led", json!({"amount": "1", "priority": 2000})).await;
    let mistaken = mistaken.assert_status(201)["grant_id"].as_str().expect("grant id").to_owned();
    app.post(&format!("/v1/grants/{mistaken}/void"), json!({})).await.assert_status(200);
    let expires_at = store::events::rfc3339(app.clock.now().plus_seconds(5));
    // Spent last (a higher priority number), so its credit is still there when it expires.
    app.grant("led", json!({"amount": "1", "expires_at": expires_at, "priority": 1000})).await.assert_status(201);
    app.post("/v1/accounts/led/allowances", json!({"amount": "2", "period": "month", "timezone": "Asia/Seoul"}))
        .await
        .assert_status(201);
    let captured = app.hold_id("led", "3").await;
    app.capture(&captured, json!({"amount": "2", "final": true})).await.assert_status(200);
    let released = app.hold_id("led", "1").await;
    app.release(&released).await.assert_status(200);
    app.post("/v1/holds", json!({"account_id": "led", "amount": "1", "ttl_seconds": 1})).await.assert_status(201);
    app.refund("led", json!({"amount": "1", "reference": "refund-1", "hold_id": captured})).await.assert_status(201);
    app.clock.advance_seconds(6);
    app.store.sweep(100).await.expect("the sweep records the expiries");
    app.post("/v1/accounts/led/low-balance-threshold", json!({"threshold": "5"})).await.assert_status(200);
    let available = app.figures("led").await.2;
    app.debit("led", json!({"amount": available})).await.assert_status(201);
}

async fn every_kind_once_after_a_failing_receiver(postgres: bool) {
    let (app, fake) = spawn_app_with_provider(postgres, |settings| settings.runs.jobs.workers_in_process = 0).await;
    let receiver = Receiver::start().await;
    let start = app.get("/v1/events").await.assert_status(200)["next"].as_str().expect("next").to_owned();
    let (endpoint_id, secret) = create_endpoint(&app, &receiver, &EVENT_TYPES).await;
    receiver.control(json!({"secret": secret, "fail": true})).await;

    one_change_of_every_kind(&app, &fake).await;
    let events = events_with_types(&app, &start, &EVENT_TYPES).await;
    // Nothing for a refused command: no event, so no delivery.
    app.hold("led", "1000").await.assert_problem(402, "insufficient_credits");
    app.post("/v1/holds", json!({"account_id": "led", "amount": "-1"})).await.assert_problem(422, "invalid_amount");

    // Each event is tried, and the receiver answers 500.
    let expected: BTreeSet<String> = events.keys().cloned().collect();
    receiver
        .wait_until("an attempt at every event", |received| {
            let tried: BTreeSet<String> = ids_with_status(received, 500).into_iter().collect();
            expected.is_subset(&tried)
        })
        .await;
    let endpoint = app.get(&format!("/v1/webhook-endpoints/{endpoint_id}")).await;
    assert!(endpoint.assert_status(200)["failing_since"].is_string(), "{}", endpoint.body);
    assert!(endpoint.body.get("secret").is_none(), "a secret is shown only once");

    // The receiver recovers; the retries come due (the first after 5–10 s).
    receiver.control(json!({"fail": false})).await;
    app.clock.advance_seconds(10);
    let received = receiver
        .wait_until("every event delivered", |received| {
            let delivered: BTreeSet<String> = ids_with_status(received, 200).into_iter().collect();
            expected.is_subset(&delivered)
        })
        .await;
    assert!(received.iter().all(|delivery| delivery["verified"] == true), "{received:#?}");
    // Once per change: each event delivered once, as `GET /v1/events` lists it, and nothing else.
    let now = events_since(&app, &start).await;
    let delivered = ids_with_status(&received, 200);
    let unique: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(unique.len(), delivered.len(), "an event delivered twice: {delivered:?}");
    assert_eq!(unique, now.keys().cloned().collect::<BTreeSet<_>>(), "exactly the outbox's events");
    for delivery in received.iter().filter(|delivery| delivery["status"] == 200) {
        let id = delivery["id"].as_str().expect("an id");
        assert_eq!(&delivery["payload"], &now[id], "the body is the event as listed");
    }
    let types: BTreeSet<&str> = now.values().filter_map(|event| event["type"].as_str()).collect();
    assert_eq!(types, EVENT_TYPES.into_iter().collect(), "every kind");
    let endpoint = app.get(&format!("/v1/webhook-endpoints/{endpoint_id}")).await;
    assert_eq!(endpoint.assert_status(200)["failing_since"], Value::Null, "a success ends the failing run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_is_delivered_once_after_the_receiver_recovers() {
    every_kind_once_after_a_failing_receiver(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_event_kind_is_delivered_once_after_the_receiver_recovers() {
    every_kind_once_after_a_failing_receiver(true).await;
}

/// The admin routes: validation, listing without secrets, disable and enable, rotation (the
/// receiver verifies with the new secret at once), replay.
#[tokio::test]
async fn endpoints_are_managed_by_admins() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let post = |body: Value| app.post("/v1/webhook-endpoints", body);
    post(json!({"url": "ftp://example.com", "events": ["hold.created"]}))
        .await
        .assert_problem(422, "invalid_webhook_url");
    post(json!({"url": "not a url", "events": ["hold.created"]})).await.assert_problem(422, "invalid_webhook_url");
    let long_url = format!("{}/{}", receiver.url(), "p".repeat(2048));
    post(json!({"url": long_url, "events": ["hold.created"]})).await.assert_problem(422, "invalid_webhook_url");
    post(json!({"url": receiver.url(), "events": ["hold.nope"]})).await.assert_problem(422, "unknown_event_type");
    post(json!({"url": receiver.url(), "events": []})).await.assert_problem(422, "invalid_request");
    let long = "d".repeat(501);
    post(json!({"url": receiver.url(), "events": ["hold.created"], "description": long}))
        .await
        .assert_problem(422, "invalid_request");
    app.get("/v1/webhook-endpoints/we-ghost").await.assert_problem(404, "webhook_endpoint_not_found");
    app.post("/v1/webhook-endpoints/we-ghost/disable", json!({}))
        .await
        .assert_problem(404, "webhook_endpoint_not_found");

    let (endpoint_id, secret) = create_endpoint(&app, &receiver, &["grant.created", "grant.created"]).await;
    let listed = app.get("/v1/webhook-endpoints").await;
    let listed = listed.assert_status(200)["endpoints"].as_array().expect("endpoints").clone();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["events"].clone(), listed[0].get("secret")), (json!(["grant.created"]), None));

    // Disabled: the grant is recorded for it but not sent until it is enabled.
    receiver.control(json!({"secret": secret})).await;
    let disabled = app.post(&format!("/v1/webhook-endpoints/{endpoint_id}/disable"), json!({})).await;
    assert_eq!(disabled.assert_status(200)["disabled_reason"], "admin");
    app.fund("amy", "1").await;
    let enabled = app.post(&format!("/v1/webhook-endpoints/{endpoint_id}/enable"), json!({})).await;
    assert_eq!(enabled.assert_status(200)["disabled_at"], Value::Null);
    receiver.wait_until("the grant", |received| ids_with_status(received, 200).len() == 1).await;

    // Rotation: the new secret verifies at once (the old one signs alongside for a day).
    let rotated = app.post(&format!("/v1/webhook-endpoints/{endpoint_id}/rotate-secret"), json!({})).await;
    let new_secret = rotated.assert_status(200)["secret"].as_str().expect("the new secret").to_owned();
    assert_ne!(new_secret, secret);
    receiver.control(json!({"secret": new_secret})).await;
    app.fund("amy", "1").await;
    receiver.wait_until("the second grant", |received| ids_with_status(received, 200).len() == 2).await;

    // Replay: both grants again, as new deliveries with the same ids.
    let replay = app
        .post(&format!("/v1/webhook-endpoints/{endpoint_id}/replay"), json!({"since": "2000-01-01T00:00:00Z"}))
        .await;
    assert_eq!(replay.assert_status(200)["replayed"], 2);
    let received = receiver.wait_until("the replays", |received| ids_with_status(received, 200).len() == 4).await;
    let ids = ids_with_status(&received, 200);
    assert_eq!((&ids[2..].iter().collect::<BTreeSet<_>>()), &ids[..2].iter().collect::<BTreeSet<_>>());
    app.post(&format!("/v1/webhook-endpoints/{endpoint_id}/replay"), json!({"since": "yesterday"}))
        .await
        .assert_problem(422, "invalid_request");
}

/// Without `--webhooks-allow-private`, a loopback URL is refused when the endpoint is created.
#[tokio::test]
async fn a_private_destination_is_refused_by_default() {
    let server = ServerProcess::start_with("memory:", &[], &[]);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/v1/webhook-endpoints", server.base))
        .json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["grant.created"]}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.expect("problem+json");
    assert_eq!(problem["code"], "webhook_destination_refused", "{problem}");
}

/// Events committed but not yet sent when the process is killed (`kill -9`: no shutdown code
/// runs) are delivered by the next process: the outbox and the deliveries are in the database,
/// not in memory. The first process polls once a minute, so it is killed between the commits
/// and its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_commit_and_delivery_still_delivers_after_the_restart() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let database = format!("sqlite:{}", dir.path().join("creditgraph.db").display());
    let receiver = Receiver::start().await;
    let client = reqwest::Client::new();
    let first = ServerProcess::start_with(&database, &["--webhooks-allow-private", "--webhooks-poll-ms", "60000"], &[]);
    let created: Value = client
        .post(format!("{}/v1/webhook-endpoints", first.base))
        .json(&json!({"url": receiver.url(), "events": ["grant.created"]}))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    receiver.control(json!({"secret": created["secret"]})).await;
    let mut expected = BTreeSet::new();
    for reference in ["a", "b", "c"] {
        let grant = json!({"amount": "1", "reference": reference});
        let response =
            client.post(format!("{}/v1/accounts/kim/grants", first.base)).json(&grant).send().await.expect("answers");
        assert_eq!(response.status(), 201);
    }
    let events: Value =
        client.get(format!("{}/v1/events", first.base)).send().await.expect("answers").json().await.expect("JSON");
    for event in events["events"].as_array().expect("events") {
        expected.insert(event["id"].as_str().expect("an id").to_owned());
    }
    assert_eq!(expected.len(), 3, "{events}");
    assert_eq!(receiver.received().await, Vec::<Value>::new(), "nothing sent yet");
    first.crash();
    let _second = ServerProcess::start_with(&database, &["--webhooks-allow-private", "--webhooks-poll-ms", "50"], &[]);
    let received = receiver
        .wait_until("every grant delivered", |received| {
            expected.is_subset(&ids_with_status(received, 200).into_iter().collect())
        })
        .await;
    assert!(received.iter().all(|delivery| delivery["verified"] == true), "{received:#?}");
    assert_eq!(received.len(), 3, "each once: {received:#?}");
}
