//! The local `code_execute` sandbox (`--sandbox=none`): model-written Python in a plain child
//! process under OS limits. For development only — it is NOT a security boundary; the default is
//! [`super::bwrap::Bubblewrap`].
//!
//! The workspace forbids `unsafe`, so limits cannot be set between `fork` and `exec` from Rust.
//! Instead a small Python bootstrap (shared with bubblewrap, in `child`), run as
//! `python3 -I -S -c <bootstrap>`, lowers its own resource limits (CPU, address space, file size,
//! processes, open files, no core files) and only then reads the model's code from stdin and
//! executes it. Around it: a fresh empty working folder that is removed afterwards, a cleared
//! environment, a new network namespace when a probe at construction shows `unshare` works, a
//! wall-clock timeout that kills the whole process group, and output capped while it is read.
//!
//! What it does not protect against: the code runs as the service's user and can read every
//! file that user can read (the database, `/proc/<server pid>/environ`); a process that leaves
//! its process group (`setsid`) escapes the group kill; when the service runs as root (and the
//! user namespace is not available) the code may raise its own limits again. That is why the
//! server refuses `--sandbox=none` on a non-loopback listen address.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;

use super::child::{self, check_code_size, find_on_path, find_program, CHILD_LANG, CHILD_PATH};
use super::{CodeExecutor, ExecError, ExecLimits, ExecOutput};

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
        let found = find_on_path("python3").ok_or_else(|| ExecError::unavailable("no python3 on PATH"))?;
        let output = std::process::Command::new(&found)
            .args(["-I", "-S", "-c", "import resource, sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| ExecError::unavailable(format!("cannot run {}: {error}", found.display())))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(ExecError::unavailable(format!(
                "{} cannot import resource: {}",
                found.display(),
                stderr.trim()
            )));
        }
        let executable = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        let python = if executable.is_absolute() && executable.is_file() { executable } else { found };
        let sandbox = LocalPython::new(python, limits);
        if !sandbox.probe("print(2 + 2)") {
            return Err(ExecError::unavailable(format!(
                "{} cannot run code under the sandbox limits",
                sandbox.python.display()
            )));
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
        let mut words: Vec<OsString> = self.isolation_prefix.clone();
        words.extend(child::interpreter_words(&self.python, &self.limits));
        let program = words.remove(0);
        (program, words)
    }

    /// Runs `code` synchronously with this configuration; true if it exits 0 within the probe time.
    /// Used at construction only, where blocking is fine.
    fn probe(&self, code: &str) -> bool {
        let (program, arguments) = self.command_line();
        let Ok(folder) = tempfile::tempdir() else { return false };
        let mut command = std::process::Command::new(program);
        command.args(arguments).current_dir(folder.path()).env_clear().env("PATH", CHILD_PATH).env("LANG", CHILD_LANG);
        child::probe(command, code).is_ok()
    }
}

#[async_trait]
impl CodeExecutor for LocalPython {
    async fn execute(&self, code: &str) -> Result<ExecOutput, ExecError> {
        check_code_size(code)?;
        let folder = tempfile::Builder::new()
            .prefix("creditgraph-exec-")
            .tempdir()
            .map_err(|error| ExecError::failed(format!("cannot create the working folder: {error}")))?;
        let (program, arguments) = self.command_line();
        let mut command = tokio::process::Command::new(program);
        command.args(arguments).current_dir(folder.path()).env_clear().env("PATH", CHILD_PATH).env("LANG", CHILD_LANG);
        let what = self.python.display().to_string();
        let output = child::supervise(command, &what, code, &self.limits, self.kill_program.as_deref()).await;
        if let Err(error) = folder.close() {
            tracing::warn!(%error, "could not remove a code_execute working folder");
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sandbox::{ExecErrorKind, ExecStatus, CODE_BYTES_MAX};

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
        assert_eq!(error.kind, ExecErrorKind::Failed, "a tool error, not a missing sandbox");
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
