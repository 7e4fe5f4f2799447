//! An in-process [`LedgerStore`], [`RunStore`] and [`JobStore`]: one mutex around plain maps.
//!
//! It serves tests that need a store but not a database, and it is the simplest correct shape of
//! what the SQL adapters do: [`protocol::decide`] on its maps, then write the [`Writes`] back;
//! for runs, check the thread's owner and its running run, then insert; for jobs, check the
//! version (and the one retry per source), let the ledger decide, and write both or neither, all
//! under the one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ledger::{
    AccountId, AccountState, Amount, Entry, Grant, GrantKind, Hold, HoldId, HoldState, Reference, StoredAccount,
    Timestamp,
};

use tokio::sync::broadcast;

use crate::ids::{ArtifactId, JobId, RunId, ThreadId};
use crate::jobs::{self, JobRecord, JobStatus, JobStore, JobWrite, JobWriteRefusal, JobWritten, JOBS_LIST_MAX};
use crate::keys::{self, KeyUse, KeyedRun, RecordedResponse};
use crate::protocol::{self, Decided, PendingHolds, Writes};
use crate::runs::{
    ending_run, Artifact, CreateRunRefusal, HoldResolution, InstanceLease, RunEndWritten, RunEventsWrite, RunRecord,
    RunSettle, RunSignal, RunState, RunStore, StoredFrame, RUN_EVENTS_PAGE_MAX, RUN_SIGNALS_CAPACITY,
};
use crate::{AccountView, Clock, Executed, Idempotency, LedgerStore, Request, StoreError, SweepReport, VerifyReport};

#[derive(Default)]
struct Inner {
    /// Row and live grants per account (no holds: see `pending`).
    accounts: HashMap<AccountId, AccountState>,
    /// Every hold ever created, as last written.
    holds: HashMap<HoldId, Hold>,
    /// Each account's pending holds by expiry: the SQL stores' index on pending holds by
    /// (account, expiry), so the due ones are found without looking at the rest.
    pending: HashMap<AccountId, BTreeSet<(Timestamp, HoldId)>>,
    /// The account of every grant id ever written: ids are unique across accounts, as the SQL
    /// stores' primary keys make them.
    grant_accounts: HashMap<ledger::GrantId, AccountId>,
    /// Every grant ever written, as last written, by (account, id): the grants table.
    grants: BTreeMap<(AccountId, ledger::GrantId), ledger::Grant>,
    /// Every grant with a reference, by (account, kind, reference).
    references: HashMap<(AccountId, &'static str, Reference), ledger::Grant>,
    journal: Vec<Entry>,
    /// key → (fingerprint, encoded result, recorded at µs)
    idempotency: HashMap<String, (String, String, i64)>,
    threads: HashMap<ThreadId, Thread>,
    runs: HashMap<RunId, RunRecord>,
    /// Runs whose cancel was requested, and when first.
    cancel_requests: HashMap<RunId, Timestamp>,
    /// Stored frames by run and seq (ordered, so a run's frames read as a range).
    events: BTreeMap<(RunId, u64), StoredFrame>,
    artifacts: HashMap<ArtifactId, Artifact>,
    jobs: HashMap<JobId, JobRecord>,
    /// retry_source_job_id → the id of its retry: the unique index of the SQL stores.
    retries: HashMap<JobId, JobId>,
    /// Instance leases by instance id.
    instances: HashMap<String, InstanceLease>,
    /// The event outbox, in seq order, and the seq the next event gets.
    outbox: Vec<crate::events::StoredEvent>,
    outbox_next_seq: u64,
    /// Plans by id (ordered: listed in id order).
    plans: BTreeMap<ledger::PlanId, crate::plans::Plan>,
    /// Webhook endpoints by id, and their deliveries by (endpoint, event seq).
    webhook_endpoints: BTreeMap<crate::EndpointId, crate::webhooks::Endpoint>,
    deliveries: BTreeMap<(crate::EndpointId, u64), MemoryDelivery>,
    /// Gateway keys in creation order, and the calls made with them.
    api_keys: Vec<crate::api_keys::ApiKey>,
    gateway_calls: Vec<crate::api_keys::GatewayCall>,
}

/// A webhook delivery as the SQL stores' `webhook_deliveries` row keeps it.
struct MemoryDelivery {
    state: DeliveryState,
    attempts: u32,
    next_attempt_at: Timestamp,
    lease_owner: Option<String>,
    created_at: Timestamp,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

struct Thread {
    account_id: AccountId,
    /// Its runs' ids; the position is the turn index.
    run_ids: Vec<RunId>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    idempotency_retention_seconds: u64,
    /// One process holds the whole store: its own writes are every signal there is.
    signals: broadcast::Sender<RunSignal>,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>, idempotency_retention_seconds: u64) -> MemoryStore {
        let (signals, _) = broadcast::channel(RUN_SIGNALS_CAPACITY);
        MemoryStore { inner: Mutex::new(Inner::default()), clock, idempotency_retention_seconds, signals }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held may have left the maps half-written: stop, as the
        // ledger's assertions do, rather than serve them.
        self.inner.lock().expect("memory store lock poisoned")
    }
}

impl Inner {
    /// The thread's running run other than `except`, if any.
    fn running_run(&self, thread_id: &ThreadId, except: Option<&RunId>) -> Option<&RunRecord> {
        let thread = self.threads.get(thread_id)?;
        thread
            .run_ids
            .iter()
            .filter(|run_id| Some(*run_id) != except)
            .filter_map(|run_id| self.runs.get(run_id))
            .find(|run| run.state == RunState::Running)
    }

    /// The `(fingerprint, result)` recorded for a key.
    fn key_record(&self, key: &str) -> Option<(&str, &str)> {
        self.idempotency.get(key).map(|(fingerprint, result, _)| (fingerprint.as_str(), result.as_str()))
    }

