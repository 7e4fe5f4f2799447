//! Two `creditgraph serve` processes on one PostgreSQL database: concurrent holds spread over
//! both never overdraw, and `creditgraph verify` stays clean.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{json, Value};

/// A running `creditgraph serve`, stopped with SIGTERM when dropped.
struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    fn start(database: &str) -> ServerProcess {
        ServerProcess::start_with(database, &[], &[])
    }

    fn start_with(database: &str, args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_creditgraph"))
            .args(["serve", "--listen", &listen, "--database", database])
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("CREDITGRAPH_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !seen.iter().any(|line: &String| line.contains("creditgraph listening")) {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("serve did not start: {seen:#?}");
                }
            }
        }
        ServerProcess { child, base: format!("http://{listen}") }
    }
}

impl ServerProcess {
    /// `kill -9`: no shutdown code runs.
    fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // std's Child has no wait with a deadline: poll its exit.
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

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
    drop(second);
    let verify =
        Command::new(env!("CARGO_BIN_EXE_creditgraph")).args(["verify", "--database", &database]).output().unwrap();
    assert!(verify.status.success(), "{verify:#?}");
}
