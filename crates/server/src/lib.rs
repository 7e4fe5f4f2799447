//! The HTTP API of creditgraph: an axum [`router`] over any [`store::LedgerStore`].
//!
//! Requests are parsed at the edge into ledger types (`wire`), run as one store call, and
//! rendered from the result; every failure is RFC 9457 problem+json with a stable `code`
//! (`error`). Only the types in `dto` derive serde. Nothing here names a concrete backend.

mod config;
mod console;
pub mod dto;
pub mod edge;
mod error;
mod extract;
#[cfg(test)]
mod fuzz_tests;
pub mod limits;
pub mod observe;
mod openapi;
mod rate_limit;
mod router;
mod routes;
mod state;
mod sweeper;
pub mod wire;

pub use config::{ApiConfig, RateLimits, RatePeriod, RateQuota, RateQuotaError, Role, RATE_LIMIT_ACCOUNTS_MAX_DEFAULT};
pub use error::{ApiError, PROBLEM_CONTENT_TYPE};
pub use openapi::ApiDoc;
pub use rate_limit::RATE_LIMITED_ROUTES;
pub use router::{route_table, router, router_with_engine, router_without_limits};
pub use routes::gateway::GatewayUpstream;
pub use sweeper::{spawn_sweeper, SWEEP_ACCOUNTS_MAX};

/// The body of a webhook delivering `event`: the event exactly as `GET /v1/events` lists it
/// (the dispatcher is handed this, so the two cannot differ).
pub fn webhook_body(event: &store::events::StoredEvent) -> Vec<u8> {
    // Serializing a DTO of strings and options cannot fail; an empty body would be refused by
    // the receiver's signature check rather than sent wrong.
    serde_json::to_vec(&routes::ledger_events::event_response(event)).unwrap_or_default()
}
