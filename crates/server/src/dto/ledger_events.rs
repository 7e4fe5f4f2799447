//! The ledger's events (`GET /v1/events`, and the bodies of webhooks): what a change meant, as
//! the outbox recorded it in the change's transaction.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// One event: `{id, type, timestamp, data}` as Standard Webhooks bodies carry it, with the
/// `cursor` to page from.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEventResponse {
    /// `evt_<n>`: unique, the same on every delivery.
    pub id: String,
    /// grant.created | grant.expired | allowance.granted | hold.created | hold.captured |
    /// hold.released | hold.expired | refund.created | balance.depleted
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the change took effect (for an expiry, the expiry time), RFC 3339.
    pub timestamp: String,
    pub account_id: String,
    /// The event's payload: amounts as decimal strings, the account's balance, held and
    /// available right after the change, and the ids the change concerns.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Pass as `after` to read the events after this one.
    pub cursor: String,
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
