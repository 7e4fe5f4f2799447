//! Conformance checks of webhook endpoints and deliveries (see `crate::webhooks`), run on every
//! backend: fan-out once per endpoint and event, claims that never hand one delivery to two
//! dispatchers at once, outcomes recorded only by the claim that sent them, an endpoint failing
//! for a day disabled, replay, rotation — and a property test against a simple model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ledger::Timestamp;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use super::{new_id, Harness};
use crate::events::{EventType, StoredEvent};
use crate::webhooks::{
    fan_out_page, ClaimedDelivery, DeliveryClaim, DeliveryFinish, DeliveryOutcome, Disabled, DisabledReason, Endpoint,
    EndpointChange, Finished, FAILING_DISABLE_SECONDS,
};
use crate::EndpointId;

const LEASE_SECONDS: u64 = 30;

fn new_endpoint(h: &Harness, event_types: &[EventType]) -> Endpoint {
    Endpoint {
        endpoint_id: EndpointId::parse(&format!("we-{}", new_id())).expect("a valid id"),
        url: "https://receiver.example/hook".to_owned(),
        event_types: event_types.to_vec(),
        description: Some("conformance".to_owned()),
        secret: "whsec_first".to_owned(),
        previous_secret: None,
        created_at: h.clock_now(),
        disabled: None,
        failing_since: None,
        position: 0,
    }
}

async fn endpoint(h: &Harness, endpoint_id: &EndpointId) -> Endpoint {
    let endpoints = h.store.webhook_endpoints().await.expect("store answers");
    endpoints.into_iter().find(|endpoint| &endpoint.endpoint_id == endpoint_id).expect("the endpoint is listed")
}

/// Fans out until `expected` deliveries were recorded for the endpoint (on PostgreSQL an event
/// is readable once every older transaction of the cluster ended).
async fn fan_out_all(h: &Harness, endpoint_id: &EndpointId, expected: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut recorded = 0;
    while recorded < expected && std::time::Instant::now() < deadline {
        let current = endpoint(h, endpoint_id).await;
        recorded += fan_out_page(&*h.store, &current, h.clock_now()).await.expect("store answers").recorded;
        tokio::task::yield_now().await;
    }
    recorded
}

/// A claim for the enabled endpoints, as a dispatcher makes it.
async fn claim(h: &Harness, owner: &str, limit: u32) -> DeliveryClaim {
    let now = h.clock_now();
    let endpoints = h.store.webhook_endpoints().await.expect("store answers");
    let enabled = endpoints.into_iter().filter(|endpoint| endpoint.disabled.is_none());
    DeliveryClaim {
        owner: owner.to_owned(),
        now,
        lease_until: now.plus_seconds(LEASE_SECONDS),
        endpoints: enabled.map(|endpoint| endpoint.endpoint_id).collect(),
        limit,
    }
}

async fn claimed(h: &Harness, owner: &str, limit: u32) -> Vec<ClaimedDelivery> {
    h.store.claim_webhook_deliveries(&claim(h, owner, limit).await).await.expect("store answers")
}

async fn finish(h: &Harness, delivery: &ClaimedDelivery, owner: &str, outcome: DeliveryOutcome) -> Finished {
    let finish = DeliveryFinish {
        endpoint_id: delivery.endpoint_id.clone(),
        event_seq: delivery.event.seq,
        owner: owner.to_owned(),
        attempt: delivery.attempt,
        now: h.clock_now(),
        outcome,
    };
    let finished = h.store.finish_webhook_deliveries(std::slice::from_ref(&finish)).await.expect("store answers");
    assert_eq!(finished.len(), 1, "one answer per finish");
    finished[0]
}

fn types(deliveries: &[ClaimedDelivery]) -> Vec<&'static str> {
    deliveries.iter().map(|delivery| delivery.event.event.event_type.as_str()).collect()
}

fn retry_in(h: &Harness, seconds: u64) -> DeliveryOutcome {
    DeliveryOutcome::Retry { at: h.clock_now().plus_seconds(seconds), error: "HTTP 500".to_owned() }
}

