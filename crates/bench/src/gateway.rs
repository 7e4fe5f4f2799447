//! Issue 13: the LLM gateway's own cost over calling the upstream directly. An instant scripted
//! upstream ([`FakeProvider`]), keep-alive, durable SQLite; the gateway served by the router and
//! edge `creditgraph serve` runs. Non-streaming calls at a fixed rate ([`CALLS_PER_SECOND`]),
//! alternating between the gateway and the upstream itself with the same body; then streamed
//! calls, one at a time, timed to their first content chunk, also alternating.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::provider::Purpose;
use engine::testing::{FakeChunk, FakeProvider, FakeReply};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use store::{Clock, LedgerStore, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::measure::{Latencies, LatencySummary};
use crate::turns::{engine_over, open_store};

/// The fixed rate of the non-streaming arm: the 200 calls/s, shared by both sides.
pub const CALLS_PER_SECOND: u64 = 200;
const ACCOUNT: &str = "bench-gateway";
const MODEL: &str = "gpt-4o-mini";
const WARM_UP_CALLS: usize = 50;

#[derive(Clone, Debug, Serialize)]
pub struct GatewayOverhead {
    /// Measured non-streaming calls per arm.
    pub calls: usize,
    pub calls_per_second: u64,
    /// Non-streaming, through the gateway (hold, forward, capture, record) and direct.
    pub gateway: LatencySummary,
    pub direct: LatencySummary,
    /// Streamed: request to the first content chunk.
    pub gateway_first_chunk: LatencySummary,
    pub direct_first_chunk: LatencySummary,
    pub added_p50_micros: i64,
    pub added_p99_micros: i64,
    pub added_first_chunk_p50_micros: i64,
}

fn body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "[creditgraph:general_chat] Answer in one word."},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        "max_tokens": 16,
        "stream": stream,
    })
}

/// One call; its latency (to the whole answer, or to the first content chunk when streamed).
async fn call(client: &reqwest::Client, url: &str, key: Option<&str>, stream: bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut request = client.post(url).json(&body(stream));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.context("a call")?;
    anyhow::ensure!(response.status() == 200, "{url} answered {}", response.status());
    let mut chunks = response.bytes_stream();
    let mut seen = String::new();
    let mut first = None;
    while let Some(chunk) = chunks.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.context("the answer broke off")?));
        if first.is_none() && (!stream || seen.contains("\"content\":\"Four")) {
            first = Some(started.elapsed());
        }
    }
    let whole = started.elapsed();
    Ok(if stream { first.context("no content chunk")? } else { whole })
}

pub async fn measure(calls: usize) -> anyhow::Result<GatewayOverhead> {
    anyhow::ensure!(calls > 0, "measure at least one call");
    let dir = tempfile::tempdir().context("a temporary folder for the store")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(open_store(dir.path(), clock.clone()).await?);
    let fake = FakeProvider::start().await;
    fake.on_default(
        Purpose::GeneralChat,
        FakeReply::Chunks(vec![FakeChunk::text("Four."), FakeChunk::Usage { prompt_tokens: 30, completion_tokens: 2 }]),
    );
    let engine = engine_over(store.clone(), store.clone(), true, &fake, clock.clone());
    let upstream = server::GatewayUpstream { base_url: fake.base_url(), api_key: None, timeout_seconds: 30 };
    // No tokens: the admin routes are open on loopback (the gateway route needs its own key).
    let config = server::ApiConfig { gateway_upstream: Some(upstream), ..server::ApiConfig::default() };
    let router = server::router_with_engine(store.clone(), clock, config, Some(engine.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind")?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let task = tokio::spawn(server::edge::serve(listener, router, server::edge::EdgeConfig::default(), stop.clone()));
    let client = reqwest::Client::new();
    let grant = client.post(format!("{base}/v1/accounts/{ACCOUNT}/grants")).json(&json!({"amount": "1000000"}));
    anyhow::ensure!(grant.send().await?.status() == 201, "the grant was refused");
    let created: Value =
        client.post(format!("{base}/v1/accounts/{ACCOUNT}/keys")).json(&json!({})).send().await?.json().await?;
    let key = created["key"].as_str().context("a key")?.to_owned();
    let gateway_url = format!("{base}/v1/chat/completions");
    let direct_url = format!("{}/chat/completions", fake.base_url());

    // Non-streaming at the fixed rate: each arrival starts on time, whatever the last one did.
    let (mut gateway, mut direct) = (Latencies::new(), Latencies::new());
    // Both arms at the rate each: arrivals alternate at twice it.
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / (2 * CALLS_PER_SECOND)));
    let mut pending = Vec::new();
    for index in 0..2 * (WARM_UP_CALLS + calls) {
        ticks.tick().await;
        let through_gateway = index % 2 == 0;
        let (client, url, key) =
            (client.clone(), if through_gateway { gateway_url.clone() } else { direct_url.clone() }, key.clone());
        pending.push((
            index >= 2 * WARM_UP_CALLS,
            through_gateway,
            tokio::spawn(async move { call(&client, &url, through_gateway.then_some(key.as_str()), false).await }),
        ));
    }
    for (measured, through_gateway, handle) in pending {
        let elapsed = handle.await.context("a call task")??;
        match (measured, through_gateway) {
            (true, true) => gateway.record(elapsed),
            (true, false) => direct.record(elapsed),
            (false, _) => {}
        }
    }
    // Streamed, one at a time, to the first content chunk.
    let (mut gateway_first, mut direct_first) = (Latencies::new(), Latencies::new());
    for index in 0..2 * (WARM_UP_CALLS + calls.min(500)) {
        let through_gateway = index % 2 == 0;
        let url = if through_gateway { &gateway_url } else { &direct_url };
        let elapsed = call(&client, url, through_gateway.then_some(key.as_str()), true).await?;
        match (index >= 2 * WARM_UP_CALLS, through_gateway) {
            (true, true) => gateway_first.record(elapsed),
            (true, false) => direct_first.record(elapsed),
            (false, _) => {}
        }
    }
    stop.cancel();
    task.await.context("server task")?.context("serve")?;
    anyhow::ensure!(engine.shutdown(Duration::from_secs(10)).await, "runs still going at the end");
    let report = store.verify().await.context("verify")?;
    anyhow::ensure!(report.violations.is_empty(), "the ledger does not verify: {:?}", report.violations);
    store.close().await;
    let difference = |on: u64, off: u64| i64::try_from(on).unwrap_or(i64::MAX) - i64::try_from(off).unwrap_or(i64::MAX);
    let (gateway, direct) = (gateway.summary(), direct.summary());
    let (gateway_first_chunk, direct_first_chunk) = (gateway_first.summary(), direct_first.summary());
    Ok(GatewayOverhead {
        calls,
        calls_per_second: CALLS_PER_SECOND,
        gateway,
        direct,
        gateway_first_chunk,
        direct_first_chunk,
        added_p50_micros: difference(gateway.p50_micros, direct.p50_micros),
        added_p99_micros: difference(gateway.p99_micros, direct.p99_micros),
        added_first_chunk_p50_micros: difference(gateway_first_chunk.p50_micros, direct_first_chunk.p50_micros),
    })
}
