//! The dispatcher against a real HTTP receiver on loopback (axum), on the in-memory store:
//! signed deliveries, a failure retried until the receiver recovers, no redirect followed, and
//! private destinations refused by default.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use store::events::EventType;
use store::memory::MemoryStore;
use store::webhooks::Endpoint;
use store::{Clock, EndpointId, LedgerStore, ManualClock, Request};
use webhooks::destination::Reach;
use webhooks::dispatcher::{Dispatcher, DispatcherConfig, PassReport};
use webhooks::signature::{verify, SigningSecret};

/// What the receiver saw: (status answered, webhook-id, signature verified).
type Seen = Arc<Mutex<Vec<(u16, String, bool)>>>;

/// A receiver that answers `statuses` in turn (the last one from then on) and records each call.
async fn receiver(secret: SigningSecret, statuses: Vec<u16>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let hook = post(move |headers: HeaderMap, body: axum::body::Bytes| {
        let (seen, secret, statuses) = (Arc::clone(&record), secret.clone(), statuses.clone());
        async move {
            let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
            let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
            let verified =
                verify(&secret, &header("webhook-id"), timestamp, &body, &header("webhook-signature"), now, 300)
                    .is_ok();
            let mut seen = seen.lock().unwrap();
            let status = statuses[seen.len().min(statuses.len() - 1)];
            seen.push((status, header("webhook-id"), verified));
            let mut response = StatusCode::from_u16(status).unwrap().into_response();
            if status == 302 {
                response.headers_mut().insert("location", axum::http::HeaderValue::from_static("/elsewhere"));
            }
            response
        }
    });
    let app = axum::Router::new().route("/hook", hook).route("/elsewhere", post(|| async { StatusCode::OK }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

struct Setup {
    store: Arc<dyn LedgerStore>,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
}

async fn setup(url: &str, secret: &SigningSecret, reach: Reach) -> Setup {
    let clock = Arc::new(ManualClock::starting_now());
    let store: Arc<dyn LedgerStore> = Arc::new(MemoryStore::new(clock.clone(), 3600));
    let endpoint = Endpoint {
        endpoint_id: EndpointId::generate(),
        url: url.to_owned(),
        event_types: vec![EventType::GrantCreated],
        description: None,
        secret: secret.reveal(),
        previous_secret: None,
        created_at: clock.now(),
        disabled: None,
        failing_since: None,
        position: 0,
    };
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let grant = store::conformance::grant_credits("acct", "g1", 5);
    store.execute(Request::new(grant)).await.unwrap();
    let render = Arc::new(|event: &store::events::StoredEvent| event.event.data.clone().into_bytes());
    let mut config = DispatcherConfig::new("test", reach);
    config.retry_delay_initial = Duration::from_secs(10);
    config.retry_delay_max = Duration::from_secs(10);
    let dispatcher = Dispatcher::new(Arc::clone(&store), clock.clone(), render, config);
    Setup { store, clock, dispatcher }
}

#[tokio::test]
async fn a_failed_delivery_is_retried_signed_until_the_receiver_recovers() {
    let secret = SigningSecret::generate();
    let (url, seen) = receiver(secret.clone(), vec![500, 200]).await;
    let setup = setup(&url, &secret, Reach::AllowPrivate).await;
    let first = setup.dispatcher.pass().await.unwrap();
    assert_eq!(first, PassReport { fanned_out: 1, delivered: 0, failed: 1, more: false });
    assert_eq!(
        setup.dispatcher.pass().await.unwrap().failed + setup.dispatcher.pass().await.unwrap().delivered,
        0,
        "not due"
    );
    // The retry is due after the backoff (10 s, with jitter up to as much again).
    setup.clock.advance_seconds(20);
    let second = setup.dispatcher.pass().await.unwrap();
    assert_eq!((second.delivered, second.failed), (1, 0));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, id, verified)| *verified && id == &seen[0].1), "{seen:?}");
    assert_eq!(seen.iter().map(|(status, ..)| *status).collect::<Vec<_>>(), [500, 200]);
    setup.clock.advance_seconds(3600);
    assert_eq!(setup.dispatcher.pass().await.unwrap(), PassReport::default(), "delivered once");
    drop(setup.store);
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let secret = SigningSecret::generate();
    let (url, seen) = receiver(secret.clone(), vec![302]).await;
    let setup = setup(&url, &secret, Reach::AllowPrivate).await;
    assert_eq!(setup.dispatcher.pass().await.unwrap().failed, 1);
    assert_eq!(seen.lock().unwrap().len(), 1, "the redirect's target was not called");
}

#[tokio::test]
async fn a_private_destination_is_refused_by_default() {
    let secret = SigningSecret::generate();
    let (url, seen) = receiver(secret.clone(), vec![200]).await;
    let setup = setup(&url, &secret, Reach::PublicOnly).await;
    assert_eq!(setup.dispatcher.pass().await.unwrap().failed, 1);
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent to loopback");
}

#[test]
fn retry_delays_grow_to_their_cap() {
    let mut config = DispatcherConfig::new("test", Reach::PublicOnly);
    config.retry_delay_initial = Duration::from_secs(5);
    config.retry_delay_max = Duration::from_secs(3600);
    let first = config.retry_delay(1);
    assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(10), "{first:?}");
    let tenth = config.retry_delay(10);
    assert!(tenth >= Duration::from_secs(2560), "{tenth:?}");
    assert!(config.retry_delay(40) <= Duration::from_secs(7200), "capped (jitter adds at most as much again)");
}
