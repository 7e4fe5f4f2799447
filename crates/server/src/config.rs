//! What the HTTP API is told by its host: tokens and the limits it enforces at the edge.
//!
//! The CLI builds an [`ApiConfig`] from flags and environment; tests build one directly. Every
//! limit carries its unit last, so a reader never has to guess what a number means.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

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
    /// Rate limits of the routes that start spending; off by default.
    pub rate_limits: RateLimits,
    /// The server's clock when it runs with `--test-clock` (the same clock the stores and the
    /// engine read): `POST /v1/test-clock/advance` moves it. `None`: those routes answer
    /// `404 test_clock_disabled`.
    pub test_clock: Option<std::sync::Arc<store::TestClock>>,
    /// Which addresses a webhook URL may resolve to (checked when an endpoint is created, and
    /// by the dispatcher before every delivery). Public only unless `--webhooks-allow-private`.
    pub webhooks_reach: webhooks::destination::Reach,
    /// Where the LLM gateway forwards (`POST /v1/chat/completions`); `None`: the route answers
    /// `503 gateway_disabled`.
    pub gateway_upstream: Option<crate::routes::gateway::GatewayUpstream>,
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
            rate_limits: RateLimits::default(),
            test_clock: None,
            webhooks_reach: webhooks::destination::Reach::PublicOnly,
            gateway_upstream: None,
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
            .field("rate_limits", &self.rate_limits)
            .field("test_clock", &self.test_clock.as_ref().map(|_| "on"))
            .finish()
    }
}

/// Optional rate limits on the routes that start spending (`POST /v1/holds`, grants, debits,
/// refunds, `POST /v1/solve`); see `rate_limit` for which routes and why. `None` is no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// One budget per bearer token (with authentication off, one shared budget).
    pub per_token: Option<RateQuota>,
    /// One budget per account the request names.
    pub per_account: Option<RateQuota>,
    /// Most accounts the per-account limiter tracks; past it, after pruning the accounts whose
    /// budget is whole again, it forgets every account (each may burst once more).
    pub accounts_max: usize,
}

/// Default of [`RateLimits::accounts_max`]: about 10 MB of limiter state at most.
pub const RATE_LIMIT_ACCOUNTS_MAX_DEFAULT: usize = 100_000;

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits { per_token: None, per_account: None, accounts_max: RATE_LIMIT_ACCOUNTS_MAX_DEFAULT }
    }
}

/// The period a [`RateQuota`] counts requests in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatePeriod {
    Second,
    Minute,
    Hour,
}

impl RatePeriod {
    fn parse(text: &str) -> Option<RatePeriod> {
        match text {
            "s" => Some(RatePeriod::Second),
            "min" => Some(RatePeriod::Minute),
            "h" => Some(RatePeriod::Hour),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RatePeriod::Second => "s",
            RatePeriod::Minute => "min",
            RatePeriod::Hour => "h",
        }
    }

    pub fn duration(self) -> Duration {
        match self {
            RatePeriod::Second => Duration::from_secs(1),
            RatePeriod::Minute => Duration::from_secs(60),
            RatePeriod::Hour => Duration::from_secs(3600),
        }
    }
}

/// A rate limit: `requests` per `period` sustained, with up to `burst` requests at once. Written
/// `REQUESTS/UNIT[:BURST]` with UNIT `s`, `min` or `h` (`50/s`, `600/min:100`); the burst is
/// `REQUESTS` when not given. Both numbers are 1..=[`RateQuota::NUMBER_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateQuota {
    requests: NonZeroU32,
    period: RatePeriod,
    burst: NonZeroU32,
}

/// Why a rate limit's text is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateQuotaError(String);

impl fmt::Display for RateQuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: write REQUESTS/UNIT[:BURST] with UNIT s, min or h (e.g. 50/s or 600/min:100)", self.0)
    }
}

impl std::error::Error for RateQuotaError {}

impl RateQuota {
    /// Largest number of requests or burst a quota may name: beyond it, a limit limits nothing.
    pub const NUMBER_MAX: u32 = 1_000_000;

    pub fn new(requests: u32, period: RatePeriod, burst: u32) -> Result<RateQuota, RateQuotaError> {
        let number = |what: &str, value: u32| {
            NonZeroU32::new(value)
                .filter(|value| value.get() <= RateQuota::NUMBER_MAX)
                .ok_or_else(|| RateQuotaError(format!("{what} must be 1 to {}, not {value}", RateQuota::NUMBER_MAX)))
        };
        Ok(RateQuota { requests: number("requests", requests)?, period, burst: number("burst", burst)? })
    }