/// An endpoint gets the events it wants that were written after it was created, each once even
/// when two dispatchers fan out from the same position; a claim leases them; the outcome of an
/// attempt is recorded by its claim only; a retry is due at its time.
pub async fn webhooks_fan_out_claim_and_finish(h: Harness) {
    h.grant("before", "5").await;
    let created =
        h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated, EventType::HoldCreated])).await;
    let created = created.expect("store answers");
    let listed = endpoint(&h, &created.endpoint_id).await;
    assert_eq!(listed, created, "listed as created");
    assert_eq!(listed.secret, "whsec_first");
    let name = format!("w-{}", new_id());
    h.grant(&name, "10").await;
    let hold = h.hold(&name, "4", 600).await.expect("held");
    h.store.execute(crate::Request::new(super::capture_credits(hold.hold_id.as_str(), 1))).await.expect("captured");
    // Two dispatchers read the same page; the second's compare-and-set loses.
    let stale = endpoint(&h, &created.endpoint_id).await;
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 2).await, 2, "a grant and a hold, not the capture");
    assert_eq!(fan_out_page(&*h.store, &stale, h.clock_now()).await.expect("answers").recorded, 0);
    assert!(endpoint(&h, &created.endpoint_id).await.position > created.position, "the position moved");

    let first = claimed(&h, "a", 10).await;
    assert_eq!(types(&first), ["grant.created", "hold.created"], "in outbox order, not the grant before it");
    assert!(first.iter().all(|delivery| delivery.attempt == 1 && delivery.event.event.account_id.as_str() == name));
    assert_eq!(claimed(&h, "b", 10).await, [], "leased to a");

    assert_eq!(finish(&h, &first[0], "b", DeliveryOutcome::Delivered).await, Finished::LeaseLost, "not b's");
    assert_eq!(
        finish(&h, &first[0], "a", DeliveryOutcome::Delivered).await,
        Finished::Recorded { endpoint_disabled: false }
    );
    assert_eq!(finish(&h, &first[0], "a", DeliveryOutcome::Delivered).await, Finished::LeaseLost, "once");
    let retry = retry_in(&h, 10);
    assert_eq!(finish(&h, &first[1], "a", retry).await, Finished::Recorded { endpoint_disabled: false });
    assert_eq!(endpoint(&h, &created.endpoint_id).await.failing_since, Some(h.clock_now()));
    h.clock.advance_seconds(9);
    assert_eq!(claimed(&h, "b", 10).await, [], "not due yet");
    h.clock.advance_seconds(1);
    let second = claimed(&h, "b", 10).await;
    assert_eq!((types(&second), second[0].attempt), (vec!["hold.created"], 2));
    assert_eq!(finish(&h, &first[1], "a", DeliveryOutcome::Delivered).await, Finished::LeaseLost, "an old attempt");
    let gave_up = DeliveryOutcome::GaveUp { error: "HTTP 410".to_owned() };
    assert_eq!(finish(&h, &second[0], "b", gave_up).await, Finished::Recorded { endpoint_disabled: false });
    h.clock.advance_seconds(3600);
    assert_eq!(claimed(&h, "a", 10).await, [], "delivered and failed deliveries are done");
}

/// Outcomes recorded in one call are recorded in order, each as it would be alone: a stale one
/// is refused beside the others, and the endpoint's failing run follows the last outcome.
pub async fn webhooks_finish_in_batches(h: Harness) {
    let created = h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated])).await.unwrap();
    let name = format!("b-{}", new_id());
    for _ in 0..3 {
        h.grant(&name, "1").await;
    }
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 3).await, 3);
    let taken = claimed(&h, "a", 3).await;
    assert_eq!(taken.len(), 3);
    let finish = |delivery: &ClaimedDelivery, attempt: u32, outcome: DeliveryOutcome| DeliveryFinish {
        endpoint_id: delivery.endpoint_id.clone(),
        event_seq: delivery.event.seq,
        owner: "a".to_owned(),
        attempt,
        now: h.clock_now(),
        outcome,
    };
    let batch = [
        finish(&taken[0], 1, DeliveryOutcome::Delivered),
        finish(&taken[1], 7, DeliveryOutcome::Delivered),
        finish(&taken[2], 1, retry_in(&h, 60)),
    ];
    let recorded = Finished::Recorded { endpoint_disabled: false };
    let finished = h.store.finish_webhook_deliveries(&batch).await.expect("store answers");
    assert_eq!(finished, [recorded, Finished::LeaseLost, recorded]);
    assert_eq!(endpoint(&h, &created.endpoint_id).await.failing_since, Some(h.clock_now()), "the last one failed");
    assert_eq!(h.store.finish_webhook_deliveries(&[]).await.expect("store answers"), []);
    h.clock.advance_seconds(LEASE_SECONDS as i64);
    let due: Vec<u64> = claimed(&h, "b", 5).await.iter().map(|delivery| delivery.event.seq).collect();
    assert_eq!(due, [taken[1].event.seq], "the stale finish left its delivery leased, then due");
}

