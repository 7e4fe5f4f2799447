//! Issue 7, target 9 (second half): "Each open SSE stream costs ≤ 100 KiB (measured with 10,000
//! open streams)."
//!
//! The real `creditgraph serve` binary runs in its own process over a fresh SQLite file, its LLM
//! provider a [`FakeProvider`] in this process whose solver reply is delayed for minutes, so one
//! solve run stays live (its hold taken, its first frames buffered). Then `streams` clients each
//! open their own TCP connection to `GET /v1/runs/{id}/events` and read until the first `data:`
//! line, so the server has really set every stream up and sent its replay. The server's resident
//! memory before opening them and once all are open gives the cost of one stream:
//! `(rss_after − rss_before) / streams`. Afterwards the streams are closed, the run is canceled and
//! the server stopped with SIGTERM (it must exit cleanly).
//!
//! Every stream is a file descriptor here and in the server, which inherits this process's
//! limits. Raising the limit needs `setrlimit`, which safe Rust cannot call: when the soft limit
//! is too low this returns an error naming it (`scripts/bench.sh` runs `ulimit -n 65536` first).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use engine::provider::openai::{ENV_API_KEY, ENV_BASE_URL, ENV_TIMEOUT_SECONDS, TIMEOUT_SECONDS_MAX};
use engine::provider::Purpose;
use engine::testing::{FakeProvider, FakeReply, FAKE_API_KEY};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::measure::resident_bytes;

/// File descriptors needed besides one per stream (the store, the listener, the provider, std
/// streams, the runtime), in this process and in the server.
pub const FD_MARGIN: u64 = 256;
/// Streams being opened at once: below the listener's accept backlog, so no SYN is dropped.
const OPEN_CONCURRENCY: usize = 128;
/// How long the solver's reply is delayed: the run must outlive the whole measurement.
const SOLVER_DELAY_SECONDS: u64 = 600;
/// How long the server may take to say it listens.
const SERVER_START_SECONDS_MAX: u64 = 60;
/// Bound on every request and on a stream's first bytes, so a stuck server fails the run.
const REQUEST_SECONDS_MAX: u64 = 30;
/// How long the server gets to exit after SIGTERM (its shutdown grace is shorter).
const SERVER_STOP_SECONDS_MAX: u64 = 30;
/// The server's shutdown grace, passed as `--shutdown-grace-seconds`.
const SERVER_SHUTDOWN_GRACE_SECONDS: u64 = 5;
/// Most bytes read from a stream while waiting for its first `data:` line.
const FIRST_BYTES_MAX: usize = 64 * 1024;
/// Time for the server to settle (allocator, lazily sent frames) before each memory reading.
const SETTLE_MILLIS: u64 = 500;
const SERVICE_TOKEN: &str = "creditgraph-bench-streams-service";
const ADMIN_TOKEN: &str = "creditgraph-bench-streams-admin";
const ACCOUNT: &str = "bench-streams";

/// The result of [`measure_stream_memory`].
#[derive(Clone, Debug, Serialize)]
pub struct StreamMemory {
    /// Streams open at the second reading.
    pub streams: usize,
    /// Streams that received their first `data:` line (all of them, or the run fails).
    pub streams_with_data: usize,
    /// The server's resident memory with the run live and no event stream open but the solve's.
    pub rss_before_bytes: u64,
    /// The same with every stream open.
    pub rss_after_bytes: u64,
    /// `(rss_after − rss_before) / streams`: the figure target 9 bounds by 100 KiB.
    pub bytes_per_stream: u64,
}

/// The `creditgraph` binary next to the running executable (`target/<profile>/`), as
/// `creditgraph-bench` finds it; an error says how to build it when it is not there.
pub fn server_binary_next_to_current_exe() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("creditgraph");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: the stream measurement runs the real server; build it with `cargo build --release -p cli`",
        binary.display()
    );
    Ok(binary)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_soft_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits.lines().find(|line| line.starts_with("Max open files")).context("no open-file limit")?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next().context("no soft limit")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse().context("the soft open-file limit")? })
}

