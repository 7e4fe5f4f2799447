//! The wire shapes: every request and response body, and nothing else derives serde.
//!
//! Request bodies reject unknown fields, so a misspelt field is a 422 instead of a silently
//! ignored option. Amount fields arrive as raw JSON (`Box<RawValue>`) so their literal text is
//! parsed exactly by [`ledger::Amount::parse`]: a JSON number never passes through `f64`.
//! Responses carry amounts as canonical decimal strings and times as RFC 3339 UTC strings.
//!
//! Layout: the ledger's shapes here; [`runs`] (estimates, solves, runs and their documents),
//! [`events`] (the frames of a run's event stream), [`jobs`] (video jobs and the worker
//! protocol). Enums of the engine appear as wire enums ([`wire_enum!`]): their names are the
//! engine's, and a new engine variant does not compile until its wire twin exists.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// A wire enum that mirrors a closed enum of the engine (or the job system): serialized as its
/// snake_case names (the engine's `as_str`, which a test checks per enum), with the conversion
/// in the direction the wire needs (`out`: from the engine's, for responses; `in`: into the
/// engine's, for requests; `both`). The conversion's match is exhaustive, so a new variant on either
/// side is a compile error until the other has it too.
macro_rules! wire_enum {
    (out $(#[$meta:meta])* $name:ident from $source:ty { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl From<$source> for $name {
            fn from(value: $source) -> $name {
                match value {
                    $(<$source>::$variant => $name::$variant),+
                }
            }
        }
    };
    (both $(#[$meta:meta])* $name:ident with $source:ty { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl From<$source> for $name {
            fn from(value: $source) -> $name {
                match value {
                    $(<$source>::$variant => $name::$variant),+
                }
            }
        }

        impl From<$name> for $source {
            fn from(value: $name) -> $source {
                match value {
                    $($name::$variant => <$source>::$variant),+
                }
            }
        }
    };
    (in $(#[$meta:meta])* $name:ident into $target:ty { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl From<$name> for $target {
            fn from(value: $name) -> $target {
                match value {
                    $($name::$variant => <$target>::$variant),+
                }
            }
        }
    };
}

pub mod allowances;
pub mod events;
pub mod gateway;
pub mod jobs;
pub mod ledger_events;
pub mod operator;
pub mod runs;
pub mod webhooks;

pub use self::allowances::*;
pub use self::events::*;
pub use self::gateway::*;
pub use self::jobs::*;
pub use self::ledger_events::*;
pub use self::runs::*;
pub use self::webhooks::*;

/// `POST /v1/accounts/{account_id}/grants`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Credits to add: a decimal string such as "17" or "0.5" (at most 6 fractional digits).
    #[schema(value_type = String, example = "17")]
    pub amount: Box<RawValue>,
    /// When the unspent, unheld remainder leaves the balance (RFC 3339); never when absent.
    pub expires_at: Option<String>,
    /// Spend order: lower is spent first. Default 100.
    pub priority: Option<i32>,
    /// Unique per account: repeating it returns the first grant (200) instead of adding credits.
    pub reference: Option<String>,
    /// A small JSON object kept with the grant.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// `POST /v1/holds`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    pub account_id: String,
    /// Credits to reserve, all or nothing.
    #[schema(value_type = String, example = "15")]
    pub amount: Box<RawValue>,
    /// Seconds until the hold expires (default from configuration, 1..=configured maximum).
    pub ttl_seconds: Option<u64>,
    pub reference: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// What a capture does with an amount above the hold's remaining part.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverageDto {
    /// Refuse with 409 amount_exceeds_hold (default).
    Reject,
    /// Charge the excess from available credits, or refuse with 402 insufficient_credits.
    IfAvailable,
}

/// `POST /v1/holds/{hold_id}/capture`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Credits to charge; "0" is allowed only with `final`.
    #[schema(value_type = String, example = "10")]
    pub amount: Box<RawValue>,
    /// Final (default): the rest returns to available and the hold becomes `captured`.
    #[serde(rename = "final")]
    pub is_final: Option<bool>,
    pub overage: Option<OverageDto>,
}

/// `POST /v1/holds/{hold_id}/extend`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// New time to live, counted from now.
    pub ttl_seconds: u64,
}

/// `POST /v1/holds/{hold_id}/release` (the body is optional and has no fields).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {}

/// `POST /v1/accounts/{account_id}/debits`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DebitRequest {
    #[schema(value_type = String, example = "3")]
    pub amount: Box<RawValue>,
    pub reference: Option<String>,
}

