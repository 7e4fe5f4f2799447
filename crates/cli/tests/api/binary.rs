//! The `creditgraph` binary itself: operator commands on a SQLite file, the auth start-up rule
//! and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn creditgraph() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_creditgraph"));
    for variable in [
        "CREDITGRAPH_DATABASE",
        "CREDITGRAPH_LISTEN",
        "CREDITGRAPH_TOKENS",
        "CREDITGRAPH_SERVER",
        "CREDITGRAPH_TOKEN",
        "RUST_LOG",
    ] {
        command.env_remove(variable);
    }
    command.stdin(Stdio::null());
    command
}

fn run(args: &[&str]) -> Output {
    creditgraph().args(args).output().expect("the binary runs")
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "{output:#?}");
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait on the child") {
            return Some(status);
        }
        // std's Child has no wait with a deadline: poll its exit.
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn grant_balance_holds_verify_on_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let migrate = run(&["migrate", "--database", &database]);
    assert!(migrate.status.success(), "{migrate:#?}");

    let grant =
        stdout_json(&run(&["grant", "alice", "20", "--priority", "5", "--reference", "boot", "--database", &database]));
    assert_eq!((grant["amount"].as_str(), grant["priority"].as_i64()), (Some("20"), Some(5)));
    let grant =
        stdout_json(&run(&["grant", "alice", "0.5", "--expires-at", "2099-01-01T00:00:00Z", "--database", &database]));
    assert_eq!(grant["expires_at"], "2099-01-01T00:00:00Z");

    let balance = stdout_json(&run(&["balance", "alice", "--database", &database]));
    assert_eq!((balance["balance"].as_str(), balance["available"].as_str()), (Some("20.5"), Some("20.5")));
    assert_eq!(balance["grants"].as_array().map(Vec::len), Some(2));

    let holds = stdout_json(&run(&["holds", "alice", "--database", &database]));
    assert_eq!(holds, Value::Array(Vec::new()));

    let sweep = stdout_json(&run(&["sweep", "--database", &database]));
    assert_eq!(sweep["entries"], 0);

    let verify = run(&["verify", "--database", &database]);
    assert!(verify.status.success(), "{verify:#?}");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("violations: 0"));

    let missing = run(&["balance", "nobody", "--database", &database]);
    assert_eq!(missing.status.code(), Some(1), "{missing:#?}");
    let bad = run(&["grant", "alice", "-1", "--database", &database]);
    assert!(!bad.status.success());
    let bad_url = run(&["verify", "--database", "mysql://x"]);
    assert_eq!(bad_url.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("unsupported database URL"));
}

#[test]
fn database_and_tokens_come_from_the_environment_too() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("env.db").display());
    let output =
        creditgraph().args(["grant", "bob", "3"]).env("CREDITGRAPH_DATABASE", &database).output().expect("runs");
    assert!(output.status.success(), "{output:#?}");
    let balance = run(&["balance", "bob", "--database", &database]);
    assert_eq!(stdout_json(&balance)["balance"], "3");
}

/// Runs `serve` with `args` (and `--database` in a fresh folder) that must make it refuse to
/// start: its exit code and stderr, after checking no database was touched before the check.
fn serve_refusal(args: &[&str], environment: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let mut child = creditgraph()
        .arg("serve")
        .args(args)
        .args(["--database", &database])
        .envs(environment.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("serve exits at once");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr read");
    assert!(!dir.path().join("ledger.db").exists(), "no database is touched before the check");
    (status.code(), stderr)
}

#[test]
fn serve_refuses_a_public_address_without_tokens() {
    let (code, stderr) = serve_refusal(&["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without tokens"), "{stderr}");
}

#[test]
fn serve_refuses_a_public_address_without_a_sandbox() {
    let (code, stderr) =
        serve_refusal(&["--listen", "0.0.0.0:0", "--tokens", "admin:s3cret"], &[("CREDITGRAPH_SANDBOX", "none")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 with --sandbox=none"), "{stderr}");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let mut child = creditgraph()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &database])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|line: &String| line.contains("creditgraph listening")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not start: {seen:#?}");
            }
        }
    }
    assert!(seen.iter().any(|line| line.contains("authentication is OFF")), "{seen:#?}");

    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(kill.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.expect("serve stops within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    // The reader thread forwards the last lines after the process exits: wait for it to finish
    // (the channel closes at end of stream) rather than racing it.
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    assert!(rest.iter().any(|line| line.contains("stopped")), "{rest:#?}");
}

#[test]
fn a_broken_catalog_stops_start_up_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let catalog = dir.path().join("catalog.toml");
    let text = pricing::catalog::Catalog::builtin_text().replace("sonnet = 3", "sonnet = -3");
    std::fs::write(&catalog, text).expect("catalog written");
    let line =
        pricing::catalog::Catalog::builtin_text().lines().position(|line| line == "sonnet = 3").expect("sonnet line")
            + 1;
    let database = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let output = creditgraph()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &database, "--catalog"])
        .arg(&catalog)
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("{}:{line}: models.sonnet", catalog.display());
    assert!(stderr.contains(&expected), "expected `{expected}` in {stderr}");
}

#[test]
fn serve_refuses_a_public_address_with_a_test_clock() {
    let (code, stderr) = serve_refusal(&["--listen", "0.0.0.0:0", "--tokens", "admin:s3cret", "--test-clock"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 with --test-clock"), "{stderr}");
}

/// `balance` and `holds` read a running server over HTTP (`--server`, `--token`) while it holds
/// the SQLite file, and answer what the API answers; a refused token is a clear failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_ask_a_running_server() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("served.db").display());
    let server = crate::helpers::ServerProcess::start_with(&database, &["--tokens", "admin:adm,service:svc"], &[]);
    let client = reqwest::Client::new();
    let grant = client.post(format!("{}/v1/accounts/ops/grants", server.base)).bearer_auth("adm");
    assert_eq!(grant.json(&serde_json::json!({"amount": "12"})).send().await.expect("grant").status(), 201);
    for amount in ["2", "3"] {
        let hold = client.post(format!("{}/v1/holds", server.base)).bearer_auth("svc");
        let hold = hold.json(&serde_json::json!({"account_id": "ops", "amount": amount})).send().await.expect("hold");
        assert_eq!(hold.status(), 201);
    }
    let base = server.base.clone();
    let (balance, holds, refused) = tokio::task::spawn_blocking(move || {
        let read = |command: &str, token: &str| run(&[command, "ops", "--server", &base, "--token", token]);
        (read("balance", "svc"), read("holds", "svc"), read("balance", "wrong"))
    })
    .await
    .expect("the commands ran");
    let balance = stdout_json(&balance);
    assert_eq!(
        (balance["balance"].as_str(), balance["held"].as_str(), balance["available"].as_str()),
        (Some("12"), Some("5"), Some("7"))
    );
    let holds = stdout_json(&holds);
    let mut amounts: Vec<&str> =
        holds.as_array().expect("a list").iter().map(|hold| hold["amount"].as_str().unwrap()).collect();
    amounts.sort_unstable();
    assert_eq!(amounts, ["2", "3"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:#?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unauthorized"), "{stderr}");
}
