//! The ledger's events (`GET /v1/events`, and the bodies of webhooks): what a change meant, as
//! the outbox recorded it in the change's transaction.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One event: `{id, type, timestamp, data}` as Standard Webhooks bodies carry it, with the
/// `cursor` to page from.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEventResponse {
    /// `evt_<n>`: unique, the same on every delivery.
    pub id: String,
    /// grant.created | grant.expired | grant.voided | allowance.granted | hold.created | hold.captured |
    /// hold.released | hold.expired | refund.created | balance.depleted
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the change took effect (for an expiry, the expiry time), RFC 3339.
    pub timestamp: String,
    pub account_id: String,
    /// The event's payload: which fields it has depends on `type` (see the README's catalogue).
    pub data: LedgerEventData,
    /// Pass as `after` to read the events after this one.
    pub cursor: String,
}

/// An event's payload. Every ledger event has `account_id`, `amount` and the account's
/// `balance`, `held` and `available` right after the change; the other fields appear for the
/// types that concern them. Amounts are decimal strings, times RFC 3339.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct LedgerEventData {
    pub account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    /// grant.created, allowance.granted, refund.created, grant.expired, grant.voided
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// hold.*, refund.created (when against a hold), run.*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// grant.created, allowance.granted
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// hold.captured: whether the capture was final, and what it released.
    #[serde(default, rename = "final", skip_serializing_if = "Option::is_none")]
    pub is_final: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<String>,
    /// balance.low
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    /// run.*, job.*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// run.*: succeeded | failed | canceled | interrupted
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// job.*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEventsResponse {
    pub events: Vec<LedgerEventResponse>,
    /// The cursor after the last event of this page (also when the page is empty: where to poll
    /// from next).
    pub next: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerEventsQuery {
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<u32>,
    /// A `cursor` or `next` of an earlier page; from the oldest event kept when absent.
    pub after: Option<String>,
}
