//! `creditgraph-bench serve`: the HTTP server of creditgraph (`server::router` served by
//! `server::edge::serve`, as `creditgraph serve` does; or, with `--edge plain`, the router
//! without request limits under `axum::serve`) over any store kind, baselines included, in its
//! own process.
//!
//! The harness talks to it on stdin/stdout: it prints `listening <address>` once ready; a line
//! `check <accounts>` on stdin makes it verify the store and sum the balances of the first
//! `<accounts>` benchmark accounts, answering one JSON line; `counters` answers the store's
//! counters alone; `timings` the SQLite writer's commit and checkpoint timings (`null` for
//! other stores); end of stdin stops it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ledger::Amount;
use serde::{Deserialize, Serialize};
use server::{ApiConfig, Role};
use store::{LedgerStore, SystemClock};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::http::Edge;
use crate::stores::{self, Place, StoreCounters, StoreKind};
use crate::workload::account_id;

/// The admin token every benchmark server accepts: authentication stays on, as in production.
pub const BENCH_TOKEN: &str = "creditgraph-bench-token";

/// The answer to `check`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub violations: u64,
    /// Sum of the balances of the accounts asked about, canonical decimal text.
    pub balance_total: String,
    pub counters: StoreCounters,
}

pub async fn serve(kind: StoreKind, place: Place, listen: SocketAddr, edge: Edge) -> anyhow::Result<()> {
    // `creditgraph serve` logs every request at `info`: the same subscriber here (JSON lines), so
    // the measured cost includes building and formatting them; written to a sink, as the disk or
    // pipe an operator ships them to is not what is measured.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .json()
        .with_current_span(true)
        .with_writer(std::io::sink)
        .try_init();
    let opened = stores::open(kind, &place).await?;
    let config = ApiConfig { tokens: vec![(BENCH_TOKEN.to_owned(), Role::Admin)], ..ApiConfig::default() };
    // As `creditgraph serve` does: expired holds are swept in the background (every store kind,
    // so the baselines get the same help).
    let stop_sweeping = tokio_util::sync::CancellationToken::new();
    let sweeper = server::spawn_sweeper(opened.ledger(), std::time::Duration::from_secs(1), stop_sweeping.clone());
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = match edge {
        Edge::Hardened => {
            // As `creditgraph serve` does, with the default limits.
            let _ = server::edge::raise_open_files_limit();
            let router = server::router(opened.ledger(), Arc::new(SystemClock), config);
            tokio::spawn(server::edge::serve(listener, router, server::edge::EdgeConfig::default(), shutdown.clone()))
        }
        Edge::Plain => {
            let router = server::router_without_limits(opened.ledger(), Arc::new(SystemClock), config);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
            })
        }
    };
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("listening {address}\n").as_bytes()).await?;
    stdout.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "timings" {
            stdout.write_all(format!("{}\n", serde_json::to_string(&opened.writer_timings())?).as_bytes()).await?;
            stdout.flush().await?;
            continue;
        }
        if line == "counters" {
            stdout.write_all(format!("{}\n", serde_json::to_string(&opened.counters())?).as_bytes()).await?;
            stdout.flush().await?;
            continue;
        }
        let Some(accounts) = line.strip_prefix("check ") else {
            anyhow::bail!("unknown command on stdin: {line}");
        };
        let accounts: usize = accounts.trim().parse().context("check <accounts>")?;
        let answer = check(&opened.ledger(), accounts, opened.counters()).await?;
        stdout.write_all(format!("{}\n", serde_json::to_string(&answer)?).as_bytes()).await?;
        stdout.flush().await?;
    }
    stop_sweeping.cancel();
    let _ = sweeper.await;
    shutdown.cancel();
    serving.await.context("server task")??;
    opened.close().await;
    Ok(())
}

async fn check(store: &Arc<dyn LedgerStore>, accounts: usize, counters: StoreCounters) -> anyhow::Result<CheckAnswer> {
    let report = store.verify().await.context("verify")?;
    let mut total = Amount::ZERO;
    for index in 0..accounts {
        if let Some(view) = store.account(&account_id(index)?).await? {
            total = total.plus(view.balances.balance);
        }
    }
    Ok(CheckAnswer { violations: report.violations.len() as u64, balance_total: total.to_string(), counters })
}
