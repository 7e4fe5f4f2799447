//! The video renderer port: turns a job's input snapshot into an artifact.
//!
//! Rendering is the slow, failure-prone part of a job, so it sits behind a trait: the built-in
//! renderer makes a small real artifact (an SVG storyboard of the solution), and a deployment
//! plugs in a real video renderer as a command or an HTTP call.

pub mod builtin;
pub mod command;
pub mod http;

use async_trait::async_trait;

use crate::code::JobErrorCode;

/// What a render produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

/// A failed render. `transient` failures are retried (bounded); permanent ones end the job
/// failed and refunded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderFailure {
    pub transient: bool,
    pub code: JobErrorCode,
    pub stage: String,
    pub detail: String,
}

/// Where a renderer reports progress. Cheap and synchronous: the worker forwards the latest
/// value with its next heartbeat.
pub trait ProgressSink: Send + Sync {
    fn progress(&self, stage: &str, percent: u8);
}

#[async_trait]
pub trait Renderer: Send + Sync + 'static {
    /// Renders `input` (the job's input snapshot, JSON text). Cancellation drops the future.
    async fn render(&self, job_id: &str, input: &str, progress: &dyn ProgressSink) -> Result<Rendered, RenderFailure>;
}
