//! The composition root of creditgraph: command line, configuration, telemetry, store
//! selection, the buildable [`Application`] and graceful shutdown.
//!
//! `main` is a one-liner over [`main`]; tests build [`Application`] directly with an injected
//! clock and port 0. `anyhow` is used here and nowhere below.

pub mod app;
pub mod commands;
pub mod config;
pub mod database;
pub mod shutdown;
pub mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use store::{Clock, SystemClock};
use tokio_util::sync::CancellationToken;

pub use app::Application;
pub use config::{
    Cli, CommandLine, DatabaseUrl, EdgeSettings, RunSettings, SandboxSettings, Settings, TlsPaths, WebhookSettings,
};

/// Parses the command line, runs the command, maps the result to an exit status (0 success,
/// 1 failure or an unclean `verify`, 2 usage error from clap).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("creditgraph: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("creditgraph: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        CommandLine::Serve(args) => {
            let mut settings = Settings::from_args(args)?;
            // With --test-clock every part of the server reads the one clock the API moves.
            let clock: Arc<dyn Clock> = if args.test_clock {
                let test_clock = Arc::new(store::TestClock::new());
                settings.api.test_clock = Some(Arc::clone(&test_clock));
                test_clock
            } else {
                Arc::new(SystemClock)
            };
            // Signals first: a SIGTERM during start-up must also stop the server gracefully.
            let shutdown = CancellationToken::new();
            let signals = shutdown::cancel_on_signal(shutdown.clone());
            let application = Application::build(settings, clock).await?;
            let result = application.run_until_stopped(shutdown.clone()).await;
            shutdown.cancel();
            let _ = signals.await;
            result.map(|()| ExitCode::SUCCESS)
        }
        CommandLine::Migrate(args) => commands::migrate(args).await,
        CommandLine::Verify(args) => commands::verify(args).await,
        CommandLine::Grant(args) => commands::grant(args).await,
        CommandLine::Balance(args) => commands::balance(args).await,
        CommandLine::Holds(args) => commands::holds(args).await,
        CommandLine::Sweep(args) => commands::sweep(args).await,
        CommandLine::Worker(args) => commands::worker(args).await,
    }
}
