//! Webhook endpoints and their deliveries: what the dispatcher (`crates/webhooks`) reads and
//! writes through [`crate::LedgerStore`].
//!
//! The outbox (`crate::events`) is written in the transaction of each change; delivering it is
//! a second, independent step, so a slow or dead receiver never holds up a ledger command:
//!
//! 1. **Fan-out.** Each endpoint keeps the outbox position it has been fanned out to. A
//!    dispatcher reads the outbox after it and records one delivery per wanted event
//!    ([`FanOut`]): the deliveries are inserted and the position moved in one transaction, and
//!    only if the position is still where the dispatcher read it (a compare-and-set), so two
//!    instances fanning out at once record each delivery once.
//! 2. **Claim.** A dispatcher claims due deliveries of enabled endpoints ([`DeliveryClaim`]): a claim moves the
//!    delivery's next attempt to the end of the lease and counts the attempt, so a dispatcher
//!    that dies mid-send leaves it to be claimed again once the lease ends (at-least-once), and
//!    two dispatchers never send one delivery at the same time (PostgreSQL: `FOR UPDATE SKIP
//!    LOCKED`; SQLite and memory: one writer).
//! 3. **Finish.** The outcome is recorded only by the claim that sent it (owner and attempt
//!    match); a failure schedules the next attempt or, after [`DELIVERY_WINDOW_SECONDS`], gives
//!    up. An endpoint whose deliveries have failed for [`FAILING_DISABLE_SECONDS`] is disabled
//!    (`failing`), in the same transaction.
//!
//! **Invariants:** a delivery exists at most once per (endpoint, event); a delivery leaves
//! `pending` once (to `delivered` or `failed`) unless an admin replays it; an endpoint's
//! position only grows.

use ledger::Timestamp;

use crate::events::{EventType, StoredEvent};
use crate::EndpointId;

/// Most endpoints a store keeps (disabled ones included): each dispatcher pass reads them all.
pub const ENDPOINTS_MAX: usize = 100;
/// How long a delivery is retried, from when it was recorded: the Standard Webhooks norm.
pub const DELIVERY_WINDOW_SECONDS: u64 = 3 * 24 * 3600;
/// An endpoint whose deliveries fail without a success for this long is disabled.
pub const FAILING_DISABLE_SECONDS: u64 = 24 * 3600;
/// After a rotation the previous secret still signs (next to the new one) for this long, so
/// receivers can switch without losing deliveries.
pub const PREVIOUS_SECRET_SECONDS: u64 = 24 * 3600;
/// Most deliveries one claim takes.
pub const CLAIM_MAX: u32 = 64;
/// Most deliveries one replay records (the oldest events since the replay's start).
pub const REPLAY_MAX: u32 = 10_000;
/// Longest endpoint description, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 500;
/// Longest error text kept on a delivery, in bytes.
pub const ERROR_BYTES_MAX: usize = 500;

/// Why an endpoint is disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisabledReason {
    /// An admin disabled it.
    Admin,
    /// Its deliveries failed for [`FAILING_DISABLE_SECONDS`].
    Failing,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::Admin => "admin",
            DisabledReason::Failing => "failing",
        }
    }

    pub fn parse(text: &str) -> Option<DisabledReason> {
        match text {
            "admin" => Some(DisabledReason::Admin),
            "failing" => Some(DisabledReason::Failing),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disabled {
    pub at: Timestamp,
    pub reason: DisabledReason,
}

/// A secret that still signs after a rotation, until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret: String,
    pub until: Timestamp,
}

/// A webhook endpoint: where events of the types it wants are sent, signed with its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub endpoint_id: EndpointId,
    /// Checked at the edge (`webhooks::destination`) and again before every delivery.
    pub url: String,
    /// At least one, each once, in [`EventType::ALL`] order.
    pub event_types: Vec<EventType>,
    pub description: Option<String>,
    /// `whsec_…` (the text form of `webhooks::signature::SigningSecret`).
    pub secret: String,
    pub previous_secret: Option<PreviousSecret>,
    pub created_at: Timestamp,
    pub disabled: Option<Disabled>,
    /// When the current run of failed deliveries began (`None` after a success).
    pub failing_since: Option<Timestamp>,
    /// The outbox position fanned out to (see `StoredEvent::position`). A new endpoint starts
    /// at the outbox's end: it receives the events written after it was created.
    pub position: u128,
}