    /// Overwrites the mutable fields of a stored run; false when there is no such run.
    fn update_run(&mut self, run: &RunRecord) -> Result<bool, StoreError> {
        let Some(thread_id) = self.runs.get(&run.run_id).map(|stored| stored.thread_id.clone()) else {
            return Ok(false);
        };
        if run.state == RunState::Running {
            if let Some(running) = self.running_run(&thread_id, Some(&run.run_id)) {
                return Err(StoreError::corrupt(format!(
                    "run {} cannot run while run {} of its thread runs",
                    run.run_id, running.run_id
                )));
            }
        }
        let Some(stored) = self.runs.get_mut(&run.run_id) else { return Ok(false) };
        stored.state = run.state;
        stored.hold_id = run.hold_id.clone();
        stored.hold_resolution = run.hold_resolution;
        stored.updated_at = run.updated_at;
        stored.data = run.data.clone();
        Ok(true)
    }

    /// Idempotency first, then assemble and decide; writes nothing, so a caller may still drop the
    /// decision (a job write whose ledger request was rejected).
    fn decide(&self, request: &Request, now: Timestamp) -> Result<Decided, StoreError> {
        protocol::decide(&mut &*self, request, now)
    }

    /// Writes what the protocol decided: the changed grants and holds, the entries, the
    /// idempotency records, and the account's state to keep.
    ///
    /// A grant or hold id that already belongs to another account is refused before anything is
    /// written, as the SQL stores refuse it: ids are the service's (UUIDv7), never reused.
    fn store(&mut self, writes: Writes, now: Timestamp) -> Result<(), StoreError> {
        let taken = |owner: Option<&AccountId>, account_id: &AccountId| owner.is_some_and(|owner| owner != account_id);
        if let Some(grant) =
            writes.grants().find(|grant| taken(self.grant_accounts.get(&grant.grant_id), &grant.account_id))
        {
            return Err(StoreError::corrupt(format!("grant id {} already belongs to another account", grant.grant_id)));
        }
        if let Some(hold) = writes
            .holds()
            .find(|hold| taken(self.holds.get(&hold.hold_id).map(|held| &held.account_id), &hold.account_id))
        {
            return Err(StoreError::corrupt(format!("hold id {} already belongs to another account", hold.hold_id)));
        }
        for grant in writes.grants() {
            self.grant_accounts.insert(grant.grant_id.clone(), grant.account_id.clone());
            self.grants.insert((grant.account_id.clone(), grant.grant_id.clone()), grant.clone());
            if let Some(reference) = grant.reference.clone() {
                self.references.insert((grant.account_id.clone(), grant.kind.as_str(), reference), grant.clone());
            }
        }
        for hold in writes.holds() {
            let pending = self.pending.entry(hold.account_id.clone()).or_default();
            if let Some(before) = self.holds.insert(hold.hold_id.clone(), hold.clone()) {
                pending.remove(&(before.expires_at, before.hold_id));
            }
            if hold.state == HoldState::Pending {
                pending.insert((hold.expires_at, hold.hold_id.clone()));
            }
        }
        for entry in writes.entries() {
            let seq = self.journal.len() as u64 + 1;
            self.journal.push(Entry { seq, ..entry.clone() });
        }
        // Nothing below can fail: the writes are as good as committed.
        let mut credits = crate::observe::Credits::default();
        credits.add(&writes);
        credits.committed();
        for event in writes.events() {
            self.append_event(event, now);
        }
        for record in writes.records() {
            let recorded = (record.fingerprint.clone(), record.result.clone(), now.micros());
            self.idempotency.insert(record.key.clone(), recorded);
        }
        if let Some(state) = writes.into_cached() {
            self.accounts.insert(state.account_id.clone(), state);
        }
        Ok(())
    }

    /// Records one attempt's outcome (see `LedgerStore::finish_webhook_deliveries`).
    fn finish_delivery(&mut self, finish: &crate::webhooks::DeliveryFinish) -> crate::webhooks::Finished {
        use crate::webhooks::{DeliveryOutcome, Finished};
        let inner = self;
        let Some(delivery) = inner.deliveries.get_mut(&(finish.endpoint_id.clone(), finish.event_seq)) else {
            return Finished::LeaseLost;
        };
        let ours = delivery.state == DeliveryState::Pending
            && delivery.attempts == finish.attempt
            && delivery.lease_owner.as_deref() == Some(finish.owner.as_str());
        if !ours {
            return Finished::LeaseLost;
        }
        delivery.lease_owner = None;
        let Some(endpoint) = inner.webhook_endpoints.get_mut(&finish.endpoint_id) else {
            return Finished::LeaseLost;
        };
        match &finish.outcome {
            DeliveryOutcome::Delivered => {
                delivery.state = DeliveryState::Delivered;
                endpoint.failing_since = None;
                Finished::Recorded { endpoint_disabled: false }
            }
            DeliveryOutcome::Retry { at, .. } => {
                delivery.next_attempt_at = *at;
                let was_enabled = endpoint.disabled.is_none();
                *endpoint = endpoint.failed(finish.now);
                Finished::Recorded { endpoint_disabled: was_enabled && endpoint.disabled.is_some() }
            }
            DeliveryOutcome::GaveUp { .. } => {
                delivery.state = DeliveryState::Failed;
                let was_enabled = endpoint.disabled.is_none();
                *endpoint = endpoint.failed(finish.now);
                Finished::Recorded { endpoint_disabled: was_enabled && endpoint.disabled.is_some() }
            }
        }
    }

    /// Appends an event to the outbox (under the lock of the write that causes it).
    fn append_event(&mut self, event: crate::events::NewEvent, now: Timestamp) {
        self.outbox_next_seq += 1;
        let seq = self.outbox_next_seq;
        self.outbox.push(crate::events::StoredEvent { seq, position: u128::from(seq), event, created_at: now });
    }

    /// The event of a run's final record, if this write ends a running run (a retried final
    /// write finds it ended and adds none).
    fn run_end_event(&self, run: &RunRecord) -> Option<crate::events::NewEvent> {
        let running = self.runs.get(&run.run_id).is_some_and(|stored| stored.state == RunState::Running);
        crate::events::run_event(run).filter(|_| running)
    }

