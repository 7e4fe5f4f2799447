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
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_creditgraph"))
            .args(["serve", "--listen", &listen, "--database", database])
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

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
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
