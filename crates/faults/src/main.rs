//! `creditgraph-faults`: the fault-injection suite as one command (see the library's docs).
//!
//! Why a binary as well as the test: the long form runs for many minutes, longer than a test's
//! time limit, and an operator wants its table printed and its seed to replay a failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use faults::{Settings, Store};

/// Drives real `creditgraph serve` processes through injected faults and checks that no
/// credit is lost. Exits non-zero on any violation.
#[derive(Debug, Parser)]
#[command(name = "creditgraph-faults")]
struct Args {
    /// The CI form: both stores, a few rounds, kill -9 every round (the default).
    #[arg(long, conflicts_with = "long")]
    short: bool,
    /// The long form: at least 20 kill -9 per store.
    #[arg(long)]
    long: bool,
    /// Rounds per store (overrides the form's number).
    #[arg(long)]
    rounds: Option<u32>,
    /// One store only.
    #[arg(long, value_parser = ["sqlite", "postgres"])]
    store: Option<String>,
    /// Seed of the random choices (printed in the summary, to replay a failing run).
    #[arg(long)]
    seed: Option<u64>,
    /// The `creditgraph` binary (default: next to this one; `cargo build -p cli -p faults`).
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// A shell command restarting the PostgreSQL server (e.g. `pg_ctl -D DATA -m fast -w restart`);
    /// without it that fault is skipped.
    #[arg(long)]
    postgres_restart_command: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let binary = match args.server_binary.clone().map(Ok).unwrap_or_else(faults::default_server_binary) {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("creditgraph-faults: {error:#}");
            return ExitCode::from(2);
        }
    };
    let mut settings = if args.long { Settings::long(binary) } else { Settings::short(binary) };
    if let Some(rounds) = args.rounds {
        settings.rounds = rounds;
    }
    if let Some(seed) = args.seed {
        settings.seed = seed;
    }
    match args.store.as_deref() {
        Some("sqlite") => settings.stores = vec![Store::Sqlite],
        Some("postgres") => settings.stores = vec![Store::Postgres],
        _ => {}
    }
    settings.postgres_restart_command = args.postgres_restart_command;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("creditgraph-faults: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(faults::run(&settings)) {
        Ok(report) => {
            println!("{report}");
            if report.violations() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("creditgraph-faults: the driver could not go on: {error:#}");
            ExitCode::from(2)
        }
    }
}