/// A dispatcher that dies mid-send leaves its claim to be taken again once the lease ends; its
/// late outcome is then not recorded.
pub async fn webhooks_expired_lease_is_reclaimed(h: Harness) {
    let created = h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated])).await.unwrap();
    h.grant(&format!("l-{}", new_id()), "1").await;
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 1).await, 1);
    let lost = claimed(&h, "dead", 5).await;
    assert_eq!(lost.len(), 1);
    h.clock.advance_seconds(LEASE_SECONDS as i64 - 1);
    assert_eq!(claimed(&h, "alive", 5).await, [], "still leased");
    h.clock.advance_seconds(1);
    let again = claimed(&h, "alive", 5).await;
    assert_eq!((again.len(), again[0].attempt), (1, 2), "the lease ended: a second attempt");
    assert_eq!(finish(&h, &lost[0], "dead", DeliveryOutcome::Delivered).await, Finished::LeaseLost);
    assert_eq!(
        finish(&h, &again[0], "alive", DeliveryOutcome::Delivered).await,
        Finished::Recorded { endpoint_disabled: false }
    );
}

/// Eight dispatchers claiming at once get every due delivery once between them.
pub async fn webhooks_concurrent_claims_each_delivery_once(h: Harness) {
    let created = h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated])).await.unwrap();
    let name = format!("c-{}", new_id());
    for _ in 0..24 {
        h.grant(&name, "1").await;
    }
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 24).await, 24);
    let mut claims = Vec::new();
    for owner in 0..8 {
        let store = Arc::clone(&h.store);
        let claim = claim(&h, &format!("owner-{owner}"), 4).await;
        claims.push(tokio::spawn(async move { store.claim_webhook_deliveries(&claim).await.expect("store answers") }));
    }
    let mut seqs = Vec::new();
    for claim in claims {
        seqs.extend(claim.await.expect("the task ends").into_iter().map(|delivery| delivery.event.seq));
    }
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no delivery claimed twice: {seqs:?}");
    let rest = claimed(&h, "late", 64).await;
    assert_eq!(unique.len() + rest.len(), 24, "every delivery claimed");
}

/// An endpoint that fails for a day is disabled in the failure's transaction; its deliveries
/// wait until an admin enables it; a success ends a failing run.
pub async fn webhooks_failing_endpoint_is_disabled(h: Harness) {
    let created = h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated])).await.unwrap();
    h.grant(&format!("f-{}", new_id()), "1").await;
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 1).await, 1);
    let started = h.clock_now();
    let mut disabled = false;
    let mut attempts = 0;
    while !disabled {
        let delivery = claimed(&h, "a", 1).await.pop().expect("due again");
        let retry = retry_in(&h, 3600);
        disabled = matches!(finish(&h, &delivery, "a", retry).await, Finished::Recorded { endpoint_disabled: true });
        attempts += 1;
        assert!(attempts <= 26, "disabled after a day of failures");
        h.clock.advance_seconds(3600);
    }
    let failing = endpoint(&h, &created.endpoint_id).await;
    assert_eq!(failing.failing_since, Some(started));
    let day = started.plus_seconds(FAILING_DISABLE_SECONDS);
    assert_eq!(failing.disabled, Some(Disabled { at: day, reason: DisabledReason::Failing }));
    assert_eq!(claimed(&h, "a", 5).await, [], "a disabled endpoint's deliveries wait");

    let now = h.clock_now();
    let enabled = h.store.change_webhook_endpoint(&created.endpoint_id, &EndpointChange::Enable, now).await.unwrap();
    assert_eq!(enabled.map(|endpoint| endpoint.disabled), Some(None));
    let delivery = claimed(&h, "a", 5).await.pop().expect("due once enabled");
    finish(&h, &delivery, "a", DeliveryOutcome::Delivered).await;
    assert_eq!(endpoint(&h, &created.endpoint_id).await.failing_since, None, "a success ends the failing run");
}