    /// The account's pending holds that `pending_holds` includes, in expiry order: O(due).
    fn due_holds(&self, account_id: &AccountId, pending_holds: PendingHolds) -> Vec<Hold> {
        let Some(pending) = self.pending.get(account_id) else { return Vec::new() };
        pending
            .iter()
            .take_while(|(expires_at, _)| pending_holds.includes(*expires_at))
            .map(|(_, hold_id)| self.holds.get(hold_id).expect("an indexed hold is stored").clone())
            .collect()
    }

    /// The account's base state as [`protocol::Reads::account`] gives it.
    fn base_state(&self, account_id: &AccountId, pending_holds: PendingHolds) -> Option<AccountState> {
        let mut state = self.accounts.get(account_id)?.clone();
        state.holds = self.due_holds(account_id, pending_holds);
        let PendingHolds::DueAt(now) = pending_holds;
        // The SQL stores load only the allowances that have not ended.
        state.allowances.retain(|allowance| !allowance.has_ended_at(now));
        Some(state)
    }
}

/// The memory store's reads for [`protocol::decide`]: its maps, under the one lock.
impl protocol::Reads for &Inner {
    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self.idempotency.get(key).map(|(fingerprint, result, _)| (fingerprint.clone(), result.clone())))
    }

    fn hold_account(&mut self, hold_id: &HoldId) -> Result<Option<AccountId>, StoreError> {
        Ok(self.holds.get(hold_id).map(|hold| hold.account_id.clone()))
    }

    fn account(
        &mut self,
        account_id: &AccountId,
        pending_holds: PendingHolds,
    ) -> Result<Option<AccountState>, StoreError> {
        Ok(self.base_state(account_id, pending_holds))
    }

    fn hold(&mut self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        Ok(self.holds.get(hold_id).cloned())
    }

    fn grant_by_reference(
        &mut self,
        account_id: &AccountId,
        kind: GrantKind,
        reference: &Reference,
    ) -> Result<Option<Grant>, StoreError> {
        Ok(self.references.get(&(account_id.clone(), kind.as_str(), reference.clone())).cloned())
    }
}

