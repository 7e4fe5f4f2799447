//! One supervised child process, shared by every executor: the code goes in on stdin, the output
//! comes back capped while it is read, and the wall clock kills the child's whole process group.
//!
//! The executors differ only in the command they start ([`super::local::LocalPython`]: the
//! interpreter itself; [`super::bwrap::Bubblewrap`]: the interpreter behind `prlimit`, `setpriv`
//! and `bwrap`). What happens around that command — the code size cap, the rlimit bootstrap, the
//! capture, the timeout, the kill, the drain — is written once, here.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::{ExecError, ExecLimits, ExecOutput, ExecStatus};

/// The largest program accepted, in bytes. Model-written solutions are far smaller; a larger one
/// is refused before anything runs.
pub const CODE_BYTES_MAX: usize = 256 * 1024;
/// How long readers may still drain the pipes after the process group is killed. Only a process
/// that escaped the group can hold a pipe open that long; its output is then cut off.
const DRAIN_GRACE_SECONDS: u64 = 2;
/// How long a construction-time probe (isolation, interpreter) may take before it counts as failed.
pub(crate) const PROBE_SECONDS: u64 = 10;
/// The most stderr a failed probe quotes in its error.
const PROBE_STDERR_BYTES_MAX: usize = 2048;
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// The only environment the code sees.
pub(crate) const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
pub(crate) const CHILD_LANG: &str = "C.UTF-8";
/// Where system tools are looked up when `PATH` does not have them.
const SYSTEM_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// Lowers the limits, then runs the code read from stdin as `__main__`. The limits come as
/// arguments: cpu seconds, memory bytes, file bytes, processes, open files. A hard limit already
/// lower than the request is kept (asking to raise it would fail). `-S` keeps `site` (and the
/// `.pth` files it executes) from running before the limits; `site.main()` then adds the
/// interpreter's site-packages, so installed libraries such as sympy stay importable (user site
/// stays off: `-I`). Under [`super::bwrap::Bubblewrap`] the same limits are already hard limits
/// set by `prlimit`; the bootstrap is then belt and braces.
const BOOTSTRAP: &str = r#"
import resource, sys
def _limit(which, value, hard):
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(which, (min(value, hard), hard))
_cpu, _memory, _file, _processes, _files = (int(_arg) for _arg in sys.argv[1:6])
_limit(resource.RLIMIT_CORE, 0, 0)
_limit(resource.RLIMIT_CPU, _cpu, _cpu + 1)
_limit(resource.RLIMIT_AS, _memory, _memory)
_limit(resource.RLIMIT_FSIZE, _file, _file)
_limit(resource.RLIMIT_NPROC, _processes, _processes)
_limit(resource.RLIMIT_NOFILE, _files, _files)
_code = sys.stdin.buffer.read()
sys.argv = ["<solution>"]
del resource, _limit, _cpu, _memory, _file, _processes, _files
import site
site.main()
del site
exec(compile(_code, "<solution>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"#;

/// `python` followed by the arguments that run the bootstrap under `limits`:
/// `python -I -S -c BOOTSTRAP cpu memory file processes files`.
pub(crate) fn interpreter_words(python: &Path, limits: &ExecLimits) -> Vec<OsString> {
    let mut words = vec![python.as_os_str().to_owned()];
    words.extend(["-I", "-S", "-c", BOOTSTRAP].map(OsString::from));
    let numbers =
        [limits.cpu_seconds, limits.memory_bytes, limits.file_bytes, limits.processes_max, limits.open_files_max];
    words.extend(numbers.map(|number| OsString::from(number.to_string())));
    words
}

/// Refuses a program over [`CODE_BYTES_MAX`] before anything starts.
pub(crate) fn check_code_size(code: &str) -> Result<(), ExecError> {
    if code.len() > CODE_BYTES_MAX {
        return Err(ExecError::failed(format!("the code has {} bytes; at most {CODE_BYTES_MAX}", code.len())));
    }
    Ok(())
}

/// Runs `command` (its program, arguments, environment and folder set by the caller) with `code`
/// on stdin, under the wall clock and output cap of `limits`. The child leads a new process
/// group; the whole group is killed when the run ends, however it ends (also when this future is
/// dropped). `what` names the program in errors.
pub(crate) async fn supervise(
    mut command: tokio::process::Command,
    what: &str,
    code: &str,
    limits: &ExecLimits,
    kill_program: Option<&Path>,
) -> Result<ExecOutput, ExecError> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            let detail = format!("cannot start {what}: {error}");
            match error.kind() {
                // The program is gone or may not be run: no sandbox until an operator acts.
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => ExecError::unavailable(detail),
                // Out of processes, memory or descriptors for now: this call fails, a later one may not.
                _ => ExecError::failed(detail),
            }
        })?;
    let process_group_id = child.id();
    // If this future is dropped (the run was canceled), `kill_on_drop` kills the leader and
    // the guard kills the rest of the group.
    let mut guard = GroupGuard { process_group_id, kill_program: kill_program.map(Path::to_path_buf) };

    let stdin = child.stdin.take();
    let code_bytes = code.as_bytes().to_vec();
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // A program that exits before reading its code closes the pipe; that is its result.
            let _ = stdin.write_all(&code_bytes).await;
        }
    });
    let stdout = Capture::start(child.stdout.take(), limits.output_bytes_max);
    let stderr = Capture::start(child.stderr.take(), limits.output_bytes_max);

    let wall = Duration::from_secs(limits.wall_seconds);
    let waited = tokio::time::timeout(wall, child.wait()).await;
    // Always: nothing the code started outlives its run (this also closes their pipe ends).
    if let Some(process_group_id) = process_group_id {
        kill_group(kill_program, process_group_id).await;
    }
    guard.process_group_id = None;
    let status = match waited {
        Ok(Ok(status)) if status.success() => ExecStatus::Succeeded,
        Ok(Ok(status)) => ExecStatus::Failed { exit_code: status.code(), signal: status.signal() },
        Ok(Err(error)) => {
            let _ = child.kill().await;
            return Err(ExecError::failed(format!("cannot wait for {what}: {error}")));
        }
        Err(_elapsed) => {
            // Reap the leader (`kill` may be missing, so kill it directly too).
            let _ = child.kill().await;
            ExecStatus::TimedOut
        }
    };
    writer.abort();
    let (stdout, stdout_truncated) = stdout.finish(limits.output_bytes_max).await;
    let (stderr, stderr_truncated) = stderr.finish(limits.output_bytes_max).await;
    Ok(ExecOutput { status, stdout, stderr, truncated: stdout_truncated || stderr_truncated })
}

