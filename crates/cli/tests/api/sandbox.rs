//! The `code_execute` sandbox seen from outside (issue 17's escape suite, the server's half): a
//! real server on a real SQLite file, a solve over HTTP whose model (the scripted provider) sends
//! code that reaches for the server's database and WAL, its process, its working directory, its
//! port and a listener of the test. Every attempt fails inside the sandbox, the turn ends
//! normally, and afterwards the ledger verifies and no sandboxed process is left. The attacks on
//! the sandbox's own limits (fork bomb, memory, disk, `setsid`, `setrlimit`) are in
//! `crates/engine/tests/sandbox_escape.rs`, against the same executor.

use cli::config::DatabaseUrl;
use engine::provider::Purpose;
use engine::testing::FakeReply;
use serde_json::json;

use crate::helpers::spawn_app_with_provider;

/// Python that tries each way out and prints one line per attempt: `blocked <name> <error>` when
/// it failed, `LEAK <name> …` when it reached anything.
fn attack(database: &str, server_pid: u32, server_cwd: &str, server_port: u16, listener_port: u16) -> String {
    format!(
        r#"import os, socket
def attempt(name, reach):
    try:
        print("LEAK", name, repr(reach())[:60])
    except BaseException as error:
        print("blocked", name, type(error).__name__)
db = {database:?}
attempt("database", lambda: open(db, "rb").read(16))
attempt("wal", lambda: open(db + "-wal", "rb").read(16))
attempt("relative", lambda: open(os.path.relpath(db, {server_cwd:?}), "rb").read(16))
attempt("proc-cwd", lambda: os.listdir("/proc/{server_pid}/cwd"))
attempt("proc-root", lambda: open("/proc/{server_pid}/root" + db, "rb").read(16))
attempt("environ", lambda: open("/proc/{server_pid}/environ", "rb").read(16))
attempt("working-directory", lambda: os.listdir({server_cwd:?}))
attempt("its-parent", lambda: os.listdir(os.path.dirname({server_cwd:?})))
attempt("database-folder", lambda: os.listdir(os.path.dirname(db)))
attempt("listener", lambda: socket.create_connection(("127.0.0.1", {listener_port}), timeout=2))
attempt("server-port", lambda: socket.create_connection(("127.0.0.1", {server_port}), timeout=2))
attempt("shadow", lambda: open("/etc/shadow").read(16))
"#
    )
}

const ATTEMPTS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_written_code_cannot_reach_the_server_its_data_or_the_network() {
    let mut database = None;
    let (app, fake) = spawn_app_with_provider(false, |settings| {
        if let DatabaseUrl::Sqlite { path, .. } = &settings.database {
            database = Some(path.clone());
        }
    })
    .await;
    let database = database.expect("the test app runs on a SQLite file");
    let database = std::fs::canonicalize(&database).expect("the database file exists");
    assert!(database.with_extension("db-wal").exists(), "the server keeps a WAL beside the file");
    // A listener the code must not reach (accepting is left to the kernel's backlog: a connect
    // that got through would succeed without it).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let listener_port = listener.local_addr().expect("bound").port();
    let server_port: u16 =
        app.address.rsplit(':').next().and_then(|port| port.parse().ok()).expect("the app's address has a port");
    let server_cwd = std::env::current_dir().expect("the test's working directory");
    let code = attack(
        database.to_str().expect("a UTF-8 path"),
        std::process::id(),
        server_cwd.to_str().expect("a UTF-8 path"),
        server_port,
        listener_port,
    );

    let zombies_before: Vec<u32> =
        sandbox_processes().into_iter().filter(|process| process.zombie).map(|process| process.pid).collect();
    app.fund("mallory", "100").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on(Purpose::Solver, FakeReply::execute(&code));
    fake.on(Purpose::Solver, FakeReply::text("x = 4"));
    fake.on(Purpose::Explain, FakeReply::text("Two plus two is four."));
    let stream = app.solve(json!({"account_id": "mallory", "problem": "What is 2 + 2?"})).await;
    let run_id = stream.run_id.clone();
    let frames = stream.collect().await;

    // The turn ended normally, the attempts answered inside the tool result.
    assert_eq!(frames.last().expect("frames").event, "done", "{frames:#?}");
    let result = frames
        .iter()
        .find(|frame| frame.event == "tool_result" && frame.payload()["name"] == "code_execute")
        .expect("the code ran");
    let output = result.payload()["output"].as_str().expect("the tool's output").to_owned();
    assert!(!output.contains("LEAK"), "something escaped the sandbox:\n{output}");
    assert_eq!(output.matches("blocked ").count(), ATTEMPTS, "every attempt ran and failed:\n{output}");
    let run = app.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run.assert_status(200)["state"], "succeeded");

    // The server and the machine are unharmed: the ledger verifies on the same file, no process
    // of the sandbox's user is left under this process (other tests run sandboxes at the same
    // time, so only this process's descendants count), and none was left as a zombie for the
    // host's init to collect (those count against the sandbox user's process limit).
    app.assert_verified().await;
    let left: Vec<Process> = sandbox_processes()
        .into_iter()
        .filter(|process| {
            process.descends_from(std::process::id()) || process.zombie && !zombies_before.contains(&process.pid)
        })
        .collect();
    assert!(left.is_empty(), "sandboxed processes outlived the turn: {left:?}");
    drop(listener);
}

/// A process of the sandbox's user (uid 65534), from `/proc`.
#[derive(Debug)]
struct Process {
    pid: u32,
    zombie: bool,
    /// Its ancestors' pids, nearest first, up to the host's init.
    ancestors: Vec<u32>,
}

impl Process {
    fn descends_from(&self, pid: u32) -> bool {
        self.ancestors.contains(&pid)
    }
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(field)).map(|value| value.trim().to_owned())
}

fn sandbox_processes() -> Vec<Process> {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.into_iter()
        .filter(|pid| status_field(*pid, "Uid:").is_some_and(|uid| uid.split_whitespace().next() == Some("65534")))
        .map(|pid| {
            let zombie = status_field(pid, "State:").is_some_and(|state| state.starts_with('Z'));
            let mut ancestors = Vec::new();
            let mut current = pid;
            // A chain of parents is short; the bound only guards against a pid reused mid-walk.
            while let Some(parent) = status_field(current, "PPid:").and_then(|ppid| ppid.parse::<u32>().ok()) {
                if parent <= 1 || ancestors.len() >= 64 {
                    break;
                }
                ancestors.push(parent);
                current = parent;
            }
            Process { pid, zombie, ancestors }
        })
        .collect()
}
