//! The error codes a job can end with: a closed set, shared by the state machine, the renderers
//! (which name the code of a failure) and the worker protocol.
//!
//! It sits below both the renderers and the state machine so neither depends on the other for
//! it (a renderer reports a code; the job service records it).

/// Every error code a job can end with. Closed set: the `job_finished` event and the API
/// accept exactly these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobErrorCode {
    QueueDelay,
    LlmTimeout,
    TtsProviderDown,
    RenderResourceLimit,
    RenderUnrecoverable,
    InfrastructureEnqueueFailed,
    InfrastructureTimeout,
    InvalidInput,
    InvalidRetrySource,
    RetryAlreadyUsed,
    Canceled,
    Unknown,
}

impl JobErrorCode {
    pub const ALL: [JobErrorCode; 12] = [
        JobErrorCode::QueueDelay,
        JobErrorCode::LlmTimeout,
        JobErrorCode::TtsProviderDown,
        JobErrorCode::RenderResourceLimit,
        JobErrorCode::RenderUnrecoverable,
        JobErrorCode::InfrastructureEnqueueFailed,
        JobErrorCode::InfrastructureTimeout,
        JobErrorCode::InvalidInput,
        JobErrorCode::InvalidRetrySource,
        JobErrorCode::RetryAlreadyUsed,
        JobErrorCode::Canceled,
        JobErrorCode::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobErrorCode::QueueDelay => "queue_delay",
            JobErrorCode::LlmTimeout => "llm_timeout",
            JobErrorCode::TtsProviderDown => "tts_provider_down",
            JobErrorCode::RenderResourceLimit => "render_resource_limit",
            JobErrorCode::RenderUnrecoverable => "render_unrecoverable",
            JobErrorCode::InfrastructureEnqueueFailed => "infrastructure_enqueue_failed",
            JobErrorCode::InfrastructureTimeout => "infrastructure_timeout",
            JobErrorCode::InvalidInput => "invalid_input",
            JobErrorCode::InvalidRetrySource => "invalid_retry_source",
            JobErrorCode::RetryAlreadyUsed => "retry_already_used",
            JobErrorCode::Canceled => "canceled",
            JobErrorCode::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<JobErrorCode> {
        JobErrorCode::ALL.into_iter().find(|code| code.as_str() == text)
    }
}
