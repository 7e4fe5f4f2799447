//! The dispatcher: one per instance, delivering the outbox to webhook endpoints through the
//! store's delivery protocol (`store::webhooks`: fan-out, claim, finish).
//!
//! Each pass fans new events out to every endpoint, claims due deliveries, sends them at most
//! [`DispatcherConfig::in_flight_max`] at a time and records each outcome. Delivery is
//! at-least-once: a dispatcher that dies (or shuts down) mid-send leaves its claims to expire
//! and be sent again, so a receiver deduplicates by `webhook-id` (the event id). Deliveries of
//! one endpoint are not ordered: a retried event can arrive after a later one, and several
//! dispatchers send side by side; a receiver orders by the payload's `timestamp` or re-reads
//! the account if it needs the latest state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use store::events::StoredEvent;
use store::webhooks::{
    fan_out_page, ClaimedDelivery, DeliveryClaim, DeliveryFinish, DeliveryOutcome, Endpoint, Finished, CLAIM_MAX,
    DELIVERY_WINDOW_SECONDS,
};
use store::{Clock, EndpointId, LedgerStore, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::destination::{Destination, Reach};
use crate::signature::{sign, SigningSecret};

/// Renders an event as the JSON body receivers get: the composition root passes the server's
/// renderer, so a webhook body is exactly what `GET /v1/events` lists.
pub type RenderEvent = Arc<dyn Fn(&StoredEvent) -> Vec<u8> + Send + Sync>;

/// How a dispatcher sends. Every field has a limit a receiver cannot stretch.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Who claims: the instance id (only this dispatcher records its claims' outcomes).
    pub owner: String,
    /// Which destination addresses are allowed (private ones only with `--webhooks-allow-private`).
    pub reach: Reach,
    /// The pause between passes that found nothing to do.
    pub poll_interval: Duration,
    /// How long a claim is this dispatcher's: longer than a request can take.
    pub lease: Duration,
    pub connect_timeout: Duration,
    /// The whole request, response body included.
    pub request_timeout: Duration,
    /// The first retry's delay; each next one doubles, with jitter, up to `retry_delay_max`.
    pub retry_delay_initial: Duration,
    pub retry_delay_max: Duration,
    /// Most deliveries sent at once.
    pub in_flight_max: usize,
    /// Most bytes of a response read (the rest is dropped with the connection).
    pub response_bytes_max: usize,
}

impl DispatcherConfig {
    pub fn new(owner: impl Into<String>, reach: Reach) -> DispatcherConfig {
        DispatcherConfig {
            owner: owner.into(),
            reach,
            poll_interval: Duration::from_millis(500),
            // A claim's deliveries wait their turn behind `in_flight_max` sends of at most
            // `request_timeout` (plus the resolve and connect limits) each: 4 turns of 23 s at the
            // defaults. The lease outlasts that with room, so a slow receiver never gets one
            // event from two dispatchers at once; a crashed one's claims go out again after it.
            lease: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            retry_delay_initial: Duration::from_secs(5),
            retry_delay_max: Duration::from_secs(6 * 3600),
            in_flight_max: 16,
            response_bytes_max: 64 * 1024,
        }
    }

    /// The delay before attempt `attempt + 1`, after attempt `attempt` (from 1) failed: exponential
    /// from `retry_delay_initial`, doubling, capped at `retry_delay_max`, with jitter (backon).
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.retry_delay_initial)
            .with_max_delay(self.retry_delay_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.retry_delay_max)
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub fanned_out: usize,
    pub delivered: usize,
    pub failed: usize,
    /// Whether a page or a claim came back full: the next pass starts at once.
    pub more: bool,
}

pub struct Dispatcher {
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    render: RenderEvent,
    config: DispatcherConfig,
    /// Each endpoint's client with the addresses it is pinned to (at most `ENDPOINTS_MAX`).
    clients: Mutex<HashMap<EndpointId, (Vec<SocketAddr>, reqwest::Client)>>,
}