impl Endpoint {
    pub fn wants(&self, event_type: EventType) -> bool {
        self.event_types.contains(&event_type)
    }

    /// The secrets a delivery at `now` is signed with: the current one, and the previous one
    /// while it is kept.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let Some(previous) = self.previous_secret.as_ref().filter(|previous| previous.until > now) {
            secrets.push(previous.secret.as_str());
        }
        secrets
    }

    /// What `change` makes of this endpoint at `now`.
    pub fn changed(&self, change: &EndpointChange, now: Timestamp) -> Endpoint {
        let mut endpoint = self.clone();
        match change {
            EndpointChange::Disable => {
                endpoint.disabled.get_or_insert(Disabled { at: now, reason: DisabledReason::Admin });
            }
            EndpointChange::Enable => {
                endpoint.disabled = None;
                endpoint.failing_since = None;
            }
            EndpointChange::RotateSecret(secret) => {
                endpoint.previous_secret = Some(PreviousSecret {
                    secret: std::mem::replace(&mut endpoint.secret, secret.clone()),
                    until: now.plus_seconds(PREVIOUS_SECRET_SECONDS),
                });
            }
        }
        endpoint
    }

    /// What a failed delivery at `now` makes of this endpoint: its failing run starts (or goes
    /// on), and an endpoint failing for [`FAILING_DISABLE_SECONDS`] is disabled.
    pub fn failed(&self, now: Timestamp) -> Endpoint {
        let mut endpoint = self.clone();
        let since = *endpoint.failing_since.get_or_insert(now);
        if endpoint.disabled.is_none() && since.plus_seconds(FAILING_DISABLE_SECONDS) <= now {
            endpoint.disabled = Some(Disabled { at: now, reason: DisabledReason::Failing });
        }
        endpoint
    }
}

/// What an admin changes on an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointChange {
    /// Stops deliveries (pending ones wait, and go on once it is enabled again).
    Disable,
    /// Resumes deliveries, forgetting the failing run.
    Enable,
    /// A new secret; the old one keeps signing for [`PREVIOUS_SECRET_SECONDS`].
    RotateSecret(String),
}

/// The stored text of an endpoint's event types: their names, comma-separated.
pub fn encode_event_types(event_types: &[EventType]) -> String {
    event_types.iter().map(|event_type| event_type.as_str()).collect::<Vec<_>>().join(",")
}

pub fn decode_event_types(text: &str) -> Result<Vec<EventType>, crate::StoreError> {
    text.split(',')
        .map(|name| EventType::parse(name).ok_or_else(|| crate::codec::undecodable("webhook event type")))
        .collect()
}

/// Deliveries to record for one endpoint, and the position they were read up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanOut {
    pub endpoint_id: EndpointId,
    /// The position the dispatcher read from: the write applies only if it is still the
    /// endpoint's.
    pub from: u128,
    /// The position of the last event read (wanted or not).
    pub to: u128,
    /// The seqs of the events the endpoint wants, read after `from` up to `to`.
    pub event_seqs: Vec<u64>,
    pub now: Timestamp,
}

/// A dispatcher's request for due deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryClaim {
    /// Who claims (the instance): only it records the outcome.
    pub owner: String,
    pub now: Timestamp,
    /// Until when the claim is the dispatcher's; after that the delivery is due again.
    pub lease_until: Timestamp,
    /// The endpoints whose deliveries may be claimed: the enabled ones, as the dispatcher read
    /// them at the start of its pass (an endpoint disabled since then gets that pass's claims;
    /// naming them lets PostgreSQL walk its due index in order instead of joining).
    pub endpoints: Vec<EndpointId>,
    /// At most [`CLAIM_MAX`].
    pub limit: u32,
}

/// A delivery a dispatcher claimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub endpoint_id: EndpointId,
    pub event: StoredEvent,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// When the delivery was recorded (fan-out or replay): its retry window starts there.
    pub created_at: Timestamp,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed; the next attempt is at `at`.
    Retry { at: Timestamp, error: String },
    /// It failed and the retry window is over.
    GaveUp { error: String },
}

