//! Issue 18: time to the first `token` event of a solve, over HTTP, with the ledger on and off.
//! "The credit wiring adds ≤ 1 ms p50 to the first token (the hold is taken before the solver
//! starts; nothing ledger-related may sit between the provider's first chunk and the client)."
//!
//! Two engines, as in the turn-overhead section ([`crate::turns`]): the same durable SQLite run
//! store, the ledger either that same store (on: the balance read and the hold commit happen
//! before the solver starts) or [`NullLedger`] (off). Each is served by the router and edge
//! `creditgraph serve` runs (`server::router_with_engine`, `server::edge::serve`) on loopback.
//! The provider is a [`FakeProvider`]: router and planner answer at once; the solver streams,
//! its first chunk after [`FIRST_CHUNK_DELAY_MS`]. A client posts `/v1/solve` and times the
//! first `event: token` line of the response, then reads the stream to its end. Turns alternate
//! between the arms, as the turn-overhead section's do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::provider::Purpose;
use engine::testing::{FakeChunk, FakeProvider, FakeReply};
use futures::StreamExt;
use ledger::AccountId;
use serde::Serialize;
use serde_json::json;
use store::{Clock, LedgerStore, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::measure::{Latencies, LatencySummary};
use crate::turns::{engine_over, grant_credits, open_store, NullLedger};

/// The provider's first chunk of the answer comes this long after the solver's request.
pub const FIRST_CHUNK_DELAY_MS: u64 = 20;
const WARM_UP_TURNS: usize = 20;
const ACCOUNT: &str = "bench-first-token";
const GRANT_CREDITS: u64 = 1_000_000;
const TOKEN: &str = "creditgraph-bench-first-token";
/// Bound on one turn's stream, so a stuck server fails the measurement instead of hanging it.
const TURN_SECONDS_MAX: u64 = 30;

/// The result of [`measure`].
#[derive(Clone, Debug, Serialize)]
pub struct FirstToken {
    /// Measured turns per arm.
    pub turns: usize,
    pub first_chunk_delay_ms: u64,
    /// From the request to the first `token` line, the ledger on.
    pub ledger_on: LatencySummary,
    /// The same with [`NullLedger`].
    pub ledger_off: LatencySummary,
    /// `ledger_on.p50 − ledger_off.p50`: the figure issue 18 bounds by 1 ms.
    pub added_p50_micros: i64,
    pub added_p99_micros: i64,
}

/// One served engine: its address and how to stop it.
struct Served {
    base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve(
    ledger: Arc<dyn LedgerStore>,
    engine: Arc<engine::run::Engine>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Served> {
    let config =
        server::ApiConfig { tokens: vec![(TOKEN.to_owned(), server::Role::Admin)], ..server::ApiConfig::default() };
    let router = server::router_with_engine(ledger, clock, config, Some(engine));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind")?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let task = tokio::spawn(server::edge::serve(listener, router, server::edge::EdgeConfig::default(), stop.clone()));
    Ok(Served { base, stop, task })
}

/// One solve over HTTP: the time to its first `token` line; the stream is then read to its end,
/// which must be `done`.
async fn first_token(client: &reqwest::Client, base: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/v1/solve"))
        .bearer_auth(TOKEN)
        .json(&json!({"account_id": ACCOUNT, "problem": "What is 2 + 2?"}))
        .send()
        .await
        .context("solve request")?;
    anyhow::ensure!(response.status() == 200, "solve answered {}", response.status());
    let mut body = response.bytes_stream();
    let mut seen = String::new();
    let mut first = None;
    let read = async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.context("stream")?));
            if first.is_none() && seen.contains("event: token") {
                first = Some(started.elapsed());
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(TURN_SECONDS_MAX), read).await.context("the turn did not end")??;
    anyhow::ensure!(seen.contains("event: done"), "the turn did not end with done: {seen}");
    first.context("no token event")
}

/// The provider: router and planner at once, the solver's answer streamed after a delay.
async fn streaming_provider() -> FakeProvider {
    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Router, FakeReply::route(false));
    fake.on_default(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false));
    fake.on_default(
        Purpose::Solver,
        FakeReply::Chunks(vec![
            FakeChunk::Delay(Duration::from_millis(FIRST_CHUNK_DELAY_MS)),
            FakeChunk::text("The answer"),
            FakeChunk::text(" is 4."),
            FakeChunk::Usage { prompt_tokens: 40, completion_tokens: 4 },
        ]),
    );
    fake
}

pub async fn measure(turns: usize) -> anyhow::Result<FirstToken> {
    anyhow::ensure!(turns > 0, "measure at least one turn");
    let dir = tempfile::tempdir().context("a temporary folder for the store")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(open_store(dir.path(), clock.clone()).await?);
    let account_id = AccountId::parse(ACCOUNT).map_err(|error| anyhow::anyhow!("{error:?}"))?;
    grant_credits(store.as_ref(), &account_id, "bench-first-token-grant", GRANT_CREDITS).await?;
    let fake = streaming_provider().await;
    let null_ledger: Arc<dyn LedgerStore> = Arc::new(NullLedger::new(account_id.clone(), clock.clone()));
    let on_engine = engine_over(store.clone(), store.clone(), true, &fake, clock.clone());
    let off_engine = engine_over(null_ledger.clone(), store.clone(), false, &fake, clock.clone());
    let on = serve(store.clone(), on_engine.clone(), clock.clone()).await?;
    let off = serve(null_ledger, off_engine.clone(), clock).await?;
    let client = reqwest::Client::new();
    let (mut on_latencies, mut off_latencies) = (Latencies::new(), Latencies::new());
    for index in 0..WARM_UP_TURNS + turns {
        let order = if index % 2 == 0 { [true, false] } else { [false, true] };
        for ledger_on in order {
            let base = if ledger_on { &on.base } else { &off.base };
            let elapsed = first_token(&client, base).await?;
            match (index >= WARM_UP_TURNS, ledger_on) {
                (true, true) => on_latencies.record(elapsed),
                (true, false) => off_latencies.record(elapsed),
                (false, _) => {}
            }
        }
    }
    for served in [on, off] {
        served.stop.cancel();
        served.task.await.context("server task")?.context("serve")?;
    }
    for engine in [&on_engine, &off_engine] {
        anyhow::ensure!(engine.shutdown(Duration::from_secs(10)).await, "runs still going at the end");
    }
    let report = store.verify().await.context("verify")?;
    anyhow::ensure!(report.violations.is_empty(), "the ledger does not verify: {:?}", report.violations);
    store.close().await;
    let (ledger_on, ledger_off) = (on_latencies.summary(), off_latencies.summary());
    let difference = |on: u64, off: u64| i64::try_from(on).unwrap_or(i64::MAX) - i64::try_from(off).unwrap_or(i64::MAX);
    Ok(FirstToken {
        turns,
        first_chunk_delay_ms: FIRST_CHUNK_DELAY_MS,
        ledger_on,
        ledger_off,
        added_p50_micros: difference(ledger_on.p50_micros, ledger_off.p50_micros),
        added_p99_micros: difference(ledger_on.p99_micros, ledger_off.p99_micros),
    })
}
