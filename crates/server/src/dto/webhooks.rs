//! Webhook endpoints (`/v1/webhook-endpoints`): where events are delivered, signed per the
//! Standard Webhooks specification.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/webhook-endpoints`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointRequest {
    /// `https://` (or `http://`) URL without credentials or fragment, at most 2,048 bytes. Its
    /// host must resolve to public addresses unless the server runs with
    /// `--webhooks-allow-private`.
    #[schema(example = "https://example.com/creditgraph-webhooks")]
    pub url: String,
    /// The event types to deliver (see `GET /v1/events`), at least one.
    #[schema(example = json!(["hold.expired", "balance.low"]))]
    pub events: Vec<String>,
    /// At most 500 bytes.
    pub description: Option<String>,
}

/// `POST /v1/webhook-endpoints/{endpoint_id}/replay`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookReplayRequest {
    /// Events written at or after this time (RFC 3339) are delivered again.
    #[schema(example = "2026-12-01T00:00:00Z")]
    pub since: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReplayResponse {
    /// How many deliveries were queued (at most 10,000).
    pub replayed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointResponse {
    pub endpoint_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: String,
    /// Set while deliveries are stopped.
    pub disabled_at: Option<String>,
    /// admin | failing (its deliveries failed for a day)
    pub disabled_reason: Option<String>,
    /// When the current run of failed deliveries began; `null` after a success.
    pub failing_since: Option<String>,
    /// The signing secret (`whsec_…`), shown only when it is created (creation, rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointsResponse {
    pub endpoints: Vec<WebhookEndpointResponse>,
}
