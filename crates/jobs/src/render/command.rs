//! A renderer that runs a local program: how a deployment plugs in a real video tool.
//!
//! The protocol is the smallest a script can speak: the job's input snapshot (JSON) arrives on
//! stdin, the artifact's bytes leave on stdout, and the exit status decides — 0 success, 75
//! (`EX_TEMPFAIL`) a transient failure worth another attempt, anything else a permanent one.
//! Optional lines on stderr report progress (`progress <stage> <percent>`) or name the error
//! code (`error_code <code>`, one of [`JobErrorCode`]); other stderr lines end up, cut, in the
//! failure's detail. No shell is involved, the child never sees the service's `CREDITGRAPH_*`
//! secrets, its output is bounded, and it runs in its own process group, which is killed at the
//! deadline, at a cancel (the render future is dropped) and when it ends.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{ProgressSink, RenderFailure, Rendered, Renderer};
use crate::code::JobErrorCode;

/// The exit status that asks for another attempt (`EX_TEMPFAIL` of sysexits.h).
pub const EXIT_TEMPFAIL: i32 = 75;
/// Longest stderr line looked at; the rest of a longer line is dropped.
const STDERR_LINE_BYTES_MAX: usize = 512;
/// Stderr kept for a failure's detail (the last lines).
const STDERR_TAIL_BYTES_MAX: usize = 1024;
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Where `kill` is looked for when `PATH` does not have it.
const SYSTEM_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// Runs `program args…` per job. Build it with [`CommandRenderer::parse`] or directly.
#[derive(Clone, Debug)]
pub struct CommandRenderer {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Wall-clock limit of one render; past it the process group is killed and the job fails
    /// with `render_resource_limit`.
    pub timeout_seconds: u64,
    /// The content type of what the program writes (e.g. `video/mp4`).
    pub content_type: String,
    /// Largest artifact accepted; a program writing more fails with `render_resource_limit`.
    pub artifact_bytes_max: usize,
}

impl CommandRenderer {
    /// A renderer from a command line split on whitespace (no shell, no quoting): the first word
    /// is the program, the rest its arguments.
    pub fn parse(
        command_line: &str,
        content_type: &str,
        timeout_seconds: u64,
        artifact_bytes_max: usize,
    ) -> Result<CommandRenderer, String> {
        let mut words = command_line.split_whitespace().map(str::to_owned);
        let program = words.next().ok_or_else(|| "the renderer command is empty".to_owned())?;
        let content_type = content_type.trim();
        let valid_type = !content_type.is_empty()
            && content_type.len() <= 255
            && content_type.bytes().all(|byte| (0x20..0x7f).contains(&byte))
            && content_type.contains('/');
        if !valid_type {
            return Err(format!("the renderer content type {content_type:?} is not a media type such as video/mp4"));
        }
        if timeout_seconds == 0 {
            return Err("the renderer timeout must be at least 1 second".to_owned());
        }
        Ok(CommandRenderer {
            program: PathBuf::from(program),
            args: words.collect(),
            timeout_seconds,
            content_type: content_type.to_owned(),
            artifact_bytes_max,
        })
    }
}

fn failure(transient: bool, code: JobErrorCode, stage: &str, detail: impl Into<String>) -> RenderFailure {
    RenderFailure { transient, code, stage: stage.to_owned(), detail: detail.into() }
}

fn find_kill() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|directory| directory.join("kill")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain(SYSTEM_DIRS.iter().map(|directory| Path::new(directory).join("kill"))).find(|path| {
        std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    })
}

/// Kills the child's whole process group when dropped: at the end of a render, at its deadline,
/// or when the render future is dropped (cancel, lease lost, shutdown).
struct GroupKill {
    process_group_id: Option<u32>,
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        let Some(process_group_id) = self.process_group_id else { return };
        let Some(kill) = find_kill() else { return };
        // `kill` returns at once; blocking this thread for it is cheaper than leaking processes.
        let _ = std::process::Command::new(kill)
            .args(["-KILL", "--", &format!("-{process_group_id}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Reads all of `pipe`, failing once it holds more than `bytes_max`.
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>, bytes_max: usize) -> Result<Vec<u8>, ReadStop> {
    let Some(mut pipe) = pipe else { return Ok(Vec::new()) };
    let mut bytes = Vec::new();
    let mut chunk = vec![0_u8; READ_CHUNK_BYTES];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) => return Ok(bytes),
            Ok(count) => {
                if bytes.len() + count > bytes_max {
                    return Err(ReadStop::TooLarge);
                }
                bytes.extend_from_slice(&chunk[..count]);
            }
            Err(error) => return Err(ReadStop::Io(error.to_string())),
        }
    }
}

