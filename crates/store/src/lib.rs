//! The storage port of creditgraph's ledger.
//!
//! [`LedgerStore`] is the one trait every backend implements: apply a ledger [`Command`]
//! atomically and idempotently, read accounts, holds and the journal, sweep expiries, verify.
//! [`protocol`] is how every backend applies a command (idempotency, the state to load, the
//! decision, what to write), written once so backends keep only their I/O.
//! [`memory::MemoryStore`] is the in-process implementation; [`conformance`] is the shared suite
//! that every backend's tests run, including a differential test against an independent
//! reference model ([`conformance::model`]).
//!
//! Architecture invariant: no database driver type appears here. Adapters map their driver's
//! errors into [`StoreError`].

pub mod allowances;
pub mod api_keys;
pub mod clock;
pub mod codec;
pub mod conformance;
pub mod events;
pub mod ids;
pub mod jobs;
pub mod keys;
pub mod memory;
pub mod observe;
pub mod plans;
pub mod protocol;
pub mod runs;
pub mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;
use ledger::{
    AccountId, AccountState, Balances, Command, Entry, Hold, HoldId, HoldState, Outcome, Rejection, Timestamp,
    Violation,
};

pub use clock::{Clock, ManualClock, SystemClock, TestClock};
pub use ids::{ApiKeyId, ArtifactId, EndpointId, JobId, RunId, ThreadId};
pub use jobs::{JobRecord, JobStatus, JobStore, JobWrite, JobWriteRefusal, JobWritten};
pub use keys::{KeyUse, KeyedRun, RecordedResponse};
pub use runs::{
    Artifact, CreateRunRefusal, HoldResolution, InstanceLease, RunEndWritten, RunEventsWrite, RunRecord, RunSettle,
    RunSignal, RunState, RunStore, SettledHold, StoredFrame,
};

/// Most holds one page of [`LedgerStore::holds`] returns.
pub const HOLDS_PAGE_MAX: u32 = 1_000;

/// Longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;

/// An idempotency key with the fingerprint of the request that first used it. The same key with
/// another fingerprint is a conflict, never a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub command: Command,
    pub idempotency: Option<Idempotency>,
}

impl Request {
    pub fn new(command: Command) -> Request {
        Request { command, idempotency: None }
    }

    pub fn with_key(command: Command, key: &str, fingerprint: &str) -> Request {
        Request { command, idempotency: Some(Idempotency { key: key.to_owned(), fingerprint: fingerprint.to_owned() }) }
    }
}

/// What [`LedgerStore::execute`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Executed {
    /// Applied now (or rejected now; a rejection is recorded for replay too).
    Fresh(Result<Outcome, Rejection>),
    /// The key was used before by the same request: the first result, nothing applied.
    Replayed(Result<Outcome, Rejection>),
    /// The key was used before by a different request.
    Conflict,
}

impl Executed {
    /// The result, fresh or replayed; `None` for a conflict.
    pub fn result(&self) -> Option<&Result<Outcome, Rejection>> {
        match self {
            Executed::Fresh(result) | Executed::Replayed(result) => Some(result),
            Executed::Conflict => None,
        }
    }
}

/// An account as it reads at a moment: expiries applied. Its state carries the row, the live
/// grants (each with its `pinned` part) and the holds that were due (now expired), never the
/// account's pending holds: those are paged through [`LedgerStore::holds`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    pub state: AccountState,
    pub balances: Balances,
}

impl AccountView {
    pub fn at(state: &AccountState, now: Timestamp) -> AccountView {
        let state = if state.allowances.is_empty() {
            ledger::view(state, now)
        } else {
            let mut scheduled = state.clone();
            allowances::schedule_at(&mut scheduled, now);
            ledger::view(&scheduled, now)
        };
        let balances = state.materialized();
        AccountView { state, balances }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub accounts: u64,
    pub entries: u64,
    pub idempotency_keys_deleted: u64,
}

/// Which journal entries [`LedgerStore::filtered_entries`] keeps: every condition given holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryFilter {
    pub kind: Option<ledger::EntryKind>,
    /// At or after.
    pub from: Option<Timestamp>,
    /// Before.
    pub to: Option<Timestamp>,
    pub reference: Option<ledger::Reference>,
}