/// Runs `command` synchronously with `code` on stdin; `Ok(stdout)` if it exits 0 within
/// [`PROBE_SECONDS`], else why not (with the start of its stderr). For construction-time probes
/// only, where blocking is fine.
pub(crate) fn probe(mut command: std::process::Command, code: &str) -> Result<String, String> {
    let folder = tempfile::tempdir().map_err(|error| format!("cannot create a temporary folder: {error}"))?;
    // Output goes to files: reading pipes while polling for the exit would need threads.
    let stdout_path = folder.path().join("stdout");
    let stderr_path = folder.path().join("stderr");
    let open = |path: &Path| std::fs::File::create(path).map_err(|error| format!("cannot create {path:?}: {error}"));
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(open(&stdout_path)?)
        .stderr(open(&stderr_path)?)
        .spawn()
        .map_err(|error| format!("cannot start: {error}"))?;
    let written = child.stdin.take().is_some_and(|mut stdin| stdin.write_all(code.as_bytes()).is_ok());
    let deadline = Instant::now() + Duration::from_secs(PROBE_SECONDS);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {PROBE_SECONDS} s"));
            }
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("cannot wait: {error}"));
            }
        }
    };
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap_or_default();
        text_within(bytes, false, PROBE_STDERR_BYTES_MAX).0
    };
    if !written {
        return Err("it did not read its input".to_owned());
    }
    if !status.success() {
        return Err(format!("{status}: {}", read(&stderr_path).trim()));
    }
    Ok(read(&stdout_path))
}

/// Kills every process of the group. Errors are ignored: the group may be gone already, which is
/// the goal.
async fn kill_group(kill_program: Option<&Path>, process_group_id: u32) {
    let Some(kill) = kill_program else { return };
    let _ = tokio::process::Command::new(kill)
        .args(["-KILL", "--", &format!("-{process_group_id}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
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
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|directory| directory.join(name)).find(|candidate| is_executable(candidate))
}

/// A system tool: on `PATH`, or in the usual system directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    find_on_path(name).or_else(|| {
        SYSTEM_DIRS.iter().map(|directory| Path::new(directory).join(name)).find(|candidate| is_executable(candidate))
    })
}

pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_never_splits_a_character() {
        // "가" is 3 bytes; 4 bytes of "가가" keep one whole character.
        let bytes = "가가".as_bytes()[..4].to_vec();
        assert_eq!(text_within(bytes, true, 4), ("가".to_owned(), true));
        // Invalid bytes become U+FFFD (3 bytes each); the text stays within the bound.
        let (text, truncated) = text_within(vec![0xFF; 4], false, 4);
        assert_eq!((text.as_str(), truncated), ("\u{FFFD}", true));
    }

    #[test]
    fn oversized_code_is_refused() {
        assert!(check_code_size(&"x".repeat(CODE_BYTES_MAX)).is_ok());
        let error = check_code_size(&"x".repeat(CODE_BYTES_MAX + 1)).expect_err("too large");
        assert_eq!(error.kind, super::super::ExecErrorKind::Failed);
        assert!(error.detail.contains("at most"), "{error}");
    }
}