/// Replay records the wanted events since a time as due again (delivered ones included);
/// rotation keeps the previous secret for a day; an admin's disable stops claims; an unknown
/// endpoint is `None`.
pub async fn webhooks_replay_rotate_and_disable(h: Harness) {
    let created = h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated])).await.unwrap();
    let name = format!("r-{}", new_id());
    h.grant(&name, "1").await;
    h.clock.advance_seconds(60);
    let since = h.clock_now();
    h.grant(&name, "2").await;
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 2).await, 2);
    for delivery in claimed(&h, "a", 5).await {
        finish(&h, &delivery, "a", DeliveryOutcome::Delivered).await;
    }
    let now = h.clock_now();
    assert_eq!(h.store.replay_webhook_events(&created.endpoint_id, since, now).await.unwrap(), Some(1));
    let replayed = claimed(&h, "a", 5).await;
    assert_eq!((replayed.len(), replayed[0].attempt, replayed[0].created_at), (1, 1, now), "a new window");
    let ghost = EndpointId::parse("we-ghost").unwrap();
    assert_eq!(h.store.replay_webhook_events(&ghost, since, now).await.unwrap(), None);
    assert_eq!(h.store.change_webhook_endpoint(&ghost, &EndpointChange::Disable, now).await.unwrap(), None);

    let rotate = EndpointChange::RotateSecret("whsec_second".to_owned());
    let rotated = h.store.change_webhook_endpoint(&created.endpoint_id, &rotate, now).await.unwrap().unwrap();
    assert_eq!(rotated.signing_secrets(now), ["whsec_second", "whsec_first"]);
    assert_eq!(endpoint(&h, &created.endpoint_id).await, rotated, "stored as returned");
    let disabled = h.store.change_webhook_endpoint(&created.endpoint_id, &EndpointChange::Disable, now).await.unwrap();
    assert_eq!(
        disabled.and_then(|endpoint| endpoint.disabled),
        Some(Disabled { at: now, reason: DisabledReason::Admin })
    );
    h.grant(&name, "3").await;
    assert_eq!(fan_out_all(&h, &created.endpoint_id, 1).await, 1, "a disabled endpoint still records deliveries");
    h.clock.advance_seconds(LEASE_SECONDS as i64);
    assert_eq!(claimed(&h, "a", 5).await, [], "but none is claimed");
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Step {
    Claim {
        owner: usize,
        limit: u32,
    },
    /// Finishes the `pick`-th delivery the owner claimed last (an old claim, possibly lost).
    Finish {
        owner: usize,
        pick: usize,
        outcome: u8,
        retry_seconds: u64,
    },
    Advance {
        seconds: u64,
    },
    Replay,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..2usize, 1..4u32).prop_map(|(owner, limit)| Step::Claim { owner, limit }),
        4 => (0..2usize, 0..4usize, 0..3u8, 1..90u64)
            .prop_map(|(owner, pick, outcome, retry_seconds)| Step::Finish { owner, pick, outcome, retry_seconds }),
        2 => (1..60u64).prop_map(|seconds| Step::Advance { seconds }),
        1 => Just(Step::Replay),
    ]
}

/// The model of one delivery: what the store must say about it.
#[derive(Clone, Debug)]
struct ModelDelivery {
    done: bool,
    attempts: u32,
    next_at: Timestamp,
    owner: Option<usize>,
}

