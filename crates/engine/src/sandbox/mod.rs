//! The `code_execute` port: run model-written Python under limits.
//!
//! The executor is a trait so a remote sandbox can replace the local one ([`local::LocalPython`]).

pub mod local;

use async_trait::async_trait;

/// Bounds of one execution. Units last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    pub wall_seconds: u64,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub processes_max: u64,
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

/// The sandbox itself failed (no interpreter, cannot create the folder): the code never ran,
/// so the call is not charged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the sandbox could not run the code: {detail}")]
pub struct ExecError {
    pub detail: String,
}

#[async_trait]
pub trait CodeExecutor: Send + Sync + 'static {
    async fn execute(&self, code: &str) -> Result<ExecOutput, ExecError>;
}
