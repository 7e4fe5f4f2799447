//! Optional rate limits, per bearer token and per account, on the routes that start spending.
//!
//! Why only those: a limit is there to stop one client (or one account) from flooding the
//! ledger with new work. The routes that create work are limited — `POST /v1/holds`, grants,
//! debits, refunds and `POST /v1/solve`. The routes that finish work — capture, release and
//! extend of an existing hold, cancelling a run or a job, the worker protocol — never are: a
//! refused release would strand credits in a hold until it expires, so a limited client must
//! always be able to give credits back and settle what it started. `POST /v1/estimate` changes
//! nothing and touches no store, so it is not limited either.
//!
//! A solve retried under its `Idempotency-Key` is a request like another; `GET
//! /v1/runs/{run_id}/events`, which resumes any run, is not limited.
//!
//! Where: a handler checks after authentication (unauthenticated junk never creates a limiter
//! key) and after it parsed its request (the account is often in the body), and before any store
//! call, so a `429 rate_limited` has applied nothing and a retry under the same
//! `Idempotency-Key` applies once. The account's budget is checked first, so the requests one
//! hot account gets refused do not spend its token's budget, which its other accounts share.
//!
//! How: governor's GCRA over keyed state (a maintained crate; no timer, no task — one atomic
//! state per key). Time is the service's injected [`Clock`], so tests move it instead of
//! sleeping; [`LimiterClock`] keeps it from running backwards when the wall clock is stepped back.
//!
//! Memory: the token limiter has at most one key per configured token. The account limiter has
//! one key per account seen; every [`PRUNE_EVERY_CHECKS`] checks it drops the accounts whose
//! budget is whole again (dropping them changes no decision), and when a check finds more than
//! `accounts_max` it prunes at once and, if that is not enough, forgets every account: memory
//! stays bounded (`accounts_max` plus the checks in flight) and each account may burst once more
//! (logged as a warning). With a per-token limit set, one client cannot name
//! accounts faster than its own budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::Quota;
use ledger::AccountId;
use store::Clock;

use crate::config::{RateLimits, RateQuota};
use crate::error::ApiError;
use crate::extract::Caller;

/// The routes whose handlers check the limits, as (method, path) of the route table; the tests
/// hold the OpenAPI document's `429` responses against this list.
pub const RATE_LIMITED_ROUTES: [(&str, &str); 5] = [
    ("POST", "/v1/accounts/{account_id}/grants"),
    ("POST", "/v1/accounts/{account_id}/debits"),
    ("POST", "/v1/accounts/{account_id}/refunds"),
    ("POST", "/v1/holds"),
    ("POST", "/v1/solve"),
];

/// Checks between two prunes of a limiter's keys whose budget is whole again.
pub const PRUNE_EVERY_CHECKS: u64 = 1024;

/// The limits of one server: one limiter per configured limit.
pub struct RateLimiter {
    per_token: Option<Keyed<Caller>>,
    per_account: Option<Keyed<AccountId>>,
}

impl RateLimiter {
    pub fn new(limits: &RateLimits, clock: Arc<dyn Clock>) -> RateLimiter {
        let clock = LimiterClock::new(clock);
        // At most one key per token and one for `Caller::Open`: bounded as it is, so no cap (a
        // cap of exactly that many would be reached by the keys it is meant for).
        let per_token = limits.per_token.map(|quota| Keyed::new("token", quota, usize::MAX, clock.clone()));
        let per_account = limits.per_account.map(|quota| Keyed::new("account", quota, limits.accounts_max, clock));
        RateLimiter { per_token, per_account }
    }

    /// Admits one request of `caller` naming `account`, or answers `429 rate_limited`.
    pub fn check(&self, caller: Caller, account: Option<&AccountId>) -> Result<(), ApiError> {
        if let (Some(limiter), Some(account)) = (&self.per_account, account) {
            limiter.check(account)?;
        }
        if let Some(limiter) = &self.per_token {
            limiter.check(&caller)?;
        }
        Ok(())
    }

    /// How many accounts the per-account limiter tracks now (0 without one).
    #[cfg(test)]
    fn accounts_tracked(&self) -> usize {
        self.per_account.as_ref().map_or(0, |limiter| limiter.len())
    }
}

type GovernorLimiter<K> =
    governor::RateLimiter<K, HashMapStateStore<K>, LimiterClock, governor::middleware::NoOpMiddleware<Nanos>>;

