//! The real `creditgraph serve` process under test, started and ended the way production ends:
//! `kill -9` (no shutdown code runs) or SIGTERM (graceful shutdown).
//!
//! Why a child process and not an in-process server: only a real process can be killed
//! without running a single destructor, which is the fault the recovery code exists for.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a start may take before the driver gives up (migrations included).
const START_SECONDS_MAX: u64 = 60;
/// How long a graceful shutdown may take before the driver kills the process.
const STOP_SECONDS_MAX: u64 = 30;

/// How every server of one store is started.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub database: String,
    pub llm_base_url: String,
    pub renderer_command: String,
    /// Server stderr goes here (appended), for the post-mortem of a violation.
    pub log_path: PathBuf,
}

/// A running server. Dropping it kills the process (a driver error must not leave servers behind).
pub struct ServerProcess {
    child: Option<Child>,
    pub base: String,
}

impl ServerProcess {
    /// Starts `serve` on a free loopback port and waits until `/readyz` answers 200.
    pub async fn start(spec: &ServerSpec, client: &reqwest::Client) -> anyhow::Result<ServerProcess> {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr())?.port();
        let listen = format!("127.0.0.1:{port}");
        let log = File::options().create(true).append(true).open(&spec.log_path)?;
        let child = Command::new(&spec.binary)
            .args(["serve", "--listen", &listen, "--database", &spec.database])
            .args(["--instance-lease-seconds", "2", "--workers-in-process", "1"])
            .args(["--job-lease-seconds", "3", "--job-heartbeat-seconds", "1", "--job-sweep-interval-seconds", "1"])
            .args(["--sweep-interval-seconds", "1", "--shutdown-grace-seconds", "5"])
            .env_remove("CREDITGRAPH_TOKENS")
            .env_remove("CREDITGRAPH_WORKER_TOKEN")
            .env_remove("CREDITGRAPH_RENDERER_URL")
            .env("CREDITGRAPH_LLM_BASE_URL", &spec.llm_base_url)
            .env("CREDITGRAPH_LLM_TIMEOUT_SECONDS", "3")
            .env("CREDITGRAPH_RENDERER_COMMAND", &spec.renderer_command)
            .env("CREDITGRAPH_RENDERER_CONTENT_TYPE", "video/mp4")
            .env("CREDITGRAPH_RENDERER_TIMEOUT_SECONDS", "10")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        let mut server = ServerProcess { child: Some(child), base: format!("http://{listen}") };
        let deadline = Instant::now() + Duration::from_secs(START_SECONDS_MAX);
        while Instant::now() < deadline {
            if let Some(child) = server.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("the server exited at start with {status}; see {}", spec.log_path.display());
                }
            }
            let ready = client.get(format!("{}/readyz", server.base)).timeout(Duration::from_secs(2)).send().await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.kill9();
        bail!("the server did not become ready within {START_SECONDS_MAX} s; see {}", spec.log_path.display())
    }

    /// `kill -9`: no shutdown code runs, in-flight requests lose their responses.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (bounded; killed past it). `Ok(true)` on a clean exit.
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else { return Ok(true) };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(STOP_SECONDS_MAX);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `creditgraph verify --database URL`: `Ok(None)` when clean, else its output.
pub fn verify(binary: &Path, database: &str) -> anyhow::Result<Option<String>> {
    let output = Command::new(binary).args(["verify", "--database", database]).env("RUST_LOG", "warn").output()?;
    if output.status.success() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}
