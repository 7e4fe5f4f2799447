//! Webhook delivery throughput: a backlog of events drained to a receiver on loopback, by
//! creditgraph's dispatcher (fan-out, leased claims, signed POSTs, recorded outcomes) on each
//! store, and by what a team writes by hand without it — a relay over an outbox table on
//! PostgreSQL that locks one row `FOR UPDATE SKIP LOCKED`, POSTs it unsigned and marks it sent,
//! one transaction per event, with as many workers as the dispatcher has sends in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use store::events::EventType;
use store::webhooks::Endpoint;
use store::{Clock, EndpointId, LedgerStore, Request, SystemClock};
use webhooks::destination::Reach;
use webhooks::dispatcher::{Dispatcher, DispatcherConfig};

/// Sends in flight: the dispatcher's default, and the baseline's workers.
const IN_FLIGHT: usize = 16;

#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub system: String,
    pub events: usize,
    pub seconds: f64,
    pub deliveries_per_second: f64,
}

/// A receiver that answers 200 to every POST and counts them.
async fn receiver() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, count))
}

/// creditgraph: `events` grants written with one endpoint subscribed, then the dispatcher's
/// passes until the receiver has them all.
pub async fn dispatcher(label: &str, store: Arc<dyn LedgerStore>, events: usize) -> anyhow::Result<Delivery> {
    let (url, received) = receiver().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let endpoint = Endpoint {
        endpoint_id: EndpointId::generate(),
        url,
        event_types: vec![EventType::GrantCreated],
        description: None,
        secret: webhooks::signature::SigningSecret::generate().reveal(),
        previous_secret: None,
        created_at: clock.now(),
        disabled: None,
        failing_since: None,
        position: 0,
    };
    store.create_webhook_endpoint(&endpoint).await?;
    for chunk in (0..events).collect::<Vec<_>>().chunks(256) {
        let writes = chunk.iter().map(|index| {
            let grant = store::conformance::grant_credits(&format!("w{}", index % 1000), &format!("wg{index}"), 1);
            store.execute(Request::new(grant))
        });
        for written in futures::future::join_all(writes).await {
            written?;
        }
    }
    let mut config = DispatcherConfig::new("bench", Reach::AllowPrivate);
    config.in_flight_max = IN_FLIGHT;
    let dispatcher = Dispatcher::new(Arc::clone(&store), clock, Arc::new(server::webhook_body), config);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while received.load(Ordering::Relaxed) < events {
        anyhow::ensure!(Instant::now() < deadline, "{label}: the dispatcher did not drain the backlog");
        let pass = dispatcher.pass().await?;
        anyhow::ensure!(pass.failed == 0, "{label}: a delivery failed");
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(received.load(Ordering::Relaxed) == events, "{label}: more deliveries than events");
    Ok(Delivery { system: label.to_owned(), events, seconds, deliveries_per_second: events as f64 / seconds })
}

/// The hand-written relay on a fresh PostgreSQL database.
pub async fn naive_relay(database_url: &str, events: usize) -> anyhow::Result<Delivery> {
    let (url, received) = receiver().await?;
    let config: tokio_postgres::Config = database_url.parse()?;
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager).max_size(IN_FLIGHT).build()?;
    let client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE naive_outbox (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL, sent BOOLEAN NOT NULL DEFAULT false); \
             CREATE INDEX naive_outbox_unsent ON naive_outbox (id) WHERE NOT sent;",
        )
        .await?;
    let payload = r#"{"type":"grant.created","data":{"amount":"1"}}"#;
    client
        .execute(
            "INSERT INTO naive_outbox (payload) SELECT $1 FROM generate_series(1, $2::INT)",
            &[&payload, &i32::try_from(events)?],
        )
        .await?;
    drop(client);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let workers = (0..IN_FLIGHT).map(|_| {
        let (pool, http, url) = (pool.clone(), http.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                let mut client = pool.get().await?;
                let transaction = client.transaction().await?;
                let row = transaction
                    .query_opt(
                        "SELECT id, payload FROM naive_outbox WHERE NOT sent ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                        &[],
                    )
                    .await?;
                let Some(row) = row else { return anyhow::Ok(()) };
                let (id, payload): (i64, String) = (row.get(0), row.get(1));
                let response = http.post(&url).body(payload).send().await?;
                anyhow::ensure!(response.status().is_success(), "the receiver refused");
                transaction.execute("UPDATE naive_outbox SET sent = true WHERE id = $1", &[&id]).await?;
                transaction.commit().await?;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker.context("a relay worker panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received.load(Ordering::Relaxed) == events,
        "the relay sent {} of {events}",
        received.load(Ordering::Relaxed)
    );
    Ok(Delivery {
        system: "hand-written relay (PostgreSQL, FOR UPDATE SKIP LOCKED, row by row)".to_owned(),
        events,
        seconds,
        deliveries_per_second: events as f64 / seconds,
    })
}