/// One keyed limiter, with what it needs to prune itself and to start over at its cap.
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    /// `token` or `account`: the `limit` member of the 429.
    name: &'static str,
    quota: Quota,
    clock: LimiterClock,
    keys_max: usize,
    checks: AtomicU64,
    /// Replaced by an empty limiter when the cap is reached after pruning.
    limiter: RwLock<GovernorLimiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(name: &'static str, quota: RateQuota, keys_max: usize, clock: LimiterClock) -> Keyed<K> {
        let quota = Quota::with_period(quota.replenish_interval())
            .expect("a RateQuota's interval is at least a microsecond")
            .allow_burst(quota.burst());
        let limiter = RwLock::new(governor::RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()));
        Keyed { name, quota, clock, keys_max: keys_max.max(1), checks: AtomicU64::new(0), limiter }
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if checks.is_multiple_of(PRUNE_EVERY_CHECKS) {
            self.prune();
        }
        if self.len() > self.keys_max {
            self.prune();
            if self.len() > self.keys_max {
                tracing::warn!(
                    limit = self.name,
                    keys_max = self.keys_max,
                    "rate limiter full of recently active keys: forgetting them all"
                );
                let empty = governor::RateLimiter::new(self.quota, HashMapStateStore::default(), self.clock.clone());
                *self.limiter.write().unwrap_or_else(PoisonError::into_inner) = empty;
            }
        }
        let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
        match limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
                Err(ApiError::rate_limited(self.name, wait))
            }
        }
    }

    /// Drops the keys whose budget is whole again; gives memory back when that halved the map.
    fn prune(&self) {
        let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
        let before = limiter.len();
        limiter.retain_recent();
        if limiter.len() <= before / 2 {
            limiter.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.limiter.read().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The service's clock as governor reads it: nanoseconds, never going backwards. When the wall
/// clock is stepped back, the limiter's time stands still only for that instant and then runs on
/// from where it was, so a step back neither refuses every client for the length of the step nor
/// freezes refills until the wall clock catches up.
#[derive(Clone)]
struct LimiterClock {
    clock: Arc<dyn Clock>,
    /// (the last value returned, the correction added to readings), in microseconds.
    state: Arc<Mutex<(i64, i64)>>,
}

impl LimiterClock {
    fn new(clock: Arc<dyn Clock>) -> LimiterClock {
        LimiterClock { clock, state: Arc::new(Mutex::new((i64::MIN, 0))) }
    }
}

impl governor::clock::Clock for LimiterClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let reading = self.clock.now().micros();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, correction) = &mut *state;
        let mut now = reading.saturating_add(*correction);
        if now < *last {
            *correction = correction.saturating_add(*last - now);
            now = *last;
        }
        *last = now;
        let micros = u64::try_from(now).unwrap_or(0);
        Nanos::from(Duration::from_micros(micros))
    }
}

// The limiter's arithmetic is governor's; these pin what this module adds: the clock, the keys,
// the order of the checks and the cap.
#[cfg(test)]
mod tests {
    use super::*;
    use ledger::Timestamp;
    use store::ManualClock;

    fn quota(text: &str) -> RateQuota {
        text.parse().expect("valid quota")
    }

    fn account(name: &str) -> AccountId {
        AccountId::parse(name).expect("valid account id")
    }