impl EntryFilter {
    pub fn admits(&self, entry: &Entry) -> bool {
        self.kind.is_none_or(|kind| entry.kind == kind)
            && self.from.is_none_or(|from| entry.at >= from)
            && self.to.is_none_or(|to| entry.at < to)
            && self.reference.as_ref().is_none_or(|reference| entry.reference.as_ref() == Some(reference))
    }
}

/// Which grants [`LedgerStore::grants`] lists, at a moment `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantListState {
    /// Neither voided nor past their expiry (spent ones included: they still count as given).
    Active(Timestamp),
    /// Past their expiry, not voided.
    Expired(Timestamp),
    /// Voided by an operator.
    Voided,
}

impl GrantListState {
    /// Whether `grant` is in this state.
    pub fn admits(self, grant: &ledger::Grant) -> bool {
        match self {
            GrantListState::Active(now) => grant.voided_at.is_none() && !grant.is_expired_at(now),
            GrantListState::Expired(now) => grant.voided_at.is_none() && grant.is_expired_at(now),
            GrantListState::Voided => grant.voided_at.is_some(),
        }
    }
}

/// The largest page of [`LedgerStore::grants`].
pub const GRANTS_PAGE_MAX: u32 = 1_000;

/// The largest page of [`LedgerStore::account_ids`].
pub const ACCOUNTS_PAGE_MAX: u32 = 1_000;

/// Micro-credits a day's journal entries of one kind moved (see [`LedgerStore::daily_credits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DayCredits {
    /// Days since 1970-01-01, UTC.
    pub day: i64,
    pub kind: ledger::EntryKind,
    pub amount: ledger::Amount,
}

/// The UTC day (days since the Unix epoch) of `at`.
pub fn utc_day(at: Timestamp) -> i64 {
    at.micros().div_euclid(MICROS_PER_DAY)
}

/// Microseconds in a UTC day (no leap seconds, as Unix time).
pub const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// What the store holds open right now, whole-store figures for the operator's gauges (never
/// per account). Pending holds include ones past their expiry the sweeper has not reached yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreGauges {
    pub pending_holds: u64,
    /// What the pending holds still hold (their `remaining`).
    pub held: ledger::Amount,
    pub jobs_queued: u64,
    pub jobs_running: u64,
    /// When the oldest queued job was created; `None` when none is queued.
    pub oldest_queued_job_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts: u64,
    pub entries: u64,
    pub holds: u64,
    pub violations: Vec<Violation>,
}

/// The cause kept inside a [`StoreError`]: usually the driver's own error. Shared rather than
/// boxed so that one failure of a batch can answer every request of the batch with its cause.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store could not answer. `detail` is complete on its own (logs and problem details read
/// it); `source`, when set, is the error that caused it, for callers that walk the chain.
///
/// Build one with [`StoreError::unavailable`], [`StoreError::contention`],
/// [`StoreError::corrupt`] or [`StoreError::startup`], and attach a cause with
/// [`StoreError::with_source`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the operation; retrying later may work.
    #[error("store unavailable: {detail}")]
    Unavailable {
        detail: String,
        #[source]
        source: Option<ErrorSource>,
    },
    /// Retries on serialization failures or deadlocks ran out.
    #[error("store contention: {detail}")]
    Contention {
        detail: String,
        #[source]
        source: Option<ErrorSource>,
    },
    /// Stored data does not decode or breaks a rule of the schema: a bug or tampering; never
    /// retried.
    #[error("store corrupt: {detail}")]
    Corrupt {
        detail: String,
        #[source]
        source: Option<ErrorSource>,
    },
    /// The store cannot start (bad URL, another process owns the file, failed migration).
    #[error("store cannot start: {detail}")]
    Startup {
        detail: String,
        #[source]
        source: Option<ErrorSource>,
    },
}

impl StoreError {
    pub fn unavailable(detail: impl Into<String>) -> StoreError {
        StoreError::Unavailable { detail: detail.into(), source: None }
    }

    pub fn contention(detail: impl Into<String>) -> StoreError {
        StoreError::Contention { detail: detail.into(), source: None }
    }

    /// The one constructor of [`StoreError::Corrupt`] (see also [`codec::undecodable`]).
    pub fn corrupt(detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { detail: detail.into(), source: None }
    }

