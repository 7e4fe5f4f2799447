//! The LLM gateway's keys (`/v1/accounts/{id}/keys`) and its OpenAI-shaped errors.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/accounts/{account_id}/keys`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRequest {
    /// At most 200 bytes, for telling keys apart.
    pub name: Option<String>,
    /// The most the key may spend per UTC day (decimal credits); none: the account's credits.
    pub daily_limit: Option<String>,
    /// The gateway models the key may call (at most 32, each in the catalog); none: all.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyResponse {
    pub key_id: String,
    pub account_id: String,
    pub name: Option<String>,
    /// The key's first characters, for telling keys apart.
    pub prefix: String,
    pub daily_limit: Option<String>,
    pub models: Vec<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The key itself (`cg_…`), shown only in the answer that creates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeysResponse {
    pub keys: Vec<ApiKeyResponse>,
}

/// An error of the OpenAI-compatible routes, in OpenAI's shape (the SDKs read it).
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorResponse {
    pub error: OpenAiError,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    pub message: String,
    /// invalid_request_error | authentication_error | permission_error | insufficient_quota |
    /// upstream_error | service_unavailable
    #[serde(rename = "type")]
    pub error_type: String,
    pub param: Option<String>,
    /// A stable code: insufficient_credits, invalid_api_key, model_not_found, model_not_allowed,
    /// max_tokens_too_large, unsupported_parameter, invalid_json, upstream_unreachable,
    /// upstream_invalid_answer, gateway_disabled.
    pub code: String,
    /// With `insufficient_credits`: the call's worst case and what the account has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    /// With `insufficient_credits` on a run's hold (`X-Creditgraph-Hold`): what it has left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
}

/// Query of `GET /v1/accounts/{account_id}/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// From this time (RFC 3339, inclusive); default 30 days before `to`.
    pub from: Option<String>,
    /// To this time (RFC 3339, exclusive); default now (inclusive).
    pub to: Option<String>,
    /// `model` or `day`; by both when absent.
    pub group_by: Option<String>,
}

/// The gateway calls of an account, summed.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    pub from: String,
    pub to: String,
    pub rows: Vec<UsageRowResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRowResponse {
    /// The UTC day (`YYYY-MM-DD`), unless grouped by model only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// Unless grouped by day only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Credits charged (decimal).
    pub cost: String,
}

/// `POST /v1/chat/completions`: OpenAI's Chat Completions request. The fields the gateway reads
/// are typed here; every other field OpenAI defines is forwarded to the upstream unchanged.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    #[schema(example = "gpt-4o-mini")]
    pub model: String,
    /// 1 to 4,096 messages; every string in them counts toward the input bound.
    pub messages: Vec<ChatMessage>,
    /// The output cap held for and forced upstream (or `max_completion_tokens`); the catalog's
    /// default when neither is given.
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// Streamed as server-sent events, settled from the usage chunk.
    pub stream: Option<bool>,
    /// Only 1.
    pub n: Option<u64>,
}

/// One message of a chat request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// system | user | assistant | tool | developer
    pub role: String,
    /// Text, or content parts (text, image_url, …).
    pub content: Option<ChatContent>,
    pub name: Option<String>,
}

/// A message's content: text, or a list of parts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<ChatContentPart>),
}

/// One content part (`{"type": "text", "text": …}`, `{"type": "image_url", "image_url": {"url": …}}`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatContentPart {
    #[serde(rename = "type")]
    pub part_type: String,
    pub text: Option<String>,
}

/// The upstream's completion as it answered (the fields every OpenAI-compatible upstream sends).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// `chat.completion`
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Option<ChatUsage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatAnswer,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatAnswer {
    pub role: String,
    pub content: Option<String>,
}

/// The tokens the call used: what it is charged for.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// `GET /v1/models`, in OpenAI's list shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsResponse {
    /// `list`
    pub object: String,
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    /// `model`
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}