    fn limiter(
        per_token: Option<&str>,
        per_account: Option<&str>,
        accounts_max: usize,
    ) -> (RateLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_800_000_000_000_000)));
        let limits = RateLimits { per_token: per_token.map(quota), per_account: per_account.map(quota), accounts_max };
        (RateLimiter::new(&limits, Arc::clone(&clock) as Arc<dyn Clock>), clock)
    }

    #[track_caller]
    fn refused(result: Result<(), ApiError>, limit: &str) -> ApiError {
        let error = result.expect_err("refused");
        assert_eq!(error.code(), "rate_limited");
        let response = axum::response::IntoResponse::into_response(error.clone());
        assert!(response.headers().contains_key(axum::http::header::RETRY_AFTER));
        assert!(error.to_string().contains(limit), "{error}");
        error
    }

    #[test]
    fn a_token_gets_its_burst_then_waits_for_the_clock() {
        let (limiter, clock) = limiter(Some("2/s:2"), None, 10);
        let alice = Some(account("alice"));
        assert!(limiter.check(Caller::Token(0), alice.as_ref()).is_ok());
        assert!(limiter.check(Caller::Token(0), alice.as_ref()).is_ok());
        refused(limiter.check(Caller::Token(0), alice.as_ref()), "token");
        // Another token has a budget of its own, and so has the open caller.
        assert!(limiter.check(Caller::Token(1), alice.as_ref()).is_ok());
        assert!(limiter.check(Caller::Open, None).is_ok());
        // 2/s gives one request back every 500 ms; a whole second gives the burst back.
        clock.advance_seconds(1);
        assert!(limiter.check(Caller::Token(0), None).is_ok());
        assert!(limiter.check(Caller::Token(0), None).is_ok());
        refused(limiter.check(Caller::Token(0), None), "token");
        assert_eq!(limiter.accounts_tracked(), 0, "no per-account limit");
    }

    #[test]
    fn retry_after_is_when_the_next_request_is_admitted() {
        let (limiter, clock) = limiter(None, Some("1/min:1"), 10);
        let bob = account("bob");
        assert!(limiter.check(Caller::Open, Some(&bob)).is_ok());
        let error = refused(limiter.check(Caller::Open, Some(&bob)), "account");
        let response = axum::response::IntoResponse::into_response(error);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "60");
        clock.advance_seconds(59);
        let error = refused(limiter.check(Caller::Open, Some(&bob)), "account");
        let response = axum::response::IntoResponse::into_response(error);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
        clock.advance_seconds(1);
        assert!(limiter.check(Caller::Open, Some(&bob)).is_ok());
        // Without an account the per-account limit does not apply.
        assert!(limiter.check(Caller::Open, None).is_ok());
    }

    #[test]
    fn an_account_refused_spends_nothing_of_its_token() {
        let (limiter, _clock) = limiter(Some("3/s:3"), Some("1/s:1"), 10);
        let (hot, cold) = (account("hot"), account("cold"));
        assert!(limiter.check(Caller::Token(0), Some(&hot)).is_ok());
        for _ in 0..10 {
            refused(limiter.check(Caller::Token(0), Some(&hot)), "account");
        }
        // The token spent one of three: two more, on other accounts.
        assert!(limiter.check(Caller::Token(0), Some(&cold)).is_ok());
        assert!(limiter.check(Caller::Token(0), Some(&account("warm"))).is_ok());
        refused(limiter.check(Caller::Token(0), Some(&account("new"))), "token");
    }

    #[test]
    fn a_wall_clock_stepped_back_neither_refuses_nor_freezes() {
        let (limiter, clock) = limiter(Some("1/s:1"), None, 10);
        assert!(limiter.check(Caller::Open, None).is_ok());
        refused(limiter.check(Caller::Open, None), "token");
        clock.advance_seconds(-3600);
        refused(limiter.check(Caller::Open, None), "token");
        // One second after the step, one second has passed for the limiter.
        clock.advance_seconds(1);
        assert!(limiter.check(Caller::Open, None).is_ok());
        refused(limiter.check(Caller::Open, None), "token");
    }

    #[test]
    fn accounts_are_pruned_and_capped() {
        let (limiter, clock) = limiter(None, Some("1/s:1"), 100);
        for index in 0..100 {
            assert!(limiter.check(Caller::Open, Some(&account(&format!("a{index}")))).is_ok());
        }
        refused(limiter.check(Caller::Open, Some(&account("a0"))), "account");
        assert!(limiter.check(Caller::Open, Some(&account("new"))).is_ok());
        assert_eq!(limiter.accounts_tracked(), 101, "one past the cap");
        // Past the cap with every account still spent: all forgotten at the next check.
        assert!(limiter.check(Caller::Open, Some(&account("a0"))).is_ok(), "a forgotten account bursts again");
        assert_eq!(limiter.accounts_tracked(), 1, "forgot every account past the cap");
        // Accounts whose budget came back are pruned past the cap instead: no reset.
        for index in 0..99 {
            assert!(limiter.check(Caller::Open, Some(&account(&format!("b{index}")))).is_ok());
        }
        clock.advance_seconds(2);
        let spent = account("spent");
        assert!(limiter.check(Caller::Open, Some(&spent)).is_ok());
        assert_eq!(limiter.accounts_tracked(), 101);
        assert!(limiter.check(Caller::Open, Some(&account("c"))).is_ok());
        assert_eq!(limiter.accounts_tracked(), 2, "pruned the 100 whole budgets, kept the spent one and the new one");
        refused(limiter.check(Caller::Open, Some(&spent)), "account");
    }

    #[test]
    fn accounts_are_pruned_every_so_many_checks() {
        let (limiter, clock) = limiter(None, Some("1000/s:1"), 1_000_000);
        for index in 0..PRUNE_EVERY_CHECKS - 1 {
            assert!(limiter.check(Caller::Open, Some(&account(&format!("a{index}")))).is_ok());
        }
        assert_eq!(limiter.accounts_tracked(), (PRUNE_EVERY_CHECKS - 1) as usize);
        clock.advance_seconds(1);
        assert!(limiter.check(Caller::Open, Some(&account("last"))).is_ok());
        assert_eq!(limiter.accounts_tracked(), 1, "the periodic prune kept only the account just seen");
    }
}