    pub fn startup(detail: impl Into<String>) -> StoreError {
        StoreError::Startup { detail: detail.into(), source: None }
    }

    /// The same error, caused by `cause` (replacing any cause it had).
    pub fn with_source(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        let cause: ErrorSource = Arc::new(cause);
        match &mut self {
            StoreError::Unavailable { source, .. }
            | StoreError::Contention { source, .. }
            | StoreError::Corrupt { source, .. }
            | StoreError::Startup { source, .. } => *source = Some(cause),
        }
        self
    }

    /// The error's own description, without its kind or its cause.
    pub fn detail(&self) -> &str {
        match self {
            StoreError::Unavailable { detail, .. }
            | StoreError::Contention { detail, .. }
            | StoreError::Corrupt { detail, .. }
            | StoreError::Startup { detail, .. } => detail,
        }
    }
}

/// One ledger backend. Every method reads time from the store's own [`Clock`].
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// Applies one command in one transaction. With an idempotency key, the first result is
    /// recorded in the same transaction, and later requests with that key replay it.
    async fn execute(&self, request: Request) -> Result<Executed, StoreError>;

    /// The account as it reads now, or `None` when it has no grant yet.
    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError>;

    /// The hold as it reads now (a pending hold past its expiry reads as expired).
    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError>;

    /// The account's active holds as they read now, oldest first. Unbounded: for the CLI and
    /// tests; the API pages through [`LedgerStore::holds`].
    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError>;

    /// One page of the account's holds that read as `state` now (a pending hold at or past its
    /// expiry reads as expired), each as it reads now, in hold-id order after `after`, at most
    /// `limit` (capped at [`HOLDS_PAGE_MAX`]).
    async fn holds(
        &self,
        account_id: &AccountId,
        state: HoldState,
        after: Option<&HoldId>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError>;

    /// Journal entries of one account with `seq > after_seq`, in order, at most `limit`.
    async fn entries(&self, account_id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<Entry>, StoreError>;

    /// Records due expiries for at most `accounts_max` accounts and forgets idempotency keys
    /// older than the store's retention.
    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError>;

    /// Recomputes every account from its journal and compares with the stored state.
    async fn verify(&self) -> Result<VerifyReport, StoreError>;

    /// The outbox's events after `position` (0: from the start), in read order, at most
    /// `limit` (≤ [`events::EVENTS_PAGE_MAX`]). Only committed events, and never one that could
    /// later appear before another already returned (see [`events::StoredEvent::position`]).
    async fn events(&self, after: u128, limit: u32) -> Result<Vec<events::StoredEvent>, StoreError> {
        let _ = (after, limit);
        Err(StoreError::unavailable(format!("the {} store keeps no events", self.backend())))
    }

    /// Creates a webhook endpoint at the outbox's end (the position given is ignored): it
    /// receives events written after it. See [`webhooks`] for the delivery protocol.
    async fn create_webhook_endpoint(&self, endpoint: &webhooks::Endpoint) -> Result<webhooks::Endpoint, StoreError> {
        let _ = endpoint;
        Err(StoreError::unavailable(format!("the {} store keeps no webhook endpoints", self.backend())))
    }

    /// Every webhook endpoint, in id order (at most [`webhooks::ENDPOINTS_MAX`]).
    async fn webhook_endpoints(&self) -> Result<Vec<webhooks::Endpoint>, StoreError> {
        Err(StoreError::unavailable(format!("the {} store keeps no webhook endpoints", self.backend())))
    }

    /// Applies an admin's change to an endpoint: the endpoint after it, `None` when unknown.
    async fn change_webhook_endpoint(
        &self,
        endpoint_id: &EndpointId,
        change: &webhooks::EndpointChange,
        now: Timestamp,
    ) -> Result<Option<webhooks::Endpoint>, StoreError> {
        let _ = (endpoint_id, change, now);
        Err(StoreError::unavailable(format!("the {} store keeps no webhook endpoints", self.backend())))
    }

    /// Records a fan-out's deliveries and moves the endpoint to `to`, if the endpoint is still
    /// at `from`: whether it was (false: another dispatcher fanned out first; nothing written).
    async fn fan_out_webhook_events(&self, fan_out: &webhooks::FanOut) -> Result<bool, StoreError> {
        let _ = fan_out;
        Err(StoreError::unavailable(format!("the {} store keeps no webhook deliveries", self.backend())))
    }

    /// Claims due deliveries of enabled endpoints, oldest due first.
    async fn claim_webhook_deliveries(
        &self,
        claim: &webhooks::DeliveryClaim,
    ) -> Result<Vec<webhooks::ClaimedDelivery>, StoreError> {
        let _ = claim;
        Err(StoreError::unavailable(format!("the {} store keeps no webhook deliveries", self.backend())))
    }

    /// Records how claimed deliveries' attempts ended, in order, in one transaction: what each
    /// recorded.
    async fn finish_webhook_deliveries(
        &self,
        finishes: &[webhooks::DeliveryFinish],
    ) -> Result<Vec<webhooks::Finished>, StoreError> {
        let _ = finishes;
        Err(StoreError::unavailable(format!("the {} store keeps no webhook deliveries", self.backend())))
    }

    /// Records the events an endpoint wants that were written at or after `since` and already
    /// fanned out to it as due again (at most [`webhooks::REPLAY_MAX`], the oldest first), each
    /// with a new retry window: how many, `None` when the endpoint is unknown.
    async fn replay_webhook_events(
        &self,
        endpoint_id: &EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let _ = (endpoint_id, since, now);
        Err(StoreError::unavailable(format!("the {} store keeps no webhook deliveries", self.backend())))
    }

    /// Creates a gateway key unless its account has [`api_keys::KEYS_PER_ACCOUNT_MAX`].
    async fn create_api_key(&self, key: &api_keys::ApiKey) -> Result<api_keys::ApiKeyCreated, StoreError> {
        let _ = key;
        Err(StoreError::unavailable(format!("the {} store keeps no gateway keys", self.backend())))
    }

    /// The key whose text hashes to `hash` (revoked ones included: the caller checks).
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<api_keys::ApiKey>, StoreError> {
        let _ = hash;
        Err(StoreError::unavailable(format!("the {} store keeps no gateway keys", self.backend())))
    }

    /// An account's keys, oldest first.
    async fn api_keys(&self, account_id: &AccountId) -> Result<Vec<api_keys::ApiKey>, StoreError> {
        let _ = account_id;
        Err(StoreError::unavailable(format!("the {} store keeps no gateway keys", self.backend())))
    }

    /// Revokes one of the account's keys (revoking again keeps the first time): the key after,
    /// `None` when the account has no such key.
    async fn revoke_api_key(
        &self,
        account_id: &AccountId,
        key_id: &ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<api_keys::ApiKey>, StoreError> {
        let _ = (account_id, key_id, now);
        Err(StoreError::unavailable(format!("the {} store keeps no gateway keys", self.backend())))
    }

    /// Records a settled gateway call.
    async fn record_gateway_call(&self, call: &api_keys::GatewayCall) -> Result<(), StoreError> {
        let _ = call;
        Err(StoreError::unavailable(format!("the {} store keeps no gateway calls", self.backend())))
    }

    /// An account's gateway calls at `from <= at < to`, summed by model and UTC day (day, then
    /// model order; at most [`api_keys::USAGE_ROWS_MAX`] rows).
    async fn gateway_usage(
        &self,
        account_id: &AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<api_keys::UsageRow>, StoreError> {
        let _ = (account_id, from, to);
        Err(StoreError::unavailable(format!("the {} store keeps no gateway calls", self.backend())))
    }

    /// What a key's calls were charged since `since`.
    async fn key_spent_since(&self, key_id: &ApiKeyId, since: Timestamp) -> Result<ledger::Amount, StoreError> {
        let _ = (key_id, since);
        Err(StoreError::unavailable(format!("the {} store keeps no gateway calls", self.backend())))
    }

    /// Writes a plan unless one with its id exists (plans never change): what was done.
    async fn put_plan(&self, plan: &plans::Plan) -> Result<plans::PlanPut, StoreError> {
        let _ = plan;
        Err(StoreError::unavailable(format!("the {} store keeps no plans", self.backend())))
    }

    /// The plan with this id.
    async fn plan(&self, plan_id: &ledger::PlanId) -> Result<Option<plans::Plan>, StoreError> {
        let _ = plan_id;
        Err(StoreError::unavailable(format!("the {} store keeps no plans", self.backend())))
    }

    /// Every plan, in id order (at most `plans_max`).
    async fn plans(&self, plans_max: u32) -> Result<Vec<plans::Plan>, StoreError> {
        let _ = plans_max;
        Err(StoreError::unavailable(format!("the {} store keeps no plans", self.backend())))
    }

    /// An account's journal entries that pass `filter`, in `seq` order after `after_seq`, at
    /// most `limit`: [`LedgerStore::entries`] with filters. It reads the account's entries in
    /// order and keeps the matching ones, so a rare kind in a long journal costs a longer scan.
    async fn filtered_entries(
        &self,
        account_id: &AccountId,
        filter: &EntryFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let _ = (account_id, filter, after_seq, limit);
        Err(StoreError::unavailable(format!("the {} store filters no journal", self.backend())))
    }

    /// A grant by id, in whatever state (live, spent, expired or voided).
    async fn grant(&self, grant_id: &ledger::GrantId) -> Result<Option<ledger::Grant>, StoreError> {
        let _ = grant_id;
        Err(StoreError::unavailable(format!("the {} store reads no grants by id", self.backend())))
    }

    /// An account's grants in one state at `now`, in grant-id order (byte-wise), after `after`,
    /// at most `limit` (≤ [`GRANTS_PAGE_MAX`]).
    async fn grants(
        &self,
        account_id: &AccountId,
        state: GrantListState,
        after: Option<&ledger::GrantId>,
        limit: u32,
    ) -> Result<Vec<ledger::Grant>, StoreError> {
        let _ = (account_id, state, after, limit);
        Err(StoreError::unavailable(format!("the {} store lists no grants", self.backend())))
    }

    /// Account ids starting with `prefix` (empty: every account), after `after`, in byte order,
    /// at most `limit` (≤ [`ACCOUNTS_PAGE_MAX`]). The operator's account search.
    async fn account_ids(
        &self,
        prefix: &str,
        after: Option<&AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let _ = (prefix, after, limit);
        Err(StoreError::unavailable(format!("the {} store lists no accounts", self.backend())))
    }

    /// The journal's credits per UTC day and entry kind, for entries at `from` or later and
    /// before `to`, every account together (days with none are absent). Reads every entry in
    /// the window: an overview for operators, not a hot path.
    async fn daily_credits(&self, from: Timestamp, to: Timestamp) -> Result<Vec<DayCredits>, StoreError> {
        let _ = (from, to);
        Err(StoreError::unavailable(format!("the {} store sums no days", self.backend())))
    }

    /// Whole-store figures for the metrics' gauges (see [`StoreGauges`]): one indexed pass over
    /// the pending holds and the queued and running jobs, meant for a scrape every few seconds.
    async fn gauges(&self) -> Result<StoreGauges, StoreError> {
        Err(StoreError::unavailable(format!("the {} store reports no gauges", self.backend())))
    }

    /// A short name for logs ("sqlite", "postgres", "memory").
    fn backend(&self) -> &'static str;

    /// Whether the store can take writes now (the readiness probe): `Ok`, or why not. Unbounded
    /// in time like every call here; the caller bounds it. By default, a read of one account; a
    /// backend that can be connected to a server that takes no writes (a PostgreSQL standby, or
    /// a primary fenced read-only) checks that too.
    async fn ready(&self) -> Result<(), StoreError> {
        let probe = AccountId::parse("readyz-probe").expect("a constant valid id");
        self.account(&probe).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::StoreError;

    #[test]
    fn a_cause_is_kept_as_the_source_and_left_out_of_the_message() {
        let cause = std::io::Error::other("disk on fire");
        let error = StoreError::unavailable("cannot write").with_source(cause);
        assert_eq!(error.to_string(), "store unavailable: cannot write");
        assert_eq!(error.detail(), "cannot write");
        let source = error.source().expect("the cause is the source");
        assert_eq!(source.to_string(), "disk on fire");
        assert!(StoreError::corrupt("bad row").source().is_none());
        // A batch answers each of its requests with a copy of its one failure, cause included.
        let copy = error.clone();
        assert_eq!(copy.source().map(ToString::to_string), Some("disk on fire".to_owned()));
    }
}