/// Random claims by two dispatchers, outcomes (in time, late, or for an attempt another owner
/// took over), clock moves and replays, against a model of each delivery: every claim returns
/// exactly the model's due deliveries in (due time, seq) order with their attempt numbers, and
/// every finish is recorded exactly when the model says the claim is still its sender's.
pub async fn webhooks_against_model(h: Harness) {
    let mut runner = TestRunner::new(Config {
        cases: 8,
        rng_seed: RngSeed::Fixed(0x0EB4_00C5),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(step(), 1..40);
    let cases: Vec<Vec<Step>> = (0..8).map(|_| strategy.new_tree(&mut runner).expect("a case").current()).collect();
    let owners = ["alpha", "beta"];
    for steps in cases {
        // A fresh endpoint per case, wanting only this case's account's events.
        let created = h.store.create_webhook_endpoint(&new_endpoint(&h, &[EventType::GrantCreated])).await.unwrap();
        // Earlier cases' events are older than `start`: a replay since `start` is this case's.
        h.clock.advance_seconds(1);
        let start = h.clock_now();
        let name = format!("p-{}", new_id());
        for _ in 0..5 {
            h.grant(&name, "1").await;
        }
        assert_eq!(fan_out_all(&h, &created.endpoint_id, 5).await, 5);
        let events: Vec<StoredEvent> = crate::conformance::events::all_events(&h, created.position).await;
        let mut model: BTreeMap<u64, ModelDelivery> = events
            .iter()
            .filter(|event| event.event.account_id.as_str() == name)
            .map(|event| (event.seq, ModelDelivery { done: false, attempts: 0, next_at: start, owner: None }))
            .collect();
        assert_eq!(model.len(), 5);
        let mut last_claims: [Vec<ClaimedDelivery>; 2] = [Vec::new(), Vec::new()];
        for step in &steps {
            let now = h.clock_now();
            match step {
                Step::Advance { seconds } => h.clock.advance_seconds(i64::try_from(*seconds).unwrap_or(60)),
                Step::Claim { owner, limit } => {
                    let mut due: Vec<(Timestamp, u64)> = model
                        .iter()
                        .filter(|(_, delivery)| !delivery.done && delivery.next_at <= now)
                        .map(|(seq, delivery)| (delivery.next_at, *seq))
                        .collect();
                    due.sort();
                    due.truncate(*limit as usize);
                    let got = claimed(&h, owners[*owner], *limit).await;
                    let got_seqs: Vec<(u64, u32)> = got.iter().map(|d| (d.event.seq, d.attempt)).collect();
                    let mut expected = Vec::new();
                    for (_, seq) in due {
                        let delivery = model.get_mut(&seq).expect("modelled");
                        delivery.attempts += 1;
                        delivery.next_at = now.plus_seconds(LEASE_SECONDS);
                        delivery.owner = Some(*owner);
                        expected.push((seq, delivery.attempts));
                    }
                    assert_eq!(got_seqs, expected, "{steps:?}");
                    last_claims[*owner] = got;
                }
                Step::Finish { owner, pick, outcome, retry_seconds } => {
                    let Some(delivery) = last_claims[*owner].get(*pick).cloned() else { continue };
                    let modelled = model.get_mut(&delivery.event.seq).expect("modelled");
                    let ours =
                        !modelled.done && modelled.attempts == delivery.attempt && modelled.owner == Some(*owner);
                    let outcome = match outcome {
                        0 => DeliveryOutcome::Delivered,
                        1 => retry_in(&h, *retry_seconds),
                        _ => DeliveryOutcome::GaveUp { error: "HTTP 410".to_owned() },
                    };
                    let finished = finish(&h, &delivery, owners[*owner], outcome.clone()).await;
                    assert_eq!(finished == Finished::LeaseLost, !ours, "{steps:?}: {delivery:?} {modelled:?}");
                    if ours {
                        modelled.owner = None;
                        match outcome {
                            DeliveryOutcome::Retry { at, .. } => modelled.next_at = at,
                            DeliveryOutcome::Delivered | DeliveryOutcome::GaveUp { .. } => modelled.done = true,
                        }
                    }
                }
                Step::Replay => {
                    let replayed = h.store.replay_webhook_events(&created.endpoint_id, start, now).await.unwrap();
                    assert_eq!(replayed, Some(5), "{steps:?}");
                    for delivery in model.values_mut() {
                        *delivery = ModelDelivery { done: false, attempts: 0, next_at: now, owner: None };
                    }
                }
            }
        }
        // Leave nothing due for the next case's claims.
        let disable = EndpointChange::Disable;
        h.store.change_webhook_endpoint(&created.endpoint_id, &disable, h.clock_now()).await.unwrap();
    }
}