/// The outcome of a claimed delivery's attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryFinish {
    pub endpoint_id: EndpointId,
    pub event_seq: u64,
    pub owner: String,
    pub attempt: u32,
    pub now: Timestamp,
    pub outcome: DeliveryOutcome,
}

/// What recording an attempt's outcome did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Recorded; `endpoint_disabled` when this failure disabled the endpoint (it failed for a day).
    Recorded { endpoint_disabled: bool },
    /// The claim was no longer this dispatcher's (its lease ended and another claimed it, or an
    /// admin replayed it): nothing was written.
    LeaseLost,
}

/// What one fan-out pass of one endpoint did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanOutReport {
    /// Outbox events read after the endpoint's position.
    pub read: usize,
    /// Deliveries recorded (the wanted events among them), 0 when another dispatcher won.
    pub recorded: usize,
}

/// Fans one page of the outbox out to `endpoint` (step 1 above): every dispatcher, and the
/// conformance checks, go through this one function.
pub async fn fan_out_page(
    store: &dyn crate::LedgerStore,
    endpoint: &Endpoint,
    now: Timestamp,
) -> Result<FanOutReport, crate::StoreError> {
    let events = store.events(endpoint.position, crate::events::EVENTS_PAGE_MAX).await?;
    let Some(last) = events.last() else { return Ok(FanOutReport::default()) };
    let event_seqs: Vec<u64> =
        events.iter().filter(|event| endpoint.wants(event.event.event_type)).map(|event| event.seq).collect();
    let fan_out = FanOut {
        endpoint_id: endpoint.endpoint_id.clone(),
        from: endpoint.position,
        to: last.position,
        event_seqs,
        now,
    };
    let won = store.fan_out_webhook_events(&fan_out).await?;
    Ok(FanOutReport { read: events.len(), recorded: if won { fan_out.event_seqs.len() } else { 0 } })
}

/// Truncates an error text to [`ERROR_BYTES_MAX`] on a character boundary.
pub fn error_text(error: &str) -> &str {
    let mut end = error.len().min(ERROR_BYTES_MAX);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            endpoint_id: EndpointId::parse("we-1").unwrap(),
            url: "https://example.com/hook".to_owned(),
            event_types: vec![EventType::HoldCreated],
            description: None,
            secret: "whsec_new".to_owned(),
            previous_secret: None,
            created_at: Timestamp::from_micros(0),
            disabled: None,
            failing_since: None,
            position: 0,
        }
    }

    #[test]
    fn a_rotated_secret_signs_alongside_for_a_day() {
        let start = Timestamp::from_micros(0);
        let rotated = endpoint().changed(&EndpointChange::RotateSecret("whsec_next".to_owned()), start);
        assert_eq!(rotated.signing_secrets(start), ["whsec_next", "whsec_new"]);
        let later = start.plus_seconds(PREVIOUS_SECRET_SECONDS);
        assert_eq!(rotated.signing_secrets(later), ["whsec_next"]);
    }

    #[test]
    fn an_endpoint_failing_for_a_day_is_disabled() {
        let start = Timestamp::from_micros(0);
        let failing = endpoint().failed(start);
        assert_eq!((failing.failing_since, failing.disabled), (Some(start), None));
        let almost = failing.failed(start.plus_seconds(FAILING_DISABLE_SECONDS - 1));
        assert_eq!(almost.disabled, None);
        let day = start.plus_seconds(FAILING_DISABLE_SECONDS);
        let disabled = almost.failed(day);
        assert_eq!(disabled.disabled, Some(Disabled { at: day, reason: DisabledReason::Failing }));
        let enabled = disabled.changed(&EndpointChange::Enable, day);
        assert_eq!((enabled.disabled, enabled.failing_since), (None, None));
    }

    #[test]
    fn event_types_round_trip_and_errors_are_cut_on_a_character() {
        let types = vec![EventType::HoldCreated, EventType::JobFailed];
        assert_eq!(decode_event_types(&encode_event_types(&types)).unwrap(), types);
        assert!(decode_event_types("hold.created,nope").is_err());
        let long = "é".repeat(ERROR_BYTES_MAX);
        assert!(error_text(&long).len() <= ERROR_BYTES_MAX && error_text(&long).len() >= ERROR_BYTES_MAX - 1);
    }
}