/// The `creditgraph serve` process and what drains its log.
struct Server {
    child: Child,
    pid: u32,
    address: String,
}

impl Server {
    async fn start(binary: &Path, database: &Path, provider_url: &str) -> anyhow::Result<Server> {
        let mut command = tokio::process::Command::new(binary);
        // Only the settings chosen here: none inherited from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CREDITGRAPH_") {
                command.env_remove(name);
            }
        }
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--database")
            .arg(format!("sqlite:{}", database.display()))
            .args(["--tokens", &format!("admin:{ADMIN_TOKEN},service:{SERVICE_TOKEN}")])
            .args(["--workers-in-process", "0"])
            .args(["--shutdown-grace-seconds", &SERVER_SHUTDOWN_GRACE_SECONDS.to_string()])
            .env(ENV_BASE_URL, provider_url)
            .env(ENV_API_KEY, FAKE_API_KEY)
            .env(ENV_TIMEOUT_SECONDS, TIMEOUT_SECONDS_MAX.to_string())
            .env("RUST_LOG", "warn,cli=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the server's pid")?;
        let mut lines = BufReader::new(child.stderr.take().context("the server's stderr")?).lines();
        let mut seen = Vec::new();
        let address = tokio::time::timeout(Duration::from_secs(SERVER_START_SECONDS_MAX), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("creditgraph listening") {
                    let address = line
                        .split_whitespace()
                        .find_map(|field| field.strip_prefix("address="))
                        .with_context(|| format!("no address in {line:?}"))?;
                    return Ok(address.to_owned());
                }
                seen.push(line);
            }
            anyhow::bail!("the server exited before listening:\n{}", seen.join("\n"))
        })
        .await
        .context("the server did not start in time")??;
        // The log must be drained or the server blocks on a full pipe; warnings are passed on.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("creditgraph serve: {line}");
                }
            }
        });
        Ok(Server { child, pid, address })
    }

    /// SIGTERM (through `kill(1)`: no unsafe code here), then waits for a clean exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let exited = tokio::time::timeout(Duration::from_secs(SERVER_STOP_SECONDS_MAX), self.child.wait()).await;
        let status = match exited {
            Ok(status) => status?,
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("the server did not stop within {SERVER_STOP_SECONDS_MAX} s of SIGTERM");
            }
        };
        anyhow::ensure!(status.success(), "the server exited with {status}");
        Ok(())
    }
}

/// Opens one `GET /v1/runs/{run_id}/events` on its own connection and reads until the first
/// `data:` line; returns the open connection.
async fn open_stream(address: &str, run_id: &str) -> anyhow::Result<TcpStream> {
    let mut connection = TcpStream::connect(address).await?;
    connection.set_nodelay(true)?;
    let request = format!(
        "GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {SERVICE_TOKEN}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    connection.write_all(request.as_bytes()).await?;
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let read = connection.read(&mut chunk).await?;
        anyhow::ensure!(read > 0, "the server closed the stream before its first frame");
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received);
        if let Some(head_end) = text.find("\r\n\r\n") {
            anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "the stream was refused: {}", &text[..head_end]);
            if text[head_end..].contains("data:") {
                return Ok(connection);
            }
        }
        anyhow::ensure!(received.len() < FIRST_BYTES_MAX, "no frame in the first {FIRST_BYTES_MAX} bytes");
    }
}

