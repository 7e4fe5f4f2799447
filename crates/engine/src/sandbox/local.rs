//! The local `code_execute` sandbox: model-written Python in a child process under OS limits.
//!
//! The workspace forbids `unsafe`, so limits cannot be set between `fork` and `exec` from Rust.
//! Instead a small Python bootstrap, run as `python3 -I -S -c <bootstrap>`, lowers its own
//! resource limits (CPU, address space, file size, processes, no core files) and only then reads
//! the model's code from stdin and executes it. Around it the Rust side adds what a process can
//! not do to itself: a fresh empty working folder that is removed afterwards, a cleared
//! environment, a new network namespace when a probe at construction shows `unshare` works, a
//! wall-clock timeout that kills the whole process group, and output capped while it is read.
//!
//! What it does not protect against, by design of a *local* sandbox: the code runs as the
//! service's user and can read every file that user can read; a process that leaves its process
//! group (`setsid`) escapes the group kill; when the service runs as root (and the user namespace
//! is not available) the code may raise its own limits again. Deployments that run untrusted code
//! for strangers should put a remote sandbox behind [`CodeExecutor`] instead.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{CodeExecutor, ExecError, ExecLimits, ExecOutput, ExecStatus};

/// The largest program accepted, in bytes. Model-written solutions are far smaller; a larger one
/// is refused before anything runs.
pub const CODE_BYTES_MAX: usize = 256 * 1024;
/// How long readers may still drain the pipes after the process group is killed. Only a process
/// that escaped the group can hold a pipe open that long; its output is then cut off.
const DRAIN_GRACE_SECONDS: u64 = 2;
/// How long a construction-time probe (isolation, interpreter) may take before it counts as failed.
const PROBE_SECONDS: u64 = 10;
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// The only environment the code sees.
const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const CHILD_LANG: &str = "C.UTF-8";
/// Where system tools are looked up when `PATH` does not have them.
const SYSTEM_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// Lowers the limits, then runs the code read from stdin as `__main__`. The limits come as
/// arguments: cpu seconds, memory bytes, file bytes, processes. A hard limit already lower than
/// the request is kept (asking to raise it would fail). `-S` keeps `site` (and the `.pth` files it
/// executes) from running before the limits; `site.main()` then adds the interpreter's
/// site-packages, so installed libraries such as sympy stay importable (user site stays off: `-I`).
const BOOTSTRAP: &str = r#"
import resource, sys
def _limit(which, value, hard):
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(which, (min(value, hard), hard))
_cpu, _memory, _file, _processes = (int(_arg) for _arg in sys.argv[1:5])
_limit(resource.RLIMIT_CORE, 0, 0)
_limit(resource.RLIMIT_CPU, _cpu, _cpu + 1)
_limit(resource.RLIMIT_AS, _memory, _memory)
_limit(resource.RLIMIT_FSIZE, _file, _file)
_limit(resource.RLIMIT_NPROC, _processes, _processes)
_code = sys.stdin.buffer.read()
sys.argv = ["<solution>"]
del resource, _limit, _cpu, _memory, _file, _processes
import site
site.main()
del site
exec(compile(_code, "<solution>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"#;

/// Runs Python code locally under [`ExecLimits`].
#[derive(Clone, Debug)]
pub struct LocalPython {
    python: PathBuf,
    limits: ExecLimits,
    /// The command that puts the interpreter in a new network namespace (`unshare --net …`), or
    /// empty when the probe found none that works here.
    isolation_prefix: Vec<OsString>,
    /// The `kill` program, to kill the whole process group; without it only the leader is killed.
    kill_program: Option<PathBuf>,
}

impl LocalPython {
    /// An executor for this interpreter. Probes once whether network isolation works here.
    pub fn new(python: PathBuf, limits: ExecLimits) -> LocalPython {
        let mut sandbox =
            LocalPython { python, limits, isolation_prefix: Vec::new(), kill_program: find_program("kill") };
        if let Some(unshare) = find_program("unshare") {
            // Preferred first: a user namespace also takes away real root's power over limits.
            let candidates: [&[&str]; 2] = [&["--net", "--map-root-user"], &["--net"]];
            for arguments in candidates {
                let mut prefix = vec![unshare.clone().into_os_string()];
                prefix.extend(arguments.iter().map(OsString::from));
                sandbox.isolation_prefix = prefix;
                if sandbox.probe("import socket") {
                    break;
                }
                sandbox.isolation_prefix.clear();
            }
        }
        if sandbox.isolation_prefix.is_empty() {
            tracing::warn!("code_execute runs without network isolation: `unshare --net` does not work here");
        }
        sandbox
    }

    /// Finds `python3` on `PATH`, resolves it to the real interpreter (a version-manager shim
    /// needs an environment the sandbox clears), and checks the bootstrap runs under the limits.
    pub fn detect(limits: ExecLimits) -> Result<LocalPython, ExecError> {
        let found = find_on_path("python3").ok_or_else(|| ExecError { detail: "no python3 on PATH".to_owned() })?;
        let output = std::process::Command::new(&found)
            .args(["-I", "-S", "-c", "import resource, sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| ExecError { detail: format!("cannot run {}: {error}", found.display()) })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(ExecError { detail: format!("{} cannot import resource: {}", found.display(), stderr.trim()) });
        }
        let executable = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        let python = if executable.is_absolute() && executable.is_file() { executable } else { found };
        let sandbox = LocalPython::new(python, limits);
        if !sandbox.probe("print(2 + 2)") {
            return Err(ExecError {
                detail: format!("{} cannot run code under the sandbox limits", sandbox.python.display()),
            });
        }
        Ok(sandbox)
    }

    /// Whether code runs in its own network namespace (no network at all, loopback down).
    pub fn network_isolated(&self) -> bool {
        !self.isolation_prefix.is_empty()
    }

    pub fn python(&self) -> &Path {
        &self.python
    }

    pub fn limits(&self) -> &ExecLimits {
        &self.limits
    }

    /// The command line for one run: `[unshare …] python -I -S -c BOOTSTRAP limits…`.
    fn command_line(&self) -> (OsString, Vec<OsString>) {
        let limits = &self.limits;
        let mut words: Vec<OsString> = self.isolation_prefix.clone();
        words.push(self.python.clone().into_os_string());
        words.extend(["-I", "-S", "-c", BOOTSTRAP].map(OsString::from));
        let numbers = [limits.cpu_seconds, limits.memory_bytes, limits.file_bytes, limits.processes_max];
        words.extend(numbers.map(|number| OsString::from(number.to_string())));
        let program = words.remove(0);
        (program, words)
    }

    /// Runs `code` synchronously with this configuration; true if it exits 0 within the probe time.
    /// Used at construction only, where blocking is fine.
    fn probe(&self, code: &str) -> bool {
        let (program, arguments) = self.command_line();
        let Ok(folder) = tempfile::tempdir() else { return false };
        let spawned = std::process::Command::new(program)
            .args(arguments)
            .current_dir(folder.path())
            .env_clear()
            .env("PATH", CHILD_PATH)
            .env("LANG", CHILD_LANG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = spawned else { return false };
        let written = child.stdin.take().is_some_and(|mut stdin| stdin.write_all(code.as_bytes()).is_ok());
        let deadline = Instant::now() + Duration::from_secs(PROBE_SECONDS);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return written && status.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Kills every process of the group the run started. Errors are ignored: the group may be
    /// gone already, which is the goal.
    async fn kill_group(&self, process_group_id: u32) {
        let Some(kill) = &self.kill_program else { return };
        let _ = tokio::process::Command::new(kill)
            .args(["-KILL", "--", &format!("-{process_group_id}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

#[async_trait]
impl CodeExecutor for LocalPython {
    async fn execute(&self, code: &str) -> Result<ExecOutput, ExecError> {
        if code.len() > CODE_BYTES_MAX {
            return Err(ExecError { detail: format!("the code has {} bytes; at most {CODE_BYTES_MAX}", code.len()) });
        }
        let folder = tempfile::Builder::new()
            .prefix("creditgraph-exec-")
            .tempdir()
            .map_err(|error| ExecError { detail: format!("cannot create the working folder: {error}") })?;
        let (program, arguments) = self.command_line();
        let mut child = tokio::process::Command::new(program)
            .args(arguments)
            .current_dir(folder.path())
            .env_clear()
            .env("PATH", CHILD_PATH)
            .env("LANG", CHILD_LANG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| ExecError { detail: format!("cannot start {}: {error}", self.python.display()) })?;
        let process_group_id = child.id();
        // If this future is dropped (the run was canceled), `kill_on_drop` kills the leader and
        // the guard kills the rest of the group.
        let mut guard = GroupGuard { process_group_id, kill_program: self.kill_program.clone() };

        let stdin = child.stdin.take();
        let code_bytes = code.as_bytes().to_vec();
        let writer = tokio::spawn(async move {
            if let Some(mut stdin) = stdin {
                // A program that exits before reading its code closes the pipe; that is its result.
                let _ = stdin.write_all(&code_bytes).await;
            }
        });
        let stdout = Capture::start(child.stdout.take(), self.limits.output_bytes_max);
        let stderr = Capture::start(child.stderr.take(), self.limits.output_bytes_max);

        let wall = Duration::from_secs(self.limits.wall_seconds);
        let waited = tokio::time::timeout(wall, child.wait()).await;
        // Always: nothing the code started outlives its run (this also closes their pipe ends).
        if let Some(process_group_id) = process_group_id {
            self.kill_group(process_group_id).await;
        }
        guard.process_group_id = None;
        let status = match waited {
            Ok(Ok(status)) if status.success() => ExecStatus::Succeeded,
            Ok(Ok(status)) => ExecStatus::Failed { exit_code: status.code(), signal: status.signal() },
            Ok(Err(error)) => {
                let _ = child.kill().await;
                return Err(ExecError { detail: format!("cannot wait for the interpreter: {error}") });
            }
            Err(_elapsed) => {
                // Reap the leader (`kill` may be missing, so kill it directly too).
                let _ = child.kill().await;
                ExecStatus::TimedOut
            }
        };
        writer.abort();
        let (stdout, stdout_truncated) = stdout.finish(self.limits.output_bytes_max).await;
        let (stderr, stderr_truncated) = stderr.finish(self.limits.output_bytes_max).await;
        if let Err(error) = folder.close() {
            tracing::warn!(%error, "could not remove a code_execute working folder");
        }
        Ok(ExecOutput { status, stdout, stderr, truncated: stdout_truncated || stderr_truncated })
    }
}

/// Kills the process group when dropped before the run finished (the future was canceled).
struct GroupGuard {
    process_group_id: Option<u32>,
    kill_program: Option<PathBuf>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let (Some(process_group_id), Some(kill)) = (self.process_group_id, &self.kill_program) else { return };
        // `kill` returns at once; blocking this thread for it is cheaper than leaking processes.
        let _ = std::process::Command::new(kill)
            .args(["-KILL", "--", &format!("-{process_group_id}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Output read so far: at most `bytes_max` kept; the rest is read and dropped, so the child never
/// blocks on a full pipe and a chatty program still finishes.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

struct Capture {
    captured: Arc<Mutex<Captured>>,
    reader: JoinHandle<()>,
}

impl Capture {
    fn start<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>, bytes_max: usize) -> Capture {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let shared = Arc::clone(&captured);
        let reader = tokio::spawn(async move {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = vec![0_u8; READ_CHUNK_BYTES];
            loop {
                let count = match pipe.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(count) => count,
                };
                let mut captured = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let room = bytes_max.saturating_sub(captured.bytes.len());
                captured.bytes.extend_from_slice(&chunk[..count.min(room)]);
                if count > room {
                    captured.truncated = true;
                }
            }
        });
        Capture { captured, reader }
    }

    /// Waits for the pipe to close (bounded), then returns the text and whether it was cut.
    async fn finish(self, bytes_max: usize) -> (String, bool) {
        let Capture { captured, mut reader } = self;
        if tokio::time::timeout(Duration::from_secs(DRAIN_GRACE_SECONDS), &mut reader).await.is_err() {
            reader.abort();
        }
        let captured = std::mem::take(&mut *captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        text_within(captured.bytes, captured.truncated, bytes_max)
    }
}

/// Output bytes as text of at most `bytes_max` bytes. A multi-byte character cut by the
/// truncation is dropped rather than shown as garbage; other invalid UTF-8 becomes U+FFFD, and
/// if that makes the text longer than the bound it is cut again at a character boundary.
fn text_within(bytes: Vec<u8>, truncated: bool, bytes_max: usize) -> (String, bool) {
    let mut bytes = bytes;
    if truncated {
        if let Err(error) = std::str::from_utf8(&bytes) {
            if error.error_len().is_none() {
                bytes.truncate(error.valid_up_to());
            }
        }
    }
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    let mut truncated = truncated;
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        truncated = true;
    }
    (text, truncated)
}

/// An executable file named `name` in a directory of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|directory| directory.join(name)).find(|candidate| is_executable(candidate))
}

/// A system tool: on `PATH`, or in the usual system directories.
fn find_program(name: &str) -> Option<PathBuf> {
    find_on_path(name).or_else(|| {
        SYSTEM_DIRS.iter().map(|directory| Path::new(directory).join(name)).find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous for a machine shared by several builders; the bound still catches a missing kill.
    const SLACK_SECONDS: u64 = 8;

    fn sandbox(limits: ExecLimits) -> LocalPython {
        LocalPython::detect(limits).expect("python3 is installed where the engine is tested")
    }

    async fn run(limits: ExecLimits, code: &str) -> ExecOutput {
        sandbox(limits).execute(code).await.expect("the sandbox runs")
    }

    #[track_caller]
    fn assert_failed(output: &ExecOutput) {
        assert!(matches!(output.status, ExecStatus::Failed { .. }), "{output:?}");
    }

    #[tokio::test]
    async fn prints_two_plus_two() {
        let output = run(ExecLimits::default(), "print(2 + 2)").await;
        assert_eq!(
            output,
            ExecOutput { status: ExecStatus::Succeeded, stdout: "4\n".into(), stderr: "".into(), truncated: false }
        );
    }

    #[tokio::test]
    async fn unicode_output_and_exit_codes_pass_through() {
        let output = run(ExecLimits::default(), "import sys\nprint('해답 √2')\nsys.exit(3)").await;
        assert_eq!(output.stdout, "해답 √2\n");
        assert_eq!(output.status, ExecStatus::Failed { exit_code: Some(3), signal: None });
    }

    #[tokio::test]
    async fn site_packages_and_exit_are_available_after_the_limits() {
        let code = "import site, sys\nprint(all(path in sys.path for path in site.getsitepackages()))\nexit(0)";
        let output = run(ExecLimits::default(), code).await;
        assert_eq!((output.status, output.stdout.as_str()), (ExecStatus::Succeeded, "True\n"), "{}", output.stderr);
    }

    #[tokio::test]
    async fn a_syntax_error_fails_with_the_traceback() {
        let output = run(ExecLimits::default(), "print(\n1 +").await;
        assert_eq!(output.status, ExecStatus::Failed { exit_code: Some(1), signal: None });
        assert!(output.stderr.contains("SyntaxError"), "{output:?}");
        assert!(output.stderr.contains("<solution>"), "{output:?}");
    }

    #[tokio::test]
    async fn an_exception_fails_with_the_traceback() {
        let output = run(ExecLimits::default(), "print('before')\n1 / 0").await;
        assert_failed(&output);
        assert_eq!(output.stdout, "before\n");
        assert!(output.stderr.contains("ZeroDivisionError"), "{output:?}");
    }

    #[tokio::test]
    async fn an_infinite_loop_times_out_at_the_wall_clock_limit() {
        let limits = ExecLimits { wall_seconds: 1, cpu_seconds: 60, ..ExecLimits::default() };
        let started = Instant::now();
        let output = run(limits, "print('started', flush=True)\nwhile True:\n    pass").await;
        let elapsed = started.elapsed();
        assert_eq!(output.status, ExecStatus::TimedOut, "{output:?}");
        assert_eq!(output.stdout, "started\n", "output before the timeout is kept");
        assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1 + SLACK_SECONDS), "{elapsed:?}");
    }

    #[tokio::test]
    async fn the_timeout_kills_the_whole_process_group() {
        let limits = ExecLimits { wall_seconds: 2, ..ExecLimits::default() };
        let code = "import subprocess\nchild = subprocess.Popen(['sleep', '120'])\nprint(child.pid, flush=True)\nwhile True:\n    pass";
        let output = run(limits, code).await;
        assert_eq!(output.status, ExecStatus::TimedOut, "{output:?}");
        let pid: u32 = output.stdout.trim().parse().unwrap_or_else(|_| panic!("a pid: {output:?}"));
        // Killed, then reaped by whoever adopted it; a zombie for a moment at most.
        let deadline = Instant::now() + Duration::from_secs(SLACK_SECONDS);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
                && stat.contains("(sleep)");
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "the grandchild {pid} survived: {stat}");
            // The kernel reaps the grandchild in its own time and tells nobody: poll /proc.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn the_cpu_limit_stops_a_busy_loop() {
        let limits = ExecLimits { wall_seconds: 60, cpu_seconds: 1, ..ExecLimits::default() };
        let started = Instant::now();
        let output = run(limits, "while True:\n    pass").await;
        // SIGXCPU at the soft limit, SIGKILL at the hard one.
        let signal = match output.status {
            ExecStatus::Failed { signal: Some(signal), .. } => signal,
            other => panic!("expected a signal, got {other:?}"),
        };
        assert!(signal == 24 || signal == 9, "signal {signal}");
        assert!(started.elapsed() < Duration::from_secs(2 + SLACK_SECONDS), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_memory_bomb_fails() {
        let limits = ExecLimits { memory_bytes: 256 * 1024 * 1024, ..ExecLimits::default() };
        let output = run(limits.clone(), "block = bytearray(1024 * 1024 * 1024)\nprint('allocated')").await;
        assert_failed(&output);
        assert!(output.stderr.contains("MemoryError"), "{output:?}");
        assert_eq!(output.stdout, "");
        // The same allocation under the limit works, so the limit is what stopped it.
        let output = run(limits, "block = bytearray(64 * 1024 * 1024)\nprint('allocated')").await;
        assert_eq!((output.status, output.stdout.as_str()), (ExecStatus::Succeeded, "allocated\n"));
    }

    #[tokio::test]
    async fn huge_output_is_truncated_and_the_program_still_finishes() {
        let limits = ExecLimits { output_bytes_max: 1000, ..ExecLimits::default() };
        let code = "import sys\nsys.stdout.write('x' * 10_000_000)\nsys.stderr.write('e' * 5_000)\nprint('\\ndone', file=sys.stderr)";
        let output = run(limits, code).await;
        assert_eq!(output.status, ExecStatus::Succeeded);
        assert!(output.truncated);
        assert_eq!(output.stdout, "x".repeat(1000));
        assert_eq!(output.stderr, "e".repeat(1000));
        let small = run(ExecLimits { output_bytes_max: 1000, ..ExecLimits::default() }, "print('x' * 998)").await;
        assert_eq!((small.stdout.len(), small.truncated), (999, false));
    }

    #[test]
    fn truncation_never_splits_a_character() {
        // "가" is 3 bytes; 4 bytes of "가가" keep one whole character.
        let bytes = "가가".as_bytes()[..4].to_vec();
        assert_eq!(text_within(bytes, true, 4), ("가".to_owned(), true));
        // Invalid bytes become U+FFFD (3 bytes each); the text stays within the bound.
        let (text, truncated) = text_within(vec![0xFF; 4], false, 4);
        assert_eq!((text.as_str(), truncated), ("\u{FFFD}", true));
    }

    #[tokio::test]
    async fn the_environment_is_cleared() {
        // Safe in the 2021 edition; the name is unique to this test, so no other test reads it.
        std::env::set_var("CREDITGRAPH_SANDBOX_TEST_SECRET", "hunter2");
        assert!(std::env::var_os("HOME").is_some() || std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let output = run(ExecLimits::default(), "import os\nprint(sorted(os.environ))").await;
        assert_eq!(output.stdout, "['LANG', 'PATH']\n", "{output:?}");
    }

    #[tokio::test]
    async fn a_file_larger_than_the_limit_cannot_be_written() {
        let limits = ExecLimits { file_bytes: 1000, ..ExecLimits::default() };
        let write =
            |size: usize| format!("with open('out.bin', 'wb') as f:\n    f.write(b'x' * {size})\nprint('written')");
        let output = run(limits.clone(), &write(10_000)).await;
        assert_failed(&output);
        assert!(output.stderr.contains("File too large"), "{output:?}");
        let output = run(limits, &write(1000)).await;
        assert_eq!((output.status, output.stdout.as_str()), (ExecStatus::Succeeded, "written\n"));
    }

    #[tokio::test]
    async fn the_working_folder_is_fresh_empty_and_removed() {
        let code = "import os\nprint(os.getcwd())\nprint(os.listdir('.'))\nopen('scratch.txt', 'w').write('x')";
        let sandbox = sandbox(ExecLimits::default());
        let first = sandbox.execute(code).await.expect("runs");
        let second = sandbox.execute(code).await.expect("runs");
        assert_eq!(first.status, ExecStatus::Succeeded, "{first:?}");
        let lines: Vec<&str> = first.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{first:?}");
        assert_eq!(lines[1], "[]", "the folder starts empty");
        let folder = PathBuf::from(lines[0]);
        assert!(folder.file_name().is_some_and(|name| name.to_string_lossy().starts_with("creditgraph-exec-")));
        assert!(!folder.exists(), "{} was not removed", folder.display());
        assert_eq!(second.stdout.lines().nth(1), Some("[]"), "a file of an earlier run is not visible");
        assert_ne!(second.stdout.lines().next(), Some(lines[0]));
    }

    #[tokio::test]
    async fn oversized_code_is_refused_before_running() {
        let code = format!("# {}\nprint(1)", "x".repeat(CODE_BYTES_MAX));
        let error = sandbox(ExecLimits::default()).execute(&code).await.expect_err("too large");
        assert!(error.detail.contains("at most"), "{error}");
    }

    #[tokio::test]
    async fn the_network_is_unreachable_when_isolated() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        let sandbox = sandbox(ExecLimits::default());
        let code = format!(
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n    print('connected')\nexcept OSError as error:\n    print('refused', error)"
        );
        let output = sandbox.execute(&code).await.expect("runs");
        assert_eq!(output.status, ExecStatus::Succeeded, "{output:?}");
        if sandbox.network_isolated() {
            assert!(output.stdout.starts_with("refused"), "{output:?}");
        } else {
            // Without isolation the same probe reaches the listener: the check above is meaningful.
            assert_eq!(output.stdout, "connected\n", "{output:?}");
        }
    }

    #[test]
    fn isolation_is_detected_where_unshare_works() {
        let sandbox = sandbox(ExecLimits::default());
        let Some(unshare) = find_program("unshare") else {
            assert!(!sandbox.network_isolated());
            return;
        };
        let python = sandbox.python().to_owned();
        let works = std::process::Command::new(unshare)
            .args(["--net"])
            .arg(&python)
            .args(["-I", "-S", "-c", "pass"])
            .env_clear()
            .status()
            .is_ok_and(|status| status.success());
        if works {
            assert!(sandbox.network_isolated());
        }
    }
}
