//! What the HTTP API is told by its host: tokens and the limits it enforces at the edge.
//!
//! The CLI builds an [`ApiConfig`] from flags and environment; tests build one directly. Every
//! limit carries its unit last, so a reader never has to guess what a number means.

use std::fmt;

/// What a bearer token may do. `Admin` may do everything; `Service` may do everything except
/// add credits (grants, refunds), so a leaked service token cannot mint money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }

    /// Whether a caller with this role may use a route that requires `required`.
    pub fn allows(self, required: Role) -> bool {
        self == Role::Admin || required == Role::Service
    }
}

/// Configuration of the HTTP API.
#[derive(Clone)]
pub struct ApiConfig {
    /// Bearer tokens and their roles. Empty turns authentication off: the host decides whether
    /// that is allowed (the CLI allows it only on a loopback address).
    pub tokens: Vec<(String, Role)>,
    /// A hold's time to live when the request names none.
    pub hold_ttl_seconds_default: u64,
    /// The longest time to live a hold may ask for (also for extend).
    pub hold_ttl_seconds_max: u64,
    /// Spend priority of the grant a refund creates.
    pub refund_grant_priority: i32,
    /// Lifetime of the grant a refund creates; `None` means it never expires.
    pub refund_grant_ttl_seconds: Option<u64>,
    /// Largest request body accepted; larger bodies get `413 payload_too_large`.
    pub request_body_bytes_max: usize,
    /// Largest `metadata` object, measured as compact JSON.
    pub metadata_bytes_max: usize,
    /// Largest page of journal entries.
    pub entries_limit_max: u32,
    /// Page size of journal entries when the request names none.
    pub entries_limit_default: u32,
    /// The bearer token of `creditgraph worker` processes on `/v1/worker/…`. `None` turns the
    /// worker API off (503 `worker_api_disabled`); in-process workers need no token.
    pub worker_token: Option<String>,
    /// From a request's headers to the last byte of its body; later bodies get `408`.
    pub request_body_timeout_seconds: u64,
    /// From a request reaching its handler to its response's headers; later answers are
    /// `504 handler_timeout`. Routes that stream (SSE, artifact uploads) are exempt.
    pub handler_timeout_seconds: u64,
    /// Requests inside handlers at once on this instance; past it, `503 overloaded` with
    /// `Retry-After`.
    pub requests_in_flight_max: usize,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            tokens: Vec::new(),
            hold_ttl_seconds_default: 1200,
            hold_ttl_seconds_max: 86_400,
            refund_grant_priority: 100,
            refund_grant_ttl_seconds: None,
            request_body_bytes_max: 64 * 1024,
            metadata_bytes_max: 4096,
            entries_limit_max: 1000,
            entries_limit_default: 100,
            worker_token: None,
            request_body_timeout_seconds: 30,
            handler_timeout_seconds: 30,
            requests_in_flight_max: 1024,
        }
    }
}

/// Tokens are secrets: `Debug` shows only how many there are and their roles, and whether a
/// worker token is set.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<&str> = self.tokens.iter().map(|(_, role)| role.as_str()).collect();
        f.debug_struct("ApiConfig")
            .field("tokens", &roles)
            .field("hold_ttl_seconds_default", &self.hold_ttl_seconds_default)
            .field("hold_ttl_seconds_max", &self.hold_ttl_seconds_max)
            .field("refund_grant_priority", &self.refund_grant_priority)
            .field("refund_grant_ttl_seconds", &self.refund_grant_ttl_seconds)
            .field("request_body_bytes_max", &self.request_body_bytes_max)
            .field("metadata_bytes_max", &self.metadata_bytes_max)
            .field("entries_limit_max", &self.entries_limit_max)
            .field("entries_limit_default", &self.entries_limit_default)
            .field("worker_token", &self.worker_token.as_ref().map(|_| "configured"))
            .field("request_body_timeout_seconds", &self.request_body_timeout_seconds)
            .field("handler_timeout_seconds", &self.handler_timeout_seconds)
            .field("requests_in_flight_max", &self.requests_in_flight_max)
            .finish()
    }
}