    pub fn requests(self) -> NonZeroU32 {
        self.requests
    }

    pub fn period(self) -> RatePeriod {
        self.period
    }

    pub fn burst(self) -> NonZeroU32 {
        self.burst
    }

    /// The time one request's budget takes to come back: the period over the requests.
    pub fn replenish_interval(self) -> Duration {
        let interval = self.period.duration() / self.requests.get();
        assert!(interval >= Duration::from_micros(1), "NUMBER_MAX keeps the interval above a microsecond");
        interval
    }
}

impl FromStr for RateQuota {
    type Err = RateQuotaError;

    fn from_str(text: &str) -> Result<RateQuota, RateQuotaError> {
        let invalid = || RateQuotaError(format!("{text:?} is not a rate limit"));
        let (rate, burst) = match text.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text, None),
        };
        let (requests, unit) = rate.split_once('/').ok_or_else(invalid)?;
        let period = RatePeriod::parse(unit).ok_or_else(invalid)?;
        // Digits only: `u32::from_str` would take a sign.
        let number = |digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(invalid());
            }
            digits.parse::<u32>().map_err(|_| invalid())
        };
        let requests = number(requests)?;
        let burst = match burst {
            Some(burst) => number(burst)?,
            None => requests,
        };
        RateQuota::new(requests, period, burst)
    }
}

/// The form [`RateQuota::from_str`] reads, burst always written.
impl fmt::Display for RateQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.requests, self.period.as_str(), self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rate_quotas_parse_with_and_without_a_burst() {
        let quota: RateQuota = "50/s".parse().expect("valid");
        assert_eq!((quota.requests().get(), quota.period(), quota.burst().get()), (50, RatePeriod::Second, 50));
        assert_eq!(quota.replenish_interval(), Duration::from_millis(20));
        let quota: RateQuota = "600/min:100".parse().expect("valid");
        assert_eq!((quota.requests().get(), quota.period(), quota.burst().get()), (600, RatePeriod::Minute, 100));
        assert_eq!(quota.replenish_interval(), Duration::from_millis(100));
        let quota: RateQuota = "3/h:1".parse().expect("valid");
        assert_eq!(quota.replenish_interval(), Duration::from_secs(1200));
        assert_eq!("1000000/s".parse::<RateQuota>().map(RateQuota::replenish_interval), Ok(Duration::from_micros(1)));
    }

    #[test]
    fn nonsense_and_zero_are_not_rate_quotas() {
        for bad in [
            "",
            "50",
            "50/",
            "/s",
            "50/sec",
            "50/m",
            "50/S",
            "0/s",
            "50/s:0",
            "50/s:",
            "-1/s",
            "+5/s",
            " 5/s",
            "5/s ",
            "5.5/s",
            "5/s:2:3",
            "1000001/s",
            "5/s:1000001",
            "99999999999/s",
            "5/s/2",
        ] {
            let error = bad.parse::<RateQuota>().expect_err(bad);
            assert!(error.to_string().contains("REQUESTS/UNIT"), "{bad:?}: {error}");
        }
        assert!("0/s".parse::<RateQuota>().expect_err("zero").to_string().contains("requests must be 1 to"));
    }

    proptest! {
        /// Every valid quota reads back from its own text, and every number in range parses.
        #[test]
        fn rate_quotas_round_trip(requests in 1..=RateQuota::NUMBER_MAX, burst in 1..=RateQuota::NUMBER_MAX,
                                  unit in 0..3usize, with_burst in any::<bool>()) {
            let period = [RatePeriod::Second, RatePeriod::Minute, RatePeriod::Hour][unit];
            let text = if with_burst {
                format!("{requests}/{}:{burst}", period.as_str())
            } else {
                format!("{requests}/{}", period.as_str())
            };
            let quota: RateQuota = text.parse().expect("valid");
            let burst = if with_burst { burst } else { requests };
            prop_assert_eq!(quota, RateQuota::new(requests, period, burst).expect("in range"));
            prop_assert_eq!(quota.to_string().parse::<RateQuota>(), Ok(quota));
            prop_assert!(quota.replenish_interval() * requests <= period.duration());
        }

        /// Arbitrary text never panics the parser; what it accepts is in range.
        #[test]
        fn arbitrary_text_parses_or_is_refused(text in "\\PC{0,16}") {
            if let Ok(quota) = text.parse::<RateQuota>() {
                prop_assert!(quota.requests().get() <= RateQuota::NUMBER_MAX);
                prop_assert!(quota.burst().get() <= RateQuota::NUMBER_MAX);
            }
        }
    }
}