/// `POST /v1/accounts/{account_id}/refunds`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    #[schema(value_type = String, example = "2")]
    pub amount: Box<RawValue>,
    /// Unique per account: a refund applies at most once.
    pub reference: String,
    /// Refund against this hold's captures (never more than it captured).
    pub hold_id: Option<String>,
}

/// Query of `GET /v1/accounts/{account_id}/entries`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// Page size (default and maximum from configuration).
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Only entries of this kind (grant | refund | hold | capture | release | expire | extend |
    /// debit | grant_expired | void).
    pub kind: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only entries before this time (RFC 3339).
    pub to: Option<String>,
    /// Only entries with this reference.
    pub reference: Option<String>,
}

/// Which holds `GET /v1/accounts/{account_id}/holds` lists: as they read now (a pending hold
/// past its expiry reads as expired).
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HoldStateQuery {
    #[default]
    Pending,
    Captured,
    Released,
    Expired,
}

/// Query of `GET /v1/accounts/{account_id}/holds`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HoldsQuery {
    /// pending (default) | captured | released | expired
    #[param(inline)]
    pub state: Option<HoldStateQuery>,
    /// Page size: 1 to 1000, 100 when absent.
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// One page of an account's holds, in hold-id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldsResponse {
    pub holds: Vec<HoldResponse>,
    /// Pass as `after` for the next page; null at the end.
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldResponse {
    pub hold_id: String,
    pub account_id: String,
    #[schema(example = "15")]
    pub amount: String,
    /// Everything charged through the hold, overage included.
    pub captured: String,
    /// Still reserved (0 once the hold is no longer pending).
    pub remaining: String,
    /// pending | captured | released | expired
    pub state: String,
    pub expires_at: String,
    pub created_at: String,
    pub reference: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GrantResponse {
    pub grant_id: String,
    /// grant | refund | allowance (one period of an allowance)
    pub kind: String,
    pub amount: String,
    /// Credits of this grant still in the balance: free plus what active holds reserved from it.
    /// In the answer to a grant or refund POST it is the free part alone (the ledger's outcome
    /// does not carry reservations, and a replay must render exactly like the first answer).
    pub remaining: String,
    pub priority: i32,
    pub expires_at: Option<String>,
    pub reference: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: String,
    /// When an operator voided the grant (absent unless voided).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voided_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountResponse {
    pub account_id: String,
    pub balance: String,
    pub held: String,
    pub available: String,
    /// Below this many available credits a `balance.low` event is written (once per crossing).
    pub low_balance_threshold: Option<String>,
    /// Grants with credits left, in spend order.
    pub grants: Vec<GrantResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntryResponse {
    pub seq: u64,
    /// grant | refund | hold | capture | release | expire | extend | debit | grant_expired | void
    pub kind: String,
    pub amount: String,
    pub hold_id: Option<String>,
    pub grant_id: Option<String>,
    pub reference: Option<String>,
    pub balance_after: String,
    pub held_after: String,
    pub at: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntriesResponse {
    pub entries: Vec<EntryResponse>,
    /// Pass as `after` for the next page; null at the end.
    pub next: Option<String>,
}

/// `POST /v1/accounts/{account_id}/low-balance-threshold`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LowBalanceThresholdRequest {
    /// A decimal string; `null` clears it.
    #[schema(value_type = Option<String>, example = "5")]
    pub threshold: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LowBalanceThresholdResponse {
    pub account_id: String,
    pub low_balance_threshold: Option<String>,
    pub balance: String,
    pub held: String,
    pub available: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DebitResponse {
    pub account_id: String,
    pub amount: String,
    pub reference: Option<String>,
    pub balance: String,
    pub held: String,
    pub available: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    pub status: String,
}

/// `POST /v1/test-clock/advance`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceTestClockRequest {
    /// How far to move the server's clock forward (at most 366 days per call).
    pub seconds: u64,
}

/// The server's test clock.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestClockResponse {
    /// The server's time now (RFC 3339, UTC).
    pub now: String,
    /// How far ahead of the wall clock it is.
    pub offset_seconds: i64,
}

/// RFC 9457 problem details with a stable `code`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. insufficient_credits.
    pub code: String,
    /// The request's id (the `x-request-id` header of the response), to find its log line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Extension members such as `required`/`available` (402) or `state` (409 hold_not_pending).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: Map<String, Value>,
}
