//! The `code_execute` port: run model-written Python under limits.
//!
//! The executor is a trait so the server can choose: [`bwrap::Bubblewrap`], the default and a
//! security boundary (namespaces, an unprivileged uid, hard limits); [`local::LocalPython`], for
//! development only and no boundary; [`Unavailable`], what a server whose sandbox failed its
//! start-up probe gets, so that code never runs unisolated; or a remote sandbox. The shared
//! mechanics of running one child live in `child`.

pub mod bwrap;
mod child;
pub mod local;

pub use child::CODE_BYTES_MAX;

use async_trait::async_trait;

/// Bounds of one execution. Units last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    pub wall_seconds: u64,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub processes_max: u64,
    pub open_files_max: u64,
    pub output_bytes_max: usize,
}

impl Default for ExecLimits {
    fn default() -> ExecLimits {
        ExecLimits {
            wall_seconds: 10,
            cpu_seconds: 5,
            memory_bytes: 512 * 1024 * 1024,
            file_bytes: 1024 * 1024,
            processes_max: 32,
            open_files_max: 64,
            output_bytes_max: 16 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecStatus {
    /// Exit status 0.
    Succeeded,
    /// Non-zero exit, or killed by a signal (a CPU, memory or file-size limit, for example).
    Failed { exit_code: Option<i32>, signal: Option<i32> },
    /// Killed at the wall-clock limit.
    TimedOut,
}

/// What one execution produced. Output is truncated to `output_bytes_max` each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExecStatus,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

/// Why the code did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecErrorKind {
    /// No sandbox to run it in (the start-up probe failed, the sandbox tool is gone): the step
    /// fails with `sandbox_unavailable`; the code is never run another way.
    Unavailable,
    /// This call could not run (too large, the sandbox broke while starting it): the model gets
    /// a tool error and may try again.
    Failed,
}

/// The sandbox itself failed (no interpreter, cannot create the folder): the code never ran,
/// so the call is not charged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the sandbox could not run the code: {detail}")]
pub struct ExecError {
    pub kind: ExecErrorKind,
    pub detail: String,
}

impl ExecError {
    pub fn unavailable(detail: impl Into<String>) -> ExecError {
        ExecError { kind: ExecErrorKind::Unavailable, detail: detail.into() }
    }

    pub fn failed(detail: impl Into<String>) -> ExecError {
        ExecError { kind: ExecErrorKind::Failed, detail: detail.into() }
    }
}

#[async_trait]
pub trait CodeExecutor: Send + Sync + 'static {
    async fn execute(&self, code: &str) -> Result<ExecOutput, ExecError>;
}

/// The executor of a server whose sandbox is not there: every call fails closed with
/// [`ExecErrorKind::Unavailable`] and the reason found at start-up.
#[derive(Clone, Debug)]
pub struct Unavailable {
    pub reason: String,
}

#[async_trait]
impl CodeExecutor for Unavailable {
    async fn execute(&self, _code: &str) -> Result<ExecOutput, ExecError> {
        Err(ExecError::unavailable(self.reason.clone()))
    }
}
