//! The LLM provider port and its OpenAI-compatible HTTP client.
//!
//! The engine speaks one protocol, OpenAI's `POST {base}/chat/completions`, so any compatible
//! server can play the provider — a hosted model, a local gateway, or the test double
//! `testing::FakeProvider` (feature `testing`). Every request's first message is a system
//! message that starts with the purpose tag (`[creditgraph:router]`, …), so logs and test
//! doubles can tell calls apart.

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

/// Token counts a provider reported for one call. `None` on a [`ChatResponse`]: the provider
/// reported none (unknown, never zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
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
    #[error("the provider's stream broke off: {detail}")]
    Interrupted { detail: String },
    #[error("the provider sent nothing for {seconds} s while streaming")]
    Idle { seconds: u64 },
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// The same call, streamed: every piece of the reply's text is sent on `deltas` as it
    /// arrives; the reply's `content` is their concatenation. The default (a provider that
    /// cannot stream) sends the whole text as one piece.
    async fn stream(
        &self,
        request: ChatRequest,
        deltas: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<ChatResponse, ProviderError> {
        let reply = self.complete(request).await?;
        if let Some(text) = reply.content.as_ref().filter(|text| !text.is_empty()) {
            let _ = deltas.send(text.clone());
        }
        Ok(reply)
    }
}
