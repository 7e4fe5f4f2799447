//! The conformance suite every backend runs: the [`LedgerStore`] checks, the
//! [`crate::RunStore`] checks ([`runs`]) and the [`crate::JobStore`] checks ([`jobs`]).
//!
//! Each check is a plain `async fn` taking a fresh store and the [`ManualClock`] it reads. A
//! backend's test file defines `async fn new_store(clock: Arc<ManualClock>) -> Arc<S>`, where `S`
//! is its concrete store type implementing the three traits (a fresh, empty, migrated store per
//! call), and invokes [`crate::conformance_tests!`] once; the macro lists every check, so a new
//! check runs on every backend without touching them. The factory returns the concrete type so
//! the macro can hand the same store to every harness (an `Arc<dyn LedgerStore>` could not be
//! turned into an `Arc<dyn RunStore>`); the job checks get it as both a job store and a ledger,
//! because a job write moves credits.

pub mod allowances;
pub mod api_keys;
pub mod differential;
pub mod events;
pub mod jobs;
pub mod model;
pub mod runs;
mod scenarios;
pub mod webhooks;

use std::sync::Arc;

use ledger::{AccountId, Amount, Balances, Command, GrantId, Hold, HoldId, Outcome, Overage, Reference, Rejection};

use crate::{Executed, LedgerStore, ManualClock, Request};

pub use allowances::*;
pub use api_keys::*;
pub use differential::differential_against_model;
pub use events::*;
pub use scenarios::*;
pub use webhooks::*;

/// A fresh store and the clock it reads.
pub struct Harness {
    pub store: Arc<dyn LedgerStore>,
    pub clock: Arc<ManualClock>,
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh store from `$factory`:
/// every ledger check, then every run check (named `runs_*`), then every job check (`jobs_*`).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@tests $factory;
            partial_then_final_capture
            concurrent_holds_exactly_one_wins
            concurrent_holds_never_overdraw
            expired_hold_counts_zero
            insufficient_credits_changes_nothing
            capture_beyond_hold
            release_semantics
            extend_moves_expiry
            refund_by_reference_applies_once
            refund_with_hold_of_another_account_is_not_found
            ids_of_another_account_are_never_overwritten
            grant_reference_returns_first_grant
            grants_expire_exactly_and_sweep_records_them
            pinned_grant_expiry_waits_for_the_hold
            unknown_account_and_hold
            idempotent_replay_returns_first_result
            idempotency_key_with_other_request_conflicts
            rejection_replays_as_rejection
            concurrent_same_key_applies_once
            entries_pagination_is_stable
            sweep_forgets_old_idempotency_keys
            kept_figures_follow_every_hold_change
            many_pending_holds_stay_out_of_account_reads
            holds_are_paged_by_state
            gauges_follow_pending_holds
            accounts_are_listed_by_prefix_in_pages
            daily_credits_sum_the_journal_by_day_and_kind
            grants_are_voided_once_and_listed_by_state
            journal_is_filtered_by_kind_time_and_reference
            differential_against_model
            allowances_daily_seoul_midnight
            allowances_grant_only_the_current_period
            allowances_granted_once_under_concurrency
            allowances_rollover_rules
            allowances_end_at_the_period_end
            allowances_are_limited
            allowances_plans_switch
            allowances_against_model
            plans_are_written_once
            events_follow_each_change_in_order
            events_are_read_once_under_concurrent_commits
            events_balance_low_once_per_crossing
            events_are_forgotten_after_retention
            webhooks_fan_out_claim_and_finish
            webhooks_finish_in_batches
            webhooks_expired_lease_is_reclaimed
            webhooks_concurrent_claims_each_delivery_once
            webhooks_failing_endpoint_is_disabled
            webhooks_replay_rotate_and_disable
            webhooks_against_model
            api_keys_are_found_by_hash_and_revoked_once
            api_keys_calls_are_summed_by_day_and_model
        );
        $crate::conformance_tests!(@runs $factory;
            runs_create_then_read_back
            runs_turn_index_increments_per_thread
            runs_second_running_run_is_busy
            runs_thread_of_another_account
            runs_duplicate_run_id
            runs_update_changes_only_mutable_fields
            runs_thread_runs_pages
            runs_account_runs_newest_first_in_pages
            runs_in_state_oldest_first
            runs_artifacts_round_trip
            runs_concurrent_creates_one_wins
            runs_concurrent_creates_on_distinct_threads
            runs_concurrent_same_run_id
            runs_instance_leases
            runs_orphaned_by_lease
            runs_unresolved_holds
            runs_events_append_read_and_evict
            runs_events_with_the_final_record
            runs_events_forgotten_after_retention
            runs_cancel_requests
            runs_keyed_creates
            runs_recorded_responses
            runs_signals_follow_writes
        );
        $crate::conformance_tests!(@ended $factory;
            runs_end_settles_with_the_record
            runs_end_writes_one_event
        );
        $crate::conformance_tests!(@jobs $factory;
            jobs_insert_then_read_back
            jobs_version_compare_and_set
            jobs_write_with_capture_commits_both
            jobs_rejected_ledger_writes_nothing
            jobs_terminal_refund_applies_once
            jobs_retry_used_once
            jobs_concurrent_retries_one_wins
            jobs_duplicate_job_id
            jobs_concurrent_claims_each_job_once
            jobs_claim_order_and_run_after
            jobs_expired_lease_is_reclaimed
            jobs_attempts_max_respected
            jobs_stuck_jobs
            jobs_thread_jobs_order_and_limit
            jobs_account_jobs_newest_first_in_pages
        );
    };
    (@tests $factory:path; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::starting_now());
                let store = $factory(clock.clone()).await;
                $crate::conformance::$name($crate::conformance::Harness { store, clock }).await;
            }
        )*
    };
    (@runs $factory:path; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::starting_now());
                let store = $factory(clock.clone()).await;
                $crate::conformance::runs::$name($crate::conformance::runs::RunHarness { store, clock }).await;
            }
        )*
    };
    (@ended $factory:path; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::starting_now());
                let store = $factory(clock.clone()).await;
                let runs = $crate::conformance::runs::RunHarness { store: store.clone(), clock: clock.clone() };
                let ledger = $crate::conformance::Harness { store, clock };
                $crate::conformance::runs::$name(runs, ledger).await;
            }
        )*
    };
    (@jobs $factory:path; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::starting_now());
                let store = $factory(clock.clone()).await;
                let harness = $crate::conformance::jobs::JobHarness::new(store.clone(), store, clock);
                $crate::conformance::jobs::$name(harness).await;
            }
        )*
    };
}