/// Why reading the program's output stopped early.
enum ReadStop {
    TooLarge,
    Io(String),
}

/// What the program said on stderr, besides progress.
#[derive(Default)]
struct Stderr {
    tail: VecDeque<String>,
    tail_bytes: usize,
    code: Option<JobErrorCode>,
    stage: Option<String>,
}

impl Stderr {
    fn line(&mut self, line: &str, progress: &dyn ProgressSink) {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("progress"), Some(stage), Some(percent), None) if valid_stage(stage) => {
                if let Ok(percent) = percent.parse::<u8>() {
                    progress.progress(stage, percent.min(100));
                    self.stage = Some(stage.to_owned());
                    return;
                }
            }
            (Some("error_code"), Some(code), None, None) => {
                if let Some(code) = JobErrorCode::parse(code) {
                    self.code = Some(code);
                    return;
                }
            }
            _ => {}
        }
        if line.is_empty() {
            return;
        }
        self.tail_bytes += line.len();
        self.tail.push_back(line.to_owned());
        while self.tail_bytes > STDERR_TAIL_BYTES_MAX && self.tail.len() > 1 {
            if let Some(first) = self.tail.pop_front() {
                self.tail_bytes -= first.len();
            }
        }
    }

    fn detail(&self) -> String {
        let joined = self.tail.iter().map(String::as_str).collect::<Vec<_>>().join(" | ");
        joined.chars().take(STDERR_TAIL_BYTES_MAX).collect()
    }
}