#[async_trait]
impl LedgerStore for MemoryStore {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let executed = match inner.decide(&request, now)? {
            Decided::Answered(executed) => executed,
            Decided::Fresh(result, writes) => {
                inner.store(*writes, now)?;
                Executed::Fresh(result)
            }
        };
        crate::observe::command(request.command.name(), &executed);
        Ok(executed)
    }

    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock();
        Ok(inner.base_state(account_id, PendingHolds::DueAt(now)).map(|state| AccountView::at(&state, now)))
    }

    async fn hold(&self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        let inner = self.lock();
        Ok(inner.holds.get(hold_id).map(|hold| ledger::view_hold(hold, self.clock.now())))
    }

    async fn pending_holds(&self, account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut holds: Vec<Hold> = inner
            .pending
            .get(account_id)
            .into_iter()
            .flatten()
            .filter_map(|(_, hold_id)| inner.holds.get(hold_id))
            .filter(|hold| hold.is_active_at(now))
            .cloned()
            .collect();
        holds.sort_by_key(|hold| (hold.created_at, hold.hold_id.clone()));
        Ok(holds)
    }

    async fn holds(
        &self,
        account_id: &AccountId,
        state: HoldState,
        after: Option<&HoldId>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut holds: Vec<Hold> = inner
            .holds
            .values()
            .filter(|hold| &hold.account_id == account_id && after.is_none_or(|after| &hold.hold_id > after))
            .map(|hold| ledger::view_hold(hold, now))
            .filter(|hold| hold.state == state)
            .collect();
        holds.sort_by(|a, b| a.hold_id.cmp(&b.hold_id));
        holds.truncate(limit.min(crate::HOLDS_PAGE_MAX) as usize);
        Ok(holds)
    }

    async fn entries(&self, account_id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<Entry>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .journal
            .iter()
            .filter(|entry| &entry.account_id == account_id && entry.seq > after_seq)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn sweep(&self, accounts_max: u32) -> Result<SweepReport, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let due: Vec<AccountId> = inner
            .accounts
            .values()
            .filter(|state| {
                let hold_due = inner
                    .pending
                    .get(&state.account_id)
                    .and_then(BTreeSet::first)
                    .is_some_and(|(expires_at, _)| *expires_at <= now);
                let allowance_due =
                    state.allowances.iter().any(|allowance| allowance.next_due_at.is_some_and(|next| next <= now));
                hold_due
                    || allowance_due
                    || state.grants.iter().any(|grant| grant.is_expired_at(now) && !grant.free.is_zero())
            })
            .map(|state| state.account_id.clone())
            .take(accounts_max as usize)
            .collect();
        let mut report = SweepReport::default();
        for account_id in due {
            let writes = protocol::sweep(&mut &*inner, &account_id, now)?;
            report.accounts += 1;
            report.entries += writes.entries().len() as u64;
            inner.store(writes, now)?;
        }
        let retention_micros = i64::try_from(self.idempotency_retention_seconds).unwrap_or(i64::MAX / 2) * 1_000_000;
        let before = inner.idempotency.len();
        inner.idempotency.retain(|_, (_, _, at)| now.micros() - *at < retention_micros);
        let events_cutoff = now.plus_seconds(0).micros().saturating_sub(
            i64::try_from(crate::events::EVENTS_RETENTION_SECONDS).unwrap_or(i64::MAX).saturating_mul(1_000_000),
        );
        inner.outbox.retain(|event| event.created_at.micros() > events_cutoff);
        inner.deliveries.retain(|_, delivery| delivery.created_at.micros() > events_cutoff);
        report.idempotency_keys_deleted = (before - inner.idempotency.len()) as u64;
        Ok(report)
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let inner = self.lock();
        let mut report = VerifyReport::default();
        let mut journals: HashMap<&AccountId, Vec<Entry>> = HashMap::new();
        for entry in &inner.journal {
            journals.entry(&entry.account_id).or_default().push(entry.clone());
        }
        for (account_id, state) in &inner.accounts {
            let holds: Vec<Hold> =
                inner.holds.values().filter(|hold| &hold.account_id == account_id).cloned().collect();
            let stored = StoredAccount {
                account_id: account_id.clone(),
                totals: state.totals,
                free: Amount::sum(state.grants.iter().map(|grant| grant.free)),
                held: state.held,
                pinned: state
                    .grants
                    .iter()
                    .filter(|grant| !grant.pinned.is_zero())
                    .map(|grant| (grant.grant_id.clone(), grant.pinned))
                    .collect(),
                holds,
            };
            let entries = journals.remove(account_id).unwrap_or_default();
            report.accounts += 1;
            report.entries += entries.len() as u64;
            report.holds += stored.holds.len() as u64;
            report.violations.extend(ledger::verify_account(&entries, &stored));
        }
        Ok(report)
    }

    async fn events(&self, after: u128, limit: u32) -> Result<Vec<crate::events::StoredEvent>, StoreError> {
        let inner = self.lock();
        let limit = limit.min(crate::events::EVENTS_PAGE_MAX) as usize;
        Ok(inner.outbox.iter().filter(|event| event.position > after).take(limit).cloned().collect())
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: &crate::webhooks::Endpoint,
    ) -> Result<crate::webhooks::Endpoint, StoreError> {
        let mut inner = self.lock();
        let position = inner.outbox.last().map_or(u128::from(inner.outbox_next_seq), |event| event.position);
        let endpoint = crate::webhooks::Endpoint { position, ..endpoint.clone() };
        inner.webhook_endpoints.insert(endpoint.endpoint_id.clone(), endpoint.clone());
        Ok(endpoint)
    }

    async fn webhook_endpoints(&self) -> Result<Vec<crate::webhooks::Endpoint>, StoreError> {
        Ok(self.lock().webhook_endpoints.values().take(crate::webhooks::ENDPOINTS_MAX).cloned().collect())
    }

    async fn change_webhook_endpoint(
        &self,
        endpoint_id: &crate::EndpointId,
        change: &crate::webhooks::EndpointChange,
        now: Timestamp,
    ) -> Result<Option<crate::webhooks::Endpoint>, StoreError> {
        let mut inner = self.lock();
        let Some(endpoint) = inner.webhook_endpoints.get_mut(endpoint_id) else { return Ok(None) };
        *endpoint = endpoint.changed(change, now);
        Ok(Some(endpoint.clone()))
    }

    async fn fan_out_webhook_events(&self, fan_out: &crate::webhooks::FanOut) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(endpoint) = inner.webhook_endpoints.get_mut(&fan_out.endpoint_id) else { return Ok(false) };
        if endpoint.position != fan_out.from {
            return Ok(false);
        }
        endpoint.position = fan_out.to;
        for seq in &fan_out.event_seqs {
            inner.deliveries.entry((fan_out.endpoint_id.clone(), *seq)).or_insert(MemoryDelivery {
                state: DeliveryState::Pending,
                attempts: 0,
                next_attempt_at: fan_out.now,
                lease_owner: None,
                created_at: fan_out.now,
            });
        }
        Ok(true)
    }

    async fn claim_webhook_deliveries(
        &self,
        claim: &crate::webhooks::DeliveryClaim,
    ) -> Result<Vec<crate::webhooks::ClaimedDelivery>, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let mut due: Vec<(Timestamp, crate::EndpointId, u64)> = inner
            .deliveries
            .iter()
            .filter(|((endpoint_id, _), delivery)| {
                delivery.state == DeliveryState::Pending
                    && delivery.next_attempt_at <= claim.now
                    && claim.endpoints.contains(endpoint_id)
            })
            .map(|((endpoint_id, seq), delivery)| (delivery.next_attempt_at, endpoint_id.clone(), *seq))
            .collect();
        due.sort();
        let mut claimed = Vec::new();
        for (_, endpoint_id, seq) in due {
            if claimed.len() >= claim.limit.min(crate::webhooks::CLAIM_MAX) as usize {
                break;
            }
            // The SQL stores join the outbox: a delivery whose event was forgotten is not sent.
            let Some(event) = inner.outbox.iter().find(|event| event.seq == seq).cloned() else { continue };
            let Some(delivery) = inner.deliveries.get_mut(&(endpoint_id.clone(), seq)) else { continue };
            delivery.attempts += 1;
            delivery.next_attempt_at = claim.lease_until;
            delivery.lease_owner = Some(claim.owner.clone());
            claimed.push(crate::webhooks::ClaimedDelivery {
                endpoint_id,
                event,
                attempt: delivery.attempts,
                created_at: delivery.created_at,
            });
        }
        Ok(claimed)
    }

    async fn finish_webhook_deliveries(
        &self,
        finishes: &[crate::webhooks::DeliveryFinish],
    ) -> Result<Vec<crate::webhooks::Finished>, StoreError> {
        let mut guard = self.lock();
        Ok(finishes.iter().map(|finish| guard.finish_delivery(finish)).collect())
    }

    async fn replay_webhook_events(
        &self,
        endpoint_id: &crate::EndpointId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(endpoint) = inner.webhook_endpoints.get(endpoint_id) else { return Ok(None) };
        let seqs: Vec<u64> = inner
            .outbox
            .iter()
            .filter(|event| {
                event.created_at >= since
                    && event.position <= endpoint.position
                    && endpoint.wants(event.event.event_type)
            })
            .take(crate::webhooks::REPLAY_MAX as usize)
            .map(|event| event.seq)
            .collect();
        for seq in &seqs {
            inner.deliveries.insert(
                (endpoint_id.clone(), *seq),
                MemoryDelivery {
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    lease_owner: None,
                    created_at: now,
                },
            );
        }
        Ok(Some(seqs.len() as u64))
    }

    async fn create_api_key(
        &self,
        key: &crate::api_keys::ApiKey,
    ) -> Result<crate::api_keys::ApiKeyCreated, StoreError> {
        let mut inner = self.lock();
        let owned = inner.api_keys.iter().filter(|stored| stored.account_id == key.account_id).count();
        if owned >= crate::api_keys::KEYS_PER_ACCOUNT_MAX {
            return Ok(crate::api_keys::ApiKeyCreated::Limit);
        }
        inner.api_keys.push(key.clone());
        Ok(crate::api_keys::ApiKeyCreated::Created(key.clone()))
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<crate::api_keys::ApiKey>, StoreError> {
        Ok(self.lock().api_keys.iter().find(|key| key.hash == hash).cloned())
    }

    async fn api_keys(&self, account_id: &AccountId) -> Result<Vec<crate::api_keys::ApiKey>, StoreError> {
        Ok(self.lock().api_keys.iter().filter(|key| &key.account_id == account_id).cloned().collect())
    }

    async fn revoke_api_key(
        &self,
        account_id: &AccountId,
        key_id: &crate::ApiKeyId,
        now: Timestamp,
    ) -> Result<Option<crate::api_keys::ApiKey>, StoreError> {
        let mut inner = self.lock();
        let Some(key) = inner.api_keys.iter_mut().find(|key| &key.account_id == account_id && &key.key_id == key_id)
        else {
            return Ok(None);
        };
        key.revoked_at.get_or_insert(now);
        Ok(Some(key.clone()))
    }

    async fn record_gateway_call(&self, call: &crate::api_keys::GatewayCall) -> Result<(), StoreError> {
        self.lock().gateway_calls.push(call.clone());
        Ok(())
    }

    async fn gateway_usage(
        &self,
        account_id: &AccountId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<crate::api_keys::UsageRow>, StoreError> {
        let inner = self.lock();
        let calls: Vec<_> = inner
            .gateway_calls
            .iter()
            .filter(|call| &call.account_id == account_id && call.at >= from && call.at < to)
            .cloned()
            .collect();
        let mut rows = crate::api_keys::usage_rows(&calls);
        rows.truncate(crate::api_keys::USAGE_ROWS_MAX as usize);
        Ok(rows)
    }

    async fn key_spent_since(&self, key_id: &crate::ApiKeyId, since: Timestamp) -> Result<Amount, StoreError> {
        let inner = self.lock();
        let spent =
            inner.gateway_calls.iter().filter(|call| &call.key_id == key_id && call.at >= since).map(|call| call.cost);
        Ok(Amount::sum(spent))
    }

    async fn put_plan(&self, plan: &crate::plans::Plan) -> Result<crate::plans::PlanPut, StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner.plans.get(&plan.plan_id) {
            return Ok(crate::plans::PlanPut::Exists(existing.clone()));
        }
        inner.plans.insert(plan.plan_id.clone(), plan.clone());
        Ok(crate::plans::PlanPut::Created(plan.clone()))
    }

    async fn plan(&self, plan_id: &ledger::PlanId) -> Result<Option<crate::plans::Plan>, StoreError> {
        Ok(self.lock().plans.get(plan_id).cloned())
    }

    async fn plans(&self, plans_max: u32) -> Result<Vec<crate::plans::Plan>, StoreError> {
        Ok(self.lock().plans.values().take(plans_max as usize).cloned().collect())
    }

    async fn filtered_entries(
        &self,
        account_id: &AccountId,
        filter: &crate::EntryFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .journal
            .iter()
            .filter(|entry| &entry.account_id == account_id && entry.seq > after_seq && filter.admits(entry))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn grant(&self, grant_id: &ledger::GrantId) -> Result<Option<ledger::Grant>, StoreError> {
        let inner = self.lock();
        let Some(account_id) = inner.grant_accounts.get(grant_id) else { return Ok(None) };
        Ok(inner.grants.get(&(account_id.clone(), grant_id.clone())).cloned())
    }

    async fn grants(
        &self,
        account_id: &AccountId,
        state: crate::GrantListState,
        after: Option<&ledger::GrantId>,
        limit: u32,
    ) -> Result<Vec<ledger::Grant>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .grants
            // "-" is the smallest id there is (ids are [A-Za-z0-9._-]).
            .range((account_id.clone(), ledger::GrantId::parse("-").expect("a valid id"))..)
            .take_while(|((owner, _), _)| owner == account_id)
            .map(|(_, grant)| grant)
            .filter(|grant| after.is_none_or(|after| &grant.grant_id > after) && state.admits(grant))
            .take(limit.min(crate::GRANTS_PAGE_MAX) as usize)
            .cloned()
            .collect())
    }

    async fn account_ids(
        &self,
        prefix: &str,
        after: Option<&AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, StoreError> {
        let inner = self.lock();
        let mut ids: Vec<&AccountId> = inner
            .accounts
            .keys()
            .filter(|id| id.as_str().starts_with(prefix) && after.is_none_or(|after| *id > after))
            .collect();
        ids.sort();
        Ok(ids.into_iter().take(limit.min(crate::ACCOUNTS_PAGE_MAX) as usize).cloned().collect())
    }

    async fn daily_credits(&self, from: Timestamp, to: Timestamp) -> Result<Vec<crate::DayCredits>, StoreError> {
        let inner = self.lock();
        let mut days: std::collections::BTreeMap<(i64, &'static str), (ledger::EntryKind, u64)> = Default::default();
        for entry in inner.journal.iter().filter(|entry| entry.at >= from && entry.at < to) {
            let day = days.entry((crate::utc_day(entry.at), entry.kind.as_str())).or_insert((entry.kind, 0));
            day.1 += entry.amount.micros();
        }
        Ok(days
            .into_iter()
            .map(|((day, _), (kind, micros))| crate::DayCredits {
                day,
                kind,
                amount: ledger::Amount::from_micros(micros),
            })
            .collect())
    }

    async fn gauges(&self) -> Result<crate::StoreGauges, StoreError> {
        let inner = self.lock();
        let pending = inner.holds.values().filter(|hold| hold.state == HoldState::Pending);
        let (pending_holds, held) =
            pending.fold((0_u64, 0_u64), |(count, held), hold| (count + 1, held + hold.remaining.micros()));
        let queued = inner.jobs.values().filter(|job| job.status == JobStatus::Queued);
        Ok(crate::StoreGauges {
            pending_holds,
            held: ledger::Amount::from_micros(held),
            jobs_queued: queued.clone().count() as u64,
            jobs_running: inner.jobs.values().filter(|job| job.status == JobStatus::Running).count() as u64,
            oldest_queued_job_at: queued.map(|job| job.created_at).min(),
        })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn create_run_once(
        &self,
        run: &RunRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if let Some(idempotency) = idempotency {
            if let Some((fingerprint, result)) = inner.key_record(&idempotency.key) {
                return Ok(Err(CreateRunRefusal::KeyUsed(keys::keyed_run(
                    &idempotency.fingerprint,
                    fingerprint,
                    result,
                )?)));
            }
        }
        if let Some(thread) = inner.threads.get(&run.thread_id) {
            if thread.account_id != run.account_id {
                return Ok(Err(CreateRunRefusal::ThreadOfAnotherAccount));
            }
        }
        if let Some(running) = inner.running_run(&run.thread_id, None) {
            return Ok(Err(CreateRunRefusal::ThreadBusy { run_id: running.run_id.clone() }));
        }
        if inner.runs.contains_key(&run.run_id) {
            return Ok(Err(CreateRunRefusal::DuplicateRunId));
        }
        let thread = inner
            .threads
            .entry(run.thread_id.clone())
            .or_insert_with(|| Thread { account_id: run.account_id.clone(), run_ids: Vec::new() });
        let turn_index = u32::try_from(thread.run_ids.len())
            .map_err(|_| StoreError::corrupt(format!("thread {} has too many turns", run.thread_id)))?;
        thread.run_ids.push(run.run_id.clone());
        let stored = RunRecord { turn_index, state: RunState::Running, ..run.clone() };
        inner.runs.insert(stored.run_id.clone(), stored.clone());
        if let Some(idempotency) = idempotency {
            let (fingerprint, result) = keys::solve_record(&idempotency.fingerprint, &stored.run_id);
            inner.idempotency.insert(idempotency.key.clone(), (fingerprint, result, now.micros()));
        }
        Ok(Ok(stored))
    }

    async fn keyed_run(&self, idempotency: &Idempotency) -> Result<Option<KeyedRun>, StoreError> {
        let inner = self.lock();
        inner
            .key_record(&idempotency.key)
            .map(|(fingerprint, result)| keys::keyed_run(&idempotency.fingerprint, fingerprint, result))
            .transpose()
    }

    async fn update_run(&self, run: &RunRecord) -> Result<bool, StoreError> {
        self.lock().update_run(run)
    }

    async fn run(&self, run_id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.lock().runs.get(run_id).cloned())
    }

    async fn thread_account(&self, thread_id: &ThreadId) -> Result<Option<AccountId>, StoreError> {
        Ok(self.lock().threads.get(thread_id).map(|thread| thread.account_id.clone()))
    }

    async fn account_runs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &RunId)>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let inner = self.lock();
        let mut runs: Vec<&RunRecord> = inner
            .runs
            .values()
            .filter(|run| &run.account_id == account_id)
            .filter(|run| before.is_none_or(|(at, run_id)| (run.created_at, &run.run_id) < (at, run_id)))
            .collect();
        runs.sort_by(|a, b| (b.created_at, &b.run_id).cmp(&(a.created_at, &a.run_id)));
        Ok(runs.into_iter().take(limit.min(crate::runs::RUNS_PAGE_MAX) as usize).cloned().collect())
    }

    async fn thread_runs(
        &self,
        thread_id: &ThreadId,
        after_turn: Option<u32>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let inner = self.lock();
        let Some(thread) = inner.threads.get(thread_id) else { return Ok(Vec::new()) };
        Ok(thread
            .run_ids
            .iter()
            .filter_map(|run_id| inner.runs.get(run_id))
            .filter(|run| after_turn.is_none_or(|after| run.turn_index > after))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn runs_in_state(
        &self,
        state: RunState,
        instance_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let inner = self.lock();
        let mut runs: Vec<&RunRecord> = inner
            .runs
            .values()
            .filter(|run| run.state == state && instance_id.is_none_or(|instance| run.instance_id == instance))
            .collect();
        runs.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(runs.into_iter().take(limit as usize).cloned().collect())
    }

    async fn unresolved_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let inner = self.lock();
        let mut runs: Vec<&RunRecord> = inner
            .runs
            .values()
            .filter(|run| run.state.is_terminal() && run.hold_resolution == HoldResolution::Pending)
            .collect();
        runs.sort_by(|a, b| (a.updated_at, &a.run_id).cmp(&(b.updated_at, &b.run_id)));
        Ok(runs.into_iter().take(limit as usize).cloned().collect())
    }

    async fn orphaned_runs(
        &self,
        except_instance_id: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let inner = self.lock();
        let live = |instance_id: &str| inner.instances.get(instance_id).is_some_and(|lease| lease.lease_until > now);
        let mut runs: Vec<&RunRecord> = inner
            .runs
            .values()
            .filter(|run| {
                run.state == RunState::Running && run.instance_id != except_instance_id && !live(&run.instance_id)
            })
            .collect();
        runs.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(runs.into_iter().take(limit as usize).cloned().collect())
    }

    async fn renew_instance(
        &self,
        instance_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let lease = inner.instances.entry(instance_id.to_owned()).or_insert_with(|| InstanceLease {
            instance_id: instance_id.to_owned(),
            lease_until,
            started_at: now,
        });
        lease.lease_until = lease_until;
        Ok(())
    }

    async fn drop_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().instances.remove(instance_id).is_some())
    }

    async fn lapsed_instances(&self, now: Timestamp, limit: u32) -> Result<Vec<InstanceLease>, StoreError> {
        let inner = self.lock();
        let mut lapsed: Vec<&InstanceLease> =
            inner.instances.values().filter(|lease| lease.lease_until <= now).collect();
        lapsed.sort_by(|a, b| (a.lease_until, &a.instance_id).cmp(&(b.lease_until, &b.instance_id)));
        Ok(lapsed.into_iter().take(limit as usize).cloned().collect())
    }

    async fn put_artifact(&self, artifact: &Artifact) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.artifacts.contains_key(&artifact.artifact_id) {
            return Err(StoreError::corrupt(format!("artifact {} exists", artifact.artifact_id)));
        }
        inner.artifacts.insert(artifact.artifact_id.clone(), artifact.clone());
        Ok(())
    }

    async fn artifact(&self, artifact_id: &ArtifactId) -> Result<Option<Artifact>, StoreError> {
        Ok(self.lock().artifacts.get(artifact_id).cloned())
    }

    async fn write_run_events(&self, write: &RunEventsWrite) -> Result<bool, StoreError> {
        {
            let mut inner = self.lock();
            if let Some(run) = &write.run {
                let event = inner.run_end_event(run);
                if !inner.update_run(run)? {
                    return Ok(false);
                }
                if let Some(event) = event {
                    inner.append_event(event, self.clock.now());
                }
            }
            for frame in &write.frames {
                inner.events.entry((frame.run_id.clone(), frame.seq)).or_insert_with(|| frame.clone());
            }
            for key in &write.evicted {
                inner.events.remove(key);
            }
        }
        for run_id in write.runs_with_frames() {
            // No receiver is not an error: nobody follows.
            let _ = self.signals.send(RunSignal::Events(run_id));
        }
        Ok(true)
    }

    async fn write_run_end(&self, write: &RunEventsWrite, settle: &RunSettle) -> Result<RunEndWritten, StoreError> {
        let run = ending_run(write)?;
        let now = self.clock.now();
        let outcome = {
            let mut inner = self.lock();
            // Everything that can refuse is checked before anything is written.
            if !inner.runs.contains_key(&run.run_id) {
                return Ok(RunEndWritten::NoSuchRun);
            }
            let outcome = match inner.decide(&settle.request, now)? {
                Decided::Answered(Executed::Replayed(Ok(outcome))) if settle.expected.matches(&outcome) => outcome,
                Decided::Fresh(Ok(outcome), writes) if settle.expected.matches(&outcome) => {
                    inner.store(*writes, now)?;
                    outcome
                }
                Decided::Answered(executed) => return Ok(RunEndWritten::Refused(executed)),
                Decided::Fresh(result, _) => return Ok(RunEndWritten::Refused(Executed::Fresh(result))),
            };
            let event = inner.run_end_event(run);
            let updated = inner.update_run(run)?;
            assert!(updated, "the run was found under the same lock");
            if let Some(event) = event {
                inner.append_event(event, now);
            }
            for frame in &write.frames {
                inner.events.entry((frame.run_id.clone(), frame.seq)).or_insert_with(|| frame.clone());
            }
            for key in &write.evicted {
                inner.events.remove(key);
            }
            outcome
        };
        for run_id in write.runs_with_frames() {
            // No receiver is not an error: nobody follows.
            let _ = self.signals.send(RunSignal::Events(run_id));
        }
        Ok(RunEndWritten::Written(outcome))
    }

    async fn run_events(&self, run_id: &RunId, after: Option<u64>, limit: u32) -> Result<Vec<StoredFrame>, StoreError> {
        let inner = self.lock();
        let from = after.map_or(0, |after| after.saturating_add(1));
        let range = inner.events.range((run_id.clone(), from)..=(run_id.clone(), u64::MAX));
        Ok(range.take(limit.min(RUN_EVENTS_PAGE_MAX) as usize).map(|(_, frame)| frame.clone()).collect())
    }

    async fn last_run_event_seq(&self, run_id: &RunId) -> Result<Option<u64>, StoreError> {
        let inner = self.lock();
        Ok(inner.events.range((run_id.clone(), 0)..=(run_id.clone(), u64::MAX)).next_back().map(|((_, seq), _)| *seq))
    }

    async fn forget_run_events(&self, ended_before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let ended = |run_id: &RunId| {
            inner.runs.get(run_id).is_some_and(|run| run.state.is_terminal() && run.updated_at < ended_before)
        };
        let due: Vec<(RunId, u64)> =
            inner.events.keys().filter(|(run_id, _)| ended(run_id)).take(limit as usize).cloned().collect();
        for key in &due {
            inner.events.remove(key);
        }
        Ok(due.len() as u64)
    }

    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> Result<bool, StoreError> {
        {
            let mut inner = self.lock();
            if !inner.runs.get(run_id).is_some_and(|run| run.state == RunState::Running) {
                return Ok(false);
            }
            inner.cancel_requests.entry(run_id.clone()).or_insert(at);
        }
        let _ = self.signals.send(RunSignal::Cancel(run_id.clone()));
        Ok(true)
    }

    async fn cancel_requests(&self, instance_id: &str, limit: u32) -> Result<Vec<RunId>, StoreError> {
        let inner = self.lock();
        let mut runs: Vec<&RunRecord> = inner
            .cancel_requests
            .keys()
            .filter_map(|run_id| inner.runs.get(run_id))
            .filter(|run| run.state == RunState::Running && run.instance_id == instance_id)
            .collect();
        runs.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
        Ok(runs.into_iter().take(limit as usize).map(|run| run.run_id.clone()).collect())
    }

    async fn recorded_response(&self, key: &str) -> Result<Option<KeyUse>, StoreError> {
        let inner = self.lock();
        inner.key_record(key).map(|(fingerprint, result)| keys::key_use(fingerprint, result)).transpose()
    }

    async fn record_response(&self, key: &str, response: &RecordedResponse) -> Result<KeyUse, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if let Some((fingerprint, result)) = inner.key_record(key) {
            return keys::key_use(fingerprint, result);
        }
        let (fingerprint, result) = keys::response_record(response);
        inner.idempotency.insert(key.to_owned(), (fingerprint, result, now.micros()));
        Ok(KeyUse::Response(response.clone()))
    }

    async fn run_signals(&self) -> broadcast::Receiver<RunSignal> {
        self.signals.subscribe()
    }
}