/// Starts the solve run that every stream follows; returns its id and the open solve response
/// once its hold is taken (its first frames are buffered from then on).
async fn start_live_run(client: &reqwest::Client, base: &str) -> anyhow::Result<(String, reqwest::Response)> {
    let grant = client
        .post(format!("{base}/v1/accounts/{ACCOUNT}/grants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"amount": "1000"}))
        .send()
        .await?;
    anyhow::ensure!(grant.status() == 201, "the grant answered {}: {}", grant.status(), grant.text().await?);
    let mut solve = client
        .post(format!("{base}/v1/solve"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({"account_id": ACCOUNT, "problem": "What is 2 + 2?"}))
        .send()
        .await?;
    anyhow::ensure!(solve.status() == 200, "the solve answered {}: {}", solve.status(), solve.text().await?);
    let run_id = solve
        .headers()
        .get("x-run-id")
        .and_then(|value| value.to_str().ok())
        .context("the solve stream has no x-run-id")?
        .to_owned();
    let mut seen = String::new();
    while !seen.contains("credit_reserved") {
        let chunk = solve.chunk().await?.context("the solve stream ended before the hold was taken")?;
        seen.push_str(&String::from_utf8_lossy(&chunk));
        anyhow::ensure!(!seen.contains("event: error"), "the run failed before its hold: {seen}");
    }
    Ok((run_id, solve))
}

/// Measures the server's memory per open SSE stream with `streams` streams open (see the module
/// documentation). `server_binary` is the `creditgraph` binary (see
/// [`server_binary_next_to_current_exe`]); the server's SQLite file goes in `data_dir`.
pub async fn measure_stream_memory(
    server_binary: &Path,
    streams: usize,
    data_dir: &Path,
) -> anyhow::Result<StreamMemory> {
    anyhow::ensure!(streams > 0, "measure at least one stream");
    anyhow::ensure!(
        server_binary.is_file(),
        "{} is missing: build the server with `cargo build --release -p cli`",
        server_binary.display()
    );
    let needed = streams as u64 + FD_MARGIN;
    let limit = open_files_soft_limit()?;
    anyhow::ensure!(
        limit >= needed,
        "the open-file limit (ulimit -n) is {limit}; {streams} streams need at least {needed}: run `ulimit -n 65536` first"
    );

    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Router, FakeReply::route(false));
    fake.on_default(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false));
    fake.on_default(Purpose::Solver, FakeReply::text("4").after(Duration::from_secs(SOLVER_DELAY_SECONDS)));
    let database = data_dir.join(format!("streams-{}-{:08x}.db", std::process::id(), rand::random::<u32>()));
    let server = Server::start(server_binary, &database, &fake.base_url()).await?;
    let result = measure_with(&server, streams).await;
    let stopped = server.stop().await;
    let measured = result?;
    stopped?;
    Ok(measured)
}

async fn measure_with(server: &Server, streams: usize) -> anyhow::Result<StreamMemory> {
    let base = format!("http://{}", server.address);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(REQUEST_SECONDS_MAX)).build()?;
    let (run_id, solve) = start_live_run(&client, &base).await?;
    let memory = || resident_bytes(server.pid).map(|(rss, _)| rss).context("the server's memory is unreadable");

    tokio::time::sleep(Duration::from_millis(SETTLE_MILLIS)).await;
    let rss_before_bytes = memory()?;
    let opened: Vec<anyhow::Result<TcpStream>> = futures::stream::iter(0..streams)
        .map(|_| {
            let (address, run_id) = (server.address.as_str(), run_id.as_str());
            async move {
                tokio::time::timeout(Duration::from_secs(REQUEST_SECONDS_MAX), open_stream(address, run_id))
                    .await
                    .context("a stream's first frame did not arrive in time")?
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .collect()
        .await;
    let mut connections = Vec::with_capacity(streams);
    let mut first_error = None;
    for result in opened {
        match result {
            Ok(connection) => connections.push(connection),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let streams_with_data = connections.len();
    if let Some(error) = first_error {
        return Err(error.context(format!("only {streams_with_data} of {streams} streams opened")));
    }
    tokio::time::sleep(Duration::from_millis(SETTLE_MILLIS)).await;
    let rss_after_bytes = memory()?;
    // Every stream is still open at the reading: the server never saw one go.
    anyhow::ensure!(connections.len() == streams, "streams went missing");

    drop(connections);
    let cancel = client.post(format!("{base}/v1/runs/{run_id}/cancel")).bearer_auth(SERVICE_TOKEN).send().await?;
    anyhow::ensure!(cancel.status() == 202, "the cancel answered {}: {}", cancel.status(), cancel.text().await?);
    drop(solve);
    Ok(StreamMemory {
        streams,
        streams_with_data,
        rss_before_bytes,
        rss_after_bytes,
        bytes_per_stream: rss_after_bytes.saturating_sub(rss_before_bytes) / streams as u64,
    })
}
