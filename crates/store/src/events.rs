//! Events: what a change to the ledger means to a client (`hold.captured`, `grant.expired`, …),
//! written to an outbox **in the transaction of the change** — never lost, never recorded for a
//! change that rolled back. [`ledger_events`] is the one mapping from what the ledger decided
//! ([`protocol::Writes`]) to events; every store writes its result beside the journal entries.
//! Webhook deliveries and `GET /v1/events` read the outbox.
//!
//! An event's id is `evt_<outbox seq>`: the store assigns the seq when it writes the row, so ids
//! are unique, ordered by commit within one store, and the same on every delivery of the event.

use ledger::{AccountId, AccountState, Amount, Entry, EntryKind, GrantKind, Timestamp};
use serde_json::{json, Map, Value};

use crate::protocol::Writes;

/// Most events one page of `LedgerStore::events` returns.
pub const EVENTS_PAGE_MAX: u32 = 1_000;

/// How long the outbox keeps an event: longer than deliveries retry (3 days), so a replay within
/// a month finds it.
pub const EVENTS_RETENTION_SECONDS: u64 = 30 * 24 * 3600;

/// Every kind of event, with its wire name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    GrantCreated,
    GrantExpired,
    /// An operator voided what was left of a grant.
    GrantVoided,
    AllowanceGranted,
    HoldCreated,
    HoldCaptured,
    HoldReleased,
    HoldExpired,
    RefundCreated,
    /// Available credits fell below the account's low-balance threshold (once per crossing).
    BalanceLow,
    BalanceDepleted,
    RunSucceeded,
    /// A run that ended any other way: failed, canceled, or interrupted (its `state` says which).
    RunFailed,
    JobSucceeded,
    /// A video job that failed (refunded once, `refunded` says whether yet).
    JobFailed,
    JobCanceled,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::GrantCreated,
        EventType::GrantExpired,
        EventType::GrantVoided,
        EventType::AllowanceGranted,
        EventType::HoldCreated,
        EventType::HoldCaptured,
        EventType::HoldReleased,
        EventType::HoldExpired,
        EventType::RefundCreated,
        EventType::BalanceLow,
        EventType::BalanceDepleted,
        EventType::RunSucceeded,
        EventType::RunFailed,
        EventType::JobSucceeded,
        EventType::JobFailed,
        EventType::JobCanceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::GrantCreated => "grant.created",
            EventType::GrantExpired => "grant.expired",
            EventType::GrantVoided => "grant.voided",
            EventType::AllowanceGranted => "allowance.granted",
            EventType::HoldCreated => "hold.created",
            EventType::HoldCaptured => "hold.captured",
            EventType::HoldReleased => "hold.released",
            EventType::HoldExpired => "hold.expired",
            EventType::RefundCreated => "refund.created",
            EventType::BalanceLow => "balance.low",
            EventType::BalanceDepleted => "balance.depleted",
            EventType::RunSucceeded => "run.succeeded",
            EventType::RunFailed => "run.failed",
            EventType::JobSucceeded => "job.succeeded",
            EventType::JobFailed => "job.failed",
            EventType::JobCanceled => "job.canceled",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// An event to write: its type, the account it concerns, its payload (a JSON object, as text)
/// and when the change took effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub account_id: AccountId,
    pub data: String,
    pub at: Timestamp,
}

/// An event as the outbox keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The outbox row's number: unique, the event's id.
    pub seq: u64,
    /// Where the event is in the outbox's read order (what `after` pages from). Every event
    /// that becomes readable later has a larger position than every event read before it: on
    /// SQLite and in memory (one writer) it is the seq; on PostgreSQL, where transactions
    /// commit in another order than they took seqs, it is (transaction id, seq), read only below
    /// the oldest transaction still running.
    pub position: u128,
    pub event: NewEvent,
    /// When the outbox row was written (the transaction's `now`).
    pub created_at: Timestamp,
}

impl StoredEvent {
    /// `evt_<seq>`, the id clients and webhook receivers see.
    pub fn event_id(&self) -> String {
        format!("evt_{}", self.seq)
    }
}

/// Parses an event id (`evt_<seq>`) back into its seq.
pub fn parse_event_id(text: &str) -> Option<u64> {
    text.strip_prefix("evt_")?.parse().ok()
}

