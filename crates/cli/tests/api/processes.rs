//! Several `creditgraph serve` processes on one database: concurrent holds spread over two never
//! overdraw and `creditgraph verify` stays clean; a run is followed, resumed, retried and canceled
//! from another process (PostgreSQL) or after a restart (SQLite).

use std::process::Command;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_on_one_postgres_database_never_overdraw() {
    let database = store_postgres::testing::fresh_database().await;
    let servers = [ServerProcess::start(&database), ServerProcess::start(&database)];
    let client = reqwest::Client::new();
    let granted = client
        .post(format!("{}/v1/accounts/shared/grants", servers[0].base))
        .json(&json!({"amount": "100"}))
        .send()
        .await
        .expect("grant request");
    assert_eq!(granted.status(), 201);

    // 64 holds of 7 on 100, alternating between the two processes: exactly 14 fit.
    let holds = (0..64).map(|index| {
        let url = format!("{}/v1/holds", servers[index % 2].base);
        let client = client.clone();
        async move {
            let reply = client.post(url).json(&json!({"account_id": "shared", "amount": "7"})).send().await;
            let reply = reply.expect("hold request");
            let status = reply.status().as_u16();
            (status, reply.json::<Value>().await.expect("JSON body"))
        }
    });
    let replies = join_all(holds).await;
    let created: Vec<&Value> = replies.iter().filter(|(status, _)| *status == 201).map(|(_, body)| body).collect();
    assert_eq!(created.len(), 14, "{replies:#?}");
    assert!(replies.iter().all(|(status, _)| *status == 201 || *status == 402), "{replies:#?}");

    // Capture half through the other process, then check the figures from both.
    let captures = created.iter().enumerate().filter(|(index, _)| index % 2 == 0).map(|(index, hold)| {
        let hold_id = hold["hold_id"].as_str().expect("hold id").to_owned();
        let url = format!("{}/v1/holds/{hold_id}/capture", servers[(index + 1) % 2].base);
        let client = client.clone();
        async move { client.post(url).json(&json!({"amount": "7"})).send().await.expect("capture").status().as_u16() }
    });
    assert!(join_all(captures).await.into_iter().all(|status| status == 200));
    for server in &servers {
        let account: Value =
            client.get(format!("{}/v1/accounts/shared", server.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!((account["balance"].as_str(), account["held"].as_str()), (Some("51"), Some("49")), "{account}");
        assert_eq!(account["available"], "2");
    }
    drop(servers);

    let verify = Command::new(env!("CARGO_BIN_EXE_creditgraph"))
        .args(["verify", "--database", &database])
        .output()
        .expect("verify runs");
    assert!(verify.status.success(), "{verify:#?}");
}

/// After `kill -9` mid-run, the next start recovers the dead instance's run once its lease lapses:
/// the hold is released (long before its 1200 s TTL) and the run reads `interrupted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_servers_run_is_interrupted_and_its_hold_released_by_the_next_start() {
    use engine::provider::Purpose;
    use engine::testing::{FakeProvider, FakeReply};

    let fake = FakeProvider::start().await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on_default(Purpose::Solver, FakeReply::text("slow").after(Duration::from_secs(120)));
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let base_url = fake.base_url();
    let envs = [("CREDITGRAPH_LLM_BASE_URL", base_url.as_str()), ("CREDITGRAPH_LLM_TIMEOUT_SECONDS", "300")];
    let args = ["--instance-lease-seconds", "2", "--workers-in-process", "0"];
    let first = ServerProcess::start_with(&database, &args, &envs);
    let client = reqwest::Client::new();
    let base = first.base.clone();
    let granted =
        client.post(format!("{base}/v1/accounts/crash/grants")).json(&json!({"amount": "50"})).send().await.unwrap();
    assert_eq!(granted.status(), 201);
    let response = client
        .post(format!("{base}/v1/solve"))
        .json(&json!({"account_id": "crash", "problem": "p"}))
        .send()
        .await
        .expect("solve");
    let mut stream = crate::sse::open(response);
    let run_id = stream.run_id.clone();
    // The hold is taken (the solver call then hangs).
    stream.until("credit_reserved").await;
    let account: Value = client.get(format!("{base}/v1/accounts/crash")).send().await.unwrap().json().await.unwrap();
    assert_ne!(account["held"], "0", "the run took its hold");
    drop(stream);
    first.crash();

    let second = ServerProcess::start_with(&database, &args, &envs);
    let mut run = Value::Null;
    for _ in 0..300 {
        run = client.get(format!("{}/v1/runs/{run_id}", second.base)).send().await.unwrap().json().await.unwrap();
        if run["state"] == "interrupted" {
            break;
        }
        // The second process recovers on its own schedule and announces nothing: poll the run.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run["state"], "interrupted", "{run:#}");
    let account: Value =
        client.get(format!("{}/v1/accounts/crash", second.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!((account["balance"].as_str(), account["held"].as_str()), (Some("50"), Some("0")), "{account}");
    let hold_id = run["hold_id"].as_str().expect("the hold was recorded").to_owned();
    let hold: Value =
        client.get(format!("{}/v1/holds/{hold_id}", second.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(hold["state"], "released");
    // Its stream, replayed by the second process, ends as every run's does: with one `error`.
    let response = client.get(format!("{}/v1/runs/{run_id}/events", second.base)).send().await.unwrap();
    let frames = crate::sse::open(response).collect().await;
    // (How many frames the dead process stored depends on when its writer last ran.)
    let last = frames.last().expect("recovery stored the final frame");
    assert_eq!((last.event.as_str(), last.payload()["code"].as_str()), ("error", Some("interrupted")), "{frames:#?}");
    assert_eq!(frames.iter().filter(|frame| frame.event == "error").count(), 1, "{frames:#?}");
    drop(second);
    let verify =
        Command::new(env!("CARGO_BIN_EXE_creditgraph")).args(["verify", "--database", &database]).output().unwrap();
    assert!(verify.status.success(), "{verify:#?}");
}

/// What the two-process run tests need of a server over HTTP.
mod runs_http {
    use serde_json::Value;

    use crate::sse::{self, EventStream, Frame};

    pub async fn solve(client: &reqwest::Client, base: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = client.post(format!("{base}/v1/solve")).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("solve request")
    }

    pub async fn events(client: &reqwest::Client, base: &str, run_id: &str, after: Option<&str>) -> reqwest::Response {
        let mut request = client.get(format!("{base}/v1/runs/{run_id}/events"));
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after);
        }
        request.send().await.expect("events request")
    }

    pub async fn stream(response: reqwest::Response) -> EventStream {
        assert_eq!(response.status(), 200, "{response:?}");
        sse::open(response)
    }

    pub async fn get(client: &reqwest::Client, url: String) -> Value {
        client.get(url).send().await.expect("GET").json().await.expect("JSON body")
    }

    /// The frames' ids and events, what two streams of one run must agree on (with the data).
    pub fn ids(frames: &[Frame]) -> Vec<(String, String)> {
        frames.iter().map(|frame| (frame.id.clone(), frame.event.clone())).collect()
    }
}

/// The PostgreSQL deployment: a run started on A is resumed on B from a `Last-Event-ID` (exactly
/// the frames after it, live, ending with `done`), a solve retried with its key on B streams A's
/// run (charged once; another body under the key is a conflict), the run is replayed in full
/// from B after A stopped, and a run on A is canceled from B with its hold released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_followed_resumed_retried_and_canceled_from_another_process_on_postgres() {
    use engine::provider::Purpose;
    use engine::testing::{FakeProvider, FakeReply, Gate};
    use runs_http::{events, get, ids, solve, stream};

    let fake = FakeProvider::start().await;
    let gate = Gate::new();
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on(Purpose::Solver, FakeReply::text("x = 4").gated(&gate));
    fake.on_default(Purpose::Solver, FakeReply::text("x = 4"));
    fake.on_default(Purpose::Explain, FakeReply::text("two and two make four"));
    let database = store_postgres::testing::fresh_database().await;
    let base_url = fake.base_url();
    let envs = [("CREDITGRAPH_LLM_BASE_URL", base_url.as_str())];
    let args = ["--workers-in-process", "0"];
    let a = ServerProcess::start_with(&database, &args, &envs);
    let b = ServerProcess::start_with(&database, &args, &envs);
    let client = reqwest::Client::new();
    let granted =
        client.post(format!("{}/v1/accounts/pg/grants", a.base)).json(&json!({"amount": "50"})).send().await.unwrap();
    assert_eq!(granted.status(), 201);

    // Started on A; the solver waits at the gate once the hold is taken.
    let body = json!({"account_id": "pg", "problem": "2+2?"});
    let mut on_a = stream(solve(&client, &a.base, Some("solve-1"), &body).await).await;
    let run_id = on_a.run_id.clone();
    let before = on_a.until("credit_reserved").await;
    let resume_after = before[before.len() / 2].id.clone();

    // B follows from the middle, live; a retry of the solve with its key on B is A's run, from
    // the start; the key with another body is a conflict.
    let resumed = stream(events(&client, &b.base, &run_id, Some(&resume_after)).await).await;
    let retried = solve(&client, &b.base, Some("solve-1"), &body).await;
    let mut retried = stream(retried).await;
    assert_eq!(retried.run_id, run_id, "the retry is the same run");
    let other = json!({"account_id": "pg", "problem": "3+3?"});
    let conflict = solve(&client, &b.base, Some("solve-1"), &other).await;
    assert_eq!(conflict.status(), 409);
    let problem: Value = conflict.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_conflict");
    let first_of_retry = retried.next().await.expect("the retry streams from the start");
    assert_eq!(first_of_retry, before[0]);

    gate.open();
    let mut all = before.clone();
    all.extend(on_a.collect().await);
    assert_eq!(all.last().map(|frame| frame.event.as_str()), Some("done"), "{all:#?}");
    let cut = all.iter().position(|frame| frame.id == resume_after).expect("the id was sent") + 1;
    let resumed = resumed.collect().await;
    assert_eq!(ids(&resumed), ids(&all[cut..]), "B sends exactly the frames after the id");
    assert_eq!(resumed, all[cut..].to_vec());
    let mut from_retry = vec![first_of_retry];
    from_retry.extend(retried.collect().await);
    assert_eq!(from_retry, all);

    // Charged once: one turn in the thread, one capture.
    let run = get(&client, format!("{}/v1/runs/{run_id}", b.base)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let thread_id = run["thread_id"].as_str().expect("thread id").to_owned();
    let thread = get(&client, format!("{}/v1/threads/{thread_id}", b.base)).await;
    assert_eq!(thread["turns"].as_array().map(Vec::len), Some(1), "{thread:#}");
    let settled = all.iter().find(|frame| frame.event == "credit_settled").expect("settled");
    let captured: u64 = settled.payload()["captured"].as_str().expect("amount").parse().expect("whole credits");
    let account = get(&client, format!("{}/v1/accounts/pg", b.base)).await;
    assert_eq!(account["balance"], (50 - captured).to_string(), "{account:#}");
    assert_eq!(account["held"], "0", "{account:#}");

    // A run on A canceled from B (twice with one key: the same answer); its hold goes back.
    let cancel_gate = Gate::new();
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on(Purpose::Solver, FakeReply::text("never").gated(&cancel_gate));
    let mut second = stream(solve(&client, &a.base, None, &json!({"account_id": "pg", "problem": "p"})).await).await;
    let second_id = second.run_id.clone();
    second.until("credit_reserved").await;
    let cancel = |key: &'static str| {
        let url = format!("{}/v1/runs/{second_id}/cancel", b.base);
        let client = client.clone();
        async move {
            let reply = client.post(url).header("Idempotency-Key", key).send().await.expect("cancel");
            (reply.status().as_u16(), reply.text().await.expect("body"))
        }
    };
    let first_cancel = cancel("cancel-1").await;
    assert_eq!(first_cancel.0, 202, "{first_cancel:?}");
    assert_eq!(cancel("cancel-1").await, first_cancel, "the same key replays the first answer");
    let rest = second.collect().await;
    let last = rest.last().expect("the run ended");
    assert_eq!((last.event.as_str(), last.payload()["code"].as_str()), ("error", Some("canceled")), "{rest:#?}");
    let canceled = get(&client, format!("{}/v1/runs/{second_id}", b.base)).await;
    assert_eq!(canceled["state"], "canceled", "{canceled:#}");
    let hold_id = canceled["hold_id"].as_str().expect("the hold was recorded");
    let hold = get(&client, format!("{}/v1/holds/{hold_id}", b.base)).await;
    assert_eq!(hold["state"], "released", "{hold:#}");
    let account = get(&client, format!("{}/v1/accounts/pg", b.base)).await;
    assert_eq!((account["balance"].clone(), account["held"].clone()), (json!((50 - captured).to_string()), json!("0")));
    cancel_gate.open();

    // A stops; B replays the first run in full.
    drop(a);
    let replayed = stream(events(&client, &b.base, &run_id, None).await).await.collect().await;
    assert_eq!(replayed, all);
    drop(b);
    let verify =
        Command::new(env!("CARGO_BIN_EXE_creditgraph")).args(["verify", "--database", &database]).output().unwrap();
    assert!(verify.status.success(), "{verify:#?}");
}

/// SQLite: after a restart, the same process's file serves a finished run's events, resumed
/// from a `Last-Event-ID` or replayed in full, and a solve retried with its key is that run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_resumed_and_replayed_after_a_restart_on_sqlite() {
    use engine::provider::Purpose;
    use engine::testing::{FakeProvider, FakeReply};
    use runs_http::{events, ids, solve, stream};

    let fake = FakeProvider::start().await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on_default(Purpose::Solver, FakeReply::text("x = 4"));
    fake.on_default(Purpose::Explain, FakeReply::text("two and two make four"));
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let base_url = fake.base_url();
    let envs = [("CREDITGRAPH_LLM_BASE_URL", base_url.as_str())];
    let args = ["--workers-in-process", "0"];
    let client = reqwest::Client::new();
    let first = ServerProcess::start_with(&database, &args, &envs);
    let granted = client
        .post(format!("{}/v1/accounts/lite/grants", first.base))
        .json(&json!({"amount": "50"}))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 201);
    let body = json!({"account_id": "lite", "problem": "2+2?"});
    let on_first = stream(solve(&client, &first.base, Some("lite-1"), &body).await).await;
    let run_id = on_first.run_id.clone();
    let thread_id = on_first.thread_id.clone();
    let all = on_first.collect().await;
    assert_eq!(all.last().map(|frame| frame.event.as_str()), Some("done"), "{all:#?}");
    drop(first);

    let second = ServerProcess::start_with(&database, &args, &envs);
    let middle = all[all.len() / 2].id.clone();
    let cut = all.len() / 2 + 1;
    let resumed = stream(events(&client, &second.base, &run_id, Some(&middle)).await).await.collect().await;
    assert_eq!(ids(&resumed), ids(&all[cut..]));
    assert_eq!(resumed, all[cut..].to_vec());
    let replayed = stream(events(&client, &second.base, &run_id, None).await).await.collect().await;
    assert_eq!(replayed, all);
    let retried = stream(solve(&client, &second.base, Some("lite-1"), &body).await).await;
    assert_eq!(retried.run_id, run_id);
    assert_eq!(retried.collect().await, all);

    // Bad cursors are 422; an unknown run stays 404.
    for bad in ["nonsense", "other-thread:1", &format!("{thread_id}:x"), &format!("{thread_id}:100000")] {
        let reply = events(&client, &second.base, &run_id, Some(bad)).await;
        assert_eq!(reply.status(), 422, "{bad}: {reply:?}");
    }
    let unknown = events(&client, &second.base, "run-unknown", None).await;
    assert_eq!(unknown.status(), 404);
    let problem: Value = unknown.json().await.unwrap();
    assert_eq!(problem["code"], "run_not_found");
}
