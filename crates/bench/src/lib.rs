//! The benchmark harness of issue 6 (`creditgraph-bench`): the same workloads against
//! creditgraph's stores and the straightforward baselines, in-process and over HTTP, with the
//! ledger invariants checked after every run. `scripts/bench.sh` is the one command; it writes
//! `BENCHMARKS.md`, `docs/benchmarks/chart.svg` and `docs/benchmarks/results.json`.
//!
//! Code map: [`workload`] decides what to send, [`inprocess`] and [`http`] send it, [`stores`]
//! opens every store kind behind `store::LedgerStore` ([`baseline`]: the straightforward stores
//! creditgraph is measured against), [`serve`] is the server process the HTTP
//! runs start, [`suite`] orders the runs, [`report`] turns results into Markdown and SVG.
//! [`turns`] (what the credit wiring adds to a solve turn) and [`streams`] (memory per open SSE
//! stream) measure issue 7's engine targets; [`pileup`] grows one account's pending holds
//! (issue 16, target 1).

pub mod baseline;
pub mod first_token;
pub mod gateway;
pub mod http;
pub mod inprocess;
pub mod measure;
pub mod pileup;
pub mod report;
pub mod sandbox;
pub mod scale;
pub mod serve;
pub mod stores;
pub mod streams;
pub mod suite;
pub mod turns;
pub mod webhooks;
pub mod workload;