/// The balance figures right after an entry, as payload fields.
fn figures(entry: &Entry, data: &mut Map<String, Value>) {
    let available = entry.balance_after.minus(entry.held_after);
    data.insert("balance".to_owned(), json!(entry.balance_after.to_string()));
    data.insert("held".to_owned(), json!(entry.held_after.to_string()));
    data.insert("available".to_owned(), json!(available.to_string()));
}

fn event(event_type: EventType, entry: &Entry, amount: Amount, fields: Value) -> NewEvent {
    let mut data = Map::new();
    data.insert("account_id".to_owned(), json!(entry.account_id.as_str()));
    data.insert("amount".to_owned(), json!(amount.to_string()));
    if let Value::Object(fields) = fields {
        data.extend(fields);
    }
    figures(entry, &mut data);
    NewEvent { event_type, account_id: entry.account_id.clone(), data: Value::Object(data).to_string(), at: entry.at }
}

/// RFC 3339 in UTC, as payloads carry times.
pub fn rfc3339(at: Timestamp) -> String {
    jiff::Timestamp::from_microsecond(at.micros()).map_or_else(|_| at.micros().to_string(), |at| at.to_string())
}

fn text_or_null(text: Option<&str>) -> Value {
    text.map_or(Value::Null, |text| json!(text))
}

/// The events of what one batch of decisions changed, in journal order: one per grant, refund,
/// hold, capture (a final capture's released remainder and its overage are part of its
/// `hold.captured`), release, expiry and grant expiry; `balance.low` when a change takes the
/// available credits from at or above the account's threshold to below it, and
/// `balance.depleted` when it takes them from above zero to zero.
pub fn ledger_events(writes: &Writes) -> Vec<NewEvent> {
    let Some(state) = writes.state() else { return Vec::new() };
    let entries = writes.entries();
    let mut events = Vec::new();
    let mut index = 0;
    while index < entries.len() {
        let entry = &entries[index];
        let hold_id = entry.hold_id.as_ref().map(|hold_id| hold_id.as_str());
        let grant_id = entry.grant_id.as_ref().map(|grant_id| grant_id.as_str());
        let reference = entry.reference.as_ref().map(|reference| reference.as_str());
        let mut last = index;
        match entry.kind {
            EntryKind::Grant => {
                let kind = grant_kind(state, entry);
                let event_type = match kind {
                    Some(GrantKind::Allowance) => EventType::AllowanceGranted,
                    _ => EventType::GrantCreated,
                };
                let fields = json!({"grant_id": text_or_null(grant_id), "reference": text_or_null(reference),
                                    "expires_at": grant_expiry(state, entry)});
                events.push(event(event_type, entry, entry.amount, fields));
            }
            EntryKind::Refund => {
                let fields = json!({"grant_id": text_or_null(grant_id), "hold_id": text_or_null(hold_id),
                                    "reference": text_or_null(reference)});
                events.push(event(EventType::RefundCreated, entry, entry.amount, fields));
            }
            EntryKind::Hold => {
                let fields = json!({"hold_id": text_or_null(hold_id), "reference": text_or_null(reference)});
                events.push(event(EventType::HoldCreated, entry, entry.amount, fields));
            }
            EntryKind::Capture | EntryKind::Debit if hold_id.is_some() => {
                // One capture: its capture entry, its overage debit and (when final) the release
                // of what it did not capture, adjacent and of the same hold.
                let mut captured = entry.amount;
                let mut released = Amount::ZERO;
                while let Some(next) = entries.get(last + 1) {
                    let same_hold = next.hold_id == entry.hold_id;
                    match next.kind {
                        EntryKind::Debit if same_hold && entries[last].kind == EntryKind::Capture => {
                            captured = captured.plus(next.amount);
                        }
                        EntryKind::Release if same_hold => released = next.amount,
                        _ => break,
                    }
                    last += 1;
                    if next.kind == EntryKind::Release {
                        break;
                    }
                }
                let is_final = entries[last].kind == EntryKind::Release
                    || state
                        .hold(entry.hold_id.as_ref().expect("checked above"))
                        .is_some_and(|hold| hold.state == ledger::HoldState::Captured);
                let fields = json!({"hold_id": text_or_null(hold_id), "final": is_final,
                                    "released": released.to_string()});
                events.push(event(EventType::HoldCaptured, &entries[last], captured, fields));
            }
            EntryKind::Release => {
                let fields = json!({"hold_id": text_or_null(hold_id)});
                events.push(event(EventType::HoldReleased, entry, entry.amount, fields));
            }
            EntryKind::Expire => {
                let fields = json!({"hold_id": text_or_null(hold_id)});
                events.push(event(EventType::HoldExpired, entry, entry.amount, fields));
            }
            EntryKind::GrantExpired => {
                let fields = json!({"grant_id": text_or_null(grant_id)});
                events.push(event(EventType::GrantExpired, entry, entry.amount, fields));
            }
            EntryKind::Void => {
                let fields = json!({"grant_id": text_or_null(grant_id)});
                events.push(event(EventType::GrantVoided, entry, entry.amount, fields));
            }
            EntryKind::Capture | EntryKind::Debit | EntryKind::Extend => {}
        }
        // Low, then depleted: the group's last entry takes available below the threshold (or
        // to zero) from at or above it (from above zero) before the group. Each crossing is one
        // event; rising back above re-arms it, with no flag to keep.
        let before = if index == 0 { writes_before(writes) } else { Some(available(&entries[index - 1])) };
        let after = available(&entries[last]);
        if let (Some(threshold), Some(before)) = (state.low_balance_threshold, before) {
            if before >= threshold && after < threshold {
                let fields = json!({"threshold": threshold.to_string()});
                events.push(event(EventType::BalanceLow, &entries[last], Amount::ZERO, fields));
            }
        }
        if after.is_zero() && before.is_some_and(|before| !before.is_zero()) {
            events.push(event(EventType::BalanceDepleted, &entries[last], Amount::ZERO, json!({})));
        }
        index = last + 1;
    }
    events
}