/// Parses a decimal amount written in a test.
pub fn cr(text: &str) -> Amount {
    Amount::parse(text).expect("test amounts are valid")
}

pub fn account(id: &str) -> AccountId {
    AccountId::parse(id).expect("test account ids are valid")
}

/// A grant of whole credits, priority 100, never expiring: the grant most tests need.
pub fn grant_credits(account_id: &str, grant_id: &str, credits: u64) -> Command {
    Command::Grant {
        account_id: account(account_id),
        grant_id: GrantId::parse(grant_id).expect("test grant ids are valid"),
        amount: Amount::from_credits(credits),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

/// A hold of whole credits.
pub fn hold_credits(account_id: &str, hold_id: &str, credits: u64, ttl_seconds: u64) -> Command {
    Command::Hold {
        account_id: account(account_id),
        hold_id: HoldId::parse(hold_id).expect("test hold ids are valid"),
        amount: Amount::from_credits(credits),
        ttl_seconds,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

/// A final capture of whole credits, refusing overage.
pub fn capture_credits(hold_id: &str, credits: u64) -> Command {
    Command::Capture {
        hold_id: HoldId::parse(hold_id).expect("test hold ids are valid"),
        amount: Amount::from_credits(credits),
        is_final: true,
        overage: Overage::Reject,
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Small typed helpers over a store, so checks read like the contract.
impl Harness {
    pub async fn run(&self, command: Command) -> Result<Outcome, Rejection> {
        match self.store.execute(Request::new(command)).await.expect("store answers") {
            Executed::Fresh(result) => result,
            other => panic!("expected a fresh result, got {other:?}"),
        }
    }

    pub async fn grant(&self, account_id: &str, amount: &str) {
        self.grant_with(account_id, amount, 100, None, None).await.expect("grant succeeds");
    }

    pub async fn grant_with(
        &self,
        account_id: &str,
        amount: &str,
        priority: i32,
        expires_in_seconds: Option<u64>,
        reference: Option<&str>,
    ) -> Result<Outcome, Rejection> {
        let now = self.clock_now();
        self.run(Command::Grant {
            account_id: account(account_id),
            grant_id: GrantId::parse(&format!("g{}", new_id())).expect("valid id"),
            amount: cr(amount),
            priority,
            expires_at: expires_in_seconds.map(|seconds| now.plus_seconds(seconds)),
            reference: reference.map(|reference| Reference::parse(reference).expect("valid reference")),
            metadata: "{}".to_owned(),
        })
        .await
    }

    pub fn hold_command(&self, account_id: &str, amount: &str, ttl_seconds: u64) -> Command {
        Command::Hold {
            account_id: account(account_id),
            hold_id: HoldId::parse(&format!("h{}", new_id())).expect("valid id"),
            amount: cr(amount),
            ttl_seconds,
            reference: None,
            metadata: "{}".to_owned(),
        }
    }

    pub async fn hold(&self, account_id: &str, amount: &str, ttl_seconds: u64) -> Result<Hold, Rejection> {
        match self.run(self.hold_command(account_id, amount, ttl_seconds)).await? {
            Outcome::Held { hold } => Ok(hold),
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    pub async fn capture(&self, hold_id: &HoldId, amount: &str, is_final: bool) -> Result<Hold, Rejection> {
        let command =
            Command::Capture { hold_id: hold_id.clone(), amount: cr(amount), is_final, overage: Overage::Reject };
        match self.run(command).await? {
            Outcome::Captured { hold } => Ok(hold),
            other => panic!("expected a capture, got {other:?}"),
        }
    }

    pub async fn release(&self, hold_id: &HoldId) -> Result<Outcome, Rejection> {
        self.run(Command::Release { hold_id: hold_id.clone() }).await
    }

    pub async fn balances(&self, account_id: &str) -> Balances {
        self.store.account(&account(account_id)).await.expect("store answers").expect("account exists").balances
    }

    pub fn clock_now(&self) -> ledger::Timestamp {
        use crate::Clock;
        self.clock.now()
    }

    /// Asserts that `verify` finds nothing wrong.
    pub async fn assert_verified(&self) {
        let report = self.store.verify().await.expect("store answers");
        assert!(report.violations.is_empty(), "verify found: {:#?}", report.violations);
    }
}

/// Balances written as decimal strings: `(balance, held, available)`.
pub fn balances(balance: &str, held: &str, available: &str) -> Balances {
    Balances { balance: cr(balance), held: cr(held), available: cr(available) }
}