fn valid_stage(stage: &str) -> bool {
    (1..=32).contains(&stage.len()) && stage.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// Reads stderr line by line (each line bounded), forwarding progress as it comes.
async fn read_stderr(pipe: Option<impl AsyncRead + Unpin>, progress: &dyn ProgressSink) -> Stderr {
    let mut stderr = Stderr::default();
    let Some(mut pipe) = pipe else { return stderr };
    let mut chunk = vec![0_u8; READ_CHUNK_BYTES];
    let mut line: Vec<u8> = Vec::new();
    let mut overlong = false;
    loop {
        let count = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        for &byte in &chunk[..count] {
            if byte == b'\n' {
                stderr.line(&String::from_utf8_lossy(&line), progress);
                line.clear();
                overlong = false;
            } else if line.len() < STDERR_LINE_BYTES_MAX {
                line.push(byte);
            } else if !overlong {
                overlong = true;
            }
        }
    }
    if !line.is_empty() {
        stderr.line(&String::from_utf8_lossy(&line), progress);
    }
    stderr
}

#[async_trait]
impl Renderer for CommandRenderer {
    async fn render(&self, job_id: &str, input: &str, progress: &dyn ProgressSink) -> Result<Rendered, RenderFailure> {
        progress.progress("render", 1);
        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CREDITGRAPH_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("CREDITGRAPH_JOB_ID", job_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                // A missing or forbidden program stays missing; anything else (no processes
                // left, …) may pass.
                let permanent =
                    matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied);
                let code = if permanent { JobErrorCode::RenderUnrecoverable } else { JobErrorCode::Unknown };
                failure(!permanent, code, "render", format!("cannot start {}: {error}", self.program.display()))
            })?;
        let _group = GroupKill { process_group_id: child.id() };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A program that exits without reading its input closes the pipe: its status decides.
                let _ = stdin.write_all(input.as_bytes()).await;
            }
        };
        let work = async {
            let ((), output, stderr) =
                tokio::join!(write, read_bounded(stdout, self.artifact_bytes_max), read_stderr(stderr, progress));
            let status = match &output {
                // The program is still writing: do not wait for it, the group kill ends it.
                Err(ReadStop::TooLarge) => None,
                _ => Some(child.wait().await),
            };
            (output, stderr, status)
        };
        let timeout = Duration::from_secs(self.timeout_seconds);
        let Ok((output, stderr, status)) = tokio::time::timeout(timeout, work).await else {
            return Err(failure(
                false,
                JobErrorCode::RenderResourceLimit,
                "render",
                format!("the renderer ran longer than {} seconds", self.timeout_seconds),
            ));
        };
        let stage = stderr.stage.clone().unwrap_or_else(|| "render".to_owned());
        let with_stderr = |text: String| {
            let tail = stderr.detail();
            if tail.is_empty() {
                text
            } else {
                format!("{text}: {tail}")
            }
        };
        let bytes = match output {
            Ok(bytes) => bytes,
            Err(ReadStop::TooLarge) => {
                return Err(failure(
                    false,
                    JobErrorCode::RenderResourceLimit,
                    &stage,
                    format!("the renderer wrote more than {} bytes", self.artifact_bytes_max),
                ))
            }
            Err(ReadStop::Io(error)) => {
                return Err(failure(
                    true,
                    JobErrorCode::Unknown,
                    &stage,
                    format!("cannot read the renderer's output: {error}"),
                ))
            }
        };
        let status = match status {
            Some(Ok(status)) => status,
            Some(Err(error)) => {
                return Err(failure(
                    true,
                    JobErrorCode::Unknown,
                    &stage,
                    format!("cannot wait for the renderer: {error}"),
                ))
            }
            None => return Err(failure(true, JobErrorCode::Unknown, &stage, "the renderer left no exit status")),
        };
        match status.code() {
            Some(0) if bytes.is_empty() => Err(failure(
                false,
                stderr.code.unwrap_or(JobErrorCode::RenderUnrecoverable),
                &stage,
                with_stderr("the renderer exited 0 but wrote no artifact".to_owned()),
            )),
            Some(0) => {
                progress.progress("compose", 100);
                Ok(Rendered { bytes, content_type: self.content_type.clone() })
            }
            Some(EXIT_TEMPFAIL) => Err(failure(
                true,
                stderr.code.unwrap_or(JobErrorCode::Unknown),
                &stage,
                with_stderr(format!("the renderer exited {EXIT_TEMPFAIL} (temporary failure)")),
            )),
            Some(code) => Err(failure(
                false,
                stderr.code.unwrap_or(JobErrorCode::RenderUnrecoverable),
                &stage,
                with_stderr(format!("the renderer exited {code}")),
            )),
            None => Err(failure(
                false,
                stderr.code.unwrap_or(JobErrorCode::RenderUnrecoverable),
                &stage,
                with_stderr(format!("the renderer was killed by signal {}", status.signal().unwrap_or_default())),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, u8)>>);

    impl ProgressSink for Recorded {
        fn progress(&self, stage: &str, percent: u8) {
            self.0.lock().expect("progress lock").push((stage.to_owned(), percent));
        }
    }

    fn shell(script: &str) -> CommandRenderer {
        CommandRenderer {
            program: PathBuf::from("sh"),
            args: vec!["-c".to_owned(), script.to_owned()],
            timeout_seconds: 5,
            content_type: "video/mp4".to_owned(),
            artifact_bytes_max: 1024,
        }
    }

    async fn render(renderer: &CommandRenderer) -> (Result<Rendered, RenderFailure>, Vec<(String, u8)>) {
        let progress = Recorded::default();
        let result = renderer.render("job-42", r#"{"problem":"1+1"}"#, &progress).await;
        let seen = progress.0.lock().expect("progress lock").clone();
        (result, seen)
    }

    #[tokio::test]
    async fn exit_zero_hands_in_stdout_with_progress_from_stderr() {
        let script = r#"input=$(cat); echo "progress scriptify 10" >&2; echo "progress render 60" >&2; printf 'VIDEO:%s:%s' "$CREDITGRAPH_JOB_ID" "$input""#;
        let (result, progress) = render(&shell(script)).await;
        let rendered = result.expect("renders");
        assert_eq!(rendered.content_type, "video/mp4");
        assert_eq!(String::from_utf8_lossy(&rendered.bytes), r#"VIDEO:job-42:{"problem":"1+1"}"#);
        assert!(progress.contains(&("scriptify".to_owned(), 10)), "{progress:?}");
        assert!(progress.contains(&("render".to_owned(), 60)), "{progress:?}");
    }

    #[tokio::test]
    async fn the_child_does_not_see_creditgraph_variables() {
        // Set in this test process only; other tests never read it.
        std::env::set_var("CREDITGRAPH_RENDER_TEST_SECRET", "s3cret");
        let (result, _) = render(&shell(r#"printf '[%s]' "${CREDITGRAPH_RENDER_TEST_SECRET:-}""#)).await;
        assert_eq!(result.expect("renders").bytes, b"[]");
    }

    #[tokio::test]
    async fn exit_75_is_a_transient_failure() {
        let (result, _) =
            render(&shell("cat >/dev/null; echo 'gpu busy' >&2; echo 'progress tts 30' >&2; exit 75")).await;
        let failure = result.expect_err("fails");
        assert!(failure.transient, "{failure:?}");
        assert_eq!(failure.code, JobErrorCode::Unknown);
        assert_eq!(failure.stage, "tts");
        assert!(failure.detail.contains("75") && failure.detail.contains("gpu busy"), "{failure:?}");
    }

    #[tokio::test]
    async fn another_exit_status_is_permanent_and_may_name_its_code() {
        let (result, _) = render(&shell("echo 'broken scene' >&2; exit 1")).await;
        let failure = result.expect_err("fails");
        assert_eq!((failure.transient, failure.code), (false, JobErrorCode::RenderUnrecoverable), "{failure:?}");
        assert!(failure.detail.contains("exited 1") && failure.detail.contains("broken scene"), "{failure:?}");

        let (result, _) = render(&shell("echo 'error_code tts_provider_down' >&2; exit 3")).await;
        let failure = result.expect_err("fails");
        assert_eq!((failure.transient, failure.code), (false, JobErrorCode::TtsProviderDown), "{failure:?}");

        let (result, _) = render(&shell("cat >/dev/null; exit 0")).await;
        assert_eq!(result.expect_err("no artifact").code, JobErrorCode::RenderUnrecoverable);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_and_is_a_resource_limit() {
        let marker = tempfile::tempdir().expect("temporary folder");
        let file = marker.path().join("survived");
        let mut renderer = shell(&format!("(sleep 2; touch {}) & sleep 30", file.display()));
        renderer.timeout_seconds = 1;
        let started = Instant::now();
        let (result, _) = render(&renderer).await;
        let failure = result.expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!((failure.transient, failure.code), (false, JobErrorCode::RenderResourceLimit), "{failure:?}");
        // A surviving grandchild touches the file at 2 s: real time is what this checks.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!file.exists(), "a grandchild outlived the render");
    }

    #[tokio::test]
    async fn a_dropped_render_kills_the_program() {
        let marker = tempfile::tempdir().expect("temporary folder");
        let file = marker.path().join("survived");
        let renderer = shell(&format!("sleep 2; touch {}", file.display()));
        let progress = Recorded::default();
        let dropped = tokio::time::timeout(Duration::from_millis(300), renderer.render("job-1", "{}", &progress)).await;
        assert!(dropped.is_err(), "the render should still be running");
        // A surviving program touches the file at 2 s: real time is what this checks.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!file.exists(), "the program outlived its canceled render");
    }

    #[tokio::test]
    async fn output_over_the_bound_is_a_resource_limit() {
        let (result, _) = render(&shell("head -c 100000 /dev/zero; sleep 30")).await;
        let failure = result.expect_err("too large");
        assert_eq!((failure.transient, failure.code), (false, JobErrorCode::RenderResourceLimit), "{failure:?}");
    }

    #[tokio::test]
    async fn a_missing_program_is_permanent() {
        let renderer = CommandRenderer::parse("/nonexistent/renderer --fast", "video/mp4", 5, 1024).expect("parses");
        assert_eq!(renderer.args, vec!["--fast"]);
        let (result, _) = render(&renderer).await;
        let failure = result.expect_err("cannot start");
        assert_eq!((failure.transient, failure.code), (false, JobErrorCode::RenderUnrecoverable), "{failure:?}");
    }

    #[test]
    fn parse_checks_the_command_and_the_content_type() {
        assert!(CommandRenderer::parse("  ", "video/mp4", 5, 1).is_err());
        assert!(CommandRenderer::parse("render", "mp4", 5, 1).is_err());
        assert!(CommandRenderer::parse("render", "video/mp4\n", 5, 1).is_ok());
        assert!(CommandRenderer::parse("render", "video/mp4", 0, 1).is_err());
    }
}
