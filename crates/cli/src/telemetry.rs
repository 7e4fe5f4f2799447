//! Logs to stderr, filtered by `RUST_LOG` (default `info`), so stdout stays for command output;
//! as text or as one JSON object per line (`--log-format json`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests building several apps) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        // The request's span (its id, and the account, hold, run or job it names) on every line.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