impl Dispatcher {
    /// Panics when the lease is shorter than a claim can take to send (see `DispatcherConfig::new`).
    pub fn new(
        store: Arc<dyn LedgerStore>,
        clock: Arc<dyn Clock>,
        render: RenderEvent,
        config: DispatcherConfig,
    ) -> Self {
        let turns = u32::try_from((CLAIM_MAX as usize).div_ceil(config.in_flight_max.max(1))).unwrap_or(u32::MAX);
        let send_max = config.request_timeout
            + config.connect_timeout
            + Duration::from_secs(crate::destination::RESOLVE_SECONDS_MAX);
        assert!(config.lease > send_max * turns, "the lease must outlast a claim's sends: {config:?}");
        Dispatcher { store, clock, render, config, clients: Mutex::default() }
    }

    /// Runs passes until `shutdown`: at once while there is more to do, else every poll
    /// interval. A store error is logged and the next pass tries again.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let pass = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    pass = self.pass() => pass,
                };
                let more = match pass {
                    Ok(report) => report.more,
                    Err(error) => {
                        tracing::warn!(%error, "a webhook dispatch pass failed; trying again");
                        false
                    }
                };
                if !more {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        // Polling: the outbox is written by every instance, so there is no
                        // in-process signal for all of it (a wakeup would only shorten this).
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
            }
        })
    }

    /// One pass: fan out, claim, send, record.
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        let endpoints = self.store.webhook_endpoints().await?;
        if endpoints.is_empty() {
            // Nothing to fan out or claim: no claim reaches the store (on SQLite, the writer).
            return Ok(report);
        }
        for endpoint in &endpoints {
            let fanned = fan_out_page(&*self.store, endpoint, self.clock.now()).await?;
            report.fanned_out += fanned.recorded;
            report.more |= fanned.read == store::events::EVENTS_PAGE_MAX as usize;
        }
        let now = self.clock.now();
        let lease_micros = i64::try_from(self.config.lease.as_micros()).unwrap_or(i64::MAX);
        let claim = DeliveryClaim {
            owner: self.config.owner.clone(),
            now,
            lease_until: now.plus_micros(lease_micros),
            endpoints: endpoints
                .iter()
                .filter(|endpoint| endpoint.disabled.is_none())
                .map(|endpoint| endpoint.endpoint_id.clone())
                .collect(),
            limit: CLAIM_MAX,
        };
        let claimed = self.store.claim_webhook_deliveries(&claim).await?;
        report.more |= claimed.len() == CLAIM_MAX as usize;
        let endpoints: HashMap<&EndpointId, &Endpoint> =
            endpoints.iter().map(|endpoint| (&endpoint.endpoint_id, endpoint)).collect();
        // An endpoint created after the list was read is skipped: its claim expires and is sent
        // again. Sent in groups of at most `in_flight_max`.
        let sendable: Vec<(&Endpoint, &ClaimedDelivery)> = claimed
            .iter()
            .filter_map(|delivery| endpoints.get(&delivery.endpoint_id).map(|endpoint| (*endpoint, delivery)))
            .collect();
        // At most `in_flight_max` sends at once, without waiting for a whole group: the outcomes
        // are recorded as they come, up to `in_flight_max` per transaction.
        let in_flight = self.config.in_flight_max.max(1);
        // Owned items: a stream of borrowed ones makes the spawned task's future not `Send`
        // (rustc cannot prove the closure general over their lifetimes).
        let owned: Vec<(Endpoint, ClaimedDelivery)> =
            sendable.into_iter().map(|(endpoint, delivery)| (endpoint.clone(), delivery.clone())).collect();
        let mut attempts = futures::stream::iter(owned)
            .map(|(endpoint, delivery)| async move {
                let finish = self.attempt(&endpoint, &delivery).await;
                (endpoint, finish)
            })
            .buffer_unordered(in_flight)
            .ready_chunks(in_flight);
        while let Some(group) = attempts.next().await {
            let finishes: Vec<DeliveryFinish> = group.iter().map(|(_, finish)| finish.clone()).collect();
            let finished = self.store.finish_webhook_deliveries(&finishes).await?;
            for ((endpoint, finish), finished) in group.iter().zip(finished) {
                match finished {
                    Finished::Recorded { endpoint_disabled: true } => {
                        tracing::error!(endpoint = %endpoint.endpoint_id, url = %endpoint.url,
                            "a webhook endpoint failed for a day and was disabled; enable it once it answers again");
                    }
                    Finished::Recorded { endpoint_disabled: false } => {}
                    Finished::LeaseLost => {
                        tracing::debug!(endpoint = %endpoint.endpoint_id, event_seq = finish.event_seq,
                            "a webhook delivery's claim ended before its outcome was recorded");
                    }
                }
                if finish.outcome == DeliveryOutcome::Delivered {
                    report.delivered += 1;
                } else {
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Sends one delivery: its outcome, to record.
    async fn attempt(&self, endpoint: &Endpoint, delivery: &ClaimedDelivery) -> DeliveryFinish {
        let sent = self.send(endpoint, delivery).await;
        let now = self.clock.now();
        let outcome = match sent {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(error) => {
                let delay_micros =
                    i64::try_from(self.config.retry_delay(delivery.attempt).as_micros()).unwrap_or(i64::MAX);
                let at = now.plus_micros(delay_micros);
                if at > delivery.created_at.plus_seconds(DELIVERY_WINDOW_SECONDS) {
                    tracing::warn!(endpoint = %endpoint.endpoint_id, event = %delivery.event.event_id(), %error,
                        attempts = delivery.attempt, "a webhook delivery failed for 3 days; giving up");
                    DeliveryOutcome::GaveUp { error }
                } else {
                    tracing::debug!(endpoint = %endpoint.endpoint_id, event = %delivery.event.event_id(), %error,
                        attempt = delivery.attempt, "a webhook delivery failed; retrying");
                    DeliveryOutcome::Retry { at, error }
                }
            }
        };
        DeliveryFinish {
            endpoint_id: endpoint.endpoint_id.clone(),
            event_seq: delivery.event.seq,
            owner: self.config.owner.clone(),
            attempt: delivery.attempt,
            now,
            outcome,
        }
    }

    /// One signed POST: `Ok` on a 2xx answer, else why not (a short text for the delivery row).
    async fn send(&self, endpoint: &Endpoint, delivery: &ClaimedDelivery) -> Result<(), String> {
        let destination = Destination::parse(&endpoint.url).map_err(|error| error.to_string())?;
        let addresses = destination.resolve(self.config.reach).await.map_err(|error| error.to_string())?;
        let client = self.client(&endpoint.endpoint_id, &destination, addresses)?;
        let body = (self.render)(&delivery.event);
        let message_id = delivery.event.event_id();
        // The receiver compares this with its own clock, so it is wall-clock time even when the
        // service runs on a test clock.
        let timestamp_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(0));
        let signatures: Vec<String> = endpoint
            .signing_secrets(self.clock.now())
            .into_iter()
            .filter_map(|secret| SigningSecret::parse(secret).ok())
            .map(|secret| sign(&secret, &message_id, timestamp_seconds, &body))
            .collect();
        if signatures.is_empty() {
            return Err("the endpoint has no usable secret".to_owned());
        }
        let response = client
            .post(destination.url().clone())
            .header("content-type", "application/json")
            .header("user-agent", concat!("creditgraph-webhooks/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &message_id)
            .header("webhook-timestamp", timestamp_seconds.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(body)
            .send()
            .await
            .map_err(|error| format!("no answer: {error}"))?;
        let status = response.status();
        let answer = read_capped(response, self.config.response_bytes_max).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(&answer)))
        }
    }
}

impl Dispatcher {
    /// The HTTP client of an endpoint, pinned to the addresses just checked (so a DNS answer
    /// that changes after the check cannot redirect a delivery), kept while they stay the same
    /// so deliveries reuse its connections.
    fn client(
        &self,
        endpoint_id: &EndpointId,
        destination: &Destination,
        addresses: Vec<SocketAddr>,
    ) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((pinned, client)) = clients.get(endpoint_id) {
            if *pinned == addresses {
                return Ok(client.clone());
            }
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.config.connect_timeout)
            .timeout(self.config.request_timeout);
        if let Some(host) = destination.url().host_str() {
            builder = builder.resolve_to_addrs(host, &addresses);
        }
        let client = builder.build().map_err(|error| format!("no HTTP client: {error}"))?;
        if clients.len() >= store::webhooks::ENDPOINTS_MAX {
            clients.clear();
        }
        clients.insert(endpoint_id.clone(), (addresses, client.clone()));
        Ok(client)
    }
}

/// At most `bytes_max` bytes of a response body; the rest is never read.
async fn read_capped(response: reqwest::Response, bytes_max: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = bytes_max.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= bytes_max {
            break;
        }
    }
    body
}