/// Whether [`JobStore::claim_job`] may take `job` at `now` (the SQL adapters' claim query).
fn claimable(job: &JobRecord, now: Timestamp, attempts_max: u32) -> bool {
    job.attempts < attempts_max
        && match job.status {
            JobStatus::Queued => job.run_after <= now,
            JobStatus::Running => job.lease_expires_at.is_some_and(|expiry| expiry <= now),
            _ => false,
        }
}

/// Whether [`JobStore::stuck_jobs`] lists `job` (the SQL adapters' stuck query). A running job
/// without a heartbeat counts from its last update; one without a lease has no live lease.
fn stuck(
    job: &JobRecord,
    heartbeat_before: Timestamp,
    queued_before: Timestamp,
    now: Timestamp,
    attempts_max: u32,
) -> bool {
    match job.status {
        JobStatus::Running => {
            job.heartbeat_at.unwrap_or(job.updated_at) < heartbeat_before
                || (job.lease_expires_at.is_none_or(|expiry| expiry <= now) && job.attempts >= attempts_max)
        }
        JobStatus::Queued => job.created_at < queued_before,
        _ => false,
    }
}

fn oldest_first(a: &&JobRecord, b: &&JobRecord) -> std::cmp::Ordering {
    (a.created_at, &a.job_id).cmp(&(b.created_at, &b.job_id))
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn write_job(&self, write: JobWrite) -> Result<Result<JobWritten, JobWriteRefusal>, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let JobWrite { job, expected_version, ledger } = write;
        let current = inner.jobs.get(&job.job_id).map(|stored| stored.version);
        let version = match expected_version {
            None if current.is_some() => return Ok(Err(JobWriteRefusal::DuplicateJobId)),
            None => 1,
            Some(expected) if current != Some(expected) => {
                return Ok(Err(JobWriteRefusal::VersionMismatch { current }));
            }
            // The SQL adapters keep versions in a BIGINT column.
            Some(expected) => expected
                .checked_add(1)
                .filter(|version| i64::try_from(*version).is_ok())
                .ok_or_else(|| StoreError::corrupt(format!("job {} version overflows", job.job_id)))?,
        };
        if let Some(source) = &job.retry_source_job_id {
            if inner.retries.get(source).is_some_and(|retry| *retry != job.job_id) {
                return Ok(Err(JobWriteRefusal::RetryAlreadyUsed));
            }
        }
        let outcome = match &ledger {
            None => None,
            Some(request) => match inner.decide(request, now)? {
                Decided::Answered(Executed::Conflict) => return Ok(Err(JobWriteRefusal::Ledger(None))),
                Decided::Answered(Executed::Replayed(result) | Executed::Fresh(result)) => match result {
                    Ok(outcome) => Some(outcome),
                    Err(rejection) => return Ok(Err(JobWriteRefusal::Ledger(Some(rejection)))),
                },
                Decided::Fresh(Err(rejection), _) => return Ok(Err(JobWriteRefusal::Ledger(Some(rejection)))),
                Decided::Fresh(Ok(outcome), writes) => {
                    inner.store(*writes, now)?;
                    Some(outcome)
                }
            },
        };
        let stored = JobRecord { version, ..job };
        let ended_before = inner.jobs.get(&stored.job_id).is_some_and(|old| old.status.is_terminal());
        if let Some(event) = crate::events::job_event(&stored).filter(|_| !ended_before) {
            inner.append_event(event, now);
        }
        if let Some(previous) = inner.jobs.get(&stored.job_id).and_then(|old| old.retry_source_job_id.clone()) {
            inner.retries.remove(&previous);
        }
        if let Some(source) = &stored.retry_source_job_id {
            inner.retries.insert(source.clone(), stored.job_id.clone());
        }
        inner.jobs.insert(stored.job_id.clone(), stored.clone());
        Ok(Ok(JobWritten { job: stored, ledger: outcome }))
    }

    async fn job(&self, job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(job_id).cloned())
    }

    async fn account_jobs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &JobId)>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let inner = self.lock();
        let mut jobs: Vec<&JobRecord> = inner
            .jobs
            .values()
            .filter(|job| &job.account_id == account_id)
            .filter(|job| before.is_none_or(|(at, job_id)| (job.created_at, &job.job_id) < (at, job_id)))
            .collect();
        jobs.sort_by(|a, b| (b.created_at, &b.job_id).cmp(&(a.created_at, &a.job_id)));
        Ok(jobs.into_iter().take(limit.min(JOBS_LIST_MAX) as usize).cloned().collect())
    }

    async fn thread_jobs(&self, thread_id: &ThreadId, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let inner = self.lock();
        let mut jobs: Vec<&JobRecord> = inner.jobs.values().filter(|job| &job.thread_id == thread_id).collect();
        jobs.sort_by(oldest_first);
        Ok(jobs.into_iter().take(limit.min(JOBS_LIST_MAX) as usize).cloned().collect())
    }

    async fn retry_of(&self, source_job_id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner.retries.get(source_job_id).and_then(|retry| inner.jobs.get(retry)).cloned())
    }

    async fn claim_job(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease_until: Timestamp,
        attempts_max: u32,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut inner = self.lock();
        let Some(oldest) = inner.jobs.values().filter(|job| claimable(job, now, attempts_max)).min_by(oldest_first)
        else {
            return Ok(None);
        };
        let version = oldest.version.saturating_add(1);
        let claimed = JobRecord { version, ..jobs::claimed(oldest, worker_id, now, lease_until) };
        inner.jobs.insert(claimed.job_id.clone(), claimed.clone());
        Ok(Some(claimed))
    }

    async fn stuck_jobs(
        &self,
        heartbeat_before: Timestamp,
        queued_before: Timestamp,
        now: Timestamp,
        attempts_max: u32,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let inner = self.lock();
        let mut jobs: Vec<&JobRecord> =
            inner.jobs.values().filter(|job| stuck(job, heartbeat_before, queued_before, now, attempts_max)).collect();
        jobs.sort_by(oldest_first);
        Ok(jobs.into_iter().take(limit.min(JOBS_LIST_MAX) as usize).cloned().collect())
    }
}