/// The event of a run's record written as ended (`None` while it runs): stores call this where
/// they write a run's final record, in that transaction.
pub fn run_event(run: &crate::RunRecord) -> Option<NewEvent> {
    use crate::RunState;
    let event_type = match run.state {
        RunState::Running => return None,
        RunState::Succeeded => EventType::RunSucceeded,
        RunState::Failed | RunState::Canceled | RunState::Interrupted => EventType::RunFailed,
    };
    let data = json!({
        "account_id": run.account_id.as_str(),
        "run_id": run.run_id.as_str(),
        "thread_id": run.thread_id.as_str(),
        "state": run.state.as_str(),
        "hold_id": text_or_null(run.hold_id.as_ref().map(|hold_id| hold_id.as_str())),
    });
    Some(NewEvent { event_type, account_id: run.account_id.clone(), data: data.to_string(), at: run.updated_at })
}

/// The event of a job written in a terminal status (`None` before): stores call this where
/// they write the job, in that transaction. A job reaches a terminal status once.
pub fn job_event(job: &crate::JobRecord) -> Option<NewEvent> {
    use crate::JobStatus;
    let event_type = match job.status {
        JobStatus::Succeeded => EventType::JobSucceeded,
        JobStatus::Failed => EventType::JobFailed,
        JobStatus::Canceled => EventType::JobCanceled,
        JobStatus::Queued | JobStatus::Running => return None,
    };
    let data = json!({
        "account_id": job.account_id.as_str(),
        "job_id": job.job_id.as_str(),
        "run_id": job.run_id.as_str(),
        "thread_id": job.thread_id.as_str(),
        "status": job.status.as_str(),
        "price": job.price.to_string(),
        "refunded": job.refund_applied_at.is_some(),
        "error_code": text_or_null(job.error_code.as_deref()),
    });
    Some(NewEvent { event_type, account_id: job.account_id.clone(), data: data.to_string(), at: job.updated_at })
}

fn available(entry: &Entry) -> Amount {
    entry.balance_after.minus(entry.held_after)
}

/// The available credits before the batch's first entry, from the first entry itself.
fn writes_before(writes: &Writes) -> Option<Amount> {
    let first = writes.entries().first()?;
    let (balance, held) = first.kind.deltas(first.amount);
    let balance = i128::from(first.balance_after.micros()) - balance;
    let held = i128::from(first.held_after.micros()) - held;
    u64::try_from(balance - held).ok().map(Amount::from_micros)
}

fn grant_kind(state: &AccountState, entry: &Entry) -> Option<GrantKind> {
    entry.grant_id.as_ref().and_then(|grant_id| state.grant(grant_id)).map(|grant| grant.kind)
}

fn grant_expiry(state: &AccountState, entry: &Entry) -> Value {
    let expires_at =
        entry.grant_id.as_ref().and_then(|grant_id| state.grant(grant_id)).and_then(|grant| grant.expires_at);
    expires_at.map_or(Value::Null, |at| json!(rfc3339(at)))
}
