//! Black-box tests of the HTTP API and the `creditgraph` binary, over real sockets. One test
//! binary (one link step); every module shares `helpers`.

mod accounts;
mod allowances;
mod auth;
mod binary;
mod console;
mod edge;
mod errors;
mod gateway;
mod health;
mod helpers;
mod holds;
mod idempotency;
mod jobs;
mod ledger_events;
mod observability;
mod operator;
mod postgres;
mod processes;
mod rate_limits;
mod sandbox;
mod scenarios;
mod solve;
mod sse;
mod streaming;
mod test_clock;
mod webhooks;
mod workers;
