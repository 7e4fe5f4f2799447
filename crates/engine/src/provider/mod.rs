//! The LLM provider port and its OpenAI-compatible HTTP client.
//!
//! The engine speaks one protocol, OpenAI's `POST {base}/chat/completions`, so any compatible
//! server can play the provider — a hosted model, a local gateway, or the test double
//! `testing::FakeProvider` (feature `testing`). Every request's first message is a system
//! message that starts with the purpose tag (`[creditgraph:router]`, …), so logs and test
//! doubles can tell calls apart.
//!
//! A call either completes (one answer, [`Provider::complete`]) or streams ([`Provider::stream`]:
//! the text reaches the caller piece by piece as the model writes it, for the steps whose text
//! a user reads). Both report the provider's token [`Usage`] when it sends one.

pub mod observed;
pub mod openai;

use async_trait::async_trait;
use pricing::Tier;
use serde_json::Value;

/// Why the engine calls the provider. Each purpose is one priced action of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    Router,
    Planner,
    Solver,
    CodeGenerate,
    Explain,
    LimitSummary,
    GeneralChat,
}

impl Purpose {
    pub const ALL: [Purpose; 7] = [
        Purpose::Router,
        Purpose::Planner,
        Purpose::Solver,
        Purpose::CodeGenerate,
        Purpose::Explain,
        Purpose::LimitSummary,
        Purpose::GeneralChat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Router => "router",
            Purpose::Planner => "planner",
            Purpose::Solver => "solver",
            Purpose::CodeGenerate => "code_generate",
            Purpose::Explain => "explain",
            Purpose::LimitSummary => "limit_summary",
            Purpose::GeneralChat => "general_chat",
        }
    }

    /// The tag that opens the system message of every request with this purpose.
    pub fn tag(self) -> String {
        format!("[creditgraph:{}]", self.as_str())
    }

    pub fn parse(text: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|purpose| purpose.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool call the model asked for. `arguments` is the raw JSON text the model produced; the
/// engine parses it and answers a malformed one with a tool error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: Option<String>,
    /// Assistant messages only.
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages only: the call this answers.
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Message {
        Message { role: Role::System, content: Some(content.into()), tool_calls: Vec::new(), tool_call_id: None }
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message { role: Role::User, content: Some(content.into()), tool_calls: Vec::new(), tool_call_id: None }
    }

    pub fn assistant(content: Option<String>, tool_calls: Vec<ToolCall>) -> Message {
        Message { role: Role::Assistant, content, tool_calls, tool_call_id: None }
    }

    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: Role::Tool,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: Some(tool_call_id.into()),
        }
    }
}

/// A function tool offered to the model: name, description, JSON schema of its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// `response_format: {type: "json_schema", json_schema: {name, schema, strict: true}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub schema: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub purpose: Purpose,
    pub tier: Tier,
    /// The first message is a system message starting with `purpose.tag()`.
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub response_format: Option<JsonSchemaFormat>,
}

/// Token counts a provider reported for one call. `None` on a `ChatResponse` = the provider reported none: unknown, never zero.
///
/// Read from `usage.prompt_tokens` and `usage.completion_tokens`; a `usage` object missing either
/// (or holding something other than a whole number) counts as none, because a guessed count
/// would be priced as if it were known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// What the provider said the call used; `None` when it said nothing (unknown, not zero).
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider did not answer within {seconds} s")]
    Timeout { seconds: u64 },
    #[error("the provider answered HTTP {status}")]
    Status { status: u16 },
    #[error("the provider's answer is malformed: {detail}")]
    Malformed { detail: String },
    #[error("the provider cannot be reached: {detail}")]
    Unreachable { detail: String },
    /// The stream broke off after it had started (connection lost, a malformed chunk, no `[DONE]`/finish): the call failed; nothing of it counts as an answer.
    #[error("the provider's stream broke off: {detail}")]
    Interrupted { detail: String },
    /// No chunk arrived for `seconds` while streaming.
    #[error("the provider sent nothing for {seconds} s while streaming")]
    Idle { seconds: u64 },
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// The same call, streamed: every piece of the reply's text is sent on `deltas` as soon as it arrives, in order; the returned response's `content` is exactly their concatenation (None when there was no text), tool calls are assembled from their deltas, `usage` is the final chunk's (None when none was sent). A send error on `deltas` (receiver gone) is ignored. Dropping the future drops the HTTP request at once.
    ///
    /// Deltas are never empty. On an error, the deltas already sent are not an answer: the caller
    /// discards them (they reached the user, but nothing of the call is charged as a success).
    ///
    /// The default is for providers that cannot stream: [`Provider::complete`], then its whole
    /// content as one delta (none when the content is absent or empty).
    async fn stream(
        &self,
        request: ChatRequest,
        deltas: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<ChatResponse, ProviderError> {
        let response = self.complete(request).await?;
        if let Some(content) = response.content.as_ref().filter(|content| !content.is_empty()) {
            // The receiver may be gone (the run stopped listening); the answer is still the answer.
            let _ = deltas.send(content.clone());
        }
        Ok(response)
    }
}
