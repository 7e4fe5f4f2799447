//! `creditgraph-bench`: see the library's docs. `run` is the benchmark; `serve` is the server
//! process the HTTP runs start (not for direct use).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bench::report::{self, Machine};
use bench::stores::{Place, StoreKind};
use bench::suite::{self, SuiteSettings};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "creditgraph-bench", about = "creditgraph's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the benchmark and writes BENCHMARKS.md, docs/benchmarks/chart.svg and results.json.
    Run {
        /// A few hundred milliseconds per run: checks that every path works (CI), measures nothing.
        #[arg(long)]
        smoke: bool,
        /// Admin URL of a PostgreSQL cluster with fsync on (scripts/bench.sh starts one).
        #[arg(long, env = "CREDITGRAPH_BENCH_POSTGRES_URL")]
        postgres_url: Option<String>,
        /// Where BENCHMARKS.md and docs/benchmarks/ are written.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Only these sections: in-process, overhead, rate-search, hot-fixed-rate, two-servers, turns,
        /// streams, sandbox, pile-up, scale, webhooks, gateway.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Only these stores (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        stores: Vec<StoreKind>,
        /// Only these in-process workloads: uniform, zipf, hot, lifecycle, read-heavy, replays, allowances,
        /// near-empty.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        #[arg(long, default_value_t = 20_261_126)]
        seed: u64,
        /// Concurrent callers of the in-process runs (default: 64; 8 with --smoke).
        #[arg(long)]
        callers: Option<usize>,
        /// Pending holds the pile-up workload grows one account to (default: 100,000; 2,000 with
        /// --smoke).
        #[arg(long)]
        pile_up_holds: Option<u64>,
        /// The `creditgraph` binary for the SSE stream measurement (default: next to this one).
        #[arg(long)]
        server_binary: Option<PathBuf>,
        /// The command line to print in BENCHMARKS.md.
        #[arg(long, default_value = "scripts/bench.sh")]
        command_line: String,
    },
    /// One benchmark server process (started by `run`).
    Serve {
        #[arg(long, value_enum)]
        store: StoreKind,
        #[arg(long)]
        sqlite_path: PathBuf,
        #[arg(long)]
        postgres_url: Option<String>,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value_t = bench::http::Edge::Hardened)]
        edge: bench::http::Edge,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { store, sqlite_path, postgres_url, listen, edge } => {
            bench::serve::serve(store, Place { sqlite_path, postgres_url }, listen, edge).await
        }
        Command::Run {
            smoke,
            postgres_url,
            out_dir,
            only,
            stores,
            workloads,
            seed,
            server_binary,
            callers,
            pile_up_holds,
            command_line,
        } => {
            let data = tempfile::tempdir().context("a temporary folder for SQLite files")?;
            let settings = SuiteSettings {
                smoke,
                postgres_admin_url: postgres_url.clone(),
                data_dir: data.path().to_owned(),
                seed,
                stores,
                workloads,
                server_binary,
                callers,
                pile_up_holds,
            };
            let results = suite::run(&settings, &only).await?;
            let postgres = match &postgres_url {
                Some(url) => {
                    bench::stores::server_version(url).await.unwrap_or_else(|error| format!("unknown ({error})"))
                }
                None => "not used".to_owned(),
            };
            let machine = Machine::read(postgres);
            let date = bench::report::today();
            let markdown = report::markdown(&results, &machine, &command_line, &date, smoke);
            let docs = out_dir.join("docs/benchmarks");
            std::fs::create_dir_all(&docs)?;
            std::fs::write(out_dir.join("BENCHMARKS.md"), markdown)?;
            std::fs::write(docs.join("chart.svg"), report::chart(&results))?;
            let targets = report::targets(&results);
            let targets_16 = report::issue16_targets(&results);
            std::fs::write(
                docs.join("results.json"),
                serde_json::to_string_pretty(
                    &serde_json::json!({"results": results, "targets": targets, "targets_issue_16": targets_16}),
                )?,
            )?;
            for target in &targets {
                eprintln!("bench: target {}: {} — {:?}", target.number, target.measured, target.met);
            }
            for target in &targets_16 {
                eprintln!("bench: issue 16 target {}: {} — {:?}", target.number, target.measured, target.met);
            }
            let violations = report::violations(&results);
            anyhow::ensure!(violations == 0, "{violations} invariant violations; see the tables");
            eprintln!("bench: wrote {}", out_dir.join("BENCHMARKS.md").display());
            Ok(())
        }
    }
}
